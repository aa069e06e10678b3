// The operations the forward pass is made of. A backend supplies them; the sequence lives once
// in forward.cpp. Activations are float arrays (rows of `n` tokens) that the engine carves out of
// memory the backend hands it at load (activations()), so a GPU backend can place them in a
// buffer both sides see; weights are Matrix views. The Metal backend maps every pointer it is
// given to a (buffer, offset) pair.
//
// Ops may only *encode* work (a GPU backend queues it); sync() finishes everything queued, and
// the engine calls it before the host reads any result (the logits). On the CPU ops run at once
// and sync() does nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <string>
#include <vector>

#include "engine/config.h"
#include "engine/top_k_pick.h"
#include "engine/weights.h"
#include "engine/zeroed_buffer.h"

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

    // Memory for the engine's activations: count floats, zeroed, valid as long as the backend.
    // Called once, at load. The default is host memory.
    virtual float* activations(size_t count) {
        host_activations_.reset(count);
        return host_activations_.data();
    }
    // Waits for all work the ops queued; results are readable by the host afterwards.
    virtual void sync() {}
    // Hands the work queued so far to the device without waiting, and returns a ticket for it;
    // wait_for(ticket) waits for that work (and what was queued before it) only, so later work
    // may still run. Synchronous backends return 0 and never wait.
    virtual uint64_t flush() { return 0; }
    virtual void wait_for(uint64_t ticket) { (void)ticket; }
    // Segments of at most this many tokens (decode steps, short prompt chunks) are computed
    // token by token with the backend's one-token (matrix-vector) kernels, which read each
    // weight once for all such rows of a pass; longer segments go through its GEMM. The engine
    // puts the short segments first and says how many rows they make (set_single_rows).
    virtual int max_single_segment() const { return 1; }
    // The next forward pass's first n rows belong to short segments (max_single_segment): the
    // backend computes each of them as that segment alone would, and the rest (long prompt
    // chunks) with its several-row products, so batching never changes a sequence's result.
    virtual void set_single_rows(int n) { (void)n; }
    // Counters of a GPU backend (command buffers, waits, dispatches, ...); empty on the CPU.
    virtual std::map<std::string, uint64_t> stats() const { return {}; }
    virtual void reset_stats() {}

    // ---- for tracing (trace.h) ----
    // Whether rope, store_kv and add run on their own. A backend that has them only inside its
    // fused steps (Metal: rope_store_kv, add_rmsnorm, matmul's accumulate) says no, and a traced
    // pass observes those steps whole.
    virtual bool has_unfused_ops() const { return true; }
    // From now on, append the name of every kernel dispatched to *log (nullptr: stop). A backend
    // without kernels of its own to name (the CPU) ignores it.
    virtual void log_kernels(std::vector<std::string>* log) { (void)log; }

    // x[t] = row ids[t] of the embedding table, times scale. ids is host memory, or memory from
    // activations() that an earlier op of the pass writes (argmax): read when the op runs.
    virtual void embed(const Matrix& table, const int32_t* ids, int n, float scale, float* x) = 0;
    // out[t] = x[t] / rms(x[t]) * w, for n rows of length d. out may alias x.
    virtual void rmsnorm(const float* x, const float* w, float* out, int n, int d, float eps) = 0;
    // Several matrices reading the same input rows in one parallel pass (q/k/v; gate/up).
    virtual void matmul(const float* in, int n, std::initializer_list<MatmulJob> jobs) = 0;
    // Rotary embedding in place on n rows of n_heads heads at positions pos0 .. pos0+n-1.
    // inv_freq holds rope_dims/2 angular frequencies (scaling already applied).
    virtual void rope(float* x, int n, int n_heads, int pos0, const float* inv_freq) = 0;
    // The KV cache is one array per layer and sequence, numbered cache = seq * n_layer + layer
    // (n_layer * n_seq of them, each [kv_head][position][head_dim]); every sequence has its own
    // positions, and the ops below touch only the cache they are given.
    // Appends n rows of k and v at positions pos0.. to the cache.
    virtual void store_kv(int cache, const float* k, const float* v, int n, int pos0) = 0;
    // Causal attention of n query rows at positions pos0.. over the cache.
    virtual void attention(int cache, const float* q, int n, int pos0, int window, float* out) = 0;
    // g = act(g) * u, element-wise over count values.
    virtual void glu(float* g, const float* u, int64_t count, Activation act) = 0;
    // x += y over count values.
    virtual void add(float* x, const float* y, int64_t count) = 0;
    // x = cap * tanh(x / cap).
    virtual void softcap(float* x, int64_t count, float cap) = 0;
    // The greedy pick of GPU-resident decoding (Engine::decode_resident): *token = the index of the
    // largest of n values, the first of equal ones (numpy.argmax, as the host's greedy sampler),
    // and *status = 0; or *token = 0 (a valid id for the passes queued behind) and *status = 1
    // if a value is NaN, 2 if the largest is +inf, 3 if all are -inf, the cases the host sampler
    // refuses. token and status point into activations(); they are written when the op runs.
    virtual void argmax(const float* x, int64_t n, int32_t* token, int32_t* status) = 0;
    // The sampled pick of GPU-resident decoding: *token picked from the n values by the shared
    // seeded rule (top_k_pick.h, the host sampler's), statuses as argmax. The settings are
    // copied when the op is queued.
    virtual void sample(const float* x, int64_t n, const PickSettings& s, int32_t* token, int32_t* status) = 0;

    // ---- steps a backend may fuse; the defaults are the ops above in sequence ----
    // RoPE on q (n_heads heads) and k (n_kv_heads), then k and v into the cache. With
    // q_norm and k_norm (qk-norm models), each head of q and k is first RMS-normalized with them.
    virtual void rope_store_kv(int cache, float* q, int n_heads, float* k, int n_kv_heads, const float* v, int n,
                               int pos0, const float* inv_freq, const float* q_norm, const float* k_norm,
                               int head_dim, float eps) {
        if (q_norm) {
            rmsnorm(q, q_norm, q, n * n_heads, head_dim, eps);
            rmsnorm(k, k_norm, k, n * n_kv_heads, head_dim, eps);
        }
        rope(q, n, n_heads, pos0, inv_freq);
        rope(k, n, n_kv_heads, pos0, inv_freq);
        store_kv(cache, k, v, n, pos0);
    }
    // rope_store_kv, then attention of its n tokens into out. A backend that fuses the two may
    // leave q and k unrotated (they are read by nothing after).
    virtual void rope_attention(int cache, float* q, int n_heads, float* k, int n_kv_heads, const float* v, int n,
                                int pos0, const float* inv_freq, const float* q_norm, const float* k_norm,
                                int head_dim, float eps, int window, float* out) {
        rope_store_kv(cache, q, n_heads, k, n_kv_heads, v, n, pos0, inv_freq, q_norm, k_norm, head_dim, eps);
        attention(cache, q, n, pos0, window, out);
    }
    // out = rmsnorm(x) * w (n rows of d), then the jobs over out. A backend that fuses the norm
    // into the matrix products may leave out unwritten.
    virtual void rmsnorm_matmul(const float* x, const float* w, float eps, float* out, int n, int d,
                                std::initializer_list<MatmulJob> jobs) {
        rmsnorm(x, w, out, n, d, eps);
        matmul(out, n, jobs);
    }
    // out = rmsnorm(x) * w, then gate_up_glu over out (out may be left unwritten likewise).
    virtual void rmsnorm_gate_up_glu(const float* x, const float* w, float eps, float* out, int n, int d,
                                     const Matrix& gate, const Matrix& up, float* g, float* u, Activation act) {
        rmsnorm(x, w, out, n, d, eps);
        gate_up_glu(out, n, gate, up, g, u, act);
    }
    // x += rmsnorm(y) * w over n rows of d (Gemma's post-norms); y may be left normalized.
    virtual void add_rmsnorm(float* x, float* y, const float* w, float eps, int n, int d) {
        rmsnorm(y, w, y, n, d, eps);
        add(x, y, int64_t(n) * d);
    }
    // g = act(h Wgate) * (h Wup) over n rows; u receives h Wup (or is left alone if fused).
    virtual void gate_up_glu(const float* h, int n, const Matrix& gate, const Matrix& up, float* g, float* u,
                             Activation act) {
        matmul(h, n, {{&gate, g}, {&up, u}});
        glu(g, u, int64_t(n) * gate.rows, act);
    }

private:
    ZeroedBuffer<float> host_activations_;
};

}  // namespace metallic
