// The counting layer of the GPU interface: every public operation of gpu.h that the tests and
// the dispatch budget care about is counted here, once, for the simulator and Metal alike.
#include "metal/gpu.h"

#include <stdexcept>

namespace metallic::gpu {

void Encoder::set_weight(int index, const Buffer& b, size_t offset, size_t bytes) {
    ++stats_->weight_binds;
    stats_->declared_weight_bytes += bytes;
    if (!bound_->insert({b.contents(), offset}).second) ++stats_->weight_rebinds;
    do_set_buffer(index, b, offset);
}

void Encoder::dispatch_threadgroups(Size3 groups, Size3 threads) {
    ++stats_->dispatches;
    do_dispatch(groups, threads);
}

void Encoder::barrier() {
    ++stats_->barriers;
    do_barrier();
}

void CommandBuffer::commit() {
    ++stats_->command_buffers;
    do_commit();
}

void CommandBuffer::wait() {
    ++stats_->waits;
    do_wait();
    stats_->gpu_nanoseconds += uint64_t(do_gpu_seconds() * 1e9);
}

std::unique_ptr<Buffer> Device::new_buffer(size_t bytes) {
    ++stats_.buffer_allocations;
    resident_bytes_ += bytes;
    return do_new_buffer(bytes);
}

std::unique_ptr<Buffer> Device::wrap(const void* p, size_t bytes) {
    ++stats_.buffers_wrapped;
    resident_bytes_ += bytes;
    return do_wrap(p, bytes);
}

#ifndef __APPLE__
// Off Apple there is no Metal; gpu_metal.mm provides these on Apple builds.
std::unique_ptr<Device> make_metal_device() { return nullptr; }
bool metal_device_available() { return false; }
std::string metal_device_problem() { return "this machine has no Metal GPU (Metal exists only on Apple platforms)"; }
const char* metal_library_kind() { return "none (no Metal on this platform)"; }
std::map<std::string, std::string> metal_device_info() { return {}; }
#endif

}  // namespace metallic::gpu

namespace metallic::gpu {
#ifdef METALLIC_METAL_SIM
bool sim_available() { return true; }
#else
bool sim_available() { return false; }
std::unique_ptr<Device> make_sim_device() { throw std::runtime_error("this build has no Metal simulator"); }
#endif
}  // namespace metallic::gpu
