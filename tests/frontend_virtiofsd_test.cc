// Proof of the test front-end (tests/support/frontend.h) against the
// reference back-end, QEMU's C virtiofsd (/usr/lib/qemu/virtiofsd, Debian
// package qemu-system-common): negotiate, map guest RAM, start the hiprio and
// request queues, send FUSE_INIT and FUSE_LOOKUP, read GET_VRING_BASE, close,
// and see the daemon exit.
//
// Exits 77 (meson: skipped) when the daemon is missing or we are not root
// (its sandbox needs chroot(2)).
#define CATCH_CONFIG_RUNNER  // main() below decides first whether to skip.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/driver_queue.h"
#include "tests/support/frontend.h"
#include "tests/support/fuse_request.h"
#include "tests/support/guest_ram.h"
#include "virtiofs/vhost_user_protocol.h"

namespace {

using virtiofs::testing::DriverQueue;
using virtiofs::testing::Frontend;
using virtiofs::testing::GuestRam;
namespace vu = virtiofs::vhost_user;

constexpr char kVirtiofsd[] = "/usr/lib/qemu/virtiofsd";

// A fresh directory under $TMPDIR (or /tmp), removed with its contents.
class TempDir {
 public:
  TempDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/frontend-virtiofsd-XXXXXX";
    if (mkdtemp(templ.data()) == nullptr) FAIL("mkdtemp: " << std::strerror(errno));
    path_ = templ;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "wait status " + std::to_string(status);
}

// The daemon as a child process. The destructor always reaps it (SIGTERM,
// then SIGKILL), so no failure path leaves it running or a zombie; and
// PR_SET_PDEATHSIG kills it if this process dies first.
class Virtiofsd {
 public:
  Virtiofsd(const std::string& socket_path, const std::string& source, const std::string& log_path)
      : socket_path_(socket_path), log_path_(log_path) {
    // clang-format off
    argv_ = {kVirtiofsd,
             "--socket-path=" + socket_path,
             "-o", "source=" + source,
             "-o", "cache=none",
             "-o", "sandbox=chroot",  // "namespace" needs pid/net/mount namespaces.
             "--thread-pool-size=0",  // Requests run on the queue thread.
             "--rlimit-nofile=0"};    // Leave RLIMIT_NOFILE alone (containers).
    // clang-format on
  }
  // Reaps the daemon, then prints its log (meson shows it on failure).
  ~Virtiofsd() {
    Stop();
    std::fprintf(stderr, "---- %s ----\n%s---- end of log ----\n", log_path_.c_str(),
                 ReadFile(log_path_).c_str());
  }

  std::string CommandLine() const {
    std::string s;
    for (const std::string& a : argv_) s += (s.empty() ? "" : " ") + a;
    return s;
  }

  void Start() {
    std::vector<char*> argv;
    for (std::string& a : argv_) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int log = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(log >= 0);
    const int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    REQUIRE(null >= 0);
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) {
      // Child: async-signal-safe calls only.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      dup2(null, 0);
      dup2(log, 1);
      dup2(log, 2);
      execv(argv[0], argv.data());
      static const char msg[] = "execv failed\n";
      (void)!write(2, msg, sizeof msg - 1);
      _exit(127);
    }
    close(log);
    close(null);
    REQUIRE(pid_ > 0);
  }

  // The wait status once the daemon exits within `timeout_ms`, else nullopt.
  std::optional<int> WaitExit(int timeout_ms) {
    if (status_) return status_;
    if (pid_ <= 0) return std::nullopt;
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      int status;
      const pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        status_ = status;
        RemovePidFile();
        return status_;
      }
      if (r < 0 && errno != EINTR) return std::nullopt;
      if (std::chrono::steady_clock::now() >= end) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  // Ends the daemon if it still runs, and reaps it.
  void Stop() {
    if (pid_ <= 0 || status_) return;
    if (WaitExit(0)) return;
    kill(pid_, SIGTERM);
    if (WaitExit(2000)) return;
    kill(pid_, SIGKILL);
    WaitExit(5000);
  }

  pid_t pid() const { return pid_; }

 private:
  // virtiofsd locks its socket path with a pid file under
  // /var/run/virtiofsd/, named after the path with '/' replaced by '.', and
  // leaves it behind: remove ours.
  void RemovePidFile() const {
    std::string name = socket_path_;
    std::replace(name.begin(), name.end(), '/', '.');
    std::error_code ec;
    std::filesystem::remove("/var/run/virtiofsd/" + name + ".pid", ec);
  }

