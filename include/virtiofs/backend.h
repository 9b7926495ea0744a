// The Backend interface: what a file system served over virtio-fs implements.
//
// The library decodes and checks every FUSE request from the guest, then
// calls one Backend method per operation. Each method gets:
//   - a RequestContext (who asks: uid, gid, pid, umask, ...),
//   - the decoded, validated arguments (names are non-empty, NUL-free and
//     within NAME_MAX; node ids are the guest's claims and must be looked up),
//   - a Reply handle, to be answered exactly once: Ok(...) or Error(errno),
//     now or later, from any thread (e.g. from an io_uring completion).
// A Reply dropped without an answer replies EIO and logs it. Every method
// defaults to ENOSYS, so a backend implements only what it serves.
//
// Node ids: FUSE_ROOT_ID (1) is the root. Every Entry returned by Lookup,
// Mknod, Mkdir, Symlink, Link, Create, TmpFile and each entry of ReadDirPlus
// increments the lookup count of its node id by one; Forget/BatchForget
// decrement it by the given amount. A node id may be reused only after its
// count returns to 0. Node ids and file handles are the backend's own values;
// the guest can send anything back, so look them up, never trust them.
//
// Data: Read and Write get the guest's buffers as iovecs that point straight
// into guest memory (valid until the reply): preadv/pwritev or io_uring on
// them moves the data with no copy.
//
// Backends that answer synchronously can implement SyncFileSystem
// (sync_file_system.h) instead, whose methods return Result<T>.
#ifndef VIRTIOFS_BACKEND_H_
#define VIRTIOFS_BACKEND_H_

#include <fcntl.h>
#include <linux/fuse.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace virtiofs {

// STATX (protocol 7.39): the attributes in statx(2) form.
struct StatxResult {
  struct statx stx {};
  double timeout = 1.0;  // Seconds.
  uint32_t flags = 0;    // FUSE_ATTR_SUBMOUNT, FUSE_ATTR_DAX.
};

// Per-queue machinery a backend may keep on each queue's worker, such as an
// io_uring: requests of that queue find it in RequestContext::queue, and the
// worker runs it (see Backend::CreateQueueContext).
class QueueContext {
 public:
  virtual ~QueueContext() = default;
  // The worker polls this fd (-1: none) and calls Process() on its thread
  // when it is readable (e.g. reaping completions that answer replies). It
  // also calls Process() right after Flush() and while it polls for work,
  // readable or not: Process() must not block.
  virtual int fd() const = 0;
  virtual void Process() = 0;
  // Called by the worker after each batch of requests (e.g. submitting what
  // the batch queued, one system call for many requests).
  virtual void Flush() = 0;
};

// Who sends a request. Arguments passed by string_view or span are valid
// during the call only (copy what an asynchronous answer needs), except
// WriteRequest::data and ReadReply::buffers(), valid until the reply.
// (The umask of a creating request is an argument of that method.)
struct RequestContext {
  uint64_t unique = 0;  // The request's FUSE unique id.
  uint32_t uid = 0;     // Caller's fsuid and fsgid in the guest.
  uint32_t gid = 0;
  uint32_t pid = 0;
  // Supplementary group to add when creating (FUSE_CREATE_SUPP_GROUP).
  std::optional<uint32_t> supplementary_gid;
  // Security context of a new node (FUSE_SECURITY_CTX): xattr name and value.
  std::optional<std::pair<std::string, std::string>> security_context;
  // The QueueContext of the queue the request came on (its worker's thread
  // runs this call), or nullptr when the backend made none.
  QueueContext* queue = nullptr;
};

// Attributes of a node, with how long the guest may cache them.
struct Attributes {
  struct stat st {};
  double timeout = 1.0;  // Seconds.
  uint32_t flags = 0;    // FUSE_ATTR_SUBMOUNT, FUSE_ATTR_DAX.
};

