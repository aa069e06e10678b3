"""Tiny random Hugging Face models and a GGUF writer that follows llama.cpp's converter.

The numerical oracle of the test suite: ``make_tiny_model`` builds a small transformers model with
random weights, ``write_gguf`` writes it the way llama.cpp's ``convert_hf_to_gguf.py`` would
(same tensor names, Q/K row permutation, shapes, storage types, fallbacks and metadata keys),
with a small but complete byte-level BPE tokenizer, so that transformers' outputs are the
expected outputs of the engine running the file. tests/test_oracle_writer.py checks the files
against the converter itself and against llama.cpp's own inference.

Per-architecture differences live in the ``ARCHS`` table (qwen2, llama, qwen3, gemma3): an
``ArchSpec`` names the transformers classes, the layer's tensors and the converter's conventions
(Q/K permutation, Gemma's norm + 1, which optional keys it writes).

Nothing here imports torch or transformers at module level: benchmarks/models.py reuses the
writer on machines that only have numpy and gguf.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QType
from gguf import GGUFValueType as VType
from gguf import LlamaFileType, TokenType

from paths import cache_dir, cache_is_persistent

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

FTYPES: dict[str, LlamaFileType] = {
    "F32": LlamaFileType.ALL_F32,
    "F16": LlamaFileType.MOSTLY_F16,
    "BF16": LlamaFileType.MOSTLY_BF16,
    "Q8_0": LlamaFileType.MOSTLY_Q8_0,
}

# The type the converter gives every tensor it does not keep in F32, per file type.
_MAIN_QTYPE: dict[str, QType] = {
    "F32": QType.F32,
    "F16": QType.F16,
    "BF16": QType.BF16,
    "Q8_0": QType.Q8_0,
}


# --------------------------------------------------------------------------------------------
# Architecture tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizerStyle:
    """How a family's byte-level BPE tokenizer looks (its special tokens, not its size)."""

    pre: str  # tokenizer.ggml.pre: which pre-tokenizer regex llama.cpp applies
    split_regex: str  # the same regex as transformers' tokenizer.json spells it
    controls: tuple[str, ...]  # control tokens, placed right after the merged tokens
    bos: str
    eos: str
    pad: str | None
    add_bos: bool  # whether the tokenizer prepends BOS (llama.cpp: tokenizer.ggml.add_bos_token)
    ignore_merges: bool  # llama-bpe looks whole words up before merging (so does llama.cpp)
    chat_template: str
    # Written only when the converter derives it: from a TemplateProcessing post-processor's
    # pair template (Llama 3's "<bos> $A <bos> $B" gives False).
    add_sep: bool | None = None
    # Ids the merges leave free: None pads them as the converter pads a short tokenizer
    # ("[PAD<id>]", UNUSED, absent from tokenizer.json); a format such as "<unused{}>" makes
    # them special added tokens of the tokenizer (CONTROL), as in Gemma's vocabulary. Gemma 3's
    # converter cuts token_embd to the tokenizer's size, so its fillers must be real tokens.
    filler_format: str | None = None


_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# GPT-2's own pattern (tokenizers' ByteLevel regex, llama.cpp's "gpt-2" pre-tokenizer).
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

