// GGML tensor types as numbered in GGUF files, and their block geometry.
// Only the numbering and sizes live here; the kernels for each format live in cpp/cpu/formats/.
#pragma once

#include <cstddef>
#include <cstdint>

namespace metallic {

enum class GgmlType : uint32_t {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    BF16 = 30,
};

struct BlockGeometry {
    int64_t block;       // elements per block (1 for plain float types)
    int64_t block_bytes; // bytes per block
};

// Geometry of the types we know how to size; returns false for anything else.
bool type_geometry(uint32_t type, BlockGeometry* out);
const char* type_name(uint32_t type);

}  // namespace metallic
