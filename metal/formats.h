// Weight formats as the kernels read them: one struct per GGML type with
//   get(row, i)    element i of a row, as float (embed, gemm, and the matvecs' leftovers)
// and the decode matvec's layout (matvec.h), how the 32 lanes of a simdgroup share a row:
//   BLOCK, BYTES   elements and bytes of one block: LANES consecutive lanes share a block, so
//                  a simdgroup takes 32 / LANES consecutive blocks of the row at a time
//   CHUNKS, CW     lane li of a block's LANES takes CHUNKS runs of CW consecutive elements (CW a
//                  multiple of 4: x is read as float4), run k at element xoff(li, k) of the block
//   VEC            1 if the block's weights are read with vector loads that need 16-byte
//                  aligned rows (the float formats); the quantized blocks are read with 16-bit
//                  loads, which every GGUF block allows (their half scales are 2-byte aligned)
//   State, state(block, li)   what the lane takes from the block once for all of its runs (the
//                  scales, decoded)
//   chunk(st, k, w)  run k's weights into w[CW / 4]; returns the factor the run's dot takes:
//                  dot(run, x) = factor * sum(w * x)
// Kernels template over these (embed, matvec, gemm), so a new format is one struct here plus a
// line of instantiations per kernel. Block layouts come from cpp/cpu/formats/blocks.h, the
// same header the CPU kernels use; scales are raw half bits there, read with as_type. A
// quantized format's BYTES is the size of that layout, which the host build checks against the
// GGML type table (cpp/engine/ggml_types.h): no block size is written down here. The float
// formats' block is the matvec's 16-byte load, not a GGML block.
#pragma once

#include <metal_stdlib>
#include "../cpp/cpu/formats/blocks.h"

using namespace metal;

inline float half_bits(ushort bits) { return float(as_type<half>(bits)); }

// 4 and 8 bytes of a quantized block, from 16-bit loads: GGUF places blocks of 18, 22, 34, 84,
// 110 or 210 bytes back to back, so only 2-byte alignment holds and wider loads would be
// misaligned. Byte j of the result is p[j] (Metal's GPUs and the simulator are little-endian).
inline uint load_u32(device const uchar* p) {
    device const ushort* u = (device const ushort*)p;
    return uint(u[0]) | (uint(u[1]) << 16);
}
inline uint2 load_u64(device const uchar* p) { return uint2(load_u32(p), load_u32(p + 4)); }

// The four bytes of a word as floats, unsigned or signed.
inline float4 bytes_u(uint w) { return float4(as_type<uchar4>(w)); }
inline float4 bytes_s(uint w) { return float4(as_type<char4>(w)); }

// (v >> shift) & mask in each word of v (written per word: the address-space check's OpenCL
// stand-in for Metal's vectors has no bitwise vector operators).
inline uint2 field2(uint2 v, uint shift, uint mask) { return uint2((v.x >> shift) & mask, (v.y >> shift) & mask); }

// Bits 0..3 of b spread to bit 4 of bytes 0..3 (the four partial products of the multiply sit
// in disjoint bit ranges, so nothing carries into the bits kept).
inline uint bits_to_bytes4(uint b) { return ((b & 15u) * 0x00204081u & 0x01010101u) << 4; }

struct fmt_f32 {
    enum { BLOCK = 4, BYTES = 16, LANES = 1, CHUNKS = 1, CW = 4, VEC = 1 };
    static inline float get(device const uchar* row, int i) { return ((device const float*)row)[i]; }
    struct State {
        device const uchar* p;
    };
    static inline State state(device const uchar* blk, int li) { return State{blk}; }
    static inline int xoff(int li, int k) { return 0; }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        w[0] = *(device const float4*)s.p;
        return 1.0f;
    }
};

struct fmt_f16 {
    enum { BLOCK = 8, BYTES = 16, LANES = 1, CHUNKS = 1, CW = 8, VEC = 1 };
    static inline float get(device const uchar* row, int i) { return float(((device const half*)row)[i]); }
    struct State {
        device const uchar* p;
    };
    static inline State state(device const uchar* blk, int li) { return State{blk}; }
    static inline int xoff(int li, int k) { return 0; }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        w[0] = float4(*(device const half4*)s.p);
        w[1] = float4(*(device const half4*)(s.p + 8));
        return 1.0f;
    }
};

