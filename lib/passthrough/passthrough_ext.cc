// PassthroughBackend: extended attributes, locks, and the remaining file
// operations (fallocate, lseek, copy_file_range, O_TMPFILE, syncfs, ioctl).
//
// Confinement as in passthrough.cc: nodes are reached through their O_PATH
// descriptors (reopened through /proc/self/fd), handles through their open
// descriptors; no guest-supplied path is ever resolved.
#include <linux/capability.h>
#include <linux/fs.h>
#include <pthread.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <list>
#include <mutex>
#include <string>
#include <thread>

#include "lib/passthrough/passthrough_fs.h"
#include "virtiofs/log.h"

namespace virtiofs::passthrough {

namespace {

// ---------------------------------------------------------------------------
// Credentials for xattr calls.

// Drops every effective capability of this thread while it lives.
// setfsuid() to a non-root id drops only the file-system capabilities
// (CAP_CHOWN, CAP_DAC_*, CAP_FOWNER, CAP_FSETID, ...); a root daemon would
// keep CAP_SYS_ADMIN (trusted.* xattrs) and CAP_SETFCAP (security.capability)
// for a non-root guest user. capget/capset as raw system calls act on the
// calling thread only.
class ScopedNoCaps {
 public:
  explicit ScopedNoCaps(bool enabled) {
    if (!enabled) return;
    if (syscall(SYS_capget, &header_, saved_) != 0) {
      error_ = Errno();
      return;
    }
    if ((saved_[0].effective | saved_[1].effective) == 0) return;  // Nothing to drop.
    __user_cap_data_struct none[2] = {saved_[0], saved_[1]};
    none[0].effective = none[1].effective = 0;
    if (syscall(SYS_capset, &header_, none) != 0) {
      error_ = Errno();
      return;
    }
    dropped_ = true;
  }
  ~ScopedNoCaps() {
    // The saved effective set is within the permitted one: this cannot fail.
    if (dropped_) (void)syscall(SYS_capset, &header_, saved_);
  }
  ScopedNoCaps(const ScopedNoCaps&) = delete;
  ScopedNoCaps& operator=(const ScopedNoCaps&) = delete;
  int error() const { return error_; }

 private:
  __user_cap_header_struct header_{_LINUX_CAPABILITY_VERSION_3, 0};  // pid 0: this thread.
  __user_cap_data_struct saved_[2]{};
  bool dropped_ = false;
  int error_ = 0;
};

// The caller's fs ids and, for a non-root caller, none of the daemon's
// capabilities: the host then checks an xattr call exactly as it would for
// that user (EPERM for trusted.*, EACCES without write permission, ...).
// Members are destroyed in reverse: capabilities come back before the ids.
class CallerCreds {
 public:
  CallerCreds(bool as_root, const HostIds& ids)
      : ids_(as_root, ids), caps_(ids_.ok() && ids.uid != 0) {}
  int error() const { return ids_.ok() ? caps_.error() : ids_.error(); }

 private:
  ScopedCredentials ids_;
  ScopedNoCaps caps_;
};

// ---------------------------------------------------------------------------
// Where an xattr call goes.

// The largest value (XATTR_SIZE_MAX) or name list (XATTR_LIST_MAX) the
// kernel returns: a buffer this big never gets ERANGE.
constexpr size_t kXattrMax = 65536;

// Whether this thread's working directory is its own (set by
// SetThreadHasOwnFsContext after unshare(CLONE_FS)).
thread_local bool t_own_fs_context = false;
// The proc fd this thread's working directory was moved to, or -1.
thread_local int t_cwd_proc_fd = -1;

// Whether "/proc/self/fd" by path is the directory proc_fd_ holds. In a
// sandbox (pivot_root into the shared directory) it may not be, and the
// path would then resolve inside the guest's files.
bool ProcPathIsOurs(int proc_fd) {
  struct stat ours, by_path;
  return fstat(proc_fd, &ours) == 0 && stat("/proc/self/fd", &by_path) == 0 &&
         ours.st_dev == by_path.st_dev && ours.st_ino == by_path.st_ino;
}

// f*xattr calls need a real (not O_PATH) descriptor, and only regular files
// and directories may be opened on the host (CVE-2020-35517: a device or a
// fifo must never be opened). Other nodes go through the path
// "/proc/self/fd/N" with the calls that follow links: the magic link ends on
// the node itself, a symlink included, never on a symlink's target (the l*
// calls would act on the magic link instead and fail). In a sandbox, where
// that absolute path is not our /proc (pivot_root or chroot into the share),
// a queue worker, whose working directory is its own, moves it to the proc
// fd and uses the relative path "N" instead, as virtiofsd does.
struct XattrTarget {
  PathFd node;  // The node's O_PATH fd while the call needs it.
  UniqueFd fd;
  std::string path;

