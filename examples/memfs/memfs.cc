// memfs, the tree side: nodes, names, links, permissions, directories and
// node lifetimes (memfs_files.cc: handles, data and xattrs). Every rule of a
// POSIX file system that a guest can observe, kept in memory.
//
// The guest kernel mounts virtio-fs with default_permissions and checks
// permissions itself; memfs checks them again because a backend must not
// trust the guest (and the guest's view of uid/gid may be stale).
#include "examples/memfs/memfs.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/fuse.h>
#include <linux/limits.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "virtiofs/status_macros.h"

namespace memfs {

using virtiofs::Errno;
using virtiofs::Ok;

namespace {

constexpr uint32_t kBlockSize = 4096;
// As ext4: a file with more names than this is EMLINK.
constexpr uint32_t kMaxLinks = 65000;
// SETATTR bits that change something (and so the node's ctime).
constexpr uint32_t kAttrChanges = FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_SIZE | FATTR_ATIME |
                                  FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW |
                                  FATTR_KILL_SUIDGID;

}  // namespace

timespec MemFs::Now() {
  timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return t;
}

MemFs::MemFs(MemFsOptions options) : options_(options) {
  Inode& root = nodes_[FUSE_ROOT_ID];
  root.id = FUSE_ROOT_ID;
  root.mode = S_IFDIR | (options_.root_mode & kPermissionBits);
  root.uid = options_.root_uid;
  root.gid = options_.root_gid;
  root.nlink = 2;  // "." and, as for every root, ".." (itself).
  root.parent = FUSE_ROOT_ID;
  root.atime = root.mtime = root.ctime = root.btime = Now();
  next_node_ = FUSE_ROOT_ID + 1;
}

uint64_t MemFs::InitFlags() const {
  // READDIRPLUS saves the guest a LOOKUP per entry; EXPORT_SUPPORT because
  // Lookup serves "." and ".."; ATOMIC_O_TRUNC because Open truncates;
  // CACHE_SYMLINKS because a symlink never changes. No lock flags: the guest
  // then keeps locks to itself, right for one guest.
  return FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO | FUSE_EXPORT_SUPPORT | FUSE_ATOMIC_O_TRUNC |
         FUSE_CACHE_SYMLINKS;
}

void MemFs::Destroy() {
  // The guest is gone: it holds no references and no open files any more.
  // The contents stay, for the next mount.
  std::lock_guard lock(mu_);
  handles_.clear();
  std::vector<uint64_t> ids;
  for (auto& [id, n] : nodes_) {
    n.lookups = 0;
    n.handles = 0;
    ids.push_back(id);
  }
  for (uint64_t id : ids) MaybeFree(nodes_.at(id));
}

// ---- helpers (mu_ held) ----

MemFs::Inode* MemFs::Find(uint64_t id) {
  auto it = nodes_.find(id);
  return it == nodes_.end() ? nullptr : &it->second;
}

// Node ids come from the guest: look them up, never trust them.
Result<MemFs::Inode*> MemFs::Get(uint64_t id) {
  Inode* n = Find(id);
  if (n == nullptr) return Errno{ENOENT};
  return n;
}

Result<MemFs::Inode*> MemFs::GetDir(uint64_t id) {
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n, Get(id));
  if (!n->is_dir()) return Errno{ENOTDIR};
  return n;
}

// A handle must exist and belong to the node the guest names with it.
Result<MemFs::Handle*> MemFs::GetHandle(uint64_t handle, uint64_t node) {
  auto it = handles_.find(handle);
  if (it == handles_.end() || it->second.node != node) return Errno{EBADF};
  return &it->second;
}

Result<MemFs::Inode*> MemFs::Child(Inode& dir, std::string_view name) {
  auto it = dir.entries.find(name);
  if (it == dir.entries.end()) return Errno{ENOENT};
  return Get(it->second.node);
}

