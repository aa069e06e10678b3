// A small vocabulary of 8-lane float operations the format kernels are written in, compiled
// once per instruction set (the including file is built with METALLIC_ISA set to the namespace
// of that build). AVX2 maps to intrinsics; the portable build is plain loops that compilers
// vectorize (NEON on arm64, SSE2 on older x86).
//
// Everything here sits inside the ISA's namespace on purpose: an inline function compiled with
// -mavx2 must never be merged by the linker with its portable twin.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/formats/format.h"

#if defined(METALLIC_ISA_AVX2)
#include <immintrin.h>
#endif

#ifndef METALLIC_ISA
#error "METALLIC_ISA must name the instruction-set namespace"
#endif

namespace metallic::cpu::METALLIC_ISA {

// How far ahead of the block being read the block-quantized decode kernels prefetch. They do
// too much work per byte for the out-of-order window alone to hide DRAM latency; a fixed
// distance in bytes suits every row width. Measured on 2-thread decode against the previous
// "same block, 8 rows below" (8 KB to 41 KB ahead for Q8_0 rows): Q8_0 +4-8%, Q4_1 +4%;
// 512 bytes or no prefetch were slower, 2 KB about the same.
constexpr int64_t kPrefetchAhead = 1024;

inline float fp16_to_fp32(uint16_t h) {
#if defined(METALLIC_ISA_AVX2)
    return _cvtsh_ss(h);  // F16C: one instruction, exact
#endif
    // Exact for every half value including subnormals, infinities and NaN.
    uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000 | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {
        float f = static_cast<float>(mant) * (1.0f / 16777216.0f);  // mant * 2^-24
        std::memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

inline float bf16_to_fp32(uint16_t h) {
    uint32_t bits = static_cast<uint32_t>(h) << 16;
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

#if defined(METALLIC_ISA_AVX2)

struct F8 {
    __m256 v;
};
inline F8 zero8() { return {_mm256_setzero_ps()}; }
inline F8 splat8(float x) { return {_mm256_set1_ps(x)}; }
inline F8 load8(const float* p) { return {_mm256_loadu_ps(p)}; }
inline F8 load8_f16(const uint16_t* p) {
    return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
}
inline F8 load8_bf16(const uint16_t* p) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
}
inline void store8(float* p, F8 a) { _mm256_storeu_ps(p, a.v); }
inline F8 fma8(F8 a, F8 b, F8 c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline F8 add8(F8 a, F8 b) { return {_mm256_add_ps(a.v, b.v)}; }
inline F8 mul8(F8 a, F8 b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline float hsum8(F8 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Integer dot product of two 32-byte int8 blocks, returned as 8 float lanes whose sum is the
// exact result. AVX2 has no signed x signed byte multiply: make the weight unsigned with abs
// and move its sign onto the activation (vpsignb), then vpmaddubsw + vpmaddwd.
struct I8x32 {
    __m256i v;
};
inline I8x32 load_i8x32(const int8_t* p) {
    return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))};
}
inline F8 dot_i8x32(I8x32 w, I8x32 a) {
    const __m256i ax = _mm256_sign_epi8(w.v, w.v);
    const __m256i sy = _mm256_sign_epi8(a.v, w.v);
    const __m256i p16 = _mm256_maddubs_epi16(ax, sy);
    const __m256i p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
    return {_mm256_cvtepi32_ps(p32)};
}

#else  // portable

struct F8 {
    float v[8];
};
inline F8 zero8() { return F8{}; }
inline F8 splat8(float x) {
    F8 r;
    for (int i = 0; i < 8; ++i) r.v[i] = x;
    return r;
}
inline F8 load8(const float* p) {
    F8 r;
    std::memcpy(r.v, p, sizeof r.v);
    return r;
}
inline F8 load8_f16(const uint16_t* p) {
    F8 r;
    for (int i = 0; i < 8; ++i) r.v[i] = fp16_to_fp32(p[i]);
    return r;
}
inline F8 load8_bf16(const uint16_t* p) {
    F8 r;
    for (int i = 0; i < 8; ++i) r.v[i] = bf16_to_fp32(p[i]);
    return r;
}
inline void store8(float* p, F8 a) { std::memcpy(p, a.v, sizeof a.v); }
inline F8 fma8(F8 a, F8 b, F8 c) {
    for (int i = 0; i < 8; ++i) c.v[i] += a.v[i] * b.v[i];
    return c;
}
inline F8 add8(F8 a, F8 b) {
    for (int i = 0; i < 8; ++i) a.v[i] += b.v[i];
    return a;
}
inline F8 mul8(F8 a, F8 b) {
    for (int i = 0; i < 8; ++i) a.v[i] *= b.v[i];
    return a;
}
inline float hsum8(F8 a) {
    return ((a.v[0] + a.v[4]) + (a.v[1] + a.v[5])) + ((a.v[2] + a.v[6]) + (a.v[3] + a.v[7]));
}

struct I8x32 {
    int8_t v[32];
};
inline I8x32 load_i8x32(const int8_t* p) {
    I8x32 r;
    std::memcpy(r.v, p, 32);
    return r;
}
inline F8 dot_i8x32(I8x32 w, I8x32 a) {
    F8 r;
    for (int j = 0; j < 8; ++j) {
        int32_t s = 0;
        for (int i = 0; i < 4; ++i) s += int32_t(w.v[4 * j + i]) * int32_t(a.v[4 * j + i]);
        r.v[j] = static_cast<float>(s);
    }
    return r;
}

#endif

inline float apply_epilogue(float dot, const Epilogue& ep, int64_t row, const float* prev) {
    if (ep.bias) dot += ep.bias[row];
    if (ep.accumulate) dot += *prev;
    return dot;
}

}  // namespace metallic::cpu::METALLIC_ISA

namespace metallic::cpu::METALLIC_ISA {

// Round-to-nearest-even float -> half, exact for every finite input (overflow -> inf).
inline uint16_t fp32_to_fp16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000;
    x &= 0x7fffffff;
    if (x >= 0x7f800000) return static_cast<uint16_t>(sign | 0x7c00 | (x > 0x7f800000 ? 0x200 : 0));
    if (x >= 0x477ff000) return static_cast<uint16_t>(sign | 0x7c00);  // rounds past 65504
    if (x < 0x38800000) {  // subnormal half (or zero): align the mantissa by hand
        if (x < 0x33000000) return static_cast<uint16_t>(sign);
        const uint32_t e = x >> 23;
        const uint32_t m = (x & 0x7fffff) | 0x800000;
        const uint32_t shift = 126 - e;  // 14..24
        uint32_t h = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1);
        const uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) ++h;
        return static_cast<uint16_t>(sign | h);
    }
    uint32_t h = ((x - 0x38000000) >> 13);
    const uint32_t rem = x & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
    return static_cast<uint16_t>(sign | h);
}

