// The virtio-fs device served over vhost-user: queue workers, replies from
// other threads, the high-priority queue, several request queues, stopping
// with requests in flight, and the config space.
#include <linux/virtio_config.h>
#include <linux/virtio_fs.h>
#include <linux/virtio_ring.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "tests/support/driver_queue.h"
#include "tests/support/frontend.h"
#include "tests/support/fuse_request.h"
#include "tests/support/guest_ram.h"
#include "virtiofs/server.h"
#include "virtiofs/virtio_fs_device.h"

namespace virtiofs {
namespace {

using namespace vhost_user;  // NOLINT: protocol names in a test.
using testing::BuildInit;
using testing::BuildLookup;
using testing::BuildRequest;
using testing::DriverQueue;
using testing::Frontend;
using testing::FuseTransact;
using testing::GuestRam;

// Answers LOOKUP inline, GETATTR from another thread after a delay.
class TestBackend : public Backend {
 public:
  ~TestBackend() override {
    for (auto& t : threads_) t.join();
  }
  void Lookup(const RequestContext& ctx, uint64_t parent, std::string_view name,
              Reply<Entry> reply) override {
    if (name == "missing") {
      reply.Error(ENOENT);
      return;
    }
    Entry e;
    e.node_id = 100 + parent;
    e.attr.st.st_ino = 7;
    e.attr.st.st_mode = S_IFREG | 0644;
    e.attr.st.st_size = static_cast<off_t>(name.size());
    e.attr.st.st_uid = ctx.uid;
    reply.Ok(e);
  }
  void GetAttr(const RequestContext&, uint64_t node, std::optional<uint64_t>,
               Reply<Attributes> reply) override {
    std::lock_guard lock(mu_);
    threads_.emplace_back([node, r = std::move(reply), this]() mutable {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms.load()));
      Attributes a;
      a.st.st_ino = node;
      a.st.st_mode = S_IFDIR | 0755;
      answered.fetch_add(1);  // Before the answer: the guest may look right after.
      r.Ok(a);
    });
  }
  void Forget(uint64_t node, uint64_t nlookup) override {
    forgotten.fetch_add(nlookup);
    last_forgotten.store(node);
  }
  void Destroy() override { destroyed.fetch_add(1); }
  void InterruptWaits() override { interrupted.fetch_add(1); }

  std::atomic<int> delay_ms{0};
  std::atomic<int> answered{0};
  std::atomic<uint64_t> forgotten{0};
  std::atomic<uint64_t> last_forgotten{0};
  std::atomic<int> destroyed{0};
  std::atomic<int> interrupted{0};

 private:
  std::mutex mu_;
  std::vector<std::thread> threads_;
};

constexpr uint64_t kVirtio = Bit(VIRTIO_F_VERSION_1) | Bit(VIRTIO_RING_F_INDIRECT_DESC) |
                             Bit(VIRTIO_RING_F_EVENT_IDX) | Bit(kFeatureProtocolFeatures);
constexpr uint64_t kProtocol = Bit(kProtocolReplyAck) | Bit(kProtocolMq) | Bit(kProtocolConfig);

struct Fixture {
  explicit Fixture(uint32_t request_queues = 2, uint32_t queue_size = 256, uint32_t poll_us = 0)
      : ram(GuestRam::CreateOrDie(8 << 20)) {
    VirtioFsDeviceOptions o;
    o.tag = "shared";
    o.num_request_queues = request_queues;
    o.poll_us = poll_us;
    auto d = VirtioFsDevice::Create(&backend, o);
    REQUIRE(d.ok());
    device = *std::move(d);
    char dir[] = "/tmp/virtiofs-device-XXXXXX";
    REQUIRE(mkdtemp(dir) != nullptr);
    dir_ = dir;
    ServerOptions so;
    so.keep_serving = true;
    auto s = VhostUserServer::Listen(dir_ + "/sock", device.get(), so);
    REQUIRE(s.ok());
    server = *std::move(s);
    thread = std::thread([this] { (void)server->Run(); });
    auto f = Frontend::Connect(dir_ + "/sock");
    REQUIRE(f.ok());
    fe = *std::move(f);
    REQUIRE(fe->Negotiate(kVirtio, kProtocol).ok());
    REQUIRE(fe->SetMemTable(*ram).ok());
    for (uint32_t i = 0; i <= request_queues; ++i) {
      queues.push_back(std::make_unique<DriverQueue>(*ram, queue_size, 0x100000 * i,
                                                     0x100000 * i + 0x40000, 0xc0000, true));
      REQUIRE(fe->StartVring(i, *queues.back()).ok());
    }
  }
  ~Fixture() {
    fe->Close();
    server->Stop();
    thread.join();
    server.reset();
    rmdir(dir_.c_str());
  }
  testing::FuseReply Send(uint32_t queue, std::vector<uint8_t> request, uint32_t reply = 4096) {
    auto r = FuseTransact(*fe, queue, *queues[queue], *ram, request, reply);
    INFO(r.status().message());
    REQUIRE(r.ok());
    queues[queue]->ResetAlloc();
    return *std::move(r);
  }
  void Init(uint32_t queue = 1) {
    auto r = Send(queue, BuildInit(unique += 2));
    REQUIRE(r.error() == 0);
  }

