// Every Backend operation defaults to ENOSYS.
#include "virtiofs/backend.h"

#include <cerrno>

namespace virtiofs {

void Backend::Forget(uint64_t, uint64_t) {}

void Backend::BatchForget(std::span<const ForgetItem> items) {
  for (const ForgetItem& it : items) Forget(it.node_id, it.nlookup);
}

void Backend::Lookup(const RequestContext&, uint64_t, std::string_view, Reply<Entry> reply) {
  reply.Error(ENOSYS);
}

void Backend::GetAttr(const RequestContext&, uint64_t, std::optional<uint64_t>,
                      Reply<Attributes> reply) {
  reply.Error(ENOSYS);
}

void Backend::SetAttr(const RequestContext&, uint64_t, const SetAttrRequest&,
                      Reply<Attributes> reply) {
  reply.Error(ENOSYS);
}

void Backend::Statx(const RequestContext&, uint64_t, std::optional<uint64_t>, uint32_t, uint32_t,
                    Reply<StatxResult> reply) {
  reply.Error(ENOSYS);
}

void Backend::ReadLink(const RequestContext&, uint64_t, Reply<std::string> reply) {
  reply.Error(ENOSYS);
}

void Backend::Symlink(const RequestContext&, uint64_t, std::string_view, std::string_view,
                      Reply<Entry> reply) {
  reply.Error(ENOSYS);
}

void Backend::Mknod(const RequestContext&, uint64_t, std::string_view, uint32_t, uint32_t, uint32_t,
                    Reply<Entry> reply) {
  reply.Error(ENOSYS);
}

void Backend::Mkdir(const RequestContext&, uint64_t, std::string_view, uint32_t, uint32_t,
                    Reply<Entry> reply) {
  reply.Error(ENOSYS);
}

void Backend::Unlink(const RequestContext&, uint64_t, std::string_view, Reply<void> reply) {
  reply.Error(ENOSYS);
}

void Backend::Rmdir(const RequestContext&, uint64_t, std::string_view, Reply<void> reply) {
  reply.Error(ENOSYS);
}

void Backend::Rename(const RequestContext&, uint64_t, std::string_view, uint64_t, std::string_view,
                     uint32_t, Reply<void> reply) {
  reply.Error(ENOSYS);
}

void Backend::Link(const RequestContext&, uint64_t, uint64_t, std::string_view,
                   Reply<Entry> reply) {
  reply.Error(ENOSYS);
}

void Backend::Access(const RequestContext&, uint64_t, uint32_t, Reply<void> reply) {
  reply.Error(ENOSYS);
}

void Backend::StatFs(const RequestContext&, uint64_t, Reply<struct statvfs> reply) {
  reply.Error(ENOSYS);
}

void Backend::Open(const RequestContext&, uint64_t, uint32_t, Reply<OpenResult> reply) {
  reply.Error(ENOSYS);
}

void Backend::Create(const RequestContext&, uint64_t, std::string_view, uint32_t, uint32_t,
                     uint32_t, Reply<CreateResult> reply) {
  reply.Error(ENOSYS);
}

void Backend::TmpFile(const RequestContext&, uint64_t, uint32_t, uint32_t, uint32_t,
                      Reply<CreateResult> reply) {
  reply.Error(ENOSYS);
}

void Backend::Read(const RequestContext&, uint64_t, const ReadRequest&, ReadReply reply) {
  reply.Error(ENOSYS);
}

void Backend::Write(const RequestContext&, uint64_t, const WriteRequest&, Reply<uint32_t> reply) {
  reply.Error(ENOSYS);
}

void Backend::Flush(const RequestContext&, uint64_t, uint64_t, uint64_t, Reply<void> reply) {
  reply.Error(ENOSYS);
}

void Backend::Release(const RequestContext&, uint64_t, uint64_t, uint32_t, uint32_t, uint64_t,
                      Reply<void> reply) {
  reply.Error(ENOSYS);
}

void Backend::Fsync(const RequestContext&, uint64_t, uint64_t, bool, Reply<void> reply) {
  reply.Error(ENOSYS);
}

void Backend::Fallocate(const RequestContext&, uint64_t, uint64_t, uint64_t, uint64_t, uint32_t,
                        Reply<void> reply) {
  reply.Error(ENOSYS);
}

void Backend::Lseek(const RequestContext&, uint64_t, uint64_t, uint64_t, uint32_t,
                    Reply<uint64_t> reply) {
  reply.Error(ENOSYS);
}

void Backend::CopyFileRange(const RequestContext&, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t,
                            uint64_t, uint64_t, uint64_t, Reply<uint64_t> reply) {
  reply.Error(ENOSYS);
}

void Backend::Bmap(const RequestContext&, uint64_t, uint32_t, uint64_t, Reply<uint64_t> reply) {
  reply.Error(ENOSYS);
}

void Backend::Ioctl(const RequestContext&, uint64_t, uint64_t, uint32_t, uint32_t, uint64_t,
                    std::span<const uint8_t>, uint32_t, Reply<IoctlResult> reply) {
  reply.Error(ENOSYS);
}

void Backend::Poll(const RequestContext&, uint64_t, uint64_t, uint64_t, uint32_t, uint32_t,
                   Reply<uint32_t> reply) {
  reply.Error(ENOSYS);
}

void Backend::GetLk(const RequestContext&, uint64_t, uint64_t, uint64_t, const FileLock&, bool,
                    Reply<FileLock> reply) {
  reply.Error(ENOSYS);
}

void Backend::SetLk(const RequestContext&, uint64_t, uint64_t, uint64_t, const FileLock&, bool,
                    bool, Reply<void> reply) {
  reply.Error(ENOSYS);
}

void Backend::OpenDir(const RequestContext&, uint64_t, uint32_t, Reply<OpenResult> reply) {
  reply.Error(ENOSYS);
}

void Backend::ReadDir(const RequestContext&, uint64_t, uint64_t, uint64_t, bool, DirReply reply) {
  reply.Error(ENOSYS);
}

void Backend::ReleaseDir(const RequestContext&, uint64_t, uint64_t, uint32_t, Reply<void> reply) {
  reply.Error(ENOSYS);
}

void Backend::FsyncDir(const RequestContext&, uint64_t, uint64_t, bool, Reply<void> reply) {
  reply.Error(ENOSYS);
}

void Backend::SetXattr(const RequestContext&, uint64_t, std::string_view, std::span<const uint8_t>,
                       uint32_t, uint32_t, Reply<void> reply) {
  reply.Error(ENOSYS);
}

void Backend::GetXattr(const RequestContext&, uint64_t, std::string_view,
                       Reply<std::string> reply) {
  reply.Error(ENOSYS);
}

void Backend::ListXattr(const RequestContext&, uint64_t, Reply<std::string> reply) {
  reply.Error(ENOSYS);
}

void Backend::RemoveXattr(const RequestContext&, uint64_t, std::string_view, Reply<void> reply) {
  reply.Error(ENOSYS);
}

void Backend::SyncFs(const RequestContext&, uint64_t, Reply<void> reply) { reply.Error(ENOSYS); }

void Backend::SetupMapping(const RequestContext&, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t,
                           uint64_t, Reply<void> reply) {
  reply.Error(ENOSYS);
}

void Backend::RemoveMapping(const RequestContext&, std::span<const RemoveMappingItem>,
                            Reply<void> reply) {
  reply.Error(ENOSYS);
}

}  // namespace virtiofs
