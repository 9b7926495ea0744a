// ReadOnlyView: any Backend, seen read-only.
//
// A decorator built on ForwardingBackend (virtiofs/forwarding_backend.h):
// every operation that would change the file system answers EROFS without
// reaching the inner backend, and everything else is forwarded untouched.
//
// Refused with EROFS:
//   SETATTR, MKNOD, MKDIR, SYMLINK, UNLINK, RMDIR, RENAME/RENAME2, LINK,
//   CREATE, TMPFILE, WRITE, FALLOCATE, COPY_FILE_RANGE, SETXATTR,
//   REMOVEXATTR; OPEN for writing (O_WRONLY, O_RDWR) or with O_TRUNC;
//   ACCESS asking for W_OK (access(2) answers EROFS on a read-only file
//   system); SETUPMAPPING of a writable DAX window; IOCTL unless its command
//   only reads (_IOC_DIR is _IOC_READ: FS_IOC_GETFLAGS, FS_IOC_FSGETXATTR),
//   since a backend may implement ioctls that change a file and this view
//   cannot know which.
// Forwarded: LOOKUP, FORGET, GETATTR, STATX, READLINK, OPEN read-only, READ,
//   OPENDIR, READDIR(PLUS), GETXATTR, LISTXATTR, STATFS, locks (GETLK, SETLK,
//   SETLKW: advisory, they change nothing on disk), FLUSH, RELEASE, FSYNC,
//   FSYNCDIR, SYNCFS, LSEEK, BMAP, POLL, REMOVEMAPPING, INTERRUPT, and the
//   session calls.
// INIT: FUSE_WRITEBACK_CACHE is masked out of what the inner backend
// offers, since a writeback cache would accept writes in the guest that can
// never be flushed.
//
// The guest still sees the permission bits the inner backend reports (a
// file may look writable); its writes then fail with EROFS. STATFS does not
// gain ST_RDONLY: a Reply cannot be rewritten on its way back. Mount with
// `-o ro` in the guest to have the guest kernel refuse writes itself.
//
// Ownership: the inner backend is borrowed and must outlive the view.
#ifndef VIRTIOFS_EXAMPLES_READONLY_VIEW_READONLY_VIEW_H_
#define VIRTIOFS_EXAMPLES_READONLY_VIEW_READONLY_VIEW_H_

#include <cstdint>
#include <span>
#include <string_view>

#include "virtiofs/backend.h"
#include "virtiofs/forwarding_backend.h"

namespace readonly_view {

using virtiofs::Attributes;
using virtiofs::Backend;
using virtiofs::CreateResult;
using virtiofs::Entry;
using virtiofs::IoctlResult;
using virtiofs::OpenResult;
using virtiofs::Reply;
using virtiofs::RequestContext;
using virtiofs::SetAttrRequest;
using virtiofs::WriteRequest;

// Whether OPEN `flags` (the guest's open(2) flags) ask for a change.
bool OpenFlagsWrite(uint32_t flags);

class ReadOnlyView : public virtiofs::ForwardingBackend {
 public:
  // `inner` must outlive the view.
  explicit ReadOnlyView(Backend* inner) : ForwardingBackend(inner) {}

  uint64_t InitFlags() const override;

  void SetAttr(const RequestContext& ctx, uint64_t node, const SetAttrRequest& attr,
               Reply<Attributes> reply) override;
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

  void Open(const RequestContext& ctx, uint64_t node, uint32_t flags,
            Reply<OpenResult> reply) override;
  void Create(const RequestContext& ctx, uint64_t parent, std::string_view name, uint32_t mode,
              uint32_t flags, uint32_t umask, Reply<CreateResult> reply) override;
  void TmpFile(const RequestContext& ctx, uint64_t parent, uint32_t mode, uint32_t flags,
               uint32_t umask, Reply<CreateResult> reply) override;
  void Write(const RequestContext& ctx, uint64_t node, const WriteRequest& req,
             Reply<uint32_t> reply) override;
  void Fallocate(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t offset,
                 uint64_t length, uint32_t mode, Reply<void> reply) override;
  void CopyFileRange(const RequestContext& ctx, uint64_t node_in, uint64_t handle_in,
                     uint64_t offset_in, uint64_t node_out, uint64_t handle_out,
                     uint64_t offset_out, uint64_t length, uint64_t flags,
                     Reply<uint64_t> reply) override;
  void Ioctl(const RequestContext& ctx, uint64_t node, uint64_t handle, uint32_t flags,
             uint32_t cmd, uint64_t arg, std::span<const uint8_t> in, uint32_t out_size,
             Reply<IoctlResult> reply) override;

  void SetXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                std::span<const uint8_t> value, uint32_t flags, uint32_t setxattr_flags,
                Reply<void> reply) override;
  void RemoveXattr(const RequestContext& ctx, uint64_t node, std::string_view name,
                   Reply<void> reply) override;

  void SetupMapping(const RequestContext& ctx, uint64_t node, uint64_t handle, uint64_t foffset,
                    uint64_t len, uint64_t flags, uint64_t moffset, Reply<void> reply) override;
};

}  // namespace readonly_view

#endif  // VIRTIOFS_EXAMPLES_READONLY_VIEW_READONLY_VIEW_H_
