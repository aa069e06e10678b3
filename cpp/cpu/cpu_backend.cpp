// The CPU backend's op scheduling: how each op is split over the thread pool and which scratch
// memory it uses. Compiled once per instruction set; dispatch.cpp picks the build.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/block_attention.h"
#include "cpu/cpu_backend.h"
#include "cpu/formats/simd.h"
#include "cpu/ops.h"
#include "cpu/panel_gemm.h"
#include "cpu/thread_pool.h"
#include "engine/assert.h"
#include "engine/host_pick.h"
#include "engine/error.h"
#include "engine/ggml_types.h"

namespace metallic::cpu::METALLIC_ISA {

const FormatKernels* lookup_format(uint32_t type);
void quantize_act(ActKind kind, const float* x, void* out, int64_t n);

namespace {

// A slice of one matmul job: rows [r0, r1) of job->w for every token.
struct MatmulTask {
    const MatmulJob* job;
    const FormatKernels* fmt;
    int64_t r0, r1;
};

constexpr int kMaxTasks = 1024;

// Batches of at least this many tokens go through panel_gemm (weights decoded to float once per
// batch, see panel_gemm.h); a single token runs each format's own dot-product kernel. Every
// batch size from two up takes the same path with the same summation order, so how a prompt is
// split into batches never changes its results.
constexpr int kPanelBatch = 2;

class CpuBackend final : public Backend {
public:
    CpuBackend(const ModelConfig& cfg, const CpuOptions& opt)
        : cfg_(cfg), opt_(opt), pool_(opt.threads) {
        const int64_t kv_row = int64_t(cfg.n_head_kv) * cfg.head_dim;
        const size_t kv_elems = size_t(cfg.n_layer) * size_t(opt.n_seq) * size_t(opt.n_ctx) * size_t(kv_row);
        if (opt.kv_f32) {
            k32_.reset(kv_elems);
            v32_.reset(kv_elems);
        } else {
            k16_.reset(kv_elems);
            v16_.reset(kv_elems);
        }
        const int64_t max_k = std::max<int64_t>(std::max(cfg.n_embd, cfg.n_ff), int64_t(cfg.n_head) * cfg.head_dim);
        // One scratch buffer per quantized activation kind: a matmul's jobs may mix formats
        // (e.g. Q4_K and Q6_K in a Q4_K_M file) and each kind is made once per input.
        // A step decodes up to one token per sequence with the one-token kernels (matmul), each
        // with its own quantized row: n_seq rows of the widest kind.
        for (int kind = 1; kind < kActKinds; ++kind)
            act_[kind].resize(size_t(std::max(1, opt.n_seq)) * act_stride(ActKind(kind), max_k));
        scores_.resize(size_t(pool_.size()) * size_t(opt.n_ctx));
        const int64_t max_rows = std::max<int64_t>({cfg.n_vocab, cfg.n_ff, max_k});
        attention_rows_ = attention_block_rows(cfg.n_head / cfg.n_head_kv, cfg.head_dim);
        attn_.resize(size_t(pool_.size()));
        for (AttentionScratch& s : attn_) s.reserve(cfg.n_head / cfg.n_head_kv, cfg.head_dim, attention_rows_);
        panel_.resize(size_t(pool_.size()));
        for (PanelScratch& s : panel_) s.reserve(panel_chunk(max_rows, kMaxTasks), opt.max_batch);
        rope_cs_.resize(size_t(opt.max_batch) * size_t(cfg.rope_dims));
        tasks_.resize(kMaxTasks);
    }

    const char* name() const override { return "cpu"; }

    void embed(const Matrix& table, const int32_t* ids, int n, float scale, float* x) override {
        const FormatKernels* f = lookup_format(table.type);
        for (int t = 0; t < n; ++t) {
            float* row = x + int64_t(t) * table.cols;
            f->dequant_row(table.data + size_t(ids[t]) * table.row_bytes, row, table.cols);
            if (scale != 1.0f)
                for (int64_t i = 0; i < table.cols; ++i) row[i] *= scale;
        }
    }

    void rmsnorm(const float* x, const float* w, float* out, int n, int d, float eps) override {
        if (n < 8) {
            for (int t = 0; t < n; ++t) rmsnorm_row(x + int64_t(t) * d, w, out + int64_t(t) * d, d, eps);
            return;
        }
        pool_.parallel_for(n, [&](int64_t t, int) {
            rmsnorm_row(x + t * d, w, out + t * d, d, eps);
        });
    }

