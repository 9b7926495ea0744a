// memfs: a complete in-memory file system, written as a SyncFileSystem.
//
// It is the model for backend authors: files, directories, symlinks, hard
// links, special nodes, xattrs, POSIX permissions and timestamps, stable
// directory offsets and the lookup-count protocol. memfs.cc holds the tree
// (names, links, permissions, lifetimes) and memfs_files.cc the contents
// (handles, data, xattrs); their comments give the why of each rule. Serve it
// with
//
//   memfs::MemFs fs;
//   virtiofs::SyncAdapter backend(fs);
//   auto device = virtiofs::VirtioFsDevice::Create(&backend, {});
//
// (main.cc does it over a vhost-user socket). Every method is thread-safe:
// one mutex guards the whole file system, which is simple and enough for an
// example (the queue workers take turns). Node ids are never reused and start
// at FUSE_ROOT_ID (1), the root directory; file handles are counters too.
// Unknown node ids are ENOENT and unknown handles EBADF.
#ifndef VIRTIOFS_EXAMPLES_MEMFS_MEMFS_H_
#define VIRTIOFS_EXAMPLES_MEMFS_MEMFS_H_

#include <sys/stat.h>

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>

#include "virtiofs/sync_file_system.h"

namespace memfs {

using virtiofs::Attributes;
using virtiofs::CreateResult;
using virtiofs::DirReply;
using virtiofs::Entry;
using virtiofs::ForgetItem;
using virtiofs::OpenResult;
using virtiofs::ReadRequest;
using virtiofs::RequestContext;
using virtiofs::Result;
using virtiofs::SetAttrRequest;
using virtiofs::StatxResult;
using virtiofs::WriteRequest;

struct MemFsOptions {
  // Capacity: bytes of file data and symlink targets, and nodes (ENOSPC
  // beyond either). statfs reports them.
  uint64_t max_bytes = uint64_t{1} << 30;
  uint64_t max_nodes = uint64_t{1} << 20;
  // The root directory's owner and permission bits.
  uint32_t root_uid = 0;
  uint32_t root_gid = 0;
  uint32_t root_mode = 0755;
  // How long the guest may cache names and attributes, in seconds. Only
  // the guest changes a memfs, so its caches stay right.
  double timeout = 1.0;
};

class MemFs final : public virtiofs::SyncFileSystem {
 public:
  explicit MemFs(MemFsOptions options = {});
  MemFs(const MemFs&) = delete;
  MemFs& operator=(const MemFs&) = delete;

  uint64_t InitFlags() const override;
  void Destroy() override;

  Result<Entry> Lookup(const RequestContext& ctx, uint64_t parent, std::string_view name) override;
  void Forget(uint64_t node, uint64_t nlookup) override;
  void BatchForget(std::span<const ForgetItem> items) override;
  Result<Attributes> GetAttr(const RequestContext& ctx, uint64_t node,
                             std::optional<uint64_t> handle) override;
  Result<Attributes> SetAttr(const RequestContext& ctx, uint64_t node,
                             const SetAttrRequest& attr) override;
  Result<StatxResult> Statx(const RequestContext& ctx, uint64_t node,
                            std::optional<uint64_t> handle, uint32_t sx_flags,
                            uint32_t sx_mask) override;
  Result<std::string> ReadLink(const RequestContext& ctx, uint64_t node) override;
  Result<Entry> Symlink(const RequestContext& ctx, uint64_t parent, std::string_view name,
                        std::string_view target) override;
  Result<Entry> Mknod(const RequestContext& ctx, uint64_t parent, std::string_view name,
                      uint32_t mode, uint32_t rdev, uint32_t umask) override;
  Result<Entry> Mkdir(const RequestContext& ctx, uint64_t parent, std::string_view name,
                      uint32_t mode, uint32_t umask) override;
  Result<void> Unlink(const RequestContext& ctx, uint64_t parent, std::string_view name) override;
  Result<void> Rmdir(const RequestContext& ctx, uint64_t parent, std::string_view name) override;
  Result<void> Rename(const RequestContext& ctx, uint64_t parent, std::string_view name,
                      uint64_t new_parent, std::string_view new_name, uint32_t flags) override;
  Result<Entry> Link(const RequestContext& ctx, uint64_t node, uint64_t new_parent,
                     std::string_view new_name) override;
  Result<void> Access(const RequestContext& ctx, uint64_t node, uint32_t mask) override;
  Result<struct statvfs> StatFs(const RequestContext& ctx, uint64_t node) override;

  Result<OpenResult> Open(const RequestContext& ctx, uint64_t node, uint32_t flags) override;
  Result<CreateResult> Create(const RequestContext& ctx, uint64_t parent, std::string_view name,
                              uint32_t mode, uint32_t flags, uint32_t umask) override;
  Result<CreateResult> TmpFile(const RequestContext& ctx, uint64_t parent, uint32_t mode,
                               uint32_t flags, uint32_t umask) override;
  Result<uint32_t> Read(const RequestContext& ctx, uint64_t node, const ReadRequest& req,
                        std::span<const iovec> buffers) override;
  Result<uint32_t> Write(const RequestContext& ctx, uint64_t node,
                         const WriteRequest& req) override;
  Result<void> Flush(const RequestContext& ctx, uint64_t node, uint64_t handle,
                     uint64_t lock_owner) override;
  Result<void> Release(const RequestContext& ctx, uint64_t node, uint64_t handle, uint32_t flags,
                       uint32_t release_flags, uint64_t lock_owner) override;
  Result<void> Fsync(const RequestContext& ctx, uint64_t node, uint64_t handle,
                     bool datasync) override;
  Result<void> Fallocate(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t offset,
                         uint64_t length, uint32_t mode) override;
  Result<uint64_t> Lseek(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t offset,
                         uint32_t whence) override;

