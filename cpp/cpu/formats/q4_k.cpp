// Q4_K: 256 4-bit codes in 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit min under
// half factors d and dmin (144 bytes); x = (d * sc) * q - dmin * m.
#include "cpu/formats/kquant_gemv.h"

namespace metallic::cpu::METALLIC_ISA {
namespace {

struct Q4_K {
    static constexpr int64_t kBytes = sizeof(BlockQ4_K);

    static void dequant_block(const uint8_t* p, float* y) {
        const BlockQ4_K& b = *reinterpret_cast<const BlockQ4_K*>(p);
        const float d = half_to_float(load_u16(&b.d)), dmin = half_to_float(load_u16(&b.dmin));
        uint64_t sc, mn;
        unpack_scales_k4(b.scales, &sc, &mn);
        for (int j = 0; j < 8; ++j) {
            const float ds = d * static_cast<float>((sc >> (8 * j)) & 0xff);
            const float dm = dmin * static_cast<float>((mn >> (8 * j)) & 0xff);
            const uint8_t* q = b.qs + 32 * (j / 2);
            const int shift = 4 * (j & 1);
            for (int l = 0; l < 32; ++l) y[32 * j + l] = ds * static_cast<float>((q[l] >> shift) & 0x0f) - dm;
        }
    }

    // The block decoded once, dotted with the G tokens' activation blocks a[g] into acc[g].
    template <int G>
    static void dot(const uint8_t* p, const BlockQ8K* const* a, F8* acc) {
        const BlockQ4_K& b = *reinterpret_cast<const BlockQ4_K*>(p);
        k4_dot<G>(
            load_u16(&b.d), load_u16(&b.dmin), b.scales, b.qs,
            [](I8x32 raw, I8x32& lo, I8x32& hi) {
                lo = bits_at<0>(raw, 0x0f);
                hi = bits_at<4>(raw, 0x0f);
            },
            a, acc);
    }
};

}  // namespace

extern const FormatKernels kQ4_K =
    format_kernels(GgmlType::Q4_K, ActKind::Q8K, kquant_dequant<Q4_K>, kquant_gemv<Q4_K>);

}  // namespace metallic::cpu::METALLIC_ISA
