// The daemon SIGKILLed in the middle of a stream of writes, and a new one
// started on the same socket with --reconnect: the dead one's socket and pid
// file (it could not remove them) do not block the new one, the test
// front-end (the VMM) reconnects, and the new daemon serves a new FUSE
// session. Every write acknowledged after fsync is on the host.
//
// The limits, asserted below: the new daemon knows nothing of the old FUSE
// session. A guest that goes on with its mount gets EIO for every request
// (the session is not initialized; Linux sends INIT only at mount), so its
// mount is dead until it is remounted. After a new INIT, node ids of the
// dead daemon are just numbers: the new daemon hands out ids from the same
// start, so an old id names whatever the new daemon gave that id (as with
// the C virtiofsd) - only a remount (which drops them) is safe. Handles of
// the dead daemon are unknown (EBADF). A request in flight at the kill is
// lost (no reply ever): here the front-end starts the rings afresh, as a
// reset device would.
#include <fcntl.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <thread>

#include "tests/support/daemon_process.h"
#include "tests/support/driver_queue.h"
#include "tests/support/frontend.h"
#include "tests/support/fuse_request.h"
#include "tests/support/guest_ram.h"
#include "tests/support/host_files.h"

namespace virtiofs {
namespace {

using namespace vhost_user;  // NOLINT: protocol names in a test.
using testing::BuildInit;
using testing::BuildRequest;
using testing::DriverQueue;
using testing::Frontend;
using testing::FuseBody;
using testing::FuseReply;
using testing::GuestRam;
namespace fs = std::filesystem;

// A daemon with --reconnect on `socket`, always reaped (SIGKILL if it
// lingers). Both daemons of a test write to the same log, one after the
// other.
class Daemon : public testing::DaemonProcess {
 public:
  Daemon(const std::string& share, const std::string& socket, const std::string& log)
      : DaemonProcess(Args(share, socket), log, {.append_log = true}) {}

 private:
  static std::vector<std::string> Args(const std::string& share, const std::string& socket) {
    const char* bin = std::getenv("VIRTIOFSD");
    REQUIRE(bin != nullptr);
    return {bin,    "--shared-dir", share,         "--socket-path",
            socket, "--reconnect",  "--log-level", "debug"};
  }
};

// The guest side: RAM, the hiprio and one request queue, and the front-end
// that hands them to the daemon.
struct Guest {
  explicit Guest(const std::string& socket)
      : ram(GuestRam::CreateOrDie(16 << 20)),
        hiprio(*ram, 128, 0, 0x10000, 0x10000, true),
        q(*ram, 1024, 0x100000, 0x200000, 14 << 20, true) {
    auto f = Frontend::Connect(socket, 10000);
    INFO(f.status().message());
    REQUIRE(f.ok());
    fe = *std::move(f);
    REQUIRE(fe->Negotiate(Bit(VIRTIO_F_VERSION_1) | Bit(VIRTIO_RING_F_INDIRECT_DESC) |
                              Bit(VIRTIO_RING_F_EVENT_IDX) | Bit(kFeatureProtocolFeatures),
                          Bit(kProtocolReplyAck) | Bit(kProtocolMq))
                .ok());
    REQUIRE(fe->SetMemTable(*ram).ok());
    REQUIRE(fe->StartVring(0, hiprio).ok());
    REQUIRE(fe->StartVring(1, q).ok());
  }
  absl::StatusOr<FuseReply> Try(uint32_t opcode, uint64_t node, const FuseBody& body,
                                uint32_t reply = 4096) {
    auto r = testing::FuseTransact(
        *fe, 1, q, *ram, BuildRequest(opcode, unique += 2, node, body.bytes()), reply, 2000);
    q.ResetAlloc();
    return r;
  }
  FuseReply Call(std::vector<uint8_t> req, uint32_t reply = 4096) {
    auto r = testing::FuseTransact(*fe, 1, q, *ram, req, reply);
    INFO(r.status().message());
    REQUIRE(r.ok());
    q.ResetAlloc();
    return *std::move(r);
  }
  FuseReply Call(uint32_t opcode, uint64_t node, const FuseBody& body = FuseBody()) {
    return Call(BuildRequest(opcode, unique += 2, node, body.bytes()));
  }

