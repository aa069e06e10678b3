// A read-only memory map of a whole model file. Weights are used in place from this mapping:
// loading a model costs page-table entries, not a copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace metallic {

class MappedFile {
public:
    explicit MappedFile(const std::string& path);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }
    const std::string& path() const { return path_; }

    // Ask the OS to start reading [offset, offset+len) ahead of use.
    void prefetch(size_t offset, size_t len) const;

private:
    std::string path_;
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
};

}  // namespace metallic