// What generic_permission() decides, with the caller's fsuid and primary
// fsgid only: RequestContext carries no supplementary groups (the guest
// kernel has checked those).
bool MemFs::Permits(const RequestContext& ctx, const Inode& n, uint32_t mask) {
  mask &= R_OK | W_OK | X_OK;
  if (ctx.uid == 0) {
    // Root reads and writes anything, but executes only what someone may:
    // a file without any x bit is not a program.
    return (mask & X_OK) == 0 || n.is_dir() || (n.mode & 0111) != 0;
  }
  uint32_t bits = n.mode;
  if (ctx.uid == n.uid) {
    bits >>= 6;
  } else if (ctx.gid == n.gid) {
    bits >>= 3;
  }
  return (bits & mask) == mask;
}

// The sticky bit (as on /tmp): in such a directory only the owner of the
// name's node, the directory's owner or root may remove or rename it.
bool MemFs::MayDelete(const RequestContext& ctx, const Inode& dir, const Inode& victim) {
  return (dir.mode & S_ISVTX) == 0 || ctx.uid == 0 || ctx.uid == victim.uid || ctx.uid == dir.uid;
}

// A write, truncate or chown by an unprivileged caller must not leave a
// setuid program behind that runs someone else's code (setgid counts only
// with group execute; without it the bit means mandatory locking).
void MemFs::KillSuid(Inode& n) {
  n.mode &= ~S_ISUID;
  if (n.mode & S_IXGRP) n.mode &= ~S_ISGID;
}

void MemFs::Touch(Inode& n) { n.mtime = n.ctime = Now(); }

// The checks of a creating operation, in the order Linux makes them: search
// the directory (EACCES), find the name taken (EEXIST), then write it.
Result<MemFs::Inode*> MemFs::DirForNewName(const RequestContext& ctx, uint64_t parent,
                                           std::string_view name) {
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * dir, GetDir(parent));
  if (dir->nlink == 0) return Errno{ENOENT};  // Removed: it takes no new names.
  if (!Permits(ctx, *dir, X_OK)) return Errno{EACCES};
  if (dir->entries.contains(name)) return Errno{EEXIST};
  if (!Permits(ctx, *dir, W_OK)) return Errno{EACCES};
  return dir;
}

Result<MemFs::Inode*> MemFs::NewInode(const RequestContext& ctx, const Inode& parent,
                                      uint32_t mode) {
  if (nodes_.size() >= options_.max_nodes) return Errno{ENOSPC};
  // 64 bits never wrap, so an id is never reused: the guest can hold a
  // stale id as long as it likes and never reach another node with it.
  const uint64_t id = next_node_++;
  Inode& n = nodes_[id];
  n.id = id;
  n.mode = mode;
  n.uid = ctx.uid;
  n.gid = ctx.gid;
  // A setgid directory hands its group down, and its setgid bit to new
  // subdirectories, so a shared project tree keeps one group.
  if (parent.mode & S_ISGID) {
    n.gid = parent.gid;
    if (n.is_dir()) n.mode |= S_ISGID;
  }
  n.atime = n.mtime = n.ctime = n.btime = Now();
  return &n;
}

// Cookies only grow, so a guest continuing a readdir from an offset sees
// every entry that was there all along exactly once, whatever changed.
void MemFs::AddName(Inode& dir, std::string_view name, Inode& node) {
  const uint64_t cookie = dir.next_cookie++;
  dir.entries.emplace(std::string(name), Dirent{node.id, cookie});
  dir.by_cookie.emplace(cookie, std::string(name));
  ++node.nlink;
  if (node.is_dir()) {
    ++dir.nlink;  // The subdirectory's "..".
    node.parent = dir.id;
  }
  Touch(dir);
  node.ctime = dir.ctime;
}

void MemFs::RemoveName(Inode& dir, std::string_view name, Inode& node) {
  auto it = dir.entries.find(name);
  dir.by_cookie.erase(it->second.cookie);
  dir.entries.erase(it);
  --node.nlink;
  if (node.is_dir()) --dir.nlink;
  Touch(dir);
  node.ctime = dir.ctime;
}

// Unlink, rmdir, or replaced by a rename: the node loses this name (a
// directory its "." too) and goes if nothing else refers to it. `node` may
// be freed: do not use it afterwards.
void MemFs::DropName(Inode& dir, std::string_view name, Inode& node) {
  RemoveName(dir, name, node);
  if (node.is_dir()) node.nlink = 0;
  // A file that lost its last name cannot get one back (link(2) of an
  // open, deleted file is ENOENT).
  if (node.nlink == 0) node.linkable = false;
  MaybeFree(node);
}

