"""Tests of the numerical oracle itself (tests/oracle): that its GGUF files are what llama.cpp's
converter writes, and that they mean what transformers computes.

Three independent checks guard the writer:
- convert_hf_to_gguf.py from the llama-cpp-python sdist converts the same HF checkpoints, and
  every tensor (name, type, shape, bytes) and metadata key of its files must equal ours;
- llama.cpp (llama-cpp-python) runs our F32 files and must reproduce transformers' logits,
  greedy tokens and tokenization;
- the file's decoded tensors must equal reference.dequantized_copy, the reference the engine's
  quantized outputs are compared with.
The converter's files are cached (see oracle/converter.py); a cold run downloads the sdist once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QType
from gguf import GGUFReader, TokenType

from metallic import llama_peer
from oracle import tiny_models as tm
from oracle.converter import compare_gguf, converted_ggufs, gguf_summary
from oracle.reference import dequantized_copy, greedy_continuation, reference_logits

VARIANTS = sorted(tm.VARIANTS)
VARIANT_IDS = [f"{arch}-{variant}" for arch, variant in VARIANTS]
FTYPES = list(tm.FTYPES)
TEXT = "Hello world, the answer is 42!\nThe quick brown fox."


def prompt_ids(arch: str, variant: str) -> list[int]:
    vocab = tm.tiny_vocab(arch, tm.VARIANTS[(arch, variant)].vocab)
    return list(tm.hf_tokenizer(vocab)(TEXT)["input_ids"])


def rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


# --------------------------------------------------------------------------------------------
# The writer on its own
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "variant"), VARIANTS, ids=VARIANT_IDS)
def test_vocab_is_complete_and_consistent(arch: str, variant: str) -> None:
    n_vocab = tm.VARIANTS[(arch, variant)].vocab
    vocab = tm.tiny_vocab(arch, n_vocab)
    assert len(vocab.tokens) == len(vocab.token_types) == n_vocab
    assert len(set(vocab.tokens)) == n_vocab
    enc = tm.bytes_to_unicode()
    assert vocab.tokens[:256] == tuple(enc[b] for b in range(256))
    assert vocab.merges, "no merges derived"
    for merge in vocab.merges:
        left, right = merge.split(" ")
        assert {left, right, left + right} <= set(vocab.tokens), merge
    fillers = vocab.tokens[vocab.n_base + len(vocab.style.controls) :]
    assert fillers, "no unused ids"
    for i, (token, ttype) in enumerate(zip(vocab.tokens, vocab.token_types, strict=True)):
        if token in vocab.style.controls:
            assert ttype == TokenType.CONTROL
        elif token in fillers:
            if vocab.style.filler_format is None:
                assert ttype == TokenType.UNUSED and token == f"[PAD{i}]"
            else:
                n = fillers.index(token)
                assert ttype == TokenType.CONTROL and token == vocab.style.filler_format.format(n)
        else:
            assert ttype == TokenType.NORMAL
    assert vocab.token_types[vocab.bos_id] == vocab.token_types[vocab.eos_id] == TokenType.CONTROL

    hf = tm.hf_tokenizer(vocab)
    real = [t for t, ty in zip(vocab.tokens, vocab.token_types, strict=True) if ty != 5]
    assert hf.convert_tokens_to_ids(real) == [vocab.id_of(t) for t in real]
    ids = hf(TEXT, add_special_tokens=False)["input_ids"]
    assert any(i >= 256 for i in ids), "the prompt uses no merged token"
    assert hf.decode(ids) == TEXT


def expected_qtype(name: str, ne: tuple[int, ...], ftype: str) -> QType:
    """convert_hf_to_gguf's rule, restated independently of tiny_models.stored_qtype."""
    if len(ne) == 1 or name.endswith("_norm.weight"):
        return QType.F32
    main = {"F32": QType.F32, "F16": QType.F16, "BF16": QType.BF16, "Q8_0": QType.Q8_0}[ftype]
    if main == QType.Q8_0 and ne[0] % 32 != 0:
        return QType.F16
    return main


