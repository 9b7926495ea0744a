// SyncFileSystem: the Backend interface for file systems that answer every
// request before returning, and SyncAdapter, which serves one as a Backend.
//
// Each method has the name and arguments of the Backend method of the same
// operation (backend.h), but returns its answer instead of taking a Reply:
//   Reply<T>    -> Result<T>       (a value, or Errno{e})
//   Reply<void> -> Result<void>    (Ok(), or Errno{e})
//   ReadReply   -> Result<uint32_t>, the data written into `buffers`
//   DirReply    -> Result<void>, the entries added to `out`
// Every method defaults to ENOSYS, so a file system implements only what it
// serves. A method runs on the worker thread of the queue the request came
// from, and several queues run at once: methods must be thread-safe.
//
// Errors: return the errno a local file system would (the guest's
// applications see it as is): ENOENT vs ENOTDIR vs EACCES matter. A positive
// errno only; anything else becomes EIO. Throwing is a bug, but a
// std::exception (or anything else) that escapes is caught by SyncAdapter,
// logged, and answered EIO; it never reaches the library.
//
// Untrusted input: the library checks the wire format (names are 1..NAME_MAX
// bytes without '/' or NUL; "." and ".." reach only Lookup), but node ids and
// handles are the guest's claims. Look each one up; an unknown node id is
// ENOENT, an unknown handle EBADF, never a crash.
//
// Lookup counts (the rule the guest kernel relies on to free its inodes):
//   - Every Entry with a non-zero node_id that Lookup, Mknod, Mkdir, Symlink,
//     Link, Create or TmpFile returns successfully is one more reference the
//     guest holds on that node: add 1 to the node's lookup count.
//   - ReadDir with plus: each DirReply::AddPlus that returns true, with a
//     non-zero node_id, is one more reference too. One that returns false was
//     not added and is not a reference. Give "." and ".." node_id 0 (the
//     guest takes no reference on them).
//   - Forget(node, n) and BatchForget subtract n. When the count reaches 0
//     the guest no longer knows the node id: a node that also has no names
//     left (nlink 0) and no open handles can be freed.
//   - A node id must not be given to another node while its count is above
//     0; the simplest rule is never to reuse one (64-bit counters).
//   - Destroy: every count drops to 0 and every handle is closed.
//   - FUSE_ROOT_ID (1) is the root directory; the guest never looks it up or
//     forgets it.
//
// Ownership: string_views and spans are valid during the call only; copy
// what you keep. `buffers` (Read) and WriteRequest::data point into guest
// memory, which the guest may change at any time: copy, do not parse twice.
#ifndef VIRTIOFS_SYNC_FILE_SYSTEM_H_
#define VIRTIOFS_SYNC_FILE_SYSTEM_H_

#include <sys/statvfs.h>
#include <sys/uio.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "virtiofs/backend.h"
#include "virtiofs/result.h"

namespace virtiofs {

class SyncFileSystem {
 public:
  virtual ~SyncFileSystem() = default;

  // ---- session ----

  // FUSE_INIT flags the file system honours (see Backend::InitFlags), e.g.
  // FUSE_DO_READDIRPLUS, FUSE_EXPORT_SUPPORT (Lookup serves "." and ".."),
  // FUSE_ATOMIC_O_TRUNC (Open handles O_TRUNC). Default: none.
  virtual uint64_t InitFlags() const { return 0; }
  // The negotiated protocol minor and flags.
  virtual void Init(uint32_t minor, uint64_t flags) { (void)minor, (void)flags; }
  // The guest unmounted, or the device stopped: every lookup count drops to
  // 0 and every handle is closed. What the file system stores may stay (a
  // later session can mount it again).
  virtual void Destroy() {}

  // ---- nodes ----

