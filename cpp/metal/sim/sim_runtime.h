// The boundary between simulated kernels and the simulator's runtime (sim_device.cpp).
//
// Generated kernel translation units see this header before metal_compat.h defines the MSL
// keyword macros (device, thread, constant, kernel), so it must stay plain C++ and must not
// include anything those macros would break afterwards.
#pragma once

#include <cstddef>
#include <cstdint>

namespace msim {

constexpr int kSimdWidth = 32;

// Everything one simulated thread needs to build its kernel arguments. The generated launcher
// turns these into the kernel's parameters according to each parameter's attribute.
struct ThreadArgs {
    void* const* buffers;  // [[buffer(n)]] -> pointer with the bound offset applied
    void* const* tg;       // [[threadgroup(n)]] -> fresh threadgroup allocation
    uint32_t tpig[3];      // thread_position_in_grid
    uint32_t tgpig[3];     // threadgroup_position_in_grid
    uint32_t tpitg[3];     // thread_position_in_threadgroup
    uint32_t ntg[3];       // threads_per_threadgroup
    uint32_t ntgs[3];      // threadgroups_per_grid
    uint32_t tpg[3];       // threads_per_grid
    uint32_t tiitg;        // thread_index_in_threadgroup
    uint32_t lane;         // thread_index_in_simdgroup
    uint32_t sgitg;        // simdgroup_index_in_threadgroup
    uint32_t nsg;          // simdgroups_per_threadgroup
};

using LaunchFn = void (*)(const ThreadArgs&);

// One registered kernel (one host name). Filled in by generated code.
struct KernelInfo {
    const char* name;      // host name
    const char* file;      // .metal file that instantiates it
    int line;
    LaunchFn launch;
    int n_buffers;         // highest [[buffer(n)]] + 1
    int n_tg;              // highest [[threadgroup(n)]] + 1
    uint64_t constant_buffers;  // bit n: [[buffer(n)]] is in the constant address space
};

bool register_kernel(const KernelInfo& k);
// The kernel's launcher compiled with the memory-traffic instrumentation (*.count.sim.cpp).
bool register_counting_launcher(const char* name, LaunchFn launch);

// A lane's value in a simd collective. 16 bytes fit every scalar and vector up to float4.
struct Slot {
    alignas(16) unsigned char v[16];
    int64_t param;  // per-lane argument (shuffle source lane, delta, ...)
};
// Computes every lane's result from every lane's input; runs once, in the last lane to arrive.
using CollectiveFn = void (*)(const Slot* in, Slot* out, int n_lanes);

// Rendezvous of the calling thread's simdgroup. All lanes that exist must reach the same call
// site; returns this lane's result in *out. fn may be null (a pure synchronisation point).
void simd_collective(const void* in, size_t size, int64_t param, void* out, CollectiveFn fn, const char* what,
                     const char* file, int line);
// Rendezvous of the whole threadgroup.
void threadgroup_barrier(const char* file, int line);
// The k-th `threadgroup T x;` declaration a thread executes gets the threadgroup's k-th block.
void* tg_decl(size_t size, size_t align, const char* file, int line);

// Memory-traffic counting (sim_traffic.cpp). The kernels' loads and stores reach it through
// the compiler's instrumentation; these two are for the operations the simulator carries out
// differently from the GPU (simdgroup_load/store: every lane copies the whole 8x8 matrix here,
// each lane moves its own share on the GPU). count_pause(true) stops counting this lane's
// accesses and returns whether it was paused; count_access records one access of this lane at
// the static site `site` (any value that identifies the source location).
// count_lane() is the calling lane's index in its simdgroup while counting, else -1.
bool count_pause(bool pause);
void count_access(const void* addr, size_t size, bool store, uintptr_t site);
int count_lane();

// Function constants of the running pipeline.
bool fc_defined(int index);
double fc_float(int index, const char* name, const char* file, int line);
int64_t fc_int(int index, const char* name, const char* file, int line);

[[noreturn]] void fail(const char* file, int line, const char* fmt, ...) __attribute__((format(printf, 3, 4)));

}  // namespace msim
