// The machine's measured limits (machine_limits.cpp), for benchmarks and the bench command.
#pragma once

#include <cstddef>

namespace metallic::cpu {

// Bytes per second of a streaming read over a buffer of `bytes`, on `threads` threads; the
// best of `passes`.
double read_bandwidth(size_t bytes, int threads, int passes);
// Float operations per second (an FMA counts two) of the kernels' vector FMAs on `threads`
// threads; the best of `passes`.
double fma_peak(int threads, int passes);

}  // namespace metallic::cpu
