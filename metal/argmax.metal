// Greedy sampling: out[row] = index of the first maximum of x[row]. One threadgroup per row.
// Each thread scans a strided part in increasing index order (so it keeps the first of equal
// values), then simdgroups and the threadgroup fold (value, index) pairs: largest value, and
// among equal values the smallest index, which matches numpy.argmax.
#include <metal_stdlib>
#include "args.h"

using namespace metal;

kernel void argmax_f32(constant ArgmaxArgs& args [[buffer(0)]],
                       device const float* x [[buffer(1)]],
                       device int32_t* out [[buffer(2)]],
                       uint row [[threadgroup_position_in_grid]],
                       uint tid [[thread_position_in_threadgroup]],
                       uint ntg [[threads_per_threadgroup]],
                       uint lane [[thread_index_in_simdgroup]],
                       uint sg [[simdgroup_index_in_threadgroup]],
                       uint nsg [[simdgroups_per_threadgroup]]) {
    threadgroup float best_v[32];
    threadgroup int best_i[32];
    const int no_index = 0x7fffffff;
    x += row * args.x_stride;

    float v = -INFINITY;
    int idx = no_index;
    for (int i = int(tid); i < args.n; i += int(ntg)) {
        const float xi = x[i];
        if (xi > v || idx == no_index) {
            v = xi;
            idx = i;
        }
    }
    float m = simd_max(v);
    int mi = simd_min(v == m ? idx : no_index);
    if (lane == 0) {
        best_v[sg] = m;
        best_i[sg] = mi;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (sg == 0) {
        v = lane < nsg ? best_v[lane] : -INFINITY;
        idx = lane < nsg ? best_i[lane] : no_index;
        m = simd_max(v);
        mi = simd_min(v == m ? idx : no_index);
        if (lane == 0) out[row] = mi;
    }
}