  std::string socket_path_;
  std::string log_path_;
  std::vector<std::string> argv_;
  pid_t pid_ = -1;
  std::optional<int> status_;
};

std::string Hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// A temporary share holding hello.txt, the daemon serving it, and a
// front-end connected to it. Members are destroyed in reverse: the
// front-end first (the daemon sees the close), then the daemon (reaped),
// then the directory.
struct DaemonSession {
  TempDir dir;
  std::string share = dir.path() + "/share";
  std::string hello = share + "/hello.txt";
  std::string socket_path = dir.path() + "/vhost.sock";
  std::optional<Virtiofsd> daemon;
  std::unique_ptr<Frontend> fe;

  DaemonSession() {
    REQUIRE(mkdir(share.c_str(), 0755) == 0);
    {
      std::ofstream out(hello);
      out << "Hello from the host side of virtio-fs.\n";
    }
    daemon.emplace(socket_path, share, dir.path() + "/virtiofsd.log");
    daemon->Start();
    auto connected = Frontend::Connect(socket_path, 5000);
    if (!connected.ok()) {
      auto status = daemon->WaitExit(0);
      FAIL(daemon->CommandLine() << ": " << connected.status().ToString()
                                 << (status ? "; the daemon " + DescribeWaitStatus(*status)
                                            : std::string()));
    }
    fe = *std::move(connected);
  }
};

}  // namespace

