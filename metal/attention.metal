// Attention instantiations by KV-cache type; the kernels are in attention.h.
// Host: attention:       grid = (n_kv_heads * blocks, 1), blocks = ceil(n_tokens * n_heads /
//                        n_kv_heads / ATTN_ROWS), threadgroup = 32 * nsg threads,
//                        [[threadgroup(0)]] = (nsg - 1) * ATTN_ROWS * (2 + 8 * nl) floats,
//                        nl = attn_lanes_per_row(head_dim)
//       attention_split: grid = (n_kv_heads * blocks, splits), the same threadgroup; partial
//                        holds heads * splits * (head_dim + 2) floats (one token)
//   attention_rope(_split): as attention (attention_split), buffers 5-10 rope_store_kv's (args, k,
//                        v, inv_freq, q_norm, k_norm), function constant 2 = NeoX pairs, and
//                        [[threadgroup(0)]] the larger of the above and attn_rope_k_offset +
//                        2 * n_tokens * head_dim of the cache's type (at most MATVEC_TOKENS tokens)
//       attention_merge: grid = heads, threadgroup >= 32 threads
//       attention_tile:  grid = (n_kv_heads * ceil(n_tokens * n_heads / n_kv_heads / (8 * nsg)), 1),
//                        threadgroup = 32 * nsg threads, function constant 0 = head_dim / 8,
//                        [[threadgroup(0)]] = 16 * attn_tile_stride(head_dim) + 128 * nsg floats
#include "attention.h"

template [[host_name("attention_f16")]] [[kernel]] decltype(attention<half, false>) attention<half, false>;
template [[host_name("attention_f32")]] [[kernel]] decltype(attention<float, false>) attention<float, false>;
template [[host_name("attention_split_f16")]] [[kernel]] decltype(attention<half, true>) attention<half, true>;
template [[host_name("attention_split_f32")]] [[kernel]] decltype(attention<float, true>) attention<float, true>;
template [[host_name("attention_rope_f16")]] [[kernel]] decltype(attention_rope<half, false>) attention_rope<half, false>;
template [[host_name("attention_rope_f32")]] [[kernel]] decltype(attention_rope<float, false>) attention_rope<float, false>;
template [[host_name("attention_rope_split_f16")]] [[kernel]] decltype(attention_rope<half, true>) attention_rope<half, true>;
template [[host_name("attention_rope_split_f32")]] [[kernel]] decltype(attention_rope<float, true>) attention_rope<float, true>;

// out[h] = the splits' partials merged: sum_s acc_s exp(M_s - M) / sum_s L_s exp(M_s - M). The
// splits are those attention_split wrote: start / split_len .. pos / split_len.
kernel void attention_merge(constant AttentionArgs& args [[buffer(0)]],
                            device const float* partial [[buffer(1)]],
                            device float* out [[buffer(2)]],
                            uint h [[threadgroup_position_in_grid]],
                            uint tid [[thread_position_in_threadgroup]],
                            uint ntg [[threads_per_threadgroup]]) {
    const int hd = args.head_dim;
    const int2 win = attn_window(args, 0);
    const int n_splits = win.y / args.split_len - win.x / args.split_len + 1;
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

template [[host_name("attention_tile_f16")]] [[kernel]] decltype(attention_tile<half>) attention_tile<half>;
template [[host_name("attention_tile_f32")]] [[kernel]] decltype(attention_tile<float>) attention_tile<float>;
