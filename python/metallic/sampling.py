"""Token sampling from a logits vector: penalties, top-k, top-p, min-p, temperature.

The chain and its formulas follow llama.cpp's default sampler chain, so that a seed-independent
comparison with llama.cpp (same settings, same logits) keeps the same candidate set:

    penalties -> top_k -> top_p -> min_p -> temperature -> draw

The truncation filters see the untempered logits; temperature only reshapes the survivors.
Temperature 0 is greedy: the argmax after penalties (every filter keeps the argmax, so they
cannot change it). So is any temperature below float32's smallest normal number, about 1.2e-38
(``GREEDY_BELOW``): in float32, where the logits are divided by it, such a temperature is
subnormal or 0 (and 0 wherever subnormals are flushed to zero), so the top logit became
0 / 0 = NaN; the limit of sampling as the temperature goes to 0 is the argmax anyway.

Penalties are bounded (``REPEAT_PENALTY_RANGE``, ``ADDITIVE_PENALTY_RANGE``) and computed so that
no accepted value turns a finite logit into an infinity: an error about non-finite logits always
means the model produced them.

Seeded draws. Settings without penalties and with 1 <= top_k <= ``PICK_TOP_K_MAX`` (llama.cpp's
defaults among them) sample through the engine's shared pick (cpp/engine/top_k_pick.h): the same
chain in float32 with its own exp, and a counter-based random stream (draw c of a seed is a pure
function of both), so the GPU can sample a whole burst of tokens itself (GPU-resident decoding)
and pick exactly the tokens this sampler picks, token for token. Other settings draw from
numpy's generator on the host.

Cost matters because this runs once per generated token in Python: a vocabulary is up to 262,144
entries, and a full sort of it takes milliseconds. So nothing here sorts or copies the whole
vocabulary on the common paths. Penalties are computed for the few tokens of the history only,
top-k selects with a partition, and top-p without top-k first narrows the vocabulary to a set
that provably holds the nucleus (see ``_nucleus_superset``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import _core
from .errors import ModelError, RequestError

__all__ = [
    "ADDITIVE_PENALTY_RANGE",
    "GREEDY_BELOW",
    "PICK_TOP_K_MAX",
    "REPEAT_PENALTY_RANGE",
    "Sampler",
    "SamplerSettings",
    "apply_penalties",
]

# Temperatures below this (float32's smallest normal number) sample greedily, see above.
GREEDY_BELOW = float(np.finfo(np.float32).tiny)
# Accepted penalties. A repeat penalty of 100 or 0.01 scales real logits (tens at most) a
# hundredfold, an additive one of 100 outweighs any of them. The bounds keep the penalized values
# of even the largest finite float32 logits finite in float64 (see _penalty_updates).
REPEAT_PENALTY_RANGE = (0.01, 100.0)
ADDITIVE_PENALTY_RANGE = (-100.0, 100.0)
# The largest top-k of the shared pick (the engine's PICK_TOP_K_MAX; larger ones draw on the host).
PICK_TOP_K_MAX: int = _core.pick_top_k_max
_COUNTER = 2**32  # the shared pick's draw counter is 32 bits and wraps


@dataclass(frozen=True)
class SamplerSettings:
    temperature: float = 0.8  # 0 (or anything below GREEDY_BELOW) -> greedy
    top_k: int = 40  # 0 -> off
    top_p: float = 0.95  # 1.0 -> off
    min_p: float = 0.05  # 0 -> off
    repeat_penalty: float = 1.0  # 1.0 -> off; divides positive logits, multiplies negative ones
    presence_penalty: float = 0.0  # subtracted once from every token seen in the window
    frequency_penalty: float = 0.0  # subtracted once per occurrence in the window
    penalty_last_n: int = 64  # recent tokens the penalties look at; 0 -> off, -1 -> all history
    seed: int | None = None  # None -> a fresh, unpredictable seed

    def __post_init__(self) -> None:
        # Refuse bad values where they are written, not at the first sampled token.
        self.validate()

    def validate(self) -> None:
        """Raise RequestError naming the first setting that is out of range."""
        _check_real("temperature", self.temperature, ">= 0", lambda v: v >= 0)
        _check_int("top_k", self.top_k, ">= 0 (0 turns top-k off)", lambda v: v >= 0)
        _check_real("top_p", self.top_p, "in (0, 1] (1 turns top-p off)", lambda v: 0 < v <= 1)
        _check_real("min_p", self.min_p, "in [0, 1] (0 turns min-p off)", lambda v: 0 <= v <= 1)
        lo, hi = REPEAT_PENALTY_RANGE
        _check_real(
            "repeat_penalty",
            self.repeat_penalty,
            f"in [{lo:g}, {hi:g}] (1 turns it off)",
            lambda v: lo <= v <= hi,
        )
        lo, hi = ADDITIVE_PENALTY_RANGE
        for name in ("presence_penalty", "frequency_penalty"):
            _check_real(
                name,
                getattr(self, name),
                f"in [{lo:g}, {hi:g}] (0 turns it off)",
                lambda v: lo <= v <= hi,
            )
        _check_int(
            "penalty_last_n",
            self.penalty_last_n,
            ">= -1 (0 turns penalties off, -1 uses the whole history)",
            lambda v: v >= -1,
        )
        if self.seed is not None:
            _check_int("seed", self.seed, "None or an integer >= 0", lambda v: v >= 0)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def shared_pick(self) -> bool:
        """Whether sampling goes through the engine's shared seeded pick (see the module notes),
        which the GPU can run too."""
        return not self.greedy and not self.penalties_active and 1 <= self.top_k <= PICK_TOP_K_MAX

    @property
    def penalties_active(self) -> bool:
        return self.penalty_last_n != 0 and (
            self.repeat_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )


def _check_real(name: str, value: object, allowed: str, ok: Callable[[float], bool]) -> None:
    # bool is an int subclass; True as a temperature is almost certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise RequestError(f"sampler setting {name} must be {allowed}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or not ok(v):
        raise RequestError(f"sampler setting {name} must be {allowed}, got {value!r}")


def _check_int(name: str, value: object, allowed: str, ok: Callable[[int], bool]) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise RequestError(f"sampler setting {name} must be an integer {allowed}, got {value!r}")
    if not ok(int(value)):
        raise RequestError(f"sampler setting {name} must be {allowed}, got {value!r}")


class Sampler:
    """Picks the next token. Holds the random generator, so one Sampler per generation stream.

    Settings with a temperature below ``GREEDY_BELOW`` (0 included) are greedy: the argmax of
    the penalized logits, the first on ties."""

    def __init__(self, settings: SamplerSettings) -> None:
        settings.validate()
        self.settings = settings
        self._rng = np.random.default_rng(settings.seed)
        # The shared pick's stream: a 64-bit key from the seed (any integer, through numpy's
        # SeedSequence), and how many draws it has made. GPU-resident decoding makes draws
        # for the sampler and adds the ones it kept to ``draws``.
        lo, hi = np.random.SeedSequence(settings.seed).generate_state(2, np.uint32)
        self._key = int(lo) | int(hi) << 32
        self.draws = 0

    def resident_pick(self) -> dict[str, float | int] | None:
        """The shared pick's arguments for the next draw (Model._decode_resident's ``pick``),
        or None when these settings do not use it (greedy ones pick by argmax instead)."""
        s = self.settings
        if not s.shared_pick:
            return None
        inv = np.float32(1.0 / s.temperature)
        return {
            "top_k": s.top_k,
            "top_p": float(np.float32(s.top_p)),
            "min_p": float(np.float32(s.min_p)),
            # A temperature past float32's range flattens the distribution: 1/T is then 0.
            "inv_temp": float(inv) if inv >= np.finfo(np.float32).tiny else 0.0,
            "seed": self._key,
            "counter": self.draws % _COUNTER,
        }

    def sample(self, logits: np.ndarray, history: Sequence[int] | np.ndarray = ()) -> int:
        """The next token id. ``logits`` is read only; ``history`` is the tokens so far (prompt
        included, as llama.cpp feeds the prompt to its penalty window)."""
        x = _check_logits(logits)
        s = self.settings
        if x.dtype == np.float32 and (pick := self.resident_pick()) is not None:
            tok, status = _core.pick_token(np.ascontiguousarray(x), **pick)
            if status:
                raise greedy_status_error(status)
            self.draws += 1
            return int(tok)
        ids, vals = _penalty_updates(x, history, s)
        if s.greedy:
            return _argmax_penalized(x, ids, vals)
        tokens, probs = self._distribution(x, ids, vals)
        # One draw per call whatever the candidate count, so the random stream (and thus a
        # seeded run) does not depend on how many tokens survived the filters.
        u = self._rng.random()
        cdf = np.cumsum(probs)
        i = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
        return int(tokens[min(i, tokens.size - 1)])

    def distribution(
        self, logits: np.ndarray, history: Sequence[int] | np.ndarray = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """The distribution ``sample`` draws from: (token ids, probabilities summing to 1), the
        tokens that survive the filters, in no particular order (with every filter off, the
        whole vocabulary, masked tokens at probability 0). Does not advance the random
        generator. For greedy settings it is the argmax with probability 1."""
        x = _check_logits(logits)
        ids, vals = _penalty_updates(x, history, self.settings)
        if self.settings.greedy:
            return np.array([_argmax_penalized(x, ids, vals)]), np.ones(1)
        return self._distribution(x, ids, vals)

    def _distribution(
        self, x: np.ndarray, ids: np.ndarray, vals: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        s = self.settings
        n = x.size
        if 0 < s.top_k < n:
            tokens, v = _top_k(x, s.top_k, ids, vals)
            top = float(v.max())
            _check_max(top)
            if v.min() == -np.inf:  # fewer than k unmasked tokens: drop the masked ones
                tokens, v = tokens[v > -np.inf], v[v > -np.inf]
            z = float(np.exp(v - top).sum())  # top-p normalizes over the top-k survivors
        else:
            w = _penalized_copy(x, ids, vals)
            top = float(w.max())
            _check_max(top)
            if s.top_p >= 1 and s.min_p == 0:
                # No truncation at all: every token is a candidate.
                if w.dtype == np.float32 and s.temperature <= _F32_MAX:
                    # Exponentials in float32 (float64 exp is ten times slower), sums in float64.
                    # The temperature is a normal float32 (smaller ones are greedy) and finite
                    # (a larger one would make masked tokens -inf / inf = NaN); overflow
                    # yields -inf, whose exponential is the right 0.
                    with np.errstate(over="ignore"):
                        t32 = np.float32(s.temperature)
                        e = np.exp((w - np.float32(top)) / t32).astype(np.float64)
                else:
                    e = np.exp((w.astype(np.float64) - top) / s.temperature)
                return np.arange(n), e / e.sum()
            tokens, v, z = _nucleus_superset(w, top, s.top_p, s.min_p)
        if s.top_p < 1:
            order = np.argsort(-v, kind="stable")
            tokens, v = tokens[order], v[order]
            cum = np.cumsum(np.exp(v - top)) / z
            # llama.cpp keeps tokens up to and including the one whose cumulative probability
            # reaches top_p.
            keep = int(np.searchsorted(cum, s.top_p, side="left")) + 1
            tokens, v = tokens[:keep], v[:keep]
        if s.min_p > 0:
            mask = v >= top + math.log(s.min_p)
            tokens, v = tokens[mask], v[mask]
        w = np.exp((v - top) / s.temperature)
        return tokens, w / w.sum()


def apply_penalties(
    logits: np.ndarray, history: Sequence[int] | np.ndarray, settings: SamplerSettings
) -> np.ndarray:
    """A penalized copy of ``logits`` (the sampler itself only computes the changed entries),
    widened to float64 if a penalized logit lies beyond the range of their type."""
    x = _check_logits(logits)
    ids, vals = _penalty_updates(x, history, settings)
    return _penalized_copy(x, ids, vals) if ids.size else x.copy()


def _check_logits(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits)
    if x.ndim != 1 or x.size == 0:
        raise RequestError(f"logits must be a non-empty 1-D array, got shape {x.shape}")
    if x.dtype.kind != "f":
        raise RequestError(f"logits must be a floating-point array, got dtype {x.dtype}")
    return x


def _check_max(top: float) -> None:
    # The maximum is NaN if any entry is NaN, so this one comparison screens the whole input.
    if math.isnan(top):
        raise greedy_status_error(1)
    if top == math.inf:
        raise greedy_status_error(2)
    if top == -math.inf:
        raise greedy_status_error(3)


def greedy_status_error(status: int) -> Exception:
    """The error sampling raises for logits with a NaN (status 1), a +inf maximum (2) or only
    -inf (3): the statuses of the engine's own picks (its argmax and its shared pick, which
    GPU-resident decoding runs), which must fail where sampling on the host would."""
    if status == 1:
        return ModelError("logits contain NaN (the model produced non-finite values)")
    if status == 2:
        return ModelError("logits contain +inf (the model produced non-finite values)")
    if status == 3:
        return RequestError("all logits are -inf: every token is masked, nothing can be sampled")
    return ModelError(f"the engine reported an unknown status {status} for its token pick")


def _penalty_updates(
    x: np.ndarray, history: Sequence[int] | np.ndarray, s: SamplerSettings
) -> tuple[np.ndarray, np.ndarray]:
    """The token ids the penalties change and their new logits (float64), per llama.cpp:

    logit = logit * repeat if logit <= 0 else logit / repeat
    logit -= count * frequency + (count > 0) * presence

    where count is the token's occurrences among the last ``penalty_last_n`` history tokens.
    """
    empty = (np.empty(0, np.int64), np.empty(0, np.float64))
    if not s.penalties_active or len(history) == 0:
        return empty
    # Slice before converting: the history can be long and only the window matters.
    window = history if s.penalty_last_n < 0 else history[-s.penalty_last_n :]
    h = np.asarray(window)
    if h.dtype.kind not in "iu":
        raise RequestError(f"history must hold integer token ids, got dtype {h.dtype}")
    ids, counts = np.unique(h, return_counts=True)
    if ids[0] < 0 or ids[-1] >= x.size:
        bad = ids[0] if ids[0] < 0 else ids[-1]
        raise RequestError(f"history holds token id {bad}, outside the vocabulary [0, {x.size})")
    ids = ids.astype(np.int64)
    raw = x[ids]
    with np.errstate(over="ignore"):
        # Float32 arithmetic, as llama.cpp does it, so penalized logits round as they do there.
        v = _penalize(raw.astype(np.float32), counts.astype(np.float32), s, lambda a: a)
        if np.isfinite(v).all() or not np.any(~np.isfinite(v) & np.isfinite(raw)):
            return ids, v.astype(np.float64)
        # Float32 overflowed (a logit near its maximum times an accepted penalty), and an
        # infinity would be blamed on the model. Again in float64, rounding every step to
        # float32 where float32 can hold it: that is exactly the float32 result there (float64
        # has more than twice float32's precision), the float64 one elsewhere.
        finite = np.isfinite(raw)

        def round32(a: np.ndarray) -> np.ndarray:
            r = a.astype(np.float32)
            a = np.where(np.isfinite(r), r, a)
            # Float64 logits (the sampler accepts them) near float64's maximum can still
            # overflow: saturate them, so that only logits that were infinite stay so.
            return np.where(np.isinf(a) & finite, np.copysign(_F64_MAX, a), a)

        c = counts.astype(np.float32).astype(np.float64)
        v = _penalize(round32(raw.astype(np.float64)), c, s, round32)
    return ids, v


_F32_MAX = float(np.finfo(np.float32).max)
_F64_MAX = float(np.finfo(np.float64).max)


def _penalize(
    v: np.ndarray, counts: np.ndarray, s: SamplerSettings, rnd: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """llama.cpp's penalties of logits ``v`` seen ``counts`` times, in the type of ``v``, with
    every intermediate result passed through ``rnd``."""
    rp = np.float32(s.repeat_penalty)
    v = rnd(np.where(v <= 0, v * rp, v / rp))
    sub = rnd(rnd(counts * np.float32(s.frequency_penalty)) + np.float32(s.presence_penalty))
    return rnd(v - sub)


def _penalized_copy(x: np.ndarray, ids: np.ndarray, vals: np.ndarray) -> np.ndarray:
    if ids.size == 0:
        return x
    # A penalized logit can lie beyond the range of the logits' type (one near float32's
    # maximum divided by a repeat penalty below 1): widen rather than store an infinity.
    fits = bool(np.all(np.abs(vals) <= np.finfo(x.dtype).max))
    w = x.copy() if fits else x.astype(np.float64)
    w[ids] = vals
    return w


def _argmax_penalized(x: np.ndarray, ids: np.ndarray, vals: np.ndarray) -> int:
    """np.argmax of the penalized logits (first index on ties) without copying them, unless the
    unpenalized argmax is itself penalized, in which case the runner-up is unknown."""
    i = int(np.argmax(x))  # np.argmax returns the first NaN if there is one
    _check_max(float(x[i]))
    if ids.size == 0:
        return i
    pos = int(np.searchsorted(ids, i))
    if pos < ids.size and ids[pos] == i:
        w = _penalized_copy(x, ids, vals)
        k = int(np.argmax(w))
        _check_max(float(w[k]))
        return k
    # i is the first maximum over all tokens, hence also over the unpenalized ones; the only
    # rival is the best penalized token (np.argmax: the lowest id among equal values).
    j = int(np.argmax(vals))
    a, b = float(x[i]), float(vals[j])
    if b > a or (b == a and int(ids[j]) < i):
        return int(ids[j])
    return i


def _top_k(
    x: np.ndarray, k: int, ids: np.ndarray, vals: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The k highest penalized logits, as (token ids, float64 values), unordered.

    Penalized tokens may move anywhere, so take the top k + len(ids) of the raw logits: at least
    k of those are unpenalized, and they are the best unpenalized ones. Their union with the
    penalized tokens (new values) holds the answer; a small partition finishes the job.
    """
    # Screen before selecting: the comparisons below would silently skip NaN, and an all -inf
    # vector would leave no candidate at all.
    _check_max(float(x.max()))
    cand = _top_superset(x, min(x.size, k + ids.size))
    v = x[cand].astype(np.float64)
    if ids.size:
        # ids is sorted (np.unique), so membership is a binary search, cheaper than np.isin.
        pos = np.minimum(np.searchsorted(ids, cand), ids.size - 1)
        raw = ids[pos] != cand
        cand = np.concatenate([cand[raw], ids])
        v = np.concatenate([v[raw], vals])
    if cand.size > k:
        sel = np.argpartition(v, cand.size - k)[cand.size - k :]
        cand, v = cand[sel], v[sel]
    return cand, v