// A node lives while anything can reach it: a name, a reference the guest
// holds (the lookup count: the guest may still send its id), or an open
// handle. The root always lives.
void MemFs::MaybeFree(Inode& n) {
  if (n.id == FUSE_ROOT_ID || n.nlink > 0 || n.lookups > 0 || n.handles > 0) return;
  used_bytes_ -= n.data.size() + XattrBytes(n);
  nodes_.erase(n.id);
}

uint64_t MemFs::XattrBytes(const Inode& n) {
  uint64_t bytes = 0;
  for (const auto& [name, value] : n.xattrs) bytes += name.size() + value.size();
  return bytes;
}

Attributes MemFs::Attr(const Inode& n) const {
  Attributes a;
  struct stat& st = a.st;
  st.st_ino = n.id;
  st.st_mode = n.mode;
  st.st_nlink = n.nlink;
  st.st_uid = n.uid;
  st.st_gid = n.gid;
  st.st_rdev = n.rdev;
  st.st_size = static_cast<off_t>(n.data.size());
  st.st_blksize = kBlockSize;
  st.st_blocks = static_cast<blkcnt_t>((n.data.size() + 511) / 512);
  st.st_atim = n.atime;
  st.st_mtim = n.mtime;
  st.st_ctim = n.ctime;
  a.timeout = options_.timeout;
  return a;
}

Entry MemFs::MakeEntry(const Inode& n) const {
  Entry e;
  e.node_id = n.id;
  e.generation = 0;  // Ids are never reused, so one generation is enough.
  e.attr = Attr(n);
  e.entry_timeout = options_.timeout;
  return e;
}

// Every entry handed to the guest is a reference it will Forget later.
Entry MemFs::Reference(Inode& n) {
  ++n.lookups;
  return MakeEntry(n);
}

void MemFs::ForgetLocked(uint64_t node, uint64_t nlookup) {
  Inode* n = Find(node);
  if (n == nullptr) return;  // A confused guest: nothing to do.
  n->lookups -= std::min(n->lookups, nlookup);
  MaybeFree(*n);
}

// Walks up from `node` through the directories' ".." links.
bool MemFs::IsAncestor(uint64_t ancestor, uint64_t node) {
  for (uint64_t id = node;;) {
    if (id == ancestor) return true;
    const Inode* n = Find(id);
    if (id == FUSE_ROOT_ID || n == nullptr) return false;
    id = n->parent;
  }
}

// ---- nodes ----

Result<Entry> MemFs::Lookup(const RequestContext& ctx, uint64_t parent, std::string_view name) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * dir, GetDir(parent));
  if (!Permits(ctx, *dir, X_OK)) return Errno{EACCES};
  if (dir->nlink == 0) return Errno{ENOENT};  // Removed: empty, even of "..".
  Inode* n = nullptr;
  if (name == ".") {
    n = dir;
  } else if (name == "..") {
    VIRTIOFS_ASSIGN_OR_RETURN(n, Get(dir->parent));
  } else {
    VIRTIOFS_ASSIGN_OR_RETURN(n, Child(*dir, name));
  }
  return Reference(*n);
}

void MemFs::Forget(uint64_t node, uint64_t nlookup) {
  std::lock_guard lock(mu_);
  ForgetLocked(node, nlookup);
}

void MemFs::BatchForget(std::span<const ForgetItem> items) {
  std::lock_guard lock(mu_);
  for (const ForgetItem& it : items) ForgetLocked(it.node_id, it.nlookup);
}

Result<Attributes> MemFs::GetAttr(const RequestContext&, uint64_t node,
                                  std::optional<uint64_t> handle) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n, Get(node));
  if (handle) VIRTIOFS_RETURN_IF_ERROR(GetHandle(*handle, node));
  return Attr(*n);
}

