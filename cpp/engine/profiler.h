// A Backend decorator that times every op, for METALLIC_PROFILE / `--profile`. It is only
// inserted when asked for, so the normal path pays nothing. Matmuls are labelled by the roles of
// the tensors they compute ("attn_q+attn_k+attn_v", "ffn_down", "output"), so the table says
// which weights the time goes to.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"

namespace metallic {

struct OpTime {
    int64_t calls = 0;
    double seconds = 0.0;
};

class ProfilingBackend final : public Backend {
public:
    explicit ProfilingBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}

    const char* name() const override { return inner_->name(); }
    const std::map<std::string, OpTime>& times() const { return times_; }
    void reset() { times_.clear(); }

    // Everything passes through, fused steps included, so profiling does not change what a
    // backend runs; rope_attention is the one exception: it runs as its two steps (Backend's
    // default), timed apart, which compute the floats the fused kernel does (Metal's tests
    // check it). On a GPU backend ops only encode: their times are encode times, and the GPU's
    // work shows up under "sync".
    float* activations(size_t count) override { return inner_->activations(count); }
    void sync() override {
        Timer _(this, "sync");
        inner_->sync();
    }
    uint64_t flush() override { return inner_->flush(); }
    void wait_for(uint64_t ticket) override {
        Timer _(this, "sync");
        inner_->wait_for(ticket);
    }
    int max_single_segment() const override { return inner_->max_single_segment(); }
    void set_single_rows(int n) override { inner_->set_single_rows(n); }
    std::map<std::string, uint64_t> stats() const override { return inner_->stats(); }
    void reset_stats() override { inner_->reset_stats(); }
    bool has_unfused_ops() const override { return inner_->has_unfused_ops(); }
    void log_kernels(std::vector<std::string>* log) override { inner_->log_kernels(log); }
    void rope_store_kv(int cache, float* q, int n_heads, float* k, int n_kv_heads, const float* v,
                       int n, int pos0, const float* inv_freq, const float* q_norm,
                       const float* k_norm, int head_dim, float eps) override {
        Timer _(this, "rope_store_kv");
        inner_->rope_store_kv(cache, q, n_heads, k, n_kv_heads, v, n, pos0, inv_freq, q_norm, k_norm,
                              head_dim, eps);
    }
    void rmsnorm_matmul(const float* x, const float* w, float eps, float* out, int n, int d,
                        std::initializer_list<MatmulJob> jobs) override {
        Timer _(this, "rmsnorm+matmul " + labels(jobs));
        inner_->rmsnorm_matmul(x, w, eps, out, n, d, jobs);
    }
    void rmsnorm_gate_up_glu(const float* x, const float* w, float eps, float* out, int n, int d,
                             const Matrix& gate, const Matrix& up, float* g, float* u,
                             Activation act) override {
        Timer _(this, "rmsnorm+ffn_gate+ffn_up+glu");
        inner_->rmsnorm_gate_up_glu(x, w, eps, out, n, d, gate, up, g, u, act);
    }
    void add_rmsnorm(float* x, float* y, const float* w, float eps, int n, int d) override {
        Timer _(this, "add_rmsnorm");
        inner_->add_rmsnorm(x, y, w, eps, n, d);
    }
    void gate_up_glu(const float* h, int n, const Matrix& gate, const Matrix& up, float* g,
                     float* u, Activation act) override {
        Timer _(this, "ffn_gate+ffn_up+glu");
        inner_->gate_up_glu(h, n, gate, up, g, u, act);
    }

    void embed(const Matrix& t, const int32_t* ids, int n, float s, float* x) override {
        Timer _(this, "embed");
        inner_->embed(t, ids, n, s, x);
    }
    void rmsnorm(const float* x, const float* w, float* out, int n, int d, float eps) override {
        Timer _(this, "rmsnorm");
        inner_->rmsnorm(x, w, out, n, d, eps);
    }
    void matmul(const float* in, int n, std::initializer_list<MatmulJob> jobs) override {
        Timer _(this, "matmul " + labels(jobs));
        inner_->matmul(in, n, jobs);
    }
    void rope(float* x, int n, int heads, int pos0, const float* f) override {
        Timer _(this, "rope");
        inner_->rope(x, n, heads, pos0, f);
    }
    void store_kv(int cache, const float* k, const float* v, int n, int pos0) override {
        Timer _(this, "store_kv");
        inner_->store_kv(cache, k, v, n, pos0);
    }
    void attention(int cache, const float* q, int n, int pos0, int window, float* out) override {
        Timer _(this, "attention");
        inner_->attention(cache, q, n, pos0, window, out);
    }
    void glu(float* g, const float* u, int64_t count, Activation act) override {
        Timer _(this, "glu");
        inner_->glu(g, u, count, act);
    }
    void add(float* x, const float* y, int64_t count) override {
        Timer _(this, "add");
        inner_->add(x, y, count);
    }
    void argmax(const float* x, int64_t n, int32_t* token, int32_t* status) override {
        Timer _(this, "argmax");
        inner_->argmax(x, n, token, status);
    }
    void sample(const float* x, int64_t n, const PickSettings& s, int32_t* token, int32_t* status) override {
        Timer _(this, "sample");
        inner_->sample(x, n, s, token, status);
    }
    void softcap(float* x, int64_t count, float cap) override {
        Timer _(this, "softcap");
        inner_->softcap(x, count, cap);
    }

private:
    struct Timer {
        Timer(ProfilingBackend* p, std::string op) : p(p), op(std::move(op)), t0(clock::now()) {}
        ~Timer() {
            OpTime& t = p->times_[op];
            t.calls += 1;
            t.seconds += std::chrono::duration<double>(clock::now() - t0).count();
        }
        using clock = std::chrono::steady_clock;
        ProfilingBackend* p;
        std::string op;
        clock::time_point t0;
    };

    static std::string labels(std::initializer_list<MatmulJob> jobs) {
        std::string label;
        for (const MatmulJob& j : jobs) label += (label.empty() ? "" : "+") + role(j.w->name);
        return label;
    }

    // "blk.7.attn_q.weight" -> "attn_q"; "output.weight" / "token_embd.weight" -> "output"
    static std::string role(const std::string& name) {
        std::string r = name;
        if (r.rfind("blk.", 0) == 0) r = r.substr(r.find('.', 4) + 1);
        if (r == "token_embd.weight") return "output";
        const size_t dot = r.rfind(".weight");
        return dot == std::string::npos ? r : r.substr(0, dot);
    }

    std::unique_ptr<Backend> inner_;
    std::map<std::string, OpTime> times_;
};

}  // namespace metallic
