// The Metal backend's map from host pointers to (buffer, offset); see buffer_map.h.
#include "metal/buffer_map.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "engine/error.h"
#include "metal/weight_layout.h"

namespace metallic::metal {

BufferMap::BufferMap(gpu::Device& dev, const MappedFile& file, const Weights& w,
                     const std::vector<std::pair<const float*, size_t>>& host_tables)
    : dev_(dev) {
    bool any_copied = false;
    for_each_matrix(w, [&](const Matrix& m) { any_copied |= copied_for_gpu(m); });
    if (any_copied) {
        // Only the matrices the GPU reads from the file are wrapped, each on its own pages: a
        // window over the whole file, bound for them, would make the pages of the copied
        // tensors resident again on a GPU that keeps a buffer's pages resident while it is used.
        copy_weights(w, file.mapped());
        wrap_tensors(file, w);
    } else {
        wrap_weights(file, w);
    }
    copy_host_tables(w, host_tables);
}

void BufferMap::wrap_tensors(const MappedFile& file, const Weights& w) {
    const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    const size_t max_len = dev_.max_buffer_length() / page * page;
    for_each_matrix(w, [&](const Matrix& m) {
        if (copied_.count(m.data) || tensors_.count(m.data)) return;
        const uintptr_t lo = uintptr_t(m.data) / page * page;
        const uintptr_t hi = (uintptr_t(m.data) + m.nbytes + page - 1) / page * page;  // the map covers whole pages
        if (hi - lo > max_len)
            throw Unsupported(file.path() + ": a weight tensor is larger than the GPU's largest buffer");
        tensors_.emplace(m.data, TensorWrap{dev_.wrap(reinterpret_cast<const void*>(lo), hi - lo),
                                            size_t(uintptr_t(m.data) - lo)});
    });
}

void BufferMap::wrap_weights(const MappedFile& file, const Weights& w) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    weights_base_ = file.data();
    if (reinterpret_cast<uintptr_t>(weights_base_) % page)
        throw std::logic_error("metal: the model mapping is not page-aligned");
    const size_t size = (file.size() + page - 1) / page * page;  // the mapping covers whole pages
    const size_t max_len = dev_.max_buffer_length() / page * page;
    size_t largest = 0;
    for_each_matrix(w, [&](const Matrix& m) { largest = std::max(largest, m.nbytes); });
    if (size <= max_len) {
        window_step_ = size;
        windows_.push_back(dev_.wrap(weights_base_, size));
        return;
    }
    // Windows start every `step` bytes and are `max_len` long, so consecutive ones overlap by at
    // least the largest tensor: a tensor starting in window i ends before window i does.
    const size_t overlap = (largest + page - 1) / page * page;
    if (overlap >= max_len) throw Unsupported(file.path() + ": a weight tensor is larger than the GPU's largest buffer");
    window_step_ = max_len - overlap;
    for (size_t start = 0; start < size; start += window_step_)
        windows_.push_back(dev_.wrap(weights_base_ + start, std::min(max_len, size - start)));
}

void BufferMap::copy_host_tables(const Weights& w, const std::vector<std::pair<const float*, size_t>>& host_tables) {
    std::vector<std::pair<const float*, size_t>> tables = host_tables;
    auto add = [&](const std::vector<float>& v) {
        if (!v.empty()) tables.push_back({v.data(), v.size()});
    };
    add(w.output_norm);
    for (const LayerWeights& L : w.layers)
        for (const auto* v : {&L.attn_norm, &L.ffn_norm, &L.q_bias, &L.k_bias, &L.v_bias, &L.q_norm, &L.k_norm,
                              &L.post_attn_norm, &L.post_ffn_norm})
            add(*v);
    // Entries 256-byte aligned: vector loads and any buffer-offset rule are satisfied.
    auto padded = [](size_t n) { return (n + 63) & ~size_t(63); };
    size_t total = 0;
    for (const auto& [p, n] : tables) total += padded(n);
    tables_ = dev_.new_buffer(std::max<size_t>(total, 1) * sizeof(float));
    float* dst = static_cast<float*>(tables_->contents());
    size_t at = 0;
    for (const auto& [p, n] : tables) {
        if (!p) continue;
        std::memcpy(dst + at, p, n * sizeof(float));
        table_at_[p] = at * sizeof(float);
        at += padded(n);
    }
}

float* BufferMap::make_activations(size_t count) {
    act_ = dev_.new_buffer(count * sizeof(float));
    act_base_ = static_cast<const float*>(act_->contents());
    act_count_ = count;
    return static_cast<float*>(act_->contents());
}

BufferRef BufferMap::resolve(const void* p) const {
    const float* f = static_cast<const float*>(p);
    if (f >= act_base_ && f < act_base_ + act_count_) return {act_.get(), size_t(f - act_base_) * sizeof(float)};
    auto it = table_at_.find(f);
    if (it != table_at_.end()) return {tables_.get(), it->second};
    throw std::logic_error("metal: an op was given a pointer outside the backend's buffers");
}

void BufferMap::copy_weights(const Weights& w, bool release_file_pages) {
    const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    for_each_matrix(w, [&](const Matrix& m) {
        if (!copied_for_gpu(m) || copied_.count(m.data)) return;
        if (m.nbytes > dev_.max_buffer_length())
            throw Unsupported("tensor '" + m.name + "' (" + std::to_string(m.nbytes >> 20) +
                              " MiB) is larger than the GPU's largest buffer");
        std::unique_ptr<gpu::Buffer> b = dev_.new_buffer(m.nbytes);
        copy_for_gpu(m, static_cast<uint8_t*>(b->contents()));
        copied_.emplace(m.data, std::move(b));
        // The copy read the tensor's pages of the file map in; nothing reads them on this
        // backend again, so hand back the whole pages inside the tensor: the map is the file's
        // own, read-only, so a later read would fault them back in from the file and lose
        // nothing. Without this a freshly loaded model held its copied weights twice. (Not
        // for a model read into anonymous memory, use_mmap off: there it would free the data.)
        if (!release_file_pages) return;
        const uintptr_t lo = (uintptr_t(m.data) + page - 1) / page * page;
        const uintptr_t hi = (uintptr_t(m.data) + m.nbytes) / page * page;
        if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
    });
}

BufferRef BufferMap::weight(const Matrix& m) const {
    if (!copied_.empty()) {
        auto it = copied_.find(m.data);
        if (it != copied_.end()) return {it->second.get(), 0};
        auto t = tensors_.find(m.data);
        if (t != tensors_.end()) return {t->second.buf.get(), t->second.offset};
        throw std::logic_error("metal: a weight matrix the backend was not given at load");
    }
    const size_t off = size_t(m.data - weights_base_);
    const size_t i = off / window_step_;
    return {windows_[i].get(), off - i * window_step_};
}

}  // namespace metallic::metal
