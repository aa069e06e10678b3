// F32 weights: used as stored.
#include "cpu/formats/float_gemv.h"

namespace metallic::cpu::METALLIC_ISA {
namespace {

struct F32Format {
    static F8 load8(const uint8_t* row, int64_t i) {
        return METALLIC_ISA::load8(reinterpret_cast<const float*>(row) + i);
    }
    static float load1(const uint8_t* row, int64_t i) {
        float v;
        std::memcpy(&v, row + 4 * i, 4);
        return v;
    }
};

void dequant(const uint8_t* src, float* dst, int64_t n) { std::memcpy(dst, src, 4 * n); }

}  // namespace

extern const FormatKernels kF32 = format_kernels(GgmlType::F32, ActKind::F32, dequant, float_gemv<F32Format>);

}  // namespace metallic::cpu::METALLIC_ISA
