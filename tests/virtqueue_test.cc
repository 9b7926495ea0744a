// Split virtqueue: the normal paths and every hostile case of VIRTIO 1.2 2.7.
#include <linux/virtio_ring.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <thread>

#include "tests/support/driver_queue.h"
#include "tests/support/guest_ram.h"
#include "virtiofs/fd.h"
#include "virtiofs/virtqueue.h"

namespace virtiofs {
namespace {

using testing::DriverQueue;
using testing::GuestRam;
using Buffer = DriverQueue::Buffer;

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

// Pops expecting an error of `kind`.
void ExpectPopError(SplitQueue& q, VirtqueueError kind) {
  DescriptorChain chain;
  auto r = q.Pop(&chain);
  REQUIRE_FALSE(r.ok());
  INFO(r.status().message());
  REQUIRE(GetVirtqueueError(r.status()).has_value());
  CHECK(VirtqueueErrorName(*GetVirtqueueError(r.status())) == VirtqueueErrorName(kind));
}

// The malformed chain at `head` must have been given back with length 0.
void ExpectReturnedEmpty(SplitQueue& q, DriverQueue& d, uint16_t head) {
  q.PublishUsed();
  auto used = d.PopUsed();
  REQUIRE(used.has_value());
  CHECK(used->id == head);
  CHECK(used->len == 0);
}

TEST_CASE("pop, walk and complete a direct chain") {
  Fixture f;
  SplitQueue q = f.Queue();
  DescriptorChain chain;
  auto empty = q.Pop(&chain);
  REQUIRE(empty.ok());
  CHECK_FALSE(*empty);

  uint64_t req = f.driver.Alloc(40);
  uint64_t payload = f.driver.Alloc(100);
  uint64_t reply = f.driver.Alloc(4096);
  f.ram->Write(req, "request-header-0123456789abcdefghijklmno", 40);
  Buffer bufs[] = {{req, 40, false}, {payload, 100, false}, {reply, 4096, true}};
  auto head = f.driver.AddChain(bufs);
  REQUIRE(head);

  CHECK(q.AvailableCount() == 1);
  auto got = q.Pop(&chain);
  REQUIRE(got.ok());
  REQUIRE(*got);
  CHECK(chain.head() == *head);
  REQUIRE(chain.readable().size() == 2);
  REQUIRE(chain.writable().size() == 1);
  CHECK(chain.readable()[0].iov_base == f.ram->Host(req));
  CHECK(chain.readable()[0].iov_len == 40);
  CHECK(chain.readable()[1].iov_len == 100);
  CHECK(chain.writable()[0].iov_base == f.ram->Host(reply));
  CHECK(chain.readable_bytes() == 140);
  CHECK(chain.writable_bytes() == 4096);
  CHECK(chain.descriptor_count() == 3);
  REQUIRE(chain.writable_ranges().size() == 1);
  CHECK(chain.writable_ranges()[0].gpa == reply);
  CHECK(chain.memory() == f.ram->map());
  CHECK(q.last_avail_idx() == 1);

  REQUIRE(q.AddUsed(chain.head(), 77).ok());
  CHECK_FALSE(f.driver.PopUsed().has_value());  // Not published yet.
  CHECK(q.PublishUsed());                       // No suppression: notify.
  auto used = f.driver.PopUsed();
  REQUIRE(used);
  CHECK(used->id == *head);
  CHECK(used->len == 77);
  CHECK_FALSE(q.PublishUsed());  // Nothing new.
}

TEST_CASE("indirect chains and zero-length descriptors") {
  Fixture f;
  SplitQueue q = f.Queue();
  uint64_t a = f.driver.Alloc(16), b = f.driver.Alloc(0x2000);
  Buffer bufs[] = {{a, 16, false}, {a, 0, false}, {b, 0x2000, true}};
  auto head = f.driver.AddChain(bufs, /*indirect=*/true);
  REQUIRE(head);
  DescriptorChain chain;
  auto got = q.Pop(&chain);
  REQUIRE(got.ok());
  REQUIRE(*got);
  CHECK(chain.readable().size() == 1);  // The empty descriptor adds no iovec.
  CHECK(chain.writable().size() == 1);
  CHECK(chain.writable_bytes() == 0x2000);
  CHECK(chain.descriptor_count() == 4);  // Ring descriptor + three in the table.
}

TEST_CASE("a buffer across two adjacent regions becomes two iovecs") {
  auto ram = GuestRam::Create({{0, 0x40000}, {0x40000, 0x40000}});
  REQUIRE(ram.ok());
  DriverQueue d(**ram, 8, 0, 0x20000, 0x60000);
  auto q = SplitQueue::Create(d.config(), (*ram)->map());
  REQUIRE(q.ok());
  Buffer bufs[] = {{0x3f000, 0x2000, true}};
  REQUIRE(d.AddChain(bufs));
  DescriptorChain chain;
  auto got = q->Pop(&chain);
  REQUIRE(got.ok());
  REQUIRE(chain.writable().size() == 2);
  CHECK(chain.writable()[0].iov_base == (*ram)->Host(0x3f000));
  CHECK(chain.writable()[0].iov_len == 0x1000);
  CHECK(chain.writable()[1].iov_base == (*ram)->Host(0x40000));
  CHECK(chain.writable()[1].iov_len == 0x1000);
}

TEST_CASE("an indirect table across two adjacent regions is read correctly") {
  auto ram = GuestRam::Create({{0, 0x40000}, {0x40000, 0x40000}});
  REQUIRE(ram.ok());
  DriverQueue d(**ram, 8, 0, 0x20000, 0x60000);
  auto q = SplitQueue::Create(d.config(), (*ram)->map());
  REQUIRE(q.ok());
  // Two entries: the first ends at the region boundary, the second starts it.
  vring_desc table[2] = {{0x10000, 8, VRING_DESC_F_NEXT, 1}, {0x11000, 64, VRING_DESC_F_WRITE, 0}};
  (*ram)->Write(0x40000 - 16, table, sizeof table);
  d.SetDesc(0, 0x40000 - 16, 32, VRING_DESC_F_INDIRECT, 0);
  d.PushHead(0);
  DescriptorChain chain;
  auto got = q->Pop(&chain);
  REQUIRE(got.ok());
  CHECK(chain.readable_bytes() == 8);
  CHECK(chain.writable_bytes() == 64);
}

TEST_CASE("hostile descriptor chains") {
  Fixture f;
  SplitQueue q = f.Queue();
  DriverQueue& d = f.driver;
  const uint64_t buf = d.Alloc(4096);

  SECTION("descriptor loop") {
    d.SetDesc(0, buf, 8, VRING_DESC_F_NEXT, 1);
    d.SetDesc(1, buf, 8, VRING_DESC_F_NEXT, 0);
    d.PushHead(0);
    ExpectPopError(q, VirtqueueError::kChainTooLong);
    ExpectReturnedEmpty(q, d, 0);
  }
  SECTION("self loop") {
    d.SetDesc(3, buf, 8, VRING_DESC_F_NEXT, 3);
    d.PushHead(3);
    ExpectPopError(q, VirtqueueError::kChainTooLong);
    ExpectReturnedEmpty(q, d, 3);
  }
  SECTION("next index out of range") {
    d.SetDesc(0, buf, 8, VRING_DESC_F_NEXT, 8);
    d.PushHead(0);
    ExpectPopError(q, VirtqueueError::kNextOutOfRange);
    ExpectReturnedEmpty(q, d, 0);
  }
  SECTION("head out of range") {
    d.PushHead(8);
    ExpectPopError(q, VirtqueueError::kHeadOutOfRange);
    q.PublishUsed();
    CHECK_FALSE(d.PopUsed().has_value());  // Nothing to give back.
    d.PushHead(0xffff);
    ExpectPopError(q, VirtqueueError::kHeadOutOfRange);
  }
  SECTION("indirect inside indirect") {
    uint64_t table = d.Alloc(32, 16);
    vring_desc t[2] = {{buf, 8, VRING_DESC_F_NEXT, 1}, {table, 16, VRING_DESC_F_INDIRECT, 0}};
    f.ram->Write(table, t, sizeof t);
    d.SetDesc(0, table, 32, VRING_DESC_F_INDIRECT, 0);
    d.PushHead(0);
    ExpectPopError(q, VirtqueueError::kNestedIndirect);
    ExpectReturnedEmpty(q, d, 0);
  }
  SECTION("indirect table length zero") {
    d.SetDesc(0, buf, 0, VRING_DESC_F_INDIRECT, 0);
    d.PushHead(0);
    ExpectPopError(q, VirtqueueError::kIndirectBadLength);
  }
  SECTION("indirect table length not a multiple of 16") {
    d.SetDesc(0, buf, 24, VRING_DESC_F_INDIRECT, 0);
    d.PushHead(0);
    ExpectPopError(q, VirtqueueError::kIndirectBadLength);
  }
  SECTION("indirect table of more than 65535 entries") {
    d.SetDesc(0, buf, 65536 * 16, VRING_DESC_F_INDIRECT, 0);
    d.PushHead(0);
    ExpectPopError(q, VirtqueueError::kIndirectTooLarge);
  }
  SECTION("indirect table outside guest memory") {
    d.SetDesc(0, kRam - 16, 32, VRING_DESC_F_INDIRECT, 0);
    d.PushHead(0);
    ExpectPopError(q, VirtqueueError::kBadBufferAddress);
  }
  SECTION("indirect with NEXT") {
    d.SetDesc(0, buf, 16, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, 1);
    d.PushHead(0);
    ExpectPopError(q, VirtqueueError::kIndirectWithNext);
  }
  SECTION("loop inside an indirect table") {
    uint64_t table = d.Alloc(32, 16);
    vring_desc t[2] = {{buf, 8, VRING_DESC_F_NEXT, 1}, {buf, 8, VRING_DESC_F_NEXT, 0}};
    f.ram->Write(table, t, sizeof t);
    d.SetDesc(0, table, 32, VRING_DESC_F_INDIRECT, 0);
    d.PushHead(0);
    ExpectPopError(q, VirtqueueError::kChainTooLong);
  }
  SECTION("next out of range inside an indirect table") {
    uint64_t table = d.Alloc(32, 16);
    vring_desc t[2] = {{buf, 8, VRING_DESC_F_NEXT, 1}, {buf, 8, VRING_DESC_F_NEXT, 2}};
    f.ram->Write(table, t, sizeof t);
    d.SetDesc(0, table, 32, VRING_DESC_F_INDIRECT, 0);
    d.PushHead(0);
    ExpectPopError(q, VirtqueueError::kNextOutOfRange);
  }
  SECTION("readable after writable") {
    d.SetDesc(0, buf, 8, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1);
    d.SetDesc(1, buf, 8, 0, 0);
    d.PushHead(0);
    ExpectPopError(q, VirtqueueError::kReadableAfterWritable);
    ExpectReturnedEmpty(q, d, 0);
  }
  SECTION("total length overflows 32 bits with mapped buffers") {
    // Eight descriptors of 0x20000000 bytes each sum to 2^32; pointing all at
    // [0, 0x20000000) needs that much guest RAM, so use a larger mapping.
    auto big = GuestRam::Create({{0, 0x20000000}}, GuestRam::Backing::kAnonymous);
    REQUIRE(big.ok());
    DriverQueue bd(**big, 8, 0, 0x10000, 0x10000);
    auto bq = SplitQueue::Create(bd.config(), (*big)->map());
    REQUIRE(bq.ok());
    for (uint16_t i = 0; i < 8; ++i) {
      bd.SetDesc(i, 0, 0x20000000, i < 7 ? VRING_DESC_F_NEXT : 0, i + 1);
    }
    bd.PushHead(0);
    ExpectPopError(*bq, VirtqueueError::kLengthOverflow);
    ExpectReturnedEmpty(*bq, bd, 0);
  }
  SECTION("buffer past the end of guest memory") {
    d.SetDesc(0, kRam - 8, 16, 0, 0);
    d.PushHead(0);
    ExpectPopError(q, VirtqueueError::kBadBufferAddress);
    ExpectReturnedEmpty(q, d, 0);
  }
  SECTION("buffer address near 2^64") {
    d.SetDesc(0, UINT64_MAX - 4, 16, VRING_DESC_F_WRITE, 0);
    d.PushHead(0);
    ExpectPopError(q, VirtqueueError::kBadBufferAddress);
  }
  SECTION("available index jump breaks the queue") {
    d.SetAvailIdx(9);  // 9 ahead of 0 with a queue of 8.
    ExpectPopError(q, VirtqueueError::kAvailIndexJump);
    CHECK(q.broken());
    CHECK(q.AvailableCount() == 0);
    d.SetAvailIdx(1);
    ExpectPopError(q, VirtqueueError::kAvailIndexJump);  // Stays broken.
    CHECK_FALSE(q.EnableNotification());
  }
  SECTION("after a bad chain the next good chain pops") {
    d.SetDesc(5, buf, 8, VRING_DESC_F_NEXT, 200);
    d.PushHead(5);
    ExpectPopError(q, VirtqueueError::kNextOutOfRange);
    Buffer good[] = {{buf, 8, false}};
    auto head = d.AddChain(good);
    REQUIRE(head);
    DescriptorChain chain;
    auto r = q.Pop(&chain);
    REQUIRE(r.ok());
    REQUIRE(*r);
    CHECK(chain.head() == *head);
  }
}

TEST_CASE("indirect descriptors without the feature are refused") {
  Fixture f(8, false, /*indirect=*/false);
  SplitQueue q = f.Queue();
  f.driver.SetDesc(0, f.driver.Alloc(16, 16), 16, VRING_DESC_F_INDIRECT, 0);
  f.driver.PushHead(0);
  ExpectPopError(q, VirtqueueError::kIndirectNotNegotiated);
}

TEST_CASE("a buffer over a memory hole is refused") {
  auto ram = GuestRam::Create({{0, 0x40000}, {0x80000, 0x10000}});
  REQUIRE(ram.ok());
  DriverQueue d(**ram, 8, 0, 0x20000, 0x20000);
  auto q = SplitQueue::Create(d.config(), (*ram)->map());
  REQUIRE(q.ok());
  d.SetDesc(0, 0x3f000, 0x2000, VRING_DESC_F_WRITE, 0);  // Runs into the hole at 0x40000.
  d.PushHead(0);
  ExpectPopError(*q, VirtqueueError::kBadBufferAddress);
  d.SetDesc(1, 0x60000, 16, 0, 0);  // Inside the hole.
  d.PushHead(1);
  ExpectPopError(*q, VirtqueueError::kBadBufferAddress);
}

TEST_CASE("queue configuration is validated") {
  auto ram = GuestRam::CreateOrDie(kRam);
  VirtqueueConfig c;
  c.desc_addr = 0;
  c.avail_addr = 0x10000;
  c.used_addr = 0x20000;
  auto kind = [&](const VirtqueueConfig& cfg) {
    auto q = SplitQueue::Create(cfg, ram->map());
    REQUIRE_FALSE(q.ok());
    INFO(q.status().message());
    return GetVirtqueueError(q.status());
  };
  for (uint32_t bad : {0u, 3u, 12u, 65536u, 32769u}) {
    c.size = bad;
    CHECK(kind(c) == VirtqueueError::kBadQueueSize);
  }
  c.size = 256;
  REQUIRE(SplitQueue::Create(c, ram->map()).ok());
  VirtqueueConfig m = c;
  m.desc_addr = 8;
  CHECK(kind(m) == VirtqueueError::kMisaligned);
  m = c;
  m.avail_addr = 0x10001;
  CHECK(kind(m) == VirtqueueError::kMisaligned);
  m = c;
  m.used_addr = 0x20002;
  CHECK(kind(m) == VirtqueueError::kMisaligned);
  m = c;
  m.used_addr = kRam - 16;  // The used ring runs past guest memory.
  CHECK(kind(m) == VirtqueueError::kRingNotMapped);
  m = c;
  m.desc_addr = 0x100000000ull;
  CHECK(kind(m) == VirtqueueError::kRingNotMapped);
  CHECK(GetVirtqueueError(SplitQueue::Create(c, nullptr).status()) ==
        VirtqueueError::kRingNotMapped);
  CHECK_FALSE(GetVirtqueueError(absl::InternalError("other")).has_value());

  SECTION("the largest queue") {
    auto big = GuestRam::CreateOrDie(4 << 20);
    DriverQueue d(*big, 32768, 0, 2 << 20, 2 << 20, true);
    REQUIRE(SplitQueue::Create(d.config(), big->map()).ok());
  }
  SECTION("event fields must be in memory with EVENT_IDX") {
    VirtqueueConfig e = c;
    e.used_addr = kRam - (4 + 8 * 256);  // Fits exactly without avail_event.
    REQUIRE(SplitQueue::Create(e, ram->map()).ok());
    e.event_idx = true;
    CHECK(kind(e) == VirtqueueError::kRingNotMapped);
  }
}

TEST_CASE("AddUsed refuses a head outside the queue") {
  Fixture f;
  SplitQueue q = f.Queue();
  absl::Status s = q.AddUsed(8, 0);
  CHECK(GetVirtqueueError(s) == VirtqueueError::kUsedHeadOutOfRange);
  CHECK(q.used_idx() == 0);
}

TEST_CASE("16-bit indexes wrap around") {
  Fixture f(4);
  SplitQueue q = f.Queue();
  uint64_t buf = f.driver.Alloc(64);
  DescriptorChain chain;
  for (uint32_t i = 0; i < 70000; ++i) {
    Buffer b[] = {{buf, 64, true}};
    auto head = f.driver.AddChain(b);
    REQUIRE(head);
    auto r = q.Pop(&chain);
    REQUIRE(r.ok());
    REQUIRE(*r);
    REQUIRE(chain.head() == *head);
    REQUIRE(q.AddUsed(chain.head(), i & 0xff).ok());
    q.PublishUsed();
    auto used = f.driver.PopUsed();
    REQUIRE(used);
    REQUIRE(used->len == (i & 0xff));
  }
  CHECK(q.last_avail_idx() == static_cast<uint16_t>(70000));
}

TEST_CASE("queue state survives a stop and restart (GET/SET_VRING_BASE)") {
  Fixture f;
  uint64_t buf = f.driver.Alloc(64);
  Buffer b[] = {{buf, 64, true}};
  uint16_t heads[3];
  for (auto& h : heads) h = *f.driver.AddChain(b);
  uint16_t base;
  {
    SplitQueue q = f.Queue();
    DescriptorChain chain;
    for (int i = 0; i < 2; ++i) {
      REQUIRE(*q.Pop(&chain));
      REQUIRE(q.AddUsed(chain.head(), 1).ok());
    }
    q.PublishUsed();
    base = q.last_avail_idx();
  }
  auto q2 = SplitQueue::Create(f.driver.config(), f.ram->map(), base);
  REQUIRE(q2.ok());
  CHECK(q2->used_idx() == 2);  // Read back from the used ring.
  DescriptorChain chain;
  REQUIRE(*q2->Pop(&chain));
  CHECK(chain.head() == heads[2]);
  REQUIRE(q2->AddUsed(chain.head(), 5).ok());
  q2->PublishUsed();
  for (int i = 0; i < 3; ++i) REQUIRE(f.driver.PopUsed());
}

TEST_CASE("memory table replacement keeps chains in flight valid") {
  auto ram = GuestRam::Create({{0, 0x40000}, {0x100000, 0x10000}});
  REQUIRE(ram.ok());
  DriverQueue d(**ram, 8, 0, 0x20000, 0x20000);
  auto q = SplitQueue::Create(d.config(), (*ram)->map());
  REQUIRE(q.ok());
  Buffer b[] = {{0x100000, 16, true}};
  REQUIRE(d.AddChain(b));
  DescriptorChain in_flight;
  REQUIRE(*q->Pop(&in_flight));
  GuestMemoryMap::Ptr old_map = (*ram)->map();

  // The new table drops the second region.
  auto smaller = (*ram)->MapWith({0});
  REQUIRE(smaller.ok());
  REQUIRE(q->SetMemory(*smaller).ok());
  CHECK(in_flight.memory() == old_map);
  std::memcpy(in_flight.writable()[0].iov_base, "still mapped", 12);

  // New chains use the new table: the dropped region is a hole now.
  REQUIRE(d.AddChain(b));
  ExpectPopError(*q, VirtqueueError::kBadBufferAddress);

  // A table without the rings is refused and changes nothing.
  auto no_rings = (*ram)->MapWith({1});
  REQUIRE(no_rings.ok());
  CHECK(GetVirtqueueError(q->SetMemory(*no_rings)) == VirtqueueError::kRingNotMapped);
  CHECK(q->memory() == *smaller);
}

TEST_CASE("EVENT_IDX: used_event decides notifications") {
  Fixture f(8, /*event_idx=*/true);
  SplitQueue q = f.Queue();
  uint64_t buf = f.driver.Alloc(64);
  Buffer b[] = {{buf, 64, true}};
  DescriptorChain chain;
  auto complete_one = [&] {
    REQUIRE(f.driver.AddChain(b));
    REQUIRE(*q.Pop(&chain));
    REQUIRE(q.AddUsed(chain.head(), 0).ok());
    return q.PublishUsed();
  };
  f.driver.SetUsedEvent(0);
  CHECK(complete_one());        // used 0 -> 1 crosses used_event 0.
  CHECK_FALSE(complete_one());  // 1 -> 2: already notified for 0.
  f.driver.SetUsedEvent(4);
  CHECK_FALSE(complete_one());  // 2 -> 3
  CHECK_FALSE(complete_one());  // 3 -> 4
  CHECK(complete_one());        // 4 -> 5 crosses 4.
  while (f.driver.PopUsed()) {
  }
  // A batch crossing used_event notifies once.
  f.driver.SetUsedEvent(6);
  for (int i = 0; i < 3; ++i) {
    REQUIRE(f.driver.AddChain(b));
    REQUIRE(*q.Pop(&chain));
    REQUIRE(q.AddUsed(chain.head(), 0).ok());
  }
  CHECK(q.PublishUsed());  // 5 -> 8 crosses 6.
  // The device ignores VRING_AVAIL_F_NO_INTERRUPT with EVENT_IDX.
  f.driver.SetNoInterrupt(true);
  while (f.driver.PopUsed()) {
  }
  f.driver.SetUsedEvent(8);
  CHECK(complete_one());
}

TEST_CASE("without EVENT_IDX the device honours NO_INTERRUPT") {
  Fixture f;
  SplitQueue q = f.Queue();
  uint64_t buf = f.driver.Alloc(64);
  Buffer b[] = {{buf, 64, true}};
  DescriptorChain chain;
  f.driver.SetNoInterrupt(true);
  REQUIRE(f.driver.AddChain(b));
  REQUIRE(*q.Pop(&chain));
  REQUIRE(q.AddUsed(chain.head(), 0).ok());
  CHECK_FALSE(q.PublishUsed());
  f.driver.SetNoInterrupt(false);
  REQUIRE(f.driver.PopUsed());
  REQUIRE(f.driver.AddChain(b));
  REQUIRE(*q.Pop(&chain));
  REQUIRE(q.AddUsed(chain.head(), 0).ok());
  CHECK(q.PublishUsed());
}

TEST_CASE("kick suppression: disable, drain, enable, re-check") {
  for (bool event_idx : {false, true}) {
    DYNAMIC_SECTION("event_idx=" << event_idx) {
      Fixture f(8, event_idx);
      SplitQueue q = f.Queue();
      uint64_t buf = f.driver.Alloc(64);
      Buffer b[] = {{buf, 64, true}};
      DescriptorChain chain;

      q.EnableNotification();
      uint16_t old = f.driver.avail_idx();
      REQUIRE(f.driver.AddChain(b));
      CHECK(f.driver.DeviceWantsKick(old));

      q.DisableNotification();
      REQUIRE(*q.Pop(&chain));
      old = f.driver.avail_idx();
      REQUIRE(f.driver.AddChain(b));
      CHECK_FALSE(f.driver.DeviceWantsKick(old));  // Device is busy: no kick.

      // Enabling finds the chain that arrived without a kick.
      CHECK(q.EnableNotification());
      q.DisableNotification();
      REQUIRE(*q.Pop(&chain));
      CHECK_FALSE(q.EnableNotification());  // Drained: now it waits for a kick.
      old = f.driver.avail_idx();
      REQUIRE(f.driver.AddChain(b));
      CHECK(f.driver.DeviceWantsKick(old));
      if (event_idx) CHECK(f.driver.avail_event() == q.last_avail_idx());
    }
  }
}

// A guest thread and a device thread exchanging 200k chains through eventfds,
// with suppression on both sides. A lost wakeup shows up as a poll timeout.
TEST_CASE("no lost wakeups between a driver and a device thread") {
  for (bool event_idx : {false, true}) {
    DYNAMIC_SECTION("event_idx=" << event_idx) {
      Fixture f(16, event_idx);
      SplitQueue q = f.Queue();
      UniqueFd kick(eventfd(0, EFD_CLOEXEC));
      UniqueFd call(eventfd(0, EFD_CLOEXEC));
      REQUIRE(kick.valid());
      REQUIRE(call.valid());
      constexpr uint32_t kTotal = 200000;
      uint64_t buf = f.driver.Alloc(64);
      std::atomic<bool> timed_out{false};

      auto wait = [&](int fd) {
        pollfd p{fd, POLLIN, 0};
        if (poll(&p, 1, 10000) != 1) {
          timed_out = true;
          return false;
        }
        uint64_t v;
        (void)!read(fd, &v, sizeof v);
        return true;
      };
      auto signal = [](int fd) {
        uint64_t one = 1;
        (void)!write(fd, &one, sizeof one);
      };

      std::thread device([&] {
        DescriptorChain chain;
        uint32_t done = 0;
        while (done < kTotal && !timed_out) {
          if (!wait(kick.get())) break;
          q.DisableNotification();
          for (;;) {
            for (;;) {
              auto r = q.Pop(&chain);
              if (!r.ok() || !*r) break;
              (void)q.AddUsed(chain.head(), 1);
              ++done;
            }
            if (q.PublishUsed()) signal(call.get());
            if (!q.EnableNotification()) break;
            q.DisableNotification();
          }
        }
      });

      uint32_t sent = 0, completed = 0;
      Buffer b[] = {{buf, 64, true}};
      while (completed < kTotal && !timed_out) {
        bool added = false;
        uint16_t old = f.driver.avail_idx();
        while (sent < kTotal) {
          if (!f.driver.AddChainNoPublish(b)) break;
          ++sent;
          added = true;
        }
        if (added) {
          f.driver.Publish();
          if (f.driver.DeviceWantsKick(old)) signal(kick.get());
        }
        // Linux-style: reap, then ask for an interrupt and re-check.
        bool reaped = false;
        while (f.driver.PopUsed()) {
          ++completed;
          reaped = true;
        }
        if (reaped || completed == kTotal) continue;
        if (event_idx) {
          f.driver.SetUsedEvent(static_cast<uint16_t>(completed));
        } else {
          f.driver.SetNoInterrupt(false);
        }
        // SetUsedEvent/SetNoInterrupt store, used_idx() loads: both
        // sequentially consistent, so ordered (the driver's mb()).
        if (f.driver.used_idx() != static_cast<uint16_t>(completed)) continue;
        wait(call.get());
      }
      signal(kick.get());  // Let the device thread see the end.
      device.join();
      CHECK_FALSE(timed_out);
      CHECK(completed == kTotal);
    }
  }
}

}  // namespace
}  // namespace virtiofs
