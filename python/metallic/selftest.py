"""The first-use self-test of a GPU backend: a tiny random model, run by the GPU and by the CPU
backend, whose logits must agree.

`gpu_self_test(backend, types)` writes a llama-architecture model (n_embd 256, 4 heads on 2 KV
heads of 64, n_ff 256, a vocabulary of 64) with one layer per weight format asked for (layer i
in types[i % n]; the token embedding in the first, the output head in the last), loads it twice
the way `metallic.load` does (model.engine_for), on `backend` and on `cpu`, and compares a
prefill of 9 tokens (every row's logits: the GEMM kernels) and 3 decode steps (the matvec
kernels). Every dispatch of a decode step is on that path: embedding, the fused norm + q/k/v,
RoPE with the cache write, attention, the output projection, the fused norm + gate/up + GLU,
the down projection, the output head. A kernel that is wrong, writes nothing or does not build
on this device fails the test, which names the step and its nmse (or the error). Not on the
path: the split attention of 256 positions and more, the float KV cache, NeoX RoPE, Gemma's
post-norms, GeGLU and softcap (the simulator's whole-model tests cover those).

Cost on `metal-sim` (2-core x86-64 shared with other jobs): 0.2 to 0.45 s for the default three
formats, 1.1 to 1.8 s for all thirteen, plus 0.15 s the first time for importing gguf-py (which
writes the model); writing the model and running the CPU take a few ms of that, the simulated
kernels the rest. On a real GPU the kernels take microseconds: the test costs about what
writing and loading a tiny model does, tens of ms with the import. Results are cached per
(backend, formats) for the life of the process; `clear_cache()` forgets them.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _core
from .errors import MetallicError, RequestError
from .ggml_types import GGMLQuantizationType

Q = GGMLQuantizationType

DEFAULT_TYPES: tuple[GGMLQuantizationType, ...] = (Q.F16, Q.Q8_0, Q.Q4_K)

# The nmse (sum of squared differences / sum of squares of the CPU's logits) a step may reach.
# Measured between metal-sim and cpu (avx2 kernels) on this model, the worst step of each format
# alone:
#   F32 2.6e-13, F16 1.7e-13, BF16 1.8e-13 (the same arithmetic up to summation order)
#   Q8_0 3.1e-09, Q4_0 8.6e-05, Q4_1 1.7e-04, Q5_0 8.8e-05, Q5_1 8.5e-05
#   Q2_K 3.0e-04, Q3_K 3.8e-04, Q4_K 3.0e-04, Q5_K 2.4e-04, Q6_K 2.2e-04
#   the default three in one model 2.2e-04, all thirteen 1.9e-04
# The prefill agrees to 6e-09 for every format: the quantized ones differ in the decode steps,
# where the CPU multiplies with 8-bit activations and the kernels with float ones. Other seeds
# (six per format) gave up to 4.7e-04, and once 2.4e-03 (Q5_K). The bound is ~10x the worst of
# this seed. A kernel of the path that writes nothing (METALLIC_SIM_SKIP_KERNEL: matvec,
# matvec_jobs, matvec_glu, gemm, embed, rmsnorm, rope_store_kv, attention, glu) lands at 0.27 to
# 1.9.
NMSE_BOUND = 5e-3

# One more than the prompt chunks Metal computes with the decode kernels (MATVEC_TOKENS, args.h):
# the prefill takes the GEMM kernels.
N_PREFILL = 9
N_DECODE = 3

_SHAPE = dict(n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_ff=256, n_vocab=64)
# Offsets of the half-precision scale fields in a block of each K-quant (ggml's block_q*_K):
# d (and dmin) scale every value of the block linearly.
_K_QUANT_HALF_FIELDS = {
    Q.Q2_K: (80, 82),
    Q.Q3_K: (108,),
    Q.Q4_K: (0, 2),
    Q.Q5_K: (0, 2),
    Q.Q6_K: (208,),
}
# The formats with a minimum (value = d * scale * q - dmin * min, 4- or 6-bit scale and min):
# with dmin = d * mean(q) the random values are centred on zero, as trained weights are; with
# random d and dmin they are all of one sign, and every dot product of the model a large sum.
_K_QUANT_MEAN_Q = {Q.Q2_K: 1.5, Q.Q4_K: 7.5, Q.Q5_K: 15.5}
_K_BLOCK = 256
# The kernels cpp/metal/metal_backend.cpp builds for each weight format, named <kernel>_<format>.
_FORMAT_KERNELS = ("embed", "gemm", "matvec", "matvec_jobs", "matvec_glu")


@dataclass(frozen=True)
class SelfTestResult:
    passed: bool
    detail: str  # one line: what ran and the worst nmse, or the step that failed and why
    seconds: float


_cache: dict[tuple[str, frozenset[GGMLQuantizationType]], SelfTestResult] = {}
_lock = threading.Lock()


def clear_cache() -> None:
    """Forgets every result, so that the next gpu_self_test runs again (tests)."""
    with _lock:
        _cache.clear()


def supported_types() -> tuple[GGMLQuantizationType, ...]:
    """The weight formats the self-test (and the Metal backend) covers: every format the core
    reads (`_core.supported_formats()`) that has the Metal kernels the backend builds for a
    format, as far as this build can tell (the simulator's kernel list, when it has one)."""
    names = [n.strip() for n in _core.supported_formats().split(",") if n.strip()]
    kernels = set(_core.sim_kernels()) if hasattr(_core, "sim_kernels") else None
    out = []
    for name in names:
        sfx = name.lower()
        if kernels is None or all(f"{k}_{sfx}" in kernels for k in _FORMAT_KERNELS):
            out.append(GGMLQuantizationType[name])
    return tuple(out)


def _normalize(types: Iterable[int] | None) -> tuple[GGMLQuantizationType, ...]:
    if types is None:
        return DEFAULT_TYPES
    out: list[GGMLQuantizationType] = []
    supported = supported_types()
    for t in types:
        q = GGMLQuantizationType(int(t))
        if q not in supported:
            raise RequestError(
                f"the self-test cannot check weight type {q.name} (supported: "
                f"{', '.join(s.name for s in supported)})"
            )
        if q not in out:
            out.append(q)
    if not out:
        raise RequestError("the self-test needs at least one weight type")
    return tuple(sorted(out))  # one model per set, whatever the order given


def gpu_self_test(backend: str = "metal", types: Iterable[int] | None = None) -> SelfTestResult:
    """Runs (once per process for these arguments) the tiny model on `backend` and on the CPU
    and compares their logits. `types`: the weight formats to cover (GGML type ids or
    enums; default F16, Q8_0, Q4_K)."""
    wanted = _normalize(types)
    key = (backend, frozenset(wanted))
    with _lock:  # one run at a time: two threads loading models share the first one's result
        if key not in _cache:
            _cache[key] = _run(backend, wanted)
        return _cache[key]


def nmse(got: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    return float(np.sum((got - ref) ** 2) / max(float(np.sum(ref**2)), 1e-30))


def _run(backend: str, types: tuple[GGMLQuantizationType, ...]) -> SelfTestResult:
    from .config import check_tensors, model_config
    from .gguf_file import read_gguf
    from .model import engine_for

    t0 = time.perf_counter()
    names = ", ".join(t.name for t in types)

    def result(passed: bool, what: str) -> SelfTestResult:
        return SelfTestResult(passed, what, time.perf_counter() - t0)

    def failed(what: str) -> SelfTestResult:
        return result(False, f"failed {what} ({backend} vs cpu, {names} weights)")

    rng = np.random.default_rng(20240614)
    ids = rng.integers(0, _SHAPE["n_vocab"], N_PREFILL + N_DECODE).astype(np.int32)
    with tempfile.TemporaryDirectory(prefix="metallic-selftest-") as tmp:
        path = write_model(Path(tmp) / "selftest.gguf", types, rng)
        g = read_gguf(path)
        cfg = model_config(g)
        tensors = check_tensors(g, cfg)
        opts = dict(n_ctx=N_PREFILL + N_DECODE, threads=1, kv_f32=False, max_batch=N_PREFILL)
        cpu = engine_for(g, cfg, tensors, "cpu", **opts)
        want = [cpu.prefill_all(ids[:N_PREFILL])]
        want += [np.array(cpu.decode(int(t))) for t in ids[N_PREFILL:]]
        del cpu
        steps = [f"at the prefill of {N_PREFILL} tokens"]
        steps += [f"at decode step {i + 1} of {N_DECODE}" for i in range(N_DECODE)]
        worst = 0.0
        gpu = None
        step = f"building the {backend} engine"  # the library, every pipeline
        try:
            gpu = engine_for(g, cfg, tensors, backend, **opts)
            for i, ref in enumerate(want):
                step = steps[i]
                got = (
                    gpu.prefill_all(ids[:N_PREFILL])
                    if i == 0
                    else np.array(gpu.decode(int(ids[N_PREFILL + i - 1])))
                )
                err = nmse(got, ref)
                if not err <= NMSE_BOUND:  # NaN fails too
                    return failed(f"{step}: nmse {_fmt(err)} above {_fmt(NMSE_BOUND)}")
                worst = max(worst, err)
        except (MetallicError, RuntimeError, ValueError, MemoryError) as e:
            return failed(f"{step}: {' '.join(str(e).split())}")
        finally:
            del gpu  # before the file goes away
    return result(
        True,
        f"passed: {backend} agrees with cpu on {names} weights over a prefill of {N_PREFILL} "
        f"tokens and {N_DECODE} decode steps (worst nmse {_fmt(worst)}, bound {_fmt(NMSE_BOUND)})",
    )


def _fmt(x: float) -> str:
    return f"{x:.1e}" if math.isfinite(x) else str(x)


def write_model(
    path: Path, types: tuple[GGMLQuantizationType, ...], rng: np.random.Generator
) -> Path:
    """The self-test's model: one layer per format, random weights of sane magnitude."""
    import gguf  # a core dependency, imported only here: loading a model does not need it

    s = _SHAPE
    d, hd, ff, V = s["n_embd"], s["head_dim"], s["n_ff"], s["n_vocab"]
    qd, kvd = s["n_head"] * hd, s["n_head_kv"] * hd
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("metallic self-test")
    w.add_block_count(len(types))
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)

    def matrix(name: str, shape: tuple[int, int], qtype: GGMLQuantizationType, rms: float) -> None:
        raw = encode(rng, shape, qtype, rms)
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, raw)
        else:
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType(qtype))

    def vector(name: str) -> None:
        w.add_tensor(name, (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))

    matrix("token_embd.weight", (V, d), types[0], 1.0)
    for i in range(len(types)):
        t, p = types[i], f"blk.{i}."
        vector(p + "attn_norm.weight")
        vector(p + "ffn_norm.weight")
        for name, shape in (
            ("attn_q", (qd, d)),
            ("attn_k", (kvd, d)),
            ("attn_v", (kvd, d)),
            ("attn_output", (d, qd)),
            ("ffn_gate", (ff, d)),
            ("ffn_up", (ff, d)),
            ("ffn_down", (d, ff)),
        ):
            matrix(f"{p}{name}.weight", shape, t, 1 / math.sqrt(shape[1]))
    vector("output_norm.weight")
    matrix("output.weight", (V, d), types[-1], 2 / math.sqrt(d))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def encode(
    rng: np.random.Generator, shape: tuple[int, int], qtype: GGMLQuantizationType, rms: float
) -> np.ndarray:
    """A random [rows, cols] matrix in `qtype` whose values have about this root mean square:
    quantized by gguf-py where it can; K-quants (which gguf-py cannot quantize) as random
    blocks whose half scale fields are then scaled so that the values have that size."""
    from gguf import GGMLQuantizationType as GgufType
    from gguf import quants

    rows, cols = shape
    theirs = GgufType(int(qtype))
    if qtype in _K_QUANT_HALF_FIELDS:
        nbytes = _k_block_bytes(qtype)
        raw = rng.integers(0, 256, (rows, cols // _K_BLOCK, nbytes), dtype=np.uint8)
        fields = _K_QUANT_HALF_FIELDS[qtype]
        d = rng.uniform(0.5, 1.5, raw.shape[:2]) / 64
        scales = [d] if len(fields) == 1 else [d, d * _K_QUANT_MEAN_Q[qtype]]
        for off, scale in zip(fields, scales, strict=True):
            half = scale.astype(np.float16).view(np.uint8).reshape(rows, cols // _K_BLOCK, 2)
            raw[:, :, off : off + 2] = half
        # Every value is linear in the block's d (and dmin): scaling them scales the matrix.
        values = quants.dequantize(raw.reshape(rows, -1), theirs)
        factor = rms / max(float(np.sqrt(np.mean(values.astype(np.float64) ** 2))), 1e-30)
        for off in fields:
            half = raw[:, :, off : off + 2].copy().view(np.float16)
            raw[:, :, off : off + 2] = (
                (half.astype(np.float32) * factor).astype(np.float16).view(np.uint8)
            )
        return np.ascontiguousarray(raw.reshape(rows, -1))
    values = (rng.standard_normal(shape) * rms).astype(np.float32)
    if qtype == Q.F32:
        return values
    return quants.quantize(values, theirs)


def _k_block_bytes(qtype: GGMLQuantizationType) -> int:
    from .ggml_types import GGML_QUANT_SIZES

    return GGML_QUANT_SIZES[qtype][1]
