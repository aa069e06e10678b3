// RMSNorm: one threadgroup per row. Each thread accumulates a strided part of the sum of squares,
// simd_sum folds the lanes, and one partial per simdgroup goes through threadgroup memory.
#pragma once

#include <metal_stdlib>
#include "args.h"

using namespace metal;

// Sum of v over the whole threadgroup, returned to every thread. `partial` holds one float per
// simdgroup; the trailing barrier lets the caller reuse it.
inline float threadgroup_sum(float v, threadgroup float* partial, uint lane, uint sg, uint nsg) {
    v = simd_sum(v);
    if (lane == 0) partial[sg] = v;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    // Every simdgroup folds the partials itself: no second broadcast round is needed.
    float total = lane < nsg ? partial[lane] : 0.0f;
    total = simd_sum(total);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    return total;
}

// T: the weight's element type (float or half). x and out are float; out may alias x.
// ADD: out += instead of out = (x += rmsnorm(y) * w for Gemma's post-norms, in one dispatch).
template <typename T, bool ADD>
kernel void rmsnorm(constant RmsNormArgs& args [[buffer(0)]],
                    device const float* x [[buffer(1)]],
                    device const T* w [[buffer(2)]],
                    device float* out [[buffer(3)]],
                    uint row [[threadgroup_position_in_grid]],
                    uint tid [[thread_position_in_threadgroup]],
                    uint ntg [[threads_per_threadgroup]],
                    uint lane [[thread_index_in_simdgroup]],
                    uint sg [[simdgroup_index_in_threadgroup]],
                    uint nsg [[simdgroups_per_threadgroup]]) {
    threadgroup float partial[32];
    x += row * args.x_stride;
    out += row * args.out_stride;
    const int d = args.d;

    float ss = 0.0f;
    if (args.x_vec4) {
        device const float4* x4 = (device const float4*)x;
        for (int i = int(tid); i < d / 4; i += int(ntg)) {
            const float4 v = x4[i];
            ss += dot(v, v);
        }
    } else {
        for (int i = int(tid); i < d; i += int(ntg)) ss += x[i] * x[i];
    }
    ss = threadgroup_sum(ss, partial, lane, sg, nsg);
    const float scale = rsqrt(ss / float(d) + args.eps);

    // All reads of x happened before the barrier inside threadgroup_sum, so out may alias x.
    for (int i = int(tid); i < d; i += int(ntg)) {
        const float v = x[i] * scale * float(w[i]);
        out[i] = ADD ? out[i] + v : v;
    }
}
