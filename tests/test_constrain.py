"""JSON / JSON Schema constrained output (metallic.constrain) on real vocabularies.

Families: Gemma 3 (SentencePiece, 262k tokens, byte fallback, user-defined whitespace and
markup tokens), SmolLM2 (byte-level BPE), Llama 2 (SentencePiece with a space prefix and byte
tokens, shared vocabulary) and Qwen2 (byte-level BPE, user-defined [PAD] tokens, shared
vocabulary). Random walks pick any allowed token (biased towards closing quotes and brackets so
that they end) and must give JSON that parses and satisfies the schema, checked by a small
validator below (jsonschema is not a dependency).
"""

from __future__ import annotations

import gc
import json
import re
import sys
from typing import Any

import numpy as np
import pytest

from data.tokenizer_corpus import vocab_path
from metallic.errors import RequestError
from metallic.tokenizer import Tokenizer
from metallic.tokenizer.vocab import CONTROL, UNKNOWN

pytest.importorskip("llguidance")

from metallic import constrain  # noqa: E402
from metallic.constrain import TokenConstraint, json_constraint  # noqa: E402

FAMILIES = ("gemma3", "smollm2", "llama-spm", "qwen2")
_TOKENIZERS: dict[str, Tokenizer] = {}


def tokenizer(name: str) -> Tokenizer:
    if name not in _TOKENIZERS:
        import real_models

        if name == "gemma3":
            path = real_models.gemma3_gguf()
        elif name == "smollm2":
            path = real_models.smollm2_gguf()
        else:
            path = vocab_path(name)
            if not path.exists():
                pytest.skip(f"{path} not found")
        _TOKENIZERS[name] = Tokenizer.from_gguf(path)
    return _TOKENIZERS[name]


_PIECES: dict[int, list[bytes]] = {}


def pieces(tok: Tokenizer) -> list[bytes]:
    if id(tok) not in _PIECES:
        _PIECES[id(tok)] = [tok.token_to_piece(i) for i in range(tok.vocab_size)]
    return _PIECES[id(tok)]


def fragment(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of a piece of output: ``encode`` without the space Llama 2 puts first."""
    ids = tok.encode(text, add_special=False)
    if tok.add_space_prefix:
        assert tok.token_to_piece(ids[0])[:1] == b" "
        ids = tok.encode("a" + text, add_special=False)
        assert tok.id_to_token(ids[0]) == "▁a", "a text this helper cannot cut"
        ids = ids[1:]
    assert tok.decode(ids).encode() == text.encode()
    return ids


def control_ids(tok: Tokenizer) -> np.ndarray:
    """Control and unknown tokens, EOG ones left out (they have their own rule)."""
    attrs = tok._vocab.attrs
    ids = np.nonzero((attrs & (CONTROL | UNKNOWN)) != 0)[0]
    return np.setdiff1d(ids, sorted(tok.eog_ids))


# --- a validator for the schemas below ---------------------------------------------------------


def check(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str = "$") -> None:
    """Asserts ``value`` satisfies ``schema`` (the keywords the tests use)."""
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        check(value, target, root, path)
    if "anyOf" in schema:
        errors = []
        for sub in schema["anyOf"]:
            try:
                check(value, sub, root, path)
                break
            except AssertionError as e:
                errors.append(str(e))
        else:
            raise AssertionError(f"{path}: {value!r} matches no anyOf branch: {errors}")
    if "enum" in schema:
        assert any(_same(value, v) for v in schema["enum"]), f"{path}: {value!r} not in enum"
    if "const" in schema:
        assert _same(value, schema["const"]), f"{path}: {value!r} != const"
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        assert any(_is(value, k) for k in kinds), f"{path}: {value!r} is not {kinds}"
    if isinstance(value, str):
        assert len(value) <= schema.get("maxLength", len(value)), f"{path}: too long"
        assert len(value) >= schema.get("minLength", 0), f"{path}: too short"
        if "pattern" in schema:
            assert re.search(schema["pattern"], value), f"{path}: {value!r} vs pattern"
    if _is(value, "number"):
        assert value >= schema.get("minimum", value), f"{path}: {value} < minimum"
        assert value <= schema.get("maximum", value), f"{path}: {value} > maximum"
    if isinstance(value, list):
        assert len(value) >= schema.get("minItems", 0), f"{path}: too few items"
        assert len(value) <= schema.get("maxItems", len(value)), f"{path}: too many items"
        for i, item in enumerate(value):
            check(item, schema.get("items", {}), root, f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            assert key in value, f"{path}: required {key!r} missing"
        for key, item in value.items():
            if key in props:
                check(item, props[key], root, f"{path}.{key}")
            else:
                extra = schema.get("additionalProperties", True)
                assert extra is not False, f"{path}: unexpected property {key!r}"
                if isinstance(extra, dict):
                    check(item, extra, root, f"{path}.{key}")


def _is(value: Any, kind: str) -> bool:
    return {
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "null": value is None,
    }[kind]


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def test_the_validator_rejects() -> None:
    """The walks' checks are worth something only if the validator can fail."""
    schema = SCHEMAS["person"]
    good = {"name": "x", "age": 3, "kind": "cat", "tags": []}
    check(good, schema, schema)
    for bad in (
        {**good, "age": "3"},
        {**good, "kind": "cow"},
        {**good, "tags": ["a", "b", "c", "d"]},
        {**good, "name": "x" * 13},
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "age"},
    ):
        with pytest.raises(AssertionError):
            check(bad, schema, schema)


