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
    // Bytes from each buffer pointer to the end of its buffer, by index: what memory-traffic
    // counting takes for device memory. A buffer without a length (missing or 0) is not counted.
    std::vector<size_t> buffer_lengths;
};

// Memory traffic the lanes generate, measured while counting is on (set_counting). "Device"
// means the bound buffers other than the constant address space; every figure is what the
// kernels' compiled loads and stores did, not what the host declared. Definitions in
// cpp/metal/sim/README.md, "Memory traffic".
struct Traffic {
    static constexpr int kWidths = 5;  // access widths 1, 2, 4, 8, 16 bytes (index = log2)
    uint64_t dispatches = 0, threadgroups = 0, threads = 0;
    uint64_t loaded_bytes = 0, stored_bytes = 0;   // device memory, summed over lanes
    uint64_t lane_loads = 0, lane_stores = 0;      // device accesses of single lanes
    uint64_t load_instructions = 0, store_instructions = 0;  // simdgroup-wide, device
    uint64_t load_width[kWidths] = {}, store_width[kWidths] = {};  // instructions by width
    uint64_t lines_touched = 0;   // distinct 128-byte lines of the device instructions, summed
    uint64_t lines_min = 0;       // the fewest lines their bytes fit in, summed
    uint64_t unique_bytes = 0;    // distinct device lines of each dispatch x 128 (DRAM estimate)
    uint64_t constant_bytes = 0;  // loads from constant-address-space buffers (argument structs)
    uint64_t lane_slots = 0;      // 32 x memory instructions (device and threadgroup)
    uint64_t active_lanes = 0;    // lanes that took part in them
    uint64_t tg_loaded_bytes = 0, tg_stored_bytes = 0, tg_instructions = 0;
    uint64_t bank_conflicts = 0;  // threadgroup-memory cycles beyond the minimum (32 banks x 4 B)
    uint64_t barriers = 0;        // threadgroup_barrier passes, per threadgroup
    uint64_t simd_collectives = 0;  // simd_* / simdgroup_* rendezvous, per simdgroup

    void add(const Traffic& o);
};

struct DispatchTraffic {
    std::string kernel;
    Traffic traffic;
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

    // Memory-traffic counting: off unless METALLIC_SIM_COUNT=1 or set_counting(true); when off
    // the instrumented loads and stores cost a call that returns at once. counting_available()
    // is false in builds without the instrumentation (not GCC, or the ASan build).
    static bool counting_available();
    void set_counting(bool on);
    bool counting() const;
    Traffic traffic() const;                                // since reset_traffic()
    std::map<std::string, Traffic> traffic_by_kernel() const;
    std::vector<DispatchTraffic> dispatch_traffic() const;  // the first kMaxDispatchLog dispatches
    void reset_traffic();
    static constexpr size_t kMaxDispatchLog = 100000;

    static std::vector<std::string> kernel_names();

    ~Device();

private:
    Device();
    struct Impl;
    Impl* impl_;
    int n_workers_ = 1;
};

}  // namespace msim
