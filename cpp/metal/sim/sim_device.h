// Host API of the Metal simulator: find a kernel by host name, fix its function constants
// into a pipeline, and dispatch a grid of threadgroups over plain host memory. Synchronous.
//
// Execution model: threadgroups are spread over a small pool of worker threads; inside a
// threadgroup every thread is a cooperative fiber. Fibers run until they reach a barrier or a
// simd collective, where they wait for the rest of their group (threadgroup or 32-lane
// simdgroup). A group that cannot complete (divergent barrier, early return, lanes at different
// call sites) aborts the process with the .metal file and line.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "metal/sim/sim_runtime.h"

namespace msim {

struct ConstantValue {
    bool is_float = false;
    double f = 0;
    int64_t i = 0;
};

struct Pipeline {
    const KernelInfo* kernel = nullptr;
    std::map<int, ConstantValue> constants;  // function_constant index -> value
};

struct DispatchDesc {
    const Pipeline* pipeline = nullptr;
    std::vector<void*> buffers;   // by [[buffer(n)]] index, offset already applied
    uint32_t groups[3] = {1, 1, 1};   // threadgroups per grid
    uint32_t threads[3] = {1, 1, 1};  // threads per threadgroup
    std::vector<size_t> tg_mem;   // by [[threadgroup(n)]] index, bytes
};

struct Counters {
    uint64_t dispatches = 0;
    uint64_t threadgroups = 0;
    uint64_t threads = 0;
};

// Metal's limits on Apple GPUs; the simulator enforces them so kernels that would fail to
// launch on the device fail here too.
constexpr int kMaxThreadsPerThreadgroup = 1024;
constexpr size_t kMaxThreadgroupMemory = 32768;

class Device {
public:
    // The process-wide simulator: one worker per hardware thread, or METALLIC_SIM_WORKERS
    // (clamped to 1..64).
    static Device& shared();

    Pipeline pipeline(const std::string& name, std::map<int, ConstantValue> constants = {}) const;
    void dispatch(const DispatchDesc& d);

    void set_workers(int n);
    int workers() const { return n_workers_; }
    Counters counters() const;
    void reset_counters();

    static std::vector<std::string> kernel_names();

    ~Device();

private:
    Device();
    struct Impl;
    Impl* impl_;
    int n_workers_ = 1;
};

}  // namespace msim
