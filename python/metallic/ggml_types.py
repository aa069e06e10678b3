"""The GGUF value types and GGML tensor types with their block geometry.

These tables are what the GGUF format and ggml.h define; gguf-py (the ``gguf`` package) has
the same ones in ``gguf.constants``. They are kept here because importing anything from the
``gguf`` package runs its ``__init__``, which loads its reader, writer, vocabulary and
metadata helpers and, through them, sentencepiece, yaml and more: about 8 MiB of resident
memory and 0.1 s in every process that loads a model, for three small tables. The tests check
that these tables agree with gguf-py's (tests/test_memory.py), so a type added upstream shows up
as a test failure rather than as a silent difference; and, for every type the core knows, with
the core's own table, cpp/engine/ggml_types.h (tests/test_formats.py, through
_core.ggml_types()). The core's table covers the types it can size; this one every type a GGUF
file may hold, so that the reader can size (and skip) tensors the engine never reads.
"""

from __future__ import annotations

from enum import IntEnum


class GGUFValueType(IntEnum):
    """Type ids of metadata values (gguf.h ``gguf_type``)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


class GGMLQuantizationType(IntEnum):
    """Tensor type ids (ggml.h ``ggml_type``); the gaps are ids ggml has retired."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41


QK_K = 256  # elements per super-block of the K and IQ quantizations

_T = GGMLQuantizationType

# (elements per block, bytes per block) of every tensor type.
GGML_QUANT_SIZES: dict[GGMLQuantizationType, tuple[int, int]] = {
    _T.F32: (1, 4),
    _T.F16: (1, 2),
    _T.Q4_0: (32, 2 + 16),
    _T.Q4_1: (32, 2 + 2 + 16),
    _T.Q5_0: (32, 2 + 4 + 16),
    _T.Q5_1: (32, 2 + 2 + 4 + 16),
    _T.Q8_0: (32, 2 + 32),
    _T.Q8_1: (32, 4 + 4 + 32),
    _T.Q2_K: (256, 2 + 2 + QK_K // 16 + QK_K // 4),
    _T.Q3_K: (256, 2 + QK_K // 4 + QK_K // 8 + 12),
    _T.Q4_K: (256, 2 + 2 + QK_K // 2 + 12),
    _T.Q5_K: (256, 2 + 2 + QK_K // 2 + QK_K // 8 + 12),
    _T.Q6_K: (256, 2 + QK_K // 2 + QK_K // 4 + QK_K // 16),
    _T.Q8_K: (256, 4 + QK_K + QK_K // 8),
    _T.IQ2_XXS: (256, 2 + QK_K // 4),
    _T.IQ2_XS: (256, 2 + QK_K // 4 + QK_K // 32),
    _T.IQ3_XXS: (256, 2 + QK_K // 4 + QK_K // 8),
    _T.IQ1_S: (256, 2 + QK_K // 8 + QK_K // 16),
    _T.IQ4_NL: (32, 2 + 16),
    _T.IQ3_S: (256, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    _T.IQ2_S: (256, 2 + QK_K // 4 + QK_K // 16),
    _T.IQ4_XS: (256, 2 + 2 + QK_K // 2 + QK_K // 64),
    _T.I8: (1, 1),
    _T.I16: (1, 2),
    _T.I32: (1, 4),
    _T.I64: (1, 8),
    _T.F64: (1, 8),
    _T.IQ1_M: (256, QK_K // 8 + QK_K // 16 + QK_K // 32),
    _T.BF16: (1, 2),
    _T.TQ1_0: (256, 2 + 4 * 13),
    _T.TQ2_0: (256, 2 + 64),
    _T.MXFP4: (32, 1 + 16),
    _T.NVFP4: (64, 4 + 32),
    _T.Q1_0: (128, 2 + 16),
}
