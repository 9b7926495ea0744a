// The daemon as a process, driven by the test front-end: a FUSE session on a
// host directory, and SIGTERM in the middle of a stream of writes (every
// write acknowledged after fsync is on the host, and the daemon exits 0).
#include <fcntl.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/support/driver_queue.h"
#include "tests/support/frontend.h"
#include "tests/support/fuse_request.h"
#include "tests/support/guest_ram.h"

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

// The daemon under test, always reaped (SIGKILL if it lingers).
class Daemon {
 public:
  Daemon(const std::string& share, const std::string& socket, const std::string& log) {
    const char* bin = std::getenv("VIRTIOFSD");
    REQUIRE(bin != nullptr);
    std::vector<std::string> args = {bin,    "--shared-dir", share,  "--socket-path",
                                     socket, "--log-level",  "debug"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int out = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(out >= 0);
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      dup2(out, 1);
      dup2(out, 2);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out);
    REQUIRE(pid_ > 0);
  }
  ~Daemon() {
    if (pid_ > 0 && !status_) {
      kill(pid_, SIGKILL);
      Wait(5000);
    }
  }
  std::optional<int> Wait(int timeout_ms) {
    for (int waited = 0; !status_ && waited <= timeout_ms; waited += 10) {
      int st;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        status_ = st;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return status_;
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
};

struct Session {
  Session()
      : ram(GuestRam::CreateOrDie(16 << 20)),
        hiprio(*ram, 128, 0, 0x10000, 0x10000, true),
        q(*ram, 1024, 0x100000, 0x200000, 14 << 20, true) {
    char t[] = "/tmp/virtiofs-daemon-XXXXXX";
    REQUIRE(mkdtemp(t) != nullptr);
    dir = t;
    share = dir + "/share";
    fs::create_directory(share);
    daemon = std::make_unique<Daemon>(share, dir + "/sock", dir + "/log");
    auto f = Frontend::Connect(dir + "/sock", 10000);
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
    REQUIRE(Call(BuildInit(unique += 2)).error() == 0);
  }
  ~Session() {
    fe.reset();
    daemon.reset();
    std::ifstream log(dir + "/log");
    std::fprintf(stderr, "---- daemon log ----\n%s\n",
                 std::string(std::istreambuf_iterator<char>(log), {}).c_str());
    fs::remove_all(dir);
  }
  FuseReply Call(std::vector<uint8_t> req, uint32_t reply = 4096) {
    auto r = testing::FuseTransact(*fe, 1, q, *ram, req, reply);
    INFO(r.status().message());
    REQUIRE(r.ok());
    q.ResetAlloc();
    return *std::move(r);
  }
  std::pair<uint64_t, uint64_t> Create(const std::string& name) {
    fuse_create_in c{O_RDWR | O_CREAT, S_IFREG | 0644, 0, 0};
    auto r = Call(
        BuildRequest(FUSE_CREATE, unique += 2, FUSE_ROOT_ID, FuseBody().Add(c).Name(name).bytes()));
    REQUIRE(r.error() == 0);
    fuse_entry_out e;
    fuse_open_out o;
    std::memcpy(&e, r.body.data(), sizeof e);
    std::memcpy(&o, r.body.data() + sizeof e, sizeof o);
    return {e.nodeid, o.fh};
  }

  std::string dir, share;
  std::unique_ptr<GuestRam> ram;
  DriverQueue hiprio, q;
  std::unique_ptr<Daemon> daemon;
  std::unique_ptr<Frontend> fe;
  uint64_t unique = 0;
};

TEST_CASE("the daemon serves a FUSE session on its shared directory") {
  Session s;
  fuse_mkdir_in m{0755, 0};
  REQUIRE(s.Call(BuildRequest(FUSE_MKDIR, s.unique += 2, FUSE_ROOT_ID,
                              FuseBody().Add(m).Name("dir").bytes()))
              .error() == 0);
  CHECK(fs::is_directory(s.share + "/dir"));
  auto [node, fh] = s.Create("file");
  std::string data(65536, 'x');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i % 251);
  fuse_write_in w{};
  w.fh = fh;
  w.size = static_cast<uint32_t>(data.size());
  auto wr =
      s.Call(BuildRequest(FUSE_WRITE, s.unique += 2, node, FuseBody().Add(w).Raw(data).bytes()));
  REQUIRE(wr.error() == 0);
  fuse_read_in rd{};
  rd.fh = fh;
  rd.size = 65536;
  auto rr =
      s.Call(BuildRequest(FUSE_READ, s.unique += 2, node, FuseBody().Add(rd).bytes()), 16 + 65536);
  REQUIRE(rr.error() == 0);
  CHECK(std::string(rr.body.begin(), rr.body.end()) == data);
  std::ifstream host(s.share + "/file", std::ios::binary);
  CHECK(std::string(std::istreambuf_iterator<char>(host), {}) == data);
  // '..' of the root stays in the share.
  auto up = s.Call(testing::BuildLookup(s.unique += 2, FUSE_ROOT_ID, ".."));
  REQUIRE(up.error() == 0);
  CHECK(up.BodyAs<fuse_entry_out>()->nodeid == FUSE_ROOT_ID);
}

TEST_CASE("SIGTERM during a stream of writes: acknowledged fsync'd data is on the host") {
  Session s;
  auto [node, fh] = s.Create("stream");
  const std::string block(4096, 'b');
  uint64_t acknowledged = 0;
  bool signalled = false;
  for (int i = 0; i < 2000; ++i) {
    if (i == 50) {
      kill(s.daemon->pid(), SIGTERM);
      signalled = true;
    }
    fuse_write_in w{};
    w.fh = fh;
    w.offset = acknowledged;
    w.size = 4096;
    auto wr = testing::FuseTransact(
        *s.fe, 1, s.q, *s.ram,
        BuildRequest(FUSE_WRITE, s.unique += 2, node, FuseBody().Add(w).Raw(block).bytes()), 4096,
        2000);
    s.q.ResetAlloc();
    if (!wr.ok() || wr->error() != 0) break;  // The daemon is going.
    fuse_fsync_in f{fh, 0, 0};
    auto fr = testing::FuseTransact(
        *s.fe, 1, s.q, *s.ram,
        BuildRequest(FUSE_FSYNC, s.unique += 2, node, FuseBody().Add(f).bytes()), 4096, 2000);
    s.q.ResetAlloc();
    if (!fr.ok() || fr->error() != 0) break;
    acknowledged += 4096;
  }
  REQUIRE(signalled);
  auto status = s.daemon->Wait(10000);
  REQUIRE(status);
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 0);
  CHECK(acknowledged >= 50 * 4096);
  struct stat st;
  REQUIRE(::stat((s.share + "/stream").c_str(), &st) == 0);
  CHECK(static_cast<uint64_t>(st.st_size) >= acknowledged);
  CHECK_FALSE(fs::exists(s.dir + "/sock"));  // The daemon removed its socket.
}

TEST_CASE("at exit the daemon logs how many requests each queue completed") {
  Session s;  // INIT went through request queue 1.
  for (int i = 0; i < 3; ++i) {
    REQUIRE(s.Call(testing::BuildLookup(s.unique += 2, FUSE_ROOT_ID, "missing")).error() ==
            -ENOENT);
  }
  kill(s.daemon->pid(), SIGTERM);
  auto status = s.daemon->Wait(10000);
  REQUIRE(status.has_value());
  CHECK(WIFEXITED(*status));
  std::ifstream log(s.dir + "/log");
  const std::string text(std::istreambuf_iterator<char>(log), {});
  // Nothing on hiprio; INIT and three LOOKUPs on queue 1.
  CHECK(text.find("requests completed per queue: 0:0 1:4\n") != std::string::npos);
}

}  // namespace
}  // namespace virtiofs
