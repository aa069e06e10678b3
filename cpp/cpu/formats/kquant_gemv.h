// The one-token kernel shared by the K-quants (Q2_K .. Q6_K) on 256-element int8 activation
// blocks (ActKind::Q8K).
//
// A K-quant super-block holds 256 codes in sub-blocks of 16 or 32 with small integer scales
// (and mins or a fixed offset) under one or two half factors. Against an activation block
// (da, qa, bsums) the dot product is
//     d da * sum_j sc_j dot_j(q, qa)  +  (offset factor) da * sum_j m_j bsum_j
// Both sums are exact integer work (vpmaddubsw for dot_j, vpmaddwd to apply sc_j or m_j), so
// a super-block costs two int->float conversions and two FMAs.
//
// A format supplies kBytes, dequant_block(block, 256 floats) and
//   dot<G>(block, a, acc): acc[g] += the 8-lane partial dot of the block with activation block
//   a[g], for G tokens, decoding the block once.
#pragma once

#include "cpu/formats/blocks.h"
#include "cpu/formats/decode_tokens.h"
#include "cpu/formats/simd.h"

namespace metallic::cpu::METALLIC_ISA {

// One row at a time, a single linear stream per thread (see q32_gemv.h); the format decodes each
// block once for the G tokens of a group.
template <class Fmt, int G>
void kquant_rows(const uint8_t* w, size_t row_bytes, int64_t nrows, int64_t k, const TokenGroup& x,
                 const Epilogue& ep) {
    const BlockQ8K* a[G];
    for (int g = 0; g < G; ++g) a[g] = static_cast<const BlockQ8K*>(x.act[g]);
    const int64_t nsb = k / 256;
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t* row = w + r * row_bytes;
        F8 acc[G];
        for (int g = 0; g < G; ++g) acc[g] = zero8();
        for (int64_t b = 0; b < nsb; ++b) {
            const uint8_t* blk = row + b * Fmt::kBytes;
            for (int64_t line = 0; line < Fmt::kBytes; line += 64) __builtin_prefetch(blk + kPrefetchAhead + line);
            const BlockQ8K* ab[G];
            for (int g = 0; g < G; ++g) ab[g] = a[g] + b;
            Fmt::template dot<G>(blk, ab, acc);
        }
        for (int g = 0; g < G; ++g) x.out[g][r] = apply_epilogue(hsum8(acc[g]), ep, r, x.out[g] + r);
    }
}

template <class Fmt>
void kquant_gemv(const uint8_t* w, size_t row_bytes, int64_t nrows, int64_t k, const DecodeTokens& x,
                 const Epilogue& ep) {
    for_token_groups<4>(w, row_bytes, nrows, x, ep,
                        [&](auto G, const uint8_t* strip, int64_t nr, const TokenGroup& group, const Epilogue& e) {
                            kquant_rows<Fmt, decltype(G)::value>(strip, row_bytes, nr, k, group, e);
                        });
}

template <class Fmt>
void kquant_dequant(const uint8_t* src, float* dst, int64_t n) {
    for (int64_t b = 0; b < n / 256; ++b) Fmt::dequant_block(src + b * Fmt::kBytes, dst + b * 256);
}

// acc + to_float(dots) * (d * da) + to_float(offs) * (doff * da) for the usual two terms.
inline F8 kquant_combine(F8 acc, I32x8 dots, float d, I32x8 offs, float doff, float da) {
    acc = fma8(to_f8(dots), splat8(d * da), acc);
    return fma8(to_f8(offs), splat8(doff * da), acc);
}

// The 6-bit scales and mins of Q4_K/Q5_K, packed in 12 bytes: bytes 0..3 hold scales 0..3
// (low 6 bits) and the top bits of scales 4..7, bytes 4..7 the same for mins, bytes 8..11 the
// low 4 bits of scales 4..7 (low nibble) and mins 4..7 (high nibble). Unpacked four at a time
// in 32-bit words; returns 8 scale bytes and 8 min bytes (byte j = sub-block j).
inline void unpack_scales_k4(const uint8_t* s, uint64_t* sc, uint64_t* mn) {
    const uint32_t a = load_u32(s), b = load_u32(s + 4), c = load_u32(s + 8);
    const uint32_t sc_lo = a & 0x3f3f3f3f;
    const uint32_t mn_lo = b & 0x3f3f3f3f;
    const uint32_t sc_hi = (c & 0x0f0f0f0f) | ((a >> 2) & 0x30303030);
    const uint32_t mn_hi = ((c >> 4) & 0x0f0f0f0f) | ((b >> 2) & 0x30303030);
    *sc = sc_lo | uint64_t(sc_hi) << 32;
    *mn = mn_lo | uint64_t(mn_hi) << 32;
}

// The dot of Q4_K and Q5_K, which differ only in their codes: 8 sub-blocks of 32 under 6-bit
// scales and mins (packed in scales12) and the half factors d and dmin. For chunk c = 0..3 (64
// elements, sub-blocks 2c and 2c + 1), codes(raw, lo, hi) turns qs's 32 bytes of nibbles `raw`
// into the unsigned codes of the two sub-blocks; chunks come in order.
template <int G, class Codes>
inline void k4_dot(uint16_t d16, uint16_t dmin16, const uint8_t* scales12, const uint8_t* qs, Codes&& codes,
                   const BlockQ8K* const* a, F8* acc) {
    uint64_t sc, mn;
    unpack_scales_k4(scales12, &sc, &mn);
    const I16x16 scales = widen_u8x8_twice(sc);
    I32x8 dots[G];
    for (int g = 0; g < G; ++g) dots[g] = zero_i32();
    for (int c = 0; c < 4; ++c) {
        I8x32 lo, hi;
        codes(load_u8x32(qs + 32 * c), lo, hi);
        const I16x16 s_lo = splat_lane(scales, 2 * c), s_hi = splat_lane(scales, 2 * c + 1);
        for (int g = 0; g < G; ++g) {
            const I32x8 x = madd16(maddubs(lo, load_i8x32(a[g]->q + 64 * c)), s_lo);
            const I32x8 y = madd16(maddubs(hi, load_i8x32(a[g]->q + 64 * c + 32)), s_hi);
            dots[g] = add_i32(dots[g], add_i32(x, y));
        }
    }
    const I16x16 mins = widen_u8x8_pairs(mn);
    const float d = half_to_float(d16), dmin = half_to_float(dmin16);
    for (int g = 0; g < G; ++g) {
        const I32x8 offs = madd16(load_i16x16(a[g]->bsums), mins);
        acc[g] = kquant_combine(acc[g], dots[g], d, offs, -dmin, a[g]->d);
    }
}

}  // namespace metallic::cpu::METALLIC_ISA
