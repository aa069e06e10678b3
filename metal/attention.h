// Causal attention over one layer's KV cache:
//     out[t][h] = softmax(q[t][h] . K[kv(h)][start .. pos] * scale) V[kv(h)][start .. pos]
// with pos = pos0 + t, start = max(0, pos - window + 1) for sliding-window layers, else 0, and
// kv(h) = h / (n_heads / n_kv_heads): query heads of a GQA group read the same cache rows in
// place (cache layout [kv_head][position][head_dim], bound at the layer's offset).
//
// attend_range: one threadgroup over a range of positions. Its simdgroups split the positions
// (simdgroup s takes p0 + s, p0 + s + nsg, ...); within a simdgroup each lane holds head_dim / 32
// dimensions of q and of the output accumulator, one simd_sum per position gives the score, and
// an online softmax (running max m, running sum l, accumulator rescaled when m grows) needs one
// pass over K and V. The simdgroups then merge their (m, l, acc) through threadgroup memory:
// [nsg] maxima, [nsg] sums, [nsg][head_dim] accumulators ([[threadgroup(0)]], sized by the host).
//
// Kernels:
//   attention          one threadgroup per (head, token) over the whole window: prefill, and
//                      decode with short contexts
//   attention_split    decode with long contexts: grid (heads, splits), each threadgroup takes
//                      split_len positions and writes its unnormalized partial (m, l, acc)
//   attention_merge    grid (heads): merges the splits' partials into out (attention.metal)
//
// "Minus infinity" is a large finite value: Metal compiles with fast math, which may assume
// no infinities.
#pragma once

#include <metal_stdlib>
#include "args.h"

using namespace metal;

constant constexpr int ATTN_MAX_DIMS_PER_LANE = MAX_HEAD_DIM / 32;
constant constexpr float ATTN_NEG_BIG = -1.0e30f;

// The window of query row t: positions [start, pos].
inline int2 attn_window(constant AttentionArgs& args, int t) {
    const int pos = args.pos0 + t;
    return int2(args.window > 0 ? max(0, pos - args.window + 1) : 0, pos);
}

// Attends positions [p0, p1) of head h's kv head with the query qh. On return shared holds the
// simdgroups' maxima, sums and accumulators, and the result is (M, L): the overall max and
// softmax denominator; output dimension d is sum_s acc[s][d] exp(m[s] - M) (attn_output_dim).
template <typename KV>
inline float2 attend_range(constant AttentionArgs& args, device const float* qh, device const KV* k_head,
                           device const KV* v_head, int p0, int p1, threadgroup float* shared, uint lane,
                           uint sg, uint nsg) {
    const int hd = args.head_dim;
    // This lane's dimensions: lane, lane + 32, ...
    float qr[ATTN_MAX_DIMS_PER_LANE], acc[ATTN_MAX_DIMS_PER_LANE];
    for (int j = 0; j < ATTN_MAX_DIMS_PER_LANE; ++j) {
        const int d = int(lane) + 32 * j;
        qr[j] = d < hd ? qh[d] * args.scale : 0.0f;
        acc[j] = 0.0f;
    }

    float m = ATTN_NEG_BIG, l = 0.0f;
    for (int p = p0 + int(sg); p < p1; p += int(nsg)) {
        device const KV* kp = k_head + uint64_t(p) * uint64_t(hd);
        device const KV* vp = v_head + uint64_t(p) * uint64_t(hd);
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

    // Every thread computes the overall max and sum (nsg is small).
    float M = ATTN_NEG_BIG;
    for (uint s = 0; s < nsg; ++s) M = max(M, ms[s]);
    float L = 0.0f;
    for (uint s = 0; s < nsg; ++s) L += ls[s] * exp(ms[s] - M);
    return float2(M, L);
}

inline float attn_output_dim(threadgroup const float* shared, uint nsg, int hd, int d, float M) {
    float o = 0.0f;
    for (uint s = 0; s < nsg; ++s) o += shared[2 * nsg + s * uint(hd) + uint(d)] * exp(shared[s] - M);
    return o;
}

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
    const int2 win = attn_window(args, t);
    const uint64_t head = uint64_t(h / (args.n_heads / args.n_kv_heads)) * uint64_t(args.n_ctx) * uint64_t(hd);
    const uint64_t row = (uint64_t(t) * uint64_t(args.n_heads) + uint64_t(h)) * uint64_t(hd);
    const float2 ML = attend_range<KV>(args, q + row, k_cache + head, v_cache + head, win.x, win.y + 1, shared,
                                       lane, sg, nsg);
    for (int d = int(tid); d < hd; d += int(nsg) * 32) out[row + d] = attn_output_dim(shared, nsg, hd, d, ML.x) / ML.y;
}

// Decode (one query row) split over the window: threadgroup (h, s) takes positions
// start + s * split_len .. + split_len and writes partial[h][s] = {M, L, acc[head_dim]}.
template <typename KV>
kernel void attention_split(constant AttentionArgs& args [[buffer(0)]],
                            device const float* q [[buffer(1)]],
                            device const KV* k_cache [[buffer(2)]],
                            device const KV* v_cache [[buffer(3)]],
                            device float* partial [[buffer(4)]],
                            threadgroup float* shared [[threadgroup(0)]],
                            uint2 tgpig [[threadgroup_position_in_grid]],
                            uint2 ntgs [[threadgroups_per_grid]],
                            uint tid [[thread_index_in_threadgroup]],
                            uint lane [[thread_index_in_simdgroup]],
                            uint sg [[simdgroup_index_in_threadgroup]],
                            uint nsg [[simdgroups_per_threadgroup]]) {
    const int h = int(tgpig.x), s = int(tgpig.y);
    const int hd = args.head_dim;
    const int2 win = attn_window(args, 0);
    const int p0 = win.x + s * args.split_len;
    const int p1 = min(p0 + args.split_len, win.y + 1);
    const uint64_t head = uint64_t(h / (args.n_heads / args.n_kv_heads)) * uint64_t(args.n_ctx) * uint64_t(hd);
    const float2 ML = attend_range<KV>(args, q + uint64_t(h) * uint64_t(hd), k_cache + head, v_cache + head, p0, p1,
                                       shared, lane, sg, nsg);
    device float* part = partial + (uint64_t(h) * uint64_t(ntgs.y) + uint64_t(s)) * uint64_t(hd + 2);
    if (tid == 0) {
        part[0] = ML.x;
        part[1] = ML.y;
    }
    for (int d = int(tid); d < hd; d += int(nsg) * 32) part[2 + d] = attn_output_dim(shared, nsg, hd, d, ML.x);
}
