"""`trace`: the observation points of the forward pass (cpp/engine/trace.h), the events and their
statistics, the sampler's explanation, the dump, and `--compare` against transformers.

On the tiny models of oracle/tiny_models.py, in process (metallic.cli.main), on the CPU and the
Metal simulator.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

import metallic
from metallic import _core
from metallic.cli import main
from metallic.sampling import Sampler, SamplerSettings
from metallic.trace import TensorStats, expected_ops, explain_sample, run_trace
from oracle.tiny_models import tiny_gguf

# One variant per architecture, F32 (the arithmetic only: no rounding of the weights).
ARCHS = {
    "qwen2": "gqa2-untied",  # q/k/v biases
    "llama": "gqa2-untied",  # Q/K rows permuted by the converter (interleaved RoPE)
    "qwen3": "gqa2-hd24",  # qk-norm, head_dim != n_embd / n_head
    "gemma3": "swa-hd32",  # qk-norm, post-norms, sliding window, GeGLU, embedding scale
}
BACKENDS = ["cpu"] + (["metal-sim"] if _core.metal_sim_available() else [])
PROMPT = [5, 6, 7, 8, 9, 10, 11]


def load(arch: str, backend: str = "cpu") -> metallic.Model:
    return metallic.load(tiny_gguf(arch, "F32", ARCHS[arch])[0], backend=backend, n_ctx=64)


def expected_sequence(cfg: object) -> list[tuple[int, str]]:
    ops = [(-1, "embed")]
    for layer in range(cfg.n_layer):  # type: ignore[attr-defined]
        ops += [(layer, op) for op in expected_ops(cfg)]
    ops += [(-1, "output_norm"), (-1, "logits")]
    if cfg.final_logit_softcap > 0:  # type: ignore[attr-defined]
        ops.append((-1, "logit_softcap"))
    return ops


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_op_in_order_with_the_config_shapes(arch: str, backend: str) -> None:
    m, fused = load(arch, backend), load(arch, backend)  # the fused pass in a cache of its own
    cfg = m.config
    want_logits = fused.prefill(PROMPT).copy()
    events: list[dict] = []
    logits = m.trace(PROMPT, events.append)
    assert [(e["layer"], e["op"]) for e in events] == expected_sequence(cfg)
    n, d, ff = len(PROMPT), cfg.n_embd, cfg.n_ff
    qd, kvd = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    width = {"q": qd, "q_norm": qd, "rope_q": qd, "attention": qd, "k": kvd, "v": kvd}
    width |= {"k_norm": kvd, "rope_k": kvd, "ffn_gate": ff, "ffn_up": ff, "glu": ff}
    for e in events:
        rows = 1 if e["op"] in ("output_norm", "logits", "logit_softcap") else n
        cols = cfg.n_vocab if e["op"] in ("logits", "logit_softcap") else width.get(e["op"], d)
        assert e["data"].shape == (rows, cols), (e["layer"], e["op"])
        assert e["input_shape"][0] == rows
        assert e["pos"] == (n - 1 if rows == 1 else 0)
        assert e["seconds"] >= 0
        assert (e["weight"] is not None) == (e["op"] in _MATMUL_OPS or _accumulated(e))
    # The traced pass computes what the fused one does: bit for bit on the CPU (the same
    # kernels), to rounding on the simulator (its fused kernels order sums differently).
    same = np.testing.assert_array_equal
    if backend != "cpu":

        def same(a: np.ndarray, b: np.ndarray) -> None:
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)

    same(logits, want_logits)
    assert m.n_past == n and m.cached_tokens == PROMPT
    # A decode step, traced: one row at the next position, reading the cache the traced
    # prompt wrote.
    one: list[dict] = []
    same(m.trace([3], one.append), fused.decode(3))
    assert [(e["layer"], e["op"]) for e in one] == expected_sequence(cfg)
    assert {e["data"].shape[0] for e in one} == {1} and {e["pos"] for e in one} == {n}
    if backend == "metal-sim":  # the kernels each op dispatched are named
        assert all(e["kernels"] for e in events if e["op"] != "rope_k")
        assert next(e for e in one if e["op"] == "q")["kernels"].startswith("matvec_")


_MATMUL_OPS = {"embed", "q", "k", "v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "logits"}


def _accumulated(e: dict) -> bool:
    # Without an add kernel (Metal) the residual add is the product again, accumulated.
    return e["routine"] == "matmul accumulate"


def test_a_failing_callback_stops_the_pass_and_leaves_the_model_usable() -> None:
    m = load("qwen2")
    want = m.prefill(PROMPT).copy()
    m.reset()
    seen = []

    def boom(e: dict) -> None:
        seen.append(e["op"])
        if len(seen) == 5:
            raise ValueError("stop here")

    with pytest.raises(ValueError, match="stop here"):
        m.trace(PROMPT, boom)
    assert m.n_past == 0 and m.cached_tokens == []
    np.testing.assert_array_equal(m.prefill(PROMPT), want)  # no observer left behind: fused


def test_a_callback_that_calls_the_engine_is_refused_not_deadlocked() -> None:
    m = load("qwen2")

    def reenter(e: dict) -> None:
        m.decode(3)

    with pytest.raises(metallic.RequestError, match="observer called the engine"):
        m.trace(PROMPT, reenter)
    assert m.n_past == 0
    m.prefill(PROMPT)  # and the engine is free again


def test_trace_json_dump_and_statistics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_gguf("qwen3", "F32", ARCHS["qwen3"])[0]
    ids = ",".join(map(str, PROMPT))
    argv = ["trace", "-m", str(path), "--prompt-ids", ids, "-n", "3", "--json", "--seed", "3"]
    assert main([*argv, "--dump", str(tmp_path), "--backend", "cpu"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [r["event"] for r in records]
    assert (
        kinds[0] == "model" and kinds.count("token") == len(PROMPT) and kinds.count("sample") == 3
    )
    ops = [r for r in records if r["event"] == "op"]
    cfg = metallic.load(path, n_ctx=16).config
    per_pass = len(expected_sequence(cfg))
    assert len(ops) == 3 * per_pass  # the prompt's pass and two decode passes
    assert [r["step"] for r in ops] == [s for s in range(3) for _ in range(per_pass)]

    # Every op's statistics are those of its dumped output.
    dumped = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(r["step"], r["layer"], r["op"]) for r in dumped] == [
        (r["step"], r["layer"], r["op"]) for r in ops
    ]
    for r in dumped:
        x = np.load(tmp_path / r["file"]).astype(np.float64)
        assert list(x.shape) == r["shape"]
        assert r["mean"] == pytest.approx(x.mean(), rel=1e-9, abs=1e-12)
        assert r["rms"] == pytest.approx(np.sqrt(np.mean(x * x)), rel=1e-9)
        assert r["max_abs"] == pytest.approx(np.abs(x).max(), rel=1e-9)
        assert r["nonfinite"] == 0
    assert (tmp_path / "step0" / "L01.attention.npy").exists()
    assert (tmp_path / "step2" / "logits.npy").exists()
    samples = [r for r in records if r["event"] == "sample"]
    tokens = np.load(tmp_path / "tokens.npy")
    assert tokens.tolist() == PROMPT + [s["chosen"] for s in samples]
    # The token stream is generate()'s for the same settings and seed.
    m = metallic.load(path, n_ctx=16)
    settings = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=3)
    got = [t.id for t in m.generate(PROMPT, 3, stop_ids=[], **settings) if t.id >= 0]
    assert got == [s["chosen"] for s in samples]


def test_layers_and_ops_select(capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_gguf("gemma3", "F32", ARCHS["gemma3"])[0]
    argv = ["trace", "-m", str(path), "--prompt-ids", "3,4,5", "-n", "1", "--json"]
    assert main([*argv, "--layers", "1,4-5", "--ops", "attention,ffn_down,logits"]) == 0
    ops = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    got = [(r["layer"], r["op"]) for r in ops if r["event"] == "op"]
    want = [(layer, op) for layer in (1, 4, 5) for op in ("attention", "ffn_down")]
    assert got == [*want, (-1, "logits")]
    # The text form: a header line and one line per shown op.
    assert main([*argv[:-1], "--layers", "0", "--ops", "glu"]) == 0
    text = capsys.readouterr().out
    assert len([line for line in text.splitlines() if " glu " in line]) == 1
    assert "chose id" in text and "logits at position 3" in text


def test_stats_count_nonfinite_values_apart() -> None:
    x = np.array([[1.0, -3.0, np.nan, np.inf]], np.float32)
    s = TensorStats.of(x)
    assert (s.mean, s.max_abs, s.nonfinite) == (-1.0, 3.0, 2)
    assert s.rms == pytest.approx(math.sqrt(5))


@pytest.mark.parametrize(
    "settings",
    [
        SamplerSettings(temperature=0.7, top_k=20, top_p=0.9, min_p=0.02, seed=1),
        SamplerSettings(temperature=1.3, top_k=0, top_p=0.8, min_p=0.0, seed=1),
        SamplerSettings(temperature=0.9, top_k=0, top_p=1.0, min_p=0.1, seed=1),
        SamplerSettings(temperature=1.0, top_k=50, top_p=1.0, min_p=0.0, repeat_penalty=1.3),
        SamplerSettings(temperature=0, seed=1),
    ],
)
def test_sampling_explanation_is_the_samplers_distribution(settings: SamplerSettings) -> None:
    m = load("qwen2")
    logits = (np.random.default_rng(5).standard_normal(m.n_vocab) * 3).astype(np.float32)
    history = [1, 2, 3, 2]
    s = explain_sample(m, logits, history, settings)
    assert s.distribution is not None
    tokens, probs = s.distribution
    want_tokens, want_probs = Sampler(settings).distribution(logits, history)
    order = np.argsort(want_tokens)
    assert sorted(tokens.tolist()) == want_tokens[order].tolist()
    np.testing.assert_allclose(probs[np.argsort(tokens)], want_probs[order], rtol=1e-9)
    for f in s.filters:  # each stage keeps at most what it was given
        assert f.after <= f.before
    assert s.filters[-1].after == tokens.size
    assert [c.id for c in s.top] == np.argsort(-logits, kind="stable")[:10].tolist()


# -- compare ----------------------------------------------------------------------------------


@pytest.fixture
def transformers() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")


def compare_cli(
    capsys: pytest.CaptureFixture[str], gguf: Path, hf_dir: Path, backend: str = "cpu"
) -> tuple[int, list[dict]]:
    argv = ["trace", "-m", str(gguf), "--prompt-ids", ",".join(map(str, PROMPT)), "--json"]
    status = main([*argv, "--compare", str(hf_dir), "--backend", backend])
    return status, [json.loads(x) for x in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("arch", ARCHS)
def test_compare_agrees_with_transformers(
    arch: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], transformers: None
) -> None:
    gguf, hf = tiny_gguf(arch, "F32", ARCHS[arch])
    hf.save_pretrained(tmp_path)
    status, records = compare_cli(capsys, gguf, tmp_path)
    verdict = records[-1]
    assert verdict["event"] == "verdict" and verdict["agree"], verdict["text"]
    assert status == 0
    errors = {(r["layer"], r["op"]): r["rel_rms"] for r in records if r["event"] == "compare"}
    # Every op has a counterpart in transformers, and a float32 file agrees to rounding.
    assert len(errors) == len(expected_sequence(metallic.load(gguf, n_ctx=8).config))
    assert all(v is not None and v < 1e-5 for v in errors.values()), errors


@pytest.mark.parametrize(
    ("module", "op", "backend"),
    [("self_attn.v_proj", "v", "cpu"), ("mlp.down_proj", "ffn_down", BACKENDS[-1])],
)
def test_compare_finds_a_planted_discrepancy(
    module: str,
    op: str,
    backend: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    transformers: None,
) -> None:
    import torch

    gguf, hf = tiny_gguf("llama", "F32", ARCHS["llama"])
    planted = copy.deepcopy(hf)
    with torch.no_grad():  # one weight of layer 1, after the GGUF was written from the original
        planted.get_parameter(f"model.layers.1.{module}.weight")[3, 5] += 0.5
    planted.save_pretrained(tmp_path)
    status, records = compare_cli(capsys, gguf, tmp_path, backend)
    verdict = records[-1]
    assert (verdict["agree"], verdict["first_layer"], verdict["first_op"]) == (False, 1, op)
    assert status == 1
    errors = [r for r in records if r["event"] == "compare"]
    before = errors[: [(r["layer"], r["op"]) for r in errors].index((1, op))]
    assert before and all(r["rel_rms"] < 1e-5 for r in before)


def test_html_page_and_attention_pattern(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("plotly")
    from metallic.trace_html import attention_pattern

    path = tiny_gguf("gemma3", "F32", ARCHS["gemma3"])[0]  # layer 2: an 8-token window
    page = tmp_path / "trace.html"
    ids = ",".join(map(str, range(3, 15)))
    argv = ["trace", "-m", str(path), "--prompt-ids", ids, "-n", "2", "--ops", "logits"]
    assert main([*argv, "--html", str(page), "--attention-layer", "2"]) == 0
    text = page.read_text()
    assert text.count('class="plotly-graph-div"') == 4 and text.count("plotly.js v") == 1

    # The pattern drawn is the one the attention op applied: its weights times V give the op's
    # output (an F32 model keeps its cache in float32).
    m = load("gemma3")
    t = run_trace(m, list(range(3, 15)), 0, SamplerSettings(temperature=0), keep_data=True)
    p = attention_pattern(t, m, 2)
    n, cfg = 12, m.config
    assert np.allclose(p.sum(axis=2), 1) and not np.triu(p, 1).any()
    assert not np.tril(p, -8).any()  # nothing beyond the window
    ev = {e.op: e.data for e in t.events if e.layer == 2 and e.step == 0}
    v = ev["v"].reshape(n, cfg.n_head_kv, cfg.head_dim)
    group = cfg.n_head // cfg.n_head_kv
    out = np.stack([p[h] @ v[:, h // group] for h in range(cfg.n_head)], axis=1)
    np.testing.assert_allclose(out.reshape(n, -1), ev["attention"], rtol=0, atol=1e-5)
