// The daemon's lockdown (daemon/lockdown.h), each step in a forked child so
// that the test process keeps its privileges: option parsing, the
// capability set, the seccomp filter with each action against a forbidden
// call, the sandbox (supervisor, namespaces, pivot_root), rlimit-nofile,
// and io_uring rings restricted to the engine's opcodes.
#include "daemon/lockdown.h"

#include <fcntl.h>
#include <liburing.h>
#include <linux/capability.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>

#include "lib/io/engines.h"
#include "tests/support/host_files.h"
#include "virtiofs/io_engine.h"

namespace virtiofsd {
namespace {

using virtiofs::IoEngine;
using virtiofs::IoEngineKind;

// Runs `body` in a child; its stdout and stderr are returned in `*out`.
// The child's exit status (waitpid's) is returned.
int InChild(const std::function<int()>& body, std::string* out = nullptr) {
  int p[2];
  REQUIRE(pipe2(p, O_CLOEXEC) == 0);
  std::fflush(nullptr);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(p[0]);
    dup2(p[1], 1);
    dup2(p[1], 2);
    const int code = body();
    std::fflush(nullptr);
    _exit(code);
  }
  close(p[1]);
  std::string text;
  char buf[512];
  for (ssize_t n; (n = read(p[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<size_t>(n));
  close(p[0]);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  if (out) *out = text;
  return status;
}

std::string StatusField(const std::string& key) {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind(key + ":", 0) == 0) {
      auto v = line.substr(key.size() + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  }
  return "";
}

// A call the daemon never makes (querying the personality changes nothing).
long Forbidden() { return syscall(SYS_personality, 0xffffffffUL); }

TEST_CASE("sandbox, seccomp and id map values parse as virtiofsd spells them") {
  CHECK(*ParseSandboxKind("namespace") == SandboxKind::kNamespace);
  CHECK(*ParseSandboxKind("chroot") == SandboxKind::kChroot);
  CHECK(*ParseSandboxKind("none") == SandboxKind::kNone);
  CHECK_FALSE(ParseSandboxKind("jail").ok());
  CHECK(*ParseSeccompAction("kill") == SeccompAction::kKill);
  CHECK(*ParseSeccompAction("log") == SeccompAction::kLog);
  CHECK(*ParseSeccompAction("trap") == SeccompAction::kTrap);
  CHECK(*ParseSeccompAction("none") == SeccompAction::kNone);
  CHECK_FALSE(ParseSeccompAction("allow").ok());

  auto m = ParseIdMap(":0:1000:1:");
  REQUIRE(m.ok());
  CHECK((m->inside == 0 && m->outside == 1000 && m->count == 1));
  m = ParseIdMap("/100/100000/65536/");  // Any delimiter.
  REQUIRE(m.ok());
  CHECK((m->inside == 100 && m->outside == 100000 && m->count == 65536));
  for (const char* bad :
       {"", ":", "0:1000:1", ":0:1000:1", ":0:1000:", ":0:1000:1:2:", ":0/1000/1:", ":a:1000:1:",
        ":0:1000:0:", ":-1:0:1:", ":4294967295:0:2:", ":0:4294967000:1000:", ":0:99999999999:1:"}) {
    INFO(bad);
    CHECK_FALSE(ParseIdMap(bad).ok());
  }
}

TEST_CASE("the capability set: the passthrough's, file handles, --modcaps") {
  const std::vector<int> base = {CAP_CHOWN,  CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID,
                                 CAP_SETGID, CAP_SETUID,       CAP_MKNOD,  CAP_SETFCAP};
  CHECK(*ComputeCapabilities(false, "") == base);
  auto with_handles = *ComputeCapabilities(true, "");
  CHECK(with_handles.size() == base.size() + 1);
  CHECK(std::count(with_handles.begin(), with_handles.end(), CAP_DAC_READ_SEARCH) == 1);
  auto mod = *ComputeCapabilities(false, "+sys_admin:-mknod:+CAP_SYS_CHROOT:-Chown:+chown");
  CHECK(std::count(mod.begin(), mod.end(), CAP_SYS_ADMIN) == 1);
  CHECK(std::count(mod.begin(), mod.end(), CAP_SYS_CHROOT) == 1);
  CHECK(std::count(mod.begin(), mod.end(), CAP_MKNOD) == 0);
  CHECK(std::count(mod.begin(), mod.end(), CAP_CHOWN) == 1);  // Removed, then added again.
  CHECK(mod.size() == base.size() + 1);
  for (const char* bad : {"sys_admin", "+", "+nonsense", "+sys_admin:", "*chown", "+cap_"}) {
    INFO(bad);
    CHECK_FALSE(ComputeCapabilities(false, bad).ok());
  }
}

TEST_CASE("DropCapabilities leaves exactly the computed set") {
  if (geteuid() != 0) {
    WARN("not root: nothing to drop from");
    return;
  }
  std::string out;
  const int status = InChild(
      [] {
        LockdownConfig c;
        c.modcaps = "+sys_admin:-mknod";
        if (auto s = DropCapabilities(c); !s.ok()) {
          std::printf("%s\n", std::string(s.message()).c_str());
          return 1;
        }
        std::printf("%s %s %s %s\n", StatusField("CapEff").c_str(), StatusField("CapPrm").c_str(),
                    StatusField("CapBnd").c_str(), StatusField("CapInh").c_str());
        // A dropped capability is really gone: mknod of a device node.
        char dir[] = "/tmp/lockdown-mknod-XXXXXX";
        if (mkdtemp(dir) == nullptr) return 2;
        const std::string node = std::string(dir) + "/null";
        const int r = mknod(node.c_str(), S_IFCHR | 0600, makedev(1, 3));
        std::printf("mknod %s\n", r == 0 ? "ok" : strerror(errno));
        unlink(node.c_str());
        rmdir(dir);
        return 0;
      },
      &out);
  INFO(out);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  // The default set 0x880000db minus mknod (bit 27) plus sys_admin (21).
  const uint64_t want = (0x880000dbULL & ~(1ULL << CAP_MKNOD)) | (1ULL << CAP_SYS_ADMIN);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(want));
  CHECK(out.rfind(std::string(hex) + " " + hex + " " + hex + " 0000000000000000\n", 0) == 0);
  CHECK(out.find("mknod Operation not permitted") != std::string::npos);
}

TEST_CASE("every name on the seccomp allow-list is a system call here") {
  for (const char* name : SeccompAllowList()) {
    INFO(name);
    CHECK(seccomp_syscall_resolve_name(name) >= 0);
  }
}

TEST_CASE("seccomp kill: a forbidden call kills the process, allowed ones work") {
  std::string out;
  const int status = InChild(
      [] {
        if (auto s = InstallSeccomp(SeccompAction::kKill); !s.ok()) return 1;
        // Allowed: what GET_INFLIGHT_FD does (memfd, size, seals, map).
        const int fd = memfd_create("inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0 || ftruncate(fd, 4096) != 0 ||
            fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) != 0 ||
            mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED) {
          return 3;
        }
        std::printf("filter %s\n", StatusField("Seccomp").c_str());
        std::fflush(stdout);
        Forbidden();
        std::printf("survived\n");
        return 0;
      },
      &out);
  INFO(out);
  CHECK(out.find("filter 2") != std::string::npos);
  CHECK(out.find("survived") == std::string::npos);
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGSYS);
}

TEST_CASE("seccomp kill: unshare is allowed with CLONE_FS only") {
  const int status = InChild([] {
    if (!InstallSeccomp(SeccompAction::kKill).ok()) return 1;
    if (unshare(CLONE_FS) != 0) return 2;
    unshare(CLONE_NEWNS);  // A namespace: killed.
    return 0;
  });
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGSYS);
}

