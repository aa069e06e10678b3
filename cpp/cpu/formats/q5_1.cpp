// Q5_1: 32 5-bit codes, a half scale and a half minimum (24 bytes); x = d * q + m.
#include "cpu/formats/blocks.h"
#include "cpu/formats/q32_gemv.h"

namespace metallic::cpu::METALLIC_ISA {
namespace {

struct Q5_1 {
    static constexpr int64_t kBytes = sizeof(BlockQ5_1);
    static const BlockQ5_1& blk(const uint8_t* p) { return *reinterpret_cast<const BlockQ5_1*>(p); }
    static I8x32 codes(const uint8_t* p) {
        return or_i8(load_nibbles16(blk(p).qs), bits_to_bytes(load_u32(blk(p).qh), 0x10));
    }
    static float scale(const uint8_t* p) { return half_to_float(load_u16(&blk(p).d)); }
    static float offset(const uint8_t* p, float) { return half_to_float(load_u16(&blk(p).m)); }
    static void scales8(const uint8_t* p, F8& d, F8& m) { load8_f16_pairs_strided(p, kBytes, d, m); }
    static void dequant_block(const uint8_t* p, float* y) {
        const BlockQ5_1& b = blk(p);
        const float d = half_to_float(load_u16(&b.d));
        const float m = half_to_float(load_u16(&b.m));
        const uint32_t qh = load_u32(b.qh);
        for (int i = 0; i < 16; ++i) {
            const int lo = (b.qs[i] & 0x0f) | int((qh >> i) & 1) << 4;
            const int hi = (b.qs[i] >> 4) | int((qh >> (i + 16)) & 1) << 4;
            y[i] = d * static_cast<float>(lo) + m;
            y[i + 16] = d * static_cast<float>(hi) + m;
        }
    }
};

}  // namespace

extern const FormatKernels kQ5_1 = format_kernels(GgmlType::Q5_1, ActKind::Q8, q32_dequant<Q5_1>, q32_gemv<Q5_1>);

}  // namespace metallic::cpu::METALLIC_ISA
