// Rotary position embedding fused with the KV-cache write, for the attention block's q, k and v:
// rope_store_kv_f16 / _f32 (the cache's type).
//
// Grid (tokens, n_heads + n_kv_heads); threadgroups of the first n_heads rotate a head of q in
// place, the others a head of k, which they also write to the cache (bound at the layer's
// offset) with the matching head of v: cache[kv_head][pos0 + t][:] = k[t][kv_head][:]. One thread
// per dimension (head_dim <= MAX_HEAD_DIM, args.h): each computes its rotated value from the
// originals, then (after a barrier: the rotation reads the partner dimension) writes it. For
// qk-norm models (Qwen3, Gemma 3) the head is RMS-normalized first, in the same pass.
//
// The rotation itself (and the pair layout, function constant ROPE_NEOX) is rope_element in
// rope.h, which attention_rope shares.
//
// The grid is 2-D and the threadgroups 1-D: a thread's index is tpitg.x. Every position or
// size attribute of a kernel is uint2, since MSL wants them all of one width (.ci/check_msl.py).
#include <metal_stdlib>
#include "rope.h"

template <typename KV>
kernel void rope_store_kv(constant RopeKvArgs& args [[buffer(0)]],
                          device float* q [[buffer(1)]],
                          device float* k [[buffer(2)]],
                          device const float* v [[buffer(3)]],
                          device KV* k_cache [[buffer(4)]],
                          device KV* v_cache [[buffer(5)]],
                          device const float* inv_freq [[buffer(6)]],
                          device const float* q_norm [[buffer(7)]],
                          device const float* k_norm [[buffer(8)]],
                          uint2 tgpig [[threadgroup_position_in_grid]],
                          uint2 tpitg [[thread_position_in_threadgroup]],
                          uint lane [[thread_index_in_simdgroup]],
                          uint sg [[simdgroup_index_in_threadgroup]],
                          uint nsg [[simdgroups_per_threadgroup]]) {
    threadgroup float partial[MAX_HEAD_DIM / 32];  // one per simdgroup
    const uint i = tpitg.x;
    const uint t = tgpig.x, head = tgpig.y;
    const int hd = args.head_dim;
    const bool is_q = int(head) < args.n_heads;
    const uint kvh = head - uint(args.n_heads);
    device float* x = is_q ? q + (uint64_t(t) * uint64_t(args.n_heads) + head) * uint64_t(hd)
                           : k + (uint64_t(t) * uint64_t(args.n_kv_heads) + kvh) * uint64_t(hd);

    // qk-norm: x = x / rms(x) * norm_w over the head, one factor per threadgroup; simdgroup s
    // sums the squares of dimensions 32s .. 32s + 31 (the threadgroup is ceil(head_dim / 32)
    // simdgroups), as attention_rope's chunks.
    float scale = 1.0f;
    if (args.qk_norm) {  // uniform: the whole grid does it or none
        const float xi = int(i) < hd ? x[i] : 0.0f;
        const float ss = simd_sum(xi * xi);
        if (lane == 0) partial[sg] = ss;
        threadgroup_barrier(mem_flags::mem_threadgroup);
        scale = rope_norm_scale(partial, int(nsg), hd, args.eps);
    }
    device const float* nw = is_q ? q_norm : k_norm;
    const float val = int(i) < hd ? rope_element(x, int(i), args.rope_dims, args.pos0 + int(t), inv_freq,
                                                 args.qk_norm != 0, scale, nw)
                                  : 0.0f;
    threadgroup_barrier(mem_flags::mem_device);  // every read of x before any write
    if (int(i) < hd) {
        x[i] = val;
        if (!is_q) {
            const uint64_t dst = (uint64_t(kvh) * uint64_t(args.n_ctx) + uint64_t(args.pos0) + t) * uint64_t(hd);
            const uint64_t src = (uint64_t(t) * uint64_t(args.n_kv_heads) + kvh) * uint64_t(hd);
            k_cache[dst + i] = KV(val);
            v_cache[dst + i] = KV(v[src + i]);
        }
    }
}

template [[host_name("rope_store_kv_f16")]] [[kernel]] decltype(rope_store_kv<half>) rope_store_kv<half>;
template [[host_name("rope_store_kv_f32")]] [[kernel]] decltype(rope_store_kv<float>) rope_store_kv<float>;
