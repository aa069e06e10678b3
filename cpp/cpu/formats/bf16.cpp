// BF16 weights: the top half of a float, widened by a shift.
#include "cpu/formats/float_gemv.h"

namespace metallic::cpu::METALLIC_ISA {
namespace {

struct BF16Format {
    static F8 load8(const uint8_t* row, int64_t i) {
        return load8_bf16(reinterpret_cast<const uint16_t*>(row) + i);
    }
    static float load1(const uint8_t* row, int64_t i) {
        uint16_t h;
        std::memcpy(&h, row + 2 * i, 2);
        return bf16_to_fp32(h);
    }
};

void dequant(const uint8_t* src, float* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) store8(dst + i, BF16Format::load8(src, i));
    for (; i < n; ++i) dst[i] = BF16Format::load1(src, i);
}

}  // namespace

extern const FormatKernels kBF16 = format_kernels(GgmlType::BF16, ActKind::F32, dequant, float_gemv<BF16Format>);

}  // namespace metallic::cpu::METALLIC_ISA
