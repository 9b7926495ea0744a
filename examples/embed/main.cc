// embed: a host program that runs a virtio-fs device inside itself, as a
// VMM that emulates its devices in-process does, with no daemon and no
// vhost-user socket.
//
// The program plays both sides:
//  - the VMM: it owns the guest's RAM (a memfd it maps), describes it to the
//    library as a GuestMemoryMap, and runs the device: one split virtqueue
//    (SplitQueue) whose requests a FuseSession decodes and runs on a Backend
//    (memfs, from examples/memfs), on a device thread woken by the queue's
//    kick eventfd;
//  - the guest driver, on another thread: it writes FUSE requests (INIT,
//    CREATE, WRITE, RELEASE, LOOKUP, OPEN, READ, RELEASE, DESTROY) into
//    descriptor chains in its RAM, makes them available, kicks, waits for
//    the call eventfd and reads the used ring, as the Linux virtiofs driver
//    does. It prints what came back and checks it; the exit status is 0
//    only when every answer is the expected one (CI runs it as a test).
//
// Only public headers are used: guest_memory.h, virtqueue.h, fuse_session.h,
// sync_file_system.h (and memfs). The device side is the part a VMM
// writes; the driver side stands in for the guest.
//
// The other way in: a VMM that speaks vhost-user to external back-ends but
// wants this one in its own process can keep its vhost-user front-end code
// and serve the library's device on one end of a socketpair:
//
//   auto device = virtiofs::VirtioFsDevice::Create(&backend, options);
//   int sv[2];
//   socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
//   auto server = virtiofs::VhostUserServer::FromConnectedFd(
//       virtiofs::UniqueFd(sv[1]), device->get());
//   std::thread vhost_thread([&] { (void)(*server)->Run(); });  // Asio inside.
//   // ... the VMM's front-end talks vhost-user on sv[0] ...
//
// or, with its own event loop and no Asio, keep a VhostUserBackend and a
// MessageReader per connection (vhost_user.h, vhost_user_message.h):
//
//   namespace vu = virtiofs::vhost_user;
//   virtiofs::VhostUserBackend vub(device->get());  // One per connection,
//   vu::MessageReader reader(fd);                   // on a non-blocking fd.
//   // Each time the loop sees the socket readable:
//   auto msg = reader.Read();          // nullopt: the message is not all in.
//   if (!msg.ok()) { vub.Disconnect(); /* close fd */ }
//   else if (*msg) {
//     auto reply = vub.Handle(std::move(**msg));
//     if (!reply.ok()) { vub.Disconnect(); /* close fd */ }
//     else if (*reply) vu::SendMessage(fd, (*reply)->header, (*reply)->payload, (*reply)->fds);
//   }
//
// The device's queue workers are its own threads either way.
// tests/server_test.cc serves FromConnectedFd on a socketpair and
// tests/vhost_user_test.cc feeds Handle() message by message.
#include <fcntl.h>
#include <linux/fuse.h>
#include <linux/virtio_ring.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "examples/memfs/memfs.h"
#include "virtiofs/fd.h"
#include "virtiofs/fuse_session.h"
#include "virtiofs/guest_memory.h"
#include "virtiofs/mmap.h"
#include "virtiofs/sync_file_system.h"
#include "virtiofs/virtqueue.h"

namespace {

// ---- guest RAM layout (guest physical addresses) -----------------------

constexpr uint64_t kRamSize = 4 << 20;
constexpr uint16_t kQueueSize = 16;
constexpr uint64_t kDescAddr = 0x0000;   // 16 bytes per descriptor (2.7.5).
constexpr uint64_t kAvailAddr = 0x1000;  // 2-byte aligned.
constexpr uint64_t kUsedAddr = 0x2000;   // 4-byte aligned.
constexpr uint64_t kRequestAddr = 0x10000;
constexpr uint64_t kReplyAddr = 0x100000;
constexpr uint32_t kReplySize = 0x10000;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "embed: %s\n", what.c_str());
  // Other threads may be running: leave without running destructors.
  std::fflush(nullptr);
  std::_Exit(1);
}