@pytest.mark.parametrize("ftype", FTYPES)
@pytest.mark.parametrize(("arch", "variant"), VARIANTS, ids=VARIANT_IDS)
def test_tensor_names_types_and_shapes(arch: str, variant: str, ftype: str) -> None:
    path, model = tm.tiny_gguf(arch, ftype, variant)
    reader = GGUFReader(path)
    cfg = model.config
    layer = [g for h, g in tm.ARCHS[arch].layer_tensors if ".bias" not in h]
    if tm.ARCHS[arch].qkv_bias:
        layer += ["attn_q.bias", "attn_k.bias", "attn_v.bias"]
    expected = {"token_embd.weight", "output_norm.weight"}
    expected |= {f"blk.{i}.{s}" for i in range(cfg.num_hidden_layers) for s in layer}
    if not cfg.tie_word_embeddings:
        expected.add("output.weight")
    assert {t.name for t in reader.tensors} == expected

    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    shapes = {  # GGUF ne order: innermost (row length) first
        "token_embd.weight": (cfg.hidden_size, cfg.vocab_size),
        "output.weight": (cfg.hidden_size, cfg.vocab_size),
        "blk.0.attn_q.weight": (cfg.hidden_size, cfg.num_attention_heads * hd),
        "blk.0.attn_k.weight": (cfg.hidden_size, cfg.num_key_value_heads * hd),
        "blk.0.attn_output.weight": (cfg.num_attention_heads * hd, cfg.hidden_size),
        "blk.0.attn_q_norm.weight": (hd,),
        "blk.0.attn_k_norm.weight": (hd,),
        "blk.0.ffn_down.weight": (cfg.intermediate_size, cfg.hidden_size),
    }
    for t in reader.tensors:
        ne = tuple(int(n) for n in t.shape)
        assert t.tensor_type == expected_qtype(t.name, ne, ftype), t.name
        if t.name in shapes:
            assert ne == shapes[t.name], t.name
    assert reader.fields["general.file_type"].contents() == tm.FTYPES[ftype]


def test_variants_cover_q8_0_fallback() -> None:
    seen: set[QType] = set()
    for arch, variant in VARIANTS:
        path, _ = tm.tiny_gguf(arch, "Q8_0", variant)
        seen |= {QType(t.tensor_type) for t in GGUFReader(path).tensors if len(t.shape) == 2}
    assert {QType.Q8_0, QType.F16} <= seen


TOLERANCE = {"F32": 0.0, "F16": 1e-3, "BF16": 8e-3, "Q8_0": 1e-2}


@pytest.mark.parametrize("ftype", FTYPES)
@pytest.mark.parametrize(("arch", "variant"), VARIANTS, ids=VARIANT_IDS)
def test_file_decodes_to_dequantized_copy(arch: str, variant: str, ftype: str) -> None:
    path, model = tm.tiny_gguf(arch, ftype, variant)
    stored = tm.read_gguf_values(path)
    deq = dequantized_copy(model, ftype)
    cfg = model.config
    spec = tm.ARCHS[arch]
    for hf_name, original in model.named_parameters():
        name = tm.gguf_tensor_name(arch, hf_name)
        _, values = stored[name]
        if spec.permute_qk and ".q_proj." in hf_name:
            values = tm.unpermute_qk(values, cfg.num_attention_heads)
        elif spec.permute_qk and ".k_proj." in hf_name:
            values = tm.unpermute_qk(values, cfg.num_key_value_heads)
        deq_values = deq.get_parameter(hf_name).detach().numpy()
        want = original.detach().numpy()
        if arch == "gemma3" and hf_name.endswith("norm.weight"):
            # Gemma computes x * (1 + w) in float32; the file holds that very float32 1 + w.
            deq_values = deq_values + np.float32(1)
            want = want + np.float32(1)
        np.testing.assert_array_equal(values, deq_values, err_msg=name)
        assert rel_err(values, want) <= TOLERANCE[ftype], name
    if cfg.tie_word_embeddings:
        assert deq.lm_head.weight.data_ptr() == deq.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("arch", sorted(tm.ARCHS))