// bfloat16 is the high half of a float32: widen by shifting the bits (MSL 3.0 has no bfloat).
inline float bf16_bits(ushort bits) { return as_type<float>(uint(bits) << 16); }
inline float4 bf16x4(ushort4 b) { return float4(bf16_bits(b.x), bf16_bits(b.y), bf16_bits(b.z), bf16_bits(b.w)); }

struct fmt_bf16 {
    enum { BLOCK = 8, BYTES = 16, LANES = 1, CHUNKS = 1, CW = 8, VEC = 1 };
    static inline float get(device const uchar* row, int i) { return bf16_bits(((device const ushort*)row)[i]); }
    struct State {
        device const uchar* p;
    };
    static inline State state(device const uchar* blk, int li) { return State{blk}; }
    static inline int xoff(int li, int k) { return 0; }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        w[0] = bf16x4(*(device const ushort4*)s.p);
        w[1] = bf16x4(*(device const ushort4*)(s.p + 8));
        return 1.0f;
    }
};

// ---- The 32-element formats: four lanes to a block, lane li taking elements 8li .. 8li + 7.

// d * q, q int8.
struct fmt_q8_0 {
    enum { BLOCK = 32, BYTES = sizeof(metallic::BlockQ8_0), LANES = 4, CHUNKS = 1, CW = 8, VEC = 0 };
    static inline float get(device const uchar* row, int i) {
        device const metallic::BlockQ8_0* b = (device const metallic::BlockQ8_0*)(row + (i / 32) * BYTES);
        return half_bits(b->d) * float(b->qs[i % 32]);
    }
    struct State {
        float d;
        uint2 q;  // the lane's 8 int8 values
    };
    static inline State state(device const uchar* blk, int li) {
        device const metallic::BlockQ8_0* b = (device const metallic::BlockQ8_0*)blk;
        return State{half_bits(b->d), load_u64((device const uchar*)b->qs + 8 * li)};
    }
    static inline int xoff(int li, int k) { return 8 * li; }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        w[0] = bytes_s(s.q.x);
        w[1] = bytes_s(s.q.y);
        return s.d;
    }
};

// The 4- and 5-bit ones: element j < 16 in the low nibble of qs[j], element j + 16 in the high
// nibble; the 5-bit ones take bit 4 of element j from bit j of qh. Lanes 0 and 1 read the low
// nibbles of qs[0 .. 15], lanes 2 and 3 the high nibbles of the same bytes.
inline int nibble(device const uchar* qs, int j) { return j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4); }
inline uint qh_bits(device const uchar* qh) {
    return uint(qh[0]) | (uint(qh[1]) << 8) | (uint(qh[2]) << 16) | (uint(qh[3]) << 24);
}

// Lane li's 8 values of a 32-element block as bytes: nibbles of the 8 qs bytes the lane reads,
// plus bit 4 from qh (0 for the 4-bit formats).
inline uint2 q32_lane_values(device const uchar* qs, uint qh, int li) {
    const uint2 q = load_u64(qs + 8 * (li & 1));
    const uint shift = uint(li >> 1) * 4;
    const uint hb = qh >> (8 * li);  // bits of elements 8li ..
    return uint2(((q.x >> shift) & 0x0F0F0F0Fu) | bits_to_bytes4(hb),
                 ((q.y >> shift) & 0x0F0F0F0Fu) | bits_to_bytes4(hb >> 4));
}

// The State of the 32-element formats with an offset: weights d * q + m, as d * (q + m / d)
// would round differently, so the lane's 8 weights are decoded in full (factor 1); for the
// formats without one (m = -8d, -16d exactly) the factor is d and w = q - 8 or q - 16.
struct q32_state {
    float d, m;
    uint2 q;
};