inline void store8_f16(uint16_t* p, F8 a) {
#if defined(METALLIC_ISA_AVX2)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(a.v, _MM_FROUND_TO_NEAREST_INT));
#else
    for (int i = 0; i < 8; ++i) p[i] = fp32_to_fp16(a.v[i]);
#endif
}

}  // namespace metallic::cpu::METALLIC_ISA

namespace metallic::cpu::METALLIC_ISA {

// max |x[i]| over 32 floats.
inline float absmax32(const float* x) {
#if defined(METALLIC_ISA_AVX2)
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_andnot_ps(sign, _mm256_loadu_ps(x));
    for (int i = 8; i < 32; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
#else
    float m = 0.0f;
    for (int i = 0; i < 32; ++i) m = std::fmax(m, std::fabs(x[i]));
    return m;
#endif
}

// q[i] = round-half-even(x[i] * scale) for 32 values already known to fit in int8;
// returns the sum of the codes.
inline int32_t round_to_i8x32(const float* x, float scale, int8_t* q) {
#if defined(METALLIC_ISA_AVX2)
    const __m256 s = _mm256_set1_ps(scale);
    __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), s));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8), s));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 16), s));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 24), s));
    __m256i sum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
    // packs work within 128-bit lanes; the final permute restores element order
    __m256i p16a = _mm256_packs_epi32(i0, i1);
    __m256i p16b = _mm256_packs_epi32(i2, i3);
    __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), p8);
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    return _mm_cvtsi128_si32(s4);
#else
    int32_t sum = 0;
    for (int i = 0; i < 32; ++i) {
        const int32_t v = static_cast<int32_t>(std::nearbyint(x[i] * scale));
        q[i] = static_cast<int8_t>(v);
        sum += v;
    }
    return sum;