  // The entry `name` in directory `parent` (one lookup reference; "." and
  // ".." too, with FUSE_EXPORT_SUPPORT). Errors: ENOENT (no such name, or
  // unknown parent), ENOTDIR (parent is not a directory), EACCES (no search
  // permission on parent).
  virtual Result<Entry> Lookup(const RequestContext& ctx, uint64_t parent, std::string_view name);
  // The guest drops `nlookup` references to `node` (no answer). Unknown
  // nodes and counts larger than held are ignored (clamped).
  virtual void Forget(uint64_t node, uint64_t nlookup);
  // Forget for each item. Default: calls Forget.
  virtual void BatchForget(std::span<const ForgetItem> items);
  // Attributes of `node`; `handle` when the guest asks through an open file
  // (fstat). Errors: ENOENT, EBADF (unknown handle).
  virtual Result<Attributes> GetAttr(const RequestContext& ctx, uint64_t node,
                                     std::optional<uint64_t> handle);
  // Changes the attributes named by attr.valid (FATTR_MODE, FATTR_UID,
  // FATTR_GID, FATTR_SIZE, FATTR_ATIME(_NOW), FATTR_MTIME(_NOW), FATTR_CTIME,
  // FATTR_FH, FATTR_KILL_SUIDGID) and returns the new attributes. Errors:
  // ENOENT, EBADF, EPERM (chmod/chown/set times by a non-owner), EACCES (no
  // write permission to truncate or touch), EISDIR (truncate a directory),
  // EINVAL (truncate a non-regular file), EFBIG, ENOSPC.
  virtual Result<Attributes> SetAttr(const RequestContext& ctx, uint64_t node,
                                     const SetAttrRequest& attr);
  // STATX (7.39): attributes in statx(2) form, with birth time. Errors as
  // GetAttr; ENOSYS makes the guest fall back to GetAttr.
  virtual Result<StatxResult> Statx(const RequestContext& ctx, uint64_t node,
                                    std::optional<uint64_t> handle, uint32_t sx_flags,
                                    uint32_t sx_mask);
  // The target of symlink `node`. Errors: ENOENT, EINVAL (not a symlink).
  virtual Result<std::string> ReadLink(const RequestContext& ctx, uint64_t node);
  // Creating operations: a new name in `parent`, one lookup reference on the
  // returned node. Common errors: ENOENT (unknown or removed parent),
  // ENOTDIR, EEXIST (the name exists), EACCES (no write and search
  // permission on parent), ENOSPC. `umask` is the caller's: apply it to
  // `mode` (harmless if the guest already did).
  virtual Result<Entry> Symlink(const RequestContext& ctx, uint64_t parent, std::string_view name,
                                std::string_view target);
  // Regular files, FIFOs, sockets, character and block devices (`rdev`).
  // Also EPERM (a directory, or a device node by a non-root caller), EINVAL
  // (an unknown file type).
  virtual Result<Entry> Mknod(const RequestContext& ctx, uint64_t parent, std::string_view name,
                              uint32_t mode, uint32_t rdev, uint32_t umask);
  virtual Result<Entry> Mkdir(const RequestContext& ctx, uint64_t parent, std::string_view name,
                              uint32_t mode, uint32_t umask);
  // Removes a non-directory name. Errors: ENOENT, ENOTDIR, EISDIR (a
  // directory), EACCES, EPERM (sticky directory, caller owns neither).
  virtual Result<void> Unlink(const RequestContext& ctx, uint64_t parent, std::string_view name);
  // Removes an empty directory. Errors: ENOENT, ENOTDIR, ENOTEMPTY, EACCES,
  // EPERM (sticky), EBUSY (the root).
  virtual Result<void> Rmdir(const RequestContext& ctx, uint64_t parent, std::string_view name);
  // Moves `parent`/`name` to `new_parent`/`new_name`, replacing what is
  // there. `flags`: RENAME_NOREPLACE (EEXIST if the new name exists),
  // RENAME_EXCHANGE (swap both names; ENOENT if either is missing).
  // Errors: ENOENT, ENOTDIR (a directory over a non-directory), EISDIR (a
  // non-directory over a directory), ENOTEMPTY (over a non-empty
  // directory), EINVAL (a directory into itself or its subtree, unknown
  // flags, RENAME_WHITEOUT unsupported), EACCES, EPERM (sticky).
  virtual Result<void> Rename(const RequestContext& ctx, uint64_t parent, std::string_view name,
                              uint64_t new_parent, std::string_view new_name, uint32_t flags);
  // A new name `new_parent`/`new_name` for `node` (one lookup reference).
  // Errors: ENOENT, EEXIST, EPERM (a directory), EACCES, EMLINK.
  virtual Result<Entry> Link(const RequestContext& ctx, uint64_t node, uint64_t new_parent,
                             std::string_view new_name);
  // access(2): `mask` is F_OK or R_OK | W_OK | X_OK. Errors: ENOENT, EACCES.
  virtual Result<void> Access(const RequestContext& ctx, uint64_t node, uint32_t mask);
  // statvfs(2) of the file system holding `node`. Errors: ENOENT.
  virtual Result<struct statvfs> StatFs(const RequestContext& ctx, uint64_t node);