// The answer to a lookup-like request.
struct Entry {
  uint64_t node_id = 0;     // 0 = negative entry (cached ENOENT); no lookup count.
  uint64_t generation = 0;  // Distinguishes reuses of a node id.
  Attributes attr;
  double entry_timeout = 1.0;  // Seconds the name may stay cached.
};

// The answer to an open.
struct OpenResult {
  uint64_t handle = 0;
  uint32_t open_flags = 0;  // FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE, FOPEN_NONSEEKABLE, ...
};

struct CreateResult {
  Entry entry;
  OpenResult open;
};

// SETATTR: what to change. `valid` holds FATTR_* bits of <linux/fuse.h>.
struct SetAttrRequest {
  uint32_t valid = 0;
  std::optional<uint64_t> handle;  // FATTR_FH: the guest names an open handle.
  uint32_t mode = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint64_t size = 0;
  timespec atime{};  // FATTR_ATIME_NOW in `valid`: set "now" instead (not filled in).
  timespec mtime{};  // FATTR_MTIME_NOW in `valid`: set "now" instead (not filled in).
  timespec ctime{};
  uint64_t lock_owner = 0;  // FATTR_LOCKOWNER.
  // FATTR_KILL_SUIDGID (HANDLE_KILLPRIV_V2): clear setuid/setgid.
  bool kill_suidgid() const { return (valid & FATTR_KILL_SUIDGID) != 0; }
};

struct FileLock {
  uint64_t start = 0;
  uint64_t end = 0;
  uint32_t type = F_UNLCK;  // F_RDLCK, F_WRLCK, F_UNLCK.
  uint32_t pid = 0;
};

struct ForgetItem {
  uint64_t node_id;
  uint64_t nlookup;
};

struct RemoveMappingItem {
  uint64_t moffset;
  uint64_t len;
};

struct IoctlResult {
  int32_t result = 0;
  std::vector<uint8_t> out;  // At most the out size the guest gave.
};

namespace fuse_internal {
class PendingRequest;
}  // namespace fuse_internal

// The untyped part of a Reply: answers exactly once.
class ReplyBase {
 public:
  ReplyBase(ReplyBase&& other) noexcept : request_(std::exchange(other.request_, nullptr)) {}
  ReplyBase& operator=(ReplyBase&& other) noexcept;
  ReplyBase(const ReplyBase&) = delete;
  ReplyBase& operator=(const ReplyBase&) = delete;
  // Unanswered: replies EIO and logs.
  ~ReplyBase();

  // Replies -errno (a positive errno; 0 or negative becomes EIO). A second
  // answer is ignored and logged.
  void Error(int err);
  // Whether this handle still owes an answer.
  bool pending() const { return request_ != nullptr; }

  // Made by the library only: PendingRequest is internal.
  explicit ReplyBase(fuse_internal::PendingRequest* r) : request_(r) {}

 protected:
  fuse_internal::PendingRequest* Take() { return std::exchange(request_, nullptr); }
  fuse_internal::PendingRequest* request_;
};

namespace fuse_internal {
// Encoders, one per reply type (defined by the library).
void Answer(PendingRequest* r, const Entry& v);
void Answer(PendingRequest* r, const Attributes& v);
void Answer(PendingRequest* r, const StatxResult& v);
void Answer(PendingRequest* r, const OpenResult& v);
void Answer(PendingRequest* r, const CreateResult& v);
void Answer(PendingRequest* r, const struct statvfs& v);
void Answer(PendingRequest* r, const std::string& v);
void Answer(PendingRequest* r, uint32_t v);
void Answer(PendingRequest* r, uint64_t v);
void Answer(PendingRequest* r, const FileLock& v);
void Answer(PendingRequest* r, const IoctlResult& v);
void AnswerEmpty(PendingRequest* r);
void AnsweredTwice();
}  // namespace fuse_internal

