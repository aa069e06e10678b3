// Weight formats as the kernels read them: one struct per GGML type with
//   BLOCK          elements of one unit of work: what a lane of a matvec takes at a time (one
//                  16-byte load for the float formats, one 32-element block or sub-block for
//                  the quantized ones)
//   VEC            1 if dot() uses vector loads of W that need 16-byte aligned rows
//   get(row, i)    element i of a row, as float
//   dot(row, b, x) dot product of unit b of the row with the unit's inputs x.s(0 .. BLOCK - 1)
//                  (x.v4(i): four of them at once, 16-byte aligned); x is an input view below
// Kernels template over these (embed, matvec, gemm), so a new format is one struct here plus a
// line of instantiations per kernel. Block layouts come from cpp/cpu/formats/blocks.h, the
// same header the CPU kernels use; scales are raw half bits there, read with as_type. BYTES is
// the size of that layout, which the host build checks against the GGML type table
// (cpp/engine/ggml_types.h): no block size is written down here.
#pragma once

#include <metal_stdlib>
#include "../cpp/cpu/formats/blocks.h"

using namespace metal;

inline float half_bits(ushort bits) { return float(as_type<half>(bits)); }

// Input views: where a matvec reads the vector it multiplies. at(i) moves the view to element i.
//   x_plain    x itself
//   x_normed   x * w, for RMSNorm fused into the matvec: the norm's 1/rms factor is a scalar, so
//              it is applied to the finished dot products instead of to every element
struct x_plain {
    device const float* x;
    inline float s(int i) const { return x[i]; }
    inline float4 v4(int i) const { return *(device const float4*)(x + i); }
    inline x_plain at(int i) const { return x_plain{x + i}; }
};
struct x_normed {
    device const float* x;
    device const float* w;
    inline float s(int i) const { return x[i] * w[i]; }
    inline float4 v4(int i) const { return *(device const float4*)(x + i) * *(device const float4*)(w + i); }
    inline x_normed at(int i) const { return x_normed{x + i, w + i}; }
};

struct fmt_f32 {
    enum { BLOCK = 4, VEC = 1 };
    static inline float get(device const uchar* row, int i) { return ((device const float*)row)[i]; }
    template <typename X> static inline float dot(device const uchar* row, int b, thread const X& x) {
        return metal::dot(((device const float4*)row)[b], x.v4(0));
    }
};

struct fmt_f16 {
    enum { BLOCK = 8, VEC = 1 };
    static inline float get(device const uchar* row, int i) { return float(((device const half*)row)[i]); }
    template <typename X> static inline float dot(device const uchar* row, int b, thread const X& x) {
        device const uchar* p = row + 16 * b;
        const float4 w0 = float4(*(device const half4*)p);
        const float4 w1 = float4(*(device const half4*)(p + 8));
        return metal::dot(w0, x.v4(0)) + metal::dot(w1, x.v4(4));
    }
};

// bfloat16 is the high half of a float32: widen by shifting the bits (MSL 3.0 has no bfloat).
inline float bf16_bits(ushort bits) { return as_type<float>(uint(bits) << 16); }
inline float4 bf16x4(ushort4 b) { return float4(bf16_bits(b.x), bf16_bits(b.y), bf16_bits(b.z), bf16_bits(b.w)); }

struct fmt_bf16 {
    enum { BLOCK = 8, VEC = 1 };
    static inline float get(device const uchar* row, int i) { return bf16_bits(((device const ushort*)row)[i]); }
    template <typename X> static inline float dot(device const uchar* row, int b, thread const X& x) {
        device const uchar* p = row + 16 * b;
        const float4 w0 = bf16x4(*(device const ushort4*)p);
        const float4 w1 = bf16x4(*(device const ushort4*)(p + 8));
        return metal::dot(w0, x.v4(0)) + metal::dot(w1, x.v4(4));
    }
};

