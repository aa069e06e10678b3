"""A loaded model: the C++ engine plus what Python owns around it (config, tokenizer, cache
bookkeeping). Generation itself lives in generate.py."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _core
from .config import ModelConfig, check_tensors, model_config
from .errors import ContextError, MetallicError, ModelError
from .gguf_file import GGUFFile, read_gguf

if TYPE_CHECKING:
    from .generate import GenerationStats, Token
    from .sampling import SamplerSettings
    from .tokenizer import Tokenizer

BACKENDS = ("auto", "cpu", "metal", "metal-sim")


def resolve_backend(name: str | None) -> str:
    """The backend to use: the argument, else $METALLIC_BACKEND, else auto."""
    choice = name or os.environ.get("METALLIC_BACKEND") or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"unknown backend '{choice}' (choose from: {', '.join(BACKENDS)})")
    if choice == "auto":
        return "metal" if _core.metal_available() else "cpu"
    if choice == "metal" and not _core.metal_available():
        others = "metal-sim, cpu" if _core.metal_sim_available() else "cpu"
        raise ValueError(
            f"backend 'metal' is not available: this machine has no Metal GPU (available: {others})"
        )
    if choice == "metal-sim" and not _core.metal_sim_available():
        raise ValueError(
            "backend 'metal-sim' is not available in this build of metallic "
            "(built with METALLIC_METAL_SIM=OFF; available: cpu)"
        )
    return choice


class Model:
    """A GGUF model loaded into the engine, with its KV cache.

    `prefill` and `decode` are the low-level steps; `generate` streams tokens for a prompt.
    The cache remembers which tokens it holds, so a new prompt that extends the previous one
    (a chat turn) only runs its new tokens.
    """

    def __init__(self, gguf: GGUFFile, config: ModelConfig, engine: _core.Engine) -> None:
        self.gguf = gguf
        self.config = config
        self._engine = engine
        self._cached: list[int] = []  # token ids whose keys/values the cache holds, in order
        self.last_stats: GenerationStats | None = None
        self.profiling = False  # set by load(profile=True)

    # -- properties -------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.gguf.path

    @property
    def n_ctx(self) -> int:
        return self._engine.n_ctx

    @property
    def n_past(self) -> int:
        return self._engine.n_past

    @property
    def backend(self) -> str:
        return self._engine.backend

    @property
    def threads(self) -> int:
        return self._engine.threads

    def gpu_stats(self) -> dict[str, int]:
        """GPU counters since the last reset_gpu_stats() (empty on the CPU backend)."""
        return dict(self._engine.gpu_stats())

    def reset_gpu_stats(self) -> None:
        self._engine.reset_gpu_stats()

    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab

    @property
    def weight_bytes_per_token(self) -> int:
        return self._engine.weight_bytes_per_token

    @cached_property
    def tokenizer(self) -> Tokenizer:
        from .tokenizer import Tokenizer

        return Tokenizer.from_metadata(self.gguf.metadata)

    @property
    def metadata(self) -> dict[str, Any]:
        """The GGUF metadata. Arrays of strings (the vocabulary, the merges) are read-only
        ``metallic.gguf_file.StringArray`` sequences, numeric arrays are NumPy arrays."""
        return self.gguf.metadata

    # -- low level ----------------------------------------------------------------------------

    def _ids(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.ndim != 1 or arr.size == 0:
            raise ContextError("expected a non-empty 1-D sequence of token ids")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ContextError(f"token ids must be integers, got {arr.dtype}")
        bad = (arr < 0) | (arr >= self.n_vocab)
        if bad.any():
            raise ContextError(
                f"token id {int(arr[bad][0])} is outside the vocabulary of {self.n_vocab}"
            )
        if self.n_past + arr.size > self.n_ctx:
            raise ContextError(
                f"{arr.size} tokens at position {self.n_past} do not fit the context of "
                f"{self.n_ctx} tokens (load with a larger n_ctx, or reset the cache)"
            )
        return np.ascontiguousarray(arr, dtype=np.int32)

    def prefill(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Runs tokens after those already cached; returns the logits of the last one.

        The array is a read-only view into the engine, valid until the next call: copy it to
        keep it."""
        arr = self._ids(ids)
        logits = self._engine.prefill(arr)
        self._cached.extend(int(i) for i in arr)
        return logits

    def prefill_all(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Like prefill, but returns a new [n, vocab] array with every token's logits."""
        arr = self._ids(ids)
        logits = self._engine.prefill_all(arr)
        self._cached.extend(int(i) for i in arr)
        return logits

    def decode(self, token: int) -> np.ndarray:
        """Runs one token; returns its logits (a view valid until the next call)."""
        arr = self._ids([token])
        logits = self._engine.decode(int(arr[0]))
        self._cached.append(int(arr[0]))
        return logits

    def reset(self) -> None:
        """Empties the KV cache."""
        self.truncate(0)

    def truncate(self, n_keep: int) -> None:
        """Keeps the first n_keep cached tokens and forgets the rest."""
        self._engine.truncate(n_keep)
        del self._cached[n_keep:]

    def profile(self, reset: bool = False) -> dict[str, tuple[int, float]]:
        """Per-op (calls, seconds) of the forward pass since load or the last reset; empty
        unless the model was loaded with profile=True (or METALLIC_PROFILE=1)."""
        out = dict(self._engine.profile())
        if reset:
            self._engine.reset_profile()
        return out

    @property
    def cached_tokens(self) -> list[int]:
        return list(self._cached)

    def reuse_prefix(self, ids: Sequence[int]) -> int:
        """Keeps the longest cached prefix of `ids` (at most len(ids)-1 tokens, so the last
        token is always run and yields logits); returns how many tokens were kept."""
        keep = 0
        limit = min(len(self._cached), len(ids) - 1)
        while keep < limit and self._cached[keep] == ids[keep]:
            keep += 1
        self.truncate(keep)
        return keep

    # -- text ---------------------------------------------------------------------------------

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int], special: bool = False) -> str:
        return self.tokenizer.decode(ids, special=special)

    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 256,
        sampler: SamplerSettings | None = None,
        *,
        stop: Sequence[str] = (),
        stop_ids: Sequence[int] | None = None,
        **sampler_overrides: Any,
    ) -> Iterator[Token]:
        """Streams the continuation of `prompt` (text, or token ids) token by token.

        Sampler settings come from `sampler` and/or keyword overrides (temperature=0 is
        greedy). Generation stops at max_tokens, an end-of-generation token, a stop string, or
        a full context. Statistics of the run are in `model.last_stats` afterwards."""
        from .generate import generate

        return generate(
            self, prompt, max_tokens, sampler, stop=stop, stop_ids=stop_ids, **sampler_overrides
        )


