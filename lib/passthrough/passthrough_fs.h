// The passthrough backend's implementation class, shared by its source
// files (passthrough.cc: nodes, files and directories; passthrough_ext.cc:
// xattrs, locks and the rest).
#ifndef VIRTIOFS_LIB_PASSTHROUGH_PASSTHROUGH_FS_H_
#define VIRTIOFS_LIB_PASSTHROUGH_PASSTHROUGH_FS_H_

#include <fcntl.h>
#include <linux/magic.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "lib/fuse/fuse_compat.h"
#include "lib/io/engines.h"
#include "lib/passthrough/credentials.h"
#include "lib/passthrough/inode_table.h"
#include "lib/passthrough/xattr_map.h"
#include "virtiofs/log.h"
#include "virtiofs/passthrough.h"

namespace virtiofs::passthrough {

using Cache = PassthroughOptions::Cache;
using FileHandles = PassthroughOptions::FileHandles;

inline int Errno() { return errno > 0 ? errno : EIO; }

// Marks the calling thread as having a file-system context (cwd, umask) of
// its own (after unshare(CLONE_FS)): xattr calls on nodes that cannot be
// opened may then change its working directory (passthrough_ext.cc).
void SetThreadHasOwnFsContext();

inline bool IsSpecial(uint32_t type) {
  return type != S_IFREG && type != S_IFDIR && type != S_IFLNK;
}

// statx of what `fd` (O_PATH) refers to, symlinks not followed.
inline int StatxFd(int fd, struct statx* out, uint32_t mask = STATX_BASIC_STATS | STATX_MNT_ID,
                   int sync_flags = AT_STATX_SYNC_AS_STAT) {
  if (statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | sync_flags, mask, out) != 0) {
    return Errno();
  }
  return 0;
}

inline struct stat ToStat(const struct statx& x) {
  struct stat st {};
  st.st_dev = makedev(x.stx_dev_major, x.stx_dev_minor);
  st.st_ino = x.stx_ino;
  st.st_mode = x.stx_mode;
  st.st_nlink = x.stx_nlink;
  st.st_uid = x.stx_uid;
  st.st_gid = x.stx_gid;
  st.st_rdev = makedev(x.stx_rdev_major, x.stx_rdev_minor);
  st.st_size = static_cast<off_t>(x.stx_size);
  st.st_blksize = x.stx_blksize;
  st.st_blocks = static_cast<blkcnt_t>(x.stx_blocks);
  st.st_atim = {x.stx_atime.tv_sec, x.stx_atime.tv_nsec};
  st.st_mtim = {x.stx_mtime.tv_sec, x.stx_mtime.tv_nsec};
  st.st_ctim = {x.stx_ctime.tv_sec, x.stx_ctime.tv_nsec};
  return st;
}

// The O_PATH fd one request uses for an inode: the inode's own (borrowed),
// or, for an inode held by a file handle, one opened for the request and
// closed with this object.
class PathFd {
 public:
  PathFd() = default;
  // `keep`, if given, keeps the inode (and its fd) alive as long as this.
  static PathFd Borrow(int fd, std::shared_ptr<const Inode> keep = nullptr) {
    PathFd p;
    p.fd_ = fd;
    p.keep_ = std::move(keep);
    return p;
  }
  static PathFd Own(UniqueFd fd) {
    PathFd p;
    p.fd_ = fd.get();
    p.owned_ = std::move(fd);
    return p;
  }
  static PathFd Failed(int err) {
    PathFd p;
    p.err_ = err;
    return p;
  }
  int get() const { return fd_; }
  bool ok() const { return err_ == 0; }
  int error() const { return err_; }
  // "/proc/self/fd" relative name of the fd (reopens the very inode).
  std::string ProcName() const { return std::to_string(fd_); }

 private:
  int fd_ = -1;
  UniqueFd owned_;
  std::shared_ptr<const Inode> keep_;
  int err_ = 0;
};

class PassthroughFs final : public PassthroughBackend {
 public:
  PassthroughFs(PassthroughOptions options, UniqueFd proc_fd)
      : options_(std::move(options)), proc_fd_(std::move(proc_fd)), as_root_(geteuid() == 0) {}

  void set_xattr_map(std::optional<passthrough_internal::XattrMap> m) { xattr_map_ = std::move(m); }
  // Sets an xattr on `node` itself, with the credentials in effect (0 or errno).
  int SetNodeXattr(const Inode& node, const std::string& name, const std::string& value);