// An eventfd: the kick (driver to device) and call (device to driver)
// notifications, as KVM's ioeventfd and irqfd would carry them.
class EventFd {
 public:
  EventFd() : fd_(eventfd(0, EFD_CLOEXEC)) {
    if (!fd_.valid()) Die("eventfd failed");
  }
  void Signal() const {
    const uint64_t one = 1;
    if (write(fd_.get(), &one, sizeof one) != sizeof one) Die("eventfd write failed");
  }
  void Wait() const {
    uint64_t count;
    while (read(fd_.get(), &count, sizeof count) < 0 && errno == EINTR) {
    }
  }

 private:
  virtiofs::UniqueFd fd_;
};

// ---- the device (the VMM's part) ---------------------------------------

// One request queue served by a FuseSession. The device thread waits for
// kicks and pops chains; replies come back through Complete(), on whichever
// thread the backend answered (here, inline on the device thread).
class Device : public virtiofs::CompletionSink {
 public:
  Device(virtiofs::Backend* backend, virtiofs::SplitQueue queue, const EventFd* kick,
         const EventFd* call)
      : session_(backend), queue_(std::move(queue)), kick_(kick), call_(call) {}

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Stop() {
    stop_ = true;
    kick_->Signal();
    thread_.join();
  }

  // Puts the finished chain in the used ring and interrupts the guest if it
  // asked for it (VRING_AVAIL_F_NO_INTERRUPT, or EVENT_IDX when negotiated).
  void Complete(virtiofs::DescriptorChain chain, uint32_t reply_length) override {
    std::lock_guard lock(mu_);
    if (absl::Status s = queue_.AddUsed(chain.head(), reply_length); !s.ok()) {
      Die("AddUsed: " + std::string(s.message()));
    }
    if (queue_.PublishUsed()) call_->Signal();
  }

 private:
  void Run() {
    while (!stop_) {
      kick_->Wait();
      // Pop everything available; a chain the guest broke is given back
      // empty by Pop itself (the next PublishUsed shows it).
      for (;;) {
        virtiofs::DescriptorChain chain;
        absl::StatusOr<bool> popped;
        {
          std::lock_guard lock(mu_);
          popped = queue_.Pop(&chain);
          if (!popped.ok()) {
            std::fprintf(stderr, "embed: bad chain: %s\n",
                         std::string(popped.status().message()).c_str());
            if (queue_.broken()) return;
            if (queue_.PublishUsed()) call_->Signal();
            continue;
          }
        }
        if (!*popped) break;
        session_.Handle(std::move(chain), this);
      }
    }
  }

  virtiofs::FuseSession session_;
  std::mutex mu_;  // Pop, AddUsed and PublishUsed: one thread at a time.
  virtiofs::SplitQueue queue_;
  const EventFd* kick_;
  const EventFd* call_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// ---- the guest driver (what the guest kernel does) ---------------------

class GuestDriver {
 public:
  GuestDriver(uint8_t* ram, const EventFd* kick, const EventFd* call)
      : ram_(ram), kick_(kick), call_(call) {
    std::memset(ram_ + kDescAddr, 0, sizeof(vring_desc) * kQueueSize);
    std::memset(ram_ + kAvailAddr, 0, 4 + 2 * kQueueSize + 2);
    std::memset(ram_ + kUsedAddr, 0, 4 + sizeof(vring_used_elem) * kQueueSize + 2);
  }

