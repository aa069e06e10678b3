"""From GGUF metadata to a typed model config, and the checks that the tensors match it.

The forward pass in the C++ core is written once; architectures differ only by the flags set
here (ARCHS). Every key read is type-checked, and every tensor the forward pass will touch is
checked for presence, shape and type before the core sees the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _core
from .errors import ModelError
from .gguf_file import GGUFFile, TensorInfo


@dataclass(frozen=True)
class ArchTraits:
    rope_style: str  # "interleaved" (llama.cpp's normal style) or "neox"
    qkv_bias: bool = False
    qk_norm: bool = False
    post_norms: bool = False
    activation: str = "silu"
    scale_embeddings: bool = False  # multiply embeddings by sqrt(n_embd)
    # Interleaved sliding-window attention: every `swa_pattern`-th layer is global, the others
    # see the last `attention.sliding_window` positions with RoPE base `swa_rope_base`.
    swa_pattern: int = 0
    swa_rope_base: float = 10000.0


# The architectures this engine runs. Adding one is adding a row here (and, if it needs a new
# kind of layer, a flag in cpp/engine/config.h).
ARCHS: dict[str, ArchTraits] = {
    "qwen2": ArchTraits(rope_style="neox", qkv_bias=True),
    "llama": ArchTraits(rope_style="interleaved"),
    "qwen3": ArchTraits(rope_style="neox", qk_norm=True),
    "gemma3": ArchTraits(
        rope_style="neox",
        qk_norm=True,
        post_norms=True,
        activation="gelu_tanh",
        scale_embeddings=True,
        swa_pattern=6,
    ),
}


@dataclass
class ModelConfig:
    arch: str
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    rms_eps: float
    rope_base: float
    rope_base_local: float
    rope_freq_scale: float
    rope_freq_scale_local: float
    rope_dims: int
    rope_style: str
    qkv_bias: bool
    qk_norm: bool
    post_norms: bool
    activation: str
    embed_scale: float
    attn_scale: float
    final_logit_softcap: float
    tied_output: bool
    sliding_window: list[int] = field(default_factory=list)

    def to_core(self) -> _core.ModelConfig:
        c = _core.ModelConfig()
        for key in (
            "arch",
            "n_layer",
            "n_embd",
            "n_head",
            "n_head_kv",
            "head_dim",
            "n_ff",
            "n_vocab",
            "n_ctx_train",
            "rms_eps",
            "rope_base",
            "rope_base_local",
            "rope_freq_scale",
            "rope_dims",
            "qkv_bias",
            "qk_norm",
            "post_norms",
            "embed_scale",
            "attn_scale",
            "final_logit_softcap",
            "sliding_window",
        ):
            setattr(c, key, getattr(self, key))
        c.rope_style = getattr(_core.RopeStyle, self.rope_style)
        c.activation = getattr(_core.Activation, self.activation)
        return c


class _Meta:
    """Typed access to one architecture's metadata keys, with errors naming file and key."""

    def __init__(self, g: GGUFFile, arch: str) -> None:
        self.g = g
        self.arch = arch

    def _fail(self, key: str, what: str) -> ModelError:
        return ModelError(f"{self.g.path}: metadata '{key}' {what}")

    def int(self, key: str, default: int | None = None, *, minimum: int = 1) -> int:
        full = f"{self.arch}.{key}"
        v = self.g.metadata.get(full, default)
        if v is None:
            raise self._fail(full, "is missing")
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._fail(full, f"must be an integer, got {v!r}")
        if v < minimum or v > 1 << 31:
            raise self._fail(full, f"must be between {minimum} and 2**31, got {v}")
        return v

    def float(self, key: str, default: float | None = None) -> float:
        full = f"{self.arch}.{key}"
        v = self.g.metadata.get(full, default)
        if v is None:
            raise self._fail(full, "is missing")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self._fail(full, f"must be a finite number, got {v!r}")
        return float(v)

    def str(self, key: str, default: str | None = None) -> str | None:
        full = f"{self.arch}.{key}"
        v = self.g.metadata.get(full, default)
        if v is not None and not isinstance(v, str):
            raise self._fail(full, f"must be a string, got {v!r}")
        return v


