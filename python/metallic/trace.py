"""Visible inference: a prompt's path through the model, op by op (`python -m metallic trace`).

The engine runs each pass with an observer (Model.trace, cpp/engine/trace.h): the forward pass
unfused, every op waited for, its output handed to Python. Here each op becomes an ``OpEvent``
(shapes, weight, routine, time and statistics of its output, optionally the output itself);
after each pass the logits' top candidates and the sampler's choice are explained (which filter
cut how many candidates). The CLI (cli_trace.py) prints them as they happen, as JSON lines, or
dumps every intermediate as .npy; trace_compare.py checks them against transformers.

A traced run is: the prompt's pass (step 0), a token sampled from its logits, then for each
further token a decode pass of the previous one (step 1, 2, ...), as generate() runs them: n
tokens cost the prompt's pass and n - 1 decode passes. It stops early at an end-of-generation
token. The token stream is generate()'s for the same settings and seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import RequestError
from .sampling import Sampler, SamplerSettings, apply_penalties

if TYPE_CHECKING:
    from .model import Model

# The ops of a layer in the order a pass runs them (trace.h lists what each is). An architecture
# runs the ones its flags call for: q_norm/k_norm with qk_norm, the post-norms with post_norms.
LAYER_OPS = (
    "attn_norm",
    "q",
    "k",
    "v",
    "q_norm",
    "k_norm",
    "rope_q",
    "rope_k",
    "attention",
    "attn_output",
    "post_attn_norm",
    "residual_attn",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "glu",
    "ffn_down",
    "post_ffn_norm",
    "residual_ffn",
)
OUTPUT_OPS = ("output_norm", "logits", "logit_softcap")
ALL_OPS = ("embed", *LAYER_OPS, *OUTPUT_OPS)

# The vectors (norm weights, biases) an op reads beside its matrix, by GGUF tensor name: the
# engine reports matrices only (it holds the vectors as float32 copies).
_VECTORS = {
    "attn_norm": "attn_norm.weight",
    "q_norm": "attn_q_norm.weight",
    "k_norm": "attn_k_norm.weight",
    "post_attn_norm": "post_attention_norm.weight",
    "ffn_norm": "ffn_norm.weight",
    "post_ffn_norm": "post_ffw_norm.weight",
    "q": "attn_q.bias",
    "k": "attn_k.bias",
    "v": "attn_v.bias",
}


def expected_ops(config: Any) -> list[str]:
    """The ops of one layer of a model with this config (metallic.config.ModelConfig), in
    order: what every layer of a traced pass shows."""
    skip = set()
    if not config.qk_norm:
        skip |= {"q_norm", "k_norm"}
    if not config.post_norms:
        skip |= {"post_attn_norm", "post_ffn_norm"}
    return [op for op in LAYER_OPS if op not in skip]


@dataclass(frozen=True)
class TensorStats:
    """Statistics of an op's output. mean, rms and max_abs are over its finite values (so that
    one NaN does not hide the others' scale); nonfinite counts the rest."""

    mean: float
    rms: float
    max_abs: float
    nonfinite: int

    @classmethod
    def of(cls, x: np.ndarray) -> TensorStats:
        finite = np.isfinite(x)
        bad = int(x.size - np.count_nonzero(finite))
        v = x[finite] if bad else x
        if v.size == 0:
            return cls(math.nan, math.nan, math.nan, bad)
        v = v.astype(np.float64)
        return cls(float(v.mean()), float(np.sqrt(np.mean(v * v))), float(np.abs(v).max()), bad)


