// Matrix-matrix product for prefill, any weight format F (formats.h), on simdgroup_matrix 8x8:
//     out[t][r] = dot(W[r], x[t]) (+ bias[r]) (+ out[t][r]),  x: n_tokens x cols floats.
//
// A threadgroup of 4 simdgroups (GEMM_THREADS = 128 threads, args.h) computes a 32 (tokens) x 32
// (rows) tile of out (GEMM_TILE = 32). Per K step of 32 the threads copy a 32x32 tile of x and of
// W (dequantized to float, transposed to K x N, zero beyond the edges) into threadgroup memory;
// each simdgroup multiplies its 16x16 quarter as 2x2 8x8 blocks. The result goes through
// threadgroup memory, so ragged edges and the epilogue (bias, residual) are plain per-element
// stores.
#pragma once

#include <metal_stdlib>
#include "args.h"
#include "formats.h"

using namespace metal;

// The simdgroup layout below (4 simdgroups, each a 16x16 quarter of the tile) is written for these.
static_assert(GEMM_TILE == 32 && GEMM_THREADS == 128, "gemm: tile and threadgroup size of args.h");

template <typename F>
kernel void gemm(constant LinearArgs& args [[buffer(0)]],
                 device const uchar* w [[buffer(1)]],
                 device const float* x [[buffer(2)]],
                 device float* out [[buffer(3)]],
                 device const float* bias [[buffer(4)]],
                 uint2 tgpig [[threadgroup_position_in_grid]],
                 uint tid [[thread_index_in_threadgroup]],
                 uint sg [[simdgroup_index_in_threadgroup]]) {
    threadgroup float xs[GEMM_TILE * GEMM_TILE];  // [token][k]
    threadgroup float ws[GEMM_TILE * GEMM_TILE];  // [k][row]
    threadgroup float cs[GEMM_TILE * GEMM_TILE];  // [token][row]

    const int t0 = int(tgpig.y) * GEMM_TILE, r0 = int(tgpig.x) * GEMM_TILE;
    const int sm = int(sg / 2) * 16, sn = int(sg % 2) * 16;  // this simdgroup's quarter
    const int K = args.cols;

    simdgroup_float8x8 acc[2][2];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);

    for (int k0 = 0; k0 < K; k0 += GEMM_TILE) {
        // 128 threads copy 1024 elements of each tile: 8 each, dequantizing W on the way.
        for (int e = int(tid); e < GEMM_TILE * GEMM_TILE; e += GEMM_THREADS) {
            const int r = e / GEMM_TILE, c = e % GEMM_TILE;
            const int k = k0 + c;
            const bool kin = k < K;
            xs[r * GEMM_TILE + c] = (kin && t0 + r < args.n_tokens) ? x[uint64_t(t0 + r) * args.x_stride + k] : 0.0f;
            ws[c * GEMM_TILE + r] =
                (kin && r0 + r < args.rows) ? F::get(w + uint64_t(r0 + r) * args.row_bytes, k) : 0.0f;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (int kk = 0; kk < GEMM_TILE; kk += 8) {
            simdgroup_float8x8 ma[2], mb[2];
            for (int i = 0; i < 2; ++i) simdgroup_load(ma[i], xs + (sm + i * 8) * GEMM_TILE + kk, GEMM_TILE);
            for (int j = 0; j < 2; ++j) simdgroup_load(mb[j], ws + kk * GEMM_TILE + sn + j * 8, GEMM_TILE);
            for (int i = 0; i < 2; ++i)
                for (int j = 0; j < 2; ++j) simdgroup_multiply_accumulate(acc[i][j], ma[i], mb[j], acc[i][j]);
        }
        // The next iteration overwrites the tiles.
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }

    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j)
            simdgroup_store(acc[i][j], cs + (sm + i * 8) * GEMM_TILE + sn + j * 8, GEMM_TILE);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int e = int(tid); e < GEMM_TILE * GEMM_TILE; e += GEMM_THREADS) {
        const int t = e / GEMM_TILE, r = e % GEMM_TILE;
        if (t0 + t < args.n_tokens && r0 + r < args.rows) {
            device float* o = out + uint64_t(t0 + t) * args.out_stride + r0 + r;
            float s = cs[e];
            if (args.flags & LINEAR_BIAS) s += bias[r0 + r];
            if (args.flags & LINEAR_ACCUMULATE) s += *o;
            *o = s;
        }
    }
}
