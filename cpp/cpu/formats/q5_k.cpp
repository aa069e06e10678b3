// Q5_K: Q4_K plus a fifth bit per code (176 bytes); x = (d * sc) * q - dmin * m, q in 0..31.
#include "cpu/formats/kquant_gemv.h"

namespace metallic::cpu::METALLIC_ISA {
namespace {

struct Q5_K {
    static constexpr int64_t kBytes = sizeof(BlockQ5_K);

    static void dequant_block(const uint8_t* p, float* y) {
        const BlockQ5_K& b = *reinterpret_cast<const BlockQ5_K*>(p);
        const float d = half_to_float(load_u16(&b.d)), dmin = half_to_float(load_u16(&b.dmin));
        uint64_t sc, mn;
        unpack_scales_k4(b.scales, &sc, &mn);
        for (int j = 0; j < 8; ++j) {
            const float ds = d * static_cast<float>((sc >> (8 * j)) & 0xff);
            const float dm = dmin * static_cast<float>((mn >> (8 * j)) & 0xff);
            const uint8_t* q = b.qs + 32 * (j / 2);
            const int shift = 4 * (j & 1);
            for (int l = 0; l < 32; ++l) {
                const int v = ((q[l] >> shift) & 0x0f) | ((b.qh[l] >> j) & 1) << 4;
                y[32 * j + l] = ds * static_cast<float>(v) - dm;
            }
        }
    }

    // The block decoded once, dotted with the G tokens' activation blocks a[g] into acc[g].
    template <int G>
    static void dot(const uint8_t* p, const BlockQ8K* const* a, F8* acc) {
        const BlockQ5_K& b = *reinterpret_cast<const BlockQ5_K*>(p);
        I8x32 high = load_u8x32(b.qh);  // bits 2c and 2c + 1 feed sub-blocks 2c, 2c + 1
        k4_dot<G>(
            load_u16(&b.d), load_u16(&b.dmin), b.scales, b.qs,
            [&high](I8x32 raw, I8x32& lo, I8x32& hi) {
                lo = or_i8(bits_at<0>(raw, 0x0f), shl_small<4>(bits_at<0>(high, 0x01)));
                hi = or_i8(bits_at<4>(raw, 0x0f), shl_small<3>(bits_at<0>(high, 0x02)));
                high = bits_at<2>(high, 0x3f);
            },
            a, acc);
    }
};

}  // namespace

extern const FormatKernels kQ5_K =
    format_kernels(GgmlType::Q5_K, ActKind::Q8K, kquant_dequant<Q5_K>, kquant_gemv<Q5_K>);

}  // namespace metallic::cpu::METALLIC_ISA