Result<Attributes> MemFs::SetAttr(const RequestContext& ctx, uint64_t node,
                                  const SetAttrRequest& sa) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n, Get(node));
  Handle* h = nullptr;
  if (sa.handle) {
    VIRTIOFS_ASSIGN_OR_RETURN(h, GetHandle(*sa.handle, node));
  }
  const uint32_t v = sa.valid;
  const bool owner = ctx.uid == 0 || ctx.uid == n->uid;

  // Every check first: a refused request changes nothing.
  if ((v & FATTR_MODE) && !owner) return Errno{EPERM};
  if ((v & (FATTR_UID | FATTR_GID)) && ctx.uid != 0) {
    // Only root gives a node away; its owner may move it to a group of his.
    const bool new_uid = (v & FATTR_UID) && sa.uid != n->uid;
    const bool new_gid = (v & FATTR_GID) && sa.gid != n->gid;
    if (ctx.uid != n->uid || new_uid || (new_gid && sa.gid != ctx.gid)) return Errno{EPERM};
  }
  if (v & FATTR_SIZE) {
    if (n->is_dir()) return Errno{EISDIR};
    if (!n->is_reg()) return Errno{EINVAL};
    // ftruncate through a handle open for writing needs no more; truncate
    // by name needs write permission.
    const bool writable = h != nullptr && (h->flags & O_ACCMODE) != O_RDONLY;
    if (!writable && !Permits(ctx, *n, W_OK)) return Errno{EACCES};
  }
  const bool atime = v & (FATTR_ATIME | FATTR_ATIME_NOW);
  const bool mtime = v & (FATTR_MTIME | FATTR_MTIME_NOW);
  if (atime || mtime) {
    // utimensat(2): a chosen time needs ownership; "now" for both also
    // write permission (touch on a file one may write).
    const bool chosen = (atime && !(v & FATTR_ATIME_NOW)) || (mtime && !(v & FATTR_MTIME_NOW));
    if (chosen && !owner) return Errno{EPERM};
    if (!chosen && !owner && !Permits(ctx, *n, W_OK)) return Errno{EACCES};
  }

  const timespec now = Now();
  if (v & FATTR_SIZE) {
    VIRTIOFS_RETURN_IF_ERROR(Resize(*n, sa.size));  // The only change that can fail.
    n->mtime = now;  // Even at the same size, as Linux's truncate does.
    if (ctx.uid != 0) KillSuid(*n);
  }
  if (v & FATTR_UID) n->uid = sa.uid;
  if (v & FATTR_GID) n->gid = sa.gid;
  if ((v & (FATTR_UID | FATTR_GID)) && !n->is_dir()) KillSuid(*n);  // chown(2) always does.
  if (v & FATTR_MODE) {
    uint32_t mode = sa.mode & kPermissionBits;
    // chmod(2): setgid for a group one is not in would be a way into it.
    if (ctx.uid != 0 && ctx.gid != n->gid) mode &= ~S_ISGID;
    n->mode = (n->mode & S_IFMT) | mode;
  }
  if (atime) n->atime = (v & FATTR_ATIME_NOW) ? now : sa.atime;
  if (mtime) n->mtime = (v & FATTR_MTIME_NOW) ? now : sa.mtime;
  if (sa.kill_suidgid()) KillSuid(*n);
  if (v & FATTR_CTIME) {
    n->ctime = sa.ctime;
  } else if (v & kAttrChanges) {
    n->ctime = now;
  }
  return Attr(*n);
}

Result<StatxResult> MemFs::Statx(const RequestContext&, uint64_t node,
                                 std::optional<uint64_t> handle, uint32_t, uint32_t) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n, Get(node));
  if (handle) VIRTIOFS_RETURN_IF_ERROR(GetHandle(*handle, node));
  // statx adds what stat lacks: the birth time.
  const struct stat st = Attr(*n).st;
  StatxResult r;
  struct statx& s = r.stx;
  s.stx_mask = STATX_BASIC_STATS | STATX_BTIME;
  s.stx_blksize = kBlockSize;
  s.stx_nlink = n->nlink;
  s.stx_uid = n->uid;
  s.stx_gid = n->gid;
  s.stx_mode = static_cast<uint16_t>(n->mode);
  s.stx_ino = n->id;
  s.stx_size = n->data.size();
  s.stx_blocks = static_cast<uint64_t>(st.st_blocks);
  auto ts = [](const timespec& t) {
    return statx_timestamp{t.tv_sec, static_cast<uint32_t>(t.tv_nsec), 0};
  };
  s.stx_atime = ts(n->atime);
  s.stx_btime = ts(n->btime);
  s.stx_ctime = ts(n->ctime);
  s.stx_mtime = ts(n->mtime);
  s.stx_rdev_major = major(n->rdev);
  s.stx_rdev_minor = minor(n->rdev);
  r.timeout = options_.timeout;
  return r;
}

