// The feed-forward gate activations, shared by the GLU kernels (elementwise.metal, matvec.h).
//   SiLU:      g / (1 + e^-g)
//   GELU-tanh: 0.5 g (1 + tanh(c (g + 0.044715 g^3))), written as g * sigmoid(2c (g + 0.044715 g^3))
//              like the CPU backend (no tanh of large arguments)
#pragma once

#include <metal_stdlib>

using namespace metal;

inline float gate_act(float g, bool gelu) {
    const float z = gelu ? 2.0f * 0.7978845608028654f * (g + 0.044715f * g * g * g) : g;
    return g / (1.0f + precise::exp(-z));
}