// d * (q - 8)
struct fmt_q4_0 {
    enum { BLOCK = 32, BYTES = sizeof(metallic::BlockQ4_0), LANES = 4, CHUNKS = 1, CW = 8, VEC = 0 };
    static inline float get(device const uchar* row, int i) {
        device const metallic::BlockQ4_0* b = (device const metallic::BlockQ4_0*)(row + (i / 32) * BYTES);
        return half_bits(b->d) * float(nibble(b->qs, i % 32) - 8);
    }
    typedef q32_state State;
    static inline State state(device const uchar* blk, int li) {
        device const metallic::BlockQ4_0* b = (device const metallic::BlockQ4_0*)blk;
        return State{half_bits(b->d), 0.0f, q32_lane_values(b->qs, 0u, li)};
    }
    static inline int xoff(int li, int k) { return 8 * li; }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        w[0] = bytes_u(s.q.x) - 8.0f;
        w[1] = bytes_u(s.q.y) - 8.0f;
        return s.d;
    }
};

// d * q + m
struct fmt_q4_1 {
    enum { BLOCK = 32, BYTES = sizeof(metallic::BlockQ4_1), LANES = 4, CHUNKS = 1, CW = 8, VEC = 0 };
    static inline float get(device const uchar* row, int i) {
        device const metallic::BlockQ4_1* b = (device const metallic::BlockQ4_1*)(row + (i / 32) * BYTES);
        return half_bits(b->d) * float(nibble(b->qs, i % 32)) + half_bits(b->m);
    }
    typedef q32_state State;
    static inline State state(device const uchar* blk, int li) {
        device const metallic::BlockQ4_1* b = (device const metallic::BlockQ4_1*)blk;
        return State{half_bits(b->d), half_bits(b->m), q32_lane_values(b->qs, 0u, li)};
    }
    static inline int xoff(int li, int k) { return 8 * li; }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        w[0] = s.d * bytes_u(s.q.x) + s.m;
        w[1] = s.d * bytes_u(s.q.y) + s.m;
        return 1.0f;
    }
};

// d * (q - 16)
struct fmt_q5_0 {
    enum { BLOCK = 32, BYTES = sizeof(metallic::BlockQ5_0), LANES = 4, CHUNKS = 1, CW = 8, VEC = 0 };
    static inline float get(device const uchar* row, int i) {
        device const metallic::BlockQ5_0* b = (device const metallic::BlockQ5_0*)(row + (i / 32) * BYTES);
        const int j = i % 32;
        return half_bits(b->d) * float((nibble(b->qs, j) | int(((qh_bits(b->qh) >> j) & 1) << 4)) - 16);
    }
    typedef q32_state State;
    static inline State state(device const uchar* blk, int li) {
        device const metallic::BlockQ5_0* b = (device const metallic::BlockQ5_0*)blk;
        return State{half_bits(b->d), 0.0f, q32_lane_values(b->qs, load_u32(b->qh), li)};
    }
    static inline int xoff(int li, int k) { return 8 * li; }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        w[0] = bytes_u(s.q.x) - 16.0f;
        w[1] = bytes_u(s.q.y) - 16.0f;
        return s.d;
    }
};

// d * q + m
struct fmt_q5_1 {
    enum { BLOCK = 32, BYTES = sizeof(metallic::BlockQ5_1), LANES = 4, CHUNKS = 1, CW = 8, VEC = 0 };
    static inline float get(device const uchar* row, int i) {
        device const metallic::BlockQ5_1* b = (device const metallic::BlockQ5_1*)(row + (i / 32) * BYTES);
        const int j = i % 32;
        return half_bits(b->d) * float(nibble(b->qs, j) | int(((qh_bits(b->qh) >> j) & 1) << 4)) + half_bits(b->m);
    }
    typedef q32_state State;
    static inline State state(device const uchar* blk, int li) {
        device const metallic::BlockQ5_1* b = (device const metallic::BlockQ5_1*)blk;
        return State{half_bits(b->d), half_bits(b->m), q32_lane_values(b->qs, load_u32(b->qh), li)};
    }
    static inline int xoff(int li, int k) { return 8 * li; }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        w[0] = s.d * bytes_u(s.q.x) + s.m;
        w[1] = s.d * bytes_u(s.q.y) + s.m;
        return 1.0f;
    }
};


