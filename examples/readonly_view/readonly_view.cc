#include "examples/readonly_view/readonly_view.h"

#include <asm/ioctl.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

namespace readonly_view {

bool OpenFlagsWrite(uint32_t flags) {
  return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC) != 0;
}

uint64_t ReadOnlyView::InitFlags() const {
  return ForwardingBackend::InitFlags() & ~uint64_t{FUSE_WRITEBACK_CACHE};
}

// Every refusal answers before the inner backend sees the request: a
// creating call forwarded and then refused would leave the inner backend
// counting a lookup the guest never hears of.

void ReadOnlyView::SetAttr(const RequestContext&, uint64_t, const SetAttrRequest&,
                           Reply<Attributes> reply) {
  reply.Error(EROFS);
}

void ReadOnlyView::Symlink(const RequestContext&, uint64_t, std::string_view, std::string_view,
                           Reply<Entry> reply) {
  reply.Error(EROFS);
}

void ReadOnlyView::Mknod(const RequestContext&, uint64_t, std::string_view, uint32_t, uint32_t,
                         uint32_t, Reply<Entry> reply) {
  reply.Error(EROFS);
}

void ReadOnlyView::Mkdir(const RequestContext&, uint64_t, std::string_view, uint32_t, uint32_t,
                         Reply<Entry> reply) {
  reply.Error(EROFS);
}

void ReadOnlyView::Unlink(const RequestContext&, uint64_t, std::string_view, Reply<void> reply) {
  reply.Error(EROFS);
}

void ReadOnlyView::Rmdir(const RequestContext&, uint64_t, std::string_view, Reply<void> reply) {
  reply.Error(EROFS);
}

void ReadOnlyView::Rename(const RequestContext&, uint64_t, std::string_view, uint64_t,
                          std::string_view, uint32_t, Reply<void> reply) {
  reply.Error(EROFS);
}

void ReadOnlyView::Link(const RequestContext&, uint64_t, uint64_t, std::string_view,
                        Reply<Entry> reply) {
  reply.Error(EROFS);
}

void ReadOnlyView::Access(const RequestContext& ctx, uint64_t node, uint32_t mask,
                          Reply<void> reply) {
  if ((mask & W_OK) != 0) return reply.Error(EROFS);
  ForwardingBackend::Access(ctx, node, mask, std::move(reply));
}

void ReadOnlyView::Open(const RequestContext& ctx, uint64_t node, uint32_t flags,
                        Reply<OpenResult> reply) {
  if (OpenFlagsWrite(flags)) return reply.Error(EROFS);
  ForwardingBackend::Open(ctx, node, flags, std::move(reply));
}

void ReadOnlyView::Create(const RequestContext&, uint64_t, std::string_view, uint32_t, uint32_t,
                          uint32_t, Reply<CreateResult> reply) {
  reply.Error(EROFS);
}

void ReadOnlyView::TmpFile(const RequestContext&, uint64_t, uint32_t, uint32_t, uint32_t,
                           Reply<CreateResult> reply) {
  reply.Error(EROFS);
}

void ReadOnlyView::Write(const RequestContext&, uint64_t, const WriteRequest&,
                         Reply<uint32_t> reply) {
  reply.Error(EROFS);
}

void ReadOnlyView::Fallocate(const RequestContext&, uint64_t, uint64_t, uint64_t, uint64_t,
                             uint32_t, Reply<void> reply) {
  reply.Error(EROFS);
}

void ReadOnlyView::CopyFileRange(const RequestContext&, uint64_t, uint64_t, uint64_t, uint64_t,
                                 uint64_t, uint64_t, uint64_t, uint64_t, Reply<uint64_t> reply) {
  reply.Error(EROFS);
}

void ReadOnlyView::Ioctl(const RequestContext& ctx, uint64_t node, uint64_t handle, uint32_t flags,
                         uint32_t cmd, uint64_t arg, std::span<const uint8_t> in, uint32_t out_size,
                         Reply<IoctlResult> reply) {
  // Only commands that declare they just read (FS_IOC_GETFLAGS,
  // FS_IOC_FSGETXATTR); _IOC_NONE and _IOC_WRITE ones may change anything.
  if (_IOC_DIR(cmd) != _IOC_READ) return reply.Error(EROFS);
  ForwardingBackend::Ioctl(ctx, node, handle, flags, cmd, arg, in, out_size, std::move(reply));
}

void ReadOnlyView::SetXattr(const RequestContext&, uint64_t, std::string_view,
                            std::span<const uint8_t>, uint32_t, uint32_t, Reply<void> reply) {
  reply.Error(EROFS);
}

void ReadOnlyView::RemoveXattr(const RequestContext&, uint64_t, std::string_view,
                               Reply<void> reply) {
  reply.Error(EROFS);
}

void ReadOnlyView::SetupMapping(const RequestContext& ctx, uint64_t node, uint64_t handle,
                                uint64_t foffset, uint64_t len, uint64_t flags, uint64_t moffset,
                                Reply<void> reply) {
  if ((flags & FUSE_SETUPMAPPING_FLAG_WRITE) != 0) return reply.Error(EROFS);
  ForwardingBackend::SetupMapping(ctx, node, handle, foffset, len, flags, moffset,
                                  std::move(reply));
}

}  // namespace readonly_view
