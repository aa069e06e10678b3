"""Strict reader for the GGUF header: metadata key/values and the tensor table.

Why not ``gguf.GGUFReader``: it trusts every count in the file. A corrupted array length
makes it loop for 2**64 iterations (a hang, found by fuzzing), and it builds several NumPy
views per string, which takes seconds on a 262k-token vocabulary. This reader bounds every
count by the bytes that remain, names the file and the field in every error, and parses a
large vocabulary in a fraction of a second. The tests use the ``gguf`` package to write files;
its constants (value and tensor types, block sizes) are mirrored in ``ggml_types`` so that loading
a model does not import it.

Arrays of strings (the vocabulary and the BPE merges: 50k-262k strings each) are kept as a
``StringArray``, one bytes object plus offsets, not as a list of ``str``: a loaded model keeps
its metadata for as long as it lives, and as Python strings those arrays take 25 MiB or more.

Nothing here touches tensor data: the C++ core maps the file and reads tensors in place.
"""

from __future__ import annotations

import mmap
import operator
import os
import struct
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, overload

import numpy as np

from .errors import GGUFError
from .ggml_types import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 4  # arrays of arrays deeper than this are not used by any model


def _clip(name: str) -> str:
    """A key or tensor name for an error message: a corrupt length can make one run over
    megabytes of the header."""
    return name if len(name) <= 100 else f"{name[:80]}... ({len(name)} chars)"


def _decode(raw: bytes) -> str:
    # Vocabularies may hold raw bytes; keep them recoverable instead of guessing. For valid
    # UTF-8 this is the same as a strict decode.
    return raw.decode("utf-8", errors="surrogateescape")


class StringArray(Sequence[str]):
    """An immutable GGUF array of strings: the UTF-8 bytes of every string in one ``bytes``
    object, and in ``offsets`` where each one starts (string i is ``data[offsets[i] :
    offsets[i + 1]]``). Items are decoded when read, exactly as a single GGUF string is.

    As a list, each string costs 60 to 80 bytes besides its text (object header, cached hash,
    list slot); here it costs 4 (8 in files over 4 GiB). Tokenizers build their own lookup
    tables from it once, so nothing decodes it per token.

    It compares equal to a list (or another ``StringArray``) with the same strings in order.
    """

    __slots__ = ("_data", "_offsets")

    def __init__(self, data: bytes, offsets: array[int]) -> None:
        if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(data):
            raise ValueError("offsets must run from 0 to len(data)")
        self._data = data
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        i = operator.index(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("StringArray index out of range")
        return _decode(self._data[self._offsets[i] : self._offsets[i + 1]])

    def __iter__(self) -> Iterator[str]:
        data = self._data
        start = 0
        for end in islice(self._offsets, 1, None):
            yield _decode(data[start:end])
            start = end

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StringArray):
            return self._data == other._data and self._offsets == other._offsets
        if isinstance(other, list):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, so unhashable like them

    @property
    def nbytes(self) -> int:
        """Bytes of text and offsets (the Python object headers aside)."""
        return len(self._data) + self._offsets.itemsize * len(self._offsets)

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:3])
        more = ", ..." if len(self) > 3 else ""
        return f"StringArray({len(self)} strings: [{head}{more}])"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]  # GGML order: shape[0] is the contiguous (row) dimension
    offset: int  # absolute byte offset of the data in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def type_name(self) -> str:
        return self.type.name


@dataclass
class GGUFFile:
    path: Path
    version: int
    file_size: int
    alignment: int
    data_offset: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise GGUFError(f"{self.path}: missing metadata key '{key}'")
        return self.metadata[key]


