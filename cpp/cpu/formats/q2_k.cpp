// Q2_K: 256 2-bit codes in 16 sub-blocks of 16, each with a 4-bit scale and a 4-bit min under
// half factors d and dmin (84 bytes); x = (d * sc) * q - dmin * m.
#include "cpu/formats/kquant_gemv.h"

namespace metallic::cpu::METALLIC_ISA {
namespace {

struct Q2_K {
    static constexpr int64_t kBytes = sizeof(BlockQ2_K);

    static void dequant_block(const uint8_t* p, float* y) {
        const BlockQ2_K& b = *reinterpret_cast<const BlockQ2_K*>(p);
        const float d = half_to_float(load_u16(&b.d)), dmin = half_to_float(load_u16(&b.dmin));
        for (int e = 0; e < 256; ++e) {
            const int h = e / 128, k = (e / 32) % 4, l = e % 32;
            const uint8_t s = b.scales[e / 16];
            const float dl = d * static_cast<float>(s & 0x0f);
            const float ml = dmin * static_cast<float>(s >> 4);
            y[e] = dl * static_cast<float>((b.qs[32 * h + l] >> (2 * k)) & 3) - ml;
        }
    }

    // The block decoded once, dotted with the G tokens' activation blocks a[g] into acc[g].
    template <int G>
    static void dot(const uint8_t* p, const BlockQ8K* const* a, F8* acc) {
        const BlockQ2_K& b = *reinterpret_cast<const BlockQ2_K*>(p);
        // Split the scale bytes into scales (low nibbles) and mins (high nibbles).
        int8_t sc[16], mn[16];
        for (int i = 0; i < 16; i += 4) {
            const uint32_t w = load_u32(b.scales + i);
            const uint32_t s = w & 0x0f0f0f0f, m = (w >> 4) & 0x0f0f0f0f;
            std::memcpy(sc + i, &s, 4);
            std::memcpy(mn + i, &m, 4);
        }
        I32x8 dots[G];
        for (int g = 0; g < G; ++g) dots[g] = zero_i32();
        for (int h = 0; h < 2; ++h) {
            const I8x32 raw = load_u8x32(b.qs + 32 * h);
            const I8x32 q[4] = {bits_at<0>(raw, 3), bits_at<2>(raw, 3), bits_at<4>(raw, 3),
                                bits_at<6>(raw, 3)};
            const I16x16 scales = widen_i8x8_twice(sc + 8 * h);
            for (int k = 0; k < 4; ++k) {
                const I16x16 s = splat_lane_pair(scales, 2 * k);  // sub-blocks 8h + 2k, +1
                for (int g = 0; g < G; ++g) {
                    const I16x16 prod = maddubs(q[k], load_i8x32(a[g]->q + 128 * h + 32 * k));
                    dots[g] = add_i32(dots[g], madd16(prod, s));
                }
            }
        }
        const I16x16 mins = widen_i8x16(mn);
        const float d = half_to_float(load_u16(&b.d)), dmin = half_to_float(load_u16(&b.dmin));
        for (int g = 0; g < G; ++g) {
            const I32x8 offs = madd16(load_i16x16(a[g]->bsums), mins);
            acc[g] = kquant_combine(acc[g], dots[g], d, offs, -dmin, a[g]->d);
        }
    }
};

}  // namespace

extern const FormatKernels kQ2_K =
    format_kernels(GgmlType::Q2_K, ActKind::Q8K, kquant_dequant<Q2_K>, kquant_gemv<Q2_K>);

}  // namespace metallic::cpu::METALLIC_ISA
