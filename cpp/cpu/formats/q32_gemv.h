// The one-token kernel shared by the 32-element formats Q4_0, Q4_1, Q5_0 and Q5_1 on int8
// activation rows (ActKind::Q8).
//
// Every one of them decodes element i of a block as d * q[i] + c with an unsigned code q
// (Q4_0: c = -8d, Q5_0: c = -16d, Q4_1/Q5_1: c = m). Against an activation block (da, qa):
//     sum_i (d q[i] + c) da qa[i] = d da * dot(q, qa) + c * (da * sum(qa))
// and da * sum(qa) is the activation row's block sum, so the inner loop is one unsigned x
// signed byte dot product (vpmaddubsw, no sign juggling).
//
// A block holds only 18 to 24 bytes, so per byte the kernel does far more work than Q8_0's.
// Taken one block at a time, the scale (a half to convert, a product, a broadcast) and the
// offset cost as much as the dot product, and one thread decoded Q4_1 at 12 GB/s where it
// reads 18-19. So the scales and offsets of 8 blocks are converted, multiplied and summed as
// vectors, and each block's dot product takes its scale product with a broadcast load:
// Q4_0 11.7 -> 16.2 GB/s, Q4_1 12.2 -> 16.0, Q5_0 10.7 -> 13.2 on one thread.
//
// A format supplies kBytes, codes(block) -> 32 unsigned codes, scale(block) -> d and
// offset(block, d) -> c, and the 8-block form scales8(first block, d8, c8).
#pragma once

#include <algorithm>

#include "cpu/formats/simd.h"

namespace metallic::cpu::METALLIC_ISA {

template <class Fmt>
inline F8 q32_block_dot(const uint8_t* blk, const int8_t* qa) {
    return to_f8(sum_pairs16(maddubs(Fmt::codes(blk), load_i8x32(qa))));
}

// One row at a time: a single sequential stream per thread is what the prefetcher follows
// best (Q8_0 decode 43.7 vs 34.7 tok/s with four interleaved rows). A row goes in spans of up
// to kSpan blocks, each in two passes: the first writes the scale products d * da of 8 blocks
// at a time to a small array and sums the offsets; the second runs the dot products, each
// reading its scale with a broadcast load. (Kept in a register, a lane broadcast costs two
// shuffles, which is why the passes are apart.)
template <class Fmt>
void q32_gemv(const uint8_t* w, size_t row_bytes, int64_t nrows, const void* act, int64_t k,
              float* out, const Epilogue& ep) {
    constexpr int64_t kSpan = 64;
    constexpr int64_t kBytes = Fmt::kBytes;
    const Q8Row a(static_cast<const uint8_t*>(act), k);
    const int64_t nb = k / 32;
    alignas(32) float scale[kSpan];
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t* row = w + r * row_bytes;
        F8 acc0 = zero8(), acc1 = zero8(), offsets = zero8();
        float off = 0.0f;
        for (int64_t s0 = 0; s0 < nb; s0 += kSpan) {
            const int64_t span = std::min(kSpan, nb - s0), span8 = span / 8 * 8;
            const uint8_t* blk = row + s0 * kBytes;
            int64_t b = 0;
            for (; b < span8; b += 8) {
                F8 d, c;
                Fmt::scales8(blk + b * kBytes, d, c);
                store8(scale + b, mul8(d, load8(a.d + s0 + b)));
                offsets = fma8(c, load8(a.sum + s0 + b), offsets);
            }
            for (; b < span; ++b) {
                const float d = Fmt::scale(blk + b * kBytes);
                scale[b] = d * a.d[s0 + b];
                off += Fmt::offset(blk + b * kBytes, d) * a.sum[s0 + b];
            }
            const int8_t* qa = a.q + s0 * 32;
            // Two sums, so consecutive blocks do not wait on each other's multiply-add.
            for (b = 0; b + 2 <= span; b += 2) {
                __builtin_prefetch(blk + b * kBytes + kPrefetchAhead);
                acc0 = fma8(q32_block_dot<Fmt>(blk + b * kBytes, qa + b * 32), splat8(scale[b]), acc0);
                acc1 = fma8(q32_block_dot<Fmt>(blk + (b + 1) * kBytes, qa + (b + 1) * 32),
                            splat8(scale[b + 1]), acc1);
            }
            if (b < span)
                acc0 = fma8(q32_block_dot<Fmt>(blk + b * kBytes, qa + b * 32), splat8(scale[b]), acc0);
        }
        out[r] = apply_epilogue(hsum8(add8(acc0, acc1)) + (hsum8(offsets) + off), ep, r, out + r);
    }
}

// Dequantization of the same formats: d * q + c, computed the way gguf-py does it
// ((d * q) + m for Q4_1/Q5_1, d * (q - 8) for Q4_0, ...) so results match bit for bit. The
// format files are compiled with -ffp-contract=off so no FMA merges the two roundings.
template <class Fmt>
void q32_dequant(const uint8_t* src, float* dst, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b) Fmt::dequant_block(src + b * Fmt::kBytes, dst + b * 32);
}

}  // namespace metallic::cpu::METALLIC_ISA
