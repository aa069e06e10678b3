// Matrix-matrix product for prefill with simdgroup_matrix 8x8 tiles:
//     out[m][n] = dot(A[m], W[n]),  A: M x K activations (float), W: N x K weights (T).
//
// A threadgroup of 4 simdgroups computes a 32x32 tile of out. Per K step of 32 the threads copy
// a 32x32 tile of A and of W (as float, transposed to K x N, zero beyond the edges) into
// threadgroup memory; each simdgroup then multiplies its 16x16 quarter as 2x2 8x8 blocks.
// The result goes through threadgroup memory so ragged edges need no special matrix stores.
#pragma once

#include <metal_stdlib>
#include "args.h"

using namespace metal;

constant constexpr int MM_TILE = 32;

template <typename T>
kernel void matmul(constant MatmulArgs& args [[buffer(0)]],
                   device const float* a [[buffer(1)]],
                   device const T* w [[buffer(2)]],
                   device float* out [[buffer(3)]],
                   uint2 tgpig [[threadgroup_position_in_grid]],
                   uint tid [[thread_index_in_threadgroup]],
                   uint sg [[simdgroup_index_in_threadgroup]]) {
    threadgroup float as[MM_TILE * MM_TILE];  // [m][k]
    threadgroup float ws[MM_TILE * MM_TILE];  // [k][n]
    threadgroup float cs[MM_TILE * MM_TILE];  // [m][n]

    const int m0 = int(tgpig.y) * MM_TILE, n0 = int(tgpig.x) * MM_TILE;
    const int sm = int(sg / 2) * 16, sn = int(sg % 2) * 16;  // this simdgroup's quarter

    simdgroup_float8x8 acc[2][2];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);

    for (int k0 = 0; k0 < args.K; k0 += MM_TILE) {
        // 128 threads copy 1024 elements of each tile: 8 each.
        for (int e = int(tid); e < MM_TILE * MM_TILE; e += 128) {
            const int r = e / MM_TILE, c = e % MM_TILE;
            const int k = k0 + c;
            const bool kin = k < args.K;
            as[r * MM_TILE + c] = (kin && m0 + r < args.M) ? a[uint64_t(m0 + r) * args.a_stride + k] : 0.0f;
            ws[c * MM_TILE + r] = (kin && n0 + r < args.N) ? float(w[uint64_t(n0 + r) * args.w_stride + k]) : 0.0f;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (int kk = 0; kk < MM_TILE; kk += 8) {
            simdgroup_float8x8 ma[2], mb[2];
            for (int i = 0; i < 2; ++i) simdgroup_load(ma[i], as + (sm + i * 8) * MM_TILE + kk, MM_TILE);
            for (int j = 0; j < 2; ++j) simdgroup_load(mb[j], ws + kk * MM_TILE + sn + j * 8, MM_TILE);
            for (int i = 0; i < 2; ++i)
                for (int j = 0; j < 2; ++j) simdgroup_multiply_accumulate(acc[i][j], ma[i], mb[j], acc[i][j]);
        }
        // The next iteration overwrites the tiles.
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }

    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) simdgroup_store(acc[i][j], cs + (sm + i * 8) * MM_TILE + sn + j * 8, MM_TILE);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int e = int(tid); e < MM_TILE * MM_TILE; e += 128) {
        const int r = e / MM_TILE, c = e % MM_TILE;
        if (m0 + r < args.M && n0 + c < args.N) out[uint64_t(m0 + r) * args.out_stride + n0 + c] = cs[e];
    }
}