  ssize_t Get(const char* name, char* buf, size_t size) const {
    return fd.valid() ? fgetxattr(fd.get(), name, buf, size)
                      : getxattr(path.c_str(), name, buf, size);
  }
  ssize_t List(char* buf, size_t size) const {
    return fd.valid() ? flistxattr(fd.get(), buf, size) : listxattr(path.c_str(), buf, size);
  }
  int Set(const char* name, std::span<const uint8_t> v, int flags) const {
    return fd.valid() ? fsetxattr(fd.get(), name, v.data(), v.size(), flags)
                      : setxattr(path.c_str(), name, v.data(), v.size(), flags);
  }
  int Remove(const char* name) const {
    return fd.valid() ? fremovexattr(fd.get(), name) : removexattr(path.c_str(), name);
  }
};

// Prepares `t` for `inode`. The open runs as the daemon, not as the caller:
// the xattr call itself checks the caller's permission, and a file the
// caller may write but not read must still take user.* xattrs, as on a
// local file system.
int OpenXattrTarget(int proc_fd, const Inode& inode, PathFd node, XattrTarget* t) {
  if (!node.ok()) return node.error();
  t->node = std::move(node);
  const std::string self = t->node.ProcName();
  if (inode.type == S_IFREG || inode.type == S_IFDIR) {
    // O_NONBLOCK: never wait for a lease to break.
    const int flags = O_RDONLY | O_NONBLOCK | O_CLOEXEC | (inode.type == S_IFDIR ? O_DIRECTORY : 0);
    t->fd.reset(openat(proc_fd, self.c_str(), flags));
    if (t->fd.valid()) return 0;
    // An unprivileged daemon may not be able to read the file: the path
    // needs no open.
    if (errno != EACCES && errno != EPERM) return Errno();
  }
  if (ProcPathIsOurs(proc_fd)) {
    t->path = "/proc/self/fd/" + self;
    return 0;
  }
  if (!t_own_fs_context) return ENOTSUP;  // Moving the process's cwd is not ours to do.
  if (t_cwd_proc_fd != proc_fd) {
    if (fchdir(proc_fd) != 0) return Errno();
    t_cwd_proc_fd = proc_fd;
  }
  t->path = self;
  return 0;
}

// A whole value or name list through `get(buf, size)`: the size, then the
// data; if it grew in between, once more with a buffer it cannot outgrow.
template <typename F>
int ReadWhole(F get, std::string* out) {
  const ssize_t probe = get(nullptr, 0);
  if (probe < 0) return Errno();
  out->assign(static_cast<size_t>(probe), '\0');
  // A probe of 0 is an empty value as of the probe: no second call.
  ssize_t n = probe == 0 ? 0 : get(out->data(), out->size());
  if (n < 0 && errno == ERANGE) {
    out->assign(kXattrMax, '\0');
    n = get(out->data(), out->size());
  }
  if (n < 0) return Errno();
  out->resize(static_cast<size_t>(n));
  return 0;
}

// FUSE_SETXATTR_ACL_KILL_SGID: the guest saw that setting this access ACL
// must drop S_ISGID (its posix_acl_update_mode: the caller is neither in the
// file's group nor privileged). Checked again from the host's side of the
// same rule (a root caller, or one whose group is the file's, keeps it), and
// done here because the host only does it itself when it checked as that
// caller without CAP_FSETID. As the daemon: the caller owned the file to set
// its ACL.
void KillSgidAfterAcl(int proc_fd, const HostIds& caller, const PathFd& node) {
  struct statx x;
  if (StatxFd(node.get(), &x, STATX_MODE | STATX_GID) != 0) return;
  if (!(x.stx_mode & S_ISGID) || caller.uid == 0 || caller.gid == x.stx_gid) return;
  const std::string self = node.ProcName();
  if (fchmodat(proc_fd, self.c_str(), x.stx_mode & 07777 & ~S_ISGID, 0) != 0) {
    VIRTIOFS_LOG(kWarning, "passthrough: clearing S_ISGID after an ACL change: errno {}", errno);
  }
}

// ---------------------------------------------------------------------------
// Locks.

// Wakes a waiter blocked in F_OFD_SETLKW or flock(): a signal whose handler
// does nothing and is installed without SA_RESTART, so the call returns
// EINTR. A real-time signal: nothing sends it by accident.
int WakeSignal() { return SIGRTMIN + 4; }
void IgnoreWake(int) {}

// Installs the handler once; false when the embedder uses the signal itself
// (then no request waits: SETLKW that would block gets ENOLCK).
bool WakeHandlerReady() {
  static const bool ready = [] {
    struct sigaction old {};
    if (sigaction(WakeSignal(), nullptr, &old) != 0) return false;
    if ((old.sa_flags & SA_SIGINFO) || old.sa_handler != SIG_DFL) {
      VIRTIOFS_LOG(kError, "passthrough: signal {} is in use: SETLKW cannot wait", WakeSignal());
      return false;
    }
    struct sigaction sa {};
    sa.sa_handler = IgnoreWake;
    sigemptyset(&sa.sa_mask);
    return sigaction(WakeSignal(), &sa, nullptr) == 0;
  }();
  return ready;
}

// One lock call: POSIX (as a host OFD lock, owned by the handle's open file
// description) or flock.
struct LockCall {
  bool is_flock = false;
  int op = 0;  // flock: LOCK_SH, LOCK_EX or LOCK_UN.
  struct flock fl {};

