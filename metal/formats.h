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

// The 2-byte float formats take 4 elements (8 bytes) a lane, so that a simdgroup's loads of
// weights (256 bytes) and of x (512) are contiguous.
struct fmt_f16 {
    enum { BLOCK = 4, BYTES = 8, LANES = 1, CHUNKS = 1, CW = 4, VEC = 1 };
    static inline float get(device const uchar* row, int i) { return float(((device const half*)row)[i]); }
    struct State {
        device const uchar* p;
    };
    static inline State state(device const uchar* blk, int li) { return State{blk}; }
    static inline int xoff(int li, int k) { return 0; }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        w[0] = float4(*(device const half4*)s.p);
        return 1.0f;
    }
};

// bfloat16 is the high half of a float32: widen by shifting the bits (MSL 3.0 has no bfloat).
inline float bf16_bits(ushort bits) { return as_type<float>(uint(bits) << 16); }
inline float4 bf16x4(ushort4 b) { return float4(bf16_bits(b.x), bf16_bits(b.y), bf16_bits(b.z), bf16_bits(b.w)); }

struct fmt_bf16 {
    enum { BLOCK = 4, BYTES = 8, LANES = 1, CHUNKS = 1, CW = 4, VEC = 1 };
    static inline float get(device const uchar* row, int i) { return bf16_bits(((device const ushort*)row)[i]); }
    struct State {
        device const uchar* p;
    };
    static inline State state(device const uchar* blk, int li) { return State{blk}; }
    static inline int xoff(int li, int k) { return 0; }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        w[0] = bf16x4(*(device const ushort4*)s.p);
        return 1.0f;
    }
};


// The quants plane of the 32-element formats, as cpp/metal/weight_layout.cpp's
// quant_plane_offset stores it: a row's plane bytes in two parts, its whole matvec steps (main;
// a step is 4 blocks' quants, `step` bytes) and the bytes % step left over (its tail), which
// groups of step / tail rows store together before their main parts when the tail divides the
// step. A block never straddles the two parts (the tail is a whole number of blocks' quants).
struct PlaneRow {
    device const uchar* main;
    device const uchar* tail;
    int main_bytes;
};

inline PlaneRow quant_plane_row(device const uchar* plane, uint64_t bytes, int step, int rows, int r) {
    const int tail = int(bytes % uint64_t(step));
    const uint64_t main = bytes - uint64_t(tail);
    const int g = tail != 0 && step % tail == 0 ? step / tail : 1;
    if (g == 1 || r >= rows - rows % g) {
        device const uchar* p = plane + uint64_t(r) * bytes;
        return PlaneRow{p, p + main, int(main)};
    }
    device const uchar* base = plane + uint64_t(r / g) * uint64_t(g) * bytes;
    return PlaneRow{base + step + uint64_t(r % g) * main, base + (r % g) * tail, int(main)};
}

// Byte j of the row's plane; j and the block's other bytes lie in the same part.
inline device const uchar* plane_at(PlaneRow p, int j) {
    return j < p.main_bytes ? p.main + j : p.tail + (j - p.main_bytes);
}

// d * q, q int8. Stored planar on the GPU (layout<fmt_q8_0> below), so its functions take a
// Q8Row, not GGUF's blocks.
struct Q8Row {
    PlaneRow q;             // the row's int8 quants, cols bytes
    device const uchar* d;  // its half scales, one per 32 quants
};

struct fmt_q8_0 {
    enum { BLOCK = 32, BYTES = sizeof(metallic::BlockQ8_0), LANES = 8, CHUNKS = 1, CW = 4, VEC = 0 };
    static inline float get(Q8Row row, int i) {
        return half_bits(*(device const ushort*)(row.d + 2 * (i / 32))) * float(as_type<char>(*plane_at(row.q, i)));
    }
    struct State {
        float d;
        uint q;  // the lane's 4 int8 values
    };
    // Lane li's 4 quants of block b: one aligned 4-byte load, so the simdgroup's 32 lanes read
    // 128 contiguous bytes of quants and 512 of x per instruction.
    static inline State state(Q8Row row, int b, int li) {
        return State{half_bits(*(device const ushort*)(row.d + 2 * b)),
                     *(device const uint*)(plane_at(row.q, 32 * b) + 4 * li)};
    }
    static inline int xoff(int li, int k) { return 4 * li; }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        w[0] = bytes_s(s.q);
        return s.d;
    }
};


