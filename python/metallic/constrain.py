"""Output constrained to JSON, or to a JSON Schema, while sampling (the server's
``response_format``: ``json_object`` and ``json_schema``).

    from metallic.constrain import json_constraint
    c = json_constraint(tokenizer, schema)  # schema: a JSON Schema dict, or None: any JSON object
    while not c.done():
        logits = np.where(c.allowed(), logits, -np.inf)  # tokens that keep the output valid
        token = sampler.sample(logits)
        c.advance(token)
        ...

The grammar engine is llguidance (the optional extra ``serve``: ``pip install
'metallic-llm[serve]'``), imported on first use. It walks a trie of every token's bytes, so it
needs the exact bytes each token id stands for; ``_token_bytes`` derives them from Metallic's own
tokenizer (see there), and the result is built once per tokenizer object and cached.

End of generation: the end-of-generation tokens (EOS, EOT, ``<|im_end|>``, ``<end_of_turn>``,
... ``Tokenizer.eog_ids``) are allowed exactly when the output so far is a complete value, so
sampling can end naturally; and ``done()`` turns True as soon as nothing more can follow (the
closing brace of an object), without waiting for one, or once one was accepted. A scheduler
stops at ``done()``. A value that could go on (a top-level number, say) is not done until an
end-of-generation token is sampled or max_tokens ends it.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InternalError, RequestError
from .tokenizer import Tokenizer
from .tokenizer.spm import SPACE, SPM
from .tokenizer.vocab import CONTROL, UNKNOWN, USER_DEFINED

if TYPE_CHECKING:
    import llguidance

__all__ = ["TokenConstraint", "json_constraint", "prepare"]

EXTRA = "serve"  # the optional extra that installs llguidance

# Whitespace between JSON tokens: at most this many characters in a row. Unbounded whitespace
# (JSON's own rule) lets a small model loop on newlines until max_tokens; this still allows
# pretty-printing to a depth of about 15 with two-space indentation.
MAX_WHITESPACE = 32

# The JSON compiler's options, applied over the schema's own "x-guidance" (which is removed
# from the schema too): what the output looks like is ours to decide, not the request's.
_COMPILE_OPTIONS: dict[str, Any] = {
    "item_separator": ",",
    "key_separator": ":",
    "whitespace_flexible": True,
    "whitespace_pattern": rf"[\x20\x0A\x0D\x09]{{0,{MAX_WHITESPACE}}}",
    "coerce_one_of": False,
    # "\u00e9" as well as "é" (Python's json.dumps writes the former); llguidance's default
    # allows \u escapes of control characters only
    "json_allow_general_unicode_escapes": True,
    "lenient": False,  # a keyword llguidance cannot enforce is an error, not silently ignored
}

# llguidance marks special tokens by this first byte (its tokenizers' convention): a grammar
# can only name them, never produce them as text, so no JSON grammar ever allows one.
_SPECIAL_MARKER = b"\xff"


def _llguidance() -> Any:
    try:
        import llguidance
        import llguidance.numpy  # noqa: F401  (the bitmask helpers)
    except ImportError as e:
        raise ImportError(
            "JSON / JSON Schema constrained output needs the llguidance package, from the "
            f"optional extra '{EXTRA}': pip install 'metallic-llm[{EXTRA}]'"
        ) from e
    return llguidance


# --- the tokenizer bridge -----------------------------------------------------------------


class _Bridge:
    """What every constraint on one tokenizer shares: llguidance's tokenizer (the token trie,
    the costly part) and the ids that end generation. Immutable, so shared across threads."""

    def __init__(self, tok: Tokenizer) -> None:
        llg = _llguidance()
        self.n_vocab = tok.vocab_size
        token_bytes, special = _token_bytes(tok)
        self.pieces = token_bytes  # for error messages
        self.special = special  # bool per id: never allowed as text
        self.eog = np.array(sorted(tok.eog_ids), dtype=np.int64)
        self.eog_set = frozenset(tok.eog_ids)
        eos = (
            tok.eos_id if tok.eos_id is not None else (int(self.eog[0]) if self.eog.size else None)
        )
        wrapper = llg.TokenizerWrapper(
            _TokenizerAdapter(tok, token_bytes, np.nonzero(special)[0].tolist(), eos)
        )
        self.ll: llguidance.LLTokenizer = llg.LLTokenizer(wrapper)


def _token_bytes(tok: Tokenizer) -> tuple[list[bytes], np.ndarray]:
    """The bytes llguidance sees for each token id, and which ids are special.

    A text token's bytes are what it adds to the decoded output: ``Tokenizer.token_to_piece``
    (the tokenizer's own table, so the constraint and decoding agree byte for byte), which
    already resolves each family's encoding: byte-level BPE (GPT-2, Qwen, Llama 3, SmolLM2)
    maps its byte alphabet back to raw bytes; SentencePiece (Gemma, Llama 2) turns U+2581 into
    a space and byte-fallback tokens (``<0x0A>``) into their one byte. A piece can be part of a
    UTF-8 character; llguidance works on bytes, so that is fine.

    Special ids, never allowed in JSON: control and unknown tokens (EOS/EOG included: the
    constraint allows those itself, see ``TokenConstraint.allowed``); tokens that render as
    nothing (unused ones); and user-defined tokens that look like markup (``<...>`` or
    ``[...]``: ``<start_of_image>``, ``<tool_call>``, ``[PAD151646]``, also Gemma's ``<b>``:
    the same text stays possible with ordinary tokens), as llama.cpp's llguidance bridge does.
    Other user-defined tokens are text (Gemma's runs of newlines and tabs). Special tokens get
    llguidance's marker byte and their text, which no JSON grammar matches.
    """
    vocab = tok._vocab
    attrs = vocab.attrs
    table = tok._piece_table(False)  # plain pieces; control tokens render as b"" here
    out = [table[i] for i in range(tok.vocab_size)]
    special = (attrs & (CONTROL | UNKNOWN)) != 0
    for i in np.nonzero((attrs & USER_DEFINED) != 0)[0].tolist():
        text = vocab.tokens[i]
        if len(text) > 2 and (text[0], text[-1]) in (("<", ">"), ("[", "]")):
            special[i] = True
    for i, piece in enumerate(out):
        if not piece:
            special[i] = True
    for i in np.nonzero(special)[0].tolist():
        out[i] = _SPECIAL_MARKER + vocab.tokens[i].encode("utf-8", "surrogateescape")
    return out, special


class _TokenizerAdapter:
    """The tokenizer as llguidance's ``TokenizerWrapper`` takes it: token bytes, EOS/BOS ids,
    special ids, and a call that tokenizes a piece of text (llguidance asks for the tokens of
    short runs of text the grammar forces).

    It holds the tokenizer's parts, not the Tokenizer: the bridge cached for a Tokenizer must
    not keep it alive (the cache's keys are weak references)."""

    def __init__(self, tok: Tokenizer, tokens: list[bytes], special: list[int], eos: int | None):
        self.tokens = tokens
        self.special_token_ids = special
        self.eos_token_id = eos
        self.bos_token_id = tok.bos_id
        self._model = tok._model
        self._splitter = tok._special
        self._spm = isinstance(tok._model, SPM)

    def __call__(self, text: str | bytes) -> list[int]:
        """Token ids of ``text`` as a piece of output: ``Tokenizer.encode`` without BOS/EOS
        and without the space SentencePiece vocabularies may put before the text (Llama 2)."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        out: list[int] = []
        for part in self._splitter.split(text, False):
            if isinstance(part, int):  # a user-defined token, always recognised
                out.append(part)
            elif self._spm:
                out += self._model.encode(part.replace(" ", SPACE))
            else:
                out += self._model.encode(part)
        return out


# One bridge per tokenizer object, for as long as it lives (a model keeps its tokenizer).
_BRIDGES: weakref.WeakKeyDictionary[Tokenizer, _Bridge] = weakref.WeakKeyDictionary()
_BRIDGES_LOCK = threading.Lock()


def _bridge(tok: Tokenizer) -> _Bridge:
    if not isinstance(tok, Tokenizer):
        raise TypeError(f"expected a metallic Tokenizer, got {type(tok).__name__}")
    with _BRIDGES_LOCK:  # built once even when requests race for it
        bridge = _BRIDGES.get(tok)
        if bridge is None:
            bridge = _BRIDGES[tok] = _Bridge(tok)
        return bridge


def prepare(tokenizer: Tokenizer) -> None:
    """Builds and caches the tokenizer's bridge now rather than at the first constrained
    request. It costs about 1.5 s of CPU for a 262k-token vocabulary (0.7 s for 128k, 0.2 s
    for 49k), nearly all of it llguidance's token trie and slicer tables, with the GIL held
    throughout: a server calls this once per model before it starts serving."""
    _bridge(tokenizer)


# --- the constraint ---------------------------------------------------------------------------


def json_constraint(
    tokenizer: Tokenizer, schema: Mapping[str, Any] | None = None, *, n_vocab: int | None = None
) -> TokenConstraint:
    """A constraint that keeps sampled output a JSON value valid for ``schema``.

    ``schema``: a JSON Schema (a dict, as decoded from a request), or None for any JSON object
    (OpenAI's ``json_object``). ``n_vocab``: the length of ``allowed()``, the model's logits,
    when it differs from the tokenizer's vocabulary (ids past the vocabulary are never
    allowed; ids past n_vocab cannot be sampled). Raises RequestError for
    a schema that is not valid JSON Schema or uses what llguidance cannot enforce
    (``uniqueItems``, ``not``, ``if``/``then``, ``dependentRequired``, remote ``$ref`` ...),
    naming the problem; ImportError naming the extra to install without llguidance.
    """
    llg = _llguidance()
    bridge = _bridge(tokenizer)
    size = bridge.n_vocab if n_vocab is None else int(n_vocab)
    if size <= 0:
        raise RequestError(f"n_vocab must be positive, got {n_vocab}")
    grammar = _grammar(llg, schema)
    error = llg.LLMatcher.validate_grammar(grammar, bridge.ll)
    if error:
        raise RequestError(f"unsupported or invalid JSON schema: {error}")
    matcher = llg.LLMatcher(bridge.ll, grammar, log_level=0)
    if matcher.is_error():
        raise RequestError(f"unsupported or invalid JSON schema: {matcher.get_error()}")
    return TokenConstraint(bridge, matcher, size)


def _grammar(llg: Any, schema: Mapping[str, Any] | None) -> str:
    if schema is None:
        schema = {"type": "object"}
    if not isinstance(schema, Mapping):
        raise RequestError(
            f"a JSON schema must be a JSON object (a dict), got {type(schema).__name__}"
        )
    schema = {k: v for k, v in schema.items() if k != "x-guidance"}
    try:
        text = json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise RequestError(f"the JSON schema is not JSON-serializable: {e}") from e
    try:
        return llg.LLMatcher.grammar_from_json_schema(text, overrides=_COMPILE_OPTIONS)
    except ValueError as e:
        raise RequestError(f"unsupported or invalid JSON schema: {e}") from e


class TokenConstraint:
    """The state of one constrained output: which tokens may come next, fed the ones sampled.

    One per generation stream, used by one thread at a time (the tokenizer bridge it shares
    with others is immutable). ``allowed()`` is computed once per state; a step costs well
    under a millisecond once the grammar's lexer has warmed up.
    """

    def __init__(self, bridge: _Bridge, matcher: llguidance.LLMatcher, n_vocab: int) -> None:
        self._bridge = bridge
        self._matcher = matcher
        self._n = n_vocab
        self._llg = _llguidance()
        words = (bridge.ll.vocab_size + 31) // 32
        self._bitmask = np.full((1, words), -1, dtype=np.int32)
        self._mask: np.ndarray | None = None  # allowed() of the current state
        self._ended = False  # an end-of-generation token was accepted
        self._tail = bytearray()  # the output's last bytes, for error messages

    @property
    def n_vocab(self) -> int:
        """The length of ``allowed()``."""
        return self._n

    def done(self) -> bool:
        """True once the output is complete and nothing more can follow: the value's last
        byte (an object's closing brace), or an end-of-generation token, was accepted.
        Generation should stop here; ``allowed()`` then allows only end-of-generation ids."""
        m = self._matcher
        return self._ended or (m.is_stopped() and not m.is_error())

    def complete(self) -> bool:
        """True when the output so far is a complete value: end-of-generation tokens are
        allowed (``done()`` implies it; ``12`` is complete but not done, digits may follow)."""
        return self._ended or self._matcher.is_accepting()

    def allowed(self) -> np.ndarray:
        """The tokens allowed next: a new bool array of ``n_vocab`` entries. Special tokens
        are never allowed, end-of-generation ids exactly when the output is complete. Raises
        RequestError if the grammar engine gave up (a schema past its complexity limits)."""
        return self._current().copy()

    def advance(self, token_id: int) -> None:
        """Feeds the sampled token. Raises RequestError, leaving the state unchanged, for a
        token that ``allowed()`` does not allow (or any token after an end-of-generation one)."""
        if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)):
            raise RequestError(f"token id must be an integer, got {token_id!r}")
        t = int(token_id)
        if not 0 <= t < self._n:
            raise RequestError(f"token id {t} is outside the vocabulary of {self._n}")
        if self._ended:
            raise RequestError(
                f"token {t} after the end of the constrained output: an end-of-generation "
                "token was already accepted (stop when done() is True)"
            )
        if not self._current()[t]:
            b = self._bridge
            if t >= b.n_vocab:
                shown = "past the tokenizer's vocabulary"
            elif b.special[t]:
                shown = f"special token {b.pieces[t][1:].decode('utf-8', 'replace')!r}"
            else:
                shown = repr(b.pieces[t])
            state = (
                "the output is complete"
                if self.done()
                else f"after {bytes(self._tail[-40:]).decode('utf-8', 'replace')!r}"
            )
            raise RequestError(
                f"token {t} ({shown}) is not allowed by the JSON constraint here ({state}); "
                "sample only from allowed()"
            )
        self._mask = None
        if t in self._bridge.eog_set:
            self._ended = True
            return
        if not self._matcher.consume_token(t):
            raise InternalError(
                f"llguidance refused token {t} that its mask allowed: {self._matcher.get_error()}"
            )
        self._tail += self._bridge.pieces[t]
        del self._tail[:-64]

    def _current(self) -> np.ndarray:
        if self._mask is not None:
            return self._mask
        b = self._bridge
        full = np.zeros(b.n_vocab, dtype=bool)  # over the tokenizer's vocabulary
        m = self._matcher
        if self._ended or m.is_stopped():
            if m.is_error():
                raise RequestError(f"JSON constrained output failed: {m.get_error()}")
            full[b.eog] = True
        else:
            self._llg.numpy.fill_next_token_bitmask(m, self._bitmask)
            if m.is_error():
                raise RequestError(f"JSON constrained output failed: {m.get_error()}")
            bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
            full[:] = bits[: b.n_vocab].view(bool) & ~b.special
            # llguidance allows its one EOS id when the value is complete; we allow them all
            full[b.eog] = m.is_accepting()
        if self._n == b.n_vocab:
            mask = full
        else:  # the model's logits are longer, or shorter, than the vocabulary
            mask = np.zeros(self._n, dtype=bool)
            n = min(self._n, b.n_vocab)
            mask[:n] = full[:n]
        self._mask = mask
        return mask

    def __repr__(self) -> str:
        return f"TokenConstraint(done={self.done()}, complete={self.complete()})"