  // ---- files ----

  // Opens `node` (flags: O_RDONLY/O_WRONLY/O_RDWR, O_APPEND, O_TRUNC with
  // FUSE_ATOMIC_O_TRUNC, ...) and returns a handle the guest sends back
  // with Read, Write, Flush, Fsync and finally Release. Errors: ENOENT,
  // EACCES, EISDIR (a directory), ELOOP (a symlink), ENXIO (a special file).
  virtual Result<OpenResult> Open(const RequestContext& ctx, uint64_t node, uint32_t flags);
  // Creates and opens a regular file (one lookup reference). Without O_EXCL
  // an existing file is opened instead; with it, EEXIST. Errors as Mknod
  // and Open.
  virtual Result<CreateResult> Create(const RequestContext& ctx, uint64_t parent,
                                      std::string_view name, uint32_t mode, uint32_t flags,
                                      uint32_t umask);
  // O_TMPFILE: a regular file with no name (nlink 0) in `parent`, opened
  // (one lookup reference). Link may name it later unless flags has O_EXCL.
  virtual Result<CreateResult> TmpFile(const RequestContext& ctx, uint64_t parent, uint32_t mode,
                                       uint32_t flags, uint32_t umask);
  // Copies up to req.size bytes at req.offset into `buffers` (guest memory,
  // at most req.size bytes in all) and returns how many: fewer than asked
  // means end of file. Errors: EBADF (unknown handle, or not open for
  // reading), EISDIR.
  virtual Result<uint32_t> Read(const RequestContext& ctx, uint64_t node, const ReadRequest& req,
                                std::span<const iovec> buffers);
  // Writes the req.size bytes of req.data at req.offset (at the end with
  // O_APPEND) and returns how many were written. Errors: EBADF (unknown
  // handle or not open for writing), EFBIG, ENOSPC.
  virtual Result<uint32_t> Write(const RequestContext& ctx, uint64_t node, const WriteRequest& req);
  // close(2) of one file descriptor sharing `handle` (there may be more).
  // Errors: EBADF.
  virtual Result<void> Flush(const RequestContext& ctx, uint64_t node, uint64_t handle,
                             uint64_t lock_owner);
  // The last close: `handle` is no longer valid afterwards. Errors: EBADF.
  virtual Result<void> Release(const RequestContext& ctx, uint64_t node, uint64_t handle,
                               uint32_t flags, uint32_t release_flags, uint64_t lock_owner);
  // Errors: EBADF.
  virtual Result<void> Fsync(const RequestContext& ctx, uint64_t node, uint64_t handle,
                             bool datasync);
  // fallocate(2) modes the file system supports; EOPNOTSUPP for others.
  virtual Result<void> Fallocate(const RequestContext& ctx, uint64_t node, uint64_t handle,
                                 uint64_t offset, uint64_t length, uint32_t mode);
  // The new offset for SEEK_SET/SEEK_CUR/SEEK_END/SEEK_DATA/SEEK_HOLE.
  // Errors: EBADF, EINVAL, ENXIO (SEEK_DATA/SEEK_HOLE past the end).
  virtual Result<uint64_t> Lseek(const RequestContext& ctx, uint64_t node, uint64_t handle,
                                 uint64_t offset, uint32_t whence);
  // Copies `length` bytes between two open files; returns bytes copied.
  virtual Result<uint64_t> CopyFileRange(const RequestContext& ctx, uint64_t node_in,
                                         uint64_t handle_in, uint64_t offset_in, uint64_t node_out,
                                         uint64_t handle_out, uint64_t offset_out, uint64_t length,
                                         uint64_t flags);
  // The physical block of a logical one (block devices only).
  virtual Result<uint64_t> Bmap(const RequestContext& ctx, uint64_t node, uint32_t blocksize,
                                uint64_t block);
  // Restricted ioctl: `in` holds the input, the result at most `out_size`
  // bytes of output.
  virtual Result<IoctlResult> Ioctl(const RequestContext& ctx, uint64_t node, uint64_t handle,
                                    uint32_t flags, uint32_t cmd, uint64_t arg,
                                    std::span<const uint8_t> in, uint32_t out_size);
  // The ready events (revents) of `events`.
  virtual Result<uint32_t> Poll(const RequestContext& ctx, uint64_t node, uint64_t handle,
                                uint64_t kh, uint32_t flags, uint32_t events);

