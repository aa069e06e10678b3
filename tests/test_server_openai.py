"""The server's OpenAI API and its operations routes, on loopback, with the official `openai`
client and httpx (SSE framing, status codes, headers), over SmolLM2-135M-Instruct.

The key test: several concurrent streams give, each, the greedy output Model.generate gives
for that conversation alone."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from server_helpers import (  # noqa: E402
    QUESTIONS,
    GatedSlots,
    LiveServer,
    chat_ids,
    greedy,
    live_server,
    load_reference,
    load_slots,
    metric,
    wait_until,
)

ALIAS = "smol"
N_GEN = 8


@pytest.fixture(scope="module")
def ref(smollm2_path: Path) -> Any:
    return load_reference(smollm2_path)


@pytest.fixture(scope="module")
def server(smollm2_path: Path) -> Iterator[LiveServer]:
    with live_server(lambda: load_slots(smollm2_path, 3), model_alias=ALIAS) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Any:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def chat(client: Any, question: str, **kw: Any) -> Any:
    kw.setdefault("max_tokens", N_GEN)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(
        model=ALIAS, messages=[{"role": "user", "content": question}], **kw
    )


# -- the API -----------------------------------------------------------------------------------


def test_models_lists_the_served_model(client: Any, server: LiveServer) -> None:
    assert [m.id for m in client.models.list().data] == [ALIAS]
    assert client.models.retrieve(ALIAS).id == ALIAS
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_concurrent_streams_equal_generate(client: Any, ref: Any) -> None:
    questions = QUESTIONS[:5]  # more than the 3 slots: two wait, then join
    want = [greedy(ref, chat_ids(ref, q), N_GEN)[1] for q in questions]
    got: dict[int, str] = {}
    finish: dict[int, str] = {}
    start = threading.Barrier(len(questions))

    def stream(i: int) -> None:
        start.wait()
        parts = []
        for chunk in chat(client, questions[i], stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            if chunk.choices and chunk.choices[0].finish_reason:
                finish[i] = chunk.choices[0].finish_reason
        got[i] = "".join(parts)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [got.get(i) for i in range(len(questions))] == want
    assert set(finish.values()) <= {"stop", "length"} and len(finish) == len(questions)


def test_chat_answer_usage_and_finish_reason(client: Any, ref: Any) -> None:
    ids = chat_ids(ref, "Hi!")
    want_ids, want_text = greedy(ref, ids, 24)  # ends with the end-of-turn token
    r = chat(client, "Hi!", max_tokens=24)
    assert r.object == "chat.completion" and r.model == ALIAS
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want_text
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == len(want_ids) + 1  # the end-of-turn token counts
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    short = chat(client, "Hi!", max_completion_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert want_text.startswith(short.choices[0].message.content)
    stopped = chat(client, "Hi!", max_tokens=24, stop=["can"])
    assert stopped.choices[0].message.content == want_text[: want_text.index("can")]
    assert stopped.choices[0].finish_reason == "stop"


def test_completions_streamed_and_not(client: Any, ref: Any) -> None:
    prompt = "Once upon a time"
    want = greedy(ref, ref.tokenize(prompt), N_GEN)[1]
    r = client.completions.create(model=ALIAS, prompt=prompt, max_tokens=N_GEN, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text == want and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == N_GEN
    parts = [
        c.choices[0].text
        for c in client.completions.create(
            model=ALIAS, prompt=prompt, max_tokens=N_GEN, temperature=0, stream=True
        )
        if c.choices
    ]
    assert "".join(parts) == want
    echo = client.completions.create(
        model=ALIAS, prompt=[ref.tokenize(prompt)], max_tokens=N_GEN, temperature=0, echo=True
    )
    assert echo.choices[0].text == prompt + want  # token ids in, the prompt echoed as text


def test_logprobs(client: Any) -> None:
    r = chat(client, "Name three colors.", max_tokens=4, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token  # greedy: the most likely token
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob)
        assert [x.logprob for x in t.top_logprobs] == sorted(
            (x.logprob for x in t.top_logprobs), reverse=True
        )
        assert bytes(t.bytes).decode() == t.token
    c = client.completions.create(
        model=ALIAS, prompt="The sky is", max_tokens=3, temperature=0, logprobs=2
    )
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
    assert "".join(lp.tokens) == c.choices[0].text
    assert lp.text_offset[0] == 0 and all(len(d) == 2 for d in lp.top_logprobs)


def test_bad_requests_get_openai_errors(client: Any, server: LiveServer) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found" and "smol" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "Hi!", n=2)
    assert e.value.param == "n" and "n=1" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "Hi!", top_p=2.0)
    assert e.value.param == "top_p"
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "Hi!", temperature=-1)
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=ALIAS, prompt=[[5] * 600], max_tokens=2)
    r = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.get(f"{server.url}/v2/nothing")
    assert r.status_code == 404
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_sse_framing(server: LiveServer) -> None:
    body = {
        "model": ALIAS,
        "messages": [{"role": "user", "content": "Hi!"}],
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    frames = raw.split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    chunks = [json.loads(f.removeprefix("data: ")) for f in frames[:-2]]
    assert all(f.startswith("data: ") for f in frames[:-1])
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    *content, last, usage = chunks
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * len(content)
    assert last["choices"][0]["finish_reason"] == "length" and last["choices"][0]["delta"] == {}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4
    assert all(c["usage"] is None for c in chunks[:-1])


def test_prefix_reuse_reports_cached_tokens(client: Any, ref: Any, server: LiveServer) -> None:
    system = "You are a pirate. Answer every question in one short sentence, as a pirate would."

    def ask(question: str) -> Any:
        return client.chat.completions.create(
            model=ALIAS,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=6,
            temperature=0,
        )

    before = metric(server_metrics(server), "metallic_prompt_cached_tokens_total")
    first, second = ask("Where is the treasure?"), ask("What is your ship called?")
    shared = chat_ids(ref, "", system)
    other = chat_ids(ref, "x", system)
    n_system = next(i for i, (a, b) in enumerate(zip(shared, other, strict=False)) if a != b)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= n_system > 24  # the whole system turn, beyond the template's default
    assert first.usage.prompt_tokens_details.cached_tokens < n_system
    want = greedy(ref, chat_ids(ref, "What is your ship called?", system), 6)[1]
    assert second.choices[0].message.content == want  # the same as without reuse
    after = metric(server_metrics(server), "metallic_prompt_cached_tokens_total")
    assert after - before >= cached


def test_response_format_json_schema(client: Any) -> None:
    pytest.importorskip("llguidance")  # the serve extra's JSON grammar engine
    schema = {
        "type": "object",
        "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}},
        "required": ["color"],
        "additionalProperties": False,
    }
    r = chat(
        client,
        "Name a color.",
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    assert r.choices[0].finish_reason == "stop"
    assert json.loads(r.choices[0].message.content)["color"] in ("red", "green", "blue")
    r = chat(client, "Name a color.", max_tokens=40, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # cut by max_tokens: still the start of an object
        assert r.choices[0].message.content.lstrip().startswith("{")


# -- operations --------------------------------------------------------------------------------


def server_metrics(server: LiveServer) -> str:
    r = httpx.get(f"{server.url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return r.text


def test_health_metrics_and_tokenize(client: Any, server: LiveServer, ref: Any) -> None:
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["slots"] == 3
    chat(client, "Hi!", max_tokens=2)
    text = server_metrics(server)
    ok = metric(text, "metallic_requests_total", endpoint="/v1/chat/completions", status="200")
    assert ok >= 1
    assert metric(text, "metallic_prompt_tokens_total") > 0
    assert metric(text, "metallic_completion_tokens_total") >= 2
    assert metric(text, "metallic_time_to_first_token_seconds_count") >= 1
    assert metric(text, "metallic_time_per_output_token_seconds_count") >= 1
    assert metric(text, "metallic_batch_sequences_count") >= 1
    assert metric(text, "metallic_slots") == 3
    assert metric(text, "metallic_slots_in_use") == 0
    assert metric(text, "metallic_queue_depth") == 0
    ids = httpx.post(f"{server.url}/tokenize", json={"content": "Hello world"}).json()["tokens"]
    assert ids == ref.tokenize("Hello world", add_special=False)
    r = httpx.post(f"{server.url}/detokenize", json={"tokens": ids})
    assert r.json() == {"content": "Hello world"}
    assert httpx.post(f"{server.url}/detokenize", json={"tokens": [10**7]}).status_code == 400


def test_a_disconnected_client_frees_its_slot(server: LiveServer) -> None:
    scheduler = server.state.scheduler
    cancelled = metric(server_metrics(server), "metallic_generations_total", reason="cancelled")
    body = {
        "model": ALIAS,
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "max_tokens": 400,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        for _ in range(3):  # the role chunk, then two tokens
            while not next(lines).startswith("data: "):
                pass
        assert scheduler.slots_in_use == 1
    # The connection closed with the response unread: the request ends within a step.
    wait_until(lambda: scheduler.slots_in_use == 0, timeout=10, what="the slot to be freed")
    text = server_metrics(server)
    assert metric(text, "metallic_generations_total", reason="cancelled") == cancelled + 1
    assert metric(text, "metallic_completion_tokens_total") < 400 * 2  # far from max_tokens


# -- a server with a key, small limits, a slow step, and no chat template ----------------------


@pytest.fixture(scope="module")
def strict(smollm2_path: Path) -> Iterator[tuple[LiveServer, GatedSlots]]:
    model, slots = load_slots(smollm2_path, 1)
    del model.gguf.metadata["tokenizer.chat_template"]  # a base model's file (this copy only)
    gated = GatedSlots(slots)
    loader = lambda: (model, gated)  # noqa: E731
    with live_server(loader, api_key="sekrit", max_body=4096, max_queue=0, max_tokens=5) as s:
        yield s, gated


def test_api_key_is_required_except_for_health(strict: tuple[LiveServer, GatedSlots]) -> None:
    server, _ = strict
    assert httpx.get(f"{server.url}/health").status_code == 200
    c = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        c.models.list()
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    for path in ("/metrics", "/api/tags", "/nowhere"):
        assert httpx.get(f"{server.url}{path}").status_code == 401
    good = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sekrit", max_retries=0)
    assert [m.id for m in good.models.list().data] == ["SmolLM2-135M-Instruct.Q4_1"]
    # The max_tokens cap bounds what a request asks for.
    r = good.completions.create(model="SmolLM2-135M-Instruct.Q4_1", prompt="Hi", max_tokens=50)
    assert r.usage.completion_tokens <= 5


def test_limits_body_size_and_chat_template(strict: tuple[LiveServer, GatedSlots]) -> None:
    server, _ = strict
    auth = {"Authorization": "Bearer sekrit"}
    big = {"model": "x", "prompt": "a" * 5000}
    r = httpx.post(f"{server.url}/v1/completions", json=big, headers=auth)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # Without a Content-Length (chunked), the body is counted as it arrives.
    chunks = (json.dumps(big)[i : i + 1000].encode() for i in range(0, 5100, 1000))
    r = httpx.post(f"{server.url}/v1/completions", content=chunks, headers=auth)
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # A body declared too large is refused before it is sent.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekrit\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 413 ")
    c = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sekrit", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        c.chat.completions.create(
            model="SmolLM2-135M-Instruct.Q4_1", messages=[{"role": "user", "content": "Hi"}]
        )


def test_a_full_queue_answers_503_with_retry_after(strict: tuple[LiveServer, GatedSlots]) -> None:
    server, gated = strict
    auth = {"Authorization": "Bearer sekrit"}
    body = {"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "Hi", "max_tokens": 3}
    gated.gate.clear()  # the one slot's request will wait inside its first step
    first: dict[str, Any] = {}
    t = threading.Thread(
        target=lambda: first.update(
            r=httpx.post(f"{server.url}/v1/completions", json=body, headers=auth, timeout=60)
        )
    )
    t.start()
    try:
        wait_until(lambda: server.state.scheduler.slots_in_use == 1, what="the slot to fill")
        r = httpx.post(f"{server.url}/v1/completions", json=body, headers=auth)
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "queue_full"
        text = httpx.get(f"{server.url}/metrics", headers=auth).text
        assert metric(text, "metallic_requests_total", endpoint="/v1/completions", status="503")
    finally:
        gated.gate.set()
        t.join(60)
    assert first["r"].status_code == 200


def test_health_is_503_while_the_model_loads(smollm2_path: Path) -> None:
    release = threading.Event()
    loaded = load_slots(smollm2_path, 1)

    def loader() -> Any:
        assert release.wait(30)
        return loaded

    with live_server(loader, ready=False) as server:
        r = httpx.get(f"{server.url}/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = httpx.get(f"{server.url}/v1/models")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "model_loading"
        release.set()
        assert server.state.loaded.wait(30)
        assert httpx.get(f"{server.url}/health").status_code == 200
