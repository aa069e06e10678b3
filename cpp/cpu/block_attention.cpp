// Blocked causal attention for prefill (see block_attention.h).
#include "cpu/block_attention.h"

#include <algorithm>
#include <cmath>

#include "cpu/formats/simd.h"
#include "cpu/panel_gemm.h"
#include "engine/assert.h"

namespace metallic::cpu::METALLIC_ISA {

namespace {

int round16(int x) { return (x + 15) / 16 * 16; }

void widen(const float* src, int n, float* dst) { std::copy(src, src + n, dst); }
void widen(const uint16_t* src, int n, float* dst) {
    int i = 0;
    for (; i + 8 <= n; i += 8) store8(dst + i, load8_f16(src + i));
    for (; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}

// Keys [c0, c0 + cn) as panels of 16 keys: panel i holds key c0 + 16i + j at [d * 16 + j], so
// the panel product of query rows with it gives 16 scores per row. Missing keys are zeros.
template <class KV>
void pack_keys(const KV* k, int c0, int cn, int head_dim, float* rows, float* panels) {
    for (int i = 0; i < round16(cn) / 16; ++i) {
        for (int j = 0; j < 16; ++j) {
            const int key = 16 * i + j;
            float* r = rows + j * head_dim;
            if (key < cn)
                widen(k + size_t(c0 + key) * size_t(head_dim), head_dim, r);
            else
                std::fill(r, r + head_dim, 0.0f);
        }
        float* panel = panels + size_t(i) * size_t(head_dim) * 16;
        int d = 0;
        for (; d + 8 <= head_dim; d += 8) {
            transpose8x8(rows + d, size_t(head_dim), panel + d * 16, 16);
            transpose8x8(rows + 8 * head_dim + d, size_t(head_dim), panel + d * 16 + 8, 16);
        }
        for (; d < head_dim; ++d)
            for (int j = 0; j < 16; ++j) panel[d * 16 + j] = rows[j * head_dim + d];
    }
}

// Values [c0, c0 + cn) as panels of 16 dimensions: panel e holds dimension 16e + j of key
// c0 + kk at [kk * 16 + j], so probabilities times it give 16 output dimensions per row.
template <class KV>
void pack_values(const KV* v, int c0, int cn, int head_dim, float* panels) {
    for (int e = 0; e < round16(head_dim) / 16; ++e) {
        float* panel = panels + size_t(e) * kKeyChunk * 16;
        const int d0 = 16 * e, dn = std::min(16, head_dim - d0);
        for (int kk = 0; kk < cn; ++kk) {
            float* dst = panel + kk * 16;
            widen(v + size_t(c0 + kk) * size_t(head_dim) + d0, dn, dst);
            std::fill(dst + dn, dst + 16, 0.0f);
        }
    }
}

// One row of scores for keys [0, cn) of the chunk, of which [a, b) are visible: turns them into
// probabilities under the running max `m` (updated), zeros elsewhere; returns the factor that
// rescales what was summed under the old max, and adds the row's probabilities to `l`.
float softmax_chunk_row(float* row, int cn, int a, int b, float scale, float& m, float& l) {
    std::fill(row, row + a, 0.0f);
    std::fill(row + b, row + cn, 0.0f);
    if (b <= a) return 1.0f;
    const F8 s8 = splat8(scale);
    float mc = -INFINITY;
    int j = a;
    if (b - a >= 8) {
        F8 mx = mul8(load8(row + a), s8);
        for (j = a + 8; j + 8 <= b; j += 8) mx = max8(mx, mul8(load8(row + j), s8));
        mc = hmax8(mx);
    }
    for (; j < b; ++j) mc = std::max(mc, row[j] * scale);
    const float mn = std::max(m, mc);
    const float factor = m == -INFINITY ? 0.0f : std::exp(m - mn);
    const F8 neg = splat8(-mn);
    F8 acc = zero8();
    for (j = a; j + 8 <= b; j += 8) {
        const F8 p = exp8(fma8(load8(row + j), s8, neg));
        store8(row + j, p);
        acc = add8(acc, p);
    }
    float sum = hsum8(acc);
    for (; j < b; ++j) {
        row[j] = std::exp(row[j] * scale - mn);
        sum += row[j];
    }
    m = mn;
    l = l * factor + sum;
    return factor;
}

}  // namespace

int attention_block_rows(int heads, int head_dim) {
    return std::clamp((128 << 10) / (int(sizeof(float)) * heads * round16(head_dim)), 8, 64);
}

void AttentionScratch::reserve(int heads, int head_dim, int block_rows) {
    const size_t width = size_t(round16(head_dim));
    keys.resize(size_t(kKeyChunk) * size_t(head_dim));
    values.resize(size_t(kKeyChunk) * width);
    rows.resize(16 * size_t(head_dim));
    scores.resize(size_t(block_rows) * kKeyChunk);
    outs.resize(size_t(heads) * size_t(block_rows) * width);
    maxes.resize(size_t(heads) * size_t(block_rows));
    sums.resize(size_t(heads) * size_t(block_rows));
}

template <class KV>
void attend_block(const float* q, size_t q_stride, int heads, int nq, int pos0, const KV* k,
                  const KV* v, int head_dim, int window, float scale, float* out,
                  size_t out_stride, AttentionScratch& s) {
    const int width = round16(head_dim);
    const int first_key = window > 0 ? std::max(0, pos0 - window + 1) : 0;
    const int end_key = pos0 + nq;
    // The scratch was reserved for the group's heads and the block's rows (reserve()).
    METALLIC_ASSERT(nq > 0 && pos0 >= 0 && size_t(heads) * size_t(nq) <= s.maxes.size() &&
                    size_t(nq) * kKeyChunk <= s.scores.size() &&
                    size_t(heads) * size_t(nq) * size_t(width) <= s.outs.size() &&
                    size_t(kKeyChunk) * size_t(head_dim) <= s.keys.size());
    float* scores = s.scores.data();
    std::fill(s.maxes.begin(), s.maxes.begin() + heads * nq, -INFINITY);
    std::fill(s.sums.begin(), s.sums.begin() + heads * nq, 0.0f);
    // Chunks start at multiples of kKeyChunk, not at the block's first visible key: where a
    // row's keys are cut into chunks (and so the order its softmax sums them) must not depend
    // on where the prompt was split into batches. Keys before a row's window are masked.
    const int start_key = first_key / kKeyChunk * kKeyChunk;
    for (int c0 = start_key; c0 < end_key; c0 += kKeyChunk) {
        const int cn = std::min(kKeyChunk, end_key - c0);
        const bool first = c0 == start_key;
        pack_keys(k, c0, cn, head_dim, s.rows.data(), s.keys.data());
        pack_values(v, c0, cn, head_dim, s.values.data());
        for (int h = 0; h < heads; ++h) {
            for (int i = 0; i < round16(cn) / 16; ++i)
                panel_product(s.keys.data() + size_t(i) * size_t(head_dim) * 16, head_dim,
                              q + h * head_dim, q_stride, nq, scores + 16 * i, kKeyChunk, true);
            float* outs = s.outs.data() + size_t(h) * size_t(nq) * size_t(width);
            for (int t = 0; t < nq; ++t) {
                const int pos = pos0 + t;
                // Keys [a, b) of this chunk are visible to the row. A row before the chunk (its
                // position < c0) or past its window sees none: clamp both ends into [0, cn] so
                // the zero fills below stay inside the row.
                const int a = std::clamp(std::max(window > 0 ? pos - window + 1 : 0, c0) - c0, 0, cn);
                const int b = std::clamp(std::min(pos + 1, c0 + cn) - c0, a, cn);
                METALLIC_ASSERT(0 <= a && a <= b && b <= cn);
                const float factor = softmax_chunk_row(scores + t * kKeyChunk, cn, a, b, scale,
                                                       s.maxes[size_t(h * nq + t)], s.sums[size_t(h * nq + t)]);
                if (!first && factor != 1.0f) {
                    float* o = outs + size_t(t) * size_t(width);
                    for (int d = 0; d < width; d += 8) store8(o + d, mul8(load8(o + d), splat8(factor)));
                }
            }
            for (int e = 0; e < width / 16; ++e)
                panel_product(s.values.data() + size_t(e) * kKeyChunk * 16, cn, scores, kKeyChunk,
                              nq, outs + 16 * e, size_t(width), first);
        }
    }
    for (int h = 0; h < heads; ++h)
        for (int t = 0; t < nq; ++t) {
            const float* o = s.outs.data() + (size_t(h) * size_t(nq) + size_t(t)) * size_t(width);
            // Every row sees at least its own key, so its sum is positive; NaN only comes from
            // NaN inputs (damaged weights), which must flow to the logits, not abort.
            METALLIC_ASSERT(!(s.sums[size_t(h * nq + t)] <= 0.0f));
            const float inv = 1.0f / s.sums[size_t(h * nq + t)];
            float* dst = out + size_t(t) * out_stride + size_t(h) * size_t(head_dim);
            for (int d = 0; d < head_dim; ++d) dst[d] = o[d] * inv;
        }
}

template void attend_block<float>(const float*, size_t, int, int, int, const float*, const float*,
                                  int, int, float, float*, size_t, AttentionScratch&);
template void attend_block<uint16_t>(const float*, size_t, int, int, int, const uint16_t*,
                                     const uint16_t*, int, int, float, float*, size_t,
                                     AttentionScratch&);

}  // namespace metallic::cpu::METALLIC_ISA
