// F16 (IEEE half) weights, widened to float in registers.
#include "cpu/formats/float_gemv.h"

namespace metallic::cpu::METALLIC_ISA {
namespace {

struct F16Format {
    static F8 load8(const uint8_t* row, int64_t i) {
        return load8_f16(reinterpret_cast<const uint16_t*>(row) + i);
    }
    static float load1(const uint8_t* row, int64_t i) {
        uint16_t h;
        std::memcpy(&h, row + 2 * i, 2);
        return fp16_to_fp32(h);
    }
};

void dequant(const uint8_t* src, float* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) store8(dst + i, F16Format::load8(src, i));
    for (; i < n; ++i) dst[i] = F16Format::load1(src, i);
}

}  // namespace

extern const FormatKernels kF16 = format_kernels(GgmlType::F16, ActKind::F32, dequant, float_gemv<F16Format>);

}  // namespace metallic::cpu::METALLIC_ISA
