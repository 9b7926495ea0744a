// Edge cases of guest memory, the split queue and chain I/O that a
// mutation run over those modules showed the other tests did not pin down:
// each test names the weakened check (the mutant) it catches.
#include <linux/virtio_ring.h>
#include <sys/mman.h>

#include <array>
#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <optional>
#include <thread>
#include <vector>

#include "tests/support/driver_queue.h"
#include "tests/support/guest_ram.h"
#include "virtiofs/chain_io.h"
#include "virtiofs/guest_memory.h"
#include "virtiofs/mmap.h"
#include "virtiofs/virtqueue.h"

namespace virtiofs {
namespace {

using testing::DriverQueue;
using testing::GuestRam;
using Buffer = DriverQueue::Buffer;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kRam = 1 << 20;
constexpr uint64_t kDataGpa = 0x40000;
constexpr uint64_t kDataSize = kRam - kDataGpa;

struct Fixture {
  explicit Fixture(uint32_t size = 8, bool event_idx = false, bool indirect = true)
      : ram(GuestRam::CreateOrDie(kRam)),
        driver(*ram, size, 0, kDataGpa, kDataSize, event_idx, indirect) {}
  SplitQueue Queue() {
    auto q = SplitQueue::Create(driver.config(), ram->map());
    REQUIRE(q.ok());
    return *std::move(q);
  }
  std::unique_ptr<GuestRam> ram;
  DriverQueue driver;
};

void ExpectPopError(SplitQueue& q, VirtqueueError kind) {
  DescriptorChain chain;
  auto r = q.Pop(&chain);
  REQUIRE_FALSE(r.ok());
  INFO(r.status().message());
  REQUIRE(GetVirtqueueError(r.status()).has_value());
  CHECK(VirtqueueErrorName(*GetVirtqueueError(r.status())) == VirtqueueErrorName(kind));
}

std::shared_ptr<const MmapRegion> Anon(size_t size) {
  auto m = MmapRegion::MapAnonymous(size);
  REQUIRE(m.ok());
  return std::make_shared<const MmapRegion>(*std::move(m));
}

GuestMemoryRegion Region(uint64_t gpa, uint64_t size, uint64_t uaddr,
                         std::shared_ptr<const MmapRegion> m, uint64_t offset = 0) {
  return GuestMemoryRegion{gpa, size, uaddr, offset, std::move(m)};
}

// ---------------------------------------------------------------------------
// split_queue.cc

// Kills SQ-readchain-head (ReadChain, added in 776b43d for vhost-user
// resubmission, has no test of its own): the head comes from the inflight
// region and must be range-checked before the descriptor table is indexed.
TEST_CASE("ReadChain refuses a head outside the queue and gives nothing back") {
  Fixture f;
  SplitQueue q = f.Queue();
  DescriptorChain chain;
  CHECK(GetVirtqueueError(q.ReadChain(8, &chain)) == VirtqueueError::kHeadOutOfRange);
  CHECK(GetVirtqueueError(q.ReadChain(0xffff, &chain)) == VirtqueueError::kHeadOutOfRange);
  CHECK(q.used_idx() == 0);
  Buffer b[] = {{f.driver.Alloc(32), 32, true}};
  auto head = f.driver.AddChain(b);
  REQUIRE(head);
  REQUIRE(q.ReadChain(*head, &chain).ok());
  CHECK(chain.writable_bytes() == 32);
  CHECK(q.last_avail_idx() == 0);  // The available ring is not touched.
}

// Kills SQ-lenovf-nowritable (and SQ-lenovf-noreadable): the 2^32 limit is on
// readable + writable together, not on each half.
TEST_CASE("total length of a mixed readable/writable chain overflowing 32 bits") {
  auto big = GuestRam::Create({{0, 0x20000000}}, GuestRam::Backing::kAnonymous);
  REQUIRE(big.ok());
  DriverQueue d(**big, 8, 0, 0x10000, 0x10000);
  auto q = SplitQueue::Create(d.config(), (*big)->map());
  REQUIRE(q.ok());
  // Four readable then four writable descriptors of 2^29 bytes: 2^32 in all,
  // but each half is only 2^31.
  for (uint16_t i = 0; i < 8; ++i) {
    uint16_t flags = (i < 7 ? VRING_DESC_F_NEXT : 0) | (i >= 4 ? VRING_DESC_F_WRITE : 0);
    d.SetDesc(i, 0, 0x20000000, flags, i + 1);
  }
  d.PushHead(0);
  ExpectPopError(*q, VirtqueueError::kLengthOverflow);
  q->PublishUsed();
  auto used = d.PopUsed();
  REQUIRE(used);
  CHECK(used->id == 0);
  CHECK(used->len == 0);
}

// A map with the normal test RAM at gpa 0 and one read-only page at 0x100000.
struct ReadOnlyPage {
  ReadOnlyPage() : ram(GuestRam::CreateOrDie(kRam)), driver(*ram, 8, 0, kDataGpa, kDataSize) {
    void* base = mmap(nullptr, kPage, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(base != MAP_FAILED);
    auto ro = std::make_shared<const MmapRegion>(MmapRegion::Adopt(base, kPage, PROT_READ));
    auto m = GuestMemoryMap::Create(
        {ram->region(0), Region(kRoGpa, kPage, reinterpret_cast<uintptr_t>(base), ro)});
    REQUIRE(m.ok());
    map = *m;
  }
  static constexpr uint64_t kRoGpa = 0x100000;
  std::unique_ptr<GuestRam> ram;
  DriverQueue driver;
  GuestMemoryMap::Ptr map;
};

// Kills SQ-buf-writable-as-read: a device-writable descriptor must be
// translated for write access, or the device faults writing a read-only page.
TEST_CASE("a writable descriptor in read-only guest memory is refused") {
  ReadOnlyPage f;
  auto q = SplitQueue::Create(f.driver.config(), f.map);
  REQUIRE(q.ok());
  f.driver.SetDesc(0, ReadOnlyPage::kRoGpa, 16, 0, 0);  // Readable: fine.
  f.driver.PushHead(0);
  DescriptorChain chain;
  auto r = q->Pop(&chain);
  REQUIRE(r.ok());
  REQUIRE(*r);
  CHECK(chain.readable_bytes() == 16);
  f.driver.SetDesc(1, ReadOnlyPage::kRoGpa, 16, VRING_DESC_F_WRITE, 0);
  f.driver.PushHead(1);
  ExpectPopError(*q, VirtqueueError::kBadBufferAddress);
}

// Kills SQ-maprings-used-readonly: Create documents "used ring writable".
TEST_CASE("a used ring in read-only guest memory is refused") {
  ReadOnlyPage f;
  VirtqueueConfig c = f.driver.config();
  c.used_addr = ReadOnlyPage::kRoGpa;
  auto q = SplitQueue::Create(c, f.map);
  REQUIRE_FALSE(q.ok());
  CHECK(GetVirtqueueError(q.status()) == VirtqueueError::kRingNotMapped);
  // The descriptor table and available ring only need to be readable.
  c = f.driver.config();
  c.desc_addr = ReadOnlyPage::kRoGpa;
  CHECK(SplitQueue::Create(c, f.map).ok());
}

// Kills SQ-availcount-noclamp.
TEST_CASE("AvailableCount never exceeds the queue size, even before Pop sees a jump") {
  Fixture f;
  SplitQueue q = f.Queue();
  f.driver.SetAvailIdx(9);  // 9 ahead with a queue of 8.
  CHECK(q.AvailableCount() <= q.size());
  CHECK_FALSE(q.broken());
  ExpectPopError(q, VirtqueueError::kAvailIndexJump);
  CHECK(q.AvailableCount() == 0);
}

// Kills SQ-error-noclear: after a failed Pop the chain must not keep iovecs
// (into guest memory) from the part that was walked before the error.
TEST_CASE("a chain that fails to walk is left empty") {
  Fixture f;
  SplitQueue q = f.Queue();
  DriverQueue& d = f.driver;
  uint64_t buf = d.Alloc(64);
  d.SetDesc(0, buf, 32, VRING_DESC_F_NEXT, 1);
  d.SetDesc(1, buf + 32, 32, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 200);  // Bad next.
  d.PushHead(0);
  DescriptorChain chain;
  auto r = q.Pop(&chain);
  REQUIRE_FALSE(r.ok());
  CHECK(chain.readable().empty());
  CHECK(chain.writable().empty());
  CHECK(chain.writable_ranges().empty());
  CHECK(chain.readable_bytes() == 0);
  CHECK(chain.writable_bytes() == 0);
  CHECK(chain.descriptor_count() == 0);
  CHECK(chain.memory() == nullptr);
}

// Kills SQ-pop-no-avail-event: with EVENT_IDX and notifications enabled, a Pop
// must move avail_event, or the driver stops kicking (lost wakeup).
TEST_CASE("EVENT_IDX: Pop with notifications enabled advances avail_event") {
  Fixture f(8, /*event_idx=*/true);
  SplitQueue q = f.Queue();
  uint64_t buf = f.driver.Alloc(64);
  Buffer b[] = {{buf, 64, true}};
  DescriptorChain chain;
  CHECK_FALSE(q.EnableNotification());
  for (int i = 0; i < 3; ++i) {
    uint16_t old = f.driver.avail_idx();
    REQUIRE(f.driver.AddChain(b));
    CHECK(f.driver.DeviceWantsKick(old));
    REQUIRE(*q.Pop(&chain));  // Without disabling notifications first.
    CHECK(f.driver.avail_event() == q.last_avail_idx());
    REQUIRE(q.AddUsed(chain.head(), 0).ok());
    q.PublishUsed();
    REQUIRE(f.driver.PopUsed());
  }
}

// Ring memory whose guest alignment and host alignment differ: three
// regions (one per ring) over one 3-page mapping. `gpa_skew` shifts each guest
// address, `host_skew` each host address (through mmap_offset).
struct SkewedRings {
  SkewedRings(std::array<uint64_t, 3> gpa_skew, std::array<uint64_t, 3> host_skew)
      : mapping(Anon(3 * kPage)) {
    std::vector<GuestMemoryRegion> regions;
    for (int i = 0; i < 3; ++i) {
      uint64_t gpa = 0x10000 * (i + 1) + gpa_skew[i];
      uint64_t off = kPage * i + host_skew[i];
      regions.push_back(Region(gpa, kPage - 16, 0x100000 + off, mapping, off));
    }
    auto m = GuestMemoryMap::Create(regions);
    REQUIRE(m.ok());
    map = *m;
    config.size = 8;
    config.desc_addr = 0x10000 + gpa_skew[0];
    config.avail_addr = 0x20000 + gpa_skew[1];
    config.used_addr = 0x30000 + gpa_skew[2];
  }
  std::optional<VirtqueueError> Error() const {
    auto q = SplitQueue::Create(config, map);
    INFO(q.status().message());
    return q.ok() ? std::nullopt : GetVirtqueueError(q.status());
  }
  std::shared_ptr<const MmapRegion> mapping;
  GuestMemoryMap::Ptr map;
  VirtqueueConfig config;
};

// Kills SQ-create-align-{all,desc,desc8,avail,used,used2}: the guest-address
// check in Create is the only one that sees these (the host addresses are
// aligned, so MapRings' check cannot).
TEST_CASE("misaligned guest ring addresses are refused even if the host copy is aligned") {
  CHECK_FALSE(SkewedRings({0, 0, 0}, {0, 0, 0}).Error().has_value());
  CHECK(SkewedRings({8, 0, 0}, {0, 0, 0}).Error() == VirtqueueError::kMisaligned);
  CHECK(SkewedRings({1, 0, 0}, {0, 0, 0}).Error() == VirtqueueError::kMisaligned);
  CHECK(SkewedRings({0, 1, 0}, {0, 0, 0}).Error() == VirtqueueError::kMisaligned);
  CHECK(SkewedRings({0, 0, 2}, {0, 0, 0}).Error() == VirtqueueError::kMisaligned);
  CHECK(SkewedRings({0, 0, 1}, {0, 0, 0}).Error() == VirtqueueError::kMisaligned);
}

// Kills SQ-maprings-hostalign: aligned guest addresses whose host mapping is
// not aligned would make the ring atomics misaligned.
TEST_CASE("ring host addresses must keep the guest alignment") {
  CHECK(SkewedRings({0, 0, 0}, {8, 0, 0}).Error() == VirtqueueError::kMisaligned);
  CHECK(SkewedRings({0, 0, 0}, {0, 1, 0}).Error() == VirtqueueError::kMisaligned);
  CHECK(SkewedRings({0, 0, 0}, {0, 0, 2}).Error() == VirtqueueError::kMisaligned);
  CHECK_FALSE(SkewedRings({0, 0, 0}, {16, 2, 4}).Error().has_value());
}

// Kills SQ-hop-ringsize: the hop limit is per table; an indirect table may be
// longer than the ring.
TEST_CASE("an indirect table longer than the queue is walked whole") {
  Fixture f(8);
  SplitQueue q = f.Queue();
  uint64_t buf = f.driver.Alloc(16 * 20);
  std::vector<Buffer> bufs;
  for (int i = 0; i < 20; ++i) bufs.push_back({buf + 16 * i, 16, i >= 10});
  auto head = f.driver.AddChain(bufs, /*indirect=*/true);
  REQUIRE(head);
  DescriptorChain chain;
  auto r = q.Pop(&chain);
  REQUIRE(r.ok());
  REQUIRE(*r);
  CHECK(chain.descriptor_count() == 21);
  CHECK(chain.readable_bytes() == 160);
  CHECK(chain.writable_bytes() == 160);
}

// Kills SQ-rdafterwr-reset-indirect: the readable-after-writable rule holds
// across the jump from the ring into an indirect table.
TEST_CASE("readable indirect entries after a writable ring descriptor are refused") {
  Fixture f;
  SplitQueue q = f.Queue();
  DriverQueue& d = f.driver;
  uint64_t buf = d.Alloc(64);
  uint64_t table = d.Alloc(16, 16);
  vring_desc t[1] = {{buf, 8, 0, 0}};  // Readable.
  f.ram->Write(table, t, sizeof t);
  d.SetDesc(0, buf + 32, 8, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1);
  d.SetDesc(1, table, 16, VRING_DESC_F_INDIRECT, 0);
  d.PushHead(0);
  ExpectPopError(q, VirtqueueError::kReadableAfterWritable);
}

// Kills SQ-pub-nofence (event_idx=1) and SQ-en-nofence (both modes) on x86:
// Dekker-style store/load races, one round at a time, both threads released
// together by a spin barrier so the store-buffer window is actually hit.
// Without a full fence the device can read the stale used_event (or the stale
// avail->idx) while the driver reads the stale used->idx (or avail_event /
// used flags), and neither side wakes the other.
class SpinBarrier {
 public:
  void Wait() {
    const uint32_t gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.store(gen + 1, std::memory_order_release);
    } else {
      for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
        if (spins > 10000) std::this_thread::yield();  // Few cores: let the other run.
      }
    }
  }

