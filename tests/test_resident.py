"""GPU-resident greedy decoding (Engine::decode_resident, generate.py's RESIDENT_BURST): the
backend picks each next token itself (metal/argmax.metal) and feeds it to the next pass, eight
tokens per command buffer and per wait. It must give the tokens the one-token path gives (the
host's greedy sampler on each token's logits), stop where it stops, and leave the cache as it
leaves it.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import metallic
from metallic import _core
from metallic.errors import ModelError, RequestError
from metallic.sampling import PICK_TOP_K_MAX, Sampler, SamplerSettings, greedy_status_error

sys.path.insert(0, str(Path(__file__).parent))
from oracle.tiny_models import VARIANTS, tiny_gguf  # noqa: E402

ARCHS = sorted({arch: variant for arch, variant in VARIANTS}.items())
BACKENDS = ["cpu", "metal-sim"]
PROMPT = [1, 5, 9, 2, 7]


def _generate(path: Path, backend: str, resident: bool, monkeypatch, n_ctx: int = 64, **kw):
    monkeypatch.setenv("METALLIC_GPU_RESIDENT", "1" if resident else "0")
    model = metallic.load(path, backend=backend, n_ctx=n_ctx)
    assert model.gpu_resident == resident
    model.reset_gpu_stats()
    tokens = [t.id for t in model.generate(PROMPT, temperature=0, **kw) if t.id >= 0]
    return model, tokens


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("arch", "variant"), ARCHS, ids=[a for a, _ in ARCHS])
def test_resident_tokens_equal_the_one_token_path(arch, variant, backend, monkeypatch):
    path, _ = tiny_gguf(arch, "F16", variant)
    one, want = _generate(path, backend, False, monkeypatch, max_tokens=20)
    res, got = _generate(path, backend, True, monkeypatch, max_tokens=20)
    assert got == want
    assert len(got) == 20
    assert res.n_past == one.n_past and res.cached_tokens == one.cached_tokens
    if backend == "metal-sim":
        # The prompt, then 19 decode passes: the host waits once each, or once per burst of 8.
        # The first burst is two command buffers (its first 16 dispatches go to the GPU early);
        # every later one was queued while the one before it ran: one command buffer.
        assert one.gpu_stats()["syncs"] == 20
        stats = res.gpu_stats()
        bursts = math.ceil(19 / 8)
        assert stats["syncs"] == 1 + bursts
        assert stats["command_buffers"] == _prompt_command_buffers(path) + 2 + (bursts - 1)


def _prompt_command_buffers(path: Path) -> int:
    model = metallic.load(path, backend="metal-sim", n_ctx=64)
    model.reset_gpu_stats()
    model.prefill(PROMPT)
    return model.gpu_stats()["command_buffers"]


def _one_token_path(path: Path, n: int) -> list[int]:
    """n greedy tokens after PROMPT, one decode() per token."""
    model = metallic.load(path, backend="metal-sim", n_ctx=64)
    logits = model.prefill(PROMPT)
    tokens = []
    for _ in range(n):
        tokens.append(int(np.argmax(logits)))
        logits = model.decode(tokens[-1])
    return tokens


def test_each_burst_queues_the_next_one_command_buffer_and_one_wait_per_burst():
    """Engine::decode_resident with n_next: the call queues the next burst before it waits, and
    the call that continues it finds it running. Past the first call, a burst of 8 tokens costs
    one command buffer and one host wait, and the tokens are the one-token path's."""
    arch, variant = ARCHS[0]
    path, _ = tiny_gguf(arch, "F16", variant)
    want = _one_token_path(path, 33)
    model = metallic.load(path, backend="metal-sim", n_ctx=64)
    model.prefill(PROMPT)
    engine = model._engine
    got = [want[0]]
    for k in range(4):
        model.reset_gpu_stats()
        tokens, status = engine.decode_resident(got[-1], 8, n_next=8 if k < 3 else 0)
        s = model.gpu_stats()
        assert status == [0] * 8
        got += tokens
        assert model.n_past == len(PROMPT) + 8 * (k + 1)  # a queued burst is not counted
        assert s["syncs"] == 1
        # k = 0: this burst (its first dispatches early) and the queued one; then the next
        # queued one only, and in the last call none
        assert s["command_buffers"] == (3 if k == 0 else 1 if k < 3 else 0)
    assert got == want


