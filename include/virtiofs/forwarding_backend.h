// ForwardingBackend: a Backend that passes every call to another Backend.
//
// It is the base for decorators: a backend that changes a few operations of
// another one and leaves the rest alone (a read-only view, logging, quotas,
// xattr filtering, access control). Subclass it, override what you change,
// and call ForwardingBackend::Method(...) (or inner()->Method(...)) for what
// you let through:
//
//   class NoXattrs : public virtiofs::ForwardingBackend {
//    public:
//     using ForwardingBackend::ForwardingBackend;
//     void SetXattr(const RequestContext&, uint64_t, std::string_view,
//                   std::span<const uint8_t>, uint32_t, uint32_t,
//                   Reply<void> reply) override {
//       reply.Error(EPERM);
//     }
//   };
//
// Every virtual of Backend is forwarded, with its arguments unchanged: the
// session calls (InitFlags, Init, CreateQueueContext, InterruptWaits,
// Destroy), every operation, and Interrupt. Replies are handed over as they
// are (they are move-only handles): the inner backend answers the guest
// directly, now or later, from any thread. A decorator that answers itself
// instead must not forward that reply too (one answer per request).
//
// A decorator that refuses an operation which creates something must not
// forward it: the Entry the inner backend would return counts as a lookup
// (see backend.h), and a node the guest never hears of would never be
// forgotten.
//
// Ownership: the inner backend is borrowed; it must outlive this object.
// Thread safety: as the inner backend's (this class keeps no state).
#ifndef VIRTIOFS_FORWARDING_BACKEND_H_
#define VIRTIOFS_FORWARDING_BACKEND_H_

#include <sys/statvfs.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "virtiofs/backend.h"

namespace virtiofs {

class ForwardingBackend : public Backend {
 public:
  // `inner` must not be null and must outlive this object.
  explicit ForwardingBackend(Backend* inner) : inner_(inner) {}
  ForwardingBackend(const ForwardingBackend&) = delete;
  ForwardingBackend& operator=(const ForwardingBackend&) = delete;
  ~ForwardingBackend() override = default;

  Backend* inner() const { return inner_; }

  // ---- session ----
  uint64_t InitFlags() const override { return inner_->InitFlags(); }
  void Init(uint32_t minor, uint64_t flags) override { inner_->Init(minor, flags); }
  std::unique_ptr<QueueContext> CreateQueueContext(uint32_t queue_index) override {
    return inner_->CreateQueueContext(queue_index);
  }
  void InterruptWaits() override { inner_->InterruptWaits(); }
  void Destroy() override { inner_->Destroy(); }