@dataclass
class OpEvent:
    """One op of a traced pass."""

    step: int  # 0: the prompt's pass; k: the decode pass of generated token k
    layer: int  # -1 outside the layers (embed, output_norm, logits, logit_softcap)
    op: str
    routine: str  # the backend call that ran; on a GPU backend also its kernels
    pos: int  # position of the first row
    input_shape: tuple[int, int]
    shape: tuple[int, int]
    seconds: float
    weight: str | None  # the tensors it read: a matrix and/or a vector (norm weight, bias)
    weight_type: str | None
    weight_bytes: int
    stats: TensorStats
    data: np.ndarray | None = None  # the output, when kept

    @property
    def name(self) -> str:
        """ "L03.attn_output", or the op alone outside the layers ("embed", "logits")."""
        return self.op if self.layer < 0 else f"L{self.layer:02d}.{self.op}"

    def record(self) -> dict[str, Any]:
        """The event as JSON-ready values (without the data)."""
        return {
            "event": "op",
            "step": self.step,
            "layer": self.layer,
            "op": self.op,
            "routine": self.routine,
            "pos": self.pos,
            "input_shape": list(self.input_shape),
            "shape": list(self.shape),
            "seconds": self.seconds,
            "weight": self.weight,
            "weight_type": self.weight_type,
            "weight_bytes": self.weight_bytes,
            "mean": _json_float(self.stats.mean),
            "rms": _json_float(self.stats.rms),
            "max_abs": _json_float(self.stats.max_abs),
            "nonfinite": self.stats.nonfinite,
        }


def _json_float(v: float) -> float | None:
    return v if math.isfinite(v) else None  # JSON has no NaN


@dataclass(frozen=True)
class Candidate:
    id: int
    piece: str
    logit: float
    prob: float  # softmax of the raw logits (temperature 1, no filters)


@dataclass(frozen=True)
class FilterCut:
    """One stage of the sampler chain: how many candidates it left."""

    name: str  # "penalties", "top_k", "top_p", "min_p", "temperature", "greedy"
    setting: str
    before: int
    after: int
    note: str = ""


@dataclass
class SampleStep:
    """The logits of a pass and what the sampler made of them."""

    step: int
    pos: int  # the position the logits predict
    top: list[Candidate]
    filters: list[FilterCut]
    chosen: int
    chosen_piece: str
    chosen_prob: float  # in the distribution the sampler drew from
    chosen_rank: int  # 1 = the most likely raw logit
    end_of_generation: bool = False
    # What the sampler drew from: (token ids, probabilities), after every filter.
    distribution: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        return {
            "event": "sample",
            "step": self.step,
            "pos": self.pos,
            "top": [
                {"id": c.id, "piece": c.piece, "logit": c.logit, "prob": c.prob} for c in self.top
            ],
            "filters": [
                {"name": f.name, "setting": f.setting, "before": f.before, "after": f.after}
                | ({"note": f.note} if f.note else {})
                for f in self.filters
            ],
            "chosen": self.chosen,
            "chosen_piece": self.chosen_piece,
            "chosen_prob": self.chosen_prob,
            "chosen_rank": self.chosen_rank,
            "end_of_generation": self.end_of_generation,
        }


@dataclass
class Trace:
    """A traced run: the prompt, the events of every pass, the sampler's steps."""

    prompt: list[int]
    events: list[OpEvent] = field(default_factory=list)
    samples: list[SampleStep] = field(default_factory=list)

    @property
    def generated(self) -> list[int]:
        return [s.chosen for s in self.samples]

    def step_events(self, step: int) -> list[OpEvent]:
        return [e for e in self.events if e.step == step]


def piece(model: Model, token: int) -> str:
    """The text of one token (special tokens as written), or "" without a tokenizer."""
    if "tokenizer.ggml.model" not in model.metadata:
        return ""
    return model.tokenizer.token_to_piece(token, special=True).decode("utf-8", "replace")


def _vector_info(model: Model, layer: int, op: str) -> tuple[str, str, int] | None:
    """(name, type, bytes) of the norm weight or bias `op` reads, if the file has one."""
    if op == "output_norm":
        name = "output_norm.weight"
    elif op in _VECTORS and layer >= 0:
        name = f"blk.{layer}.{_VECTORS[op]}"
    else:
        return None
    t = model.gguf.tensors.get(name)
    return (name, t.type_name, int(t.nbytes)) if t is not None else None


