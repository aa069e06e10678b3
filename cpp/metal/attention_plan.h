// How the Metal backend launches attention for one sequence's n query tokens: the kernel, its
// arguments, grid and threadgroup memory (metal/attention.h is the kernels' side of it). Pure
// host arithmetic, kept apart from the encoding so the choice reads in one place.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/config.h"

// Host views of the argument structs the kernels take (metal/args.h is shared with MSL).
#include "../../metal/args.h"

namespace metallic::metal {

// Simdgroups per attention threadgroup: a launch shape the kernels leave to the host.
constexpr uint32_t kAttentionSimdgroups = 4;
// Split decode attention: decode (one token) whose window has kAttentionSplitMin positions or
// more is split over threadgroups of split_len positions, split_len = kAttentionSplitLen times
// the least factor that keeps the splits at most kAttentionMaxSplits (each threadgroup then
// takes all query heads of one kv head: Qwen2.5's 2 kv heads give 2 threadgroups per split).
constexpr int kAttentionSplitLen = 64;
constexpr int kAttentionSplitMin = 256;
constexpr int kAttentionMaxSplits = 64;

enum class AttentionKernel {
    Rows,   // attention(_rope): ATTN_ROWS query rows of one kv head per threadgroup
    Split,  // attention(_rope)_split + attention_merge: long-context decode
    Tile,   // attention_tile: prompt chunks that take the GEMM (more than MATVEC_TOKENS)
};

struct AttentionPlan {
    AttentionKernel kernel = AttentionKernel::Rows;
    AttentionArgs args{};      // split_len set for Split
    uint32_t grid[2] = {1, 1};  // threadgroups (x: kv heads x row blocks; y: splits)
    size_t tg_memory = 16;     // [[threadgroup(0)]] bytes, a multiple of 16
};

// n query tokens at positions pos0.. of a layer with this window (0: full); fused: RoPE and
// the KV write inside the kernel (attention_rope, at most MATVEC_TOKENS tokens), whose
// threadgroup memory also holds the new K and V rows of kv_elem_bytes each.
AttentionPlan plan_attention(const ModelConfig& cfg, int n_ctx, int n, int pos0, int window, bool fused,
                             size_t kv_elem_bytes);

// The most splits plan_attention gives in a context of n_ctx (the partial buffer's size).
inline size_t attention_max_splits(int n_ctx) {
    return (size_t(n_ctx) + kAttentionSplitLen - 1) / kAttentionSplitLen;
}

}  // namespace metallic::metal