// d * q, q int8.
struct fmt_q8_0 {
    enum { BLOCK = 32, BYTES = sizeof(metallic::BlockQ8_0), VEC = 0 };
    static inline float get_in_block(device const uchar* p, int j) {
        device const metallic::BlockQ8_0* b = (device const metallic::BlockQ8_0*)p;
        return half_bits(b->d) * float(b->qs[j]);
    }
    template <typename X> static inline float dot_block(device const uchar* p, thread const X& x) {
        device const metallic::BlockQ8_0* b = (device const metallic::BlockQ8_0*)p;
        float s = 0.0f;
        for (int i = 0; i < 32; i += 4) {
            const float4 q = float4(float(b->qs[i]), float(b->qs[i + 1]), float(b->qs[i + 2]), float(b->qs[i + 3]));
            s += metal::dot(q, x.v4(i));
        }
        return half_bits(b->d) * s;
    }
    static inline float get(device const uchar* row, int i) { return get_in_block(row + (i / 32) * BYTES, i % 32); }
    template <typename X> static inline float dot(device const uchar* row, int b, thread const X& x) {
        return dot_block(row + b * BYTES, x);
    }
};

// The 32-element 4- and 5-bit formats: element j < 16 in the low nibble of qs[j], element
// j + 16 in the high nibble; the 5-bit ones take bit 4 of element j from bit j of qh.
inline int nibble(device const uchar* qs, int j) { return j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4); }
inline uint qh_bits(device const uchar* qh) {
    return uint(qh[0]) | (uint(qh[1]) << 8) | (uint(qh[2]) << 16) | (uint(qh[3]) << 24);
}

// Sum over the block of q[j] * x.s(j) and of x.s(j), for the formats of the form d * q + m.
template <typename Q, typename X>
inline float2 q32_dot_sum(device const uchar* qs, uint qh, thread const X& x) {
    float s = 0.0f, sx = 0.0f;
    for (int j = 0; j < 16; ++j) {
        const float lo = float(Q::value(qs[j] & 15, qh, j));
        const float hi = float(Q::value(qs[j] >> 4, qh, j + 16));
        s += lo * x.s(j) + hi * x.s(j + 16);
        sx += x.s(j) + x.s(j + 16);
    }
    return float2(s, sx);
}

struct q4_values {
    static inline int value(int nib, uint qh, int j) { return nib; }
};
struct q5_values {
    static inline int value(int nib, uint qh, int j) { return nib | int(((qh >> j) & 1) << 4); }
};

// d * (q - 8)
struct fmt_q4_0 {
    enum { BLOCK = 32, BYTES = sizeof(metallic::BlockQ4_0), VEC = 0 };
    static inline float get_in_block(device const uchar* p, int j) {
        device const metallic::BlockQ4_0* b = (device const metallic::BlockQ4_0*)p;
        return half_bits(b->d) * float(nibble(b->qs, j) - 8);
    }
    template <typename X> static inline float dot_block(device const uchar* p, thread const X& x) {
        device const metallic::BlockQ4_0* b = (device const metallic::BlockQ4_0*)p;
        const float2 r = q32_dot_sum<q4_values, X>(b->qs, 0u, x);
        return half_bits(b->d) * (r.x - 8.0f * r.y);
    }
    static inline float get(device const uchar* row, int i) { return get_in_block(row + (i / 32) * BYTES, i % 32); }
    template <typename X> static inline float dot(device const uchar* row, int b, thread const X& x) {
        return dot_block(row + b * BYTES, x);
    }
};

// d * q + m
struct fmt_q4_1 {
    enum { BLOCK = 32, BYTES = sizeof(metallic::BlockQ4_1), VEC = 0 };
    static inline float get_in_block(device const uchar* p, int j) {
        device const metallic::BlockQ4_1* b = (device const metallic::BlockQ4_1*)p;
        return half_bits(b->d) * float(nibble(b->qs, j)) + half_bits(b->m);
    }
    template <typename X> static inline float dot_block(device const uchar* p, thread const X& x) {
        device const metallic::BlockQ4_1* b = (device const metallic::BlockQ4_1*)p;
        const float2 r = q32_dot_sum<q4_values, X>(b->qs, 0u, x);
        return half_bits(b->d) * r.x + half_bits(b->m) * r.y;
    }
    static inline float get(device const uchar* row, int i) { return get_in_block(row + (i / 32) * BYTES, i % 32); }
    template <typename X> static inline float dot(device const uchar* row, int b, thread const X& x) {
        return dot_block(row + b * BYTES, x);
    }
};