// The 4- and 5-bit ones: element j < 16 in the low nibble of qs[j], element j + 16 in the high
// nibble; the 5-bit ones take bit 4 of element j from bit j of qh. Stored planar on the GPU
// (layout<F> below): a row's qs (16 bytes a block), then its qh (4), d (2) and m (2), each
// plane the whole matrix's. Eight lanes to a block, lane li taking elements 4li .. 4li + 3:
// for li < 4 the low nibbles of qs[4li ..], else the high nibbles of qs[4(li - 4) ..], and bits
// 4li .. 4li + 3 of qh. A simdgroup's instruction reads 64 contiguous bytes of qs, 16 of qh, 8
// of d (GGUF's 18- to 24-byte blocks are only 2-byte aligned).
struct Q32Row {
    PlaneRow qs;
    device const uchar* qh;  // the 5-bit formats
    device const uchar* d;
    device const uchar* m;   // the formats with a min
};

// Element j of block b: its 4 or 5 bits.
inline int q32_value(Q32Row row, int b, int j, bool five) {
    device const uchar* qs = plane_at(row.qs, 16 * b);
    const int lo = j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4);
    if (!five) return lo;
    return lo | int(((*(device const uint*)(row.qh + 4 * b) >> j) & 1u) << 4);
}

// Lane li's 4 values of block b as the bytes of a word.
inline uint q32_lane_word(Q32Row row, int b, int li, bool five) {
    const uint q = (*(device const uint*)(plane_at(row.qs, 16 * b) + 4 * (li & 3)) >> (4 * (li >> 2))) & 0x0F0F0F0Fu;
    if (!five) return q;
    return q | bits_to_bytes4(*(device const uint*)(row.qh + 4 * b) >> (4 * li));
}

// Elements 8r .. 8r + 7 of block b (r = 0 .. 3) as bytes: the GEMM's run.
inline uint2 q32_run_words(Q32Row row, int b, int r, bool five) {
    const uint2 q = *(device const uint2*)(plane_at(row.qs, 16 * b) + 8 * (r & 1));
    const uint shift = uint(r >> 1) * 4;
    uint2 v = uint2((q.x >> shift) & 0x0F0F0F0Fu, (q.y >> shift) & 0x0F0F0F0Fu);
    if (five) {
        const uint hb = *(device const uint*)(row.qh + 4 * b) >> (8 * r);
        v = uint2(v.x | bits_to_bytes4(hb), v.y | bits_to_bytes4(hb >> 4));
    }
    return v;
}

inline float q32_d(Q32Row row, int b) { return half_bits(*(device const ushort*)(row.d + 2 * b)); }
inline float q32_m(Q32Row row, int b) { return half_bits(*(device const ushort*)(row.m + 2 * b)); }

// The State of the 32-element formats with a min: weights d * q + m, as d * (q + m / d) would
// round differently, so the lane's 4 weights are decoded in full (factor 1); for the formats
// without one (m = -8d, -16d exactly) the factor is d and w = q - 8 or q - 16.
struct q32_state {
    float d, m;
    uint q;
};

// What the four formats share: the planes (FIVE: qh, MIN: m) and the matvec lane's State.
template <bool FIVE, bool MIN, int OFFSET>
struct q32_format {
    enum { BLOCK = 32, LANES = 8, CHUNKS = 1, CW = 4, VEC = 0 };
    typedef q32_state State;
    static inline State state(Q32Row row, int b, int li) {
        return State{q32_d(row, b), MIN ? q32_m(row, b) : 0.0f, q32_lane_word(row, b, li, FIVE)};
    }
    static inline int xoff(int li, int k) { return 4 * li; }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        if (MIN) {
            w[0] = s.d * bytes_u(s.q) + s.m;
            return 1.0f;
        }
        w[0] = bytes_u(s.q) - float(OFFSET);
        return s.d;
    }
    static inline float get(Q32Row row, int i) {
        const int b = i / 32, q = q32_value(row, b, i % 32, FIVE);
        if (MIN) return q32_d(row, b) * float(q) + q32_m(row, b);
        return q32_d(row, b) * float(q - OFFSET);
    }
};