#endif
}

// q[i] = round-half-even(x[i] * scale) for 32 values already known to fit in int16.
inline void round_to_i16x32(const float* x, float scale, int16_t* q) {
#if defined(METALLIC_ISA_AVX2)
    const __m256 s = _mm256_set1_ps(scale);
    for (int i = 0; i < 32; i += 16) {
        __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), s));
        __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), s));
        __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xd8);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), p);
    }
#else
    for (int i = 0; i < 32; ++i) q[i] = static_cast<int16_t>(std::nearbyint(x[i] * scale));
#endif
}

}  // namespace metallic::cpu::METALLIC_ISA

namespace metallic::cpu::METALLIC_ISA {

// e^x for 8 lanes, relative error about 2 ulp over the float range; underflows to 0 below
// -87.3 and saturates to inf above 88.4. Softmax, SiLU and GELU all go through here.
inline F8 exp8(F8 x) {
#if defined(METALLIC_ISA_AVX2)
    const __m256 hi = _mm256_set1_ps(88.3762626647949f);
    const __m256 lo = _mm256_set1_ps(-87.3365478515625f);
    __m256 v = _mm256_max_ps(_mm256_min_ps(x.v, hi), lo);
    // x = n ln2 + r with |r| <= ln2/2, ln2 split in two parts for precision.
    __m256 n = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), v);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 res = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    // exact 0 far below the range, inf above it, NaN stays NaN
    res = _mm256_blendv_ps(res, _mm256_setzero_ps(), _mm256_cmp_ps(x.v, lo, _CMP_LT_OQ));
    res = _mm256_blendv_ps(res, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x.v, hi, _CMP_GT_OQ));
    res = _mm256_blendv_ps(res, x.v, _mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q));
    return {res};
#else
    F8 r;
    for (int i = 0; i < 8; ++i) r.v[i] = std::exp(x.v[i]);
    return r;
#endif
}

inline F8 max8(F8 a, F8 b) {
#if defined(METALLIC_ISA_AVX2)
    return {_mm256_max_ps(a.v, b.v)};
#else
    for (int i = 0; i < 8; ++i) a.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
    return a;
#endif
}

inline F8 div8(F8 a, F8 b) {
#if defined(METALLIC_ISA_AVX2)
    return {_mm256_div_ps(a.v, b.v)};
#else
    for (int i = 0; i < 8; ++i) a.v[i] /= b.v[i];
    return a;
#endif
}

inline float hmax8(F8 a) {
    float t[8];
    store8(t, a);
    float m = t[0];
    for (int i = 1; i < 8; ++i) m = t[i] > m ? t[i] : m;
    return m;
}

}  // namespace metallic::cpu::METALLIC_ISA

namespace metallic::cpu::METALLIC_ISA {

// Integer vocabulary of the block-quantized kernels. Weight codes are held as unsigned bytes
// (I8x32 reinterpreted) and multiplied with signed int8 activations by `maddubs`, which sums
// adjacent pairs into 16-bit lanes: with codes < 64 and |activation| <= 127 a pair never
// exceeds 2 * 63 * 127 = 16002, so the AVX2 instruction's saturation never triggers. Lane i
// of an I16x16 covers elements 2i and 2i + 1 of the 32; lanes 0..7 are elements 0..15.

// Half -> float for one scale; F16C does it in one instruction (exact, like fp16_to_fp32).
inline float half_to_float(uint16_t h) {
#if defined(METALLIC_ISA_AVX2)
    return _cvtsh_ss(h);
#else
    return fp16_to_fp32(h);
#endif
}

inline uint16_t load_u16(const void* p) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
}
inline uint32_t load_u32(const void* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

#if defined(METALLIC_ISA_AVX2)
// The 4-byte words at p, p + stride, p + 2 * stride, p + 3 * stride, inserted one by one (built
// from scalars, compilers go through the stack and stall on store forwarding).
inline __m128i load4_u32_strided(const uint8_t* p, int32_t stride) {
    __m128i x = _mm_cvtsi32_si128(int(load_u32(p)));
    x = _mm_insert_epi32(x, int(load_u32(p + stride)), 1);
    x = _mm_insert_epi32(x, int(load_u32(p + 2 * stride)), 2);
    return _mm_insert_epi32(x, int(load_u32(p + 3 * stride)), 3);
}
#endif

// The two halves at each of p, p + stride, ..., p + 7 * stride as floats (exact): two
// adjacent scale fields (Q4_1's d and m) of 8 consecutive blocks.
inline void load8_f16_pairs_strided(const uint8_t* p, int32_t stride, F8& first, F8& second) {
#if defined(METALLIC_ISA_AVX2)
    const __m256i x = _mm256_set_m128i(load4_u32_strided(p + 4 * stride, stride), load4_u32_strided(p, stride));
    // Per 128-bit lane [first x4, second x4] as u16, then regrouped to [first x8, second x8].
    const __m256i packed = _mm256_packus_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0xffff)), _mm256_srli_epi32(x, 16));
    const __m256i halves = _mm256_permute4x64_epi64(packed, 0xd8);
    first = {_mm256_cvtph_ps(_mm256_castsi256_si128(halves))};
    second = {_mm256_cvtph_ps(_mm256_extracti128_si256(halves, 1))};
