// Matrix-matrix product for prefill, any weight format F (formats.h), on simdgroup_matrix 8x8:
//     out[t][r] = dot(W[r], x[t]) (+ bias[r]) (+ out[t][r]),  x: n_tokens x cols floats.
//
// A threadgroup of 4 simdgroups (GEMM_THREADS = 128, args.h) computes a GEMM_TOKENS (32) x
// GEMM_ROWS (64) tile of out; simdgroup s takes tokens 16 (s & 1) .. + 15 and rows 32 (s >> 1)
// .. + 31 of it, 2 x 4 accumulators of 8x8, so each K step of 8 is 6 matrix loads for 8
// multiplies (the 32 x 32 tile of before: 4 for 4). Per K step of GEMM_BK = 32 the threads stage
// in threadgroup memory
//   xs  the tile's 32 tokens x 32 floats of x: 8 threads per token, a float4 each (a simdgroup
//       reads 4 whole 128-byte rows);
//   ws  its 64 rows x 32 weights, dequantized: 4 threads per row step (the matvecs' lanes per
//       32-element block), each a run of 8 consecutive weights of one block decoded with the
//       block's scale (and min) read once (gemm_run<F>, formats.h), 2 rows per thread; stored as
//       they lie in the row: W's tile is [row][k], and the multiply reads it transposed
//       (simdgroup_load's transpose), so nobody writes a column.
// Row strides are padded (GEMM_LDX, gemm_layout::LDW) so that neither the threads' stores nor
// the 8 rows of a matrix load fall in the same 4-byte banks (32 banks): no bank conflicts.
// The stages are double-buffered: step s reads buffer s & 1 while its threads fill buffer
// (s + 1) & 1 for the next step, so a K step needs one barrier, not two (the barrier ending step
// s both publishes step s + 1's tile and retires step s - 1's reads of the buffer refilled next).
//
// Precision: x is staged as float, W as float or (F16) half, losslessly; float accumulators.
// Threadgroup memory: 2 x (4.5 KiB of x + 9 KiB of float W) = 27 KiB, or 19 KiB with F16's half
// W tile; the double buffering is what takes it past 16 KiB (fewer threadgroups per core).
//
// Per-token independence: out[t][.] is a function of x[t] and W alone: the multiplies see x's
// token t only in row t of their A operand, the K order (8-element MMAs in increasing k) is fixed,
// and tokens outside the matrix read the last token's row (their results are never stored). A
// batched prompt chunk gives each token the result it would get alone.
//
// Edges: rows and tokens beyond the matrix read its last row and token (valid memory, results
// dropped), so the loads need no branches; a K step past the end of a row (float formats only:
// quantized rows are whole blocks, multiples of 32) is staged element by element with F::get,
// zero beyond K in x and in W. The result goes through threadgroup memory (reusing the stages),
// so ragged edges and the epilogue (bias, accumulate) are plain per-element stores.
#pragma once

#include <metal_stdlib>
#include "args.h"
#include "formats.h"

using namespace metal;

// The weights' type in threadgroup memory and in the multiply (x stays float): half only where
// half holds every weight exactly, F16; float for the rest. Half tiles of the quantized formats'
// d * q (rounded to 11 significant bits) were measured (Q8_0 models against the CPU backend,
// tests/test_metal_backend.py): prompt logits NMSE 6e-8 .. 1.1e-6 against the limit of 3e-8, and
// prefill against decode off by 3.3e-3 absolute (limit 1e-5 x max); F32 models' logits 1.3e-3
// relative against transformers (limit 1e-5). BF16 has a range half lacks.
template <typename F> struct gemm_tile_type {
    typedef float type;
};
template <> struct gemm_tile_type<fmt_f16> {
    typedef half type;
};

