// The vhost-user back-end state machine, driven message by message.
#include <dirent.h>
#include <fcntl.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <thread>

#include "tests/support/host_files.h"
#include "tests/support/driver_queue.h"
#include "tests/support/echo_device.h"
#include "tests/support/guest_ram.h"
#include "virtiofs/vhost_user.h"

namespace virtiofs {
namespace {

using testing::CountFds;

using namespace vhost_user;  // NOLINT: protocol names in a test.
using testing::DriverQueue;
using testing::EchoDevice;
using testing::GuestRam;

constexpr uint64_t kRamSize = 4 << 20;

bool IsOpen(int fd) { return fcntl(fd, F_GETFD) != -1; }

UniqueFd EventFd() { return UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)); }

UniqueFd DupFd(int fd) { return UniqueFd(fcntl(fd, F_DUPFD_CLOEXEC, 0)); }

Message Msg(Request r, std::vector<uint8_t> payload = {}, std::vector<UniqueFd> fds = {},
            uint32_t flags = kVersion) {
  Message m;
  m.header = Header{static_cast<uint32_t>(r), flags, static_cast<uint32_t>(payload.size())};
  m.payload = std::move(payload);
  m.fds = std::move(fds);
  return m;
}

template <typename T>
std::vector<uint8_t> Bytes(const T& v) {
  auto b = AsBytes(v);
  return {b.begin(), b.end()};
}

uint64_t ReplyU64(const VhostUserBackend::Reply& r) {
  REQUIRE(r.payload.size() == 8);
  uint64_t v;
  std::memcpy(&v, r.payload.data(), 8);
  return v;
}

// The next used element, waiting for it: the call fd wakes us up, but a
// signal alone proves nothing (the back-end signals a new call fd once).
std::optional<DriverQueue::UsedElem> WaitUsed(DriverQueue& q, int call_fd, int timeout_ms = 5000) {
  for (int waited = 0; waited < timeout_ms; waited += 10) {
    if (auto u = q.PopUsed()) return u;
    pollfd p{call_fd, POLLIN, 0};
    if (poll(&p, 1, 10) == 1) {
      uint64_t v;
      (void)!read(call_fd, &v, sizeof v);
    }
  }
  return q.PopUsed();
}

bool Signalled(int efd, int timeout_ms = 2000) {
  pollfd p{efd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) != 1) return false;
  uint64_t v;
  return read(efd, &v, sizeof v) == sizeof v;
}

// A back-end over an EchoDevice with guest RAM and driver queues, driven by
// direct Handle() calls (no socket).
struct Session {
  explicit Session(uint32_t queues = 2, bool event_idx = false)
      : device(queues),
        backend(&device),
        ram(GuestRam::CreateOrDie(kRamSize)),
        q0(*ram, 256, 0x0, 0x100000, 0x100000, event_idx),
        q1(*ram, 256, 0x10000, 0x200000, 0x100000, event_idx) {}

  // Handles a message that must succeed; returns its reply (if any).
  std::optional<VhostUserBackend::Reply> Ok(Message m) {
    auto r = backend.Handle(std::move(m));
    INFO(r.status().message());
    REQUIRE(r.ok());
    return *std::move(r);
  }
  void Fails(Message m) {
    auto r = backend.Handle(std::move(m));
    REQUIRE_FALSE(r.ok());
  }
  // A NEED_REPLY message whose REPLY_ACK must be `ack`.
  void Acked(Message m, uint64_t ack) {
    m.header.flags |= kNeedReplyFlag;
    auto r = Ok(std::move(m));
    REQUIRE(r.has_value());
    CHECK(r->header.flags == (kVersion | kReplyFlag));
    CHECK(ReplyU64(*r) == ack);
  }

  void Negotiate(uint64_t protocol = Bit(kProtocolReplyAck) | Bit(kProtocolMq),
                 bool event_idx = false) {
    Ok(Msg(Request::kGetFeatures));
    Ok(Msg(Request::kSetProtocolFeatures, Bytes(protocol)));
    Ok(Msg(Request::kSetOwner));
    uint64_t f = Bit(VIRTIO_F_VERSION_1) | Bit(kFeatureProtocolFeatures) |
                 Bit(VIRTIO_RING_F_INDIRECT_DESC) | (event_idx ? Bit(VIRTIO_RING_F_EVENT_IDX) : 0);
    Ok(Msg(Request::kSetFeatures, Bytes(f)));
  }