// A reply carrying a T: answered with Ok(T) or Error(errno).
template <typename T>
class Reply : public ReplyBase {
 public:
  using ReplyBase::ReplyBase;
  void Ok(const T& value) {
    if (fuse_internal::PendingRequest* r = Take()) {
      fuse_internal::Answer(r, value);
    } else {
      fuse_internal::AnsweredTwice();
    }
  }
};

template <>
class Reply<void> : public ReplyBase {
 public:
  using ReplyBase::ReplyBase;
  void Ok() {
    if (fuse_internal::PendingRequest* r = Take()) {
      fuse_internal::AnswerEmpty(r);
    } else {
      fuse_internal::AnsweredTwice();
    }
  }
};

// READ: the data goes into `buffers` (guest memory, exactly the `size` bytes
// asked for). Ok(n) says how many bytes were written there; n < size means
// end of file; n > size is refused with EIO.
class ReadReply : public ReplyBase {
 public:
  using ReplyBase::ReplyBase;
  std::span<const iovec> buffers() const;
  void Ok(uint32_t bytes);
};

// READDIR / READDIRPLUS: add entries until Add returns false (no room left,
// or a name FUSE cannot carry; that entry was not added), then Ok().
// `next_offset` is the offset the guest sends back to continue after this
// entry. Error() only before adding: entries added and then discarded would
// have been counted as lookups.
class DirReply : public ReplyBase {
 public:
  using ReplyBase::ReplyBase;
  // READDIR. `type` is the file type in DT_* form.
  bool Add(std::string_view name, uint64_t ino, uint32_t type, uint64_t next_offset);
  // READDIRPLUS. An added entry counts as a lookup of entry.node_id
  // (unless node_id is 0); an entry that did not fit does not. "." and ".."
  // are sent without a node (the guest takes no reference to them): give
  // them node_id 0 and do not count them.
  bool AddPlus(std::string_view name, const Entry& entry, uint64_t next_offset);
  void Ok();
};

// The arguments of READ, WRITE and the data of SETXATTR point into guest
// memory: copy what must outlive the reply.
struct ReadRequest {
  uint64_t handle = 0;
  uint64_t offset = 0;
  uint32_t size = 0;
  uint32_t flags = 0;       // open flags
  uint32_t read_flags = 0;  // FUSE_READ_LOCKOWNER
  uint64_t lock_owner = 0;
};

struct WriteRequest {
  uint64_t handle = 0;
  uint64_t offset = 0;
  uint32_t size = 0;
  uint32_t flags = 0;        // open flags
  uint32_t write_flags = 0;  // FUSE_WRITE_CACHE, FUSE_WRITE_LOCKOWNER, FUSE_WRITE_KILL_SUIDGID
  uint64_t lock_owner = 0;
  std::span<const iovec> data;  // `size` bytes of guest memory.
};

class Backend {
 public:
  virtual ~Backend() = default;

  // ---- session ----
  // FUSE_INIT flags (FUSE_POSIX_LOCKS, FUSE_FLOCK_LOCKS, FUSE_EXPORT_SUPPORT,
  // FUSE_WRITEBACK_CACHE, ...) and flags2 (the upper 32 bits: FUSE_SECURITY_CTX,
  // FUSE_CREATE_SUPP_GROUP, ... shifted) the backend can honour. The session
  // offers the guest the intersection with what it asks for and what the
  // library implements.
  virtual uint64_t InitFlags() const { return 0; }
  // The negotiated session: the protocol minor and flags both sides agreed.
  virtual void Init(uint32_t minor, uint64_t flags) { (void)minor, (void)flags; }
  // Called on each queue's worker when it starts; nullptr (the default):
  // requests of that queue get no QueueContext.
  virtual std::unique_ptr<QueueContext> CreateQueueContext(uint32_t queue_index) {
    (void)queue_index;
    return nullptr;
  }
  // A queue is about to stop (the VM stops, the front-end leaves), and it
  // stops only when all its requests are answered: answer now (EINTR) every
  // request that may wait indefinitely, such as a SETLKW on a lock someone
  // holds. Called on the front-end's thread, for each stopping queue.
  virtual void InterruptWaits() {}
  // DESTROY, or an INIT that starts a new session: every node and handle is
  // forgotten. Other queues may still be running requests of the ending
  // session meanwhile: stay safe against them.
  virtual void Destroy() {}