# --- schemas ----------------------------------------------------------------------------------

SCHEMAS: dict[str, Any] = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "kind": {"enum": ["cat", "dog", 'a "quoted" bird']},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        },
        "required": ["name", "age", "kind", "tags"],
        "additionalProperties": False,
    },
    "nested": {
        "$defs": {
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 10},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                },
                "required": ["city", "zip"],
                "additionalProperties": False,
            }
        },
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "home": {"$ref": "#/$defs/address"},
                    "active": {"type": "boolean"},
                },
                "required": ["id", "home", "active"],
                "additionalProperties": False,
            },
            "scores": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 4},
            "note": {"anyOf": [{"type": "string", "maxLength": 8}, {"type": "null"}]},
        },
        "required": ["user", "scores", "note"],
        "additionalProperties": False,
    },
    "array": {
        "type": "array",
        "items": {"enum": [1, "two", None, True]},
        "minItems": 2,
        "maxItems": 5,
        # the request cannot change what the output looks like: this is ignored
        "x-guidance": {"item_separator": ";", "whitespace_flexible": False},
    },
    "json_object": None,
}


def random_walk(
    tok: Tokenizer, schema: Any, seed: int, closers: np.ndarray, max_steps: int = 800
) -> tuple[str, list[int]]:
    """Picks a random allowed token until done; half the time among those that close a
    string, array or object (or end generation), so that walks end. Checks every mask."""
    rng = np.random.default_rng(seed)
    c = json_constraint(tok, schema)
    controls = control_ids(tok)
    eog = np.array(sorted(tok.eog_ids))
    out: list[int] = []
    while not c.done():
        assert len(out) < max_steps, f"no end after {max_steps} tokens: {tok.decode(out)!r}"
        mask = c.allowed()
        assert mask.shape == (tok.vocab_size,) and mask.dtype == bool
        assert not mask[controls].any(), [tok.id_to_token(i) for i in controls[mask[controls]]]
        assert (mask[eog] == c.complete()).all(), (tok.decode(out), mask[eog], c.complete())
        allowed = np.nonzero(mask)[0]
        closing = np.nonzero(mask & closers)[0]
        pick = closing if closing.size and rng.random() < 0.5 else allowed
        token = int(pick[rng.integers(pick.size)])
        c.advance(token)
        out.append(token)
    if out and out[-1] in tok.eog_ids:
        out.pop()
    return tok.decode(out), out


@pytest.mark.parametrize("family", FAMILIES)
def test_random_walks_give_valid_json(family: str) -> None:
    tok = tokenizer(family)
    closers = np.array([any(b in p for b in b'"]}') for p in pieces(tok)])
    closers[sorted(tok.eog_ids)] = True
    for name, schema in SCHEMAS.items():
        for seed in range(3):
            text, _ = random_walk(tok, schema, seed, closers)
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise AssertionError(f"{name} seed {seed}: {text!r} is not JSON: {e}") from e
            if schema is None:
                assert isinstance(value, dict), text
            else:
                check(value, schema, schema)


# --- the token bytes ---------------------------------------------------------------------------

