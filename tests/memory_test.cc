#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>

#include "tests/support/guest_ram.h"
#include "virtiofs/guest_memory.h"

namespace virtiofs {
namespace {

using testing::GuestRam;

constexpr uint64_t kPage = 4096;

std::shared_ptr<const MmapRegion> Anon(size_t size) {
  auto m = MmapRegion::MapAnonymous(size);
  REQUIRE(m.ok());
  return std::make_shared<const MmapRegion>(*std::move(m));
}

GuestMemoryRegion Region(uint64_t gpa, uint64_t size, uint64_t uaddr,
                         std::shared_ptr<const MmapRegion> m, uint64_t offset = 0) {
  return GuestMemoryRegion{gpa, size, uaddr, offset, std::move(m)};
}

TEST_CASE("memory map rejects bad region tables") {
  auto m = Anon(4 * kPage);
  SECTION("size zero") {
    auto r = GuestMemoryMap::Create({Region(0, 0, 0, m)});
    CHECK(absl::IsInvalidArgument(r.status()));
    CHECK_THAT(std::string(r.status().message()), Catch::Contains("size 0"));
  }
  SECTION("no mapping") {
    auto r = GuestMemoryMap::Create({Region(0, kPage, 0, nullptr)});
    CHECK_THAT(std::string(r.status().message()), Catch::Contains("no host mapping"));
  }
  SECTION("guest address overflow") {
    auto r = GuestMemoryMap::Create({Region(UINT64_MAX - 100, kPage, 0, m)});
    CHECK_THAT(std::string(r.status().message()), Catch::Contains("overflow"));
  }
  SECTION("user address overflow") {
    auto r = GuestMemoryMap::Create({Region(0, kPage, UINT64_MAX - 5, m)});
    CHECK_THAT(std::string(r.status().message()), Catch::Contains("overflow"));
  }
  SECTION("mmap offset overflow") {
    auto r = GuestMemoryMap::Create({Region(0, kPage, 0, m, UINT64_MAX - 1)});
    CHECK_THAT(std::string(r.status().message()), Catch::Contains("overflow"));
  }
  SECTION("region larger than its mapping") {
    auto r = GuestMemoryMap::Create({Region(0, 2 * kPage, 0, m, 3 * kPage)});
    CHECK_THAT(std::string(r.status().message()), Catch::Contains("beyond its mapping"));
  }
  SECTION("overlap in guest physical space") {
    auto r = GuestMemoryMap::Create(
        {Region(0x10000, 2 * kPage, 0, m), Region(0x10000 + kPage, kPage, 0x100000, m)});
    CHECK_THAT(std::string(r.status().message()), Catch::Contains("overlap"));
  }
  SECTION("overlap in front-end address space") {
    auto r = GuestMemoryMap::Create(
        {Region(0, kPage, 0x5000, m), Region(0x100000, kPage, 0x5800, m)});
    CHECK_THAT(std::string(r.status().message()), Catch::Contains("user address"));
  }
  SECTION("too many regions") {
    std::vector<GuestMemoryRegion> regions;
    for (uint64_t i = 0; i < 9; ++i) regions.push_back(Region(i * kPage, kPage, i * kPage, m));
    CHECK(GuestMemoryMap::Create(regions, 9).ok());
    auto r = GuestMemoryMap::Create(regions, 8);
    CHECK_THAT(std::string(r.status().message()), Catch::Contains("limit 8"));
  }
  SECTION("region ending exactly at 2^64 is fine") {
    auto r = GuestMemoryMap::Create({Region(0 - kPage, kPage, 0, m)});
    REQUIRE(r.ok());
    IovecVector iov;
    CHECK((*r)->Translate(0 - kPage, kPage, Access::kRead, &iov).ok());
    CHECK(absl::IsOutOfRange((*r)->Translate(0 - kPage, kPage + 1, Access::kRead, &iov)));
  }
}

TEST_CASE("translation spans adjacent regions and refuses holes") {
  // Three regions: [0, 8K) and [8K, 16K) adjacent, then a hole, then [64K, 68K).
  auto ram = GuestRam::Create({{0, 2 * kPage}, {2 * kPage, 2 * kPage}, {0x10000, kPage}});
  REQUIRE(ram.ok());
  const auto& map = (*ram)->map();

  IovecVector iov;
  REQUIRE(map->Translate(kPage, 2 * kPage, Access::kWrite, &iov).ok());
  REQUIRE(iov.size() == 2);
  CHECK(iov[0].iov_len == kPage);
  CHECK(iov[1].iov_len == kPage);
  CHECK(iov[0].iov_base == (*ram)->Host(kPage));
  CHECK(iov[1].iov_base == (*ram)->Host(2 * kPage));

  SECTION("into a hole") {
    iov.clear();
    iov.push_back(iovec{nullptr, 1});
    absl::Status s = map->Translate(3 * kPage, kPage + 1, Access::kRead, &iov);
    CHECK(absl::IsOutOfRange(s));
    CHECK_THAT(std::string(s.message()), Catch::Contains("not mapped"));
    CHECK(iov.size() == 1);  // Restored on failure.
  }
  SECTION("starting in a hole") {
    CHECK(absl::IsOutOfRange(map->Translate(0x8000, 1, Access::kRead, &iov)));
  }
  SECTION("past the last region") {
    CHECK(absl::IsOutOfRange(map->Translate(0x10000 + kPage - 1, 2, Access::kRead, &iov)));
    CHECK(map->Translate(0x10000 + kPage - 1, 1, Access::kRead, &iov).ok());
  }
  SECTION("address overflow") {
    CHECK(absl::IsOutOfRange(map->Translate(UINT64_MAX, 2, Access::kRead, &iov)));
    CHECK(absl::IsOutOfRange(map->Translate(1, UINT64_MAX, Access::kRead, &iov)));
  }
  SECTION("zero length") {
    iov.clear();
    CHECK(map->Translate(0x9999999, 0, Access::kRead, &iov).ok());
    CHECK(iov.empty());
  }
  SECTION("contiguous translation stays inside one region") {
    CHECK(map->TranslateContiguous(0, 2 * kPage, Access::kRead).ok());
    CHECK(absl::IsOutOfRange(map->TranslateContiguous(kPage, 2 * kPage, Access::kRead).status()));
    CHECK(absl::IsOutOfRange(map->TranslateContiguous(0x8000, 0, Access::kRead).status()));
  }
  SECTION("copies across the boundary") {
    std::vector<uint8_t> in(3000), out(3000);
    for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint8_t>(i * 7);
    REQUIRE(map->Write(2 * kPage - 1000, in.data(), in.size()).ok());
    REQUIRE(map->Read(2 * kPage - 1000, out.data(), out.size()).ok());
    CHECK(in == out);
    CHECK(absl::IsOutOfRange(map->Write(4 * kPage - 1, in.data(), 2)));
  }
}

TEST_CASE("front-end virtual addresses translate to guest addresses") {
  auto ram = GuestRam::Create({{0, 2 * kPage}, {0x100000, kPage}});
  REQUIRE(ram.ok());
  const auto& map = (*ram)->map();
  const auto& r1 = (*ram)->region(1);
  auto gpa = map->UserToGuest(r1.user_addr + 16, 64);
  REQUIRE(gpa.ok());
  CHECK(*gpa == 0x100000 + 16);
  CHECK(absl::IsOutOfRange(map->UserToGuest(r1.user_addr + kPage - 8, 16).status()));
  CHECK(absl::IsOutOfRange(map->UserToGuest(r1.user_addr - 1, 1).status()));
  CHECK(absl::IsOutOfRange(map->UserToGuest(0, 1).status()));
}

TEST_CASE("read-only mappings refuse device writes") {
  void* base = mmap(nullptr, kPage, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(base != MAP_FAILED);
  auto shared = std::make_shared<const MmapRegion>(MmapRegion::Adopt(base, kPage, PROT_READ));
  auto map = GuestMemoryMap::Create({Region(0, kPage, 0, shared)});
  REQUIRE(map.ok());
  IovecVector iov;
  CHECK((*map)->Translate(0, 16, Access::kRead, &iov).ok());
  CHECK(absl::IsPermissionDenied((*map)->Translate(0, 16, Access::kWrite, &iov)));
  CHECK(absl::IsPermissionDenied((*map)->TranslateContiguous(0, 16, Access::kWrite).status()));
}

TEST_CASE("a snapshot keeps its mappings alive after the table is replaced") {
  auto first = Anon(kPage);
  std::weak_ptr<const MmapRegion> watch = first;
  auto old_map = GuestMemoryMap::Create({Region(0, kPage, 0, first)});
  REQUIRE(old_map.ok());
  first.reset();
  GuestMemoryMap::Ptr in_flight = *old_map;  // A request holds this.
  GuestMemoryMap::Ptr current = *old_map;
  auto replacement = GuestMemoryMap::Create({Region(0, kPage, 0, Anon(kPage))});
  REQUIRE(replacement.ok());
  current = *replacement;
  old_map->reset();
  REQUIRE_FALSE(watch.expired());
  IovecVector iov;
  REQUIRE(in_flight->Translate(0, 8, Access::kWrite, &iov).ok());
  std::memset(iov[0].iov_base, 0xab, 8);  // Still mapped: no fault.
  in_flight.reset();
  CHECK(watch.expired());
}

}  // namespace
}  // namespace virtiofs
