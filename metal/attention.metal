// Attention instantiations by KV-cache type; the kernels are in attention.h.
// Host: attention:       grid = (heads, tokens), threadgroup = 32 * nsg threads,
//                        [[threadgroup(0)]] = (2 + head_dim) * nsg floats
//       attention_split: grid = (heads, splits), the same threadgroup; partial holds
//                        heads * splits * (head_dim + 2) floats
//       attention_merge: grid = heads, threadgroup >= 32 threads
#include "attention.h"

template [[host_name("attention_f16")]] [[kernel]] decltype(attention<half>) attention<half>;
template [[host_name("attention_f32")]] [[kernel]] decltype(attention<float>) attention<float>;
template [[host_name("attention_split_f16")]] [[kernel]] decltype(attention_split<half>) attention_split<half>;
template [[host_name("attention_split_f32")]] [[kernel]] decltype(attention_split<float>) attention_split<float>;

// out[h] = the splits' partials merged: sum_s acc_s exp(M_s - M) / sum_s L_s exp(M_s - M).
kernel void attention_merge(constant AttentionArgs& args [[buffer(0)]],
                            device const float* partial [[buffer(1)]],
                            device float* out [[buffer(2)]],
                            uint h [[threadgroup_position_in_grid]],
                            uint tid [[thread_position_in_threadgroup]],
                            uint ntg [[threads_per_threadgroup]]) {
    const int hd = args.head_dim;
    const int2 win = attn_window(args, 0);
    const int n_splits = (win.y + 1 - win.x + args.split_len - 1) / args.split_len;
    device const float* part = partial + uint64_t(h) * uint64_t(n_splits) * uint64_t(hd + 2);
    float M = ATTN_NEG_BIG;
    for (int s = 0; s < n_splits; ++s) M = max(M, part[s * (hd + 2)]);
    float L = 0.0f;
    for (int s = 0; s < n_splits; ++s) L += part[s * (hd + 2) + 1] * exp(part[s * (hd + 2)] - M);
    for (int d = int(tid); d < hd; d += int(ntg)) {
        float o = 0.0f;
        for (int s = 0; s < n_splits; ++s) o += part[s * (hd + 2) + 2 + d] * exp(part[s * (hd + 2)] - M);
        out[uint64_t(h) * uint64_t(hd) + uint64_t(d)] = o / L;
    }
}
