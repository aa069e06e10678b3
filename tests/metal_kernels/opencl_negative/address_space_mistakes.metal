// Address-space mistakes that compile as plain C++ (so the simulator runs them) but not on the
// GPU. .ci/check_metal_address_spaces.py must reject every line marked MISTAKE.
#include <metal_stdlib>
using namespace metal;

inline float sum_tg(threadgroup const float* p, uint n) {
    float s = 0.0f;
    for (uint i = 0; i < n; ++i) s += p[i];
    return s;
}

template <typename T>
kernel void mistakes(device const T* x [[buffer(0)]],
                     device float* out [[buffer(1)]],
                     uint tid [[thread_position_in_threadgroup]]) {
    threadgroup float scratch[32];
    scratch[tid] = float(x[tid]);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = sum_tg(out, 32);                  // MISTAKE: device pointer where threadgroup is expected
    device float* p = scratch;                   // MISTAKE: threadgroup array into a device pointer
    threadgroup float* q = out;                  // MISTAKE: device pointer into a threadgroup pointer
    thread float* r = &out[0];                   // MISTAKE: device address into a thread pointer
    out[0] = sum_tg(scratch, 32) + p[0] + q[0] + r[0];
}

template [[host_name("mistakes_f32")]] [[kernel]] decltype(mistakes<float>) mistakes<float>;