  // ---- nodes ----
  void Lookup(const RequestContext& ctx, uint64_t parent, std::string_view name,
              Reply<Entry> reply) override {
    inner_->Lookup(ctx, parent, name, std::move(reply));
  }
  void Forget(uint64_t node, uint64_t nlookup) override { inner_->Forget(node, nlookup); }
  void BatchForget(std::span<const ForgetItem> items) override { inner_->BatchForget(items); }
  void GetAttr(const RequestContext& ctx, uint64_t node, std::optional<uint64_t> handle,
               Reply<Attributes> reply) override {
    inner_->GetAttr(ctx, node, handle, std::move(reply));
  }
  void SetAttr(const RequestContext& ctx, uint64_t node, const SetAttrRequest& attr,
               Reply<Attributes> reply) override {
    inner_->SetAttr(ctx, node, attr, std::move(reply));
  }
  void Statx(const RequestContext& ctx, uint64_t node, std::optional<uint64_t> handle,
             uint32_t sx_flags, uint32_t sx_mask, Reply<StatxResult> reply) override {
    inner_->Statx(ctx, node, handle, sx_flags, sx_mask, std::move(reply));
  }
  void ReadLink(const RequestContext& ctx, uint64_t node, Reply<std::string> reply) override {
    inner_->ReadLink(ctx, node, std::move(reply));
  }
  void Symlink(const RequestContext& ctx, uint64_t parent, std::string_view name,
               std::string_view target, Reply<Entry> reply) override {
    inner_->Symlink(ctx, parent, name, target, std::move(reply));
  }
  void Mknod(const RequestContext& ctx, uint64_t parent, std::string_view name, uint32_t mode,
             uint32_t rdev, uint32_t umask, Reply<Entry> reply) override {
    inner_->Mknod(ctx, parent, name, mode, rdev, umask, std::move(reply));
  }
  void Mkdir(const RequestContext& ctx, uint64_t parent, std::string_view name, uint32_t mode,
             uint32_t umask, Reply<Entry> reply) override {
    inner_->Mkdir(ctx, parent, name, mode, umask, std::move(reply));
  }
  void Unlink(const RequestContext& ctx, uint64_t parent, std::string_view name,
              Reply<void> reply) override {
    inner_->Unlink(ctx, parent, name, std::move(reply));
  }
  void Rmdir(const RequestContext& ctx, uint64_t parent, std::string_view name,
             Reply<void> reply) override {
    inner_->Rmdir(ctx, parent, name, std::move(reply));
  }
  void Rename(const RequestContext& ctx, uint64_t parent, std::string_view name,
              uint64_t new_parent, std::string_view new_name, uint32_t flags,
              Reply<void> reply) override {
    inner_->Rename(ctx, parent, name, new_parent, new_name, flags, std::move(reply));
  }
  void Link(const RequestContext& ctx, uint64_t node, uint64_t new_parent,
            std::string_view new_name, Reply<Entry> reply) override {
    inner_->Link(ctx, node, new_parent, new_name, std::move(reply));
  }
  void Access(const RequestContext& ctx, uint64_t node, uint32_t mask, Reply<void> reply) override {
    inner_->Access(ctx, node, mask, std::move(reply));
  }
  void StatFs(const RequestContext& ctx, uint64_t node, Reply<struct statvfs> reply) override {
    inner_->StatFs(ctx, node, std::move(reply));
  }

  // ---- files ----
  void Open(const RequestContext& ctx, uint64_t node, uint32_t flags,
            Reply<OpenResult> reply) override {
    inner_->Open(ctx, node, flags, std::move(reply));
  }
  void Create(const RequestContext& ctx, uint64_t parent, std::string_view name, uint32_t mode,
              uint32_t flags, uint32_t umask, Reply<CreateResult> reply) override {
    inner_->Create(ctx, parent, name, mode, flags, umask, std::move(reply));
  }
  void TmpFile(const RequestContext& ctx, uint64_t parent, uint32_t mode, uint32_t flags,
               uint32_t umask, Reply<CreateResult> reply) override {
    inner_->TmpFile(ctx, parent, mode, flags, umask, std::move(reply));
  }
  void Read(const RequestContext& ctx, uint64_t node, const ReadRequest& req,
            ReadReply reply) override {
    inner_->Read(ctx, node, req, std::move(reply));
  }
  void Write(const RequestContext& ctx, uint64_t node, const WriteRequest& req,
             Reply<uint32_t> reply) override {
    inner_->Write(ctx, node, req, std::move(reply));
  }
  void Flush(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t lock_owner,
             Reply<void> reply) override {
    inner_->Flush(ctx, node, handle, lock_owner, std::move(reply));
  }
  void Release(const RequestContext& ctx, uint64_t node, uint64_t handle, uint32_t flags,
               uint32_t release_flags, uint64_t lock_owner, Reply<void> reply) override {
    inner_->Release(ctx, node, handle, flags, release_flags, lock_owner, std::move(reply));
  }
  void Fsync(const RequestContext& ctx, uint64_t node, uint64_t handle, bool datasync,
             Reply<void> reply) override {
    inner_->Fsync(ctx, node, handle, datasync, std::move(reply));
  }
  void Fallocate(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t offset,
                 uint64_t length, uint32_t mode, Reply<void> reply) override {
    inner_->Fallocate(ctx, node, handle, offset, length, mode, std::move(reply));
  }
  void Lseek(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t offset,
             uint32_t whence, Reply<uint64_t> reply) override {
    inner_->Lseek(ctx, node, handle, offset, whence, std::move(reply));
  }
  void CopyFileRange(const RequestContext& ctx, uint64_t node_in, uint64_t handle_in,
                     uint64_t offset_in, uint64_t node_out, uint64_t handle_out,
                     uint64_t offset_out, uint64_t length, uint64_t flags,
                     Reply<uint64_t> reply) override {
    inner_->CopyFileRange(ctx, node_in, handle_in, offset_in, node_out, handle_out, offset_out,
                          length, flags, std::move(reply));
  }
  void Bmap(const RequestContext& ctx, uint64_t node, uint32_t blocksize, uint64_t block,
            Reply<uint64_t> reply) override {
    inner_->Bmap(ctx, node, blocksize, block, std::move(reply));
  }
  void Ioctl(const RequestContext& ctx, uint64_t node, uint64_t handle, uint32_t flags,
             uint32_t cmd, uint64_t arg, std::span<const uint8_t> in, uint32_t out_size,
             Reply<IoctlResult> reply) override {
    inner_->Ioctl(ctx, node, handle, flags, cmd, arg, in, out_size, std::move(reply));
  }
  void Poll(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t kh, uint32_t flags,
            uint32_t events, Reply<uint32_t> reply) override {
    inner_->Poll(ctx, node, handle, kh, flags, events, std::move(reply));
  }

