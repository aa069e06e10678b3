// The machine's two limits, measured: streaming read bandwidth (what decode is bound by) and
// the multiply-add peak (what prefill is bound by). Benchmarks and the closing numbers report
// the kernels against these, so "at the memory limit" or "at the FMA peak" is a measurement,
// not a guess. Compiled once per instruction set, like the kernels they are compared with.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "cpu/formats/simd.h"
#include "cpu/thread_pool.h"

namespace metallic::cpu::METALLIC_ISA {

namespace {

template <class Body>
double best_seconds(ThreadPool& pool, int64_t tasks, int passes, Body body) {
    double best = 1e30;
    for (int p = 0; p < passes; ++p) {
        const auto t0 = std::chrono::steady_clock::now();
        pool.parallel_for(tasks, body);
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}

}  // namespace

// Bytes per second: vector loads summed into four accumulators over a buffer far larger than
// the caches, split over threads like the matmuls are. Measured here: AVX2 loads read 30 GB/s
// with two threads where scalar 64-bit loads read 27, and software prefetching made it slower.
double read_bandwidth(size_t bytes, int threads, int passes) {
    const int64_t n = int64_t(bytes / sizeof(float)) & ~int64_t(31);
    std::vector<float> buf(size_t(n), 1.0f);  // touched once here so the timed passes only read
    ThreadPool pool(threads);
    const int64_t chunks = int64_t(threads) * 16;
    std::vector<float> sums(size_t(chunks), 0.0f);
    const double s = best_seconds(pool, chunks, passes, [&](int64_t c, int) {
        const int64_t lo = n * c / chunks & ~int64_t(31), hi = n * (c + 1) / chunks & ~int64_t(31);
        F8 a = zero8(), b = zero8(), d = zero8(), e = zero8();
        for (int64_t i = lo; i < hi; i += 32) {
            a = add8(a, load8(buf.data() + i));
            b = add8(b, load8(buf.data() + i + 8));
            d = add8(d, load8(buf.data() + i + 16));
            e = add8(e, load8(buf.data() + i + 24));
        }
        sums[size_t(c)] = hsum8(add8(add8(a, b), add8(d, e)));
    });
    volatile float sink = 0;
    for (float x : sums) sink = sink + x;
    return double(n) * sizeof(float) / s;
}

// Float operations per second of 8-lane FMAs on `threads` threads: twelve independent chains,
// enough to cover the FMA latency on every core we know (4 cycles x 2 pipes on Zen 3).
double fma_peak(int threads, int passes) {
    constexpr int64_t kSteps = 20'000'000;
    ThreadPool pool(threads);
    std::vector<float> sums(size_t(threads), 0.0f);
    const double s = best_seconds(pool, threads, passes, [&](int64_t c, int) {
        F8 acc[12];
        for (int j = 0; j < 12; ++j) acc[j] = splat8(0.01f * float(j + c));
        const F8 m = splat8(0.999f), a = splat8(1e-4f);
        for (int64_t i = 0; i < kSteps; ++i)
            for (int j = 0; j < 12; ++j) acc[j] = fma8(acc[j], m, a);
        F8 t = zero8();
        for (int j = 0; j < 12; ++j) t = add8(t, acc[j]);
        sums[size_t(c)] = hsum8(t);
    });
    volatile float sink = 0;
    for (float x : sums) sink = sink + x;
    return double(threads) * kSteps * 12 * 16 / s;
}

}  // namespace metallic::cpu::METALLIC_ISA
