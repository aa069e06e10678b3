// Matrix-vector products for decode, any weight format F (formats.h):
//     out[t][r] = dot(W[r], x[t]) (+ bias[r]) (+ out[t][r])
//
// One simdgroup per NR consecutive rows (NR = MATVEC_NR of args.h, which the host's grid assumes),
// several simdgroups per threadgroup, grid.y = tokens.
// Lanes take the format's units in turn (unit b goes to lane b % 32): a unit is one 16-byte load
// for the float formats and a 32-element block or sub-block for the quantized ones, dotted with
// the matching x. Every lane accumulates its NR partial sums; one simd_sum per row folds them at
// the end. The epilogue adds the bias and the residual (out += ...), so a projection into the
// residual stream needs no separate add.
//
// Kernels:
//   matvec       one matrix
//   matvec_jobs  up to three matrices of one format and width over the same x (q, k, v)
//   matvec_glu   gate and up together, out = act(x G) * (x U): the feed-forward's first half
//
// Function constants:
//   MATVEC_NORM (2)  x is RMSNorm's input: each simdgroup computes 1/rms(x) itself (one pass
//                    over x, which the dot products then read again from cache), reads
//                    x * norm_w through the x_normed view and scales the finished sums. This
//                    removes the norm's own dispatch, a one-threadgroup kernel that would hold
//                    up the whole GPU between two wide ones.
//   MATVEC_EPS (3)   the norm's epsilon
//   MATVEC_GELU (1)  matvec_glu's activation: GELU-tanh, else SiLU
//
// If x rows are not 16-byte aligned (LINEAR_X_VEC4 unset), or the matrix has a tail shorter
// than a block (float formats only: the quantized ones come in whole blocks), the elements
// outside whole aligned blocks go through F::get one at a time.
#pragma once

#include <metal_stdlib>
#include "activations.h"
#include "args.h"
#include "formats.h"

using namespace metal;

constant bool MATVEC_GELU [[function_constant(1)]];
constant bool MATVEC_NORM [[function_constant(2)]];
constant float MATVEC_EPS [[function_constant(3)]];

// 1 / rms(x[0 .. cols)), on every lane of the simdgroup.
inline float inv_rms(device const float* x, int cols, float eps, uint lane) {
    float ss = 0.0f;
    for (int i = int(lane); i < cols; i += 32) ss += x[i] * x[i];
    return rsqrt(simd_sum(ss) / float(cols) + eps);
}

// Rows 0 .. nr - 1 of W (row_bytes apart) dotted with the input view x; every lane gets the NR
// simdgroup-wide sums in sums[].
template <typename F, int NR, typename X>
inline void matvec_dots(device const uchar* w, uint64_t row_bytes, int nr, int cols, bool x_aligned,
                        thread const X& x, uint lane, thread float* sums) {
    float acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = 0.0f;

    // Whole units with vector loads of x need x rows 16-byte aligned (the host binds x at
    // 16-byte aligned offsets) and, for the float formats, rows of W too (the matrix start is:
    // the host refuses a float matrix that is not 16-byte aligned in the file). Quantized blocks
    // are read piecewise: no alignment needed.
    const bool aligned = x_aligned && (int(F::VEC) == 0 || row_bytes % 16 == 0);
    const int nb = aligned ? cols / int(F::BLOCK) : 0;
    for (int b = int(lane); b < nb; b += 32) {
        const X xb = x.at(b * int(F::BLOCK));
        for (int r = 0; r < NR; ++r)
            if (r < nr) acc[r] += F::dot(w + r * row_bytes, b, xb);
    }
    for (int i = nb * int(F::BLOCK) + int(lane); i < cols; i += 32) {
        const float xi = x.s(i);
        for (int r = 0; r < NR; ++r)
            if (r < nr) acc[r] += F::get(w + r * row_bytes, i) * xi;
    }
    for (int r = 0; r < NR; ++r) sums[r] = simd_sum(acc[r]);
}