  // 0 or an errno; `block`: wait for the lock.
  int Run(int fd, bool block) const {
    int r;
    if (is_flock) {
      r = flock(fd, op | (block ? 0 : LOCK_NB));
    } else {
      struct flock copy = fl;
      r = fcntl(fd, block ? F_OFD_SETLKW : F_OFD_SETLK, &copy);
    }
    return r == 0 ? 0 : Errno();
  }
};

// FUSE ranges are [start, end], end OFFSET_MAX meaning "to the end of the
// file"; struct flock has a length, 0 meaning the same.
constexpr uint64_t kOffsetMax = INT64_MAX;

bool ToFlock(const FileLock& l, struct flock* fl) {
  if (l.start > kOffsetMax || l.end > kOffsetMax || l.end < l.start) return false;
  *fl = {};
  fl->l_type = static_cast<short>(l.type);
  fl->l_whence = SEEK_SET;
  fl->l_start = static_cast<off_t>(l.start);
  // end < kOffsetMax here, so end - start + 1 <= kOffsetMax.
  fl->l_len = l.end == kOffsetMax ? 0 : static_cast<off_t>(l.end - l.start + 1);
  fl->l_pid = 0;  // Required by OFD locks.
  return true;
}

// The pid is always 0: a host pid names no guest process, and the guest
// kernel would look it up in its own pid namespace (an OFD lock has -1).
FileLock FromFlock(const struct flock& fl) {
  FileLock l;
  l.type = static_cast<uint32_t>(fl.l_type);
  l.start = static_cast<uint64_t>(fl.l_start);
  // The kernel reports l_start >= 0 and l_len >= 0 within OFFSET_MAX.
  l.end = fl.l_len == 0 ? kOffsetMax : static_cast<uint64_t>(fl.l_start + fl.l_len - 1);
  l.pid = 0;
  return l;
}

int MakeLockCall(const FileLock& lock, bool is_flock, LockCall* call) {
  call->is_flock = is_flock;
  if (is_flock) {
    call->op = lock.type == F_RDLCK ? LOCK_SH : lock.type == F_WRLCK ? LOCK_EX : LOCK_UN;
    return 0;
  }
  return ToFlock(lock, &call->fl) ? 0 : EINVAL;
}

bool WouldBlock(int err) { return err == EAGAIN || err == EACCES || err == EWOULDBLOCK; }

// ---------------------------------------------------------------------------
// Ioctls.

// An ioctl that reads a T from the host: EINVAL when the guest has no room
// for it.
template <typename T>
int IoctlRead(int fd, unsigned long cmd, uint32_t out_size, IoctlResult* r) {
  if (out_size < sizeof(T)) return EINVAL;
  T value{};
  const int res = ioctl(fd, cmd, &value);
  if (res < 0) return Errno();
  r->result = res;
  r->out.resize(sizeof value);
  std::memcpy(r->out.data(), &value, sizeof value);
  return 0;
}

}  // namespace

// ---------------------------------------------------------------------------
// SETLKW waiters.

// A SETLKW whose lock is taken waits on a thread of its own, so that the
// queue goes on serving other requests; the thread answers when the host
// grants the lock. The waiter holds the Handle (its descriptor stays open).
// At destruction every waiter is woken with WakeSignal(), answers EINTR and
// is joined: no thread outlives the backend.
class PassthroughFs::LockWaiters {
 public:
  // Threads are the resource: beyond this many waiting requests, ENOLCK
  // (fcntl(2)'s "lock table full").
  static constexpr size_t kMaxWaiters = 64;