TEST_CASE("seccomp log: a forbidden call is allowed (and logged by the kernel)") {
  std::string out;
  const int status = InChild(
      [] {
        if (!InstallSeccomp(SeccompAction::kLog).ok()) return 1;
        const long r = Forbidden();
        std::printf("filter %s personality %ld\n", StatusField("Seccomp").c_str(), r);
        return 0;
      },
      &out);
  INFO(out);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(out.find("filter 2 personality") != std::string::npos);
  CHECK(out.find("personality -1") == std::string::npos);
}

TEST_CASE("seccomp trap: a forbidden call is named on stderr, then SIGSYS") {
  std::string out;
  const int status = InChild(
      [] {
        if (!InstallSeccomp(SeccompAction::kTrap).ok()) return 1;
        Forbidden();
        return 0;
      },
      &out);
  INFO(out);
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGSYS);
#ifndef __SANITIZE_THREAD__  // TSan defers handlers: the process dies silently.
  CHECK(out.find("seccomp blocked system call personality " + std::to_string(SYS_personality)) !=
        std::string::npos);
#endif
}

TEST_CASE("seccomp none installs nothing") {
  const int status = InChild([] {
    if (!InstallSeccomp(SeccompAction::kNone).ok()) return 1;
    Forbidden();
    return StatusField("Seccomp") == "0" && !IoEngine::uring_opcodes_restricted() ? 0 : 2;
  });
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

// ---- io_uring restrictions -------------------------------------------------

// Submits one SQE prepared by `prep` and returns its result.
int SubmitOne(io_uring* ring, const std::function<void(io_uring_sqe*)>& prep) {
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  REQUIRE(sqe != nullptr);
  prep(sqe);
  REQUIRE(io_uring_submit(ring) == 1);
  io_uring_cqe* cqe;
  REQUIRE(io_uring_wait_cqe(ring, &cqe) == 0);
  const int res = cqe->res;
  io_uring_cqe_seen(ring, cqe);
  return res;
}

TEST_CASE("a restricted ring refuses opcodes the engine does not use") {
  io_uring ring;
  if (int r = io_uring_queue_init(8, &ring, IORING_SETUP_R_DISABLED); r < 0) {
    WARN("io_uring with IORING_SETUP_R_DISABLED unavailable: " << strerror(-r));
    return;
  }
  REQUIRE(virtiofs::io_internal::RestrictAndEnableRing(&ring) == 0);
  virtiofs::testing::TempDir dir;
  const std::string path = dir.path + "/f";
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  char data[16] = "restricted ring";
  iovec v{data, sizeof data};
  // Allowed: the engine's four.
  CHECK(SubmitOne(&ring, [&](io_uring_sqe* s) { io_uring_prep_writev(s, fd, &v, 1, 0); }) == 16);
  CHECK(SubmitOne(&ring, [&](io_uring_sqe* s) { io_uring_prep_fsync(s, fd, 0); }) == 0);
  CHECK(SubmitOne(&ring, [&](io_uring_sqe* s) { io_uring_prep_fallocate(s, fd, 0, 0, 4096); }) ==
        0);
  char back[16] = {};
  iovec b{back, sizeof back};
  CHECK(SubmitOne(&ring, [&](io_uring_sqe* s) { io_uring_prep_readv(s, fd, &b, 1, 0); }) == 16);
  CHECK(std::memcmp(back, data, 16) == 0);
  // Refused: anything else, e.g. an open (a path op that seccomp never sees),
  // a nop, a plain read; and an allowed opcode with an SQE flag.
  CHECK(SubmitOne(&ring, [&](io_uring_sqe* s) {
          io_uring_prep_openat(s, AT_FDCWD, "/etc/passwd", O_RDONLY, 0);
        }) == -EACCES);
  CHECK(SubmitOne(&ring, [&](io_uring_sqe* s) { io_uring_prep_nop(s); }) == -EACCES);
  CHECK(SubmitOne(&ring, [&](io_uring_sqe* s) { io_uring_prep_read(s, fd, back, 16, 0); }) ==
        -EACCES);
  CHECK(SubmitOne(&ring, [&](io_uring_sqe* s) {
          io_uring_prep_readv(s, fd, &b, 1, 0);
          io_uring_sqe_set_flags(s, IOSQE_IO_DRAIN);
        }) == -EACCES);
  // And no register operation once enabled.
  CHECK(io_uring_register_eventfd(&ring, fd) == -EACCES);
  close(fd);
  io_uring_queue_exit(&ring);
}

TEST_CASE("after RestrictUringOpcodes the engine still reads, writes, syncs and allocates") {
  // In a child: the switch is process-wide.
  std::string out;
  const int status = InChild(
      [] {
        IoEngine::RestrictUringOpcodes();
        auto e = IoEngine::Create(IoEngineKind::kUring);
        if (!e.ok()) {
          std::printf("skip: %s\n", std::string(e.status().message()).c_str());
          return 77;
        }
        char path[] = "/tmp/lockdown-ring-XXXXXX";
        const int fd = mkstemp(path);
        unlink(path);
        char data[8] = "1234567";
        iovec v{data, 8};
        int64_t results[4] = {-1, -1, -1, -1};
        int done = 0;
        (*e)->Writev(fd, {&v, 1}, 0, [&](int64_t r) { results[0] = r, ++done; });
        (*e)->Fsync(fd, false, [&](int64_t r) { results[1] = r, ++done; });
        (*e)->Fallocate(fd, 0, 0, 8192, [&](int64_t r) { results[2] = r, ++done; });
        (*e)->Submit();
        while (done < 3) (*e)->Reap();
        char back[8] = {};
        iovec b{back, 8};
        (*e)->Readv(fd, {&b, 1}, 0, [&](int64_t r) { results[3] = r, ++done; });
        (*e)->Submit();
        while (done < 4) (*e)->Reap();
        std::printf("%lld %lld %lld %lld %s\n", static_cast<long long>(results[0]),
                    static_cast<long long>(results[1]), static_cast<long long>(results[2]),
                    static_cast<long long>(results[3]), back);
        return 0;
      },
      &out);
  INFO(out);
  REQUIRE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77) {
    WARN(out);
    return;
  }
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(out == "8 0 0 8 1234567\n");
}