  std::vector<uint8_t> MemTable(const GuestRam& r) {
    std::vector<uint8_t> p(sizeof(MemoryTableHeader) + sizeof(MemoryRegion) * r.region_count());
    MemoryTableHeader h{static_cast<uint32_t>(r.region_count()), 0};
    std::memcpy(p.data(), &h, sizeof h);
    for (size_t i = 0; i < r.region_count(); ++i) {
      const auto& g = r.region(i);
      MemoryRegion m{g.guest_phys_addr, g.size, g.user_addr, 0};
      std::memcpy(p.data() + sizeof h + i * sizeof m, &m, sizeof m);
    }
    return p;
  }
  void SetMemTable() {
    std::vector<UniqueFd> fds;
    for (size_t i = 0; i < ram->region_count(); ++i) fds.push_back(DupFd(ram->fd(i)));
    Ok(Msg(Request::kSetMemTable, MemTable(*ram), std::move(fds)));
  }

  VringAddr Addr(uint32_t index, const DriverQueue& q, uint32_t flags = 0, uint64_t log = 0) {
    auto c = q.config();
    return VringAddr{index, flags, reinterpret_cast<uintptr_t>(ram->Host(c.desc_addr)),
                     reinterpret_cast<uintptr_t>(ram->Host(c.used_addr)),
                     reinterpret_cast<uintptr_t>(ram->Host(c.avail_addr)), log};
  }

  // Configures and enables ring `index` over `q`.
  void StartRing(uint32_t index, const DriverQueue& q, uint16_t base = 0, uint32_t flags = 0,
                 uint64_t log = 0) {
    kick[index] = EventFd();
    call[index] = EventFd();
    Ok(Msg(Request::kSetVringNum, Bytes(VringState{index, q.size()})));
    Ok(Msg(Request::kSetVringBase, Bytes(VringState{index, base})));
    Ok(Msg(Request::kSetVringAddr, Bytes(Addr(index, q, flags, log))));
    std::vector<UniqueFd> k;
    k.push_back(DupFd(kick[index].get()));
    Ok(Msg(Request::kSetVringKick, Bytes(uint64_t{index}), std::move(k)));
    std::vector<UniqueFd> c;
    c.push_back(DupFd(call[index].get()));
    Ok(Msg(Request::kSetVringCall, Bytes(uint64_t{index}), std::move(c)));
    Ok(Msg(Request::kSetVringEnable, Bytes(VringState{index, 1})));
  }

  // Sends `text` through queue 1 and returns what the echo device wrote back.
  std::string Echo(const std::string& text, uint64_t gpa_in = 0, uint64_t gpa_out = 0) {
    uint64_t in = gpa_in ? gpa_in : q1.Alloc(text.size());
    uint64_t out = gpa_out ? gpa_out : q1.Alloc(text.size());
    ram->Write(in, text.data(), text.size());
    DriverQueue::Buffer b[] = {{in, static_cast<uint32_t>(text.size()), false},
                               {out, static_cast<uint32_t>(text.size()), true}};
    REQUIRE(q1.AddChain(b));
    uint64_t one = 1;
    REQUIRE(write(kick[1].get(), &one, 8) == 8);
    auto used = WaitUsed(q1, call[1].get());
    REQUIRE(used);
    std::string back(used->len, '\0');
    ram->Read(out, back.data(), back.size());
    return back;
  }

  EchoDevice device;
  VhostUserBackend backend;
  std::unique_ptr<GuestRam> ram;
  DriverQueue q0, q1;
  UniqueFd kick[2], call[2];
};

TEST_CASE("feature negotiation") {
  Session s;
  auto f = s.Ok(Msg(Request::kGetFeatures));
  REQUIRE(f);
  CHECK(f->header.flags == (kVersion | kReplyFlag));
  CHECK(f->header.request == static_cast<uint32_t>(Request::kGetFeatures));
  const uint64_t features = ReplyU64(*f);
  for (int bit : {VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_RING_F_EVENT_IDX,
                  kFeatureProtocolFeatures, kFeatureLogAll}) {
    CHECK((features & Bit(bit)) != 0);
  }
  const uint64_t pf = ReplyU64(*s.Ok(Msg(Request::kGetProtocolFeatures)));
  for (int bit : {kProtocolMq, kProtocolReplyAck, kProtocolBackendReq, kProtocolBackendSendFd,
                  kProtocolConfig, kProtocolConfigureMemSlots, kProtocolResetDevice,
                  kProtocolStatus, kProtocolLogShmfd, kProtocolInflightShmfd}) {
    CHECK((pf & Bit(bit)) != 0);
  }
  CHECK((pf & Bit(kProtocolPagefault)) == 0);

  SECTION("bits never offered are refused") {
    s.Fails(Msg(Request::kSetProtocolFeatures, Bytes(Bit(kProtocolPagefault))));
    s.Fails(Msg(Request::kSetFeatures, Bytes(Bit(40))));
  }
  SECTION("un-negotiated requests fail, and REPLY_ACK reports it") {
    s.Fails(Msg(Request::kGetQueueNum));  // MQ not negotiated.
    s.Ok(Msg(Request::kSetProtocolFeatures, Bytes(Bit(kProtocolReplyAck))));
    s.Fails(Msg(Request::kGetMaxMemSlots));  // Not negotiated; has its own reply: closes.
    s.Acked(Msg(Request::kSetOwner), 0);
    s.Acked(Msg(Request::kSetFeatures, Bytes(Bit(40))), 1);  // Still refused, but acked.
    s.Acked(Msg(Request::kSetVringEnable, Bytes(VringState{0, 1})), 1);  // PF not acked yet.
  }
  SECTION("GET_QUEUE_NUM and GET_MAX_MEM_SLOTS once negotiated") {
    s.Ok(Msg(Request::kSetProtocolFeatures,
             Bytes(Bit(kProtocolMq) | Bit(kProtocolConfigureMemSlots))));
    CHECK(ReplyU64(*s.Ok(Msg(Request::kGetQueueNum))) == 2);
    CHECK(ReplyU64(*s.Ok(Msg(Request::kGetMaxMemSlots))) == 509);
  }
}