  ~LockWaiters();
  // Runs `wait` (a blocking lock call: 0 or an errno) and answers `reply`
  // with its outcome; retried after EINTR unless stopping or interrupted.
  void Start(std::function<int()> wait, Reply<void> reply);
  // Answers every waiter running now with EINTR (a queue is stopping);
  // returns when they have answered.
  void InterruptAll();

 private:
  struct Waiter {
    std::thread thread;
    std::function<int()> wait;
    Reply<void> reply{nullptr};
    bool done = false;        // Guarded by mu_.
    uint64_t generation = 0;  // interrupts_ when it started.
  };
  void Run(Waiter* w);
  void ReapLocked();

  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  uint64_t interrupts_ = 0;  // InterruptAll() calls so far.
  size_t running_ = 0;
  std::list<Waiter> waiters_;  // A list: a running thread holds its element.
};

std::shared_ptr<PassthroughFs::LockWaiters> PassthroughFs::MakeLockWaiters() {
  return std::make_shared<LockWaiters>();
}

void PassthroughFs::LockWaiters::Start(std::function<int()> wait, Reply<void> reply) {
  if (!WakeHandlerReady()) return reply.Error(ENOLCK);
  std::unique_lock lock(mu_);
  ReapLocked();
  if (stopping_ || running_ >= kMaxWaiters) {
    lock.unlock();
    return reply.Error(ENOLCK);
  }
  Waiter& w = waiters_.emplace_back();
  w.generation = interrupts_;
  w.wait = std::move(wait);
  w.reply = std::move(reply);
  // The new thread starts with every signal blocked (it inherits this
  // thread's mask meanwhile), so that it never takes a signal meant for the
  // embedder; it unblocks only WakeSignal().
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  try {
    w.thread = std::thread(&LockWaiters::Run, this, &w);
    ++running_;
  } catch (const std::system_error&) {
    Reply<void> r = std::move(w.reply);
    waiters_.pop_back();
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    lock.unlock();
    return r.Error(ENOLCK);
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

void PassthroughFs::LockWaiters::Run(Waiter* w) {
  sigset_t wake;
  sigemptyset(&wake);
  sigaddset(&wake, WakeSignal());
  pthread_sigmask(SIG_UNBLOCK, &wake, nullptr);
  int err = EINTR;
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (stopping_ || w->generation < interrupts_) break;
    }
    // A wake signal that comes just before this call is missed: the
    // destructor sends it again until the thread is done.
    err = w->wait();
    if (err != EINTR) break;
  }
  Reply<void> reply = std::move(w->reply);
  w->wait = nullptr;  // Lets the Handle go.
  if (err == 0) {
    reply.Ok();
  } else {
    reply.Error(err);
  }
  std::lock_guard lock(mu_);
  w->done = true;
  --running_;
  cv_.notify_all();
}

// Joins finished threads (they take mu_ no more once done).
void PassthroughFs::LockWaiters::ReapLocked() {
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    if (!it->done) {
      ++it;
      continue;
    }
    it->thread.join();
    it = waiters_.erase(it);
  }
}

void PassthroughFs::LockWaiters::InterruptAll() {
  std::unique_lock lock(mu_);
  const uint64_t generation = ++interrupts_;
  auto waiting = [&] {
    for (const Waiter& w : waiters_) {
      if (!w.done && w.generation < generation) return true;
    }
    return false;
  };
  // The signal makes the blocking call return EINTR; one sent just before
  // the call starts is missed, so send again until each has answered.
  while (waiting()) {
    for (Waiter& w : waiters_) {
      if (!w.done && w.generation < generation)
        pthread_kill(w.thread.native_handle(), WakeSignal());
    }
    cv_.wait_for(lock, std::chrono::milliseconds(5));
  }
}

void PassthroughFs::InterruptWaits() { lock_waiters_->InterruptAll(); }

PassthroughFs::LockWaiters::~LockWaiters() {
  std::unique_lock lock(mu_);
  stopping_ = true;
  while (running_ > 0) {
    for (Waiter& w : waiters_) {
      if (!w.done) pthread_kill(w.thread.native_handle(), WakeSignal());
    }
    cv_.wait_for(lock, std::chrono::milliseconds(5));
  }
  lock.unlock();
  for (Waiter& w : waiters_) w.thread.join();
}

// ---------------------------------------------------------------------------
// Extended attributes.