def run_trace(
    model: Model,
    prompt: Sequence[int],
    n_tokens: int,
    settings: SamplerSettings,
    *,
    on_event: Callable[[OpEvent], None] | None = None,
    on_sample: Callable[[SampleStep], None] | None = None,
    keep_data: bool | Callable[[OpEvent], bool] = False,
    top: int = 10,
    stop_ids: Sequence[int] | None = None,
) -> Trace:
    """Traces the prompt's pass and n_tokens sampled tokens (see the module's docstring) from an
    empty cache. on_event and on_sample are called as each op and each sampling happens;
    keep_data keeps the op outputs in the events (all, or those the predicate accepts).
    stop_ids: the end-of-generation tokens (default: the tokenizer's)."""
    ids = [int(i) for i in prompt]
    if not ids:
        raise RequestError("the prompt is empty (no tokens)")
    if n_tokens < 0:
        raise RequestError(f"n_tokens must be >= 0, got {n_tokens}")
    if stop_ids is None:
        has_tok = "tokenizer.ggml.model" in model.metadata
        stop_ids = sorted(model.tokenizer.eog_ids) if has_tok else []
    eog = frozenset(int(i) for i in stop_ids)
    trace = Trace(prompt=ids)
    sampler = Sampler(settings)
    history = list(ids)
    step = 0

    def observe(raw: dict[str, Any]) -> None:
        data: np.ndarray = raw["data"]
        layer, op = int(raw["layer"]), str(raw["op"])
        weight, wtype, wbytes = raw["weight"], raw["weight_type"], int(raw["weight_bytes"])
        vec = _vector_info(model, layer, op)
        if vec is not None:  # the norm weight or bias beside (or instead of) a matrix
            weight = vec[0] if weight is None else f"{weight}+{vec[0]}"
            wtype = vec[1] if wtype is None else f"{wtype}+{vec[1]}"
            wbytes += vec[2]
        routine = str(raw["routine"])
        if raw["kernels"]:
            routine += f": {raw['kernels']}"
        e = OpEvent(
            step=step,
            layer=layer,
            op=op,
            routine=routine,
            pos=int(raw["pos"]),
            input_shape=(int(raw["input_shape"][0]), int(raw["input_shape"][1])),
            shape=(int(data.shape[0]), int(data.shape[1])),
            seconds=float(raw["seconds"]),
            weight=weight,
            weight_type=wtype,
            weight_bytes=wbytes,
            stats=TensorStats.of(data),
        )
        if keep_data is True or (callable(keep_data) and keep_data(e)):
            e.data = data
        trace.events.append(e)
        if on_event is not None:
            on_event(e)

    with model.hold():
        model.reset()
        logits = model.trace(ids, observe)
        for i in range(n_tokens):
            s = explain_sample(model, logits, history, settings, step=step, top=top)
            s.chosen = sampler.sample(logits, history)
            _describe_choice(model, s, logits)
            s.end_of_generation = s.chosen in eog
            trace.samples.append(s)
            if on_sample is not None:
                on_sample(s)
            if s.end_of_generation or i == n_tokens - 1 or model.n_past >= model.n_ctx:
                break
            history.append(s.chosen)
            step += 1
            logits = model.trace([s.chosen], observe)
    return trace