#else
    for (int i = 0; i < 8; ++i) {
        first.v[i] = fp16_to_fp32(load_u16(p + i * stride));
        second.v[i] = fp16_to_fp32(load_u16(p + i * stride + 2));
    }
#endif
}

// The 8 halves at p, p + stride, ..., p + 7 * stride as floats (exact): one scale field of 8
// consecutive blocks. Reads 2 bytes at each address.
inline F8 load8_f16_strided(const uint8_t* p, int32_t stride) {
#if defined(METALLIC_ISA_AVX2)
    // Scalar loads inserted one by one: a vpgatherdd is slower than these on Zen 3.
    __m128i h = _mm_cvtsi32_si128(load_u16(p));
    h = _mm_insert_epi16(h, load_u16(p + stride), 1);
    h = _mm_insert_epi16(h, load_u16(p + 2 * stride), 2);
    h = _mm_insert_epi16(h, load_u16(p + 3 * stride), 3);
    h = _mm_insert_epi16(h, load_u16(p + 4 * stride), 4);
    h = _mm_insert_epi16(h, load_u16(p + 5 * stride), 5);
    h = _mm_insert_epi16(h, load_u16(p + 6 * stride), 6);
    h = _mm_insert_epi16(h, load_u16(p + 7 * stride), 7);
    return {_mm256_cvtph_ps(h)};
#else
    F8 r;
    for (int i = 0; i < 8; ++i) r.v[i] = fp16_to_fp32(load_u16(p + i * stride));
    return r;
#endif
}

#if defined(METALLIC_ISA_AVX2)

struct I16x16 {
    __m256i v;
};
struct I32x8 {
    __m256i v;
};

