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
//
// Tracing (trace.h): with an observer, each fused step runs as the ops it is made of, every
// op's output observed (the `else` branches of `if (!obs)`); without one, each step costs the
// test of that pointer and nothing else.
#include <algorithm>
#include <chrono>

#include "engine/assert.h"
#include "engine/engine.h"

namespace metallic {

template <class Run> void Engine::observe(OpEvent e, const Run& run) {
    kernels_.clear();
    const auto t0 = std::chrono::steady_clock::now();
    run();
    backend_->sync();  // the op's results on the host, its GPU work inside the time
    e.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (const std::string& k : kernels_) e.kernels += (e.kernels.empty() ? "" : ",") + k;
    struct Observing {  // see hold(); cleared also when the observer throws
        std::atomic<std::thread::id>& who;
        explicit Observing(std::atomic<std::thread::id>& w) : who(w) { who = std::this_thread::get_id(); }
        ~Observing() { who = std::thread::id(); }
    } observing(observing_);
    observer_->on_op(e);
}

void Engine::forward(const Segment* segs, int n_segs, float* all_logits, float* seg_logits, const int* out_rows,
                     int32_t* pick_token, int32_t* pick_status, const PickSettings* pick) {
    Backend& B = *backend_;
    const ModelConfig& c = cfg_;
    const int d = c.n_embd, hd = c.head_dim;
    const int64_t qd = int64_t(c.n_head) * hd, kvd = int64_t(c.n_head_kv) * hd, ff = c.n_ff;
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

    // step() orders the segments: one-token ones (decode steps), then the other short ones,
    // then the rest. The rows of the leading short segments (a lone prefill short enough is
    // one) are the backend's single rows, which its one-token kernels compute.
    int singles = 0;  // leading one-token segments
    while (singles < n_segs && segs[singles].n == 1) ++singles;
    int single_rows = 0;
    for (int i = 0; i < n_segs && segs[i].n <= B.max_single_segment(); ++i) single_rows += segs[i].n;
    B.set_single_rows(single_rows);

    // Tracing: one sequence per pass (step() refuses). ev() describes a traced op: its output
    // (rows x cols at out, the first of them `first` rows into the pass), the width of its
    // input rows and the matrix it read.
    Observer* const obs = observer_;
    METALLIC_ASSERT(!obs || (n_segs == 1 && !seg_logits));
    auto ev = [&](int layer, const char* op, const char* routine, const float* out, int rows, int64_t cols,
                  int64_t in_cols, const Matrix* w = nullptr, int first = 0) {
        OpEvent e;
        e.layer = layer;
        e.op = op;
        e.routine = routine;
        e.data = out;
        e.rows = rows;
        e.cols = cols;
        e.in_cols = in_cols;
        e.weight = w;
        e.pos = n_past_[size_t(segs[0].seq)] + first;
        return e;
    };
    // Traced: a sublayer's output (sublayer_out_, computed by w from w_in) into the residual
    // stream, after its post-norm if the model has one. A backend without an add of its own
    // (Metal) runs its fused steps instead: add_rmsnorm (the post-norm observed on a copy in
    // normed_, free at this point), or the product again, accumulated into the stream.
    auto add_sublayer = [&](int l, const float* post_norm, const char* norm_op, const char* add_op, const Matrix& w,
                            const float* w_in) {
        float* x = residual_.data();
        float* y = sublayer_out_.data();
        if (B.has_unfused_ops()) {
            if (post_norm)
                observe(ev(l, norm_op, "rmsnorm", y, n, d, d), [&] { B.rmsnorm(y, post_norm, y, n, d, c.rms_eps); });
            observe(ev(l, add_op, "add", x, n, d, d), [&] { B.add(x, y, int64_t(n) * d); });
        } else if (post_norm) {
            observe(ev(l, norm_op, "rmsnorm", normed_.data(), n, d, d),
                    [&] { B.rmsnorm(y, post_norm, normed_.data(), n, d, c.rms_eps); });
            observe(ev(l, add_op, "add_rmsnorm", x, n, d, d), [&] { B.add_rmsnorm(x, y, post_norm, c.rms_eps, n, d); });
        } else {
            observe(ev(l, add_op, "matmul accumulate", x, n, d, w.cols, &w),
                    [&] { B.matmul(w_in, n, {{&w, x, nullptr, /*accumulate=*/true}}); });
        }
    };

    auto embed = [&] { B.embed(w_.token_embd, ids, n, c.embed_scale, residual_.data()); };
    if (!obs)
        embed();
    else
        observe(ev(-1, "embed", "embed", residual_.data(), n, d, 1, &w_.token_embd), embed);

    for (int l = 0; l < c.n_layer; ++l) {
        const LayerWeights& L = w_.layers[size_t(l)];
        const int window = c.sliding_window[size_t(l)];
        const float* q_bias = c.qkv_bias ? L.q_bias.data() : nullptr;
        const float* k_bias = c.qkv_bias ? L.k_bias.data() : nullptr;
        const float* v_bias = c.qkv_bias ? L.v_bias.data() : nullptr;

        // attention: the projections over every row at once (one read of the weights), RoPE,
        // the cache write and attention per sequence, each at its own positions in its own cache
        if (!obs) {
            B.rmsnorm_matmul(residual_.data(), L.attn_norm.data(), c.rms_eps, normed_.data(), n, d,
                             {{&L.wq, q_.data(), q_bias}, {&L.wk, k_.data(), k_bias}, {&L.wv, v_.data(), v_bias}});
        } else {
            observe(ev(l, "attn_norm", "rmsnorm", normed_.data(), n, d, d),
                    [&] { B.rmsnorm(residual_.data(), L.attn_norm.data(), normed_.data(), n, d, c.rms_eps); });
            observe(ev(l, "q", "matmul", q_.data(), n, qd, d, &L.wq),
                    [&] { B.matmul(normed_.data(), n, {{&L.wq, q_.data(), q_bias}}); });
            observe(ev(l, "k", "matmul", k_.data(), n, kvd, d, &L.wk),
                    [&] { B.matmul(normed_.data(), n, {{&L.wk, k_.data(), k_bias}}); });
            observe(ev(l, "v", "matmul", v_.data(), n, kvd, d, &L.wv),
                    [&] { B.matmul(normed_.data(), n, {{&L.wv, v_.data(), v_bias}}); });
        }
        const float* freqs = window > 0 ? inv_freq_local_.data() : inv_freq_global_.data();
        const float* q_norm = c.qk_norm ? L.q_norm.data() : nullptr;
        const float* k_norm = c.qk_norm ? L.k_norm.data() : nullptr;
        for (int i = 0, row = 0; i < n_segs; row += segs[i].n, ++i) {
            const int cache = segs[i].seq * c.n_layer + l, pos0 = n_past_[size_t(segs[i].seq)], m = segs[i].n;
            float* q = q_.data() + row * qd;
            float* k = k_.data() + row * kvd;
            const float* v = v_.data() + row * kvd;
            float* out = attn_out_.data() + row * qd;
            if (!obs) {
                B.rope_attention(cache, q, c.n_head, k, c.n_head_kv, v, m, pos0, freqs, q_norm, k_norm, hd, c.rms_eps,
                                 window, out);
                continue;
            }
            // Traced: each step observed alone.
            if (c.qk_norm) {  // each head a row of head_dim
                observe(ev(l, "q_norm", "rmsnorm", q, m, qd, qd),
                        [&] { B.rmsnorm(q, q_norm, q, m * c.n_head, hd, c.rms_eps); });
                observe(ev(l, "k_norm", "rmsnorm", k, m, kvd, kvd),
                        [&] { B.rmsnorm(k, k_norm, k, m * c.n_head_kv, hd, c.rms_eps); });
            }
            if (B.has_unfused_ops()) {
                observe(ev(l, "rope_q", "rope", q, m, qd, qd), [&] { B.rope(q, m, c.n_head, pos0, freqs); });
                observe(ev(l, "rope_k", "rope+store_kv", k, m, kvd, kvd), [&] {
                    B.rope(k, m, c.n_head_kv, pos0, freqs);
                    B.store_kv(cache, k, v, m, pos0);
                });
            } else {  // one fused step for both: its time is rope_q's
                observe(ev(l, "rope_q", "rope_store_kv", q, m, qd, qd), [&] {
                    B.rope_store_kv(cache, q, c.n_head, k, c.n_head_kv, v, m, pos0, freqs, nullptr, nullptr, hd,
                                    c.rms_eps);
                });
                observe(ev(l, "rope_k", "rope_store_kv (rope_q's)", k, m, kvd, kvd), [] {});
            }
            observe(ev(l, "attention", "attention", out, m, qd, qd),
                    [&] { B.attention(cache, q, m, pos0, window, out); });
        }
        if (!obs) {
            if (c.post_norms) {
                B.matmul(attn_out_.data(), n, {{&L.wo, sublayer_out_.data()}});
                B.add_rmsnorm(residual_.data(), sublayer_out_.data(), L.post_attn_norm.data(), c.rms_eps, n, d);
            } else {
                B.matmul(attn_out_.data(), n, {{&L.wo, residual_.data(), nullptr, /*accumulate=*/true}});
            }
        } else {
            observe(ev(l, "attn_output", "matmul", sublayer_out_.data(), n, d, qd, &L.wo),
                    [&] { B.matmul(attn_out_.data(), n, {{&L.wo, sublayer_out_.data()}}); });
            add_sublayer(l, c.post_norms ? L.post_attn_norm.data() : nullptr, "post_attn_norm", "residual_attn", L.wo,
                         attn_out_.data());
        }

        // feed-forward
        if (!obs) {
            B.rmsnorm_gate_up_glu(residual_.data(), L.ffn_norm.data(), c.rms_eps, normed_.data(), n, d, L.w_gate,
                                  L.w_up, ffn_gate_.data(), ffn_up_.data(), c.activation);
            if (c.post_norms) {
                B.matmul(ffn_gate_.data(), n, {{&L.w_down, sublayer_out_.data()}});
                B.add_rmsnorm(residual_.data(), sublayer_out_.data(), L.post_ffn_norm.data(), c.rms_eps, n, d);
            } else {
                B.matmul(ffn_gate_.data(), n, {{&L.w_down, residual_.data(), nullptr, /*accumulate=*/true}});
            }
        } else {
            observe(ev(l, "ffn_norm", "rmsnorm", normed_.data(), n, d, d),
                    [&] { B.rmsnorm(residual_.data(), L.ffn_norm.data(), normed_.data(), n, d, c.rms_eps); });
            observe(ev(l, "ffn_gate", "matmul", ffn_gate_.data(), n, ff, d, &L.w_gate),
                    [&] { B.matmul(normed_.data(), n, {{&L.w_gate, ffn_gate_.data()}}); });
            observe(ev(l, "ffn_up", "matmul", ffn_up_.data(), n, ff, d, &L.w_up),
                    [&] { B.matmul(normed_.data(), n, {{&L.w_up, ffn_up_.data()}}); });
            observe(ev(l, "glu", "glu", ffn_gate_.data(), n, ff, ff),
                    [&] { B.glu(ffn_gate_.data(), ffn_up_.data(), int64_t(n) * ff, c.activation); });
            observe(ev(l, "ffn_down", "matmul", sublayer_out_.data(), n, d, ff, &L.w_down),
                    [&] { B.matmul(ffn_gate_.data(), n, {{&L.w_down, sublayer_out_.data()}}); });
            add_sublayer(l, c.post_norms ? L.post_ffn_norm.data() : nullptr, "post_ffn_norm", "residual_ffn",
                         L.w_down, ffn_gate_.data());
        }
    }

    // Output head. All rows (prefill_all) go through logits_, logit_rows_ rows at a time (a GPU
    // writes its own buffers, not the caller's); a last token takes the fused norm + matrix-
    // vector path. In a step, the one-token segments' rows (0 .. singles-1) go together, and
    // each prompt chunk's last row alone: every sequence's logits as it would get them alone.
    const int64_t V = c.n_vocab;
    const float cap = c.final_logit_softcap;
    if (all_logits) {
        auto norm = [&] { B.rmsnorm(residual_.data(), w_.output_norm.data(), normed_.data(), n, d, c.rms_eps); };
        if (!obs)
            norm();
        else
            observe(ev(-1, "output_norm", "rmsnorm", normed_.data(), n, d, d), norm);
        for (int r0 = 0; r0 < n; r0 += logit_rows_) {
            const int m = std::min(logit_rows_, n - r0);
            auto head = [&] { B.matmul(normed_.data() + int64_t(r0) * d, m, {{&w_.output, logits_.data()}}); };
            auto soft = [&] { B.softcap(logits_.data(), m * V, cap); };
            if (!obs) {
                head();
                if (cap > 0) soft();
            } else {
                observe(ev(-1, "logits", "matmul", logits_.data(), m, V, d, &w_.output, r0), head);
                if (cap > 0) observe(ev(-1, "logit_softcap", "softcap", logits_.data(), m, V, V, nullptr, r0), soft);
            }
            B.sync();
            std::copy(logits_.data(), logits_.data() + m * V, all_logits + int64_t(r0) * V);
        }
        std::copy(all_logits + (n - 1) * V, all_logits + n * V, logits_.data());  // what prefill returns
    } else if (seg_logits) {
        // m rows of the residual stream from `row` -> rows out_rows[seg ..] of seg_logits
        auto emit = [&](int row, int m, int seg) {
            B.rmsnorm_matmul(residual_.data() + int64_t(row) * d, w_.output_norm.data(), c.rms_eps, normed_.data(),
                             m, d, {{&w_.output, logits_.data()}});
            if (cap > 0) B.softcap(logits_.data(), m * V, cap);
            B.sync();
            for (int r = 0; r < m; ++r)
                std::copy(logits_.data() + r * V, logits_.data() + (r + 1) * V,
                          seg_logits + int64_t(out_rows[seg + r]) * V);
        };
        for (int r0 = 0; r0 < singles; r0 += logit_rows_) emit(r0, std::min(logit_rows_, singles - r0), r0);
        for (int i = singles, row = singles; i < n_segs; ++i) {
            row += segs[i].n;
            emit(row - 1, 1, i);
        }
    } else {
        const float* last = residual_.data() + int64_t(n - 1) * d;
        if (!obs) {
            B.rmsnorm_matmul(last, w_.output_norm.data(), c.rms_eps, normed_.data(), 1, d,
                             {{&w_.output, logits_.data()}});
            if (cap > 0) B.softcap(logits_.data(), V, cap);
        } else {
            observe(ev(-1, "output_norm", "rmsnorm", normed_.data(), 1, d, d, nullptr, n - 1),
                    [&] { B.rmsnorm(last, w_.output_norm.data(), normed_.data(), 1, d, c.rms_eps); });
            observe(ev(-1, "logits", "matmul", logits_.data(), 1, V, d, &w_.output, n - 1),
                    [&] { B.matmul(normed_.data(), 1, {{&w_.output, logits_.data()}}); });
            if (cap > 0)
                observe(ev(-1, "logit_softcap", "softcap", logits_.data(), 1, V, V, nullptr, n - 1),
                        [&] { B.softcap(logits_.data(), V, cap); });
        }
        if (pick_token && pick)  // the next pass reads it: no wait
            B.sample(logits_.data(), V, *pick, pick_token, pick_status);
        else if (pick_token)
            B.argmax(logits_.data(), V, pick_token, pick_status);
        else
            B.sync();
    }
    for (int i = 0; i < n_segs; ++i) n_past_[size_t(segs[i].seq)] += segs[i].n;
}

}  // namespace metallic
