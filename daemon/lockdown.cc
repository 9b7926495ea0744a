// The daemon's lockdown: rlimit, sandbox, capabilities, seccomp (see
// lockdown.h for the order of the calls and why).
#include "daemon/lockdown.h"

#include <cap-ng.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "virtiofs/io_engine.h"
#include "virtiofs/log.h"

namespace virtiofsd {

using virtiofs::UniqueFd;

namespace {

absl::Status Errno(absl::string_view what) { return absl::ErrnoToStatus(errno, what); }

// What the passthrough does as root on behalf of guest users: chown and
// setgid bits (chown, fsetid, setgid), any permission (dac_override, as the
// kernel's checks run with the caller's fsuid), owner-only operations
// (fowner), device nodes (mknod), fsuid/fsgid switches (setuid, setgid)
// and file capabilities in security.capability xattrs (setfcap).
constexpr int kPassthroughCaps[] = {CAP_CHOWN,  CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID,
                                    CAP_SETGID, CAP_SETUID,       CAP_MKNOD,  CAP_SETFCAP};

// virtiofsd's default when --rlimit-nofile is not given.
constexpr uint64_t kDefaultNofile = 1000000;
// Below this many fds, a guest walking a large tree runs out of them (one
// O_PATH fd per inode it knows) unless inodes are file handles.
constexpr uint64_t kLowNofile = 100000;

// ---- Sandbox supervisor --------------------------------------------------

pid_t g_child = -1;

void ForwardSignal(int sig) {
  if (g_child > 0) kill(g_child, sig);
}

constexpr int kForwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2};

// The supervisor's life after the fork: forward signals, wait, clean up,
// exit with the child's status. Never returns.
[[noreturn]] void Supervise(pid_t child, const LockdownConfig& config, const sigset_t& old) {
  if (config.listen_fd >= 0) close(config.listen_fd);  // The child's alone.
  g_child = child;
  struct sigaction sa {};
  sa.sa_handler = ForwardSignal;
  sigemptyset(&sa.sa_mask);
  for (int sig : kForwarded) sigaction(sig, &sa, nullptr);
  // The caller may have blocked them (the daemon does, for sigwait): the
  // supervisor must take them to forward them.
  sigset_t forwarded = old;
  for (int sig : kForwarded) sigdelset(&forwarded, sig);
  sigprocmask(SIG_SETMASK, &forwarded, nullptr);
  int status = 0;
  while (waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) {
      std::perror("virtiofsd: waitpid");
      std::_Exit(1);
    }
  }
  if (!config.socket_path.empty()) unlink(config.socket_path.c_str());
  for (const std::string& path : config.also_remove) unlink(path.c_str());
  if (WIFSIGNALED(status)) {
    VIRTIOFS_LOG(kError, "sandboxed daemon killed by signal {} ({})", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    std::_Exit(128 + WTERMSIG(status));
  }
  std::_Exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
}

// Forks; returns in the child only. The child dies with the supervisor.
absl::Status ForkSupervised(const LockdownConfig& config) {
  sigset_t block, old;
  sigemptyset(&block);
  for (int sig : kForwarded) sigaddset(&block, sig);
  // Blocked across the fork: a signal in between is forwarded, not lost.
  sigprocmask(SIG_BLOCK, &block, &old);
  std::fflush(nullptr);
  const pid_t supervisor = getpid();
  const pid_t child = fork();
  if (child < 0) {
    const int e = errno;
    sigprocmask(SIG_SETMASK, &old, nullptr);
    return absl::ErrnoToStatus(e, "fork");
  }
  if (child > 0) Supervise(child, config, old);
  // SIGKILL: the child may be pid 1 of its namespace, which ignores other
  // signals it has no handler for.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  // The supervisor went before the prctl took effect: end now. (In a new
  // pid namespace getppid() is 0, the parent being outside it; a reparented
  // child there would be killed with the namespace.)
  if (const pid_t ppid = getppid(); ppid != 0 && ppid != supervisor) std::_Exit(1);
  // SIGTERM and SIGINT stay blocked (pending ones kept): as pid 1 without
  // a handler the child would drop them, and the daemon waits for them with
  // sigwait anyway. The others are restored.
  sigset_t keep = old;
  sigaddset(&keep, SIGTERM);
  sigaddset(&keep, SIGINT);
  sigprocmask(SIG_SETMASK, &keep, nullptr);
  return absl::OkStatus();
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid()) return Errno(absl::StrCat("open ", path));
  if (write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    return Errno(absl::StrCat("write ", path, " '", text, "'"));
  }
  return absl::OkStatus();
}

