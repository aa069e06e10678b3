// Element-wise ops over count values, 1-D grid of threadgroups; one thread per value.
//   glu:     g = act(g) * u, act fixed by the function constant GLU_GELU (the model's choice):
//            SiLU g / (1 + e^-g), or GELU with the tanh approximation, written as
//            g * sigmoid(2c (g + 0.044715 g^3)) like the CPU backend
//   add:     x += y
//   softcap: x = cap * tanh(x / cap)
#include <metal_stdlib>
#include "args.h"

using namespace metal;

constant bool GLU_GELU [[function_constant(0)]];

kernel void glu(constant ElementwiseArgs& args [[buffer(0)]],
                device float* g [[buffer(1)]],
                device const float* u [[buffer(2)]],
                uint i [[thread_position_in_grid]]) {
    if (i >= args.count) return;
    const float x = g[i];
    const float z = GLU_GELU ? 2.0f * 0.7978845608028654f * (x + 0.044715f * x * x * x) : x;
    g[i] = x / (1.0f + precise::exp(-z)) * u[i];
}

kernel void add(constant ElementwiseArgs& args [[buffer(0)]],
                device float* x [[buffer(1)]],
                device const float* y [[buffer(2)]],
                uint i [[thread_position_in_grid]]) {
    if (i < args.count) x[i] += y[i];
}

kernel void softcap(constant ElementwiseArgs& args [[buffer(0)]],
                    device float* x [[buffer(1)]],
                    uint i [[thread_position_in_grid]]) {
    if (i < args.count) x[i] = args.cap * precise::tanh(x[i] / args.cap);
}