  TestBackend backend;
  std::unique_ptr<VirtioFsDevice> device;
  std::string dir_;
  std::unique_ptr<VhostUserServer> server;
  std::thread thread;
  std::unique_ptr<GuestRam> ram;
  std::unique_ptr<Frontend> fe;
  std::vector<std::unique_ptr<DriverQueue>> queues;
  uint64_t unique = 0;
};

std::unique_ptr<VirtioFsDevice> TaggedDevice(Backend& b) {
  VirtioFsDeviceOptions o;
  o.tag = "tagged";
  return *VirtioFsDevice::Create(&b, o);
}

TEST_CASE("options are checked") {
  TestBackend b;
  VirtioFsDeviceOptions o;
  o.tag = std::string(37, 'x');
  CHECK(absl::IsInvalidArgument(VirtioFsDevice::Create(&b, o).status()));
  o.tag = "ok";
  o.num_request_queues = 0;
  CHECK(absl::IsInvalidArgument(VirtioFsDevice::Create(&b, o).status()));
  o.num_request_queues = 1;
  o.max_queue_size = 1000;
  CHECK(absl::IsInvalidArgument(VirtioFsDevice::Create(&b, o).status()));
  CHECK(absl::IsInvalidArgument(VirtioFsDevice::Create(nullptr, {}).status()));
  // No tag: no config space, so VHOST_USER_PROTOCOL_F_CONFIG is not offered
  // (the front-end's tag is used; virtiofsd does the same).
  o.max_queue_size = 1024;
  o.tag = "";
  auto untagged = VirtioFsDevice::Create(&b, o);
  REQUIRE(untagged.ok());
  CHECK((*untagged)->ConfigSize() == 0);
  VhostUserBackend vub(untagged->get());
  CHECK((vub.OfferedProtocolFeatures() & Bit(vhost_user::kProtocolConfig)) == 0);
  auto tagged_device = TaggedDevice(b);
  VhostUserBackend tagged(tagged_device.get());
  CHECK((tagged.OfferedProtocolFeatures() & Bit(vhost_user::kProtocolConfig)) != 0);
}

TEST_CASE("requests flow through both request queues and the hiprio queue") {
  Fixture f;
  // Before INIT: EIO.
  auto early = f.Send(1, BuildLookup(f.unique += 2, FUSE_ROOT_ID, "x"));
  CHECK(early.error() == -EIO);
  f.Init();
  CHECK(f.device->session().initialized());
  // max_pages follows the queue size (256 - 4 header descriptors).
  CHECK(f.device->session().max_write() == 252 * 4096);

  for (uint32_t q : {1u, 2u}) {
    auto r = f.Send(q, BuildLookup(f.unique += 2, FUSE_ROOT_ID, "hello"));
    REQUIRE(r.error() == 0);
    auto e = r.BodyAs<fuse_entry_out>();
    REQUIRE(e.ok());
    CHECK(e->nodeid == 101);
    CHECK(e->attr.size == 5);
  }
  auto missing = f.Send(2, BuildLookup(f.unique += 2, FUSE_ROOT_ID, "missing"));
  CHECK(missing.error() == -ENOENT);

  // FORGET on the hiprio queue: no reply, the chain comes back empty.
  fuse_forget_in forget{3};
  std::vector<uint8_t> body(sizeof forget);
  std::memcpy(body.data(), &forget, sizeof forget);
  auto fr = f.fe->Transact(0, *f.queues[0], *f.ram,
                           BuildRequest(FUSE_FORGET, f.unique += 2, 101, body), 0);
  CHECK(fr.ok());
  CHECK(f.backend.forgotten == 3);
  CHECK(f.backend.last_forgotten == 101);
  CHECK(f.device->completed(1) == 3);  // INIT, EIO, LOOKUP.
  CHECK(f.device->completed(2) == 2);
  CHECK(f.device->completed(0) == 1);
}

TEST_CASE("replies from another thread reach the guest") {
  Fixture f;
  f.Init();
  f.backend.delay_ms = 20;
  for (int i = 0; i < 5; ++i) {
    auto r = f.Send(1, BuildRequest(FUSE_GETATTR, f.unique += 2, 42 + i,
                                    std::vector<uint8_t>(sizeof(fuse_getattr_in))));
    REQUIRE(r.error() == 0);
    auto a = r.BodyAs<fuse_attr_out>();
    REQUIRE(a.ok());
    CHECK(a->attr.ino == static_cast<uint64_t>(42 + i));
  }
  CHECK(f.backend.answered == 5);
}

