// The daemon as a process, driven by the test front-end: a FUSE session on a
// host directory, and SIGTERM in the middle of a stream of writes (every
// write acknowledged after fsync is on the host, and the daemon exits 0).
#include "tests/support/daemon_process.h"

#include <fcntl.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "tests/support/driver_queue.h"
#include "tests/support/frontend.h"
#include "tests/support/fuse_request.h"
#include "tests/support/guest_ram.h"
#include "virtiofs/server.h"

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

// VIRTIOFSD_ARGS, split at spaces.
std::vector<std::string> ExtraArgs() {
  std::vector<std::string> out;
  const char* env = std::getenv("VIRTIOFSD_ARGS");
  std::string cur;
  for (const char* p = env ? env : "";; ++p) {
    if (*p == ' ' || *p == '\0') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
      if (*p == '\0') break;
    } else {
      cur += *p;
    }
  }
  return out;
}

// The value of `--flag V` or `--flag=V` among the extra flags, or `def`.
std::string ExtraArg(const std::string& flag, const std::string& def) {
  auto args = ExtraArgs();
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == flag && i + 1 < args.size()) return args[i + 1];
    if (args[i].rfind(flag + "=", 0) == 0) return args[i].substr(flag.size() + 1);
  }
  return def;
}

// VIRTIOFSD_AS_UID: run the daemon as this (unprivileged) user; 0: as is.
uid_t RunAs() {
  const char* env = std::getenv("VIRTIOFSD_AS_UID");
  return env ? static_cast<uid_t>(std::strtoul(env, nullptr, 10)) : 0;
}

// The daemon under test with the suite's flags, always reaped (SIGKILL if
// it lingers). `socket` is a path to listen on, or "fd=N": a listening
// socket the daemon inherits as fd N (libvirt's and Kata's --fd).
class Daemon : public testing::DaemonProcess {
 public:
  Daemon(const std::string& share, const std::string& socket, const std::string& log,
         const std::vector<std::string>& extra = {})
      : DaemonProcess(Args(share, socket, extra), log,
                      {.inherit_fd = Inherited(socket), .run_as = RunAs()}) {}

 private:
  static int Inherited(const std::string& socket) {
    return socket.rfind("fd=", 0) == 0 ? std::stoi(socket.substr(3)) : -1;
  }
  static std::vector<std::string> Args(const std::string& share, const std::string& socket,
                                       const std::vector<std::string>& extra) {
    const char* bin = std::getenv("VIRTIOFSD");
    REQUIRE(bin != nullptr);
    std::vector<std::string> args = {bin, "--shared-dir", share, "--log-level", "debug"};
    if (const int inherited = Inherited(socket); inherited >= 0) {
      args.push_back("--fd=" + std::to_string(inherited));
    } else {
      args.insert(args.end(), {"--socket-path", socket});
    }
    // Extra flags (meson runs this suite once per sandbox mode), then the
    // test case's own.
    for (const std::string& a : ExtraArgs()) args.push_back(a);
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }
};