// d * (q - 8)
struct fmt_q4_0 : q32_format<false, false, 8> {
    enum { BYTES = sizeof(metallic::BlockQ4_0) };
};
// d * q + m
struct fmt_q4_1 : q32_format<false, true, 0> {
    enum { BYTES = sizeof(metallic::BlockQ4_1) };
};
// d * (q - 16)
struct fmt_q5_0 : q32_format<true, false, 16> {
    enum { BYTES = sizeof(metallic::BlockQ5_0) };
};
// d * q + m
struct fmt_q5_1 : q32_format<true, true, 0> {
    enum { BYTES = sizeof(metallic::BlockQ5_1) };
};


// ---- K-quants: super-blocks of 256 elements, stored planar on the GPU (layout<F> below: the
// quants, high bits, scales and factors of every block, each a plane) and read by all 32 lanes
// at once: lane li takes elements 4li .. 4li + 3 of each half (run c is elements 128c + 4li ..),
// so an instruction reads 512 contiguous bytes of x and 32 to 64 of quants. Every run lies
// inside one scale group, so a run's dot takes one scale (and min).
struct KRow {
    device const uchar* q;  // the low bits: Q4_K/Q5_K qs, Q6_K ql (128 bytes a block)
    device const uchar* h;  // the high bits: Q5_K qh (32), Q6_K qh (64)
    device const uchar* s;  // the scales: Q4_K/Q5_K 12 packed bytes, Q6_K 16 int8
    device const uchar* d;  // the factors: Q4_K/Q5_K d and dmin, Q6_K d
};

// Scale and min of sub-block j of Q4_K/Q5_K: 6 bits each, packed in 12 bytes (GGML's
// get_scale_min_k4).
inline int2 k4_scale_min(device const uchar* s, int j) {
    if (j < 4) return int2(int(s[j] & 63), int(s[j + 4] & 63));
    return int2(int((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4)), int((s[j + 4] >> 4) | ((s[j] >> 6) << 4)));
}

// Q4_K and Q5_K: bytes qs[32c ..] hold sub-block 2c in their low nibbles and 2c + 1 in their
// high ones (Q5_K: bit j of qh[l] is bit 4 of element l of sub-block j). Lane li's run c is
// sub-block j = 4c + li / 8, elements l = 4 (li % 8) ..: nibble j & 1 of qs[32 (j / 2) + l ..].
struct k4_state {
    float2 sm[2];  // per run: (d * sc, dmin * m) of its sub-block
    uint q[2];     // per run: the 4 (Q5_K: 5-bit) values as bytes
};
template <bool FIVE>
inline k4_state k4_make(KRow row, int b, int li) {
    const float fd = half_bits(*(device const ushort*)(row.d + 4 * b));
    const float fm = half_bits(*(device const ushort*)(row.d + 4 * b + 2));
    device const uchar* qs = row.q + 128 * b;
    const int l = 4 * (li & 7);
    k4_state st;
    for (int c = 0; c < 2; ++c) {
        const int j = 4 * c + (li >> 3);
        const int2 sm = k4_scale_min(row.s + 12 * b, j);
        st.sm[c] = float2(fd * float(sm.x), fm * float(sm.y));
        uint q = (*(device const uint*)(qs + 32 * (j >> 1) + l) >> (4 * (j & 1))) & 0x0F0F0F0Fu;
        if (FIVE) q |= ((*(device const uint*)(row.h + 32 * b + l) >> j) & 0x01010101u) << 4;
        st.q[c] = q;
    }
    return st;
}

// Element e of block b (e = 32j + l, sub-block j), as the reference dequantizes it.
template <bool FIVE>
inline float k4_get(KRow row, int b, int e) {
    const int j = e / 32, l = e % 32;
    const int2 sm = k4_scale_min(row.s + 12 * b, j);
    const uchar byte = row.q[128 * b + 32 * (j / 2) + l];
    int q = (j & 1) ? (byte >> 4) : (byte & 15);
    if (FIVE) q |= ((row.h[32 * b + l] >> j) & 1) << 4;
    return half_bits(*(device const ushort*)(row.d + 4 * b)) * float(sm.x) * float(q) -
           half_bits(*(device const ushort*)(row.d + 4 * b + 2)) * float(sm.y);
}

