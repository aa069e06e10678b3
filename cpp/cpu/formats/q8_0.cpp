// Q8_0: blocks of 32 int8 codes with one half-precision scale (34 bytes). The dot product runs
// on int16 activation blocks (see format.h for why not int8): 32 integer multiply-adds per
// block, one float FMA per block; the codes' sign extension and the scale's conversion are
// done once per block for a group of tokens (decode_tokens.h).
#include <algorithm>

#include "cpu/formats/blocks.h"
#include "cpu/formats/decode_tokens.h"
#include "cpu/formats/simd.h"

namespace metallic::cpu::METALLIC_ISA {
namespace {

constexpr int64_t kBlockBytes = sizeof(BlockQ8_0);

inline float block_scale(const uint8_t* blk) { return half_to_float(load_u16(blk)); }

// One weight block's 32 codes widened to int16 once, for every token of a group.
struct Widened {
    I16x16 lo, hi;
};
inline Widened widen_block(const uint8_t* blk) {
    const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
    return {widen_i8x16(q), widen_i8x16(q + 16)};
}

// acc + the 8-lane partial dot of a widened weight block with activation codes q, times the
// block's scale product s (weight scale x activation scale).
inline F8 add_block(F8 acc, const Widened& w, const int16_t* q, const float& s) {
    const I32x8 dot = add_i32(madd16(w.lo, load_i16x16(q)), madd16(w.hi, load_i16x16(q + 16)));
    return fma8(to_f8(dot), splat8(s), acc);
}

void dequant(const uint8_t* src, float* dst, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b) {
        const uint8_t* blk = src + b * kBlockBytes;
        const float d = block_scale(blk);
        const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
        for (int i = 0; i < 32; ++i) dst[b * 32 + i] = d * static_cast<float>(q[i]);
    }
}

// One row at a time (see q32_gemv.h), in spans of up to kSpan blocks with two passes each: the
// first multiplies 8 blocks' weight scales with each token's activation scales as vectors into
// a small array, the second runs the dot products, each block widened once for the G tokens of
// a group and each product reading its scale with a broadcast load. Per block and token that
// leaves 2 multiply-adds, an add, a conversion and an FMA: a scalar product and a register
// broadcast there cost a decode token 25% more.
template <int G>
void rows(const uint8_t* w, size_t row_bytes, int64_t nrows, int64_t k, const TokenGroup& x, const Epilogue& ep) {
    constexpr int64_t kSpan = 64;
    const int64_t nb = k / 32;
    const int16_t* aq[G];
    const float* ad[G];
    for (int g = 0; g < G; ++g) {
        const I16Row a(static_cast<const uint8_t*>(x.act[g]), k);
        aq[g] = a.q;
        ad[g] = a.d;
    }
    alignas(32) float scale[G][kSpan];
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t* row = w + r * row_bytes;
        // Two sums per token: one chain of FMAs would cap a block at the FMA latency (4 cycles).
        F8 acc0[G], acc1[G];
        for (int g = 0; g < G; ++g) acc0[g] = acc1[g] = zero8();
        for (int64_t s0 = 0; s0 < nb; s0 += kSpan) {
            const int64_t span = std::min(kSpan, nb - s0), span8 = span / 8 * 8;
            const uint8_t* blk = row + s0 * kBlockBytes;
            int64_t b = 0;
            for (; b < span8; b += 8) {
                const F8 d = load8_f16_strided(blk + b * kBlockBytes, int32_t(kBlockBytes));
                for (int g = 0; g < G; ++g) store8(scale[g] + b, mul8(d, load8(ad[g] + s0 + b)));
            }
            for (; b < span; ++b) {
                const float d = block_scale(blk + b * kBlockBytes);
                for (int g = 0; g < G; ++g) scale[g][b] = d * ad[g][s0 + b];
            }
            for (b = 0; b + 2 <= span; b += 2) {
                const uint8_t* p = blk + b * kBlockBytes;
                __builtin_prefetch(p + kPrefetchAhead);
                __builtin_prefetch(p + kPrefetchAhead + 64);
                const Widened w0 = widen_block(p), w1 = widen_block(p + kBlockBytes);
                for (int g = 0; g < G; ++g) {
                    const int16_t* q = aq[g] + (s0 + b) * 32;
                    acc0[g] = add_block(acc0[g], w0, q, scale[g][b]);
                    acc1[g] = add_block(acc1[g], w1, q + 32, scale[g][b + 1]);
                }
            }
            if (b < span) {
                const Widened w0 = widen_block(blk + b * kBlockBytes);
                for (int g = 0; g < G; ++g) acc0[g] = add_block(acc0[g], w0, aq[g] + (s0 + b) * 32, scale[g][b]);
            }
        }
        for (int g = 0; g < G; ++g)
            x.out[g][r] = apply_epilogue(hsum8(add8(acc0[g], acc1[g])), ep, r, x.out[g] + r);
    }
}

void gemv(const uint8_t* w, size_t row_bytes, int64_t nrows, int64_t k, const DecodeTokens& x, const Epilogue& ep) {
    for_token_groups<4>(w, row_bytes, nrows, x, ep,
                        [&](auto G, const uint8_t* strip, int64_t nr, const TokenGroup& group, const Epilogue& e) {
                            rows<decltype(G)::value>(strip, row_bytes, nr, k, group, e);
                        });
}

}  // namespace

extern const FormatKernels kQ8_0 = format_kernels(GgmlType::Q8_0, ActKind::I16, dequant, gemv);

}  // namespace metallic::cpu::METALLIC_ISA
