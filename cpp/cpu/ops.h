// Row-wise vector kernels of the CPU backend (compiled once per instruction set).
#pragma once

#include <cstdint>

#include "engine/config.h"

namespace metallic::cpu::METALLIC_ISA {

// out = x / sqrt(mean(x^2) + eps) * w over d values; out may alias x.
void rmsnorm_row(const float* x, const float* w, float* out, int d, float eps);
// Rotates one row of n_heads heads of head_dim values at position pos, using cos/sin of
// rope_dims/2 angles already computed into cs (cos at [i], sin at [half + i]).
void rope_row(float* x, int n_heads, int head_dim, int rope_dims, RopeStyle style, const float* cs);
// g = act(g) * u.
void glu(float* g, const float* u, int64_t count, Activation act);
void add(float* x, const float* y, int64_t count);
void softcap(float* x, int64_t count, float cap);
// float -> half for n values.
void to_f16(const float* x, uint16_t* out, int64_t n);

// One query head attending to `len` cached positions: out = softmax(q . K^T * scale) V.
// K and V rows are head_dim apart; `scores` has room for len floats.
template <class KV>
void attend(const float* q, const KV* k, const KV* v, int len, int head_dim, float scale,
            float* scores, float* out);

}  // namespace metallic::cpu::METALLIC_ISA
