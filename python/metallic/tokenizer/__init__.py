"""Tokenizers of GGUF vocabularies, token for token compatible with llama.cpp.

    from metallic.tokenizer import Tokenizer
    tok = Tokenizer.from_gguf("model.gguf")
    ids = tok.encode("Hello world")
    text = tok.decode(ids)

SentencePiece ("llama") and BPE ("gpt2", with every pre-tokenizer llama.cpp knows, and
"gemma4") vocabularies are supported; see ``tokenizer.Tokenizer`` for the details.
"""

from __future__ import annotations

from .errors import TokenizerError
from .stream import StreamDecoder
from .tokenizer import Tokenizer

__all__ = ["StreamDecoder", "Tokenizer", "TokenizerError"]
