// Matrix-vector products for decode, any weight format F (formats.h), for up to MATVEC_TOKENS
// tokens at once:
//     out[t][r] = dot(W[r], x[t]) (+ bias[r]) (+ out[t][r])
//
// Geometry (args.h; the host launches with it): MATVEC_SIMDGROUPS simdgroups per threadgroup,
// one simdgroup per MATVEC_NR consecutive rows (matvec_glu: MATVEC_GLU_NR rows of gate and as
// many of up), grid.y = groups of MATVEC_TOKENS tokens. Every weight is read once per group of
// tokens, so a step's decode rows share the reads of the matrices.
//
// Inside a simdgroup, the format decides how lanes share a row (formats.h): LANES lanes to a
// block, each lane taking CHUNKS runs of CW consecutive elements, so a lane reads x in runs of
// float4 and a group of lanes reads contiguous x. A lane decodes its part of a block once per
// row (State: scales), then each run's weights once, and dots them with every token's x run
// (read once for all NR rows). Every lane accumulates NR sums per token; one simd_sum per row
// and token folds them at the end. The epilogue adds the bias and the residual (out += ...), so
// a projection into the residual stream needs no separate add.
//
// Exactness across batching: a token's arithmetic (which lane adds which products in which
// order, the simd_sum, the norm) depends only on the token's own x and the weights, never on
// how many tokens share the dispatch or where the token sits among them: the engine relies on
// a token dispatched with others giving bit for bit what it gives alone.
//
// Kernels:
//   matvec       one matrix
//   matvec_jobs  up to three matrices of one format and width over the same x (q, k, v)
//   matvec_glu   gate and up together, out = act(x G) * (x U): the feed-forward's first half
//
// Function constants:
//   MATVEC_NORM (2)  x is RMSNorm's input: each threadgroup computes every token's 1/rms(x)
//                    once (its threads split the row, one barrier), reads x * norm_w and
//                    scales the finished sums. This removes the norm's own dispatch, a
//                    one-threadgroup-per-row kernel that would hold up the whole GPU between
//                    two wide ones.
//   MATVEC_EPS (3)   the norm's epsilon
//   MATVEC_GELU (1)  matvec_glu's activation: GELU-tanh, else SiLU
//
// x is read as float4 when its rows are 16-byte aligned (LINEAR_X_VEC4), else element by
// element into the same registers (the same arithmetic). The float formats' rows go through
// F::get one element at a time past the last whole block, and entirely when rows are not
// 16-byte aligned for their wide loads; the quantized formats come in whole blocks.
#pragma once

#include <metal_stdlib>
#include "activations.h"
#include "args.h"
#include "formats.h"

using namespace metal;

constant bool MATVEC_GELU [[function_constant(1)]];
constant bool MATVEC_NORM [[function_constant(2)]];
constant float MATVEC_EPS [[function_constant(3)]];

// The NR rows a simdgroup dots (formats.h, layout<F>). Rows past a matrix's end repeat its last
// row (valid memory); their sums are never stored.
template <typename F, int NR>
struct RowSet {
    typename layout<F>::Row p[NR];
};

template <typename F, int NR>
inline RowSet<F, NR> row_set(device const uchar* w, uint64_t row_bytes, int row0, int rows) {
    RowSet<F, NR> s;
    for (int r = 0; r < NR; ++r) s.p[r] = layout<F>::row(w, row_bytes, rows, min(row0 + r, rows - 1));
    return s;
}

// The tokens a threadgroup reads: n rows of x, stride floats apart.
struct MatvecInput {
    device const float* x;
    device const float* norm_w;  // read with MATVEC_NORM
    uint64_t stride;
    int n;     // 1 .. MATVEC_TOKENS
    int cols;
    bool vec4;  // LINEAR_X_VEC4: rows of x and norm_w 16-byte aligned
};

inline MatvecInput matvec_input(device const float* x, device const float* norm_w, uint64_t stride, int n_tokens,
                                int cols, int flags, uint group) {
    const int t0 = int(group) * MATVEC_TOKENS;
    return MatvecInput{x + uint64_t(t0) * stride, norm_w, stride, min(int(MATVEC_TOKENS), n_tokens - t0), cols,
                       (flags & LINEAR_X_VEC4) != 0};
}