struct Session {
  explicit Session(const std::vector<std::string>& extra = {})
      : ram(GuestRam::CreateOrDie(16 << 20)),
        hiprio(*ram, 128, 0, 0x10000, 0x10000, true),
        q(*ram, 1024, 0x100000, 0x200000, 14 << 20, true) {
    char t[] = "/tmp/virtiofs-daemon-XXXXXX";
    REQUIRE(mkdtemp(t) != nullptr);
    dir = t;
    share = dir + "/share";
    fs::create_directory(share);
    if (const uid_t user = RunAs(); user != 0) {
      if (getuid() != 0) {
        std::puts("VIRTIOFSD_AS_UID needs the test to run as root (to switch users): skipped");
        std::exit(77);
      }
      REQUIRE(chown(dir.c_str(), user, user) == 0);
      REQUIRE(chown(share.c_str(), user, user) == 0);
    }
    daemon = std::make_unique<Daemon>(share, dir + "/sock", dir + "/log", extra);
    Attach();
  }
  // Connects a front-end (the VMM) and starts the queues; INIT once.
  void Attach(uint16_t base = 0) {
    auto f = Frontend::Connect(dir + "/sock", 10000);
    if (!f.ok()) SkipIfNoNamespaces();
    INFO(f.status().message());
    REQUIRE(f.ok());
    fe = *std::move(f);
    REQUIRE(fe->Negotiate(Bit(VIRTIO_F_VERSION_1) | Bit(VIRTIO_RING_F_INDIRECT_DESC) |
                              Bit(VIRTIO_RING_F_EVENT_IDX) | Bit(kFeatureProtocolFeatures),
                          Bit(kProtocolReplyAck) | Bit(kProtocolMq))
                .ok());
    REQUIRE(fe->SetMemTable(*ram).ok());
    REQUIRE(fe->StartVring(0, hiprio, hiprio.avail_idx()).ok());
    REQUIRE(fe->StartVring(1, q, base != 0 ? base : q.avail_idx()).ok());
    if (unique == 0) REQUIRE(Call(BuildInit(unique += 2)).error() == 0);
  }
  std::string Log() const {
    std::ifstream log(dir + "/log");
    return std::string(std::istreambuf_iterator<char>(log), {});
  }
  ~Session() {
    fe.reset();
    daemon.reset();
    std::ifstream log(dir + "/log");
    std::fprintf(stderr, "---- daemon log ----\n%s\n",
                 std::string(std::istreambuf_iterator<char>(log), {}).c_str());
    fs::remove_all(dir);
  }
  // A machine that refuses the namespaces (a container without
  // CAP_SYS_ADMIN, unprivileged user namespaces disabled): the daemon said
  // so in one line and exited; the suite cannot run here.
  void SkipIfNoNamespaces() {
    std::ifstream log(dir + "/log");
    const std::string text(std::istreambuf_iterator<char>(log), {});
    if (text.find("cannot create mount, pid and net namespaces") != std::string::npos) {
      std::printf("skipped: %s", text.c_str());
      std::exit(77);
    }
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

// One request to the daemon's stats socket; the whole answer.
std::string AskStats(const std::string& path, const std::string& request) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(write(fd, request.data(), request.size()) == ssize_t(request.size()));
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) out.append(buf, size_t(n));
  close(fd);
  return out;
}

