// virtiofsd: serves a host directory to a virtual machine over vhost-user.
//
// Thin by design: the command line becomes a Config (daemon/options.h), the
// process locks itself down, and the library's server runs the passthrough
// backend. Order matters and is:
//   parse -> logging -> check the configuration -> rlimit -> pid file,
//   socket, stats socket (before the sandbox: their paths are usually outside
//   the shared dir) -> daemonize -> sandbox (daemon/lockdown.h; forks a
//   supervisor) -> backend -> capabilities -> seccomp -> device, signals,
//   stats -> serve.
// Everything before "serve" fails with one line on stderr and exit 1, and no
// socket or pid file is left behind.
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "daemon/lockdown.h"
#include "daemon/options.h"
#include "daemon/stats.h"
#include "virtiofs/log.h"
#include "virtiofs/passthrough.h"
#include "virtiofs/server.h"
#include "virtiofs/virtio_fs_device.h"

using namespace virtiofs;   // NOLINT: a program's main file.
using namespace virtiofsd;  // NOLINT

namespace {

constexpr char kVersion[] = "virtiofsd (virtiofs library) 0.2.0";

int Fail(absl::string_view message) {
  std::fprintf(stderr, "virtiofsd: %.*s\n", int(message.size()), message.data());
  return 1;
}

// Log sinks: stderr (the library's default), syslog, or a file that SIGHUP
// reopens (for logrotate).
class LogFile {
 public:
  // The directory is held open: the file can be reopened by name from
  // inside the sandbox, where the path no longer leads to it.
  absl::Status Open(const std::string& path) {
    std::lock_guard lock(mu_);
    const size_t slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
    name_ = slash == std::string::npos ? path : path.substr(slash + 1);
    dir_.reset(open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!dir_.valid()) return absl::ErrnoToStatus(errno, "--log-file " + path);
    return ReopenLocked();
  }
  absl::Status Reopen() {
    std::lock_guard lock(mu_);
    return ReopenLocked();
  }
  void Write(LogLevel level, std::string_view message) {
    std::lock_guard lock(mu_);
    if (fd_ < 0) return;
    char stamp[32];
    time_t now = time(nullptr);
    tm t;
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", localtime_r(&now, &t));
    std::string line = fmt::format("[{} {}] {}\n", stamp, LogLevelName(level), message);
    (void)!write(fd_, line.data(), line.size());
  }

 private:
  absl::Status ReopenLocked() {
    const int fd =
        openat(dir_.get(), name_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) return absl::ErrnoToStatus(errno, "--log-file " + name_);
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
    return absl::OkStatus();
  }
  std::mutex mu_;
  UniqueFd dir_;
  std::string name_;
  int fd_ = -1;
};
LogFile g_log_file;

void SyslogSink(LogLevel level, std::string_view message) {
  int priority = LOG_INFO;
  switch (level) {
    case LogLevel::kError:
      priority = LOG_ERR;
      break;
    case LogLevel::kWarning:
      priority = LOG_WARNING;
      break;
    case LogLevel::kInfo:
      priority = LOG_INFO;
      break;
    default:
      priority = LOG_DEBUG;
      break;
  }
  syslog(priority, "%.*s", int(message.size()), message.data());
}

// "<socket>.pid", locked for the daemon's life: a second daemon on the same
// socket stops here with the first one's pid.
absl::StatusOr<UniqueFd> LockPidFile(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "pid file " + path);
  if (flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {};
    (void)!pread(fd.get(), buf, sizeof buf - 1, 0);
    return absl::AlreadyExistsError(fmt::format(
        "socket '{}' is served by another virtiofsd (pid {}; lock on {})",
        path.substr(0, path.size() - 4), std::string(buf).substr(0, strcspn(buf, "\n")), path));
  }
  return fd;
}

void WritePid(int fd) {
  const std::string pid = std::to_string(getpid()) + "\n";
  if (ftruncate(fd, 0) == 0) (void)!pwrite(fd, pid.data(), pid.size(), 0);
}