// d * (q - 16)
struct fmt_q5_0 {
    enum { BLOCK = 32, BYTES = sizeof(metallic::BlockQ5_0), VEC = 0 };
    static inline float get_in_block(device const uchar* p, int j) {
        device const metallic::BlockQ5_0* b = (device const metallic::BlockQ5_0*)p;
        return half_bits(b->d) * float(q5_values::value(nibble(b->qs, j), qh_bits(b->qh), j) - 16);
    }
    template <typename X> static inline float dot_block(device const uchar* p, thread const X& x) {
        device const metallic::BlockQ5_0* b = (device const metallic::BlockQ5_0*)p;
        const float2 r = q32_dot_sum<q5_values, X>(b->qs, qh_bits(b->qh), x);
        return half_bits(b->d) * (r.x - 16.0f * r.y);
    }
    static inline float get(device const uchar* row, int i) { return get_in_block(row + (i / 32) * BYTES, i % 32); }
    template <typename X> static inline float dot(device const uchar* row, int b, thread const X& x) {
        return dot_block(row + b * BYTES, x);
    }
};

// d * q + m
struct fmt_q5_1 {
    enum { BLOCK = 32, BYTES = sizeof(metallic::BlockQ5_1), VEC = 0 };
    static inline float get_in_block(device const uchar* p, int j) {
        device const metallic::BlockQ5_1* b = (device const metallic::BlockQ5_1*)p;
        return half_bits(b->d) * float(q5_values::value(nibble(b->qs, j), qh_bits(b->qh), j)) + half_bits(b->m);
    }
    template <typename X> static inline float dot_block(device const uchar* p, thread const X& x) {
        device const metallic::BlockQ5_1* b = (device const metallic::BlockQ5_1*)p;
        const float2 r = q32_dot_sum<q5_values, X>(b->qs, qh_bits(b->qh), x);
        return half_bits(b->d) * r.x + half_bits(b->m) * r.y;
    }
    static inline float get(device const uchar* row, int i) { return get_in_block(row + (i / 32) * BYTES, i % 32); }
    template <typename X> static inline float dot(device const uchar* row, int b, thread const X& x) {
        return dot_block(row + b * BYTES, x);
    }
};


// ---- K-quants: super-blocks of 256 elements; a unit is a 32-element sub-block (8 per block),
// so the lanes of a matvec share a super-block instead of one lane taking all of it.

// Scale and min of sub-block j of Q4_K/Q5_K: 6 bits each, packed in 12 bytes (GGML's
// get_scale_min_k4).
inline int2 k4_scale_min(device const uchar* s, int j) {
    if (j < 4) return int2(int(s[j] & 63), int(s[j + 4] & 63));
    return int2(int((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4)), int((s[j + 4] >> 4) | ((s[j] >> 6) << 4)));
}

// (d * sc) * q - dmin * m, q in 0..15: sub-block 2c in the low nibbles of qs[32c ..], 2c + 1 in
// the high nibbles.
struct fmt_q4_k {
    enum { BLOCK = 32, BYTES = sizeof(metallic::BlockQ4_K), VEC = 0 };
    static inline float get(device const uchar* row, int i) {
        device const metallic::BlockQ4_K* b = (device const metallic::BlockQ4_K*)(row + (i / 256) * BYTES);
        const int e = i % 256, s = e / 32, l = e % 32;
        const int2 sm = k4_scale_min(b->scales, s);
        const int q = (s & 1) ? (b->qs[32 * (s / 2) + l] >> 4) : (b->qs[32 * (s / 2) + l] & 15);
        return half_bits(b->d) * float(sm.x) * float(q) - half_bits(b->dmin) * float(sm.y);
    }
    template <typename X> static inline float dot(device const uchar* row, int u, thread const X& x) {
        device const metallic::BlockQ4_K* b = (device const metallic::BlockQ4_K*)(row + (u / 8) * BYTES);
        const int s = u % 8;
        const int2 sm = k4_scale_min(b->scales, s);
        device const uchar* qs = b->qs + 32 * (s / 2);
        const int shift = (s & 1) * 4;
        float sq = 0.0f, sx = 0.0f;
        for (int l = 0; l < 32; ++l) {
            sq += float((qs[l] >> shift) & 15) * x.s(l);
            sx += x.s(l);
        }
        return half_bits(b->d) * float(sm.x) * sq - half_bits(b->dmin) * float(sm.y) * sx;
    }
};