TEST_CASE("--stats-socket and SIGUSR1 report what the guest asked") {
  char t[] = "/tmp/virtiofs-stats-XXXXXX";
  REQUIRE(mkdtemp(t) != nullptr);
  if (const uid_t user = RunAs(); user != 0) REQUIRE(chown(t, user, user) == 0);
  const std::string stats = std::string(t) + "/stats";
  {
    Session s({"--stats-socket", stats});
    std::ofstream(s.share + "/present") << "x";
    REQUIRE(s.Call(testing::BuildLookup(s.unique += 2, FUSE_ROOT_ID, "present")).error() == 0);
    REQUIRE(s.Call(testing::BuildLookup(s.unique += 2, FUSE_ROOT_ID, "present")).error() == 0);
    REQUIRE(s.Call(testing::BuildLookup(s.unique += 2, FUSE_ROOT_ID, "absent")).error() == -ENOENT);

    const std::string prom = AskStats(stats, "GET /metrics HTTP/1.0\r\n\r\n");
    INFO(prom);
    CHECK(prom.rfind("HTTP/1.0 200 OK\r\n", 0) == 0);
    CHECK(prom.find("virtiofs_requests_total{opcode=\"LOOKUP\"} 3\n") != std::string::npos);
    CHECK(prom.find("virtiofs_errors_total{opcode=\"LOOKUP\"} 1\n") != std::string::npos);
    CHECK(prom.find("virtiofs_request_duration_seconds_count{opcode=\"LOOKUP\"} 3\n") !=
          std::string::npos);
    CHECK(
        prom.find("virtiofs_request_duration_seconds_bucket{opcode=\"LOOKUP\",le=\"+Inf\"} 3\n") !=
        std::string::npos);
    CHECK(prom.find("virtiofs_inodes 2\n") != std::string::npos);  // Root and "present".
    // INIT and three LOOKUPs went through request queue 1.
    CHECK(prom.find("virtiofs_queue_completed_total{queue=\"1\"} 4\n") != std::string::npos);

    const std::string json = AskStats(stats, "json\n");
    INFO(json);
    CHECK(json.find("\"LOOKUP\": {\"requests\": 3, \"replies\": 3, \"errors\": 1,") !=
          std::string::npos);
    CHECK(json.find("\"initialized\": true") != std::string::npos);
    // The process's memory and fds, in every sandbox (read through the proc
    // fd kept from before it: a sandbox has no /proc by path).
    CHECK(json.find("\"rss_bytes\": 0,") == std::string::npos);
    CHECK(json.find("\"open_fds\": -1,") == std::string::npos);
    CHECK(prom.find("process_open_fds -1\n") == std::string::npos);
    CHECK(prom.find("process_resident_memory_bytes 0\n") == std::string::npos);

    kill(s.daemon->pid(), SIGUSR1);
    bool logged = false;
    for (int i = 0; i < 200 && !logged; ++i) {
      logged = s.Log().find("stats: {\"uptime_seconds\"") != std::string::npos;
      if (!logged) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    CHECK(logged);
    s.fe.reset();  // The daemon exits (no --reconnect) and removes its sockets.
    REQUIRE(s.daemon->Wait(10000).has_value());
  }
  struct stat st;
  CHECK(stat(stats.c_str(), &st) != 0);  // Removed at exit.
  fs::remove_all(t);
}

TEST_CASE("--fd: the daemon serves a listening socket it inherits (libvirt, Kata)") {
  char t[] = "/tmp/virtiofs-fd-XXXXXX";
  REQUIRE(mkdtemp(t) != nullptr);
  const std::string dir = t;
  fs::create_directory(dir + "/share");
  if (const uid_t user = RunAs(); user != 0) {
    REQUIRE(chown(dir.c_str(), user, user) == 0);
    REQUIRE(chown((dir + "/share").c_str(), user, user) == 0);
  }
  std::ofstream(dir + "/share/file") << "through an inherited socket";
  auto listening = ListenUnixSocket(dir + "/sock");
  REQUIRE(listening.ok());
  {
    Daemon d(dir + "/share", "fd=" + std::to_string(listening->get()), dir + "/log",
             {"--syslog", "--cache=auto", "--thread-pool-size=1", "-o", "announce_submounts"});
    listening->reset();  // The daemon has its own copy.
    auto ram = GuestRam::CreateOrDie(16 << 20);
    DriverQueue hiprio(*ram, 128, 0, 0x10000, 0x10000, true);
    DriverQueue q(*ram, 1024, 0x100000, 0x200000, 14 << 20, true);
    auto f = Frontend::Connect(dir + "/sock", 10000);
    INFO(f.status().message());
    REQUIRE(f.ok());
    auto& fe = *f;
    REQUIRE(fe->Negotiate(Bit(VIRTIO_F_VERSION_1) | Bit(VIRTIO_RING_F_EVENT_IDX) |
                              Bit(kFeatureProtocolFeatures),
                          Bit(kProtocolReplyAck) | Bit(kProtocolMq))
                .ok());
    REQUIRE(fe->SetMemTable(*ram).ok());
    REQUIRE(fe->StartVring(0, hiprio).ok());
    REQUIRE(fe->StartVring(1, q).ok());
    auto call = [&](std::vector<uint8_t> req) {
      auto r = testing::FuseTransact(*fe, 1, q, *ram, req, 4096);
      REQUIRE(r.ok());
      q.ResetAlloc();
      return *std::move(r);
    };
    REQUIRE(call(BuildInit(2)).error() == 0);
    auto look = call(testing::BuildLookup(4, FUSE_ROOT_ID, "file"));
    REQUIRE(look.error() == 0);
    CHECK(look.BodyAs<fuse_entry_out>()->attr.size == 27);
    fe.reset();
    // The front-end left: the daemon exits 0, and leaves the launcher's
    // socket file alone (it did not create it).
    auto st = d.Wait(10000);
    REQUIRE(st.has_value());
    CHECK(WIFEXITED(*st));
    CHECK(WEXITSTATUS(*st) == 0);
    CHECK(fs::exists(dir + "/sock"));
  }
  fs::remove_all(dir);
}

TEST_CASE("the daemon exits when the front-end leaves, unless --reconnect") {
  SECTION("default: exit 0, socket and pid file removed") {
    Session s;
    s.fe.reset();
    auto st = s.daemon->Wait(10000);
    REQUIRE(st.has_value());
    CHECK(WIFEXITED(*st));
    CHECK(WEXITSTATUS(*st) == 0);
    CHECK(!fs::exists(s.dir + "/sock"));
    CHECK(!fs::exists(s.dir + "/sock.pid"));
  }
  SECTION("--reconnect: the next front-end goes on with the session") {
    Session s({"--reconnect"});
    std::ofstream(s.share + "/kept") << "x";
    REQUIRE(s.Call(testing::BuildLookup(s.unique += 2, FUSE_ROOT_ID, "kept")).error() == 0);
    s.fe.reset();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CHECK(!s.daemon->Wait(0).has_value());
    s.Attach();
    // No new INIT: the FUSE session outlived the front-end.
    CHECK(s.Call(testing::BuildLookup(s.unique += 2, FUSE_ROOT_ID, "kept")).error() == 0);
  }
}

// The process that serves: the supervisor's child in the namespace and
// chroot sandboxes, the daemon itself without one.
pid_t ServingPid(pid_t daemon) {
  std::ifstream children("/proc/" + std::to_string(daemon) + "/task/" + std::to_string(daemon) +
                         "/children");
  pid_t child = 0;
  if (children >> child) return child;
  return daemon;
}

// "Key:\tvalue" of /proc/PID/status.
std::string StatusField(pid_t pid, const std::string& key) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind(key + ":", 0) == 0) {
      auto v = line.substr(key.size() + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  }
  return "";
}