QWEN2_TOKENIZER = TokenizerStyle(
    pre="qwen2",
    split_regex=_QWEN2_REGEX,
    controls=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    # As Qwen2.5-Instruct: no BOS is added, but config.json names <|endoftext|> as BOS.
    bos="<|endoftext|>",
    eos="<|im_end|>",
    pad="<|endoftext|>",
    add_bos=False,
    ignore_merges=False,
    chat_template=(
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n'"
        " + message['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
)

LLAMA3_TOKENIZER = TokenizerStyle(
    pre="llama-bpe",
    split_regex=_LLAMA3_REGEX,
    controls=(
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ),
    bos="<|begin_of_text|>",
    eos="<|eot_id|>",
    pad=None,
    add_bos=True,
    ignore_merges=True,
    add_sep=False,
    chat_template=(
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role']"
        " + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
        "{% endif %}"
    ),
)

# Gemma 3 as the converter sees it without a tokenizer.model: a byte-level BPE tokenizer.json
# (Gemma3Model.set_vocab falls back to _set_vocab_gpt2), with Gemma's special tokens, BOS added,
# <unusedN> fillers and its turn markers. Real Gemma 3 files are SentencePiece ("llama") ones;
# this oracle checks the model's arithmetic, and a BPE vocabulary is what the converter makes
# of a tokenizer.json-only checkpoint.
GEMMA3_TOKENIZER = TokenizerStyle(
    pre="gpt-2",
    split_regex=_GPT2_REGEX,
    controls=("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
    bos="<bos>",
    eos="<eos>",
    pad="<pad>",
    add_bos=True,
    ignore_merges=False,
    add_sep=False,
    filler_format="<unused{}>",
    chat_template=(
        "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + ('model' if"
        " message['role'] == 'assistant' else message['role']) + '\n' + message['content'] | trim"
        " + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
)

# HF parameter name inside a decoder layer -> GGUF name inside blk.N. Shared by the Llama-like
# families; an architecture lists only the tensors it has (unknown names are an error, so a
# new family cannot silently drop a tensor).
_LLAMA_LAYER: tuple[tuple[str, str], ...] = (
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
)
_QKV_BIAS: tuple[tuple[str, str], ...] = (
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
)
_QK_NORM: tuple[tuple[str, str], ...] = (
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
)
# Gemma 2/3 "sandwich" norms: post_attention_layernorm is a post-norm of the attention output
# (post_attention_norm), the feed-forward's pre-norm is pre_feedforward_layernorm (ffn_norm).
_GEMMA3_LAYER: tuple[tuple[str, str], ...] = (
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    *_QK_NORM,
    ("post_attention_layernorm.weight", "post_attention_norm.weight"),
    ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
    ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
)
_GLOBAL_TENSORS: dict[str, str] = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str
    hf_model_class: str  # transformers class, also config.json's "architectures"
    hf_config_class: str
    layer_tensors: tuple[tuple[str, str], ...]
    qkv_bias: bool  # whether the HF model has Q/K/V biases (as make_tiny_model configures it)
    # llama.cpp's LLAMA arch rotates adjacent pairs (rope "norm"), HF rotates halves: the
    # converter reorders the rows of Q and K within each head (LlamaModel.permute).
    permute_qk: bool
    # Keys only some converter classes write (LlamaModel.set_gguf_parameters adds these two).
    writes_vocab_size: bool
    writes_rope_dim: bool
    rope_theta: float
    rms_eps: float
    tokenizer: TokenizerStyle
    config_extra: tuple[tuple[str, Any], ...] = ()
    hf_model_type: str = ""  # config.model_type when it differs from gguf_arch
    # Gemma's RMSNorm multiplies by (1 + weight); the converter stores weight + norm_shift for
    # every HF tensor whose name ends in "norm.weight" (Gemma3Model.norm_shift).
    norm_shift: float = 0.0
    # Sliding-window layers' RoPE base (Gemma 3's rope_local_base_freq), or None.
    rope_theta_local: float | None = None
    # Every n-th layer is global, the others use the sliding window: llama.cpp assumes Gemma 3's
    # pattern (6) and the converter writes no attention.sliding_window_pattern, so the file
    # cannot describe any other layout.
    swa_pattern: int | None = None

    @property
    def model_type(self) -> str:
        return self.hf_model_type or self.gguf_arch

    def has_tensor(self, hf_suffix: str) -> bool:
        return any(h == hf_suffix for h, _ in self.layer_tensors)


ARCHS: dict[str, ArchSpec] = {
    "qwen2": ArchSpec(
        gguf_arch="qwen2",
        hf_model_class="Qwen2ForCausalLM",
        hf_config_class="Qwen2Config",
        layer_tensors=_LLAMA_LAYER + _QKV_BIAS,
        qkv_bias=True,  # always, in Qwen2
        permute_qk=False,
        writes_vocab_size=False,
        writes_rope_dim=False,
        rope_theta=1_000_000.0,
        rms_eps=1e-6,
        tokenizer=QWEN2_TOKENIZER,
        config_extra=(("use_sliding_window", False),),
    ),
    "llama": ArchSpec(
        gguf_arch="llama",
        hf_model_class="LlamaForCausalLM",
        hf_config_class="LlamaConfig",
        layer_tensors=_LLAMA_LAYER + _QKV_BIAS,  # biases only exist with attention_bias=True
        qkv_bias=False,
        permute_qk=True,
        writes_vocab_size=True,
        writes_rope_dim=True,
        rope_theta=500_000.0,
        rms_eps=1e-5,
        tokenizer=LLAMA3_TOKENIZER,
        config_extra=(("attention_bias", False), ("mlp_bias", False)),
    ),
    "qwen3": ArchSpec(
        gguf_arch="qwen3",
        hf_model_class="Qwen3ForCausalLM",
        hf_config_class="Qwen3Config",
        layer_tensors=_LLAMA_LAYER + _QK_NORM,
        qkv_bias=False,
        permute_qk=False,  # NeoX RoPE, as HF
        writes_vocab_size=False,
        writes_rope_dim=False,
        rope_theta=1_000_000.0,
        rms_eps=1e-6,
        tokenizer=QWEN2_TOKENIZER,
        config_extra=(("attention_bias", False), ("use_sliding_window", False)),
    ),
    "gemma3": ArchSpec(
        gguf_arch="gemma3",
        hf_model_class="Gemma3ForCausalLM",
        hf_config_class="Gemma3TextConfig",
        layer_tensors=_GEMMA3_LAYER,
        qkv_bias=False,
        permute_qk=False,
        writes_vocab_size=False,
        writes_rope_dim=False,
        rope_theta=1_000_000.0,
        rms_eps=1e-6,
        tokenizer=GEMMA3_TOKENIZER,
        config_extra=(
            ("attention_bias", False),
            ("hidden_activation", "gelu_pytorch_tanh"),
            ("final_logit_softcapping", None),
            ("attn_logit_softcapping", None),
        ),
        hf_model_type="gemma3_text",
        norm_shift=1.0,
        rope_theta_local=10_000.0,
        swa_pattern=6,
    ),
}


def arch_of(model_or_config: Any) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    model_type = str(config.model_type)
    for arch, spec in ARCHS.items():
        if spec.model_type == model_type:
            return arch
    raise ValueError(f"no ArchSpec for model_type {model_type!r}")


def swa_layer_types(n_layers: int, pattern: int) -> list[str]:
    """HF layer_types for llama.cpp's set_swa_pattern(pattern): every pattern-th layer global."""
    return [
        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)
    ]


# --------------------------------------------------------------------------------------------
# Model shape (what the metadata describes), independent of transformers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    arch: str
    vocab: int
    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    context_length: int
    rope_theta: float
    rms_eps: float
    tied: bool
    # Only set when the HF config carries an explicit head_dim: the converter writes
    # attention.key_length/value_length exactly then.
    head_dim: int | None = None
    sliding_window: int | None = None  # set when some layers use it
    rope_theta_local: float | None = None  # sliding layers' RoPE base
    final_logit_softcapping: float | None = None

    @property
    def rope_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden // self.n_heads


def _rope_theta(config: PretrainedConfig) -> float:
    # transformers 5 keeps it in rope_parameters (per layer type for Gemma 3: the global
    # layers' is "full_attention"); 4.x had a top-level rope_theta.
    params = getattr(config, "rope_parameters", None) or {}
    params = params.get("full_attention", params)
    if "rope_theta" in params:
        return float(params["rope_theta"])
    return float(config.rope_theta)


def _check_gemma3(config: PretrainedConfig, spec: ArchSpec) -> None:
    """Reject Gemma 3 configs a GGUF file cannot describe (the converter would not notice)."""
    head_dim = config.head_dim
    if config.query_pre_attn_scalar != head_dim:
        # llama.cpp scales queries by 1/sqrt(head_dim), except for the 62-layer 27B model
        # (1/sqrt(hidden/heads)); there is no metadata key for query_pre_attn_scalar.
        raise ValueError(
            f"gemma3: query_pre_attn_scalar {config.query_pre_attn_scalar} != head_dim {head_dim}"
        )
    assert spec.swa_pattern is not None
    want = swa_layer_types(config.num_hidden_layers, spec.swa_pattern)
    if list(config.layer_types) != want:
        raise ValueError(f"gemma3: layer_types {config.layer_types} are not llama.cpp's {want}")
    if getattr(config, "attn_logit_softcapping", None) is not None:
        raise ValueError("gemma3: attn_logit_softcapping is not supported (Gemma 2 only)")


def shape_from_config(config: PretrainedConfig) -> ModelShape:
    arch = arch_of(config)
    spec = ARCHS[arch]
    if arch == "gemma3":
        _check_gemma3(config, spec)
    layer_types = list(getattr(config, "layer_types", None) or [])
    sliding = "sliding_attention" in layer_types and config.sliding_window is not None
    rope_params = getattr(config, "rope_parameters", None) or {}
    local = rope_params.get("sliding_attention", {}).get("rope_theta")
    softcap = getattr(config, "final_logit_softcapping", None)
    return ModelShape(
        arch=arch,
        vocab=config.vocab_size,
        hidden=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads,
        ffn=config.intermediate_size,
        context_length=config.max_position_embeddings,
        rope_theta=_rope_theta(config),
        rms_eps=float(config.rms_norm_eps),
        tied=bool(config.tie_word_embeddings),
        head_dim=config.to_dict().get("head_dim"),
        sliding_window=int(config.sliding_window) if sliding else None,
        rope_theta_local=float(local) if local is not None else None,
        final_logit_softcapping=float(softcap) if softcap else None,
    )


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------

# key -> (value, GGUF type, element type for arrays). Types are part of the contract: llama.cpp
# reads e.g. token ids as uint32 and rejects other types for some keys.
MetaValue = tuple[Any, VType, "VType | None"]
Metadata = dict[str, MetaValue]


def _u32(v: int) -> MetaValue:
    return (int(v), VType.UINT32, None)


def _f32(v: float) -> MetaValue:
    return (float(v), VType.FLOAT32, None)


def _str(v: str) -> MetaValue:
    return (v, VType.STRING, None)


def small_shape(arch: str, **changes: Any) -> ModelShape:
    """A small shape of `arch` for tests that write GGUF files without transformers (two layers
    of width 64, a 300-token vocabulary); `changes` replaces fields."""
    spec = ARCHS[arch]
    base = ModelShape(
        arch=arch,
        vocab=300,
        hidden=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn=96,
        # Above every n_ctx tests use, so that no load warns about a context past training.
        context_length=1024,
        rope_theta=spec.rope_theta,
        rms_eps=spec.rms_eps,
        tied=False,
        rope_theta_local=spec.rope_theta_local,
    )
    return replace(base, **changes)


def model_metadata(shape: ModelShape, ftype: str, *, name: str | None = None) -> Metadata:
    """Everything but the tokenizer, as convert_hf_to_gguf writes it for this architecture."""
    spec = ARCHS[shape.arch]
    a = spec.gguf_arch
    meta: Metadata = {
        "general.architecture": _str(a),
        "general.type": _str("model"),
        "general.name": _str(name or f"tiny-{shape.arch}"),
        f"{a}.block_count": _u32(shape.n_layers),
        f"{a}.context_length": _u32(shape.context_length),
        f"{a}.embedding_length": _u32(shape.hidden),
        f"{a}.feed_forward_length": _u32(shape.ffn),
        f"{a}.attention.head_count": _u32(shape.n_heads),
        f"{a}.attention.head_count_kv": _u32(shape.n_kv_heads),
        f"{a}.rope.freq_base": _f32(shape.rope_theta),
        f"{a}.attention.layer_norm_rms_epsilon": _f32(shape.rms_eps),
    }
    if shape.head_dim is not None:
        meta[f"{a}.attention.key_length"] = _u32(shape.head_dim)
        meta[f"{a}.attention.value_length"] = _u32(shape.head_dim)
    meta["general.file_type"] = _u32(FTYPES[ftype])
    if spec.writes_vocab_size:
        meta[f"{a}.vocab_size"] = _u32(shape.vocab)
    if spec.writes_rope_dim:
        meta[f"{a}.rope.dimension_count"] = _u32(shape.rope_dim)
    if shape.rope_theta_local is not None:
        meta[f"{a}.rope.freq_base_swa"] = _f32(shape.rope_theta_local)
    if shape.sliding_window is not None:
        meta[f"{a}.attention.sliding_window"] = _u32(shape.sliding_window)
    if shape.final_logit_softcapping is not None:
        meta[f"{a}.final_logit_softcapping"] = _f32(shape.final_logit_softcapping)
    meta["general.quantization_version"] = _u32(gguf.GGML_QUANT_VERSION)
    return meta


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, the alphabet of byte-level BPE tokens."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


# Text the merges are learnt from: plain English, so prompts in tests tokenize into a mix of
# merged tokens and single bytes.
_MERGE_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Hello world, hello there! "
    "In the beginning the model reads the text and then it writes the answer. "
    "This is a test of the tokenizer: it is the one that the tests use, and there is more. "
    "Once upon a time there was a little model that ran on a little machine."
)
_MAX_MERGES = 48
_MIN_PAD = 8  # keep some unused ids so the engine meets UNUSED tokens, as in real vocabularies


def _derive_merges(n_tokens: int) -> list[tuple[str, str]]:
    """Greedy BPE training on _MERGE_CORPUS until n_tokens new tokens exist."""
    enc = bytes_to_unicode()
    pieces = re.findall(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+", _MERGE_CORPUS)
    words: Counter[tuple[str, ...]] = Counter(
        tuple(enc[b] for b in piece.encode()) for piece in pieces
    )
    merges: list[tuple[str, str]] = []
    new_tokens: set[str] = set()
    while len(new_tokens) < n_tokens:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        # Highest count, ties broken by the pair itself: deterministic across runs.
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        new_tokens.add(best[0] + best[1])
        merged: Counter[tuple[str, ...]] = Counter()
        for word, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


@dataclass(frozen=True)
class TinyVocab:
    """A complete gpt2-style vocabulary: 256 byte tokens (id == byte value), merged tokens,
    control tokens, then fillers: [PAD<id>] marked UNUSED, exactly like the converter pads a
    tokenizer that is smaller than the model's vocab_size, or the style's filler_format
    (Gemma's <unusedN>) as CONTROL tokens that the tokenizer itself has."""

    style: TokenizerStyle
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    merges: tuple[str, ...]  # "left right", as tokenizer.ggml.merges stores them

    def id_of(self, token: str) -> int:
        return self.tokens.index(token)

    @property
    def bos_id(self) -> int:
        return self.id_of(self.style.bos)

    @property
    def eos_id(self) -> int:
        return self.id_of(self.style.eos)

    @property
    def pad_id(self) -> int | None:
        return None if self.style.pad is None else self.id_of(self.style.pad)

    @property
    def n_base(self) -> int:
        """Byte and merged tokens: the ids a BPE model (not added tokens) owns."""
        return sum(1 for t in self.token_types if t == TokenType.NORMAL)


@cache
def tiny_vocab(arch: str, vocab_size: int) -> TinyVocab:
    style = ARCHS[arch].tokenizer
    enc = bytes_to_unicode()
    slots = vocab_size - 256 - len(style.controls)
    if slots < 1:
        raise ValueError(f"vocab {vocab_size} too small for 256 bytes + {style.controls}")
    n_merged = max(0, min(_MAX_MERGES, slots - _MIN_PAD))
    merges = _derive_merges(n_merged)
    tokens = [enc[b] for b in range(256)]
    seen = set(tokens)
    for left, right in merges:
        if left + right not in seen:
            tokens.append(left + right)
            seen.add(left + right)
    types = [int(TokenType.NORMAL)] * len(tokens)
    tokens += style.controls
    types += [int(TokenType.CONTROL)] * len(style.controls)
    n_fillers = 0
    while len(tokens) < vocab_size:
        if style.filler_format is None:
            tokens.append(f"[PAD{len(tokens)}]")
            types.append(int(TokenType.UNUSED))
        else:
            tokens.append(style.filler_format.format(n_fillers))
            types.append(int(TokenType.CONTROL))
        n_fillers += 1
    return TinyVocab(style, tuple(tokens), tuple(types), tuple(f"{a} {b}" for a, b in merges))


def vocab_metadata(vocab: TinyVocab) -> Metadata:
    style = vocab.style
    meta: Metadata = {
        "tokenizer.ggml.model": _str("gpt2"),
        "tokenizer.ggml.pre": _str(style.pre),
        "tokenizer.ggml.tokens": (list(vocab.tokens), VType.ARRAY, VType.STRING),
        "tokenizer.ggml.token_type": (list(vocab.token_types), VType.ARRAY, VType.INT32),
        "tokenizer.ggml.merges": (list(vocab.merges), VType.ARRAY, VType.STRING),
        "tokenizer.ggml.bos_token_id": _u32(vocab.bos_id),
        "tokenizer.ggml.eos_token_id": _u32(vocab.eos_id),
    }
    if vocab.pad_id is not None:
        meta["tokenizer.ggml.padding_token_id"] = _u32(vocab.pad_id)
    meta["tokenizer.ggml.add_bos_token"] = (style.add_bos, VType.BOOL, None)
    meta["tokenizer.ggml.add_eos_token"] = (False, VType.BOOL, None)
    if style.add_sep is not None:
        meta["tokenizer.ggml.add_sep_token"] = (style.add_sep, VType.BOOL, None)
    meta["tokenizer.chat_template"] = _str(style.chat_template)
    return meta


def hf_tokenizer(vocab: TinyVocab) -> PreTrainedTokenizerFast:
    """The same vocabulary as a transformers tokenizer (what convert_hf_to_gguf would read)."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    style = vocab.style
    base = {tok: i for i, tok in enumerate(vocab.tokens[: vocab.n_base])}
    merges = [tuple(m.split(" ")) for m in vocab.merges]
    tok = Tokenizer(models.BPE(vocab=base, merges=merges, ignore_merges=style.ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(style.split_regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    byte_level = processors.ByteLevel(trim_offsets=False)
    if style.add_bos:
        tok.post_processor = processors.Sequence(
            [
                byte_level,
                processors.TemplateProcessing(
                    single=f"{style.bos} $A",
                    pair=f"{style.bos} $A {style.bos} $B",
                    special_tokens=[(style.bos, vocab.bos_id)],
                ),
            ]
        )
    else:
        tok.post_processor = byte_level
    # Controls, and the fillers too when they are real tokens (they follow the controls).
    added = style.controls if style.filler_format is None else vocab.tokens[vocab.n_base :]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
    for t in added:
        if tok.token_to_id(t) != vocab.id_of(t):
            raise AssertionError(f"{t} got id {tok.token_to_id(t)}, expected {vocab.id_of(t)}")
    # Qwen2 names no BOS in its tokenizer config (only config.json does); keep that shape so
    # the converter's BOS comes from the same place as for the real model.
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=style.bos if style.add_bos else None,
        eos_token=style.eos,
        pad_token=style.pad,
    )
    fast.chat_template = style.chat_template
    return fast


# --------------------------------------------------------------------------------------------
# Tiny transformers models
# --------------------------------------------------------------------------------------------


def _rng(seed: int, name: str) -> np.random.Generator:
    # One stream per tensor name: values do not depend on iteration order.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def random_values(
    name: str, shape: Sequence[int], *, seed: int, std: float, norm_center: float = 1.0
) -> np.ndarray:
    """Deterministic float32 values for one tensor: norms around norm_center (1, or 0 for
    Gemma's 1 + weight norms: ArchSpec.norm_shift), everything else around 0."""
    values = _rng(seed, name).standard_normal(tuple(shape), dtype=np.float32) * np.float32(std)
    if name.endswith("norm.weight") and norm_center:
        values += np.float32(norm_center)
    return values


def make_tiny_model(
    arch: str,
    *,
    seed: int = 0,
    tied: bool = False,
    hidden: int = 96,
    n_heads: int = 6,
    n_kv_heads: int = 2,
    n_layers: int = 2,
    ffn: int = 200,
    vocab: int = 320,
    head_dim: int | None = None,
    sliding_window: int | None = None,
    context_length: int = 512,
    std: float = 0.1,
) -> PreTrainedModel:
    """A float32, eager-attention transformers model with random weights.

    std >= 0.1 keeps the logits well separated (greedy decoding is stable across backends);
    norm weights are 1 + noise (as the file stores them; Gemma's HF weights are the noise) and
    biases are noise, so none of them is a no-op.

    gemma3 needs head_dim and sliding_window: its queries are scaled by 1/sqrt(head_dim)
    (query_pre_attn_scalar = head_dim, what llama.cpp assumes) and its layers follow llama.cpp's
    sliding-window pattern (every 6th global), with the global and local RoPE bases of the spec.
    """
    import torch
    import transformers

    spec = ARCHS[arch]
    tv = tiny_vocab(arch, vocab)
    config_cls = getattr(transformers, spec.hf_config_class)
    kwargs: dict[str, Any] = dict(spec.config_extra)
    if head_dim is not None:
        kwargs["head_dim"] = head_dim
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": spec.rope_theta}
    if spec.swa_pattern is not None:
        if head_dim is None or sliding_window is None:
            raise ValueError(f"{arch} needs head_dim and sliding_window")
        kwargs["query_pre_attn_scalar"] = head_dim
        kwargs["sliding_window"] = sliding_window
        kwargs["layer_types"] = swa_layer_types(n_layers, spec.swa_pattern)
    elif sliding_window is not None:
        raise ValueError(f"{arch} has no sliding-window layers")
    if spec.rope_theta_local is not None:
        local = {"rope_type": "default", "rope_theta": spec.rope_theta_local}
        rope = {"full_attention": rope, "sliding_attention": local}
    config = config_cls(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=context_length,
        rms_norm_eps=spec.rms_eps,
        rope_parameters=rope,
        tie_word_embeddings=tied,
        bos_token_id=tv.bos_id,
        eos_token_id=tv.eos_id,
        pad_token_id=tv.pad_id,
        architectures=[spec.hf_model_class],
        **kwargs,
    )
    config._attn_implementation = "eager"
    model_cls = getattr(transformers, spec.hf_model_class)
    torch.manual_seed(seed)  # HF's own init runs first; every parameter is overwritten below
    # Inference only: no autograd, so callers can call .numpy() on parameters.
    model = model_cls(config).to(torch.float32).eval().requires_grad_(False)
    with torch.no_grad():
        for pname, param in model.named_parameters():  # tied weights appear once
            values = random_values(
                pname, param.shape, seed=seed, std=std, norm_center=1.0 - spec.norm_shift
            )
            param.copy_(torch.from_numpy(values))
    if tied and model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise AssertionError("tie_word_embeddings did not tie lm_head to embed_tokens")
    return model


# --------------------------------------------------------------------------------------------
# Tensors: names, layout, storage type
# --------------------------------------------------------------------------------------------


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF (rotate-half) row order -> llama.cpp (adjacent-pair) row order, per head.

    Works on weights [n_head*head_dim, in] and biases [n_head*head_dim] alike.
    """
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def stored_qtype(name: str, shape: Sequence[int], ftype: str) -> QType:
    """The storage type convert_hf_to_gguf picks for a tensor (ModelBase.prepare_tensors)."""
    # Norms and anything 1-D (biases) are always F32: most of ggml only handles them so.
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return QType.F32
    qtype = _MAIN_QTYPE[ftype]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block != 0:
        # gguf.quants raises QuantError when a row is not whole blocks; the converter then
        # writes that tensor as F16 (never F32, never BF16), whatever the file type.
        return QType.F16
    return qtype


def encode(values: np.ndarray, qtype: QType) -> np.ndarray:
    """The bytes the file holds for float32 values (F32/F16 as typed arrays, others uint8)."""
    return gguf.quants.quantize(np.ascontiguousarray(values, dtype=np.float32), qtype)


def decode(data: np.ndarray, qtype: QType, shape: Sequence[int]) -> np.ndarray:
    """float32 values of stored data, as llama.cpp will see them."""
    if qtype == QType.F32:
        return np.asarray(data, dtype=np.float32).reshape(shape)
    if qtype == QType.F16:
        return np.asarray(data).view(np.float16).astype(np.float32).reshape(shape)
    return gguf.quants.dequantize(np.asarray(data).view(np.uint8), qtype).reshape(shape)


def _nbytes(shape: Sequence[int], qtype: QType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    return n // block * size


@dataclass(frozen=True)
class TensorPlan:
    """One tensor as it goes into the file."""

    name: str  # GGUF name
    shape: tuple[int, ...]  # row-major (PyTorch) shape; GGUF stores it reversed as ne[]
    qtype: QType
    load: Callable[[], np.ndarray] = field(repr=False)  # float32 values in file layout
    source: str | None = None  # HF parameter it came from
    permuted_heads: int | None = None  # rows were permute_qk'ed with this head count
    shift: float = 0.0  # added to the HF values (Gemma's norms: weight + 1)


def plan_tensor(
    name: str,
    shape: Sequence[int],
    ftype: str,
    load: Callable[[], np.ndarray],
    *,
    source: str | None = None,
    permuted_heads: int | None = None,
    shift: float = 0.0,
) -> TensorPlan:
    shape = tuple(int(s) for s in shape)
    qtype = stored_qtype(name, shape, ftype)
    return TensorPlan(name, shape, qtype, load, source, permuted_heads, shift)


def gguf_tensor_name(arch: str, hf_name: str) -> str:
    if hf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[hf_name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_name)
    if m:
        for hf_suffix, gguf_suffix in ARCHS[arch].layer_tensors:
            if m.group(2) == hf_suffix:
                return f"blk.{m.group(1)}.{gguf_suffix}"
    raise KeyError(f"{arch}: no GGUF name for HF tensor {hf_name!r}")


def _permute_heads(spec: ArchSpec, hf_name: str, n_heads: int, n_kv_heads: int) -> int | None:
    """Head count to permute this tensor's rows with, or None (weights and biases alike)."""
    if not spec.permute_qk:
        return None
    if ".self_attn.q_proj." in hf_name:
        return n_heads
    if ".self_attn.k_proj." in hf_name:
        return n_kv_heads
    return None


def norm_shift_of(spec: ArchSpec, hf_name: str) -> float:
    """What the converter adds to this HF tensor (Gemma3Model.norm_shift: names ending in
    "norm.weight", which includes q_norm/k_norm and the final norm)."""
    return spec.norm_shift if hf_name.endswith("norm.weight") else 0.0


def hf_tensor_plans(model: PreTrainedModel, ftype: str) -> list[TensorPlan]:
    """The tensors write_gguf writes for an HF model, in HF parameter order."""
    arch = arch_of(model)
    spec = ARCHS[arch]
    config = model.config
    plans: list[TensorPlan] = []
    for hf_name, param in model.named_parameters():  # a tied lm_head is not listed again
        name = gguf_tensor_name(arch, hf_name)
        heads = _permute_heads(
            spec, hf_name, config.num_attention_heads, config.num_key_value_heads
        )
        shift = norm_shift_of(spec, hf_name)

        def load(p: Any = param, h: int | None = heads, add: float = shift) -> np.ndarray:
            values = p.detach().to("cpu").float().numpy()
            if add:
                values = values + np.float32(add)  # in float32, as the converter's torch add
            return permute_qk(values, h) if h is not None else values

        plans.append(
            plan_tensor(
                name,
                param.shape,
                ftype,
                load,
                source=hf_name,
                permuted_heads=heads,
                shift=shift,
            )
        )
    if shape_from_config(config).tied and any(p.name == "output.weight" for p in plans):
        raise AssertionError("tied model produced output.weight")
    return plans


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_tensors(
    path: str | os.PathLike[str],
    meta: Metadata,
    tensors: Iterable[TensorPlan],
    *,
    alignment: int | None = None,
) -> Path:
    """Stream a GGUF file: one tensor in memory at a time (the benchmark model is 0.5B params).

    Writes to a temporary name first so an interrupted build never leaves a file that looks
    complete. `alignment`: general.alignment, the tensors' (GGUF's default is 32).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = list(tensors)
    arch = str(meta["general.architecture"][0])
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(path=None, arch=arch)  # the constructor adds general.architecture
    for key, (value, vtype, sub_type) in meta.items():
        if key != "general.architecture":
            writer.add_key_value(key, value, vtype, sub_type)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for t in tensors:
        nbytes = _nbytes(t.shape, t.qtype)
        if t.qtype == QType.F32:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), nbytes)
        elif t.qtype == QType.F16:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float16), nbytes)
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(t.shape, t.qtype)
            writer.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), nbytes, t.qtype)
    try:
        writer.write_header_to_file(path=partial)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in tensors:
            values = t.load()
            if tuple(values.shape) != t.shape:
                raise ValueError(f"{t.name}: loader gave {values.shape}, planned {t.shape}")
            writer.write_tensor_data(encode(values, t.qtype))
            del values
        writer.close()
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return path


def hf_parameter_shapes(shape: ModelShape) -> list[tuple[str, tuple[int, ...]]]:
    """The HF parameters (names, shapes, order) a model of this shape has, without building it.

    Lets benchmarks/models.py make a 0.5B-parameter file one tensor at a time; a test checks
    it against transformers' own named_parameters().
    """
    spec = ARCHS[shape.arch]
    h, hd = shape.hidden, shape.rope_dim
    q_rows, kv_rows = shape.n_heads * hd, shape.n_kv_heads * hd
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (shape.vocab, h))]
    for i in range(shape.n_layers):
        p = f"model.layers.{i}."
        for proj, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            out.append((f"{p}self_attn.{proj}.weight", (rows, h)))
            if spec.qkv_bias:
                out.append((f"{p}self_attn.{proj}.bias", (rows,)))
        out.append((f"{p}self_attn.o_proj.weight", (h, q_rows)))
        if spec.has_tensor("self_attn.q_norm.weight"):
            out += [(f"{p}self_attn.q_norm.weight", (hd,)), (f"{p}self_attn.k_norm.weight", (hd,))]
        out += [
            (f"{p}mlp.gate_proj.weight", (shape.ffn, h)),
            (f"{p}mlp.up_proj.weight", (shape.ffn, h)),
            (f"{p}mlp.down_proj.weight", (h, shape.ffn)),
            (f"{p}input_layernorm.weight", (h,)),
            (f"{p}post_attention_layernorm.weight", (h,)),
        ]
        if spec.has_tensor("pre_feedforward_layernorm.weight"):
            out += [
                (f"{p}pre_feedforward_layernorm.weight", (h,)),
                (f"{p}post_feedforward_layernorm.weight", (h,)),
            ]
    out.append(("model.norm.weight", (h,)))
    if not shape.tied:
        out.append(("lm_head.weight", (shape.vocab, h)))
    return out


def random_tensor_plans(
    shape: ModelShape, ftype: str, *, seed: int, std: float
) -> list[TensorPlan]:
    """The plans write_gguf would make for make_tiny_model(seed=seed, std=std) of this shape,
    generating each tensor only when it is written (no transformers, bounded memory)."""
    spec = ARCHS[shape.arch]
    plans: list[TensorPlan] = []
    for hf_name, pshape in hf_parameter_shapes(shape):
        heads = _permute_heads(spec, hf_name, shape.n_heads, shape.n_kv_heads)
        shift = norm_shift_of(spec, hf_name)

        def load(
            n: str = hf_name, s: tuple[int, ...] = pshape, h: int | None = heads, add=shift
        ) -> np.ndarray:
            values = random_values(n, s, seed=seed, std=std, norm_center=1.0 - spec.norm_shift)
            if add:
                values = values + np.float32(add)
            return permute_qk(values, h) if h is not None else values

        plans.append(
            plan_tensor(
                gguf_tensor_name(shape.arch, hf_name),
                pshape,
                ftype,
                load,
                source=hf_name,
                permuted_heads=heads,
                shift=shift,
            )
        )
    return plans


def gguf_metadata(model: PreTrainedModel, ftype: str, *, name: str | None = None) -> Metadata:
    shape = shape_from_config(model.config)
    return model_metadata(shape, ftype, name=name) | vocab_metadata(
        tiny_vocab(shape.arch, shape.vocab)
    )


def write_gguf(
    model: PreTrainedModel, path: str | os.PathLike[str], ftype: str, *, name: str | None = None
) -> Path:
    """Write ``model`` as convert_hf_to_gguf would with ``--outtype ftype.lower()``."""
    if ftype not in FTYPES:
        raise ValueError(f"ftype must be one of {sorted(FTYPES)}, got {ftype!r}")
    meta = gguf_metadata(model, ftype, name=name)
    return write_tensors(path, meta, hf_tensor_plans(model, ftype))


def read_gguf_values(path: str | os.PathLike[str]) -> dict[str, tuple[QType, np.ndarray]]:
    """Each tensor of a GGUF file as (stored type, float32 values in row-major shape)."""
    reader = gguf.GGUFReader(path)
    out: dict[str, tuple[QType, np.ndarray]] = {}
    for t in reader.tensors:
        qtype = QType(t.tensor_type)
        shape = tuple(int(n) for n in reversed(t.shape))
        out[t.name] = (qtype, decode(np.array(t.data), qtype, shape))
    return out


# --------------------------------------------------------------------------------------------
# Named variants and the on-disk cache
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    hidden: int
    n_heads: int
    n_kv_heads: int
    n_layers: int
    ffn: int
    vocab: int
    tied: bool
    seed: int
    head_dim: int | None = None
    sliding_window: int | None = None

    def build(self, arch: str) -> PreTrainedModel:
        return make_tiny_model(
            arch,
            seed=self.seed,
            tied=self.tied,
            hidden=self.hidden,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            n_layers=self.n_layers,
            ffn=self.ffn,
            vocab=self.vocab,
            head_dim=self.head_dim,
            sliding_window=self.sliding_window,
        )


# Odd sizes on purpose. Q8_0 rows must be whole 32-blocks, so:
#   qwen2/gqa2-untied: hidden 96 quantizes; ffn 200 makes ffn_down fall back to F16.
#   qwen2/mqa-tied:    hidden 72 makes every hidden-wide row (token_embd, q/k/v, gate, up,
#                      attn_output) fall back to F16; ffn_down (row 160) stays Q8_0.
#   llama/mha-tied:    hidden 80 likewise, with n_kv == n_heads and head_dim 16.
#   qwen3/gqa2-hd24:   head_dim 24 != hidden 64 / 4 heads (q 96 rows, k/v 48); hidden-wide
#                      rows and attn_output (row 96) quantize, ffn_down (row 176) is F16.
#   gemma3/swa-hd32:   7 layers, layer 5 global (llama.cpp's pattern 6), the others with an
#                      8-token window; head_dim 32 != 80 / 4; tied (Gemma always is). hidden 80
#                      makes the hidden-wide rows F16, attn_output (128) and ffn_down (160)
#                      Q8_0.
VARIANTS: dict[tuple[str, str], Variant] = {
    ("qwen2", "gqa2-untied"): Variant(96, 6, 2, 2, 200, 320, tied=False, seed=1),
    ("qwen2", "mqa-tied"): Variant(72, 6, 1, 2, 160, 300, tied=True, seed=2),
    ("llama", "gqa2-untied"): Variant(96, 6, 2, 2, 224, 320, tied=False, seed=3),
    ("llama", "mha-tied"): Variant(80, 5, 5, 2, 200, 300, tied=True, seed=4),
    ("qwen3", "gqa2-hd24"): Variant(64, 4, 2, 2, 176, 320, tied=False, seed=5, head_dim=24),
    ("gemma3", "swa-hd32"): Variant(
        80, 4, 2, 7, 160, 320, tied=True, seed=6, head_dim=32, sliding_window=8
    ),
}


@cache
def variant_model(arch: str, variant: str) -> PreTrainedModel:
    """The HF model of a named variant, built once per process. Shared: do not modify it."""
    try:
        v = VARIANTS[(arch, variant)]
    except KeyError:
        known = ", ".join(f"{a}/{n}" for a, n in VARIANTS)
        raise KeyError(f"unknown variant {arch}/{variant}; known: {known}") from None
    return v.build(arch)


@cache
def writer_fingerprint() -> str:
    # The cache must not outlive a change of the writer, of the random streams or of gguf's
    # quantizers.
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(f"numpy={np.__version__};gguf={_gguf_version()}".encode())
    return h.hexdigest()


def _gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gguf")
    except PackageNotFoundError:
        return "unknown"


@cache
def oracle_cache_dir() -> Path:
    """oracle/ in the test cache when one is set (persists across runs; see paths.py), else a
    per-process temp dir."""
    if cache_is_persistent():
        return cache_dir("oracle")
    path = Path(tempfile.mkdtemp(prefix="metallic-oracle-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def variant_key(arch: str, variant: str, ftype: str) -> str:
    payload = json.dumps(
        {
            "arch": arch,
            "variant": asdict(VARIANTS[(arch, variant)]),
            "ftype": ftype,
            "writer": writer_fingerprint(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def tiny_gguf(arch: str, ftype: str, variant: str) -> tuple[Path, PreTrainedModel]:
    """(GGUF path, HF model) of a named variant, e.g. ("qwen2", "F16", "gqa2-untied").

    The file is written once and cached; the model is shared, so copy it before changing it.
    """
    model = variant_model(arch, variant)
    path = oracle_cache_dir() / f"{arch}-{variant}-{ftype}-{variant_key(arch, variant, ftype)}.gguf"
    if not path.exists():
        write_gguf(model, path, ftype, name=f"tiny-{arch}-{variant}")
    return path, model
