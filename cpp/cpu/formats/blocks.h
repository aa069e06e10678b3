// GGML block layouts of the quantized weight formats, byte for byte as they sit in a GGUF file.
//
// Written to be shared with the Metal shaders: plain structs of fixed-width integers, half
// scales kept as their raw uint16_t bits, no member functions, no C++17-only syntax.
#pragma once

#ifndef __METAL_VERSION__
#include <cstdint>

#include "engine/ggml_types.h"  // the table the layouts are checked against, at the end
#endif

// MSL puts program-scope constants in the constant address space.
#ifdef __METAL_VERSION__
#define METALLIC_PROGRAM_CONSTANT constant
#else
#define METALLIC_PROGRAM_CONSTANT
#endif

namespace metallic {

METALLIC_PROGRAM_CONSTANT constexpr int QK = 32;     // elements per block of the 32-element formats
METALLIC_PROGRAM_CONSTANT constexpr int QK_K = 256;  // elements per super-block of the K-quants

// d * (q - 8); element j in the low nibble of qs[j], element j + 16 in the high nibble.
struct BlockQ4_0 {
    uint16_t d;
    uint8_t qs[QK / 2];
};

// d * q + m; nibbles as Q4_0.
struct BlockQ4_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qs[QK / 2];
};

// d * (q - 16); low 4 bits as Q4_0, bit j of qh (little-endian uint32) is bit 4 of element j.
struct BlockQ5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[QK / 2];
};

// d * q + m; bits as Q5_0.
struct BlockQ5_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[QK / 2];
};

// d * q.
struct BlockQ8_0 {
    uint16_t d;
    int8_t qs[QK];
};

// 16 sub-blocks of 16: (d * (scales[i] & 15)) * q - dmin * (scales[i] >> 4), q in 0..3.
// Element 128h + 32k + l is bits 2k..2k+1 of qs[32h + l].
struct BlockQ2_K {
    uint8_t scales[QK_K / 16];
    uint8_t qs[QK_K / 4];
    uint16_t d;
    uint16_t dmin;
};

// 16 sub-blocks of 16 with 6-bit signed scales (stored + 32, packed in 12 bytes):
// (d * (scale - 32)) * (q - 4 * !hbit), q in 0..3 packed as Q2_K, the high bit of element
// 32i + l is bit i of hmask[l].
struct BlockQ3_K {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[12];
    uint16_t d;
};

// 8 sub-blocks of 32 with 6-bit scales and mins packed in 12 bytes:
// (d * sc) * q - dmin * m. Bytes qs[32c .. 32c + 31] hold sub-block 2c in their low nibbles
// and sub-block 2c + 1 in their high nibbles.
struct BlockQ4_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qs[QK_K / 2];
};

// Q4_K plus a fifth bit: bit i of qh[l] is bit 4 of element l of sub-block i.
struct BlockQ5_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
};

// 16 sub-blocks of 16 with int8 scales: (d * scales[i]) * (q - 32), q in 0..63. In each half
// h of 128 elements, element 128h + 32k + l takes its low 4 bits from ql[64h + 32(k & 1) + l]
// (low nibble for k < 2, high nibble otherwise) and bits 4..5 from qh[32h + l] >> 2k.
struct BlockQ6_K {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    uint16_t d;
};

#ifndef __METAL_VERSION__
// Each layout against the GGML type table (engine/ggml_types.h), the one statement of block
// sizes: checked by every host build (the CPU kernels include this header). The Metal kernels
// size their blocks by these structs (metal/formats.h), so they follow. Host only: the table
// is C++17, and MSL need not parse it.
static_assert(QK == ggml_type(GgmlType::Q8_0).block, "QK: elements per block of the 32-element formats");
static_assert(QK_K == ggml_type(GgmlType::Q4_K).block, "QK_K: elements per K-quant super-block");
static_assert(sizeof(BlockQ4_0) == ggml_type(GgmlType::Q4_0).block_bytes, "BlockQ4_0 vs the Q4_0 table entry");
static_assert(sizeof(BlockQ4_1) == ggml_type(GgmlType::Q4_1).block_bytes, "BlockQ4_1 vs the Q4_1 table entry");
static_assert(sizeof(BlockQ5_0) == ggml_type(GgmlType::Q5_0).block_bytes, "BlockQ5_0 vs the Q5_0 table entry");
static_assert(sizeof(BlockQ5_1) == ggml_type(GgmlType::Q5_1).block_bytes, "BlockQ5_1 vs the Q5_1 table entry");
static_assert(sizeof(BlockQ8_0) == ggml_type(GgmlType::Q8_0).block_bytes, "BlockQ8_0 vs the Q8_0 table entry");
static_assert(sizeof(BlockQ2_K) == ggml_type(GgmlType::Q2_K).block_bytes, "BlockQ2_K vs the Q2_K table entry");
static_assert(sizeof(BlockQ3_K) == ggml_type(GgmlType::Q3_K).block_bytes, "BlockQ3_K vs the Q3_K table entry");
static_assert(sizeof(BlockQ4_K) == ggml_type(GgmlType::Q4_K).block_bytes, "BlockQ4_K vs the Q4_K table entry");
static_assert(sizeof(BlockQ5_K) == ggml_type(GgmlType::Q5_K).block_bytes, "BlockQ5_K vs the Q5_K table entry");
static_assert(sizeof(BlockQ6_K) == ggml_type(GgmlType::Q6_K).block_bytes, "BlockQ6_K vs the Q6_K table entry");
#endif

}  // namespace metallic
