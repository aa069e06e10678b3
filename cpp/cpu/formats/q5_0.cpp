// Q5_0: 32 5-bit codes (low nibbles + a 32-bit mask of fifth bits) and a half scale
// (22 bytes); x = d * (q - 16).
#include "cpu/formats/blocks.h"
#include "cpu/formats/q32_gemv.h"

namespace metallic::cpu::METALLIC_ISA {
namespace {

struct Q5_0 {
    static constexpr int64_t kBytes = sizeof(BlockQ5_0);
    static const BlockQ5_0& blk(const uint8_t* p) { return *reinterpret_cast<const BlockQ5_0*>(p); }
    static I8x32 codes(const uint8_t* p) {
        return or_i8(load_nibbles16(blk(p).qs), bits_to_bytes(load_u32(blk(p).qh), 0x10));
    }
    static float scale(const uint8_t* p) { return half_to_float(load_u16(&blk(p).d)); }
    static float offset(const uint8_t*, float d) { return -16.0f * d; }
    static void scales8(const uint8_t* p, F8& d, F8& c) {
        d = load8_f16_strided(p, kBytes);
        c = mul8(d, splat8(-16.0f));
    }
    static void dequant_block(const uint8_t* p, float* y) {
        const BlockQ5_0& b = blk(p);
        const float d = half_to_float(load_u16(&b.d));
        const uint32_t qh = load_u32(b.qh);
        for (int i = 0; i < 16; ++i) {
            const int lo = (b.qs[i] & 0x0f) | int((qh >> i) & 1) << 4;
            const int hi = (b.qs[i] >> 4) | int((qh >> (i + 16)) & 1) << 4;
            y[i] = d * static_cast<float>(lo - 16);
            y[i + 16] = d * static_cast<float>(hi - 16);
        }
    }
};

}  // namespace

extern const FormatKernels kQ5_0 = format_kernels(GgmlType::Q5_0, ActKind::Q8, q32_dequant<Q5_0>, q32_gemv<Q5_0>);

}  // namespace metallic::cpu::METALLIC_ISA
