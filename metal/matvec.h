// Matrix-vector product for decode, any weight format F (formats.h):
//     out[t][r] = dot(W[r], x[t]) (+ bias[r]) (+ out[t][r])
//
// One simdgroup per NR consecutive rows, several simdgroups per threadgroup, grid.y = tokens.
// Lanes take the format's units in turn (unit b goes to lane b % 32): a unit is one 16-byte load
// for the float formats and a 32-element block or sub-block for the quantized ones, dotted with
// the matching x.
// Every lane accumulates its NR partial sums; one simd_sum per row folds them at the end.
// The epilogue adds the bias and the residual (out += ...), so a projection into the residual
// stream needs no separate add.
//
// If x rows are not 16-byte aligned, or the matrix has a tail shorter than a block (float
// formats only: the quantized ones come in whole blocks), the elements outside whole aligned
// blocks go through F::get one at a time.
#pragma once

#include <metal_stdlib>
#include "activations.h"
#include "args.h"
#include "formats.h"

using namespace metal;

template <typename F, int NR>
kernel void matvec(constant LinearArgs& args [[buffer(0)]],
                   device const uchar* w [[buffer(1)]],
                   device const float* x [[buffer(2)]],
                   device float* out [[buffer(3)]],
                   device const float* bias [[buffer(4)]],
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
    w += uint64_t(row0) * args.row_bytes;

    float acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = 0.0f;

    // Whole blocks with vector loads of x need x rows 16-byte aligned (the host binds x at
    // 16-byte aligned offsets) and, for the float formats, rows of W too (the matrix start is:
    // GGUF aligns tensors to 32 bytes). Quantized blocks are read piecewise: no alignment needed.
    const bool aligned = args.x_stride % 4 == 0 && (int(F::VEC) == 0 || args.row_bytes % 16 == 0);
    const int nb = aligned ? cols / int(F::BLOCK) : 0;
    for (int b = int(lane); b < nb; b += 32) {
        device const float* xb = x + b * int(F::BLOCK);
        for (int r = 0; r < NR; ++r)
            if (r < nr) acc[r] += F::dot(w + r * args.row_bytes, b, xb);
    }
    for (int i = nb * int(F::BLOCK) + int(lane); i < cols; i += 32) {
        const float xi = x[i];
        for (int r = 0; r < NR; ++r)
            if (r < nr) acc[r] += F::get(w + r * args.row_bytes, i) * xi;
    }

    for (int r = 0; r < NR; ++r) {
        float s = simd_sum(acc[r]);
        if (lane == 0 && r < nr) {
            if (args.flags & LINEAR_BIAS) s += bias[row0 + r];
            if (args.flags & LINEAR_ACCUMULATE) s += out[row0 + r];
            out[row0 + r] = s;
        }
    }
}

// The feed-forward's first half for decode in one pass: out[t][r] = act(dot(G[r], x[t])) *
// dot(U[r], x[t]) with gate G and up U in the same format and shape (args describe one of
// them). Saves the glu dispatch and the round trip of the up projection through memory. The
// activation is the function constant MATVEC_GELU (SiLU when false).
constant bool MATVEC_GELU [[function_constant(1)]];

template <typename F, int NR>
kernel void matvec_glu(constant LinearArgs& args [[buffer(0)]],
                       device const uchar* wg [[buffer(1)]],
                       device const uchar* wu [[buffer(2)]],
                       device const float* x [[buffer(3)]],
                       device float* out [[buffer(4)]],
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
    wg += uint64_t(row0) * args.row_bytes;
    wu += uint64_t(row0) * args.row_bytes;

    float ag[NR], au[NR];
    for (int r = 0; r < NR; ++r) ag[r] = au[r] = 0.0f;

    const bool aligned = args.x_stride % 4 == 0 && (int(F::VEC) == 0 || args.row_bytes % 16 == 0);
    const int nb = aligned ? cols / int(F::BLOCK) : 0;
    for (int b = int(lane); b < nb; b += 32) {
        device const float* xb = x + b * int(F::BLOCK);
        for (int r = 0; r < NR; ++r)
            if (r < nr) {
                ag[r] += F::dot(wg + r * args.row_bytes, b, xb);
                au[r] += F::dot(wu + r * args.row_bytes, b, xb);
            }
    }
    for (int i = nb * int(F::BLOCK) + int(lane); i < cols; i += 32) {
        const float xi = x[i];
        for (int r = 0; r < NR; ++r)
            if (r < nr) {
                ag[r] += F::get(wg + r * args.row_bytes, i) * xi;
                au[r] += F::get(wu + r * args.row_bytes, i) * xi;
            }
    }

    for (int r = 0; r < NR; ++r) {
        const float g = simd_sum(ag[r]);
        const float u = simd_sum(au[r]);
        if (lane == 0 && r < nr) out[row0 + r] = gate_act(g, MATVEC_GELU) * u;
    }
}
