#include "engine/engine.h"

#include "engine/host_pick.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>

#include "cpu/cpu_backend.h"
#include "cpu/thread_pool.h"
#include "engine/error.h"
#include "engine/host_pick.h"
#include "engine/profiler.h"
#include "metal/gpu.h"
#include "metal/metal_backend.h"

namespace metallic {
namespace {

void check_config(const std::string& path, const ModelConfig& c) {
    auto bad = [&](const std::string& what) { throw Unsupported(path + ": " + what); };
    if (c.n_layer <= 0 || c.n_embd <= 0 || c.n_head <= 0 || c.n_head_kv <= 0 || c.head_dim <= 0 ||
        c.n_ff <= 0 || c.n_vocab <= 0)
        bad("model hyper-parameters must be positive");
    if (c.n_head % c.n_head_kv) bad("head count is not a multiple of the kv head count");
    if (c.rope_dims <= 0 || c.rope_dims > c.head_dim || c.rope_dims % 2) bad("invalid rope dimension count");
    if (c.sliding_window.size() != size_t(c.n_layer)) bad("sliding window list must have one entry per layer");
    // The float hyper-parameters: a NaN or an absurd value here does not fail, it turns every
    // logit into NaN. Python's config.py validates them with the keys' names; this is the
    // core's own line for callers that build a config by hand.
    auto finite_in = [&](const char* name, float v, float lo, float hi) {
        if (!std::isfinite(v) || v < lo || v > hi)
            bad(std::string(name) + " = " + std::to_string(v) + " is not a finite value from " +
                std::to_string(lo) + " to " + std::to_string(hi));
    };
    // Bounds no looser than config.py's (which names the GGUF keys), only the impossible ones.
    const float tiny = std::numeric_limits<float>::min(), huge = std::numeric_limits<float>::max();
    finite_in("rms_eps", c.rms_eps, tiny, 1.0f);
    finite_in("rope_base", c.rope_base, 1.0f, huge);
    finite_in("rope_base_local", c.rope_base_local, 1.0f, huge);
    finite_in("rope_freq_scale", c.rope_freq_scale, tiny, huge);
    finite_in("rope_freq_scale_local", c.rope_freq_scale_local, tiny, huge);
    finite_in("embed_scale", c.embed_scale, tiny, huge);
    finite_in("attn_scale", c.attn_scale, 0.0f, 1e3f);
    finite_in("final_logit_softcap", c.final_logit_softcap, 0.0f, huge);
}

// The request's own limits, checked after the model (check_config, bind_weights): a model that
// cannot run is reported as such, not as the KV cache its absurd head size would need.
void check_request(const std::string& path, const ModelConfig& c, const EngineOptions& o) {
    auto bad_request = [&](const std::string& what) { throw BadRequest(path + ": " + what); };
    if (o.n_ctx <= 0) bad_request("n_ctx must be positive");
    if (o.max_batch <= 0) bad_request("max_batch must be positive");
    if (o.n_seq <= 0 || o.n_seq > 4096) bad_request("n_seq must be from 1 to 4096");
    // A KV cache beyond 64 GiB on this path is a mistake in the request, not a model.
    const double kv_bytes =
        2.0 * c.n_layer * double(o.n_seq) * double(o.n_ctx) * c.n_head_kv * c.head_dim * (o.kv_f32 ? 4 : 2);
    if (kv_bytes > 64.0 * (1ull << 30))
        bad_request("n_ctx " + std::to_string(o.n_ctx) +
                    (o.n_seq > 1 ? " for " + std::to_string(o.n_seq) + " sequences" : std::string()) +
                    " needs a KV cache of " + std::to_string(int64_t(kv_bytes / (1 << 20))) +
                    " MiB, which is too large");
}

// Angular frequency of each rotated pair: base^(-2i/dims), divided by the optional per-pair
// factors (llama 3 style scaling) and times the linear position scale.
std::vector<float> inv_freq(const ModelConfig& c, float base, float scale, const std::vector<float>& factors) {
    std::vector<float> f(size_t(c.rope_dims / 2));
    for (size_t i = 0; i < f.size(); ++i) {
        float v = 1.0f / std::pow(base, float(2 * i) / float(c.rope_dims));
        if (!factors.empty()) v /= factors[i];
        f[i] = v * scale;
    }
    return f;
}

}  // namespace

Engine::Engine(const std::string& path, const ModelConfig& cfg, const std::vector<TensorDesc>& tensors,
               const EngineOptions& opt)
    : file_(path, opt.mmap), cfg_(cfg), opt_(opt) {
    if (opt_.threads <= 0) opt_.threads = cpu::physical_core_count();
    opt_.max_batch = std::min(opt_.max_batch, opt_.n_ctx);
    check_config(path, cfg_);
    w_ = bind_weights(file_, cfg_, tensors);
    check_request(path, cfg_, opt_);
    n_past_ = std::make_unique<std::atomic<int>[]>(size_t(opt_.n_seq));
    for (int s = 0; s < opt_.n_seq; ++s) n_past_[size_t(s)] = 0;
    step_ids_.resize(size_t(opt_.max_batch));

    inv_freq_global_ = inv_freq(cfg_, cfg_.rope_base, cfg_.rope_freq_scale, w_.rope_freq_factors);
    inv_freq_local_ = inv_freq(cfg_, cfg_.rope_base_local, cfg_.rope_freq_scale_local, {});

    if (opt_.backend == "cpu") {
        cpu::CpuOptions co;
        co.n_ctx = opt_.n_ctx;
        co.n_seq = opt_.n_seq;
        co.threads = opt_.threads;
        co.kv_f32 = opt_.kv_f32;
        co.max_batch = opt_.max_batch;
        backend_ = cpu::make_cpu_backend(cfg_, co);
    } else if (opt_.backend == "metal" || opt_.backend == "metal-sim") {
        std::unique_ptr<gpu::Device> dev;
        if (opt_.backend == "metal") {
            dev = gpu::make_metal_device();
            if (!dev)
                throw BadRequest("backend 'metal' needs a Metal GPU and this machine has none (available here: " +
                               std::string(gpu::sim_available() ? "metal-sim, cpu)" : "cpu)"));
        } else {
            if (!gpu::sim_available())
                throw BadRequest("backend 'metal-sim' is not part of this build (METALLIC_METAL_SIM=OFF; available: cpu)");
            dev = gpu::make_sim_device();
        }
        metal::MetalOptions mo;
        mo.n_ctx = opt_.n_ctx;
        mo.n_seq = opt_.n_seq;
        mo.kv_f32 = opt_.kv_f32;
        mo.max_batch = opt_.max_batch;
        backend_ = metal::make_metal_backend(std::move(dev), cfg_, mo, file_, w_,
                                             {{inv_freq_global_.data(), inv_freq_global_.size()},
                                              {inv_freq_local_.data(), inv_freq_local_.size()}});
    } else {
        throw BadRequest("unknown backend '" + opt_.backend + "' (available: cpu, metal-sim, metal)");
    }

    if (opt_.profile) backend_ = std::make_unique<ProfilingBackend>(std::move(backend_));

    // All activations in one block from the backend, each array 256-byte aligned (GPU vector
    // loads and buffer-offset rules are satisfied by any alignment up to that).
    const size_t B = size_t(opt_.max_batch);
    const size_t d = size_t(cfg_.n_embd), qd = size_t(cfg_.n_head) * cfg_.head_dim,
                 kvd = size_t(cfg_.n_head_kv) * cfg_.head_dim, ff = size_t(cfg_.n_ff);
    const size_t V = size_t(cfg_.n_vocab);
    // At most 64 MiB of staged logits (about 110 rows of a 152k vocabulary), at least one row.
    logit_rows_ = int(std::clamp<size_t>((size_t(64) << 20) / (V * sizeof(float)), 1, B));
    Span* spans[] = {&residual_, &normed_, &sublayer_out_, &q_, &k_, &v_, &attn_out_, &ffn_gate_, &ffn_up_,
                     &logits_};
    const size_t sizes[] = {B * d, B * std::max(d, qd), B * d, B * qd, B * kvd, B * kvd, B * qd, B * ff, B * ff,
                            size_t(logit_rows_) * V};
    auto round_up = [](size_t n) { return (n + 63) & ~size_t(63); };
    size_t total = 0;
    for (size_t s : sizes) total += round_up(s);
    static_assert(sizeof(int32_t) == sizeof(float));
    const size_t resident = round_up(1 + 2 * kMaxResident) + round_up(2 * kMaxResident);
    float* mem = backend_->activations(total + resident);
    for (size_t i = 0; i < std::size(sizes); ++i) {
        *spans[i] = Span{mem, sizes[i]};
        mem += round_up(sizes[i]);
    }
    resident_tokens_ = reinterpret_cast<int32_t*>(mem);
    resident_status_ = reinterpret_cast<int32_t*>(mem + round_up(1 + 2 * kMaxResident));
}

Engine::~Engine() {
    try {
        const std::lock_guard<std::mutex> lock(mu_);
        if (backend_) backend_->sync();
    } catch (...) {  // a destructor must not throw; the device reported an error nobody can act on
    }
}

void Engine::check_ids(const int32_t* ids, int n) const {
    for (int i = 0; i < n; ++i)
        if (ids[i] < 0 || ids[i] >= cfg_.n_vocab)
            throw BadRequest("token id " + std::to_string(ids[i]) + " is outside the vocabulary of " +
                             std::to_string(cfg_.n_vocab));
}

void Engine::check_room(int seq, int n) const {
    if (seq < 0 || seq >= opt_.n_seq)
        throw BadRequest("sequence " + std::to_string(seq) + " is outside 0.." + std::to_string(opt_.n_seq - 1));
    if (n <= 0) throw BadRequest("no tokens to process");
    const int past = n_past_[size_t(seq)];
    if (int64_t(past) + n > opt_.n_ctx)
        throw ContextFull(std::to_string(n) + " tokens at position " + std::to_string(past) +
                          " do not fit the context of " + std::to_string(opt_.n_ctx) + " tokens" +
                          (opt_.n_seq > 1 ? " (sequence " + std::to_string(seq) + ")" : std::string()));
}

const float* Engine::prefill(const int32_t* ids, int n, float* all_logits, int seq) {
    const std::lock_guard<std::mutex> lock = hold();
    settle();
    check_room(seq, n);
    check_ids(ids, n);
    for (int done = 0; done < n;) {
        const Segment s{seq, ids + done, std::min(opt_.max_batch, n - done)};
        forward(&s, 1, all_logits ? all_logits + size_t(done) * cfg_.n_vocab : nullptr, nullptr);
        done += s.n;
    }
    return logits_.data();
}

static bool same_pick(const PickSettings& a, const PickSettings& b) {
    return a.top_k == b.top_k && a.top_p == b.top_p && a.min_p == b.min_p && a.inv_temp == b.inv_temp &&
           a.seed_lo == b.seed_lo && a.seed_hi == b.seed_hi && a.counter == b.counter;
}

void Engine::decode_resident(int32_t first, int n, int32_t* tokens, int32_t* status, int seq, int n_next,
                             const PickSettings* pick) {
    const std::lock_guard<std::mutex> lock = hold();
    if (n < 1 || n > kMaxResident)
        throw BadRequest("decode_resident runs 1 to " + std::to_string(kMaxResident) + " tokens, not " + std::to_string(n));
    if (n_next < 0 || n_next > kMaxResident)
        throw BadRequest("decode_resident queues 0 to " + std::to_string(kMaxResident) + " next tokens, not " +
                         std::to_string(n_next));
    if (pick) check_pick(*pick);
    if (observer_) throw BadRequest("GPU-resident decoding cannot be traced: trace with decode()");
    int region = 0;
    uint64_t ticket = 0;
    if (queued_.n > 0 && queued_.seq == seq && queued_.n == n && queued_.first == first &&
        queued_.sampled == (pick != nullptr) && (!pick || same_pick(queued_.pick, *pick))) {
        // The queued burst is this call's: its passes join the sequence.
        n_past_[size_t(seq)] += n;
        region = queued_.region;
        ticket = queued_.ticket;
        queued_ = {};
    } else {
        settle();
        check_room(seq, n);
        check_ids(&first, 1);
        resident_tokens_[0] = first;  // nothing queued reads it now
        encode_burst(seq, resident_tokens_, n, region, pick);
        ticket = backend_->flush();
    }
    if (n_next > 0 && int64_t(n_past_[size_t(seq)]) + n_next <= opt_.n_ctx) {
        // Queued behind this burst, from its last pick, into the other region; hidden from
        // n_past until a call continues it. (It writes the region the burst before read its
        // first token from: one queue and tracked buffers order the two on a GPU.)
        const int next = 1 - region;
        PickSettings next_pick{};
        if (pick) {
            next_pick = *pick;
            next_pick.counter = pick->counter + uint32_t(n);
        }
        encode_burst(seq, burst_tokens(region) + n - 1, n_next, next, pick ? &next_pick : nullptr);
        queued_ = {seq, n_next, next, backend_->flush(), -1, pick != nullptr, next_pick};
        n_past_[size_t(seq)] -= n_next;
    }
    backend_->wait_for(ticket);
    std::copy(burst_tokens(region), burst_tokens(region) + n, tokens);
    std::copy(burst_status(region), burst_status(region) + n, status);
    if (queued_.n > 0) queued_.first = tokens[n - 1];
}

void Engine::encode_burst(int seq, const int32_t* in, int n, int region, const PickSettings* pick) {
    int32_t* picks = burst_tokens(region);
    for (int i = 0; i < n; ++i) {
        const Segment s{seq, i == 0 ? in : picks + i - 1, 1};
        PickSettings draw{};
        if (pick) {
            draw = *pick;
            draw.counter = pick->counter + uint32_t(i);
        }
        forward(&s, 1, nullptr, nullptr, nullptr, picks + i, burst_status(region) + i, pick ? &draw : nullptr);
    }
}

void Engine::settle() {
    if (queued_.n == 0) return;
    backend_->wait_for(queued_.ticket);
    queued_ = {};
}

void Engine::step(const std::vector<Segment>& segs, float* out) {
    const std::lock_guard<std::mutex> lock = hold();
    settle();
    if (segs.empty()) throw BadRequest("a step needs at least one sequence");
    if (observer_)
        throw BadRequest("a batched step cannot be traced: tracing runs one sequence at a time (prefill, decode)");
    std::vector<bool> seen(size_t(opt_.n_seq), false);
    int64_t total = 0;
    for (const Segment& s : segs) {
        check_room(s.seq, s.n);
        if (seen[size_t(s.seq)]) throw BadRequest("sequence " + std::to_string(s.seq) + " appears twice in one step");
        seen[size_t(s.seq)] = true;
        check_ids(s.ids, s.n);
        total += s.n;
    }
    if (total > opt_.max_batch)
        throw BadRequest("a step of " + std::to_string(total) + " tokens is more than max_batch " +
                         std::to_string(opt_.max_batch));
    // Decode steps first (their logits are computed together), then the other short segments:
    // the backend computes all their rows with its one-token kernels, as each sequence alone
    // would be (Backend::max_single_segment); then the longer prompt chunks.
    const int short_max = backend_->max_single_segment();
    auto pass_of = [&](const Segment& s) { return s.n == 1 ? 0 : s.n <= short_max ? 1 : 2; };
    std::vector<Segment> order;
    std::vector<int> rows;
    for (int pass = 0; pass < 3; ++pass)
        for (size_t i = 0; i < segs.size(); ++i)
            if (pass_of(segs[i]) == pass) {
                order.push_back(segs[i]);
                rows.push_back(int(i));
            }
    forward(order.data(), int(order.size()), nullptr, out, rows.data());
}

int Engine::n_past(int seq) const {
    if (seq < 0 || seq >= opt_.n_seq)
        throw BadRequest("sequence " + std::to_string(seq) + " is outside 0.." + std::to_string(opt_.n_seq - 1));
    return n_past_[size_t(seq)].load();
}

std::map<std::string, std::pair<int64_t, double>> Engine::profile() const {
    const std::lock_guard<std::mutex> lock = hold();
    std::map<std::string, std::pair<int64_t, double>> out;
    if (auto* p = dynamic_cast<const ProfilingBackend*>(backend_.get()))
        for (const auto& [op, t] : p->times()) out[op] = {t.calls, t.seconds};
    return out;
}

void Engine::reset_profile() {
    const std::lock_guard<std::mutex> lock = hold();
    if (auto* p = dynamic_cast<ProfilingBackend*>(backend_.get())) p->reset();
}

std::map<std::string, uint64_t> Engine::backend_stats() const {
    const std::lock_guard<std::mutex> lock = hold();
    return backend_->stats();
}

void Engine::reset_backend_stats() {
    const std::lock_guard<std::mutex> lock = hold();
    backend_->reset_stats();
}

std::lock_guard<std::mutex> Engine::hold() const {
    // The observer runs inside a pass, on the thread that holds mu_: a call back into the
    // engine from there would wait for itself forever.
    if (observing_.load() == std::this_thread::get_id())
        throw BadRequest("a trace observer called the engine it observes (it must only read the event)");
    return std::lock_guard<std::mutex>(mu_);
}

void Engine::set_observer(Observer* observer) {
    const std::lock_guard<std::mutex> lock = hold();
    settle();
    observer_ = observer;
    kernels_.clear();
    backend_->log_kernels(observer ? &kernels_ : nullptr);
}

void Engine::truncate(int n_keep, int seq) {
    const std::lock_guard<std::mutex> lock = hold();
    settle();
    const int past = n_past(seq);
    if (n_keep < 0 || n_keep > past)
        throw BadRequest("cannot keep " + std::to_string(n_keep) + " of " + std::to_string(past) + " cached tokens");
    n_past_[size_t(seq)] = n_keep;  // later tokens overwrite the stale cache rows
}

}  // namespace metallic
