#include "tests/support/guest_ram.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_format.h"

namespace virtiofs::testing {
namespace {

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "GuestRam: %s\n", what.c_str());
  std::abort();
}

}  // namespace

absl::StatusOr<std::unique_ptr<GuestRam>> GuestRam::Create(std::vector<RegionSpec> specs,
                                                           Backing backing) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::unique_ptr<GuestRam> ram(new GuestRam());
  for (const RegionSpec& spec : specs) {
    if (spec.size == 0 || spec.size % page != 0) {
      return absl::InvalidArgumentError("region size must be a non-zero multiple of the page");
    }
    // Reserve region + guard page, inaccessible, then map the region over the
    // front of it. The guard page stays PROT_NONE.
    const size_t reserve = spec.size + page;
    void* base = mmap(nullptr, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return absl::ErrnoToStatus(errno, "reserve guest RAM");
    MmapRegion reservation = MmapRegion::Adopt(base, reserve, PROT_READ | PROT_WRITE);
    UniqueFd fd;
    void* p;
    if (backing == Backing::kMemfd) {
      fd.reset(memfd_create("guest-ram", MFD_CLOEXEC));
      if (!fd.valid()) return absl::ErrnoToStatus(errno, "memfd_create");
      if (ftruncate(fd.get(), static_cast<off_t>(spec.size)) != 0) {
        return absl::ErrnoToStatus(errno, "ftruncate guest RAM");
      }
      p = mmap(base, spec.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd.get(), 0);
    } else {
      p = mmap(base, spec.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
               -1, 0);
    }
    if (p == MAP_FAILED) return absl::ErrnoToStatus(errno, "map guest RAM");
    GuestMemoryRegion region;
    region.guest_phys_addr = spec.gpa;
    region.size = spec.size;
    region.user_addr = reinterpret_cast<uintptr_t>(base);
    region.mmap_offset = 0;
    region.mapping = std::make_shared<const MmapRegion>(std::move(reservation));
    ram->regions_.push_back(std::move(region));
    ram->fds_.push_back(std::move(fd));
  }
  auto map = GuestMemoryMap::Create(ram->regions_);
  if (!map.ok()) return map.status();
  ram->map_ = *std::move(map);
  return ram;
}

std::unique_ptr<GuestRam> GuestRam::CreateOrDie(uint64_t size, Backing backing) {
  auto ram = Create({{0, size}}, backing);
  if (!ram.ok()) Die(std::string(ram.status().message()));
  return *std::move(ram);
}

absl::StatusOr<GuestMemoryMap::Ptr> GuestRam::MapWith(
    const std::vector<size_t>& region_indexes) const {
  std::vector<GuestMemoryRegion> regions;
  for (size_t i : region_indexes) regions.push_back(regions_.at(i));
  return GuestMemoryMap::Create(std::move(regions));
}

uint8_t* GuestRam::Host(uint64_t gpa) const {
  auto p = map_->TranslateContiguous(gpa, 0, Access::kRead);
  if (!p.ok()) Die(absl::StrFormat("gpa 0x%x is not guest RAM", gpa));
  return *p;
}

void GuestRam::Write(uint64_t gpa, const void* data, size_t len) const {
  if (absl::Status s = map_->Write(gpa, data, len); !s.ok()) Die(std::string(s.message()));
}

void GuestRam::Read(uint64_t gpa, void* data, size_t len) const {
  if (absl::Status s = map_->Read(gpa, data, len); !s.ok()) Die(std::string(s.message()));
}

void GuestRam::Fill(uint64_t gpa, uint8_t byte, size_t len) const {
  std::vector<uint8_t> bytes(len, byte);
  Write(gpa, bytes.data(), len);
}

}  // namespace virtiofs::testing
