// Kernels with deliberate mistakes: the simulator must make each one visible.
// Line numbers matter: tests/test_metal_sim.py looks for them in the abort messages.
#include <metal_stdlib>
using namespace metal;

// Reads a neighbour's threadgroup slot without a barrier. Fibers run one after another until
// they block, so the neighbour has not written yet: the read sees the NaN poison.
kernel void guard_missing_barrier(device float* out [[buffer(0)]],
                                  uint tid [[thread_position_in_threadgroup]],
                                  uint ntg [[threads_per_threadgroup]]) {
    threadgroup float slot[64];
    slot[tid] = float(tid);
    out[tid] = slot[(tid + 1) % ntg];
}

// Reads the neighbour on the other side: odd threadgroups run their threads in reverse order,
// so there the neighbour has not written yet either.
kernel void guard_missing_barrier_down(device float* out [[buffer(0)]],
                                       uint tid [[thread_position_in_threadgroup]],
                                       uint ntg [[threads_per_threadgroup]],
                                       uint group [[threadgroup_position_in_grid]]) {
    threadgroup float slot[64];
    slot[tid] = float(tid);
    out[group * ntg + tid] = slot[(tid + ntg - 1) % ntg];
}

// The same with the barrier: correct.
kernel void guard_with_barrier(device float* out [[buffer(0)]],
                               uint tid [[thread_position_in_threadgroup]],
                               uint ntg [[threads_per_threadgroup]]) {
    threadgroup float slot[64];
    slot[tid] = float(tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = slot[(tid + 1) % ntg];
}

// Only even threads write; odd slots keep the poison.
kernel void guard_unwritten(device float* out [[buffer(0)]],
                            uint tid [[thread_position_in_threadgroup]]) {
    threadgroup float slot[64];
    if (tid % 2 == 0) slot[tid] = 1.0f;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = slot[tid];
}

// Half the threads return, the other half waits at a barrier forever.
kernel void guard_divergent_barrier(device float* out [[buffer(0)]],
                                    uint tid [[thread_position_in_threadgroup]]) {
    if (tid >= 16) return;
    threadgroup_barrier(mem_flags::mem_threadgroup);  // GUARD
    out[tid] = 1.0f;
}

// Two barriers on the two sides of a branch.
kernel void guard_split_barrier(device float* out [[buffer(0)]],
                                uint tid [[thread_position_in_threadgroup]]) {
    if (tid % 2 == 0) {
        threadgroup_barrier(mem_flags::mem_threadgroup);  // GUARD
    } else {
        threadgroup_barrier(mem_flags::mem_threadgroup);  // GUARD
    }
    out[tid] = 1.0f;
}

// A simd collective reached by half the lanes.
kernel void guard_divergent_simd(device float* out [[buffer(0)]],
                                 uint lane [[thread_index_in_simdgroup]]) {
    float v = 1.0f;
    if (lane < 16) v = simd_sum(v);  // GUARD
    out[lane] = v;
}

// Writes one element past a threadgroup array.
kernel void guard_tg_oob(device float* out [[buffer(0)]],
                         uint tid [[thread_position_in_threadgroup]]) {
    threadgroup float slot[32];  // GUARD
    slot[tid + 1] = 2.0f;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = slot[tid];
}

// Reads a function constant the pipeline was not given.
constant int guard_fc [[function_constant(3)]];
kernel void guard_missing_constant(device float* out [[buffer(0)]],
                                   uint tid [[thread_position_in_threadgroup]]) {
    out[tid] = float(guard_fc);
}