Result<std::string> MemFs::ReadLink(const RequestContext&, uint64_t node) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n, Get(node));
  if (!S_ISLNK(n->mode)) return Errno{EINVAL};
  return n->data;
}

Result<Entry> MemFs::Symlink(const RequestContext& ctx, uint64_t parent, std::string_view name,
                             std::string_view target) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * dir, DirForNewName(ctx, parent, name));
  // A symlink's permission bits mean nothing: always 0777, as Linux.
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n, NewInode(ctx, *dir, S_IFLNK | 0777));
  if (Result<void> r = Resize(*n, target.size()); !r.ok()) {
    MaybeFree(*n);  // No name, no reference yet: goes at once.
    return Errno{r.error()};
  }
  n->data.assign(target);
  AddName(*dir, name, *n);
  return Reference(*n);
}

Result<Entry> MemFs::Mknod(const RequestContext& ctx, uint64_t parent, std::string_view name,
                           uint32_t mode, uint32_t rdev, uint32_t umask) {
  uint32_t type = mode & S_IFMT;
  switch (type) {
    case 0:  // mknod(2): no type is a regular file.
      type = S_IFREG;
      break;
    case S_IFREG:
    case S_IFIFO:
    case S_IFSOCK:
      break;
    case S_IFCHR:
    case S_IFBLK:
      // A device node is a door to hardware: only root makes one. (memfs
      // keeps only its metadata; the guest's kernel drives the device.)
      if (ctx.uid != 0) return Errno{EPERM};
      break;
    case S_IFDIR:
      return Errno{EPERM};  // That is mkdir's job.
    default:
      return Errno{EINVAL};
  }
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * dir, DirForNewName(ctx, parent, name));
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n,
                            NewInode(ctx, *dir, type | (mode & ~umask & kPermissionBits)));
  if (S_ISCHR(type) || S_ISBLK(type)) n->rdev = rdev;
  AddName(*dir, name, *n);
  return Reference(*n);
}

Result<Entry> MemFs::Mkdir(const RequestContext& ctx, uint64_t parent, std::string_view name,
                           uint32_t mode, uint32_t umask) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * dir, DirForNewName(ctx, parent, name));
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n,
                            NewInode(ctx, *dir, S_IFDIR | (mode & ~umask & kPermissionBits)));
  n->nlink = 1;  // Its "."; the name in `dir` makes 2.
  AddName(*dir, name, *n);
  return Reference(*n);
}

Result<void> MemFs::Unlink(const RequestContext& ctx, uint64_t parent, std::string_view name) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * dir, GetDir(parent));
  if (!Permits(ctx, *dir, X_OK)) return Errno{EACCES};
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n, Child(*dir, name));
  // Linux's order (may_delete): permission, sticky bit, then the type.
  if (!Permits(ctx, *dir, W_OK)) return Errno{EACCES};
  if (!MayDelete(ctx, *dir, *n)) return Errno{EPERM};
  if (n->is_dir()) return Errno{EISDIR};  // Linux's answer (POSIX allows EPERM).
  DropName(*dir, name, *n);
  return Ok();
}

Result<void> MemFs::Rmdir(const RequestContext& ctx, uint64_t parent, std::string_view name) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * dir, GetDir(parent));
  if (!Permits(ctx, *dir, X_OK)) return Errno{EACCES};
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n, Child(*dir, name));
  if (!Permits(ctx, *dir, W_OK)) return Errno{EACCES};
  if (!MayDelete(ctx, *dir, *n)) return Errno{EPERM};
  if (!n->is_dir()) return Errno{ENOTDIR};
  if (!n->entries.empty()) return Errno{ENOTEMPTY};
  DropName(*dir, name, *n);
  return Ok();
}