_SUBSAMPLE = 8192  # entries of the strided sample that estimates the top-k threshold


def _top_superset(x: np.ndarray, kk: int) -> np.ndarray:
    """Indices of a set that holds the kk largest entries of x (no NaN), usually a few thousand.

    A partition of the whole vocabulary costs about as much as everything else in a sampling
    step together. Instead, take the kk-th largest value of a strided sample as a threshold:
    the sample alone has kk entries at or above it, so {x >= threshold} certainly holds the kk
    largest, and for any ordering of the vocabulary that is not adversarial it holds about
    kk * stride entries. If it holds too many, partition the whole vocabulary after all.
    """
    n = x.size
    if kk >= n:
        return np.arange(n)
    stride = n // _SUBSAMPLE
    if stride >= 4 and kk * 4 <= _SUBSAMPLE:
        sample = x[::stride]
        thr = np.partition(sample, sample.size - kk)[sample.size - kk]
        cand = _at_least(x, thr)
        if cand.size <= n // 8:
            return cand
    thr = np.partition(x, n - kk)[n - kk]
    return _at_least(x, thr)


def _at_least(x: np.ndarray, thr: np.floating) -> np.ndarray:
    # A -inf threshold means fewer finite logits than wanted: the masked ones have probability
    # 0 anyway, and ">=" would select the whole vocabulary.
    return np.flatnonzero(x > thr) if thr == -np.inf else np.flatnonzero(x >= thr)