// ---- K-quants: super-blocks of 256 elements, eight lanes to a block (a simdgroup takes four
// blocks at a time), each lane four runs of 8 elements. Every run lies inside one scale group,
// so a run's dot takes one scale (and min).

// Scale and min of sub-block j of Q4_K/Q5_K: 6 bits each, packed in 12 bytes (GGML's
// get_scale_min_k4).
inline int2 k4_scale_min(device const uchar* s, int j) {
    if (j < 4) return int2(int(s[j] & 63), int(s[j + 4] & 63));
    return int2(int((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4)), int((s[j + 4] >> 4) | ((s[j] >> 6) << 4)));
}

// Q4_K and Q5_K: bytes qs[32c ..] hold sub-block 2c in their low nibbles and 2c + 1 in their
// high ones. Lane li = 2c + h reads qs[32c + 16h .. + 15]: runs 0 and 1 are elements 16h ..
// 16h + 15 of sub-block 2c (low nibbles), runs 2 and 3 the same of sub-block 2c + 1 (high).
inline int k4_xoff(int li, int k) { return 64 * (li >> 1) + 16 * (li & 1) + 8 * (k & 1) + 32 * (k >> 1); }

// The lane's two sub-blocks' d * scale and dmin * min.
struct k4_state {
    device const uchar* qs;  // the lane's 16 qs bytes
    device const uchar* qh;  // Q5_K: qh[16h ..], the lane's elements' fifth bits
    float4 sm;               // (d * sc, dmin * m) of sub-block 2c, then of 2c + 1
    int sub;                 // 2c
};
inline k4_state k4_make(ushort d, ushort dmin, device const uchar* scales, device const uchar* qs,
                        device const uchar* qh, int li) {
    const int c = li >> 1, h = li & 1;
    const float fd = half_bits(d), fm = half_bits(dmin);
    const int2 a = k4_scale_min(scales, 2 * c), b = k4_scale_min(scales, 2 * c + 1);
    return k4_state{qs + 32 * c + 16 * h, qh + 16 * h, float4(fd * float(a.x), fm * float(a.y), fd * float(b.x), fm * float(b.y)), 2 * c};
}
// Run k's 4-bit values, as bytes.
inline uint2 k4_nibbles(thread const k4_state& s, int k) {
    return field2(load_u64(s.qs + 8 * (k & 1)), uint(k >> 1) * 4, 0x0F0F0F0Fu);
}
inline float k4_weights(thread const k4_state& s, int k, uint2 q, thread float4* w) {
    const float2 sm = (k >> 1) ? s.sm.zw : s.sm.xy;
    w[0] = sm.x * bytes_u(q.x) - sm.y;
    w[1] = sm.x * bytes_u(q.y) - sm.y;
    return 1.0f;
}

// (d * sc) * q - dmin * m, q in 0..15.
struct fmt_q4_k {
    enum { BLOCK = 256, BYTES = sizeof(metallic::BlockQ4_K), LANES = 8, CHUNKS = 4, CW = 8, VEC = 0 };
    static inline float get(device const uchar* row, int i) {
        device const metallic::BlockQ4_K* b = (device const metallic::BlockQ4_K*)(row + (i / 256) * BYTES);
        const int e = i % 256, s = e / 32, l = e % 32;
        const int2 sm = k4_scale_min(b->scales, s);
        const int q = (s & 1) ? (b->qs[32 * (s / 2) + l] >> 4) : (b->qs[32 * (s / 2) + l] & 15);
        return half_bits(b->d) * float(sm.x) * float(q) - half_bits(b->dmin) * float(sm.y);
    }
    typedef k4_state State;
    static inline State state(device const uchar* blk, int li) {
        device const metallic::BlockQ4_K* b = (device const metallic::BlockQ4_K*)blk;
        return k4_make(b->d, b->dmin, b->scales, b->qs, b->qs, li);
    }
    static inline int xoff(int li, int k) { return k4_xoff(li, k); }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        return k4_weights(s, k, k4_nibbles(s, k), w);
    }
};

