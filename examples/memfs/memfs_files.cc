// memfs, the contents side: open handles, file data through guest iovecs,
// and extended attributes. (memfs.cc holds the tree: names, links,
// permissions and node lifetimes.)
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fuse.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "examples/memfs/memfs.h"
#include "virtiofs/status_macros.h"

namespace memfs {

using virtiofs::Errno;
using virtiofs::Ok;

// Grows or shrinks a file's (or link's) data within capacity: EFBIG for a
// size the file system could never hold, ENOSPC when the room is taken.
Result<void> MemFs::Resize(Inode& n, uint64_t size) {
  const uint64_t old = n.data.size();
  if (size > options_.max_bytes) return Errno{EFBIG};
  // used_bytes_ <= max_bytes always holds, so neither side underflows.
  if (size > old && size - old > options_.max_bytes - used_bytes_) return Errno{ENOSPC};
  n.data.resize(size);  // First: it may throw, and the count must stay true.
  used_bytes_ = used_bytes_ - old + size;
  return Ok();
}

Result<OpenResult> MemFs::NewHandle(Inode& node, uint32_t flags, bool dir) {
  const uint64_t handle = next_handle_++;  // Never reused, as node ids.
  handles_.emplace(handle, Handle{node.id, flags, dir});
  ++node.handles;
  // Only this guest changes memfs, so its page cache stays right across
  // opens.
  return OpenResult{handle, dir ? 0u : uint32_t{FOPEN_KEEP_CACHE}};
}

void MemFs::CloseHandle(uint64_t handle) {
  auto it = handles_.find(handle);
  Inode& node = nodes_.at(it->second.node);  // A handle keeps its node alive.
  handles_.erase(it);
  --node.handles;
  MaybeFree(node);
}

Result<OpenResult> MemFs::OpenNode(const RequestContext& ctx, Inode& n, uint32_t flags) {
  if (n.is_dir()) return Errno{EISDIR};
  // The guest opens special files itself (its pipes, its devices); a
  // symlink it has followed. Neither reaches here but by mistake.
  if (S_ISLNK(n.mode)) return Errno{ELOOP};
  if (!n.is_reg()) return Errno{ENXIO};
  uint32_t want = 0;
  switch (flags & O_ACCMODE) {
    case O_RDONLY:
      want = R_OK;
      break;
    case O_WRONLY:
      want = W_OK;
      break;
    case O_RDWR:
      want = R_OK | W_OK;
      break;
    default:
      return Errno{EINVAL};
  }
  if (flags & O_TRUNC) want |= W_OK;
  if (!Permits(ctx, n, want)) return Errno{EACCES};
  if (flags & O_TRUNC) {
    VIRTIOFS_RETURN_IF_ERROR(Resize(n, 0));
    Touch(n);  // POSIX: even when the file was empty already.
    if (ctx.uid != 0) KillSuid(n);
  }
  return NewHandle(n, flags, false);
}

Result<OpenResult> MemFs::Open(const RequestContext& ctx, uint64_t node, uint32_t flags) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n, Get(node));
  return OpenNode(ctx, *n, flags);
}

Result<CreateResult> MemFs::Create(const RequestContext& ctx, uint64_t parent,
                                   std::string_view name, uint32_t mode, uint32_t flags,
                                   uint32_t umask) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * dir, GetDir(parent));
  if (!Permits(ctx, *dir, X_OK)) return Errno{EACCES};
  if (auto it = dir->entries.find(name); it != dir->entries.end()) {
    if (flags & O_EXCL) return Errno{EEXIST};
    // Without O_EXCL, open(O_CREAT) opens what is there: the guest looked
    // the name up first, but it may be stale.
    Inode& n = nodes_.at(it->second.node);
    VIRTIOFS_ASSIGN_OR_RETURN(OpenResult open, OpenNode(ctx, n, flags & ~uint32_t{O_CREAT}));
    return CreateResult{Reference(n), open};
  }
  VIRTIOFS_ASSIGN_OR_RETURN(dir, DirForNewName(ctx, parent, name));
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n,
                            NewInode(ctx, *dir, S_IFREG | (mode & ~umask & kPermissionBits)));
  AddName(*dir, name, *n);
  // The creator may write the file it made even with mode 0444: open(2)
  // with O_CREAT checks permission only on an existing file.
  VIRTIOFS_ASSIGN_OR_RETURN(OpenResult open, NewHandle(*n, flags, false));
  return CreateResult{Reference(*n), open};
}