TEST_CASE("the serving process is locked down as its flags say") {
  Session s;  // Serving: the lockdown is complete.
  const std::string sandbox = ExtraArg("--sandbox", "namespace");
  const std::string seccomp = ExtraArg("--seccomp", "kill");
  const pid_t pid = ServingPid(s.daemon->pid());
  INFO("sandbox " << sandbox << ", seccomp " << seccomp << ", serving pid " << pid);
  if (sandbox == "none") {
    CHECK(pid == s.daemon->pid());
  } else {
    REQUIRE(pid != s.daemon->pid());
  }
  // Capabilities: chown, dac_override, fowner, fsetid, setgid, setuid,
  // mknod, setfcap (bits 0 1 3 4 6 7 27 31), nothing else, in every mode.
  CHECK(StatusField(pid, "CapEff") == "00000000880000db");
  CHECK(StatusField(pid, "CapPrm") == "00000000880000db");
  CHECK(StatusField(pid, "CapBnd") == "00000000880000db");
  CHECK(StatusField(pid, "CapInh") == "0000000000000000");
  CHECK(StatusField(pid, "CapAmb") == "0000000000000000");
  // seccomp: mode 2 (filter) and one filter, unless --seccomp none.
  CHECK(StatusField(pid, "Seccomp") == (seccomp == "none" ? "0" : "2"));
  // The root directory: the shared directory in both sandboxes.
  struct stat root, share, ours_net, its_net;
  REQUIRE(::stat(("/proc/" + std::to_string(pid) + "/root/.").c_str(), &root) == 0);
  REQUIRE(::stat(s.share.c_str(), &share) == 0);
  const bool in_share = root.st_dev == share.st_dev && root.st_ino == share.st_ino;
  CHECK(in_share == (sandbox != "none"));
  // Namespaces: pid 1 of a new pid namespace, and a net namespace of its own.
  const std::string nspid = StatusField(pid, "NSpid");
  REQUIRE(::stat("/proc/self/ns/net", &ours_net) == 0);
  REQUIRE(::stat(("/proc/" + std::to_string(pid) + "/ns/net").c_str(), &its_net) == 0);
  if (sandbox == "namespace") {
    CHECK(nspid == std::to_string(pid) + "\t1");
    CHECK(its_net.st_ino != ours_net.st_ino);
  } else {
    CHECK(nspid == std::to_string(pid));
    CHECK(its_net.st_ino == ours_net.st_ino);
  }
  // And it still serves.
  auto r = s.Call(testing::BuildLookup(s.unique += 2, FUSE_ROOT_ID, "."));
  CHECK(r.error() == 0);
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
  // (One request queue per host CPU is offered; the others stay idle.)
  CHECK(text.find("requests completed per queue: 0:0 1:4") != std::string::npos);
}

