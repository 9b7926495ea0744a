// Lockdown: what the daemon does to itself before it serves a guest.
//
// virtiofsd confines itself in four ways, and so does this daemon:
//   1. the open file limit is raised (every inode the guest knows may hold
//      an fd), as virtiofsd's --rlimit-nofile logic does;
//   2. a sandbox: `namespace` (new mount, pid and net namespaces, plus a user
//      namespace when not root; pivot_root into the shared directory),
//      `chroot` (chroot into it, for runtimes that made the namespaces), or
//      `none`;
//   3. capabilities: only those the passthrough needs, adjusted by
//      --modcaps;
//   4. a seccomp allow-list of the system calls the daemon makes, with the
//      chosen action on any other; io_uring rings are restricted to the
//      opcodes the I/O engine submits, since seccomp never sees them.
//
// The sequence (see daemon/main.cc), each step one call:
//
//   parse the command line            -> LockdownConfig, CheckLockdownConfig()
//   SetupRlimitNofile()               (before anything opens many fds)
//   bind the listening socket         (its path is usually outside the share)
//   EnterSandbox()                    before ANY thread exists: it forks
//   create the PassthroughBackend     root and proc_self_fd from the sandbox
//   DropCapabilities()                after the backend (it drops
//                                     supplementary groups, needs CAP_SETGID
//                                     -- kept anyway) and before seccomp
//                                     (capset is not on the allow-list)
//   InstallSeccomp()                  before any thread (TSYNC covers later
//                                     mistakes) and before the first ring
//   create the device and the server, start threads, serve
//
// In `namespace` and `chroot` modes EnterSandbox() forks: the process that
// called it becomes a supervisor that never returns from it; it forwards
// SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 to the child, waits for it,
// removes the socket path (which the child cannot reach any more) and exits
// with the child's status (128 + signal when the child was killed). The
// child returns from EnterSandbox() and serves; it dies with its supervisor
// (PR_SET_PDEATHSIG), so a launcher's SIGKILL to the pid it started ends
// both. The child returns with SIGTERM and SIGINT blocked (a signal that
// arrived meanwhile stays pending for the daemon's sigwait); in the pid
// namespace it is pid 1, which drops any signal it has no handler for and
// does not block (SIGHUP, SIGUSR1: install handlers for them).
#ifndef VIRTIOFS_DAEMON_LOCKDOWN_H_
#define VIRTIOFS_DAEMON_LOCKDOWN_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "virtiofs/fd.h"