def explain_sample(
    model: Model,
    logits: np.ndarray,
    history: Sequence[int],
    settings: SamplerSettings,
    *,
    step: int = 0,
    top: int = 10,
) -> SampleStep:
    """The top candidates of the logits and the cuts of the sampler chain (sampling.py's
    order: penalties, top-k, top-p, min-p, temperature); ``chosen`` is left for the caller's
    Sampler to fill in (see _describe_choice)."""
    x = np.asarray(logits, dtype=np.float64)
    n = x.size
    order = np.argsort(-x, kind="stable")[: max(top, 1)]
    finite = x[np.isfinite(x)]
    m = float(finite.max()) if finite.size else 0.0
    z = float(np.exp(finite - m).sum()) if finite.size else 1.0
    cands = [
        Candidate(int(t), piece(model, int(t)), float(x[t]), float(np.exp(x[t] - m) / z))
        for t in order[:top]
    ]
    s = settings
    filters: list[FilterCut] = []
    w = apply_penalties(np.asarray(logits), history, s).astype(np.float64)
    if s.penalties_active and len(history):
        window = len(history) if s.penalty_last_n < 0 else min(s.penalty_last_n, len(history))
        changed = int(np.count_nonzero(w != x))
        filters.append(
            FilterCut(
                "penalties",
                f"repeat {s.repeat_penalty:g}, presence {s.presence_penalty:g}, "
                f"frequency {s.frequency_penalty:g}, last {window} tokens",
                n,
                n,
                f"{changed} logits changed",
            )
        )
    pos = model.n_past  # the logits predict the token at the next position
    sample = SampleStep(step, pos, cands, filters, -1, "", math.nan, 0)
    if s.greedy:
        filters.append(FilterCut("greedy", f"temperature {s.temperature:g}", n, 1, "the argmax"))
        sample.distribution = (np.array([int(np.argmax(w))]), np.ones(1))
        return sample
    cand = np.argsort(-w, kind="stable")
    cand = cand[w[cand] > -np.inf]  # masked tokens never survive
    if 0 < s.top_k < n:
        before = cand.size
        cand = cand[: s.top_k]
        filters.append(FilterCut("top_k", f"{s.top_k}", before, cand.size))
    best = float(w[cand[0]])
    if s.top_p < 1:
        before = cand.size
        e = np.exp(w[cand] - best)
        cum = np.cumsum(e) / e.sum()
        keep = int(np.searchsorted(cum, s.top_p, side="left")) + 1
        cand = cand[:keep]
        filters.append(FilterCut("top_p", f"{s.top_p:g}", before, cand.size))
    if s.min_p > 0:
        before = cand.size
        cand = cand[w[cand] >= best + math.log(s.min_p)]
        filters.append(FilterCut("min_p", f"{s.min_p:g}", before, cand.size))
    p = np.exp((w[cand] - best) / s.temperature)
    p /= p.sum()
    raw_top = float(np.exp(w[cand[0]] - best) / np.exp(w[cand] - best).sum())
    filters.append(
        FilterCut(
            "temperature",
            f"{s.temperature:g}",
            cand.size,
            cand.size,
            f"top probability {raw_top:.3f} -> {float(p[0]):.3f}",
        )
    )
    sample.distribution = (cand, p)
    return sample


def _describe_choice(model: Model, s: SampleStep, logits: np.ndarray) -> None:
    assert s.distribution is not None
    tokens, probs = s.distribution
    hit = np.flatnonzero(tokens == s.chosen)
    s.chosen_prob = float(probs[hit[0]]) if hit.size else math.nan
    x = np.asarray(logits)
    s.chosen_rank = int(np.count_nonzero(x > x[s.chosen])) + 1
    s.chosen_piece = piece(model, s.chosen)


# -- selection, output ------------------------------------------------------------------------


def parse_layers(text: str) -> set[int]:
    """'0,3-5' -> {0, 3, 4, 5}."""
    out: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                a, b = int(lo), int(hi)
                if a > b:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise RequestError(
                f"--layers: expected layer numbers and ranges like '0,3-5', got {part!r}"
            ) from None
    if not out:
        raise RequestError("--layers: no layers given")
    return out


def parse_ops(text: str) -> set[str]:
    ops = {o for o in text.replace(" ", "").split(",") if o}
    unknown = sorted(ops - set(ALL_OPS))
    if unknown:
        raise RequestError(f"--ops: unknown op(s) {', '.join(unknown)} (ops: {', '.join(ALL_OPS)})")
    if not ops:
        raise RequestError("--ops: no ops given")
    return ops


def selector(layers: set[int] | None, ops: set[str] | None) -> Callable[[OpEvent], bool]:
    """Which events to show: --layers picks layers (the ops outside layers stay), --ops ops."""

    def pick(e: OpEvent) -> bool:
        if layers is not None and e.layer >= 0 and e.layer not in layers:
            return False
        return ops is None or e.op in ops

    return pick


def human_bytes(n: int) -> str:
    """1536 -> '1.5K'."""
    if n < 1024:
        return f"{n}B"
    v = float(n)
    for unit in ("K", "M", "G"):
        v /= 1024
        if v < 1024 or unit == "G":
            break
    return f"{v:.1f}{unit}"


def short_weight(name: str | None) -> str:
    """'blk.3.attn_q.weight+blk.3.attn_q.bias' -> 'attn_q+bias'."""
    if not name:
        return "-"
    parts = []
    for p in name.split("+"):
        if p.startswith("blk."):
            p = p.split(".", 2)[2]
        parts.append(p.removesuffix(".weight"))
    if len(parts) == 2 and parts[1].endswith(".bias"):
        parts[1] = "bias"
    return "+".join(parts)