  // Sends one request (header filled in here) and returns the reply's
  // header and body, as the guest reads them out of its RAM.
  struct Reply {
    fuse_out_header header;
    std::string body;
  };
  Reply Send(uint32_t opcode, uint64_t nodeid, std::string_view body) {
    fuse_in_header in{};
    in.len = static_cast<uint32_t>(sizeof in + body.size());
    in.opcode = opcode;
    in.unique = unique_ += 2;
    in.nodeid = nodeid;
    std::memcpy(ram_ + kRequestAddr, &in, sizeof in);
    if (!body.empty()) std::memcpy(ram_ + kRequestAddr + sizeof in, body.data(), body.size());

    // A chain of two descriptors: the request (device-readable), then the
    // reply space (device-writable). The ring is used one request at a
    // time, so descriptors 0 and 1 are always free here.
    auto* desc = reinterpret_cast<vring_desc*>(ram_ + kDescAddr);
    desc[0] = {kRequestAddr, in.len, VRING_DESC_F_NEXT, 1};
    desc[1] = {kReplyAddr, kReplySize, VRING_DESC_F_WRITE, 0};
    auto* avail = reinterpret_cast<vring_avail*>(ram_ + kAvailAddr);
    avail->ring[avail_idx_ % kQueueSize] = 0;
    // The descriptors and ring entry are visible before the index moves
    // (2.7.13: a write barrier, then idx).
    __atomic_store_n(&avail->idx, ++avail_idx_, __ATOMIC_RELEASE);
    kick_->Signal();

    auto* used = reinterpret_cast<vring_used*>(ram_ + kUsedAddr);
    while (__atomic_load_n(&used->idx, __ATOMIC_ACQUIRE) == used_idx_) call_->Wait();
    const vring_used_elem elem = used->ring[used_idx_ % kQueueSize];
    ++used_idx_;
    if (elem.id != 0) Die("the device returned an unknown head");
    if (elem.len < sizeof(fuse_out_header) || elem.len > kReplySize) {
      Die("reply of " + std::to_string(elem.len) + " bytes");
    }
    Reply r;
    std::memcpy(&r.header, ram_ + kReplyAddr, sizeof r.header);
    if (r.header.len != elem.len || r.header.unique != in.unique) Die("malformed reply");
    r.body.assign(reinterpret_cast<const char*>(ram_ + kReplyAddr + sizeof r.header),
                  elem.len - sizeof r.header);
    return r;
  }

 private:
  uint8_t* ram_;
  const EventFd* kick_;
  const EventFd* call_;
  uint16_t avail_idx_ = 0;
  uint16_t used_idx_ = 0;
  uint64_t unique_ = 0;
};

template <typename T>
std::string Bytes(const T& value) {
  return std::string(reinterpret_cast<const char*>(&value), sizeof value);
}

template <typename T>
T As(const std::string& body, size_t offset = 0) {
  if (body.size() < offset + sizeof(T)) Die("short reply body");
  T value;
  std::memcpy(&value, body.data() + offset, sizeof value);
  return value;
}

// The guest's session: every answer is printed and checked.
int RunGuest(GuestDriver& guest) {
  auto expect_ok = [](const char* what, const GuestDriver::Reply& r) {
    if (r.header.error != 0) {
      Die(std::string(what) + " failed: " + std::strerror(-r.header.error));
    }
  };
  const std::string name("hello.txt\0", 10);

  fuse_init_in init{};
  init.major = FUSE_KERNEL_VERSION;
  init.minor = FUSE_KERNEL_MINOR_VERSION;
  init.max_readahead = 128 * 1024;
  init.flags = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_INIT_EXT;
  auto r = guest.Send(FUSE_INIT, 0, Bytes(init));
  expect_ok("INIT", r);
  const auto init_out = As<fuse_init_out>(r.body);
  std::printf("INIT: protocol %u.%u, max_write %u\n", init_out.major, init_out.minor,
              init_out.max_write);

  fuse_create_in create{};
  create.flags = O_RDWR | O_CREAT | O_EXCL;
  create.mode = S_IFREG | 0644;
  r = guest.Send(FUSE_CREATE, FUSE_ROOT_ID, Bytes(create) + name);
  expect_ok("CREATE", r);
  const auto created = As<fuse_entry_out>(r.body);
  const auto created_open = As<fuse_open_out>(r.body, sizeof(fuse_entry_out));
  std::printf("CREATE hello.txt: node %llu, handle %llu\n",
              static_cast<unsigned long long>(created.nodeid),
              static_cast<unsigned long long>(created_open.fh));

  const std::string text = "Hello from a device embedded in its VMM!\n";
  fuse_write_in write{};
  write.fh = created_open.fh;
  write.size = static_cast<uint32_t>(text.size());
  r = guest.Send(FUSE_WRITE, created.nodeid, Bytes(write) + text);
  expect_ok("WRITE", r);
  std::printf("WRITE: %u bytes\n", As<fuse_write_out>(r.body).size);
  if (As<fuse_write_out>(r.body).size != text.size()) Die("short write");

  fuse_release_in release{};
  release.fh = created_open.fh;
  expect_ok("RELEASE", guest.Send(FUSE_RELEASE, created.nodeid, Bytes(release)));

  r = guest.Send(FUSE_LOOKUP, FUSE_ROOT_ID, name);
  expect_ok("LOOKUP", r);
  const auto entry = As<fuse_entry_out>(r.body);
  std::printf("LOOKUP hello.txt: node %llu, mode %o, size %llu\n",
              static_cast<unsigned long long>(entry.nodeid), entry.attr.mode,
              static_cast<unsigned long long>(entry.attr.size));
  if (entry.nodeid != created.nodeid || entry.attr.size != text.size()) Die("wrong entry");

  fuse_open_in open{};
  open.flags = O_RDONLY;
  r = guest.Send(FUSE_OPEN, entry.nodeid, Bytes(open));
  expect_ok("OPEN", r);
  const uint64_t fh = As<fuse_open_out>(r.body).fh;

  fuse_read_in read{};
  read.fh = fh;
  read.size = 4096;
  r = guest.Send(FUSE_READ, entry.nodeid, Bytes(read));
  expect_ok("READ", r);
  std::printf("READ: %zu bytes: %s", r.body.size(), r.body.c_str());
  if (r.body != text) Die("READ returned other bytes than were written");

  release.fh = fh;
  expect_ok("RELEASE", guest.Send(FUSE_RELEASE, entry.nodeid, Bytes(release)));

  r = guest.Send(FUSE_LOOKUP, FUSE_ROOT_ID, std::string("missing\0", 8));
  std::printf("LOOKUP missing: %s\n", std::strerror(-r.header.error));
  if (r.header.error != -ENOENT) Die("LOOKUP of a missing name did not fail with ENOENT");

  expect_ok("DESTROY", guest.Send(FUSE_DESTROY, 0, {}));
  std::printf("DESTROY: ok\n");
  return 0;
}

}  // namespace

