"""The Tokenizer: text <-> token ids for a GGUF vocabulary, as llama.cpp tokenizes."""

from __future__ import annotations

import os
import re
from array import array
from collections.abc import Mapping, Sequence
from functools import cached_property
from itertools import pairwise
from typing import Any

from .bpe import BPE, DECODE_TABLE
from .errors import TokenizerError
from .special import SpecialMatcher
from .spm import SPACE, SPM
from .stream import StreamDecoder
from .vocab import BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED, Vocab, load_vocab

_SURROGATES = re.compile("[\ud800-\udfff]")


class Tokenizer:
    """Encodes and decodes text with the vocabulary in a GGUF file's metadata.

    Token ids match llama.cpp's ``llama_tokenize`` (``add_special`` / ``parse_special``) for
    SentencePiece ("llama") and BPE ("gpt2", "gemma4") vocabularies. Decoding renders control
    tokens as nothing unless ``special`` is set, and drops the space SentencePiece puts before
    the first word (``add_space_prefix``), on the first token or right after a leading BOS. It
    skips llama.cpp's optional "clean_spaces" pass (which turns "a ," into "a,"), so decoding
    gives back the text that was encoded.
    """

    def __init__(self, vocab: Vocab) -> None:
        self._vocab = vocab
        self._model: SPM | BPE = SPM(vocab) if vocab.is_spm else BPE(vocab)
        self._special = SpecialMatcher(vocab)
        self._pieces, self._pieces_special = _piece_tables(vocab)
        self._n = len(vocab.tokens)

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """From GGUF metadata as ``metallic.gguf_file.read_gguf`` returns it."""
        return cls(load_vocab(metadata))

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> Tokenizer:
        from ..gguf_file import read_gguf

        return cls.from_metadata(read_gguf(path).metadata)

    # --- properties -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._n

    @property
    def model(self) -> str:
        """tokenizer.ggml.model: "llama" (SentencePiece), "gpt2" or "gemma4" (BPE)."""
        return self._vocab.model

    @property
    def pre(self) -> str:
        """tokenizer.ggml.pre ("" when absent)."""
        return self._vocab.pre

    @property
    def bos_id(self) -> int | None:
        return self._vocab.ids.get("bos")

    @property
    def eos_id(self) -> int | None:
        return self._vocab.ids.get("eos")

    @property
    def unk_id(self) -> int | None:
        return self._vocab.ids.get("unk")

    @property
    def eog_ids(self) -> frozenset[int]:
        """Every id that ends generation (EOS, EOT, EOM, <|im_end|>, <end_of_turn>, ...)."""
        return self._vocab.eog_ids

    @property
    def add_bos(self) -> bool:
        return self._vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self._vocab.add_eos

    @property
    def add_space_prefix(self) -> bool:
        return self._vocab.add_space_prefix

    @cached_property
    def max_piece_bytes(self) -> int:
        """The most bytes of text one token stands for (the longest piece, special tokens'
        text included). Encoding n bytes of text gives at least n / max_piece_bytes tokens
        (fewer only when text is dropped: bytes without a token, whitespace that lstrip/rstrip
        tokens remove), so a text's length bounds its token count without tokenizing it."""
        longest = max((b - a for a, b in pairwise(self._pieces_special._offsets)), default=0)
        return max(longest, 1)

    def is_eog(self, token_id: int) -> bool:
        return token_id in self._vocab.eog_ids

    # --- encoding ---------------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of ``text``.

        ``add_special``: add BOS/EOS as the vocabulary asks (``add_bos`` / ``add_eos``).
        ``parse_special``: control tokens written in the text (``<|im_end|>``) become their
        ids; otherwise they are tokenized as plain text. User-defined tokens are always
        recognised, as in llama.cpp.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, not {type(text).__name__}")
        text = _valid_unicode(text)
        v = self._vocab
        out: list[int] = []
        if add_special and v.add_bos:
            out.append(v.ids["bos"])  # type: ignore[arg-type]
        parts = self._special.split(text, parse_special)
        model = self._model
        if isinstance(model, SPM):
            prefix = v.add_space_prefix
            after_special = True  # SentencePiece prefixes a space to text after a token
            for part in parts:
                if isinstance(part, str):
                    if prefix and after_special:
                        part = " " + part
                    out += model.encode(part.replace(" ", SPACE))
                    after_special = False
                else:
                    out.append(part)
                    after_special = True
        else:
            for part in parts:
                if isinstance(part, str):
                    out += model.encode(part)
                else:
                    out.append(part)
        if add_special and v.add_eos:
            out.append(v.ids["eos"])  # type: ignore[arg-type]
        return out

    # --- decoding ---------------------------------------------------------------------------

    def decode(self, ids: Sequence[int], special: bool = False) -> str:
        """Text of ``ids``. ``special``: render control tokens (``<|im_end|>``) as their text;
        otherwise they render as nothing. Invalid UTF-8 becomes U+FFFD."""
        ids = _as_list(ids)
        if not ids:
            return ""
        self._check_ids(ids)
        pieces = self._pieces_special if special else self._pieces
        data = pieces.join(ids)
        if self._vocab.add_space_prefix:
            # drop the space SentencePiece put before the first word: on the first token, or
            # on the second when the first is BOS (llama.cpp keeps it there; HF and
            # llama-cpp-python drop it, and so encode -> decode gives the text back)
            first = 1 if ids[0] == self._vocab.ids.get("bos") and len(ids) > 1 else 0
            if pieces[ids[first]][:1] == b" ":
                at = len(pieces[ids[0]]) if first else 0
                data = data[:at] + data[at + 1 :]
        return data.decode("utf-8", "replace")

    def token_to_piece(self, token_id: int, special: bool = False) -> bytes:
        """The bytes one token stands for (maybe a partial UTF-8 character)."""
        pieces = self._pieces_special if special else self._pieces
        return pieces[self._check_id(token_id)]

    def id_to_token(self, token_id: int) -> str:
        """The token's text as stored in the vocabulary (U+2581 for spaces in SentencePiece,
        GPT-2 byte alphabet in byte-level BPE)."""
        return self._vocab.tokens[self._check_id(token_id)]

    def token_to_id(self, text: str) -> int | None:
        return self._vocab.token_to_id.get(text)

    def stream(self, special: bool = False) -> StreamDecoder:
        """An incremental decoder whose output, concatenated, equals ``decode``."""
        return StreamDecoder(self, special)

    # --- internals --------------------------------------------------------------------------

    def _piece_table(self, special: bool) -> PieceTable:
        return self._pieces_special if special else self._pieces

    def _check_id(self, token_id: int) -> int:
        try:
            i = int(token_id)
        except (TypeError, ValueError) as e:
            raise TokenizerError(f"token id {token_id!r} is not an integer") from e
        if not 0 <= i < self._n:
            raise TokenizerError(
                f"token id {token_id} out of range (vocabulary of {self._n} tokens)"
            )
        return i

    def _check_ids(self, ids: list[int]) -> None:
        if min(ids) < 0 or max(ids) >= self._n:
            bad = next(i for i in ids if not 0 <= i < self._n)
            raise TokenizerError(f"token id {bad} out of range (vocabulary of {self._n} tokens)")

    def __repr__(self) -> str:
        return (
            f"Tokenizer(model={self.model!r}, pre={self.pre!r}, vocab_size={self._n}, "
            f"bos={self.bos_id}, eos={self.eos_id}, eog={sorted(self.eog_ids)})"
        )


