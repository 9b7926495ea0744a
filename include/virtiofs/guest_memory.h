// Guest memory: the table of guest RAM regions shared by the front-end, and
// checked translation of guest addresses into host iovecs.
//
// A GuestMemoryMap is immutable once built and is shared by
// std::shared_ptr<const GuestMemoryMap>. A vhost-user SET_MEM_TABLE builds a
// new map and swaps the pointer; a descriptor chain in flight holds its own
// reference, so the mappings it points into stay valid until it completes.
//
// Every address and length here comes from the guest or the front-end and is
// untrusted: each sum is checked for overflow, and a range that is not fully
// backed by regions (a hole, the end of a region with nothing adjacent) is an
// error, never a fault.
#ifndef VIRTIOFS_GUEST_MEMORY_H_
#define VIRTIOFS_GUEST_MEMORY_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "virtiofs/mmap.h"

namespace virtiofs {

// A list of host buffers. Eight entries inline covers nearly every FUSE request
// without a heap allocation.
using IovecVector = absl::InlinedVector<iovec, 8>;

enum class Access { kRead, kWrite };

// One region of guest RAM, as vhost-user describes it (VhostUserMemoryRegion).
struct GuestMemoryRegion {
  uint64_t guest_phys_addr = 0;  // First guest physical address of the region.
  uint64_t size = 0;             // Length in bytes; never 0.
  uint64_t user_addr = 0;        // The front-end's virtual address of the first byte.
  uint64_t mmap_offset = 0;      // Offset of the first byte inside `mapping`.
  // The host mapping; must cover [mmap_offset, mmap_offset + size). Shared so
  // that a new map built from an old one (ADD_MEM_REG, REM_MEM_REG) keeps the
  // same mapping alive without mapping it again.
  std::shared_ptr<const MmapRegion> mapping;
};

// The default limit on regions: QEMU's largest vhost-user slot count
// (VHOST_USER_MAX_RAM_SLOTS is 509 in QEMU's vhost-user.c).
inline constexpr size_t kMaxMemoryRegions = 509;

class GuestMemoryMap {
 public:
  using Ptr = std::shared_ptr<const GuestMemoryMap>;

  // Validates and builds a map. Fails (InvalidArgument) on: more than
  // `max_regions` regions, a region of size 0, a missing mapping, a guest
  // physical, user or mmap range that overflows 64 bits, a region that does
  // not fit in its mapping, and regions overlapping in guest physical or in
  // front-end virtual address space. An empty map is valid (translates nothing).
  static absl::StatusOr<Ptr> Create(std::vector<GuestMemoryRegion> regions,
                                    size_t max_regions = kMaxMemoryRegions);

  // Regions sorted by guest physical address.
  std::span<const GuestMemoryRegion> regions() const { return regions_; }

  // Appends to `out` the host iovecs covering guest physical
  // [gpa, gpa + len), which may span adjacent regions. Fails (OutOfRange) if
  // any byte is unmapped or the range overflows, and (PermissionDenied) if a
  // region's mapping does not allow `access`; on failure `out` is restored to
  // its size on entry. A zero length appends nothing and succeeds.
  absl::Status Translate(uint64_t gpa, uint64_t len, Access access, IovecVector* out) const;

  // The host address of [gpa, gpa + len) when it lies inside one region (for
  // ring structures, which the device accesses as arrays). `len` may be 0.
  absl::StatusOr<uint8_t*> TranslateContiguous(uint64_t gpa, uint64_t len, Access access) const;

  // The guest physical address of front-end virtual address `uaddr`, with
  // [uaddr, uaddr + len) inside one region (vhost-user SET_VRING_ADDR).
  absl::StatusOr<uint64_t> UserToGuest(uint64_t uaddr, uint64_t len) const;

  // Copies between guest memory and a host buffer; the range may span regions.
  absl::Status Read(uint64_t gpa, void* dst, size_t len) const;
  absl::Status Write(uint64_t gpa, const void* src, size_t len) const;

 private:
  explicit GuestMemoryMap(std::vector<GuestMemoryRegion> regions);
  // The region containing `gpa`, or nullptr.
  const GuestMemoryRegion* FindGuest(uint64_t gpa) const;
  static bool Allows(const GuestMemoryRegion& r, Access access);

  std::vector<GuestMemoryRegion> regions_;  // Sorted by guest_phys_addr.
  std::vector<uint32_t> by_user_;           // Indexes into regions_ sorted by user_addr.
};

}  // namespace virtiofs

#endif  // VIRTIOFS_GUEST_MEMORY_H_