// Q4_K plus bit 4 of element l of sub-block s in bit s of qh[l].
struct fmt_q5_k {
    enum { BLOCK = 32, BYTES = sizeof(metallic::BlockQ5_K), VEC = 0 };
    static inline float get(device const uchar* row, int i) {
        device const metallic::BlockQ5_K* b = (device const metallic::BlockQ5_K*)(row + (i / 256) * BYTES);
        const int e = i % 256, s = e / 32, l = e % 32;
        const int2 sm = k4_scale_min(b->scales, s);
        const int lo = (s & 1) ? (b->qs[32 * (s / 2) + l] >> 4) : (b->qs[32 * (s / 2) + l] & 15);
        const int q = lo | (((b->qh[l] >> s) & 1) << 4);
        return half_bits(b->d) * float(sm.x) * float(q) - half_bits(b->dmin) * float(sm.y);
    }
    template <typename X> static inline float dot(device const uchar* row, int u, thread const X& x) {
        device const metallic::BlockQ5_K* b = (device const metallic::BlockQ5_K*)(row + (u / 8) * BYTES);
        const int s = u % 8;
        const int2 sm = k4_scale_min(b->scales, s);
        device const uchar* qs = b->qs + 32 * (s / 2);
        const int shift = (s & 1) * 4;
        float sq = 0.0f, sx = 0.0f;
        for (int l = 0; l < 32; ++l) {
            const int q = ((qs[l] >> shift) & 15) | (((b->qh[l] >> s) & 1) << 4);
            sq += float(q) * x.s(l);
            sx += x.s(l);
        }
        return half_bits(b->d) * float(sm.x) * sq - half_bits(b->dmin) * float(sm.y) * sx;
    }
};

// (d * scales[i / 16]) * (q - 32), q in 0..63: in half h of 128 elements, element 32k + l takes
// its low 4 bits from ql[64h + 32(k & 1) + l] (low nibble for k < 2, else high) and bits 4..5
// from qh[32h + l] >> 2k.
inline int q6_k_value(device const metallic::BlockQ6_K* b, int e) {
    const int h = e / 128, k = (e % 128) / 32, l = e % 32;
    const uchar lq = b->ql[64 * h + 32 * (k & 1) + l];
    const int lo = k < 2 ? (lq & 15) : (lq >> 4);
    return (lo | (((b->qh[32 * h + l] >> (2 * k)) & 3) << 4)) - 32;
}

struct fmt_q6_k {
    enum { BLOCK = 32, BYTES = sizeof(metallic::BlockQ6_K), VEC = 0 };
    static inline float get(device const uchar* row, int i) {
        device const metallic::BlockQ6_K* b = (device const metallic::BlockQ6_K*)(row + (i / 256) * BYTES);
        const int e = i % 256;
        return half_bits(b->d) * float(b->scales[e / 16]) * float(q6_k_value(b, e));
    }
    template <typename X> static inline float dot(device const uchar* row, int u, thread const X& x) {
        device const metallic::BlockQ6_K* b = (device const metallic::BlockQ6_K*)(row + (u / 8) * BYTES);
        const int e0 = (u % 8) * 32;
        float s0 = 0.0f, s1 = 0.0f;  // the unit's two 16-element scale groups
        for (int l = 0; l < 16; ++l) {
            s0 += float(q6_k_value(b, e0 + l)) * x.s(l);
            s1 += float(q6_k_value(b, e0 + 16 + l)) * x.s(16 + l);
        }
        return half_bits(b->d) * (float(b->scales[e0 / 16]) * s0 + float(b->scales[e0 / 16 + 1]) * s1);
    }
};