// Row strides, in elements, of the staged tiles and of the result: an 8x8 matrix load reads 8
// rows of 8 elements; with a stride of 36 floats (4 words past a multiple of the 32 banks) or 40
// halves (20 words) its 8 rows land in disjoint banks, and so do the threads' 16-byte stores
// (the simulator's bank counters: test_metal_kernels.py checks there are no conflicts).
enum GemmLayout : int {
    GEMM_BK = 32,  // K per step
    GEMM_LDX = GEMM_BK + 4,
    GEMM_LDC = GEMM_ROWS + 4,
    GEMM_XS = GEMM_TOKENS * GEMM_LDX,  // floats of one x stage
};
template <typename TW> struct gemm_layout {
    enum : int {
        LDW = sizeof(TW) == 2 ? GEMM_BK + 8 : GEMM_BK + 4,
        WS = GEMM_ROWS * LDW,  // elements of one W stage
        STAGE_BYTES = GEMM_XS * 4 + WS * int(sizeof(TW)),
        // Two stages of x and W; the result (GEMM_TOKENS x GEMM_LDC floats) reuses them once the
        // K loop is done.
        SMEM_BYTES = 2 * STAGE_BYTES > GEMM_TOKENS * GEMM_LDC * 4 ? 2 * STAGE_BYTES : GEMM_TOKENS * GEMM_LDC * 4,
    };
    static_assert(SMEM_BYTES <= 32768, "gemm: Apple GPUs have 32 KiB of threadgroup memory");
    static_assert(STAGE_BYTES % 16 == 0 && (GEMM_XS * 4) % 16 == 0, "gemm: stages keep 16-byte alignment");
};

// The layout below (4 simdgroups as 2 x 2 of 16 tokens x 32 rows; 8 threads per token and 4 per
// row in the staging) is written for these.
static_assert(GEMM_ROWS == 64 && GEMM_TOKENS == 32 && GEMM_THREADS == 128, "gemm: tile and threadgroup size of args.h");

// Stage step k0's x tile: thread tid takes token tid / 8 (+ 16) at k0 + 4 (tid % 8).
inline void gemm_stage_x(constant LinearArgs& args, device const float* x, threadgroup float* xs, int t0, int k0,
                         uint tid) {
    const int K = args.cols;
    const bool vec4 = (args.flags & LINEAR_X_VEC4) != 0;
    for (int i = 0; i < 2; ++i) {
        const int tok = int(tid) / 8 + 16 * i, c = 4 * (int(tid) % 8);
        const int k = k0 + c;
        device const float* p = x + uint64_t(min(t0 + tok, args.n_tokens - 1)) * args.x_stride + k;
        float4 v;
        if (vec4 && k + 4 <= K) {
            v = *(device const float4*)p;
        } else {
            for (int j = 0; j < 4; ++j) v[j] = k + j < K ? p[j] : 0.0f;
        }
        *(threadgroup float4*)(xs + tok * GEMM_LDX + c) = v;
    }
}

// Stage step k0's W tile: thread tid takes rows tid / 4 and tid / 4 + 32, weights
// k0 + 8 (tid % 4) .. + 7 of each: a simdgroup's load reads 8 rows' consecutive bytes.
template <typename F, typename TW>
inline void gemm_stage_w(constant LinearArgs& args, device const uchar* w, threadgroup TW* ws, int r0, int k0,
                         bool whole, uint tid) {
    const int c = 8 * (int(tid) % 4), k = k0 + c;
    for (int i = 0; i < 2; ++i) {
        const int row = int(tid) / 4 + 32 * i;
        const typename layout<F>::Row p = layout<F>::row(w, args.row_bytes, args.rows, min(r0 + row, args.rows - 1));
        float4 v[2];
        if (whole) {
            gemm_run<F>::get8(p, k, v);
        } else {
            for (int j = 0; j < 8; ++j) v[j / 4][j % 4] = k + j < args.cols ? layout<F>::get(p, k + j) : 0.0f;
        }
        threadgroup TW* d = ws + row * gemm_layout<TW>::LDW + c;
        *(threadgroup vec<TW, 4>*)d = vec<TW, 4>(v[0]);
        *(threadgroup vec<TW, 4>*)(d + 4) = vec<TW, 4>(v[1]);
    }
}

