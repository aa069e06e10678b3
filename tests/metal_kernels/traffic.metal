// Kernels with known memory traffic, for the simulator's traffic counting
// (tests/test_sim_traffic.py): every figure they produce can be worked out by hand.
#include <metal_stdlib>
using namespace metal;

// One float per thread: 4 bytes loaded and stored per lane, each simdgroup instruction on one
// 128-byte line (perfectly coalesced).
kernel void traffic_copy(device const float* src [[buffer(0)]],
                         device float* dst [[buffer(1)]],
                         uint i [[thread_position_in_grid]]) {
    dst[i] = src[i];
}

// The same with float4: one 16-byte load and store per lane, four lines per instruction.
kernel void traffic_copy4(device const float4* src [[buffer(0)]],
                          device float4* dst [[buffer(1)]],
                          uint i [[thread_position_in_grid]]) {
    dst[i] = src[i];
}

// The planted uncoalesced read: lane i reads the float 128 bytes after lane i - 1's, so one
// load instruction touches 32 lines where its 128 bytes would fit in one.
kernel void traffic_strided(device const float* src [[buffer(0)]],
                            device float* dst [[buffer(1)]],
                            uint i [[thread_position_in_grid]]) {
    dst[i] = src[i * 32];
}

// Only lane 0 of each simdgroup stores: 1 of 32 lanes active in the store.
kernel void traffic_lane0(device const float* src [[buffer(0)]],
                          device float* dst [[buffer(1)]],
                          uint i [[thread_position_in_grid]],
                          uint lane [[thread_index_in_simdgroup]]) {
    const float s = simd_sum(src[i]);
    if (lane == 0) dst[i / 32] = s;
}

// Threadgroup memory with a stride: thread t writes and reads word t * stride. Stride 1 spreads
// a simdgroup over the 32 banks; stride 32 puts all 32 lanes in bank 0 (31 extra cycles per
// instruction), stride 2 two lanes per bank (1 extra cycle).
kernel void traffic_banks(constant uint& stride [[buffer(0)]],
                          device float* out [[buffer(1)]],
                          uint t [[thread_index_in_threadgroup]],
                          uint g [[threadgroup_position_in_grid]],
                          uint n [[threads_per_threadgroup]]) {
    threadgroup float buf[32 * 64];
    buf[t * stride] = float(t);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[g * n + t] = buf[t * stride];
}

// A float4 read whose components are used one by one, and four adjacent byte reads: the CPU
// compiler issues these as separate scalar loads, a GPU as one 16-byte and one 4-byte load per
// lane; combining must count the GPU's.
kernel void traffic_components(device const float4* src [[buffer(0)]],
                               device const uchar* bytes [[buffer(1)]],
                               device float* dst [[buffer(2)]],
                               uint i [[thread_position_in_grid]]) {
    const float4 v = src[i];
    device const uchar* b = bytes + 4 * i;
    dst[i] = v.x + 2.0f * v.y + 3.0f * v.z + 4.0f * v.w + float(b[0]) + float(b[1]) * 2.0f +
             float(b[2]) * 4.0f + float(b[3]) * 8.0f;
}