TEST_CASE("framing errors close the connection") {
  Session s;
  s.Ok(Msg(Request::kSetProtocolFeatures, Bytes(Bit(kProtocolReplyAck))));
  SECTION("short payload") {
    s.Fails(Msg(Request::kSetFeatures, {1, 2, 3, 4}));
  }
  SECTION("oversized payload") {
    s.Fails(Msg(Request::kGetFeatures, std::vector<uint8_t>(8)));
    s.Fails(Msg(Request::kSetVringNum, std::vector<uint8_t>(12)));
  }
  SECTION("fds on a request that takes none, all closed") {
    UniqueFd e = EventFd();
    std::vector<UniqueFd> fds;
    fds.push_back(DupFd(e.get()));
    const int passed = fds[0].get();
    s.Fails(Msg(Request::kGetFeatures, {}, std::move(fds)));
    CHECK_FALSE(IsOpen(passed));
  }
  SECTION("too many fds for the request") {
    std::vector<UniqueFd> fds;
    fds.push_back(EventFd());
    fds.push_back(EventFd());
    s.Fails(Msg(Request::kSetVringKick, Bytes(uint64_t{0}), std::move(fds)));
  }
  SECTION("reply flag or unknown flags on a request") {
    s.Fails(Msg(Request::kGetFeatures, {}, {}, kVersion | kReplyFlag));
    s.Fails(Msg(Request::kGetFeatures, {}, {}, kVersion | 0x100));
  }
  SECTION("unknown request: error, acked when asked") {
    s.Fails(Msg(static_cast<Request>(99)));
    s.Fails(Msg(Request::kNone));
    s.Acked(Msg(static_cast<Request>(99)), 1);
    s.Acked(Msg(Request::kSendRarp, Bytes(uint64_t{0})), 1);  // Not a net device.
  }
}

TEST_CASE("hostile memory tables") {
  Session s;
  s.Negotiate(Bit(kProtocolReplyAck) | Bit(kProtocolConfigureMemSlots));
  auto table = [&](std::vector<MemoryRegion> regions) {
    std::vector<uint8_t> p(8 + 32 * regions.size());
    MemoryTableHeader h{static_cast<uint32_t>(regions.size()), 0};
    std::memcpy(p.data(), &h, 8);
    std::memcpy(p.data() + 8, regions.data(), 32 * regions.size());
    return p;
  };
  auto fds = [&](size_t n) {
    std::vector<UniqueFd> v;
    for (size_t i = 0; i < n; ++i) v.push_back(DupFd(s.ram->fd(0)));
    return v;
  };
  const uint64_t ua = s.ram->region(0).user_addr;
  SECTION("size zero") {
    s.Acked(Msg(Request::kSetMemTable, table({{0, 0, ua, 0}}), fds(1)), 1);
  }
  SECTION("overlapping regions") {
    s.Acked(Msg(Request::kSetMemTable,
                table({{0, 0x100000, ua, 0}, {0x80000, 0x100000, ua + 0x200000, 0}}), fds(2)),
            1);
  }
  SECTION("overflowing region") {
    s.Acked(Msg(Request::kSetMemTable, table({{UINT64_MAX - 0xfff, 0x2000, ua, 0}}), fds(1)), 1);
    s.Acked(Msg(Request::kSetMemTable, table({{0, 0x1000, ua, UINT64_MAX - 0x10}}), fds(1)), 1);
  }
  SECTION("region larger than its fd") {
    s.Acked(Msg(Request::kSetMemTable, table({{0, kRamSize * 2, ua, 0}}), fds(1)), 1);
  }
  SECTION("fd that is not memory") {
    std::vector<UniqueFd> v;
    v.push_back(EventFd());
    s.Acked(Msg(Request::kSetMemTable, table({{0, 0x1000, ua, 0}}), std::move(v)), 1);
  }
  SECTION("more regions than the protocol allows") {
    std::vector<MemoryRegion> regions;
    for (uint64_t i = 0; i < 9; ++i) regions.push_back({i * 0x1000, 0x1000, ua + i * 0x1000, 0});
    s.Acked(Msg(Request::kSetMemTable, table(regions), fds(8)), 1);
  }
  SECTION("region count and fd count differ") {
    s.Acked(Msg(Request::kSetMemTable, table({{0, 0x1000, ua, 0}}), fds(0)), 1);
    s.Acked(Msg(Request::kSetMemTable, table({{0, 0x1000, ua, 0}}), fds(2)), 1);
  }
  SECTION("payload size does not match the region count") {
    auto p = table({{0, 0x1000, ua, 0}});
    p.resize(p.size() - 4);
    s.Acked(Msg(Request::kSetMemTable, p, fds(1)), 1);
  }
  SECTION("ADD_MEM_REG past the slot limit") {
    VhostUserBackendOptions opts;
    opts.max_mem_slots = 2;
    VhostUserBackend limited(&s.device, opts);
    REQUIRE(limited.Handle(Msg(Request::kSetProtocolFeatures,
                               Bytes(Bit(kProtocolConfigureMemSlots))))
                .ok());
    for (uint64_t i = 0; i < 3; ++i) {
      std::vector<UniqueFd> one;
      one.push_back(DupFd(s.ram->fd(0)));
      SingleMemoryRegion sr{0, {i * 0x1000, 0x1000, ua + i * 0x1000, i * 0x1000}};
      auto r = limited.Handle(Msg(Request::kAddMemReg, Bytes(sr), std::move(one)));
      CHECK(r.ok() == (i < 2));
    }
  }
  CHECK(s.backend.memory() == nullptr);  // Nothing was installed.
}