int PassthroughFs::SetNodeXattr(const Inode& node, const std::string& name,
                                    const std::string& value) {
  XattrTarget t;
  if (int e = OpenXattrTarget(proc_fd_.get(), node, Path(node), &t); e != 0) return e;
  std::span<const uint8_t> v(reinterpret_cast<const uint8_t*>(value.data()), value.size());
  return t.Set(name.c_str(), v, 0) == 0 ? 0 : Errno();
}

void PassthroughFs::SetXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                             std::span<const uint8_t> value, uint32_t flags,
                             uint32_t setxattr_flags, Reply<void> reply) {
  if (!options_.xattr) return reply.Error(ENOSYS);  // The guest stops asking.
  if (options_.readonly) return reply.Error(EROFS);
  auto inode = inodes_.Get(node);
  if (!inode) return reply.Error(EBADF);
  std::string n(name);
  if (xattr_map_) {
    if (int e = xattr_map_->ToHost(name, &n); e != 0) return reply.Error(e);
  }
  XattrTarget t;
  if (int e = OpenXattrTarget(proc_fd_.get(), *inode, Path(*inode), &t); e != 0)
    return reply.Error(e);
  {
    CallerCreds creds(as_root_, Ids(ctx));
    if (int e = creds.error(); e != 0) return reply.Error(e);
    if (t.Set(n.c_str(), value, static_cast<int>(flags)) != 0) return reply.Error(Errno());
  }
  if ((setxattr_flags & FUSE_SETXATTR_ACL_KILL_SGID) && name == "system.posix_acl_access") {
    KillSgidAfterAcl(proc_fd_.get(), Ids(ctx), t.node);
  }
  reply.Ok();
}

void PassthroughFs::GetXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                             Reply<std::string> reply) {
  if (!options_.xattr) return reply.Error(ENOSYS);
  auto inode = inodes_.Get(node);
  if (!inode) return reply.Error(EBADF);
  std::string n(name);
  if (xattr_map_) {
    if (int e = xattr_map_->ToHost(name, &n); e != 0) return reply.Error(e);
  }
  XattrTarget t;
  if (int e = OpenXattrTarget(proc_fd_.get(), *inode, Path(*inode), &t); e != 0)
    return reply.Error(e);
  std::string value;
  CallerCreds creds(as_root_, Ids(ctx));
  if (int e = creds.error(); e != 0) return reply.Error(e);
  auto get = [&](char* buf, size_t size) { return t.Get(n.c_str(), buf, size); };
  if (int e = ReadWhole(get, &value); e != 0) return reply.Error(e);
  reply.Ok(value);  // The library answers size probes and ERANGE.
}

void PassthroughFs::ListXattr(const RequestContext& ctx, uint64_t node, Reply<std::string> reply) {
  if (!options_.xattr) return reply.Error(ENOSYS);
  auto inode = inodes_.Get(node);
  if (!inode) return reply.Error(EBADF);
  XattrTarget t;
  if (int e = OpenXattrTarget(proc_fd_.get(), *inode, Path(*inode), &t); e != 0)
    return reply.Error(e);
  std::string names;
  CallerCreds creds(as_root_, Ids(ctx));
  if (int e = creds.error(); e != 0) return reply.Error(e);
  auto list = [&](char* buf, size_t size) { return t.List(buf, size); };
  if (int e = ReadWhole(list, &names); e != 0) return reply.Error(e);
  if (xattr_map_) names = xattr_map_->ListToGuest(names);
  reply.Ok(names);
}

void PassthroughFs::RemoveXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                                Reply<void> reply) {
  if (!options_.xattr) return reply.Error(ENOSYS);
  if (options_.readonly) return reply.Error(EROFS);
  auto inode = inodes_.Get(node);
  if (!inode) return reply.Error(EBADF);
  std::string n(name);
  if (xattr_map_) {
    if (int e = xattr_map_->ToHost(name, &n); e != 0) return reply.Error(e);
  }
  XattrTarget t;
  if (int e = OpenXattrTarget(proc_fd_.get(), *inode, Path(*inode), &t); e != 0)
    return reply.Error(e);
  CallerCreds creds(as_root_, Ids(ctx));
  if (int e = creds.error(); e != 0) return reply.Error(e);
  if (t.Remove(n.c_str()) != 0) return reply.Error(Errno());
  reply.Ok();
}

