#include "cpu/ops.h"

#include <cmath>

#include "cpu/formats/simd.h"

namespace metallic::cpu::METALLIC_ISA {

void rmsnorm_row(const float* x, const float* w, float* out, int d, float eps) {
    F8 acc = zero8();
    int i = 0;
    for (; i + 8 <= d; i += 8) {
        const F8 v = load8(x + i);
        acc = fma8(v, v, acc);
    }
    float ss = hsum8(acc);
    for (; i < d; ++i) ss += x[i] * x[i];
    const float scale = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
    const F8 s8 = splat8(scale);
    i = 0;
    for (; i + 8 <= d; i += 8) store8(out + i, mul8(mul8(load8(x + i), s8), load8(w + i)));
    for (; i < d; ++i) out[i] = x[i] * scale * w[i];
}

void rope_row(float* x, int n_heads, int head_dim, int rope_dims, RopeStyle style, const float* cs) {
    const int half = rope_dims / 2;
    const float* cosv = cs;
    const float* sinv = cs + half;
    for (int h = 0; h < n_heads; ++h) {
        float* xh = x + static_cast<int64_t>(h) * head_dim;
        if (style == RopeStyle::Neox) {
            for (int i = 0; i < half; ++i) {
                const float a = xh[i], b = xh[i + half];
                xh[i] = a * cosv[i] - b * sinv[i];
                xh[i + half] = a * sinv[i] + b * cosv[i];
            }
        } else {
            for (int i = 0; i < half; ++i) {
                const float a = xh[2 * i], b = xh[2 * i + 1];
                xh[2 * i] = a * cosv[i] - b * sinv[i];
                xh[2 * i + 1] = a * sinv[i] + b * cosv[i];
            }
        }
    }
}

void glu(float* g, const float* u, int64_t count, Activation act) {
    int64_t i = 0;
    const F8 one = splat8(1.0f);
    if (act == Activation::SiLU) {
        // silu(g) = g / (1 + e^-g)
        for (; i + 8 <= count; i += 8) {
            const F8 x = load8(g + i);
            const F8 e = exp8(mul8(x, splat8(-1.0f)));
            store8(g + i, mul8(div8(x, add8(one, e)), load8(u + i)));
        }
        for (; i < count; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    } else {
        // gelu_tanh(g) = 0.5 g (1 + tanh(c (g + 0.044715 g^3))) = g * sigmoid(2 c (g + 0.044715 g^3))
        const float c2 = 2.0f * 0.7978845608028654f;
        for (; i + 8 <= count; i += 8) {
            const F8 x = load8(g + i);
            const F8 inner = mul8(splat8(-c2), fma8(mul8(splat8(0.044715f), mul8(x, x)), x, x));
            const F8 e = exp8(inner);
            store8(g + i, mul8(div8(x, add8(one, e)), load8(u + i)));
        }
        for (; i < count; ++i) {
            const float x = g[i];
            g[i] = x / (1.0f + std::exp(-c2 * (x + 0.044715f * x * x * x))) * u[i];
        }
    }
}

void add(float* x, const float* y, int64_t count) {
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) store8(x + i, add8(load8(x + i), load8(y + i)));
    for (; i < count; ++i) x[i] += y[i];
}

void softcap(float* x, int64_t count, float cap) {
    for (int64_t i = 0; i < count; ++i) x[i] = cap * std::tanh(x[i] / cap);
}

void to_f16(const float* x, uint16_t* out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) store8_f16(out + i, load8(x + i));
    for (; i < n; ++i) out[i] = fp32_to_fp16(x[i]);
}

namespace {

inline F8 load_kv8(const float* p) { return load8(p); }
inline F8 load_kv8(const uint16_t* p) { return load8_f16(p); }
inline float load_kv1(const float* p) { return *p; }
inline float load_kv1(const uint16_t* p) { return fp16_to_fp32(*p); }

}  // namespace

template <class KV>
void attend(const float* q, const KV* k, const KV* v, int len, int head_dim, float scale,
            float* scores, float* out) {
    const int d8 = head_dim & ~7;
    float mx = -INFINITY;
    for (int j = 0; j < len; ++j) {
        const KV* kj = k + static_cast<int64_t>(j) * head_dim;
        F8 acc = zero8();
        for (int i = 0; i < d8; i += 8) acc = fma8(load8(q + i), load_kv8(kj + i), acc);
        float s = hsum8(acc);
        for (int i = d8; i < head_dim; ++i) s += q[i] * load_kv1(kj + i);
        s *= scale;
        scores[j] = s;
        mx = s > mx ? s : mx;
    }
    // softmax, vectorized over positions
    float sum = 0.0f;
    {
        int j = 0;
        F8 acc = zero8();
        const F8 m8 = splat8(mx);
        for (; j + 8 <= len; j += 8) {
            const F8 e = exp8(add8(load8(scores + j), mul8(m8, splat8(-1.0f))));
            store8(scores + j, e);
            acc = add8(acc, e);
        }
        sum = hsum8(acc);
        for (; j < len; ++j) {
            scores[j] = std::exp(scores[j] - mx);
            sum += scores[j];
        }
    }
    const float inv = 1.0f / sum;
    for (int i = 0; i < head_dim; ++i) out[i] = 0.0f;
    for (int j = 0; j < len; ++j) {
        const KV* vj = v + static_cast<int64_t>(j) * head_dim;
        const F8 p8 = splat8(scores[j] * inv);
        int i = 0;
        for (; i < d8; i += 8) store8(out + i, fma8(p8, load_kv8(vj + i), load8(out + i)));
        for (; i < head_dim; ++i) out[i] += scores[j] * inv * load_kv1(vj + i);
    }
}

template void attend<float>(const float*, const float*, const float*, int, int, float, float*, float*);
template void attend<uint16_t>(const float*, const uint16_t*, const uint16_t*, int, int, float,
                               float*, float*);

}  // namespace metallic::cpu::METALLIC_ISA
