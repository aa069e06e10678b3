// Causal attention over one layer's KV cache, for decode and prefill alike:
//     out[t][h] = softmax(q[t][h] . K[kv(h)][start .. pos] * scale) V[kv(h)][start .. pos]
// with pos = pos0 + t, start = max(0, pos - window + 1) for sliding-window layers, else 0, and
// kv(h) = h / (n_heads / n_kv_heads): query heads of a GQA group read the same cache rows in
// place (cache layout [kv_head][position][head_dim], bound at the layer's offset).
//
// One threadgroup per (head, token). Its simdgroups split the positions (simdgroup s takes
// start + s, start + s + nsg, ...); within a simdgroup each lane holds head_dim / 32 dimensions
// of q and of the output accumulator, one simd_sum per position gives the score, and an online
// softmax (running max m, running sum l, accumulator rescaled when m grows) needs one pass
// over K and V. The simdgroups then merge their (m, l, acc) through threadgroup memory:
// [nsg] maxima, [nsg] sums, [nsg][head_dim] accumulators ([[threadgroup(0)]], sized by the host).
//
// "Minus infinity" is a large finite value: Metal compiles with fast math, which may assume
// no infinities.
#pragma once

#include <metal_stdlib>
#include "args.h"

using namespace metal;

constant constexpr int ATTN_MAX_DIMS_PER_LANE = 8;  // head_dim <= 256
constant constexpr float ATTN_NEG_BIG = -1.0e30f;

template <typename KV>
kernel void attention(constant AttentionArgs& args [[buffer(0)]],
                      device const float* q [[buffer(1)]],
                      device const KV* k_cache [[buffer(2)]],
                      device const KV* v_cache [[buffer(3)]],
                      device float* out [[buffer(4)]],
                      threadgroup float* shared [[threadgroup(0)]],
                      uint2 tgpig [[threadgroup_position_in_grid]],
                      uint tid [[thread_index_in_threadgroup]],
                      uint lane [[thread_index_in_simdgroup]],
                      uint sg [[simdgroup_index_in_threadgroup]],
                      uint nsg [[simdgroups_per_threadgroup]]) {
    const int h = int(tgpig.x), t = int(tgpig.y);
    const int hd = args.head_dim;
    const int pos = args.pos0 + t;
    const int start = args.window > 0 ? max(0, pos - args.window + 1) : 0;
    const int len = pos - start + 1;
    const int kvh = h / (args.n_heads / args.n_kv_heads);
    const uint64_t base = (uint64_t(kvh) * uint64_t(args.n_ctx) + uint64_t(start)) * uint64_t(hd);
    device const float* qh = q + (uint64_t(t) * uint64_t(args.n_heads) + uint64_t(h)) * uint64_t(hd);

    // This lane's dimensions: lane, lane + 32, ...
    float qr[ATTN_MAX_DIMS_PER_LANE], acc[ATTN_MAX_DIMS_PER_LANE];
    for (int j = 0; j < ATTN_MAX_DIMS_PER_LANE; ++j) {
        const int d = int(lane) + 32 * j;
        qr[j] = d < hd ? qh[d] * args.scale : 0.0f;
        acc[j] = 0.0f;
    }

    float m = ATTN_NEG_BIG, l = 0.0f;
    for (int p = int(sg); p < len; p += int(nsg)) {
        device const KV* kp = k_cache + base + uint64_t(p) * uint64_t(hd);
        device const KV* vp = v_cache + base + uint64_t(p) * uint64_t(hd);
        float s = 0.0f;
        for (int j = 0; j < ATTN_MAX_DIMS_PER_LANE; ++j) {
            const int d = int(lane) + 32 * j;
            if (d < hd) s += qr[j] * float(kp[d]);
        }
        s = simd_sum(s);
        const float m_new = max(m, s);
        const float c = exp(m - m_new), e = exp(s - m_new);
        l = l * c + e;
        for (int j = 0; j < ATTN_MAX_DIMS_PER_LANE; ++j) {
            const int d = int(lane) + 32 * j;
            if (d < hd) acc[j] = acc[j] * c + e * float(vp[d]);
        }
        m = m_new;
    }

    threadgroup float* ms = shared;
    threadgroup float* ls = shared + nsg;
    threadgroup float* accs = shared + 2 * nsg;
    if (lane == 0) {
        ms[sg] = m;
        ls[sg] = l;
    }
    for (int j = 0; j < ATTN_MAX_DIMS_PER_LANE; ++j) {
        const int d = int(lane) + 32 * j;
        if (d < hd) accs[sg * uint(hd) + uint(d)] = acc[j];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    // Merge: every thread computes the global max and sum (nsg is small), then owns dimensions.
    float M = ATTN_NEG_BIG;
    for (uint s = 0; s < nsg; ++s) M = max(M, ms[s]);
    float L = 0.0f;
    for (uint s = 0; s < nsg; ++s) L += ls[s] * exp(ms[s] - M);
    device float* oh = out + (uint64_t(t) * uint64_t(args.n_heads) + uint64_t(h)) * uint64_t(hd);
    for (int d = int(tid); d < hd; d += int(nsg) * 32) {
        float o = 0.0f;
        for (uint s = 0; s < nsg; ++s) o += accs[s * uint(hd) + uint(d)] * exp(ms[s] - M);
        oh[d] = o / L;
    }
}
