// SyncFileSystem's ENOSYS defaults, and SyncAdapter: each Backend call runs
// the synchronous method and answers the Reply with its Result.
#include <cerrno>
#include <exception>
#include <string_view>
#include <type_traits>

#include "virtiofs/log.h"
#include "virtiofs/sync_file_system.h"

namespace virtiofs {

// ---- SyncFileSystem defaults ----

void SyncFileSystem::Forget(uint64_t, uint64_t) {}

void SyncFileSystem::BatchForget(std::span<const ForgetItem> items) {
  for (const ForgetItem& it : items) Forget(it.node_id, it.nlookup);
}

Result<Entry> SyncFileSystem::Lookup(const RequestContext&, uint64_t, std::string_view) {
  return Errno{ENOSYS};
}
Result<Attributes> SyncFileSystem::GetAttr(const RequestContext&, uint64_t,
                                           std::optional<uint64_t>) {
  return Errno{ENOSYS};
}
Result<Attributes> SyncFileSystem::SetAttr(const RequestContext&, uint64_t, const SetAttrRequest&) {
  return Errno{ENOSYS};
}
Result<StatxResult> SyncFileSystem::Statx(const RequestContext&, uint64_t, std::optional<uint64_t>,
                                          uint32_t, uint32_t) {
  return Errno{ENOSYS};
}
Result<std::string> SyncFileSystem::ReadLink(const RequestContext&, uint64_t) {
  return Errno{ENOSYS};
}
Result<Entry> SyncFileSystem::Symlink(const RequestContext&, uint64_t, std::string_view,
                                      std::string_view) {
  return Errno{ENOSYS};
}
Result<Entry> SyncFileSystem::Mknod(const RequestContext&, uint64_t, std::string_view, uint32_t,
                                    uint32_t, uint32_t) {
  return Errno{ENOSYS};
}
Result<Entry> SyncFileSystem::Mkdir(const RequestContext&, uint64_t, std::string_view, uint32_t,
                                    uint32_t) {
  return Errno{ENOSYS};
}
Result<void> SyncFileSystem::Unlink(const RequestContext&, uint64_t, std::string_view) {
  return Errno{ENOSYS};
}
Result<void> SyncFileSystem::Rmdir(const RequestContext&, uint64_t, std::string_view) {
  return Errno{ENOSYS};
}
Result<void> SyncFileSystem::Rename(const RequestContext&, uint64_t, std::string_view, uint64_t,
                                    std::string_view, uint32_t) {
  return Errno{ENOSYS};
}
Result<Entry> SyncFileSystem::Link(const RequestContext&, uint64_t, uint64_t, std::string_view) {
  return Errno{ENOSYS};
}
Result<void> SyncFileSystem::Access(const RequestContext&, uint64_t, uint32_t) {
  return Errno{ENOSYS};
}
Result<struct statvfs> SyncFileSystem::StatFs(const RequestContext&, uint64_t) {
  return Errno{ENOSYS};
}
Result<OpenResult> SyncFileSystem::Open(const RequestContext&, uint64_t, uint32_t) {
  return Errno{ENOSYS};
}
Result<CreateResult> SyncFileSystem::Create(const RequestContext&, uint64_t, std::string_view,
                                            uint32_t, uint32_t, uint32_t) {
  return Errno{ENOSYS};
}
Result<CreateResult> SyncFileSystem::TmpFile(const RequestContext&, uint64_t, uint32_t, uint32_t,
                                             uint32_t) {
  return Errno{ENOSYS};
}
Result<uint32_t> SyncFileSystem::Read(const RequestContext&, uint64_t, const ReadRequest&,
                                      std::span<const iovec>) {
  return Errno{ENOSYS};
}
Result<uint32_t> SyncFileSystem::Write(const RequestContext&, uint64_t, const WriteRequest&) {
  return Errno{ENOSYS};
}
Result<void> SyncFileSystem::Flush(const RequestContext&, uint64_t, uint64_t, uint64_t) {
  return Errno{ENOSYS};
}
Result<void> SyncFileSystem::Release(const RequestContext&, uint64_t, uint64_t, uint32_t, uint32_t,
                                     uint64_t) {
  return Errno{ENOSYS};
}
Result<void> SyncFileSystem::Fsync(const RequestContext&, uint64_t, uint64_t, bool) {
  return Errno{ENOSYS};
}
Result<void> SyncFileSystem::Fallocate(const RequestContext&, uint64_t, uint64_t, uint64_t,
                                       uint64_t, uint32_t) {
  return Errno{ENOSYS};
}
Result<uint64_t> SyncFileSystem::Lseek(const RequestContext&, uint64_t, uint64_t, uint64_t,
                                       uint32_t) {
  return Errno{ENOSYS};
}
Result<uint64_t> SyncFileSystem::CopyFileRange(const RequestContext&, uint64_t, uint64_t, uint64_t,
                                               uint64_t, uint64_t, uint64_t, uint64_t, uint64_t) {
  return Errno{ENOSYS};
}
Result<uint64_t> SyncFileSystem::Bmap(const RequestContext&, uint64_t, uint32_t, uint64_t) {
  return Errno{ENOSYS};
}
Result<IoctlResult> SyncFileSystem::Ioctl(const RequestContext&, uint64_t, uint64_t, uint32_t,
                                          uint32_t, uint64_t, std::span<const uint8_t>, uint32_t) {
  return Errno{ENOSYS};
}
Result<uint32_t> SyncFileSystem::Poll(const RequestContext&, uint64_t, uint64_t, uint64_t, uint32_t,
                                      uint32_t) {
  return Errno{ENOSYS};
}
Result<FileLock> SyncFileSystem::GetLk(const RequestContext&, uint64_t, uint64_t, uint64_t,
                                       const FileLock&, bool) {
  return Errno{ENOSYS};
}
Result<void> SyncFileSystem::SetLk(const RequestContext&, uint64_t, uint64_t, uint64_t,
                                   const FileLock&, bool, bool) {
  return Errno{ENOSYS};
}
Result<OpenResult> SyncFileSystem::OpenDir(const RequestContext&, uint64_t, uint32_t) {
  return Errno{ENOSYS};
}
Result<void> SyncFileSystem::ReadDir(const RequestContext&, uint64_t, uint64_t, uint64_t, bool,
                                     DirReply&) {
  return Errno{ENOSYS};
}
Result<void> SyncFileSystem::ReleaseDir(const RequestContext&, uint64_t, uint64_t, uint32_t) {
  return Errno{ENOSYS};
}
Result<void> SyncFileSystem::FsyncDir(const RequestContext&, uint64_t, uint64_t, bool) {
  return Errno{ENOSYS};
}
Result<void> SyncFileSystem::SetXattr(const RequestContext&, uint64_t, std::string_view,
                                      std::span<const uint8_t>, uint32_t, uint32_t) {
  return Errno{ENOSYS};
}
Result<std::string> SyncFileSystem::GetXattr(const RequestContext&, uint64_t, std::string_view) {
  return Errno{ENOSYS};
}
Result<std::string> SyncFileSystem::ListXattr(const RequestContext&, uint64_t) {
  return Errno{ENOSYS};
}
Result<void> SyncFileSystem::RemoveXattr(const RequestContext&, uint64_t, std::string_view) {
  return Errno{ENOSYS};
}
Result<void> SyncFileSystem::SyncFs(const RequestContext&, uint64_t) { return Errno{ENOSYS}; }
Result<void> SyncFileSystem::SetupMapping(const RequestContext&, uint64_t, uint64_t, uint64_t,
                                          uint64_t, uint64_t, uint64_t) {
  return Errno{ENOSYS};
}
Result<void> SyncFileSystem::RemoveMapping(const RequestContext&,
                                           std::span<const RemoveMappingItem>) {
  return Errno{ENOSYS};
}

// ---- SyncAdapter ----

namespace {

void LogEscaped(std::string_view op, const char* what) {
  VIRTIOFS_LOG(kError, "backend: {} threw {}; answering EIO", op, what);
}

// Runs `call` (returning a Result) and answers `reply` with it. An exception
// is a file-system bug, but the guest must still get an answer, and the
// library's worker must not unwind.
template <typename ReplyT, typename Call>
void Answer(std::string_view op, ReplyT& reply, Call&& call) noexcept {
  try {
    auto result = call();
    if (!result.ok()) {
      reply.Error(result.error());
    } else if constexpr (std::is_same_v<decltype(result), Result<void>>) {
      reply.Ok();
    } else {
      reply.Ok(*result);
    }
    return;
  } catch (const std::exception& e) {
    LogEscaped(op, e.what());
  } catch (...) {
    LogEscaped(op, "a non-std exception");
  }
  if (reply.pending()) reply.Error(EIO);
}

// The same for calls without an answer.
template <typename Call>
void Guard(std::string_view op, Call&& call) noexcept {
  try {
    call();
  } catch (const std::exception& e) {
    VIRTIOFS_LOG(kError, "backend: {} threw {}; ignored", op, e.what());
  } catch (...) {
    VIRTIOFS_LOG(kError, "backend: {} threw a non-std exception; ignored", op);
  }
}

}  // namespace

uint64_t SyncAdapter::InitFlags() const {
  uint64_t flags = 0;
  Guard("InitFlags", [&] { flags = fs_.InitFlags(); });
  return flags;
}

void SyncAdapter::Init(uint32_t minor, uint64_t flags) {
  Guard("Init", [&] { fs_.Init(minor, flags); });
}

void SyncAdapter::Destroy() {
  Guard("Destroy", [&] { fs_.Destroy(); });
}

void SyncAdapter::Lookup(const RequestContext& ctx, uint64_t parent, std::string_view name,
                         Reply<Entry> reply) {
  Answer("Lookup", reply, [&] { return fs_.Lookup(ctx, parent, name); });
}

void SyncAdapter::Forget(uint64_t node, uint64_t nlookup) {
  Guard("Forget", [&] { fs_.Forget(node, nlookup); });
}

void SyncAdapter::BatchForget(std::span<const ForgetItem> items) {
  Guard("BatchForget", [&] { fs_.BatchForget(items); });
}

void SyncAdapter::GetAttr(const RequestContext& ctx, uint64_t node, std::optional<uint64_t> handle,
                          Reply<Attributes> reply) {
  Answer("GetAttr", reply, [&] { return fs_.GetAttr(ctx, node, handle); });
}

void SyncAdapter::SetAttr(const RequestContext& ctx, uint64_t node, const SetAttrRequest& attr,
                          Reply<Attributes> reply) {
  Answer("SetAttr", reply, [&] { return fs_.SetAttr(ctx, node, attr); });
}

void SyncAdapter::Statx(const RequestContext& ctx, uint64_t node, std::optional<uint64_t> handle,
                        uint32_t sx_flags, uint32_t sx_mask, Reply<StatxResult> reply) {
  Answer("Statx", reply, [&] { return fs_.Statx(ctx, node, handle, sx_flags, sx_mask); });
}

void SyncAdapter::ReadLink(const RequestContext& ctx, uint64_t node, Reply<std::string> reply) {
  Answer("ReadLink", reply, [&] { return fs_.ReadLink(ctx, node); });
}

void SyncAdapter::Symlink(const RequestContext& ctx, uint64_t parent, std::string_view name,
                          std::string_view target, Reply<Entry> reply) {
  Answer("Symlink", reply, [&] { return fs_.Symlink(ctx, parent, name, target); });
}

void SyncAdapter::Mknod(const RequestContext& ctx, uint64_t parent, std::string_view name,
                        uint32_t mode, uint32_t rdev, uint32_t umask, Reply<Entry> reply) {
  Answer("Mknod", reply, [&] { return fs_.Mknod(ctx, parent, name, mode, rdev, umask); });
}

void SyncAdapter::Mkdir(const RequestContext& ctx, uint64_t parent, std::string_view name,
                        uint32_t mode, uint32_t umask, Reply<Entry> reply) {
  Answer("Mkdir", reply, [&] { return fs_.Mkdir(ctx, parent, name, mode, umask); });
}

void SyncAdapter::Unlink(const RequestContext& ctx, uint64_t parent, std::string_view name,
                         Reply<void> reply) {
  Answer("Unlink", reply, [&] { return fs_.Unlink(ctx, parent, name); });
}

void SyncAdapter::Rmdir(const RequestContext& ctx, uint64_t parent, std::string_view name,
                        Reply<void> reply) {
  Answer("Rmdir", reply, [&] { return fs_.Rmdir(ctx, parent, name); });
}

void SyncAdapter::Rename(const RequestContext& ctx, uint64_t parent, std::string_view name,
                         uint64_t new_parent, std::string_view new_name, uint32_t flags,
                         Reply<void> reply) {
  Answer("Rename", reply,
         [&] { return fs_.Rename(ctx, parent, name, new_parent, new_name, flags); });
}

void SyncAdapter::Link(const RequestContext& ctx, uint64_t node, uint64_t new_parent,
                       std::string_view new_name, Reply<Entry> reply) {
  Answer("Link", reply, [&] { return fs_.Link(ctx, node, new_parent, new_name); });
}

void SyncAdapter::Access(const RequestContext& ctx, uint64_t node, uint32_t mask,
                         Reply<void> reply) {
  Answer("Access", reply, [&] { return fs_.Access(ctx, node, mask); });
}

void SyncAdapter::StatFs(const RequestContext& ctx, uint64_t node, Reply<struct statvfs> reply) {
  Answer("StatFs", reply, [&] { return fs_.StatFs(ctx, node); });
}

void SyncAdapter::Open(const RequestContext& ctx, uint64_t node, uint32_t flags,
                       Reply<OpenResult> reply) {
  Answer("Open", reply, [&] { return fs_.Open(ctx, node, flags); });
}

void SyncAdapter::Create(const RequestContext& ctx, uint64_t parent, std::string_view name,
                         uint32_t mode, uint32_t flags, uint32_t umask, Reply<CreateResult> reply) {
  Answer("Create", reply, [&] { return fs_.Create(ctx, parent, name, mode, flags, umask); });
}

void SyncAdapter::TmpFile(const RequestContext& ctx, uint64_t parent, uint32_t mode, uint32_t flags,
                          uint32_t umask, Reply<CreateResult> reply) {
  Answer("TmpFile", reply, [&] { return fs_.TmpFile(ctx, parent, mode, flags, umask); });
}

void SyncAdapter::Read(const RequestContext& ctx, uint64_t node, const ReadRequest& req,
                       ReadReply reply) {
  Answer("Read", reply, [&] { return fs_.Read(ctx, node, req, reply.buffers()); });
}

void SyncAdapter::Write(const RequestContext& ctx, uint64_t node, const WriteRequest& req,
                        Reply<uint32_t> reply) {
  Answer("Write", reply, [&] { return fs_.Write(ctx, node, req); });
}

void SyncAdapter::Flush(const RequestContext& ctx, uint64_t node, uint64_t handle,
                        uint64_t lock_owner, Reply<void> reply) {
  Answer("Flush", reply, [&] { return fs_.Flush(ctx, node, handle, lock_owner); });
}

void SyncAdapter::Release(const RequestContext& ctx, uint64_t node, uint64_t handle, uint32_t flags,
                          uint32_t release_flags, uint64_t lock_owner, Reply<void> reply) {
  Answer("Release", reply,
         [&] { return fs_.Release(ctx, node, handle, flags, release_flags, lock_owner); });
}

void SyncAdapter::Fsync(const RequestContext& ctx, uint64_t node, uint64_t handle, bool datasync,
                        Reply<void> reply) {
  Answer("Fsync", reply, [&] { return fs_.Fsync(ctx, node, handle, datasync); });
}

void SyncAdapter::Fallocate(const RequestContext& ctx, uint64_t node, uint64_t handle,
                            uint64_t offset, uint64_t length, uint32_t mode, Reply<void> reply) {
  Answer("Fallocate", reply,
         [&] { return fs_.Fallocate(ctx, node, handle, offset, length, mode); });
}

void SyncAdapter::Lseek(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t offset,
                        uint32_t whence, Reply<uint64_t> reply) {
  Answer("Lseek", reply, [&] { return fs_.Lseek(ctx, node, handle, offset, whence); });
}

void SyncAdapter::CopyFileRange(const RequestContext& ctx, uint64_t node_in, uint64_t handle_in,
                                uint64_t offset_in, uint64_t node_out, uint64_t handle_out,
                                uint64_t offset_out, uint64_t length, uint64_t flags,
                                Reply<uint64_t> reply) {
  Answer("CopyFileRange", reply, [&] {
    return fs_.CopyFileRange(ctx, node_in, handle_in, offset_in, node_out, handle_out, offset_out,
                             length, flags);
  });
}

void SyncAdapter::Bmap(const RequestContext& ctx, uint64_t node, uint32_t blocksize, uint64_t block,
                       Reply<uint64_t> reply) {
  Answer("Bmap", reply, [&] { return fs_.Bmap(ctx, node, blocksize, block); });
}

void SyncAdapter::Ioctl(const RequestContext& ctx, uint64_t node, uint64_t handle, uint32_t flags,
                        uint32_t cmd, uint64_t arg, std::span<const uint8_t> in, uint32_t out_size,
                        Reply<IoctlResult> reply) {
  Answer("Ioctl", reply,
         [&] { return fs_.Ioctl(ctx, node, handle, flags, cmd, arg, in, out_size); });
}

void SyncAdapter::Poll(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t kh,
                       uint32_t flags, uint32_t events, Reply<uint32_t> reply) {
  Answer("Poll", reply, [&] { return fs_.Poll(ctx, node, handle, kh, flags, events); });
}

void SyncAdapter::GetLk(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t owner,
                        const FileLock& lock, bool flock, Reply<FileLock> reply) {
  Answer("GetLk", reply, [&] { return fs_.GetLk(ctx, node, handle, owner, lock, flock); });
}

void SyncAdapter::SetLk(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t owner,
                        const FileLock& lock, bool flock, bool wait, Reply<void> reply) {
  Answer("SetLk", reply, [&] { return fs_.SetLk(ctx, node, handle, owner, lock, flock, wait); });
}

void SyncAdapter::OpenDir(const RequestContext& ctx, uint64_t node, uint32_t flags,
                          Reply<OpenResult> reply) {
  Answer("OpenDir", reply, [&] { return fs_.OpenDir(ctx, node, flags); });
}

void SyncAdapter::ReadDir(const RequestContext& ctx, uint64_t node, uint64_t handle,
                          uint64_t offset, bool plus, DirReply reply) {
  Answer("ReadDir", reply, [&] { return fs_.ReadDir(ctx, node, handle, offset, plus, reply); });
}

void SyncAdapter::ReleaseDir(const RequestContext& ctx, uint64_t node, uint64_t handle,
                             uint32_t flags, Reply<void> reply) {
  Answer("ReleaseDir", reply, [&] { return fs_.ReleaseDir(ctx, node, handle, flags); });
}

void SyncAdapter::FsyncDir(const RequestContext& ctx, uint64_t node, uint64_t handle, bool datasync,
                           Reply<void> reply) {
  Answer("FsyncDir", reply, [&] { return fs_.FsyncDir(ctx, node, handle, datasync); });
}

void SyncAdapter::SetXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                           std::span<const uint8_t> value, uint32_t flags, uint32_t setxattr_flags,
                           Reply<void> reply) {
  Answer("SetXattr", reply,
         [&] { return fs_.SetXattr(ctx, node, name, value, flags, setxattr_flags); });
}