 private:
  std::atomic<uint32_t> count_{0};
  std::atomic<uint32_t> gen_{0};
};

// Under ThreadSanitizer every atomic and barrier step is instrumented and
// the two spinning threads share two cores with other suites: fewer rounds
// there (the race checking is what that build is for; the plain build runs
// them all).
#if defined(__SANITIZE_THREAD__)
constexpr int kRounds = 20000;
#else
constexpr int kRounds = 200000;
#endif

// A short, round-dependent delay on one side sweeps the two threads' relative
// timing across the few-nanosecond window where the reordering shows.
// Odd rounds delay one thread, even rounds the other.
void Jitter(int round, int side) {
  if ((round & 1) != side) return;
  for (int i = 0; i < (round * 7) % 16; ++i) std::atomic_signal_fence(std::memory_order_seq_cst);
}

TEST_CASE("stress: PublishUsed never misses a used_event set concurrently") {
  Fixture f(8, /*event_idx=*/true);
  SplitQueue q = f.Queue();
  SpinBarrier barrier;
  std::vector<uint8_t> notified(kRounds);
  f.driver.SetUsedEvent(0xffff);
  std::thread device([&] {
    for (int k = 0; k < kRounds; ++k) {
      barrier.Wait();
      Jitter(k, 1);
      (void)q.AddUsed(0, 0);
      notified[k] = q.PublishUsed();
      barrier.Wait();
    }
  });
  int lost = 0;
  for (int k = 0; k < kRounds; ++k) {
    barrier.Wait();
    Jitter(k, 0);
    // Linux virtqueue_enable_cb: publish used_event, full barrier, re-check.
    f.driver.SetUsedEvent(static_cast<uint16_t>(k));
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    bool saw = f.driver.used_idx() != static_cast<uint16_t>(k);
    barrier.Wait();
    if (!saw && !notified[k]) ++lost;
  }
  device.join();
  CHECK(lost == 0);
}

TEST_CASE("stress: EnableNotification never misses a buffer added concurrently") {
  for (bool event_idx : {false, true}) {
    DYNAMIC_SECTION("event_idx=" << event_idx) {
      Fixture f(8, event_idx);
      SplitQueue q = f.Queue();
      uint64_t buf = f.driver.Alloc(64);
      Buffer b[] = {{buf, 64, true}};
      SpinBarrier barrier;
      std::vector<uint8_t> found(kRounds);
      std::atomic<bool> pop_failed{false};
      q.DisableNotification();
      std::thread device([&] {
        DescriptorChain chain;
        for (int k = 0; k < kRounds; ++k) {
          barrier.Wait();
          Jitter(k, 1);
          found[k] = q.EnableNotification();
          barrier.Wait();
          q.DisableNotification();
          auto r = q.Pop(&chain);
          if (!r.ok() || !*r) {
            pop_failed = true;
          } else {
            (void)q.AddUsed(chain.head(), 0);
            q.PublishUsed();
          }
          barrier.Wait();
        }
      });
      int lost = 0;
      for (int k = 0; k < kRounds; ++k) {
        barrier.Wait();
        Jitter(k, 0);
        uint16_t old = f.driver.avail_idx();
        f.driver.AddChain(b);
        bool kick = f.driver.DeviceWantsKick(old);  // Has its own full fence.
        barrier.Wait();
        if (!kick && !found[k]) ++lost;
        barrier.Wait();
        f.driver.PopUsed();
      }
      device.join();
      CHECK_FALSE(pop_failed);
      CHECK(lost == 0);
    }
  }
}

// Kills SQ-availidx-relaxed under ThreadSanitizer (the build-tsan step of
// scripts/test): a device that busy-polls Pop, with no eventfd and no
// EnableNotification in between, is ordered after the driver's descriptor and
// payload writes only by the acquire load of avail->idx. On x86 the mutant is
// invisible without TSan; on a weakly ordered CPU the payload check fails.
TEST_CASE("a busy-polling device sees each chain's descriptors and data complete") {
  Fixture f(16);
  SplitQueue q = f.Queue();
  constexpr uint32_t kTotal = 20000;
  constexpr uint32_t kBufs = 16;
  uint64_t bufs[kBufs];
  for (auto& b : bufs) b = f.driver.Alloc(64);
  std::atomic<bool> stop{false};
  std::atomic<uint32_t> bad{0}, seen{0};
  std::thread device([&] {
    DescriptorChain chain;
    uint64_t expect = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      auto r = q.Pop(&chain);
      if (!r.ok()) {
        bad.fetch_add(1);
        return;
      }
      if (!*r) {
        std::this_thread::yield();
        continue;
      }
      uint64_t words[8];
      if (chain.readable().size() != 1 || chain.readable()[0].iov_len != sizeof words) {
        bad.fetch_add(1);
      } else {
        std::memcpy(words, chain.readable()[0].iov_base, sizeof words);
        for (uint64_t w : words) {
          if (w != expect) bad.fetch_add(1);
        }
      }
      ++expect;
      seen.fetch_add(1);
      (void)q.AddUsed(chain.head(), 0);
      q.PublishUsed();
    }
  });
  uint32_t sent = 0, completed = 0;
  while (completed < kTotal) {
    while (f.driver.PopUsed()) ++completed;
    // Completions are in order, so buffer sent % kBufs is free once fewer
    // than kBufs chains are in flight.
    if (sent < kTotal && sent - completed < kBufs) {
      uint64_t words[8];
      for (auto& w : words) w = sent;
      f.ram->Write(bufs[sent % kBufs], words, sizeof words);
      Buffer b[] = {{bufs[sent % kBufs], sizeof words, false}};
      REQUIRE(f.driver.AddChain(b));
      ++sent;
    } else {
      std::this_thread::yield();
    }
  }
  stop = true;
  device.join();
  CHECK(seen == kTotal);
  CHECK(bad == 0);
}