def _as_list(ids: Sequence[int]) -> list[int]:
    tolist = getattr(ids, "tolist", None)  # NumPy arrays
    if tolist is not None:
        out = tolist()
        return out if isinstance(out, list) else [out]
    return ids if isinstance(ids, list) else list(ids)


def _valid_unicode(text: str) -> str:
    """Lone surrogates (from bytes decoded with surrogateescape) cannot be UTF-8 encoded;
    they become U+FFFD, as llama.cpp does with invalid UTF-8."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _SURROGATES.sub("\ufffd", text)


class PieceTable:
    """The bytes of every token id: all of them in one ``bytes`` object, and where each one
    starts in ``offsets`` (token i is ``data[offsets[i] : offsets[i + 1]]``).

    A list of 262k small ``bytes`` objects costs about 45 bytes per token besides the bytes
    themselves, and a tokenizer keeps two of them (without and with special tokens) for as
    long as its model lives; this costs 4 (8 past 4 GiB). Ids must be valid: the Tokenizer
    checks them."""

    __slots__ = ("_data", "_offsets")

    def __init__(self, data: bytes, offsets: array[int]) -> None:
        self._data = data
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, token_id: int) -> bytes:
        return self._data[self._offsets[token_id] : self._offsets[token_id + 1]]

    def join(self, ids: list[int]) -> bytes:
        """The bytes of ``ids``, concatenated."""
        data, offsets = self._data, self._offsets
        return b"".join([data[offsets[i] : offsets[i + 1]] for i in ids])


def _piece_tables(vocab: Vocab) -> tuple[PieceTable, PieceTable]:
    """Bytes of every token, without and with special tokens rendered (llama.cpp's
    token_to_piece). Built once: decoding is then one join."""
    attrs = vocab.attrs.tolist()
    spm_like = vocab.is_spm or (vocab.spec is not None and not vocab.spec.byte_encode)
    plain, special = bytearray(), bytearray()
    # A piece takes at most 4 bytes per character of its token (UTF-8), so this bound tells
    # up front whether 32-bit offsets suffice (they do for any real vocabulary); converting
    # afterwards would leave megabytes of freed memory the allocator keeps.
    code = "I" if 4 * sum(map(len, vocab.tokens)) < 1 << 32 else "Q"
    plain_offsets, special_offsets = array(code, [0]), array(code, [0])
    for text, attr in zip(vocab.tokens, attrs, strict=True):
        if attr & (CONTROL | UNKNOWN | USER_DEFINED):
            piece = text.encode("utf-8", "surrogateescape")
            # control and unknown tokens render as nothing unless special tokens are asked for
            # (they are all in vocab.special_ids); user-defined ones always render
            special += piece
            if not attr & (CONTROL | UNKNOWN):
                plain += piece
        else:
            if attr & NORMAL:
                if spm_like:
                    piece = text.replace(SPACE, " ").encode("utf-8", "surrogateescape")
                else:
                    piece = _byte_level_bytes(text)
            elif attr & BYTE:
                piece = bytes([_byte_value(text)])
            else:  # unused / undefined tokens render as nothing
                piece = b""
            plain += piece
            special += piece
        plain_offsets.append(len(plain))
        special_offsets.append(len(special))
    plain_table = PieceTable(bytes(plain), plain_offsets)
    del plain  # freed before the second copy is made: a lower peak while building
    return plain_table, PieceTable(bytes(special), special_offsets)


def _byte_level_bytes(text: str) -> bytes:
    try:
        return text.translate(DECODE_TABLE).encode("latin-1")
    except UnicodeEncodeError:
        # a character outside the byte alphabet (a converter's mistake): keep it as UTF-8
        return b"".join(
            bytes([DECODE_TABLE[ord(c)]])
            if ord(c) in DECODE_TABLE
            else c.encode("utf-8", "surrogateescape")
            for c in text
        )


def _byte_value(text: str) -> int:
    try:
        # "<0xNN>"; llama.cpp's strtol + uint8_t cast also turns "<0x-7>" into 0xF9
        return int(text[3:5], 16) & 0xFF
    except ValueError:
        return 0
