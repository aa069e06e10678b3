"""Several sequences in one model (load(n_seq=N), Model.slots()): a batched step must give every
sequence what it would get alone.

Exactly, on both backends: a step's decode rows run the one-token kernels and its prompt chunks
the batch kernels, as each sequence alone would (Backend::set_single_rows), so a request's
output never depends on what it was batched with.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import metallic
from metallic.batch import EngineSlots, SequentialSlots
from metallic.errors import ContextError, RequestError

sys.path.insert(0, str(Path(__file__).parent))
from oracle.tiny_models import VARIANTS, tiny_gguf  # noqa: E402

ARCHS = sorted({arch: variant for arch, variant in VARIANTS}.items())


def _script(n_vocab: int, seed: int) -> list[list[tuple[int, list[int]]]]:
    """Steps over three slots: prompts of different lengths joining at different steps, decodes
    alongside prompt chunks, a slot that sits out steps, a slot truncated and reused."""
    rng = np.random.default_rng(seed)

    def toks(n: int) -> list[int]:
        return [int(t) for t in rng.integers(0, n_vocab, n)]

    return [
        [(0, toks(7)), (2, toks(1))],
        [(0, toks(1)), (1, toks(12)), (2, toks(1))],
        [(1, toks(1)), (2, toks(1))],
        [(0, toks(1)), (1, toks(1)), (2, toks(5))],
        [(2, toks(1)), (0, toks(3)), (1, toks(1))],
        [(1, toks(1))],
        [(0, toks(1)), (1, toks(1)), (2, toks(1))],
        # two prompt chunks, one short enough for Metal's matvecs (8 tokens) and one not
        [(2, toks(10)), (0, toks(6)), (1, toks(1))],
    ]


def _run(slots, script) -> list[list[np.ndarray]]:
    out = []
    for i, work in enumerate(script):
        if i == 4:  # slot 1 forgets all but its first 5 tokens and goes on from there
            slots.truncate(1, 5)
        out.append(slots.step(work))
    return out


def _load(path: Path, backend: str, n_seq: int = 1) -> metallic.Model:
    return metallic.load(path, backend=backend, n_ctx=64, n_seq=n_seq, max_batch=32)


@pytest.mark.parametrize(("arch", "variant"), ARCHS, ids=[a for a, _ in ARCHS])
def test_cpu_step_equals_each_sequence_alone(arch: str, variant: str) -> None:
    path, _ = tiny_gguf(arch, "F16", variant)
    batched = _load(path, "cpu", n_seq=3).slots()
    alone = SequentialSlots([_load(path, "cpu") for _ in range(3)])
    script = _script(batched.n_vocab, seed=len(arch))
    for step, (got, want) in enumerate(
        zip(_run(batched, script), _run(alone, script), strict=True)
    ):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w, err_msg=f"step {step}")
    for slot in range(3):
        assert batched.tokens(slot) == alone.tokens(slot)


@pytest.mark.parametrize(("arch", "variant"), ARCHS, ids=[a for a, _ in ARCHS])
def test_metal_sim_step_equals_each_sequence_alone(arch: str, variant: str) -> None:
    """The same on the Metal backend: a step's decode rows take the matvec kernels (the norm
    fused in) exactly as a lone decode, its prompt chunks the GEMM as a lone prefill."""
    path, _ = tiny_gguf(arch, "F16", variant)
    batched = _load(path, "metal-sim", n_seq=3).slots()
    alone = SequentialSlots([_load(path, "metal-sim") for _ in range(3)])
    script = _script(batched.n_vocab, seed=7)
    for step, (got, want) in enumerate(
        zip(_run(batched, script), _run(alone, script), strict=True)
    ):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w, err_msg=f"step {step}")


def _q_kernels(model: metallic.Model, ids: list[int]) -> str:
    events: list[dict] = []
    model.trace(ids, events.append)
    model.reset()
    return next(e for e in events if e["op"] == "q")["kernels"]


def test_metal_short_prompt_is_computed_as_decode_steps() -> None:
    """On Metal a prompt chunk of up to 8 tokens takes the matvec kernels (one read of every
    weight, as a decode), longer ones the GEMM; so a short prompt's logits are, bit for bit,
    those of decoding its tokens one at a time, and a step computes such a chunk as the
    sequence alone would (the script's last step)."""
    path, _ = tiny_gguf("qwen2", "Q8_0", "gqa2-untied")
    m = _load(path, "metal-sim")
    ids = [int(t) for t in np.random.default_rng(3).integers(0, m.n_vocab, 9)]
    assert _q_kernels(m, ids[:8]).startswith("matvec")
    assert _q_kernels(m, ids).startswith("gemm")
    short = m.prefill(ids[:8]).copy()
    m.reset()
    steps = [m.decode(t).copy() for t in ids[:8]]
    np.testing.assert_array_equal(short, steps[-1])


def test_quantized_step_equals_alone(smollm2_path: Path) -> None:
    """A real Q4_1 model: the one-token kernels quantize the activations (Q8), so a decode row
    computed by the batch kernels would differ by about 1%; the step must not."""
    batched = metallic.load(smollm2_path, backend="cpu", n_ctx=64, n_seq=3, max_batch=32).slots()
    alone = SequentialSlots(
        [metallic.load(smollm2_path, backend="cpu", n_ctx=64, max_batch=32) for _ in range(3)]
    )
    script = _script(batched.n_vocab, seed=3)
    for got, want in zip(_run(batched, script), _run(alone, script), strict=True):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)