  // ---- nodes ----
  virtual void Lookup(const RequestContext& ctx, uint64_t parent, std::string_view name,
                      Reply<Entry> reply);
  // No reply: the lookup count of `node` drops by `nlookup`.
  virtual void Forget(uint64_t node, uint64_t nlookup);
  virtual void BatchForget(std::span<const ForgetItem> items);
  virtual void GetAttr(const RequestContext& ctx, uint64_t node, std::optional<uint64_t> handle,
                       Reply<Attributes> reply);
  virtual void SetAttr(const RequestContext& ctx, uint64_t node, const SetAttrRequest& attr,
                       Reply<Attributes> reply);
  virtual void Statx(const RequestContext& ctx, uint64_t node, std::optional<uint64_t> handle,
                     uint32_t sx_flags, uint32_t sx_mask, Reply<StatxResult> reply);
  virtual void ReadLink(const RequestContext& ctx, uint64_t node, Reply<std::string> reply);
  virtual void Symlink(const RequestContext& ctx, uint64_t parent, std::string_view name,
                       std::string_view target, Reply<Entry> reply);
  virtual void Mknod(const RequestContext& ctx, uint64_t parent, std::string_view name,
                     uint32_t mode, uint32_t rdev, uint32_t umask, Reply<Entry> reply);
  virtual void Mkdir(const RequestContext& ctx, uint64_t parent, std::string_view name,
                     uint32_t mode, uint32_t umask, Reply<Entry> reply);
  virtual void Unlink(const RequestContext& ctx, uint64_t parent, std::string_view name,
                      Reply<void> reply);
  virtual void Rmdir(const RequestContext& ctx, uint64_t parent, std::string_view name,
                     Reply<void> reply);
  // RENAME (flags 0) and RENAME2 (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT).
  virtual void Rename(const RequestContext& ctx, uint64_t parent, std::string_view name,
                      uint64_t new_parent, std::string_view new_name, uint32_t flags,
                      Reply<void> reply);
  virtual void Link(const RequestContext& ctx, uint64_t node, uint64_t new_parent,
                    std::string_view new_name, Reply<Entry> reply);
  virtual void Access(const RequestContext& ctx, uint64_t node, uint32_t mask, Reply<void> reply);
  virtual void StatFs(const RequestContext& ctx, uint64_t node, Reply<struct statvfs> reply);