// ---------------------------------------------------------------------------
// Locks. POSIX locks are host OFD locks, so the host and other guests see
// them. The guest's locks belong to a process (its lock_owner), not to an
// open file: two processes sharing one open file (fork) conflict, and any
// close(2) of the file by a process drops that process's locks on it (the
// guest sends FLUSH with its lock_owner). So each (node, lock_owner) that
// takes a lock gets an open file description of its own, reopened from the
// request's handle (read-write where the daemon may, else with the handle's
// access mode), as QEMU's C virtiofsd did; FLUSH closes it, and so does the
// last FORGET of the node. A lock the owner's description cannot take (a
// write lock where only read access could be had) fails with EBADF, as
// fcntl(2) would on a read-only descriptor. flock(2) locks do belong to the
// open file: they are taken on the handle's own descriptor and go at its
// RELEASE.

std::shared_ptr<UniqueFd> PassthroughFs::OwnerLockFd(uint64_t node, const Handle& h,
                                                     uint64_t owner, bool create, int* err) {
  const std::pair key{node, owner};
  {
    std::lock_guard lock(owner_locks_mu_);
    auto it = owner_locks_.find(key);
    if (it != owner_locks_.end()) return it->second;
    if (!create) return nullptr;
    if (owner_locks_.size() >= kMaxLockOwners) {
      *err = ENOLCK;
      return nullptr;
    }
  }
  // Opened outside the lock (the host file system may be slow), as the
  // daemon; O_NONBLOCK: never wait for a lease to break.
  const std::string self = std::to_string(h.fd.get());
  constexpr int kFlags = O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
  UniqueFd fd(openat(proc_fd_.get(), self.c_str(), O_RDWR | kFlags));
  if (!fd.valid()) {
    const int mode = fcntl(h.fd.get(), F_GETFL);
    if (mode < 0) {
      *err = Errno();
      return nullptr;
    }
    fd.reset(openat(proc_fd_.get(), self.c_str(), (mode & O_ACCMODE) | kFlags));
  }
  if (!fd.valid()) {
    *err = Errno();
    return nullptr;
  }
  auto shared = std::make_shared<UniqueFd>(std::move(fd));
  std::lock_guard lock(owner_locks_mu_);
  // A request of the same owner on another queue may have made one
  // meanwhile: that one is kept (ours holds no lock yet and just closes).
  auto it = owner_locks_.emplace(key, shared).first;
  has_owner_locks_.store(true, std::memory_order_relaxed);
  return it->second;
}

void PassthroughFs::DropOwnerLocks(uint64_t node, uint64_t owner) {
  if (!has_owner_locks_.load(std::memory_order_relaxed)) return;
  std::shared_ptr<UniqueFd> gone;  // Closed outside the lock (a waiter may still hold it).
  std::lock_guard lock(owner_locks_mu_);
  auto it = owner_locks_.find({node, owner});
  if (it == owner_locks_.end()) return;
  gone = std::move(it->second);
  owner_locks_.erase(it);
  has_owner_locks_.store(!owner_locks_.empty(), std::memory_order_relaxed);
}

void PassthroughFs::DropNodeLocks(uint64_t node) {
  std::vector<std::shared_ptr<UniqueFd>> gone;
  std::lock_guard lock(owner_locks_mu_);
  for (auto it = owner_locks_.lower_bound({node, 0});
       it != owner_locks_.end() && it->first.first == node;) {
    gone.push_back(std::move(it->second));
    it = owner_locks_.erase(it);
  }
  has_owner_locks_.store(!owner_locks_.empty(), std::memory_order_relaxed);
}

void PassthroughFs::GetLk(const RequestContext&, uint64_t node, uint64_t handle, uint64_t owner,
                          const FileLock& lock, bool flock, Reply<FileLock> reply) {
  if (!options_.posix_locks) return reply.Error(ENOSYS);
  if (flock) return reply.Error(EINVAL);  // flock(2) has no query.
  auto h = handles_.Get(handle);
  if (!h) return reply.Error(EBADF);
  struct flock fl;
  if (!ToFlock(lock, &fl)) return reply.Error(EINVAL);
  // Against the owner's description (its own locks never conflict); an
  // owner without one holds no lock, and the handle's holds none either.
  int err = 0;
  const auto owned = OwnerLockFd(node, *h, owner, /*create=*/false, &err);
  const int fd = owned ? owned->get() : h->fd.get();
  if (fcntl(fd, F_OFD_GETLK, &fl) != 0) return reply.Error(Errno());
  if (fl.l_type == F_UNLCK) return reply.Ok(FileLock{lock.start, lock.end, F_UNLCK, 0});
  reply.Ok(FromFlock(fl));
}

