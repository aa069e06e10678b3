// The matrix kernel shared by the 32-element formats Q4_0, Q4_1, Q5_0 and Q5_1 on int8
// activation blocks (ActKind::Q8).
//
// Every one of them decodes element i of a block as d * q[i] + c with an unsigned code q
// (Q4_0: c = -8d, Q5_0: c = -16d, Q4_1/Q5_1: c = m). Against an activation block (da, qa):
//     sum_i (d q[i] + c) da qa[i] = d da * dot(q, qa) + c * (da * sum(qa))
// and da * sum(qa) is BlockQ8::sum, so the inner loop is one unsigned x signed byte dot
// product (vpmaddubsw, no sign juggling) and the offset costs one scalar FMA per block.
//
// A format supplies kBytes, codes(block) -> 32 unsigned codes, scale(block) -> d and
// offset(block, d) -> c.
#pragma once

#include "cpu/formats/simd.h"

namespace metallic::cpu::METALLIC_ISA {

constexpr int kPrefetchRows = 8;

template <class Fmt, int R, int T>
inline void q32_tile(const uint8_t* w, size_t row_bytes, const uint8_t* act, size_t act_stride,
                     int64_t nb, float* out, size_t out_stride, const Epilogue& ep, int64_t r0) {
    F8 acc[R][T];
    float off[R][T];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) {
            acc[r][t] = zero8();
            off[r][t] = 0.0f;
        }
    for (int64_t b = 0; b < nb; ++b) {
        I8x32 wq[R];
        float dw[R], cw[R];
        for (int r = 0; r < R; ++r) {
            const uint8_t* blk = w + r * row_bytes + b * Fmt::kBytes;
            // The kernel does too much work per byte for out-of-order execution alone to hide
            // DRAM latency: fetch the same block of the rows two tiles ahead (past the end of
            // the matrix a prefetch is harmless).
            __builtin_prefetch(blk + kPrefetchRows * row_bytes);
            wq[r] = Fmt::codes(blk);
            dw[r] = Fmt::scale(blk);
            cw[r] = Fmt::offset(blk, dw[r]);
        }
        for (int t = 0; t < T; ++t) {
            const BlockQ8& ab = reinterpret_cast<const BlockQ8*>(act + t * act_stride)[b];
            const I8x32 aq = load_i8x32(ab.q);
            for (int r = 0; r < R; ++r) {
                const F8 dot = to_f8(sum_pairs16(maddubs(wq[r], aq)));
                acc[r][t] = fma8(dot, splat8(dw[r] * ab.d), acc[r][t]);
                off[r][t] += cw[r] * ab.sum;
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) {
            float* o = out + t * out_stride + r;
            *o = apply_epilogue(hsum8(acc[r][t]) + off[r][t], ep, r0 + r, o);
        }
}

template <class Fmt, int R>
inline void q32_rows(const uint8_t* w, size_t row_bytes, const uint8_t* act, size_t act_stride,
                     int64_t ntok, int64_t nb, float* out, size_t out_stride, const Epilogue& ep,
                     int64_t r0) {
    constexpr int T = 2;
    int64_t t = 0;
    for (; t + T <= ntok; t += T)
        q32_tile<Fmt, R, T>(w, row_bytes, act + t * act_stride, act_stride, nb,
                            out + t * out_stride, out_stride, ep, r0);
    for (; t < ntok; ++t)
        q32_tile<Fmt, R, 1>(w, row_bytes, act + t * act_stride, act_stride, nb,
                            out + t * out_stride, out_stride, ep, r0);
}

template <class Fmt>
void q32_gemm(const uint8_t* w, size_t row_bytes, int64_t nrows, const void* act,
              size_t act_stride, int64_t ntok, int64_t k, float* out, size_t out_stride,
              const Epilogue& ep) {
    const uint8_t* a = static_cast<const uint8_t*>(act);
    const int64_t nb = k / 32;
    constexpr int R = 4;
    int64_t r = 0;
    // Decode (one token) reads one row at a time: a single sequential stream per thread is what
    // the prefetcher follows best (Q8_0 decode 43.7 vs 34.7 tok/s with four interleaved rows).
    if (ntok > 1)
        for (; r + R <= nrows; r += R)
            q32_rows<Fmt, R>(w + r * row_bytes, row_bytes, a, act_stride, ntok, nb, out + r,
                             out_stride, ep, r);
    for (; r < nrows; ++r)
        q32_rows<Fmt, 1>(w + r * row_bytes, row_bytes, a, act_stride, ntok, nb, out + r,
                         out_stride, ep, r);
}

// Dequantization of the same formats: d * q + c, computed the way gguf-py does it
// ((d * q) + m for Q4_1/Q5_1, d * (q - 8) for Q4_0, ...) so results match bit for bit. The
// format files are compiled with -ffp-contract=off so no FMA merges the two roundings.
template <class Fmt>
void q32_dequant(const uint8_t* src, float* dst, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b) Fmt::dequant_block(src + b * Fmt::kBytes, dst + b * 32);
}

}  // namespace metallic::cpu::METALLIC_ISA