TEST_CASE("hostile ring configuration") {
  Session s;
  s.Negotiate();
  s.SetMemTable();
  SECTION("ring index beyond the queue count") {
    s.Acked(Msg(Request::kSetVringNum, Bytes(VringState{2, 256})), 1);
    s.Acked(Msg(Request::kSetVringBase, Bytes(VringState{7, 0})), 1);
    s.Fails(Msg(Request::kGetVringBase, Bytes(VringState{2, 0})));  // Own reply: closes.
    std::vector<UniqueFd> k;
    k.push_back(EventFd());
    s.Acked(Msg(Request::kSetVringKick, Bytes(uint64_t{5}), std::move(k)), 1);
  }
  SECTION("ring size not a power of two, zero, or above the maximum") {
    for (uint32_t n : {0u, 3u, 1000u, 2048u, 65536u}) {
      s.Acked(Msg(Request::kSetVringNum, Bytes(VringState{1, n})), 1);
    }
  }
  SECTION("ring addresses outside memory or misaligned") {
    VringAddr a = s.Addr(1, s.q1);
    a.used_user_addr = s.ram->region(0).user_addr + kRamSize - 8;
    s.Acked(Msg(Request::kSetVringAddr, Bytes(a)), 1);
    a = s.Addr(1, s.q1);
    a.desc_user_addr = 0x1000;  // Not a front-end address.
    s.Acked(Msg(Request::kSetVringAddr, Bytes(a)), 1);
    a = s.Addr(1, s.q1);
    a.avail_user_addr += 1;
    s.Acked(Msg(Request::kSetVringAddr, Bytes(a)), 1);
    a = s.Addr(1, s.q1, 0x2);  // Unknown flag.
    s.Acked(Msg(Request::kSetVringAddr, Bytes(a)), 1);
  }
  SECTION("base beyond 16 bits, enable beyond 1") {
    s.Acked(Msg(Request::kSetVringBase, Bytes(VringState{1, 0x10000})), 1);
    s.Acked(Msg(Request::kSetVringEnable, Bytes(VringState{1, 2})), 1);
  }
  SECTION("kick fd and the no-fd flag disagree; polling is not supported") {
    s.Acked(Msg(Request::kSetVringKick, Bytes(uint64_t{1})), 1);  // fd missing
    std::vector<UniqueFd> k;
    k.push_back(EventFd());
    s.Acked(Msg(Request::kSetVringKick, Bytes(uint64_t{1} | kVringNoFdMask), std::move(k)), 1);
    s.Acked(Msg(Request::kSetVringKick, Bytes(uint64_t{1} | kVringNoFdMask)), 1);
    s.Acked(Msg(Request::kSetVringCall, Bytes(uint64_t{1} | 0x200)), 1);  // Unknown bit.
  }
  CHECK(s.device.starts() == 0);
}

