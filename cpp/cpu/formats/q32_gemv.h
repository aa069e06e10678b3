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

#include "cpu/formats/decode_tokens.h"
#include "cpu/formats/simd.h"

namespace metallic::cpu::METALLIC_ISA {

template <class Fmt>
inline F8 q32_block_dot(I8x32 codes, const int8_t* qa) {
    return to_f8(sum_pairs16(maddubs(codes, load_i8x32(qa))));
}

// One row at a time: a single sequential stream per thread is what the prefetcher follows
// best (Q8_0 decode 43.7 vs 34.7 tok/s with four interleaved rows). A row goes in spans of up
// to kSpan blocks, each in two passes: the first writes the scale products d * da of 8 blocks
// at a time to a small array per token and sums the offsets; the second runs the dot products,
// each reading its scale with a broadcast load. (Kept in a register, a lane broadcast costs two
// shuffles, which is why the passes are apart.) The codes and scales of a block are decoded
// once for the G tokens of a group (decode_tokens.h).
template <class Fmt, int G>
void q32_rows(const uint8_t* w, size_t row_bytes, int64_t nrows, int64_t k, const TokenGroup& x,
              const Epilogue& ep) {
    constexpr int64_t kSpan = 64;
    constexpr int64_t kBytes = Fmt::kBytes;
    const int64_t nb = k / 32;
    const float* ad[G];
    const float* asum[G];
    const int8_t* aq[G];
    for (int g = 0; g < G; ++g) {
        const Q8Row a(static_cast<const uint8_t*>(x.act[g]), k);
        ad[g] = a.d;
        asum[g] = a.sum;
        aq[g] = a.q;
    }
    alignas(32) float scale[G][kSpan];
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t* row = w + r * row_bytes;
        F8 acc0[G], acc1[G], offsets[G];
        float off[G];
        for (int g = 0; g < G; ++g) {
            acc0[g] = acc1[g] = offsets[g] = zero8();
            off[g] = 0.0f;
        }
        for (int64_t s0 = 0; s0 < nb; s0 += kSpan) {
            const int64_t span = std::min(kSpan, nb - s0), span8 = span / 8 * 8;
            const uint8_t* blk = row + s0 * kBytes;
            int64_t b = 0;
            for (; b < span8; b += 8) {
                F8 d, c;
                Fmt::scales8(blk + b * kBytes, d, c);
                for (int g = 0; g < G; ++g) {
                    store8(scale[g] + b, mul8(d, load8(ad[g] + s0 + b)));
                    offsets[g] = fma8(c, load8(asum[g] + s0 + b), offsets[g]);
                }
            }
            for (; b < span; ++b) {
                const float d = Fmt::scale(blk + b * kBytes);
                const float c = Fmt::offset(blk + b * kBytes, d);
                for (int g = 0; g < G; ++g) {
                    scale[g][b] = d * ad[g][s0 + b];
                    off[g] += c * asum[g][s0 + b];
                }
            }
            // Two sums per token, so consecutive blocks do not wait on each other's multiply-add.
            for (b = 0; b + 2 <= span; b += 2) {
                __builtin_prefetch(blk + b * kBytes + kPrefetchAhead);
                const I8x32 c0 = Fmt::codes(blk + b * kBytes), c1 = Fmt::codes(blk + (b + 1) * kBytes);
                for (int g = 0; g < G; ++g) {
                    const int8_t* qa = aq[g] + (s0 + b) * 32;
                    acc0[g] = fma8(q32_block_dot<Fmt>(c0, qa), splat8(scale[g][b]), acc0[g]);
                    acc1[g] = fma8(q32_block_dot<Fmt>(c1, qa + 32), splat8(scale[g][b + 1]), acc1[g]);
                }
            }
            if (b < span) {
                const I8x32 c0 = Fmt::codes(blk + b * kBytes);
                for (int g = 0; g < G; ++g)
                    acc0[g] = fma8(q32_block_dot<Fmt>(c0, aq[g] + (s0 + b) * 32), splat8(scale[g][b]), acc0[g]);
            }
        }
        for (int g = 0; g < G; ++g)
            x.out[g][r] = apply_epilogue(hsum8(add8(acc0[g], acc1[g])) + (hsum8(offsets[g]) + off[g]), ep, r,
                                         x.out[g] + r);
    }
}

template <class Fmt>
void q32_gemv(const uint8_t* w, size_t row_bytes, int64_t nrows, int64_t k, const DecodeTokens& x,
              const Epilogue& ep) {
    for_token_groups<4>(w, row_bytes, nrows, x, ep,
                        [&](auto G, const uint8_t* strip, int64_t nr, const TokenGroup& group, const Epilogue& e) {
                            q32_rows<Fmt, decltype(G)::value>(strip, row_bytes, nr, k, group, e);
                        });
}

// Dequantization of the same formats: d * q + c, computed the way gguf-py does it
// ((d * q) + m for Q4_1/Q5_1, d * (q - 8) for Q4_0, ...) so results match bit for bit. The
// format files are compiled with -ffp-contract=off so no FMA merges the two roundings.
template <class Fmt>
void q32_dequant(const uint8_t* src, float* dst, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b) Fmt::dequant_block(src + b * Fmt::kBytes, dst + b * 32);
}

}  // namespace metallic::cpu::METALLIC_ISA