void PassthroughFs::SetLk(const RequestContext&, uint64_t node, uint64_t handle, uint64_t owner,
                          const FileLock& lock, bool flock, bool wait, Reply<void> reply) {
  if (!(flock ? options_.flock : options_.posix_locks)) return reply.Error(ENOSYS);
  auto h = handles_.Get(handle);
  if (!h) return reply.Error(EBADF);
  LockCall call;
  if (int e = MakeLockCall(lock, flock, &call); e != 0) return reply.Error(e);
  // The descriptor the lock goes on: the handle's for flock, the owner's
  // for POSIX locks (none yet and an unlock: nothing to do).
  std::shared_ptr<UniqueFd> owned;
  if (!flock) {
    int e = 0;
    owned = OwnerLockFd(node, *h, owner, /*create=*/lock.type != F_UNLCK, &e);
    if (!owned) return e != 0 ? reply.Error(e) : reply.Ok();
  }
  const int fd = owned ? owned->get() : h->fd.get();
  // Try without waiting first: most locks are free, and need no thread.
  const int err = call.Run(fd, /*block=*/false);
  if (err == 0) return reply.Ok();
  if (!wait || !WouldBlock(err)) return reply.Error(err);
  // The waiter keeps the descriptor open (a FLUSH meanwhile drops the
  // owner's entry; the lock, if it comes, then goes with the waiter).
  lock_waiters_->Start(
      [h, owned, call] { return call.Run(owned ? owned->get() : h->fd.get(), /*block=*/true); },
      std::move(reply));
}

// ---------------------------------------------------------------------------
// File operations on a handle.

void PassthroughFs::Fallocate(const RequestContext&, uint64_t, uint64_t handle, uint64_t offset,
                              uint64_t length, uint32_t mode, Reply<void> reply) {
  if (options_.readonly) return reply.Error(EROFS);
  auto h = handles_.Get(handle);
  if (!h) return reply.Error(EBADF);
  // Offsets past INT64_MAX become negative: the host refuses them (EINVAL),
  // as it checks every mode and range.
  if (fallocate(h->fd.get(), static_cast<int>(mode), static_cast<off_t>(offset),
                static_cast<off_t>(length)) != 0) {
    return reply.Error(Errno());
  }
  reply.Ok();
}

void PassthroughFs::Lseek(const RequestContext&, uint64_t, uint64_t handle, uint64_t offset,
                          uint32_t whence, Reply<uint64_t> reply) {
  auto h = handles_.Get(handle);
  if (!h) return reply.Error(EBADF);
  // The descriptor's position is shared with READDIR on directory handles.
  std::lock_guard lock(h->mu);
  // The wire's u64 is the guest's loff_t: SEEK_CUR/SEEK_END may go back.
  const off_t r = lseek(h->fd.get(), static_cast<off_t>(offset), static_cast<int>(whence));
  if (r < 0) return reply.Error(Errno());  // ENXIO for SEEK_DATA/SEEK_HOLE past the end.
  reply.Ok(static_cast<uint64_t>(r));
}

void PassthroughFs::CopyFileRange(const RequestContext&, uint64_t, uint64_t handle_in,
                                  uint64_t offset_in, uint64_t, uint64_t handle_out,
                                  uint64_t offset_out, uint64_t length, uint64_t flags,
                                  Reply<uint64_t> reply) {
  if (options_.readonly) return reply.Error(EROFS);
  if (flags != 0) return reply.Error(EINVAL);  // copy_file_range(2) defines none.
  auto in = handles_.Get(handle_in), out = handles_.Get(handle_out);
  if (!in || !out) return reply.Error(EBADF);
  // Offsets past INT64_MAX become negative: the host refuses them (EINVAL).
  loff_t off_in = static_cast<loff_t>(offset_in), off_out = static_cast<loff_t>(offset_out);
  const ssize_t n = copy_file_range(in->fd.get(), &off_in, out->fd.get(), &off_out, length, 0);
  if (n < 0) return reply.Error(Errno());
  reply.Ok(static_cast<uint64_t>(n));
}

void PassthroughFs::Ioctl(const RequestContext&, uint64_t, uint64_t handle, uint32_t, uint32_t cmd,
                          uint64_t, std::span<const uint8_t>, uint32_t out_size,
                          Reply<IoctlResult> reply) {
  auto h = handles_.Get(handle);
  if (!h) return reply.Error(EBADF);
  // Only ioctls that read the file's attributes: anything else could change
  // the host file system in ways the other operations' checks never see.
  IoctlResult r;
  int err;
  switch (cmd) {
    case FS_IOC_GETFLAGS:  // The kernel reads and writes an int, whatever _IOR says.
      err = IoctlRead<int>(h->fd.get(), FS_IOC_GETFLAGS, out_size, &r);
      break;
    case FS_IOC_FSGETXATTR:
      err = IoctlRead<struct fsxattr>(h->fd.get(), FS_IOC_FSGETXATTR, out_size, &r);
      break;
    default:
      err = ENOTTY;
  }
  if (err != 0) return reply.Error(err);
  reply.Ok(r);
}

