// Run-time choice of the kernel build: the AVX2 one on x86-64 CPUs that have AVX2, FMA and
// F16C, the portable one otherwise (and on arm64, where NEON is baseline).
#include <cstdlib>
#include <string>

#include "cpu/cpu_backend.h"
#include "cpu/formats/format.h"

namespace metallic::cpu {

#define METALLIC_DECLARE_ISA(ns)                                                        \
    namespace ns {                                                                      \
    const FormatKernels* lookup_format(uint32_t type);                                  \
    std::string format_names();                                                         \
    void quantize_act(ActKind kind, const float* x, void* out, int64_t n);              \
    void panel_gemm_once(const FormatKernels& f, const uint8_t* w, size_t row_bytes,    \
                         int64_t nrows, const float* a, int64_t n, int64_t k, float* out); \
    double read_bandwidth(size_t bytes, int threads, int passes);                       \
    double fma_peak(int threads, int passes);                                           \
    std::unique_ptr<Backend> create_backend(const ModelConfig& cfg, const CpuOptions&); \
    }
METALLIC_DECLARE_ISA(generic)
#if defined(METALLIC_HAVE_AVX2_BUILD)
METALLIC_DECLARE_ISA(avx2)
#endif

namespace {

// METALLIC_FORCE_GENERIC=1 selects the portable build even on an AVX2 CPU, so the tests can
// check it here; it is read once, at the first kernel lookup.
bool force_generic() {
    const char* v = std::getenv("METALLIC_FORCE_GENERIC");
    return v && *v && std::string(v) != "0";
}

bool use_avx2() {
#if defined(METALLIC_HAVE_AVX2_BUILD)
    static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("f16c") && !force_generic();
    return ok;
#else
    return false;
#endif
}

}  // namespace

const FormatKernels* find_format(uint32_t type) {
#if defined(METALLIC_HAVE_AVX2_BUILD)
    if (use_avx2()) return avx2::lookup_format(type);
#endif
    return generic::lookup_format(type);
}

std::string supported_format_names() { return generic::format_names(); }

void quantize_row(ActKind kind, const float* x, void* out, int64_t n) {
#if defined(METALLIC_HAVE_AVX2_BUILD)
    if (use_avx2()) return avx2::quantize_act(kind, x, out, n);
#endif
    generic::quantize_act(kind, x, out, n);
}

void batch_gemm(const FormatKernels& f, const uint8_t* w, size_t row_bytes, int64_t nrows,
                const float* a, int64_t n, int64_t k, float* out) {
#if defined(METALLIC_HAVE_AVX2_BUILD)
    if (use_avx2()) return avx2::panel_gemm_once(f, w, row_bytes, nrows, a, n, k, out);
#endif
    generic::panel_gemm_once(f, w, row_bytes, nrows, a, n, k, out);
}

double read_bandwidth(size_t bytes, int threads, int passes) {
#if defined(METALLIC_HAVE_AVX2_BUILD)
    if (use_avx2()) return avx2::read_bandwidth(bytes, threads, passes);
#endif
    return generic::read_bandwidth(bytes, threads, passes);
}

double fma_peak(int threads, int passes) {
#if defined(METALLIC_HAVE_AVX2_BUILD)
    if (use_avx2()) return avx2::fma_peak(threads, passes);
#endif
    return generic::fma_peak(threads, passes);
}

const char* kernel_isa() {
    if (use_avx2()) return "avx2";
#if defined(__aarch64__)
    return "neon";
#else
    return "generic";
#endif
}

std::unique_ptr<Backend> make_cpu_backend(const ModelConfig& cfg, const CpuOptions& opt) {
#if defined(METALLIC_HAVE_AVX2_BUILD)
    if (use_avx2()) return avx2::create_backend(cfg, opt);
#endif
    return generic::create_backend(cfg, opt);
}

}  // namespace metallic::cpu
