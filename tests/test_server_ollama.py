"""The server's Ollama API, on loopback, with the official `ollama` client and httpx (NDJSON
framing, `curl -d` bodies), over SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ollama = pytest.importorskip("ollama")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from server_helpers import (  # noqa: E402
    QUESTIONS,
    LiveServer,
    chat_ids,
    greedy,
    live_server,
    load_reference,
    load_slots,
)

ALIAS = "smollm2"
N_GEN = 8
GREEDY = {"temperature": 0, "num_predict": N_GEN}


@pytest.fixture(scope="module")
def ref(smollm2_path: Path) -> Any:
    return load_reference(smollm2_path)


@pytest.fixture(scope="module")
def server(smollm2_path: Path) -> Iterator[LiveServer]:
    with live_server(lambda: load_slots(smollm2_path, 2), model_alias=ALIAS) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Any:
    return ollama.Client(host=server.url)


def test_root_version_tags_and_show(client: Any, server: LiveServer) -> None:
    r = httpx.get(server.url)
    assert (r.status_code, r.text) == (200, "Ollama is running")
    assert httpx.get(f"{server.url}/api/version").json()["version"]
    (entry,) = client.list().models
    assert entry.model == ALIAS
    assert entry.size == Path(server.state.model.path).stat().st_size
    assert entry.details.family == "llama" and entry.details.quantization_level == "Q4_1"
    assert entry.details.parameter_size == "134.5M"
    info = client.show(ALIAS)
    assert info.modelinfo["general.architecture"] == "llama"
    assert info.modelinfo["llama.block_count"] == 30
    assert "im_start" in info.template and "completion" in info.capabilities
    assert client.show(f"{ALIAS}:latest").details.family == "llama"
    with pytest.raises(ollama.ResponseError) as e:
        client.show("llama3")
    assert e.value.status_code == 404 and "smollm2" in e.value.error


def test_generate_streamed_and_not(client: Any, ref: Any) -> None:
    prompt = "What is the capital of France?"
    ids = chat_ids(ref, prompt)  # the model has a chat template: the prompt is a user turn
    want = greedy(ref, ids, N_GEN)
    r = client.generate(model=ALIAS, prompt=prompt, options=GREEDY, stream=False)
    assert r.response == want[1] and r.done
    assert r.done_reason in ("stop", "length")
    assert r.prompt_eval_count == len(ids) and r.eval_count >= len(want[0])
    assert r.total_duration >= r.prompt_eval_duration + r.eval_duration > 0
    assert r.load_duration == 0
    assert list(r.context) == ids + want[0]
    parts = list(client.generate(model=ALIAS, prompt=prompt, options=GREEDY, stream=True))
    assert "".join(p.response for p in parts) == want[1]
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].eval_count == r.eval_count and parts[-1].done_reason == r.done_reason


def test_generate_raw_system_and_context(client: Any, ref: Any) -> None:
    text = "The three primary colors are"
    r = client.generate(model=ALIAS, prompt=text, raw=True, options=GREEDY)
    assert r.response == greedy(ref, ref.tokenize(text), N_GEN)[1]
    assert r.done_reason == "length" and r.eval_count == N_GEN
    system = "You answer in French."
    r = client.generate(model=ALIAS, prompt="Hello!", system=system, options=GREEDY)
    assert r.response == greedy(ref, chat_ids(ref, "Hello!", system), N_GEN)[1]
    # The returned context continues: the next prompt is appended to it, and the cached tokens
    # (the first prompt and reply) are not run again. The reference runs the same two steps, so
    # that its cache holds the reply as decoded one token at a time, as the server's does.
    more = " and the secondary colors are"
    r1 = client.generate(model=ALIAS, prompt=text, raw=True, options=GREEDY)
    r2 = client.generate(model=ALIAS, prompt=more, raw=True, context=r1.context, options=GREEDY)
    ids = list(r1.context) + ref.tokenize(more)
    assert r2.prompt_eval_count == len(ids)
    ref.reset()
    first = [t.id for t in ref.generate(ref.tokenize(text), N_GEN, temperature=0) if t.id >= 0]
    assert list(r1.context) == ref.tokenize(text) + first
    assert r2.response == "".join(t.text for t in ref.generate(ids, N_GEN, temperature=0))


def test_chat_streamed_and_not(client: Any, ref: Any) -> None:
    messages = [{"role": "user", "content": "Name three colors."}]
    want = greedy(ref, chat_ids(ref, "Name three colors."), N_GEN)[1]
    r = client.chat(model=ALIAS, messages=messages, options=GREEDY, stream=False)
    assert r.message.role == "assistant" and r.message.content == want
    assert r.done and r.done_reason == "length" and r.eval_count == N_GEN
    parts = list(client.chat(model=ALIAS, messages=messages, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == want
    assert parts[-1].done and parts[-1].prompt_eval_count == r.prompt_eval_count


def test_concurrent_chats_equal_generate(client: Any, ref: Any) -> None:
    questions = QUESTIONS[:3]  # one more than the two slots
    want = [greedy(ref, chat_ids(ref, q), N_GEN)[1] for q in questions]
    got: dict[int, str] = {}

    def run(i: int) -> None:
        stream = client.chat(
            model=ALIAS,
            messages=[{"role": "user", "content": questions[i]}],
            options=GREEDY,
            stream=True,
        )
        got[i] = "".join(p.message.content for p in stream)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [got.get(i) for i in range(len(questions))] == want


def test_options_map_to_the_sampler(client: Any, ref: Any) -> None:
    prompt = "Count from one to five."
    want = greedy(ref, chat_ids(ref, prompt), 24)[1]
    r = client.generate(
        model=ALIAS, prompt=prompt, options={"temperature": 0, "num_predict": 24, "stop": ["3"]}
    )
    assert r.response == want[: want.index("3")] and r.done_reason == "stop"
    seeded = {"temperature": 1.0, "seed": 7, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
    a = client.generate(model=ALIAS, prompt=prompt, options=seeded | {"num_predict": 6})
    b = client.generate(model=ALIAS, prompt=prompt, options=seeded | {"num_predict": 6})
    assert a.response == b.response  # the seed makes sampling reproducible
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=ALIAS, prompt=prompt, options={"top_p": 3})
    assert e.value.status_code == 400 and "top_p" in e.value.error


def test_format_json(client: Any) -> None:
    pytest.importorskip("llguidance")  # the serve extra's JSON grammar engine
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    r = client.generate(
        model=ALIAS, prompt="What is 2 + 2?", format=schema, options={"temperature": 0}
    )
    assert r.done_reason == "stop"
    assert isinstance(json.loads(r.response)["answer"], int)


def test_ndjson_framing_and_curl_bodies(server: LiveServer) -> None:
    body = {"model": ALIAS, "prompt": "Hi!", "options": {"temperature": 0, "num_predict": 3}}
    # curl -d sends application/x-www-form-urlencoded; Ollama reads the body as JSON anyway.
    with httpx.stream(
        "POST",
        f"{server.url}/api/generate",
        content=json.dumps(body),
        headers={"content-type": "application/x-www-form-urlencoded"},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert all(not x["done"] for x in lines[:-1]) and lines[-1]["done"]
    assert lines[-1]["response"] == "" and lines[-1]["done_reason"] == "length"
    assert lines[-1]["eval_count"] == 3
    for key in ("total_duration", "prompt_eval_duration", "eval_duration", "load_duration"):
        assert isinstance(lines[-1][key], int)
    assert all(x["created_at"].endswith("Z") for x in lines)


def test_errors_and_loading_requests(client: Any, server: LiveServer) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="llama3", prompt="Hi")
    assert e.value.status_code == 404
    r = httpx.post(f"{server.url}/api/chat", json={"model": ALIAS, "messages": "nope"})
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    # An empty prompt (or no messages) is how Ollama clients load a model: answered at once.
    r = client.generate(model=ALIAS, prompt="")
    assert r.done and r.done_reason == "load"
    r = httpx.post(f"{server.url}/api/chat", json={"model": ALIAS, "messages": []})
    assert r.json()["done_reason"] == "load"