// Q4_K plus bit 4 of element l of sub-block s in bit s of qh[l].
struct fmt_q5_k {
    enum { BLOCK = 256, BYTES = sizeof(metallic::BlockQ5_K), LANES = 8, CHUNKS = 4, CW = 8, VEC = 0 };
    static inline float get(device const uchar* row, int i) {
        device const metallic::BlockQ5_K* b = (device const metallic::BlockQ5_K*)(row + (i / 256) * BYTES);
        const int e = i % 256, s = e / 32, l = e % 32;
        const int2 sm = k4_scale_min(b->scales, s);
        const int lo = (s & 1) ? (b->qs[32 * (s / 2) + l] >> 4) : (b->qs[32 * (s / 2) + l] & 15);
        const int q = lo | (((b->qh[l] >> s) & 1) << 4);
        return half_bits(b->d) * float(sm.x) * float(q) - half_bits(b->dmin) * float(sm.y);
    }
    typedef k4_state State;
    static inline State state(device const uchar* blk, int li) {
        device const metallic::BlockQ5_K* b = (device const metallic::BlockQ5_K*)blk;
        return k4_make(b->d, b->dmin, b->scales, b->qs, b->qh, li);
    }
    static inline int xoff(int li, int k) { return k4_xoff(li, k); }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        const uint bit = uint(s.sub + (k >> 1));  // the run's sub-block
        const uint2 h = field2(load_u64(s.qh + 8 * (k & 1)), bit, 0x01010101u);
        const uint2 lo = k4_nibbles(s, k);
        return k4_weights(s, k, uint2(lo.x | (h.x << 4), lo.y | (h.y << 4)), w);
    }
};

// Q2_K, Q3_K and Q6_K: in half h of 128 elements, element 128h + 32k + l takes its bits from
// byte l of a 32-byte run of the half (shifted by 2k for the 2-bit fields), with a scale per
// 16 elements. Lane li = 4h + g takes l = 8g .. 8g + 7 of each k: run k is elements
// 128h + 32k + 8g .. + 7, one scale group (8h + 2k + g / 2).
inline int k16_xoff(int li, int k) { return 128 * (li >> 2) + 32 * k + 8 * (li & 3); }
inline int k16_group(int li, int k) { return 8 * (li >> 2) + 2 * k + ((li & 3) >> 1); }

