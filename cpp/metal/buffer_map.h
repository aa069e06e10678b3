// Where everything the Metal backend's ops are given lives on the GPU, as (buffer, offset):
//   weights      the mmap'd file wrapped in place (no copy): one buffer, or on a GPU whose
//                maxBufferLength is smaller than the file, page-aligned windows that overlap
//                by the largest tensor, so that every tensor lies wholly inside one of them;
//                except the formats the GPU reads in a layout of its own (weight_layout.h),
//                copied once into a buffer per tensor in that layout; when there are such,
//                the other matrices are wrapped each on its own pages instead of windows
//   host tables  the small float vectors ops receive by pointer (norm weights, biases, RoPE
//                frequency tables), copied once into one buffer
//   activations  the engine's activation arrays, in one shared buffer the backend owns
//                (Backend::activations()); a pointer into it resolves by subtraction
// All of it is set up at load; lookups allocate nothing.
#pragma once

#include <cstddef>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/mapped_file.h"
#include "engine/weights.h"
#include "metal/gpu.h"

namespace metallic::metal {

struct BufferRef {
    const gpu::Buffer* buf = nullptr;
    size_t offset = 0;
};

// Every weight matrix of the model, once.
template <typename Fn> void for_each_matrix(const Weights& w, Fn fn) {
    fn(w.token_embd);
    fn(w.output);
    for (const LayerWeights& L : w.layers)
        for (const Matrix* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) fn(*m);
}

class BufferMap {
public:
    // host_tables: host float arrays beyond the weights' own vectors (the engine's RoPE tables).
    BufferMap(gpu::Device& dev, const MappedFile& file, const Weights& w,
              const std::vector<std::pair<const float*, size_t>>& host_tables);

    // Allocates the activation buffer (count floats, zeroed) and returns its contents.
    float* make_activations(size_t count);

    // Whether p points into the activation buffer.
    bool is_activation(const void* p) const {
        const float* f = static_cast<const float*>(p);
        return f >= act_base_ && f < act_base_ + act_count_;
    }
    // An activation or a copied host vector; throws std::logic_error for anything else.
    BufferRef resolve(const void* p) const;
    // A weight matrix: its window and the offset of its first byte there.
    BufferRef weight(const Matrix& m) const;

private:
    void wrap_weights(const MappedFile& file, const Weights& w);
    void wrap_tensors(const MappedFile& file, const Weights& w);
    void copy_weights(const Weights& w, bool release_file_pages);
    void copy_host_tables(const Weights& w, const std::vector<std::pair<const float*, size_t>>& host_tables);

    gpu::Device& dev_;
    const uint8_t* weights_base_ = nullptr;
    size_t window_step_ = 1;
    std::vector<std::unique_ptr<gpu::Buffer>> windows_;
    // The copied tensors (weight_layout.h, copied_for_gpu), by their data in the file (a tied
    // output shares the embedding's).
    std::unordered_map<const uint8_t*, std::unique_ptr<gpu::Buffer>> copied_;
    // With copied tensors, the others: each its own pages of the file, wrapped.
    struct TensorWrap {
        std::unique_ptr<gpu::Buffer> buf;
        size_t offset;
    };
    std::unordered_map<const uint8_t*, TensorWrap> tensors_;
    std::unique_ptr<gpu::Buffer> tables_;
    std::unordered_map<const float*, size_t> table_at_;
    std::unique_ptr<gpu::Buffer> act_;
    const float* act_base_ = nullptr;
    size_t act_count_ = 0;
};

}  // namespace metallic::metal
