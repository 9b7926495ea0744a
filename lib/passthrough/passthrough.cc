// PassthroughBackend: the guest's FUSE operations on a host directory.
//
// Confinement: every operation names its target by an O_PATH descriptor from
// the inode table plus, at most, one name component that the FUSE layer
// already checked (no '/', not empty, at most NAME_MAX). Files are opened
// again through /proc/self/fd/N, which reaches exactly the inode the
// descriptor holds, never a path that a racing rename could redirect.
#include "virtiofs/passthrough.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <thread>

#include "absl/strings/str_format.h"
#include "lib/passthrough/passthrough_fs.h"
#include "virtiofs/log.h"

namespace virtiofs {
namespace passthrough {

void PassthroughFs::FinishQueuedIo(const RequestContext& ctx) const {
  auto* e = dynamic_cast<EngineContext*>(ctx.queue);
  if (e == nullptr) return;  // Inline I/O: nothing is pending.
  IoEngine& io = *e->engine();
  io.Submit();
  while (io.in_flight() > 0) {
    pollfd p{io.completion_fd(), POLLIN, 0};
    if (poll(&p, 1, -1) < 0 && errno != EINTR) {
      VIRTIOFS_LOG(kError, "poll on the queue's io_uring: {}", strerror(errno));
      return;
    }
    io.Reap();
  }
}

void PassthroughFs::SetAttr(const RequestContext& ctx, uint64_t node, const SetAttrRequest& in,
                            Reply<Attributes> reply) {
  if (options_.readonly) return reply.Error(EROFS);
  FinishQueuedIo(ctx);
  auto inode = inodes_.Get(node);
  if (!inode) return reply.Error(EBADF);
  std::shared_ptr<Handle> h;
  if (in.handle) {
    h = handles_.Get(*in.handle);
    if (!h) return reply.Error(EBADF);
  }
  PathFd fd = Path(*inode);
  if (!fd.ok()) return reply.Error(fd.error());
  ScopedCredentials creds(as_root_, Ids(ctx));
  if (!creds.ok()) return reply.Error(creds.error());
  const std::string self = fd.ProcName();
  const bool is_link = inode->type == S_IFLNK;

  if (in.valid & FATTR_MODE) {
    if (is_link) return reply.Error(EOPNOTSUPP);
    mode_t mode = in.mode & 07777;
    if (in.kill_suidgid()) {
      mode &= ~S_ISUID;
      if (mode & S_IXGRP) mode &= ~S_ISGID;
    }
    if (fchmodat(proc_fd_.get(), self.c_str(), mode, 0) != 0) return reply.Error(Errno());
  }
  if (in.valid & (FATTR_UID | FATTR_GID)) {
    // The new owners as host ids; a forbidden guest id is refused.
    std::optional<uint32_t> uid = static_cast<uid_t>(-1), gid = static_cast<gid_t>(-1);
    if (in.valid & FATTR_UID) uid = options_.translate_uid.ToHost(in.uid);
    if (in.valid & FATTR_GID) gid = options_.translate_gid.ToHost(in.gid);
    if (!uid || !gid) return reply.Error(EPERM);
    if (fchownat(fd.get(), "", *uid, *gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) {
      return reply.Error(Errno());
    }
  }
  if (in.valid & FATTR_SIZE) {
    if (inode->type != S_IFREG) return reply.Error(inode->type == S_IFDIR ? EISDIR : EINVAL);
    int r;
    if (h) {
      r = ftruncate(h->fd.get(), static_cast<off_t>(in.size));
    } else {
      UniqueFd file(openat(proc_fd_.get(), self.c_str(), O_WRONLY | O_CLOEXEC));
      if (!file.valid()) return reply.Error(Errno());
      r = ftruncate(file.get(), static_cast<off_t>(in.size));
      // HANDLE_KILLPRIV_V2: the guest asks; a root thread keeps CAP_FSETID,
      // so the host would not clear the bits by itself.
      if (r == 0 && in.kill_suidgid()) KillSuidGid(file.get());
    }
    if (r != 0) return reply.Error(Errno());
    if (in.kill_suidgid() && h) KillSuidGid(*h);
  }
  if (in.valid & (FATTR_ATIME | FATTR_MTIME)) {
    timespec t[2];
    t[0] = (in.valid & FATTR_ATIME_NOW) ? timespec{0, UTIME_NOW}
           : (in.valid & FATTR_ATIME)   ? in.atime
                                        : timespec{0, UTIME_OMIT};
    t[1] = (in.valid & FATTR_MTIME_NOW) ? timespec{0, UTIME_NOW}
           : (in.valid & FATTR_MTIME)   ? in.mtime
                                        : timespec{0, UTIME_OMIT};
    const int r = is_link ? utimensat(fd.get(), "", t, AT_EMPTY_PATH)
                          : utimensat(proc_fd_.get(), self.c_str(), t, 0);
    if (r != 0) return reply.Error(Errno());
  }
  Attributes a;
  if (int e = AttrOf(fd.get(), &a); e != 0) return reply.Error(e);
  reply.Ok(a);
}

void PassthroughFs::ReadDir(const RequestContext& ctx, uint64_t, uint64_t handle, uint64_t offset,
                            bool plus, DirReply reply) {
  auto h = handles_.Get(handle);
  if (!h) return reply.Error(EBADF);
  ScopedCredentials creds(as_root_, Ids(ctx));
  if (!creds.ok()) return reply.Error(creds.error());
  std::lock_guard lock(h->mu);
  if (!h->dir) {
    h->dir = std::make_unique<DirStream>();
    h->dir->buf.resize(16384);
  }
  DirStream& ds = *h->dir;
  // The offsets are the host file system's own cookies (d_off): stable
  // across calls and across changes to the directory. Where the last call
  // stopped, the stream goes on; anywhere else, seek.
  if (!ds.valid || offset != ds.offset) {
    ds.valid = false;
    if (lseek(h->fd.get(), static_cast<off_t>(offset), SEEK_SET) < 0) return reply.Error(Errno());
    ds.pos = ds.len = 0;
    ds.offset = offset;
    ds.valid = true;
  }
  for (;;) {
    if (ds.pos >= ds.len) {
      const long n = syscall(SYS_getdents64, h->fd.get(), ds.buf.data(), ds.buf.size());
      if (n < 0) {
        ds.valid = false;
        return reply.Error(Errno());
      }
      ds.pos = 0;
      ds.len = static_cast<size_t>(n);
      if (n == 0) break;
    }
    auto* d = reinterpret_cast<struct dirent64*>(ds.buf.data() + ds.pos);
    std::string_view name(d->d_name);
    const uint64_t next = static_cast<uint64_t>(d->d_off);
    if (!plus) {
      if (!reply.Add(name, d->d_ino, d->d_type, next)) return reply.Ok();
    } else {
      Entry e;
      bool found = true;
      if (name == "." || name == "..") {
        // No lookup for these: the guest ignores their entries.
        e.node_id = 0;
        e.attr.st.st_ino = d->d_ino;
        e.attr.st.st_mode = static_cast<mode_t>(DTTOIF(d->d_type));
        e.attr.timeout = 0;
        e.entry_timeout = 0;
      } else if (DoLookup(*h->inode, h->fd.get(), name, &e) != 0) {
        found = false;  // Gone meanwhile.
      }
      if (found && !reply.AddPlus(name, e, next)) {
        if (e.node_id != 0) inodes_.Forget(e.node_id, 1);  // Not sent: not counted.
        return reply.Ok();                                 // The entry stays first in the stream.
      }
    }
    ds.pos += d->d_reclen;
    ds.offset = next;
  }
  reply.Ok();
}

// ---------------------------------------------------------------------------
// File handles.

namespace {

// A struct file_handle with room for the largest handle.
struct HandleBuffer {
  HandleBuffer() { h()->handle_bytes = MAX_HANDLE_SZ; }
  file_handle* h() { return reinterpret_cast<file_handle*>(storage); }
  alignas(file_handle) unsigned char storage[sizeof(file_handle) + MAX_HANDLE_SZ];
};

}  // namespace

PathFd PassthroughFs::OpenHandle(const FileHandle& fh) const {
  HandleMount& m = *fh.mount;
  int mount_fd = m.ready.load(std::memory_order_acquire);
  if (mount_fd < 0) {
    std::lock_guard lock(m.mu);
    if (!m.fd.valid()) {
      // O_NONBLOCK: never wait for a lease. Only a directory or a regular
      // file is ever kept as a mount's node (Hold).
      const int flags = O_RDONLY | O_NONBLOCK | O_CLOEXEC | (m.is_dir ? O_DIRECTORY : 0);
      m.fd.reset(openat(proc_fd_.get(), std::to_string(m.path.get()).c_str(), flags));
      if (!m.fd.valid()) return PathFd::Failed(Errno());
      m.ready.store(m.fd.get(), std::memory_order_release);
    }
    mount_fd = m.fd.get();
  }
  HandleBuffer buf;
  file_handle* h = buf.h();
  h->handle_type = fh.type;
  h->handle_bytes = static_cast<unsigned>(fh.bytes.size());
  memcpy(h->f_handle, fh.bytes.data(), fh.bytes.size());
  // Not path-resolved: the very inode the handle was made of, or ESTALE
  // when it is gone (the handle's generation tells a reused inode number).
  UniqueFd fd(open_by_handle_at(mount_fd, h, O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return PathFd::Failed(Errno());
  return PathFd::Own(std::move(fd));
}

HandleMount* PassthroughFs::Mount(int mount_id, int fd, bool is_dir) {
  std::lock_guard lock(mounts_mu_);
  auto it = mounts_.find(mount_id);
  if (it != mounts_.end()) return it->second.get();
  // The first node met on a mount is the mount's root (a guest enters a
  // submount only through it) or the shared directory: keeping it pins no
  // file that could be removed, and keeps the mount id from being reused.
  auto m = std::make_unique<HandleMount>();
  m->path.reset(fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!m->path.valid()) return nullptr;
  m->is_dir = is_dir;
  HandleMount* raw = m.get();
  mounts_.emplace(mount_id, std::move(m));
  return raw;
}

int PassthroughFs::Hold(UniqueFd fd, InodeHold* out, UniqueFd* spare) {
  if (!use_handles_) {
    out->fd = std::move(fd);
    return 0;
  }
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return Errno();
  {
    std::lock_guard lock(mounts_mu_);
    if (no_handle_devs_.contains(st.st_dev)) {
      if (options_.inode_file_handles == FileHandles::kMandatory) return EOPNOTSUPP;
      out->fd = std::move(fd);
      return 0;
    }
  }
  HandleBuffer buf;
  int mount_id = 0;
  int err = 0;
  HandleMount* mount = nullptr;
  if (name_to_handle_at(fd.get(), "", buf.h(), &mount_id, AT_EMPTY_PATH) != 0) {
    err = Errno();
  } else if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) {
    // A special file is never opened, so it cannot serve as a mount's fd:
    // held by its fd where it is the first node of its mount (a device
    // bind-mounted alone), by handle where the mount is known.
    std::lock_guard lock(mounts_mu_);
    if (auto it = mounts_.find(mount_id); it != mounts_.end()) mount = it->second.get();
    if (!mount) {
      out->fd = std::move(fd);
      return 0;
    }
  } else if (mount = Mount(mount_id, fd.get(), S_ISDIR(st.st_mode)); !mount) {
    return Errno();  // EMFILE: not the file system's fault; try again later.
  }
  if (err == 0) {
    FileHandle fh;
    fh.type = buf.h()->handle_type;
    fh.bytes.assign(buf.h()->f_handle, buf.h()->f_handle + buf.h()->handle_bytes);
    fh.mount = mount;
    out->handle = std::move(fh);
    *spare = std::move(fd);
    return 0;
  }
  if (err != EOPNOTSUPP && err != ENOTSUP && err != EOVERFLOW) return err;
  const bool mandatory = options_.inode_file_handles == FileHandles::kMandatory;
  {
    std::lock_guard lock(mounts_mu_);
    if (no_handle_devs_.insert(st.st_dev).second) {
      VIRTIOFS_LOG(kWarning,
                   "passthrough: the file system on device {}:{} cannot make file handles ({}); "
                   "{}",
                   major(st.st_dev), minor(st.st_dev), strerror(err),
                   mandatory ? "inode_file_handles=mandatory: its files cannot be looked up"
                             : "its inodes are held as O_PATH fds");
    }
  }
  if (mandatory) return err;
  out->fd = std::move(fd);
  return 0;
}

absl::Status PassthroughFs::ProbeFileHandles() {
  const bool mandatory = options_.inode_file_handles == FileHandles::kMandatory;
  const int root = root_->fd.get();
  HandleBuffer buf;
  int mount_id = 0;
  if (name_to_handle_at(root, "", buf.h(), &mount_id, AT_EMPTY_PATH) != 0) {
    const int err = Errno();
    if (mandatory) {
      return absl::ErrnoToStatus(err, absl::StrFormat("inode_file_handles=mandatory: the file "
                                                      "system of '%s' cannot make file handles",
                                                      options_.root));
    }
    // Submounts may still have them: decided per file system.
    VIRTIOFS_LOG(kWarning,
                 "passthrough: '{}' cannot make file handles ({}); inodes on its file "
                 "system are held as O_PATH fds",
                 options_.root, strerror(err));
    struct stat st;
    if (fstat(root, &st) == 0) no_handle_devs_.insert(st.st_dev);
    use_handles_ = true;
    return absl::OkStatus();
  }
  HandleMount* mount = Mount(mount_id, root, true);
  if (!mount) return absl::ErrnoToStatus(errno, "keep a mount fd");
  // Opening needs CAP_DAC_READ_SEARCH (in the initial user namespace for
  // most file systems): without it every open fails with EPERM.
  FileHandle fh;
  fh.type = buf.h()->handle_type;
  fh.bytes.assign(buf.h()->f_handle, buf.h()->f_handle + buf.h()->handle_bytes);
  fh.mount = mount;
  PathFd fd = OpenHandle(fh);
  if (!fd.ok()) {
    const int err = fd.error();
    if (mandatory) {
      return absl::ErrnoToStatus(err,
                                 "inode_file_handles=mandatory: open_by_handle_at fails (it needs "
                                 "CAP_DAC_READ_SEARCH)");
    }
    VIRTIOFS_LOG(kWarning,
                 "passthrough: open_by_handle_at: {} (it needs CAP_DAC_READ_SEARCH); "
                 "inodes are held as O_PATH fds",
                 strerror(err));
    use_handles_ = false;
    return absl::OkStatus();
  }
  use_handles_ = true;
  return absl::OkStatus();
}

}  // namespace passthrough

absl::Status ValidateXattrMap(std::string_view spec) {
  return passthrough_internal::XattrMap::Parse(spec).status();
}

absl::StatusOr<std::unique_ptr<PassthroughBackend>> PassthroughBackend::Create(
    PassthroughOptions options) {
  UniqueFd root(open(options.root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root.valid()) {
    return absl::ErrnoToStatus(errno, absl::StrFormat("shared directory '%s'", options.root));
  }
  UniqueFd proc(options.proc_self_fd >= 0
                    ? fcntl(options.proc_self_fd, F_DUPFD_CLOEXEC, 0)
                    : open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!proc.valid()) return absl::ErrnoToStatus(errno, "open /proc/self/fd (is /proc mounted?)");
  if (options.drop_supplementary_groups && geteuid() == 0) {
    if (int e = passthrough::DropSupplementaryGroups(); e != 0) {
      return absl::ErrnoToStatus(e, "drop supplementary groups");
    }
  }
  std::optional<passthrough_internal::XattrMap> xattr_map;
  if (!options.xattrmap.empty()) {
    auto m = passthrough_internal::XattrMap::Parse(options.xattrmap);
    if (!m.ok()) return m.status();
    xattr_map = *std::move(m);
  }
  auto fs = std::make_unique<passthrough::PassthroughFs>(std::move(options), std::move(proc));
  fs->set_xattr_map(std::move(xattr_map));
  if (absl::Status s = fs->Init(std::move(root)); !s.ok()) return s;
  return std::unique_ptr<PassthroughBackend>(std::move(fs));
}

}  // namespace virtiofs