TEST_CASE("ring life cycle: start on kick and enable, stop on GET_VRING_BASE") {
  Session s;
  s.Negotiate();
  s.SetMemTable();
  s.StartRing(1, s.q1);
  CHECK(s.backend.ring_running(1));
  CHECK(s.device.starts() == 1);
  CHECK(s.Echo("hello, ring") == "hello, ring");
  CHECK(s.Echo("second") == "second");

  auto base = s.Ok(Msg(Request::kGetVringBase, Bytes(VringState{1, 0})));
  REQUIRE(base);
  CHECK(base->header.flags == (kVersion | kReplyFlag));
  VringState st;
  std::memcpy(&st, base->payload.data(), sizeof st);
  CHECK(st.index == 1);
  CHECK(st.num == 2);
  CHECK_FALSE(s.backend.ring_running(1));
  CHECK(s.device.stops() == 1);

  // A request while stopped is not served...
  uint64_t in = s.q1.Alloc(4), out = s.q1.Alloc(4);
  s.ram->Write(in, "wait", 4);
  DriverQueue::Buffer b[] = {{in, 4, false}, {out, 4, true}};
  REQUIRE(s.q1.AddChain(b));
  CHECK_FALSE(s.q1.PopUsed());
  // ...until the ring restarts from the saved base with a new kick fd.
  s.StartRing(1, s.q1, 2);
  // The new call fd gets a signal when it replaces the old one on a running
  // ring, so look at the used ring itself.
  auto used = WaitUsed(s.q1, s.call[1].get());
  REQUIRE(used);
  CHECK(used->len == 4);
  CHECK(s.device.completed() == 3);

  SECTION("SET_VRING_ENABLE(0) stops, (1) resumes") {
    s.Ok(Msg(Request::kSetVringEnable, Bytes(VringState{1, 0})));
    CHECK_FALSE(s.backend.ring_running(1));
    s.Ok(Msg(Request::kSetVringEnable, Bytes(VringState{1, 1})));
    CHECK(s.backend.ring_running(1));
    CHECK(s.Echo("again") == "again");
  }
  SECTION("configuration of a running ring is refused") {
    s.Acked(Msg(Request::kSetVringNum, Bytes(VringState{1, 128})), 1);
    s.Acked(Msg(Request::kSetVringBase, Bytes(VringState{1, 0})), 1);
  }
  SECTION("RESET_DEVICE and SET_STATUS(0) stop everything") {
    s.Ok(Msg(Request::kSetProtocolFeatures,
             Bytes(Bit(kProtocolReplyAck) | Bit(kProtocolStatus) | Bit(kProtocolResetDevice))));
    s.Acked(Msg(Request::kSetStatus, Bytes(uint64_t{0xf})), 0);
    CHECK(ReplyU64(*s.Ok(Msg(Request::kGetStatus))) == 0xf);
    s.Acked(Msg(Request::kSetStatus, Bytes(uint64_t{0x100})), 1);
    s.Acked(Msg(Request::kSetStatus, Bytes(uint64_t{0})), 0);
    CHECK_FALSE(s.backend.ring_running(1));
    CHECK(s.device.resets() >= 1);
  }
}

TEST_CASE("a call fd replaced on a running ring is signalled once") {
  Session s;
  s.Negotiate();
  s.SetMemTable();
  s.StartRing(1, s.q1);
  UniqueFd fresh = EventFd();
  std::vector<UniqueFd> c;
  c.push_back(DupFd(fresh.get()));
  s.Ok(Msg(Request::kSetVringCall, Bytes(uint64_t{1}), std::move(c)));
  CHECK(Signalled(fresh.get(), 0));  // No completion can be lost in the swap.
}

TEST_CASE("without PROTOCOL_FEATURES rings are enabled by SET_FEATURES") {
  Session s;
  s.Ok(Msg(Request::kSetOwner));
  s.Ok(Msg(Request::kSetFeatures, Bytes(Bit(VIRTIO_F_VERSION_1))));
  s.SetMemTable();
  s.kick[1] = EventFd();
  s.call[1] = EventFd();
  s.Ok(Msg(Request::kSetVringNum, Bytes(VringState{1, 256})));
  s.Ok(Msg(Request::kSetVringAddr, Bytes(s.Addr(1, s.q1))));
  std::vector<UniqueFd> c;
  c.push_back(DupFd(s.call[1].get()));
  s.Ok(Msg(Request::kSetVringCall, Bytes(uint64_t{1}), std::move(c)));
  CHECK_FALSE(s.backend.ring_running(1));
  std::vector<UniqueFd> k;
  k.push_back(DupFd(s.kick[1].get()));
  s.Ok(Msg(Request::kSetVringKick, Bytes(uint64_t{1}), std::move(k)));
  CHECK(s.backend.ring_running(1));
  CHECK(s.Echo("legacy") == "legacy");
  s.Fails(Msg(Request::kSetVringEnable, Bytes(VringState{1, 1})));
}

