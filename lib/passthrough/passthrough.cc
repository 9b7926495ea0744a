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
  ScopedCredentials creds(as_root_, ctx.uid, ctx.gid);
  if (!creds.ok()) return reply.Error(creds.error());
  const std::string self = ProcName(*inode);
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
    const uid_t uid = (in.valid & FATTR_UID) ? in.uid : static_cast<uid_t>(-1);
    const gid_t gid = (in.valid & FATTR_GID) ? in.gid : static_cast<gid_t>(-1);
    if (fchownat(inode->fd.get(), "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) {
      return reply.Error(Errno());
    }
  }
  if (in.valid & FATTR_SIZE) {
    if (inode->type != S_IFREG) return reply.Error(inode->type == S_IFDIR ? EISDIR : EINVAL);
    int r;
    if (h) {
      r = ftruncate(h->fd.get(), static_cast<off_t>(in.size));
    } else {
      UniqueFd fd(openat(proc_fd_.get(), self.c_str(), O_WRONLY | O_CLOEXEC));
      if (!fd.valid()) return reply.Error(Errno());
      r = ftruncate(fd.get(), static_cast<off_t>(in.size));
      // HANDLE_KILLPRIV_V2: the guest asks; a root thread keeps CAP_FSETID,
      // so the host would not clear the bits by itself.
      if (r == 0 && in.kill_suidgid()) KillSuidGid(fd.get());
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
    const int r = is_link ? utimensat(inode->fd.get(), "", t, AT_EMPTY_PATH)
                          : utimensat(proc_fd_.get(), self.c_str(), t, 0);
    if (r != 0) return reply.Error(Errno());
  }
  Attributes a;
  if (int e = Attr(*inode, &a); e != 0) return reply.Error(e);
  reply.Ok(a);
}

void PassthroughFs::ReadDir(const RequestContext& ctx, uint64_t, uint64_t handle, uint64_t offset,
                            bool plus, DirReply reply) {
  auto h = handles_.Get(handle);
  if (!h) return reply.Error(EBADF);
  ScopedCredentials creds(as_root_, ctx.uid, ctx.gid);
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
      } else if (DoLookup(*h->inode, name, &e) != 0) {
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
  if (options.inode_file_handles == PassthroughOptions::FileHandles::kMandatory) {
    return absl::UnimplementedError("inode_file_handles=mandatory is not implemented yet");
  }
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