// SQ-pub-store-relaxed (used->idx store weakened to relaxed) is also reported
// by ThreadSanitizer in the existing "no lost wakeups" test (data race on the
// used element). SQ-pub-load-relaxed and SQ-en-load-acquire (the seq_cst
// loads weakened) compile to the same x86 instructions as the original and
// can only be observed on a weakly ordered CPU (e.g. arm64, where stlr+ldr
// may reorder but stlr+ldar may not).

// ---------------------------------------------------------------------------
// guest_memory.cc

// Kills GM-nomapping.
TEST_CASE("a region whose mapping is empty is refused") {
  auto empty = std::make_shared<const MmapRegion>();
  auto r = GuestMemoryMap::Create({Region(0, kPage, 0, empty)});
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("no host mapping"));
}

// Kills GM-beyond-offby1.
TEST_CASE("a region may end exactly at the end of its mapping, not one byte later") {
  auto m = Anon(4 * kPage);
  CHECK(GuestMemoryMap::Create({Region(0, kPage, 0, m, 3 * kPage)}).ok());
  auto r = GuestMemoryMap::Create({Region(0, kPage + 1, 0, m, 3 * kPage)});
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("beyond its mapping"));
  r = GuestMemoryMap::Create({Region(0, kPage, 0, m, 3 * kPage + 1)});
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("beyond its mapping"));
}