  // ---- locks (ENOSYS: the guest keeps locks local when FUSE_POSIX_LOCKS /
  // FUSE_FLOCK_LOCKS are not offered) ----

  virtual Result<FileLock> GetLk(const RequestContext& ctx, uint64_t node, uint64_t handle,
                                 uint64_t owner, const FileLock& lock, bool flock);
  // SETLKW (wait) must not block a queue worker: a synchronous file system
  // should answer EAGAIN rather than wait (or implement Backend instead).
  virtual Result<void> SetLk(const RequestContext& ctx, uint64_t node, uint64_t handle,
                             uint64_t owner, const FileLock& lock, bool flock, bool wait);

  // ---- directories ----

  // Opens directory `node` for ReadDir. Errors: ENOENT, ENOTDIR, EACCES.
  virtual Result<OpenResult> OpenDir(const RequestContext& ctx, uint64_t node, uint32_t flags);
  // Adds the entries from position `offset` (0: the start) to `out` until
  // out.Add/AddPlus returns false or none is left, then returns Ok(). Each
  // entry carries the offset of the entry after it; the guest sends that
  // back to continue, possibly after the directory changed, so offsets must
  // stay valid across changes (an entry removed meanwhile is skipped, none
  // is returned twice). `plus` (READDIRPLUS): use AddPlus, each added entry
  // a lookup reference (see above); else Add. Return an error only before
  // adding anything: entries already added are discarded with their
  // references. Errors: EBADF (unknown handle), ENOTDIR.
  virtual Result<void> ReadDir(const RequestContext& ctx, uint64_t node, uint64_t handle,
                               uint64_t offset, bool plus, DirReply& out);
  // The last close of a directory handle. Errors: EBADF.
  virtual Result<void> ReleaseDir(const RequestContext& ctx, uint64_t node, uint64_t handle,
                                  uint32_t flags);
  // Errors: EBADF.
  virtual Result<void> FsyncDir(const RequestContext& ctx, uint64_t node, uint64_t handle,
                                bool datasync);

  // ---- extended attributes ----

