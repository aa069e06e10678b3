"""From GGUF metadata to a typed model config, and the checks that the tensors match it.

The forward pass in the C++ core is written once; architectures differ only by the flags set
here (ARCHS). Every key read is type- and range-checked before the core sees the file: a value
the core cannot hold (a C int, a float32) or whose arithmetic would overflow to NaN is a
ModelError here, naming the file and the key, never a failure later. The tensors the forward
pass reads are checked for presence, shape and type by the core, which holds their list
(cpp/engine/weights.cpp); the fields of ModelConfig are the core's (cpp/engine/config.h).
benchmarks/fuzz_meaning.py sets every key read here to absurd values to keep it so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from . import _core
from .errors import InternalError, ModelError
from .gguf_file import GGUFFile, StringArray, TensorInfo

# The core holds hyper-parameters in C ints and floats: anything past these limits would not
# survive the conversion.
_INT_MAX = 2**31 - 1
_F32_MAX = float(np.finfo(np.float32).max)
# Positive float hyper-parameters must be normal float32 numbers: a subnormal one reads as 0 on
# hardware that flushes subnormals (and then an epsilon or a scale divides by zero).
_F32_MIN = float(np.finfo(np.float32).tiny)
# Real models scale attention scores by at most 1 (1/sqrt(head_dim) by default). This bound
# leaves a wide margin and keeps scale * q.k finite for any |q.k| up to 1e35; a scale of 3e38
# overflows the scores of any q.k above 1.
_ATTN_SCALE_MAX = 1e3
_BLOCK = re.compile(r"blk\.(\d+)\.")


def _show(v: Any) -> str:
    """A value for an error message, cut short: a key may hold a megabyte string."""
    text = repr(v)
    return text if len(text) <= 60 else text[:50] + f"... ({len(text)} chars)"


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
        """The core's ModelConfig, every field of its list (_core.ModelConfig.fields) set."""
        c = _core.ModelConfig()
        for key in _core.ModelConfig.fields:
            value = getattr(self, key)
            setattr(c, key, getattr(_CORE_ENUMS[key], value) if key in _CORE_ENUMS else value)
        return c


# The model description's one statement is the core's field list (cpp/engine/config.h,
# METALLIC_MODEL_CONFIG_FIELDS); to_core() fills it by name. The dataclass holds those fields
# plus these, which only Python uses: the model's display name, and whether the output head is
# the embedding matrix (the core sees that from the tensors it is given).
_PYTHON_ONLY = ("name", "tied_output")
# Fields the core holds as enums, held here as the enum member's name.
_CORE_ENUMS = {"rope_style": _core.RopeStyle, "activation": _core.Activation}


def _check_against_core() -> None:
    """Fails at import, naming the field, if the dataclass and the core's list disagree."""
    core = list(_core.ModelConfig.fields)
    ours = [f.name for f in fields(ModelConfig) if f.name not in _PYTHON_ONLY]
    problems = [
        f"field '{k}' is in the dataclass but not in the core's list (add it to "
        "METALLIC_MODEL_CONFIG_FIELDS in cpp/engine/config.h, or to _PYTHON_ONLY in "
        "python/metallic/config.py if the core does not need it)"
        for k in ours
        if k not in core
    ] + [
        f"field '{k}' is in the core's list but not in the dataclass (add it to ModelConfig in "
        "python/metallic/config.py)"
        for k in core
        if k not in ours
    ]
    if problems:
        raise InternalError(
            "python/metallic/config.py ModelConfig and the core's model description disagree "
            "(a bug in metallic, or a core built from other sources: rebuild it): "
            + "; ".join(problems)
        )


_check_against_core()


