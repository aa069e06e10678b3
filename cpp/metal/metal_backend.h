// The Metal backend: every op of the forward pass as a kernel of metal/*.metal, encoded into a
// command buffer of the GPU interface (gpu.h) and run by sync(). Runs on real Metal ("metal")
// or on the CPU simulator ("metal-sim") with the same code above the interface.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "engine/backend.h"
#include "engine/mapped_file.h"
#include "engine/weights.h"
#include "metal/gpu.h"

namespace metallic::metal {

struct MetalOptions {
    int n_ctx = 0;  // positions per sequence
    int n_seq = 1;  // sequences, each with a KV cache of its own
    bool kv_f32 = false;
    int max_batch = 512;
};

// host_tables: further host float arrays ops will be given besides the weights' own vectors
// (the engine's RoPE frequency tables); they are copied to the GPU once, here.
std::unique_ptr<Backend> make_metal_backend(std::unique_ptr<gpu::Device> device, const ModelConfig& cfg,
                                            const MetalOptions& opt, const MappedFile& file, const Weights& w,
                                            const std::vector<std::pair<const float*, size_t>>& host_tables);

}  // namespace metallic::metal
