"""A minimal valid GGUF model written with NumPy and the gguf package alone: the raw material
for the bad-input and fuzz tests, which corrupt it in every way they can think of. (Numerical
tests use the transformers-made models of tests/oracle instead.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, quants

SHAPE = dict(n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=96, n_vocab=300, n_layer=2)


def write_small_gguf(
    path: Path,
    *,
    arch: str = "qwen2",
    qtype: GGMLQuantizationType = GGMLQuantizationType.F16,
    overrides: dict[str, tuple[int, ...]] | None = None,
    skip: tuple[str, ...] = (),
    n_ctx: int = 256,
    alignment: int | None = None,
) -> Path:
    """Writes the model; `overrides` replaces tensor shapes (numpy order), `skip` leaves
    tensors out. With `alignment` (general.alignment), an unused 4-byte tensor comes first, so
    that below 16 the model's tensors start at offsets that are not multiples of 16."""
    s = SHAPE
    d, hd, ff, V = s["n_embd"], s["head_dim"], s["n_ff"], s["n_vocab"]
    qd, kvd = s["n_head"] * hd, s["n_head_kv"] * hd
    rng = np.random.default_rng(1234)
    w = GGUFWriter(str(path), arch)
    w.add_block_count(s["n_layer"])
    w.add_context_length(n_ctx)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    if alignment is not None:
        w.add_custom_alignment(alignment)
        w.add_tensor("unused.pad", np.zeros(1, dtype=np.float32))

    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (V, d), "output_norm.weight": (d,)}
    for i in range(s["n_layer"]):
        p = f"blk.{i}."
        shapes |= {
            p + "attn_norm.weight": (d,),
            p + "ffn_norm.weight": (d,),
            p + "attn_q.weight": (qd, d),
            p + "attn_k.weight": (kvd, d),
            p + "attn_v.weight": (kvd, d),
            p + "attn_output.weight": (d, qd),
            p + "ffn_gate.weight": (ff, d),
            p + "ffn_up.weight": (ff, d),
            p + "ffn_down.weight": (d, ff),
        }
        if arch == "qwen2":
            shapes |= {
                p + "attn_q.bias": (qd,),
                p + "attn_k.bias": (kvd,),
                p + "attn_v.bias": (kvd,),
            }
    shapes |= overrides or {}
    for name, shape in shapes.items():
        if name in skip:
            continue
        a = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if len(shape) == 1 or qtype == GGMLQuantizationType.F32:
            w.add_tensor(name, a)
        else:
            q = quants.quantize(a, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