// (d * sc) * q - dmin * m, q in 0..15 (Q5_K: 0..31).
template <bool FIVE>
struct k4_format {
    enum { BLOCK = 256, LANES = 32, CHUNKS = 2, CW = 4, VEC = 0 };
    typedef k4_state State;
    static inline State state(KRow row, int b, int li) { return k4_make<FIVE>(row, b, li); }
    static inline int xoff(int li, int k) { return 128 * k + 4 * li; }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        w[0] = s.sm[k].x * bytes_u(s.q[k]) - s.sm[k].y;
        return 1.0f;
    }
    static inline float get(KRow row, int i) { return k4_get<FIVE>(row, i / 256, i % 256); }
};
struct fmt_q4_k : k4_format<false> {
    enum { BYTES = sizeof(metallic::BlockQ4_K) };
};
struct fmt_q5_k : k4_format<true> {
    enum { BYTES = sizeof(metallic::BlockQ5_K) };
};

// Q2_K and Q3_K: element e = 128h + 32k + l of a block has its 2 low bits in bits 2k..2k + 1 of
// qs[32h + l], a scale per 16 elements (e / 16); Q3_K's third bit is bit e / 32 of hmask[l].
// Lane li's run c is elements 128c + 4li .. (k = li / 8, l = 4 (li % 8)), scale group
// 8c + li / 4, as Q6_K's.