DOCUMENT = (
    '{"name": "Zoë \\"Z\\" Ødegård", "emoji": "🦙 日本語", "n": -12.5e3, "ok": true,\n'
    '  "list": [1, null, false, {"deep": ["\\u00e9\\n\\t"]}], "empty": {}, "tab":\t"x"}'
)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_document_is_written_token_by_token(family: str) -> None:
    """Greedy longest-match over the allowed tokens writes a given document (non-ASCII,
    escapes, newlines, tabs) exactly: the bytes the constraint assigns to tokens are the
    bytes decoding produces, SentencePiece spaces and byte fallback included."""
    tok = tokenizer(family)
    table = pieces(tok)
    by_piece: dict[bytes, list[int]] = {}
    for t, piece in enumerate(table):
        by_piece.setdefault(piece, []).append(t)
    longest = max(map(len, table))
    target = DOCUMENT.encode()
    c = json_constraint(tok, None)
    out: list[int] = []
    at = 0
    while at < len(target):
        allowed = c.allowed()
        fits = [
            t
            for k in range(min(longest, len(target) - at), 0, -1)
            for t in by_piece.get(target[at : at + k], [])
            if allowed[t]
        ]
        assert fits, f"no allowed token continues {target[:at]!r}"
        best = fits[0]  # the longest
        c.advance(best)
        out.append(best)
        at += len(table[best])
    assert c.done()
    assert tok.decode(out).encode() == target


@pytest.mark.parametrize("family", ["gemma3", "smollm2", "qwen2"])
def test_the_tokenizers_own_tokenization_is_accepted(family: str) -> None:
    """What the model saw in training: the canonical tokens of a document, including
    Gemma's user-defined newline tokens. (Llama 2 puts a space before the text, which JSON
    output does not start with: the constraint has it write '{' rather than ' {'.)"""
    tok = tokenizer(family)
    c = json_constraint(tok, None)
    for t in tok.encode(DOCUMENT, add_special=False):
        c.advance(t)
    assert c.done()


def test_llama2_has_no_leading_space() -> None:
    tok = tokenizer("llama-spm")
    first = tok.encode("{", add_special=False)  # "▁{"
    assert tok.token_to_piece(first[0]) == b" {"
    mask = json_constraint(tok, None).allowed()
    assert not mask[first[0]]
    assert mask[tok.token_to_id("{")]


# --- special tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_masks_forbid_special_tokens(family: str) -> None:
    tok = tokenizer(family)
    controls = control_ids(tok)
    eog = sorted(tok.eog_ids)
    c = json_constraint(tok, {"type": "object", "properties": {"s": {"type": "string"}}})
    states = []
    for t in fragment(tok, '{"s":"abc'):
        c.advance(t)
    states.append(("in a string", c.allowed()))
    for t in fragment(tok, '","x":1}'):
        c.advance(t)
    states.append(("done", c.allowed()))
    for where, mask in states:
        assert not mask[controls].any(), where
    in_string, done = states[0][1], states[1][1]
    assert in_string.sum() > tok.vocab_size // 2  # most of the vocabulary is string text
    assert not in_string[eog].any()
    assert done[eog].all() and done.sum() == len(eog)


def test_gemma_user_defined_tokens() -> None:
    """Gemma's user-defined markup tokens (<start_of_image>, <b>) are special; its runs of
    newlines are whitespace text, allowed where JSON allows whitespace."""
    tok = tokenizer("gemma3")
    c = json_constraint(tok, None)
    c.advance(tok.token_to_id("{"))
    between = c.allowed()
    assert between[tok.token_to_id("\n\n")]
    for t in tok.encode('"k":"', add_special=False):
        c.advance(t)
    in_string = c.allowed()
    for marker in ("<start_of_image>", "<b>", "[multimodal]", "<end_of_turn>", "<eos>"):
        assert not in_string[tok.token_to_id(marker)], marker
    assert in_string[tok.token_to_id("<0x41>")]  # byte fallback: "A"
    assert not in_string[tok.token_to_id("<0x0A>")]  # a raw newline in a string is not JSON


# --- end of generation ------------------------------------------------------------------------


