"""`trace --compare`: the same tokens through Hugging Face transformers, op by op.

The reference runs the prompt in float32 on the CPU with forward hooks on the modules each op of
a traced pass corresponds to (cpp/engine/trace.h has the table), and with an attention function
of its own (registered through transformers' AttentionInterface, running the model's eager
attention) that records the query and key after RoPE, which no module returns. Each op's output
is compared by its relative RMS error, ||ours - ref|| / ||ref||, and the first op beyond the
tolerance, in the order the pass runs them, is where the two part.

Layouts: transformers gives [batch, positions, ...]; ours are [positions, width]. A model whose
converter permuted the rows of Q and K (llama.cpp's LLAMA architecture: interleaved RoPE)
computes q and k with each head's dimensions in (0, d/2, 1, d/2 + 1, ...) order; they are put
back in transformers' order before comparing.

torch and transformers are imported only here, when a comparison is asked for (the `test`
extra installs them).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import RequestError
from .trace import OpEvent

if TYPE_CHECKING:
    from .config import ModelConfig

# The tolerance of `--compare` on the relative RMS error. A float32 or float16 GGUF of the same
# weights stays far below it (float16 rounding gives about 3e-4 per product); a bug (a wrong
# layout, a missing scale, a planted change) gives errors of order 1. Quantized files carry
# their rounding: raise it for them.
DEFAULT_TOLERANCE = 1e-2

# Ops whose rows hold heads of q or k: permuted by the converter for interleaved RoPE.
_QK_OPS = {"q": "q", "k": "k", "q_norm": "q", "k_norm": "k", "rope_q": "q", "rope_k": "k"}


@dataclass(frozen=True)
class OpError:
    layer: int
    op: str
    shape: tuple[int, int]
    rel_rms: float  # ||ours - ref|| / ||ref||; nan when the reference has no such op
    max_abs: float  # max |ours - ref|
    ref_rms: float

    @property
    def name(self) -> str:
        return self.op if self.layer < 0 else f"L{self.layer:02d}.{self.op}"

    def record(self) -> dict[str, Any]:
        def f(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {
            "event": "compare",
            "layer": self.layer,
            "op": self.op,
            "shape": list(self.shape),
            "rel_rms": f(self.rel_rms),
            "max_abs": f(self.max_abs),
            "ref_rms": f(self.ref_rms),
        }


@dataclass
class Comparison:
    errors: list[OpError]
    tolerance: float

    @property
    def first_divergence(self) -> OpError | None:
        """The first op (in pass order) whose error is beyond the tolerance, or None."""
        for e in self.errors:
            if not math.isnan(e.rel_rms) and not e.rel_rms <= self.tolerance:
                return e
        return None

    @property
    def compared(self) -> int:
        return sum(not math.isnan(e.rel_rms) for e in self.errors)


def _import_torch() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as e:
        raise RequestError(
            f"--compare needs torch and transformers ({e.name} is not installed): "
            "pip install torch transformers, or metallic-llm[test]"
        ) from None
    return torch, transformers


def load_reference(source: str | Path) -> Any:
    """The transformers model of a directory (config.json + weights), or of a GGUF file
    (transformers dequantizes it), in float32 with the capturing attention."""
    torch, transformers = _import_torch()
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    # The attention function and the mask it expects (eager's: an additive float mask); a name
    # without a mask function of its own would run with none at all (no causal mask).
    transformers.AttentionInterface.register("metallic_trace", _capturing_attention)
    AttentionMaskInterface.register("metallic_trace", eager_mask)
    path = Path(source)
    kwargs: dict[str, Any] = {"dtype": torch.float32, "attn_implementation": "metallic_trace"}
    try:
        if path.is_file() and path.suffix == ".gguf":
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, **kwargs
            )
        elif path.is_dir():
            model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        else:
            raise RequestError(
                f"--compare {source}: not a directory with a transformers model nor a .gguf file"
            )
    except (OSError, ValueError, KeyError) as e:
        raise RequestError(f"--compare {source}: transformers cannot load it: {e}") from None
    return model.eval()


# The tensors the capturing attention records, by (layer, op); set while reference_outputs runs.
_captured: dict[tuple[int, str], Any] | None = None


def _capturing_attention(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any
) -> tuple[Any, Any]:
    """The model's own eager attention, recording its query and key (after RoPE)."""
    modeling = sys.modules[type(module).__module__]
    attend = getattr(modeling, "eager_attention_forward", None)
    if attend is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward as attend
    out, weights = attend(module, query, key, value, attention_mask, **kwargs)
    if _captured is not None:
        layer = int(module.layer_idx)
        # [batch, heads, positions, head_dim] -> [positions, heads * head_dim]
        _captured[(layer, "rope_q")] = query[0].transpose(0, 1).reshape(query.shape[2], -1)
        _captured[(layer, "rope_k")] = key[0].transpose(0, 1).reshape(key.shape[2], -1)
        if weights is not None:
            _captured[(layer, "attn_weights")] = weights[0]
    return out, weights


