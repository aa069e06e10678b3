// The formats this build knows, and the activation quantizer they share.
#include "cpu/formats/simd.h"

namespace metallic::cpu::METALLIC_ISA {

extern const FormatKernels kF32, kF16, kBF16, kQ8_0, kQ4_0, kQ4_1, kQ5_0, kQ5_1, kQ2_K, kQ3_K,
    kQ4_K, kQ5_K, kQ6_K;

static const FormatKernels* const kAll[] = {&kF32,  &kF16,  &kBF16, &kQ8_0, &kQ4_0,
                                            &kQ4_1, &kQ5_0, &kQ5_1, &kQ2_K, &kQ3_K,
                                            &kQ4_K, &kQ5_K, &kQ6_K};

const FormatKernels* lookup_format(uint32_t type) {
    for (const FormatKernels* f : kAll)
        if (f->type == type) return f;
    return nullptr;
}

std::string format_names() {
    std::string s;
    for (const FormatKernels* f : kAll) s += (s.empty() ? "" : ", ") + std::string(f->name);
    return s;
}

// Symmetric int8 quantization per 32 values: d = max|x| / 127, q = round-to-nearest(x / d).
void quantize_q8(const float* x, uint8_t* out, int64_t n) {
    const Q8RowOf<uint8_t> row(out, n);
    for (int64_t b = 0; b < n / 32; ++b) {
        const float* xb = x + b * 32;
        const float amax = absmax32(xb);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        row.d[b] = d;
        row.sum[b] = d * static_cast<float>(round_to_i8x32(xb, id, row.q + b * 32));
    }
}

// Symmetric int16 quantization per 32 values: d = max|x| / 32767.
void quantize_i16(const float* x, uint8_t* out, int64_t n) {
    const I16RowOf<uint8_t> row(out, n);
    for (int64_t b = 0; b < n / 32; ++b) {
        const float* xb = x + b * 32;
        const float d = absmax32(xb) / 32767.0f;
        row.d[b] = d;
        round_to_i16x32(xb, d != 0.0f ? 1.0f / d : 0.0f, row.q + b * 32);
    }
}

// Symmetric int8 quantization per 256 values (d = max|x| / 127), plus the sums of each 16 codes.
void quantize_q8k(const float* x, BlockQ8K* out, int64_t n) {
    for (int64_t b = 0; b < n / 256; ++b) {
        const float* xb = x + b * 256;
        float amax = 0.0f;
        for (int i = 0; i < 256; i += 32) amax = std::fmax(amax, absmax32(xb + i));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        BlockQ8K& o = out[b];
        o.d = d;
        for (int i = 0; i < 256; i += 32) round_to_i8x32(xb + i, id, o.q + i);
        for (int g = 0; g < 16; ++g) {
            int32_t s = 0;
            for (int i = 0; i < 16; ++i) s += o.q[16 * g + i];
            o.bsums[g] = static_cast<int16_t>(s);
        }
    }
}

void quantize_act(ActKind kind, const float* x, void* out, int64_t n) {
    switch (kind) {
        case ActKind::Q8: quantize_q8(x, static_cast<uint8_t*>(out), n); return;
        case ActKind::I16: quantize_i16(x, static_cast<uint8_t*>(out), n); return;
        case ActKind::Q8K: quantize_q8k(x, static_cast<BlockQ8K*>(out), n); return;
        case ActKind::F32: std::memcpy(out, x, size_t(n) * sizeof(float)); return;
    }
}

}  // namespace metallic::cpu::METALLIC_ISA