def test_end_of_generation() -> None:
    """EOG ids are allowed exactly when the value is complete; done() turns True at once for
    an object, and only after an EOG id for a number that could go on."""
    tok = tokenizer("smollm2")
    eog = sorted(tok.eog_ids)
    c = json_constraint(tok, {"type": "integer"})
    assert not c.allowed()[eog].any() and not c.complete()
    c.advance(tok.token_to_id("1"))
    mask = c.allowed()
    assert mask[eog].all() and c.complete() and not c.done()
    assert mask[tok.token_to_id("2")]  # more digits may follow
    c.advance(tok.eos_id)
    assert c.done()
    assert np.nonzero(c.allowed())[0].tolist() == eog

    c = json_constraint(tok, None)
    for t in tok.encode("{}", add_special=False):
        assert not c.done()
        c.advance(t)
    assert c.done() and c.complete()
    assert np.nonzero(c.allowed())[0].tolist() == eog
    c.advance(eog[-1])
    with pytest.raises(RequestError, match="already accepted"):
        c.advance(eog[0])


# --- errors -----------------------------------------------------------------------------------


def test_a_disallowed_token_is_rejected() -> None:
    tok = tokenizer("smollm2")
    c = json_constraint(tok, SCHEMAS["person"])
    for t in tok.encode('{"name":"Al', add_special=False):
        c.advance(t)
    before = c.allowed()
    brace = tok.token_to_id("{")
    assert before[brace]  # text in a string
    for t in tok.encode('","age":', add_special=False):
        c.advance(t)
    mask = c.allowed()
    for bad in (tok.token_to_id("{"), tok.token_to_id('"'), tok.token_to_id("a")):
        assert not mask[bad]
        with pytest.raises(RequestError, match=rf"token {bad} \(.*\) is not allowed"):
            c.advance(bad)
    with pytest.raises(RequestError, match="special token '<\\|im_start\\|>'"):
        c.advance(tok.token_to_id("<|im_start|>"))
    with pytest.raises(RequestError, match="not allowed"):
        c.advance(tok.eos_id)  # the value is not complete
    with pytest.raises(RequestError, match="outside the vocabulary"):
        c.advance(tok.vocab_size)
    with pytest.raises(RequestError, match="must be an integer"):
        c.advance("7")  # type: ignore[arg-type]
    # the state did not move: the rest of a valid document goes through
    assert (c.allowed() == mask).all()
    for t in tok.encode('7,"kind":"cat","tags":[]}', add_special=False):
        c.advance(t)
    assert c.done()


@pytest.mark.parametrize(
    "schema, message",
    [
        ({"type": "objekt"}, "Invalid type: objekt"),
        ({"type": "object", "required": "a"}, "required"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"not": {"type": "string"}}, "not"),
        ({"type": "string", "pattern": "(["}, "regex parse error"),
        ({"type": "string", "format": "no-such-format"}, "Unknown format"),
        ({"properties": {"x": {"$ref": "#/$defs/missing"}}}, "does not exist"),
        ({"$ref": "https://example.com/schema.json"}, "does not fetch"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "Unsatisfiable"),
        ({"enum": []}, "Unsatisfiable"),
        ("{}", "must be a JSON object"),
        (True, "must be a JSON object"),
        ({"enum": [{1, 2}]}, "not JSON-serializable"),
        ({"type": "number", "maximum": float("nan")}, "not JSON-serializable"),
    ],
)
def test_an_invalid_schema_is_a_request_error(schema: Any, message: str) -> None:
    tok = tokenizer("smollm2")
    with pytest.raises(RequestError, match=re.escape(message)) as info:
        json_constraint(tok, schema)
    if isinstance(schema, dict):
        assert str(info.value).startswith(("unsupported or invalid JSON schema", "the JSON"))


def test_the_request_cannot_change_the_output_format() -> None:
    """The schema's "x-guidance" (llguidance's own options) is ignored: here it would forbid
    the \\t escape."""
    tok = tokenizer("smollm2")
    c = json_constraint(tok, {"type": "string", "x-guidance": {"json_allowed_escapes": "n"}})
    for t in tok.encode('"a\\', add_special=False):
        c.advance(t)
    assert c.allowed()[tok.token_to_id("t")]


