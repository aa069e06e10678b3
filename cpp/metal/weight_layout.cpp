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

// The quants plane of the 32-element formats: where byte j of row r's plane row (plane_row
// bytes) goes. A decode matvec step reads `step` contiguous bytes of a row (4 blocks' quants:
// 128 for Q8_0, 64 for Q4/Q5; matvec.h), from the row's first byte on, and the step left over
// at the row's end (its tail, plane_row % step bytes) reads the tails of consecutive rows
// together. In plain row order a row that is not a whole number of steps shifts the next one
// off the step grid, and its steps split 128-byte lines (Q8_0 at K = 576: every other row).
// So when the tail divides the step, each group of g = step / tail rows stores its g tails
// first (one step's bytes), then each row's remaining steps: every step of every row starts on
// the grid, and no memory is added. Rows past the last whole group stay in order. Mirrored by
// formats.h (quant_plane_row) for the kernels.
size_t quant_plane_offset(size_t plane_row, size_t step, size_t rows, size_t r, size_t j) {
    const size_t tail = plane_row % step, main = plane_row - tail;
    const size_t g = tail && step % tail == 0 ? step / tail : 1;
    if (g == 1 || r >= rows - rows % g) return r * plane_row + j;
    const size_t base = (r / g) * g * plane_row;
    return j < main ? base + step + (r % g) * main + j : base + (r % g) * tail + (j - main);
}

const Planar* planar(uint32_t type) {
    for (const Planar& p : kPlanar)
        if (uint32_t(p.type) == type) return &p;
    return nullptr;
}

}  // namespace

bool repacked_for_gpu(uint32_t type) { return planar(type) != nullptr; }

bool copied_for_gpu(const Matrix& m) {
    if (repacked_for_gpu(m.type)) return true;
    return ggml_type(m.type)->block == 1 && reinterpret_cast<uintptr_t>(m.data) % kGpuLine != 0;
}

void copy_for_gpu(const Matrix& m, uint8_t* dst) {
    const Planar* p = planar(m.type);
    if (!p) {
        if (ggml_type(m.type)->block != 1) throw std::logic_error("metal: no GPU layout for tensor '" + m.name + "'");
        std::memcpy(dst, m.data, m.nbytes);
        return;
    }
    const size_t nb = m.row_bytes / p->block_bytes;
    const size_t blocks = size_t(m.rows) * nb;
    if (m.row_bytes % p->block_bytes || m.nbytes != size_t(m.rows) * m.row_bytes)
        throw std::logic_error("metal: tensor '" + m.name + "' is not whole rows of blocks");
    // Rows are back to back in the file, so the matrix is `blocks` blocks in row order.
    const bool grouped_quants = ggml_type(m.type)->block == 32;
    for (int f = 0; f < p->n_fields; ++f) {
        const Field& field = p->fields[f];
        for (size_t i = 0; i < blocks; ++i) {
            const size_t to = f == 0 && grouped_quants
                                  ? quant_plane_offset(nb * field.size, 4 * field.size, size_t(m.rows), i / nb,
                                                       (i % nb) * field.size)
                                  : i * field.size;
            std::memcpy(dst + to, m.data + i * p->block_bytes + field.offset, field.size);
        }
        dst += blocks * field.size;
    }
}

}  // namespace metallic::metal
