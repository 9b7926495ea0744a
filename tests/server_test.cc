// The vhost-user server over a real unix socket, driven by the test
// front-end: a normal session, every hostile message, fd accounting, and a
// reconnect that loses no request.
#include <dirent.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "tests/support/host_files.h"
#include "tests/support/driver_queue.h"
#include "tests/support/echo_device.h"
#include "tests/support/frontend.h"
#include "tests/support/guest_ram.h"
#include "virtiofs/server.h"

namespace virtiofs {
namespace {

using testing::CountFds;

using namespace vhost_user;  // NOLINT: protocol names in a test.
using testing::DriverQueue;
using testing::EchoDevice;
using testing::Frontend;
using testing::GuestRam;

constexpr uint64_t kVirtio = Bit(VIRTIO_F_VERSION_1) | Bit(VIRTIO_RING_F_INDIRECT_DESC) |
                             Bit(VIRTIO_RING_F_EVENT_IDX) | Bit(kFeatureProtocolFeatures);
constexpr uint64_t kProtocol = Bit(kProtocolReplyAck) | Bit(kProtocolMq) |
                               Bit(kProtocolConfigureMemSlots) | Bit(kProtocolInflightShmfd);

// Polls `pred` for up to 5 s.
template <typename Pred>
bool Eventually(Pred pred) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

// A server on a temporary socket, running on its own thread.
struct Served {
  explicit Served(bool keep_serving = true) : device(2) {
    char dir[] = "/tmp/vhost-user-test-XXXXXX";
    REQUIRE(mkdtemp(dir) != nullptr);
    dir_ = dir;
    path = dir_ + "/sock";
    ServerOptions options;
    options.keep_serving = keep_serving;
    auto s = VhostUserServer::Listen(path, &device, options);
    INFO(s.status().message());
    REQUIRE(s.ok());
    server = *std::move(s);
    thread = std::thread([this] { result = server->Run(); });
  }
  ~Served() {
    server->Stop();
    thread.join();
    server.reset();
    rmdir(dir_.c_str());
  }
  std::unique_ptr<Frontend> Connect() {
    auto f = Frontend::Connect(path);
    INFO(f.status().message());
    REQUIRE(f.ok());
    return *std::move(f);
  }
  // A fresh front-end can still talk to the server.
  void StillServing() {
    auto f = Connect();
    auto features = f->GetU64(Request::kGetFeatures);
    INFO(features.status().message());
    REQUIRE(features.ok());
    CHECK((*features & Bit(kFeatureProtocolFeatures)) != 0);
  }

