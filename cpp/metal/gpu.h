// The small GPU interface the Metal backend is written against: a device, buffers, pipelines
// with function constants, command buffers and one compute encoder per command buffer.
//
// It mirrors the part of Metal the backend uses, with Metal's semantics: encoding records work,
// nothing runs before commit(), and the host may only read results after wait(). Two
// implementations sit below it:
//   gpu_sim.cpp    the CPU simulator (cpp/metal/sim/): records dispatches, runs them at commit
//   gpu_metal.mm   real Metal (Apple only)
//
// The counters live here, above both implementations (the public methods count and forward to
// the protected virtual ones), so what the tests measure on the simulator is what the device
// does on a Mac.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>

namespace metallic::gpu {

// What one model run costs in GPU-interface operations; resettable.
struct Stats {
    uint64_t command_buffers = 0;     // committed
    uint64_t waits = 0;               // CPU blocked on a command buffer
    uint64_t dispatches = 0;
    uint64_t barriers = 0;            // Encoder::barrier calls
    uint64_t buffer_allocations = 0;  // new device memory (wrapping host memory is not counted)
    uint64_t buffers_wrapped = 0;     // no-copy buffers over existing host memory
    uint64_t weight_binds = 0;        // set_weight calls
    uint64_t declared_weight_bytes = 0;  // bytes the host declares those bindings' kernels read
                                         // (what the kernels do read, metal-sim measures:
                                         // sim/README.md)
    uint64_t weight_rebinds = 0;      // bindings of a weight range already bound since the reset
    uint64_t gpu_nanoseconds = 0;     // execution time of the command buffers waited for (Metal:
                                      // GPUEndTime - GPUStartTime; the simulator: its run time)
};

// Memory both the CPU and the GPU see (shared storage on Apple silicon).
class Buffer {
public:
    virtual ~Buffer() = default;
    void* contents() const { return contents_; }
    size_t length() const { return length_; }

protected:
    Buffer(void* contents, size_t length) : contents_(contents), length_(length) {}
    void* contents_;
    size_t length_;
};

// A compiled kernel with its function constants fixed.
class Pipeline {
public:
    virtual ~Pipeline() = default;
    const std::string& name() const { return name_; }
    // Largest threadgroup this pipeline can launch (Metal: maxTotalThreadsPerThreadgroup).
    virtual uint32_t max_threads() const = 0;

protected:
    explicit Pipeline(std::string name) : name_(std::move(name)) {}
    std::string name_;
};

// A function constant value: [[function_constant(index)]] of type bool, int or float.
struct Constant {
    enum Type { Bool, Int, Float } type = Int;
    int64_t i = 0;
    float f = 0;
    static Constant of_bool(bool v) { return {Bool, v ? 1 : 0, 0}; }
    static Constant of_int(int32_t v) { return {Int, v, 0}; }
    static Constant of_float(float v) { return {Float, 0, v}; }
};
using Constants = std::map<int, Constant>;

struct Size3 {
    uint32_t x = 1, y = 1, z = 1;
};

// The compute encoder of a command buffer. Bindings persist across dispatches, as in Metal.
// Dispatches are concurrent (Metal's MTLDispatchTypeConcurrent): between two barriers they may
// run in any order or overlap, so a dispatch that reads or writes what an earlier one wrote (or
// writes what it reads) needs a barrier() between them. The simulator runs the dispatches
// between two barriers last to first, so a missing barrier gives wrong results in the tests.
class Encoder {
public:
    virtual ~Encoder() = default;
    void set_pipeline(const Pipeline& p) { do_set_pipeline(p); }
    // [[buffer(index)]] = buffer contents + offset (activations, cache, scratch).
    void set_buffer(int index, const Buffer& b, size_t offset) { do_set_buffer(index, b, offset); }
    // The same for model weights: counted, with the bytes the kernel will read from there.
    void set_weight(int index, const Buffer& b, size_t offset, size_t bytes);
    // Small argument structs, copied at encode time (Metal: setBytes, up to 4 KiB).
    void set_bytes(int index, const void* data, size_t n) { do_set_bytes(index, data, n); }
    template <typename T> void set_args(int index, const T& args) { set_bytes(index, &args, sizeof(T)); }
    // Length of the kernel's [[threadgroup(index)]] argument.
    void set_threadgroup_memory(int index, size_t bytes) { do_set_threadgroup_memory(index, bytes); }
    void dispatch_threadgroups(Size3 groups, Size3 threads);
    // Every dispatch after it sees the device-memory writes of every dispatch before it (Metal:
    // memoryBarrierWithScope:MTLBarrierScopeBuffers).
    void barrier();

protected:
    explicit Encoder(Stats* stats, std::set<std::pair<const void*, size_t>>* bound)
        : stats_(stats), bound_(bound) {}
    virtual void do_set_pipeline(const Pipeline& p) = 0;
    virtual void do_set_buffer(int index, const Buffer& b, size_t offset) = 0;
    virtual void do_set_bytes(int index, const void* data, size_t n) = 0;
    virtual void do_set_threadgroup_memory(int index, size_t bytes) = 0;
    virtual void do_dispatch(Size3 groups, Size3 threads) = 0;
    virtual void do_barrier() = 0;

private:
    Stats* stats_;
    std::set<std::pair<const void*, size_t>>* bound_;
};

// One command buffer with one compute encoder (concurrent dispatches, ordered by barriers).
// Command buffers of one queue run in commit order, each seeing the writes of the ones before.
class CommandBuffer {
public:
    virtual ~CommandBuffer() = default;
    Encoder& encoder() { return do_encoder(); }
    // Ends encoding and hands the work to the GPU.
    void commit();
    // Blocks until the GPU has finished; host reads of written buffers are valid afterwards.
    void wait();

protected:
    explicit CommandBuffer(Stats* stats) : stats_(stats) {}
    virtual Encoder& do_encoder() = 0;
    virtual void do_commit() = 0;
    virtual void do_wait() = 0;
    // How long the device ran this command buffer, once wait() has returned.
    virtual double do_gpu_seconds() const = 0;

private:
    Stats* stats_;
};

class Device {
public:
    virtual ~Device() = default;
    virtual const char* name() const = 0;
    // Largest single buffer (Metal: maxBufferLength).
    virtual size_t max_buffer_length() const = 0;
    // How much memory the GPU can use without hurting its performance (Metal:
    // recommendedMaxWorkingSetSize); 0 when the device does not say.
    virtual size_t recommended_working_set() const { return 0; }
    // Bytes of every buffer made or wrapped so far (never reset): what the GPU keeps resident.
    size_t resident_bytes() const { return resident_bytes_; }
    // Zero-filled shared memory.
    std::unique_ptr<Buffer> new_buffer(size_t bytes);
    // Host memory used in place (weights in the mmap). On Metal `p` must be page-aligned and
    // `bytes` a multiple of the page size.
    std::unique_ptr<Buffer> wrap(const void* p, size_t bytes);
    std::unique_ptr<Pipeline> pipeline(const std::string& name, const Constants& constants = {}) {
        return do_pipeline(name, constants);
    }
    std::unique_ptr<CommandBuffer> command_buffer() { return do_command_buffer(); }

