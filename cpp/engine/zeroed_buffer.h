// A zero-filled array whose pages become resident only when first written. calloc of a large
// block maps fresh zero pages from the OS instead of writing zeros, so memory sized for the
// worst case (a KV cache for the whole context, logits rows for a full batch) costs only what
// a run actually touches: peak RSS follows the prompt, not the configured limits.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>

namespace metallic {

template <class T>
class ZeroedBuffer {
public:
    ZeroedBuffer() = default;
    explicit ZeroedBuffer(size_t count) { reset(count); }
    ~ZeroedBuffer() { std::free(data_); }
    ZeroedBuffer(const ZeroedBuffer&) = delete;
    ZeroedBuffer& operator=(const ZeroedBuffer&) = delete;

    // Frees the old contents and holds `count` zeros.
    void reset(size_t count) {
        std::free(data_);
        data_ = nullptr;
        size_ = 0;
        if (count == 0) return;
        data_ = static_cast<T*>(std::calloc(count, sizeof(T)));
        if (!data_) throw std::bad_alloc();
        size_ = count;
    }

    T* data() { return data_; }
    const T* data() const { return data_; }
    size_t size() const { return size_; }

private:
    T* data_ = nullptr;
    size_t size_ = 0;
};

}  // namespace metallic
