// PassthroughBackend: extended attributes, locks, and the remaining file
// operations.
#include "lib/passthrough/passthrough_fs.h"

namespace virtiofs::passthrough {

void PassthroughFs::SetXattr(const RequestContext&, uint64_t, std::string_view,
                             std::span<const uint8_t>, uint32_t, uint32_t, Reply<void> reply) {
  reply.Error(ENOSYS);
}
void PassthroughFs::GetXattr(const RequestContext&, uint64_t, std::string_view,
                             Reply<std::string> reply) {
  reply.Error(ENOSYS);
}
void PassthroughFs::ListXattr(const RequestContext&, uint64_t, Reply<std::string> reply) {
  reply.Error(ENOSYS);
}
void PassthroughFs::RemoveXattr(const RequestContext&, uint64_t, std::string_view,
                                Reply<void> reply) {
  reply.Error(ENOSYS);
}
void PassthroughFs::GetLk(const RequestContext&, uint64_t, uint64_t, uint64_t, const FileLock&,
                          bool, Reply<FileLock> reply) {
  reply.Error(ENOSYS);
}
void PassthroughFs::SetLk(const RequestContext&, uint64_t, uint64_t, uint64_t, const FileLock&,
                          bool, bool, Reply<void> reply) {
  reply.Error(ENOSYS);
}
void PassthroughFs::Fallocate(const RequestContext&, uint64_t, uint64_t, uint64_t, uint64_t,
                              uint32_t, Reply<void> reply) {
  reply.Error(ENOSYS);
}
void PassthroughFs::Lseek(const RequestContext&, uint64_t, uint64_t, uint64_t, uint32_t,
                          Reply<uint64_t> reply) {
  reply.Error(ENOSYS);
}
void PassthroughFs::CopyFileRange(const RequestContext&, uint64_t, uint64_t, uint64_t, uint64_t,
                                  uint64_t, uint64_t, uint64_t, uint64_t, Reply<uint64_t> reply) {
  reply.Error(ENOSYS);
}
void PassthroughFs::TmpFile(const RequestContext&, uint64_t, uint32_t, uint32_t, uint32_t,
                            Reply<CreateResult> reply) {
  reply.Error(ENOSYS);
}
void PassthroughFs::SyncFs(const RequestContext&, uint64_t, Reply<void> reply) {
  reply.Error(ENOSYS);
}
void PassthroughFs::Ioctl(const RequestContext&, uint64_t, uint64_t, uint32_t, uint32_t, uint64_t,
                          std::span<const uint8_t>, uint32_t, Reply<IoctlResult> reply) {
  reply.Error(ENOTTY);
}

}  // namespace virtiofs::passthrough