// (d * (scales[i] & 15)) * q - dmin * (scales[i] >> 4) for sub-block i = e / 16, q in 0..3.
inline float q2_k_value(KRow row, int b, int e) {
    const int q = (row.q[64 * b + 32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
    const uchar sc = row.s[16 * b + e / 16];
    return half_bits(*(device const ushort*)(row.d + 4 * b)) * float(sc & 15) * float(q) -
           half_bits(*(device const ushort*)(row.d + 4 * b + 2)) * float(sc >> 4);
}

struct fmt_q2_k {
    enum { BLOCK = 256, BYTES = sizeof(metallic::BlockQ2_K), LANES = 32, CHUNKS = 2, CW = 4, VEC = 0 };
    static inline float get(KRow row, int i) { return q2_k_value(row, i / 256, i % 256); }
    struct State {
        float2 am[2];  // per run: d * scale, dmin * min of its group
        uint q[2];     // per run: the 4 2-bit values as bytes
    };
    static inline State state(KRow row, int b, int li) {
        const int k = li >> 3, l = 4 * (li & 7);
        const float d = half_bits(*(device const ushort*)(row.d + 4 * b));
        const float dmin = half_bits(*(device const ushort*)(row.d + 4 * b + 2));
        State st;
        for (int c = 0; c < 2; ++c) {
            st.q[c] = (*(device const uint*)(row.q + 64 * b + 32 * c + l) >> (2 * k)) & 0x03030303u;
            const uchar sc = row.s[16 * b + 8 * c + (li >> 2)];
            st.am[c] = float2(d * float(sc & 15), dmin * float(sc >> 4));
        }
        return st;
    }
    static inline int xoff(int li, int k) { return 128 * k + 4 * li; }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        w[0] = s.am[k].x * bytes_u(s.q[k]) - s.am[k].y;
        return 1.0f;
    }
};

// (d * (scale_i - 32)) * (q - 4 * !hbit) for sub-block i = e / 16. The 16 6-bit scales: low 4
// bits in the nibbles of scales[0 .. 7] (i < 8: low nibble of scales[i], else high nibble of
// scales[i - 8]), high 2 bits in scales[8 + i % 4] >> 2 (i / 4) (GGML's kmask unpacking).
inline int q3_k_scale(device const uchar* s, int i) {
    const int lo = i < 8 ? (s[i] & 15) : (s[i - 8] >> 4);
    const int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

struct fmt_q3_k {
    enum { BLOCK = 256, BYTES = sizeof(metallic::BlockQ3_K), LANES = 32, CHUNKS = 2, CW = 4, VEC = 0 };
    static inline int code(KRow row, int b, int e) {
        const int q = (row.q[64 * b + 32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        return q - (((row.h[32 * b + e % 32] >> (e / 32)) & 1) ? 0 : 4);
    }
    static inline float get(KRow row, int i) {
        const int b = i / 256, e = i % 256;
        return half_bits(*(device const ushort*)(row.d + 2 * b)) * float(q3_k_scale(row.s + 12 * b, e / 16)) *
               float(code(row, b, e));
    }
    struct State {
        float f[2];  // per run: d * its scale
        uint q[2];   // per run: the 4 3-bit values (high bit included) as bytes
    };
    static inline State state(KRow row, int b, int li) {
        const int k = li >> 3, l = 4 * (li & 7);
        const float d = half_bits(*(device const ushort*)(row.d + 2 * b));
        const uint hm = *(device const uint*)(row.h + 32 * b + l);
        State st;
        for (int c = 0; c < 2; ++c) {
            const uint q = (*(device const uint*)(row.q + 64 * b + 32 * c + l) >> (2 * k)) & 0x03030303u;
            st.q[c] = q | (((hm >> (4 * c + k)) & 0x01010101u) << 2);
            st.f[c] = d * float(q3_k_scale(row.s + 12 * b, 8 * c + (li >> 2)));
        }
        return st;
    }
    static inline int xoff(int li, int k) { return 128 * k + 4 * li; }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        w[0] = bytes_u(s.q[k]) - 4.0f;  // q - 4 without the high bit, q with it
        return s.f[k];
    }
};

// Q6_K: element e = 128h + 32k + l of a block has its low 4 bits in nibble k / 2 of
// ql[64h + 32 (k & 1) + l] and bits 4..5 in bits 2k..2k + 1 of qh[32h + l]; scale scales[e / 16].
// Lane li's run c is elements 128c + 4li ..: k = li / 8, l = 4 (li % 8), scale group 8c + li / 4.
inline int q6_k_value(KRow row, int b, int e) {
    const int h = e / 128, k = (e % 128) / 32, l = e % 32;
    const uchar lq = row.q[128 * b + 64 * h + 32 * (k & 1) + l];
    const int lo = k < 2 ? (lq & 15) : (lq >> 4);
    return (lo | (((row.h[64 * b + 32 * h + l] >> (2 * k)) & 3) << 4)) - 32;
}
inline float q6_k_d(KRow row, int b) { return half_bits(*(device const ushort*)(row.d + 2 * b)); }
inline float q6_k_scale(KRow row, int b, int g) { return float(as_type<char>(row.s[16 * b + g])); }

struct fmt_q6_k {
    enum { BLOCK = 256, BYTES = sizeof(metallic::BlockQ6_K), LANES = 32, CHUNKS = 2, CW = 4, VEC = 0 };
    static inline float get(KRow row, int i) {
        const int b = i / 256, e = i % 256;
        return q6_k_d(row, b) * q6_k_scale(row, b, e / 16) * float(q6_k_value(row, b, e));
    }
    struct State {
        float f[2];  // per run: d * its scale
        uint q[2];   // per run: the 4 6-bit values as bytes
    };
    static inline State state(KRow row, int b, int li) {
        const int k = li >> 3, l = 4 * (li & 7);
        const float d = q6_k_d(row, b);
        State st;
        for (int c = 0; c < 2; ++c) {
            const uint lo = (*(device const uint*)(row.q + 128 * b + 64 * c + 32 * (k & 1) + l) >> (4 * (k >> 1))) &
                            0x0F0F0F0Fu;
            const uint hi = (*(device const uint*)(row.h + 64 * b + 32 * c + l) >> (2 * k)) & 0x03030303u;
            st.q[c] = lo | (hi << 4);
            st.f[c] = d * q6_k_scale(row, b, 8 * c + (li >> 2));
        }
        return st;
    }
    static inline int xoff(int li, int k) { return 128 * k + 4 * li; }
    static inline float chunk(thread const State& s, int k, thread float4* w) {
        w[0] = bytes_u(s.q[k]) - 32.0f;
        return s.f[k];
    }
};

// ---- Where a kernel finds row r of a matrix (w, rows, row_bytes apart in GGUF) and block b of
// a row: layout<F>::row, ::state (the matvec lane's State of block b) and ::get (element i).
// GGUF's own layout (the float formats): a row is its blocks back to back.
template <typename F> struct layout {
    typedef device const uchar* Row;
    static inline Row row(device const uchar* w, uint64_t row_bytes, int rows, int r) {
        return w + uint64_t(r) * row_bytes;
    }
    static inline typename F::State state(Row row, int b, int li) {
        return F::state(row + uint64_t(b) * uint64_t(F::BYTES), li);
    }
    static inline float get(Row row, int i) { return F::get(row, i); }
};

// Q8_0 as the Metal backend stores it (cpp/metal/weight_layout.h repacks it at load): the
// matrix's quants, rows x cols bytes (rows grouped as quant_plane_row says when cols is not a
// multiple of 128, the step's bytes), then its scales, rows x cols / 32 halves. The buffer has GGUF's size, so
// row_bytes (34 per 32 elements) still describes the matrix. GGUF's 34-byte blocks are only
// 2-byte aligned; planar, a lane's 4 quants are one aligned 4-byte load and a simdgroup's step
// reads one 128-byte line of quants and 8 contiguous bytes of scales.
template <> struct layout<fmt_q8_0> {
    typedef Q8Row Row;
    static inline Row row(device const uchar* w, uint64_t row_bytes, int rows, int r) {
        const uint64_t cols = row_bytes / uint64_t(fmt_q8_0::BYTES) * 32;
        // A step: 4 blocks of 32 quant bytes (matvec.h).
        return Q8Row{quant_plane_row(w, cols, 4 * 32, rows, r), w + uint64_t(rows) * cols + uint64_t(r) * (cols / 16)};
    }
    static inline fmt_q8_0::State state(Row row, int b, int li) { return fmt_q8_0::state(row, b, li); }
    static inline float get(Row row, int i) { return fmt_q8_0::get(row, i); }
};

// The 32-element 4- and 5-bit formats planar (formats above): the planes in the order qs, qh,
// d, m, each rows x blocks x its bytes per block, so the buffer again has GGUF's size.
template <typename F, bool FIVE, bool MIN> struct q32_layout {
    typedef Q32Row Row;
    static inline Row row(device const uchar* w, uint64_t row_bytes, int rows, int r) {
        const uint64_t nb = row_bytes / uint64_t(F::BYTES), n = uint64_t(rows) * nb, rb = uint64_t(r) * nb;
        device const uchar* qh = w + 16 * n;
        device const uchar* d = qh + (FIVE ? 4 * n : 0);
        device const uchar* m = d + 2 * n;
        // A step: 4 blocks of 16 quant bytes (matvec.h).
        return Q32Row{quant_plane_row(w, 16 * nb, 4 * 16, rows, r), qh + 4 * rb, d + 2 * rb, m + 2 * rb};
    }
    static inline typename F::State state(Row row, int b, int li) { return F::state(row, b, li); }
    static inline float get(Row row, int i) { return F::get(row, i); }
};
template <> struct layout<fmt_q4_0> : q32_layout<fmt_q4_0, false, false> {};
template <> struct layout<fmt_q4_1> : q32_layout<fmt_q4_1, false, true> {};
template <> struct layout<fmt_q5_0> : q32_layout<fmt_q5_0, true, false> {};
template <> struct layout<fmt_q5_1> : q32_layout<fmt_q5_1, true, true> {};

// The K-quants planar: bytes per block of the planes q, h, s, d in that order.
template <typename F, int QB, int HB, int SB, int DB> struct k_layout {
    typedef KRow Row;
    static inline Row row(device const uchar* w, uint64_t row_bytes, int rows, int r) {
        const uint64_t nb = row_bytes / uint64_t(F::BYTES), n = uint64_t(rows) * nb, rb = uint64_t(r) * nb;
        device const uchar* h = w + QB * n;
        device const uchar* s = h + HB * n;
        device const uchar* d = s + SB * n;
        return KRow{w + QB * rb, h + HB * rb, s + SB * rb, d + DB * rb};
    }
    static inline typename F::State state(Row row, int b, int li) { return F::state(row, b, li); }
    static inline float get(Row row, int i) { return F::get(row, i); }
};
template <> struct layout<fmt_q4_k> : k_layout<fmt_q4_k, 128, 0, 12, 4> {};
template <> struct layout<fmt_q5_k> : k_layout<fmt_q5_k, 128, 32, 12, 4> {};
template <> struct layout<fmt_q6_k> : k_layout<fmt_q6_k, 128, 64, 16, 2> {};
template <> struct layout<fmt_q2_k> : k_layout<fmt_q2_k, 64, 0, 16, 4> {};
template <> struct layout<fmt_q3_k> : k_layout<fmt_q3_k, 64, 32, 12, 2> {};

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
    static inline void get8(Q8Row row, int k, thread float4* v) {
        const float d = half_bits(*(device const ushort*)(row.d + 2 * (k / 32)));
        const uint2 q = *(device const uint2*)(plane_at(row.q, k));
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

// The 32-element 4- and 5-bit formats: run r = (k % 32) / 8 of the block (q32_run_words).
template <bool FIVE, bool MIN, int OFFSET> struct q32_gemm_run {
    static inline void get8(Q32Row row, int k, thread float4* v) {
        const int b = k / 32;
        const uint2 q = q32_run_words(row, b, (k % 32) / 8, FIVE);
        if (MIN)
            run8_add_min(q32_d(row, b), q32_m(row, b), q, v);
        else
            run8_offset(q32_d(row, b), q, float(OFFSET), v);
    }
};
template <> struct gemm_run<fmt_q4_0> : q32_gemm_run<false, false, 8> {};
template <> struct gemm_run<fmt_q4_1> : q32_gemm_run<false, true, 0> {};
template <> struct gemm_run<fmt_q5_0> : q32_gemm_run<true, false, 16> {};
template <> struct gemm_run<fmt_q5_1> : q32_gemm_run<true, true, 0> {};

// Q4_K, Q5_K: the run is elements l0 .. l0 + 7 (l0 = k % 32) of sub-block j = (k % 256) / 32,
// nibble j & 1 of qs[32 (j / 2) + l0 ..] (Q5_K: bit j of qh[l0 ..] on top).
template <bool FIVE> struct k4_gemm_run {
    static inline void get8(KRow row, int k, thread float4* v) {
        const int b = k / 256, j = (k % 256) / 32, l0 = k % 32;
        const int2 sm = k4_scale_min(row.s + 12 * b, j);
        uint2 q = field2(*(device const uint2*)(row.q + 128 * b + 32 * (j / 2) + l0), uint(4 * (j & 1)), 0x0F0F0F0Fu);
        if (FIVE) {
            const uint2 hi = field2(*(device const uint2*)(row.h + 32 * b + l0), uint(j), 0x01010101u);
            q = uint2(q.x | (hi.x << 4), q.y | (hi.y << 4));
        }
        run8_sub_min(half_bits(*(device const ushort*)(row.d + 4 * b)) * float(sm.x),
                     half_bits(*(device const ushort*)(row.d + 4 * b + 2)) * float(sm.y), q, v);
    }
};
template <> struct gemm_run<fmt_q4_k> : k4_gemm_run<false> {};
template <> struct gemm_run<fmt_q5_k> : k4_gemm_run<true> {};

template <> struct gemm_run<fmt_q2_k> {
    static inline void get8(KRow row, int k, thread float4* v) {
        const int b = k / 256, e = k % 256;
        const uchar sc = row.s[16 * b + e / 16];
        const uint2 q = field2(*(device const uint2*)(row.q + 64 * b + 32 * (e / 128) + e % 32), uint(2 * ((e % 128) / 32)),
                               0x03030303u);
        run8_sub_min(half_bits(*(device const ushort*)(row.d + 4 * b)) * float(sc & 15),
                     half_bits(*(device const ushort*)(row.d + 4 * b + 2)) * float(sc >> 4), q, v);
    }
};

template <> struct gemm_run<fmt_q3_k> {
    static inline void get8(KRow row, int k, thread float4* v) {
        const int b = k / 256, e = k % 256, l0 = e % 32;
        const uint2 q = field2(*(device const uint2*)(row.q + 64 * b + 32 * (e / 128) + l0), uint(2 * ((e % 128) / 32)),
                               0x03030303u);
        const uint2 h = field2(*(device const uint2*)(row.h + 32 * b + l0), uint(e / 32), 0x01010101u);
        // q - 4 without the high bit, q with it
        run8_offset(half_bits(*(device const ushort*)(row.d + 2 * b)) * float(q3_k_scale(row.s + 12 * b, e / 16)),
                    uint2(q.x | (h.x << 2), q.y | (h.y << 2)), 4.0f, v);
    }
};

template <> struct gemm_run<fmt_q6_k> {
    static inline void get8(KRow row, int k, thread float4* v) {
        const int b = k / 256, e = k % 256, h = e / 128, kq = (e % 128) / 32, l0 = e % 32;
        const uint2 lo = field2(*(device const uint2*)(row.q + 128 * b + 64 * h + 32 * (kq & 1) + l0), uint(4 * (kq >> 1)),
                                0x0F0F0F0Fu);
        const uint2 hi = field2(*(device const uint2*)(row.h + 64 * b + 32 * h + l0), uint(2 * kq), 0x03030303u);
        run8_offset(q6_k_d(row, b) * q6_k_scale(row, b, e / 16), uint2(lo.x | (hi.x << 4), lo.y | (hi.y << 4)), 32.0f, v);
    }
};