namespace virtiofsd {

enum class SandboxKind { kNamespace, kChroot, kNone };
enum class SeccompAction { kKill, kLog, kTrap, kNone };

// One line of a user namespace id map: ids [inside, inside + count) in the
// namespace are [outside, outside + count) outside.
struct IdMap {
  uint32_t inside = 0;
  uint32_t outside = 0;
  uint32_t count = 0;
};

struct LockdownConfig {
  // --sandbox: namespace (virtiofsd's default), chroot or none.
  SandboxKind sandbox = SandboxKind::kNamespace;
  // --seccomp: the action on a system call outside the allow-list: kill the
  // process, log it (and allow it), send SIGSYS (trap), or no filter.
  SeccompAction seccomp = SeccompAction::kKill;
  // --modcaps: "+cap:-cap:..." applied to the default set, names as in
  // capabilities(7) with or without "cap_", any case ("+sys_admin:-mknod").
  std::string modcaps;
  // --uid-map / --gid-map: the user namespace's maps, used only by the
  // namespace sandbox when not started as root. Empty: the daemon's own uid
  // (gid) is root inside. Other ids than one's own need newuidmap/newgidmap
  // (package uidmap) and /etc/subuid, /etc/subgid entries.
  std::vector<IdMap> uid_map;
  std::vector<IdMap> gid_map;
  // The passthrough holds inodes as file handles (--inode-file-handles
  // prefer or mandatory): CAP_DAC_READ_SEARCH is kept for open_by_handle_at.
  bool file_handles = false;
  // The shared directory, as given (becomes "/" in the namespace and chroot
  // sandboxes).
  std::string shared_dir;
  // The listening socket (bound before the sandbox), kept by the child and
  // closed in the supervisor so that only the serving process holds it.
  int listen_fd = -1;
  // The socket path the daemon bound ("" with --fd): the supervisor removes
  // it when the child ends; without a supervisor (sandbox none) the caller
  // does.
  std::string socket_path;
  // Other paths the daemon created outside the sandbox (its pid file, a
  // stats socket), removed after the socket path in the same way.
  std::vector<std::string> also_remove;
};

// Option values, as virtiofsd spells them. Errors name the bad value.
absl::StatusOr<SandboxKind> ParseSandboxKind(absl::string_view s);
absl::StatusOr<SeccompAction> ParseSeccompAction(absl::string_view s);
// virtiofsd's map syntax: ":inside:outside:count:", where the first
// character is the delimiter (any non-digit, used throughout).
absl::StatusOr<IdMap> ParseIdMap(absl::string_view s);
// The capability numbers the daemon keeps: the passthrough's set, plus
// dac_read_search with file handles, adjusted by `modcaps`.
absl::StatusOr<std::vector<int>> ComputeCapabilities(bool file_handles, absl::string_view modcaps);

// What can be checked before anything happens: modcaps names, id maps only
// where they are used, a shared directory that is a directory. One message
// per error, fit for one line on stderr.
absl::Status CheckLockdownConfig(const LockdownConfig& config);

// Sets RLIMIT_NOFILE as virtiofsd does: `requested` 0 leaves it alone; a
// requested value is set (soft and hard) or is an error; without one the
// limit is raised to min(1,000,000, /proc/sys/fs/nr_open) unless the soft
// limit is already at least that, falling back to the hard limit when that
// is not permitted (no CAP_SYS_RESOURCE). Logs a line recommending
// --inode-file-handles when the resulting soft limit is low. Returns the
// soft limit in effect.
absl::StatusOr<uint64_t> SetupRlimitNofile(std::optional<uint64_t> requested, bool file_handles);

// Removes a socket path when destroyed, through a descriptor of its
// directory opened beforehand (unlinkat is on the seccomp allow-list, unlink
// by path is not).
class SocketPathRemover {
 public:
  SocketPathRemover() = default;
  explicit SocketPathRemover(const std::string& path);
  SocketPathRemover(SocketPathRemover&&) = default;
  SocketPathRemover& operator=(SocketPathRemover&&) = default;
  ~SocketPathRemover();

 private:
  virtiofs::UniqueFd dir_;
  std::string name_;
};

struct Sandbox {
  // The path the backend must open as the shared directory ("/" after
  // pivot_root or chroot, else the directory as given).
  std::string root;
  // O_PATH of /proc/self/fd for PassthroughOptions::proc_self_fd, opened
  // where /proc is this process's (the new pid namespace's); invalid in
  // mode none (the backend opens it itself).
  virtiofs::UniqueFd proc_self_fd;
  // False in a user namespace whose /proc/self/setgroups is "deny" (the
  // unprivileged namespace sandbox without --gid-map): setgroups(2) fails
  // there, so PassthroughOptions::drop_supplementary_groups must be off
  // (the daemon keeps the groups it was started with, as the kernel shows
  // them) and per-request supplementary groups cannot be set.
  bool can_setgroups = true;
  // Mode none only (no supervisor): remove config.socket_path, then
  // config.also_remove, when the Sandbox is destroyed; keep it until the
  // server is gone.
  std::vector<SocketPathRemover> removers;
};

// Enters the configured sandbox (see the top of this file). Must be called
// while the process has a single thread. Fails, with the step that failed
// and its errno, before anything is served; in namespace and chroot modes
// only the child returns (the supervisor exits, with status 1 when the
// child failed to set the sandbox up). The socket path is removed on every
// failure (by the supervisor, or here when it failed before the fork).
absl::StatusOr<Sandbox> EnterSandbox(const LockdownConfig& config);

// Keeps only ComputeCapabilities(...) in the effective, permitted and (with
// CAP_SETPCAP) bounding sets; inheritable and ambient are cleared.
absl::Status DropCapabilities(const LockdownConfig& config);

// Installs the allow-list with the configured action (none: nothing) on
// every thread of the process, and restricts io_uring rings created from
// now on (IoEngine::RestrictUringOpcodes). Under `trap`, a blocked call
// prints its name on stderr and the process dumps core with SIGSYS.
// With `syslog`, socket and connect are allowed too (syslog(3) reconnects).
absl::Status InstallSeccomp(SeccompAction action, bool syslog = false);

// The allow-list, by name (tests check that it resolves on this kernel).
const std::vector<const char*>& SeccompAllowList();

}  // namespace virtiofsd

#endif  // VIRTIOFS_DAEMON_LOCKDOWN_H_
