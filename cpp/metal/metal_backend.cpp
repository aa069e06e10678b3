// The Metal backend: the ops of backend.h as kernels of metal/*.metal over the GPU interface.
//
// Memory, all set up at load (a token allocates nothing): the weights, the small host vectors
// and the activations are mapped to GPU buffers by BufferMap (buffer_map.h); here live
//   ids          the token ids of the current forward pass (written by the host at encode time:
//                safe because the previous command buffer has finished by then)
//   k/v cache    [seq][layer][kv_head][position][head_dim] in half or float, as on the CPU
//   partials     split decode attention's per-split (max, sum, accumulator)
//
// Every op only encodes: the first op of a forward pass opens a command buffer, sync() (called
// by the engine before it reads logits) commits what is open and waits. The first command
// buffer after a sync is committed early, once it holds kEarlyCommitDispatches dispatches, so
// that the GPU runs the first layers while the host encodes the rest: a decode step is two
// command buffers and one sync. A long prompt's pass is cut into more command buffers,
// committed as they fill (see kCommitWork), all on one queue, which runs them in order.
#include "metal/metal_backend.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/assert.h"
#include "engine/error.h"
#include "engine/ggml_types.h"
#include "metal/attention_plan.h"
#include "metal/buffer_map.h"
#include "metal/weight_layout.h"

// Host views of the argument structs the kernels take (metal/args.h is shared with MSL).
#include "../../metal/args.h"