    const Stats& stats() const { return stats_; }
    void reset_stats() {
        stats_ = Stats{};
        bound_.clear();
    }

protected:
    virtual std::unique_ptr<Buffer> do_new_buffer(size_t bytes) = 0;
    virtual std::unique_ptr<Buffer> do_wrap(const void* p, size_t bytes) = 0;
    virtual std::unique_ptr<Pipeline> do_pipeline(const std::string& name, const Constants& constants) = 0;
    virtual std::unique_ptr<CommandBuffer> do_command_buffer() = 0;

    Stats stats_;
    std::set<std::pair<const void*, size_t>> bound_;  // weight ranges bound since the reset
    size_t resident_bytes_ = 0;
};

// The simulator (throws if this build has none: see sim_available()).
std::unique_ptr<Device> make_sim_device();
bool sim_available();
// The system's Metal device, or nullptr when there is none (always nullptr off Apple).
std::unique_ptr<Device> make_metal_device();  // nullptr unless metal_device_problem() is ""
bool metal_device_available();
std::string metal_device_problem();  // why backend 'metal' cannot run here, or "" if it can
const char* metal_library_kind();    // where the kernels come from: precompiled or embedded
// The system's Metal device as `doctor` reports it: name, family (the newest Apple family it
// supports), max_buffer_length, recommended_max_working_set_size, has_unified_memory. Empty
// when there is no device.
std::map<std::string, std::string> metal_device_info();

}  // namespace metallic::gpu
