// A whole model file in memory, read-only. By default a memory map: weights are used in place
// and loading costs page-table entries, not a copy. A map shares the file's fate: truncating
// the file under it kills the process (SIGBUS) at the next read of a lost page, and rewriting
// it changes the model. With map = false the file is read once into anonymous pages (a copy, as
// large as the file) and later changes to the file cannot reach the loaded model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace metallic {

class MappedFile {
public:
    explicit MappedFile(const std::string& path, bool map = true);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }
    const std::string& path() const { return path_; }
    // Whether data() is the file's own pages (a map), which the OS can always read back from
    // the file; else an anonymous copy, whose pages exist only in memory.
    bool mapped() const { return mapped_; }

    // Ask the OS to start reading [offset, offset+len) ahead of use.
    void prefetch(size_t offset, size_t len) const;

private:
    std::string path_;
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
    bool mapped_ = false;
};

}  // namespace metallic