  // ---- locks ----
  void GetLk(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t owner,
             const FileLock& lock, bool flock, Reply<FileLock> reply) override {
    inner_->GetLk(ctx, node, handle, owner, lock, flock, std::move(reply));
  }
  void SetLk(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t owner,
             const FileLock& lock, bool flock, bool wait, Reply<void> reply) override {
    inner_->SetLk(ctx, node, handle, owner, lock, flock, wait, std::move(reply));
  }

  // ---- directories ----
  void OpenDir(const RequestContext& ctx, uint64_t node, uint32_t flags,
               Reply<OpenResult> reply) override {
    inner_->OpenDir(ctx, node, flags, std::move(reply));
  }
  void ReadDir(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t offset,
               bool plus, DirReply reply) override {
    inner_->ReadDir(ctx, node, handle, offset, plus, std::move(reply));
  }
  void ReleaseDir(const RequestContext& ctx, uint64_t node, uint64_t handle, uint32_t flags,
                  Reply<void> reply) override {
    inner_->ReleaseDir(ctx, node, handle, flags, std::move(reply));
  }
  void FsyncDir(const RequestContext& ctx, uint64_t node, uint64_t handle, bool datasync,
                Reply<void> reply) override {
    inner_->FsyncDir(ctx, node, handle, datasync, std::move(reply));
  }

  // ---- extended attributes ----
  void SetXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                std::span<const uint8_t> value, uint32_t flags, uint32_t setxattr_flags,
                Reply<void> reply) override {
    inner_->SetXattr(ctx, node, name, value, flags, setxattr_flags, std::move(reply));
  }
  void GetXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                Reply<std::string> reply) override {
    inner_->GetXattr(ctx, node, name, std::move(reply));
  }
  void ListXattr(const RequestContext& ctx, uint64_t node, Reply<std::string> reply) override {
    inner_->ListXattr(ctx, node, std::move(reply));
  }
  void RemoveXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                   Reply<void> reply) override {
    inner_->RemoveXattr(ctx, node, name, std::move(reply));
  }

  // ---- whole file system ----
  void SyncFs(const RequestContext& ctx, uint64_t node, Reply<void> reply) override {
    inner_->SyncFs(ctx, node, std::move(reply));
  }
  void SetupMapping(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t foffset,
                    uint64_t len, uint64_t flags, uint64_t moffset, Reply<void> reply) override {
    inner_->SetupMapping(ctx, node, handle, foffset, len, flags, moffset, std::move(reply));
  }
  void RemoveMapping(const RequestContext& ctx, std::span<const RemoveMappingItem> items,
                     Reply<void> reply) override {
    inner_->RemoveMapping(ctx, items, std::move(reply));
  }
  void Interrupt(uint64_t unique) override { inner_->Interrupt(unique); }

 private:
  Backend* const inner_;
};

}  // namespace virtiofs

#endif  // VIRTIOFS_FORWARDING_BACKEND_H_
