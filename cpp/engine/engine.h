// The engine: one loaded model with its KV cache, ready to prefill and decode.
//
// It holds n_seq sequences, each with a cache of n_ctx positions of its own. prefill and decode
// run one sequence; step runs new tokens of several in one forward pass (the server's continuous
// batching), so the weights are read once for all of them.
//
// Everything a token needs is allocated here, at load, from n_ctx and the config; prefill and
// decode allocate nothing, do no I/O and never call into Python.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/backend.h"
#include "engine/config.h"
#include "engine/mapped_file.h"
#include "engine/trace.h"
#include "engine/weights.h"

namespace metallic {

struct EngineOptions {
    std::string backend = "cpu";
    int n_ctx = 4096;     // positions per sequence
    int n_seq = 1;        // sequences, each with a KV cache of its own
    int threads = 0;      // 0: physical cores
    bool kv_f32 = false;  // KV cache precision (float16 by default)
    int max_batch = 512;  // prompt tokens per forward pass; longer prompts go in several passes
    bool profile = false; // time every op (see profiler.h)
    bool mmap = true;     // map the file (zero copy) or read it into memory (see mapped_file.h)
};

// n tokens of sequence seq, run at its next positions: one sequence's part of a step.
struct Segment {
    int seq = 0;
    const int32_t* ids = nullptr;
    int n = 0;
};

// Safe to share between threads: prefill, decode, truncate and the profile calls serialize on
// the engine's own lock (other engines run in parallel). A returned logits pointer stays valid
// until the next call from any thread; callers that share an engine hold their own lock across
// a call and the use of its result (metallic.Model does).
class Engine {
public:
    Engine(const std::string& path, const ModelConfig& cfg, const std::vector<TensorDesc>& tensors,
           const EngineOptions& opt);
    // Waits for queued GPU work: it reads the mapped file and the backend's buffers.
    ~Engine();

    // Runs n tokens of sequence seq at its positions n_past(seq) .. +n-1 and appends them to its
    // cache. Returns the logits of the last token (n_vocab floats, valid until the next call).
    // If all_logits is given it receives n rows of n_vocab logits, one per token.
    const float* prefill(const int32_t* ids, int n, float* all_logits = nullptr, int seq = 0);
    // One token: the same as prefill of a single id, on the matrix-vector path.
    const float* decode(int32_t id, int seq = 0) { return prefill(&id, 1, nullptr, seq); }
    // Several sequences' tokens in one forward pass, each appended to its own sequence; out
    // receives one row of n_vocab logits per segment, after its last token. A sequence appears
    // at most once, and all segments together hold at most max_batch tokens.
    void step(const std::vector<Segment>& segs, float* out);

    // Decoding with the host out of the loop: from token `first` at the sequence's next position,
    // n forward passes in which the backend picks each next token itself and feeds it to the
    // following pass, all queued before one wait (on Metal: one command buffer for n tokens).
    // The pick is greedy (pick == nullptr: the argmax, as the host's greedy sampler) or the
    // shared seeded top-k rule (top_k_pick.h, as the host's sampler), pass i making draw
    // pick->counter + i. tokens[i] is the token chosen after pass i and status[i] 0, or what made
    // its logits unusable (see Backend::argmax); from the first bad status on, the tokens mean
    // nothing. The n inputs (first, tokens[0 .. n-2]) are appended to the cache: a caller that
    // stops at tokens[j] truncates the n - 1 - j inputs after it. n is at most kMaxResident.
    //
    // n_next > 0 also queues the following burst, n_next passes from tokens[n - 1] (draws from
    // pick->counter + n on), before the wait, so the GPU runs it while the caller streams this
    // one (the host never leaves the GPU idle between bursts). A call that continues it (the
    // same seq, n = n_next, first = tokens[n - 1], the same pick settings and the counter where
    // this burst's ended) only waits for it, and may queue the next; any other call first waits
    // for it and discards it. Until continued, its positions are not in n_past.
    static constexpr int kMaxResident = 64;
    void decode_resident(int32_t first, int n, int32_t* tokens, int32_t* status, int seq = 0, int n_next = 0,
                         const PickSettings* pick = nullptr);

    // Forgets the sequence's cached positions from n_keep on (0 restarts the conversation).
    void truncate(int n_keep, int seq = 0);

    int n_past(int seq = 0) const;
    int n_seq() const { return opt_.n_seq; }
    int n_ctx() const { return opt_.n_ctx; }
    int threads() const { return opt_.threads; }
    const ModelConfig& config() const { return cfg_; }
    const EngineOptions& options() const { return opt_; }
    const Weights& weights() const { return w_; }
    const char* backend_name() const { return backend_->name(); }
    // Per-op times since load or the last reset; empty unless loaded with profile = true.
    std::map<std::string, std::pair<int64_t, double>> profile() const;
    void reset_profile();
    // The backend's counters (GPU command buffers, dispatches, ...) since the last reset.
    std::map<std::string, uint64_t> backend_stats() const;
    void reset_backend_stats();

