// The matrix product for batches of tokens (prefill), shared by every weight format.
//
// Decode reads each weight once per token, so it is bound by memory and each format has its
// own dot-product kernel on compressed weights (cpp/cpu/formats). A batch of n tokens reuses
// every weight n times, so it is bound by arithmetic: here the weights are decoded to float
// once per batch, a slab of 16 rows x kSlab columns at a time, into "panels" laid out column
// by column (16 consecutive floats per k). The inner kernel then keeps a 6-token x 16-row tile
// of sums in 12 vector registers and, per k, loads two weight vectors and broadcasts six
// activations: 12 multiply-adds for 8 loads that all hit L1, the classic BLIS/GotoBLAS
// outer-product form. The dot-product form it replaces (4 rows x 2 tokens, sums across k)
// needed a fresh weight load from L2 for every two multiply-adds.
//
// Decoding a panel costs a few instructions per weight, spread over all n tokens of the batch,
// and a weight's float value is exactly the format's dequantization, so prefill is as precise
// as a float32 model on the dequantized weights.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/formats/format.h"

namespace metallic::cpu::METALLIC_ISA {

constexpr int64_t kPanelRows = 16;   // weight rows per panel: two 8-float vectors
constexpr int64_t kPanelTokens = 6;  // tokens per register tile: 6 x 2 sums + 3 = 15 of 16 ymm
constexpr int64_t kSlab = 256;       // columns decoded at once: a multiple of every block size

// Rows per panel_gemm call when a matrix is split into tasks (at most `budget` of them): a
// multiple of the panel height, small enough to balance the threads and to keep a task's
// panels (rows x kSlab floats) and sums (tokens x rows) in L2.
inline int64_t panel_chunk(int64_t rows, int64_t budget) {
    const int64_t chunk = std::max<int64_t>(64, (rows + budget - 1) / budget);
    return (chunk + kPanelRows - 1) / kPanelRows * kPanelRows;
}

// One thread's working memory, sized by reserve() before a forward pass so none is allocated
// per token.
struct PanelScratch {
    std::vector<float> panels;  // rows x kSlab, as ceil(rows / 16) panels of kSlab x 16
    std::vector<float> decoded;  // 16 decoded row slabs on their way into a panel
    std::vector<float> sums;     // n x (rows rounded up to 16): the running sums over k

    void reserve(int64_t max_rows, int64_t max_tokens);
};

// sums[t * sums_stride + j] (+)= sum over kk < kc of a[t * a_stride + kk] * panel[kk * 16 + j],
// for t < n and j < 16: one panel against n rows of activations, in 6-token register tiles.
// With `first` the sums start from zero instead of their stored values.
void panel_product(const float* panel, int64_t kc, const float* a, size_t a_stride, int64_t n,
                   float* sums, size_t sums_stride, bool first);

// For r < nrows and t < n: out[t * out_stride + r] = epilogue(dot(W row r, a row t)), where
// W's rows are `row_bytes` apart in format f and a's rows are k floats, contiguous.
void panel_gemm(const FormatKernels& f, const uint8_t* w, size_t row_bytes, int64_t nrows,
                const float* a, int64_t n, int64_t k, float* out, size_t out_stride,
                const Epilogue& ep, PanelScratch& s);

}  // namespace metallic::cpu::METALLIC_ISA
