// Fuzz target: the FUSE decoder and dispatcher with the passthrough backend
// over a temporary directory. Input: bytes 0-1 give the reply space, the
// rest is the request as the guest's readable buffers (split in two
// descriptors at a point byte 2 picks). The session was INITed once with
// every flag; requests build up state across inputs (nodes, handles).
#include <linux/fuse.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include "tests/support/driver_queue.h"
#include "tests/support/fuse_request.h"
#include "tests/support/guest_ram.h"
#include "virtiofs/fuse_session.h"
#include "virtiofs/log.h"
#include "virtiofs/passthrough.h"

using namespace virtiofs;  // NOLINT: a fuzz target.

namespace {

// Answers may come later from other threads (lock waiters): the queue is
// shared under a lock and descriptors come back as answers arrive.
struct Rig : CompletionSink {
  Rig()
      : ram(testing::GuestRam::CreateOrDie(8 << 20, testing::GuestRam::Backing::kAnonymous)),
        driver(*ram, 256, 0, 0x100000, (8 << 20) - 0x100000),
        queue(*SplitQueue::Create(driver.config(), ram->map())) {
    SetLogLevel(LogLevel::kError);
    char dir[] = "/tmp/virtiofs-fuzz-XXXXXX";
    root = mkdtemp(dir);
    // The rig lives for the process; its directory goes when the process
    // exits (libFuzzer and the corpus replay both end with exit()).
    static std::string to_remove;
    to_remove = root;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(to_remove, ec);
    });
    PassthroughOptions o;
    o.root = root;
    o.xattr = true;
    o.posix_acl = true;
    backend = *PassthroughBackend::Create(o);
    session = std::make_unique<FuseSession>(backend.get());
    auto init = testing::BuildInit(1, ~0u, ~0u);
    Send(init.data(), init.size(), 4096, 0);
  }
  void Complete(DescriptorChain chain, uint32_t len) override {
    std::lock_guard lock(mu);
    (void)queue.AddUsed(chain.head(), len);
    queue.PublishUsed();
  }
  void Send(const uint8_t* req, size_t len, uint32_t reply, size_t split) {
    DescriptorChain chain;
    {
      std::lock_guard lock(mu);
      while (driver.PopUsed()) {
      }
      driver.ResetAlloc();
      std::vector<testing::DriverQueue::Buffer> bufs;
      const uint64_t in = driver.Alloc(std::max<size_t>(len, 1));
      ram->Write(in, req, len);
      split = std::min(split, len);
      if (split > 0) bufs.push_back({in, static_cast<uint32_t>(split), false});
      if (len > split) bufs.push_back({in + split, static_cast<uint32_t>(len - split), false});
      if (reply > 0) bufs.push_back({driver.Alloc(reply), reply, true});
      if (bufs.empty() || !driver.AddChain(bufs)) return;  // Ring full of waiters.
      auto r = queue.Pop(&chain);
      if (!r.ok() || !*r) return;
    }
    session->Handle(std::move(chain), this);
  }

  std::unique_ptr<testing::GuestRam> ram;
  testing::DriverQueue driver;
  SplitQueue queue;
  std::mutex mu;
  std::string root;
  std::unique_ptr<PassthroughBackend> backend;
  std::unique_ptr<FuseSession> session;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Rig* rig = new Rig();  // Lives for the process: the fuzzer exits.
  if (size < 3) return 0;
  const uint32_t reply = (uint32_t{data[0]} << 8 | data[1]) * 16;
  rig->Send(data + 3, std::min<size_t>(size - 3, 1 << 20), reply, data[2]);
  return 0;
}