    // Two tokens or more go through the panel GEMM: only decode steps are single rows.
    int max_single_segment() const override { return kPanelBatch - 1; }
    void set_single_rows(int n) override { single_rows_ = n; }

    // The first single_rows_ rows are decode steps of their sequences: each is computed with the
    // one-token kernels exactly as a decode alone would be (a step's decode result does not
    // depend on what it was batched with), every weight row read once for all of them. The
    // remaining rows (prompt chunks) go through the panel GEMM together.
    void matmul(const float* in, int n, std::initializer_list<MatmulJob> jobs) override {
        const int single = std::min(n, single_rows_);
        if (single > 0) matmul_rows(in, single, jobs, false);
        if (n > single) {
            const int64_t k = jobs.begin()->w->cols;
            // The batch rows of each job's output follow its single rows: shift the outputs.
            const MatmulJob* j = jobs.begin();
            auto shifted = [&](size_t i) {
                MatmulJob s = j[i];
                s.out += int64_t(single) * s.w->rows;
                return s;
            };
            const int64_t rest = n - single;
            const float* x = in + int64_t(single) * k;
            switch (jobs.size()) {
            case 1: matmul_rows(x, int(rest), {shifted(0)}, rest >= kPanelBatch); break;
            case 2: matmul_rows(x, int(rest), {shifted(0), shifted(1)}, rest >= kPanelBatch); break;
            default:
                METALLIC_ASSERT(jobs.size() == 3);
                matmul_rows(x, int(rest), {shifted(0), shifted(1), shifted(2)}, rest >= kPanelBatch);
            }
        }
    }

    // n rows: one panel GEMM (batch), or n independent one-token products.
    void matmul_rows(const float* in, int n, std::initializer_list<MatmulJob> jobs, bool batch) {
        const int64_t k = jobs.begin()->w->cols;
        // Encode each input row once in every activation kind the jobs' formats read.
        bool need[kActKinds] = {};
        if (!batch)
            for (const MatmulJob& j : jobs) need[int(lookup_format(j.w->type)->act)] = true;
        for (int kind = 1; kind < kActKinds; ++kind) {
            if (!need[kind]) continue;
            const size_t stride = act_stride(ActKind(kind), k);
            METALLIC_ASSERT(act_[kind].size() >= size_t(n) * stride);
            for (int t = 0; t < n; ++t)
                quantize_act(ActKind(kind), in + int64_t(t) * k, act_[kind].data() + size_t(t) * stride, k);
        }

        // Split every job into row chunks that balance across threads.
        int n_tasks = 0;
        const int threads = pool_.size();
        for (const MatmulJob& j : jobs) {
            const FormatKernels* f = lookup_format(j.w->type);
            const int64_t rows = j.w->rows;
            const int64_t budget = kMaxTasks / int64_t(jobs.size());  // tasks this job may use
            int64_t chunk;
            if (batch) {
                chunk = panel_chunk(rows, budget);
            } else {
                chunk = std::max({int64_t(16), rows / (threads * 8), (rows + budget - 1) / budget});
                chunk = (chunk + 3) & ~int64_t(3);
            }
            for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
                METALLIC_ASSERT(n_tasks < kMaxTasks);
                tasks_[size_t(n_tasks++)] = {&j, f, r0, std::min(rows, r0 + chunk)};
            }
        }
        pool_.parallel_for(n_tasks, [&](int64_t i, int thread) {
            const MatmulTask& task = tasks_[size_t(i)];
            const Matrix& w = *task.job->w;
            Epilogue ep;
            ep.bias = task.job->bias ? task.job->bias + task.r0 : nullptr;
            ep.accumulate = task.job->accumulate;
            const uint8_t* rows = w.data + size_t(task.r0) * w.row_bytes;
            float* out = task.job->out + task.r0;
            if (batch) {
                panel_gemm(*task.fmt, rows, w.row_bytes, task.r1 - task.r0, in, n, k, out,
                           size_t(w.rows), ep, panel_[size_t(thread)]);
                return;
            }
            // Every decode token at once: each weight row is read and decoded once for all of
            // them (formats/decode_tokens.h).
            const ActKind kind = task.fmt->act;
            const DecodeTokens x =
                kind == ActKind::F32
                    ? DecodeTokens{reinterpret_cast<const uint8_t*>(in), size_t(k) * sizeof(float), out, w.rows, n}
                    : DecodeTokens{act_[int(kind)].data(), act_stride(kind, k), out, w.rows, n};
            task.fmt->gemv(rows, w.row_bytes, task.r1 - task.r0, k, x, ep);
        });
    }

