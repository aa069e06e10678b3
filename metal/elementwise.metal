// Element-wise ops over count values, 1-D grid of threadgroups; one thread per value.
//   glu:     g = act(g) * u, act (activations.h) fixed by the function constant GLU_GELU: the
//            model's choice of SiLU or GELU-tanh
//   softcap: x = cap * tanh(x / cap)
#include <metal_stdlib>
#include "activations.h"
#include "args.h"

using namespace metal;

constant bool GLU_GELU [[function_constant(0)]];

kernel void glu(constant ElementwiseArgs& args [[buffer(0)]],
                device float* g [[buffer(1)]],
                device const float* u [[buffer(2)]],
                uint i [[thread_position_in_grid]]) {
    if (i >= args.count) return;
    g[i] = gate_act(g[i], GLU_GELU) * u[i];
}

kernel void softcap(constant ElementwiseArgs& args [[buffer(0)]],
                    device float* x [[buffer(1)]],
                    uint i [[thread_position_in_grid]]) {
    if (i < args.count) x[i] = args.cap * precise::tanh(x[i] / args.cap);
}