// Kills GM-gpaoverlap-offby1 and GM-useroverlap-offby1.
TEST_CASE("regions overlapping by one byte are refused, adjacent ones accepted") {
  auto m = Anon(4 * kPage);
  CHECK(GuestMemoryMap::Create(
            {Region(0x10000, kPage, 0x5000, m), Region(0x10000 + kPage, kPage, 0x5000 + kPage, m)})
            .ok());
  auto gpa = GuestMemoryMap::Create(
      {Region(0x10000, kPage, 0x5000, m), Region(0x10000 + kPage - 1, kPage, 0x100000, m)});
  REQUIRE_FALSE(gpa.ok());
  CHECK_THAT(std::string(gpa.status().message()), Catch::Contains("overlap"));
  auto user = GuestMemoryMap::Create(
      {Region(0x10000, kPage, 0x5000, m), Region(0x100000, kPage, 0x5000 + kPage - 1, m)});
  REQUIRE_FALSE(user.ok());
  CHECK_THAT(std::string(user.status().message()), Catch::Contains("user address"));
}

// Kills GM-tr-ovf-remove: with RAM at both ends of the address space a range
// that wraps past 2^64 would otherwise be translated into two valid pieces.
TEST_CASE("a guest range wrapping past 2^64 is refused even if both ends are mapped") {
  auto m = Anon(2 * kPage);
  auto r = GuestMemoryMap::Create(
      {Region(0, kPage, 0x100000, m), Region(0 - kPage, kPage, 0x200000, m, kPage)});
  REQUIRE(r.ok());
  IovecVector iov;
  CHECK((*r)->Translate(0 - kPage, kPage, Access::kRead, &iov).ok());
  iov.clear();
  CHECK(absl::IsOutOfRange((*r)->Translate(0 - kPage, 2 * kPage, Access::kRead, &iov)));
  CHECK(iov.empty());
  CHECK(absl::IsOutOfRange((*r)->Translate(UINT64_MAX, 2, Access::kWrite, &iov)));
  uint8_t bytes[16];
  CHECK(absl::IsOutOfRange((*r)->Read(UINT64_MAX - 7, bytes, sizeof bytes)));
}