TEST_CASE("memory table replaced while the ring runs") {
  Session s;
  s.Negotiate(Bit(kProtocolReplyAck) | Bit(kProtocolConfigureMemSlots));
  s.SetMemTable();
  s.StartRing(1, s.q1);
  CHECK(s.Echo("before") == "before");

  auto extra = GuestRam::Create({{0x40000000, 0x10000}});
  REQUIRE(extra.ok());
  const auto& xr = (*extra)->region(0);
  SingleMemoryRegion add{0, {xr.guest_phys_addr, xr.size, xr.user_addr, 0}};
  std::vector<UniqueFd> fd;
  fd.push_back(DupFd((*extra)->fd(0)));
  s.Acked(Msg(Request::kAddMemReg, Bytes(add), std::move(fd)), 0);
  REQUIRE(s.backend.memory()->regions().size() == 2);

  // Buffers in the new region: the worker picks up the new table.
  (*extra)->Write(0x40000000, "far away", 8);
  DriverQueue::Buffer b[] = {{0x40000000, 8, false}, {0x40000100, 8, true}};
  REQUIRE(s.q1.AddChain(b));
  uint64_t one = 1;
  REQUIRE(write(s.kick[1].get(), &one, 8) == 8);
  auto used = WaitUsed(s.q1, s.call[1].get());
  REQUIRE(used);
  CHECK(used->len == 8);
  char back[8];
  (*extra)->Read(0x40000100, back, 8);
  CHECK(std::string(back, 8) == "far away");

  // Removing it makes those addresses a hole: the chain comes back empty.
  s.Acked(Msg(Request::kRemMemReg, Bytes(add)), 0);
  s.Acked(Msg(Request::kRemMemReg, Bytes(add)), 1);  // Already gone.
  REQUIRE(s.q1.AddChain(b));
  REQUIRE(write(s.kick[1].get(), &one, 8) == 8);
  used = WaitUsed(s.q1, s.call[1].get());
  REQUIRE(used);
  CHECK(used->len == 0);
  CHECK(s.device.errors() == 1);
  CHECK(s.Echo("after") == "after");
}

TEST_CASE("dirty pages are logged with VHOST_F_LOG_ALL") {
  Session s;
  s.Negotiate(Bit(kProtocolReplyAck) | Bit(kProtocolLogShmfd));
  s.SetMemTable();
  const uint64_t used_gpa = s.q1.config().used_addr;
  s.StartRing(1, s.q1, 0, kVringFlagLog, used_gpa);

  // One bit per 4 KiB page of the 4 MiB guest.
  const uint64_t log_size = kRamSize / 4096 / 8;
  UniqueFd log_fd(memfd_create("log", MFD_CLOEXEC));
  REQUIRE(ftruncate(log_fd.get(), log_size) == 0);
  auto* bits = static_cast<uint8_t*>(
      mmap(nullptr, log_size, PROT_READ | PROT_WRITE, MAP_SHARED, log_fd.get(), 0));
  REQUIRE(bits != MAP_FAILED);
  auto page_dirty = [&](uint64_t gpa) { return (bits[gpa / 4096 / 8] >> (gpa / 4096 % 8)) & 1; };

  std::vector<UniqueFd> fds;
  fds.push_back(DupFd(log_fd.get()));
  auto r = s.Ok(Msg(Request::kSetLogBase, Bytes(LogDescription{log_size, 0}), std::move(fds)));
  REQUIRE(r);  // Always answered.
  CHECK(ReplyU64(*r) == 0);

  const uint64_t in = 0x300000, out = 0x305000;
  CHECK(s.Echo("not logged yet", in, out) == "not logged yet");
  CHECK_FALSE(page_dirty(out));

  // Migration starts: LOG_ALL on, effective for the running ring.
  uint64_t f = s.backend.acked_features() | Bit(kFeatureLogAll);
  s.Acked(Msg(Request::kSetFeatures, Bytes(f)), 0);
  CHECK(s.Echo("logged", in, out + 0x3000) == "logged");
  CHECK(page_dirty(out + 0x3000));
  CHECK_FALSE(page_dirty(in));       // Only read by the device.
  CHECK_FALSE(page_dirty(out));      // Written before logging started.
  CHECK(page_dirty(used_gpa));       // used->idx and the element.
  munmap(bits, log_size);
}

TEST_CASE("GET_INFLIGHT_FD hands out a sealed region of the right size") {
  Session s;
  s.Negotiate(Bit(kProtocolReplyAck) | Bit(kProtocolInflightShmfd));
  InflightDescription d{0, 0, 2, 256, 0};
  auto r = s.Ok(Msg(Request::kGetInflightFd, Bytes(d)));
  REQUIRE(r);
  REQUIRE(r->fds.size() == 1);
  InflightDescription got;
  REQUIRE(r->payload.size() == sizeof got);
  std::memcpy(&got, r->payload.data(), sizeof got);
  CHECK(got.mmap_size == 2 * InflightQueueBytes(256));
  CHECK(got.num_queues == 2);
  CHECK(lseek(r->fds[0], 0, SEEK_END) == static_cast<off_t>(got.mmap_size));
  CHECK(ftruncate(r->fds[0], 0) != 0);  // Sealed against shrinking.
  InflightDescription bad{0, 0, 3, 256, 0};  // More queues than the device has.
  s.Fails(Msg(Request::kGetInflightFd, Bytes(bad)));
}