// The same for two matrices (gate and up) of one format, sharing the reads of x.
template <typename F, int NR, typename X>
inline void matvec_dots2(device const uchar* wa, device const uchar* wb, uint64_t row_bytes, int nr, int cols,
                         bool x_aligned, thread const X& x, uint lane, thread float* sa, thread float* sb) {
    float aa[NR], ab[NR];
    for (int r = 0; r < NR; ++r) aa[r] = ab[r] = 0.0f;
    const bool aligned = x_aligned && (int(F::VEC) == 0 || row_bytes % 16 == 0);
    const int nb = aligned ? cols / int(F::BLOCK) : 0;
    for (int b = int(lane); b < nb; b += 32) {
        const X xb = x.at(b * int(F::BLOCK));
        for (int r = 0; r < NR; ++r)
            if (r < nr) {
                aa[r] += F::dot(wa + r * row_bytes, b, xb);
                ab[r] += F::dot(wb + r * row_bytes, b, xb);
            }
    }
    for (int i = nb * int(F::BLOCK) + int(lane); i < cols; i += 32) {
        const float xi = x.s(i);
        for (int r = 0; r < NR; ++r)
            if (r < nr) {
                aa[r] += F::get(wa + r * row_bytes, i) * xi;
                ab[r] += F::get(wb + r * row_bytes, i) * xi;
            }
    }
    for (int r = 0; r < NR; ++r) {
        sa[r] = simd_sum(aa[r]);
        sb[r] = simd_sum(ab[r]);
    }
}

// Dots of W's rows with x, or with RMSNorm(x) * norm_w when MATVEC_NORM.
template <typename F, int NR>
inline void matvec_rows(device const uchar* w, uint64_t row_bytes, int nr, int cols, bool x_aligned,
                        device const float* x, device const float* norm_w, uint lane, thread float* sums) {
    if (MATVEC_NORM) {
        const float scale = inv_rms(x, cols, MATVEC_EPS, lane);
        const x_normed xv{x, norm_w};
        matvec_dots<F, NR, x_normed>(w, row_bytes, nr, cols, x_aligned, xv, lane, sums);
        for (int r = 0; r < NR; ++r) sums[r] *= scale;
    } else {
        const x_plain xv{x};
        matvec_dots<F, NR, x_plain>(w, row_bytes, nr, cols, x_aligned, xv, lane, sums);
    }
}

// The epilogue of row r: + bias, + what out holds (residual), store.
inline void linear_store(device float* out, device const float* bias, int r, int flags, float s) {
    if (flags & LINEAR_BIAS) s += bias[r];
    if (flags & LINEAR_ACCUMULATE) s += out[r];
    out[r] = s;
}

template <typename F, int NR>
kernel void matvec(constant LinearArgs& args [[buffer(0)]],
                   device const uchar* w [[buffer(1)]],
                   device const float* x [[buffer(2)]],
                   device float* out [[buffer(3)]],
                   device const float* bias [[buffer(4)]],
                   device const float* norm_w [[buffer(5)]],
                   uint2 tgpig [[threadgroup_position_in_grid]],
                   uint lane [[thread_index_in_simdgroup]],
                   uint sg [[simdgroup_index_in_threadgroup]],
                   uint nsg [[simdgroups_per_threadgroup]]) {
    static_assert(NR == MATVEC_NR, "matvec: the host launches MATVEC_NR rows per simdgroup (args.h)");
    const int row0 = int((tgpig.x * nsg + sg) * NR);
    if (row0 >= args.rows) return;  // uniform across the simdgroup
    const int nr = min(NR, args.rows - row0);
    x += tgpig.y * args.x_stride;
    out += tgpig.y * args.out_stride;

    float sums[NR];
    matvec_rows<F, NR>(w + uint64_t(row0) * args.row_bytes, args.row_bytes, nr, args.cols,
                       (args.flags & LINEAR_X_VEC4) != 0, x, norm_w, lane, sums);
    for (int r = 0; r < NR; ++r)
        if (lane == 0 && r < nr) linear_store(out, bias, row0 + r, args.flags, sums[r]);
}

