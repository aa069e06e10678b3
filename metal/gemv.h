// Matrix-vector product for decode: out[t][r] = dot(W[r], x[t]).
//
// One simdgroup per NR consecutive rows, several simdgroups per threadgroup, grid.y = tokens.
// Each lane reads 16 bytes of every row per step (8 halves or 4 floats) and the matching
// activations, accumulates locally, and the simdgroup folds with one simd_sum per row at the end.
// Rows whose length is not a multiple of the vector width take a scalar path (vector loads must
// stay aligned, and a row start is only as aligned as cols allows).
#pragma once

#include <metal_stdlib>
#include "args.h"

using namespace metal;

template <typename T> struct gemv_vec;  // 16 bytes of T as float4 pieces
template <> struct gemv_vec<float> {
    static constexpr int width = 4;
    static inline float dot16(device const float* w, device const float* x) {
        return dot(*(device const float4*)w, *(device const float4*)x);
    }
};
template <> struct gemv_vec<half> {
    static constexpr int width = 8;
    static inline float dot16(device const half* w, device const float* x) {
        const float4 w0 = float4(*(device const half4*)w);
        const float4 w1 = float4(*(device const half4*)(w + 4));
        return dot(w0, *(device const float4*)x) + dot(w1, *(device const float4*)(x + 4));
    }
};

template <typename T, int NR>
kernel void gemv(constant GemvArgs& args [[buffer(0)]],
                 device const T* w [[buffer(1)]],
                 device const float* x [[buffer(2)]],
                 device float* out [[buffer(3)]],
                 uint2 tgpig [[threadgroup_position_in_grid]],
                 uint lane [[thread_index_in_simdgroup]],
                 uint sg [[simdgroup_index_in_threadgroup]],
                 uint nsg [[simdgroups_per_threadgroup]]) {
    const int row0 = int((tgpig.x * nsg + sg) * NR);
    if (row0 >= args.rows) return;  // uniform across the simdgroup
    const int nr = min(NR, args.rows - row0);
    const int cols = args.cols;
    x += tgpig.y * args.x_stride;
    out += tgpig.y * args.out_stride;
    w += uint64_t(row0) * args.w_stride;

    float acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = 0.0f;

    constexpr int W = gemv_vec<T>::width;
    if (cols % W == 0 && args.w_stride % W == 0) {
        for (int i = int(lane) * W; i < cols; i += 32 * W) {
            for (int r = 0; r < NR; ++r)
                if (r < nr) acc[r] += gemv_vec<T>::dot16(w + r * args.w_stride + i, x + i);
        }
    } else {
        for (int i = int(lane); i < cols; i += 32) {
            const float xi = x[i];
            for (int r = 0; r < NR; ++r)
                if (r < nr) acc[r] += float(w[r * args.w_stride + i]) * xi;
        }
    }
    for (int r = 0; r < NR; ++r) {
        const float s = simd_sum(acc[r]);
        if (lane == 0 && r < nr) out[row0 + r] = s;
    }
}
