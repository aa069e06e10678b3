// One element of a rotated head: the arithmetic of rotary position embedding (with the optional
// qk-norm before it) that rope_store_kv (rope.metal) and attention_rope (attention.h) both run,
// written once so that the two compute the same floats: a token's K row is the same whether the
// separate pass wrote it to the cache or the fused attention kernel did.
//
// The pair layout is a function constant (the model fixes it):
//   ROPE_NEOX = false: pairs (2i, 2i + 1) (llama.cpp's "normal" style)
//   ROPE_NEOX = true:  pairs (i, i + rope_dims / 2)
// inv_freq[i] is the angular frequency of pair i, scaling already applied by the host. The
// angle is position * inv_freq in float, as on the CPU; precise:: keeps sin/cos accurate at
// large angles (fast:: loses digits there).
#pragma once

#include <metal_stdlib>
#include "args.h"

using namespace metal;

constant bool ROPE_NEOX [[function_constant(2)]];

// The qk-norm factor 1 / rms of a head from its sums of squares per 32 dimensions (chunk c holds
// dimensions 32c .. 32c + 31), added in chunk order.
inline float rope_norm_scale(threadgroup const float* chunk_sums, int n_chunks, int head_dim, float eps) {
    float total = 0.0f;
    for (int c = 0; c < n_chunks; ++c) total += chunk_sums[c];
    return rsqrt(total / float(head_dim) + eps);
}

// Element i of head x (raw: as the projection wrote it) after the qk-norm (when qk_norm: times
// scale and the norm weight nw) and the rotation at position pos.
inline float rope_element(device const float* x, int i, int rope_dims, int pos, device const float* inv_freq,
                          bool qk_norm, float scale, device const float* nw) {
    float val = qk_norm ? x[i] * scale * nw[i] : x[i];
    if (i < rope_dims) {
        // Pair p = (a, b) rotates to (a c - b s, a s + b c).
        const int half_dims = rope_dims / 2;
        const bool first = ROPE_NEOX ? i < half_dims : (i & 1) == 0;
        const int p = ROPE_NEOX ? (first ? i : i - half_dims) : i / 2;
        const int partner = ROPE_NEOX ? (first ? i + half_dims : i - half_dims) : (first ? i + 1 : i - 1);
        const float theta = float(pos) * inv_freq[p];
        const float c = precise::cos(theta), s = precise::sin(theta);
        const float other = qk_norm ? x[partner] * scale * nw[partner] : x[partner];
        val = first ? val * c - other * s : other * s + val * c;
    }
    return val;
}