def test_random_plans_equal_the_hf_path(arch: str, tmp_path: Path) -> None:
    # benchmarks/models.py builds its model from random_tensor_plans without transformers.
    variant = next(v for a, v in VARIANTS if a == arch)
    spec = tm.VARIANTS[(arch, variant)]
    path, model = tm.tiny_gguf(arch, "Q8_0", variant)
    shape = tm.shape_from_config(model.config)
    assert tm.hf_parameter_shapes(shape) == [
        (n, tuple(p.shape)) for n, p in model.named_parameters()
    ]
    plans = tm.random_tensor_plans(shape, "Q8_0", seed=spec.seed, std=0.1)
    other = tm.write_tensors(tmp_path / "r.gguf", tm.gguf_metadata(model, "Q8_0"), plans)
    assert gguf_summary(other)[1] == gguf_summary(path)[1]


def test_tiny_gguf_is_cached() -> None:
    a, model = tm.tiny_gguf("qwen2", "F16", "gqa2-untied")
    b, same = tm.tiny_gguf("qwen2", "F16", "gqa2-untied")
    c, _ = tm.tiny_gguf("qwen2", "Q8_0", "gqa2-untied")
    assert a == b and same is model and a != c
    assert a.parent == tm.oracle_cache_dir()
    with pytest.raises(KeyError, match="known"):
        tm.tiny_gguf("qwen2", "F16", "no-such-variant")


@pytest.mark.parametrize(("arch", "variant"), [("llama", "gqa2-untied"), ("gemma3", "swa-hd32")])
def test_greedy_continuation_matches_full_recompute(arch: str, variant: str) -> None:
    # gemma3: transformers' sliding-window KV cache against the full-prompt mask.
    _, model = tm.tiny_gguf(arch, "F32", variant)
    ids = prompt_ids(arch, variant)
    tokens, steps = greedy_continuation(model, ids, 6)
    assert steps.shape == (6, model.config.vocab_size) and steps.dtype == np.float32
    full = reference_logits(model, ids + tokens[:-1])
    np.testing.assert_allclose(steps, full[len(ids) - 1 :], atol=1e-4, rtol=0)
    assert tokens == [int(i) for i in np.argmax(steps, axis=1)]


# --------------------------------------------------------------------------------------------
# Gemma 3 and Qwen 3 conventions, restated
# --------------------------------------------------------------------------------------------


def test_qwen3_file_conventions() -> None:
    path, model = tm.tiny_gguf("qwen3", "F32", "gqa2-hd24")
    reader = GGUFReader(path)
    cfg = model.config
    assert cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["qwen3.attention.key_length"] == fields["qwen3.attention.value_length"] == 24
    assert "qwen3.attention.sliding_window" not in fields
    values = tm.read_gguf_values(path)
    # NeoX RoPE: Q/K rows are stored in HF's order (no llama permutation).
    q = model.model.layers[1].self_attn.q_proj.weight.numpy()
    np.testing.assert_array_equal(values["blk.1.attn_q.weight"][1], q)
    q_norm = model.model.layers[1].self_attn.q_norm.weight.numpy()
    np.testing.assert_array_equal(values["blk.1.attn_q_norm.weight"][1], q_norm)