def test_sequence_zero_is_the_single_sequence_api(small_gguf: Path) -> None:
    model = _load(small_gguf, "cpu", n_seq=2)
    slots = model.slots()
    ref = _load(small_gguf, "cpu")
    slots.step([(1, [5, 6, 7]), (0, [1, 2])])  # slot 1 busy: slot 0 must not see it
    ref.prefill([1, 2])
    np.testing.assert_array_equal(model.decode(3), ref.decode(3))
    assert model.cached_tokens == [1, 2, 3] == slots.tokens(0)
    assert slots.tokens(1) == [5, 6, 7]
    model.reset()
    assert slots.tokens(0) == [] and slots.tokens(1) == [5, 6, 7]


@pytest.mark.parametrize(
    ("work", "error", "message"),
    [
        ([], RequestError, "at least one"),
        ([(3, [1])], RequestError, "slot 3 is outside"),
        ([(0, [1]), (0, [2])], RequestError, "twice"),
        ([(0, [])], RequestError, "no tokens"),
        ([(0, [1]), (1, [10**6])], RequestError, "outside the vocabulary"),
        ([(0, [1] * 20), (1, [1] * 20)], RequestError, "max_batch"),
        ([(1, [1] * 30)], ContextError, "context"),
    ],
)
def test_bad_steps_run_nothing(small_gguf: Path, work, error, message) -> None:
    model = metallic.load(small_gguf, backend="cpu", n_ctx=40, n_seq=2, max_batch=32)
    slots = model.slots()
    slots.step([(1, [1] * 12)])
    with pytest.raises(error, match=message):
        slots.step(work)
    assert slots.tokens(0) == [] and slots.tokens(1) == [1] * 12
    assert model._engine.past(0) == 0 and model._engine.past(1) == 12


def test_engine_checks_steps_itself(small_gguf: Path) -> None:
    """The core refuses what batch.py would: a caller of _core.Engine.step directly."""
    model = _load(small_gguf, "cpu", n_seq=2)
    engine = model._engine
    ids = np.array([1, 2], dtype=np.int32)
    with pytest.raises(RequestError, match="twice"):
        engine.step([0, 0], [ids, ids])
    with pytest.raises(RequestError, match="outside"):
        engine.step([2], [ids])
    with pytest.raises(RequestError, match="one id array per sequence"):
        engine.step([0, 1], [ids])
    assert engine.past(0) == engine.past(1) == 0


@pytest.mark.parametrize("n_seq", [0, -1, 5000, 1.5, True])
def test_n_seq_is_checked(small_gguf: Path, n_seq) -> None:
    with pytest.raises(RequestError, match="n_seq"):
        metallic.load(small_gguf, backend="cpu", n_seq=n_seq)


@pytest.mark.filterwarnings("ignore:n_ctx")
def test_absurd_cache_is_refused(small_gguf: Path) -> None:
    # 256 bytes a position: 2**20 positions for 4096 sequences is 1 TiB
    with pytest.raises(RequestError, match="for 4096 sequences needs a KV cache"):
        metallic.load(small_gguf, backend="cpu", n_ctx=2**20, n_seq=4096)


def test_slots_from_many_threads(small_gguf: Path) -> None:
    """Threads stepping their own slots take turns (the model's lock) and each gets what it
    would alone."""
    model = _load(small_gguf, "cpu", n_seq=4)
    slots: EngineSlots = model.slots()
    prompts = [[i + 1] * (3 + i) for i in range(4)]
    want = []
    for p in prompts:
        ref = _load(small_gguf, "cpu")
        logits = ref.prefill(p).copy()
        seq = [logits]
        for _ in range(5):
            seq.append(ref.decode(int(np.argmax(seq[-1]))).copy())
        want.append(seq)
    got: list[list[np.ndarray]] = [[] for _ in prompts]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            (logits,) = slots.step([(i, prompts[i])])
            got[i].append(logits)
            for _ in range(5):
                (logits,) = slots.step([(i, [int(np.argmax(logits))])])
                got[i].append(logits)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for i in range(4):
        for g, w in zip(got[i], want[i], strict=True):
            np.testing.assert_array_equal(g, w)