def test_n_vocab_pads_the_mask() -> None:
    tok = tokenizer("smollm2")
    c = json_constraint(tok, None, n_vocab=tok.vocab_size + 64)
    mask = c.allowed()
    assert mask.shape == (tok.vocab_size + 64,) and not mask[tok.vocab_size :].any()
    with pytest.raises(RequestError, match="outside|not allowed"):
        c.advance(tok.vocab_size + 3)
    # shorter logits than the vocabulary: the ids past them cannot be sampled
    c = json_constraint(tok, None, n_vocab=tok.vocab_size - 100)
    assert c.allowed().shape == (tok.vocab_size - 100,)
    for t in fragment(tok, "{}"):
        c.advance(t)
    assert c.done()
    assert np.nonzero(c.allowed())[0].tolist() == sorted(tok.eog_ids)  # all below 100


def test_whitespace_is_bounded() -> None:
    """A model that loops on whitespace cannot run to max_tokens inside the JSON."""
    tok = tokenizer("smollm2")
    space = tok.token_to_id("Ġ")  # one space
    assert tok.token_to_piece(space) == b" "
    c = json_constraint(tok, None)
    c.advance(tok.token_to_id("{"))
    n = 0
    while c.allowed()[space]:
        c.advance(space)
        n += 1
        assert n <= 1000
    assert n == constrain.MAX_WHITESPACE


def test_without_llguidance_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    tok = tokenizer("smollm2")
    monkeypatch.setitem(sys.modules, "llguidance", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'metallic-llm[serve]'")):
        json_constraint(tok, None)


def test_the_bridge_is_built_once_per_tokenizer() -> None:
    tok = tokenizer("smollm2")
    c1, c2 = json_constraint(tok, None), json_constraint(tok, SCHEMAS["person"])
    assert c1._bridge is c2._bridge
    assert isinstance(c1, TokenConstraint)
    other = Tokenizer(tok._vocab)  # another tokenizer object gets its own
    bridges = len(constrain._BRIDGES)
    assert json_constraint(other, None)._bridge is not c1._bridge
    assert len(constrain._BRIDGES) == bridges + 1
    # and lets it go with the tokenizer (a model unloaded)
    del other
    gc.collect()
    assert len(constrain._BRIDGES) == bridges


@pytest.mark.parametrize("family", FAMILIES)
def test_fragments_tokenize_as_the_tokenizer_does(family: str) -> None:
    """The tokenizer call llguidance makes for forced text: the tokenizer's own ids, with no
    space before the text (Llama 2) and user-defined tokens recognised (Gemma's newlines)."""
    tok = tokenizer(family)
    bridge = constrain._bridge(tok)
    adapter = constrain._TokenizerAdapter(tok, bridge.pieces, [], tok.eos_id)
    for text in ('{"a": [1, 2]}', '"name": "Zoë",\n\n  ', "<|im_end|> <eos>"):
        ids = adapter(text)
        assert tok.decode(ids).encode() == text.encode(), (text, ids)
        assert ids == fragment(tok, text)


# --- a real model -----------------------------------------------------------------------------


def test_a_real_model_writes_json_for_a_schema() -> None:
    """SmolLM2-135M-Instruct, greedy through the Sampler with the mask, answers in JSON that
    matches the schema and ends by itself well within max_tokens."""
    import metallic
    from metallic.chat import chat_prompt_ids
    from metallic.sampling import Sampler, SamplerSettings
    from real_models import smollm2_gguf

    schema = {
        "type": "object",
        "properties": {
            "country": {"type": "string", "maxLength": 30},
            "capital": {"type": "string", "maxLength": 30},
            "population_millions": {"type": "integer", "minimum": 0, "maximum": 2000},
        },
        "required": ["country", "capital", "population_millions"],
        "additionalProperties": False,
    }
    model = metallic.load(str(smollm2_gguf()), n_ctx=512)
    messages = [
        {
            "role": "user",
            "content": "Give the country, capital and population in millions of France as JSON.",
        }
    ]
    c = json_constraint(model.tokenizer, schema, n_vocab=model.n_vocab)
    sampler = Sampler(SamplerSettings(temperature=0))
    logits = model.prefill(chat_prompt_ids(model, messages))
    out: list[int] = []
    for _ in range(64):
        token = sampler.sample(np.where(c.allowed(), logits, -np.inf))
        c.advance(token)
        out.append(token)
        if c.done():
            break
        logits = model.decode(token)
    assert c.done(), model.tokenizer.decode(out)
    value = json.loads(model.tokenizer.decode(out))
    check(value, schema, schema)
    assert value["capital"] == "Paris", value
