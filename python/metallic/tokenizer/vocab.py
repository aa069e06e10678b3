"""The vocabulary as GGUF metadata describes it, with llama.cpp's defaults and fix-ups.

Everything here follows llama.cpp's ``llama_vocab::impl::load`` so that token ids, special
tokens and end-of-generation ids agree with it: per-model default special ids, per-pre-tokenizer
defaults of add_bos, the automatic detection of EOT/EOM/FIM/EOG tokens by their text (which also
forces such tokens to be control tokens), and the few model-specific attribute fix-ups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..gguf_file import StringArray
from .errors import TokenizerError
from .pretokenizers import PRE_SPECS, PreSpec

# tokenizer.ggml.token_type values
(
    TYPE_UNDEFINED,
    TYPE_NORMAL,
    TYPE_UNKNOWN,
    TYPE_CONTROL,
    TYPE_USER_DEFINED,
    TYPE_UNUSED,
    TYPE_BYTE,
) = range(7)

# attribute bits (ours; several can be set on one token after the fix-ups)
NORMAL = 1
UNKNOWN = 2
CONTROL = 4
USER_DEFINED = 8
UNUSED = 16
BYTE = 32
LSTRIP = 64
RSTRIP = 128

_TYPE_ATTR = np.array([0, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE], dtype=np.int64)

SPM_MODELS = ("llama",)
BPE_MODELS = ("gpt2", "gemma4")

# Texts that make a token an end-of-generation token (llama.cpp's list).
EOG_TEXTS = (
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
)
EOT_TEXTS = (
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
)
EOM_TEXTS = ("<|eom_id|>",)
FIM_TEXTS = {
    "fim_pre": (
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<｜fim▁begin｜>",
        "<PRE>",
        "▁<PRE>",
        "<|code_prefix|>",
        "<|prefix|>",
    ),
    "fim_suf": (
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<｜fim▁hole｜>",
        "<SUF>",
        "▁<SUF>",
        "<|code_suffix|>",
        "<|suffix|>",
    ),
    "fim_mid": (
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<｜fim▁end｜>",
        "<MID>",
        "▁<MID>",
        "<|code_middle|>",
        "<|middle|>",
    ),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}

# Special ids the tokenizer itself relies on: a bad value is an error. Others (padding, mask,
# FIM ...) are only dropped when out of range, as llama.cpp does.
_REQUIRED_IDS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
    "eom": "tokenizer.ggml.eom_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
}
_OPTIONAL_IDS = {
    "sep": "tokenizer.ggml.seperator_token_id",  # sic, llama.cpp's spelling
    "pad": "tokenizer.ggml.padding_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
    "fim_pre": "tokenizer.ggml.fim_pre_token_id",
    "fim_suf": "tokenizer.ggml.fim_suf_token_id",
    "fim_mid": "tokenizer.ggml.fim_mid_token_id",
    "fim_pad": "tokenizer.ggml.fim_pad_token_id",
    "fim_rep": "tokenizer.ggml.fim_rep_token_id",
    "fim_sep": "tokenizer.ggml.fim_sep_token_id",
}
_DEPRECATED_FIM = {
    "fim_pre": "tokenizer.ggml.prefix_token_id",
    "fim_suf": "tokenizer.ggml.suffix_token_id",
    "fim_mid": "tokenizer.ggml.middle_token_id",
}


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model
    pre: str  # tokenizer.ggml.pre as given ("" for SPM)
    spec: PreSpec | None  # pre-tokenizer of BPE vocabularies
    tokens: list[str]
    token_to_id: dict[str, int]
    attrs: np.ndarray  # int64 attribute bits per id
    scores: np.ndarray | None  # float64 per id (SPM)
    ranks: dict[str, int]  # BPE merge "left right" -> rank
    ids: dict[str, int | None] = field(default_factory=dict)  # bos, eos, unk, ...
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    eog_ids: frozenset[int] = frozenset()
    special_ids: list[int] = field(default_factory=list)  # control/user-defined/unknown

    @property
    def is_spm(self) -> bool:
        return self.model in SPM_MODELS


def _string_list(md: Mapping[str, Any], key: str) -> list[str]:
    value = md.get(key)
    if value is None:
        raise TokenizerError(f"missing metadata key '{key}'")
    if isinstance(value, StringArray):  # what read_gguf gives: strings by construction
        return list(value)
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
        raise TokenizerError(f"metadata key '{key}' must be an array of strings")
    return list(value)


def _numeric_array(md: Mapping[str, Any], key: str, n: int, kind: str) -> np.ndarray | None:
    value = md.get(key)
    if value is None:
        return None
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise TokenizerError(f"metadata key '{key}' must be a numeric array") from e
    if arr.ndim != 1 or arr.dtype.kind not in kind:
        raise TokenizerError(f"metadata key '{key}' must be a numeric array, got {arr.dtype}")
    if len(arr) < n:
        raise TokenizerError(f"metadata key '{key}' has {len(arr)} entries for {n} tokens")
    return arr[:n]


def _flag(md: Mapping[str, Any], key: str, default: bool) -> bool:
    value = md.get(key)
    if value is None:
        return default
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return bool(value)
    raise TokenizerError(f"metadata key '{key}' must be a boolean, got {value!r}")


def _merge_ranks(merges: list[str]) -> dict[str, int]:
    """Merge text -> rank, the first occurrence winning as in llama.cpp. Keys keep the
    "left right" form; symbols never contain a space when looked up, so the key is exact."""
    n = len(merges)
    return dict(zip(reversed(merges), range(n - 1, -1, -1), strict=True))


def load_vocab(md: Mapping[str, Any]) -> Vocab:
    model = md.get("tokenizer.ggml.model")
    if model is None:
        raise TokenizerError("missing metadata key 'tokenizer.ggml.model'")
    if not isinstance(model, str):
        raise TokenizerError(f"metadata key 'tokenizer.ggml.model' must be a string: {model!r}")
    if model not in SPM_MODELS + BPE_MODELS:
        raise TokenizerError(
            f"unsupported tokenizer model '{model}' (tokenizer.ggml.model); "
            f"supported: {', '.join(SPM_MODELS + BPE_MODELS)}"
        )

    pre = md.get("tokenizer.ggml.pre") or ""
    if not isinstance(pre, str):
        raise TokenizerError(f"metadata key 'tokenizer.ggml.pre' must be a string: {pre!r}")

    tokens = _string_list(md, "tokenizer.ggml.tokens")
    n = len(tokens)
    if n == 0:
        raise TokenizerError("metadata key 'tokenizer.ggml.tokens' is empty")
    if "" in tokens:  # llama.cpp renames empty tokens so that lookups stay unambiguous
        tokens = [t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)]

    spec: PreSpec | None = None
    ranks: dict[str, int] = {}
    ids: dict[str, int | None]
    add_bos = add_eos = add_space_prefix = False
    if model == "llama":
        ids = {"bos": 1, "eos": 2, "unk": 0}
        add_space_prefix = add_bos = True
    else:
        if model == "gemma4":
            pre = "gemma4"
        name = pre or "default"
        spec = PRE_SPECS.get(name)
        if spec is None:
            raise TokenizerError(
                f"unknown pre-tokenizer '{pre}' (tokenizer.ggml.pre) for tokenizer model '{model}'"
            )
        if "tokenizer.ggml.merges" not in md and not (model == "gpt2" and pre == "kimi-k2"):
            raise TokenizerError(
                "missing metadata key 'tokenizer.ggml.merges' "
                f"(required by tokenizer model '{model}')"
            )
        if "tokenizer.ggml.merges" in md:
            ranks = _merge_ranks(_string_list(md, "tokenizer.ggml.merges"))
        ids = {"bos": 11, "eos": 11} if model == "gpt2" else {}
        if spec.bos_none:
            ids.pop("bos", None)
        add_bos = spec.add_bos
    for name in list(ids):
        if not 0 <= ids[name] < n:  # type: ignore[operator]
            del ids[name]  # a default outside the vocabulary is disabled

    add_space_prefix = _flag(md, "tokenizer.ggml.add_space_prefix", add_space_prefix)

    scores = _numeric_array(md, "tokenizer.ggml.scores", n, "fiu")
    types = _numeric_array(md, "tokenizer.ggml.token_type", n, "iu")
    if types is None:
        attrs = np.full(n, NORMAL, dtype=np.int64)
    else:
        t = types.astype(np.int64)
        attrs = np.where((t >= 0) & (t < len(_TYPE_ATTR)), _TYPE_ATTR[np.clip(t, 0, 6)], 0)
    token_to_id = {t: i for i, t in enumerate(tokens)}  # the last duplicate wins, as in llama.cpp

    for name, key in _REQUIRED_IDS.items():
        value = md.get(key)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or not 0 <= int(value) < n
        ):
            raise TokenizerError(
                f"metadata key '{key}' = {value!r} is not a token id (vocabulary of {n} tokens)"
            )
        ids[name] = int(value)
    for name, key in {**_DEPRECATED_FIM, **_OPTIONAL_IDS}.items():
        value = md.get(key)
        if (
            isinstance(value, (int, np.integer))
            and not isinstance(value, bool)
            and 0 <= int(value) < n
        ):
            ids[name] = int(value)

    add_bos = _flag(md, "tokenizer.ggml.add_bos_token", add_bos)
    add_eos = _flag(md, "tokenizer.ggml.add_eos_token", add_eos)
    if spec is not None and spec.force_add_bos:
        add_bos = True
    if add_bos and ids.get("bos") is None:
        raise TokenizerError(
            "tokenizer.ggml.add_bos_token is set but the vocabulary has no BOS "
            "token (tokenizer.ggml.bos_token_id)"
        )
    if add_eos and ids.get("eos") is None:
        raise TokenizerError(
            "tokenizer.ggml.add_eos_token is set but the vocabulary has no EOS "
            "token (tokenizer.ggml.eos_token_id)"
        )

    eog = _detect_special(ids, attrs, tokens, token_to_id)
    _model_fixups(md, attrs, token_to_id)

    special = np.nonzero(attrs & (CONTROL | USER_DEFINED | UNKNOWN))[0].tolist()
    special.sort(key=lambda i: (-len(tokens[i]), i))

    return Vocab(
        model=model,
        pre=pre,
        spec=spec,
        tokens=tokens,
        token_to_id=token_to_id,
        attrs=attrs,
        scores=None if scores is None else scores.astype(np.float64),
        ranks=ranks,
        ids=ids,
        add_bos=add_bos,
        add_eos=add_eos,
        add_space_prefix=add_space_prefix,
        eog_ids=frozenset(eog),
        special_ids=special,
    )


def _detect_special(
    ids: dict[str, int | None], attrs: np.ndarray, tokens: list[str], token_to_id: dict[str, int]
) -> set[int]:
    """EOT/EOM/FIM ids by text when metadata does not name them, and the end-of-generation
    set. Tokens recognised this way become control tokens even if typed otherwise."""

    def force_control(i: int) -> None:
        attrs[i] |= CONTROL

    def first_present(texts: tuple[str, ...]) -> int | None:
        # llama.cpp takes whichever its hash map yields first; the lowest id is our stable pick
        found = [token_to_id[t] for t in texts if t in token_to_id]
        return min(found) if found else None

    if ids.get("eot") is None:
        for t in EOT_TEXTS:  # every candidate is forced to control, one becomes the EOT id
            if t in token_to_id:
                force_control(token_to_id[t])
        ids["eot"] = first_present(EOT_TEXTS)
    if ids.get("eom") is None:
        ids["eom"] = first_present(EOM_TEXTS)
        if ids["eom"] is not None:
            force_control(ids["eom"])
    for name, texts in FIM_TEXTS.items():
        if ids.get(name) is None:
            ids[name] = first_present(texts)
            if ids[name] is not None:
                force_control(ids[name])

    eog: set[int] = {ids[k] for k in ("fim_pad", "fim_rep", "fim_sep") if ids.get(k) is not None}
    for t in EOG_TEXTS:
        if t in token_to_id:
            eog.add(token_to_id[t])
            force_control(token_to_id[t])

    # gpt-oss: these structure tokens are always rendered
    for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):
        if t in token_to_id:
            attrs[token_to_id[t]] = USER_DEFINED

    for k in ("eos", "eot", "eom"):
        if ids.get(k) is not None:
            eog.add(ids[k])  # type: ignore[arg-type]

    # harmony / solar-open: "<|end|>" ends a message, not the generation
    texts = {tokens[i]: i for i in eog}
    if "<|end|>" in texts and (
        ("<|return|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts))
        or (("<|call|>" in texts or "<|calls|>" in texts) and "<|flush|>" in texts)
    ):
        end = texts["<|end|>"]
        eog.discard(end)
        attrs[end] = USER_DEFINED
    # Gemma 4 and PLaMo have an ordinary "</s>"
    if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
        s = texts["</s>"]
        eog.discard(s)
        attrs[s] = NORMAL
    return eog


def _model_fixups(md: Mapping[str, Any], attrs: np.ndarray, token_to_id: dict[str, int]) -> None:
    """Per-model strip attributes llama.cpp sets by model name (GGUF does not store them)."""
    name = str(md.get("general.name") or "").lower()
    pre = str(md.get("tokenizer.ggml.pre") or "")
    arch = str(md.get("general.architecture") or "")
    if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or any(
        s in arch for s in ("nomic-bert-moe", "jina-bert-v3")
    ):
        if "<mask>" in token_to_id:
            attrs[token_to_id["<mask>"]] |= LSTRIP
    elif "phi-3" in name or "phi3" in name:
        special = (attrs & (CONTROL | USER_DEFINED | UNKNOWN)) != 0
        attrs[special] |= RSTRIP
        if "</s>" in token_to_id:
            attrs[token_to_id["</s>"]] |= RSTRIP
        for t in ("<unk>", "<s>", "<|endoftext|>"):
            if t in token_to_id:
                attrs[token_to_id[t]] &= ~RSTRIP
    elif "modern-bert" in name and "[MASK]" in token_to_id:
        attrs[token_to_id["[MASK]"]] |= LSTRIP
