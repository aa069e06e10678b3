"""`trace --html FILE`: one self-contained page of a traced run, drawn with plotly (the `viz`
extra): where the time goes per op, the activation statistics through the layers, and the
attention pattern of one layer's heads over the prompt.

The page embeds plotly.js once (about 4.7 MB) and needs nothing else: it opens offline.

The attention pattern is recomputed from the traced query and key after RoPE of the prompt's
pass (softmax(q k^T * scale) with the causal mask and the layer's sliding window, what the
attention op computes; the engine's cache holds the keys in float16 unless the model runs with
kv_dtype="f32", so the op's own weights differ from these by that rounding).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import RequestError
from .trace import ALL_OPS, Trace, piece

if TYPE_CHECKING:
    from .model import Model


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise RequestError(
            "--html needs plotly: pip install 'metallic-llm[viz]' (or pip install plotly)"
        ) from None
    return go


def attention_pattern(trace: Trace, model: Model, layer: int) -> np.ndarray:
    """[heads, n, n] attention weights of the prompt's pass at `layer`, from its traced
    rope_q and rope_k (kept by run_trace: see keep_data)."""
    cfg = model.config
    ev = {e.op: e for e in trace.events if e.step == 0 and e.layer == layer}
    q, k = ev.get("rope_q"), ev.get("rope_k")
    if q is None or k is None or q.data is None or k.data is None:
        raise RequestError(f"the trace holds no query and key of layer {layer}")
    n, hd = q.data.shape[0], cfg.head_dim
    qh = q.data.reshape(n, cfg.n_head, hd).astype(np.float64)
    kh = k.data.reshape(n, cfg.n_head_kv, hd).astype(np.float64)
    group = cfg.n_head // cfg.n_head_kv
    scale = cfg.attn_scale if cfg.attn_scale > 0 else 1.0 / math.sqrt(hd)
    window = cfg.sliding_window[layer] if cfg.sliding_window else 0
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    allowed = (j <= i) & ((window <= 0) | (j > i - window))
    out = np.empty((cfg.n_head, n, n))
    for h in range(cfg.n_head):
        s = qh[:, h] @ kh[:, h // group].T * scale
        s = np.where(allowed, s, -np.inf)
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        out[h] = e / e.sum(axis=1, keepdims=True)
    return out


def write_html(trace: Trace, path: str | Path, model: Model, *, attention_layer: int = 0) -> None:
    go = _plotly()
    cfg = model.config
    if not 0 <= attention_layer < cfg.n_layer:
        raise RequestError(
            f"--attention-layer {attention_layer} is not a layer of this model "
            f"(0..{cfg.n_layer - 1})"
        )
    figures = []

    # 1. Time per op: the prompt's pass, and the decode passes per token.
    steps = sorted({e.step for e in trace.events})
    order = [op for op in ALL_OPS if any(e.op == op for e in trace.events)]
    time_fig = go.Figure()
    for label, chosen in (
        ("prompt pass", [0]),
        (f"decode, per token ({len(steps) - 1} passes)", steps[1:]),
    ):
        if not chosen:
            continue
        ms = [
            1e3
            * sum(e.seconds for e in trace.events if e.op == op and e.step in chosen)
            / len(chosen)
            for op in order
        ]
        time_fig.add_bar(x=order, y=ms, name=label)
    time_fig.update_layout(
        title="Time per op (traced: every op waited for; all layers together)",
        yaxis_title="ms",
        barmode="group",
    )
    figures.append(time_fig)

    # 2. Activation statistics through the layers (the prompt's pass, last row's op stats).
    layer_ops = [op for op in order if any(e.op == op and e.layer >= 0 for e in trace.events)]
    rms = np.full((len(layer_ops), cfg.n_layer), np.nan)
    peak = np.full_like(rms, np.nan)
    for e in trace.events:
        if e.step == 0 and e.layer >= 0 and e.op in layer_ops:
            rms[layer_ops.index(e.op), e.layer] = e.stats.rms
            peak[layer_ops.index(e.op), e.layer] = e.stats.max_abs
    heat = go.Figure(
        go.Heatmap(
            z=np.log10(rms),
            x=list(range(cfg.n_layer)),
            y=layer_ops,
            colorscale="Viridis",
            colorbar={"title": "log10 RMS"},
            customdata=np.stack([rms, peak], axis=-1),
            hovertemplate="layer %{x}, %{y}<br>RMS %{customdata[0]:.3e}<br>"
            "max|x| %{customdata[1]:.3e}<extra></extra>",
        )
    )
    heat.update_layout(title="RMS of every op's output per layer (the prompt's pass)")
    figures.append(heat)
    stream = go.Figure()
    for op in ("residual_attn", "residual_ffn"):
        if op in layer_ops:
            r = layer_ops.index(op)
            stream.add_scatter(x=list(range(cfg.n_layer)), y=rms[r], name=f"{op} RMS")
            stream.add_scatter(x=list(range(cfg.n_layer)), y=peak[r], name=f"{op} max|x|")
    stream.update_layout(
        title="The residual stream through the layers", xaxis_title="layer", yaxis_type="log"
    )
    figures.append(stream)

    # 3. The attention pattern of one layer, a head at a time (the menu picks the head).
    pattern = attention_pattern(trace, model, attention_layer)
    labels = [f"{i}:{piece(model, t)!r}" for i, t in enumerate(trace.prompt)]
    att = go.Figure()
    for h in range(cfg.n_head):
        att.add_heatmap(
            z=pattern[h],
            x=labels,
            y=labels,
            colorscale="Blues",
            zmin=0,
            zmax=1,
            visible=h == 0,
            hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.4f}<extra></extra>",
        )
    att.update_layout(
        title=f"Attention of layer {attention_layer} over the prompt (query rows, key columns)",
        yaxis={"autorange": "reversed"},
        updatemenus=[
            {
                "buttons": [
                    {
                        "label": f"head {h}",
                        "method": "update",
                        "args": [{"visible": [i == h for i in range(cfg.n_head)]}],
                    }
                    for h in range(cfg.n_head)
                ]
            }
        ],
    )
    figures.append(att)

    parts = []
    for i, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=i == 0))
    has_tok = "tokenizer.ggml.model" in model.metadata
    generated = model.detokenize(trace.generated) if trace.generated and has_tok else ""
    title = f"metallic trace: {model.path.name}"
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body style='font-family:sans-serif'>\n"
        f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(cfg.arch)}, {cfg.n_layer} layers, "
        f"backend {html.escape(model.backend)}; prompt of {len(trace.prompt)} tokens, "
        f"generated {html.escape(repr(generated))}</p>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    Path(path).write_text(page, encoding="utf-8")
