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
    for token, ttype in zip(vocab.tokens, vocab.token_types, strict=True):
        if token in vocab.style.controls:
            assert ttype == TokenType.CONTROL
        elif token.startswith("[PAD"):
            assert ttype == TokenType.UNUSED and token == f"[PAD{vocab.tokens.index(token)}]"
        else:
            assert ttype == TokenType.NORMAL
    assert TokenType.UNUSED in vocab.token_types
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

    hd = cfg.hidden_size // cfg.num_attention_heads
    shapes = {  # GGUF ne order: innermost (row length) first
        "token_embd.weight": (cfg.hidden_size, cfg.vocab_size),
        "output.weight": (cfg.hidden_size, cfg.vocab_size),
        "blk.0.attn_k.weight": (cfg.hidden_size, cfg.num_key_value_heads * hd),
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
    for hf_name, original in model.named_parameters():
        name = tm.gguf_tensor_name(arch, hf_name)
        _, values = stored[name]
        if arch == "llama" and ".q_proj." in hf_name:
            values = tm.unpermute_qk(values, cfg.num_attention_heads)
        elif arch == "llama" and ".k_proj." in hf_name:
            values = tm.unpermute_qk(values, cfg.num_key_value_heads)
        np.testing.assert_array_equal(
            values, deq.get_parameter(hf_name).detach().numpy(), err_msg=name
        )
        want = original.detach().numpy()
        assert rel_err(values, want) <= TOLERANCE[ftype], name
    if cfg.tie_word_embeddings:
        assert deq.lm_head.weight.data_ptr() == deq.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
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


def test_greedy_continuation_matches_full_recompute() -> None:
    _, model = tm.tiny_gguf("llama", "F32", "gqa2-untied")
    ids = prompt_ids("llama", "gqa2-untied")
    tokens, steps = greedy_continuation(model, ids, 6)
    assert steps.shape == (6, model.config.vocab_size) and steps.dtype == np.float32
    full = reference_logits(model, ids + tokens[:-1])
    np.testing.assert_allclose(steps, full[len(ids) - 1 :], atol=1e-4, rtol=0)
    assert tokens == [int(i) for i in np.argmax(steps, axis=1)]


# --------------------------------------------------------------------------------------------
# Cross-check with llama.cpp's converter
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converter_files() -> dict[tuple[str, str, str], Path]:
    return converted_ggufs([(a, v, f) for a, v in VARIANTS for f in FTYPES])


@pytest.mark.parametrize(("arch", "variant"), VARIANTS, ids=VARIANT_IDS)
def test_matches_llama_cpp_converter(arch: str, variant: str, converter_files) -> None:
    # Compared (oracle/converter.py compare_gguf): every tensor's name, type, shape and bytes,
    # and every metadata key with its GGUF types and value (model shape, rope, norm eps,
    # file type, tokenizer tokens/types/merges/special ids/flags/chat template) except
    # general.name and general.size_label. The only patch to the converter is the
    # pre-tokenizer name lookup (see oracle/converter.py).
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
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=64,
        logits_all=True,
        verbose=False,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        n_threads=2,
    )


@pytest.mark.parametrize(("arch", "variant"), VARIANTS, ids=VARIANT_IDS)
def test_llama_cpp_reproduces_transformers(arch: str, variant: str, llama_cpp) -> None:
    path, model = tm.tiny_gguf(arch, "F32", variant)
    ids = prompt_ids(arch, variant)
    llm = load_llama(llama_cpp, path)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)], dtype=np.float32)
    want = reference_logits(model, ids)
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
