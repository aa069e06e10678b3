// Seeded top-k sampling, written once for the host and the GPU so that both pick the same token
// from the same logits: the host's sampler (Python's Sampler, through the CPU backend's
// Backend::sample) and GPU-resident decoding (metal/sample.metal) include this header.
//
// Bitwise agreement needs every float operation to be the same IEEE operation on both sides, so
// this file uses only +, -, *, explicit fma, floor and bit casts (each exactly rounded, or exact,
// on a CPU and on an Apple GPU; MSL's exp and log are not specified to the last bit and are not
// used), sums run in one fixed order, and the kernel that includes it is compiled without fast
// math (CMakeLists.txt, gpu_metal.mm), which would let the compiler reassociate or contract.
//
// The rule, given the k' = min(top_k, n) largest logits in the candidate order (below):
//   1. candidates at -inf are dropped (fewer than k' tokens unmasked);
//   2. e_i = exp(v_i - v_0), z = the sum of e_i in candidate order;
//   3. top-p < 1: keep the shortest prefix whose running sum of e_i reaches top_p * z;
//   4. min-p > 0: keep the prefix with e_i >= min_p (a probability at least min_p times the top's);
//   5. w_i = exp((v_i - v_0) * inv_temp) over the kept ones, W their sum in order;
//   6. u = a uniform draw in [0, 1) from (seed, counter); the token is the first candidate whose
//      running sum of w_i exceeds u * W.
// This is the host sampler's chain (python/metallic/sampling.py) for settings without penalties,
// in float32. The draw is counter-based: draw number c of a stream is a pure function of the
// seed and c (splitmix64), so the GPU can make draws c, c + 1, ... without a generator state.
//
// Candidate order: larger logit first, among equal logits the smaller index. Logits compare by
// their orderable key (pick_key), in which -0 sorts below +0: both sides use the key.
#pragma once

#ifndef __METAL_VERSION__
#include <cmath>
#include <cstdint>
#include <cstring>
#endif

namespace metallic {

#ifdef __METAL_VERSION__
inline float pick_fma(float a, float b, float c) { return metal::fma(a, b, c); }
inline float pick_floor(float x) { return metal::floor(x); }
inline uint32_t pick_bits(float x) { return metal::as_type<uint32_t>(x); }
inline float pick_float(uint32_t b) { return metal::as_type<float>(b); }
#else
inline float pick_fma(float a, float b, float c) { return std::fma(a, b, c); }
inline float pick_floor(float x) { return std::floor(x); }
inline uint32_t pick_bits(float x) {
    uint32_t b;
    std::memcpy(&b, &x, sizeof b);
    return b;
}
inline float pick_float(uint32_t b) {
    float x;
    std::memcpy(&x, &b, sizeof x);
    return x;
}
#endif

// What the pick of one token needs besides the logits (GPU-resident decoding passes it to the
// kernel as is: fixed-width fields only).
struct PickSettings {
    int32_t top_k;     // 1 .. PICK_TOP_K_MAX
    float top_p;       // (0, 1]; 1 = off
    float min_p;       // [0, 1]; 0 = off
    float inv_temp;    // 1 / temperature, rounded to float32 once by the caller
    uint32_t seed_lo;  // the stream's 64-bit seed
    uint32_t seed_hi;
    uint32_t counter;  // which draw of the stream this pick makes
};

// The largest top_k the shared pick supports (the GPU ranks the candidates in threadgroup
// memory; llama.cpp's default is 40, Hugging Face's 50); larger ones sample on the host. An
// enumerator, as args.h's launch constants, so it reads the same in MSL and C++.
enum PickLimits : int32_t { PICK_TOP_K_MAX = 256 };

// A uint32 that orders as the float does (the usual sign flip): larger logit, larger key.
inline uint32_t pick_key(float v) {
    const uint32_t b = pick_bits(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Draw `counter` of the stream `seed`, uniform in [0, 1) on a grid of 2^-24: splitmix64 of
// seed + (counter + 1) * golden ratio, top 24 bits. Sebastiano Vigna's splitmix64 passes
// BigCrush and is what Java's SplittableRandom and xoshiro's seeding use.
inline float pick_uniform(uint32_t seed_lo, uint32_t seed_hi, uint32_t counter) {
    uint64_t z = ((uint64_t(seed_hi) << 32) | uint64_t(seed_lo)) + (uint64_t(counter) + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return float(uint32_t(z >> 40)) * (1.0f / 16777216.0f);
}

// exp(x) for x <= 0 within a few ulp, 0 below -87 (where exp would leave float32's normal range:
// GPUs may flush subnormals, so none is ever produced). Cody-Waite reduction x = n ln2 + r,
// |r| <= ln2 / 2, and the degree-7 Taylor polynomial of exp(r) (truncation error < 2e-8).
inline float pick_exp(float x) {
    if (!(x > -87.0f)) return 0.0f;  // also -inf
    const float n = pick_floor(pick_fma(x, 1.44269504f, 0.5f));
    float r = pick_fma(-n, 0.693145752f, x);  // ln2's high part: n * it is exact
    r = pick_fma(-n, 1.42860677e-6f, r);     // and its low part
    float p = 1.0f / 5040.0f;
    p = pick_fma(p, r, 1.0f / 720.0f);
    p = pick_fma(p, r, 1.0f / 120.0f);
    p = pick_fma(p, r, 1.0f / 24.0f);
    p = pick_fma(p, r, 1.0f / 6.0f);
    p = pick_fma(p, r, 0.5f);
    p = pick_fma(p, r, 1.0f);
    p = pick_fma(p, r, 1.0f);
    return p * pick_float(uint32_t(int32_t(n) + 127) << 23);  // times 2^n, n in [-126, 0]: exact
}

// Steps 1-6 above over k candidates already in candidate order (values v, their token ids id);
// returns the index into them of the picked one. v[0] must be finite (the callers report NaN,
// +inf and all -inf before calling). Template over the pointer types so that the kernel can
// pass threadgroup arrays.
template <typename Values>
inline int pick_sorted(Values v, int k, PickSettings s) {
    while (k > 1 && pick_key(v[k - 1]) == pick_key(-INFINITY)) --k;
    const float top = v[0];
    int keep = k;
    if (s.top_p < 1.0f) {
        float z = 0.0f;
        for (int i = 0; i < k; ++i) z += pick_exp(v[i] - top);
        const float target = s.top_p * z;
        float cum = 0.0f;
        for (int i = 0; i < k; ++i) {
            cum += pick_exp(v[i] - top);
            if (cum >= target) {
                keep = i + 1;
                break;
            }
        }
    }
    if (s.min_p > 0.0f)
        for (int i = 1; i < keep; ++i)
            if (pick_exp(v[i] - top) < s.min_p) {
                keep = i;
                break;
            }
    float total = 0.0f;
    for (int i = 0; i < keep; ++i) total += pick_exp((v[i] - top) * s.inv_temp);
    const float target = pick_uniform(s.seed_lo, s.seed_hi, s.counter) * total;
    float cum = 0.0f;
    int last = 0;  // the last candidate of positive weight: the pick if rounding leaves cum <= target
    for (int i = 0; i < keep; ++i) {
        const float w = pick_exp((v[i] - top) * s.inv_temp);
        if (w > 0.0f) last = i;
        cum += w;
        if (cum > target) return i;
    }
    return last;
}

}  // namespace metallic
