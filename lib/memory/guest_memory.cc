#include "virtiofs/guest_memory.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"

namespace virtiofs {
namespace {

// True when a + b overflows 64 bits.
bool AddOverflows(uint64_t a, uint64_t b) {
  uint64_t unused;
  return __builtin_add_overflow(a, b, &unused);
}

}  // namespace

GuestMemoryMap::GuestMemoryMap(std::vector<GuestMemoryRegion> regions)
    : regions_(std::move(regions)) {
  by_user_.resize(regions_.size());
  for (uint32_t i = 0; i < by_user_.size(); ++i) by_user_[i] = i;
  std::sort(by_user_.begin(), by_user_.end(), [this](uint32_t a, uint32_t b) {
    return regions_[a].user_addr < regions_[b].user_addr;
  });
}

absl::StatusOr<GuestMemoryMap::Ptr> GuestMemoryMap::Create(std::vector<GuestMemoryRegion> regions,
                                                           size_t max_regions) {
  if (regions.size() > max_regions) {
    return absl::InvalidArgumentError(
        absl::StrFormat("memory table: %d regions, limit %d", regions.size(), max_regions));
  }
  for (const GuestMemoryRegion& r : regions) {
    if (r.size == 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("memory region at gpa 0x%x: size 0", r.guest_phys_addr));
    }
    if (r.mapping == nullptr || !r.mapping->valid()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("memory region at gpa 0x%x: no host mapping", r.guest_phys_addr));
    }
    // The last byte of each range must be addressable: start + size may equal
    // 2^64 only if it does not wrap, so check start + (size - 1).
    if (AddOverflows(r.guest_phys_addr, r.size - 1) || AddOverflows(r.user_addr, r.size - 1) ||
        AddOverflows(r.mmap_offset, r.size)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "memory region at gpa 0x%x size 0x%x: address overflow", r.guest_phys_addr, r.size));
    }
    if (r.mmap_offset + r.size > r.mapping->size()) {  // Checked above: no overflow.
      return absl::InvalidArgumentError(
          absl::StrFormat("memory region at gpa 0x%x: offset 0x%x + size 0x%x beyond its "
                          "mapping of 0x%x bytes",
                          r.guest_phys_addr, r.mmap_offset, r.size, r.mapping->size()));
    }
  }
  std::sort(regions.begin(), regions.end(), [](const auto& a, const auto& b) {
    return a.guest_phys_addr < b.guest_phys_addr;
  });
  for (size_t i = 1; i < regions.size(); ++i) {
    const auto& prev = regions[i - 1];
    // prev.guest_phys_addr + prev.size - 1 is checked above not to overflow.
    if (prev.guest_phys_addr + (prev.size - 1) >= regions[i].guest_phys_addr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("memory regions at gpa 0x%x and 0x%x overlap", prev.guest_phys_addr,
                          regions[i].guest_phys_addr));
    }
  }
  Ptr map(new GuestMemoryMap(std::move(regions)));
  for (size_t i = 1; i < map->by_user_.size(); ++i) {
    const auto& prev = map->regions_[map->by_user_[i - 1]];
    const auto& cur = map->regions_[map->by_user_[i]];
    if (prev.user_addr + (prev.size - 1) >= cur.user_addr) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "memory regions at user address 0x%x and 0x%x overlap", prev.user_addr, cur.user_addr));
    }
  }
  return map;
}

const GuestMemoryRegion* GuestMemoryMap::FindGuest(uint64_t gpa) const {
  // First region starting after gpa; the candidate is the one before it.
  auto it = std::upper_bound(regions_.begin(), regions_.end(), gpa,
                             [](uint64_t a, const GuestMemoryRegion& r) {
                               return a < r.guest_phys_addr;
                             });
  if (it == regions_.begin()) return nullptr;
  --it;
  if (gpa - it->guest_phys_addr >= it->size) return nullptr;  // gpa >= start here.
  return &*it;
}

bool GuestMemoryMap::Allows(const GuestMemoryRegion& r, Access access) {
  int need = access == Access::kWrite ? PROT_WRITE : PROT_READ;
  return (r.mapping->prot() & need) != 0;
}