  std::unique_ptr<GuestRam> ram;
  DriverQueue hiprio, q;
  std::unique_ptr<Frontend> fe;
  uint64_t unique = 0;
};

std::pair<uint64_t, uint64_t> Create(Guest& g, const std::string& name) {
  fuse_create_in c{O_RDWR | O_CREAT, S_IFREG | 0644, 0, 0};
  auto r = g.Call(FUSE_CREATE, FUSE_ROOT_ID, FuseBody().Add(c).Name(name));
  REQUIRE(r.error() == 0);
  REQUIRE(r.body.size() == sizeof(fuse_entry_out) + sizeof(fuse_open_out));
  fuse_entry_out e;
  fuse_open_out o;
  std::memcpy(&e, r.body.data(), sizeof e);
  std::memcpy(&o, r.body.data() + sizeof e, sizeof o);
  return {e.nodeid, o.fh};
}

TEST_CASE("SIGKILL mid-stream, then a new daemon on the same socket with --reconnect") {
  testing::TempDir dir("virtiofs-restart");
  const std::string share = dir / "share";
  const std::string sock = dir / "sock";
  const std::string log = dir / "log";
  fs::create_directory(share);
  testing::WriteFile(share + "/other", "other file");

  Daemon first(share, sock, log);
  uint64_t old_node = 0, old_fh = 0;
  uint64_t acknowledged = 0;
  const std::string block(4096, 'k');
  {
    Guest g(sock);
    REQUIRE(g.Call(BuildInit(g.unique += 2)).error() == 0);
    std::tie(old_node, old_fh) = Create(g, "stream");
    bool killed = false;
    for (int i = 0; i < 2000; ++i) {
      if (i == 40) {
        REQUIRE(kill(first.pid(), SIGKILL) == 0);
        killed = true;
      }
      fuse_write_in w{};
      w.fh = old_fh;
      w.offset = acknowledged;
      w.size = 4096;
      auto wr = g.Try(FUSE_WRITE, old_node, FuseBody().Add(w).Raw(block));
      if (!wr.ok() || wr->error() != 0) break;
      fuse_fsync_in f{old_fh, 0, 0};
      auto fr = g.Try(FUSE_FSYNC, old_node, FuseBody().Add(f));
      if (!fr.ok() || fr->error() != 0) break;
      acknowledged += 4096;
    }
    REQUIRE(killed);
    auto st = first.Wait(10000);
    REQUIRE(st.has_value());
    CHECK(WIFSIGNALED(*st));
    CHECK(WTERMSIG(*st) == SIGKILL);
    CHECK(g.fe->PeerClosed(1000));
  }
  CHECK(acknowledged >= 40 * 4096);
  // What was acknowledged after fsync is on the host.
  const std::string host = testing::ReadFile(share + "/stream");
  REQUIRE(host.size() >= acknowledged);
  CHECK(host.substr(0, acknowledged) == std::string(acknowledged, 'k'));
  // The dead daemon could not clean up.
  CHECK(fs::exists(sock));
  CHECK(fs::exists(sock + ".pid"));

  Daemon second(share, sock, log);
  {
    Guest g(sock);  // Connects: the stale socket and pid file did not stop it.
    // The guest's old mount goes on: no session here, every request is EIO.
    fuse_getattr_in ga{};
    CHECK(g.Call(FUSE_GETATTR, old_node, FuseBody().Add(ga)).error() == -EIO);
    CHECK(g.Call(FUSE_GETATTR, FUSE_ROOT_ID, FuseBody().Add(ga)).error() == -EIO);
    // A new INIT (a remount) starts a new session.
    REQUIRE(g.Call(BuildInit(g.unique += 2)).error() == 0);
    auto other = g.Call(testing::BuildLookup(g.unique += 2, FUSE_ROOT_ID, "other"));
    REQUIRE(other.error() == 0);
    const uint64_t other_node = other.BodyAs<fuse_entry_out>()->nodeid;
    // The old id means nothing here: it is whatever the new daemon gave that
    // number ("other", looked up first), not the old "stream".
    auto aliased = g.Call(FUSE_GETATTR, old_node, FuseBody().Add(ga));
    if (other_node == old_node) {
      REQUIRE(aliased.error() == 0);
      CHECK(aliased.BodyAs<fuse_attr_out>()->attr.size == 10);  // "other file"
    } else {
      CHECK(aliased.error() != 0);
    }
    // The old handle is unknown.
    fuse_write_in w{};
    w.fh = old_fh;
    w.size = 4;
    CHECK(g.Call(FUSE_WRITE, other_node, FuseBody().Add(w).Raw("oops")).error() == -EBADF);
    CHECK(testing::ReadFile(share + "/other") == "other file");
    // The data is all there through the new session.
    auto stream = g.Call(testing::BuildLookup(g.unique += 2, FUSE_ROOT_ID, "stream"));
    REQUIRE(stream.error() == 0);
    CHECK(stream.BodyAs<fuse_entry_out>()->attr.size >= acknowledged);
    CHECK_FALSE(second.Wait(0).has_value());  // Still up.
  }
  // --reconnect: it waits for the next front-end; SIGTERM ends it cleanly.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK_FALSE(second.Wait(0).has_value());
  REQUIRE(kill(second.pid(), SIGTERM) == 0);
  auto st = second.Wait(10000);
  REQUIRE(st.has_value());
  CHECK(WIFEXITED(*st));
  CHECK(WEXITSTATUS(*st) == 0);
  CHECK_FALSE(fs::exists(sock));
  CHECK_FALSE(fs::exists(sock + ".pid"));
  std::fprintf(stderr, "---- daemon logs ----\n%s\n", testing::ReadFile(log).c_str());
}

}  // namespace
}  // namespace virtiofs