  // ---- files ----
  virtual void Open(const RequestContext& ctx, uint64_t node, uint32_t flags,
                    Reply<OpenResult> reply);
  // With O_EXCL in flags, an existing name is EEXIST.
  virtual void Create(const RequestContext& ctx, uint64_t parent, std::string_view name,
                      uint32_t mode, uint32_t flags, uint32_t umask, Reply<CreateResult> reply);
  // O_TMPFILE: an unnamed file in `parent`.
  virtual void TmpFile(const RequestContext& ctx, uint64_t parent, uint32_t mode, uint32_t flags,
                       uint32_t umask, Reply<CreateResult> reply);
  virtual void Read(const RequestContext& ctx, uint64_t node, const ReadRequest& req,
                    ReadReply reply);
  // Ok(n): n bytes of req.data were written.
  virtual void Write(const RequestContext& ctx, uint64_t node, const WriteRequest& req,
                     Reply<uint32_t> reply);
  virtual void Flush(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t lock_owner,
                     Reply<void> reply);
  virtual void Release(const RequestContext& ctx, uint64_t node, uint64_t handle, uint32_t flags,
                       uint32_t release_flags, uint64_t lock_owner, Reply<void> reply);
  virtual void Fsync(const RequestContext& ctx, uint64_t node, uint64_t handle, bool datasync,
                     Reply<void> reply);
  virtual void Fallocate(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t offset,
                         uint64_t length, uint32_t mode, Reply<void> reply);
  // Ok(new offset) for SEEK_DATA / SEEK_HOLE (and SEEK_SET/SEEK_CUR/SEEK_END).
  virtual void Lseek(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t offset,
                     uint32_t whence, Reply<uint64_t> reply);
  // Ok(bytes copied).
  virtual void CopyFileRange(const RequestContext& ctx, uint64_t node_in, uint64_t handle_in,
                             uint64_t offset_in, uint64_t node_out, uint64_t handle_out,
                             uint64_t offset_out, uint64_t length, uint64_t flags,
                             Reply<uint64_t> reply);
  // Ok(physical block).
  virtual void Bmap(const RequestContext& ctx, uint64_t node, uint32_t blocksize, uint64_t block,
                    Reply<uint64_t> reply);
  virtual void Ioctl(const RequestContext& ctx, uint64_t node, uint64_t handle, uint32_t flags,
                     uint32_t cmd, uint64_t arg, std::span<const uint8_t> in, uint32_t out_size,
                     Reply<IoctlResult> reply);
  // Ok(revents).
  virtual void Poll(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t kh,
                    uint32_t flags, uint32_t events, Reply<uint32_t> reply);

  // ---- locks ----
  virtual void GetLk(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t owner,
                     const FileLock& lock, bool flock, Reply<FileLock> reply);
  // SETLK (wait false) and SETLKW (wait true). A waiting lock must not hold
  // up the queue: answer later, from another thread.
  virtual void SetLk(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t owner,
                     const FileLock& lock, bool flock, bool wait, Reply<void> reply);

  // ---- directories ----
  virtual void OpenDir(const RequestContext& ctx, uint64_t node, uint32_t flags,
                       Reply<OpenResult> reply);
  // `plus`: READDIRPLUS (use DirReply::AddPlus), else READDIR (Add).
  virtual void ReadDir(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t offset,
                       bool plus, DirReply reply);
  virtual void ReleaseDir(const RequestContext& ctx, uint64_t node, uint64_t handle, uint32_t flags,
                          Reply<void> reply);
  virtual void FsyncDir(const RequestContext& ctx, uint64_t node, uint64_t handle, bool datasync,
                        Reply<void> reply);

  // ---- extended attributes ----
  // `flags`: XATTR_CREATE / XATTR_REPLACE; `setxattr_flags`: FUSE_SETXATTR_ACL_KILL_SGID.
  virtual void SetXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                        std::span<const uint8_t> value, uint32_t flags, uint32_t setxattr_flags,
                        Reply<void> reply);
  // Ok(the whole value): the library answers size probes and ERANGE itself.
  virtual void GetXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                        Reply<std::string> reply);
  // Ok(names, each followed by a NUL): size probes and ERANGE as above.
  virtual void ListXattr(const RequestContext& ctx, uint64_t node, Reply<std::string> reply);
  virtual void RemoveXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                           Reply<void> reply);

  // ---- whole file system ----
  virtual void SyncFs(const RequestContext& ctx, uint64_t node, Reply<void> reply);
  // DAX window mappings (FUSE_SETUPMAPPING / FUSE_REMOVEMAPPING).
  virtual void SetupMapping(const RequestContext& ctx, uint64_t node, uint64_t handle,
                            uint64_t foffset, uint64_t len, uint64_t flags, uint64_t moffset,
                            Reply<void> reply);
  virtual void RemoveMapping(const RequestContext& ctx, std::span<const RemoveMappingItem> items,
                             Reply<void> reply);
  // INTERRUPT: the guest gave up on request `unique` (no reply).
  virtual void Interrupt(uint64_t unique) { (void)unique; }
};

}  // namespace virtiofs

#endif  // VIRTIOFS_BACKEND_H_
