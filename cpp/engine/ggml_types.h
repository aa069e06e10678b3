// GGML tensor types as numbered in GGUF files, and their block geometry: the one table of them
// in the project. Everything else derives from it or is checked against it at build time:
//   cpp/cpu/formats/*.cpp       FormatKernels take name, block and bytes from here (format.h)
//   cpp/cpu/formats/blocks.h    static_asserts each block struct's size against the bytes here;
//                               metal/formats.h sizes its blocks by those structs
//   cpp/metal/metal_backend.cpp kernel names end in the lower-case type name
//   python/metallic/ggml_types.py is compared with this table (exposed as _core.ggml_types())
//                               and with gguf-py's by tests/test_formats.py
// Only the numbering and sizes live here; the kernels for each format live in cpp/cpu/formats/.
#pragma once

#include <cstddef>
#include <cstdint>

// X(name, GGUF type id, elements per block, bytes per block): the types the core can size.
// A type the weight kernels read must be here; other GGML types are refused by id.
#define METALLIC_GGML_TYPES(X) \
    X(F32, 0, 1, 4)            \
    X(F16, 1, 1, 2)            \
    X(Q4_0, 2, 32, 18)         \
    X(Q4_1, 3, 32, 20)         \
    X(Q5_0, 6, 32, 22)         \
    X(Q5_1, 7, 32, 24)         \
    X(Q8_0, 8, 32, 34)         \
    X(Q8_1, 9, 32, 36)         \
    X(Q2_K, 10, 256, 84)       \
    X(Q3_K, 11, 256, 110)      \
    X(Q4_K, 12, 256, 144)      \
    X(Q5_K, 13, 256, 176)      \
    X(Q6_K, 14, 256, 210)      \
    X(Q8_K, 15, 256, 292)      \
    X(BF16, 30, 1, 2)

namespace metallic {

enum class GgmlType : uint32_t {
#define METALLIC_GGML_ENUM(name, id, block, bytes) name = id,
    METALLIC_GGML_TYPES(METALLIC_GGML_ENUM)
#undef METALLIC_GGML_ENUM
};

struct GgmlTypeInfo {
    GgmlType type;
    const char* name;     // as ggml.h and gguf-py spell it ("Q8_0")
    int64_t block;        // elements per block (1 for plain float types)
    int64_t block_bytes;  // bytes per block
};

inline constexpr GgmlTypeInfo kGgmlTypes[] = {
#define METALLIC_GGML_INFO(name, id, block, bytes) {GgmlType::name, #name, block, bytes},
    METALLIC_GGML_TYPES(METALLIC_GGML_INFO)
#undef METALLIC_GGML_INFO
};

// The table's entry for a type id, or null for an id it lacks.
constexpr const GgmlTypeInfo* ggml_type(uint32_t id) {
    for (const GgmlTypeInfo& t : kGgmlTypes)
        if (uint32_t(t.type) == id) return &t;
    return nullptr;
}
// The entry of a type the table has (usable in constant expressions and static_asserts).
constexpr const GgmlTypeInfo& ggml_type(GgmlType type) { return *ggml_type(uint32_t(type)); }

// The type's name, or "unknown" for an id the table lacks (for error messages).
const char* type_name(uint32_t type);

}  // namespace metallic
