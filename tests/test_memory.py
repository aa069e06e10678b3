"""What a loaded model costs in memory on the Python side: the GGUF reader keeps string arrays
compactly (StringArray), and loading a model does not import packages it does not use."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import gguf
import pytest

from metallic import GGUFError, ggml_types
from metallic.gguf_file import StringArray, read_gguf
from metallic.tokenizer import Tokenizer

# -- GGUF files written by hand, down to the byte ------------------------------------------------

STRING, ARRAY = 8, 9


def _str(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def _gguf(kvs: list[tuple[bytes, bytes]]) -> bytes:
    """A GGUF v3 header with no tensors; each kv is (key, type id + encoded value)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs))
    for key, value in kvs:
        out += _str(key) + value
    return out


def _string_array(items: list[bytes], count: int | None = None) -> bytes:
    n = len(items) if count is None else count
    return struct.pack("<IIQ", ARRAY, STRING, n) + b"".join(_str(b) for b in items)


def _write(tmp_path: Path, data: bytes, name: str = "t.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- ggml_types mirrors gguf-py ------------------------------------------------------------------


def test_type_tables_match_gguf_package() -> None:
    ours = {t.name: t.value for t in ggml_types.GGMLQuantizationType}
    theirs = {t.name: t.value for t in gguf.GGMLQuantizationType}
    assert ours == theirs
    assert {t.name: t.value for t in ggml_types.GGUFValueType} == {
        t.name: t.value for t in gguf.GGUFValueType
    }
    assert {t.name: v for t, v in ggml_types.GGML_QUANT_SIZES.items()} == {
        t.name: v for t, v in gguf.GGML_QUANT_SIZES.items()
    }


# -- StringArray -----------------------------------------------------------------------------------

ITEMS = [b"hello", b"", "\u2581w\u00f6rld".encode(), b"\xff\xferaw", b"<0x0A>", "日本".encode()]


def test_string_arrays_decode_like_single_strings(tmp_path: Path) -> None:
    kvs = [(b"arr", _string_array(ITEMS))]
    kvs += [(f"one.{i}".encode(), struct.pack("<I", STRING) + _str(b)) for i, b in enumerate(ITEMS)]
    md = read_gguf(_write(tmp_path, _gguf(kvs))).metadata
    arr = md["arr"]
    singles = [md[f"one.{i}"] for i in range(len(ITEMS))]
    assert isinstance(arr, StringArray)
    assert len(arr) == len(ITEMS)
    assert list(arr) == singles
    assert [arr[i] for i in range(len(ITEMS))] == singles
    assert [arr[i] for i in range(-len(ITEMS), 0)] == singles
    assert arr[1:4] == singles[1:4] and arr[::-2] == singles[::-2]
    # raw bytes come back through surrogateescape, as in a single string
    assert arr[3].encode("utf-8", "surrogateescape") == b"\xff\xferaw"
    assert arr == singles and singles == arr and arr != singles[:-1] and arr != tuple(singles)
    assert "日本" in arr and "nope" not in arr and arr.index("<0x0A>") == 4
    with pytest.raises(IndexError):
        arr[len(ITEMS)]
    with pytest.raises(IndexError):
        arr[-len(ITEMS) - 1]
    with pytest.raises(TypeError):
        hash(arr)
    assert "6 strings" in repr(arr)


def test_empty_string_array(tmp_path: Path) -> None:
    arr = read_gguf(_write(tmp_path, _gguf([(b"arr", _string_array([]))]))).metadata["arr"]
    assert isinstance(arr, StringArray) and len(arr) == 0 and list(arr) == [] and arr == []


def test_nested_string_arrays(tmp_path: Path) -> None:
    inner = [_string_array([b"a", b"b"]), _string_array([b"c"])]
    value = struct.pack("<IIQ", ARRAY, ARRAY, 2) + b"".join(v[4:] for v in inner)
    md = read_gguf(_write(tmp_path, _gguf([(b"nested", value)]))).metadata
    assert md["nested"] == [["a", "b"], ["c"]]


def test_truncated_string_arrays_name_the_byte(tmp_path: Path) -> None:
    head = _gguf([(b"arr", _string_array([b"ab", b"cd"], count=3))])
    # third string: its length field is cut short
    with pytest.raises(GGUFError) as e:
        read_gguf(_write(tmp_path, head + b"\x01" * 6, "a.gguf"))
    assert f"truncated file: need 8 bytes, 6 left (in metadata key 'arr', at byte {len(head)})" in (
        str(e.value)
    )
    # third string: a length that runs past the end of the file
    with pytest.raises(GGUFError) as e:
        read_gguf(_write(tmp_path, head + struct.pack("<Q", 100) + b"xyz", "b.gguf"))
    assert (
        "string length 100 runs past the end of the file "
        f"(in metadata key 'arr', at byte {len(head) + 8})"
    ) in str(e.value)
    # a count that cannot fit the file is refused before reading any string
    with pytest.raises(GGUFError, match="array of 1000 strings runs past the end"):
        read_gguf(_write(tmp_path, _gguf([(b"arr", _string_array([b"x"], count=1000))]), "c.gguf"))


def test_vocabulary_is_kept_compactly(tmp_path: Path) -> None:
    """200k tokens: what read_gguf keeps is the text plus a few bytes a token, not a list of
    Python strings (about 60 bytes a token more)."""
    n = 200_000
    tokens = [f"tok{i}".encode() for i in range(n)]
    path = _write(tmp_path, _gguf([(b"tokenizer.ggml.tokens", _string_array(tokens))]))
    text = sum(len(t) for t in tokens)
    tracemalloc.start()
    try:
        g = read_gguf(path)
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert g.metadata["tokenizer.ggml.tokens"][123_456] == "tok123456"
    assert kept < text + 8 * n, f"{kept} bytes kept for {text} bytes of text"


def test_tokenizer_from_string_arrays_matches_lists(tmp_path: Path) -> None:
    """The tokenizer reads StringArray metadata exactly as the lists it replaces."""
    merges = [b"a b", b"ab c", b"\xc4\xa0 a"]
    tokens = [b"a", b"b", b"c", b"ab", b"abc", "\u0120".encode(), "\u0120a".encode()]
    kvs = [
        (b"tokenizer.ggml.model", struct.pack("<I", STRING) + _str(b"gpt2")),
        (b"tokenizer.ggml.pre", struct.pack("<I", STRING) + _str(b"gpt-2")),
        (b"tokenizer.ggml.tokens", _string_array(tokens)),
        (b"tokenizer.ggml.merges", _string_array(merges)),
    ]
    md = read_gguf(_write(tmp_path, _gguf(kvs))).metadata
    as_lists = {k: list(v) if isinstance(v, StringArray) else v for k, v in md.items()}
    a, b = Tokenizer.from_metadata(md), Tokenizer.from_metadata(as_lists)
    for text in ("abc ab a", " abcabc", "cab ba"):
        assert a.encode(text) == b.encode(text)
        assert a.decode(a.encode(text)) == text
    assert a.id_to_token(4) == "abc" and a.token_to_id("\u0120a") == 6


# -- what loading imports ------------------------------------------------------------------------


def test_loading_imports_only_what_it_uses(small_gguf: Path) -> None:
    """Loading a model and running it needs NumPy and the core, not the gguf package (its
    __init__ pulls in sentencepiece, yaml, ...), Jinja or the tokenizer's regex module."""
    code = (
        "import sys, json, metallic\n"
        f"m = metallic.load({str(small_gguf)!r}, backend='cpu', n_ctx=32, threads=1)\n"
        "m.prefill([1, 2, 3]); m.decode(4)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(json.loads(out.splitlines()[-1]))
    for heavy in ("gguf", "sentencepiece", "yaml", "jinja2", "regex"):
        assert heavy not in loaded, f"loading a model imports {heavy}"