    void rope(float* x, int n, int n_heads, int pos0, const float* inv_freq) override {
        const int half = cfg_.rope_dims / 2;
        const int64_t row = int64_t(n_heads) * cfg_.head_dim;
        METALLIC_ASSERT(n <= opt_.max_batch);  // rope_cs_ holds max_batch rows
        auto one = [&](int64_t t) {
            float* cs = rope_cs_.data() + t * cfg_.rope_dims;
            const float pos = static_cast<float>(pos0 + t);
            for (int i = 0; i < half; ++i) {
                const float theta = pos * inv_freq[i];
                cs[i] = std::cos(theta);
                cs[half + i] = std::sin(theta);
            }
            rope_row(x + t * row, n_heads, cfg_.head_dim, cfg_.rope_dims, cfg_.rope_style, cs);
        };
        if (n < 8) {
            for (int t = 0; t < n; ++t) one(t);
        } else {
            pool_.parallel_for(n, [&](int64_t t, int) { one(t); });
        }
    }

    void store_kv(int cache, const float* k, const float* v, int n, int pos0) override {
        const int hd = cfg_.head_dim, nkv = cfg_.n_head_kv;
        for (int t = 0; t < n; ++t)
            for (int h = 0; h < nkv; ++h) {
                const size_t dst = cache_offset(cache, h, pos0 + t);
                const float* ks = k + (int64_t(t) * nkv + h) * hd;
                const float* vs = v + (int64_t(t) * nkv + h) * hd;
                if (opt_.kv_f32) {
                    std::copy(ks, ks + hd, k32_.data() + dst);
                    std::copy(vs, vs + hd, v32_.data() + dst);
                } else {
                    to_f16(ks, k16_.data() + dst, hd);
                    to_f16(vs, v16_.data() + dst, hd);
                }
            }
    }

    void attention(int cache, const float* q, int n, int pos0, int window, float* out) override {
        if (n >= kPanelBatch) return attention_blocks(cache, q, n, pos0, window, out);
        const int hd = cfg_.head_dim, nh = cfg_.n_head, group = cfg_.n_head / cfg_.n_head_kv;
        const float scale = attention_scale();
        pool_.parallel_for(int64_t(n) * nh, [&](int64_t task, int thread) {
            const int t = int(task / nh), h = int(task % nh);
            const int pos = pos0 + t;
            const int start = window > 0 ? std::max(0, pos - window + 1) : 0;
            METALLIC_ASSERT(start <= pos && pos < opt_.n_ctx);  // scores has room for n_ctx keys
            const size_t base = cache_offset(cache, h / group, start);
            const float* qh = q + (int64_t(t) * nh + h) * hd;
            float* oh = out + (int64_t(t) * nh + h) * hd;
            float* scores = scores_.data() + size_t(thread) * size_t(opt_.n_ctx);
            if (opt_.kv_f32)
                attend(qh, k32_.data() + base, v32_.data() + base, pos - start + 1, hd, scale, scores, oh);
            else
                attend(qh, k16_.data() + base, v16_.data() + base, pos - start + 1, hd, scale, scores, oh);
        });
    }

    // A batch: blocks of query rows per KV group (block_attention.h). The group's heads are split
    // over tasks only when blocks alone would leave threads idle (a short prompt after a long
    // context); the last blocks, which see the most keys, are handed out first.
    void attention_blocks(int cache, const float* q, int n, int pos0, int window, float* out) {
        const int hd = cfg_.head_dim, nh = cfg_.n_head, nkv = cfg_.n_head_kv, group = nh / nkv;
        const int rows = attention_rows_;
        const int blocks = (n + rows - 1) / rows;
        int splits = 1;
        while (splits < group && nkv * blocks * splits < 4 * pool_.size()) ++splits;
        const size_t stride = size_t(nh) * size_t(hd);
        const float scale = attention_scale();
        pool_.parallel_for(int64_t(nkv) * blocks * splits, [&](int64_t task, int thread) {
            const int b = blocks - 1 - int(task / (int64_t(nkv) * splits));
            const int g = int(task / splits % nkv), part = int(task % splits);
            const int t0 = b * rows, nq = std::min(rows, n - t0);
            const int h0 = g * group + group * part / splits, h1 = g * group + group * (part + 1) / splits;
            const size_t base = cache_offset(cache, g, 0);
            const size_t offset = size_t(t0) * stride + size_t(h0) * size_t(hd);
            if (opt_.kv_f32)
                attend_block(q + offset, stride, h1 - h0, nq, pos0 + t0, k32_.data() + base, v32_.data() + base,
                             hd, window, scale, out + offset, stride, attn_[size_t(thread)]);
            else
                attend_block(q + offset, stride, h1 - h0, nq, pos0 + t0, k16_.data() + base, v16_.data() + base,
                             hd, window, scale, out + offset, stride, attn_[size_t(thread)]);
        });
    }