TEST_CASE("Frontend drives QEMU's virtiofsd through INIT, LOOKUP and GET_VRING_BASE") {
  DaemonSession session;
  Virtiofsd& daemon = *session.daemon;
  Frontend& fe = *session.fe;
  INFO("daemon: " << daemon.CommandLine());
  struct stat host_st {};
  REQUIRE(stat(session.hello.c_str(), &host_st) == 0);

  // Features: VERSION_1 and PROTOCOL_FEATURES, once without and once with
  // EVENT_IDX (notification suppression); of the protocol, REPLY_ACK (every
  // SET_* is acknowledged) and MQ (GET_QUEUE_NUM).
  const bool event_idx = GENERATE(false, true);
  INFO("EVENT_IDX " << (event_idx ? "on" : "off"));
  const uint64_t wanted = vu::Bit(Frontend::kVirtioFVersion1) |
                          vu::Bit(vu::kFeatureProtocolFeatures) |
                          (event_idx ? vu::Bit(Frontend::kVirtioRingFEventIdx) : 0);
  const uint64_t wanted_protocol = vu::Bit(vu::kProtocolReplyAck) | vu::Bit(vu::kProtocolMq);
  absl::Status s = fe.Negotiate(wanted, wanted_protocol);
  REQUIRE(s.ToString() == "OK");
  std::printf("virtiofsd offers features %s, protocol features %s; agreed %s / %s\n",
              Hex(fe.offered_features()).c_str(), Hex(fe.offered_protocol_features()).c_str(),
              Hex(fe.features()).c_str(), Hex(fe.protocol_features()).c_str());
  REQUIRE(fe.has_feature(Frontend::kVirtioFVersion1));
  REQUIRE(fe.has_feature(vu::kFeatureProtocolFeatures));
  REQUIRE(fe.has_feature(Frontend::kVirtioRingFEventIdx) == event_idx);
  REQUIRE(fe.has_protocol_feature(vu::kProtocolReplyAck));
  if (fe.has_protocol_feature(vu::kProtocolMq)) {
    auto queues = fe.GetU64(vu::Request::kGetQueueNum);
    REQUIRE(queues.status().ToString() == "OK");
    std::printf("virtiofsd GET_QUEUE_NUM: %llu\n", static_cast<unsigned long long>(*queues));
    CHECK(*queues >= 2);  // hiprio + one request queue.
  }

  // 4 MiB of guest RAM at guest physical 0: rings of queue 0 at 0, of queue
  // 1 at 64 KiB; 1 MiB of buffers for queue 0 and 2 MiB for queue 1.
  auto ram = GuestRam::CreateOrDie(4 << 20);
  s = fe.SetMemTable(*ram);
  REQUIRE(s.ToString() == "OK");
  DriverQueue hiprio(*ram, 128, 0x0, 1 << 20, 1 << 20, event_idx, /*indirect_desc=*/false);
  DriverQueue requests(*ram, 128, 0x10000, 2 << 20, 2 << 20, event_idx,
                       /*indirect_desc=*/false);
  s = fe.StartVring(0, hiprio);
  REQUIRE(s.ToString() == "OK");
  s = fe.StartVring(1, requests);
  REQUIRE(s.ToString() == "OK");

  virtiofs::testing::FuseUniqueIds ids;

  // FUSE_INIT on the request queue.
  const auto init = virtiofs::testing::BuildInit(ids.Next());
  auto init_reply = virtiofs::testing::FuseTransact(fe, 1, requests, *ram, init);
  REQUIRE(init_reply.status().ToString() == "OK");
  REQUIRE(init_reply->error() == 0);
  auto init_out = init_reply->BodyPrefixAs<fuse_init_out>(FUSE_COMPAT_22_INIT_OUT_SIZE);
  REQUIRE(init_out.status().ToString() == "OK");
  std::printf(
      "virtiofsd FUSE_INIT reply: %u.%u, flags %s, flags2 %s, max_write %u, "
      "max_pages %u, reply body %zu bytes\n",
      init_out->major, init_out->minor, Hex(init_out->flags).c_str(), Hex(init_out->flags2).c_str(),
      init_out->max_write, init_out->max_pages, init_reply->body.size());
  CHECK(init_out->major == 7);
  CHECK(init_out->minor >= 27);

  // FUSE_LOOKUP of hello.txt in the root.
  const auto lookup = virtiofs::testing::BuildLookup(ids.Next(), FUSE_ROOT_ID, "hello.txt");
  auto lookup_reply = virtiofs::testing::FuseTransact(fe, 1, requests, *ram, lookup);
  REQUIRE(lookup_reply.status().ToString() == "OK");
  REQUIRE(lookup_reply->error() == 0);
  auto entry = lookup_reply->BodyAs<fuse_entry_out>();
  REQUIRE(entry.status().ToString() == "OK");
  CHECK(entry->nodeid != 0);
  CHECK(entry->nodeid != FUSE_ROOT_ID);
  CHECK(entry->attr.size == static_cast<uint64_t>(host_st.st_size));
  CHECK(entry->attr.ino == static_cast<uint64_t>(host_st.st_ino));
  CHECK(S_ISREG(entry->attr.mode));

  // Both requests went through queue 1; nothing through the hiprio queue.
  auto base1 = fe.GetVringBase(1);
  REQUIRE(base1.status().ToString() == "OK");
  CHECK(*base1 == 2);
  auto base0 = fe.GetVringBase(0);
  REQUIRE(base0.status().ToString() == "OK");
  CHECK(*base0 == 0);

  // The C virtiofsd serves one connection: closing it ends the daemon.
  fe.Close();
  auto status = daemon.WaitExit(5000);
  REQUIRE(status.has_value());
  std::printf("after the front-end closed, virtiofsd %s\n", DescribeWaitStatus(*status).c_str());
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 0);
  // Reaped: no zombie left behind.
  const pid_t again = waitpid(daemon.pid(), nullptr, WNOHANG);
  const int wait_errno = errno;
  CHECK(again == -1);
  CHECK(wait_errno == ECHILD);
}

TEST_CASE("Frontend sees QEMU's virtiofsd drop a message that lies about its size") {
  DaemonSession session;
  Frontend& fe = *session.fe;
  // A GET_FEATURES header announcing 64 KiB of payload, more than any
  // vhost-user message: libvhost-user gives up on the connection.
  const vu::Header h{static_cast<uint32_t>(vu::Request::kGetFeatures), vu::kVersion, 0x10000};
  REQUIRE(fe.SendRaw(h, {}).ToString() == "OK");
  CHECK(fe.PeerClosed(5000));
  auto reply = fe.Receive(100);
  CHECK(absl::IsUnavailable(reply.status()));
  auto status = session.daemon->WaitExit(5000);
  REQUIRE(status.has_value());
  std::printf("after an oversized header, virtiofsd %s\n", DescribeWaitStatus(*status).c_str());
}

int main(int argc, char** argv) {
  if (access(kVirtiofsd, X_OK) != 0) {
    std::printf("SKIP: %s not found (Debian package qemu-system-common)\n", kVirtiofsd);
    return 77;
  }
  if (geteuid() != 0) {
    std::printf("SKIP: %s needs root (its sandbox chroots into the shared directory)\n",
                kVirtiofsd);
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
