// Causal attention for a block of query rows (prefill), built on the panel product of
// panel_gemm.h: scores = Q K^T and out = P V are both small matrix products.
//
// Decode attends one query row at a time (ops.h: attend), a dot product per cached key. A
// prompt of n tokens has n query rows per head over the same keys, so here keys are taken in
// chunks of kKeyChunk, decoded once into float panels and shared by every query row of the block
// and every query head of the GQA group. Softmax runs online over the chunks (a running max and
// sum per row, partial outputs rescaled when the max grows), so memory stays at one chunk of
// scores per block however long the context is.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace metallic::cpu::METALLIC_ISA {

constexpr int kKeyChunk = 128;  // keys per chunk: a multiple of the 16-wide panels

// Query rows per block for a GQA group of `heads` heads of head_dim: the block's running
// outputs (heads x rows x head_dim floats) stay within 128 KB of L2.
int attention_block_rows(int heads, int head_dim);

// One thread's working memory, sized by reserve() at load.
struct AttentionScratch {
    std::vector<float> keys;    // kKeyChunk x head_dim, as 16-key panels of head_dim x 16
    std::vector<float> values;  // kKeyChunk x head_dim (rounded up to 16), as 16-dim panels
    std::vector<float> rows;    // 16 decoded keys on their way into a panel
    std::vector<float> scores;  // block rows x kKeyChunk: scores, then probabilities
    std::vector<float> outs;    // heads x block rows x head_dim (rounded up to 16)
    std::vector<float> maxes, sums;  // heads x block rows: the online softmax state

    void reserve(int heads, int head_dim, int block_rows);
};

// Query heads [0, heads) of one KV group, rows t < nq at positions pos0 + t, attending to the
// cached keys and values of that group (k, v: position-major rows of head_dim, position 0 at
// the pointer) within the causal window (window <= 0: every earlier position).
//   q row t of head h: q + t * q_stride + h * head_dim; out likewise with out_stride.
template <class KV>
void attend_block(const float* q, size_t q_stride, int heads, int nq, int pos0, const KV* k,
                  const KV* v, int head_dim, int window, float scale, float* out,
                  size_t out_stride, AttentionScratch& s);

}  // namespace metallic::cpu::METALLIC_ISA