// Runs newuidmap/newgidmap for `pid` with `maps`.
absl::Status RunIdMapHelper(const char* helper, pid_t pid, const std::vector<IdMap>& maps) {
  std::vector<std::string> args = {helper, std::to_string(pid)};
  for (const IdMap& m : maps) {
    args.push_back(std::to_string(m.inside));
    args.push_back(std::to_string(m.outside));
    args.push_back(std::to_string(m.count));
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t p = fork();
  if (p < 0) return Errno("fork");
  if (p == 0) {
    execvp(helper, argv.data());
    std::_Exit(127);
  }
  int status = 0;
  while (waitpid(p, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
    return absl::FailedPreconditionError(absl::StrCat("--uid-map/--gid-map need ", helper,
                                                      " (Debian package uidmap) when not root"));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat(helper, " failed (are the ids in /etc/subuid and /etc/subgid?)"));
  }
  return absl::OkStatus();
}

// A user namespace for an unprivileged daemon, with its maps. Given maps go
// through newuidmap/newgidmap, run by a helper that stays outside the
// namespace; without maps the daemon's own ids become root inside (which an
// unprivileged process may write itself).
absl::Status EnterUserNamespace(const LockdownConfig& config) {
  const uid_t uid = geteuid();
  const gid_t gid = getegid();
  if (config.uid_map.empty() && config.gid_map.empty()) {
    if (unshare(CLONE_NEWUSER) != 0) return Errno("unshare(CLONE_NEWUSER)");
    if (auto s = WriteFile("/proc/self/setgroups", "deny"); !s.ok()) return s;
    if (auto s = WriteFile("/proc/self/uid_map", absl::StrFormat("0 %u 1\n", uid)); !s.ok()) {
      return s;
    }
    return WriteFile("/proc/self/gid_map", absl::StrFormat("0 %u 1\n", gid));
  }
  // The helper waits (pipe) until this process has its namespace.
  int go[2];
  if (pipe2(go, O_CLOEXEC) != 0) return Errno("pipe2");
  const pid_t self = getpid();
  const pid_t helper = fork();
  if (helper < 0) return Errno("fork");
  if (helper == 0) {
    close(go[1]);
    char c;
    if (read(go[0], &c, 1) != 1) std::_Exit(2);
    const auto& uids = config.uid_map.empty() ? std::vector<IdMap>{{0, uid, 1}} : config.uid_map;
    const auto& gids = config.gid_map.empty() ? std::vector<IdMap>{{0, gid, 1}} : config.gid_map;
    auto s = RunIdMapHelper("newuidmap", self, uids);
    if (s.ok()) s = RunIdMapHelper("newgidmap", self, gids);
    if (!s.ok()) std::fprintf(stderr, "virtiofsd: %s\n", std::string(s.message()).c_str());
    std::_Exit(s.ok() ? 0 : 1);
  }
  close(go[0]);
  const int unshared = unshare(CLONE_NEWUSER);
  const int e = errno;
  (void)!write(go[1], "x", 1);  // Go (or fail: the helper then fails too).
  close(go[1]);
  int status = 0;
  while (waitpid(helper, &status, 0) < 0 && errno == EINTR) {
  }
  if (unshared != 0) return absl::ErrnoToStatus(e, "unshare(CLONE_NEWUSER)");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::PermissionDeniedError("setting the user namespace's id maps failed");
  }
  return absl::OkStatus();
}

