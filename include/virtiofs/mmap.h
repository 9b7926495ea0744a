// MmapRegion: sole owner of one mmap(2) mapping; unmaps on destruction.
#ifndef VIRTIOFS_MMAP_H_
#define VIRTIOFS_MMAP_H_

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "virtiofs/result.h"

namespace virtiofs {

class MmapRegion {
 public:
  MmapRegion() = default;
  MmapRegion(MmapRegion&& other) noexcept
      : addr_(std::exchange(other.addr_, nullptr)),
        size_(std::exchange(other.size_, 0)),
        prot_(std::exchange(other.prot_, 0)) {}
  MmapRegion& operator=(MmapRegion&& other) noexcept;
  MmapRegion(const MmapRegion&) = delete;
  MmapRegion& operator=(const MmapRegion&) = delete;
  ~MmapRegion();

  // Maps `size` bytes of `fd` at `offset` (MAP_SHARED). `prot` is PROT_READ,
  // PROT_WRITE or both. Fails with the mmap errno, or EINVAL for size 0.
  static Result<MmapRegion> MapFile(int fd, uint64_t offset, size_t size, int prot);
  // Maps `size` bytes of anonymous private memory, read-write.
  static Result<MmapRegion> MapAnonymous(size_t size);
  // Adopts an existing mapping; it will be unmapped with munmap(addr, size).
  static MmapRegion Adopt(void* addr, size_t size, int prot);

  uint8_t* data() const { return static_cast<uint8_t*>(addr_); }
  size_t size() const { return size_; }
  int prot() const { return prot_; }
  bool valid() const { return addr_ != nullptr; }

 private:
  MmapRegion(void* addr, size_t size, int prot) : addr_(addr), size_(size), prot_(prot) {}
  void* addr_ = nullptr;
  size_t size_ = 0;
  int prot_ = 0;
};

}  // namespace virtiofs

#endif  // VIRTIOFS_MMAP_H_