inline float4 load_x4(device const float* p, bool vec4) {
    if (vec4) return *(device const float4*)p;
    return float4(p[0], p[1], p[2], p[3]);
}

// 1 / rms of each token's row into scale[t], on every thread: the threadgroup's threads split
// the row, simd_sum folds each simdgroup's lanes, and every thread adds the simdgroups' sums in
// simdgroup order. part holds MATVEC_SIMDGROUPS * MATVEC_TOKENS floats. Called by every thread
// of the threadgroup (a barrier).
inline void matvec_inv_rms(thread const MatvecInput& in, uint tid, uint lane, uint sg, uint nsg, threadgroup float* part,
                           thread float* scale) {
    float mine = 0.0f;
    for (int t = 0; t < MATVEC_TOKENS; ++t) {
        if (t == in.n) break;
        device const float* xt = in.x + uint64_t(t) * in.stride;
        float ss = 0.0f;
        for (int i = int(tid); i < in.cols; i += int(32 * nsg)) ss += xt[i] * xt[i];
        ss = simd_sum(ss);
        if (int(lane) == t) mine = ss;
    }
    // Lane t stores token t's sum: one instruction, not one single-lane store per token.
    if (int(lane) < in.n) part[sg * MATVEC_TOKENS + lane] = mine;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int t = 0; t < MATVEC_TOKENS; ++t) {
        if (t == in.n) break;
        float ss = 0.0f;
        for (uint g = 0; g < nsg; ++g) ss += part[g * MATVEC_TOKENS + t];
        scale[t] = rsqrt(ss / float(in.cols) + MATVEC_EPS);
    }
}

// Block b of the rows in slots 0 .. nrow - 1 of w (nrow the same on every lane: the loops
// stay uniform) dotted with each token's x (times norm_w with MATVEC_NORM), lane li's part of
// it, added to acc[t * NR + slot].
template <typename F, int NR>
inline void matvec_block(thread const RowSet<F, NR>& w, int nrow, int b, int li, thread const MatvecInput& in,
                         thread float* acc) {
    constexpr int NV = int(F::CW) / 4;  // float4s per run
    typename F::State st[NR];
    for (int r = 0; r < NR; ++r) {
        if (r == nrow) break;
        st[r] = layout<F>::state(w.p[r], b, li);
    }
    for (int k = 0; k < int(F::CHUNKS); ++k) {
        // Zeroed: slots past nrow are never read, but GCC cannot see that (-Wmaybe-uninitialized).
        float4 wv[NR][NV] = {};
        float f[NR] = {};
        for (int r = 0; r < NR; ++r) {
            if (r == nrow) break;
            f[r] = F::chunk(st[r], k, wv[r]);
        }
        const int xo = b * int(F::BLOCK) + F::xoff(li, k);
        float4 nw[NV];  // the norm weights of the run, shared by the tokens
        for (int j = 0; j < NV; ++j) nw[j] = MATVEC_NORM ? load_x4(in.norm_w + xo + 4 * j, in.vec4) : float4(1.0f);
        for (int t = 0; t < MATVEC_TOKENS; ++t) {
            if (t == in.n) break;
            device const float* xt = in.x + uint64_t(t) * in.stride + xo;
            float4 xv[NV];
            for (int j = 0; j < NV; ++j) {
                xv[j] = load_x4(xt + 4 * j, in.vec4);
                if (MATVEC_NORM) xv[j] *= nw[j];
            }
            for (int r = 0; r < NR; ++r) {
                if (r == nrow) break;
                float s = dot(wv[r][0], xv[0]);
                for (int j = 1; j < NV; ++j) s += dot(wv[r][j], xv[j]);
                acc[t * NR + r] += f[r] * s;
            }
        }
    }
}

// Elements i0 .. i1 - 1 of the rows, one element a lane at a time (F::get): what whole blocks do
// not cover.
template <typename F, int NR>
inline void matvec_elements(thread const RowSet<F, NR>& w, thread const MatvecInput& in, int i0, int i1, uint lane,
                            thread float* acc) {
    for (int i = i0 + int(lane); i < i1; i += 32) {
        float wi[NR];
        for (int r = 0; r < NR; ++r) wi[r] = layout<F>::get(w.p[r], i);
        const float nwi = MATVEC_NORM ? in.norm_w[i] : 1.0f;
        for (int t = 0; t < MATVEC_TOKENS; ++t) {
            if (t == in.n) break;
            const float xi = in.x[uint64_t(t) * in.stride + uint64_t(i)] * nwi;
            for (int r = 0; r < NR; ++r) acc[t * NR + r] += wi[r] * xi;
        }
    }
}