// getxattr(2) and listxattr(2) on nodes the daemon must not open (a symlink,
// a fifo) go by their /proc/self/fd path; in a sandbox that absolute path is
// not the daemon's /proc, so its worker goes through the proc fd instead.
TEST_CASE("xattrs of a symlink and a fifo, in every sandbox") {
  Session s({"--xattr"});
  REQUIRE(symlink("nowhere", (s.share + "/link").c_str()) == 0);
  REQUIRE(mkfifo((s.share + "/fifo").c_str(), 0644) == 0);
  for (const char* name : {"link", "fifo"}) {
    INFO(name);
    const std::string path = s.share + "/" + name;
    if (lsetxattr(path.c_str(), "security.test", "v1", 2, 0) != 0) {
      WARN("skipped: security.* xattrs on this host file system: " << std::strerror(errno));
      return;
    }
    auto e = s.Call(testing::BuildLookup(s.unique += 2, FUSE_ROOT_ID, name));
    REQUIRE(e.error() == 0);
    const uint64_t node = e.BodyAs<fuse_entry_out>()->nodeid;
    fuse_getxattr_in g{};
    g.size = 64;
    auto v = s.Call(BuildRequest(FUSE_GETXATTR, s.unique += 2, node,
                                 FuseBody().Add(g).Name("security.test").bytes()));
    REQUIRE(v.error() == 0);
    CHECK(std::string(v.body.begin(), v.body.end()) == "v1");
    g.size = 1024;
    auto l = s.Call(BuildRequest(FUSE_LISTXATTR, s.unique += 2, node, FuseBody().Add(g).bytes()));
    REQUIRE(l.error() == 0);
    CHECK(std::string(l.body.begin(), l.body.end()).find("security.test") != std::string::npos);
  }
}

// Open fds of a process: "fd -> target" lines.
std::string FdsOf(pid_t pid) {
  std::map<int, std::string> fds;
  for (auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
    std::error_code ec;
    fds[std::stoi(e.path().filename().string())] = fs::read_symlink(e.path(), ec).string();
  }
  std::string out;
  for (auto& [fd, target] : fds) out += std::to_string(fd) + " -> " + target + "\n";
  return out;
}
int CountFdsOf(pid_t pid) {
  const std::string fds = FdsOf(pid);
  return static_cast<int>(std::count(fds.begin(), fds.end(), '\n'));
}
// The fd count once it holds still: queue workers start on threads of their
// own and each opens its io_uring when it gets there, a moment after the
// front-end's message that started the queue was answered.
int SettledFdCount(pid_t pid) {
  int last = CountFdsOf(pid), same = 0;
  for (int i = 0; i < 100 && same < 5; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const int n = CountFdsOf(pid);
    same = n == last ? same + 1 : 0;
    last = n;
  }
  return last;
}

// A write lock on the whole of `path` held by this (host) process; close
// the returned fd to drop it.
int HostLock(const std::string& path) {
  const int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  REQUIRE(fd >= 0);
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  REQUIRE(fcntl(fd, F_OFD_SETLK, &fl) == 0);
  return fd;
}

// Puts a SETLKW on `node` that the host's lock on it blocks, then a burst of
// 1 MiB WRITEs, and returns without waiting for any answer.
// A whole-file lock request of owner 0x77 on `fh`.
fuse_lk_in WholeFileLock(uint64_t fh, uint32_t type) {
  fuse_lk_in lk{};
  lk.fh = fh;
  lk.owner = 0x77;
  lk.lk.type = type;
  lk.lk.end = INT64_MAX;
  return lk;
}