// A back-end that dies with chains in flight: the next one, given the same
// inflight region, resubmits exactly those chains, oldest first.
TEST_CASE("inflight tracking resubmits what a dead back-end left") {
  auto ram = GuestRam::CreateOrDie(kRamSize);
  DriverQueue q(*ram, 16, 0, 0x100000, 0x100000);
  UniqueFd region_fd(memfd_create("inflight", MFD_CLOEXEC));
  const uint64_t bytes = InflightQueueBytes(16);
  REQUIRE(ftruncate(region_fd.get(), bytes) == 0);
  auto region = MmapRegion::MapFile(region_fd.get(), 0, bytes, PROT_READ | PROT_WRITE);
  REQUIRE(region.ok());
  auto* inflight = reinterpret_cast<InflightQueueSplit*>(region->data());
  UniqueFd kick = EventFd();

  auto make = [&](uint16_t base) {
    Vring::Params p;
    p.index = 0;
    p.size = 16;
    p.base = base;
    auto c = q.config();
    p.addr = {reinterpret_cast<uintptr_t>(ram->Host(c.desc_addr)),
              reinterpret_cast<uintptr_t>(ram->Host(c.avail_addr)),
              reinterpret_cast<uintptr_t>(ram->Host(c.used_addr)), 0, false};
    p.kick_fd = kick.get();
    p.inflight = inflight;
    p.memory = ram->map();
    auto v = Vring::Create(std::move(p));
    REQUIRE(v.ok());
    return *std::move(v);
  };
  uint64_t buf = q.Alloc(64);
  DriverQueue::Buffer b[] = {{buf, 64, true}};
  uint16_t heads[5];
  for (auto& h : heads) h = *q.AddChain(b);

  {
    auto v = make(0);
    CHECK(inflight->version == 1);
    DescriptorChain c[4];
    for (auto& chain : c) REQUIRE(*v->Pop(&chain));
    REQUIRE(v->Complete(c[1], 10).ok());
    REQUIRE(v->Flush() == true);
    REQUIRE(v->Complete(c[3], 10).ok());
    // Dies here: c[3] is in the used ring's slot but not published; c[0] and
    // c[2] were never completed.
  }
  REQUIRE(q.PopUsed()->id == heads[1]);
  // The front-end lost the ring state: it restarts from the used index.
  auto v2 = make(q.used_idx());
  CHECK(v2->resubmitted() == 3);
  DescriptorChain chain;
  std::vector<uint16_t> order;
  while (*v2->Pop(&chain)) {
    order.push_back(chain.head());
    REQUIRE(v2->Complete(chain, 1).ok());
  }
  v2->Flush();
  // c[0], c[2], c[3] in submission order, then heads[4] from the ring.
  REQUIRE(order.size() == 4);
  CHECK(order[0] == heads[0]);
  CHECK(order[1] == heads[2]);
  CHECK(order[2] == heads[3]);
  CHECK(order[3] == heads[4]);
  std::vector<uint32_t> completed;
  while (auto u = q.PopUsed()) completed.push_back(u->id);
  CHECK(completed.size() == 4);  // Each exactly once more: 5 chains, 5 completions.
  CHECK(inflight->used_idx == q.used_idx());
}

TEST_CASE("the reconciliation of a batch that reached the guest") {
  // Published but its inflight bits not cleared: the next back-end must not
  // resubmit it.
  auto ram = GuestRam::CreateOrDie(kRamSize);
  DriverQueue q(*ram, 8, 0, 0x100000, 0x100000);
  std::vector<uint8_t> region(InflightQueueBytes(8));
  auto* inflight = reinterpret_cast<InflightQueueSplit*>(region.data());
  UniqueFd kick = EventFd();
  Vring::Params p;
  p.size = 8;
  auto c = q.config();
  p.addr = {reinterpret_cast<uintptr_t>(ram->Host(c.desc_addr)),
            reinterpret_cast<uintptr_t>(ram->Host(c.avail_addr)),
            reinterpret_cast<uintptr_t>(ram->Host(c.used_addr)), 0, false};
  p.kick_fd = kick.get();
  p.inflight = inflight;
  p.memory = ram->map();
  Vring::Params p2 = {p.index, p.size, 0, p.addr, false, false, p.kick_fd, {}, {}, inflight,
                      p.memory};
  uint64_t buf = q.Alloc(64);
  DriverQueue::Buffer b[] = {{buf, 64, true}};
  q.AddChain(b);
  q.AddChain(b);
  {
    auto v = Vring::Create(std::move(p));
    REQUIRE(v.ok());
    DescriptorChain c1, c2;
    REQUIRE(*(*v)->Pop(&c1));
    REQUIRE(*(*v)->Pop(&c2));
    REQUIRE((*v)->Complete(c1, 1).ok());
    REQUIRE((*v)->Complete(c2, 1).ok());
    (*v)->Flush();
    // Simulate death between publishing and clearing the bits.
    auto* descs = reinterpret_cast<InflightDescSplit*>(region.data() + 16);
    descs[c1.head()].inflight = 1;
    descs[c2.head()].inflight = 1;
    inflight->used_idx = 0;
  }
  p2.base = q.used_idx();
  auto v2 = Vring::Create(std::move(p2));
  REQUIRE(v2.ok());
  CHECK((*v2)->resubmitted() == 0);
  CHECK(inflight->used_idx == 2);
}