// The NR rows of w dotted with each token's x (times norm_w with MATVEC_NORM): after the call
// every lane holds the sums in acc[t * NR + r] for t < in.n.
//
// A step of the simdgroup takes S = 32 / LANES consecutive blocks, every lane group one block
// of all NR rows (x read once for them). When the row's nb blocks are not a multiple of S, the
// last step has only R = nb % S blocks: R groups would work and the other lanes idle (K = 576
// in Q8_0 is 18 blocks, 4.5 steps of 4). That step instead splits the groups into G sets of R
// (G the largest power of two with G * R <= S that divides NR): set s takes rows s, s + G, ...
// of the R blocks, so G * R groups work, each on NR / G rows, and the step takes 1 / G of the
// instructions. Which lane adds what depends on K, never on the tokens. A step's loads cover
// whole 128-byte lines when the row starts on one: the host copies float matrices that do not
// (cpp/metal/weight_layout.h) and lays the planar ones out so (quant_plane_row).
template <typename F, int NR>
inline void matvec_dots(thread const RowSet<F, NR>& w, uint64_t row_bytes, thread const MatvecInput& in, uint lane,
                        thread float* acc) {
    constexpr int S = 32 / int(F::LANES);  // blocks per step
    for (int i = 0; i < MATVEC_TOKENS * NR; ++i) acc[i] = 0.0f;
    const int li = int(lane) % int(F::LANES);
    const int grp = int(lane) / int(F::LANES);
    // The float formats' wide loads need 16-byte aligned rows (the matrix start is: the host
    // copies a float matrix that is not on a 128-byte line).
    const int nb = (int(F::VEC) == 0 || row_bytes % 16 == 0) ? in.cols / int(F::BLOCK) : 0;
    const int nfull = nb - nb % S;
    for (int b = grp; b < nfull; b += S) matvec_block<F, NR>(w, NR, b, li, in, acc);
    const int R = nb - nfull;
    if (R > 0) {
        int G = 1;
        while (2 * G * R <= S && NR % (2 * G) == 0) G *= 2;
        const int set = grp / R;
        if (set < G) {
            RowSet<F, NR> sw;  // slot j: row set + G * j (slots past NR / G unused)
            for (int j = 0; j < NR; ++j) {
                sw.p[j] = w.p[0];
                for (int r = 1; r < NR; ++r)
                    if (r == set + G * j) sw.p[j] = w.p[r];
            }
            float sacc[MATVEC_TOKENS * NR];
            for (int i = 0; i < MATVEC_TOKENS * NR; ++i) sacc[i] = 0.0f;
            matvec_block<F, NR>(sw, NR / G, nfull + grp % R, li, in, sacc);
            for (int t = 0; t < MATVEC_TOKENS; ++t) {
                if (t == in.n) break;
                for (int r = 0; r < NR; ++r)
                    for (int j = 0; j < NR; ++j)
                        if (r == set + G * j) acc[t * NR + r] += sacc[t * NR + j];
            }
        }
    }
    matvec_elements<F, NR>(w, in, nb * int(F::BLOCK), in.cols, lane, acc);
    for (int t = 0; t < MATVEC_TOKENS; ++t) {
        if (t == in.n) break;
        for (int r = 0; r < NR; ++r) acc[t * NR + r] = simd_sum(acc[t * NR + r]);
    }
}

// The simdgroup's sums as the finished dot products: times 1/rms with the norm fused.
template <int NR>
inline void matvec_scale(thread float* acc, int n, thread const float* scale) {
    if (!MATVEC_NORM) return;
    for (int t = 0; t < MATVEC_TOKENS; ++t) {
        if (t == n) break;
        for (int r = 0; r < NR; ++r) acc[t * NR + r] *= scale[t];
    }
}

