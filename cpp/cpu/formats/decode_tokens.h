// How every format's decode kernel walks a step's tokens (format.h, GemvFn).
//
// A server step decodes one token for each of several sequences. Each weight row is read and
// decoded once for a group of up to G tokens, which then each take their own dot products from
// the decoded registers; larger steps go group after group over strips of rows small enough to
// stay in the L2 cache, so the weights come from memory once per step however many tokens it
// has. Decoding the weights (sign extension, nibble unpacking, half-to-float scales) is about
// half the instructions of a one-token dot product, and one token is already compute-bound on
// the CPUs we measured, so sharing it is what makes batched decode cheaper per token.
//
// Exactness: a kernel for G tokens performs, for each token, the very operations the kernel
// for one token performs, in the same order (the tokens' accumulators are separate arrays; only
// the decoded weights are shared). So a token's result never depends on how many tokens it was
// grouped with, which the engine's batching promises (tests/test_batch.py, test_formats.py).
#pragma once

#include <algorithm>
#include <type_traits>

#include "cpu/formats/format.h"

namespace metallic::cpu::METALLIC_ISA {

constexpr int kMaxTokenGroup = 4;

// Up to kMaxTokenGroup tokens' activation rows and output rows (already offset to the strip).
struct TokenGroup {
    const void* act[kMaxTokenGroup];
    float* out[kMaxTokenGroup];
};

// Rows this many bytes of weights at most go through all the groups before the next strip: a
// quarter of a 1 MiB L2, leaving room for the activations and the other thread's lines.
constexpr size_t kStripBytes = 256 * 1024;

template <int G, class Kernel>
inline void run_group(int g, Kernel& kernel, const uint8_t* w, int64_t nrows, const TokenGroup& x,
                      const Epilogue& ep) {
    if constexpr (G > 1) {
        if (g < G) return run_group<G - 1>(g, kernel, w, nrows, x, ep);
    }
    kernel(std::integral_constant<int, G>{}, w, nrows, x, ep);
}

// Calls kernel(std::integral_constant<int, G>, rows, nrows, group, epilogue) for each strip of
// rows and each group of at most MaxG tokens; `kernel` computes out[g][r] for r < nrows.
template <int MaxG, class Kernel>
void for_token_groups(const uint8_t* w, size_t row_bytes, int64_t nrows, const DecodeTokens& x,
                      const Epilogue& ep, Kernel&& kernel) {
    static_assert(MaxG >= 1 && MaxG <= kMaxTokenGroup);
    const int64_t strip = x.n <= MaxG ? nrows : std::max<int64_t>(1, int64_t(kStripBytes / row_bytes));
    for (int64_t r0 = 0; r0 < nrows; r0 += strip) {
        const int64_t nr = std::min(strip, nrows - r0);
        Epilogue e = ep;
        if (e.bias) e.bias += r0;
        for (int t0 = 0; t0 < x.n; t0 += MaxG) {
            const int g = std::min(MaxG, x.n - t0);
            TokenGroup group{};
            for (int i = 0; i < g; ++i) {
                group.act[i] = x.act_row(t0 + i);
                group.out[i] = x.out_row(t0 + i) + r0;
            }
            run_group<MaxG>(g, kernel, w + size_t(r0) * row_bytes, nr, group, e);
        }
    }
}

}  // namespace metallic::cpu::METALLIC_ISA