Result<void> MemFs::Rename(const RequestContext& ctx, uint64_t parent, std::string_view name,
                           uint64_t new_parent, std::string_view new_name, uint32_t flags) {
  // RENAME_WHITEOUT exists for overlayfs over a disk file system; memfs
  // does not offer it.
  if ((flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) != 0 ||
      flags == (RENAME_NOREPLACE | RENAME_EXCHANGE)) {
    return Errno{EINVAL};
  }
  const bool exchange = (flags & RENAME_EXCHANGE) != 0;
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * from, GetDir(parent));
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * to, GetDir(new_parent));
  if (!Permits(ctx, *from, W_OK | X_OK) || !Permits(ctx, *to, W_OK | X_OK)) return Errno{EACCES};
  if (to->nlink == 0) return Errno{ENOENT};
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * src, Child(*from, name));
  Inode* dst = nullptr;
  if (auto it = to->entries.find(new_name); it != to->entries.end()) {
    VIRTIOFS_ASSIGN_OR_RETURN(dst, Get(it->second.node));
  }
  if (exchange && dst == nullptr) return Errno{ENOENT};
  if ((flags & RENAME_NOREPLACE) && dst != nullptr) return Errno{EEXIST};
  // Two names of one node (or the same name): POSIX says do nothing.
  if (src == dst) return Ok();
  if (!MayDelete(ctx, *from, *src) || (dst && !MayDelete(ctx, *to, *dst))) return Errno{EPERM};
  // A directory moved into its own subtree would cut that subtree off
  // from the root (and make ".." loop).
  if (src->is_dir() && IsAncestor(src->id, to->id)) return Errno{EINVAL};
  if (exchange) {
    if (dst->is_dir() && IsAncestor(dst->id, from->id)) return Errno{EINVAL};
  } else if (dst != nullptr) {
    if (src->is_dir() && !dst->is_dir()) return Errno{ENOTDIR};
    if (!src->is_dir() && dst->is_dir()) return Errno{EISDIR};
    if (dst->is_dir() && !dst->entries.empty()) return Errno{ENOTEMPTY};
  }
  // A directory changing parent rewrites its "..": that is a write to it.
  if (from != to) {
    if (src->is_dir() && !Permits(ctx, *src, W_OK)) return Errno{EACCES};
    if (exchange && dst->is_dir() && !Permits(ctx, *dst, W_OK)) return Errno{EACCES};
  }

  if (exchange) {
    // Each name keeps its place (and readdir offset); the nodes swap.
    from->entries.find(name)->second.node = dst->id;
    to->entries.find(new_name)->second.node = src->id;
    if (from != to) {
      if (src->is_dir()) {
        --from->nlink;
        ++to->nlink;
        src->parent = to->id;
      }
      if (dst->is_dir()) {
        --to->nlink;
        ++from->nlink;
        dst->parent = from->id;
      }
    }
    Touch(*from);
    Touch(*to);
    src->ctime = dst->ctime = from->ctime;
    return Ok();
  }
  if (dst != nullptr) DropName(*to, new_name, *dst);  // May free dst.
  RemoveName(*from, name, *src);
  AddName(*to, new_name, *src);
  return Ok();
}

Result<Entry> MemFs::Link(const RequestContext& ctx, uint64_t node, uint64_t new_parent,
                          std::string_view new_name) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n, Get(node));
  if (n->is_dir()) return Errno{EPERM};  // A second name would make the tree a graph.
  // Only an O_TMPFILE file made to be linked gets a first name this way.
  if (n->nlink == 0 && !n->linkable) return Errno{ENOENT};
  if (n->nlink >= kMaxLinks) return Errno{EMLINK};
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * dir, DirForNewName(ctx, new_parent, new_name));
  AddName(*dir, new_name, *n);
  return Reference(*n);
}