// Threadgroups first_tg[j] .. first_tg[j + 1] - 1 work on job j. Unused jobs' weights are bound
// to some weight buffer and their out and bias to job 0's out; none of them is read.
template <typename F, int NR>
kernel void matvec_jobs(constant LinearJobsArgs& args [[buffer(0)]],
                        device const uchar* w0 [[buffer(1)]],
                        device const uchar* w1 [[buffer(2)]],
                        device const uchar* w2 [[buffer(3)]],
                        device const float* x [[buffer(4)]],
                        device float* out0 [[buffer(5)]],
                        device float* out1 [[buffer(6)]],
                        device float* out2 [[buffer(7)]],
                        device const float* bias0 [[buffer(8)]],
                        device const float* bias1 [[buffer(9)]],
                        device const float* bias2 [[buffer(10)]],
                        device const float* norm_w [[buffer(11)]],
                        uint tg [[threadgroup_position_in_grid]],
                        uint lane [[thread_index_in_simdgroup]],
                        uint sg [[simdgroup_index_in_threadgroup]],
                        uint nsg [[simdgroups_per_threadgroup]]) {
    static_assert(NR == MATVEC_NR, "matvec_jobs: the host launches MATVEC_NR rows per simdgroup (args.h)");
    const int job = int(tg) >= args.first_tg[2] ? 2 : (int(tg) >= args.first_tg[1] ? 1 : 0);
    const int rows = args.rows[job];
    const int row0 = int((int(tg) - args.first_tg[job]) * int(nsg) + int(sg)) * NR;
    if (row0 >= rows) return;  // uniform across the simdgroup
    const int nr = min(NR, rows - row0);
    device const uchar* w = job == 0 ? w0 : (job == 1 ? w1 : w2);
    device float* out = job == 0 ? out0 : (job == 1 ? out1 : out2);
    device const float* bias = job == 0 ? bias0 : (job == 1 ? bias1 : bias2);

    float sums[NR];
    matvec_rows<F, NR>(w + uint64_t(row0) * args.row_bytes, args.row_bytes, nr, args.cols,
                       (args.flags[0] & LINEAR_X_VEC4) != 0, x, norm_w, lane, sums);
    for (int r = 0; r < NR; ++r)
        if (lane == 0 && r < nr) linear_store(out, bias, row0 + r, args.flags[job], sums[r]);
}

// out[t][r] = act(dot(G[r], x[t])) * dot(U[r], x[t]), gate G and up U in the same format and
// shape (args describe one of them). Saves the glu dispatch and the round trip of the up
// projection through memory.
template <typename F, int NR>
kernel void matvec_glu(constant LinearArgs& args [[buffer(0)]],
                       device const uchar* wg [[buffer(1)]],
                       device const uchar* wu [[buffer(2)]],
                       device const float* x [[buffer(3)]],
                       device float* out [[buffer(4)]],
                       device const float* norm_w [[buffer(5)]],
                       uint2 tgpig [[threadgroup_position_in_grid]],
                       uint lane [[thread_index_in_simdgroup]],
                       uint sg [[simdgroup_index_in_threadgroup]],
                       uint nsg [[simdgroups_per_threadgroup]]) {
    static_assert(NR == MATVEC_NR, "matvec_glu: the host launches MATVEC_NR rows per simdgroup (args.h)");
    const int row0 = int((tgpig.x * nsg + sg) * NR);
    if (row0 >= args.rows) return;  // uniform across the simdgroup
    const int nr = min(NR, args.rows - row0);
    x += tgpig.y * args.x_stride;
    out += tgpig.y * args.out_stride;
    const uint64_t first = uint64_t(row0) * args.row_bytes;
    const bool x_aligned = (args.flags & LINEAR_X_VEC4) != 0;

    float g[NR], u[NR];
    if (MATVEC_NORM) {
        const float scale = inv_rms(x, args.cols, MATVEC_EPS, lane);
        const x_normed xv{x, norm_w};
        matvec_dots2<F, NR, x_normed>(wg + first, wu + first, args.row_bytes, nr, args.cols, x_aligned, xv, lane, g, u);
        for (int r = 0; r < NR; ++r) {
            g[r] *= scale;
            u[r] *= scale;
        }
    } else {
        const x_plain xv{x};
        matvec_dots2<F, NR, x_plain>(wg + first, wu + first, args.row_bytes, nr, args.cols, x_aligned, xv, lane, g, u);
    }
    for (int r = 0; r < NR; ++r)
        if (lane == 0 && r < nr) out[row0 + r] = gate_act(g[r], MATVEC_GELU) * u[r];
}