  Result<OpenResult> OpenDir(const RequestContext& ctx, uint64_t node, uint32_t flags) override;
  Result<void> ReadDir(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t offset,
                       bool plus, DirReply& out) override;
  Result<void> ReleaseDir(const RequestContext& ctx, uint64_t node, uint64_t handle,
                          uint32_t flags) override;
  Result<void> FsyncDir(const RequestContext& ctx, uint64_t node, uint64_t handle,
                        bool datasync) override;

  Result<void> SetXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                        std::span<const uint8_t> value, uint32_t flags,
                        uint32_t setxattr_flags) override;
  Result<std::string> GetXattr(const RequestContext& ctx, uint64_t node,
                               std::string_view name) override;
  Result<std::string> ListXattr(const RequestContext& ctx, uint64_t node) override;
  Result<void> RemoveXattr(const RequestContext& ctx, uint64_t node,
                           std::string_view name) override;
  Result<void> SyncFs(const RequestContext& ctx, uint64_t node) override;

  // For tests and monitoring: nodes alive (the root included), open
  // handles, the lookup count of `node` (0 if unknown), and the bytes of
  // file data, symlink targets and xattrs held.
  size_t node_count() const;
  size_t handle_count() const;
  uint64_t lookup_count(uint64_t node) const;
  uint64_t used_bytes() const;

 private:
  // A directory entry. `cookie` is its readdir position: assigned once,
  // increasing, so offsets stay valid while the directory changes.
  struct Dirent {
    uint64_t node;
    uint64_t cookie;
  };

  struct Inode {
    uint64_t id = 0;
    uint32_t mode = 0;  // File type and permission bits, as st_mode.
    uint32_t uid = 0;
    uint32_t gid = 0;
    uint32_t rdev = 0;
    uint32_t nlink = 0;  // Names; a directory also counts "." and its subdirectories' "..".
    timespec atime{}, mtime{}, ctime{}, btime{};
    std::string data;  // A regular file's contents, or a symlink's target.
    std::map<std::string, std::string, std::less<>> xattrs;
    // Directories only.
    std::map<std::string, Dirent, std::less<>> entries;
    std::map<uint64_t, std::string> by_cookie;  // Readdir order.
    uint64_t next_cookie = 2;                   // 0 and 1 are "." and "..".
    uint64_t parent = 0;                        // "..": a directory has one name.
    // Who still refers to the node besides its names.
    uint64_t lookups = 0;
    uint32_t handles = 0;
    // False once no name can come back: its last name went, or it is an
    // O_TMPFILE opened with O_EXCL.
    bool linkable = true;

    bool is_dir() const { return S_ISDIR(mode); }
    bool is_reg() const { return S_ISREG(mode); }
  };

  struct Handle {
    uint64_t node;
    uint32_t flags;  // Open flags: access mode, O_APPEND.
    bool dir;
  };

  // The permission bits of st_mode, with setuid, setgid and sticky.
  static constexpr uint32_t kPermissionBits = 07777;

  // Rules that need no state.
  static timespec Now();
  static bool Permits(const RequestContext& ctx, const Inode& n, uint32_t mask);
  static bool MayDelete(const RequestContext& ctx, const Inode& dir, const Inode& victim);
  static Result<void> XattrAccess(const RequestContext& ctx, const Inode& n, std::string_view name,
                                  bool write);
  static void KillSuid(Inode& n);
  static void Touch(Inode& n);
  static uint64_t XattrBytes(const Inode& n);

  // Helpers below run with mu_ held.
  Inode* Find(uint64_t id);
  Result<Inode*> Get(uint64_t id);
  Result<Inode*> GetDir(uint64_t id);
  Result<Inode*> Child(Inode& dir, std::string_view name);
  Result<Handle*> GetHandle(uint64_t handle, uint64_t node);
  Result<Inode*> DirForNewName(const RequestContext& ctx, uint64_t parent, std::string_view name);
  Result<Inode*> NewInode(const RequestContext& ctx, const Inode& parent, uint32_t mode);
  void AddName(Inode& dir, std::string_view name, Inode& node);
  void RemoveName(Inode& dir, std::string_view name, Inode& node);
  void DropName(Inode& dir, std::string_view name, Inode& node);
  void MaybeFree(Inode& node);
  Result<void> Resize(Inode& node, uint64_t size);
  Result<OpenResult> OpenNode(const RequestContext& ctx, Inode& node, uint32_t flags);
  Result<OpenResult> NewHandle(Inode& node, uint32_t flags, bool dir);
  void CloseHandle(uint64_t handle);
  void ForgetLocked(uint64_t node, uint64_t nlookup);
  Attributes Attr(const Inode& node) const;
  Entry MakeEntry(const Inode& node) const;
  Entry Reference(Inode& node);
  bool IsAncestor(uint64_t ancestor, uint64_t node);

  const MemFsOptions options_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, Inode> nodes_;
  std::unordered_map<uint64_t, Handle> handles_;
  uint64_t next_node_ = 1;  // FUSE_ROOT_ID first.
  uint64_t next_handle_ = 1;
  uint64_t used_bytes_ = 0;
};

}  // namespace memfs

#endif  // VIRTIOFS_EXAMPLES_MEMFS_MEMFS_H_
