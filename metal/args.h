// Argument structs shared by the host (C++) and the kernels (MSL). Only fixed-width scalars:
// the layout must be identical on both sides (no float3, no bool, no pointers).
#pragma once

#ifdef __METAL_VERSION__
#include <metal_stdlib>
#else
#include <cstdint>
#endif

// out[row] = x[row] / rms(x[row]) * w, one threadgroup per row.
struct RmsNormArgs {
    int32_t d;            // row length
    float eps;
    uint64_t x_stride;    // elements between rows of x
    uint64_t out_stride;  // elements between rows of out
};

// out[t][r] = dot(W[r], x[t]) for r < rows, t < n_tokens (grid.y = tokens).
struct GemvArgs {
    int32_t rows;
    int32_t cols;
    uint64_t w_stride;    // elements between rows of W
    uint64_t x_stride;    // elements between token rows of x
    uint64_t out_stride;  // elements between token rows of out
};

// out[m][n] = dot(A[m], W[n]): A is M x K (activations), W is N x K (weights).
struct MatmulArgs {
    int32_t M;
    int32_t N;
    int32_t K;
    int32_t pad_;
    uint64_t a_stride;
    uint64_t w_stride;
    uint64_t out_stride;
};

// out[row] = index of the first maximum of x[row].
struct ArgmaxArgs {
    int32_t n;
    int32_t pad_;
    uint64_t x_stride;
};

// ---- the Metal backend's kernels -------------------------------------------------------------

// out[t][r] = dot(W[r], x[t]) (+ bias[r]) (+ out[t][r]): matvec_* (decode) and gemm_* (prefill).
// W is rows x cols in its storage format, row_bytes apart.
enum LinearFlags : int32_t {
    LINEAR_BIAS = 1,        // add bias[r]
    LINEAR_ACCUMULATE = 2,  // add to what out holds (the residual stream)
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

// Up to three matvecs of one format and width sharing x (one token): matvec_jobs_*.
struct LinearJobsArgs {
    int32_t cols;
    int32_t n_jobs;
    int32_t rows[3];
    int32_t flags[3];
    int32_t first_tg[4];  // first threadgroup of each job; first_tg[n_jobs] = the grid (unused entries too)
    uint64_t row_bytes;   // at byte 48: no padding
};

// x[t][i] = table[ids[t]][i] * scale, one threadgroup per token.
struct EmbedArgs {
    int32_t cols;
    float scale;
    uint64_t row_bytes;
};

// Rotary embedding in place on n_tokens rows of n_heads heads; grid (tokens, heads), one thread
// per rotated pair.
struct RopeArgs {
    int32_t n_heads;
    int32_t head_dim;
    int32_t rope_dims;
    int32_t pos0;
};

// cache[kv_head][pos0 + t][:] = k[t][kv_head][:] (and v), grid (tokens, kv heads).
struct StoreKvArgs {
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t n_ctx;
    int32_t pos0;
};

// rope + store_kv in one dispatch: grid (tokens, n_heads + n_kv_heads), one thread per dimension.
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

// Causal attention of query rows at positions pos0.. over one layer's cache; grid (heads, tokens).
struct AttentionArgs {
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t n_ctx;
    int32_t pos0;
    int32_t window;  // 0: full attention
    float scale;
    int32_t split_len;  // attention_split/merge: positions per split of the window
};

// Element-wise ops over count values: glu (g = act(g) * u), add (x += y), softcap.
struct ElementwiseArgs {
    uint32_t count;
    float cap;
};