    void glu(float* g, const float* u, int64_t count, Activation act) override {
        const int64_t chunk = 4096;
        if (count <= chunk) {
            METALLIC_ISA::glu(g, u, count, act);
            return;
        }
        pool_.parallel_for((count + chunk - 1) / chunk, [&](int64_t i, int) {
            const int64_t s = i * chunk;
            METALLIC_ISA::glu(g + s, u + s, std::min(chunk, count - s), act);
        });
    }

    void add(float* x, const float* y, int64_t count) override { METALLIC_ISA::add(x, y, count); }

    void argmax(const float* x, int64_t n, int32_t* token, int32_t* status) override {
        int64_t best = 0;
        bool nan = false;
        for (int64_t i = 0; i < n; ++i) {
            nan |= std::isnan(x[i]);
            if (x[i] > x[best] || std::isnan(x[best])) best = i;
        }
        const float top = x[best];
        *status = nan ? 1 : top == INFINITY ? 2 : top == -INFINITY ? 3 : 0;
        *token = *status == 0 ? int32_t(best) : 0;
    }
    void sample(const float* x, int64_t n, const PickSettings& s, int32_t* token, int32_t* status) override {
        *status = pick_on_host(x, n, s, token);
    }
    void softcap(float* x, int64_t count, float cap) override { METALLIC_ISA::softcap(x, count, cap); }

private:
    // Bytes between the quantized rows of one activation kind (with the slack the kernels had
    // from the start, 64-byte aligned).
    static size_t act_stride(ActKind kind, int64_t k) { return (act_row_bytes(kind, k + 256) + 63) & ~size_t(63); }

    float attention_scale() const {
        return cfg_.attn_scale > 0 ? cfg_.attn_scale : 1.0f / std::sqrt(float(cfg_.head_dim));
    }

    // Cache layout [cache][kv_head][position][head_dim], cache = seq * n_layer + layer: one
    // head's keys are contiguous, so a query head scans them in order and heads of a GQA group
    // share them without copies.
    size_t cache_offset(int cache, int kv_head, int pos) const {
        METALLIC_ASSERT(cache >= 0 && cache < cfg_.n_layer * opt_.n_seq && kv_head >= 0 &&
                        kv_head < cfg_.n_head_kv && pos >= 0 && pos < opt_.n_ctx);
        return ((size_t(cache) * cfg_.n_head_kv + size_t(kv_head)) * size_t(opt_.n_ctx) + size_t(pos)) *
               size_t(cfg_.head_dim);
    }

    ModelConfig cfg_;
    CpuOptions opt_;
    ThreadPool pool_;
    // Sized for the whole context; pages become resident as positions are written.
    ZeroedBuffer<uint16_t> k16_, v16_;
    ZeroedBuffer<float> k32_, v32_;
    std::vector<uint8_t> act_[kActKinds];  // one quantized input row per ActKind (F32 unused)
    std::vector<float> scores_;
    std::vector<PanelScratch> panel_;  // per thread
    std::vector<AttentionScratch> attn_;  // per thread
    int attention_rows_ = 0;  // query rows per attention block
    int single_rows_ = 0;     // leading rows of this pass that are decode steps (set_single_rows)
    std::vector<float> rope_cs_;
    std::vector<MatmulTask> tasks_;
};

}  // namespace

std::unique_ptr<Backend> create_backend(const ModelConfig& cfg, const CpuOptions& opt) {
    return std::make_unique<CpuBackend>(cfg, opt);
}

}  // namespace metallic::cpu::METALLIC_ISA
