#include "metal/attention_plan.h"

#include <algorithm>
#include <cmath>

namespace metallic::metal {
namespace {

uint32_t ceil_div(int64_t a, int64_t b) { return uint32_t((a + b - 1) / b); }
size_t align16(size_t bytes) { return (bytes + 15) & ~size_t(15); }  // Metal wants multiples of 16

}  // namespace

AttentionPlan plan_attention(const ModelConfig& cfg, int n_ctx, int n, int pos0, int window, bool fused,
                             size_t kv_elem_bytes) {
    AttentionPlan p;
    AttentionArgs& a = p.args;
    a.n_heads = cfg.n_head;
    a.n_kv_heads = cfg.n_head_kv;
    a.head_dim = cfg.head_dim;
    a.n_ctx = n_ctx;
    a.pos0 = pos0;
    a.window = window;
    a.scale = cfg.attn_scale > 0 ? cfg.attn_scale : 1.0f / std::sqrt(float(cfg.head_dim));
    a.n_tokens = n;
    const int64_t rows_per_kv = int64_t(n) * (cfg.n_head / cfg.n_head_kv);
    const size_t hd = size_t(cfg.head_dim);

    if (n > MATVEC_TOKENS && cfg.head_dim % 8 == 0) {
        // Prompt chunks that take the GEMM: 8 * nsg query rows per threadgroup, K/V tiles
        // through threadgroup memory, QK^T and PV as 8x8 simdgroup matrices. Shorter chunks
        // take the row kernel, whose rows are bit for bit those of decode steps (as their
        // matvecs are: a short prompt equals its decodes). K and V tiles of 8 rows of stride
        // head_dim padded to 8 mod 32 (attn_tile_stride), and an 8x8 scratch and diagonal per
        // simdgroup.
        p.kernel = AttentionKernel::Tile;
        p.grid[0] = uint32_t(cfg.n_head_kv) * ceil_div(rows_per_kv, 8 * kAttentionSimdgroups);
        const size_t stride = hd + size_t(((8 - cfg.head_dim % 32) + 32) % 32);
        p.tg_memory = align16((16 * stride + 128 * kAttentionSimdgroups) * sizeof(float));
        return p;
    }

    // The row kernels: threadgroups of ATTN_ROWS query rows of one kv head. Their threadgroup
    // memory holds the simdgroups' merge, (nsg - 1) * ATTN_ROWS * (2 + 8 * lanes per cache row)
    // floats (lanes: the least power of two with 8 * lanes >= head_dim, attn_lanes_per_row),
    // and before the loop the fused prologue's sums, rotated queries and new K and V rows
    // (attn_rope_k_offset).
    p.grid[0] = uint32_t(cfg.n_head_kv) * ceil_div(rows_per_kv, ATTN_ROWS);
    size_t lanes = 1;
    while (lanes < 32 && 8 * lanes < hd) lanes *= 2;
    const size_t merge = size_t(kAttentionSimdgroups - 1) * ATTN_ROWS * (2 + 8 * lanes) * sizeof(float);
    size_t shared = std::max<size_t>(16, merge);
    if (fused) {
        const size_t chunks = (hd + 31) / 32;
        auto align4 = [](size_t floats) { return (floats + 3) & ~size_t(3); };
        const size_t k_offset = align4((ATTN_ROWS + size_t(n)) * chunks) + align4(ATTN_ROWS * hd);
        shared = std::max(shared, k_offset * sizeof(float) + 2 * size_t(n) * hd * kv_elem_bytes);
    }
    p.tg_memory = align16(shared);

    const int first = window > 0 ? std::max(0, pos0 - window + 1) : 0;  // decode's window
    const int len = pos0 - first + 1;
    if (n == 1 && len >= kAttentionSplitMin) {
        // Long-context decode: a threadgroup per kv head alone would leave most of a GPU idle,
        // so the window is split over threadgroups and the partials merged in a second pass.
        // Splits start at multiples of split_len; at most attention_max_splits(n_ctx).
        p.kernel = AttentionKernel::Split;
        a.split_len = kAttentionSplitLen * int(ceil_div(len, int64_t(kAttentionSplitLen) * kAttentionMaxSplits));
        p.grid[1] = uint32_t(pos0 / a.split_len - first / a.split_len + 1);
    }
    return p;
}

}  // namespace metallic::metal