// Kills GM-contig-offby1.
TEST_CASE("contiguous translation: exact fit passes, one byte more fails") {
  auto ram = GuestRam::Create({{0, 2 * kPage}, {2 * kPage, 2 * kPage}});
  REQUIRE(ram.ok());
  const auto& map = (*ram)->map();
  CHECK(map->TranslateContiguous(kPage, kPage, Access::kRead).ok());
  CHECK(absl::IsOutOfRange(map->TranslateContiguous(kPage, kPage + 1, Access::kRead).status()));
  CHECK(absl::IsOutOfRange(
      map->TranslateContiguous(2 * kPage - 1, UINT64_MAX, Access::kRead).status()));
}

// Kills GM-u2g-offset, GM-u2g-len-offby1 and GM-u2g-len-add.
TEST_CASE("front-end addresses: boundaries, holes and huge lengths") {
  auto m = Anon(3 * kPage);
  auto r = GuestMemoryMap::Create(
      {Region(0, 2 * kPage, 0x10000, m), Region(0x100000, kPage, 0x40000, m, 2 * kPage)});
  REQUIRE(r.ok());
  const auto& map = *r;
  auto last = map->UserToGuest(0x10000 + 2 * kPage - 8, 8);
  REQUIRE(last.ok());
  CHECK(*last == 2 * kPage - 8);
  CHECK(absl::IsOutOfRange(map->UserToGuest(0x10000 + 2 * kPage - 8, 9).status()));
  CHECK(absl::IsOutOfRange(map->UserToGuest(0x20000, 1).status()));  // Hole between regions.
  CHECK(absl::IsOutOfRange(map->UserToGuest(0x10000 + 2 * kPage, 1).status()));
  CHECK(absl::IsOutOfRange(map->UserToGuest(0x80000, 1).status()));  // Past the last one.
  CHECK(absl::IsOutOfRange(map->UserToGuest(0x10010, UINT64_MAX).status()));
  CHECK(absl::IsOutOfRange(map->UserToGuest(0x40000 + 16, UINT64_MAX - 8).status()));
}