def model_config(g: GGUFFile) -> ModelConfig:
    """Reads the hyper-parameters of a GGUF model. Raises ModelError for anything we cannot
    run."""
    arch = g.metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelError(f"{g.path}: metadata 'general.architecture' is missing or not a string")
    if arch not in ARCHS:
        raise ModelError(
            f"{g.path}: unknown architecture '{arch}' (supported: {', '.join(sorted(ARCHS))})"
        )
    traits = ARCHS[arch]
    m = _Meta(g, arch)

    n_embd = m.int("embedding_length")
    n_head = m.int("attention.head_count")
    n_head_kv = m.int("attention.head_count_kv", n_head)
    if n_head % n_head_kv:
        raise ModelError(
            f"{g.path}: {arch}.attention.head_count ({n_head}) is not a multiple of "
            f"head_count_kv ({n_head_kv})"
        )
    head_dim = m.int("attention.key_length", n_embd // n_head)
    value_dim = m.int("attention.value_length", head_dim)
    if value_dim != head_dim:
        raise ModelError(
            f"{g.path}: key_length {head_dim} != value_length {value_dim} is not supported"
        )
    rope_dims = m.int("rope.dimension_count", head_dim)
    if rope_dims > head_dim or rope_dims % 2:
        raise ModelError(
            f"{g.path}: {arch}.rope.dimension_count {rope_dims} is invalid for head dim {head_dim}"
        )

    embd = g.tensors.get("token_embd.weight")
    if embd is None:
        raise ModelError(f"{g.path}: missing tensor 'token_embd.weight'")
    if len(embd.shape) != 2:
        raise ModelError(
            f"{g.path}: tensor 'token_embd.weight' must be 2-D, has shape {list(embd.shape)}"
        )
    n_vocab = int(embd.shape[1])
    declared_vocab = g.metadata.get(f"{arch}.vocab_size")
    if isinstance(declared_vocab, int) and declared_vocab != n_vocab:
        raise ModelError(
            f"{g.path}: {arch}.vocab_size is {declared_vocab} but token_embd.weight has "
            f"{n_vocab} rows"
        )

    freq_scale = 1.0
    scaling = m.str("rope.scaling.type")
    if scaling not in (None, "none", "linear"):
        raise ModelError(f"{g.path}: rope scaling '{scaling}' is not supported (supported: linear)")
    if scaling == "linear":
        factor = m.float("rope.scaling.factor", 1.0)
        if factor <= 0:
            raise ModelError(f"{g.path}: {arch}.rope.scaling.factor must be positive")
        freq_scale = 1.0 / factor
    elif f"{arch}.rope.scale_linear" in g.metadata:
        freq_scale = 1.0 / m.float("rope.scale_linear")

    n_layer = m.int("block_count")
    rope_base = m.float("rope.freq_base", 10000.0)
    sliding = _sliding_windows(g, m, traits, n_layer)
    attn_scale = m.float("attention.scale", 0.0)
    if arch == "gemma3" and n_layer == 62 and attn_scale == 0.0:
        # Gemma 3 27B scales queries by 1/sqrt(n_embd / n_head) (query_pre_attn_scalar 168),
        # the smaller ones by 1/sqrt(head_dim), as llama.cpp does.
        attn_scale = 1.0 / math.sqrt(n_embd / n_head)
    return ModelConfig(
        arch=arch,
        name=str(g.metadata.get("general.name", "")),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=m.int("feed_forward_length"),
        n_vocab=n_vocab,
        n_ctx_train=m.int("context_length", 4096),
        rms_eps=m.float("attention.layer_norm_rms_epsilon", 1e-5),
        rope_base=rope_base,
        rope_base_local=m.float("rope.freq_base_swa", traits.swa_rope_base)
        if traits.swa_pattern
        else rope_base,
        rope_freq_scale=freq_scale,
        rope_freq_scale_local=1.0 if traits.swa_pattern else freq_scale,
        rope_dims=rope_dims,
        rope_style=traits.rope_style,
        qkv_bias=traits.qkv_bias,
        qk_norm=traits.qk_norm,
        post_norms=traits.post_norms,
        activation=traits.activation,
        embed_scale=math.sqrt(n_embd) if traits.scale_embeddings else 1.0,
        attn_scale=attn_scale,
        final_logit_softcap=m.float("final_logit_softcapping", 0.0),
        tied_output="output.weight" not in g.tensors,
        sliding_window=sliding,
    )


def _sliding_windows(g: GGUFFile, m: _Meta, traits: ArchTraits, n_layer: int) -> list[int]:
    """Per layer: 0 for global attention, else the window length."""
    if not traits.swa_pattern:
        return [0] * n_layer
    window = m.int("attention.sliding_window")
    pattern = g.metadata.get(f"{m.arch}.attention.sliding_window_pattern", traits.swa_pattern)
    if isinstance(pattern, (list, np.ndarray)):  # explicit per-layer flags
        if len(pattern) != n_layer:
            raise ModelError(
                f"{g.path}: {m.arch}.attention.sliding_window_pattern has {len(pattern)} "
                f"entries for {n_layer} layers"
            )
        return [window if bool(p) else 0 for p in pattern]
    if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
        raise ModelError(f"{g.path}: {m.arch}.attention.sliding_window_pattern is invalid")
    return [0 if (i + 1) % pattern == 0 else window for i in range(n_layer)]


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the forward pass reads, with its GGML shape (contiguous dimension first)."""
    d, hd, ff, V = cfg.n_embd, cfg.head_dim, cfg.n_ff, cfg.n_vocab
    qd, kvd = cfg.n_head * hd, cfg.n_head_kv * hd
    want: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (d, V),
        "output_norm.weight": (d,),
    }
    if not cfg.tied_output:
        want["output.weight"] = (d, V)
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        want[p + "attn_norm.weight"] = (d,)
        want[p + "attn_q.weight"] = (d, qd)
        want[p + "attn_k.weight"] = (d, kvd)
        want[p + "attn_v.weight"] = (d, kvd)
        want[p + "attn_output.weight"] = (qd, d)
        if cfg.qkv_bias:
            want[p + "attn_q.bias"] = (qd,)
            want[p + "attn_k.bias"] = (kvd,)
            want[p + "attn_v.bias"] = (kvd,)
        if cfg.qk_norm:
            want[p + "attn_q_norm.weight"] = (hd,)
            want[p + "attn_k_norm.weight"] = (hd,)
        if cfg.post_norms:
            want[p + "post_attention_norm.weight"] = (d,)
            want[p + "post_ffw_norm.weight"] = (d,)
        want[p + "ffn_norm.weight"] = (d,)
        want[p + "ffn_gate.weight"] = (d, ff)
        want[p + "ffn_up.weight"] = (d, ff)
        want[p + "ffn_down.weight"] = (ff, d)
    return want


def check_tensors(g: GGUFFile, cfg: ModelConfig) -> list[TensorInfo]:
    """Checks presence, shape and type of every tensor the model needs; returns them (plus the
    optional rope_freqs). Raises ModelError naming the first tensor at fault."""
    supported = set(_core.supported_formats().split(", "))
    out: list[TensorInfo] = []
    for name, shape in expected_tensors(cfg).items():
        t = g.tensors.get(name)
        if t is None:
            raise ModelError(f"{g.path}: missing tensor '{name}' (architecture {cfg.arch})")
        got = tuple(t.shape)
        while len(got) > len(shape) and got[-1] == 1:
            got = got[:-1]
        if got != shape:
            raise ModelError(
                f"{g.path}: tensor '{name}' has shape {list(t.shape)}, expected {list(shape)}"
            )
        if t.type.name not in supported:
            raise ModelError(
                f"{g.path}: tensor '{name}' has type {t.type.name}, which is not supported "
                f"(supported: {', '.join(sorted(supported))})"
            )
        out.append(t)
    if "rope_freqs.weight" in g.tensors:
        out.append(g.tensors["rope_freqs.weight"])
    return out


def describe(cfg: ModelConfig) -> dict[str, Any]:
    """The hyper-parameters as a plain dict, for `inspect` and JSON output."""
    return {k: v for k, v in cfg.__dict__.items() if k != "sliding_window"} | {
        "sliding_window_layers": sum(1 for w in cfg.sliding_window if w),
    }