// Forks; the parent exits 0 once the child has gone to the background and
// written its pid, so whoever started the daemon may connect (the socket
// already listens) and read the pid file as soon as the command returns.
void Daemonize(int pid_file) {
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) != 0) {
    VIRTIOFS_LOG(kError, "--daemonize: pipe: {}", strerror(errno));
    _exit(1);
  }
  const pid_t pid = fork();
  if (pid < 0) {
    VIRTIOFS_LOG(kError, "--daemonize: fork: {}", strerror(errno));
    _exit(1);
  }
  if (pid > 0) {
    close(ready[1]);
    char byte = 0;
    _exit(read(ready[0], &byte, 1) == 1 ? 0 : 1);
  }
  close(ready[0]);
  setsid();
  if (pid_file >= 0) WritePid(pid_file);
  const int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null >= 0) {
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    close(null);
  }
  if (chdir("/") != 0) VIRTIOFS_LOG(kWarning, "--daemonize: chdir /: {}", strerror(errno));
  const char byte = 1;
  (void)!write(ready[1], &byte, 1);
  close(ready[1]);
}

void PrintQemuLine(const Config& c) {
  const std::string tag = c.tag.empty() ? "myfs" : c.tag;
  std::printf(
      "virtiofsd: serving %s on %s. Attach QEMU with:\n"
      "  -object memory-backend-memfd,id=mem,size=2G,share=on -numa node,memdev=mem \\\n"
      "  -chardev socket,id=vfs,path=%s \\\n"
      "  -device vhost-user-fs-pci,chardev=vfs,queue-size=1024,tag=%s%s\n"
      "and in the guest: mount -t virtiofs %s /mnt\n",
      c.passthrough.root.c_str(), c.socket_path.c_str(), c.socket_path.c_str(), tag.c_str(),
      c.num_request_queues > 1
          ? (",num-request-queues=" + std::to_string(c.num_request_queues)).c_str()
          : "",
      tag.c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  Defaults defaults;
  const unsigned cpus = std::thread::hardware_concurrency();
  defaults.num_request_queues = cpus == 0 ? 1 : std::min(cpus, 255u);
  auto parsed = ParseCommandLine(argc, argv, defaults);
  if (!parsed.ok()) return Fail(parsed.status().message());
  Config& c = *parsed;
  switch (c.action) {
    case Config::Action::kHelp:
      std::fputs(c.help_text.c_str(), stdout);
      return 0;
    case Config::Action::kVersion:
      std::puts(kVersion);
      return 0;
    case Config::Action::kPrintCapabilities:
      std::fputs(CapabilitiesJson().c_str(), stdout);
      return 0;
    case Config::Action::kServe:
      break;
  }
  // Logging first: everything after this may log.
  SetLogLevel(c.log_level);
  if (c.daemonize && !c.syslog && c.log_file.empty()) c.syslog = true;  // stderr goes away.
  if (!c.log_file.empty()) {
    if (absl::Status s = g_log_file.Open(c.log_file); !s.ok()) return Fail(s.ToString());
    SetLogSink([](LogLevel l, std::string_view m) { g_log_file.Write(l, m); });
  } else if (c.syslog) {
    openlog("virtiofsd", LOG_PID | LOG_NDELAY, LOG_DAEMON);
    SetLogSink(SyslogSink);
  }
  for (const std::string& d : c.deprecations) VIRTIOFS_LOG(kWarning, "deprecated: {}", d);
  if (c.thread_pool_size) {
    VIRTIOFS_LOG(kDebug, "--thread-pool-size {} ignored: one worker per queue",
                 *c.thread_pool_size);
  }

  LockdownConfig lock;
  lock.sandbox = c.sandbox;
  lock.seccomp = c.seccomp;
  lock.modcaps = c.modcaps;
  lock.uid_map = c.uid_map;
  lock.gid_map = c.gid_map;
  lock.file_handles = c.passthrough.inode_file_handles != PassthroughOptions::FileHandles::kNever;
  lock.shared_dir = c.passthrough.root;
  lock.socket_path = c.socket_path;
  // Checked before anything is bound: a refusal leaves nothing behind.
  if (absl::Status s = CheckLockdownConfig(lock); !s.ok()) return Fail(s.message());
  {
    UniqueFd dir(open(c.passthrough.root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!dir.valid()) {
      return Fail(fmt::format("shared directory '{}': {}", c.passthrough.root, strerror(errno)));
    }
  }
  if (auto limit = SetupRlimitNofile(c.rlimit_nofile, lock.file_handles); !limit.ok()) {
    return Fail(limit.status().message());
  }

  // Where to listen: our own socket (with its pid file), or the launcher's.
  // Bound before the sandbox, which hides their paths; whoever outlives the
  // daemon's serving (the sandbox's supervisor, or the Sandbox object
  // without one) removes them.
  UniqueFd listen_fd, pid_file, stats_fd;
  std::vector<std::string> created;  // Removed on a failure before the sandbox.
  auto fail_early = [&](absl::string_view message) {
    for (const std::string& p : created) unlink(p.c_str());
    return Fail(message);
  };
  if (c.fd >= 0) {
    if (fcntl(c.fd, F_SETFD, FD_CLOEXEC) != 0) {
      return Fail(fmt::format("--fd {}: {}", c.fd, strerror(errno)));
    }
    listen_fd.reset(c.fd);
  } else {
    const std::string pid_path = c.socket_path + ".pid";
    auto pid = LockPidFile(pid_path);
    if (!pid.ok()) return Fail(pid.status().message());
    pid_file = std::move(*pid);
    created.push_back(pid_path);
    auto fd = ListenUnixSocket(c.socket_path, c.socket_group.empty() ? 0600 : 0660);
    if (!fd.ok()) return fail_early(fd.status().message());
    listen_fd = std::move(*fd);
    created.insert(created.begin(), c.socket_path);
    if (!c.socket_group.empty()) {
      const group* g = getgrnam(c.socket_group.c_str());
      if (g == nullptr || chown(c.socket_path.c_str(), -1, g->gr_gid) != 0) {
        const std::string why = g == nullptr ? "no such group" : strerror(errno);
        return fail_early(fmt::format("--socket-group {}: {}", c.socket_group, why));
      }
    }
  }
  if (!c.stats_socket.empty()) {
    auto fd = ListenUnixSocket(c.stats_socket, 0600);
    if (!fd.ok()) return fail_early(fmt::format("--stats-socket: {}", fd.status().message()));
    stats_fd = std::move(*fd);
    created.push_back(c.stats_socket);
  }
  for (size_t i = c.fd >= 0 ? 0 : 1; i < created.size(); ++i) {
    lock.also_remove.push_back(created[i]);  // The pid file, the stats socket.
  }

  // Signals are taken by a thread of their own (Stop() and logging are not
  // async-signal-safe). Blocked from here on, before any fork or thread: a
  // SIGTERM that comes while the daemon is still setting up (its launcher
  // may send one as soon as the socket listens) waits for that thread; in
  // the namespace sandbox the daemon is pid 1, which would drop it.
  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGUSR1}) sigaddset(&signals, s);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  if (c.fd < 0 && !c.daemonize) PrintQemuLine(c);
  if (c.daemonize) {
    Daemonize(pid_file.get());
  } else if (pid_file.valid()) {
    WritePid(pid_file.get());
  }

  // Modes from the guest are exact (its umask is applied by it or by the
  // backend); the queue workers also set a umask of 0 of their own.
  umask(0);
  // O_NOATIME needs ownership or CAP_FOWNER: as root the guest gets what a
  // local open would; unprivileged, it is dropped unless --preserve-noatime.
  if (geteuid() == 0) c.passthrough.preserve_noatime = true;

  // The sandbox forks (namespace, chroot): only the sandboxed child comes
  // back; the supervisor waits for it and removes the paths above.
  lock.listen_fd = listen_fd.get();
  auto sandbox = EnterSandbox(lock);
  // On failure, EnterSandbox (before its fork) or the supervisor (after it)
  // removed the paths; the child must not: its "/" may be the share already.
  if (!sandbox.ok()) return Fail("sandbox: " + std::string(sandbox.status().message()));
  c.passthrough.root = sandbox->root;
  c.passthrough.proc_self_fd = sandbox->proc_self_fd.get();
  if (!sandbox->can_setgroups) c.passthrough.drop_supplementary_groups = false;

  auto backend = PassthroughBackend::Create(c.passthrough);
  if (!backend.ok()) return Fail(backend.status().message());
  // The backend holds its own; the statistics keep one too (a sandbox has
  // no /proc by path: fds and memory are read through it).
  UniqueFd stats_proc;
  if (sandbox->proc_self_fd.valid()) {
    stats_proc.reset(fcntl(sandbox->proc_self_fd.get(), F_DUPFD_CLOEXEC, 0));
  }
  sandbox->proc_self_fd.reset();
  // Capabilities before seccomp (capset is not on the allow-list); both
  // before any thread.
  if (absl::Status s = DropCapabilities(lock); !s.ok())
    return Fail("capabilities: " + s.ToString());
  if (absl::Status s = InstallSeccomp(lock.seccomp, c.syslog); !s.ok()) {
    return Fail("seccomp: " + s.ToString());
  }
  VirtioFsDeviceOptions dopt;
  dopt.tag = c.tag;
  dopt.num_request_queues = c.num_request_queues;
  auto device = VirtioFsDevice::Create(backend->get(), dopt);
  if (!device.ok()) return Fail(device.status().message());

  signal(SIGPIPE, SIG_IGN);

  StatsSources sources;
  sources.device = device->get();
  sources.backend = backend->get();
  sources.proc_self_fd = stats_proc.get();
  std::unique_ptr<StatsServer> stats;
  if (stats_fd.valid()) {
    auto s = StatsServer::Start(std::move(stats_fd), sources);
    if (!s.ok()) return Fail(fmt::format("--stats-socket: {}", s.status().message()));
    stats = std::move(*s);
  }

  ServerOptions sopt;
  sopt.keep_serving = c.reconnect;
  auto server = VhostUserServer::FromListeningFd(std::move(listen_fd), device->get(), sopt);
  if (!server.ok()) return Fail(server.status().message());
  VIRTIOFS_LOG(kInfo, "serving {} on {} ({} request queues, {} engine)", c.passthrough.root,
               c.fd >= 0 ? fmt::format("fd {}", c.fd) : c.socket_path, c.num_request_queues,
               c.passthrough.io_engine == IoEngineKind::kUring ? "uring" : "sync");

  std::atomic<bool> signalled{false};
  std::thread signal_thread([&] {
    for (;;) {
      int sig = 0;
      if (sigwait(&signals, &sig) != 0) continue;
      if (sig == SIGHUP) {
        if (!c.log_file.empty()) {
          absl::Status s = g_log_file.Reopen();
          VIRTIOFS_LOG(kInfo, "SIGHUP: log reopened{}", s.ok() ? "" : ": " + s.ToString());
        }  // syslog(3) keeps (and re-establishes) its own connection.
        continue;
      }
      if (sig == SIGUSR1) {
        VIRTIOFS_LOG(kInfo, "stats: {}", StatsJson(sources, /*compact=*/true));
        continue;
      }
      if (signalled.exchange(true)) return;  // Woken by main below: Run is over.
      VIRTIOFS_LOG(kInfo, "signal {}: stopping", sig);
      (*server)->Stop();
      return;
    }
  });
  absl::Status result = (*server)->Run();
  // Run ended alone (the front-end left): wake the signal thread to end it.
  if (!signalled.exchange(true)) {
    if (result.ok()) {
      VIRTIOFS_LOG(kInfo, "front-end disconnected: exiting (--reconnect keeps serving)");
    }
    pthread_kill(signal_thread.native_handle(), SIGTERM);
  }
  signal_thread.join();
  stats.reset();
  // Which queues carried the guest's requests (0 is hiprio): shows whether a
  // multi-queue guest spread its load.
  std::string per_queue;
  for (uint32_t q = 0; q < (*device)->NumQueues(); ++q) {
    per_queue += fmt::format("{}{}:{}", q == 0 ? "" : " ", q, (*device)->completed(q));
  }
  VIRTIOFS_LOG(kInfo, "requests completed per queue: {}", per_queue);
  if (!result.ok()) return Fail(result.message());
  return 0;
}
