"""The server under load: 64 clients at once, on loopback, over SmolLM2-135M-Instruct.

Each round sends, all together, good streaming requests (whose text must be exactly what
Model.generate gives that conversation alone: no response mixes with another), clients that
hang up mid-stream, and bad requests (which get their HTTP errors); /health is polled the whole
time. Two rounds run back to back: the second must leave the process's memory where the first
left it, and every slot free.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metallic.system import peak_rss_bytes

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
    metric,
    wait_until,
)

N_GOOD, N_HANGUP, N_BAD = 40, 12, 12  # 64 clients
SLOTS = 8
LENGTHS = (3, 6)  # max_tokens of the good requests


@pytest.fixture(scope="module")
def ref(smollm2_path: Path) -> Any:
    return load_reference(smollm2_path)


@pytest.fixture(scope="module")
def server(smollm2_path: Path) -> Iterator[LiveServer]:
    loader = lambda: load_slots(smollm2_path, SLOTS)  # noqa: E731
    with live_server(loader, model_alias="smol", max_queue=128) as s:
        yield s


def rss_bytes() -> int:
    """Resident memory now (Linux), else the peak so far (which a leak raises just the same)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def body(question: str, n: int, stream: bool = True) -> dict[str, Any]:
    return {
        "model": "smol",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": n,
        "temperature": 0,
        "stream": stream,
    }


async def good(client: Any, url: str, question: str, n: int) -> str:
    parts = []
    async with client.stream("POST", url, json=body(question, n)) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"]
                parts.append(delta.get("content") or "")
    return "".join(parts)


async def hang_up(client: Any, url: str, question: str) -> None:
    async with client.stream("POST", url, json=body(question, 200)) as r:
        assert r.status_code == 200
        seen = 0
        async for line in r.aiter_lines():
            seen += line.startswith("data: ")
            if seen == 2:
                return  # leaving the block closes the connection mid-stream


BAD = [
    (b"{not json", 400),
    (json.dumps(body("Hi", 4) | {"max_tokens": "many"}).encode(), 400),
    (json.dumps(body("Hi", 4) | {"n": 2}).encode(), 400),
    (json.dumps(body("word " * 2000, 4)).encode(), 400),  # past the context of 512
]


async def bad(client: Any, url: str, i: int) -> None:
    content, status = BAD[i % len(BAD)]
    r = await client.post(url, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert "error" in r.json() and r.json()["error"]["message"]


async def one_round(server: LiveServer, want: dict[tuple[str, int], str]) -> None:
    url = f"{server.url}/v1/chat/completions"
    limits = httpx.Limits(max_connections=80)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        done = asyncio.Event()
        health: list[int] = []

        async def poll_health() -> None:
            while not done.is_set():
                health.append((await client.get(f"{server.url}/health")).status_code)
                await asyncio.sleep(0.05)

        cases = [(QUESTIONS[i % len(QUESTIONS)], LENGTHS[i % 2]) for i in range(N_GOOD)]
        poller = asyncio.create_task(poll_health())
        results = await asyncio.gather(
            *(good(client, url, q, n) for q, n in cases),
            *(hang_up(client, url, QUESTIONS[i % len(QUESTIONS)]) for i in range(N_HANGUP)),
            *(bad(client, url, i) for i in range(N_BAD)),
        )
        done.set()
        await poller
    assert results[:N_GOOD] == [want[c] for c in cases]
    assert health and set(health) == {200}


def test_sixty_four_clients(server: LiveServer, ref: Any) -> None:
    want = {(q, n): greedy(ref, chat_ids(ref, q), n)[1] for q in QUESTIONS for n in LENGTHS}

    def idle() -> bool:
        m = httpx.get(f"{server.url}/metrics").text
        return metric(m, "metallic_slots_in_use") == 0 and metric(m, "metallic_queue_depth") == 0

    asyncio.run(one_round(server, want))
    wait_until(idle, timeout=60, what="every slot to be free after round 1")
    after_first = rss_bytes()
    t0 = time.monotonic()
    asyncio.run(one_round(server, want))
    wait_until(idle, timeout=60, what="every slot to be free after round 2")
    grown = rss_bytes() - after_first
    # measured: 1.5 MiB between rounds; a leak of a slot's cache or of the requests'
    # streams (40 x the logits of a step, 64 x 49k floats) would pass 16 MiB
    assert grown < 16 << 20, (
        f"memory grew by {grown >> 20} MiB in a round of {time.monotonic() - t0:.0f} s"
    )
