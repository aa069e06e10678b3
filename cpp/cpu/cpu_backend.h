// The CPU backend: every op of the forward pass on the host's cores, with kernels picked at run
// time for the best instruction set the CPU has.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"

namespace metallic::cpu {

struct CpuOptions {
    int n_ctx = 0;    // positions per sequence
    int n_seq = 1;    // sequences, each with a KV cache of its own
    int threads = 1;
    bool kv_f32 = false;  // KV cache in float32 instead of float16
    int max_batch = 512;  // most tokens one forward pass processes
};

std::unique_ptr<Backend> make_cpu_backend(const ModelConfig& cfg, const CpuOptions& opt);

// ---- for the op tests (tests/test_cpu_ops.py, through _core's cpu_op_* hooks) ----
// The kernel builds this CPU can run: "generic", and "avx2" where it is built and supported.
std::vector<std::string> usable_isas();
// The CPU backend of one kernel build ("native": the one make_cpu_backend picks); throws
// BadRequest for a build this CPU cannot run.
std::unique_ptr<Backend> make_cpu_backend_for(const std::string& isa, const ModelConfig& cfg,
                                              const CpuOptions& opt);
// float -> half (ops.h: to_f16) in one kernel build, as the float16 KV cache stores values.
void to_f16_for(const std::string& isa, const float* x, uint16_t* out, int64_t n);

}  // namespace metallic::cpu