// ---- rlimit ------------------------------------------------------------------

rlimit Nofile() {
  rlimit r{};
  getrlimit(RLIMIT_NOFILE, &r);
  return r;
}

TEST_CASE("rlimit-nofile: 0 leaves it, a value sets it, the default raises it") {
  const rlimit before = Nofile();
  uint64_t nr_open = 0;
  std::ifstream("/proc/sys/fs/nr_open") >> nr_open;
  REQUIRE(nr_open > 0);
  auto limit = [](std::optional<uint64_t> want, bool handles, std::string* out) {
    return InChild(
        [=] {
          auto r = SetupRlimitNofile(want, handles);
          if (!r.ok()) {
            std::printf("error %s\n", std::string(r.status().message()).c_str());
            return 1;
          }
          const rlimit now = Nofile();
          std::printf(
              "soft %llu hard %llu returned %llu\n", static_cast<unsigned long long>(now.rlim_cur),
              static_cast<unsigned long long>(now.rlim_max), static_cast<unsigned long long>(*r));
          return 0;
        },
        out);
  };
  std::string out;
  CHECK(limit(0, false, &out) == 0);
  CHECK(out.find("soft " + std::to_string(before.rlim_cur) + " hard " +
                 std::to_string(before.rlim_max)) != std::string::npos);
  CHECK(limit(512, false, &out) == 0);
  CHECK(out.find("soft 512 hard 512 returned 512") != std::string::npos);
  // A low limit without file handles is worth a line; with them it is not.
  CHECK(out.find("--inode-file-handles") != std::string::npos);
  CHECK(limit(512, true, &out) == 0);
  CHECK(out.find("--inode-file-handles") == std::string::npos);
  // Above nr_open: an error naming it.
  CHECK(WEXITSTATUS(limit(nr_open + 1, false, &out)) == 1);
  CHECK(out.find("nr_open") != std::string::npos);
  // The default: min(1,000,000, nr_open), or the hard limit where raising
  // the hard limit is not permitted (no CAP_SYS_RESOURCE, as here).
  CHECK(limit(std::nullopt, false, &out) == 0);
  const uint64_t target = std::min<uint64_t>(1000000, nr_open);
  const bool raised = out.find("soft " + std::to_string(target) + " hard " +
                               std::to_string(target)) != std::string::npos;
  const bool hard = out.find("soft " + std::to_string(before.rlim_max) + " hard " +
                             std::to_string(before.rlim_max)) != std::string::npos;
  INFO(out);
  CHECK((raised || (hard && out.find("using the hard limit") != std::string::npos)));
}