  // `flags`: XATTR_CREATE (EEXIST if present), XATTR_REPLACE (ENODATA if
  // absent). Errors: ENOENT, EACCES, EPERM, EOPNOTSUPP (namespace not
  // served), ENOSPC.
  virtual Result<void> SetXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                                std::span<const uint8_t> value, uint32_t flags,
                                uint32_t setxattr_flags);
  // The whole value (the library answers size probes and ERANGE). Errors:
  // ENOENT, ENODATA (no such attribute), EACCES, EOPNOTSUPP.
  virtual Result<std::string> GetXattr(const RequestContext& ctx, uint64_t node,
                                       std::string_view name);
  // Every name, each followed by a NUL. Errors: ENOENT.
  virtual Result<std::string> ListXattr(const RequestContext& ctx, uint64_t node);
  // Errors: ENOENT, ENODATA, EACCES, EPERM, EOPNOTSUPP.
  virtual Result<void> RemoveXattr(const RequestContext& ctx, uint64_t node, std::string_view name);

  // ---- whole file system ----

  virtual Result<void> SyncFs(const RequestContext& ctx, uint64_t node);
  // DAX window mappings: ENOSYS unless the file system maps file pages.
  virtual Result<void> SetupMapping(const RequestContext& ctx, uint64_t node, uint64_t handle,
                                    uint64_t foffset, uint64_t len, uint64_t flags,
                                    uint64_t moffset);
  virtual Result<void> RemoveMapping(const RequestContext& ctx,
                                     std::span<const RemoveMappingItem> items);
  // The guest gave up waiting for request `unique` (no answer). A
  // synchronous file system has usually answered already.
  virtual void Interrupt(uint64_t unique) { (void)unique; }
};

// Serves a SyncFileSystem as a Backend: each call runs the file system's
// method and answers the Reply with its Result. An exception that escapes
// the file system is logged and answered EIO (for the operations without an
// answer, it is logged and dropped). The file system must outlive the
// adapter.
class SyncAdapter : public Backend {
 public:
  explicit SyncAdapter(SyncFileSystem& fs) : fs_(fs) {}

  uint64_t InitFlags() const override;
  void Init(uint32_t minor, uint64_t flags) override;
  void Destroy() override;

  void Lookup(const RequestContext& ctx, uint64_t parent, std::string_view name,
              Reply<Entry> reply) override;
  void Forget(uint64_t node, uint64_t nlookup) override;
  void BatchForget(std::span<const ForgetItem> items) override;
  void GetAttr(const RequestContext& ctx, uint64_t node, std::optional<uint64_t> handle,
               Reply<Attributes> reply) override;
  void SetAttr(const RequestContext& ctx, uint64_t node, const SetAttrRequest& attr,
               Reply<Attributes> reply) override;
  void Statx(const RequestContext& ctx, uint64_t node, std::optional<uint64_t> handle,
             uint32_t sx_flags, uint32_t sx_mask, Reply<StatxResult> reply) override;
  void ReadLink(const RequestContext& ctx, uint64_t node, Reply<std::string> reply) override;
  void Symlink(const RequestContext& ctx, uint64_t parent, std::string_view name,
               std::string_view target, Reply<Entry> reply) override;
  void Mknod(const RequestContext& ctx, uint64_t parent, std::string_view name, uint32_t mode,
             uint32_t rdev, uint32_t umask, Reply<Entry> reply) override;
  void Mkdir(const RequestContext& ctx, uint64_t parent, std::string_view name, uint32_t mode,
             uint32_t umask, Reply<Entry> reply) override;
  void Unlink(const RequestContext& ctx, uint64_t parent, std::string_view name,
              Reply<void> reply) override;
  void Rmdir(const RequestContext& ctx, uint64_t parent, std::string_view name,
             Reply<void> reply) override;
  void Rename(const RequestContext& ctx, uint64_t parent, std::string_view name,
              uint64_t new_parent, std::string_view new_name, uint32_t flags,
              Reply<void> reply) override;
  void Link(const RequestContext& ctx, uint64_t node, uint64_t new_parent,
            std::string_view new_name, Reply<Entry> reply) override;
  void Access(const RequestContext& ctx, uint64_t node, uint32_t mask, Reply<void> reply) override;
  void StatFs(const RequestContext& ctx, uint64_t node, Reply<struct statvfs> reply) override;

