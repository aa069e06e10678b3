// The GPU interface over the CPU simulator (cpp/metal/sim/).
//
// Command buffers record: each dispatch keeps its pipeline, its bound pointers (buffer contents
// + offset), a copy of its set_bytes data, its grid and its threadgroup memory lengths. commit()
// runs the recorded dispatches, those between two barriers last to first (Metal may run them in
// any order: reversing every pair makes a missing barrier between dependent dispatches give
// wrong results in the tests); wait() then has nothing left to do. Recording first
// and running later keeps Metal's semantics: a host read between encoding and wait() would see
// stale data here just as on the GPU, and set_bytes captures the value at encode time.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "metal/gpu.h"
#include "metal/sim/sim_device.h"

namespace metallic::gpu {
namespace {

constexpr int kMaxBindings = 31;  // Metal's buffer argument table has 31 entries

class SimBuffer final : public Buffer {
public:
    SimBuffer(void* p, size_t n, bool owned) : Buffer(p, n), owned_(owned) {}
    ~SimBuffer() override {
        if (owned_) std::free(contents_);
    }

private:
    bool owned_;
};

class SimPipeline final : public Pipeline {
public:
    SimPipeline(std::string name, msim::Pipeline p) : Pipeline(std::move(name)), p_(std::move(p)) {}
    uint32_t max_threads() const override { return msim::kMaxThreadsPerThreadgroup; }
    const msim::Pipeline& sim() const { return p_; }

private:
    msim::Pipeline p_;
};

// A binding as recorded: a pointer, or an offset into the command buffer's bytes arena (the
// arena may grow while encoding, so pointers into it are made at commit).
struct Binding {
    void* ptr = nullptr;
    int64_t arena = -1;
    size_t length = 0;  // bytes from the bound address to the buffer's end (traffic counting)
};

struct Recorded {
    const SimPipeline* pipeline;
    Binding bindings[kMaxBindings];
    int n_bindings;
    Size3 groups, threads;
    std::vector<size_t> tg_mem;
};

class SimEncoder final : public Encoder {
public:
    SimEncoder(Stats* s, std::set<std::pair<const void*, size_t>>* bound) : Encoder(s, bound) {}

