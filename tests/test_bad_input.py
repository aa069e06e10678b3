"""Every way a file or a request can be wrong gets a clear error naming what is wrong."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType

import metallic
from metallic import ContextError, GGUFError, ModelError, _core
from small_gguf import write_small_gguf


def _record(data: bytes, name: str) -> int:
    """Offset just past the name of tensor `name` in the tensor table."""
    key = struct.pack("<Q", len(name)) + name.encode()
    pos = data.index(key)
    return pos + len(key)


def _patch_tensor(
    src: Path,
    dst: Path,
    name: str,
    *,
    type_id: int | None = None,
    offset: int | None = None,
    dim0: int | None = None,
) -> Path:
    data = bytearray(src.read_bytes())
    p = _record(data, name)
    (n_dims,) = struct.unpack_from("<I", data, p)
    if dim0 is not None:
        struct.pack_into("<Q", data, p + 4, dim0)
    t = p + 4 + 8 * n_dims
    if type_id is not None:
        struct.pack_into("<I", data, t, type_id)
    if offset is not None:
        struct.pack_into("<Q", data, t + 4, offset)
    dst.write_bytes(bytes(data))
    return dst


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="cannot open"):
        metallic.load(tmp_path / "nope.gguf")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="cannot open"):
        metallic.load(tmp_path)


def test_wrong_magic(small_gguf: Path, tmp_path: Path) -> None:
    bad = tmp_path / "magic.gguf"
    bad.write_bytes(b"GGML" + small_gguf.read_bytes()[4:])
    with pytest.raises(GGUFError, match=r"magic.*not a GGUF file") as e:
        metallic.load(bad)
    assert str(bad) in str(e.value)


def test_unsupported_version(small_gguf: Path, tmp_path: Path) -> None:
    data = bytearray(small_gguf.read_bytes())
    struct.pack_into("<I", data, 4, 99)
    bad = tmp_path / "version.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="version 99"):
        metallic.load(bad)


@pytest.mark.parametrize("keep", [10, 100, 2000])
def test_truncated_header(small_gguf: Path, tmp_path: Path, keep: int) -> None:
    bad = tmp_path / "short.gguf"
    bad.write_bytes(small_gguf.read_bytes()[:keep])
    with pytest.raises(GGUFError, match="truncated|too small|past the end|impossible"):
        metallic.load(bad)


def test_truncated_data(small_gguf: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cut.gguf"
    data = small_gguf.read_bytes()
    bad.write_bytes(data[: len(data) - 1000])
    with pytest.raises(GGUFError, match=r"past the end of the file.*truncated"):
        metallic.load(bad)


def test_offset_past_end(small_gguf: Path, tmp_path: Path) -> None:
    bad = _patch_tensor(small_gguf, tmp_path / "off.gguf", "blk.1.ffn_up.weight", offset=1 << 40)
    with pytest.raises(GGUFError, match="'blk.1.ffn_up.weight'.*past the end"):
        metallic.load(bad)


def test_misaligned_offset(small_gguf: Path, tmp_path: Path) -> None:
    bad = _patch_tensor(small_gguf, tmp_path / "align.gguf", "blk.0.attn_q.weight", offset=3)
    with pytest.raises(GGUFError, match="'blk.0.attn_q.weight'.*aligned"):
        metallic.load(bad)


def test_unknown_type(small_gguf: Path, tmp_path: Path) -> None:
    bad = _patch_tensor(small_gguf, tmp_path / "type.gguf", "blk.0.attn_k.weight", type_id=99)
    with pytest.raises(GGUFError, match="'blk.0.attn_k.weight' has unknown type id 99"):
        metallic.load(bad)


def test_unsupported_type(small_gguf: Path, tmp_path: Path) -> None:
    # Q8_1 is a real GGML type (an activation format) that no weight kernel handles.
    bad = _patch_tensor(
        small_gguf,
        tmp_path / "q81.gguf",
        "blk.0.attn_q.weight",
        type_id=int(GGMLQuantizationType.Q8_1),
    )
    with pytest.raises(ModelError, match=r"'blk.0.attn_q.weight' has type Q8_1.*supported: .*F16"):
        metallic.load(bad)


def test_wrong_shape(tmp_path: Path) -> None:
    path = write_small_gguf(tmp_path / "shape.gguf", overrides={"blk.1.attn_v.weight": (48, 64)})
    with pytest.raises(
        ModelError, match=r"'blk.1.attn_v.weight' has shape \[64, 48\], expected \[64, 32\]"
    ):
        metallic.load(path)


def test_missing_tensor(tmp_path: Path) -> None:
    path = write_small_gguf(tmp_path / "missing.gguf", skip=("blk.1.ffn_down.weight",))
    with pytest.raises(ModelError, match="missing tensor 'blk.1.ffn_down.weight'"):
        metallic.load(path)


def test_unknown_architecture(tmp_path: Path) -> None:
    path = write_small_gguf(tmp_path / "arch.gguf", arch="gpt5")
    with pytest.raises(ModelError, match="unknown architecture 'gpt5'"):
        metallic.load(path)


def test_metadata_wrong_type(small_gguf: Path, tmp_path: Path) -> None:
    # Turn qwen2.block_count (UINT32) into an INT8 value of -1: present, but nonsense.
    data = bytearray(small_gguf.read_bytes())
    key = b"qwen2.block_count"
    p = data.index(key) + len(key)
    struct.pack_into("<I", data, p, 1)  # value type INT8
    data[p + 4] = 0xFF
    bad = tmp_path / "meta.gguf"
    bad.write_bytes(bytes(data[: p + 5]) + bytes(data[p + 8 :]))
    with pytest.raises((ModelError, GGUFError), match="qwen2.block_count|truncated|metadata"):
        metallic.load(bad)


def test_absurd_counts(small_gguf: Path, tmp_path: Path) -> None:
    data = bytearray(small_gguf.read_bytes())
    for offset, what in ((8, "tensor count"), (16, "metadata count")):
        bad_data = bytearray(data)
        struct.pack_into("<Q", bad_data, offset, 1 << 60)
        bad = tmp_path / "count.gguf"
        bad.write_bytes(bytes(bad_data))
        with pytest.raises(GGUFError, match=what):
            metallic.load(bad)


def test_absurd_string_length(small_gguf: Path, tmp_path: Path) -> None:
    data = bytearray(small_gguf.read_bytes())
    p = data.index(b"general.architecture") - 8
    struct.pack_into("<Q", data, p, 1 << 62)
    bad = tmp_path / "str.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="string length"):
        metallic.load(bad)


def test_prompt_longer_than_context(small_gguf: Path) -> None:
    m = metallic.load(small_gguf, n_ctx=16)
    with pytest.raises(ContextError, match="17 tokens at position 0 do not fit the context of 16"):
        m.prefill(list(range(17)))
    m.prefill(list(range(10)))
    with pytest.raises(ContextError, match="at position 10"):
        m.prefill(list(range(7)))
    with pytest.raises(ContextError, match="context holds 16"):
        list(m.generate(list(range(20)), max_tokens=1))


def test_token_out_of_range(small_gguf: Path) -> None:
    m = metallic.load(small_gguf, n_ctx=16)
    for call, bad in (
        (lambda: m.decode(300), "300 is outside the vocabulary of 300"),
        (lambda: m.prefill([1, -1]), "-1 is outside"),
    ):
        with pytest.raises(metallic.errors.RequestError, match=f"token id {bad}") as e:
            call()
        assert not isinstance(e.value, ContextError)  # no context could hold it: a bad request
    engine = m._engine  # the core's own check, behind Python's, says the same
    with pytest.raises(metallic.errors.RequestError, match="outside the vocabulary") as e:
        engine.decode(300)
    assert not isinstance(e.value, ContextError)
    with pytest.raises(metallic.errors.RequestError, match="integers"):  # a bad request, not
        m.prefill(np.array([1.5]))  # one that does not fit
    assert m.n_past == 0  # nothing ran


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("temperature", -1.0, "temperature"),
        ("top_p", 0.0, "top_p"),
        ("top_p", 1.5, "top_p"),
        ("min_p", -0.1, "min_p"),
        ("top_k", -3, "top_k"),
        ("repeat_penalty", 0.0, "repeat_penalty"),
        ("temperature", float("nan"), "temperature"),
    ],
)
def test_bad_sampler_values(small_gguf: Path, setting: str, value: float, message: str) -> None:
    m = metallic.load(small_gguf, n_ctx=16)
    with pytest.raises(ValueError, match=message):
        list(m.generate([1, 2], max_tokens=2, **{setting: value}))


def test_bad_load_options(small_gguf: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        metallic.load(small_gguf, backend="gpu")
    if not _core.metal_available():
        with pytest.raises(
            ValueError, match="backend 'metal' is not available: this machine has no Metal GPU"
        ):
            metallic.load(small_gguf, backend="metal")
    with pytest.raises(ValueError, match="n_ctx"):
        metallic.load(small_gguf, n_ctx=0)
    with pytest.raises(ValueError, match="threads"):
        metallic.load(small_gguf, threads=0)
    with pytest.raises(ValueError, match="kv_dtype"):
        metallic.load(small_gguf, kv_dtype="int4")
    with pytest.raises(ValueError, match="too large"):
        metallic.load(small_gguf, n_ctx=1 << 30)


def test_env_backend(small_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METALLIC_BACKEND", "metal")
    if not _core.metal_available():
        with pytest.raises(ValueError, match="backend 'metal' is not available"):
            metallic.load(small_gguf)
    monkeypatch.setenv("METALLIC_BACKEND", "cpu")
    assert metallic.load(small_gguf, n_ctx=8).backend == "cpu"


def test_unaligned_float_tensors(tmp_path: Path) -> None:
    # A file whose general.alignment is below 16: its float matrices start anywhere. The Metal
    # kernels read float rows with 16-byte loads from 128-byte lines, so the backend copies a
    # matrix off a line to a buffer of its own (cpp/metal/weight_layout.h); the file runs on
    # metal-sim as on the cpu backend (it used to be refused).
    path = write_small_gguf(tmp_path / "align4.gguf", alignment=4)
    logits = metallic.load(path, backend="cpu", n_ctx=16).prefill([1, 2, 3])
    assert np.isfinite(logits).all()
    if not metallic._core.metal_sim_available():
        return
    sim = metallic.load(path, backend="metal-sim", n_ctx=16).prefill([1, 2, 3])
    np.testing.assert_allclose(sim, logits, rtol=1e-3, atol=1e-3)


def test_mmap_false_isolates_the_model_from_its_file(tmp_path: Path) -> None:
    # A mapped model shares its file's fate (truncating it kills the process with SIGBUS at
    # the next step; rewriting it changes the model); with mmap=False the weights are a copy.
    path = write_small_gguf(tmp_path / "m.gguf")
    mapped = metallic.load(path, n_ctx=16)
    copied = metallic.load(path, n_ctx=16, mmap=False)
    want = mapped.prefill([1, 2, 3]).copy()
    np.testing.assert_array_equal(copied.prefill([1, 2, 3]), want)
    size = path.stat().st_size
    with open(path, "r+b") as f:  # rewrite every weight byte in place
        f.seek(size // 2)
        f.write(b"\x7f" * (size - size // 2))
    copied.reset()
    mapped.reset()
    np.testing.assert_array_equal(copied.prefill([1, 2, 3]), want)
    assert not np.array_equal(mapped.prefill([1, 2, 3]), want)  # why mmap=False exists
    path.write_bytes(b"")  # truncated: the copy does not notice
    copied.reset()
    np.testing.assert_array_equal(copied.prefill([1, 2, 3]), want)


def test_core_errors_arrive_as_their_python_classes(tmp_path: Path, small_gguf: Path) -> None:
    # One translator (cpp/bindings.cpp) maps the core's four error kinds; each arrives as the
    # class errors.py documents, never as a bare ValueError/RuntimeError.
    from metallic import RequestError

    m = metallic.load(small_gguf, n_ctx=16)
    with pytest.raises(RequestError, match="cannot keep 5 of 0"):
        m._engine.truncate(5)  # below the Python checks: the core's own
    with pytest.raises(ContextError, match="do not fit the context of 16"):
        m._engine.prefill(np.arange(20, dtype=np.int32))
    with pytest.raises(RequestError, match="not a regular file"):
        _core.Engine(str(tmp_path), m.config.to_core(), [], backend="cpu")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFError, match="file is empty"):
        _core.Engine(str(empty), m.config.to_core(), [], backend="cpu")
    with pytest.raises(ModelError, match="missing tensor 'token_embd.weight'"):
        _core.Engine(str(small_gguf), m.config.to_core(), [], backend="cpu")
    far = [_core.TensorDesc("token_embd.weight", 1, [64, 300], 1 << 40)]
    with pytest.raises(GGUFError, match="data lies past the end of the file"):
        _core.Engine(str(small_gguf), m.config.to_core(), far, backend="cpu")


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("BadFile", "GGUFError"),
        ("Unsupported", "ModelError"),
        ("BadRequest", "RequestError"),
        ("ContextFull", "ContextError"),
        ("logic_error", "InternalError"),
    ],
)
def test_exception_translator(kind: str, cls: str) -> None:
    with pytest.raises(getattr(metallic.errors, cls)) as info:
        _core.raise_for_test(kind)
    if cls == "InternalError":  # a bug says so, and is not blamed on the input
        assert "a bug in metallic" in str(info.value)
        assert not isinstance(info.value, ValueError)
    with pytest.raises(MemoryError):
        _core.raise_for_test("bad_alloc")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rms_eps", -1.0),
        ("rms_eps", float("nan")),
        ("rope_base", 0.0),
        ("rope_freq_scale", float("inf")),
        ("attn_scale", 3e38),
        ("final_logit_softcap", float("inf")),
        ("embed_scale", float("nan")),
    ],
)
def test_core_refuses_absurd_float_hyperparameters(
    small_gguf: Path, field: str, value: float
) -> None:
    # config.py rejects these with the key's name; the core checks its own input too (a config
    # built by hand gave NaN logits).
    m = metallic.load(small_gguf, n_ctx=16)
    core = m.config.to_core()
    setattr(core, field, value)
    with pytest.raises(ModelError, match=field):
        _core.Engine(str(small_gguf), core, [], backend="cpu")


def test_load_arguments_as_requests(small_gguf: Path) -> None:
    # NumPy integers are integers; values the core's C ints cannot hold are refused by name
    # (they used to reach nanobind and fail as "incompatible function arguments").
    m = metallic.load(small_gguf, n_ctx=np.int64(64), max_batch=np.int32(8))
    assert m.n_ctx == 64
    for kwargs, name in [
        ({"n_ctx": 2**31}, "n_ctx"),
        ({"max_batch": 2**31}, "max_batch"),
        ({"n_ctx": 64.0}, "n_ctx"),
        ({"threads": True}, "threads"),
        ({"threads": 0}, "threads"),
    ]:
        with pytest.raises(metallic.RequestError, match=name):
            metallic.load(small_gguf, **kwargs)
    m.prefill([1, 2, 3])
    with pytest.raises(metallic.RequestError, match="n_keep must be from 0 to 3"):
        m.truncate(2**40)
    assert m.n_past == 3


def test_threads_beyond_the_cpus_are_capped(small_gguf: Path) -> None:
    # 512 threads on 2 cores made decode 300x slower: capped at the logical CPUs, with a warning.
    from metallic.system import logical_cpus

    with pytest.warns(UserWarning, match=f"using {logical_cpus()}"):
        m = metallic.load(small_gguf, n_ctx=16, threads=512)
    assert m.threads == logical_cpus()