  absl::Status Init(UniqueFd root_fd) {
    struct statx x;
    if (int e = StatxFd(root_fd.get(), &x); e != 0) {
      return absl::ErrnoToStatus(e, "stat shared directory");
    }
    if (!S_ISDIR(x.stx_mode)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("shared directory '%s' is not a directory", options_.root));
    }
    auto root = std::make_shared<Inode>();
    root->key = InodeKey{x.stx_ino, makedev(x.stx_dev_major, x.stx_dev_minor), x.stx_mnt_id};
    root->type = S_IFDIR;
    root->fd = std::move(root_fd);
    root_ = root;
    if (options_.inode_file_handles != FileHandles::kNever) {
      if (absl::Status s = ProbeFileHandles(); !s.ok()) return s;
    }
    inodes_.SetRoot(std::move(root));
    return absl::OkStatus();
  }

  // Whether inodes of this backend are held by file handles (for tests and
  // stats; false with `never` or where `prefer` found them unusable).
  bool file_handles_in_use() const { return use_handles_; }

  // ---- Backend ----
  uint64_t InitFlags() const override {
    uint64_t f = FUSE_EXPORT_SUPPORT | FUSE_DONT_MASK | FUSE_ATOMIC_O_TRUNC | FUSE_CACHE_SYMLINKS |
                 FUSE_PARALLEL_DIROPS | FUSE_ASYNC_DIO | FUSE_AUTO_INVAL_DATA;
    if (options_.readdirplus) f |= FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO;
    if (options_.writeback) f |= FUSE_WRITEBACK_CACHE;
    if (options_.posix_locks) f |= FUSE_POSIX_LOCKS;
    if (options_.flock) f |= FUSE_FLOCK_LOCKS;
    if (options_.killpriv_v2) f |= FUSE_HANDLE_KILLPRIV_V2;
    if (options_.announce_submounts) f |= FUSE_SUBMOUNTS;
    if (options_.posix_acl && options_.xattr) f |= FUSE_POSIX_ACL;
    if (options_.security_label) f |= FUSE_SECURITY_CTX;
    if (options_.allow_mmap) f |= FUSE_DIRECT_IO_ALLOW_MMAP;
    // The group arrives per request and is used for creating (credentials).
    f |= FUSE_CREATE_SUPP_GROUP;
    return f;
  }
  void Init(uint32_t, uint64_t flags) override { flags_.store(flags, std::memory_order_relaxed); }
  void Destroy() override {
    handles_.Clear();
    inodes_.Clear();
  }

  void Lookup(const RequestContext& ctx, uint64_t parent, std::string_view name,
              Reply<Entry> reply) override {
    auto p = inodes_.Get(parent);
    if (!p) return reply.Error(EBADF);
    if (p->type != S_IFDIR) return reply.Error(ENOTDIR);
    // The parent's fd before switching ids: open_by_handle_at needs
    // CAP_DAC_READ_SEARCH, which a non-root fsuid drops.
    PathFd dir = Path(*p);
    if (!dir.ok()) return reply.Error(dir.error());
    ScopedCredentials creds(as_root_, Ids(ctx));
    if (!creds.ok()) return reply.Error(creds.error());
    Entry e;
    if (int err = DoLookup(*p, dir.get(), name, &e); err != 0) return reply.Error(err);
    reply.Ok(e);
  }

  void Forget(uint64_t node, uint64_t nlookup) override {
    inodes_.Forget(node, nlookup);
    // A node the guest forgot has no open file left there: no lock either.
    if (has_owner_locks_.load(std::memory_order_relaxed) && !inodes_.Get(node)) {
      DropNodeLocks(node);
    }
  }

  void GetAttr(const RequestContext&, uint64_t node, std::optional<uint64_t> handle,
               Reply<Attributes> reply) override {
    auto inode = inodes_.Get(node);
    if (!inode) return reply.Error(EBADF);
    Attributes a;
    if (int e = Attr(*inode, &a); e != 0) return reply.Error(e);
    (void)handle;  // The inode's fd names the same file.
    reply.Ok(a);
  }

  void Statx(const RequestContext&, uint64_t node, std::optional<uint64_t>, uint32_t sx_flags,
             uint32_t sx_mask, Reply<StatxResult> reply) override {
    auto inode = inodes_.Get(node);
    if (!inode) return reply.Error(EBADF);
    PathFd fd = Path(*inode);
    if (!fd.ok()) return reply.Error(fd.error());
    StatxResult r;
    const int sync = static_cast<int>(sx_flags & AT_STATX_SYNC_TYPE);
    if (int e = StatxFd(fd.get(), &r.stx, sx_mask | STATX_BASIC_STATS, sync); e != 0) {
      return reply.Error(e);
    }
    r.stx.stx_uid = options_.translate_uid.ToGuest(r.stx.stx_uid);
    r.stx.stx_gid = options_.translate_gid.ToGuest(r.stx.stx_gid);
    r.timeout = AttrTimeout();
    reply.Ok(r);
  }

  void SetAttr(const RequestContext& ctx, uint64_t node, const SetAttrRequest& in,
               Reply<Attributes> reply) override;

  void ReadLink(const RequestContext&, uint64_t node, Reply<std::string> reply) override {
    auto inode = inodes_.Get(node);
    if (!inode) return reply.Error(EBADF);
    if (inode->type != S_IFLNK) return reply.Error(EINVAL);
    PathFd fd = Path(*inode);
    if (!fd.ok()) return reply.Error(fd.error());
    char buf[PATH_MAX];
    ssize_t n = readlinkat(fd.get(), "", buf, sizeof buf);
    if (n < 0) return reply.Error(Errno());
    reply.Ok(std::string(buf, static_cast<size_t>(n)));
  }

  void Symlink(const RequestContext& ctx, uint64_t parent, std::string_view name,
               std::string_view target, Reply<Entry> reply) override {
    std::string t(target), n(name);
    Make(ctx, parent, name, std::move(reply),
         [&](int dirfd) { return symlinkat(t.c_str(), dirfd, n.c_str()); });
  }
  void Mknod(const RequestContext& ctx, uint64_t parent, std::string_view name, uint32_t mode,
             uint32_t rdev, uint32_t umask, Reply<Entry> reply) override {
    std::string n(name);
    Make(ctx, parent, name, std::move(reply),
         [&](int dirfd) { return mknodat(dirfd, n.c_str(), Masked(mode, umask), rdev); });
  }
  void Mkdir(const RequestContext& ctx, uint64_t parent, std::string_view name, uint32_t mode,
             uint32_t umask, Reply<Entry> reply) override {
    std::string n(name);
    Make(ctx, parent, name, std::move(reply),
         [&](int dirfd) { return mkdirat(dirfd, n.c_str(), Masked(mode, umask)); });
  }
  void Unlink(const RequestContext& ctx, uint64_t parent, std::string_view name,
              Reply<void> reply) override {
    Remove(ctx, parent, name, 0, std::move(reply));
  }
  void Rmdir(const RequestContext& ctx, uint64_t parent, std::string_view name,
             Reply<void> reply) override {
    Remove(ctx, parent, name, AT_REMOVEDIR, std::move(reply));
  }
  void Rename(const RequestContext& ctx, uint64_t parent, std::string_view name,
              uint64_t new_parent, std::string_view new_name, uint32_t flags,
              Reply<void> reply) override {
    if (options_.readonly) return reply.Error(EROFS);
    auto from = inodes_.Get(parent), to = inodes_.Get(new_parent);
    if (!from || !to) return reply.Error(EBADF);
    PathFd from_fd = Path(*from);
    if (!from_fd.ok()) return reply.Error(from_fd.error());
    PathFd to_fd = Path(*to);
    if (!to_fd.ok()) return reply.Error(to_fd.error());
    ScopedCredentials creds(as_root_, Ids(ctx));
    if (!creds.ok()) return reply.Error(creds.error());
    std::string a(name), b(new_name);
    if (syscall(SYS_renameat2, from_fd.get(), a.c_str(), to_fd.get(), b.c_str(), flags) != 0) {
      return reply.Error(Errno());
    }
    reply.Ok();
  }
  void Link(const RequestContext& ctx, uint64_t node, uint64_t new_parent,
            std::string_view new_name, Reply<Entry> reply) override {
    if (options_.readonly) return reply.Error(EROFS);
    auto inode = inodes_.Get(node), dir = inodes_.Get(new_parent);
    if (!inode || !dir) return reply.Error(EBADF);
    if (inode->type == S_IFDIR) return reply.Error(EPERM);
    if (dir->type != S_IFDIR) return reply.Error(ENOTDIR);
    PathFd fd = Path(*inode);
    if (!fd.ok()) return reply.Error(fd.error());
    PathFd dir_fd = Path(*dir);
    if (!dir_fd.ok()) return reply.Error(dir_fd.error());
    ScopedCredentials creds(as_root_, Ids(ctx));
    if (!creds.ok()) return reply.Error(creds.error());
    std::string n(new_name);
    // Through the inode's /proc link: the very inode, without the
    // CAP_DAC_READ_SEARCH that AT_EMPTY_PATH needs.
    const std::string self = fd.ProcName();
    if (linkat(proc_fd_.get(), self.c_str(), dir_fd.get(), n.c_str(), AT_SYMLINK_FOLLOW) != 0) {
      return reply.Error(Errno());
    }
    Entry e;
    if (int err = DoLookup(*dir, dir_fd.get(), new_name, &e); err != 0) return reply.Error(err);
    reply.Ok(e);
  }
  void Access(const RequestContext& ctx, uint64_t node, uint32_t mask, Reply<void> reply) override {
    auto inode = inodes_.Get(node);
    if (!inode) return reply.Error(EBADF);
    if (options_.readonly && (mask & W_OK) && inode->type != S_IFLNK) return reply.Error(EROFS);
    PathFd fd = Path(*inode);
    if (!fd.ok()) return reply.Error(fd.error());
    ScopedCredentials creds(as_root_, Ids(ctx));
    if (!creds.ok()) return reply.Error(creds.error());
    const std::string self = fd.ProcName();
    // AT_EACCESS: check as the fs ids set above, not the real ones.
    if (faccessat(proc_fd_.get(), self.c_str(), static_cast<int>(mask), AT_EACCESS) != 0) {
      return reply.Error(Errno());
    }
    reply.Ok();
  }
  void StatFs(const RequestContext&, uint64_t node, Reply<struct statvfs> reply) override {
    auto inode = inodes_.Get(node);
    if (!inode) return reply.Error(EBADF);
    PathFd fd = Path(*inode);
    if (!fd.ok()) return reply.Error(fd.error());
    struct statvfs v;
    if (fstatvfs(fd.get(), &v) != 0) return reply.Error(Errno());
    reply.Ok(v);
  }

  void Open(const RequestContext& ctx, uint64_t node, uint32_t flags,
            Reply<OpenResult> reply) override {
    auto inode = inodes_.Get(node);
    if (!inode) return reply.Error(EBADF);
    if (inode->type == S_IFDIR) return reply.Error(EISDIR);
    if (inode->type == S_IFLNK) return reply.Error(ELOOP);
    // Devices, fifos and sockets are never opened on the host
    // (CVE-2020-35517): the guest kernel serves those nodes itself.
    if (IsSpecial(inode->type)) return reply.Error(EPERM);
    const int open_flags = HostOpenFlags(flags);
    if (options_.readonly && ((open_flags & O_ACCMODE) != O_RDONLY || (open_flags & O_TRUNC))) {
      return reply.Error(EROFS);
    }
    PathFd path = Path(*inode);
    if (!path.ok()) return reply.Error(path.error());
    ScopedCredentials creds(as_root_, Ids(ctx));
    if (!creds.ok()) return reply.Error(creds.error());
    UniqueFd fd(openat(proc_fd_.get(), path.ProcName().c_str(), open_flags));
    if (!fd.valid()) return reply.Error(Errno());
    auto h = std::make_shared<Handle>();
    h->inode = inode;
    h->fd = std::move(fd);
    h->inline_io = OnFuse(h->fd.get());
    reply.Ok(OpenResult{handles_.Add(std::move(h)), FileOpenFlags()});
  }

  void Create(const RequestContext& ctx, uint64_t parent, std::string_view name, uint32_t mode,
              uint32_t flags, uint32_t umask, Reply<CreateResult> reply) override {
    if (options_.readonly) return reply.Error(EROFS);
    auto dir = inodes_.Get(parent);
    if (!dir) return reply.Error(EBADF);
    if (dir->type != S_IFDIR) return reply.Error(ENOTDIR);
    PathFd dir_fd = Path(*dir);
    if (!dir_fd.ok()) return reply.Error(dir_fd.error());
    ScopedCredentials creds(as_root_, Ids(ctx, true));
    if (!creds.ok()) return reply.Error(creds.error());
    std::string n(name);
    // O_EXCL first: only a file we create is opened this way. O_NOFOLLOW: a
    // symlink planted under this name is not followed out.
    UniqueFd fd(openat(dir_fd.get(), n.c_str(),
                       HostOpenFlags(flags) | O_CREAT | O_EXCL | O_NOFOLLOW, Masked(mode, umask)));
    const bool created = fd.valid();
    if (!fd.valid() && errno == EEXIST && !(flags & O_EXCL)) {
      // The name exists: open it as OPEN would, which never opens a device,
      // fifo or socket on the host (CVE-2020-35517). The O_PATH fd pins the
      // inode between the type check and the open.
      UniqueFd path(openat(dir_fd.get(), n.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
      if (!path.valid()) return reply.Error(Errno());
      struct statx x;
      if (int e = StatxFd(path.get(), &x); e != 0) return reply.Error(e);
      if (S_ISLNK(x.stx_mode)) return reply.Error(ELOOP);
      if (S_ISDIR(x.stx_mode)) return reply.Error(EISDIR);
      if (!S_ISREG(x.stx_mode)) return reply.Error(EPERM);
      fd.reset(openat(proc_fd_.get(), std::to_string(path.get()).c_str(), HostOpenFlags(flags)));
    }
    if (!fd.valid()) return reply.Error(Errno());
    CreateResult r;
    PathFd node_fd;
    if (int err = DoLookup(*dir, dir_fd.get(), name, &r.entry, &node_fd); err != 0) {
      return reply.Error(err);
    }
    if (created) {
      if (int err = ApplySecurityContext(ctx, dir_fd.get(), name, r.entry); err != 0) {
        return reply.Error(err);
      }
    }
    auto h = std::make_shared<Handle>();
    h->inode = inodes_.Get(r.entry.node_id);
    h->fd = std::move(fd);
    h->inline_io = OnFuse(h->fd.get());
    r.open = OpenResult{handles_.Add(std::move(h)), FileOpenFlags()};
    reply.Ok(r);
  }

  std::unique_ptr<QueueContext> CreateQueueContext(uint32_t) override {
    // Runs on the queue's worker thread. Guest modes are exact (the guest,
    // or we, applied its umask): this thread gets a file-system context of
    // its own with umask 0, leaving the process's umask alone.
    if (unshare(CLONE_FS) == 0) {
      umask(0);
      SetThreadHasOwnFsContext();
    } else {
      VIRTIOFS_LOG(kWarning, "unshare(CLONE_FS): {}; the process umask applies to new files",
                   strerror(errno));
    }
    if (options_.io_engine != IoEngineKind::kUring) return nullptr;
    auto engine = IoEngine::CreateBest();
    if (engine->kind() != IoEngineKind::kUring) return nullptr;  // Inline I/O then.
    return std::make_unique<EngineContext>(std::move(engine));
  }

  // Data moves straight between the file and guest memory through the
  // queue's engine (the handle stays open until the completion).
  void Read(const RequestContext& ctx, uint64_t, const ReadRequest& req, ReadReply reply) override {
    auto h = handles_.Get(req.handle);
    if (!h) return reply.Error(EBADF);
    auto iov = reply.buffers();
    DataEngine(ctx, *h).Readv(h->fd.get(), iov, static_cast<int64_t>(req.offset),
                              [h, r = std::move(reply)](int64_t n) mutable {
                                if (n < 0) return r.Error(static_cast<int>(-n));
                                r.Ok(static_cast<uint32_t>(n));  // Short: end of file.
                              });
  }

  void Write(const RequestContext& ctx, uint64_t, const WriteRequest& req,
             Reply<uint32_t> reply) override {
    if (options_.readonly) return reply.Error(EROFS);
    auto h = handles_.Get(req.handle);
    if (!h) return reply.Error(EBADF);
    // As the caller while the synchronous engine writes inline.
    ScopedCredentials creds(as_root_, Ids(ctx));
    if (!creds.ok()) return reply.Error(creds.error());
    const bool kill = (req.write_flags & FUSE_WRITE_KILL_SUIDGID) != 0;
    DataEngine(ctx, *h).Writev(h->fd.get(), req.data, static_cast<int64_t>(req.offset),
                               [this, h, kill, r = std::move(reply)](int64_t n) mutable {
                                 if (n < 0) return r.Error(static_cast<int>(-n));
                                 if (kill) KillSuidGid(*h);
                                 r.Ok(static_cast<uint32_t>(n));
                               });
  }

  // Nothing to flush (no data is buffered here). The lock_owner's POSIX
  // locks are not released: see the lock notes in passthrough_ext.cc.
  // close(2) in the guest: the closing process's POSIX locks on the file go
  // (passthrough_ext.cc, "Locks").
  void Flush(const RequestContext&, uint64_t node, uint64_t handle, uint64_t lock_owner,
             Reply<void> reply) override {
    if (!handles_.Get(handle)) return reply.Error(EBADF);
    DropOwnerLocks(node, lock_owner);
    reply.Ok();
  }
  void Release(const RequestContext&, uint64_t, uint64_t handle, uint32_t, uint32_t release_flags,
               uint64_t, Reply<void> reply) override {
    auto h = handles_.Remove(handle);
    if (!h) return reply.Error(EBADF);
    if (release_flags & FUSE_RELEASE_FLOCK_UNLOCK) (void)flock(h->fd.get(), LOCK_UN);
    reply.Ok();
  }
  void Fsync(const RequestContext& ctx, uint64_t, uint64_t handle, bool datasync,
             Reply<void> reply) override {
    auto h = handles_.Get(handle);
    if (!h) return reply.Error(EBADF);
    DataEngine(ctx, *h).Fsync(h->fd.get(), datasync, [h, r = std::move(reply)](int64_t n) mutable {
      if (n < 0) return r.Error(static_cast<int>(-n));
      r.Ok();
    });
  }

  void OpenDir(const RequestContext& ctx, uint64_t node, uint32_t,
               Reply<OpenResult> reply) override {
    auto inode = inodes_.Get(node);
    if (!inode) return reply.Error(EBADF);
    if (inode->type != S_IFDIR) return reply.Error(ENOTDIR);
    PathFd path = Path(*inode);
    if (!path.ok()) return reply.Error(path.error());
    ScopedCredentials creds(as_root_, Ids(ctx));
    if (!creds.ok()) return reply.Error(creds.error());
    UniqueFd fd(
        openat(proc_fd_.get(), path.ProcName().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.valid()) return reply.Error(Errno());
    auto h = std::make_shared<Handle>();
    h->inode = inode;
    h->fd = std::move(fd);
    uint32_t open_flags = 0;
    if (options_.cache == Cache::kAlways) open_flags |= FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR;
    reply.Ok(OpenResult{handles_.Add(std::move(h)), open_flags});
  }

  void ReadDir(const RequestContext& ctx, uint64_t, uint64_t handle, uint64_t offset, bool plus,
               DirReply reply) override;

  void ReleaseDir(const RequestContext&, uint64_t, uint64_t handle, uint32_t,
                  Reply<void> reply) override {
    if (!handles_.Remove(handle)) return reply.Error(EBADF);
    reply.Ok();
  }
  void FsyncDir(const RequestContext&, uint64_t, uint64_t handle, bool datasync,
                Reply<void> reply) override {
    auto h = handles_.Get(handle);
    if (!h) return reply.Error(EBADF);
    if ((datasync ? fdatasync(h->fd.get()) : fsync(h->fd.get())) != 0) {
      return reply.Error(Errno());
    }
    reply.Ok();
  }

  // ---- passthrough_ext.cc ----
  void SetXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                std::span<const uint8_t> value, uint32_t flags, uint32_t setxattr_flags,
                Reply<void> reply) override;
  void GetXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                Reply<std::string> reply) override;
  void ListXattr(const RequestContext& ctx, uint64_t node, Reply<std::string> reply) override;
  void RemoveXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                   Reply<void> reply) override;
  void GetLk(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t owner,
             const FileLock& lock, bool flock, Reply<FileLock> reply) override;
  void SetLk(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t owner,
             const FileLock& lock, bool flock, bool wait, Reply<void> reply) override;
  void Fallocate(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t offset,
                 uint64_t length, uint32_t mode, Reply<void> reply) override;
  void Lseek(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t offset,
             uint32_t whence, Reply<uint64_t> reply) override;
  void CopyFileRange(const RequestContext& ctx, uint64_t node_in, uint64_t handle_in,
                     uint64_t offset_in, uint64_t node_out, uint64_t handle_out,
                     uint64_t offset_out, uint64_t length, uint64_t flags,
                     Reply<uint64_t> reply) override;
  void TmpFile(const RequestContext& ctx, uint64_t parent, uint32_t mode, uint32_t flags,
               uint32_t umask, Reply<CreateResult> reply) override;
  void SyncFs(const RequestContext& ctx, uint64_t node, Reply<void> reply) override;
  void Ioctl(const RequestContext& ctx, uint64_t node, uint64_t handle, uint32_t flags,
             uint32_t cmd, uint64_t arg, std::span<const uint8_t> in, uint32_t out_size,
             Reply<IoctlResult> reply) override;

  void InterruptWaits() override;

  // ---- PassthroughBackend ----
  size_t inode_count() const override { return inodes_.size(); }
  size_t handle_count() const override { return handles_.size(); }
  const PassthroughOptions& options() const override { return options_; }

 private:
  // A queue worker's io_uring.
  class EngineContext final : public QueueContext {
   public:
    explicit EngineContext(std::unique_ptr<IoEngine> engine) : engine_(std::move(engine)) {}
    int fd() const override { return engine_->completion_fd(); }
    void Process() override { engine_->Reap(); }
    void Flush() override { engine_->Submit(); }
    IoEngine* engine() { return engine_.get(); }

   private:
    std::unique_ptr<IoEngine> engine_;
  };
  // The engine of the request's queue, or the synchronous one (inline I/O).
  IoEngine& EngineOf(const RequestContext& ctx) const {
    auto* e = dynamic_cast<EngineContext*>(ctx.queue);
    return e ? *e->engine() : *sync_engine_;
  }
  // The engine for a handle's data. io_uring re-reads a short read of a FUSE
  // file opened with direct I/O at the same offset (seen on Linux 6.18: the
  // guest got the file's head repeated to fill its buffer), so files on FUSE
  // (a host FUSE mount inside the share) are read and written inline.
  IoEngine& DataEngine(const RequestContext& ctx, const Handle& h) const {
    return h.inline_io ? *sync_engine_ : EngineOf(ctx);
  }
  static bool OnFuse(int fd) {
    struct statfs s;
    return fstatfs(fd, &s) == 0 && s.f_type == FUSE_SUPER_MAGIC;
  }
  // Finishes the I/O the request's queue has queued or in flight (their
  // replies go out), so that an operation that runs inline takes effect after
  // the WRITEs the guest sent before it, as with inline I/O. Needed by
  // SETATTR: with the writeback cache the guest flushes dirty pages (WRITEs
  // it does not wait for) and then sets the file's times; a WRITE landing
  // after the times would move mtime on the host again.
  void FinishQueuedIo(const RequestContext& ctx) const;

  // The caller as host ids (uid/gid translation); with `create`, also the
  // supplementary group FUSE_CREATE_SUPP_GROUP sent.
  HostIds Ids(const RequestContext& ctx, bool create = false) const {
    HostIds ids;
    auto uid = options_.translate_uid.ToHost(ctx.uid);
    auto gid = options_.translate_gid.ToHost(ctx.gid);
    if (!uid || !gid) {
      ids.error = EPERM;  // forbid-guest
      return ids;
    }
    ids.uid = *uid;
    ids.gid = *gid;
    if (create && ctx.supplementary_gid) {
      // A forbidden supplementary group is left out, not an error: the
      // caller's own ids are allowed.
      if (auto g = options_.translate_gid.ToHost(*ctx.supplementary_gid)) ids.supplementary = *g;
    }
    return ids;
  }
  // Owners in a reply, as the guest sees them.
  void ToGuest(struct stat* st) const {
    st->st_uid = options_.translate_uid.ToGuest(st->st_uid);
    st->st_gid = options_.translate_gid.ToGuest(st->st_gid);
  }

  // The O_PATH fd of `inode` for one request: its own, or opened from its
  // file handle (ESTALE when the host inode is gone). Called before the
  // request's ids are switched: open_by_handle_at needs
  // CAP_DAC_READ_SEARCH.
  PathFd Path(const Inode& inode) const {
    if (!inode.handle) return PathFd::Borrow(inode.fd.get());
    return OpenHandle(*inode.handle);
  }
  PathFd OpenHandle(const FileHandle& fh) const;
  // How a newly found inode is held, from its O_PATH fd: the fd itself, or
  // its file handle (the fd goes to `spare`). Errors only with mandatory
  // handles.
  int Hold(UniqueFd fd, InodeHold* out, UniqueFd* spare);
  // The mount table's entry for `mount_id`, made of `fd` (an O_PATH fd on
  // that mount) the first time; null with errno when it cannot be kept.
  HandleMount* Mount(int mount_id, int fd, bool is_dir);
  absl::Status ProbeFileHandles();

  // With FUSE_DONT_MASK the guest left the umask to us; otherwise it is
  // already applied and applying it again changes nothing.
  static mode_t Masked(uint32_t mode, uint32_t umask) { return mode & ~umask; }

  double AttrTimeout() const {
    if (options_.timeout) return *options_.timeout;
    switch (options_.cache) {
      case Cache::kNever:
        return 0;
      case Cache::kAuto:
        return 1;
      default:
        return 86400;
    }
  }

  uint32_t FileOpenFlags() const {
    switch (options_.cache) {
      case Cache::kNever:
      case Cache::kMetadata:
        return FOPEN_DIRECT_IO;
      case Cache::kAlways:
        return FOPEN_KEEP_CACHE;
      default:
        return 0;
    }
  }

  // The guest's open flags as the host should see them.
  int HostOpenFlags(uint32_t guest) const {
    int f = static_cast<int>(guest);
    // O_NOFOLLOW: the node is known not to be a symlink, and the reopen
    // through /proc/self/fd/N is itself a (magic) link that must be followed.
    f &= ~(O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW);
    if (!options_.allow_direct_io) f &= ~O_DIRECT;
    if (!options_.preserve_noatime) f &= ~O_NOATIME;
    if (flags_.load(std::memory_order_relaxed) & FUSE_WRITEBACK_CACHE) {
      // The guest's page cache writes whole pages: it may need to read what
      // it writes, and it does O_APPEND itself.
      if ((f & O_ACCMODE) == O_WRONLY) f = (f & ~O_ACCMODE) | O_RDWR;
      f &= ~O_APPEND;
    }
    return f | O_CLOEXEC;
  }

  int Attr(const Inode& inode, Attributes* a) const {
    PathFd fd = Path(inode);
    if (!fd.ok()) return fd.error();
    return AttrOf(fd.get(), a);
  }
  int AttrOf(int fd, Attributes* a) const {
    struct statx x;
    if (int e = StatxFd(fd, &x); e != 0) return e;
    a->st = ToStat(x);
    ToGuest(&a->st);
    a->timeout = AttrTimeout();
    if (options_.announce_submounts && S_ISDIR(x.stx_mode) && x.stx_mnt_id != root_->key.mnt_id) {
      a->flags |= FUSE_ATTR_SUBMOUNT;
    }
    return 0;
  }

  // Looks `name` up under `parent` (whose fd, O_PATH or open, is
  // `parent_fd`); one more lookup of the node on success. `node_fd`, if
  // given, receives an fd of the node valid for this request.
  int DoLookup(const Inode& parent, int parent_fd, std::string_view name, Entry* e,
               PathFd* node_fd = nullptr) {
    if (parent.type != S_IFDIR) return ENOTDIR;
    const std::string n(name);
    // ".." of the root is the root: the guest never leaves the share.
    const char* target = parent.id == FUSE_ROOT_ID && name == ".." ? "." : n.c_str();
    UniqueFd fd(openat(parent_fd, target, O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (!fd.valid()) return Errno();
    // ".." of a directory the host moved out of the share would lead out:
    // it must still reach the root going up.
    if (name == ".." && parent.id != FUSE_ROOT_ID && !BeneathRoot(fd.get())) return EACCES;
    struct statx x;
    if (int err = StatxFd(fd.get(), &x); err != 0) return err;
    InodeKey key{x.stx_ino, makedev(x.stx_dev_major, x.stx_dev_minor), x.stx_mnt_id};
    // A known node gets one more lookup; a new one is held as configured.
    std::shared_ptr<Inode> inode = inodes_.Ref(key);
    if (!inode) {
      InodeHold hold;
      UniqueFd spare;  // The fd, when the hold does not keep it.
      if (int err = Hold(std::move(fd), &hold, &spare); err != 0) return err;
      inode = inodes_.Intern(key, x.stx_mode & S_IFMT, std::move(hold));
      fd = std::move(spare);
    }
    if (node_fd) {
      if (inode->fd.valid()) {
        *node_fd = PathFd::Borrow(inode->fd.get(), inode);
      } else {
        *node_fd = fd.valid() ? PathFd::Own(std::move(fd)) : Path(*inode);
      }
    }
    e->node_id = inode->id;
    e->generation = 0;
    e->attr.st = ToStat(x);
    ToGuest(&e->attr.st);
    e->attr.timeout = AttrTimeout();
    e->entry_timeout = AttrTimeout();
    if (options_.announce_submounts && S_ISDIR(x.stx_mode) && key.mnt_id != root_->key.mnt_id) {
      e->attr.flags |= FUSE_ATTR_SUBMOUNT;
    }
    return 0;
  }

  // Creates with `make(dirfd)` as the caller, then looks the new name up.
  template <typename F>
  void Make(const RequestContext& ctx, uint64_t parent, std::string_view name, Reply<Entry> reply,
            F make) {
    if (options_.readonly) return reply.Error(EROFS);
    auto dir = inodes_.Get(parent);
    if (!dir) return reply.Error(EBADF);
    if (dir->type != S_IFDIR) return reply.Error(ENOTDIR);
    PathFd dir_fd = Path(*dir);
    if (!dir_fd.ok()) return reply.Error(dir_fd.error());
    ScopedCredentials creds(as_root_, Ids(ctx, true));
    if (!creds.ok()) return reply.Error(creds.error());
    if (make(dir_fd.get()) != 0) return reply.Error(Errno());
    Entry e;
    PathFd node_fd;
    if (int err = DoLookup(*dir, dir_fd.get(), name, &e, &node_fd); err != 0) {
      return reply.Error(err);
    }
    if (int err = ApplySecurityContext(ctx, dir_fd.get(), name, e); err != 0) {
      return reply.Error(err);
    }
    reply.Ok(e);
  }

  // FUSE_SECURITY_CTX: a node the guest created gets the guest's label as it
  // appears, or it is removed again and the creation fails (a node must not
  // stay without its label). Set as xattr calls are (SetNodeXattr): on
  // the node itself (a symlink's own inode, not its target), and never
  // through a /proc path that a sandbox's root would resolve in the share.
  int ApplySecurityContext(const RequestContext& ctx, int dir_fd, std::string_view name,
                           const Entry& e) {
    if (!ctx.security_context || !options_.security_label) return 0;
    auto node = inodes_.Get(e.node_id);
    if (!node) return EIO;
    const auto& [guest_name, value] = *ctx.security_context;
    std::string xattr = guest_name;
    int err = xattr_map_ ? xattr_map_->ToHost(guest_name, &xattr) : 0;
    if (err == 0) err = SetNodeXattr(*node, xattr, value);
    if (err == 0) return 0;
    const std::string n(name);
    (void)unlinkat(dir_fd, n.c_str(), node->type == S_IFDIR ? AT_REMOVEDIR : 0);
    inodes_.Forget(e.node_id, 1);
    return err;
  }

  void Remove(const RequestContext& ctx, uint64_t parent, std::string_view name, int flags,
              Reply<void> reply) {
    if (options_.readonly) return reply.Error(EROFS);
    auto dir = inodes_.Get(parent);
    if (!dir) return reply.Error(EBADF);
    PathFd dir_fd = Path(*dir);
    if (!dir_fd.ok()) return reply.Error(dir_fd.error());
    ScopedCredentials creds(as_root_, Ids(ctx));
    if (!creds.ok()) return reply.Error(creds.error());
    std::string n(name);
    if (unlinkat(dir_fd.get(), n.c_str(), flags) != 0) return reply.Error(Errno());
    reply.Ok();
  }

  // FUSE_HANDLE_KILLPRIV_V2: the guest asks us to drop setuid, and setgid
  // when group-executable, as its kernel would on a write.
  void KillSuidGid(const Handle& h) { KillSuidGid(h.fd.get()); }
  static void KillSuidGid(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    mode_t drop = S_ISUID;
    if (st.st_mode & S_IXGRP) drop |= S_ISGID;
    if (st.st_mode & drop) (void)fchmod(fd, st.st_mode & ~drop & 07777);
  }

  // Whether `fd` (a directory reached through "..") is the share's root or
  // below it: walk up to the root, or to the host's "/" (outside).
  bool BeneathRoot(int fd) const {
    UniqueFd cur;
    int at = fd;
    for (int depth = 0; depth < 4096; ++depth) {
      struct statx x;
      if (StatxFd(at, &x) != 0) return false;
      const InodeKey key{x.stx_ino, makedev(x.stx_dev_major, x.stx_dev_minor), x.stx_mnt_id};
      if (key == root_->key) return true;
      UniqueFd up(openat(at, "..", O_PATH | O_NOFOLLOW | O_CLOEXEC | O_DIRECTORY));
      if (!up.valid()) return false;
      struct statx u;
      if (StatxFd(up.get(), &u) != 0) return false;
      if (u.stx_ino == x.stx_ino && u.stx_dev_major == x.stx_dev_major &&
          u.stx_dev_minor == x.stx_dev_minor && u.stx_mnt_id == x.stx_mnt_id) {
        return false;  // The host's "/": the share was never met.
      }
      cur = std::move(up);
      at = cur.get();
    }
    return false;
  }

  PassthroughOptions options_;
  std::optional<passthrough_internal::XattrMap> xattr_map_;  // --xattrmap
  UniqueFd proc_fd_;  // O_PATH of /proc/self/fd.
  const bool as_root_;
  // Inodes are held by file handles (where the file system makes them).
  bool use_handles_ = false;
  // Mount id -> an fd on that mount, for open_by_handle_at; file systems
  // without handles (logged once each).
  mutable std::mutex mounts_mu_;
  absl::flat_hash_map<int, std::unique_ptr<HandleMount>> mounts_;
  absl::flat_hash_set<uint64_t> no_handle_devs_;
  std::shared_ptr<Inode> root_;
  std::atomic<uint64_t> flags_{0};
  InodeTable inodes_;
  HandleTable handles_;
  // Stateless: shared by every thread without a queue engine.
  const std::unique_ptr<IoEngine> sync_engine_ = io_internal::MakeSyncEngine();

  // passthrough_ext.cc helpers
  // POSIX locks: one open file description per (node, lock owner) that has
  // locks, so that owners conflict and FLUSH drops one owner's locks
  // (passthrough_ext.cc, "Locks"). At most kMaxLockOwners at once.
  static constexpr size_t kMaxLockOwners = 4096;
  std::shared_ptr<UniqueFd> OwnerLockFd(uint64_t node, const Handle& h, uint64_t owner,
                                        bool create, int* err);
  void DropOwnerLocks(uint64_t node, uint64_t owner);
  void DropNodeLocks(uint64_t node);
  std::mutex owner_locks_mu_;
  std::map<std::pair<uint64_t, uint64_t>, std::shared_ptr<UniqueFd>> owner_locks_;
  std::atomic<bool> has_owner_locks_{false};  // !owner_locks_.empty(), read without the lock.
  // Threads that answer SETLKW requests which must wait for the lock.
  class LockWaiters;
  static std::shared_ptr<LockWaiters> MakeLockWaiters();
  // Declared last: destroyed first, so its threads are stopped and joined
  // before anything else of the backend goes. (shared_ptr: LockWaiters is
  // complete only in passthrough_ext.cc.)
  std::shared_ptr<LockWaiters> lock_waiters_ = MakeLockWaiters();
};

}  // namespace virtiofs::passthrough

#endif  // VIRTIOFS_LIB_PASSTHROUGH_PASSTHROUGH_FS_H_