    std::vector<Recorded> recorded;
    std::vector<size_t> barriers;  // recorded.size() at each barrier
    std::vector<uint8_t> arena;

protected:
    void do_set_pipeline(const Pipeline& p) override { pipeline_ = static_cast<const SimPipeline*>(&p); }
    void do_set_buffer(int index, const Buffer& b, size_t offset) override {
        check(index);
        bindings_[index] = {static_cast<uint8_t*>(b.contents()) + offset, -1,
                            b.length() > offset ? b.length() - offset : 0};
    }
    void do_set_bytes(int index, const void* data, size_t n) override {
        check(index);
        if (n > 4096) throw std::invalid_argument("gpu: set_bytes is limited to 4 KiB");
        const size_t at = (arena.size() + 15) & ~size_t(15);
        arena.resize(at + n);
        std::memcpy(arena.data() + at, data, n);
        bindings_[index] = {nullptr, int64_t(at), n};
    }
    void do_set_threadgroup_memory(int index, size_t bytes) override {
        if (index < 0 || index >= kMaxBindings) throw std::invalid_argument("gpu: threadgroup index out of range");
        if (tg_mem_.size() <= size_t(index)) tg_mem_.resize(size_t(index) + 1, 0);
        tg_mem_[size_t(index)] = bytes;
    }
    void do_dispatch(Size3 groups, Size3 threads) override {
        if (!pipeline_) throw std::logic_error("gpu: dispatch without a pipeline");
        Recorded r{};
        r.pipeline = pipeline_;
        r.n_bindings = pipeline_->sim().kernel->n_buffers;
        for (int i = 0; i < r.n_bindings; ++i) r.bindings[i] = bindings_[i];
        r.groups = groups;
        r.threads = threads;
        r.tg_mem = tg_mem_;
        recorded.push_back(std::move(r));
    }
    void do_barrier() override { barriers.push_back(recorded.size()); }

private:
    static void check(int index) {
        if (index < 0 || index >= kMaxBindings) throw std::invalid_argument("gpu: buffer index out of range");
    }
    const SimPipeline* pipeline_ = nullptr;
    Binding bindings_[kMaxBindings];
    std::vector<size_t> tg_mem_;
};

class SimCommandBuffer final : public CommandBuffer {
public:
    SimCommandBuffer(Stats* s, std::set<std::pair<const void*, size_t>>* bound, const std::string* skip)
        : CommandBuffer(s), enc_(s, bound), skip_(skip) {}

protected:
    Encoder& do_encoder() override { return enc_; }
    void do_commit() override {
        if (committed_) throw std::logic_error("gpu: command buffer committed twice");
        committed_ = true;
        const auto t0 = std::chrono::steady_clock::now();
        msim::Device& dev = msim::Device::shared();
        msim::DispatchDesc d;
        for (const size_t i : order()) {
            const Recorded& r = enc_.recorded[i];
            if (!skip_->empty() && r.pipeline->name().rfind(*skip_, 0) == 0) continue;
            d.pipeline = &r.pipeline->sim();
            d.buffers.assign(size_t(r.n_bindings), nullptr);
            d.buffer_lengths.assign(size_t(r.n_bindings), 0);
            for (int i = 0; i < r.n_bindings; ++i) {
                const Binding& b = r.bindings[i];
                d.buffers[size_t(i)] = b.arena >= 0 ? enc_.arena.data() + b.arena : b.ptr;
                d.buffer_lengths[size_t(i)] = b.length;
            }
            d.groups[0] = r.groups.x, d.groups[1] = r.groups.y, d.groups[2] = r.groups.z;
            d.threads[0] = r.threads.x, d.threads[1] = r.threads.y, d.threads[2] = r.threads.z;
            d.tg_mem = r.tg_mem;
            dev.dispatch(d);
        }
        seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    double do_gpu_seconds() const override { return seconds_; }
    // The recorded dispatches in the order they run: each group between two barriers reversed.
    std::vector<size_t> order() const {
        std::vector<size_t> out;
        std::vector<size_t> cuts = enc_.barriers;
        cuts.push_back(enc_.recorded.size());
        size_t begin = 0;
        for (const size_t end : cuts) {
            for (size_t i = end; i > begin; --i) out.push_back(i - 1);
            begin = std::max(begin, end);
        }
        return out;
    }
    void do_wait() override {
        if (!committed_) throw std::logic_error("gpu: wait on a command buffer that was not committed");
    }

private:
    SimEncoder enc_;
    const std::string* skip_;  // the device's planted fault (see SimDevice)
    bool committed_ = false;
    double seconds_ = 0;  // the run of the dispatches at commit
};

class SimDevice final : public Device {
public:
    SimDevice() {
        // A GPU's maxBufferLength can be smaller than a model file; tests set this to exercise
        // the backend's windows over the weights.
        if (const char* env = std::getenv("METALLIC_SIM_MAX_BUFFER_LENGTH"))
            if (const long long v = std::atoll(env); v > 0) max_buffer_length_ = size_t(v);
        // A planted kernel bug for the tests of the Metal self-test (python/metallic/selftest.py):
        // dispatches of kernels whose name starts with this are dropped, as if the kernel wrote
        // nothing. Read once, when the device is made.
        if (const char* env = std::getenv("METALLIC_SIM_SKIP_KERNEL")) skip_ = env;
        // A GPU's recommended working set, for the tests of the warning a model larger than it
        // gets; unset, the simulator does not say (0), as a device without one would.
        if (const char* env = std::getenv("METALLIC_SIM_WORKING_SET"))
            if (const long long v = std::atoll(env); v > 0) working_set_ = size_t(v);
    }
    const char* name() const override { return "metal-sim"; }
    size_t max_buffer_length() const override { return max_buffer_length_; }
    size_t recommended_working_set() const override { return working_set_; }

protected:
    std::unique_ptr<Buffer> do_new_buffer(size_t bytes) override {
        const size_t n = ((bytes ? bytes : 1) + 4095) & ~size_t(4095);
        void* p = std::aligned_alloc(4096, n);
        if (!p) throw std::bad_alloc();
        std::memset(p, 0, n);
        return std::make_unique<SimBuffer>(p, bytes, true);
    }
    std::unique_ptr<Buffer> do_wrap(const void* p, size_t bytes) override {
        // The simulator reads host memory directly: any pointer will do.
        return std::make_unique<SimBuffer>(const_cast<void*>(p), bytes, false);
    }
    std::unique_ptr<Pipeline> do_pipeline(const std::string& name, const Constants& constants) override {
        std::map<int, msim::ConstantValue> values;
        for (const auto& [index, c] : constants) {
            msim::ConstantValue v;
            v.is_float = c.type == Constant::Float;
            v.f = c.f;
            v.i = c.i;
            values[index] = v;
        }
        return std::make_unique<SimPipeline>(name, msim::Device::shared().pipeline(name, std::move(values)));
    }
    std::unique_ptr<CommandBuffer> do_command_buffer() override {
        return std::make_unique<SimCommandBuffer>(&stats_, &bound_, &skip_);
    }

private:
    size_t max_buffer_length_ = size_t(1) << 40;
    std::string skip_;
    size_t working_set_ = 0;
};

}  // namespace

std::unique_ptr<Device> make_sim_device() { return std::make_unique<SimDevice>(); }

}  // namespace metallic::gpu
