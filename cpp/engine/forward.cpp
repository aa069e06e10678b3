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

#include "engine/assert.h"
#include "engine/engine.h"

namespace metallic {

void Engine::forward(const int32_t* ids, int n, float* all_logits) {
    Backend& B = *backend_;
    const ModelConfig& c = cfg_;
    const int d = c.n_embd, hd = c.head_dim;
    const int pos0 = n_past_;
    // prefill() splits the tokens into batches that fit the activations and the context.
    METALLIC_ASSERT(n > 0 && n <= opt_.max_batch && pos0 + n <= opt_.n_ctx);

    B.embed(w_.token_embd, ids, n, c.embed_scale, residual_.data());

    for (int l = 0; l < c.n_layer; ++l) {
        const LayerWeights& L = w_.layers[size_t(l)];
        const int window = c.sliding_window[size_t(l)];

        // attention
        B.rmsnorm_matmul(residual_.data(), L.attn_norm.data(), c.rms_eps, normed_.data(), n, d,
                         {{&L.wq, q_.data(), c.qkv_bias ? L.q_bias.data() : nullptr},
                          {&L.wk, k_.data(), c.qkv_bias ? L.k_bias.data() : nullptr},
                          {&L.wv, v_.data(), c.qkv_bias ? L.v_bias.data() : nullptr}});
        const float* freqs = window > 0 ? inv_freq_local_.data() : inv_freq_global_.data();
        B.rope_store_kv(l, q_.data(), c.n_head, k_.data(), c.n_head_kv, v_.data(), n, pos0, freqs,
                        c.qk_norm ? L.q_norm.data() : nullptr, c.qk_norm ? L.k_norm.data() : nullptr, hd, c.rms_eps);
        B.attention(l, q_.data(), n, pos0, window, attn_out_.data());
        if (c.post_norms) {
            B.matmul(attn_out_.data(), n, {{&L.wo, sublayer_out_.data()}});
            B.add_rmsnorm(residual_.data(), sublayer_out_.data(), L.post_attn_norm.data(), c.rms_eps, n, d);
        } else {
            B.matmul(attn_out_.data(), n, {{&L.wo, residual_.data(), nullptr, /*accumulate=*/true}});
        }

        // feed-forward
        B.rmsnorm_gate_up_glu(residual_.data(), L.ffn_norm.data(), c.rms_eps, normed_.data(), n, d, L.w_gate,
                              L.w_up, ffn_gate_.data(), ffn_up_.data(), c.activation);
        if (c.post_norms) {
            B.matmul(ffn_gate_.data(), n, {{&L.w_down, sublayer_out_.data()}});
            B.add_rmsnorm(residual_.data(), sublayer_out_.data(), L.post_ffn_norm.data(), c.rms_eps, n, d);
        } else {
            B.matmul(ffn_gate_.data(), n, {{&L.w_down, residual_.data(), nullptr, /*accumulate=*/true}});
        }
    }

    // Output head: every row when asked for all logits, else only the last token's. All rows go
    // through logits_ logit_rows_ at a time (a GPU writes its own buffers, not the caller's).
    const int64_t V = c.n_vocab;
    if (all_logits) {
        B.rmsnorm(residual_.data(), w_.output_norm.data(), normed_.data(), n, d, c.rms_eps);
        int last = 0;  // row of logits_ holding the last token's logits
        for (int r0 = 0; r0 < n; r0 += logit_rows_) {
            const int rows = std::min(logit_rows_, n - r0);
            B.matmul(normed_.data() + int64_t(r0) * d, rows, {{&w_.output, logits_.data()}});
            if (c.final_logit_softcap > 0) B.softcap(logits_.data(), rows * V, c.final_logit_softcap);
            B.sync();
            std::copy(logits_.data(), logits_.data() + rows * V, all_logits + int64_t(r0) * V);
            last = rows - 1;
        }
        if (last > 0) std::copy(logits_.data() + last * V, logits_.data() + (last + 1) * V, logits_.data());
    } else {
        const float* last = residual_.data() + int64_t(n - 1) * d;
        B.rmsnorm_matmul(last, w_.output_norm.data(), c.rms_eps, normed_.data(), 1, d, {{&w_.output, logits_.data()}});
        if (c.final_logit_softcap > 0) B.softcap(logits_.data(), V, c.final_logit_softcap);
        B.sync();
    }
    n_past_ += n;
}

}  // namespace metallic