void LockWaitAndWrites(Session& s, uint64_t node, uint64_t fh) {
  const std::string mib(1 << 20, 'w');
  std::vector<std::vector<uint8_t>> reqs;
  reqs.push_back(BuildRequest(FUSE_SETLKW, s.unique += 2, node,
                              FuseBody().Add(WholeFileLock(fh, F_WRLCK)).bytes()));
  for (int i = 0; i < 8; ++i) {
    fuse_write_in w{};
    w.fh = fh;
    w.offset = static_cast<uint64_t>(i) << 20;
    w.size = 1 << 20;
    reqs.push_back(
        BuildRequest(FUSE_WRITE, s.unique += 2, node, FuseBody().Add(w).Raw(mib).bytes()));
  }
  for (auto& r : reqs) {
    const uint64_t in = s.q.Alloc(r.size());
    s.ram->Write(in, r.data(), r.size());
    const uint64_t out = s.q.Alloc(4096);
    const DriverQueue::Buffer chain[] = {{in, static_cast<uint32_t>(r.size()), false},
                                         {out, 4096, true}};
    REQUIRE(s.q.AddChainNoPublish(chain));
  }
  s.q.Publish();
  s.fe->Kick(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // Taken, the lock waiting.
}

TEST_CASE("the front-end leaves with a lock wait and writes in flight") {
  SECTION("default: the daemon exits 0 without waiting for the lock") {
    Session s({"-o", "posix_lock"});
    auto [node, fh] = s.Create("locked");
    const int host = HostLock(s.share + "/locked");  // The guest's SETLKW waits.
    LockWaitAndWrites(s, node, fh);
    s.fe.reset();  // The VMM goes away.
    auto st = s.daemon->Wait(10000);
    REQUIRE(st.has_value());
    CHECK(WIFEXITED(*st));
    CHECK(WEXITSTATUS(*st) == 0);
    CHECK_FALSE(fs::exists(s.dir + "/sock"));
    close(host);
  }
  SECTION("--reconnect: the daemon stays, holds no fd more, and serves the next front-end") {
    Session s({"-o", "posix_lock", "--reconnect"});
    auto [node, fh] = s.Create("locked");
    const pid_t serving = ServingPid(s.daemon->pid());
    const int fds_before = SettledFdCount(serving);
    const std::string fds_listed = FdsOf(serving);
    const int host = HostLock(s.share + "/locked");
    LockWaitAndWrites(s, node, fh);
    s.fe.reset();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    REQUIRE_FALSE(s.daemon->Wait(0).has_value());
    close(host);
    s.q.ResetAlloc();
    s.Attach();
    // Whatever was taken was answered before the queue stopped; the lock
    // wait ended (EINTR) instead of holding the stop.
    CHECK(s.q.used_idx() == s.q.avail_idx());
    int answered = 0;
    while (s.q.PopUsed()) ++answered;
    CHECK(answered == 9);
    auto r = s.Call(testing::BuildLookup(s.unique += 2, FUSE_ROOT_ID, "locked"));
    CHECK(r.error() == 0);
    // The fh survived with the session: the lock can be taken now.
    for (uint32_t type : {F_WRLCK, F_UNLCK}) {
      CHECK(s.Call(BuildRequest(FUSE_SETLK, s.unique += 2, node,
                                FuseBody().Add(WholeFileLock(fh, type)).bytes()))
                .error() == 0);
    }
    // The guest process closes the file: its lock descriptor goes too.
    fuse_flush_in flush{};
    flush.fh = fh;
    flush.lock_owner = WholeFileLock(fh, F_UNLCK).owner;
    CHECK(s.Call(BuildRequest(FUSE_FLUSH, s.unique += 2, node, FuseBody().Add(flush).bytes()))
              .error() == 0);
    INFO("fds before:\n" << fds_listed << "fds after:\n" << FdsOf(serving));
    CHECK(SettledFdCount(serving) == fds_before);
  }
}

}  // namespace
}  // namespace virtiofs