def test_gemma3_file_conventions() -> None:
    path, model = tm.tiny_gguf("gemma3", "F32", "swa-hd32")
    cfg = model.config
    fields = {k: f.contents() for k, f in GGUFReader(path).fields.items()}
    assert fields["gemma3.attention.sliding_window"] == cfg.sliding_window == 8
    assert fields["gemma3.rope.freq_base"] == 1e6
    assert fields["gemma3.rope.freq_base_swa"] == 1e4
    assert fields["gemma3.attention.key_length"] == 32 != cfg.hidden_size // 4
    # llama.cpp assumes every 6th layer is global; the converter writes no pattern key.
    assert "gemma3.attention.sliding_window_pattern" not in fields
    assert [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"] == [5]
    # Queries are scaled by 1/sqrt(head_dim) in llama.cpp (no key for query_pre_attn_scalar).
    assert cfg.query_pre_attn_scalar == cfg.head_dim
    assert "gemma3.final_logit_softcapping" not in fields and cfg.final_logit_softcapping is None
    assert "output.weight" not in fields and cfg.tie_word_embeddings
    # Every RMSNorm weight is stored as 1 + w (HF's weights are small, the file's near 1).
    values = tm.read_gguf_values(path)
    layer = model.model.layers[5]
    for hf, name in [
        (layer.input_layernorm, "blk.5.attn_norm.weight"),
        (layer.self_attn.q_norm, "blk.5.attn_q_norm.weight"),
        (layer.self_attn.k_norm, "blk.5.attn_k_norm.weight"),
        (layer.post_attention_layernorm, "blk.5.post_attention_norm.weight"),
        (layer.pre_feedforward_layernorm, "blk.5.ffn_norm.weight"),
        (layer.post_feedforward_layernorm, "blk.5.post_ffw_norm.weight"),
        (model.model.norm, "output_norm.weight"),
    ]:
        w = hf.weight.numpy()
        assert abs(float(w.mean())) < 0.1, name
        np.testing.assert_array_equal(values[name][1], w + np.float32(1), err_msg=name)


def test_gemma3_prompt_exercises_the_sliding_window() -> None:
    _, model = tm.tiny_gguf("gemma3", "F32", "swa-hd32")
    ids = prompt_ids("gemma3", "swa-hd32")
    window = model.config.sliding_window
    assert len(ids) > 3 * window
    v = tm.VARIANTS[("gemma3", "swa-hd32")]
    wide = tm.make_tiny_model(
        "gemma3",
        seed=v.seed,
        tied=v.tied,
        hidden=v.hidden,
        n_heads=v.n_heads,
        n_kv_heads=v.n_kv_heads,
        n_layers=v.n_layers,
        ffn=v.ffn,
        vocab=v.vocab,
        head_dim=v.head_dim,
        sliding_window=len(ids),
    )
    a, b = reference_logits(model, ids), reference_logits(wide, ids)
    np.testing.assert_array_equal(a[:window], b[:window])  # same weights, window not reached
    assert rel_err(a[window:], b[window:]) > 1e-2


def test_gemma3_rejects_configs_gguf_cannot_describe() -> None:
    from transformers import Gemma3TextConfig

    def config(**kw):  # noqa: ANN202
        args = dict(num_hidden_layers=7, head_dim=32, query_pre_attn_scalar=32, sliding_window=8)
        return Gemma3TextConfig(**(args | kw))

    assert tm.shape_from_config(config()).sliding_window == 8
    with pytest.raises(ValueError, match="query_pre_attn_scalar"):
        tm.shape_from_config(config(query_pre_attn_scalar=256))
    with pytest.raises(ValueError, match="layer_types"):
        tm.shape_from_config(config(layer_types=["sliding_attention"] * 7))


# --------------------------------------------------------------------------------------------
# Cross-check with llama.cpp's converter
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converter_files() -> dict[tuple[str, str, str], Path]:
    return converted_ggufs([(a, v, f) for a, v in VARIANTS for f in FTYPES])


@pytest.mark.parametrize(("arch", "variant"), VARIANTS, ids=VARIANT_IDS)
def test_matches_llama_cpp_converter(arch: str, variant: str, converter_files) -> None:
    # Compared (oracle/converter.py compare_gguf): every tensor's name, type, shape and bytes,
    # and every metadata key with its GGUF types and value (model shape, head dims, rope bases,
    # sliding window, norm eps, file type, tokenizer tokens/types/merges/special ids/flags/chat
    # template) except general.name and general.size_label. The only patch to the converter is
    # the pre-tokenizer name lookup (see oracle/converter.py), for every architecture: gemma3's
    # vocabulary goes through the converter's BPE path too. The bytes cover Gemma's norm + 1
    # and its token_embd cut to the tokenizer's size.
    failures = {}
    for ftype in FTYPES:
        ours, _ = tm.tiny_gguf(arch, ftype, variant)
        diffs = compare_gguf(ours, converter_files[(arch, variant, ftype)])
        if diffs:
            failures[ftype] = diffs[:8]
    assert not failures


# --------------------------------------------------------------------------------------------
# llama.cpp runs the files
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed: no llama.cpp numeric check"
    )