// (d * (scales[i] & 15)) * q - dmin * (scales[i] >> 4) for sub-block i = e / 16 of 16 elements,
// q in 0..3: element e = 128h + 32k + l is bits 2k..2k + 1 of qs[32h + l].
struct fmt_q2_k {
    enum { BLOCK = 256, BYTES = sizeof(metallic::BlockQ2_K), LANES = 8, CHUNKS = 4, CW = 8, VEC = 0 };
    static inline float value(device const metallic::BlockQ2_K* b, int e) {
        const int q = (b->qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        const uchar sc = b->scales[e / 16];
        return half_bits(b->d) * float(sc & 15) * float(q) - half_bits(b->dmin) * float(sc >> 4);
    }
    static inline float get(device const uchar* row, int i) {
        return value((device const metallic::BlockQ2_K*)(row + (i / 256) * BYTES), i % 256);
    }
    struct State {
        float d, dmin;
        uint2 q;           // the lane's 8 qs bytes: run k is bits 2k..2k + 1 of each
        device const uchar* sc;  // scales
        int li;
    };
    static inline State state(device const uchar* blk, int li) {
        device const metallic::BlockQ2_K* b = (device const metallic::BlockQ2_K*)blk;
        return State{half_bits(b->d), half_bits(b->dmin), load_u64(b->qs + 32 * (li >> 2) + 8 * (li & 3)), b->scales, li};
    }
    static inline int xoff(int li, int k) { return k16_xoff(li, k); }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        const uchar sc = s.sc[k16_group(s.li, k)];
        const float a = s.d * float(sc & 15), m = s.dmin * float(sc >> 4);
        const uint2 q = field2(s.q, uint(2 * k), 0x03030303u);
        w[0] = a * bytes_u(q.x) - m;
        w[1] = a * bytes_u(q.y) - m;
        return 1.0f;
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
    enum { BLOCK = 256, BYTES = sizeof(metallic::BlockQ3_K), LANES = 8, CHUNKS = 4, CW = 8, VEC = 0 };
    static inline int code(device const metallic::BlockQ3_K* b, int e) {
        const int q = (b->qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        return q - (((b->hmask[e % 32] >> (e / 32)) & 1) ? 0 : 4);
    }
    static inline float get(device const uchar* row, int i) {
        device const metallic::BlockQ3_K* b = (device const metallic::BlockQ3_K*)(row + (i / 256) * BYTES);
        const int e = i % 256;
        return half_bits(b->d) * float(q3_k_scale(b->scales, e / 16)) * float(code(b, e));
    }
    struct State {
        float d;
        uint2 q;   // the lane's 8 qs bytes
        uint2 hm;  // its 8 hmask bytes: run k's high bits are bit 4h + k
        device const uchar* sc;
        int li;
    };
    static inline State state(device const uchar* blk, int li) {
        device const metallic::BlockQ3_K* b = (device const metallic::BlockQ3_K*)blk;
        return State{half_bits(b->d), load_u64(b->qs + 32 * (li >> 2) + 8 * (li & 3)), load_u64(b->hmask + 8 * (li & 3)),
                     b->scales, li};
    }
    static inline int xoff(int li, int k) { return k16_xoff(li, k); }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        const uint2 q = field2(s.q, uint(2 * k), 0x03030303u);
        const uint2 h = field2(s.hm, uint(4 * (s.li >> 2) + k), 0x01010101u);
        w[0] = bytes_u(q.x | (h.x << 2)) - 4.0f;  // q - 4 without the high bit, q with it
        w[1] = bytes_u(q.y | (h.y << 2)) - 4.0f;
        return s.d * float(q3_k_scale(s.sc, k16_group(s.li, k)));
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
    enum { BLOCK = 256, BYTES = sizeof(metallic::BlockQ6_K), LANES = 8, CHUNKS = 4, CW = 8, VEC = 0 };
    static inline float get(device const uchar* row, int i) {
        device const metallic::BlockQ6_K* b = (device const metallic::BlockQ6_K*)(row + (i / 256) * BYTES);
        const int e = i % 256;
        return half_bits(b->d) * float(b->scales[e / 16]) * float(q6_k_value(b, e));
    }
    struct State {
        float d;
        uint2 qh;               // the lane's 8 qh bytes: run k's bits 4..5 are bits 2k..2k + 1
        device const uchar* ql; // ql[64h + 8g]: runs 0 and 2 read 8 bytes here, 1 and 3 at + 32
        device const char* sc;
        int li;
    };
    static inline State state(device const uchar* blk, int li) {
        device const metallic::BlockQ6_K* b = (device const metallic::BlockQ6_K*)blk;
        const int h = li >> 2, g = li & 3;
        return State{half_bits(b->d), load_u64(b->qh + 32 * h + 8 * g), b->ql + 64 * h + 8 * g,
                     (device const char*)b->scales, li};
    }
    static inline int xoff(int li, int k) { return k16_xoff(li, k); }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        const uint2 lo = field2(load_u64(s.ql + 32 * (k & 1)), uint(4 * (k >> 1)), 0x0F0F0F0Fu);
        const uint2 hi = field2(s.qh, uint(2 * k), 0x03030303u);
        w[0] = bytes_u(lo.x | (hi.x << 4)) - 32.0f;
        w[1] = bytes_u(lo.y | (hi.y << 4)) - 32.0f;
        return s.d * float(s.sc[k16_group(s.li, k)]);
    }
};

// ---- The prefill GEMM's weight runs (gemm.h): gemm_run<F>::get8(row, k, v) writes elements
// k .. k + 7 of a row to v[0 .. 1]. k is a multiple of 8 and the run lies inside the row; the
// float formats' rows must be 16-byte aligned (their vector loads). Every quantized format's
// block is a multiple of 16 elements with one scale (and min) per 16 or more, so a run lies in
// one block and one scale group: the scale is decoded once per run, not once per element as
// F::get does, and each weight comes out as F::get computes it (the same products in the same
// order), so a float tile holds exactly get()'s values. Four threads share a 32-element step of
// a row (gemm.h): like the matvecs' lanes, their runs are consecutive bytes of the row.
template <typename F> struct gemm_run;

template <> struct gemm_run<fmt_f32> {
    static inline void get8(device const uchar* row, int k, thread float4* v) {
        device const float4* p = (device const float4*)(row + 4 * k);
        v[0] = p[0];
        v[1] = p[1];
    }
};

template <> struct gemm_run<fmt_f16> {
    static inline void get8(device const uchar* row, int k, thread float4* v) {
        device const half4* p = (device const half4*)(row + 2 * k);
        v[0] = float4(p[0]);
        v[1] = float4(p[1]);
    }
};

template <> struct gemm_run<fmt_bf16> {
    static inline void get8(device const uchar* row, int k, thread float4* v) {
        device const ushort4* p = (device const ushort4*)(row + 2 * k);
        v[0] = bf16x4(p[0]);
        v[1] = bf16x4(p[1]);
    }
};

template <> struct gemm_run<fmt_q8_0> {
    static inline void get8(device const uchar* row, int k, thread float4* v) {
        device const metallic::BlockQ8_0* b = (device const metallic::BlockQ8_0*)(row + (k / 32) * fmt_q8_0::BYTES);
        const float d = half_bits(b->d);
        const uint2 q = load_u64((device const uchar*)b->qs + k % 32);
        v[0] = d * bytes_s(q.x);
        v[1] = d * bytes_s(q.y);
    }
};

// d * (q - off), d * q + m, a * q - m: the run's 8 values q as bytes.
inline void run8_offset(float d, uint2 q, float off, thread float4* v) {
    v[0] = d * (bytes_u(q.x) - off);
    v[1] = d * (bytes_u(q.y) - off);
}
inline void run8_add_min(float d, float m, uint2 q, thread float4* v) {
    v[0] = d * bytes_u(q.x) + m;
    v[1] = d * bytes_u(q.y) + m;
}
inline void run8_sub_min(float a, float m, uint2 q, thread float4* v) {
    v[0] = a * bytes_u(q.x) - m;
    v[1] = a * bytes_u(q.y) - m;
}

// The 32-element 4- and 5-bit formats: run k % 32 = 8li is the matvec lane li's (formats.h
// q32_lane_values).
template <> struct gemm_run<fmt_q4_0> {
    static inline void get8(device const uchar* row, int k, thread float4* v) {
        device const metallic::BlockQ4_0* b = (device const metallic::BlockQ4_0*)(row + (k / 32) * fmt_q4_0::BYTES);
        run8_offset(half_bits(b->d), q32_lane_values(b->qs, 0u, (k % 32) / 8), 8.0f, v);
    }
};

template <> struct gemm_run<fmt_q4_1> {
    static inline void get8(device const uchar* row, int k, thread float4* v) {
        device const metallic::BlockQ4_1* b = (device const metallic::BlockQ4_1*)(row + (k / 32) * fmt_q4_1::BYTES);
        run8_add_min(half_bits(b->d), half_bits(b->m), q32_lane_values(b->qs, 0u, (k % 32) / 8), v);
    }
};

template <> struct gemm_run<fmt_q5_0> {
    static inline void get8(device const uchar* row, int k, thread float4* v) {
        device const metallic::BlockQ5_0* b = (device const metallic::BlockQ5_0*)(row + (k / 32) * fmt_q5_0::BYTES);
        run8_offset(half_bits(b->d), q32_lane_values(b->qs, load_u32(b->qh), (k % 32) / 8), 16.0f, v);
    }
};

template <> struct gemm_run<fmt_q5_1> {
    static inline void get8(device const uchar* row, int k, thread float4* v) {
        device const metallic::BlockQ5_1* b = (device const metallic::BlockQ5_1*)(row + (k / 32) * fmt_q5_1::BYTES);
        run8_add_min(half_bits(b->d), half_bits(b->m), q32_lane_values(b->qs, load_u32(b->qh), (k % 32) / 8),
                     v);
    }
};

// Q4_K, Q5_K: the run is elements l0 .. l0 + 7 (l0 = k % 32) of sub-block j = (k % 256) / 32,
// nibble j & 1 of qs[32 (j / 2) + l0 ..] (Q5_K: bit j of qh[l0 ..] on top).
template <> struct gemm_run<fmt_q4_k> {
    static inline void get8(device const uchar* row, int k, thread float4* v) {
        device const metallic::BlockQ4_K* b = (device const metallic::BlockQ4_K*)(row + (k / 256) * fmt_q4_k::BYTES);
        const int j = (k % 256) / 32, l0 = k % 32;
        const int2 sm = k4_scale_min(b->scales, j);
        const uint2 q = field2(load_u64(b->qs + 32 * (j / 2) + l0), uint(4 * (j & 1)), 0x0F0F0F0Fu);
        run8_sub_min(half_bits(b->d) * float(sm.x), half_bits(b->dmin) * float(sm.y), q, v);
    }
};

template <> struct gemm_run<fmt_q5_k> {
    static inline void get8(device const uchar* row, int k, thread float4* v) {
        device const metallic::BlockQ5_K* b = (device const metallic::BlockQ5_K*)(row + (k / 256) * fmt_q5_k::BYTES);
        const int j = (k % 256) / 32, l0 = k % 32;
        const int2 sm = k4_scale_min(b->scales, j);
        const uint2 lo = field2(load_u64(b->qs + 32 * (j / 2) + l0), uint(4 * (j & 1)), 0x0F0F0F0Fu);
        const uint2 hi = field2(load_u64(b->qh + l0), uint(j), 0x01010101u);
        run8_sub_min(half_bits(b->d) * float(sm.x), half_bits(b->dmin) * float(sm.y),
                     uint2(lo.x | (hi.x << 4), lo.y | (hi.y << 4)), v);
    }
};

// Q2_K, Q3_K, Q6_K: element e = k % 256 = 128h + 32kq + l0 takes its bits from bytes l0 .. l0 + 7
// of the half's 32-byte runs; one scale per 16 elements, e / 16.
template <> struct gemm_run<fmt_q2_k> {
    static inline void get8(device const uchar* row, int k, thread float4* v) {
        device const metallic::BlockQ2_K* b = (device const metallic::BlockQ2_K*)(row + (k / 256) * fmt_q2_k::BYTES);
        const int e = k % 256;
        const uchar sc = b->scales[e / 16];
        const uint2 q = field2(load_u64(b->qs + 32 * (e / 128) + e % 32), uint(2 * ((e % 128) / 32)), 0x03030303u);
        run8_sub_min(half_bits(b->d) * float(sc & 15), half_bits(b->dmin) * float(sc >> 4), q, v);
    }
};

template <> struct gemm_run<fmt_q3_k> {
    static inline void get8(device const uchar* row, int k, thread float4* v) {
        device const metallic::BlockQ3_K* b = (device const metallic::BlockQ3_K*)(row + (k / 256) * fmt_q3_k::BYTES);
        const int e = k % 256, l0 = e % 32;
        const uint2 q = field2(load_u64(b->qs + 32 * (e / 128) + l0), uint(2 * ((e % 128) / 32)), 0x03030303u);
        const uint2 h = field2(load_u64(b->hmask + l0), uint(e / 32), 0x01010101u);
        // q - 4 without the high bit, q with it
        run8_offset(half_bits(b->d) * float(q3_k_scale(b->scales, e / 16)), uint2(q.x | (h.x << 2), q.y | (h.y << 2)),
                    4.0f, v);
    }
};

template <> struct gemm_run<fmt_q6_k> {
    static inline void get8(device const uchar* row, int k, thread float4* v) {
        device const metallic::BlockQ6_K* b = (device const metallic::BlockQ6_K*)(row + (k / 256) * fmt_q6_k::BYTES);
        const int e = k % 256, h = e / 128, kq = (e % 128) / 32, l0 = e % 32;
        const uint2 lo = field2(load_u64(b->ql + 64 * h + 32 * (kq & 1) + l0), uint(4 * (kq >> 1)), 0x0F0F0F0Fu);
        const uint2 hi = field2(load_u64(b->qh + 32 * h + l0), uint(2 * kq), 0x03030303u);
        run8_offset(half_bits(b->d) * float(b->scales[e / 16]), uint2(lo.x | (hi.x << 4), lo.y | (hi.y << 4)), 32.0f,
                    v);
    }
};