def _nucleus_superset(
    w: np.ndarray, top: float, top_p: float, min_p: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Tokens that certainly include everything top-p and min-p keep from the whole vocabulary,
    with their float64 logits and the full-vocabulary normalizer sum(exp(w - top)).

    Top-p keeps the most probable tokens until their mass reaches top_p. With e = exp(w - top)
    and Z = sum(e), tokens with e < (1 - top_p) * Z / n hold less than (1 - top_p) of the mass
    together, so the tokens at or above that bound hold more than top_p: the nucleus is among
    them and only they need sorting. Min-p keeps e >= min_p, so the larger bound applies.
    Sharply peaked distributions (the usual case) leave a few dozen tokens; a flat one can leave
    most of the vocabulary, and then the sort is the honest cost of a huge nucleus. Any prefix
    (in logit order) whose mass reaches top_p holds the nucleus too, so cheaper cut-offs are
    tried first.
    """
    n = w.size
    if top_p >= 1:
        # Min-p alone: a threshold in logit space, no exponentials over the vocabulary.
        cand = np.flatnonzero(w >= top + math.log(min_p))
        return cand, w[cand].astype(np.float64), math.inf
    # In float32 for float32 logits (top is one of them, so exact); penalties can have widened
    # w to float64, and then top may lie beyond float32's range.
    with np.errstate(over="ignore"):  # a difference beyond float32 is -inf: exp gives 0
        d = w - np.float32(top) if w.dtype == np.float32 else w.astype(np.float64) - top
    z = float(np.exp(d).sum(dtype=np.float64))
    bound = max((1.0 - top_p) * z / n, min_p)
    # The bound is safe but loose when a long flat tail carries real mass; tighter thresholds
    # usually already hold top_p of the mass, and checking one costs a comparison pass.
    for b in _NUCLEUS_TRIES:
        if b <= bound:
            break
        cand = np.flatnonzero(w >= top + math.log(b))
        v = w[cand].astype(np.float64)
        if np.exp(v - top).sum() >= top_p * z:
            return cand, v, z
    # Compare in logit space, exactly as the min-p filter applied later does, so that rounding
    # in exp cannot drop a token min-p would keep.
    cand = np.flatnonzero(w >= top + math.log(bound))
    return cand, w[cand].astype(np.float64), z


_NUCLEUS_TRIES = (1e-2, 1e-4)  # relative probabilities (to the top token) tried as cut-offs