TEST_CASE("stopping a queue waits for requests in flight") {
  Fixture f;
  f.Init();
  f.backend.delay_ms = 300;
  auto& q = *f.queues[1];
  auto req =
      BuildRequest(FUSE_GETATTR, f.unique += 2, 9, std::vector<uint8_t>(sizeof(fuse_getattr_in)));
  uint64_t in = q.Alloc(req.size()), out = q.Alloc(4096);
  f.ram->Write(in, req.data(), req.size());
  DriverQueue::Buffer b[] = {{in, static_cast<uint32_t>(req.size()), false}, {out, 4096, true}};
  REQUIRE(q.AddChain(b));
  f.fe->Kick(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // Popped, not answered.
  CHECK(q.used_idx() == 1);                                    // Only INIT's.
  auto start = std::chrono::steady_clock::now();
  auto base = f.fe->GetVringBase(1);
  REQUIRE(base.ok());
  CHECK(*base == 2);
  // GET_VRING_BASE returned only after the answer was in the used ring.
  CHECK(q.used_idx() == 2);
  CHECK(std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(150));
  CHECK(f.backend.answered == 1);
  CHECK(f.backend.interrupted >= 1);  // Told first, so that no wait can hold the stop.
}

TEST_CASE("a poll window serves chains the driver did not kick for; without one they wait") {
  for (const uint32_t poll_us : {0u, 2000000u}) {
    INFO("poll_us " << poll_us);
    Fixture f(1, 256, poll_us);
    f.Init();  // The worker served INIT; with a window it now polls the ring.
    // Let it settle: asleep with kicks enabled, or still polling (the window
    // is far longer).
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto& q = *f.queues[1];
    auto req = BuildLookup(f.unique += 2, FUSE_ROOT_ID, "polled");
    const uint64_t in = q.Alloc(req.size()), out = q.Alloc(4096);
    f.ram->Write(in, req.data(), req.size());
    DriverQueue::Buffer b[] = {{in, static_cast<uint32_t>(req.size()), false}, {out, 4096, true}};
    const uint16_t old = q.avail_idx();
    REQUIRE(q.AddChain(b));
    // EVENT_IDX: a polling device leaves avail_event behind, so the driver
    // need not kick; a sleeping one asked for a kick at the next chain.
    CHECK(q.DeviceWantsKick(old) == (poll_us == 0));
    auto served_within = [&](int ms) {
      const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
      while (std::chrono::steady_clock::now() < end) {
        if (q.used_idx() == 2) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      return q.used_idx() == 2;
    };
    if (poll_us > 0) {
      CHECK(served_within(1000));  // No kick at all.
    } else {
      CHECK_FALSE(served_within(100));
      f.fe->Kick(1);
      CHECK(served_within(2000));
    }
    auto reply = testing::ReadReply(*f.ram, out, 16 + sizeof(fuse_entry_out));
    REQUIRE(reply.ok());
    CHECK(reply->error() == 0);
  }
}

TEST_CASE("config space holds the tag and the queue count") {
  Fixture f(3);
  std::vector<uint8_t> req(sizeof(ConfigHeader) + sizeof(virtio_fs_config));
  ConfigHeader h{0, sizeof(virtio_fs_config), 0};
  std::memcpy(req.data(), &h, sizeof h);
  auto r = f.fe->Call(Request::kGetConfig, req);
  REQUIRE(r.ok());
  REQUIRE(r->payload.size() == req.size());
  virtio_fs_config c;
  std::memcpy(&c, r->payload.data() + sizeof h, sizeof c);
  CHECK(std::string(reinterpret_cast<char*>(c.tag), 6) == "shared");
  CHECK(c.tag[6] == 0);
  CHECK(le32toh(c.num_request_queues) == 3);
  CHECK(f.device->NumQueues() == 4);
}

TEST_CASE("a second INIT starts a new session; DESTROY ends one") {
  Fixture f(1);
  f.Init();
  f.Init();  // A rebooted guest.
  CHECK(f.backend.destroyed == 1);
  auto d = f.Send(1, BuildRequest(FUSE_DESTROY, f.unique += 2, 0, {}));
  CHECK(d.error() == 0);
  CHECK(f.backend.destroyed == 2);
  auto after = f.Send(1, BuildLookup(f.unique += 2, FUSE_ROOT_ID, "x"));
  CHECK(after.error() == -EIO);
  f.Init();
  CHECK(f.Send(1, BuildLookup(f.unique += 2, FUSE_ROOT_ID, "x")).error() == 0);
}

TEST_CASE("a front-end reconnect keeps the FUSE session") {
  Fixture f(1);
  f.Init();
  f.fe->Close();
  auto again = Frontend::Connect(f.dir_ + "/sock");
  REQUIRE(again.ok());
  f.fe = *std::move(again);
  absl::Status s = f.fe->Negotiate(kVirtio, kProtocol);
  INFO(s.message());
  REQUIRE(s.ok());
  REQUIRE(f.fe->SetMemTable(*f.ram).ok());
  for (uint32_t i = 0; i < 2; ++i) {
    REQUIRE(f.fe->StartVring(i, *f.queues[i], f.queues[i]->avail_idx()).ok());
  }
  CHECK(f.device->session().initialized());
  CHECK(f.Send(1, BuildLookup(f.unique += 2, FUSE_ROOT_ID, "still")).error() == 0);
  CHECK(f.backend.destroyed == 0);
}

}  // namespace
}  // namespace virtiofs