// The child's half of the namespace sandbox: its own mounts, its own /proc
// (of the new pid namespace), and the shared directory as "/".
absl::StatusOr<Sandbox> SetUpNamespaceChild(const LockdownConfig& config) {
  if (unshare(CLONE_NEWNS | CLONE_NEWNET) != 0) return Errno("unshare(CLONE_NEWNS|CLONE_NEWNET)");
  // Nothing done here propagates back to the host; the host's mounts (a
  // submount appearing in the share) still propagate in.
  if (mount(nullptr, "/", nullptr, MS_SLAVE | MS_REC, nullptr) != 0) {
    return Errno("make / a slave mount");
  }
  if (mount("proc", "/proc", "proc", MS_NODEV | MS_NOEXEC | MS_NOSUID | MS_RELATIME, nullptr) !=
      0) {
    return Errno("mount /proc for the new pid namespace");
  }
  Sandbox sb;
  sb.proc_self_fd.reset(open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!sb.proc_self_fd.valid()) return Errno("open /proc/self/fd");
  const char* dir = config.shared_dir.c_str();
  // pivot_root needs a mount point: the share, bound onto itself.
  if (mount(dir, dir, nullptr, MS_BIND | MS_REC, nullptr) != 0) {
    return Errno(absl::StrCat("bind mount '", config.shared_dir, "'"));
  }
  if (chdir(dir) != 0) return Errno(absl::StrCat("chdir '", config.shared_dir, "'"));
  // pivot_root(".", "."): the old root ends up stacked on "/", and is then
  // detached, with everything under it (the new /proc lives on through
  // proc_self_fd only).
  if (syscall(SYS_pivot_root, ".", ".") != 0) return Errno("pivot_root");
  if (umount2(".", MNT_DETACH) != 0) return Errno("detach the old root");
  if (chdir("/") != 0) return Errno("chdir /");
  sb.root = "/";
  return sb;
}

absl::StatusOr<Sandbox> EnterNamespaceSandbox(const LockdownConfig& config) {
  const bool user_ns = geteuid() != 0;
  if (user_ns) {
    if (auto s = EnterUserNamespace(config); !s.ok()) return s;
  }
  // The new pid namespace is for the children: the supervisor stays where it
  // is, with the host's mounts (it removes the socket path at the end).
  if (unshare(CLONE_NEWPID) != 0) return Errno("unshare(CLONE_NEWPID)");
  if (auto s = ForkSupervised(config); !s.ok()) return s;
  auto sb = SetUpNamespaceChild(config);
  if (sb.ok() && user_ns && config.uid_map.empty() && config.gid_map.empty()) {
    sb->can_setgroups = false;  // EnterUserNamespace wrote "deny".
  }
  return sb;
}

absl::StatusOr<Sandbox> EnterChrootSandbox(const LockdownConfig& config) {
  if (auto s = ForkSupervised(config); !s.ok()) return s;
  Sandbox sb;
  sb.proc_self_fd.reset(open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!sb.proc_self_fd.valid()) return Errno("open /proc/self/fd");
  if (chdir(config.shared_dir.c_str()) != 0) {
    return Errno(absl::StrCat("chdir '", config.shared_dir, "'"));
  }
  if (chroot(".") != 0) return Errno("chroot");
  if (chdir("/") != 0) return Errno("chdir /");
  sb.root = "/";
  return sb;
}

// Whether the namespaces can be made here, tried in a throwaway child so
// that a refusal is one line before anything is bound.
absl::Status ProbeNamespaces() {
  int flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID;
  if (geteuid() != 0) flags |= CLONE_NEWUSER;
  std::fflush(nullptr);
  const pid_t p = fork();
  if (p < 0) return Errno("fork");
  if (p == 0) std::_Exit(unshare(flags) == 0 ? 0 : errno);
  int status = 0;
  while (waitpid(p, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return absl::OkStatus();
  const int e = WIFEXITED(status) ? WEXITSTATUS(status) : EPERM;
  return absl::ErrnoToStatus(
      e,
      "--sandbox=namespace: cannot create mount, pid and net namespaces here (a container "
      "without CAP_SYS_ADMIN?); use --sandbox=chroot or --sandbox=none");
}

// ---- seccomp ---------------------------------------------------------------

void OnBlockedSyscall(int, siginfo_t* info, void*) {
  // Async-signal-safe: a fixed buffer and write(2).
  char buf[128] = "virtiofsd: seccomp blocked system call ";
  size_t n = strlen(buf);
  const char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, info->si_syscall);
  if (name != nullptr) {
    const size_t len = std::min(strlen(name), sizeof buf - n - 16);
    std::memcpy(buf + n, name, len);
    n += len;
    buf[n++] = ' ';
  }
  auto [end, ec] = std::to_chars(buf + n, buf + sizeof buf - 2, info->si_syscall);
  n = static_cast<size_t>(end - buf);
  buf[n++] = '\n';
  (void)!write(2, buf, n);
  signal(SIGSYS, SIG_DFL);
  raise(SIGSYS);
}

}  // namespace

