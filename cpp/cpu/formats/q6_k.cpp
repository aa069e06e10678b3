// Q6_K: 256 6-bit codes in 16 sub-blocks of 16 with int8 scales under a half factor
// (210 bytes); x = (d * sc) * (q - 32).
#include "cpu/formats/kquant_gemv.h"

namespace metallic::cpu::METALLIC_ISA {
namespace {

struct Q6_K {
    static constexpr int64_t kBytes = sizeof(BlockQ6_K);

    // Group k (32 elements) of half h holds the low nibbles (k < 2) or high nibbles (k >= 2)
    // of ql's 32-byte row k & 1 and bit pair k of qh (see BlockQ6_K). Written as flat loops
    // with loop-invariant shifts so the compiler vectorizes them: prefill decodes every weight
    // through here once per batch.
    static void dequant_block(const uint8_t* p, float* y) {
        const BlockQ6_K& b = *reinterpret_cast<const BlockQ6_K*>(p);
        const float d = half_to_float(load_u16(&b.d));
        for (int h = 0; h < 2; ++h)
            for (int k = 0; k < 4; ++k) {
                const uint8_t* ql = b.ql + 64 * h + 32 * (k & 1);
                const uint8_t* qh = b.qh + 32 * h;
                const int lo_shift = 4 * (k >> 1), hi_shift = 2 * k;
                int8_t codes[32];
                for (int l = 0; l < 32; ++l)
                    codes[l] = int8_t((((ql[l] >> lo_shift) & 0x0f) | ((qh[l] >> hi_shift) & 3) << 4) - 32);
                const int e = 128 * h + 32 * k;
                const float ds0 = d * static_cast<float>(b.scales[e / 16]);
                const float ds1 = d * static_cast<float>(b.scales[e / 16 + 1]);
                for (int l = 0; l < 16; ++l) y[e + l] = ds0 * static_cast<float>(codes[l]);
                for (int l = 0; l < 16; ++l) y[e + 16 + l] = ds1 * static_cast<float>(codes[16 + l]);
            }
    }

    // The block decoded once, dotted with the G tokens' activation blocks a[g] into acc[g].
    template <int G>
    static void dot(const uint8_t* p, const BlockQ8K* const* a, F8* acc) {
        const BlockQ6_K& b = *reinterpret_cast<const BlockQ6_K*>(p);
        I32x8 dots[G];
        for (int g = 0; g < G; ++g) dots[g] = zero_i32();
        for (int h = 0; h < 2; ++h) {
            const I8x32 ql0 = load_u8x32(b.ql + 64 * h), ql1 = load_u8x32(b.ql + 64 * h + 32);
            const I8x32 qh = load_u8x32(b.qh + 32 * h);
            const I8x32 q[4] = {
                or_i8(bits_at<0>(ql0, 0x0f), shl_small<4>(bits_at<0>(qh, 0x03))),
                or_i8(bits_at<0>(ql1, 0x0f), shl_small<4>(bits_at<2>(qh, 0x03))),
                or_i8(bits_at<4>(ql0, 0x0f), shl_small<4>(bits_at<4>(qh, 0x03))),
                or_i8(bits_at<4>(ql1, 0x0f), shl_small<4>(bits_at<6>(qh, 0x03))),
            };
            const I16x16 scales = widen_i8x8_twice(b.scales + 8 * h);
            for (int k = 0; k < 4; ++k) {
                const I16x16 s = splat_lane_pair(scales, 2 * k);  // sub-blocks 8h + 2k, +1
                for (int g = 0; g < G; ++g) {
                    const I16x16 prod = maddubs(q[k], load_i8x32(a[g]->q + 128 * h + 32 * k));
                    dots[g] = add_i32(dots[g], madd16(prod, s));
                }
            }
        }
        // The -32 of every code: -32 * sum_i sc_i * bsum_i.
        const I16x16 all = widen_i8x16(b.scales);
        const float d = half_to_float(load_u16(&b.d));
        for (int g = 0; g < G; ++g) {
            const I32x8 offs = madd16(load_i16x16(a[g]->bsums), all);
            acc[g] = kquant_combine(acc[g], dots[g], d, offs, -32.0f * d, a[g]->d);
        }
    }
};

}  // namespace

extern const FormatKernels kQ6_K =
    format_kernels(GgmlType::Q6_K, ActKind::Q8K, kquant_dequant<Q6_K>, kquant_gemv<Q6_K>);

}  // namespace metallic::cpu::METALLIC_ISA
