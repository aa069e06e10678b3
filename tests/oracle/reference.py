"""Reference outputs from transformers for the tiny models of tiny_models.py.

Logits are float32 numpy arrays. For quantized files the reference is ``dequantized_copy``: the
same HF model with every weight replaced by exactly what the GGUF file holds, so a comparison
measures the engine's arithmetic and not the quantization error.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np

from .tiny_models import FTYPES, QType, decode, encode, hf_tensor_plans, unpermute_qk

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def reference_logits(model: PreTrainedModel, ids: list[int]) -> np.ndarray:
    """Logits for every position of the prompt: float32 [len(ids), vocab]."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].float().numpy().copy()


def greedy_continuation(
    model: PreTrainedModel, ids: list[int], n: int
) -> tuple[list[int], np.ndarray]:
    """Greedy decoding of n tokens with the KV cache, as an engine would run it.

    Returns (tokens, per_step_logits) where per_step_logits[i] (float32 [vocab]) are the logits
    tokens[i] was chosen from: row 0 is the prompt's last position, row i the logits after
    feeding tokens[i - 1].
    """
    import torch

    tokens: list[int] = []
    steps: list[np.ndarray] = []
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=True)
        for _ in range(n):
            logits = out.logits[0, -1].float().numpy().copy()
            steps.append(logits)
            tokens.append(int(np.argmax(logits)))
            out = model(
                input_ids=torch.tensor([[tokens[-1]]], dtype=torch.long),
                past_key_values=out.past_key_values,
                use_cache=True,
            )
    vocab = int(model.config.vocab_size)
    return tokens, np.stack(steps) if steps else np.zeros((0, vocab), np.float32)


def dequantized_copy(model: PreTrainedModel, ftype: str) -> PreTrainedModel:
    """A copy of ``model`` whose weights are what write_gguf(model, ..., ftype) stores.

    Every tensor goes through the writer's own plan (storage type, F16 fallback, Q/K row
    permutation, Gemma's norm + 1), is encoded with gguf.quants exactly as written, decoded
    back, and un-permuted into HF's layout. The file's tied token_embd is shared by lm_head in
    the copy too, as llama.cpp shares it. tests/test_oracle_writer.py checks this equals
    decoding the file.
    """
    import torch

    if ftype not in FTYPES:
        raise ValueError(f"ftype must be one of {sorted(FTYPES)}, got {ftype!r}")
    clone = copy.deepcopy(model)  # deepcopy keeps lm_head tied to embed_tokens
    with torch.no_grad():
        for plan in hf_tensor_plans(model, ftype):
            assert plan.source is not None
            if plan.qtype == QType.F32:
                continue  # stored bit-exactly
            values = decode(encode(plan.load(), plan.qtype), plan.qtype, plan.shape)
            if plan.shift:  # Gemma's norms (F32 in practice, so never reached)
                values = values - np.float32(plan.shift)
            if plan.permuted_heads is not None:
                values = unpermute_qk(values, plan.permuted_heads)
            clone.get_parameter(plan.source).copy_(torch.from_numpy(np.ascontiguousarray(values)))
    return clone.eval()