Result<CreateResult> MemFs::TmpFile(const RequestContext& ctx, uint64_t parent, uint32_t mode,
                                    uint32_t flags, uint32_t umask) {
  // An O_TMPFILE nobody can write is useless; Linux refuses it.
  if ((flags & O_ACCMODE) == O_RDONLY) return Errno{EINVAL};
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * dir, GetDir(parent));
  if (dir->nlink == 0) return Errno{ENOENT};
  if (!Permits(ctx, *dir, W_OK | X_OK)) return Errno{EACCES};
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n,
                            NewInode(ctx, *dir, S_IFREG | (mode & ~umask & kPermissionBits)));
  // No name (nlink 0): the handle and the guest's reference keep it.
  n->linkable = (flags & O_EXCL) == 0;
  VIRTIOFS_ASSIGN_OR_RETURN(OpenResult open, NewHandle(*n, flags, false));
  return CreateResult{Reference(*n), open};
}

Result<uint32_t> MemFs::Read(const RequestContext&, uint64_t node, const ReadRequest& req,
                             std::span<const iovec> buffers) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Handle * h, GetHandle(req.handle, node));
  if (h->dir) return Errno{EISDIR};
  if ((h->flags & O_ACCMODE) == O_WRONLY) return Errno{EBADF};
  Inode& n = nodes_.at(node);
  const uint64_t size = n.data.size();
  uint64_t pos = std::min<uint64_t>(req.offset, size);
  const uint64_t end = pos + std::min<uint64_t>(req.size, size - pos);  // <= size: no overflow.
  // Straight into guest memory: the one copy the data makes.
  for (const iovec& b : buffers) {
    if (pos == end) break;
    const size_t n_bytes = std::min<uint64_t>(b.iov_len, end - pos);
    std::memcpy(b.iov_base, n.data.data() + pos, n_bytes);
    pos += n_bytes;
  }
  const uint64_t copied = pos - std::min<uint64_t>(req.offset, size);
  if (copied > 0) n.atime = Now();
  return static_cast<uint32_t>(copied);  // <= req.size.
}

Result<uint32_t> MemFs::Write(const RequestContext& ctx, uint64_t node, const WriteRequest& req) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Handle * h, GetHandle(req.handle, node));
  if (h->dir || (h->flags & O_ACCMODE) == O_RDONLY) return Errno{EBADF};
  Inode& n = nodes_.at(node);
  if (req.size == 0) return 0u;
  // O_APPEND is the handle's: the guest's offset may be stale.
  const uint64_t offset = (h->flags & O_APPEND) ? n.data.size() : req.offset;
  if (offset > options_.max_bytes || req.size > options_.max_bytes - offset) return Errno{EFBIG};
  const uint64_t end = offset + req.size;  // <= max_bytes: checked above.
  if (end > n.data.size()) VIRTIOFS_RETURN_IF_ERROR(Resize(n, end));
  uint64_t pos = offset;
  for (const iovec& b : req.data) {
    const size_t n_bytes = std::min<uint64_t>(b.iov_len, end - pos);
    std::memcpy(n.data.data() + pos, b.iov_base, n_bytes);
    pos += n_bytes;
    if (pos == end) break;
  }
  Touch(n);
  if (ctx.uid != 0 || (req.write_flags & FUSE_WRITE_KILL_SUIDGID)) KillSuid(n);
  return static_cast<uint32_t>(pos - offset);
}

// Nothing is buffered, so these only check the handle: a guest sending a
// stale one learns it.
Result<void> MemFs::Flush(const RequestContext&, uint64_t node, uint64_t handle, uint64_t) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Handle * h, GetHandle(handle, node));
  if (h->dir) return Errno{EBADF};
  return Ok();
}

Result<void> MemFs::Fsync(const RequestContext&, uint64_t node, uint64_t handle, bool) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Handle * h, GetHandle(handle, node));
  if (h->dir) return Errno{EBADF};
  return Ok();
}

Result<void> MemFs::Release(const RequestContext&, uint64_t node, uint64_t handle, uint32_t,
                            uint32_t, uint64_t) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Handle * h, GetHandle(handle, node));
  if (h->dir) return Errno{EBADF};
  CloseHandle(handle);
  return Ok();
}

Result<void> MemFs::Fallocate(const RequestContext&, uint64_t node, uint64_t handle,
                              uint64_t offset, uint64_t length, uint32_t mode) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Handle * h, GetHandle(handle, node));
  if (h->dir || (h->flags & O_ACCMODE) == O_RDONLY) return Errno{EBADF};
  if (length == 0) return Errno{EINVAL};
  if (offset > options_.max_bytes || length > options_.max_bytes - offset) return Errno{EFBIG};
  const uint64_t end = offset + length;  // <= max_bytes: checked above.
  Inode& n = nodes_.at(node);
  switch (mode) {
    case 0:  // Reserve: the bytes exist once the size covers them.
      if (end > n.data.size()) VIRTIOFS_RETURN_IF_ERROR(Resize(n, end));
      break;
    case FALLOC_FL_KEEP_SIZE:  // Memory is taken on write: nothing to reserve.
      return Ok();
    case FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE:  // Holes read as zeros.
      if (offset < n.data.size()) {
        std::fill(n.data.begin() + static_cast<ptrdiff_t>(offset),
                  n.data.begin() + static_cast<ptrdiff_t>(std::min<uint64_t>(end, n.data.size())),
                  '\0');
      }
      break;
    default:
      return Errno{EOPNOTSUPP};
  }
  Touch(n);
  return Ok();
}

