"""What the scheduler and server tests share: the model they serve (SmolLM2-135M-Instruct Q4_1,
the smallest real model with a tokenizer and a chat template, on the CPU with one thread per
slot), the reference outputs of Model.generate, Slots that can be paused, and a live server on
a free loopback port (uvicorn in a thread of this process)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

import metallic
from metallic.batch import Slots
from metallic.chat import chat_prompt_ids
from metallic.scheduler import make_slots

N_CTX = 512
THREADS = 1  # the server's steps take one core, the test's client the other

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Count from one to five.",
    "Name three colors.",
    "Hi!",
    "What is 2 + 2?",
]


def load_reference(path: Path) -> metallic.model.Model:
    return metallic.load(path, backend="cpu", n_ctx=N_CTX, threads=THREADS)


def load_slots(path: Path, n_slots: int, **kw: Any) -> tuple[metallic.model.Model, Slots]:
    return make_slots(path, n_slots, N_CTX, "cpu", threads=THREADS, **kw)


def chat_ids(model: metallic.model.Model, question: str, system: str | None = None) -> list[int]:
    messages = [{"role": "system", "content": system}] if system else []
    return chat_prompt_ids(model, [*messages, {"role": "user", "content": question}])


_GREEDY: dict[tuple[int, tuple[int, ...], int], tuple[list[int], str]] = {}


def greedy(model: metallic.model.Model, ids: Sequence[int], n: int) -> tuple[list[int], str]:
    """Model.generate's greedy continuation: (token ids, text), computed once per process."""
    key = (id(model), tuple(ids), n)
    if key not in _GREEDY:
        toks = list(model.generate(list(ids), n, temperature=0))
        _GREEDY[key] = ([t.id for t in toks if t.id >= 0], "".join(t.text for t in toks))
    ids_, text = _GREEDY[key]
    return list(ids_), text


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class GatedSlots:
    """Slots whose steps wait while the gate is closed: holds requests in their slots, so
    that the tests can fill the queue, or watch a request before it produced anything.
    let_one_step() lets a single step through a closed gate."""

    def __init__(self, slots: Slots) -> None:
        self._slots = slots
        self.gate = threading.Event()
        self.gate.set()
        self._passes = threading.Semaphore(0)
        self.entered = 0  # steps begun (maybe waiting at the gate)
        self.steps = 0  # steps run

    def __getattr__(self, name: str) -> Any:
        return getattr(self._slots, name)

    def let_one_step(self) -> None:
        self._passes.release()

    def step(self, work: Sequence[tuple[int, Sequence[int]]]) -> list[np.ndarray]:
        self.entered += 1
        deadline = time.monotonic() + 60
        while not self.gate.wait(0.005) and not self._passes.acquire(blocking=False):
            assert time.monotonic() < deadline, "a test left the gate closed"
        self.steps += 1
        return self._slots.step(work)


class LiveServer:
    """An app served by uvicorn on a free port of 127.0.0.1, in a thread of this process."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.app = app
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, timeout_graceful_shutdown=5
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def state(self) -> Any:
        return self.app.state.metallic

    def start(self, ready: bool = True) -> LiveServer:
        self._thread.start()
        wait_until(lambda: self.server.started, what="uvicorn to start")
        if ready:
            assert self.state.loaded.wait(60), "the model did not load"
            assert self.state.load_error is None, self.state.load_error
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(20)
        assert not self._thread.is_alive(), "the server did not stop"
        self._sock.close()


@contextmanager
def live_server(
    loader: Callable[[], Any], ready: bool = True, **options: Any
) -> Iterator[LiveServer]:
    from metallic.server.app import create_app
    from metallic.server.state import ServerOptions

    server = LiveServer(create_app(ServerOptions(**options), loader)).start(ready)
    try:
        yield server
    finally:
        server.stop()


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value in Prometheus text (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