absl::StatusOr<SandboxKind> ParseSandboxKind(absl::string_view s) {
  if (s == "namespace") return SandboxKind::kNamespace;
  if (s == "chroot") return SandboxKind::kChroot;
  if (s == "none") return SandboxKind::kNone;
  return absl::InvalidArgumentError(
      absl::StrCat("--sandbox: '", s, "' is not namespace, chroot or none"));
}

absl::StatusOr<SeccompAction> ParseSeccompAction(absl::string_view s) {
  if (s == "kill") return SeccompAction::kKill;
  if (s == "log") return SeccompAction::kLog;
  if (s == "trap") return SeccompAction::kTrap;
  if (s == "none") return SeccompAction::kNone;
  return absl::InvalidArgumentError(
      absl::StrCat("--seccomp: '", s, "' is not kill, log, trap or none"));
}

absl::StatusOr<IdMap> ParseIdMap(absl::string_view s) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("id map '", s, "': ", why, " (expected :inside:outside:count:)"));
  };
  if (s.size() < 2 || absl::ascii_isdigit(static_cast<unsigned char>(s[0]))) {
    return bad("it must start with a delimiter");
  }
  const char delim = s[0];
  if (s.back() != delim) return bad("it must end with the delimiter it starts with");
  std::vector<absl::string_view> parts = absl::StrSplit(s.substr(1, s.size() - 2), delim);
  if (parts.size() != 3) return bad("it needs three numbers");
  uint32_t v[3];
  for (int i = 0; i < 3; ++i) {
    const char* end = parts[i].data() + parts[i].size();
    auto [p, ec] = std::from_chars(parts[i].data(), end, v[i]);
    if (parts[i].empty() || ec != std::errc() || p != end) {
      return bad(absl::StrCat("'", parts[i], "' is not a 32-bit number"));
    }
  }
  if (v[2] == 0) return bad("the count is 0");
  // Both ranges must fit in 32 bits: ids are uint32_t and (uid_t)-1 is not
  // an id.
  if (uint64_t{v[0]} + v[2] > UINT32_MAX || uint64_t{v[1]} + v[2] > UINT32_MAX) {
    return bad("the range goes past the largest id");
  }
  return IdMap{v[0], v[1], v[2]};
}

absl::StatusOr<std::vector<int>> ComputeCapabilities(bool file_handles, absl::string_view modcaps) {
  std::vector<int> caps(std::begin(kPassthroughCaps), std::end(kPassthroughCaps));
  if (file_handles) caps.push_back(CAP_DAC_READ_SEARCH);
  if (!modcaps.empty()) {
    for (absl::string_view item : absl::StrSplit(modcaps, ':')) {
      if (item.size() < 2 || (item[0] != '+' && item[0] != '-')) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--modcaps: '", item, "' is not +name or -name (e.g. --modcaps=+sys_admin:-mknod)"));
      }
      std::string name = absl::AsciiStrToLower(item.substr(1));
      if (absl::StartsWith(name, "cap_")) name.erase(0, 4);
      const int cap = capng_name_to_capability(name.c_str());
      if (cap < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("--modcaps: '", item.substr(1), "' is not a capability"));
      }
      auto it = std::find(caps.begin(), caps.end(), cap);
      if (item[0] == '+' && it == caps.end()) caps.push_back(cap);
      if (item[0] == '-' && it != caps.end()) caps.erase(it);
    }
  }
  std::sort(caps.begin(), caps.end());
  return caps;
}