def load_llama(llama_cpp, path):
    # F32 KV cache: llama.cpp's default F16 cache alone costs ~1e-3 of relative error.
    return llama_peer.load(
        llama_cpp,
        model_path=str(path),
        n_ctx=64,
        logits_all=True,
        verbose=False,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        n_threads=2,
    )


def with_llama_cpp_gelu(model):  # noqa: ANN001, ANN201
    """A copy of a Gemma model whose GELU is llama.cpp's CPU one: a table indexed by the input
    rounded to float16 that holds float16 outputs (ggml-cpu GGML_GELU_FP16). On the gemma3
    variant it accounts for about half of llama.cpp's error against transformers (7e-4 ->
    3e-4); the rest is the same rounding applied to slightly different matmul outputs."""
    import copy

    import torch

    class Fp16TableGelu(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.nn.functional.gelu(x.half().float(), approximate="tanh")
            return y.half().float()

    clone = copy.deepcopy(model)
    for layer in clone.model.layers:
        layer.mlp.act_fn = Fp16TableGelu()
    return clone


@pytest.mark.parametrize(("arch", "variant"), VARIANTS, ids=VARIANT_IDS)
def test_llama_cpp_reproduces_transformers(arch: str, variant: str, llama_cpp) -> None:
    path, model = tm.tiny_gguf(arch, "F32", variant)
    ids = prompt_ids(arch, variant)
    llm = load_llama(llama_cpp, path)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)], dtype=np.float32)
    # Measured: qwen2, llama, qwen3 about 1e-6; gemma3 7e-4 (3e-4 against with_llama_cpp_gelu).
    reference = with_llama_cpp_gelu(model) if arch == "gemma3" else model
    want = reference_logits(reference, ids)
    assert rel_err(got, want) < 1e-3

    # Greedy decoding through llama.cpp's KV cache gives transformers' tokens.
    tokens, _ = greedy_continuation(model, ids, 8)
    llm.reset()
    llm.eval(ids)
    produced = []
    for _ in range(8):
        produced.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([produced[-1]])
    assert produced == tokens


# llama.cpp's CPU matmuls also round the activations to the weights' type (F16, BF16, Q8_0),
# which dominates these errors; measured 8e-4, 8e-3 and 2e-2.
QUANTIZED_LOGITS_TOLERANCE = {"F16": 3e-3, "BF16": 2e-2, "Q8_0": 4e-2}


@pytest.mark.parametrize("ftype", list(QUANTIZED_LOGITS_TOLERANCE))
def test_llama_cpp_quantized_matches_dequantized_copy(ftype: str, llama_cpp) -> None:
    # Looser than F32 (see above), but llama.cpp must be closer to the dequantized copy than
    # to the original weights: the copy is what the file holds.
    arch, variant = "qwen2", "gqa2-untied"
    path, model = tm.tiny_gguf(arch, ftype, variant)
    ids = prompt_ids(arch, variant)
    llm = load_llama(llama_cpp, path)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)], dtype=np.float32)
    err_deq = rel_err(got, reference_logits(dequantized_copy(model, ftype), ids))
    err_orig = rel_err(got, reference_logits(model, ids))
    assert err_deq < QUANTIZED_LOGITS_TOLERANCE[ftype]
    assert err_deq < err_orig


@pytest.mark.parametrize(("arch", "variant"), VARIANTS, ids=VARIANT_IDS)
def test_llama_cpp_tokenizes_like_transformers(arch: str, variant: str, llama_cpp) -> None:
    path, _ = tm.tiny_gguf(arch, "F32", variant)
    vocab = tm.tiny_vocab(arch, tm.VARIANTS[(arch, variant)].vocab)
    hf = tm.hf_tokenizer(vocab)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, vocab_only=True, verbose=False)
    chat = hf.apply_chat_template(
        [{"role": "user", "content": "Hello there"}], tokenize=False, add_generation_prompt=True
    )
    for text in (TEXT, "  the  1234 tests'll run\n\n\tok", chat):
        want = hf(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == want, text
    assert llm.tokenize(b"x", add_bos=True)[0] == (vocab.bos_id if vocab.style.add_bos else 120)
    assert llm.token_eos() == vocab.eos_id
