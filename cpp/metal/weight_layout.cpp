#include "metal/weight_layout.h"

#include <cstring>
#include <stdexcept>

#include "engine/ggml_types.h"

namespace metallic::metal {

namespace {

// A planar layout: each block's fields (offset and size in GGUF's block), in the order of the
// planes they go to (metal/formats.h, layout<F>).
struct Field {
    size_t offset, size;
};
struct Planar {
    GgmlType type;
    size_t block_bytes;
    Field fields[4];
    int n_fields;
};

// Q8_0 {d, qs[32]}; Q4_0 {d, qs[16]}; Q4_1 {d, m, qs[16]}; Q5_0 {d, qh[4], qs[16]};
// Q5_1 {d, m, qh[4], qs[16]}: planes qs, qh, d, m.
constexpr Planar kPlanar[] = {
    {GgmlType::Q8_0, 34, {{2, 32}, {0, 2}}, 2},
    {GgmlType::Q4_0, 18, {{2, 16}, {0, 2}}, 2},
    {GgmlType::Q4_1, 20, {{4, 16}, {0, 2}, {2, 2}}, 3},
    {GgmlType::Q5_0, 22, {{6, 16}, {2, 4}, {0, 2}}, 3},
    {GgmlType::Q5_1, 24, {{8, 16}, {4, 4}, {0, 2}, {2, 2}}, 4},
    // Q4_K {d, dmin, scales[12], qs[128]}; Q5_K {d, dmin, scales[12], qh[32], qs[128]};
    // Q6_K {ql[128], qh[64], scales[16], d}: planes low bits, high bits, scales, factors.
    {GgmlType::Q4_K, 144, {{16, 128}, {4, 12}, {0, 4}}, 3},
    {GgmlType::Q5_K, 176, {{48, 128}, {16, 32}, {4, 12}, {0, 4}}, 4},
    {GgmlType::Q6_K, 210, {{0, 128}, {128, 64}, {192, 16}, {208, 2}}, 4},
    // Q2_K {scales[16], qs[64], d, dmin}; Q3_K {hmask[32], qs[64], scales[12], d}.
    {GgmlType::Q2_K, 84, {{16, 64}, {0, 16}, {80, 4}}, 3},
    {GgmlType::Q3_K, 110, {{32, 64}, {0, 32}, {96, 12}, {108, 2}}, 4},
};

const Planar* planar(uint32_t type) {
    for (const Planar& p : kPlanar)
        if (uint32_t(p.type) == type) return &p;
    return nullptr;
}

}  // namespace

bool repacked_for_gpu(uint32_t type) { return planar(type) != nullptr; }

void repack_for_gpu(const Matrix& m, uint8_t* dst) {
    const Planar* p = planar(m.type);
    if (!p) throw std::logic_error("metal: no GPU layout for tensor '" + m.name + "'");
    const size_t nb = m.row_bytes / p->block_bytes;
    const size_t blocks = size_t(m.rows) * nb;
    if (m.row_bytes % p->block_bytes || m.nbytes != size_t(m.rows) * m.row_bytes)
        throw std::logic_error("metal: tensor '" + m.name + "' is not whole rows of blocks");
    // Rows are back to back in the file, so the matrix is `blocks` blocks in row order.
    for (int f = 0; f < p->n_fields; ++f) {
        const Field& field = p->fields[f];
        for (size_t i = 0; i < blocks; ++i)
            std::memcpy(dst + i * field.size, m.data + i * p->block_bytes + field.offset, field.size);
        dst += blocks * field.size;
    }
}

int32_t matvec_head(const Matrix& m, size_t offset) {
    const GgmlTypeInfo& t = *ggml_type(m.type);
    if (t.block != 1 || m.row_bytes % 128) return 0;
    const size_t delta = (128 - offset % 128) % 128;
    if (delta % size_t(8 * t.block_bytes) || int64_t(delta) / t.block_bytes >= m.cols) return 0;
    return int32_t(delta / size_t(t.block_bytes));
}

}  // namespace metallic::metal
