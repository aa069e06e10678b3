// Weight formats as the kernels read them: one struct per GGML type with
//   BLOCK, BYTES       elements and bytes of one block (for the float formats: one 16-byte load)
//   get(blk, j)        element j of the block at blk, as float
//   dot(blk, x)        dot product of the block with x[0 .. BLOCK), x 16-byte aligned
// Kernels template over these (embed, matvec, gemm), so a new format is one struct here plus a
// line of instantiations per kernel. Block layouts come from cpp/cpu/formats/blocks.h, the
// same header the CPU kernels use; scales are raw half bits there, read with as_type.
#pragma once

#include <metal_stdlib>
#include "../cpp/cpu/formats/blocks.h"

using namespace metal;

inline float half_bits(ushort bits) { return float(as_type<half>(bits)); }

struct fmt_f32 {
    enum { BLOCK = 4, BYTES = 16 };
    static inline float get(device const uchar* p, int j) { return ((device const float*)p)[j]; }
    static inline float dot(device const uchar* p, device const float* x) {
        return metal::dot(*(device const float4*)p, *(device const float4*)x);
    }
};

struct fmt_f16 {
    enum { BLOCK = 8, BYTES = 16 };
    static inline float get(device const uchar* p, int j) { return float(((device const half*)p)[j]); }
    static inline float dot(device const uchar* p, device const float* x) {
        const float4 w0 = float4(*(device const half4*)p);
        const float4 w1 = float4(*(device const half4*)(p + 8));
        return metal::dot(w0, *(device const float4*)x) + metal::dot(w1, *(device const float4*)(x + 4));
    }
};

// bfloat16 is the high half of a float32: widen by shifting the bits (MSL 3.0 has no bfloat).
inline float bf16_bits(ushort bits) { return as_type<float>(uint(bits) << 16); }
inline float4 bf16x4(ushort4 b) { return float4(bf16_bits(b.x), bf16_bits(b.y), bf16_bits(b.z), bf16_bits(b.w)); }

struct fmt_bf16 {
    enum { BLOCK = 8, BYTES = 16 };
    static inline float get(device const uchar* p, int j) { return bf16_bits(((device const ushort*)p)[j]); }
    static inline float dot(device const uchar* p, device const float* x) {
        const float4 w0 = bf16x4(*(device const ushort4*)p);
        const float4 w1 = bf16x4(*(device const ushort4*)(p + 8));
        return metal::dot(w0, *(device const float4*)x) + metal::dot(w1, *(device const float4*)(x + 4));
    }
};

// d * q, q int8.
struct fmt_q8_0 {
    enum { BLOCK = 32, BYTES = 34 };
    static inline float get(device const uchar* p, int j) {
        device const metallic::BlockQ8_0* b = (device const metallic::BlockQ8_0*)p;
        return half_bits(b->d) * float(b->qs[j]);
    }
    static inline float dot(device const uchar* p, device const float* x) {
        device const metallic::BlockQ8_0* b = (device const metallic::BlockQ8_0*)p;
        float s = 0.0f;
        for (int i = 0; i < 32; i += 4) {
            const float4 q = float4(float(b->qs[i]), float(b->qs[i + 1]), float(b->qs[i + 2]), float(b->qs[i + 3]));
            s += metal::dot(q, *(device const float4*)(x + i));
        }
        return half_bits(b->d) * s;
    }
};

// The 32-element 4- and 5-bit formats: element j < 16 in the low nibble of qs[j], element
// j + 16 in the high nibble; the 5-bit ones take bit 4 of element j from bit j of qh.
inline int nibble(device const uchar* qs, int j) { return j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4); }
inline uint qh_bits(device const uchar* qh) {
    return uint(qh[0]) | (uint(qh[1]) << 8) | (uint(qh[2]) << 16) | (uint(qh[3]) << 24);
}

// Sum over the block of q[j] * x[j] and of x[j], for the formats of the form d * q + m.
template <typename Q>
inline float2 q32_dot_sum(device const uchar* qs, uint qh, device const float* x) {
    float s = 0.0f, sx = 0.0f;
    for (int j = 0; j < 16; ++j) {
        const float lo = float(Q::value(qs[j] & 15, qh, j));
        const float hi = float(Q::value(qs[j] >> 4, qh, j + 16));
        s += lo * x[j] + hi * x[j + 16];
        sx += x[j] + x[j + 16];
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
    enum { BLOCK = 32, BYTES = 18 };
    static inline float get(device const uchar* p, int j) {
        device const metallic::BlockQ4_0* b = (device const metallic::BlockQ4_0*)p;
        return half_bits(b->d) * float(nibble(b->qs, j) - 8);
    }
    static inline float dot(device const uchar* p, device const float* x) {
        device const metallic::BlockQ4_0* b = (device const metallic::BlockQ4_0*)p;
        const float2 r = q32_dot_sum<q4_values>(b->qs, 0u, x);
        return half_bits(b->d) * (r.x - 8.0f * r.y);
    }
};

// d * q + m
struct fmt_q4_1 {
    enum { BLOCK = 32, BYTES = 20 };
    static inline float get(device const uchar* p, int j) {
        device const metallic::BlockQ4_1* b = (device const metallic::BlockQ4_1*)p;
        return half_bits(b->d) * float(nibble(b->qs, j)) + half_bits(b->m);
    }
    static inline float dot(device const uchar* p, device const float* x) {
        device const metallic::BlockQ4_1* b = (device const metallic::BlockQ4_1*)p;
        const float2 r = q32_dot_sum<q4_values>(b->qs, 0u, x);
        return half_bits(b->d) * r.x + half_bits(b->m) * r.y;
    }
};

// d * (q - 16)
struct fmt_q5_0 {
    enum { BLOCK = 32, BYTES = 22 };
    static inline float get(device const uchar* p, int j) {
        device const metallic::BlockQ5_0* b = (device const metallic::BlockQ5_0*)p;
        return half_bits(b->d) * float(q5_values::value(nibble(b->qs, j), qh_bits(b->qh), j) - 16);
    }
    static inline float dot(device const uchar* p, device const float* x) {
        device const metallic::BlockQ5_0* b = (device const metallic::BlockQ5_0*)p;
        const float2 r = q32_dot_sum<q5_values>(b->qs, qh_bits(b->qh), x);
        return half_bits(b->d) * (r.x - 16.0f * r.y);
    }
};

// d * q + m
struct fmt_q5_1 {
    enum { BLOCK = 32, BYTES = 24 };
    static inline float get(device const uchar* p, int j) {
        device const metallic::BlockQ5_1* b = (device const metallic::BlockQ5_1*)p;
        return half_bits(b->d) * float(q5_values::value(nibble(b->qs, j), qh_bits(b->qh), j)) + half_bits(b->m);
    }
    static inline float dot(device const uchar* p, device const float* x) {
        device const metallic::BlockQ5_1* b = (device const metallic::BlockQ5_1*)p;
        const float2 r = q32_dot_sum<q5_values>(b->qs, qh_bits(b->qh), x);
        return half_bits(b->d) * r.x + half_bits(b->m) * r.y;
    }
};

// Element i of a row in format F.
template <typename F>
inline float row_get(device const uchar* row, int i) {
    return F::get(row + (i / F::BLOCK) * F::BYTES, i % F::BLOCK);
}
