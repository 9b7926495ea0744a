// Guest RAM for tests and benchmarks: real mappings (anonymous or memfd), each
// region followed by a PROT_NONE guard page, so that a read or write past a
// region's end faults in a test instead of passing silently.
#ifndef VIRTIOFS_TESTS_SUPPORT_GUEST_RAM_H_
#define VIRTIOFS_TESTS_SUPPORT_GUEST_RAM_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "virtiofs/fd.h"
#include "virtiofs/guest_memory.h"

namespace virtiofs::testing {

class GuestRam {
 public:
  enum class Backing { kAnonymous, kMemfd };
  struct RegionSpec {
    uint64_t gpa;
    uint64_t size;  // A multiple of the page size.
  };

  // Maps every region; memfd regions keep their fd (for vhost-user tests).
  static absl::StatusOr<std::unique_ptr<GuestRam>> Create(std::vector<RegionSpec> regions,
                                                          Backing backing = Backing::kMemfd);
  // One region of `size` bytes at guest physical 0.
  static std::unique_ptr<GuestRam> CreateOrDie(uint64_t size, Backing backing = Backing::kMemfd);

  // The map a device would build from these regions. The regions' user
  // addresses are their host addresses, as with a front-end in this process.
  const GuestMemoryMap::Ptr& map() const { return map_; }
  // Builds the map again with only the listed regions (for memory-table
  // replacement tests); mappings are shared with the original.
  absl::StatusOr<GuestMemoryMap::Ptr> MapWith(const std::vector<size_t>& region_indexes) const;

  // Host address of a guest address; aborts if it is not mapped (test bug).
  uint8_t* Host(uint64_t gpa) const;
  void Write(uint64_t gpa, const void* data, size_t len) const;
  void Read(uint64_t gpa, void* data, size_t len) const;
  void Fill(uint64_t gpa, uint8_t byte, size_t len) const;

  size_t region_count() const { return regions_.size(); }
  const GuestMemoryRegion& region(size_t i) const { return regions_[i]; }
  // The memfd of region i (kMemfd backing), else -1.
  int fd(size_t i) const { return fds_[i].get(); }

 private:
  GuestRam() = default;
  std::vector<GuestMemoryRegion> regions_;
  std::vector<UniqueFd> fds_;
  GuestMemoryMap::Ptr map_;
};

}  // namespace virtiofs::testing

#endif  // VIRTIOFS_TESTS_SUPPORT_GUEST_RAM_H_
