// Q3_K: 256 3-bit codes (2 low bits + a high-bit mask) in 16 sub-blocks of 16 with 6-bit
// signed scales under a half factor (110 bytes); x = (d * (s - 32)) * (q - 4), where the
// stored high bit is set when q >= 4.
#include "cpu/formats/kquant_gemv.h"

namespace metallic::cpu::METALLIC_ISA {
namespace {

struct Q3_K {
    static constexpr int64_t kBytes = sizeof(BlockQ3_K);

    // The 16 scales minus 32. Low 4 bits: nibbles of bytes 0..7 (scales 0..7 low nibbles,
    // 8..15 high nibbles); high 2 bits: bit pairs of bytes 8..11 (scale i in byte 8 + i % 4 at
    // bit 2 * (i / 4)). Done four scales per 32-bit word.
    static void unpack_scales(const uint8_t* s, int8_t* out) {
        const uint32_t a0 = load_u32(s), a1 = load_u32(s + 4), a2 = load_u32(s + 8);
        uint32_t w[4] = {
            (a0 & 0x0f0f0f0f) | ((a2 << 4) & 0x30303030),
            (a1 & 0x0f0f0f0f) | ((a2 << 2) & 0x30303030),
            ((a0 >> 4) & 0x0f0f0f0f) | (a2 & 0x30303030),
            ((a1 >> 4) & 0x0f0f0f0f) | ((a2 >> 2) & 0x30303030),
        };
        // Bytewise - 32 without borrows between bytes (every byte is < 64).
        for (uint32_t& x : w) x = ((x | 0x80808080) - 0x20202020) ^ 0x80808080;
        std::memcpy(out, w, 16);
    }

    static void dequant_block(const uint8_t* p, float* y) {
        const BlockQ3_K& b = *reinterpret_cast<const BlockQ3_K*>(p);
        const float d = half_to_float(load_u16(&b.d));
        int8_t sc[16];
        unpack_scales(b.scales, sc);
        for (int e = 0; e < 256; ++e) {
            const int h = e / 128, k = (e / 32) % 4, l = e % 32;
            const int lo = (b.qs[32 * h + l] >> (2 * k)) & 3;
            const int hbit = (b.hmask[l] >> (e / 32)) & 1;
            const float dl = d * static_cast<float>(sc[e / 16]);
            y[e] = dl * static_cast<float>(lo - (hbit ? 0 : 4));
        }
    }

    // The block decoded once, dotted with the G tokens' activation blocks a[g] into acc[g].
    template <int G>
    static void dot(const uint8_t* p, const BlockQ8K* const* a, F8* acc) {
        const BlockQ3_K& b = *reinterpret_cast<const BlockQ3_K*>(p);
        int8_t sc[16];
        unpack_scales(b.scales, sc);
        I32x8 dots[G];
        for (int g = 0; g < G; ++g) dots[g] = zero_i32();
        I8x32 hm = load_u8x32(b.hmask);  // bit g feeds group g (32 elements); shifted down
        for (int h = 0; h < 2; ++h) {
            const I8x32 raw = load_u8x32(b.qs + 32 * h);
            const I8x32 lo[4] = {bits_at<0>(raw, 3), bits_at<2>(raw, 3), bits_at<4>(raw, 3),
                                 bits_at<6>(raw, 3)};
            const I16x16 scales = widen_i8x8_twice(sc + 8 * h);
            for (int k = 0; k < 4; ++k) {
                // Unsigned code u = q + 4 in 0..7; the -4 goes into the offset term.
                const I8x32 u = or_i8(lo[k], shl_small<2>(bits_at<0>(hm, 1)));
                hm = bits_at<1>(hm, 0x7f);
                const I16x16 s = splat_lane_pair(scales, 2 * k);  // sub-blocks 8h + 2k, +1
                for (int g = 0; g < G; ++g) {
                    const I16x16 prod = maddubs(u, load_i8x32(a[g]->q + 128 * h + 32 * k));
                    dots[g] = add_i32(dots[g], madd16(prod, s));
                }
            }
        }
        const I16x16 all = widen_i8x16(sc);
        const float d = half_to_float(load_u16(&b.d));
        for (int g = 0; g < G; ++g) {
            const I32x8 offs = madd16(load_i16x16(a[g]->bsums), all);
            acc[g] = kquant_combine(acc[g], dots[g], d, offs, -4.0f * d, a[g]->d);
        }
    }
};

}  // namespace

extern const FormatKernels kQ3_K =
    format_kernels(GgmlType::Q3_K, ActKind::Q8K, kquant_dequant<Q3_K>, kquant_gemv<Q3_K>);

}  // namespace metallic::cpu::METALLIC_ISA
