// The forward pass: the whole model, once, for every architecture and every backend.
//
// Per layer (pre-norm transformer):
//   h   = rmsnorm(x) * attn_norm
//   q,k,v = h Wq (+bq), h Wk (+bk), h Wv (+bv)           one pass over h
//   q,k = rmsnorm per head (qk_norm: qwen3, gemma3)
//   q,k = rope(q, k) at their positions                   interleaved (llama) or neox pairs
//   cache[layer] <- k, v
//   a   = softmax(q K^T * scale, causal, sliding window) V over the cache
//   x  += a Wo                                            (post_norms: x += rmsnorm(a Wo))
//   h   = rmsnorm(x) * ffn_norm
//   x  += (act(h Wgate) * h Wup) Wdown                    SwiGLU or GeGLU
// then logits = rmsnorm(x_last) * output_norm . Wout, optionally soft-capped.
#include <algorithm>

#include "engine/engine.h"

namespace metallic {

void Engine::forward(const int32_t* ids, int n, float* all_logits) {
    Backend& B = *backend_;
    const ModelConfig& c = cfg_;
    const int d = c.n_embd, hd = c.head_dim;
    const int pos0 = n_past_;
    float* x = x_.data();
    float* h = xb_.data();
    float* o = xb2_.data();

    B.embed(w_.token_embd, ids, n, c.embed_scale, x);

    for (int l = 0; l < c.n_layer; ++l) {
        const LayerWeights& L = w_.layers[size_t(l)];
        const int window = c.sliding_window[size_t(l)];

        // attention
        B.rmsnorm_matmul(x, L.attn_norm.data(), c.rms_eps, h, n, d,
                         {{&L.wq, q_.data(), c.qkv_bias ? L.q_bias.data() : nullptr},
                          {&L.wk, k_.data(), c.qkv_bias ? L.k_bias.data() : nullptr},
                          {&L.wv, v_.data(), c.qkv_bias ? L.v_bias.data() : nullptr}});
        const float* freqs = window > 0 ? inv_freq_local_.data() : inv_freq_global_.data();
        B.rope_store_kv(l, q_.data(), c.n_head, k_.data(), c.n_head_kv, v_.data(), n, pos0, freqs,
                        c.qk_norm ? L.q_norm.data() : nullptr, c.qk_norm ? L.k_norm.data() : nullptr, hd, c.rms_eps);
        B.attention(l, q_.data(), n, pos0, window, att_.data());
        if (c.post_norms) {
            B.matmul(att_.data(), n, {{&L.wo, o}});
            B.add_rmsnorm(x, o, L.post_attn_norm.data(), c.rms_eps, n, d);
        } else {
            B.matmul(att_.data(), n, {{&L.wo, x, nullptr, /*accumulate=*/true}});
        }

        // feed-forward
        B.rmsnorm_gate_up_glu(x, L.ffn_norm.data(), c.rms_eps, h, n, d, L.w_gate, L.w_up, hb_.data(), hb2_.data(),
                              c.activation);
        if (c.post_norms) {
            B.matmul(hb_.data(), n, {{&L.w_down, o}});
            B.add_rmsnorm(x, o, L.post_ffn_norm.data(), c.rms_eps, n, d);
        } else {
            B.matmul(hb_.data(), n, {{&L.w_down, x, nullptr, /*accumulate=*/true}});
        }
    }

    // Output head: every row when asked for all logits, else only the last token's. All rows go
    // through logits_ logit_rows_ at a time (a GPU writes its own buffers, not the caller's).
    const int64_t V = c.n_vocab;
    if (all_logits) {
        B.rmsnorm(x, w_.output_norm.data(), h, n, d, c.rms_eps);
        int last = 0;  // row of logits_ holding the last token's logits
        for (int r0 = 0; r0 < n; r0 += logit_rows_) {
            const int rows = std::min(logit_rows_, n - r0);
            B.matmul(h + int64_t(r0) * d, rows, {{&w_.output, logits_.data()}});
            if (c.final_logit_softcap > 0) B.softcap(logits_.data(), rows * V, c.final_logit_softcap);
            B.sync();
            std::copy(logits_.data(), logits_.data() + rows * V, all_logits + int64_t(r0) * V);
            last = rows - 1;
        }
        if (last > 0) std::copy(logits_.data() + last * V, logits_.data() + (last + 1) * V, logits_.data());
    } else {
        const float* last = x + int64_t(n - 1) * d;
        B.rmsnorm_matmul(last, w_.output_norm.data(), c.rms_eps, h, 1, d, {{&w_.output, logits_.data()}});
        if (c.final_logit_softcap > 0) B.softcap(logits_.data(), V, c.final_logit_softcap);
        B.sync();
    }
    n_past_ += n;
}

}  // namespace metallic