namespace metallic::metal {
namespace {

// The kernels of one weight format.
struct FormatPipelines {
    std::unique_ptr<gpu::Pipeline> embed, gemm;
    // Decode kernels, [0] plain and [1] with RMSNorm fused in (matvec.h, MATVEC_NORM);
    // matvec_glu applies the model's activation.
    std::unique_ptr<gpu::Pipeline> matvec[2], matvec_jobs[2], matvec_glu[2];
};

// The kernels of a weight format end in its GGML type name in lower case ("matvec_q8_0").
std::string format_suffix(uint32_t type) {
    std::string s = type_name(type);
    for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

// Launch shapes the kernels leave to the host (they read simdgroups_per_threadgroup); the ones
// a kernel is written for (MATVEC_*, GEMM_ROWS, GEMM_TOKENS, GEMM_THREADS, ATTN_ROWS,
// MAX_HEAD_DIM) are in args.h, attention's in attention_plan.h.
constexpr uint32_t kElementwiseThreads = 256;
// A command buffer is committed once it holds this many multiply-adds (about 80 ms on an M1's
// 2.6 TFLOPS; a projection, never measured): macOS ends a command buffer that runs for seconds
// (the GPU watchdog), which a long prompt of a large model in one would risk, and the GPU
// starts on the first part while the host encodes the rest. A decode step stays far below.
constexpr double kCommitWork = 1e11;
// The first command buffer after a sync is committed once it holds this many dispatches: about
// a tenth of a decode token of a 24-layer model (146 dispatches), which keeps the GPU busy while
// the host encodes the other nine tenths (encoding a dispatch costs the host a few
// microseconds, running one the GPU as much or more). llama.cpp commits the first part of its
// graph early in the same way. A pass of fewer dispatches stays one command buffer.
constexpr uint64_t kEarlyCommitDispatches = 16;

uint32_t ceil_div(int64_t a, int64_t b) { return uint32_t((a + b - 1) / b); }

class MetalBackend final : public Backend {
public:
    MetalBackend(std::unique_ptr<gpu::Device> device, const ModelConfig& cfg, const MetalOptions& opt,
                 const MappedFile& file, const Weights& w,
                 const std::vector<std::pair<const float*, size_t>>& host_tables)
        : dev_(std::move(device)), cfg_(cfg), opt_(opt), map_(*dev_, file, w, host_tables) {
        name_ = dev_->name();
        // The tests lower the commit threshold to split short prompts (results must not change).
        if (const char* env = std::getenv("METALLIC_GPU_COMMIT_WORK"))
            if (const double v = std::atof(env); v > 0) commit_work_ = v;
        // ... and set when the first command buffer goes early (0: never).
        if (const char* env = std::getenv("METALLIC_GPU_EARLY_COMMIT")) early_dispatches_ = std::strtoull(env, nullptr, 10);
        // ... and compare the fused RoPE + attention with the two dispatches (=0; the same floats).
        if (const char* env = std::getenv("METALLIC_GPU_FUSE_ROPE")) fuse_rope_ = std::strcmp(env, "0") != 0;
        make_pipelines(w);

        ids_ = dev_->new_buffer(sizeof(int32_t) * size_t(opt_.max_batch));
        const size_t kv_elems =
            size_t(cfg_.n_layer) * size_t(opt_.n_seq) * size_t(cfg_.n_head_kv) * size_t(opt_.n_ctx) * size_t(cfg_.head_dim);
        kv_elem_bytes_ = opt_.kv_f32 ? 4 : 2;
        if (kv_elems * kv_elem_bytes_ > dev_->max_buffer_length())
            throw BadRequest("the KV cache needs buffers of " + std::to_string((kv_elems * kv_elem_bytes_) >> 20) +
                             " MiB and this GPU's largest buffer is " +
                             std::to_string(dev_->max_buffer_length() >> 20) +
                             " MiB: use a smaller context or fewer sequences");
        k_cache_ = dev_->new_buffer(kv_elems * kv_elem_bytes_);
        v_cache_ = dev_->new_buffer(kv_elems * kv_elem_bytes_);
        const size_t max_splits = attention_max_splits(opt_.n_ctx);
        attn_partial_ = dev_->new_buffer(size_t(cfg_.n_head) * max_splits * size_t(cfg_.head_dim + 2) * sizeof(float));
    }

    const char* name() const override { return name_.c_str(); }

    float* activations(size_t count) override { return map_.make_activations(count); }

    void sync() override { wait_for(flush()); }

    uint64_t flush() override {
        if (cb_) commit();
        return committed_;
    }

    // Command buffers on one queue complete in order: waiting for those up to the ticket leaves
    // the later ones running (GPU-resident decoding queues the next burst before it waits).
    void wait_for(uint64_t ticket) override {
        if (in_flight_.empty() || in_flight_.front().first > ticket) return;
        ++syncs_;  // the host blocks once, however many command buffers it waits for
        while (!in_flight_.empty() && in_flight_.front().first <= ticket) {
            in_flight_.front().second->wait();
            in_flight_.pop_front();
        }
    }

    std::map<std::string, uint64_t> stats() const override {
        const gpu::Stats& s = dev_->stats();
        return {{"command_buffers", s.command_buffers}, {"waits", s.waits},
                {"syncs", syncs_},                      {"dispatches", s.dispatches},
                {"encoder_barriers", s.barriers},
                {"buffer_allocations", s.buffer_allocations},
                {"buffers_wrapped", s.buffers_wrapped}, {"weight_binds", s.weight_binds},
                {"declared_weight_bytes", s.declared_weight_bytes}, {"weight_rebinds", s.weight_rebinds},
                {"kv_bytes", kv_bytes_},                {"gpu_ns", s.gpu_nanoseconds},
                // never reset: what the model keeps on the GPU, and what the GPU recommends
                {"resident_bytes", dev_->resident_bytes()},
                {"recommended_working_set", dev_->recommended_working_set()}};
    }
    void reset_stats() override {
        dev_->reset_stats();
        kv_bytes_ = 0;
        syncs_ = 0;
    }

    // rope, store_kv and add exist only inside the fused steps (see below).
    bool has_unfused_ops() const override { return false; }
    void log_kernels(std::vector<std::string>* log) override { kernel_log_ = log; }

    // ---- ops ------------------------------------------------------------------------------

    void embed(const Matrix& table, const int32_t* ids, int n, float scale, float* x) override {
        // Host ids are staged now; ids in the activations (GPU-resident decoding) are written by
        // an earlier kernel of this command buffer and bound where they are.
        const bool resident = map_.is_activation(ids);
        if (!resident) std::memcpy(ids_->contents(), ids, sizeof(int32_t) * size_t(n));
        gpu::Encoder& e = encoder();
        EmbedArgs a{int32_t(table.cols), scale, uint64_t(table.row_bytes), int32_t(table.rows), 0};
        use_pipeline(e, *format(table).embed);
        e.set_args(0, a);
        bind_weight(e, 1, table, size_t(n) * table.row_bytes);  // reads n rows of the table
        if (resident)
            bind(e, 2, ids);
        else
            e.set_buffer(2, *ids_, 0);
        bind(e, 3, x);
        e.dispatch_threadgroups({uint32_t(n), 1, 1}, {threads_for(table.cols, *format(table).embed), 1, 1});
    }

    void rmsnorm(const float* x, const float* w, float* out, int n, int d, float eps) override {
        gpu::Encoder& e = encoder();
        RmsNormArgs a{d, eps, uint64_t(d), uint64_t(d), x_vec4(x, d, nullptr) ? 1 : 0, 0};
        use_pipeline(e, *rmsnorm_);
        e.set_args(0, a);
        bind(e, 1, x);
        bind(e, 2, w);
        bind(e, 3, out);
        e.dispatch_threadgroups({uint32_t(n), 1, 1}, {rmsnorm_threads(d), 1, 1});
    }

    // The matmul family splits its rows: the first decode_rows(n) belong to segments of at most
    // MATVEC_TOKENS tokens (decodes, a batched step's decode rows and short prompt chunks,
    // Backend::set_single_rows) and run the matrix-vector kernels, all of them in one dispatch
    // per matrix (the kernels read each weight once per MATVEC_TOKENS tokens: a short prompt
    // costs one read of the weights, as a decode does), the norm fused in where it can be; the
    // rest (longer prompt chunks) run the GEMM. A sequence's result never depends on what it was
    // batched with: the matvecs' arithmetic for a token is the same whatever tokens share its
    // dispatch (matvec.h), and so is the GEMM's.
    int max_single_segment() const override { return MATVEC_TOKENS; }
    void set_single_rows(int n) override { single_rows_ = n; }

    void matmul(const float* in, int n, std::initializer_list<MatmulJob> jobs) override {
        const Jobs js(jobs);
        const int s = decode_rows(n);
        if (s) {
            const Independent group(*this);
            encode_matvecs(encoder(), in, nullptr, js, s);
        }
        if (n > s) {
            const Independent group(*this);
            encode_gemms(encoder(), in + int64_t(s) * js.cols(), n - s, js.shifted(s));
        }
    }

    // Fused for decode: the norm is computed inside the matvecs (MATVEC_NORM), which read
    // x * norm weight and scale their sums; `out` (the normalized rows) is then not written.
    void rmsnorm_matmul(const float* x, const float* w, float eps, float* out, int n, int d,
                        std::initializer_list<MatmulJob> jobs) override {
        const Jobs js(jobs);
        const int s = decode_rows(n);
        if (s) {
            if (can_fuse_norm(x, eps, d, js.cols())) {
                const Independent group(*this);
                encode_matvecs(encoder(), x, w, js, s);
            } else {
                rmsnorm(x, w, out, s, d, eps);
                const Independent group(*this);
                encode_matvecs(encoder(), out, nullptr, js, s);
            }
        }
        if (n > s) {
            rmsnorm(x + int64_t(s) * d, w, out + int64_t(s) * d, n - s, d, eps);
            const Independent group(*this);
            encode_gemms(encoder(), out + int64_t(s) * d, n - s, js.shifted(s));
        }
    }

    void rmsnorm_gate_up_glu(const float* x, const float* w, float eps, float* out, int n, int d, const Matrix& gate,
                             const Matrix& up, float* g, float* u, Activation act) override {
        const int s = decode_rows(n);
        if (s) {
            if (can_fuse_norm(x, eps, d, gate.cols) && can_fuse_glu(gate, up, act)) {
                encode_matvec_glu(encoder(), x, w, gate, up, g, s);
            } else {
                rmsnorm(x, w, out, s, d, eps);
                gate_up_rows(out, s, gate, up, g, u, act, true);
            }
        }
        if (n > s) {
            rmsnorm(x + int64_t(s) * d, w, out + int64_t(s) * d, n - s, d, eps);
            gate_up_rows(out + int64_t(s) * d, n - s, gate, up, g + int64_t(s) * gate.rows, u + int64_t(s) * up.rows,
                         act, false);
        }
    }

    // Fused for decode when gate and up share a format: both matvecs and the GLU in one pass.
    void gate_up_glu(const float* h, int n, const Matrix& gate, const Matrix& up, float* g, float* u,
                     Activation act) override {
        const int s = decode_rows(n);
        if (s) gate_up_rows(h, s, gate, up, g, u, act, true);
        if (n > s)
            gate_up_rows(h + int64_t(s) * gate.cols, n - s, gate, up, g + int64_t(s) * gate.rows,
                         u + int64_t(s) * up.rows, act, false);
    }

    // Never called: the forward pass runs rope and store_kv through rope_store_kv, and add
    // through add_rmsnorm, both fused here. Backend declares them for its default fused steps
    // (which the CPU backend uses); there are no kernels for them.
    void rope(float*, int, int, int, const float*) override { unreachable("rope"); }
    void store_kv(int, const float*, const float*, int, int) override { unreachable("store_kv"); }
    void add(float*, const float*, int64_t) override { unreachable("add"); }

    void attention(int cache, const float* q, int n, int pos0, int window, float* out) override {
        encode_attention(cache, q, n, pos0, window, out, nullptr);
    }

    // Decode steps and short chunks: rope_store_kv's work inside the attention kernel
    // (attention_rope, metal/attention.h), one dispatch fewer per layer; the same floats.
    void rope_attention(int cache, float* q, int n_heads, float* k, int n_kv_heads, const float* v, int n, int pos0,
                        const float* inv_freq, const float* q_norm, const float* k_norm, int head_dim, float eps,
                        int window, float* out) override {
        if (n > MATVEC_TOKENS || !fuse_rope_) {
            Backend::rope_attention(cache, q, n_heads, k, n_kv_heads, v, n, pos0, inv_freq, q_norm, k_norm, head_dim,
                                    eps, window, out);
            return;
        }
        const FusedRope rope{RopeKvArgs{n_heads, n_kv_heads, head_dim, cfg_.rope_dims, opt_.n_ctx, pos0,
                                        q_norm ? 1 : 0, eps},
                             k, v, inv_freq, q_norm, k_norm};
        encode_attention(cache, q, n, pos0, window, out, &rope);
        kv_bytes_ += 2 * uint64_t(n) * uint64_t(n_kv_heads) * uint64_t(head_dim) * kv_elem_bytes_;  // the write
    }

    // What attention_rope reads beside attention's bindings.
    struct FusedRope {
        RopeKvArgs args;
        const float *k, *v, *inv_freq, *q_norm, *k_norm;
    };

    void encode_attention(int cache, const float* q, int n, int pos0, int window, float* out, const FusedRope* rope) {
        const AttentionPlan plan = plan_attention(cfg_, opt_.n_ctx, n, pos0, window, rope != nullptr, kv_elem_bytes_);
        const bool split = plan.kernel == AttentionKernel::Split;
        const gpu::Pipeline& p = plan.kernel == AttentionKernel::Tile ? *attention_tile_
                                 : split ? (rope ? *attention_rope_split_ : *attention_split_)
                                         : (rope ? *attention_rope_ : *attention_);
        // Every attention kernel takes the args, q, the layer's K and V cache and its output
        // (a split's partials) first; the fused ones then rope_store_kv's at 5 .. 10.
        gpu::Encoder& e = encoder();
        use_pipeline(e, p);
        e.set_args(0, plan.args);
        bind(e, 1, q);
        e.set_buffer(2, *k_cache_, cache_offset(cache));
        e.set_buffer(3, *v_cache_, cache_offset(cache));
        if (split)
            e.set_buffer(4, *attn_partial_, 0);
        else
            bind(e, 4, out);
        if (rope) {
            e.set_args(5, rope->args);
            bind(e, 6, rope->k);
            bind(e, 7, rope->v);
            bind(e, 8, rope->inv_freq);
            bind(e, 9, rope->q_norm ? rope->q_norm : rope->inv_freq);  // read only with qk-norm
            bind(e, 10, rope->k_norm ? rope->k_norm : rope->inv_freq);
        }
        e.set_threadgroup_memory(0, plan.tg_memory);
        e.dispatch_threadgroups({plan.grid[0], plan.grid[1], 1}, {32 * kAttentionSimdgroups, 1, 1});
        if (split) {  // the splits' partials merged into out
            use_pipeline(e, *attention_merge_);
            e.set_args(0, plan.args);
            e.set_buffer(1, *attn_partial_, 0);
            bind(e, 2, out);
            e.dispatch_threadgroups({uint32_t(cfg_.n_head), 1, 1}, {ceil_div(cfg_.head_dim, 32) * 32, 1, 1});
        }
        // Cache rows read, as declared: each query token's window of every kv head (a
        // threadgroup reads the windows of its rows once for all of them, the query heads of a
        // GQA group included).
        for (int t = 0; t < n; ++t) {
            const int pos = pos0 + t, start = window > 0 ? std::max(0, pos - window + 1) : 0;
            kv_bytes_ += 2 * uint64_t(pos - start + 1) * uint64_t(cfg_.n_head_kv) * uint64_t(cfg_.head_dim) *
                         kv_elem_bytes_;
            count_work(2.0 * double(pos - start + 1) * cfg_.n_head * cfg_.head_dim);  // q.k and p.v
        }
    }

    // Fused: qk-norm (if any), RoPE of q and k and the KV write in one dispatch.
    void rope_store_kv(int cache, float* q, int n_heads, float* k, int n_kv_heads, const float* v, int n, int pos0,
                       const float* inv_freq, const float* q_norm, const float* k_norm, int head_dim,
                       float eps) override {
        gpu::Encoder& e = encoder();
        RopeKvArgs a{n_heads, n_kv_heads, head_dim, cfg_.rope_dims, opt_.n_ctx, pos0, q_norm ? 1 : 0, eps};
        use_pipeline(e, *rope_store_kv_);
        e.set_args(0, a);
        bind(e, 1, q);
        bind(e, 2, k);
        bind(e, 3, v);
        e.set_buffer(4, *k_cache_, cache_offset(cache));
        e.set_buffer(5, *v_cache_, cache_offset(cache));
        bind(e, 6, inv_freq);
        bind(e, 7, q_norm ? q_norm : inv_freq);  // read only with qk-norm
        bind(e, 8, k_norm ? k_norm : inv_freq);
        e.dispatch_threadgroups({uint32_t(n), uint32_t(n_heads + n_kv_heads), 1}, {ceil_div(head_dim, 32) * 32, 1, 1});
        kv_bytes_ += 2 * uint64_t(n) * uint64_t(n_kv_heads) * uint64_t(head_dim) * kv_elem_bytes_;
    }

    // Fused: x += rmsnorm(y) * w in one dispatch (y is left as it was).
    void add_rmsnorm(float* x, float* y, const float* w, float eps, int n, int d) override {
        gpu::Encoder& e = encoder();
        RmsNormArgs a{d, eps, uint64_t(d), uint64_t(d), x_vec4(y, d, nullptr) ? 1 : 0, 0};
        use_pipeline(e, *rmsnorm_add_);
        e.set_args(0, a);
        bind(e, 1, y);
        bind(e, 2, w);
        bind(e, 3, x);
        e.dispatch_threadgroups({uint32_t(n), 1, 1}, {rmsnorm_threads(d), 1, 1});
    }

    void glu(float* g, const float* u, int64_t count, Activation act) override {
        gpu::Encoder& e = encoder();
        use_pipeline(e, act == Activation::GeluTanh ? *glu_gelu_ : *glu_silu_);
        elementwise(e, g, u, count, 0.0f);
    }

    void argmax(const float* x, int64_t n, int32_t* token, int32_t* status) override {
        pick_token(*argmax_, ArgmaxArgs{int32_t(n)}, x, n, token, status);
    }

    void sample(const float* x, int64_t n, const PickSettings& s, int32_t* token, int32_t* status) override {
        pick_token(*sample_, SampleArgs{int32_t(n), s}, x, n, token, status);
    }

    // argmax_f32, sample_top_k_f32: one threadgroup as wide as the pipeline allows (logits: KBs).
    template <typename Args>
    void pick_token(const gpu::Pipeline& p, const Args& args, const float* x, int64_t n, int32_t* token,
                    int32_t* status) {
        gpu::Encoder& e = encoder();
        use_pipeline(e, p);
        e.set_args(0, args);
        bind(e, 1, x);
        bind(e, 2, token);
        bind(e, 3, status);
        const uint32_t threads = std::clamp<uint32_t>(ceil_div(n, 32) * 32, 32, std::min<uint32_t>(1024, p.max_threads()));
        e.dispatch_threadgroups({1, 1, 1}, {threads, 1, 1});
    }

    void softcap(float* x, int64_t count, float cap) override {
        gpu::Encoder& e = encoder();
        use_pipeline(e, *softcap_);
        elementwise(e, x, nullptr, count, cap);
    }

private:
    // ---- load-time setup --------------------------------------------------------------------

    void make_pipelines(const Weights& w) {
        for_each_matrix(w, [&](const Matrix& m) {
            if (formats_.count(m.type)) return;
            // Weights holds only formats the CPU kernels compute (bind_weights), and the Metal
            // kernels cover every one of them (tests/test_metal_ops.py checks each has its set).
            const std::string sfx = format_suffix(m.type);
            FormatPipelines& f = formats_[m.type];
            f.embed = dev_->pipeline("embed_" + sfx);
            f.gemm = dev_->pipeline("gemm_" + sfx);
            require_threads(*f.gemm, GEMM_THREADS);
            for (int fused = 0; fused < 2; ++fused) {
                // Every constant the kernels declare is given, used or not.
                const gpu::Constants c = {{1, gpu::Constant::of_bool(cfg_.activation == Activation::GeluTanh)},
                                          {2, gpu::Constant::of_bool(fused == 1)},
                                          {3, gpu::Constant::of_float(cfg_.rms_eps)}};
                f.matvec[fused] = dev_->pipeline("matvec_" + sfx, c);
                f.matvec_jobs[fused] = dev_->pipeline("matvec_jobs_" + sfx, c);
                f.matvec_glu[fused] = dev_->pipeline("matvec_glu_" + sfx, c);
                for (const auto* p : {&f.matvec[fused], &f.matvec_jobs[fused], &f.matvec_glu[fused]})
                    require_threads(**p, 32 * MATVEC_SIMDGROUPS);
            }
        });
        rmsnorm_ = dev_->pipeline("rmsnorm_f32");
        rmsnorm_add_ = dev_->pipeline("rmsnorm_add_f32");
        if (cfg_.head_dim > MAX_HEAD_DIM)
            throw Unsupported("the Metal backend supports head sizes up to " + std::to_string(MAX_HEAD_DIM) +
                              ", this model has " + std::to_string(cfg_.head_dim));
        const gpu::Constants neox = {{2, gpu::Constant::of_bool(cfg_.rope_style == RopeStyle::Neox)}};  // rope.h
        rope_store_kv_ = dev_->pipeline(opt_.kv_f32 ? "rope_store_kv_f32" : "rope_store_kv_f16", neox);
        require_threads(*rope_store_kv_, MAX_HEAD_DIM);
        attention_ = dev_->pipeline(opt_.kv_f32 ? "attention_f32" : "attention_f16");
        attention_split_ = dev_->pipeline(opt_.kv_f32 ? "attention_split_f32" : "attention_split_f16");
        attention_merge_ = dev_->pipeline("attention_merge");
        attention_rope_ = dev_->pipeline(opt_.kv_f32 ? "attention_rope_f32" : "attention_rope_f16", neox);
        attention_rope_split_ =
            dev_->pipeline(opt_.kv_f32 ? "attention_rope_split_f32" : "attention_rope_split_f16", neox);
        require_threads(*attention_rope_, 32 * kAttentionSimdgroups);
        require_threads(*attention_rope_split_, 32 * kAttentionSimdgroups);
        if (cfg_.head_dim % 8 == 0) {  // else prompt chunks take attention (attention_tile needs it)
            attention_tile_ = dev_->pipeline(opt_.kv_f32 ? "attention_tile_f32" : "attention_tile_f16",
                                             {{0, gpu::Constant::of_int(cfg_.head_dim / 8)}});
            require_threads(*attention_tile_, 32 * kAttentionSimdgroups);
        }
        require_threads(*attention_split_, 32 * kAttentionSimdgroups);
        require_threads(*attention_, 32 * kAttentionSimdgroups);
        glu_silu_ = dev_->pipeline("glu", {{0, gpu::Constant::of_bool(false)}});
        glu_gelu_ = dev_->pipeline("glu", {{0, gpu::Constant::of_bool(true)}});
        softcap_ = dev_->pipeline("softcap");
        argmax_ = dev_->pipeline("argmax_f32");
        sample_ = dev_->pipeline("sample_top_k_f32");
    }

    [[noreturn]] static void unreachable(const char* op) {
        throw std::logic_error(std::string("metal: ") + op + " is fused into another step and has no kernel");
    }

    static void require_threads(const gpu::Pipeline& p, uint32_t n) {
        if (p.max_threads() < n)
            throw std::runtime_error("metal: kernel " + p.name() + " cannot run " + std::to_string(n) +
                                     " threads per threadgroup on this device");
    }

    // ---- the decode matvec family ----------------------------------------------------------

    // The jobs of one matmul (at most three), and the same jobs with every output moved down by
    // s rows (the rows after a step's decode rows).
    struct Jobs {
        MatmulJob j[3];
        size_t n = 0;
        explicit Jobs(std::initializer_list<MatmulJob> jobs) {
            METALLIC_ASSERT(jobs.size() >= 1 && jobs.size() <= 3);
            for (const MatmulJob& x : jobs) j[n++] = x;
        }
        Jobs(const MatmulJob* p, size_t count) {
            METALLIC_ASSERT(count >= 1 && count <= 3);
            for (size_t i = 0; i < count; ++i) j[n++] = p[i];
        }
        const MatmulJob* begin() const { return j; }
        const MatmulJob* end() const { return j + n; }
        size_t size() const { return n; }
        int64_t cols() const { return j[0].w->cols; }
        Jobs shifted(int s) const {
            Jobs o = *this;
            for (size_t i = 0; i < n; ++i) o.j[i].out += int64_t(s) * o.j[i].w->rows;
            return o;
        }
    };

    // How many of a pass's first n rows take the matvecs (a lone decode is one).
    int decode_rows(int n) const { return n == 1 ? 1 : std::min(n, single_rows_); }

    bool can_fuse_norm(const float* x, float eps, int d, int64_t cols) const {
        return eps == cfg_.rms_eps && resolve(x).offset % 16 == 0 && cols == d;
    }

    // g = act(h Wgate) * (h Wup) over n rows: the matvecs (decode rows; gate, up and the GLU in
    // one dispatch when they share a format) or the GEMMs and the GLU.
    void gate_up_rows(const float* h, int n, const Matrix& gate, const Matrix& up, float* g, float* u, Activation act,
                      bool decode) {
        if (decode && can_fuse_glu(gate, up, act)) {
            encode_matvec_glu(encoder(), h, nullptr, gate, up, g, n);
            return;
        }
        const MatmulJob pair[2] = {{&gate, g}, {&up, u}};
        {
            const Independent group(*this);
            if (decode)
                encode_matvecs(encoder(), h, nullptr, Jobs(pair, 2), n);
            else
                encode_gemms(encoder(), h, n, Jobs(pair, 2));
        }
        glu(g, u, int64_t(n) * gate.rows, act);
    }

    void encode_gemms(gpu::Encoder& e, const float* in, int n, const Jobs& jobs) {
        for (const MatmulJob& j : jobs) {
            const Matrix& w = *j.w;
            LinearArgs a = linear_args(j, n, in, nullptr);
            use_pipeline(e, *format(w).gemm);
            e.set_args(0, a);
            bind_weight(e, 1, w, w.nbytes);
            bind(e, 2, in);
            bind(e, 3, j.out);
            bind(e, 4, j.bias ? j.bias : j.out);  // bound either way; read only with LINEAR_BIAS
            e.dispatch_threadgroups({ceil_div(w.rows, GEMM_ROWS), ceil_div(n, GEMM_TOKENS), 1}, {GEMM_THREADS, 1, 1});
            count_work(double(w.rows) * double(w.cols) * n);
        }
    }

    // LINEAR_X_VEC4 when x's rows (cols floats apart) and the fused norm's weights start
    // 16-byte aligned: the matvecs may then read them as float4 (Metal requires natural
    // alignment of vector loads). Offsets are from page-aligned buffer starts.
    int32_t x_vec4(const float* x, int64_t cols, const float* norm_w) const {
        const bool ok = cols % 4 == 0 && resolve(x).offset % 16 == 0 && (!norm_w || resolve(norm_w).offset % 16 == 0);
        return ok ? LINEAR_X_VEC4 : 0;
    }

    LinearArgs linear_args(const MatmulJob& j, int n, const float* x, const float* norm_w) const {
        const Matrix& w = *j.w;
        LinearArgs a{};
        a.rows = int32_t(w.rows);
        a.cols = int32_t(w.cols);
        a.n_tokens = n;
        a.flags = (j.bias ? LINEAR_BIAS : 0) | (j.accumulate ? LINEAR_ACCUMULATE : 0) | x_vec4(x, w.cols, norm_w);
        a.row_bytes = w.row_bytes;
        a.x_stride = uint64_t(w.cols);
        a.out_stride = uint64_t(w.rows);
        return a;
    }

    // Threadgroups of a matvec dispatch: x covers the rows (MATVEC_SIMDGROUPS simdgroups of
    // rows_per_simdgroup rows each), y the tokens (MATVEC_TOKENS each).
    static uint32_t matvec_groups(const Matrix& w, int rows_per_simdgroup = MATVEC_NR) {
        return ceil_div(w.rows, int64_t(MATVEC_SIMDGROUPS) * rows_per_simdgroup);
    }
    static uint32_t token_groups(int tokens) { return ceil_div(tokens, MATVEC_TOKENS); }

    // `rows` tokens (rows of x) through every job: the jobs of one format and width (q, k, v)
    // in one matvec_jobs dispatch, else one matvec per job. norm_w: RMSNorm fused in (x is its
    // input). Every dispatch reads its matrices once per group of MATVEC_TOKENS tokens.
    void encode_matvecs(gpu::Encoder& e, const float* x, const float* norm_w, const Jobs& jobs, int rows) {
        if (can_share_dispatch(x, jobs)) {
            encode_matvec_jobs(e, x, norm_w, jobs, rows);
            return;
        }
        for (const MatmulJob& j : jobs) {
            const LinearArgs a = linear_args(j, rows, x, norm_w);
            use_pipeline(e, *format(*j.w).matvec[norm_w ? 1 : 0]);
            e.set_args(0, a);
            bind_weight(e, 1, *j.w, j.w->nbytes * token_groups(rows));
            bind(e, 2, x);
            bind(e, 3, j.out);
            bind(e, 4, j.bias ? j.bias : j.out);  // bound either way; read only with LINEAR_BIAS
            bind(e, 5, norm_w ? norm_w : x);      // read only with the norm fused
            e.dispatch_threadgroups({matvec_groups(*j.w), token_groups(rows), 1}, {32 * MATVEC_SIMDGROUPS, 1, 1});
            count_work(double(j.w->rows) * double(j.w->cols) * rows);
        }
    }

    bool can_share_dispatch(const float* in, const Jobs& jobs) const {
        if (jobs.size() < 2 || jobs.size() > 3 || resolve(in).offset % 16) return false;
        const Matrix& w0 = *jobs.begin()->w;
        for (const MatmulJob& j : jobs)
            if (j.w->type != w0.type || j.w->cols != w0.cols || j.w->row_bytes != w0.row_bytes) return false;
        return true;
    }

    void encode_matvec_jobs(gpu::Encoder& e, const float* in, const float* norm_w, const Jobs& jobs, int rows) {
        const Matrix& w0 = *jobs.begin()->w;
        LinearJobsArgs a{};
        a.cols = int32_t(w0.cols);
        a.n_jobs = int32_t(jobs.size());
        a.n_tokens = rows;
        a.row_bytes = w0.row_bytes;
        int i = 0;
        uint32_t groups = 0;
        for (const MatmulJob& j : jobs) {
            a.rows[i] = int32_t(j.w->rows);
            a.flags[i] =
                (j.bias ? LINEAR_BIAS : 0) | (j.accumulate ? LINEAR_ACCUMULATE : 0) | x_vec4(in, w0.cols, norm_w);
            a.first_tg[i] = int32_t(groups);
            groups += matvec_groups(*j.w);
            ++i;
        }
        for (int k = i; k < 4; ++k) a.first_tg[k] = int32_t(groups);
        use_pipeline(e, *format(w0).matvec_jobs[norm_w ? 1 : 0]);
        e.set_args(0, a);
        i = 0;
        for (const MatmulJob& j : jobs) {
            bind_weight(e, 1 + i, *j.w, j.w->nbytes * token_groups(rows));
            bind(e, 5 + i, j.out);
            bind(e, 8 + i, j.bias ? j.bias : j.out);  // bound either way; read only with LINEAR_BIAS
            ++i;
        }
        const MatmulJob* first = jobs.begin();
        const BufferRef w0_ref = map_.weight(*first->w);
        for (; i < 3; ++i) {  // unused jobs: job 0's weights and out, never read
            e.set_buffer(1 + i, *w0_ref.buf, w0_ref.offset);
            bind(e, 5 + i, first->out);
            bind(e, 8 + i, first->out);
        }
        bind(e, 4, in);
        bind(e, 11, norm_w ? norm_w : in);  // read only with the norm fused
        e.dispatch_threadgroups({groups, token_groups(rows), 1}, {32 * MATVEC_SIMDGROUPS, 1, 1});
        for (const MatmulJob& j : jobs) count_work(double(j.w->rows) * double(j.w->cols) * rows);
    }

    bool can_fuse_glu(const Matrix& gate, const Matrix& up, Activation act) const {
        return act == cfg_.activation && gate.type == up.type && gate.rows == up.rows && gate.cols == up.cols &&
               gate.row_bytes == up.row_bytes;
    }

    void encode_matvec_glu(gpu::Encoder& e, const float* x, const float* norm_w, const Matrix& gate, const Matrix& up,
                           float* g, int rows) {
        LinearArgs a{};
        a.rows = int32_t(gate.rows);
        a.cols = int32_t(gate.cols);
        a.n_tokens = rows;
        a.row_bytes = gate.row_bytes;
        a.x_stride = uint64_t(gate.cols);
        a.out_stride = uint64_t(gate.rows);
        a.flags = x_vec4(x, gate.cols, norm_w);
        use_pipeline(e, *format(gate).matvec_glu[norm_w ? 1 : 0]);  // the model's activation
        e.set_args(0, a);
        bind_weight(e, 1, gate, gate.nbytes * token_groups(rows));
        bind_weight(e, 2, up, up.nbytes * token_groups(rows));
        bind(e, 3, x);
        bind(e, 4, g);
        bind(e, 5, norm_w ? norm_w : x);  // read only with the norm fused
        e.dispatch_threadgroups({matvec_groups(gate, MATVEC_GLU_NR), token_groups(rows), 1},
                                {32 * MATVEC_SIMDGROUPS, 1, 1});
        count_work(2.0 * double(gate.rows) * double(gate.cols) * rows);
    }

    // ---- encoding helpers -------------------------------------------------------------------

    // Every dispatch's pipeline is set through here, so that a traced pass can name the
    // kernels each op ran (log_kernels; off, it costs one test of a pointer).
    void use_pipeline(gpu::Encoder& e, const gpu::Pipeline& p) {
        if (kernel_log_) kernel_log_->push_back(p.name());
        // The encoder is concurrent (gpu.h): a barrier before every dispatch but its command
        // buffer's first, except between the dispatches of an Independent group.
        if (cb_dispatches_ > 0 && group_ != Group::Running) e.barrier();
        if (group_ == Group::Open) group_ = Group::Running;
        e.set_pipeline(p);
        ++cb_dispatches_;
    }

    // While one lives, the dispatches encoded neither read nor write what another of them
    // writes (the products of one input by several matrices into separate outputs: q, k and v;
    // gate and up), so they go without barriers between them and may overlap on the GPU. The
    // first still waits for what came before.
    enum class Group { None, Open, Running };
    struct Independent {
        explicit Independent(MetalBackend& b) : b_(b) { b_.group_ = Group::Open; }
        ~Independent() { b_.group_ = Group::None; }
        Independent(const Independent&) = delete;
        Independent& operator=(const Independent&) = delete;
        MetalBackend& b_;
    };

    // Commits happen here, before an op encodes: an op's dispatches share one command buffer.
    gpu::Encoder& encoder() {
        const bool early = in_flight_.empty() && early_dispatches_ > 0 && cb_dispatches_ >= early_dispatches_;
        if (cb_ && (cb_work_ > commit_work_ || early)) commit();
        if (!cb_) {
            cb_ = dev_->command_buffer();
            enc_ = &cb_->encoder();
        }
        return *enc_;
    }

    // Hands the open command buffer to the GPU without waiting; sync() waits for all of them.
    void commit() {
        enc_ = nullptr;
        cb_->commit();
        in_flight_.emplace_back(++committed_, std::move(cb_));
        cb_work_ = 0;
        cb_dispatches_ = 0;
    }

    // Work of the ops encoded into the open command buffer, in multiply-adds (matmuls and
    // attention; the rest is small beside them).
    void count_work(double madds) { cb_work_ += madds; }

    BufferRef resolve(const void* p) const { return map_.resolve(p); }

    void bind(gpu::Encoder& e, int index, const void* p) {
        const BufferRef r = resolve(p);
        e.set_buffer(index, *r.buf, r.offset);
    }

    void bind_weight(gpu::Encoder& e, int index, const Matrix& m, size_t bytes_read) {
        const BufferRef r = map_.weight(m);
        e.set_weight(index, *r.buf, r.offset, bytes_read);
    }

    const FormatPipelines& format(const Matrix& m) const { return formats_.at(m.type); }

    // One threadgroup per row; about 4 values per thread, a whole number of simdgroups.
    uint32_t rmsnorm_threads(int d) const {
        const uint32_t limit = std::min(rmsnorm_->max_threads(), rmsnorm_add_->max_threads());
        return std::clamp<uint32_t>(ceil_div(d, 4 * 32) * 32, 32, std::min<uint32_t>(1024, limit));
    }

    uint32_t threads_for(int64_t n, const gpu::Pipeline& p) const {
        return std::clamp<uint32_t>(ceil_div(n, 32) * 32, 32, std::min<uint32_t>(256, p.max_threads()));
    }

    // The caches, one per layer and sequence (backend.h), each [kv_head][position][head_dim].
    size_t cache_offset(int cache) const {
        return size_t(cache) * size_t(cfg_.n_head_kv) * size_t(opt_.n_ctx) * size_t(cfg_.head_dim) * kv_elem_bytes_;
    }

    void elementwise(gpu::Encoder& e, float* x, const float* y, int64_t count, float cap) {
        ElementwiseArgs a{uint32_t(count), cap};
        e.set_args(0, a);
        bind(e, 1, x);
        if (y) bind(e, 2, y);
        e.dispatch_threadgroups({ceil_div(count, kElementwiseThreads), 1, 1}, {kElementwiseThreads, 1, 1});
    }

    std::unique_ptr<gpu::Device> dev_;
    ModelConfig cfg_;
    MetalOptions opt_;
    std::string name_;

    BufferMap map_;
    std::unique_ptr<gpu::Buffer> ids_, k_cache_, v_cache_;
    std::unique_ptr<gpu::Buffer> attn_partial_;  // split decode attention: [head][split][M, L, acc]
    size_t kv_elem_bytes_ = 2;
    uint64_t kv_bytes_ = 0;  // KV-cache bytes written and read by the encoded work since the reset

    std::map<uint32_t, FormatPipelines> formats_;
    std::unique_ptr<gpu::Pipeline> rmsnorm_, rmsnorm_add_, rope_store_kv_, attention_, attention_split_, attention_merge_,
        attention_rope_, attention_rope_split_, attention_tile_, glu_silu_, glu_gelu_, softcap_, argmax_,
        sample_;

    std::unique_ptr<gpu::CommandBuffer> cb_;
    gpu::Encoder* enc_ = nullptr;
    // Committed, not yet waited for, each with its number (committed_ counts them all).
    std::deque<std::pair<uint64_t, std::unique_ptr<gpu::CommandBuffer>>> in_flight_;
    uint64_t committed_ = 0;
    double cb_work_ = 0;  // multiply-adds encoded into cb_
    uint64_t cb_dispatches_ = 0;  // dispatches encoded into cb_
    Group group_ = Group::None;   // Independent
    uint64_t early_dispatches_ = kEarlyCommitDispatches;
    bool fuse_rope_ = true;  // rope_attention fused for short segments (METALLIC_GPU_FUSE_ROPE)
    uint64_t syncs_ = 0;  // sync() calls that waited for work (stats: "syncs")
    int single_rows_ = 0;  // a step's decode rows (set_single_rows)
    double commit_work_ = kCommitWork;
    std::vector<std::string>* kernel_log_ = nullptr;  // tracing: where dispatched kernels are named
};

}  // namespace

std::unique_ptr<Backend> make_metal_backend(std::unique_ptr<gpu::Device> device, const ModelConfig& cfg,
                                            const MetalOptions& opt, const MappedFile& file, const Weights& w,
                                            const std::vector<std::pair<const float*, size_t>>& host_tables) {
    return std::make_unique<MetalBackend>(std::move(device), cfg, opt, file, w, host_tables);
}

}  // namespace metallic::metal