// ---- sandbox -----------------------------------------------------------------

TEST_CASE("namespace sandbox: pid 1 in the shared directory, supervised") {
  if (geteuid() != 0) {
    WARN("not root: the namespace sandbox runs in a user namespace, not checked here");
    return;
  }
  virtiofs::testing::TempDir dir;
  const std::string share = dir.path + "/share";
  REQUIRE(mkdir(share.c_str(), 0755) == 0);
  virtiofs::testing::WriteFile(share + "/marker", "inside");
  const std::string sock = dir.path + "/sock";
  virtiofs::testing::WriteFile(sock, "");  // Stands for the socket path.
  LockdownConfig c;
  c.sandbox = SandboxKind::kNamespace;
  c.shared_dir = share;
  c.socket_path = sock;
  if (auto s = CheckLockdownConfig(c); !s.ok()) {
    WARN("namespaces unavailable here: " << s.message());
    return;
  }
  std::string out;
  // The child becomes the supervisor; the grandchild returns from
  // EnterSandbox and exits 42, which the supervisor passes on.
  const int status = InChild(
      [&] {
        auto sb = EnterSandbox(c);
        if (!sb.ok()) {
          std::printf("error %s\n", std::string(sb.status().message()).c_str());
          return 1;
        }
        std::ifstream marker("/marker");
        std::string text;
        marker >> text;
        struct stat fd_dir, by_fd;
        const bool proc_ok = fstatat(sb->proc_self_fd.get(), "", &fd_dir, AT_EMPTY_PATH) == 0 &&
                             fstatat(sb->proc_self_fd.get(), "0", &by_fd, 0) == 0;
        std::printf("pid %d root %s marker %s proc %d old-root %d\n", getpid(), sb->root.c_str(),
                    text.c_str(), proc_ok, access("/proc/self", F_OK) == 0);
        return 42;
      },
      &out);
  INFO(out);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 42);
  CHECK(out.find("pid 1 root / marker inside proc 1 old-root 0") != std::string::npos);
  struct stat st;
  CHECK(::stat(sock.c_str(), &st) != 0);  // The supervisor removed the socket path.
}

