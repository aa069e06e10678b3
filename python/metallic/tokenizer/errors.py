"""The tokenizer's exception."""

from __future__ import annotations

from ..errors import MetallicError


class TokenizerError(MetallicError, ValueError):
    """A vocabulary cannot be used (missing tokens or merges, unknown tokenizer model or
    pre-tokenizer, special id outside the vocabulary), or a token id passed to decoding is out
    of range. A ValueError; the message names the metadata key or the id at fault."""