// The epilogue of rows row0 .. row0 + nr - 1 for every token: + bias, + what out holds
// (residual), store. Every lane holds every sum after simd_sum, so lane l takes sum l (token
// l / NR, row l % NR) and the sums go out in one store instruction of up to 32 lanes, not one
// single-lane store per row and token.
template <int NR>
inline void matvec_store(device float* out, uint64_t out_stride, device const float* bias, int flags, int row0, int nr,
                         int n, thread const float* acc, uint lane) {
    for (int i0 = 0; i0 < MATVEC_TOKENS * NR; i0 += 32) {
        const int i = i0 + int(lane);
        float s = acc[0];
        for (int q = 1; q < MATVEC_TOKENS * NR; ++q)
            if (q == i) s = acc[q];
        const int t = i / NR, r = i % NR;
        if (t >= n || r >= nr) continue;
        device float* o = out + uint64_t(t) * out_stride + uint64_t(row0 + r);
        if (flags & LINEAR_BIAS) s += bias[row0 + r];
        if (flags & LINEAR_ACCUMULATE) s += *o;
        *o = s;
    }
}

template <typename F, int NR>
kernel void matvec(constant LinearArgs& args [[buffer(0)]],
                   device const uchar* w [[buffer(1)]],
                   device const float* x [[buffer(2)]],
                   device float* out [[buffer(3)]],
                   device const float* bias [[buffer(4)]],
                   device const float* norm_w [[buffer(5)]],
                   uint2 tgpig [[threadgroup_position_in_grid]],
                   uint tid [[thread_index_in_threadgroup]],
                   uint lane [[thread_index_in_simdgroup]],
                   uint sg [[simdgroup_index_in_threadgroup]],
                   uint nsg [[simdgroups_per_threadgroup]]) {
    static_assert(NR == MATVEC_NR, "matvec: the host launches MATVEC_NR rows per simdgroup (args.h)");
    threadgroup float part[MATVEC_SIMDGROUPS * MATVEC_TOKENS];
    const MatvecInput in = matvec_input(x, norm_w, args.x_stride, args.n_tokens, args.cols, args.flags, tgpig.y);
    float scale[MATVEC_TOKENS];
    if (MATVEC_NORM) matvec_inv_rms(in, tid, lane, sg, nsg, part, scale);  // before any thread returns
    const int row0 = int((tgpig.x * nsg + sg) * NR);
    if (row0 >= args.rows) return;  // uniform across the simdgroup

    const RowSet<F, NR> rs = row_set<F, NR>(w, args.row_bytes, row0, args.rows);
    float acc[MATVEC_TOKENS * NR];
    matvec_dots<F, NR>(rs, args.row_bytes, in, lane, acc);
    matvec_scale<NR>(acc, in.n, scale);
    matvec_store<NR>(out + uint64_t(tgpig.y) * MATVEC_TOKENS * args.out_stride, args.out_stride, bias, args.flags, row0,
                     min(NR, args.rows - row0), in.n, acc, lane);
}

// Threadgroups first_tg[j] .. first_tg[j + 1] - 1 (in x) work on job j. Unused jobs' weights are
// bound to some weight buffer and their out and bias to job 0's out; none of them is read. x has
// rows of cols floats, job j's out rows of rows[j].
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
                        uint2 tgpig [[threadgroup_position_in_grid]],
                        uint tid [[thread_index_in_threadgroup]],
                        uint lane [[thread_index_in_simdgroup]],
                        uint sg [[simdgroup_index_in_threadgroup]],
                        uint nsg [[simdgroups_per_threadgroup]]) {
    static_assert(NR == MATVEC_NR, "matvec_jobs: the host launches MATVEC_NR rows per simdgroup (args.h)");
    threadgroup float part[MATVEC_SIMDGROUPS * MATVEC_TOKENS];
    const int tg = int(tgpig.x);
    const int job = tg >= args.first_tg[2] ? 2 : (tg >= args.first_tg[1] ? 1 : 0);
    const MatvecInput in =
        matvec_input(x, norm_w, uint64_t(args.cols), args.n_tokens, args.cols, args.flags[job], tgpig.y);
    float scale[MATVEC_TOKENS];
    if (MATVEC_NORM) matvec_inv_rms(in, tid, lane, sg, nsg, part, scale);
    const int rows = args.rows[job];
    const int row0 = ((tg - args.first_tg[job]) * int(nsg) + int(sg)) * NR;
    if (row0 >= rows) return;  // uniform across the simdgroup
    device const uchar* w = job == 0 ? w0 : (job == 1 ? w1 : w2);
    device float* out = job == 0 ? out0 : (job == 1 ? out1 : out2);
    device const float* bias = job == 0 ? bias0 : (job == 1 ? bias1 : bias2);

    const RowSet<F, NR> rs = row_set<F, NR>(w, args.row_bytes, row0, rows);
    float acc[MATVEC_TOKENS * NR];
    matvec_dots<F, NR>(rs, args.row_bytes, in, lane, acc);
    matvec_scale<NR>(acc, in.n, scale);
    matvec_store<NR>(out + uint64_t(tgpig.y) * MATVEC_TOKENS * uint64_t(rows), uint64_t(rows), bias, args.flags[job],
                     row0, min(NR, rows - row0), in.n, acc, lane);
}