  void Open(const RequestContext& ctx, uint64_t node, uint32_t flags,
            Reply<OpenResult> reply) override;
  void Create(const RequestContext& ctx, uint64_t parent, std::string_view name, uint32_t mode,
              uint32_t flags, uint32_t umask, Reply<CreateResult> reply) override;
  void TmpFile(const RequestContext& ctx, uint64_t parent, uint32_t mode, uint32_t flags,
               uint32_t umask, Reply<CreateResult> reply) override;
  void Read(const RequestContext& ctx, uint64_t node, const ReadRequest& req,
            ReadReply reply) override;
  void Write(const RequestContext& ctx, uint64_t node, const WriteRequest& req,
             Reply<uint32_t> reply) override;
  void Flush(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t lock_owner,
             Reply<void> reply) override;
  void Release(const RequestContext& ctx, uint64_t node, uint64_t handle, uint32_t flags,
               uint32_t release_flags, uint64_t lock_owner, Reply<void> reply) override;
  void Fsync(const RequestContext& ctx, uint64_t node, uint64_t handle, bool datasync,
             Reply<void> reply) override;
  void Fallocate(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t offset,
                 uint64_t length, uint32_t mode, Reply<void> reply) override;
  void Lseek(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t offset,
             uint32_t whence, Reply<uint64_t> reply) override;
  void CopyFileRange(const RequestContext& ctx, uint64_t node_in, uint64_t handle_in,
                     uint64_t offset_in, uint64_t node_out, uint64_t handle_out,
                     uint64_t offset_out, uint64_t length, uint64_t flags,
                     Reply<uint64_t> reply) override;
  void Bmap(const RequestContext& ctx, uint64_t node, uint32_t blocksize, uint64_t block,
            Reply<uint64_t> reply) override;
  void Ioctl(const RequestContext& ctx, uint64_t node, uint64_t handle, uint32_t flags,
             uint32_t cmd, uint64_t arg, std::span<const uint8_t> in, uint32_t out_size,
             Reply<IoctlResult> reply) override;
  void Poll(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t kh, uint32_t flags,
            uint32_t events, Reply<uint32_t> reply) override;

  void GetLk(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t owner,
             const FileLock& lock, bool flock, Reply<FileLock> reply) override;
  void SetLk(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t owner,
             const FileLock& lock, bool flock, bool wait, Reply<void> reply) override;

  void OpenDir(const RequestContext& ctx, uint64_t node, uint32_t flags,
               Reply<OpenResult> reply) override;
  void ReadDir(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t offset,
               bool plus, DirReply reply) override;
  void ReleaseDir(const RequestContext& ctx, uint64_t node, uint64_t handle, uint32_t flags,
                  Reply<void> reply) override;
  void FsyncDir(const RequestContext& ctx, uint64_t node, uint64_t handle, bool datasync,
                Reply<void> reply) override;

  void SetXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                std::span<const uint8_t> value, uint32_t flags, uint32_t setxattr_flags,
                Reply<void> reply) override;
  void GetXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                Reply<std::string> reply) override;
  void ListXattr(const RequestContext& ctx, uint64_t node, Reply<std::string> reply) override;
  void RemoveXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                   Reply<void> reply) override;

  void SyncFs(const RequestContext& ctx, uint64_t node, Reply<void> reply) override;
  void SetupMapping(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t foffset,
                    uint64_t len, uint64_t flags, uint64_t moffset, Reply<void> reply) override;
  void RemoveMapping(const RequestContext& ctx, std::span<const RemoveMappingItem> items,
                     Reply<void> reply) override;
  void Interrupt(uint64_t unique) override;

 private:
  SyncFileSystem& fs_;
};

}  // namespace virtiofs

#endif  // VIRTIOFS_SYNC_FILE_SYSTEM_H_
