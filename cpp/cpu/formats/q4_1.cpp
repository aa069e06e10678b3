// Q4_1: 32 4-bit codes, a half scale and a half minimum (20 bytes); x = d * q + m.
#include "cpu/formats/blocks.h"
#include "cpu/formats/q32_gemv.h"

namespace metallic::cpu::METALLIC_ISA {
namespace {

struct Q4_1 {
    static constexpr int64_t kBytes = sizeof(BlockQ4_1);
    static const BlockQ4_1& blk(const uint8_t* p) { return *reinterpret_cast<const BlockQ4_1*>(p); }
    static I8x32 codes(const uint8_t* p) { return load_nibbles16(blk(p).qs); }
    static float scale(const uint8_t* p) { return half_to_float(load_u16(&blk(p).d)); }
    static float offset(const uint8_t* p, float) { return half_to_float(load_u16(&blk(p).m)); }
    static void scales8(const uint8_t* p, F8& d, F8& m) { load8_f16_pairs_strided(p, kBytes, d, m); }
    static void dequant_block(const uint8_t* p, float* y) {
        const BlockQ4_1& b = blk(p);
        const float d = half_to_float(load_u16(&b.d));
        const float m = half_to_float(load_u16(&b.m));
        for (int i = 0; i < 16; ++i) {
            y[i] = d * static_cast<float>(b.qs[i] & 0x0f) + m;
            y[i + 16] = d * static_cast<float>(b.qs[i] >> 4) + m;
        }
    }
};

}  // namespace

extern const FormatKernels kQ4_1 = format_kernels(GgmlType::Q4_1, ActKind::Q8, q32_dequant<Q4_1>, q32_gemv<Q4_1>);

}  // namespace metallic::cpu::METALLIC_ISA
