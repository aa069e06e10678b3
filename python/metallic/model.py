"""A loaded model: the C++ engine plus what Python owns around it (config, tokenizer, cache
bookkeeping, the lock that lets threads share it). Generation itself lives in generate.py."""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _core, instrument
from .config import ModelConfig, check_tensors, model_config
from .errors import ContextError, MetallicError, ModelBusyError, RequestError
from .gguf_file import GGUFFile, TensorInfo, read_gguf
from .system import logical_cpus

if TYPE_CHECKING:
    from .batch import EngineSlots
    from .generate import GenerationStats, Token
    from .sampling import SamplerSettings
    from .tokenizer import Tokenizer

_log = logging.getLogger("metallic.model")

BACKENDS = ("auto", "cpu", "metal", "metal-sim")
INT32_MAX = 2**31 - 1  # the core counts positions, tokens and threads in C int


def _int_arg(name: str, value: object, lo: int, hi: int = INT32_MAX) -> int:
    """An integer argument (Python or NumPy, not bool) in [lo, hi], as int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RequestError(f"{name} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise RequestError(f"{name} must be from {lo} to {hi}, got {int(value)}")
    return int(value)


class _Generation:
    """The owner token of a generation in progress (see _ModelLock)."""

    __slots__ = ("thread",)

    def __init__(self) -> None:
        self.thread = threading.get_ident()


class _ModelLock:
    """Serializes a Model's calls across threads.

    A call (prefill, decode, truncate, ...) holds the model for its duration. A generation holds
    it from its first step to its last, including while it waits at a `yield` for its consumer,
    so a call from another thread waits for the generation to finish (or be closed) and never
    sees its cache half-updated. A call from the thread that left the generation suspended would
    wait forever; it raises ModelBusyError instead.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._owner: int | _Generation | None = None  # a thread id (a call) or a generation
        self._depth = 0  # nested holds by the owner (reset() calls truncate())

    @contextmanager
    def call(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cv:
            while self._owner is not None and self._owner != me:
                if isinstance(self._owner, _Generation) and self._owner.thread == me:
                    raise ModelBusyError(
                        "the model is held by an unfinished generate() in this thread: "
                        "iterate it to the end or close() it before using the model again"
                    )
                self._cv.wait()
            self._owner = me
            self._depth += 1
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def generation(self) -> Iterator[_Generation]:
        gen = _Generation()
        with self.call():  # waits like any call, and refuses the same thread's suspended one
            with self._cv:
                self._owner = gen
            try:
                yield gen
            finally:
                with self._cv:
                    self._owner = threading.get_ident()  # handed back to call() to release

    def _release(self) -> None:
        with self._cv:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cv.notify_all()


def requested_backend(name: str | None) -> str:
    """The backend asked for: the argument, else $METALLIC_BACKEND, else auto."""
    choice = name or os.environ.get("METALLIC_BACKEND") or "auto"
    if choice not in BACKENDS:
        raise RequestError(f"unknown backend '{choice}' (choose from: {', '.join(BACKENDS)})")
    return choice


_NO_SIM = "this build of metallic has no simulator"


def choose_backend(
    requested: str,
    types: Iterable[int] | None = None,
    gpu: str = "metal",
    *,
    stacklevel: int = 2,
) -> tuple[str, str]:
    """The backend a model with matrices of these weight types (GGML type ids) runs on, and a
    one-line note of why the GPU was refused ("" when there is nothing to say).

    `auto` chooses the GPU only when it can run the kernels (`_core.metal_available()`: Apple7
    or newer; metal_problem() says why not) and the self-test (selftest.py) on those types
    passes: building the engine (the library, every pipeline) and agreeing with the CPU.
    Otherwise it chooses `cpu`, and when a device exists but was refused it says why in a
    RuntimeWarning; with no Metal device at all it stays silent. An explicit request of the GPU
    runs the same checks and raises RequestError with the reason instead.

    `gpu` is the device `auto` would choose: "metal", or "metal-sim" in the tests, where the
    simulator stands in for it so that the rules tested are the ones a Mac runs. The simulator
    asked for by name (not standing in) runs the self-test only with METALLIC_SELF_TEST=1 (it
    costs about 0.6 s there); METALLIC_SELF_TEST=0 skips it everywhere, real Metal included.
    """
    if requested not in BACKENDS:
        raise RequestError(f"unknown backend '{requested}' (choose from: {', '.join(BACKENDS)})")
    if requested == "cpu":
        return "cpu", ""
    target = gpu if requested == "auto" else requested
    mode = os.environ.get("METALLIC_SELF_TEST", "").strip()
    run_test = mode != "0" and (target == "metal" or target == gpu or mode == "1")
    reason = _gpu_refusal(target, types, run_test)
    if not reason:
        return target, ""
    if requested != "auto":
        others = [b for b in ("metal", "metal-sim") if b != target and not _gpu_refusal(b)]
        raise RequestError(
            f"backend '{target}' is not available: {reason} "
            f"(available: {', '.join([*others, 'cpu'])})"
        )
    # No device at all (Linux, a Mac without one): nothing was refused, so `auto` takes the
    # CPU without a word.
    absent = not _core.metal_device_info() if target == "metal" else reason.startswith(_NO_SIM)
    if absent:
        return "cpu", ""
    note = f"backend 'auto' chose cpu, not {target}: {reason}"
    warnings.warn(note, RuntimeWarning, stacklevel=stacklevel)
    return "cpu", note


def _gpu_refusal(gpu: str, types: Iterable[int] | None = None, run_test: bool = False) -> str:
    """Why `gpu` must not run a model with these weight types, or "": the device first, then
    (if run_test) the self-test on the types it covers."""
    if gpu == "metal":
        problem = "" if _core.metal_available() else _core.metal_problem()
    else:
        problem = "" if _core.metal_sim_available() else f"{_NO_SIM} (METALLIC_METAL_SIM=OFF)"
    if problem or not run_test:
        return problem
    from .selftest import gpu_self_test, supported_types

    covered = supported_types()
    # A type the kernels lack is refused when the engine is built, for either backend.
    wanted = [t for t in types if t in covered] if types is not None else []
    result = gpu_self_test(gpu, wanted or None)
    return "" if result.passed else f"its self-test {result.detail}"


def matrix_types(tensors: Iterable[TensorInfo]) -> set[int]:
    """The weight types of a model's matrices: what the self-test must cover for it."""
    return {int(t.type) for t in tensors if len(t.shape) >= 2}


class Model:
    """A GGUF model loaded into the engine, with its KV cache.

    `prefill` and `decode` are the low-level steps; `generate` streams tokens for a prompt.
    The cache remembers which tokens it holds, so a new prompt that extends the previous one
    (a chat turn) only runs its new tokens.

    The methods here run one sequence (sequence 0). A model loaded with n_seq > 1 holds more,
    each with a cache of its own, which slots() runs together in batched steps (the server's
    continuous batching). A model may be shared by threads: calls take turns (see _ModelLock),
    a generation keeps the model from its first token to its last, and the logits a call
    returns are valid until the next call from any thread.
    """

    def __init__(self, gguf: GGUFFile, config: ModelConfig, engine: _core.Engine) -> None:
        self.gguf = gguf
        self.config = config
        self._engine = engine
        # Per sequence of the engine: the token ids whose keys/values its cache holds, in order.
        # The single-sequence API (prefill, decode, generate) is sequence 0.
        self._cached_seqs: list[list[int]] = [[] for _ in range(engine.n_seq)]
        self._cached = self._cached_seqs[0]
        self.last_stats: GenerationStats | None = None
        self.load_seconds = 0.0  # set by load(): reading the file, building the engine
        self.profiling = False  # set by load(profile=True)
        # Set by load(): why backend 'auto' did not choose the GPU present, "" if it did or
        # there is none (see choose_backend).
        self.backend_note = ""
        self._lock = _ModelLock()

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
    def n_seq(self) -> int:
        """Sequences the model was loaded with (load(n_seq=...)), each with a cache of n_ctx."""
        return self._engine.n_seq

    def slots(self) -> EngineSlots:
        """The model's sequences as Slots (batch.py): steps that run several sequences' new
        tokens in one forward pass. Sequence 0 is also the one prefill/decode/generate use."""
        from .batch import EngineSlots

        return EngineSlots(self)

    @property
    def backend(self) -> str:
        return self._engine.backend

    @property
    def threads(self) -> int:
        return self._engine.threads

    def gpu_stats(self) -> dict[str, Any]:
        """GPU counters since the last reset_gpu_stats() (empty on the CPU backend). On
        metal-sim with the simulator counting (METALLIC_SIM_COUNT=1) also the measured memory
        traffic: totals, active_lane_fraction, and per kernel under "kernels"
        (cpp/metal/sim/README.md)."""
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
        if isinstance(ids, (str, bytes, bytearray, memoryview)):
            raise RequestError(
                f"token ids must be a sequence of integers, got {type(ids).__name__} "
                "(pass text to generate() or tokenize() it first)"
            )
        arr = np.asarray(ids)
        if arr.ndim != 1 or arr.size == 0:
            raise RequestError("expected a non-empty 1-D sequence of token ids")
        if not np.issubdtype(arr.dtype, np.integer):
            raise RequestError(f"token ids must be integers, got {arr.dtype}")
        bad = (arr < 0) | (arr >= self.n_vocab)
        if bad.any():  # a bad request (no context would hold it), not a full context
            raise RequestError(
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
        keep it. Ctrl-C (KeyboardInterrupt) stops a long prompt between batches; the tokens
        run until then stay cached."""
        with self._lock.call():
            return self._prefill(ids)

    def prefill_all(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Like prefill, but returns a new [n, vocab] array with every token's logits."""
        with self._lock.call():
            arr = self._ids(ids)
            step = self._engine.max_batch
            parts = []
            try:
                for i in range(0, arr.size, step):
                    self._cached.extend(int(t) for t in arr[i : i + step])
                    parts.append(self._engine.prefill_all(arr[i : i + step]))
            finally:
                self._sync_cached()
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def trace(
        self, ids: Sequence[int] | np.ndarray, callback: Callable[[dict[str, Any]], None]
    ) -> np.ndarray:
        """Like prefill (one id: a decode step), with the forward pass unfused and
        ``callback(event)`` called after each of its ops (cpp/engine/trace.h lists them): a dict
        of layer (-1 outside the layers), op, routine, kernels (the GPU kernels it dispatched,
        "" on the CPU), pos (position of the first row), input_shape, seconds, weight,
        weight_type, weight_bytes (None, None, 0 without a matrix) and data (the output, a new
        float32 [rows, cols] array). The callback runs inside the pass: a call to the model from
        it raises RequestError, and an exception it raises ends the pass (its tokens are not
        cached). Slower than prefill: every op waits for the last. metallic.trace builds on
        it."""
        with self._lock.call():
            arr = self._ids(ids)
            step = self._engine.max_batch
            try:
                for i in range(0, arr.size, step):
                    self._cached.extend(int(t) for t in arr[i : i + step])
                    logits = self._engine.trace(arr[i : i + step], callback)
            finally:
                self._sync_cached()
            return logits

    def decode(self, token: int) -> np.ndarray:
        """Runs one token; returns its logits (a view valid until the next call)."""
        with self._lock.call():
            return self._decode(token)

    def reset(self) -> None:
        """Empties the KV cache."""
        self.truncate(0)

    def truncate(self, n_keep: int) -> None:
        """Keeps the first n_keep cached tokens and forgets the rest."""
        with self._lock.call():
            self._truncate(n_keep)

    def hold(self) -> AbstractContextManager[None]:
        """Holds the model for a block of calls from this thread, so that no other thread's
        call lands between them::

            with model.hold():
                model.reset()
                logits = model.prefill(ids).copy()
        """
        return self._lock.call()

    # The steps themselves, for callers that already hold the model (generate.py).

    def _prefill(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        arr = self._ids(ids)
        # One engine call per batch the engine would run anyway (same results as one call):
        # Python sees a pending Ctrl-C between them.
        step = self._engine.max_batch
        try:
            for i in range(0, arr.size, step):
                self._cached.extend(int(t) for t in arr[i : i + step])
                logits = self._engine.prefill(arr[i : i + step])
        finally:
            self._sync_cached()
        return logits

    def _decode(self, token: int) -> np.ndarray:
        arr = self._ids([token])
        self._cached.append(int(arr[0]))
        try:
            return self._engine.decode(int(arr[0]))
        finally:
            self._sync_cached()

    def _decode_resident(
        self, token: int, n: int, n_next: int = 0, pick: dict[str, Any] | None = None
    ) -> tuple[list[int], list[int]]:
        """GPU-resident decoding (Engine::decode_resident): n passes from `token`, each next
        token picked on the backend, greedily or with ``pick`` (Sampler.resident_pick: the shared
        seeded rule, draws from pick["counter"] on); returns (tokens, statuses). The n inputs,
        `token` and all but the last token returned, are now in the cache. n_next > 0 queues
        the next burst (n_next passes from the last token returned) before waiting: the call
        that continues with exactly those arguments (the counter n further) finds it running."""
        arr = self._ids([token])
        self._cached.append(int(arr[0]))
        try:
            tokens, status = self._engine.decode_resident(
                int(arr[0]), n, n_next=n_next, **(pick or {})
            )
            self._cached.extend(tokens[:-1])
        finally:
            self._sync_cached()
        return tokens, status

    @property
    def gpu_resident(self) -> bool:
        """Whether generation lets the backend pick its tokens, several per wait (GPU-resident
        decoding; greedy, or sampled with settings the shared pick covers): on the Metal
        backends, unless METALLIC_GPU_RESIDENT=0; METALLIC_GPU_RESIDENT=1 turns it on for the
        CPU backend too (the same tokens, no gain)."""
        mode = os.environ.get("METALLIC_GPU_RESIDENT", "").strip()
        if mode in ("0", "1"):
            return mode == "1"
        return self.backend != "cpu"

    def _sync_cached(self) -> None:
        # The record is written before each engine call and cut back to what the engine holds
        # after it: an exception (a Ctrl-C lands at any bytecode) can never leave it claiming
        # tokens the cache does not have.
        del self._cached[self._engine.n_past :]

    def _truncate(self, n_keep: int) -> None:
        n_keep = _int_arg("n_keep", n_keep, 0, self.n_past)
        self._engine.truncate(n_keep)
        del self._cached[n_keep:]

    def profile(self, reset: bool = False) -> dict[str, tuple[int, float]]:
        """Per-op (calls, seconds) of the forward pass since load or the last reset; empty
        unless the model was loaded with profile=True (or METALLIC_ENABLE_PROFILING=1)."""
        out = dict(self._engine.profile())
        if reset:
            self._engine.reset_profile()
        return out

    @property
    def cached_tokens(self) -> list[int]:
        return list(self._cached)

    def reuse_prefix(self, ids: Sequence[int]) -> int:
        """Keeps the longest cached prefix of `ids`, leaving at least its last two tokens to run
        (one yields the logits; two take the prompt path, so a repeated prompt gets exactly the
        logits a cold run of it got: one token alone would take the decode path, whose
        quantized activations round differently); returns how many tokens were kept."""
        with self._lock.call():
            return self._reuse_prefix(ids)

    def _reuse_prefix(self, ids: Sequence[int]) -> int:
        keep = 0
        limit = min(len(self._cached), len(ids) - 2)
        while keep < limit and self._cached[keep] == ids[keep]:
            keep += 1
        self._truncate(keep)
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
    mmap: bool = True,
    n_seq: int = 1,
) -> Model:
    """Loads a GGUF model: a path, or a packaged model name such as "gemma-3-270m".

    backend: "auto" (Metal if present and its self-test passes, else CPU; see choose_backend),
    "cpu", "metal", "metal-sim"; when this is None or "auto", the METALLIC_BACKEND environment
    variable, if set, chooses instead.
    n_ctx: context length (default: the model's, at most 4096).
    threads: CPU threads (default: the physical cores; more than the logical CPUs is capped
    there, with a warning).
    max_batch: prompt tokens per forward pass (a long prompt runs in several).
    n_seq: sequences, each with a KV cache of n_ctx positions (memory grows with n_seq * n_ctx);
    Model.slots() runs several of them in one forward pass (continuous batching).
    kv_dtype: "f16" or "f32" for the KV cache (default: f32 for F32 models, else f16).
    profile: time every op of the forward pass (default: $METALLIC_ENABLE_PROFILING or
    $METALLIC_PROFILE); see
    Model.profile() and GenerationStats.profile_*.
    mmap: use the weights in place from the memory-mapped file (default). The loaded model
    then depends on the file: truncating it while loaded kills the process with SIGBUS at the
    next step, and rewriting it in place changes the model's outputs. mmap=False reads the file
    into memory instead (load time and memory of one copy), isolating the model from changes.
    """
    t0 = time.perf_counter()
    if backend == "auto" and os.environ.get("METALLIC_BACKEND"):
        backend = None
    requested = requested_backend(backend)
    from .models import resolve_model

    g = read_gguf(resolve_model(path))
    cfg = model_config(g)
    tensors = check_tensors(g, cfg)

    if n_ctx is None:
        n_ctx = min(cfg.n_ctx_train, 4096)
    n_ctx = _int_arg("n_ctx", n_ctx, 1)
    if n_ctx > cfg.n_ctx_train:
        warnings.warn(
            f"n_ctx {n_ctx} exceeds the model's training context {cfg.n_ctx_train}; "
            "quality may degrade past it",
            stacklevel=2,
        )
    if threads is None:
        threads = 0
    else:
        threads = _int_arg("threads", threads, 1)
        # More threads than CPUs only queue behind each other (decode ran 300x slower with 512
        # on 2 cores): cap, and say so.
        if threads > (cpus := logical_cpus()):
            warnings.warn(
                f"threads={threads} is more than the {cpus} logical CPUs here; using {cpus}",
                stacklevel=2,
            )
            threads = cpus
    max_batch = _int_arg("max_batch", max_batch, 1)
    n_seq = _int_arg("n_seq", n_seq, 1, 4096)
    if kv_dtype is None:
        all_f32 = all(t.type.name == "F32" for t in tensors)
        kv_dtype = "f32" if all_f32 else "f16"
    if kv_dtype not in ("f16", "f32"):
        raise RequestError(f"kv_dtype must be 'f16' or 'f32', got {kv_dtype!r}")
    # After the arguments' checks: on a Mac this may run the GPU self-test.
    chosen, note = choose_backend(requested, matrix_types(tensors), stacklevel=3)

    if profile is None:
        profile = instrument.profiling_requested()
    engine = engine_for(
        g,
        cfg,
        tensors,
        chosen,
        n_ctx=n_ctx,
        threads=threads,
        kv_f32=kv_dtype == "f32",
        max_batch=max_batch,
        profile=bool(profile),
        mmap=bool(mmap),
        n_seq=n_seq,
    )
    model = Model(g, cfg, engine)
    _warn_past_working_set(model)
    model.profiling = bool(profile)
    model.backend_note = note
    if "tokenizer.ggml.model" in g.metadata:
        # Built here, not at the first prompt: its tables take a large vocabulary most of a
        # second, which belongs to the load time rather than to the first request's latency.
        # A broken tokenizer still loads (token ids work) and reports itself when used.
        with contextlib.suppress(MetallicError):
            model.tokenizer  # noqa: B018
    model.load_seconds = time.perf_counter() - t0
    _log.info(
        "loaded %s (%s, %d layers) on %s, %d threads, n_ctx %d, in %.2f s",
        model.path.name,
        cfg.arch,
        cfg.n_layer,
        model.backend,
        model.threads,
        model.n_ctx,
        model.load_seconds,
    )
    return model


def _warn_past_working_set(model: Model) -> None:
    """Metal runs a model larger than the GPU's recommended working set, slowly (paging): say
    so once, at load, with the numbers."""
    stats = model.gpu_stats()
    resident, recommended = stats.get("resident_bytes", 0), stats.get("recommended_working_set", 0)
    if recommended and resident > recommended:
        warnings.warn(
            f"the model and its caches take {resident / 2**30:.2f} GiB of GPU memory, more than "
            f"the {recommended / 2**30:.2f} GiB this GPU's Metal recommends "
            "(recommendedMaxWorkingSetSize): expect it to run slowly; a smaller n_ctx, n_seq "
            "or quantization would fit",
            RuntimeWarning,
            stacklevel=3,
        )


def engine_for(
    g: GGUFFile,
    cfg: ModelConfig,
    tensors: Sequence[TensorInfo],
    backend: str,
    *,
    n_ctx: int,
    threads: int = 0,
    kv_f32: bool = False,
    max_batch: int = 512,
    profile: bool = False,
    mmap: bool = True,
    n_seq: int = 1,
) -> _core.Engine:
    """The core's engine for a GGUF file read and checked (read_gguf, model_config,
    check_tensors), on a backend already chosen: what load() builds, and what the GPU
    self-test (selftest.py) builds twice, without load()'s choice of backend."""
    descs = [_core.TensorDesc(t.name, int(t.type), list(t.shape), t.offset) for t in tensors]
    return _core.Engine(
        str(g.path),
        cfg.to_core(),
        descs,
        backend=backend,
        n_ctx=n_ctx,
        threads=threads,
        kv_f32=kv_f32,
        max_batch=max_batch,
        profile=profile,
        mmap=mmap,
        n_seq=n_seq,
    )