inline I8x32 load_u8x32(const uint8_t* p) {
    return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))};
}
// 16 bytes of packed nibbles -> 32 codes: the low nibbles first, then the high nibbles.
inline I8x32 load_nibbles16(const uint8_t* p) {
    // Broadcast the 16 bytes to both halves (a pure load) and shift only the upper half:
    // one ALU op fewer than shift + insert.
    const __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256i both = _mm256_srlv_epi32(x, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    return {_mm256_and_si256(both, _mm256_set1_epi8(0x0f))};
}
// (x >> S) & mask in every byte.
template <int S>
inline I8x32 bits_at(I8x32 x, uint8_t mask) {
    return {_mm256_and_si256(_mm256_srli_epi16(x.v, S), _mm256_set1_epi8(char(mask)))};
}
// x << S in every byte; the caller guarantees no byte overflows.
template <int S>
inline I8x32 shl_small(I8x32 x) {
    return {_mm256_slli_epi16(x.v, S)};
}
inline I8x32 or_i8(I8x32 a, I8x32 b) { return {_mm256_or_si256(a.v, b.v)}; }
inline I8x32 sub_i8(I8x32 a, I8x32 b) { return {_mm256_sub_epi8(a.v, b.v)}; }
inline I8x32 splat_i8(uint8_t x) { return {_mm256_set1_epi8(char(x))}; }
// Byte j = val if bit j of `bits` is set, else 0.
inline I8x32 bits_to_bytes(uint32_t bits, uint8_t val) {
    // Byte j takes byte j / 8 of `bits`, then keeps only its bit j % 8.
    const __m256i spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(int(bits)),
        _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303));
    const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201));
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    return {_mm256_and_si256(set, _mm256_set1_epi8(char(val)))};
}
inline I16x16 maddubs(I8x32 u, I8x32 s) { return {_mm256_maddubs_epi16(u.v, s.v)}; }
inline I32x8 madd16(I16x16 a, I16x16 b) { return {_mm256_madd_epi16(a.v, b.v)}; }
inline I32x8 sum_pairs16(I16x16 a) { return {_mm256_madd_epi16(a.v, _mm256_set1_epi16(1))}; }
inline I32x8 zero_i32() { return {_mm256_setzero_si256()}; }
inline I32x8 add_i32(I32x8 a, I32x8 b) { return {_mm256_add_epi32(a.v, b.v)}; }
inline I16x16 add_i16(I16x16 a, I16x16 b) { return {_mm256_add_epi16(a.v, b.v)}; }
inline F8 to_f8(I32x8 a) { return {_mm256_cvtepi32_ps(a.v)}; }
inline I16x16 load_i16x16(const int16_t* p) {
    return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))};
}
// 16 signed bytes -> 16 int16 lanes.
inline I16x16 widen_i8x16(const int8_t* p) {
    return {_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
}
// 8 unsigned bytes (little-endian in `b`) -> int16 lanes 0..7, repeated in lanes 8..15.
inline I16x16 widen_u8x8_twice(uint64_t b) {
    return {_mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(int64_t(b))))};
}
// 8 signed bytes -> int16 lanes 0..7, repeated in lanes 8..15.
inline I16x16 widen_i8x8_twice(const int8_t* p) {
    return {_mm256_broadcastsi128_si256(
        _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))))};
}
// 8 unsigned bytes -> int16 lanes 2j and 2j + 1 = byte j: per-32 weights over per-16 sums.
inline I16x16 widen_u8x8_pairs(uint64_t b) {
    const __m128i x = _mm_cvtsi64_si128(int64_t(b));
    return {_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(x, x))};
}
// Every lane = lane j (< 8) of a widen_*_twice vector.
inline I16x16 splat_lane(I16x16 v, int j) {
    return {_mm256_shuffle_epi8(v.v, _mm256_set1_epi16(int16_t((2 * j) | ((2 * j + 1) << 8))))};
}
// Lanes 0..7 = lane j, lanes 8..15 = lane j + 1 (j even, < 8) of a widen_*_twice vector: the
// scales of two consecutive 16-element sub-blocks laid over one 32-element product.
inline I16x16 splat_lane_pair(I16x16 v, int j) {
    const __m128i lo = _mm_set1_epi16(int16_t((2 * j) | ((2 * j + 1) << 8)));
    const __m128i hi = _mm_set1_epi16(int16_t((2 * j + 2) | ((2 * j + 3) << 8)));
    return {_mm256_shuffle_epi8(v.v, _mm256_set_m128i(hi, lo))};
}

#else  // portable

struct I16x16 {
    int16_t v[16];
};
struct I32x8 {
    int32_t v[8];
};