absl::Status CheckLockdownConfig(const LockdownConfig& config) {
  if (auto caps = ComputeCapabilities(config.file_handles, config.modcaps); !caps.ok()) {
    return caps.status();
  }
  if ((!config.uid_map.empty() || !config.gid_map.empty()) &&
      (config.sandbox != SandboxKind::kNamespace || geteuid() == 0)) {
    return absl::InvalidArgumentError(
        "--uid-map/--gid-map apply to --sandbox=namespace when not running as root (root needs "
        "no user namespace)");
  }
  struct stat st;
  if (stat(config.shared_dir.c_str(), &st) != 0) {
    return Errno(absl::StrCat("shared directory '", config.shared_dir, "'"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shared directory '", config.shared_dir, "' is not a directory"));
  }
  if (config.sandbox == SandboxKind::kNamespace) return ProbeNamespaces();
  if (config.sandbox == SandboxKind::kChroot && geteuid() != 0) {
    return absl::PermissionDeniedError(
        "--sandbox=chroot needs root (CAP_SYS_CHROOT); use --sandbox=namespace or none");
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> SetupRlimitNofile(std::optional<uint64_t> requested, bool file_handles) {
  rlimit now{};
  if (getrlimit(RLIMIT_NOFILE, &now) != 0) return Errno("getrlimit(RLIMIT_NOFILE)");
  uint64_t nr_open = kDefaultNofile;
  if (std::ifstream f("/proc/sys/fs/nr_open"); !(f >> nr_open)) {
    return absl::FailedPreconditionError("--rlimit-nofile: cannot read /proc/sys/fs/nr_open");
  }
  auto warn_if_low = [&](uint64_t soft) {
    if (soft < kLowNofile && !file_handles) {
      VIRTIOFS_LOG(kWarning,
                   "the open file limit is {}: the daemon holds one fd per inode the guest "
                   "knows, so a large tree may exhaust it; --inode-file-handles=prefer avoids "
                   "that",
                   soft);
    }
    return soft;
  };
  if (requested && *requested == 0) return warn_if_low(now.rlim_cur);  // Left alone.
  uint64_t target;
  if (requested) {
    target = *requested;
  } else {
    if (now.rlim_cur >= kDefaultNofile) return warn_if_low(now.rlim_cur);
    target = std::min(kDefaultNofile, nr_open);
  }
  if (target > nr_open) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--rlimit-nofile=%u: the limit cannot be raised above %u (/proc/sys/fs/nr_open)", target,
        nr_open));
  }
  rlimit want{target, target};
  if (setrlimit(RLIMIT_NOFILE, &want) == 0) return warn_if_low(target);
  if (requested) {
    return Errno(
        absl::StrFormat("--rlimit-nofile=%u (the hard limit is %u)", target, now.rlim_max));
  }
  VIRTIOFS_LOG(kWarning,
               "cannot raise the open file limit to {} ({}); using the hard limit {} instead",
               target, strerror(errno), now.rlim_max);
  rlimit hard{now.rlim_max, now.rlim_max};
  if (setrlimit(RLIMIT_NOFILE, &hard) != 0) {
    return Errno("raising the open file soft limit to the hard limit");
  }
  return warn_if_low(now.rlim_max);
}

absl::StatusOr<Sandbox> EnterSandbox(const LockdownConfig& config) {
  if (config.sandbox != SandboxKind::kNone) {
    const pid_t self = getpid();
    auto sb = config.sandbox == SandboxKind::kNamespace ? EnterNamespaceSandbox(config)
                                                        : EnterChrootSandbox(config);
    // Failed before the fork: there is no supervisor to remove the socket.
    // (After it, the supervisor does; the child must not: its "/" may be
    // the shared directory already.)
    if (!sb.ok() && getpid() == self) {
      if (!config.socket_path.empty()) unlink(config.socket_path.c_str());
      for (const std::string& path : config.also_remove) unlink(path.c_str());
    }
    return sb;
  }
  Sandbox sb;
  sb.root = config.shared_dir;
  if (!config.socket_path.empty()) sb.removers.emplace_back(config.socket_path);
  for (const std::string& path : config.also_remove) sb.removers.emplace_back(path);
  return sb;
}

SocketPathRemover::SocketPathRemover(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  name_ = slash == std::string::npos ? path : path.substr(slash + 1);
  dir_.reset(open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
}

SocketPathRemover::~SocketPathRemover() {
  if (dir_.valid() && !name_.empty()) unlinkat(dir_.get(), name_.c_str(), 0);
}

absl::Status DropCapabilities(const LockdownConfig& config) {
  auto caps = ComputeCapabilities(config.file_handles, config.modcaps);
  if (!caps.ok()) return caps.status();
  capng_get_caps_process();
  // The bounding set can only be changed with CAP_SETPCAP; without it the
  // process cannot gain anything back anyway once permitted is cut.
  const bool bounding = capng_have_capability(CAPNG_EFFECTIVE, CAP_SETPCAP) != 0;
  capng_clear(CAPNG_SELECT_BOTH);
  for (int cap : *caps) {
    capng_type_t type = static_cast<capng_type_t>(CAPNG_EFFECTIVE | CAPNG_PERMITTED |
                                                  (bounding ? CAPNG_BOUNDING_SET : 0));
    if (capng_update(CAPNG_ADD, type, static_cast<unsigned>(cap)) != 0) {
      return absl::InternalError(absl::StrCat("capng_update ", cap));
    }
  }
  if (int r = capng_apply(bounding ? CAPNG_SELECT_BOTH : CAPNG_SELECT_CAPS); r != 0) {
    return absl::PermissionDeniedError(absl::StrFormat("capng_apply failed (%d)", r));
  }
  // libcap-ng 0.8 leaves the ambient set alone.
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) {
    return Errno("clear the ambient capabilities");
  }
  return absl::OkStatus();
}

// Sanitizer builds (tests only): LeakSanitizer stops the world at exit
// with a ptrace-ing tracer that lists /proc/self/task and waits for the
// threads; calls measured under --seccomp=log (the kernel logs each).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define VIRTIOFSD_SANITIZER_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define VIRTIOFSD_SANITIZER_BUILD 1
#endif
#endif

const std::vector<const char*>& SeccompAllowList() {
  // Every call the daemon makes, by whom. Names unknown to this
  // architecture are skipped when the filter is built.
  static const std::vector<const char*> kList = {
      // Memory: the allocator, guest memory regions (mmap of the front-end's
      // fds), thread stacks.
      "brk",
      "mmap",
      "munmap",
      "mremap",
      "mprotect",
      "madvise",
      "membarrier",
      // Threads (std::thread, glibc), futexes, scheduling.
      "clone",
      "clone3",
      "set_robust_list",
      "rseq",
      "set_tid_address",
      "futex",
      "futex_waitv",
      "exit",
      "exit_group",
      "gettid",
      "getpid",
      "getppid",
      "sched_yield",
      "sched_getaffinity",
      "nanosleep",
      "clock_nanosleep",
      "clock_gettime",
      "clock_getres",
      "gettimeofday",
      "prctl",
      "getrandom",
      "tgkill",
      "tkill",
      "restart_syscall",
      // Signals: the stop-signal thread (sigwait), glibc's setxid broadcast.
      "rt_sigaction",
      "rt_sigprocmask",
      "rt_sigreturn",
      "rt_sigtimedwait",
      "sigaltstack",
      // Boost.Asio: epoll, eventfd, timerfd, the vhost-user socket with fds.
      "epoll_create1",
      "epoll_ctl",
      "epoll_wait",
      "epoll_pwait",
      "epoll_pwait2",
      "eventfd2",
      "timerfd_create",
      "timerfd_settime",
      "timerfd_gettime",
      "accept",
      "accept4",
      "recvmsg",
      "sendmsg",
      "recvfrom",
      "sendto",
      "shutdown",
      "getsockopt",
      "setsockopt",
      "getsockname",
      "poll",
      "ppoll",
      "pipe2",
      // io_uring (its rings are restricted to readv/writev/fsync/fallocate).
      // The inflight region a front-end asks for (GET_INFLIGHT_FD).
      "memfd_create",
      "io_uring_setup",
      "io_uring_enter",
      "io_uring_register",
      // The passthrough: fds, paths relative to them, data, metadata.
      "openat",
      "openat2",
      "open_by_handle_at",
      "name_to_handle_at",
      "close",
      "close_range",
      "dup",
      "dup3",
      "fcntl",
      "flock",
      "ioctl",
      "read",
      "write",
      "readv",
      "writev",
      "pread64",
      "pwrite64",
      "preadv",
      "pwritev",
      "preadv2",
      "pwritev2",
      "lseek",
      "copy_file_range",
      "fallocate",
      "fsync",
      "fdatasync",
      "syncfs",
      "ftruncate",
      "fstat",
      "newfstatat",
      "statx",
      "fstatfs",
      "statfs",
      "getdents64",
      "readlinkat",
      "mkdirat",
      "mknodat",
      "symlinkat",
      "linkat",
      "unlinkat",
      "renameat",
      "renameat2",
      "faccessat",
      "faccessat2",
      "fchmod",
      "fchmodat",
      "fchown",
      "fchownat",
      "utimensat",
      "umask",
      "fchdir",
      // Extended attributes (f* on fds, path forms for /proc/self/fd links).
      "getxattr",
      "lgetxattr",
      "fgetxattr",
      "setxattr",
      "lsetxattr",
      "fsetxattr",
      "listxattr",
      "llistxattr",
      "flistxattr",
      "removexattr",
      "lremovexattr",
      "fremovexattr",
      // Credentials of each request (fsuid/fsgid, supplementary group).
      "setfsuid",
      "setfsgid",
      "setgroups",
      "getuid",
      "geteuid",
      "getgid",
      "getegid",
      "setresuid",
      "setresgid",
      "capget",
      // Logging, time zone and locale files at the first log line.
      "uname",
      "getcwd",
#ifdef VIRTIOFSD_SANITIZER_BUILD
      "ptrace",
      "wait4",
      "open",
      "getdents",
#endif
  };
  return kList;
}

absl::Status InstallSeccomp(SeccompAction action, bool syslog) {
  if (action == SeccompAction::kNone) return absl::OkStatus();
  virtiofs::IoEngine::RestrictUringOpcodes();
  uint32_t def = SCMP_ACT_KILL_PROCESS;
  if (action == SeccompAction::kLog) def = SCMP_ACT_LOG;
  if (action == SeccompAction::kTrap) {
    def = SCMP_ACT_TRAP;
    struct sigaction sa {};
    sa.sa_sigaction = OnBlockedSyscall;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSYS, &sa, nullptr);
  }
  scmp_filter_ctx ctx = seccomp_init(def);
  if (ctx == nullptr) return absl::InternalError("seccomp_init failed");
  struct Release {
    scmp_filter_ctx c;
    ~Release() { seccomp_release(c); }
  } release{ctx};
  // Every thread, including any an embedder started already.
  if (int r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1); r != 0) {
    return absl::ErrnoToStatus(-r, "seccomp thread sync");
  }
  // Queue workers unshare their fs attributes (a umask of their own):
  // unshare is allowed with exactly CLONE_FS, never a namespace flag.
  if (int r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(unshare), 1,
                               SCMP_A0(SCMP_CMP_EQ, CLONE_FS));
      r != 0) {
    return absl::ErrnoToStatus(-r, "seccomp rule for unshare(CLONE_FS)");
  }
  std::vector<const char*> allowed = SeccompAllowList();
  // syslog(3) connects its socket again after a failure, and on SIGHUP.
  if (syslog) allowed.insert(allowed.end(), {"socket", "connect"});
  for (const char* name : allowed) {
    const int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR || nr < 0) continue;  // Not on this architecture.
    if (int r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0); r != 0) {
      return absl::ErrnoToStatus(-r, absl::StrCat("seccomp rule for ", name));
    }
  }
  if (int r = seccomp_load(ctx); r != 0) return absl::ErrnoToStatus(-r, "seccomp_load");
#ifdef VIRTIOFSD_SANITIZER_BUILD
  VIRTIOFS_LOG(kWarning, "sanitizer build: ptrace, wait4, open and getdents are allowed too");
#endif
  return absl::OkStatus();
}

}  // namespace virtiofsd