def load(
    path: str | os.PathLike[str],
    backend: str | None = "auto",
    n_ctx: int | None = None,
    threads: int | None = None,
    *,
    kv_dtype: str | None = None,
    max_batch: int = 512,
    profile: bool | None = None,
) -> Model:
    """Loads a GGUF model: a path, or a packaged model name such as "gemma-3-270m".

    backend: "auto" (Metal if present, else CPU), "cpu", "metal", "metal-sim"; the
    METALLIC_BACKEND environment variable is used when this is None or "auto" is not forced.
    n_ctx: context length (default: the model's, at most 4096).
    threads: CPU threads (default: the physical cores).
    kv_dtype: "f16" or "f32" for the KV cache (default: f32 for F32 models, else f16).
    profile: time every op of the forward pass (default: $METALLIC_PROFILE); see
    Model.profile() and GenerationStats.profile_*.
    """
    if backend == "auto" and os.environ.get("METALLIC_BACKEND"):
        backend = None
    chosen = resolve_backend(backend)
    from .models import resolve_model

    g = read_gguf(resolve_model(path))
    cfg = model_config(g)
    tensors = check_tensors(g, cfg)

    if n_ctx is None:
        n_ctx = min(cfg.n_ctx_train, 4096)
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
        raise ValueError(f"n_ctx must be a positive integer, got {n_ctx!r}")
    if n_ctx > cfg.n_ctx_train:
        warnings.warn(
            f"n_ctx {n_ctx} exceeds the model's training context {cfg.n_ctx_train}; "
            "quality may degrade past it",
            stacklevel=2,
        )
    if threads is None:
        threads = 0
    elif isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 512:
        raise ValueError(f"threads must be an integer from 1 to 512, got {threads!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
    if kv_dtype is None:
        all_f32 = all(t.type.name == "F32" for t in tensors)
        kv_dtype = "f32" if all_f32 else "f16"
    if kv_dtype not in ("f16", "f32"):
        raise ValueError(f"kv_dtype must be 'f16' or 'f32', got {kv_dtype!r}")

    if profile is None:
        profile = os.environ.get("METALLIC_PROFILE", "") not in ("", "0")
    descs = [_core.TensorDesc(t.name, int(t.type), list(t.shape), t.offset) for t in tensors]
    try:
        engine = _core.Engine(
            str(g.path),
            cfg.to_core(),
            descs,
            backend=chosen,
            n_ctx=n_ctx,
            threads=threads,
            kv_f32=kv_dtype == "f32",
            max_batch=max_batch,
            profile=bool(profile),
        )
    except ValueError as e:
        if isinstance(e, MetallicError):
            raise
        raise ModelError(str(e)) from None
    model = Model(g, cfg, engine)
    model.profiling = bool(profile)
    return model
