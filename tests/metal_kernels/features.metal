// Small kernels exercising the simulator's MSL surface: collectives, vectors, half, atomics,
// function constants, dynamic threadgroup memory, 3-D grids.
#include <metal_stdlib>
using namespace metal;

constant bool fc_double [[function_constant(0)]];
constant float fc_scale [[function_constant(1)]];

// Every simd collective, one output column each: out[lane][k].
kernel void feat_simd(device const float* x [[buffer(0)]],
                      device float* out [[buffer(1)]],
                      uint gid [[thread_position_in_grid]],
                      uint lane [[thread_index_in_simdgroup]]) {
    const float v = x[gid];
    device float* o = out + gid * 10;
    o[0] = simd_sum(v);
    o[1] = simd_max(v);
    o[2] = simd_min(v);
    o[3] = simd_shuffle(v, (lane + 5) % 32);
    o[4] = simd_shuffle_down(v, 3);
    o[5] = simd_shuffle_xor(v, 1);
    o[6] = simd_broadcast(v, 7);
    o[7] = simd_prefix_exclusive_sum(v);
    o[8] = simd_shuffle_up(v, 2);
    o[9] = float(simd_sum(int(lane)));
}

// Vector types, swizzles, packed types, as_type, select, half rounding.
kernel void feat_vectors(device const float4* x [[buffer(0)]],
                         device float4* out [[buffer(1)]],
                         device const packed_float3* p [[buffer(2)]],
                         device half4* h [[buffer(3)]],
                         device uint* bits [[buffer(4)]],
                         uint i [[thread_position_in_grid]]) {
    const float4 v = x[i];
    const float2 lo = v.xy;
    const float2 hi = v.zw;
    const float3 q = float3(p[i]);
    out[i * 4 + 0] = float4(hi, lo);
    out[i * 4 + 1] = select(v, float4(0.0f), v < 0.0f);
    out[i * 4 + 2] = float4(q, dot(v, v));
    out[i * 4 + 3] = fma(v, v, float4(1.0f)) + max(v, 2.0f) * 0.5f;
    h[i] = half4(v) * half4(half(3.0f));
    bits[i] = as_type<uint>(v.x);
}

// Atomics on device memory across threadgroups and on threadgroup memory.
kernel void feat_atomics(device atomic_uint* counter [[buffer(0)]],
                         device atomic_float* fsum [[buffer(1)]],
                         device uint* per_group [[buffer(2)]],
                         uint tid [[thread_position_in_threadgroup]],
                         uint group [[threadgroup_position_in_grid]]) {
    threadgroup atomic_uint local;
    if (tid == 0) atomic_store_explicit(&local, 0u, memory_order_relaxed);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    atomic_fetch_add_explicit(&local, tid, memory_order_relaxed);
    atomic_fetch_add_explicit(counter, 1u, memory_order_relaxed);
    atomic_fetch_add_explicit(fsum, 0.5f, memory_order_relaxed);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid == 0) per_group[group] = atomic_load_explicit(&local, memory_order_relaxed);
}

// Function constants and [[threadgroup(0)]] memory sized by the host.
kernel void feat_constants(device const float* x [[buffer(0)]],
                           device float* out [[buffer(1)]],
                           threadgroup float* scratch [[threadgroup(0)]],
                           uint3 tpig [[thread_position_in_grid]],
                           uint3 tpg [[threads_per_grid]],
                           uint tid [[thread_index_in_threadgroup]],
                           uint3 tptg [[threads_per_threadgroup]]) {
    const uint ntg = tptg.x * tptg.y * tptg.z;  // uint3 like the grid attributes: one width
    const uint i = (tpig.z * tpg.y + tpig.y) * tpg.x + tpig.x;
    scratch[tid] = x[i];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float v = scratch[ntg - 1 - tid] * fc_scale;
    if (!is_function_constant_defined(fc_double))
        v = -1.0f;
    else if (fc_double)
        v *= 2.0f;
    out[i] = v;
}
