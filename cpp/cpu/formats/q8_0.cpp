// Q8_0: blocks of 32 int8 codes with one half-precision scale (34 bytes). The dot product runs
// on int16 activation blocks (see format.h for why not int8): 32 integer multiply-adds per
// block, one float FMA per block.
#include "cpu/formats/blocks.h"
#include "cpu/formats/simd.h"

namespace metallic::cpu::METALLIC_ISA {
namespace {

constexpr int64_t kBlockBytes = sizeof(BlockQ8_0);

inline float block_scale(const uint8_t* blk) { return half_to_float(load_u16(blk)); }

// acc + the 8-lane partial dot of one weight block with its activation block.
inline F8 add_block(F8 acc, const uint8_t* blk, const BlockI16& a) {
    const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
    return fma8(dot_i8_i16x32(q, a.q), splat8(block_scale(blk) * a.d), acc);
}

void dequant(const uint8_t* src, float* dst, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b) {
        const uint8_t* blk = src + b * kBlockBytes;
        const float d = block_scale(blk);
        const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
        for (int i = 0; i < 32; ++i) dst[b * 32 + i] = d * static_cast<float>(q[i]);
    }
}

// One row at a time (see q32_gemv.h).
void gemv(const uint8_t* w, size_t row_bytes, int64_t nrows, const void* act, int64_t k, float* out,
          const Epilogue& ep) {
    const BlockI16* a = static_cast<const BlockI16*>(act);
    const int64_t nb = k / 32;
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t* row = w + r * row_bytes;
        // Two sums: one chain of FMAs would cap a block at the FMA latency (4 cycles).
        F8 acc0 = zero8(), acc1 = zero8();
        int64_t b = 0;
        for (; b + 2 <= nb; b += 2) {
            const uint8_t* blk = row + b * kBlockBytes;
            __builtin_prefetch(blk + kPrefetchAhead);
            __builtin_prefetch(blk + kPrefetchAhead + 64);
            acc0 = add_block(acc0, blk, a[b]);
            acc1 = add_block(acc1, blk + kBlockBytes, a[b + 1]);
        }
        if (b < nb) acc0 = add_block(acc0, row + b * kBlockBytes, a[b]);
        out[r] = apply_epilogue(hsum8(add8(acc0, acc1)), ep, r, out + r);
    }
}

}  // namespace

extern const FormatKernels kQ8_0 = format_kernels(GgmlType::Q8_0, ActKind::I16, dequant, gemv);

}  // namespace metallic::cpu::METALLIC_ISA
