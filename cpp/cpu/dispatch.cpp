// Run-time choice of the kernel build: the AVX2 one on x86-64 CPUs that have AVX2, FMA and
// F16C, the portable one otherwise (and on arm64, where NEON is baseline).
#include <cstdlib>
#include <string>
#if defined(METALLIC_HAVE_AVX2_BUILD)
#include <cpuid.h>
#endif

#include "cpu/cpu_backend.h"
#include "cpu/formats/format.h"
#include "engine/error.h"

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
    void to_f16(const float* x, uint16_t* out, int64_t n);                              \
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

#if defined(METALLIC_HAVE_AVX2_BUILD)
// F16C from CPUID leaf 1 (ECX bit 29): clang before 15 has no "f16c" for __builtin_cpu_supports.
// (The AVX2 check covers the OS saving the ymm registers F16C needs.)
bool has_f16c() {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

// Whether this CPU can run the AVX2 build at all, and whether the dispatcher picks it.
bool avx2_usable() {
#if defined(METALLIC_HAVE_AVX2_BUILD)
    static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    return ok;
#else
    return false;
#endif
}

bool use_avx2() {
    static const bool ok = avx2_usable() && !force_generic();
    return ok;
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

std::vector<std::string> usable_isas() {
    std::vector<std::string> isas = {"generic"};
    if (avx2_usable()) isas.push_back("avx2");
    return isas;
}

namespace {

// The build named `isa`, as the dispatcher would pick it for "native"; throws if this CPU
// cannot run it.
bool pick_avx2(const std::string& isa) {
    if (isa == "native") return use_avx2();
    if (isa == "generic") return false;
    if (isa == "avx2" && avx2_usable()) return true;
    throw BadRequest("kernel build '" + isa + "' is not usable here (native, generic" +
                     std::string(avx2_usable() ? ", avx2)" : ")"));
}

}  // namespace

std::unique_ptr<Backend> make_cpu_backend_for(const std::string& isa, const ModelConfig& cfg,
                                              const CpuOptions& opt) {
#if defined(METALLIC_HAVE_AVX2_BUILD)
    if (pick_avx2(isa)) return avx2::create_backend(cfg, opt);
#else
    pick_avx2(isa);
#endif
    return generic::create_backend(cfg, opt);
}

void to_f16_for(const std::string& isa, const float* x, uint16_t* out, int64_t n) {
#if defined(METALLIC_HAVE_AVX2_BUILD)
    if (pick_avx2(isa)) return avx2::to_f16(x, out, n);
#else
    pick_avx2(isa);
#endif
    generic::to_f16(x, out, n);
}

}  // namespace metallic::cpu