void SyncAdapter::GetXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                           Reply<std::string> reply) {
  Answer("GetXattr", reply, [&] { return fs_.GetXattr(ctx, node, name); });
}

void SyncAdapter::ListXattr(const RequestContext& ctx, uint64_t node, Reply<std::string> reply) {
  Answer("ListXattr", reply, [&] { return fs_.ListXattr(ctx, node); });
}

void SyncAdapter::RemoveXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                              Reply<void> reply) {
  Answer("RemoveXattr", reply, [&] { return fs_.RemoveXattr(ctx, node, name); });
}

void SyncAdapter::SyncFs(const RequestContext& ctx, uint64_t node, Reply<void> reply) {
  Answer("SyncFs", reply, [&] { return fs_.SyncFs(ctx, node); });
}

void SyncAdapter::SetupMapping(const RequestContext& ctx, uint64_t node, uint64_t handle,
                               uint64_t foffset, uint64_t len, uint64_t flags, uint64_t moffset,
                               Reply<void> reply) {
  Answer("SetupMapping", reply,
         [&] { return fs_.SetupMapping(ctx, node, handle, foffset, len, flags, moffset); });
}

void SyncAdapter::RemoveMapping(const RequestContext& ctx, std::span<const RemoveMappingItem> items,
                                Reply<void> reply) {
  Answer("RemoveMapping", reply, [&] { return fs_.RemoveMapping(ctx, items); });
}

void SyncAdapter::Interrupt(uint64_t unique) {
  Guard("Interrupt", [&] { fs_.Interrupt(unique); });
}

}  // namespace virtiofs