_SCALARS: dict[int, tuple[str, type]] = {
    GGUFValueType.UINT8: ("<B", np.uint8),
    GGUFValueType.INT8: ("<b", np.int8),
    GGUFValueType.UINT16: ("<H", np.uint16),
    GGUFValueType.INT16: ("<h", np.int16),
    GGUFValueType.UINT32: ("<I", np.uint32),
    GGUFValueType.INT32: ("<i", np.int32),
    GGUFValueType.FLOAT32: ("<f", np.float32),
    GGUFValueType.UINT64: ("<Q", np.uint64),
    GGUFValueType.INT64: ("<q", np.int64),
    GGUFValueType.FLOAT64: ("<d", np.float64),
    GGUFValueType.BOOL: ("<?", np.bool_),
}


_U64 = struct.Struct("<Q")


class _Cursor:
    """Bounds-checked little-endian reads over the mapped header."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path
        self.where = "header"

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what} (in {self.where}, at byte {self.pos})")

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int) -> memoryview:
        if n < 0 or n > self.remaining():
            raise self.fail(f"truncated file: need {n} bytes, {self.remaining()} left")
        view = self.buf[self.pos : self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack_from(fmt, self.take(size))[0]

    def u32(self) -> int:
        return self.unpack("<I")

    def u64(self) -> int:
        return self.unpack("<Q")

    def string(self) -> str:
        n = self.u64()
        if n > self.remaining():
            raise self.fail(f"string length {n} runs past the end of the file")
        return _decode(bytes(self.take(n)))

    def strings(self, count: int) -> StringArray:
        """``count`` strings, copied into one StringArray. The same checks and errors as
        ``count`` calls of string(), in one loop without a Python object per string: this is
        the vocabulary, up to 262k strings."""
        buf = self.buf
        end = len(buf)
        pos = self.pos
        data = bytearray()
        # The text lies in the rest of the file: 32-bit offsets hold it unless that is 4 GiB.
        offsets = array("I" if end - pos < 1 << 32 else "Q", [0])
        unpack = _U64.unpack_from
        for _ in range(count):
            if end - pos < 8:
                self.pos = pos  # errors name the byte where the bad string is
                raise self.fail(f"truncated file: need 8 bytes, {end - pos} left")
            (n,) = unpack(buf, pos)
            pos += 8
            if n > end - pos:
                self.pos = pos
                raise self.fail(f"string length {n} runs past the end of the file")
            data += buf[pos : pos + n]
            pos += n
            offsets.append(len(data))
        self.pos = pos
        return StringArray(bytes(data), offsets)

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            fmt, _ = _SCALARS[vtype]
            v = self.unpack(fmt)
            return bool(v) if vtype == GGUFValueType.BOOL else v
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            if depth >= MAX_NESTING:
                raise self.fail("arrays nested too deeply")
            etype = self.u32()
            count = self.u64()
            if etype in _SCALARS:
                fmt, dtype = _SCALARS[etype]
                size = struct.calcsize(fmt)
                if count * size > self.remaining():
                    raise self.fail(f"array of {count} elements runs past the end of the file")
                raw = self.take(count * size)
                return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).copy()
            if etype == GGUFValueType.STRING:
                # each string costs at least its 8-byte length
                if count * 8 > self.remaining():
                    raise self.fail(f"array of {count} strings runs past the end of the file")
                return self.strings(count)
            if etype == GGUFValueType.ARRAY:
                if count * 12 > self.remaining():
                    raise self.fail(f"array of {count} arrays runs past the end of the file")
                return [self.value(etype, depth + 1) for _ in range(count)]
            raise self.fail(f"unknown array element type {etype}")
        raise self.fail(f"unknown value type {vtype}")


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Parse and validate the header of a GGUF file. Raises GGUFError on any defect."""
    path = Path(path)
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise GGUFError(f"{path}: cannot open: {e.strerror}") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 24:
            raise GGUFError(f"{path}: file too small to be GGUF ({size} bytes)")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                return _parse(view, path, size)
            finally:
                view.release()