// ---------------------------------------------------------------------------
// Nodes.

void PassthroughFs::TmpFile(const RequestContext& ctx, uint64_t parent, uint32_t mode,
                            uint32_t flags, uint32_t umask, Reply<CreateResult> reply) {
  if (options_.readonly) return reply.Error(EROFS);
  auto dir = inodes_.Get(parent);
  if (!dir) return reply.Error(EBADF);
  if (dir->type != S_IFDIR) return reply.Error(ENOTDIR);
  PathFd dir_fd = Path(*dir);
  if (!dir_fd.ok()) return reply.Error(dir_fd.error());
  ScopedCredentials creds(as_root_, Ids(ctx, true));
  if (!creds.ok()) return reply.Error(creds.error());
  // O_TMPFILE includes O_DIRECTORY; O_EXCL (never linkable) is kept.
  const int open_flags = (HostOpenFlags(flags) & ~O_TMPFILE) | O_TMPFILE | (flags & O_EXCL);
  UniqueFd fd(openat(dir_fd.get(), ".", open_flags, Masked(mode, umask)));
  if (!fd.valid()) return reply.Error(Errno());  // EOPNOTSUPP where the fs has none.
  // FUSE_SECURITY_CTX: the label goes on through the open file; if the host
  // refuses it the file, which has no name, goes with the fd.
  if (ctx.security_context && options_.security_label) {
    const auto& [guest_name, value] = *ctx.security_context;
    std::string xattr = guest_name;
    if (xattr_map_) {
      if (int e = xattr_map_->ToHost(guest_name, &xattr); e != 0) return reply.Error(e);
    }
    if (fsetxattr(fd.get(), xattr.c_str(), value.data(), value.size(), 0) != 0) {
      return reply.Error(Errno());
    }
  }
  // The node's own O_PATH descriptor, through the new file's /proc link.
  UniqueFd path(openat(proc_fd_.get(), std::to_string(fd.get()).c_str(), O_PATH | O_CLOEXEC));
  if (!path.valid()) return reply.Error(Errno());
  struct statx x;
  if (int e = StatxFd(path.get(), &x); e != 0) return reply.Error(e);
  const InodeKey key{x.stx_ino, makedev(x.stx_dev_major, x.stx_dev_minor), x.stx_mnt_id};
  // Held by its fd even with file handles: a file without a name may not
  // be openable by handle on every file system (and is rare).
  InodeHold hold;
  hold.fd = std::move(path);
  auto inode = inodes_.Intern(key, S_IFREG, std::move(hold));
  CreateResult r;
  r.entry.node_id = inode->id;
  r.entry.attr.st = ToStat(x);
  ToGuest(&r.entry.attr.st);
  r.entry.attr.timeout = AttrTimeout();
  r.entry.entry_timeout = AttrTimeout();
  auto h = std::make_shared<Handle>();
  h->inode = std::move(inode);
  h->fd = std::move(fd);
  h->inline_io = OnFuse(h->fd.get());
  r.open = OpenResult{handles_.Add(std::move(h)), FileOpenFlags()};
  reply.Ok(r);
}

void PassthroughFs::SyncFs(const RequestContext&, uint64_t node, Reply<void> reply) {
  auto inode = inodes_.Get(node);
  if (!inode) return reply.Error(EBADF);
  // The guest names the root of one of its mounts: a directory. Others are
  // not opened (special files never are).
  if (inode->type != S_IFDIR && inode->type != S_IFREG) return reply.Error(EINVAL);
  // syncfs(2) refuses O_PATH descriptors: a real one, opened as the daemon.
  const int flags = O_RDONLY | O_NONBLOCK | O_CLOEXEC | (inode->type == S_IFDIR ? O_DIRECTORY : 0);
  PathFd path = Path(*inode);
  if (!path.ok()) return reply.Error(path.error());
  UniqueFd fd(openat(proc_fd_.get(), path.ProcName().c_str(), flags));
  if (!fd.valid()) return reply.Error(Errno());
  if (syncfs(fd.get()) != 0) return reply.Error(Errno());
  reply.Ok();
}

void SetThreadHasOwnFsContext() {
  t_own_fs_context = true;
  t_cwd_proc_fd = -1;
}

}  // namespace virtiofs::passthrough