def test_a_profiled_engine_waits_for_its_bursts():
    """The profiling wrapper passes flush and wait_for through to the backend: a burst it did
    not wait for would be read before the GPU wrote it (the simulator runs work at once, so the
    backend's wait count is what shows it)."""
    arch, variant = ARCHS[0]
    path, _ = tiny_gguf(arch, "F16", variant)
    want = _one_token_path(path, 9)
    model = metallic.load(path, backend="metal-sim", n_ctx=64, profile=True)
    model.prefill(PROMPT)
    model.reset_gpu_stats()
    tokens, _ = model._engine.decode_resident(want[0], 4, n_next=4)
    assert model.gpu_stats()["syncs"] == 1 and model.gpu_stats()["command_buffers"] >= 2
    tokens += model._engine.decode_resident(tokens[-1], 4)[0]
    assert tokens == want[1:]
    assert model.gpu_stats()["syncs"] == 2


def test_a_queued_burst_nobody_continues_is_discarded():
    """Any other call (another first token, a prompt, a truncation) waits for the queued burst
    and drops it: the cache and the logits are as if it had never been queued."""
    arch, variant = ARCHS[1]
    path, _ = tiny_gguf(arch, "F16", variant)

    def run(queue: bool) -> list[np.ndarray]:
        model = metallic.load(path, backend="metal-sim", n_ctx=64)
        engine = model._engine
        model.prefill(PROMPT)
        out = []
        # Each call queues a burst shaped like the next call, which then differs in one thing.
        tokens, _ = engine.decode_resident(3, 4, n_next=4 if queue else 0)
        out.append(np.array(tokens))
        tokens, _ = engine.decode_resident(7, 4, n_next=5 if queue else 0)  # not tokens[-1]
        out.append(np.array(tokens))
        assert model.n_past == len(PROMPT) + 8
        out.append(model.prefill([2, 9]).copy())
        tokens, _ = engine.decode_resident(int(np.argmax(out[-1])), 5, n_next=5 if queue else 0)
        out.append(np.array(tokens))
        model._truncate(len(PROMPT) + 11)
        out.append(model.decode(4).copy())
        assert model.n_past == len(PROMPT) + 12
        tokens, _ = engine.decode_resident(6, 3, n_next=3 if queue else 0)
        out.append(np.array(tokens))
        tokens, _ = engine.decode_resident(tokens[-1], 3, seq=0, n_next=3 if queue else 0)
        out.append(np.array(tokens))  # this one continues
        assert model.n_past == len(PROMPT) + 18
        del model, engine  # a queued burst at the end: the engine waits for it
        return out

    for a, b in zip(run(True), run(False), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stop_inside_a_burst_truncates_what_ran_past_it(backend, monkeypatch):
    # A stop token first generated inside the second burst (tokens 9-16), with tokens of that
    # burst already run behind it: the first model and prompt whose greedy output has one.
    for arch, variant in ARCHS:
        path, _ = tiny_gguf(arch, "F16", variant)
        _, free = _generate(path, backend, False, monkeypatch, max_tokens=30)
        fresh = [j for j in range(9, 15) if free[j] not in free[:j]]
        if fresh:
            break
    else:
        pytest.fail("no tiny model's greedy output has a new token at positions 9-14")
    first = fresh[0]
    stop = free[first]
    one, want = _generate(path, backend, False, monkeypatch, max_tokens=30, stop_ids=[stop])
    res, got = _generate(path, backend, True, monkeypatch, max_tokens=30, stop_ids=[stop])
    assert got == want
    assert want == free[:first]
    assert res.n_past == one.n_past == len(PROMPT) + first
    assert res.cached_tokens == one.cached_tokens
    assert res.last_stats.stop_reason == one.last_stats.stop_reason == "eog"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_full_context_and_an_early_close(backend, monkeypatch):
    arch, variant = ARCHS[-1]
    path, _ = tiny_gguf(arch, "F16", variant)
    # 5 prompt tokens in a context of 16: the last burst is cut to the room left.
    one, want = _generate(path, backend, False, monkeypatch, n_ctx=16, max_tokens=40)
    res, got = _generate(path, backend, True, monkeypatch, n_ctx=16, max_tokens=40)
    assert got == want and len(got) == 16 - len(PROMPT) + 1
    assert res.last_stats.stop_reason == one.last_stats.stop_reason == "context"
    assert res.n_past == one.n_past == 16

    # A consumer that stops after 3 tokens leaves the cache where the one-token path does.
    for resident, model in ((False, one), (True, res)):
        monkeypatch.setenv("METALLIC_GPU_RESIDENT", "1" if resident else "0")
        model.reset()
        stream = model.generate(PROMPT, temperature=0, max_tokens=30)
        ids = [next(stream).id for _ in range(3)]
        stream.close()
        assert ids == want[:3]
        assert model.n_past == len(PROMPT) + 2  # the third token was never run
        assert model.cached_tokens == PROMPT + want[:2]


def test_settings_outside_the_shared_pick_take_the_host_path(monkeypatch):
    arch, variant = ARCHS[0]
    path, _ = tiny_gguf(arch, "F16", variant)
    monkeypatch.setenv("METALLIC_GPU_RESIDENT", "1")
    model = metallic.load(path, backend="metal-sim", n_ctx=64)
    for kw in (
        {"temperature": 0.7, "seed": 3, "top_k": 0},  # top-k off: the whole vocabulary
        {"temperature": 0.7, "seed": 3, "top_k": PICK_TOP_K_MAX + 1},
        {"temperature": 0.7, "seed": 3, "presence_penalty": 0.5},
        {"temperature": 0, "repeat_penalty": 1.3},
    ):
        model.reset_gpu_stats()
        list(model.generate(PROMPT, max_tokens=9, **kw))
        assert model.gpu_stats()["syncs"] == 9, kw  # the prompt and 8 single decodes


# Sampled settings the shared pick covers: llama.cpp's defaults, a hot and narrow one, the
# largest top-k with min-p alone, and a cold one.
SAMPLED = [
    {"seed": 11},
    {"seed": 12, "temperature": 1.7, "top_k": 5, "top_p": 0.9, "min_p": 0.0},
    {"seed": 2**70 + 5, "temperature": 1.0, "top_k": PICK_TOP_K_MAX, "top_p": 1.0, "min_p": 0.02},
    {"seed": 14, "temperature": 0.2, "top_k": 40, "top_p": 0.5, "min_p": 0.0},
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("arch", "variant"), ARCHS, ids=[a for a, _ in ARCHS])
def test_sampled_resident_tokens_equal_the_one_token_path(arch, variant, backend, monkeypatch):
    """The backend samples each burst with the host sampler's rule and stream: the tokens of
    every seeded setting are the one-token path's, and on metal-sim the waits are a burst's."""
    path, _ = tiny_gguf(arch, "F16", variant)
    for i, kw in enumerate(SAMPLED):
        kw = {"temperature": 0.8, **kw}
        monkeypatch.setenv("METALLIC_GPU_RESIDENT", "0")
        one = metallic.load(path, backend=backend, n_ctx=64)
        want = [t.id for t in one.generate(PROMPT, max_tokens=20, **kw) if t.id >= 0]
        monkeypatch.setenv("METALLIC_GPU_RESIDENT", "1")
        res = metallic.load(path, backend=backend, n_ctx=64)
        res.reset_gpu_stats()
        got = [t.id for t in res.generate(PROMPT, max_tokens=20, **kw) if t.id >= 0]
        assert got == want, kw
        assert res.n_past == one.n_past and res.cached_tokens == one.cached_tokens
        if backend == "metal-sim" and i == 0 and len(got) == 20:
            assert res.gpu_stats()["syncs"] == 1 + math.ceil(19 / 8)
    # Different seeds give different streams (20 tokens of a tiny model's sampled output).
    runs = {
        tuple(t.id for t in res.generate(PROMPT, max_tokens=20, seed=s, temperature=1.5))
        for s in range(4)
    }
    assert len(runs) > 1


def test_decode_resident_arguments(monkeypatch):
    arch, variant = ARCHS[0]
    path, _ = tiny_gguf(arch, "F16", variant)
    model = metallic.load(path, backend="metal-sim", n_ctx=16)
    model.prefill(PROMPT)
    engine = model._engine
    for n in (0, -1, 65):
        with pytest.raises(RequestError, match="decode_resident runs 1 to 64 tokens"):
            engine.decode_resident(1, n)
    with pytest.raises(RequestError, match="outside the vocabulary"):
        engine.decode_resident(model.n_vocab, 2)
    with pytest.raises(metallic.errors.ContextError):
        engine.decode_resident(1, 16 - len(PROMPT) + 1)
    assert model.n_past == len(PROMPT)
    tokens, status = engine.decode_resident(1, 16 - len(PROMPT))
    assert status == [0] * len(tokens) and model.n_past == 16


# ---- the kernel ------------------------------------------------------------------------------


def _argmax_kernel(x: np.ndarray, threads: int) -> tuple[int, int]:
    from metal_sim_helpers import args

    token = np.full(1, -7, np.int32)
    status = np.full(1, -7, np.int32)
    _core.sim_dispatch("argmax_f32", [args("i", x.size), x, token, status], [1], [threads])
    return int(token[0]), int(status[0])


def _argmax_reference(x: np.ndarray) -> tuple[int, int]:
    """What the host's greedy sampler picks or refuses (sampling.py)."""
    if np.isnan(x).any():
        return 0, 1
    i = int(np.argmax(x))
    if x[i] == np.inf:
        return 0, 2
    if x[i] == -np.inf:
        return 0, 3
    return i, 0


@pytest.mark.parametrize("n", [1, 31, 33, 1000, 151_936])
@pytest.mark.parametrize("threads", [32, 256, 1024])
def test_argmax_kernel_matches_numpy(n, threads):
    rng = np.random.default_rng(n + threads)
    x = rng.standard_normal(n).astype(np.float32)
    assert _argmax_kernel(x, threads) == _argmax_reference(x)
    # Ties go to the first index, wherever the copies fall among threads and simdgroups.
    x[rng.integers(0, n, 5)] = 9.0
    assert _argmax_kernel(x, threads) == _argmax_reference(x)
    # Quantized logits tie everywhere.
    q = np.round(x * 2).astype(np.float32)
    assert _argmax_kernel(q, threads) == _argmax_reference(q)


@pytest.mark.parametrize(
    ("fill", "status"),
    [(np.nan, 1), (np.inf, 2), (-np.inf, 3)],
    ids=["nan", "inf", "all -inf"],
)
def test_argmax_kernel_reports_what_the_sampler_refuses(fill, status):
    x = np.full(4099, -np.inf, np.float32)
    if status != 3:
        x[:] = np.arange(4099, dtype=np.float32)
        x[2050] = fill
    assert _argmax_kernel(x, 256) == (0, status)
    assert _argmax_reference(x) == (0, status)
    err = greedy_status_error(status)
    with pytest.raises(type(err), match=re.escape(str(err))):
        Sampler(SamplerSettings(temperature=0)).sample(x)
    assert isinstance(err, ModelError if status < 3 else RequestError)
