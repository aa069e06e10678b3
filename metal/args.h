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