def _parse(buf: memoryview, path: Path, size: int) -> GGUFFile:
    cur = _Cursor(buf, path)
    magic = bytes(cur.take(4))
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{path}: bad magic {magic!r}, expected {GGUF_MAGIC!r}: not a GGUF file")
    version = cur.u32()
    if version not in SUPPORTED_VERSIONS:
        raise GGUFError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = cur.u64()
    n_kv = cur.u64()
    # Every key/value needs at least 8+4+1 bytes and every tensor record 8+4+8+4+8.
    if n_kv * 13 > cur.remaining():
        raise GGUFError(f"{path}: metadata count {n_kv} is impossible for a {size}-byte file")
    if n_tensors * 32 > cur.remaining():
        raise GGUFError(f"{path}: tensor count {n_tensors} is impossible for a {size}-byte file")

    gf = GGUFFile(path=path, version=version, file_size=size, alignment=32, data_offset=0)
    for i in range(n_kv):
        cur.where = f"metadata entry {i}"
        key = cur.string()
        cur.where = f"metadata key '{_clip(key)}'"
        if key in gf.metadata:
            raise cur.fail("duplicate metadata key")
        gf.metadata[key] = cur.value(cur.u32())

    alignment = gf.metadata.get("general.alignment", 32)
    # A bool is no count (True would mean 1); the value may be a megabyte string: cut it short.
    if (
        isinstance(alignment, bool)
        or not isinstance(alignment, int)
        or alignment <= 0
        or alignment & (alignment - 1)
    ):
        raise GGUFError(
            f"{path}: metadata 'general.alignment' must be a power of two, got {alignment!r:.60}"
        )
    gf.alignment = alignment

    raw: list[tuple[str, int, tuple[int, ...], int]] = []
    for i in range(n_tensors):
        cur.where = f"tensor record {i}"
        name = cur.string()
        cur.where = f"tensor '{_clip(name)}'"
        n_dims = cur.u32()
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"{n_dims} dimensions, expected 1 to {MAX_DIMS}")
        shape = tuple(cur.u64() for _ in range(n_dims))
        ttype = cur.u32()
        offset = cur.u64()
        raw.append((name, ttype, shape, offset))

    data_offset = -(-cur.pos // alignment) * alignment
    gf.data_offset = data_offset
    seen: set[str] = set()
    for name, ttype, shape, rel in raw:
        if name in seen:
            raise GGUFError(f"{path}: duplicate tensor '{name}'")
        seen.add(name)
        gf.tensors[name] = _tensor_info(path, name, ttype, shape, rel, data_offset, alignment, size)
    return gf


def _tensor_info(
    path: Path,
    name: str,
    ttype: int,
    shape: tuple[int, ...],
    rel: int,
    data_offset: int,
    alignment: int,
    size: int,
) -> TensorInfo:
    try:
        qtype = GGMLQuantizationType(ttype)
    except ValueError:
        raise GGUFError(f"{path}: tensor '{name}' has unknown type id {ttype}") from None
    if qtype not in GGML_QUANT_SIZES:
        raise GGUFError(f"{path}: tensor '{name}' has type {qtype.name} with no known layout")
    if any(d == 0 for d in shape):
        raise GGUFError(f"{path}: tensor '{name}' has an empty dimension in shape {shape}")
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    if shape[0] % block:
        raise GGUFError(
            f"{path}: tensor '{name}' ({qtype.name}) row length {shape[0]} is not a multiple "
            f"of the block size {block}"
        )
    n = 1
    for d in shape:
        n *= d
    nbytes = n // block * block_bytes
    if rel % alignment:
        raise GGUFError(f"{path}: tensor '{name}' offset {rel} is not {alignment}-byte aligned")
    start = data_offset + rel
    if start + nbytes > size:
        raise GGUFError(
            f"{path}: tensor '{name}' data [{start}, {start + nbytes}) lies past the end of the "
            f"file ({size} bytes): truncated or corrupt"
        )
    return TensorInfo(name=name, type=qtype, shape=shape, offset=start, nbytes=nbytes)
