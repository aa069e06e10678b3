// Q4_0: 32 4-bit codes and a half scale (18 bytes); x = d * (q - 8).
#include "cpu/formats/blocks.h"
#include "cpu/formats/q32_gemv.h"

namespace metallic::cpu::METALLIC_ISA {
namespace {

struct Q4_0 {
    static constexpr int64_t kBytes = sizeof(BlockQ4_0);
    static const BlockQ4_0& blk(const uint8_t* p) { return *reinterpret_cast<const BlockQ4_0*>(p); }
    static I8x32 codes(const uint8_t* p) { return load_nibbles16(blk(p).qs); }
    static float scale(const uint8_t* p) { return half_to_float(load_u16(&blk(p).d)); }
    static float offset(const uint8_t*, float d) { return -8.0f * d; }
    static void scales8(const uint8_t* p, F8& d, F8& c) {
        d = load8_f16_strided(p, kBytes);
        c = mul8(d, splat8(-8.0f));
    }
    static void dequant_block(const uint8_t* p, float* y) {
        const BlockQ4_0& b = blk(p);
        const float d = half_to_float(load_u16(&b.d));
        for (int i = 0; i < 16; ++i) {
            y[i] = d * static_cast<float>((b.qs[i] & 0x0f) - 8);
            y[i + 16] = d * static_cast<float>((b.qs[i] >> 4) - 8);
        }
    }
};

}  // namespace

extern const FormatKernels kQ4_0 = format_kernels(GgmlType::Q4_0, ActKind::Q8, q32_dequant<Q4_0>, q32_gemv<Q4_0>);

}  // namespace metallic::cpu::METALLIC_ISA