  EchoDevice device;
  std::string dir_, path;
  std::unique_ptr<VhostUserServer> server;
  std::thread thread;
  absl::Status result;
};

struct Guest {
  Guest() : ram(GuestRam::CreateOrDie(4 << 20)), q(*ram, 256, 0x10000, 0x100000, 0x300000, true) {}
  std::unique_ptr<GuestRam> ram;
  DriverQueue q;
};

void Setup(Frontend& f, Guest& g, uint16_t base = 0) {
  REQUIRE(f.Negotiate(kVirtio, kProtocol).ok());
  REQUIRE(f.SetMemTable(*g.ram).ok());
  absl::Status s = f.StartVring(1, g.q, base);
  INFO(s.message());
  REQUIRE(s.ok());
}

TEST_CASE("a front-end session over the socket") {
  Served srv;
  Guest g;
  auto f = srv.Connect();
  Setup(*f, g);
  CHECK(f->features() == kVirtio);
  for (int i = 0; i < 100; ++i) {
    std::string text = "message " + std::to_string(i);
    auto reply = f->Transact(1, g.q, *g.ram,
                             std::span<const uint8_t>(
                                 reinterpret_cast<const uint8_t*>(text.data()), text.size()),
                             64);
    INFO(reply.status().message());
    REQUIRE(reply.ok());
    CHECK(std::string(reply->begin(), reply->end()) == text);
    g.q.ResetAlloc();
  }
  auto base = f->GetVringBase(1);
  REQUIRE(base.ok());
  CHECK(*base == 100);
  CHECK(srv.device.completed() == 100);
  f->Close();
  CHECK(Eventually([&] { return srv.device.resets() >= 1; }));
  CHECK(srv.server->connections() == 1);
  srv.StillServing();
  CHECK(srv.server->connections() == 2);
}

TEST_CASE("the socket path is checked before listening") {
  Served srv;
  EchoDevice other(2);
  auto busy = VhostUserServer::Listen(srv.path, &other);
  CHECK(absl::IsAlreadyExists(busy.status()));
  auto not_socket = VhostUserServer::Listen("/dev/null", &other);
  CHECK(absl::IsAlreadyExists(not_socket.status()));
  auto too_long = VhostUserServer::Listen(std::string(200, 'x'), &other);
  CHECK(absl::IsInvalidArgument(too_long.status()));
  UniqueFd not_listening(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  CHECK_FALSE(VhostUserServer::FromListeningFd(std::move(not_listening), &other).ok());
}

TEST_CASE("a stale socket file is replaced") {
  char dir[] = "/tmp/vhost-user-stale-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string path = std::string(dir) + "/sock";
  {
    UniqueFd s(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path.c_str());
    REQUIRE(bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  }  // Closed without unlinking: a dead daemon's socket.
  EchoDevice device(2);
  auto server = VhostUserServer::Listen(path, &device);
  REQUIRE(server.ok());
  server->reset();
  CHECK(access(path.c_str(), F_OK) != 0);  // Removed with the server.
  rmdir(dir);
}

TEST_CASE("hostile messages: the connection closes or errors, the server keeps serving") {
  Served srv;
  auto f = srv.Connect();
  auto send = [&](Header h, std::vector<uint8_t> payload, std::vector<int> fds = {}) {
    absl::Status s = f->SendRaw(h, payload, fds);
    INFO(s.message());
    REQUIRE(s.ok());
  };
  const uint32_t v = kVersion;
  SECTION("oversized payload") {
    send(Header{1, v, kMaxPayload + 1}, std::vector<uint8_t>(kMaxPayload + 1));
    CHECK(f->PeerClosed(2000));
  }
  SECTION("short payload") {
    send(Header{static_cast<uint32_t>(Request::kSetFeatures), v, 4}, {0, 0, 0, 0});
    CHECK(f->PeerClosed(2000));
  }
  SECTION("wrong version") {
    send(Header{static_cast<uint32_t>(Request::kGetFeatures), 0x2, 0}, {});
    CHECK(f->PeerClosed(2000));
  }
  SECTION("fds on a request that takes none") {
    UniqueFd e(eventfd(0, EFD_CLOEXEC));
    send(Header{static_cast<uint32_t>(Request::kGetFeatures), v, 0}, {}, {e.get()});
    CHECK(f->PeerClosed(2000));
  }
  SECTION("more fds than any request takes") {
    std::vector<UniqueFd> owned;
    std::vector<int> fds;
    for (int i = 0; i < 12; ++i) {
      owned.emplace_back(eventfd(0, EFD_CLOEXEC));
      fds.push_back(owned.back().get());
    }
    // SendMessage caps at 8; build the message by hand.
    Header h{static_cast<uint32_t>(Request::kSetMemTable), v, 0};
    iovec iov{&h, sizeof h};
    alignas(cmsghdr) uint8_t control[CMSG_SPACE(sizeof(int) * 12)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * 12);
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * 12);
    REQUIRE(sendmsg(f->fd(), &msg, MSG_NOSIGNAL) == sizeof h);
    CHECK(f->PeerClosed(2000));
  }
  SECTION("memory region of size zero: an error ack, the connection stays") {
    REQUIRE(f->Negotiate(kVirtio, kProtocol).ok());
    Guest g;
    std::vector<uint8_t> p(8 + 32);
    MemoryTableHeader th{1, 0};
    MemoryRegion r{0, 0, g.ram->region(0).user_addr, 0};
    std::memcpy(p.data(), &th, 8);
    std::memcpy(p.data() + 8, &r, 32);
    int fd = g.ram->fd(0);
    CHECK_FALSE(f->Request(Request::kSetMemTable, p, {&fd, 1}).ok());
    CHECK(f->GetU64(Request::kGetFeatures).ok());  // Still talking.
  }
  SECTION("overlapping regions") {
    REQUIRE(f->Negotiate(kVirtio, kProtocol).ok());
    Guest g;
    std::vector<uint8_t> p(8 + 64);
    MemoryTableHeader th{2, 0};
    MemoryRegion r[2] = {{0, 0x200000, g.ram->region(0).user_addr, 0},
                         {0x100000, 0x100000, g.ram->region(0).user_addr + 0x300000, 0x300000}};
    std::memcpy(p.data(), &th, 8);
    std::memcpy(p.data() + 8, r, 64);
    int fds[2] = {g.ram->fd(0), g.ram->fd(0)};
    CHECK_FALSE(f->Request(Request::kSetMemTable, p, fds).ok());
  }
  SECTION("ring index beyond the queue count, ring outside memory, bad ring size") {
    Guest g;
    REQUIRE(f->Negotiate(kVirtio, kProtocol).ok());
    REQUIRE(f->SetMemTable(*g.ram).ok());
    CHECK_FALSE(f->Request(Request::kSetVringNum, AsBytes(VringState{9, 256})).ok());
    CHECK_FALSE(f->Request(Request::kSetVringNum, AsBytes(VringState{1, 100})).ok());
    CHECK_FALSE(f->Request(Request::kSetVringNum, AsBytes(VringState{1, 4096})).ok());
    VringAddr a{1, 0, 0x10, 0x20, 0x40, 0};  // Not front-end addresses.
    CHECK_FALSE(f->Request(Request::kSetVringAddr, AsBytes(a)).ok());
    CHECK(f->GetU64(Request::kGetFeatures).ok());
  }
  SECTION("peer closing mid-message") {
    Header h{static_cast<uint32_t>(Request::kSetFeatures), v, 8};
    REQUIRE(write(f->fd(), &h, 6) == 6);
    f->Close();
  }
  SECTION("peer closing mid-payload") {
    Header h{static_cast<uint32_t>(Request::kSetMemTable), v, 40};
    REQUIRE(write(f->fd(), &h, sizeof h) == sizeof h);
    REQUIRE(write(f->fd(), "abcd", 4) == 4);
    f->Close();
  }
  SECTION("garbage bytes") {
    std::mt19937 rng(1234);
    std::vector<uint8_t> junk(512);
    for (auto& b : junk) b = static_cast<uint8_t>(rng());
    REQUIRE(write(f->fd(), junk.data(), junk.size()) == static_cast<ssize_t>(junk.size()));
    CHECK(f->PeerClosed(2000));
  }
  // One front-end at a time (vhost-user has one VMM per device): the next
  // one is served once this one is gone.
  f->Close();
  srv.StillServing();
  CHECK(srv.device.starts() == 0);
}

TEST_CASE("no fd leak across connections") {
  Served srv;
  Guest g;
  {
    // Warm up once: Asio and the logger open what they keep.
    auto f = srv.Connect();
    Setup(*f, g);
  }
  // Counted while a probe front-end is being served: the server takes one
  // front-end at a time, so by then the previous one is completely gone.
  auto settled = [&] {
    auto probe = srv.Connect();
    REQUIRE(probe->GetU64(Request::kGetFeatures).ok());
    return CountFds();
  };
  const int before = settled();
  for (int i = 0; i < 3; ++i) {
    auto f = srv.Connect();
    Setup(*f, g, static_cast<uint16_t>(g.q.avail_idx()));
    auto reply = f->Transact(1, g.q, *g.ram, std::vector<uint8_t>{1, 2, 3}, 8);
    REQUIRE(reply.ok());
    g.q.ResetAlloc();
    f->Close();
  }
  // Everything the front-ends sent (memfds, eventfds) was closed.
  CHECK(settled() == before);
}

// A back-end that dies with requests in flight: the front-end reconnects with
// the inflight region and every request completes exactly once.
TEST_CASE("reconnect with the inflight region loses no request") {
  Served srv;
  Guest g;
  UniqueFd inflight;
  InflightDescription desc{};
  const int kCount = 5;
  std::vector<uint64_t> outs;
  {
    auto f = srv.Connect();
    REQUIRE(f->Negotiate(kVirtio, kProtocol).ok());
    InflightDescription ask{0, 0, 2, 256, 0};
    auto got = f->Call(Request::kGetInflightFd, AsBytes(ask));
    REQUIRE(got.ok());
    REQUIRE(got->fds.size() == 1);
    std::memcpy(&desc, got->payload.data(), sizeof desc);
    inflight = std::move(got->fds[0]);
    int fd = inflight.get();
    REQUIRE(f->Request(Request::kSetInflightFd, AsBytes(desc), {&fd, 1}).ok());
    REQUIRE(f->SetMemTable(*g.ram).ok());
    REQUIRE(f->StartVring(1, g.q).ok());

    srv.device.Hold(true);
    srv.device.AbandonHeldOnStop(true);  // As if the back-end died.
    for (int i = 0; i < kCount; ++i) {
      uint64_t in = g.q.Alloc(8), out = g.q.Alloc(8);
      uint64_t tag = 1000 + i;
      g.ram->Write(in, &tag, 8);
      outs.push_back(out);
      DriverQueue::Buffer b[] = {{in, 8, false}, {out, 8, true}};
      REQUIRE(g.q.AddChain(b));
    }
    f->Kick(1);
    REQUIRE(Eventually([&] { return srv.device.held() == kCount; }));
    f->Close();
  }
  REQUIRE(Eventually([&] { return srv.device.resets() >= 1; }));
  CHECK(g.q.used_idx() == 0);  // Nothing completed.
  srv.device.Hold(false);
  srv.device.AbandonHeldOnStop(false);

  auto f = srv.Connect();
  REQUIRE(f->Negotiate(kVirtio, kProtocol).ok());
  int fd = inflight.get();
  REQUIRE(f->Request(Request::kSetInflightFd, AsBytes(desc), {&fd, 1}).ok());
  REQUIRE(f->SetMemTable(*g.ram).ok());
  // QEMU restores last_avail_idx to the used index after a back-end crash.
  REQUIRE(f->StartVring(1, g.q, g.q.used_idx()).ok());
  REQUIRE(Eventually([&] { return g.q.used_idx() == kCount; }));
  std::vector<int> seen(kCount, 0);
  while (auto u = g.q.PopUsed()) {
    CHECK(u->len == 8);
    for (int i = 0; i < kCount; ++i) {
      uint64_t tag = 0;
      g.ram->Read(outs[i], &tag, 8);
      if (tag == static_cast<uint64_t>(1000 + i)) seen[i] = 1;
    }
  }
  for (int i = 0; i < kCount; ++i) CHECK(seen[i] == 1);
  // And new requests still flow, without re-running the old ones.
  g.q.ResetAlloc();
  auto reply = f->Transact(1, g.q, *g.ram, std::vector<uint8_t>{7, 7}, 2);
  REQUIRE(reply.ok());
  CHECK(srv.device.completed() == kCount + 1);
  auto base = f->GetVringBase(1);
  REQUIRE(base.ok());
  CHECK(*base == kCount + 1);
}

}  // namespace
}  // namespace virtiofs

namespace virtiofs {
namespace {

TEST_CASE("serving an already connected socket ends with the front-end") {
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  EchoDevice device(2);
  auto server = VhostUserServer::FromConnectedFd(UniqueFd(sv[0]), &device);
  REQUIRE(server.ok());
  absl::Status result = absl::UnknownError("not run");
  std::thread t([&] { result = (*server)->Run(); });
  auto f = Frontend::Adopt(UniqueFd(sv[1]));
  Guest g;
  Setup(*f, g);
  auto reply = f->Transact(1, g.q, *g.ram, std::vector<uint8_t>{4, 5, 6}, 3);
  REQUIRE(reply.ok());
  CHECK(*reply == std::vector<uint8_t>{4, 5, 6});
  f->Close();
  t.join();  // Run() returns once the front-end is gone.
  CHECK(result.ok());
  CHECK(device.resets() >= 1);
  auto pipe_end = VhostUserServer::FromConnectedFd(UniqueFd(eventfd(0, EFD_CLOEXEC)), &device);
  CHECK(absl::IsInvalidArgument(pipe_end.status()));
}

}  // namespace
}  // namespace virtiofs
