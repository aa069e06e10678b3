// The one-token kernel shared by the plain float formats (F32, F16, BF16). A format supplies
// how to widen 8 of its values (and one, for the ragged end of a row) to float.
#pragma once

#include "cpu/formats/simd.h"

namespace metallic::cpu::METALLIC_ISA {

// One row at a time, four independent accumulators over k. A single sequential stream per
// thread is what the hardware prefetcher follows best: measured 12% faster F16 decode than four
// interleaved rows (27.4 vs 24.5 tok/s, Qwen2.5-0.5B shape).
template <class Fmt>
void float_gemv(const uint8_t* w, size_t row_bytes, int64_t nrows, const void* act, int64_t k,
                float* out, const Epilogue& ep) {
    const float* a = static_cast<const float*>(act);
    const int64_t k32 = k & ~int64_t(31);
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t* row = w + r * row_bytes;
        F8 acc0 = zero8(), acc1 = zero8(), acc2 = zero8(), acc3 = zero8();
        int64_t i = 0;
        for (; i < k32; i += 32) {
            acc0 = fma8(Fmt::load8(row, i), load8(a + i), acc0);
            acc1 = fma8(Fmt::load8(row, i + 8), load8(a + i + 8), acc1);
            acc2 = fma8(Fmt::load8(row, i + 16), load8(a + i + 16), acc2);
            acc3 = fma8(Fmt::load8(row, i + 24), load8(a + i + 24), acc3);
        }
        for (; i + 8 <= k; i += 8) acc0 = fma8(Fmt::load8(row, i), load8(a + i), acc0);
        float s = hsum8(add8(add8(acc0, acc1), add8(acc2, acc3)));
        for (; i < k; ++i) s += Fmt::load1(row, i) * a[i];
        out[r] = apply_epilogue(s, ep, r, out + r);
    }
}

}  // namespace metallic::cpu::METALLIC_ISA