TEST_CASE("namespace sandbox: a failing child makes the supervisor exit non-zero") {
  if (geteuid() != 0) return;
  virtiofs::testing::TempDir dir;
  LockdownConfig c;
  c.sandbox = SandboxKind::kNamespace;
  c.shared_dir = dir.path + "/missing";  // The bind mount fails in the child.
  c.socket_path = dir.path + "/sock";
  virtiofs::testing::WriteFile(c.socket_path, "");
  if (!CheckLockdownConfig(LockdownConfig{.shared_dir = dir.path}).ok()) return;
  std::string out;
  const int status = InChild(
      [&] {
        auto sb = EnterSandbox(c);
        if (!sb.ok()) {
          std::printf("error %s\n", std::string(sb.status().message()).c_str());
          return 3;
        }
        return 0;
      },
      &out);
  INFO(out);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 3);
  CHECK(out.find("bind mount") != std::string::npos);
  struct stat st;
  CHECK(::stat(c.socket_path.c_str(), &st) != 0);  // Removed by the supervisor.
}

TEST_CASE("chroot sandbox: the shared directory is the root") {
  if (geteuid() != 0) return;
  virtiofs::testing::TempDir dir;
  virtiofs::testing::WriteFile(dir.path + "/marker", "chrooted");
  LockdownConfig c;
  c.sandbox = SandboxKind::kChroot;
  c.shared_dir = dir.path;
  std::string out;
  const int status = InChild(
      [&] {
        auto sb = EnterSandbox(c);
        if (!sb.ok()) return 1;
        std::ifstream marker("/marker");
        std::string text;
        marker >> text;
        std::printf("root %s marker %s proc %d\n", sb->root.c_str(), text.c_str(),
                    sb->proc_self_fd.valid());
        return 5;
      },
      &out);
  INFO(out);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 5);
  CHECK(out.find("root / marker chrooted proc 1") != std::string::npos);
}

TEST_CASE("config checks: id maps only where used, the shared directory must exist") {
  virtiofs::testing::TempDir dir;
  LockdownConfig c;
  c.shared_dir = dir.path + "/none";
  c.sandbox = SandboxKind::kNone;
  CHECK_FALSE(CheckLockdownConfig(c).ok());
  c.shared_dir = dir.path;
  CHECK(CheckLockdownConfig(c).ok());
  c.uid_map.push_back({0, 1000, 1});
  CHECK_FALSE(CheckLockdownConfig(c).ok());  // Sandbox none has no user namespace.
  c.uid_map.clear();
  c.modcaps = "+bogus";
  CHECK_FALSE(CheckLockdownConfig(c).ok());
}

}  // namespace
}  // namespace virtiofsd