class _Meta:
    """Typed access to one architecture's metadata keys, with errors naming file and key."""

    def __init__(self, g: GGUFFile, arch: str) -> None:
        self.g = g
        self.arch = arch

    def key(self, key: str) -> str:
        return f"{self.arch}.{key}"

    def fail(self, full: str, what: str) -> ModelError:
        return ModelError(f"{self.g.path}: metadata '{full}' {what}")

    def _get(self, full: str, default: Any) -> Any:
        v = self.g.metadata.get(full, default)
        if v is None:
            # Keys carry the architecture's name: a file relabelled as another architecture
            # lacks them, and then the label is what is wrong.
            raise self.fail(
                full,
                f"is missing (required by architecture '{self.arch}' of metadata "
                "'general.architecture')",
            )
        return v

    def int(
        self, key: str, default: int | None = None, *, minimum: int = 1, maximum: int = _INT_MAX
    ) -> int:
        full = self.key(key)
        v = self._get(full, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(full, f"must be an integer, got {_show(v)}")
        if not minimum <= v <= maximum:
            raise self.fail(full, f"must be an integer from {minimum} to {maximum}, got {v}")
        return v

    def float(
        self,
        key: str,
        default: float | None = None,
        *,
        low: float,
        high: float = _F32_MAX,
        open_low: bool = False,
        open_high: bool = False,
        zero_ok: bool = False,
    ) -> float:
        """A number in [low, high] (or the open ends asked for); with zero_ok, 0 as well (the
        keys for which 0 means "off" or "the default")."""
        full = self.key(key)
        v = self._get(full, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(full, f"must be a number, got {_show(v)}")
        v = float(v)
        if zero_ok and v == 0.0:
            return 0.0
        above = v > low if open_low else v >= low
        within = v < high if open_high else v <= high
        if not (math.isfinite(v) and above and within):
            interval = f"{'(' if open_low else '['}{low:.9g}, {high:.9g}{')' if open_high else ']'}"
            zero = " or 0" if zero_ok else ""
            raise self.fail(full, f"must be a number in {interval}{zero}, got {v!r}")
        return v

    def str(self, key: str, default: str | None = None) -> str | None:
        full = self.key(key)
        v = self.g.metadata.get(full, default)
        if v is not None and not isinstance(v, str):
            raise self.fail(full, f"must be a string, got {_show(v)}")
        return v


def model_config(g: GGUFFile) -> ModelConfig:
    """Reads the hyper-parameters of a GGUF model. Raises ModelError for anything we cannot
    run: a missing or mistyped key, a value outside what the engine can compute with, keys that
    disagree with each other or with the tensors, a vocabulary the tokenizer would refuse."""
    arch = g.metadata.get("general.architecture")
    if not isinstance(arch, str):
        got = "is missing" if arch is None else f"must be a string, got {_show(arch)}"
        raise ModelError(f"{g.path}: metadata 'general.architecture' {got}")
    if arch not in ARCHS:
        raise ModelError(
            f"{g.path}: unknown architecture {_show(arch)} in metadata 'general.architecture' "
            f"(supported: {', '.join(sorted(ARCHS))})"
        )
    name = g.metadata.get("general.name", "")
    if not isinstance(name, str):
        raise ModelError(f"{g.path}: metadata 'general.name' must be a string, got {_show(name)}")
    traits = ARCHS[arch]
    m = _Meta(g, arch)

    # First, so that nothing below loops over a billion layers a corrupt count claims: the
    # count must be that of the layers the tensors hold, numbered from 0 without a gap.
    n_layer = m.int("block_count")
    layers = {int(b.group(1)) for b in map(_BLOCK.match, g.tensors) if b}
    if n_layer != len(layers) or max(layers, default=-1) != n_layer - 1:
        held = f"layers {min(layers)} to {max(layers)}" if layers else "no layers"
        raise m.fail(
            m.key("block_count"),
            f"is {n_layer} but the file's tensors hold {held} ({len(layers)} layers)",
        )

    n_embd = m.int("embedding_length")
    n_head = m.int("attention.head_count")
    n_head_kv = m.int("attention.head_count_kv", n_head)
    if n_head % n_head_kv:
        raise ModelError(
            f"{g.path}: metadata '{arch}.attention.head_count' ({n_head}) is not a multiple of "
            f"'{arch}.attention.head_count_kv' ({n_head_kv})"
        )
    key_length = m.key("attention.key_length")
    if key_length in g.metadata:
        head_src = f"'{key_length}'"
    else:
        head_src = (
            f"'{arch}.embedding_length' / '{arch}.attention.head_count', as '{key_length}' "
            "is absent"
        )
        if n_embd % n_head:
            raise ModelError(
                f"{g.path}: metadata '{arch}.embedding_length' ({n_embd}) is not a multiple of "
                f"'{arch}.attention.head_count' ({n_head}), and no '{key_length}' gives the "
                "head size"
            )
    head_dim = m.int("attention.key_length", n_embd // n_head)
    value_dim = m.int("attention.value_length", head_dim)
    if value_dim != head_dim:
        raise ModelError(
            f"{g.path}: metadata '{arch}.attention.value_length' ({value_dim}) differs from the "
            f"key length {head_dim} (from {head_src}): not supported"
        )
    rope_dims = m.int("rope.dimension_count", head_dim)
    if rope_dims > head_dim or rope_dims % 2:
        raise m.fail(
            m.key("rope.dimension_count"),
            f"is {rope_dims}: it must be even and at most the head size {head_dim} "
            f"(from {head_src})",
        )

    embd = g.tensors.get("token_embd.weight")
    if embd is None:
        raise ModelError(f"{g.path}: missing tensor 'token_embd.weight'")
    if len(embd.shape) != 2 or embd.shape[1] > _INT_MAX:
        raise ModelError(
            f"{g.path}: tensor 'token_embd.weight' must be 2-D with at most {_INT_MAX} rows, "
            f"has shape {list(embd.shape)}"
        )
    n_vocab = int(embd.shape[1])
    if m.key("vocab_size") in g.metadata:
        declared_vocab = m.int("vocab_size")
        if declared_vocab != n_vocab:
            raise m.fail(
                m.key("vocab_size"),
                f"is {declared_vocab} but tensor 'token_embd.weight' has {n_vocab} rows",
            )
    _check_tokenizer(g, n_vocab)

    freq_scale = 1.0
    scale_key: str | None = None
    scaling = m.str("rope.scaling.type")
    if scaling not in (None, "none", "linear"):
        raise m.fail(
            m.key("rope.scaling.type"),
            f"is {_show(scaling)}, which is not supported (supported: none, linear)",
        )
    # A factor divides positions: it must be positive, and small or large enough to keep the
    # frequencies usable (checked with them below).
    if scaling == "linear":
        scale_key = m.key("rope.scaling.factor")
        freq_scale = 1.0 / m.float("rope.scaling.factor", 1.0, low=_F32_MIN)
    elif m.key("rope.scale_linear") in g.metadata:
        scale_key = m.key("rope.scale_linear")
        freq_scale = 1.0 / m.float("rope.scale_linear", low=_F32_MIN)

    # A base at or below 1 makes the frequencies grow along the head instead of decaying.
    rope_base = m.float("rope.freq_base", 10000.0, low=1.0, open_low=True)
    _check_rope(g, m.key("rope.freq_base"), rope_base, scale_key, freq_scale, rope_dims)
    if traits.swa_pattern:
        rope_base_local = m.float(
            "rope.freq_base_swa", traits.swa_rope_base, low=1.0, open_low=True
        )
        _check_rope(g, m.key("rope.freq_base_swa"), rope_base_local, None, 1.0, rope_dims)
    else:
        rope_base_local = rope_base
    sliding = _sliding_windows(g, m, traits, n_layer)
    # 0 means 1/sqrt(head_dim), as in llama.cpp.
    attn_scale = m.float("attention.scale", 0.0, low=_F32_MIN, high=_ATTN_SCALE_MAX, zero_ok=True)
    if arch == "gemma3" and n_layer == 62 and attn_scale == 0.0:
        # Gemma 3 27B scales queries by 1/sqrt(n_embd / n_head) (query_pre_attn_scalar 168),
        # the smaller ones by 1/sqrt(head_dim), as llama.cpp does.
        attn_scale = 1.0 / math.sqrt(n_embd / n_head)
    return ModelConfig(
        arch=arch,
        name=name,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=m.int("feed_forward_length"),
        n_vocab=n_vocab,
        n_ctx_train=m.int("context_length", 4096),
        # Divides the mean square of a row: positive, and below 1 to stay a small correction.
        rms_eps=m.float(
            "attention.layer_norm_rms_epsilon", 1e-5, low=_F32_MIN, high=1.0, open_high=True
        ),
        rope_base=rope_base,
        rope_base_local=rope_base_local,
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
        # 0 means off; the cap divides the logits, so it must be a normal float otherwise.
        final_logit_softcap=m.float("final_logit_softcapping", 0.0, low=_F32_MIN, zero_ok=True),
        tied_output="output.weight" not in g.tensors,
        sliding_window=sliding,
    )


def _rope_frequencies(
    base: float, scale: float, dims: int, factors: np.ndarray | None = None
) -> np.ndarray:
    """The angular frequency of each rotated pair, computed in float32 as the engine computes
    it (cpp/engine/engine.cpp, inv_freq): base^(-2i/dims) / factors[i] * scale."""
    with np.errstate(all="ignore"):  # overflow is what the caller looks for
        exponent = np.arange(0, dims, 2, dtype=np.float32) / np.float32(dims)
        f = np.float32(1.0) / np.power(np.float32(base), exponent)
        if factors is not None:
            f = f / factors.astype(np.float32)
        return f * np.float32(scale)


# The largest frequency whose angle stays finite at every position a C int can hold.
_MAX_FREQUENCY = _F32_MAX / 2.0**31


def _check_rope(
    g: GGUFFile,
    base_key: str,
    base: float,
    scale_key: str | None,
    scale: float,
    dims: int,
    factors: np.ndarray | None = None,
) -> None:
    """Every RoPE frequency must be a normal float32 (not 0, not subnormal) whose angle stays
    finite at any position: otherwise sin and cos turn the activations into NaN."""
    f = _rope_frequencies(base, scale, dims, factors)
    bad = ~(np.isfinite(f) & (f >= _F32_MIN) & (f <= _MAX_FREQUENCY))
    if not bad.any():
        return
    i = int(np.argmax(bad))
    scaled = f" with scale {scale:.6g} from '{scale_key}'" if scale_key else ""
    from_factors = " and tensor 'rope_freqs.weight'" if factors is not None else ""
    raise ModelError(
        f"{g.path}: metadata '{base_key}' ({base:.6g}){scaled}{from_factors} gives RoPE "
        f"frequency {float(f[i]):.6g} for pair {i} of {dims // 2}: every frequency must be "
        f"between {_F32_MIN:.6g} and {_MAX_FREQUENCY:.6g}"
    )


def _check_tokenizer(g: GGUFFile, n_vocab: int) -> None:
    """Rejects at load, naming the file, what the tokenizer would otherwise reject only when
    first used (its own checks, tokenizer/vocab.py load_vocab, made here without building it,
    so they stay cheap for a 262k-token vocabulary); and a vocabulary whose size is not the
    embedding matrix's number of rows, which loads but fails generation mid-stream."""
    md = g.metadata
    model = md.get("tokenizer.ggml.model")
    if model is None:
        return  # no tokenizer: the model runs on token ids (generate() decides the same way)
    from .tokenizer.pretokenizers import PRE_SPECS
    from .tokenizer.vocab import _REQUIRED_IDS, BPE_MODELS, SPM_MODELS

    def fail(key: str, what: str) -> ModelError:
        return ModelError(f"{g.path}: metadata '{key}' {what}")

    if not isinstance(model, str) or model not in SPM_MODELS + BPE_MODELS:
        raise fail(
            "tokenizer.ggml.model",
            f"is {_show(model)}, which is not a supported tokenizer model "
            f"(supported: {', '.join(SPM_MODELS + BPE_MODELS)})",
        )
    tokens = md.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, StringArray):
        got = (
            "is missing" if tokens is None else f"must be an array of strings, got {_show(tokens)}"
        )
        raise fail("tokenizer.ggml.tokens", got)
    n = len(tokens)
    if n != n_vocab:
        raise fail(
            "tokenizer.ggml.tokens",
            f"has {n} tokens but tensor 'token_embd.weight' has {n_vocab} rows (one per token)",
        )
    pre = md.get("tokenizer.ggml.pre", "")
    if not isinstance(pre, str):
        raise fail("tokenizer.ggml.pre", f"must be a string, got {_show(pre)}")
    merges = md.get("tokenizer.ggml.merges")
    if merges is not None and not isinstance(merges, StringArray):
        raise fail("tokenizer.ggml.merges", f"must be an array of strings, got {_show(merges)}")
    for key, kinds, what in (
        ("tokenizer.ggml.scores", "fiu", "numbers"),
        ("tokenizer.ggml.token_type", "iu", "integers"),
    ):
        v = md.get(key)
        if v is None:
            continue
        if not isinstance(v, np.ndarray) or v.dtype.kind not in kinds:
            raise fail(key, f"must be an array of {what}, got {_show(v)}")
        if len(v) < n:
            raise fail(key, f"has {len(v)} entries for {n} tokens")
    for key in ("add_bos_token", "add_eos_token", "add_space_prefix"):
        v = md.get(f"tokenizer.ggml.{key}")
        if v is not None and not isinstance(v, int):  # bool, or an integer used as one
            raise fail(f"tokenizer.ggml.{key}", f"must be a boolean, got {_show(v)}")

    # The default special ids and add_bos, as load_vocab sets them.
    force_bos = False
    if model in SPM_MODELS:
        ids = {"bos": 1, "eos": 2}
        add_bos = True
    else:
        spec = PRE_SPECS.get("gemma4" if model == "gemma4" else pre or "default")
        if spec is None:
            raise fail(
                "tokenizer.ggml.pre",
                f"is {_show(pre)}, which is not a known pre-tokenizer for tokenizer model "
                f"'{model}'",
            )
        if merges is None and not (model == "gpt2" and pre == "kimi-k2"):
            raise fail(
                "tokenizer.ggml.merges",
                f"is missing (required by tokenizer model '{model}' of 'tokenizer.ggml.model')",
            )
        ids = {"bos": 11, "eos": 11} if model == "gpt2" else {}
        if spec.bos_none:
            ids.pop("bos", None)
        add_bos, force_bos = spec.add_bos, spec.force_add_bos
    ids = {k: v for k, v in ids.items() if v < n}
    for name, key in _REQUIRED_IDS.items():
        v = md.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
            raise fail(key, f"is {_show(v)}, which is not a token id (the vocabulary has {n})")
        ids[name] = v
    for flag, special, default in (("bos", "bos", add_bos), ("eos", "eos", False)):
        key = f"tokenizer.ggml.add_{flag}_token"
        wanted = bool(md.get(key, default)) or (flag == "bos" and force_bos)
        if wanted and special not in ids:
            raise fail(
                key,
                f"asks for a {special.upper()} token but the vocabulary has none "
                f"('tokenizer.ggml.{special}_token_id')",
            )


def _sliding_windows(g: GGUFFile, m: _Meta, traits: ArchTraits, n_layer: int) -> list[int]:
    """Per layer: 0 for global attention, else the window length."""
    if not traits.swa_pattern:
        return [0] * n_layer
    window = m.int("attention.sliding_window")
    key = m.key("attention.sliding_window_pattern")
    pattern = g.metadata.get(key, traits.swa_pattern)
    if isinstance(pattern, np.ndarray):  # explicit per-layer flags
        if pattern.ndim != 1 or pattern.dtype.kind not in "biu":
            raise m.fail(key, f"must be an integer or an array of booleans, got {_show(pattern)}")
        if len(pattern) != n_layer:
            raise m.fail(
                key, f"has {len(pattern)} entries for {n_layer} layers ('{m.key('block_count')}')"
            )
        return [window if p else 0 for p in pattern.tolist()]
    if isinstance(pattern, bool) or not isinstance(pattern, int) or not 1 <= pattern <= _INT_MAX:
        raise m.fail(
            key,
            f"must be an integer from 1 to {_INT_MAX} or an array of booleans, "
            f"got {_show(pattern)}",
        )
    return [0 if (i + 1) % pattern == 0 else window for i in range(n_layer)]


def check_tensors(g: GGUFFile, cfg: ModelConfig) -> list[TensorInfo]:
    """The tensors to hand to the core, after the one tensor check made here: the values of the
    optional RoPE frequency factors. Which tensors the forward pass reads, with their shapes
    and types, is checked once, by the core when it binds them (cpp/engine/weights.cpp), with
    messages naming the tensor and the metadata keys its shape comes from."""
    freqs = g.tensors.get("rope_freqs.weight")
    if freqs is not None:
        factors = _rope_factors(g, freqs, cfg)
        bad = ~(np.isfinite(factors) & (factors >= _F32_MIN))
        if bad.any():
            i = int(np.argmax(bad))
            raise ModelError(
                f"{g.path}: tensor 'rope_freqs.weight' holds {float(factors[i])!r} at {i}: "
                "RoPE frequency factors must be positive normal numbers"
            )
        base_key = f"{cfg.arch}.rope.freq_base"
        _check_rope(g, base_key, cfg.rope_base, None, cfg.rope_freq_scale, cfg.rope_dims, factors)
    # A name holding bytes that are not UTF-8 (read with surrogate escapes) cannot cross into the
    # core's std::string, and is none of the ASCII names the core looks for: it stays behind.
    return [t for t in g.tensors.values() if _is_utf8(t.name)]


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _rope_factors(g: GGUFFile, t: TensorInfo, cfg: ModelConfig) -> np.ndarray:
    """The per-pair RoPE frequency factors (llama 3 style scaling), read from the file: they
    divide the frequencies, so a zero or a NaN among them would reach every activation."""
    n = cfg.rope_dims // 2
    got = tuple(t.shape)
    while len(got) > 1 and got[-1] == 1:
        got = got[:-1]
    if got != (n,):
        raise ModelError(
            f"{g.path}: tensor 'rope_freqs.weight' has shape {list(t.shape)}, expected [{n}] "
            f"(half of metadata '{cfg.arch}.rope.dimension_count')"
        )
    # Converters always store these 1-D factors as F32 (F16 is accepted too).
    dtypes = {"F32": "<f4", "F16": "<f2"}
    if t.type.name not in dtypes:
        raise ModelError(
            f"{g.path}: tensor 'rope_freqs.weight' has type {t.type.name}, expected F32 or F16"
        )
    with open(g.path, "rb") as f:
        f.seek(t.offset)
        raw = f.read(t.nbytes)
    return np.frombuffer(raw, dtype=dtypes[t.type.name], count=n).astype(np.float32)


# Hyper-parameters whose zero means "not set in the file": the value used instead.
_UNSET_MEANS = {
    "attn_scale": "1/sqrt(head_dim)",
    "final_logit_softcap": "no softcap",
}


def describe(cfg: ModelConfig) -> dict[str, Any]:
    """The hyper-parameters as a plain dict, for `inspect` and JSON output; a value the file
    leaves unset is None (`unset_meaning` says what is used instead)."""
    out = {k: v for k, v in cfg.__dict__.items() if k != "sliding_window"}
    for key in _UNSET_MEANS:
        if out.get(key) == 0.0:
            out[key] = None
    windows = [w for w in cfg.sliding_window if w]
    out["sliding_window_layers"] = len(windows)
    if not windows:
        out["rope_base_local"] = out["rope_freq_scale_local"] = None  # no local layers
    return out


def unset_meaning(key: str) -> str:
    """What a None from describe() stands for, in words."""
    return _UNSET_MEANS.get(key, "no sliding-window layers")