TEST_CASE("config space") {
  Session s;
  s.Negotiate(Bit(kProtocolReplyAck) | Bit(kProtocolConfig));
  std::vector<uint8_t> req(sizeof(ConfigHeader) + 4);
  ConfigHeader h{0, 4, 0};
  std::memcpy(req.data(), &h, sizeof h);
  auto r = s.Ok(Msg(Request::kGetConfig, req));
  REQUIRE(r);
  REQUIRE(r->payload.size() == sizeof h + 4);
  CHECK(std::string(reinterpret_cast<char*>(r->payload.data()) + sizeof h, 4) == "echo");

  std::vector<uint8_t> set(sizeof h + 2);
  ConfigHeader sh{4, 2, 0};
  std::memcpy(set.data(), &sh, sizeof sh);
  set[sizeof sh] = 'x';
  set[sizeof sh + 1] = 'y';
  s.Acked(Msg(Request::kSetConfig, set), 0);
  ConfigHeader big{6, 4, 0};  // Past the 8-byte space.
  std::memcpy(set.data(), &big, sizeof big);
  set.resize(sizeof big + 4);
  s.Acked(Msg(Request::kSetConfig, set), 1);
  std::memcpy(req.data(), &big, sizeof big);
  s.Fails(Msg(Request::kGetConfig, req));
  ConfigHeader lie{0, 8, 0};  // Size field disagrees with the payload.
  std::memcpy(req.data(), &lie, sizeof lie);
  s.Fails(Msg(Request::kGetConfig, req));
}

TEST_CASE("backend request channel with REPLY_ACK") {
  Session s;
  s.Negotiate(Bit(kProtocolReplyAck) | Bit(kProtocolBackendReq));
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  UniqueFd ours(sv[0]);
  std::vector<UniqueFd> fds;
  fds.emplace_back(sv[1]);
  s.Acked(Msg(Request::kSetBackendReqFd, {}, std::move(fds)), 0);
  auto channel = s.device.channel();
  REQUIRE(channel);

  // The front-end's side records what it saw; Catch checks run after join
  // (Catch is not thread-safe).
  Header seen{};
  bool replied = false;
  std::thread frontend([&] {
    auto m = ReceiveMessage(ours.get());
    if (!m.ok()) return;
    seen = m->header;
    uint64_t ack = 0;
    replied = SendMessage(ours.get(), Header{m->header.request, kVersion | kReplyFlag, 8},
                          AsBytes(ack))
                  .ok();
  });
  auto r = channel->Send(BackendRequest::kConfigChangeMsg, {});
  frontend.join();
  CHECK(seen.request == static_cast<uint32_t>(BackendRequest::kConfigChangeMsg));
  CHECK((seen.flags & kNeedReplyFlag) != 0);
  CHECK(replied);
  REQUIRE(r.ok());
  CHECK(*r == 0);
  // BACKEND_SEND_FD was not negotiated: no fds.
  UniqueFd e = EventFd();
  int one_fd[] = {e.get()};
  CHECK_FALSE(channel->Send(BackendRequest::kConfigChangeMsg, {}, one_fd).ok());
}

TEST_CASE("no fd leak over a whole session") {
  const int before = CountFds();
  {
    Session s;
    s.Negotiate(Bit(kProtocolReplyAck) | Bit(kProtocolLogShmfd) | Bit(kProtocolInflightShmfd));
    s.SetMemTable();
    InflightDescription d{0, 0, 2, 256, 0};
    s.Ok(Msg(Request::kGetInflightFd, Bytes(d)));
    s.StartRing(1, s.q1);
    CHECK(s.Echo("leak check") == "leak check");
    s.SetMemTable();  // Replaced: the old mappings go.
    s.backend.Disconnect();
  }
  CHECK(CountFds() == before);
}

}  // namespace
}  // namespace virtiofs
