// The operations the forward pass is made of. A backend supplies them; the sequence lives once
// in forward.cpp. Activations are plain float arrays owned by the engine (rows of `n` tokens);
// weights are Matrix views. A Metal backend maps these pointers to buffer offsets.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "engine/config.h"
#include "engine/weights.h"

namespace metallic {

// One output of a matmul: out[t][r] = in[t] . W[r] (+ bias[r]) (+ out[t][r] if accumulate).
struct MatmulJob {
    const Matrix* w;
    float* out;
    const float* bias = nullptr;
    bool accumulate = false;
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual const char* name() const = 0;

    // x[t] = row ids[t] of the embedding table, times scale.
    virtual void embed(const Matrix& table, const int32_t* ids, int n, float scale, float* x) = 0;
    // out[t] = x[t] / rms(x[t]) * w, for n rows of length d. out may alias x.
    virtual void rmsnorm(const float* x, const float* w, float* out, int n, int d, float eps) = 0;
    // Several matrices reading the same input rows in one parallel pass (q/k/v; gate/up).
    virtual void matmul(const float* in, int n, std::initializer_list<MatmulJob> jobs) = 0;
    // Rotary embedding in place on n rows of n_heads heads at positions pos0 .. pos0+n-1.
    // inv_freq holds rope_dims/2 angular frequencies (scaling already applied).
    virtual void rope(float* x, int n, int n_heads, int pos0, const float* inv_freq) = 0;
    // Appends n rows of k and v at positions pos0.. to layer's cache.
    virtual void store_kv(int layer, const float* k, const float* v, int n, int pos0) = 0;
    // Causal attention of n query rows at positions pos0.. over the layer's cache.
    virtual void attention(int layer, const float* q, int n, int pos0, int window, float* out) = 0;
    // g = act(g) * u, element-wise over count values.
    virtual void glu(float* g, const float* u, int64_t count, Activation act) = 0;
    // x += y over count values.
    virtual void add(float* x, const float* y, int64_t count) = 0;
    // x = cap * tanh(x / cap).
    virtual void softcap(float* x, int64_t count, float cap) = 0;
};

}  // namespace metallic