// (d * (scales[i] & 15)) * q - dmin * (scales[i] >> 4) for sub-block i = e / 16 of 16 elements,
// q in 0..3: element e = 128h + 32k + l is bits 2k..2k + 1 of qs[32h + l].
struct fmt_q2_k {
    enum { BLOCK = 32, BYTES = sizeof(metallic::BlockQ2_K), VEC = 0 };
    static inline float value(device const metallic::BlockQ2_K* b, int e) {
        const int q = (b->qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        const uchar sc = b->scales[e / 16];
        return half_bits(b->d) * float(sc & 15) * float(q) - half_bits(b->dmin) * float(sc >> 4);
    }
    static inline float get(device const uchar* row, int i) {
        return value((device const metallic::BlockQ2_K*)(row + (i / 256) * BYTES), i % 256);
    }
    template <typename X> static inline float dot(device const uchar* row, int u, thread const X& x) {
        device const metallic::BlockQ2_K* b = (device const metallic::BlockQ2_K*)(row + (u / 8) * BYTES);
        const int e0 = (u % 8) * 32;
        device const uchar* qs = b->qs + 32 * (e0 / 128);
        const int shift = 2 * ((e0 % 128) / 32);
        float s = 0.0f;
        for (int half_unit = 0; half_unit < 2; ++half_unit) {  // two sub-blocks of 16, own scales
            const uchar sc = b->scales[e0 / 16 + half_unit];
            float sq = 0.0f, sx = 0.0f;
            for (int l = 16 * half_unit; l < 16 * half_unit + 16; ++l) {
                const float xl = x.s(l);
                sq += float((qs[l] >> shift) & 3) * xl;
                sx += xl;
            }
            s += half_bits(b->d) * float(sc & 15) * sq - half_bits(b->dmin) * float(sc >> 4) * sx;
        }
        return s;
    }
};

// (d * (scale_i - 32)) * (q - 4 * !hbit) for sub-block i = e / 16, q in 0..3 packed as in Q2_K,
// the high bit of element 32j + l (j = e / 32) bit j of hmask[l]. The 16 6-bit scales: low 4
// bits in the nibbles of scales[0 .. 7] (i < 8: low nibble of scales[i], else high nibble of
// scales[i - 8]), high 2 bits in scales[8 + i % 4] >> 2 (i / 4) (GGML's kmask unpacking).
inline int q3_k_scale(device const uchar* s, int i) {
    const int lo = i < 8 ? (s[i] & 15) : (s[i - 8] >> 4);
    const int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

struct fmt_q3_k {
    enum { BLOCK = 32, BYTES = sizeof(metallic::BlockQ3_K), VEC = 0 };
    static inline int code(device const metallic::BlockQ3_K* b, int e) {
        const int q = (b->qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        return q - (((b->hmask[e % 32] >> (e / 32)) & 1) ? 0 : 4);
    }
    static inline float get(device const uchar* row, int i) {
        device const metallic::BlockQ3_K* b = (device const metallic::BlockQ3_K*)(row + (i / 256) * BYTES);
        const int e = i % 256;
        return half_bits(b->d) * float(q3_k_scale(b->scales, e / 16)) * float(code(b, e));
    }
    template <typename X> static inline float dot(device const uchar* row, int u, thread const X& x) {
        device const metallic::BlockQ3_K* b = (device const metallic::BlockQ3_K*)(row + (u / 8) * BYTES);
        const int e0 = (u % 8) * 32;
        float s0 = 0.0f, s1 = 0.0f;  // the unit's two 16-element scale groups
        for (int l = 0; l < 16; ++l) {
            s0 += float(code(b, e0 + l)) * x.s(l);
            s1 += float(code(b, e0 + 16 + l)) * x.s(16 + l);
        }
        return half_bits(b->d) * (float(q3_k_scale(b->scales, e0 / 16)) * s0 + float(q3_k_scale(b->scales, e0 / 16 + 1)) * s1);
    }
};
