"""Incremental detokenization for streaming generated text."""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tokenizer import Tokenizer


class StreamDecoder:
    """Turns token ids, pushed one at a time, into text as soon as it is complete.

    Bytes of a UTF-8 character split across tokens (byte-fallback tokens, byte-level BPE
    pieces) are held until the character is complete, so no broken character is ever emitted.
    The concatenation of every ``push`` and the final ``flush`` equals
    ``tokenizer.decode(all_ids, special)``, invalid UTF-8 included (both decode with
    errors="replace", and Python's incremental UTF-8 decoder replaces exactly as the one-shot
    decoder does).
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False) -> None:
        self._tokenizer = tokenizer
        self._pieces = tokenizer._piece_table(special)
        # Tokenizer.decode's rule: the space SentencePiece put before the first word is not
        # part of the text; it sits on the first token, or on the second after a BOS.
        self._strip_space = tokenizer.add_space_prefix
        self._bos = tokenizer.bos_id
        self._count = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Adds one token; returns the text it completes (possibly empty)."""
        token_id = self._tokenizer._check_id(token_id)
        piece = self._pieces[token_id]
        if self._strip_space:
            self._count += 1
            if self._count == 1 and token_id == self._bos:
                pass  # the space, if any, is on the next token
            else:
                self._strip_space = False
                if piece[:1] == b" ":
                    piece = piece[1:]
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """Ends the stream: returns what is left, an incomplete character as U+FFFD."""
        return self._decoder.decode(b"", final=True)