absl::Status GuestMemoryMap::Translate(uint64_t gpa, uint64_t len, Access access,
                                       IovecVector* out) const {
  if (len == 0) return absl::OkStatus();
  if (AddOverflows(gpa, len - 1)) {
    return absl::OutOfRangeError(
        absl::StrFormat("guest range 0x%x+0x%x overflows", gpa, len));
  }
  const size_t entry_size = out->size();
  uint64_t addr = gpa;
  uint64_t left = len;
  while (left > 0) {
    const GuestMemoryRegion* r = FindGuest(addr);
    if (r == nullptr) {
      out->resize(entry_size);
      return absl::OutOfRangeError(absl::StrFormat(
          "guest range 0x%x+0x%x: address 0x%x is not mapped", gpa, len, addr));
    }
    if (!Allows(*r, access)) {
      out->resize(entry_size);
      return absl::PermissionDeniedError(absl::StrFormat(
          "guest range 0x%x+0x%x: region at 0x%x is not %s", gpa, len, r->guest_phys_addr,
          access == Access::kWrite ? "writable" : "readable"));
    }
    uint64_t offset = addr - r->guest_phys_addr;
    uint64_t chunk = std::min(left, r->size - offset);
    out->push_back(iovec{r->mapping->data() + r->mmap_offset + offset, chunk});
    left -= chunk;
    addr += chunk;  // Cannot overflow: addr + chunk - 1 <= gpa + len - 1, checked above.
  }
  return absl::OkStatus();
}

absl::StatusOr<uint8_t*> GuestMemoryMap::TranslateContiguous(uint64_t gpa, uint64_t len,
                                                             Access access) const {
  const GuestMemoryRegion* r = FindGuest(gpa);
  if (r == nullptr) {
    return absl::OutOfRangeError(absl::StrFormat("guest address 0x%x is not mapped", gpa));
  }
  uint64_t offset = gpa - r->guest_phys_addr;
  if (len > r->size - offset) {
    return absl::OutOfRangeError(absl::StrFormat(
        "guest range 0x%x+0x%x does not fit in the region at 0x%x", gpa, len,
        r->guest_phys_addr));
  }
  if (!Allows(*r, access)) {
    return absl::PermissionDeniedError(
        absl::StrFormat("guest range 0x%x+0x%x: access denied by the region's mapping", gpa, len));
  }
  return r->mapping->data() + r->mmap_offset + offset;
}

absl::StatusOr<uint64_t> GuestMemoryMap::UserToGuest(uint64_t uaddr, uint64_t len) const {
  auto it = std::upper_bound(by_user_.begin(), by_user_.end(), uaddr,
                             [this](uint64_t a, uint32_t i) { return a < regions_[i].user_addr; });
  if (it != by_user_.begin()) {
    const GuestMemoryRegion& r = regions_[*std::prev(it)];
    uint64_t offset = uaddr - r.user_addr;
    if (offset < r.size && len <= r.size - offset) return r.guest_phys_addr + offset;
  }
  return absl::OutOfRangeError(
      absl::StrFormat("front-end address range 0x%x+0x%x is not inside one region", uaddr, len));
}

absl::Status GuestMemoryMap::Read(uint64_t gpa, void* dst, size_t len) const {
  IovecVector iov;
  if (absl::Status s = Translate(gpa, len, Access::kRead, &iov); !s.ok()) return s;
  auto* p = static_cast<uint8_t*>(dst);
  for (const iovec& v : iov) {
    std::memcpy(p, v.iov_base, v.iov_len);
    p += v.iov_len;
  }
  return absl::OkStatus();
}

absl::Status GuestMemoryMap::Write(uint64_t gpa, const void* src, size_t len) const {
  IovecVector iov;
  if (absl::Status s = Translate(gpa, len, Access::kWrite, &iov); !s.ok()) return s;
  const auto* p = static_cast<const uint8_t*>(src);
  for (const iovec& v : iov) {
    std::memcpy(v.iov_base, p, v.iov_len);
    p += v.iov_len;
  }
  return absl::OkStatus();
}

}  // namespace virtiofs