Result<void> MemFs::Access(const RequestContext& ctx, uint64_t node, uint32_t mask) {
  if ((mask & ~uint32_t{R_OK | W_OK | X_OK}) != 0) return Errno{EINVAL};
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * n, Get(node));
  if (!Permits(ctx, *n, mask)) return Errno{EACCES};  // F_OK (0) always passes.
  return Ok();
}

Result<struct statvfs> MemFs::StatFs(const RequestContext&, uint64_t node) {
  std::lock_guard lock(mu_);
  VIRTIOFS_RETURN_IF_ERROR(Get(node));
  struct statvfs s {};
  s.f_bsize = s.f_frsize = kBlockSize;
  s.f_blocks = options_.max_bytes / kBlockSize;
  s.f_bfree = s.f_bavail = (options_.max_bytes - used_bytes_) / kBlockSize;
  s.f_files = options_.max_nodes;
  s.f_ffree = s.f_favail =
      options_.max_nodes - std::min<uint64_t>(nodes_.size(), options_.max_nodes);
  s.f_namemax = NAME_MAX;
  return s;
}

// ---- directories ----

Result<OpenResult> MemFs::OpenDir(const RequestContext& ctx, uint64_t node, uint32_t) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Inode * dir, GetDir(node));
  if (!Permits(ctx, *dir, R_OK)) return Errno{EACCES};
  return NewHandle(*dir, O_RDONLY, true);
}

Result<void> MemFs::ReadDir(const RequestContext&, uint64_t node, uint64_t handle, uint64_t offset,
                            bool plus, DirReply& out) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Handle * h, GetHandle(handle, node));
  if (!h->dir) return Errno{ENOTDIR};
  Inode& dir = nodes_.at(node);
  // Positions: 0 is ".", 1 is "..", then each entry's cookie (from 2). An
  // entry carries position + 1: where the next call starts.
  auto add = [&](std::string_view name, Inode& n, uint64_t next) {
    if (!plus) return out.Add(name, n.id, (n.mode & S_IFMT) >> 12, next);
    // The guest takes no reference on "." and "..": give no node id.
    const bool dots = name == "." || name == "..";
    Entry e = MakeEntry(n);
    if (dots) e.node_id = 0;
    if (!out.AddPlus(name, e, next)) return false;
    if (!dots) ++n.lookups;  // Only an entry that fit is a reference.
    return true;
  };
  if (offset == 0 && !add(".", dir, 1)) return Ok();
  if (offset <= 1) {
    Inode* parent = Find(dir.parent);  // Gone if `dir` was removed.
    if (!add("..", parent != nullptr ? *parent : dir, 2)) return Ok();
  }
  for (auto it = dir.by_cookie.lower_bound(std::max<uint64_t>(offset, 2));
       it != dir.by_cookie.end(); ++it) {
    Inode& child = nodes_.at(dir.entries.find(it->second)->second.node);
    if (!add(it->second, child, it->first + 1)) break;
  }
  dir.atime = Now();
  return Ok();
}

Result<void> MemFs::ReleaseDir(const RequestContext&, uint64_t node, uint64_t handle, uint32_t) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Handle * h, GetHandle(handle, node));
  if (!h->dir) return Errno{EBADF};
  CloseHandle(handle);
  return Ok();
}

Result<void> MemFs::FsyncDir(const RequestContext&, uint64_t node, uint64_t handle, bool) {
  std::lock_guard lock(mu_);
  VIRTIOFS_ASSIGN_OR_RETURN(Handle * h, GetHandle(handle, node));
  if (!h->dir) return Errno{EBADF};
  return Ok();
}

// ---- introspection ----

size_t MemFs::node_count() const {
  std::lock_guard lock(mu_);
  return nodes_.size();
}

size_t MemFs::handle_count() const {
  std::lock_guard lock(mu_);
  return handles_.size();
}

uint64_t MemFs::lookup_count(uint64_t node) const {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(node);
  return it == nodes_.end() ? 0 : it->second.lookups;
}

uint64_t MemFs::used_bytes() const {
  std::lock_guard lock(mu_);
  return used_bytes_;
}

}  // namespace memfs