// ---------------------------------------------------------------------------
// chain_io.cc

// Kills CI-split-total-noconsumed: splitting after some bytes were written
// must keep them counted (bytes_written becomes the used length).
TEST_CASE("SplitAt after a partial write keeps bytes_written") {
  std::vector<uint8_t> a(3), c(5);
  std::vector<iovec> iov = {iovec{a.data(), a.size()}, iovec{nullptr, 0},
                            iovec{c.data(), c.size()}};
  ChainWriter w(iov);
  REQUIRE(w.Advance(2).ok());
  auto tail = w.SplitAt(3);
  REQUIRE(tail.ok());
  CHECK(w.bytes_written() == 2);
  CHECK(w.remaining() == 3);
  CHECK(tail->remaining() == 3);
  CHECK(tail->bytes_written() == 0);
  const uint8_t x[3] = {7, 8, 9};
  REQUIRE(w.Write(x, 3).ok());
  CHECK(w.bytes_written() == 5);
  CHECK(absl::IsOutOfRange(w.Write(x, 1)));
  REQUIRE(tail->Write(x, 3).ok());
  CHECK(w.bytes_written() + tail->bytes_written() == 8);
  CHECK(a[2] == 7);  // The head part is chain bytes 2..4: a[2], c[0], c[1].
  CHECK(c[1] == 9);
  CHECK(c[2] == 7);  // The tail starts at chain byte 5: c[2].
}

}  // namespace
}  // namespace virtiofs