template <typename F>
kernel void gemm(constant LinearArgs& args [[buffer(0)]],
                 device const uchar* w [[buffer(1)]],
                 device const float* x [[buffer(2)]],
                 device float* out [[buffer(3)]],
                 device const float* bias [[buffer(4)]],
                 uint2 tgpig [[threadgroup_position_in_grid]],
                 uint tid [[thread_index_in_threadgroup]],
                 uint sg [[simdgroup_index_in_threadgroup]]) {
    typedef typename gemm_tile_type<F>::type TW;
    typedef gemm_layout<TW> L;
    threadgroup float4 smem[L::SMEM_BYTES / 16];
    threadgroup float* xs0 = (threadgroup float*)smem;
    threadgroup TW* ws0 = (threadgroup TW*)(xs0 + 2 * GEMM_XS);

    const int t0 = int(tgpig.y) * GEMM_TOKENS, r0 = int(tgpig.x) * GEMM_ROWS;
    const int tm = int(sg & 1) * 16, rn = int(sg >> 1) * 32;  // this simdgroup's tokens and rows
    const int K = args.cols;
    // Whole steps take gemm_run's runs: every step of a quantized row, those of a float row
    // inside it when rows are 16-byte aligned for the vector loads.
    const bool aligned = int(F::VEC) == 0 || args.row_bytes % 16 == 0;

    simdgroup_float8x8 acc[2][4];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);

    gemm_stage_x(args, x, xs0, t0, 0, tid);
    gemm_stage_w<F, TW>(args, w, ws0, r0, 0, aligned && GEMM_BK <= K, tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);

    for (int k0 = 0, s = 0; k0 < K; k0 += GEMM_BK, s ^= 1) {
        // Fill the other stage for the next step first: its loads are in flight during the
        // multiplies below.
        const int k1 = k0 + GEMM_BK;
        if (k1 < K) {
            gemm_stage_x(args, x, xs0 + (s ^ 1) * GEMM_XS, t0, k1, tid);
            gemm_stage_w<F, TW>(args, w, ws0 + (s ^ 1) * L::WS, r0, k1, aligned && k1 + GEMM_BK <= K, tid);
        }
        threadgroup const float* xa = xs0 + s * GEMM_XS + tm * GEMM_LDX;
        threadgroup const TW* wb = ws0 + s * L::WS + rn * L::LDW;
        for (int kk = 0; kk < GEMM_BK; kk += 8) {
            simdgroup_float8x8 ma[2];
            simdgroup_matrix<TW, 8, 8> mb[4];
            for (int i = 0; i < 2; ++i) simdgroup_load(ma[i], xa + i * 8 * GEMM_LDX + kk, GEMM_LDX);
            // B = W's rows as columns: [k][row] from the [row][k] tile.
            for (int j = 0; j < 4; ++j) simdgroup_load(mb[j], wb + j * 8 * L::LDW + kk, L::LDW, ulong2(0, 0), true);
            for (int i = 0; i < 2; ++i)
                for (int j = 0; j < 4; ++j) simdgroup_multiply_accumulate(acc[i][j], ma[i], mb[j], acc[i][j]);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }

    // The loop's last barrier retired every read of the stages: the result reuses them.
    threadgroup float* cs = (threadgroup float*)smem;  // [token][row]
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j)
            simdgroup_store(acc[i][j], cs + (tm + i * 8) * GEMM_LDC + rn + j * 8, GEMM_LDC);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    // 32 consecutive rows of one token per simdgroup store: one 128-byte line.
    for (int e = int(tid); e < GEMM_TOKENS * GEMM_ROWS; e += GEMM_THREADS) {
        const int t = e / GEMM_ROWS, r = e % GEMM_ROWS;
        if (t0 + t < args.n_tokens && r0 + r < args.rows) {
            device float* o = out + uint64_t(t0 + t) * args.out_stride + r0 + r;
            float v = cs[t * GEMM_LDC + r];
            if (args.flags & LINEAR_BIAS) v += bias[r0 + r];
            if (args.flags & LINEAR_ACCUMULATE) v += *o;
            *o = v;
        }
    }
}
