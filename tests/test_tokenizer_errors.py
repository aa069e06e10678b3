"""Bad vocabularies and bad ids: a TokenizerError (a ValueError) naming the key or the id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from metallic.errors import GGUFError, MetallicError
from metallic.tokenizer import Tokenizer, TokenizerError
from metallic.tokenizer.bpe import BYTE_TO_CHAR


def bpe_metadata(**changes: Any) -> dict[str, Any]:
    """A small valid byte-level BPE vocabulary: 256 bytes, a few merges, two control tokens."""
    tokens = [*BYTE_TO_CHAR, "he", "ll", "hell", "hello", "<|endoftext|>", "<|im_end|>"]
    md: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.array([1] * 260 + [3, 3], dtype=np.int32),
        "tokenizer.ggml.merges": ["h e", "l l", "he ll", "hell o"],
        "tokenizer.ggml.bos_token_id": 260,
        "tokenizer.ggml.eos_token_id": 261,
    }
    md.update(changes)
    return {k: v for k, v in md.items() if v is not None}


def spm_metadata(**changes: Any) -> dict[str, Any]:
    tokens = [
        "<unk>",
        "<s>",
        "</s>",
        *(f"<0x{b:02X}>" for b in range(256)),
        "\u2581",
        "a",
        "b",
        "\u2581a",
        "ab",
    ]
    md: dict[str, Any] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.array(
            [0.0] * 259 + [-1.0, -2.0, -2.0, -0.5, -0.7], dtype=np.float32
        ),
        "tokenizer.ggml.token_type": np.array([2, 3, 3] + [6] * 256 + [1] * 5, dtype=np.int32),
    }
    md.update(changes)
    return {k: v for k, v in md.items() if v is not None}


def error_of(md: dict[str, Any]) -> str:
    with pytest.raises(TokenizerError) as e:
        Tokenizer.from_metadata(md)
    return str(e.value)


def test_the_small_vocabularies_work() -> None:
    tok = Tokenizer.from_metadata(bpe_metadata())
    assert tok.encode("hello") == [259]
    assert tok.encode("<|im_end|>", parse_special=True) == [261]
    assert tok.eog_ids == {260, 261}
    spm = Tokenizer.from_metadata(spm_metadata())
    assert spm.encode("ab a") == [1, 262, 261, 262]  # BOS, "▁a" (best score), "b", "▁a"
    assert spm.decode([1, 262, 261, 262]) == "ab a"


def test_error_type() -> None:
    assert issubclass(TokenizerError, ValueError)
    assert issubclass(TokenizerError, MetallicError)


def test_missing_tokens() -> None:
    assert "tokenizer.ggml.tokens" in error_of(bpe_metadata(**{"tokenizer.ggml.tokens": None}))
    assert "tokenizer.ggml.tokens" in error_of(spm_metadata(**{"tokenizer.ggml.tokens": []}))
    bad = spm_metadata(**{"tokenizer.ggml.tokens": np.arange(4)})
    assert "tokenizer.ggml.tokens" in error_of(bad)


def test_missing_merges() -> None:
    msg = error_of(bpe_metadata(**{"tokenizer.ggml.merges": None}))
    assert "tokenizer.ggml.merges" in msg
    assert "tokenizer.ggml.merges" in error_of(bpe_metadata(**{"tokenizer.ggml.merges": [1, 2]}))


@pytest.mark.parametrize("pre", ["no-such-pre", "whitespace", "Qwen2"])
def test_unknown_pre_tokenizer(pre: str) -> None:
    msg = error_of(bpe_metadata(**{"tokenizer.ggml.pre": pre}))
    assert f"'{pre}'" in msg and "tokenizer.ggml.pre" in msg


def test_missing_pre_means_default() -> None:
    tok = Tokenizer.from_metadata(bpe_metadata(**{"tokenizer.ggml.pre": None}))
    assert tok.pre == "" and tok.encode("hello") == [259]


@pytest.mark.parametrize("model", ["bert", "t5", "rwkv", "no_vocab", "GPT2"])
def test_unknown_tokenizer_model(model: str) -> None:
    msg = error_of(bpe_metadata(**{"tokenizer.ggml.model": model}))
    assert f"'{model}'" in msg and "tokenizer.ggml.model" in msg


def test_missing_tokenizer_model() -> None:
    assert "tokenizer.ggml.model" in error_of(bpe_metadata(**{"tokenizer.ggml.model": None}))


@pytest.mark.parametrize(
    "key", ["bos_token_id", "eos_token_id", "unknown_token_id", "eot_token_id", "eom_token_id"]
)
@pytest.mark.parametrize("value", [262, -1, 10**6])
def test_special_id_out_of_range(key: str, value: int) -> None:
    msg = error_of(bpe_metadata(**{f"tokenizer.ggml.{key}": value}))
    assert f"tokenizer.ggml.{key}" in msg and str(value) in msg


def test_optional_special_ids_out_of_range_are_ignored() -> None:
    # llama.cpp drops a bad padding or FIM id rather than refusing the model
    tok = Tokenizer.from_metadata(
        bpe_metadata(
            **{"tokenizer.ggml.padding_token_id": 99999, "tokenizer.ggml.fim_pad_token_id": -1}
        )
    )
    assert tok.eog_ids == {260, 261}


def test_short_token_types_and_scores() -> None:
    types = np.ones(10, dtype=np.int32)
    assert "tokenizer.ggml.token_type" in error_of(
        bpe_metadata(**{"tokenizer.ggml.token_type": types})
    )
    scores = np.zeros(3, dtype=np.float32)
    assert "tokenizer.ggml.scores" in error_of(spm_metadata(**{"tokenizer.ggml.scores": scores}))
    assert "tokenizer.ggml.scores" in error_of(
        spm_metadata(**{"tokenizer.ggml.scores": ["x"] * 264})
    )


def test_add_bos_without_a_bos_token() -> None:
    md = bpe_metadata(
        **{
            "tokenizer.ggml.pre": "chatglm-bpe",  # no default BOS
            "tokenizer.ggml.bos_token_id": None,
            "tokenizer.ggml.add_bos_token": True,
        }
    )
    assert "tokenizer.ggml.bos_token_id" in error_of(md)


@pytest.mark.parametrize("bad", [262, -1, 1 << 40])
def test_ids_out_of_range(bad: int) -> None:
    tok = Tokenizer.from_metadata(bpe_metadata())
    for call in (
        lambda: tok.decode([104, bad]),
        lambda: tok.token_to_piece(bad),
        lambda: tok.id_to_token(bad),
        lambda: tok.stream().push(bad),
        lambda: tok.decode(np.array([bad])),
    ):
        with pytest.raises(TokenizerError, match=f"token id {bad} out of range"):
            call()


def test_ids_that_are_not_integers() -> None:
    tok = Tokenizer.from_metadata(bpe_metadata())
    with pytest.raises(TokenizerError, match="not an integer"):
        tok.token_to_piece("x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tok.encode(b"bytes")  # type: ignore[arg-type]


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(GGUFError):
        Tokenizer.from_gguf(path)


def test_missing_byte_fallback_uses_unknown() -> None:
    md = spm_metadata()
    tokens = md["tokenizer.ggml.tokens"]
    tokens[3 + 0xE2] = "<0xE2-gone>"  # no byte token for 0xE2
    tok = Tokenizer.from_metadata(md)
    ids = tok.encode("\u2603", add_special=False)  # E2 98 83
    assert ids[1] == 0  # <unk> stands in for the byte (llama.cpp would throw)
    assert tok.decode(ids) == "\ufffd\ufffd"  # <unk> renders as nothing; 98 83 are invalid


def test_lone_surrogates_become_replacement_characters() -> None:
    tok = Tokenizer.from_metadata(bpe_metadata())
    assert tok.encode("a\udcffb") == tok.encode("a\ufffdb")
