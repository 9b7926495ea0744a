#include "virtiofs/mmap.h"

#include <sys/mman.h>

#include <cerrno>

namespace virtiofs {

MmapRegion& MmapRegion::operator=(MmapRegion&& other) noexcept {
  if (this != &other) {
    if (addr_ != nullptr) ::munmap(addr_, size_);
    addr_ = std::exchange(other.addr_, nullptr);
    size_ = std::exchange(other.size_, 0);
    prot_ = std::exchange(other.prot_, 0);
  }
  return *this;
}

MmapRegion::~MmapRegion() {
  if (addr_ != nullptr) ::munmap(addr_, size_);
}

Result<MmapRegion> MmapRegion::MapFile(int fd, uint64_t offset, size_t size, int prot) {
  if (size == 0) return Errno{EINVAL};
  void* p = ::mmap(nullptr, size, prot, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) return Errno{errno};
  return MmapRegion(p, size, prot);
}

Result<MmapRegion> MmapRegion::MapAnonymous(size_t size) {
  if (size == 0) return Errno{EINVAL};
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return Errno{errno};
  return MmapRegion(p, size, PROT_READ | PROT_WRITE);
}

MmapRegion MmapRegion::Adopt(void* addr, size_t size, int prot) {
  return MmapRegion(addr, size, prot);
}

}  // namespace virtiofs
