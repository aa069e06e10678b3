// Measures the machine's read bandwidth with a plain streaming sum over a buffer much larger
// than the caches, split over threads like the matmuls are. Benchmarks report the matvec
// kernels' GB/s against this number, so "at the memory limit" is a measurement, not a guess.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "cpu/thread_pool.h"

namespace metallic::cpu {

double read_bandwidth(size_t bytes, int threads, int passes) {
    const size_t n = bytes / sizeof(uint64_t);
    std::vector<uint64_t> buf(n, 1);  // touched once here so the timed passes only read
    ThreadPool pool(threads);
    const int64_t chunks = int64_t(threads) * 16;
    std::vector<uint64_t> sums(size_t(chunks), 0);
    double best = 1e30;
    for (int p = 0; p < passes; ++p) {
        const auto t0 = std::chrono::steady_clock::now();
        pool.parallel_for(chunks, [&](int64_t c, int) {
            const size_t lo = n * size_t(c) / size_t(chunks), hi = n * size_t(c + 1) / size_t(chunks);
            uint64_t a = 0, b = 0, d = 0, e = 0;  // four chains so the loop is not latency-bound
            size_t i = lo;
            for (; i + 4 <= hi; i += 4) {
                a += buf[i];
                b += buf[i + 1];
                d += buf[i + 2];
                e += buf[i + 3];
            }
            for (; i < hi; ++i) a += buf[i];
            sums[size_t(c)] = a + b + d + e;
        });
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    volatile uint64_t sink = 0;
    for (uint64_t s : sums) sink = sink + s;
    return double(n * sizeof(uint64_t)) / best;
}

}  // namespace metallic::cpu
