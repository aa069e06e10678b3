// The next token of GPU-resident greedy decoding (engine.h, decode_resident): the index of the
// largest of n logits, the first of equal ones (numpy.argmax's rule, which the host's greedy
// sampler follows), written where the next pass's embedding reads its token id. The host never
// waits in between, so the kernel also reports what the host sampler would have refused:
//   status 0  ok
//   status 1  a NaN among the logits
//   status 2  the largest logit is +inf
//   status 3  every logit is -inf
// On a bad status the token written is 0, a valid id, so the passes still queued behind it
// read inside the embedding table; the host discards their tokens.
//
// One threadgroup: each thread scans a strided share in increasing order (so it keeps the first
// of equal values), then each simdgroup and finally the first simdgroup reduce, taking the
// largest value and, among equal values, the smallest index.
//
// Compiled without fast math, as sample.metal: fast math lets the compiler assume there is no
// NaN or infinity, and drop exactly the tests that make the statuses.
// metallic: exact math
#include <metal_stdlib>
#include "args.h"

using namespace metal;

#define ARGMAX_NONE 0x7fffffff  // no index yet: larger than any

// Largest v, then smallest i, over the simdgroup; every lane gets the result.
inline void simd_argmax(thread float& v, thread int& i) {
    const float m = simd_max(v);
    i = simd_min(v == m ? i : ARGMAX_NONE);
    v = m;
}

kernel void argmax_f32(constant ArgmaxArgs& args [[buffer(0)]],
                       device const float* x [[buffer(1)]],
                       device int32_t* token [[buffer(2)]],
                       device int32_t* status [[buffer(3)]],
                       uint tid [[thread_index_in_threadgroup]],
                       uint ntg [[threads_per_threadgroup]],
                       uint lane [[thread_index_in_simdgroup]],
                       uint sg [[simdgroup_index_in_threadgroup]],
                       uint nsg [[simdgroups_per_threadgroup]]) {
    threadgroup float best_v[32];
    threadgroup int best_i[32];
    threadgroup int any_nan[32];

    float v = -INFINITY;
    int i = ARGMAX_NONE;
    int nan_seen = 0;
    for (int j = int(tid); j < args.n; j += int(ntg)) {
        const float xj = x[j];
        if (isnan(xj)) nan_seen = 1;
        if (xj > v || (i == ARGMAX_NONE && xj == v)) {  // the first -inf counts as a candidate too
            v = xj;
            i = j;
        }
    }
    simd_argmax(v, i);
    nan_seen = simd_max(nan_seen);
    if (lane == 0) {
        best_v[sg] = v;
        best_i[sg] = i;
        any_nan[sg] = nan_seen;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (sg != 0) return;
    const bool have = lane < nsg;
    v = have ? best_v[lane] : -INFINITY;
    i = have ? best_i[lane] : ARGMAX_NONE;
    nan_seen = have ? any_nan[lane] : 0;
    simd_argmax(v, i);
    nan_seen = simd_max(nan_seen);
    if (lane == 0) {
        const int s = nan_seen ? 1 : (v == INFINITY ? 2 : (v == -INFINITY ? 3 : 0));
        status[0] = s;
        token[0] = s == 0 ? i : 0;
    }
}