int main() {
  // The guest's RAM: a memfd the VMM maps for itself (and could hand to
  // KVM, or to a vhost-user back-end, by fd).
  virtiofs::UniqueFd memfd(memfd_create("guest-ram", MFD_CLOEXEC));
  if (!memfd.valid() || ftruncate(memfd.get(), kRamSize) != 0) Die("memfd failed");
  auto guest_view = virtiofs::MmapRegion::MapFile(memfd.get(), 0, kRamSize, PROT_READ | PROT_WRITE);
  if (!guest_view.ok()) Die(std::string("mmap: ") + std::strerror(guest_view.error()));

  // The device's view of the same RAM: a second mapping of the memfd, the
  // way an out-of-process back-end maps what SET_MEM_TABLE gives it. The
  // map is immutable and shared; chains in flight keep it alive.
  auto device_view =
      virtiofs::MmapRegion::MapFile(memfd.get(), 0, kRamSize, PROT_READ | PROT_WRITE);
  if (!device_view.ok()) Die(std::string("mmap: ") + std::strerror(device_view.error()));
  virtiofs::GuestMemoryRegion region;
  region.guest_phys_addr = 0;
  region.size = kRamSize;
  region.user_addr = reinterpret_cast<uint64_t>(guest_view->data());
  region.mmap_offset = 0;
  region.mapping = std::make_shared<virtiofs::MmapRegion>(std::move(*device_view));
  auto memory = virtiofs::GuestMemoryMap::Create({region});
  if (!memory.ok()) Die(std::string(memory.status().message()));

  // The request queue, where the guest driver placed it (the VMM learns the
  // addresses from the guest's writes to the virtio-pci common config). The
  // guest zeroes its rings before it enables the queue.
  EventFd kick, call;
  GuestDriver guest(guest_view->data(), &kick, &call);
  virtiofs::VirtqueueConfig config;
  config.size = kQueueSize;
  config.desc_addr = kDescAddr;
  config.avail_addr = kAvailAddr;
  config.used_addr = kUsedAddr;
  auto queue = virtiofs::SplitQueue::Create(config, *memory);
  if (!queue.ok()) Die(std::string(queue.status().message()));

  // The file system the device serves.
  memfs::MemFs fs;
  virtiofs::SyncAdapter backend(fs);

  Device device(&backend, *std::move(queue), &kick, &call);
  device.Start();
  int status = 0;
  std::thread guest_thread([&] { status = RunGuest(guest); });
  guest_thread.join();
  device.Stop();
  std::printf("embed: ok\n");
  return status;
}