    // Tracing (trace.h): with an observer, prefill and decode run the forward pass unfused and
    // show it every op's output; nullptr turns it off. One sequence at a time: step() refuses
    // to run while an observer is set. The observer must outlive its use.
    void set_observer(Observer* observer);

private:
    // One forward pass over the segments' tokens (rows in segment order). The logits go to
    // all_logits (one segment: every row), to seg_logits (a row per segment, after its last
    // token), or else to logits_ (one segment: its last token).
    // In a step the short segments come first (Backend::max_single_segment), and segment i's
    // logits go to row out_rows[i] of seg_logits.
    // With pick_token (one segment, last-token logits), the backend's argmax (or with pick, its
    // seeded sampler) writes the next token there and its status to pick_status, and the pass
    // does not wait for the GPU.
    void forward(const Segment* segs, int n_segs, float* all_logits, float* seg_logits,
                 const int* out_rows = nullptr, int32_t* pick_token = nullptr, int32_t* pick_status = nullptr,
                 const PickSettings* pick = nullptr);
    void check_ids(const int32_t* ids, int n) const;
    // One op of a traced pass: runs it, waits for it, times it and hands it to observer_.
    template <class Run> void observe(OpEvent e, const Run& run);
    void check_room(int seq, int n) const;
    // GPU-resident decoding: n passes from *in, token i picked into burst_tokens(region)[i]
    // (sampled when pick is given, with draws from pick->counter on).
    void encode_burst(int seq, const int32_t* in, int n, int region, const PickSettings* pick);
    int32_t* burst_tokens(int region) const { return resident_tokens_ + 1 + region * kMaxResident; }
    int32_t* burst_status(int region) const { return resident_status_ + region * kMaxResident; }
    // Waits for the queued burst, if any, and discards it (callers hold mu_).
    void settle();

    MappedFile file_;
    ModelConfig cfg_;
    EngineOptions opt_;
    Weights w_;
    std::unique_ptr<Backend> backend_;
    std::vector<float> inv_freq_global_, inv_freq_local_;
    std::unique_ptr<std::atomic<int>[]> n_past_;  // per sequence: positions its cache holds
    std::vector<int32_t> step_ids_;  // a step's ids, segment after segment (embed reads them in one)
    mutable std::mutex mu_;  // one call at a time: the backend, its thread pool and the cache
    // mu_, refusing a call from inside the observer (hold() says why).
    std::lock_guard<std::mutex> hold() const;
    Observer* observer_ = nullptr;     // tracing (set_observer), else nullptr
    std::vector<std::string> kernels_;  // tracing: the kernels the backend dispatched for an op
    std::atomic<std::thread::id> observing_{};  // the thread inside observer_->on_op, if any

    // Activations for up to max_batch tokens, carved out of the backend's activations() memory.
    struct Span {
        float* p = nullptr;
        size_t n = 0;
        float* data() const { return p; }
        size_t size() const { return n; }
    };
    Span residual_;      // the residual stream: the embeddings plus every layer's outputs
    Span normed_;        // rmsnorm(residual) * norm weight: the input of the q/k/v, gate/up and output matmuls
    Span q_, k_, v_;     // normed_'s projections; q and k then normalized per head (qk_norm) and rotated in place
    Span attn_out_;      // attention's output, the input of the attn_output matmul
    Span ffn_gate_;      // normed_ Wgate, then act(gate) * up in place: the input of ffn_down
    Span ffn_up_;        // normed_ Wup
    Span sublayer_out_;  // attn_output's or ffn_down's result before its post-norm (post_norms models)
    // logit_rows_ rows of n_vocab logits: the output head of prefill with all_logits (Python's
    // prefill_all) runs that many tokens at a time into here (a GPU writes only its own
    // buffers), then they are copied out. Row 0 holds the last token's logits when prefill
    // returns.
    Span logits_;
    int logit_rows_ = 1;
    // decode_resident's tokens (the host's first, then two regions of kMaxResident: a burst's
    // picks and the queued next burst's) and statuses (two regions), in the activations so a
    // GPU's kernels read and write them.
    int32_t* resident_tokens_ = nullptr;
    int32_t* resident_status_ = nullptr;
    // The burst decode_resident queued for its continuation (n == 0: none): its sequence, passes,
    // region, backend ticket, the token it starts from (the previous burst's last pick), and
    // whether and how it samples (its first draw in pick.counter).
    struct QueuedBurst {
        int seq = 0, n = 0, region = 0;
        uint64_t ticket = 0;
        int32_t first = -1;
        bool sampled = false;
        PickSettings pick{};
    } queued_;
};

}  // namespace metallic
