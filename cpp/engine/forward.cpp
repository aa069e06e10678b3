// The forward pass: the whole model, once, for every architecture and every backend.
//
// Per layer (pre-norm transformer):
//   h   = rmsnorm(x) * attn_norm
//   q,k,v = h Wq (+bq), h Wk (+bk), h Wv (+bv)           one pass over h
//   q,k = rmsnorm per head (qk_norm: qwen3, gemma3)
//   q,k = rope(q, k) at their positions                   interleaved (llama) or neox pairs
//   cache[seq][layer] <- k, v                             per sequence of the pass
//   a   = softmax(q K^T * scale, causal, sliding window) V over the sequence's cache
//   x  += a Wo                                            (post_norms: x += rmsnorm(a Wo))
//   h   = rmsnorm(x) * ffn_norm
//   x  += (act(h Wgate) * h Wup) Wdown                    SwiGLU or GeGLU
// then logits = rmsnorm(x_last) * output_norm . Wout, optionally soft-capped.
//
// A pass holds the new tokens of one sequence (prefill, decode) or of several (a step of the
// server's batch): every op but RoPE, the cache write and attention sees all rows at once.
#include <algorithm>

#include "engine/assert.h"
#include "engine/engine.h"

namespace metallic {

void Engine::forward(const Segment* segs, int n_segs, float* all_logits, float* seg_logits, const int* out_rows) {
    Backend& B = *backend_;
    const ModelConfig& c = cfg_;
    const int d = c.n_embd, hd = c.head_dim;
    const int64_t qd = int64_t(c.n_head) * hd, kvd = int64_t(c.n_head_kv) * hd;
    // The rows of the pass: each segment's tokens in turn. prefill() and step() checked that
    // they fit the activations and each sequence's context.
    int n = 0;
    for (int i = 0; i < n_segs; ++i) n += segs[i].n;
    METALLIC_ASSERT(n_segs > 0 && n > 0 && n <= opt_.max_batch);
    METALLIC_ASSERT(!all_logits || n_segs == 1);
    const int32_t* ids = segs[0].ids;
    if (n_segs > 1) {
        int32_t* at = step_ids_.data();
        for (int i = 0; i < n_segs; ++i) at = std::copy(segs[i].ids, segs[i].ids + segs[i].n, at);
        ids = step_ids_.data();
    }

    int single = 0;  // leading one-token segments: decode steps of a batched step
    if (seg_logits)
        while (single < n_segs && segs[single].n == 1) ++single;
    B.set_single_rows(single);

    B.embed(w_.token_embd, ids, n, c.embed_scale, residual_.data());

    for (int l = 0; l < c.n_layer; ++l) {
        const LayerWeights& L = w_.layers[size_t(l)];
        const int window = c.sliding_window[size_t(l)];

        // attention: the projections over every row at once (one read of the weights), RoPE,
        // the cache write and attention per sequence, each at its own positions in its own cache
        B.rmsnorm_matmul(residual_.data(), L.attn_norm.data(), c.rms_eps, normed_.data(), n, d,
                         {{&L.wq, q_.data(), c.qkv_bias ? L.q_bias.data() : nullptr},
                          {&L.wk, k_.data(), c.qkv_bias ? L.k_bias.data() : nullptr},
                          {&L.wv, v_.data(), c.qkv_bias ? L.v_bias.data() : nullptr}});
        const float* freqs = window > 0 ? inv_freq_local_.data() : inv_freq_global_.data();
        for (int i = 0, row = 0; i < n_segs; row += segs[i].n, ++i) {
            const int cache = segs[i].seq * c.n_layer + l, pos0 = n_past_[size_t(segs[i].seq)];
            float* q = q_.data() + row * qd;
            B.rope_store_kv(cache, q, c.n_head, k_.data() + row * kvd, c.n_head_kv, v_.data() + row * kvd, segs[i].n,
                            pos0, freqs, c.qk_norm ? L.q_norm.data() : nullptr, c.qk_norm ? L.k_norm.data() : nullptr,
                            hd, c.rms_eps);
            B.attention(cache, q, segs[i].n, pos0, window, attn_out_.data() + row * qd);
        }
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

    // Output head. All rows (prefill_all) go through logits_, logit_rows_ rows at a time (a GPU
    // writes its own buffers, not the caller's); a last token takes the fused norm + matrix-
    // vector path. In a step, the one-token segments' rows (0 .. single-1) go together, and
    // each prompt chunk's last row alone: every sequence's logits as it would get them alone.
    const int64_t V = c.n_vocab;
    if (all_logits) {
        B.rmsnorm(residual_.data(), w_.output_norm.data(), normed_.data(), n, d, c.rms_eps);
        for (int r0 = 0; r0 < n; r0 += logit_rows_) {
            const int m = std::min(logit_rows_, n - r0);
            B.matmul(normed_.data() + int64_t(r0) * d, m, {{&w_.output, logits_.data()}});
            if (c.final_logit_softcap > 0) B.softcap(logits_.data(), m * V, c.final_logit_softcap);
            B.sync();
            std::copy(logits_.data(), logits_.data() + m * V, all_logits + int64_t(r0) * V);
        }
        std::copy(all_logits + (n - 1) * V, all_logits + n * V, logits_.data());  // what prefill returns
    } else if (seg_logits) {
        // m rows of the residual stream from `row` -> rows out_rows[seg ..] of seg_logits
        auto emit = [&](int row, int m, int seg) {
            B.rmsnorm_matmul(residual_.data() + int64_t(row) * d, w_.output_norm.data(), c.rms_eps, normed_.data(),
                             m, d, {{&w_.output, logits_.data()}});
            if (c.final_logit_softcap > 0) B.softcap(logits_.data(), m * V, c.final_logit_softcap);
            B.sync();
            for (int r = 0; r < m; ++r)
                std::copy(logits_.data() + r * V, logits_.data() + (r + 1) * V,
                          seg_logits + int64_t(out_rows[seg + r]) * V);
        };
        for (int r0 = 0; r0 < single; r0 += logit_rows_) emit(r0, std::min(logit_rows_, single - r0), r0);
        for (int i = single, row = single; i < n_segs; ++i) {
            row += segs[i].n;
            emit(row - 1, 1, i);
        }
    } else {
        const float* last = residual_.data() + int64_t(n - 1) * d;
        B.rmsnorm_matmul(last, w_.output_norm.data(), c.rms_eps, normed_.data(), 1, d, {{&w_.output, logits_.data()}});
        if (c.final_logit_softcap > 0) B.softcap(logits_.data(), V, c.final_logit_softcap);
        B.sync();
    }
    for (int i = 0; i < n_segs; ++i) n_past_[size_t(segs[i].seq)] += segs[i].n;
}

}  // namespace metallic