inline I8x32 load_u8x32(const uint8_t* p) {
    I8x32 r;
    std::memcpy(r.v, p, 32);
    return r;
}
inline I8x32 load_nibbles16(const uint8_t* p) {
    I8x32 r;
    for (int i = 0; i < 16; ++i) {
        r.v[i] = int8_t(p[i] & 0x0f);
        r.v[i + 16] = int8_t(p[i] >> 4);
    }
    return r;
}
template <int S>
inline I8x32 bits_at(I8x32 x, uint8_t mask) {
    for (int i = 0; i < 32; ++i) x.v[i] = int8_t((uint8_t(x.v[i]) >> S) & mask);
    return x;
}
template <int S>
inline I8x32 shl_small(I8x32 x) {
    for (int i = 0; i < 32; ++i) x.v[i] = int8_t(uint8_t(x.v[i]) << S);
    return x;
}
inline I8x32 or_i8(I8x32 a, I8x32 b) {
    for (int i = 0; i < 32; ++i) a.v[i] = int8_t(a.v[i] | b.v[i]);
    return a;
}
inline I8x32 sub_i8(I8x32 a, I8x32 b) {
    for (int i = 0; i < 32; ++i) a.v[i] = int8_t(a.v[i] - b.v[i]);
    return a;
}
inline I8x32 splat_i8(uint8_t x) {
    I8x32 r;
    std::memset(r.v, x, 32);
    return r;
}
inline I8x32 bits_to_bytes(uint32_t bits, uint8_t val) {
    I8x32 r;
    for (int i = 0; i < 32; ++i) r.v[i] = int8_t((bits >> i) & 1 ? val : 0);
    return r;
}
inline I16x16 maddubs(I8x32 u, I8x32 s) {
    I16x16 r;
    for (int i = 0; i < 16; ++i) {
        const int32_t p = int32_t(uint8_t(u.v[2 * i])) * s.v[2 * i] +
                          int32_t(uint8_t(u.v[2 * i + 1])) * s.v[2 * i + 1];
        r.v[i] = int16_t(p < -32768 ? -32768 : p > 32767 ? 32767 : p);  // saturates like AVX2
    }
    return r;
}
inline I32x8 madd16(I16x16 a, I16x16 b) {
    I32x8 r;
    for (int i = 0; i < 8; ++i)
        r.v[i] = int32_t(a.v[2 * i]) * b.v[2 * i] + int32_t(a.v[2 * i + 1]) * b.v[2 * i + 1];
    return r;
}
inline I32x8 sum_pairs16(I16x16 a) {
    I32x8 r;
    for (int i = 0; i < 8; ++i) r.v[i] = int32_t(a.v[2 * i]) + a.v[2 * i + 1];
    return r;
}
inline I32x8 zero_i32() { return I32x8{}; }
inline I32x8 add_i32(I32x8 a, I32x8 b) {
    for (int i = 0; i < 8; ++i) a.v[i] += b.v[i];
    return a;
}
inline I16x16 add_i16(I16x16 a, I16x16 b) {
    for (int i = 0; i < 16; ++i) a.v[i] = int16_t(a.v[i] + b.v[i]);
    return a;
}
inline F8 to_f8(I32x8 a) {
    F8 r;
    for (int i = 0; i < 8; ++i) r.v[i] = static_cast<float>(a.v[i]);
    return r;
}
inline I16x16 load_i16x16(const int16_t* p) {
    I16x16 r;
    std::memcpy(r.v, p, 32);
    return r;
}
inline I16x16 widen_i8x16(const int8_t* p) {
    I16x16 r;
    for (int i = 0; i < 16; ++i) r.v[i] = p[i];
    return r;
}
inline I16x16 widen_u8x8_twice(uint64_t b) {
    I16x16 r;
    for (int i = 0; i < 8; ++i) r.v[i] = r.v[i + 8] = int16_t((b >> (8 * i)) & 0xff);
    return r;
}
inline I16x16 widen_i8x8_twice(const int8_t* p) {
    I16x16 r;
    for (int i = 0; i < 8; ++i) r.v[i] = r.v[i + 8] = p[i];
    return r;
}
inline I16x16 widen_u8x8_pairs(uint64_t b) {
    I16x16 r;
    for (int i = 0; i < 8; ++i) r.v[2 * i] = r.v[2 * i + 1] = int16_t((b >> (8 * i)) & 0xff);
    return r;
}
inline I16x16 splat_lane(I16x16 v, int j) {
    I16x16 r;
    for (int i = 0; i < 16; ++i) r.v[i] = v.v[j];
    return r;
}
inline I16x16 splat_lane_pair(I16x16 v, int j) {
    I16x16 r;
    for (int i = 0; i < 8; ++i) {
        r.v[i] = v.v[j];
        r.v[i + 8] = v.v[j + 1];
    }
    return r;
}

#endif

}  // namespace metallic::cpu::METALLIC_ISA

namespace metallic::cpu::METALLIC_ISA {

// dst[j * dst_stride + i] = src[i * src_stride + j] for an 8 x 8 block of floats.
inline void transpose8x8(const float* src, size_t src_stride, float* dst, size_t dst_stride) {
#if defined(METALLIC_ISA_AVX2)
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(dst + i * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(dst + (i + 4) * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
    }
#else
    for (int i = 0; i < 8; ++i)
        for (int j = 0; j < 8; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
#endif
}

}  // namespace metallic::cpu::METALLIC_ISA
