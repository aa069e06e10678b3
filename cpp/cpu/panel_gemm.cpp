// The batch matrix product (see panel_gemm.h for the scheme and why).
#include "cpu/panel_gemm.h"

#include <algorithm>

#include "cpu/formats/simd.h"

namespace metallic::cpu::METALLIC_ISA {

void PanelScratch::reserve(int64_t max_rows, int64_t max_tokens) {
    const int64_t width = (max_rows + kPanelRows - 1) / kPanelRows * kPanelRows;
    auto grow = [](std::vector<float>& v, int64_t size) {
        if (v.size() < size_t(size)) v.resize(size_t(size));
    };
    grow(panels, width * kSlab);
    grow(decoded, kPanelRows * kSlab);
    grow(sums, max_tokens * width);
}

namespace {

// Decodes rows [r0, r0 + 16) x columns [k0, k0 + kc) of W into panel[kk * 16 + j]; rows past
// nrows become zeros (their sums are computed and never stored).
void pack_panel(const FormatKernels& f, const uint8_t* w, size_t row_bytes, int64_t r0,
                int64_t nrows, int64_t k0, int64_t kc, float* decoded, float* panel) {
    const size_t offset = size_t(k0 / f.block) * size_t(f.block_bytes);
    for (int64_t j = 0; j < kPanelRows; ++j) {
        float* d = decoded + j * kSlab;
        if (r0 + j < nrows)
            f.dequant_row(w + size_t(r0 + j) * row_bytes + offset, d, kc);
        else
            std::fill(d, d + kc, 0.0f);
    }
    int64_t kk = 0;
    for (; kk + 8 <= kc; kk += 8) {
        transpose8x8(decoded + kk, kSlab, panel + kk * kPanelRows, kPanelRows);
        transpose8x8(decoded + 8 * kSlab + kk, kSlab, panel + kk * kPanelRows + 8, kPanelRows);
    }
    for (; kk < kc; ++kk)
        for (int64_t j = 0; j < kPanelRows; ++j) panel[kk * kPanelRows + j] = decoded[j * kSlab + kk];
}

// sums[t][0..16) (+)= sum over kk < kc of a[t][kk] * panel[kk][0..16), for T tokens. With
// `first` the sums start from zero instead of their stored values.
template <int T>
void tile(const float* panel, const float* a, size_t a_stride, int64_t kc, float* sums,
          size_t sums_stride, bool first) {
    F8 acc[T][2];
    for (int t = 0; t < T; ++t) {
        acc[t][0] = first ? zero8() : load8(sums + t * sums_stride);
        acc[t][1] = first ? zero8() : load8(sums + t * sums_stride + 8);
    }
    for (int64_t kk = 0; kk < kc; ++kk) {
        const F8 w0 = load8(panel + kk * kPanelRows);
        const F8 w1 = load8(panel + kk * kPanelRows + 8);
        for (int t = 0; t < T; ++t) {
            const F8 x = splat8(a[t * a_stride + kk]);
            acc[t][0] = fma8(w0, x, acc[t][0]);
            acc[t][1] = fma8(w1, x, acc[t][1]);
        }
    }
    for (int t = 0; t < T; ++t) {
        store8(sums + t * sums_stride, acc[t][0]);
        store8(sums + t * sums_stride + 8, acc[t][1]);
    }
}

using TileFn = void (*)(const float*, const float*, size_t, int64_t, float*, size_t, bool);
constexpr TileFn kTiles[kPanelTokens + 1] = {nullptr, tile<1>, tile<2>, tile<3>, tile<4>, tile<5>, tile<6>};

}  // namespace

void panel_product(const float* panel, int64_t kc, const float* a, size_t a_stride, int64_t n,
                   float* sums, size_t sums_stride, bool first) {
    for (int64_t t0 = 0; t0 < n; t0 += kPanelTokens)
        kTiles[std::min(kPanelTokens, n - t0)](panel, a + t0 * int64_t(a_stride), a_stride, kc,
                                               sums + t0 * int64_t(sums_stride), sums_stride, first);
}

void panel_gemm(const FormatKernels& f, const uint8_t* w, size_t row_bytes, int64_t nrows,
                const float* a, int64_t n, int64_t k, float* out, size_t out_stride,
                const Epilogue& ep, PanelScratch& s) {
    s.reserve(nrows, n);
    const int64_t npanels = (nrows + kPanelRows - 1) / kPanelRows;
    const int64_t width = npanels * kPanelRows;
    float* sums = s.sums.data();
    for (int64_t k0 = 0; k0 < k; k0 += kSlab) {
        const int64_t kc = std::min(kSlab, k - k0);
        for (int64_t p = 0; p < npanels; ++p)
            pack_panel(f, w, row_bytes, p * kPanelRows, nrows, k0, kc, s.decoded.data(),
                       s.panels.data() + p * kSlab * kPanelRows);
        // Tokens outside, panels inside: a tile's activations (6 x kc floats) stay in L1 while
        // it passes over every panel of the slab, which stream from L2.
        for (int64_t t0 = 0; t0 < n; t0 += kPanelTokens) {
            const TileFn fn = kTiles[std::min(kPanelTokens, n - t0)];
            for (int64_t p = 0; p < npanels; ++p)
                fn(s.panels.data() + p * kSlab * kPanelRows, a + t0 * k + k0, size_t(k), kc,
                   sums + t0 * width + p * kPanelRows, size_t(width), k0 == 0);
        }
    }
    for (int64_t t = 0; t < n; ++t) {
        const float* c = sums + t * width;
        float* o = out + t * int64_t(out_stride);
        int64_t j = 0;
        for (; j + 8 <= nrows; j += 8) {
            F8 v = load8(c + j);
            if (ep.bias) v = add8(v, load8(ep.bias + j));
            if (ep.accumulate) v = add8(v, load8(o + j));
            store8(o + j, v);
        }
        for (; j < nrows; ++j) o[j] = apply_epilogue(c[j], ep, j, o + j);
    }
}

// The whole product on one thread, in the row chunks the backend's tasks use.
void panel_gemm_once(const FormatKernels& f, const uint8_t* w, size_t row_bytes, int64_t nrows,
                     const float* a, int64_t n, int64_t k, float* out) {
    PanelScratch s;
    const int64_t chunk = panel_chunk(nrows, 1 << 20);
    for (int64_t r0 = 0; r0 < nrows; r0 += chunk)
        panel_gemm(f, w + size_t(r0) * row_bytes, row_bytes, std::min(chunk, nrows - r0), a, n, k,
                   out + r0, size_t(nrows), Epilogue{}, s);
}

}  // namespace metallic::cpu::METALLIC_ISA
