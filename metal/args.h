// Argument structs and launch constants shared by the host (C++) and the kernels (MSL). Only
// fixed-width scalars in the structs: the layout must be identical on both sides (no float3, no
// bool, no pointers).
#pragma once

#ifdef __METAL_VERSION__
#include <metal_stdlib>
#else
#include <cstdint>
#endif

#include "../cpp/engine/top_k_pick.h"

// Launch geometry a kernel is written for and the host must launch it with. Enumerators, not
// constexpr variables: MSL puts a program-scope variable in the constant address space (C++ has
// none), while an enumerator reads the same in both languages and serves as an array size and
// a template argument alike.
enum KernelShape : int32_t {
    MATVEC_NR = 4,          // matvec, matvec_jobs: rows of W per simdgroup (the NR of matvec.metal's
                            // instantiations)
    MATVEC_GLU_NR = 2,      // matvec_glu: rows of gate, and as many of up, per simdgroup
    MATVEC_SIMDGROUPS = 4,  // matvec*: simdgroups per threadgroup (the fused norm's threadgroup memory
                            // has room for this many)
    MATVEC_TOKENS = 8,      // matvec*: tokens per threadgroup, grid.y = ceil(tokens / MATVEC_TOKENS)
    GEMM_ROWS = 64,      // gemm_*: a threadgroup computes GEMM_TOKENS tokens x GEMM_ROWS rows of out,
    GEMM_TOKENS = 32,    // grid = (ceil(rows / GEMM_ROWS), ceil(tokens / GEMM_TOKENS))
    GEMM_THREADS = 128,  // gemm_*: threads per threadgroup, 4 simdgroups of 16 tokens x 32 rows each
    MAX_HEAD_DIM = 256,  // largest head size of rope_store_kv_* (a thread per dimension) and of
                         // attention* (8 dimensions per lane, at most 32 lanes per cache row)
    ATTN_ROWS = 8,       // attention, attention_split: query rows (token, head) of one kv head
                         // per threadgroup; each K/V row a threadgroup loads serves all of them
};

// out[row] = x[row] / rms(x[row]) * w, one threadgroup per row.
struct RmsNormArgs {
    int32_t d;            // row length
    float eps;
    uint64_t x_stride;    // elements between rows of x
    uint64_t out_stride;  // elements between rows of out
    int32_t x_vec4;       // 1: every row of x starts 16-byte aligned (the host checks), read as float4
    int32_t unused;       // keeps the size a multiple of 8 on both sides
};

// out[t][r] = dot(W[r], x[t]) (+ bias[r]) (+ out[t][r]): matvec_* (decode) and gemm_* (prefill).
// W is rows x cols in its storage format, row_bytes apart.
enum LinearFlags : int32_t {
    LINEAR_BIAS = 1,        // add bias[r]
    LINEAR_ACCUMULATE = 2,  // add to what out holds (the residual stream)
    LINEAR_X_VEC4 = 4,      // matvec*: every row of x (and the fused norm's weights) starts 16-byte
                            // aligned, so x may be read as float4; the host checks the buffer offsets
};
struct LinearArgs {
    int32_t rows;
    int32_t cols;
    int32_t n_tokens;
    int32_t flags;
    uint64_t row_bytes;
    uint64_t x_stride;    // floats between token rows of x
    uint64_t out_stride;  // floats between token rows of out
};

// Up to three matvecs of one format and width sharing x: matvec_jobs_*. x has rows of cols
// floats, job j's out rows of rows[j] floats.
struct LinearJobsArgs {
    int32_t cols;
    int32_t n_jobs;
    int32_t rows[3];
    int32_t flags[3];
    int32_t first_tg[4];  // first threadgroup of each job; first_tg[n_jobs] = the grid (unused entries too)
    int32_t n_tokens;
    int32_t unused;       // keeps row_bytes at byte 56 on both sides
    uint64_t row_bytes;
};

// x[t][i] = table[ids[t]][i] * scale, one threadgroup per token.
struct EmbedArgs {
    int32_t cols;
    float scale;
    uint64_t row_bytes;
    int32_t rows;  // the table's (formats.h, layout<F>: where a planar format's scales start)
    int32_t pad;
};

// RoPE of q and k and their cache write in one dispatch: grid (tokens, n_heads + n_kv_heads),
// one thread per dimension.
struct RopeKvArgs {
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t rope_dims;
    int32_t n_ctx;
    int32_t pos0;
    int32_t qk_norm;  // 1: RMS-normalize each head of q and k first (weights at buffers 7 and 8)
    float eps;
};

// Causal attention of query rows at positions pos0.. over one layer's cache (grids: attention.metal).
struct AttentionArgs {
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t n_ctx;
    int32_t pos0;
    int32_t window;  // 0: full attention
    float scale;
    int32_t split_len;  // attention_split/merge: positions per split; splits start at multiples
                        // of it (absolute positions), the first at the window's start / split_len
    int32_t n_tokens;   // query tokens (rows per kv head: n_tokens * n_heads / n_kv_heads)
};

// Element-wise ops over count values: glu (g = act(g) * u), softcap.
struct ElementwiseArgs {
    uint32_t count;
    float cap;
};

// argmax.metal: the index of the largest of n values.
struct ArgmaxArgs {
    int32_t n;
};

// sample.metal: a seeded top-k pick from n values (the rule and its settings: top_k_pick.h).
struct SampleArgs {
    int32_t n;
    metallic::PickSettings pick;
};