Result<uint64_t> MemFs::Lseek(const RequestContext&, uint64_t node, uint64_t handle,
                              uint64_t offset, uint32_t whence) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Handle * h, GetHandle(handle, node));
  if (h->dir) return Errno{EBADF};
  const uint64_t size = nodes_.at(node).data.size();
  // memfs stores every byte, so a file is all data with one implicit hole
  // at its end. (The guest answers SEEK_SET/CUR/END itself.)
  switch (whence) {
    case SEEK_DATA:
      if (offset >= size) return Errno{ENXIO};
      return offset;
    case SEEK_HOLE:
      if (offset >= size) return Errno{ENXIO};
      return size;
    default:
      return Errno{EINVAL};
  }
}

// ---- extended attributes ----

// Who may touch attribute `name` of `n`, as Linux's xattr_permission().
Result<void> MemFs::XattrAccess(const RequestContext& ctx, const Inode& n, std::string_view name,
                                bool write) {
  if (name.starts_with("user.")) {
    // On a device or a fifo the mode bits guard the device, not data of the
    // user's: Linux keeps user.* to files and directories.
    if (!n.is_reg() && !n.is_dir()) return Errno{write ? EPERM : ENODATA};
    if (!Permits(ctx, n, write ? W_OK : R_OK)) return Errno{EACCES};
    return Ok();
  }
  if (name.starts_with("trusted.")) {
    // Root's: to others they do not exist.
    if (ctx.uid != 0) return Errno{write ? EPERM : ENODATA};
    return Ok();
  }
  if (name.starts_with("security.")) {
    if (write && ctx.uid != 0) return Errno{EPERM};
    return Ok();
  }
  // system.* would be POSIX ACLs: memfs has none and says so, and the
  // guest falls back to the mode bits.
  return Errno{EOPNOTSUPP};
}

Result<void> MemFs::SetXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                             std::span<const uint8_t> value, uint32_t flags, uint32_t) {
  if ((flags & ~uint32_t{XATTR_CREATE | XATTR_REPLACE}) != 0) return Errno{EINVAL};
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n, Get(node));
  VIRTIOFS_RETURN_IF_ERROR(XattrAccess(ctx, *n, name, true));
  auto it = n->xattrs.find(name);
  if ((flags & XATTR_CREATE) && it != n->xattrs.end()) return Errno{EEXIST};
  if ((flags & XATTR_REPLACE) && it == n->xattrs.end()) return Errno{ENODATA};
  // Attributes count against capacity too, or a guest could fill the
  // host's memory with them.
  const uint64_t old = it == n->xattrs.end() ? 0 : name.size() + it->second.size();
  const uint64_t now = name.size() + value.size();
  if (now > old && now - old > options_.max_bytes - used_bytes_) return Errno{ENOSPC};
  std::string v(reinterpret_cast<const char*>(value.data()), value.size());
  if (it == n->xattrs.end()) {
    n->xattrs.emplace(std::string(name), std::move(v));
  } else {
    it->second = std::move(v);
  }
  used_bytes_ = used_bytes_ - old + now;
  n->ctime = Now();
  return Ok();
}

Result<std::string> MemFs::GetXattr(const RequestContext& ctx, uint64_t node,
                                    std::string_view name) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n, Get(node));
  VIRTIOFS_RETURN_IF_ERROR(XattrAccess(ctx, *n, name, false));
  auto it = n->xattrs.find(name);
  if (it == n->xattrs.end()) return Errno{ENODATA};
  return it->second;
}

Result<std::string> MemFs::ListXattr(const RequestContext& ctx, uint64_t node) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n, Get(node));
  std::string names;
  for (const auto& [name, value] : n->xattrs) {
    // Linux lists trusted.* to root only: their existence is private too.
    if (name.starts_with("trusted.") && ctx.uid != 0) continue;
    names += name;
    names += '\0';
  }
  return names;
}

Result<void> MemFs::RemoveXattr(const RequestContext& ctx, uint64_t node, std::string_view name) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n, Get(node));
  VIRTIOFS_RETURN_IF_ERROR(XattrAccess(ctx, *n, name, true));
  auto it = n->xattrs.find(name);
  if (it == n->xattrs.end()) return Errno{ENODATA};
  used_bytes_ -= it->first.size() + it->second.size();
  n->xattrs.erase(it);
  n->ctime = Now();
  return Ok();
}

Result<void> MemFs::SyncFs(const RequestContext&, uint64_t) {
  return Ok();  // Memory is as durable as memfs gets.
}

}  // namespace memfs
