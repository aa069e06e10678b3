#include "engine/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "engine/error.h"

namespace metallic {

MappedFile::MappedFile(const std::string& path, bool map) : path_(path) {
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below); it has no
    // effect on reads of a regular file.
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) throw BadRequest(path + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        int err = errno;
        ::close(fd);
        throw BadRequest(path + ": cannot stat: " + std::strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        throw BadRequest(path + ": not a regular file");
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ == 0) {
        ::close(fd);
        throw BadFile(path + ": file is empty");
    }
    if (map) {
        void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
        int err = errno;
        ::close(fd);  // the mapping keeps the file alive
        if (p == MAP_FAILED) throw BadFile(path + ": cannot map: " + std::strerror(err));
        data_ = static_cast<const uint8_t*>(p);
        mapped_ = true;
        return;
    }
    // Anonymous pages, so the copy is page-aligned (the Metal backend wraps it without a copy
    // exactly as it wraps a map) and is released with the same munmap.
    void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        ::close(fd);
        throw BadRequest(path + ": cannot allocate " + std::to_string(size_ >> 20) + " MiB to read the file into");
    }
    auto* dst = static_cast<uint8_t*>(p);
    for (size_t done = 0; done < size_;) {
        const ssize_t got = ::pread(fd, dst + done, size_ - done, off_t(done));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            const int err = got < 0 ? errno : 0;
            ::close(fd);
            ::munmap(p, size_);
            throw BadFile(path + ": cannot read the file" +
                          (err ? std::string(": ") + std::strerror(err) : std::string(" (it shrank while being read)")));
        }
        done += size_t(got);
    }
    ::close(fd);
    ::mprotect(p, size_, PROT_READ);  // the weights are read-only either way
    data_ = dst;
}

MappedFile::~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

void MappedFile::prefetch(size_t offset, size_t len) const {
    if (offset >= size_) return;
    if (len > size_ - offset) len = size_ - offset;
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    size_t start = offset / page * page;
    ::madvise(const_cast<uint8_t*>(data_) + start, len + (offset - start), MADV_WILLNEED);
}

}  // namespace metallic