OP_HEADER = (
    f"{'layer':>5} {'op':<15} {'input':>11} {'output':>11} {'weight':<26} {'routine':<34} "
    f"{'ms':>8} {'mean':>10} {'rms':>9} {'max|x|':>9} {'!fin':>5}"
)


def format_op(e: OpEvent) -> str:
    w = "-"
    if e.weight:
        w = f"{short_weight(e.weight)} {e.weight_type} {human_bytes(e.weight_bytes)}"
    layer = "-" if e.layer < 0 else str(e.layer)
    shape_in = f"{e.input_shape[0]}x{e.input_shape[1]}"
    shape_out = f"{e.shape[0]}x{e.shape[1]}"
    st = e.stats
    return (
        f"{layer:>5} {e.op:<15} {shape_in:>11} {shape_out:>11} {w:<26} {e.routine:<34} "
        f"{1e3 * e.seconds:>8.3f} {st.mean:>10.3e} {st.rms:>9.3e} {st.max_abs:>9.3e} "
        f"{st.nonfinite:>5}"
    )


def format_sample(s: SampleStep) -> list[str]:
    lines = [f"logits at position {s.pos}: top {len(s.top)}"]
    lines.append(f"  {'rank':>4} {'id':>7}  {'piece':<20} {'logit':>10} {'prob':>8}")
    for r, c in enumerate(s.top, 1):
        lines.append(f"  {r:>4} {c.id:>7}  {c.piece!r:<20} {c.logit:>10.4f} {c.prob:>8.4f}")
    lines.append("sampler:")
    for f in s.filters:
        note = f" ({f.note})" if f.note else ""
        if f.name in ("penalties", "temperature"):
            lines.append(f"  {f.name} {f.setting}: {f.after} candidates{note}")
        else:
            lines.append(f"  {f.name} {f.setting}: {f.before} -> {f.after} candidates{note}")
    end = " (end of generation)" if s.end_of_generation else ""
    lines.append(
        f"  chose id {s.chosen} {s.chosen_piece!r} (rank {s.chosen_rank} by logit, p = "
        f"{s.chosen_prob:.4f} in the final distribution){end}"
    )
    return lines


def step_summary(events: Sequence[OpEvent]) -> str:
    """One line: the pass's traced time and where most of it went."""
    total = sum(e.seconds for e in events)
    by_op: dict[str, float] = {}
    for e in events:
        by_op[e.op] = by_op.get(e.op, 0.0) + e.seconds
    heavy = sorted(by_op.items(), key=lambda kv: -kv[1])[:4]
    parts = ", ".join(f"{op} {v / total:.0%}" for op, v in heavy) if total > 0 else ""
    return f"{len(events)} ops, {1e3 * total:.2f} ms traced ({parts})"


# -- dump -------------------------------------------------------------------------------------


def dump(
    trace: Trace,
    directory: str | Path,
    n_layer: int,
    select: Callable[[OpEvent], bool] | None = None,
) -> tuple[Path, int]:
    """Writes the kept output of every selected event as DIR/stepK/L03.attn_output.npy
    (embed.npy, output_norm.npy, logits.npy outside the layers), the token ids as
    DIR/tokens.npy (prompt, then generated: int32; DIR/prompt.npy the prompt alone) and the
    selected events as DIR/events.jsonl (one op record per line, with its "file"). Returns the
    directory and the number of tensors written."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(n_layer - 1)))
    np.save(root / "tokens.npy", np.array(trace.prompt + trace.generated, dtype=np.int32))
    np.save(root / "prompt.npy", np.array(trace.prompt, dtype=np.int32))
    count = 0
    with open(root / "events.jsonl", "w", encoding="utf-8") as f:
        for e in trace.events:
            if select is not None and not select(e):
                continue
            rec = e.record()
            if e.data is not None:
                name = e.op if e.layer < 0 else f"L{e.layer:0{width}d}.{e.op}"
                rel = Path(f"step{e.step}") / f"{name}.npy"
                (root / rel.parent).mkdir(exist_ok=True)
                np.save(root / rel, e.data)
                rec["file"] = rel.as_posix()
                count += 1
            f.write(json.dumps(rec) + "\n")
    return root, count