// out[t][r] = act(dot(G[r], x[t])) * dot(U[r], x[t]), gate G and up U in the same format and
// shape (args describe one of them). Saves the glu dispatch and the round trip of the up
// projection through memory. A simdgroup dots GNR rows of each: 2 * GNR rows of matvec_dots.
template <typename F, int GNR>
kernel void matvec_glu(constant LinearArgs& args [[buffer(0)]],
                       device const uchar* wg [[buffer(1)]],
                       device const uchar* wu [[buffer(2)]],
                       device const float* x [[buffer(3)]],
                       device float* out [[buffer(4)]],
                       device const float* norm_w [[buffer(5)]],
                       uint2 tgpig [[threadgroup_position_in_grid]],
                       uint tid [[thread_index_in_threadgroup]],
                       uint lane [[thread_index_in_simdgroup]],
                       uint sg [[simdgroup_index_in_threadgroup]],
                       uint nsg [[simdgroups_per_threadgroup]]) {
    static_assert(GNR == MATVEC_GLU_NR, "matvec_glu: the host launches MATVEC_GLU_NR rows per simdgroup (args.h)");
    threadgroup float part[MATVEC_SIMDGROUPS * MATVEC_TOKENS];
    const MatvecInput in = matvec_input(x, norm_w, args.x_stride, args.n_tokens, args.cols, args.flags, tgpig.y);
    float scale[MATVEC_TOKENS];
    if (MATVEC_NORM) matvec_inv_rms(in, tid, lane, sg, nsg, part, scale);
    const int row0 = int((tgpig.x * nsg + sg) * GNR);
    if (row0 >= args.rows) return;  // uniform across the simdgroup

    const RowSet<F, GNR> g = row_set<F, GNR>(wg, args.row_bytes, row0, args.rows);
    const RowSet<F, GNR> u = row_set<F, GNR>(wu, args.row_bytes, row0, args.rows);
    RowSet<F, 2 * GNR> both;
    for (int r = 0; r < GNR; ++r) {
        both.p[r] = g.p[r];
        both.p[GNR + r] = u.p[r];
    }
    float acc[MATVEC_TOKENS * 2 * GNR];
    matvec_dots<F, 2 * GNR>(both, args.row_bytes, in, lane, acc);
    matvec_scale<2 * GNR>(acc, in.n, scale);
    // As matvec_store: lane l takes token l / GNR, row l % GNR, one store instruction.
    const int nr = min(GNR, args.rows - row0);
    device float* o = out + uint64_t(tgpig.y) * MATVEC_TOKENS * args.out_stride;
    for (int i0 = 0; i0 < MATVEC_TOKENS * GNR; i0 += 32) {
        const int i = i0 + int(lane);
        const int t = i / GNR, r = i % GNR;
        float gs = acc[0], us = acc[GNR];
        for (int q = 1; q < MATVEC_TOKENS * GNR; ++q)
            if (q == i) {
                gs = acc[(q / GNR) * 2 * GNR + q % GNR];
                us = acc[(q / GNR) * 2 * GNR + GNR + q % GNR];
            }
        if (t >= in.n || r >= nr) continue;
        o[uint64_t(t) * args.out_stride + uint64_t(row0 + r)] = gate_act(gs, MATVEC_GELU) * us;
    }
}
