// The CPU backend: every op of the forward pass on the host's cores, with kernels picked at run
// time for the best instruction set the CPU has.
#pragma once

#include <memory>

#include "engine/backend.h"

namespace metallic::cpu {

struct CpuOptions {
    int n_ctx = 0;
    int threads = 1;
    bool kv_f32 = false;  // KV cache in float32 instead of float16
    int max_batch = 512;  // most tokens one forward pass processes
};

std::unique_ptr<Backend> make_cpu_backend(const ModelConfig& cfg, const CpuOptions& opt);

}  // namespace metallic::cpu