def reference_outputs(model: Any, ids: Sequence[int]) -> dict[tuple[int, str], np.ndarray]:
    """Every op's output for the prompt, by (layer, op), as float32 [positions, width]."""
    global _captured
    torch, _ = _import_torch()
    out: dict[tuple[int, str], Any] = {}
    hooks = []

    def first(x: Any) -> Any:
        return x[0] if isinstance(x, (tuple, list)) else x

    def after(module: Any, key: tuple[int, str]) -> None:
        hooks.append(module.register_forward_hook(lambda m, i, o: out.__setitem__(key, first(o))))

    def before(module: Any, key: tuple[int, str]) -> None:
        hooks.append(module.register_forward_pre_hook(lambda m, i: out.__setitem__(key, i[0])))

    base = model.model
    after(base.embed_tokens, (-1, "embed"))
    for layer, block in enumerate(base.layers):
        attn, mlp = block.self_attn, block.mlp
        after(block.input_layernorm, (layer, "attn_norm"))
        for op, mod in (("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj)):
            after(mod, (layer, op))
        if hasattr(attn, "q_norm"):
            for op, mod in (("q_norm", attn.q_norm), ("k_norm", attn.k_norm)):
                before(mod, (layer, op + "_in"))
                after(mod, (layer, op))
        before(attn.o_proj, (layer, "attention"))
        after(attn.o_proj, (layer, "attn_output"))
        if hasattr(block, "pre_feedforward_layernorm"):  # Gemma's sandwich norms
            after(block.post_attention_layernorm, (layer, "post_attn_norm"))
            ffn_norm = block.pre_feedforward_layernorm
            after(block.post_feedforward_layernorm, (layer, "post_ffn_norm"))
        else:
            ffn_norm = block.post_attention_layernorm
        before(ffn_norm, (layer, "residual_attn"))
        after(ffn_norm, (layer, "ffn_norm"))
        after(mlp.gate_proj, (layer, "ffn_gate"))
        after(mlp.up_proj, (layer, "ffn_up"))
        before(mlp.down_proj, (layer, "glu"))
        after(mlp.down_proj, (layer, "ffn_down"))
        after(block, (layer, "residual_ffn"))
    after(base.norm, (-1, "output_norm"))
    after(model.lm_head, (-1, "logits"))

    _captured = out
    try:
        with torch.no_grad():
            result = model(input_ids=torch.tensor([list(ids)], dtype=torch.long), use_cache=False)
    finally:
        _captured = None
        for h in hooks:
            h.remove()
    if getattr(model.config, "final_logit_softcapping", None):
        out[(-1, "logit_softcap")] = result.logits
    # q_norm and k_norm run per head, on [batch, positions, heads, head_dim] (Qwen3) or on
    # [batch, heads, positions, head_dim] (Gemma 3: after the transpose): which one, their input
    # tells (q_proj's output viewed by heads, or that transposed).
    for layer in range(len(base.layers)):
        for op, proj in (("q_norm", "q"), ("k_norm", "k")):
            if (layer, op) not in out:
                continue
            x, p = out.pop((layer, op + "_in")), out[(layer, proj)]
            if not torch.equal(x, p.view(x.shape)):  # the input was transposed to heads first
                out[(layer, op)] = out[(layer, op)].transpose(1, 2)
    arrays: dict[tuple[int, str], np.ndarray] = {}
    n = len(ids)
    for key, t in out.items():
        a = t.detach().float().numpy()
        if key[1] == "attn_weights":
            arrays[key] = a.copy()
            continue
        if a.shape[0] == 1 and a.ndim >= 2 and a.shape[1] == n:
            a = a[0]  # the batch of one
        arrays[key] = np.ascontiguousarray(a.reshape(n, -1), dtype=np.float32)
    return arrays


def to_reference_layout(e: OpEvent, data: np.ndarray, config: ModelConfig) -> np.ndarray:
    """Our output in transformers' layout: q/k heads un-permuted for interleaved RoPE."""
    if e.op in _QK_OPS and config.rope_style == "interleaved":
        heads = config.n_head if _QK_OPS[e.op] == "q" else config.n_head_kv
        rows = data.shape[0]
        return data.reshape(rows, heads, config.head_dim // 2, 2).swapaxes(2, 3).reshape(rows, -1)
    return data


def compare(
    events: Sequence[OpEvent],
    reference: dict[tuple[int, str], np.ndarray],
    config: ModelConfig,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Comparison:
    """Each event of the prompt's pass (step 0) against the reference's rows at its positions."""
    errors = []
    for e in events:
        if e.step != 0 or e.data is None:
            continue
        ref = reference.get((e.layer, e.op))
        shape = (int(e.data.shape[0]), int(e.data.shape[1]))
        if ref is None:
            errors.append(OpError(e.layer, e.op, shape, math.nan, math.nan, math.nan))
            continue
        want = ref[e.pos : e.pos + shape[0]].astype(np.float64)
        got = to_reference_layout(e, e.data, config).astype(np.float64)
        if want.shape != got.shape:
            raise RequestError(
                f"--compare: {e.name} is {list(got.shape)} here and {list(want.shape)} in "
                "transformers: the model directory does not hold this model"
            )
        diff = got - want
        ref_rms = float(np.sqrt(np.mean(want * want)))
        err = float(np.sqrt(np.mean(diff * diff)))
        rel = err / ref_rms if ref_rms > 0 else (0.0 if err == 0 else math.inf)
        if not np.isfinite(got).all():
            rel = math.inf
        errors.append(OpError(e.layer, e.op, shape, rel, float(np.abs(diff).max()), ref_rms))
    return Comparison(errors, tolerance)


def format_comparison(c: Comparison, pick: Any = None) -> list[str]:
    lines = [f"{'layer':>5} {'op':<15} {'shape':>11} {'rel rms err':>12} {'max|diff|':>10}  "]
    first = c.first_divergence
    for e in c.errors:
        if pick is not None and not pick(e):
            continue
        layer = "-" if e.layer < 0 else str(e.layer)
        shape = f"{e.shape[0]}x{e.shape[1]}"
        if math.isnan(e.rel_rms):
            lines.append(f"{layer:>5} {e.op:<15} {shape:>11} {'(no module)':>12}")
            continue
        mark = (
            "  <- first beyond tolerance"
            if e is first
            else ("  !" if e.rel_rms > c.tolerance else "")
        )
        lines.append(
            f"{layer:>5} {e.op:<15} {shape:>11} {e.rel_rms:>12.3e} {e.max_abs:>10.3e}{mark}"
        )
    return lines


def verdict(c: Comparison) -> str:
    first = c.first_divergence
    worst = max((e.rel_rms for e in c.errors if not math.isnan(e.rel_rms)), default=math.nan)
    if first is None:
        return (
            f"agree: {c.compared} ops within relative RMS error {c.tolerance:g} of transformers "
            f"(largest {worst:.3e})"
        )
    where = "outside the layers" if first.layer < 0 else f"layer {first.layer}"
    return (
        f"DIVERGE at {where}, op {first.op}: relative RMS error {first.rel_rms:.3e} > "
        f"{c.tolerance:g} (every op before it agrees)"
    )
