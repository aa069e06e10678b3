// The one-token kernel shared by the 32-element formats Q4_0, Q4_1, Q5_0 and Q5_1 on int8
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

// One row at a time: a single sequential stream per thread is what the prefetcher follows
// best (Q8_0 decode 43.7 vs 34.7 tok/s with four interleaved rows).
template <class Fmt>
void q32_gemv(const uint8_t* w, size_t row_bytes, int64_t nrows, const void* act, int64_t k,
              float* out, const Epilogue& ep) {
    const BlockQ8* a = static_cast<const BlockQ8*>(act);
    const int64_t nb = k / 32;
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t* row = w + r * row_bytes;
        F8 acc = zero8();
        float off = 0.0f;
        for (int64_t b = 0; b < nb; ++b) {
            const uint8_t* blk = row + b * Fmt::kBytes;
            __builtin_prefetch(blk + kPrefetchAhead);
            const float d = Fmt::scale(blk);
            const F8 dot = to_f8(sum_pairs16(maddubs(Fmt::codes(blk), load_i8x32(a[b].q))));
            acc = fma8(dot, splat8(d * a[b].d), acc);
            off += Fmt::offset(blk, d) * a[b].sum;
        }
        out[r] = apply_epilogue(hsum8(acc) + off, ep, r, out + r);
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
