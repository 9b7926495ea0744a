// The recording test backend (recording_backend.h).
#include "tests/support/recording_backend.h"

#include <dirent.h>
#include <fmt/format.h>

#include <cstring>
#include <stdexcept>
#include <utility>

#include "lib/fuse/fuse_compat.h"

namespace virtiofs::testing {
namespace {

using namespace std::chrono_literals;

std::string Opt(const std::optional<uint64_t>& v) {
  return v ? fmt::format("{}", *v) : std::string("none");
}

// A queue context that does nothing: what CreateQueueContext hands out.
class QueueContextStub : public QueueContext {
 public:
  int fd() const override { return -1; }
  void Process() override {}
  void Flush() override {}
};

}  // namespace

struct stat TestStat(mode_t mode, ino_t ino) {
  struct stat st {};
  st.st_ino = ino;
  st.st_mode = mode;
  st.st_nlink = 3;
  st.st_uid = 1001;
  st.st_gid = 1002;
  st.st_rdev = 0x0805;
  st.st_size = 123456789;
  st.st_blksize = 4096;
  st.st_blocks = 241;
  st.st_atim = {1700000001, 11};
  st.st_mtim = {1700000002, 22};
  st.st_ctim = {1700000003, 33};
  return st;
}

Attributes TestAttributes() {
  Attributes a;
  a.st = TestStat();
  a.timeout = 2.5;
  a.flags = FUSE_ATTR_SUBMOUNT;
  return a;
}

Entry TestEntry(uint64_t node, mode_t mode, ino_t ino) {
  Entry e;
  e.node_id = node;
  e.generation = 7;
  e.attr = TestAttributes();
  e.attr.st = TestStat(mode, ino);
  e.entry_timeout = 1.25;
  return e;
}

StatxResult TestStatx() {
  StatxResult r;
  struct statx& s = r.stx;
  s.stx_mask = STATX_BASIC_STATS | STATX_BTIME;
  s.stx_blksize = 4096;
  s.stx_attributes = STATX_ATTR_IMMUTABLE;
  s.stx_nlink = 2;
  s.stx_uid = 501;
  s.stx_gid = 502;
  s.stx_mode = S_IFDIR | 0755;
  s.stx_ino = 0xABCDEF;
  s.stx_size = 8192;
  s.stx_blocks = 16;
  s.stx_attributes_mask = STATX_ATTR_IMMUTABLE | STATX_ATTR_APPEND;
  s.stx_atime = {1600000001, 101, 0};
  s.stx_btime = {1600000002, 102, 0};
  s.stx_ctime = {1600000003, 103, 0};
  s.stx_mtime = {-5, 104, 0};
  s.stx_rdev_major = 8;
  s.stx_rdev_minor = 1;
  s.stx_dev_major = 253;
  s.stx_dev_minor = 4;
  r.timeout = 0.75;
  r.flags = FUSE_ATTR_SUBMOUNT;
  return r;
}

struct statvfs TestStatvfs() {
  struct statvfs v {};
  v.f_bsize = 4096;
  v.f_frsize = 512;
  v.f_blocks = 1000000;
  v.f_bfree = 500000;
  v.f_bavail = 400000;
  v.f_files = 65536;
  v.f_ffree = 60000;
  v.f_favail = 59000;
  v.f_namemax = 255;
  return v;
}

std::vector<std::string> RecordingBackend::calls() const {
  std::lock_guard l(mu_);
  return calls_;
}

std::string RecordingBackend::last() const {
  std::lock_guard l(mu_);
  return calls_.empty() ? std::string("<no call>") : calls_.back();
}

size_t RecordingBackend::call_count() const {
  std::lock_guard l(mu_);
  return calls_.size();
}

RequestContext RecordingBackend::ctx() const {
  std::lock_guard l(mu_);
  return ctx_;
}

void RecordingBackend::ClearCalls() {
  std::lock_guard l(mu_);
  calls_.clear();
}

std::vector<std::string> RecordingBackend::Take() {
  std::lock_guard l(mu_);
  return std::exchange(calls_, {});
}

bool RecordingBackend::InRam(const iovec& v) const {
  const auto* p = static_cast<const uint8_t*>(v.iov_base);
  return p >= ram_base && v.iov_len <= ram_size &&
         p - ram_base <= static_cast<ptrdiff_t>(ram_size - v.iov_len);
}

std::string RecordingBackend::Gather(std::span<const iovec> iov) const {
  std::string s;
  for (const iovec& v : iov) {
    if (!InRam(v)) return "<iovec outside guest RAM>";
    s.append(static_cast<const char*>(v.iov_base), v.iov_len);
  }
  return s;
}

void RecordingBackend::JoinAll() {
  hold = false;
  std::vector<std::thread> threads;
  {
    std::lock_guard l(threads_mu_);
    threads.swap(threads_);
  }
  for (auto& t : threads) t.join();
}

void RecordingBackend::Record(std::string call) {
  std::lock_guard l(mu_);
  calls_.push_back(std::move(call));
}

void RecordingBackend::Record(const RequestContext& c, std::string call) {
  if (record_details) {
    call += fmt::format(" | unique={} uid={} gid={} pid={} queue={}", c.unique, c.uid, c.gid, c.pid,
                        static_cast<const void*>(c.queue));
  }
  std::lock_guard l(mu_);
  ctx_ = c;
  calls_.push_back(std::move(call));
}

std::string RecordingBackend::Quoted(std::span<const uint8_t> b) const {
  if (!record_details) return "";
  return fmt::format(" '{}'", std::string(b.begin(), b.end()));
}

std::string RecordingBackend::Buffers(std::span<const iovec> iov) const {
  if (!record_details) return "";
  std::string s = " buf=";
  for (const iovec& v : iov) {
    s += fmt::format("[{}+{}]", static_cast<const uint8_t*>(v.iov_base) - ram_base, v.iov_len);
  }
  return s;
}

template <typename R, typename Fn>
void RecordingBackend::Finish(R reply, Fn answer) {
  switch (mode) {
    case Mode::kOk:
      answer(reply);
      return;
    case Mode::kError:
      reply.Error(error);
      return;
    case Mode::kDrop:
      return;
    case Mode::kTwice:
      answer(reply);
      answer(reply);
      reply.Error(EPERM);
      return;
    case Mode::kAsync: {
      std::lock_guard l(threads_mu_);
      threads_.emplace_back([this, r = std::move(reply), answer, delay = async_delay]() mutable {
        while (hold.load()) std::this_thread::sleep_for(1ms);
        std::this_thread::sleep_for(delay);
        answer(r);
      });
      return;
    }
    case Mode::kThrow:
      throw std::runtime_error("backend failure");
  }
}
template <typename T>
void RecordingBackend::Value(Reply<T> reply, T v) {
  Finish(std::move(reply), [v](Reply<T>& r) { r.Ok(v); });
}
void RecordingBackend::Empty(Reply<void> reply) {
  Finish(std::move(reply), [](Reply<void>& r) { r.Ok(); });
}

void RecordingBackend::Init(uint32_t minor, uint64_t flags) {
  init_minor = minor;
  init_negotiated = flags;
  Record(fmt::format("Init {} {:#x}", minor, flags));
}
std::unique_ptr<QueueContext> RecordingBackend::CreateQueueContext(uint32_t queue_index) {
  Record(fmt::format("CreateQueueContext {}", queue_index));
  auto q = std::make_unique<QueueContextStub>();
  queue_context_made = q.get();
  return q;
}
void RecordingBackend::InterruptWaits() { Record("InterruptWaits"); }
void RecordingBackend::Destroy() {
  ++destroys;
  Record("Destroy");
}
void RecordingBackend::Lookup(const RequestContext& c, uint64_t parent, std::string_view name,
                              Reply<Entry> reply) {
  Record(c, fmt::format("Lookup {} {}", parent, name));
  Value(std::move(reply), entry);
}
void RecordingBackend::Forget(uint64_t node, uint64_t nlookup) {
  forgotten.push_back({node, nlookup});
  Record(fmt::format("Forget {} {}", node, nlookup));
}
void RecordingBackend::BatchForget(std::span<const ForgetItem> items) {
  std::string s = fmt::format("BatchForget {}", items.size());
  for (const ForgetItem& it : items) {
    s += fmt::format(" {}:{}", it.node_id, it.nlookup);
    forgotten.push_back(it);
  }
  Record(s);
}
void RecordingBackend::GetAttr(const RequestContext& c, uint64_t node,
                               std::optional<uint64_t> handle, Reply<Attributes> reply) {
  Record(c, fmt::format("GetAttr {} fh={}", node, Opt(handle)));
  Value(std::move(reply), attr);
}
void RecordingBackend::SetAttr(const RequestContext& c, uint64_t node, const SetAttrRequest& a,
                               Reply<Attributes> reply) {
  Record(c, fmt::format("SetAttr {} valid={:#x} fh={} mode={:o} uid={} gid={} size={} "
                        "atime={}.{} mtime={}.{} ctime={}.{} owner={} kill={}",
                        node, a.valid, Opt(a.handle), a.mode, a.uid, a.gid, a.size, a.atime.tv_sec,
                        a.atime.tv_nsec, a.mtime.tv_sec, a.mtime.tv_nsec, a.ctime.tv_sec,
                        a.ctime.tv_nsec, a.lock_owner, a.kill_suidgid()));
  Value(std::move(reply), attr);
}
void RecordingBackend::Statx(const RequestContext& c, uint64_t node, std::optional<uint64_t> handle,
                             uint32_t sx_flags, uint32_t sx_mask, Reply<StatxResult> reply) {
  Record(c, fmt::format("Statx {} fh={} sx_flags={:#x} mask={:#x}", node, Opt(handle), sx_flags,
                        sx_mask));
  Value(std::move(reply), statx);
}
void RecordingBackend::ReadLink(const RequestContext& c, uint64_t node, Reply<std::string> reply) {
  Record(c, fmt::format("ReadLink {}", node));
  Value(std::move(reply), text);
}
void RecordingBackend::Symlink(const RequestContext& c, uint64_t parent, std::string_view name,
                               std::string_view target, Reply<Entry> reply) {
  Record(c, fmt::format("Symlink {} {} -> {}", parent, name, target));
  Value(std::move(reply), entry);
}
void RecordingBackend::Mknod(const RequestContext& c, uint64_t parent, std::string_view name,
                             uint32_t mode_, uint32_t rdev, uint32_t umask, Reply<Entry> reply) {
  Record(c, fmt::format("Mknod {} {} mode={:o} rdev={:#x} umask={:o}", parent, name, mode_, rdev,
                        umask));
  Value(std::move(reply), entry);
}
void RecordingBackend::Mkdir(const RequestContext& c, uint64_t parent, std::string_view name,
                             uint32_t mode_, uint32_t umask, Reply<Entry> reply) {
  Record(c, fmt::format("Mkdir {} {} mode={:o} umask={:o}", parent, name, mode_, umask));
  Value(std::move(reply), entry);
}
void RecordingBackend::Unlink(const RequestContext& c, uint64_t parent, std::string_view name,
                              Reply<void> reply) {
  Record(c, fmt::format("Unlink {} {}", parent, name));
  Empty(std::move(reply));
}
void RecordingBackend::Rmdir(const RequestContext& c, uint64_t parent, std::string_view name,
                             Reply<void> reply) {
  Record(c, fmt::format("Rmdir {} {}", parent, name));
  Empty(std::move(reply));
}
void RecordingBackend::Rename(const RequestContext& c, uint64_t parent, std::string_view name,
                              uint64_t new_parent, std::string_view new_name, uint32_t flags,
                              Reply<void> reply) {
  Record(c,
         fmt::format("Rename {} {} -> {} {} flags={}", parent, name, new_parent, new_name, flags));
  Empty(std::move(reply));
}
void RecordingBackend::Link(const RequestContext& c, uint64_t node, uint64_t new_parent,
                            std::string_view new_name, Reply<Entry> reply) {
  Record(c, fmt::format("Link {} -> {} {}", node, new_parent, new_name));
  Value(std::move(reply), entry);
}
void RecordingBackend::Access(const RequestContext& c, uint64_t node, uint32_t mask,
                              Reply<void> reply) {
  Record(c, fmt::format("Access {} mask={}", node, mask));
  Empty(std::move(reply));
}
void RecordingBackend::StatFs(const RequestContext& c, uint64_t node, Reply<struct statvfs> reply) {
  Record(c, fmt::format("StatFs {}", node));
  Value(std::move(reply), statfs);
}
void RecordingBackend::Open(const RequestContext& c, uint64_t node, uint32_t flags,
                            Reply<OpenResult> reply) {
  Record(c, fmt::format("Open {} flags={:#x}", node, flags));
  Value(std::move(reply), open);
}
void RecordingBackend::Create(const RequestContext& c, uint64_t parent, std::string_view name,
                              uint32_t mode_, uint32_t flags, uint32_t umask,
                              Reply<CreateResult> reply) {
  Record(c, fmt::format("Create {} {} mode={:o} flags={:#x} umask={:o}", parent, name, mode_, flags,
                        umask));
  Value(std::move(reply), create);
}
void RecordingBackend::TmpFile(const RequestContext& c, uint64_t parent, uint32_t mode_,
                               uint32_t flags, uint32_t umask, Reply<CreateResult> reply) {
  Record(c,
         fmt::format("TmpFile {} mode={:o} flags={:#x} umask={:o}", parent, mode_, flags, umask));
  Value(std::move(reply), create);
}
void RecordingBackend::Read(const RequestContext& c, uint64_t node, const ReadRequest& r,
                            virtiofs::ReadReply reply) {
  Record(c, fmt::format("Read {} fh={} off={} size={} flags={:#x} rflags={:#x} owner={}{}", node,
                        r.handle, r.offset, r.size, r.flags, r.read_flags, r.lock_owner,
                        Buffers(reply.buffers())));
  read_buffers.assign(reply.buffers().begin(), reply.buffers().end());
  Finish(std::move(reply), [data = read_data, n = read_answer](virtiofs::ReadReply& rr) {
    // The data goes straight into the guest's buffers.
    size_t done = 0;
    for (const iovec& v : rr.buffers()) {
      const size_t k = std::min(v.iov_len, data.size() - done);
      std::memcpy(v.iov_base, data.data() + done, k);
      done += k;
    }
    rr.Ok(n ? *n : static_cast<uint32_t>(done));
  });
}
void RecordingBackend::Write(const RequestContext& c, uint64_t node, const WriteRequest& w,
                             Reply<uint32_t> reply) {
  std::string details;
  if (record_details) {
    std::string data;
    for (const iovec& v : w.data) data.append(static_cast<const char*>(v.iov_base), v.iov_len);
    details = fmt::format("{} '{}'", Buffers(w.data), data);
  }
  Record(c, fmt::format("Write {} fh={} off={} size={} flags={:#x} wflags={:#x} owner={}{}", node,
                        w.handle, w.offset, w.size, w.flags, w.write_flags, w.lock_owner, details));
  write_iov.assign(w.data.begin(), w.data.end());
  write_data = Gather(w.data);
  Finish(std::move(reply), [this, w, n = u32](Reply<uint32_t>& r) {
    // WriteRequest::data is valid until the reply, also after the call.
    late_write_data = Gather(w.data);
    r.Ok(n);
  });
}
void RecordingBackend::Flush(const RequestContext& c, uint64_t node, uint64_t handle,
                             uint64_t lock_owner, Reply<void> reply) {
  Record(c, fmt::format("Flush {} fh={} owner={}", node, handle, lock_owner));
  Empty(std::move(reply));
}
void RecordingBackend::Release(const RequestContext& c, uint64_t node, uint64_t handle,
                               uint32_t flags, uint32_t release_flags, uint64_t lock_owner,
                               Reply<void> reply) {
  Record(c, fmt::format("Release {} fh={} flags={:#x} rflags={:#x} owner={}", node, handle, flags,
                        release_flags, lock_owner));
  Empty(std::move(reply));
}
void RecordingBackend::Fsync(const RequestContext& c, uint64_t node, uint64_t handle, bool datasync,
                             Reply<void> reply) {
  Record(c, fmt::format("Fsync {} fh={} datasync={}", node, handle, datasync));
  Empty(std::move(reply));
}
void RecordingBackend::Fallocate(const RequestContext& c, uint64_t node, uint64_t handle,
                                 uint64_t offset, uint64_t length, uint32_t mode_,
                                 Reply<void> reply) {
  Record(c, fmt::format("Fallocate {} fh={} off={} len={} mode={}", node, handle, offset, length,
                        mode_));
  Empty(std::move(reply));
}
void RecordingBackend::Lseek(const RequestContext& c, uint64_t node, uint64_t handle,
                             uint64_t offset, uint32_t whence, Reply<uint64_t> reply) {
  Record(c, fmt::format("Lseek {} fh={} off={} whence={}", node, handle, offset, whence));
  Value(std::move(reply), u64);
}
void RecordingBackend::CopyFileRange(const RequestContext& c, uint64_t node_in, uint64_t handle_in,
                                     uint64_t offset_in, uint64_t node_out, uint64_t handle_out,
                                     uint64_t offset_out, uint64_t length, uint64_t flags,
                                     Reply<uint64_t> reply) {
  Record(c, fmt::format("CopyFileRange {} fh={} off={} -> {} fh={} off={} len={} flags={}", node_in,
                        handle_in, offset_in, node_out, handle_out, offset_out, length, flags));
  Value(std::move(reply), u64);
}
void RecordingBackend::Bmap(const RequestContext& c, uint64_t node, uint32_t blocksize,
                            uint64_t block, Reply<uint64_t> reply) {
  Record(c, fmt::format("Bmap {} blocksize={} block={}", node, blocksize, block));
  Value(std::move(reply), u64);
}
void RecordingBackend::Ioctl(const RequestContext& c, uint64_t node, uint64_t handle,
                             uint32_t flags, uint32_t cmd, uint64_t arg,
                             std::span<const uint8_t> in, uint32_t out_size,
                             Reply<IoctlResult> reply) {
  Record(c, fmt::format("Ioctl {} fh={} flags={:#x} cmd={:#x} arg={:#x} in={} out_size={}{}", node,
                        handle, flags, cmd, arg, in.size(), out_size, Quoted(in)));
  bytes.assign(in.begin(), in.end());
  Value(std::move(reply), ioctl);
}
void RecordingBackend::Poll(const RequestContext& c, uint64_t node, uint64_t handle, uint64_t kh,
                            uint32_t flags, uint32_t events, Reply<uint32_t> reply) {
  Record(c,
         fmt::format("Poll {} fh={} kh={} flags={} events={:#x}", node, handle, kh, flags, events));
  Value(std::move(reply), u32);
}
void RecordingBackend::GetLk(const RequestContext& c, uint64_t node, uint64_t handle,
                             uint64_t owner, const FileLock& l, bool flock, Reply<FileLock> reply) {
  Record(c, fmt::format("GetLk {} fh={} owner={} {}-{} type={} pid={} flock={}", node, handle,
                        owner, l.start, l.end, l.type, l.pid, flock));
  Value(std::move(reply), lock);
}
void RecordingBackend::SetLk(const RequestContext& c, uint64_t node, uint64_t handle,
                             uint64_t owner, const FileLock& l, bool flock, bool wait,
                             Reply<void> reply) {
  Record(c, fmt::format("SetLk {} fh={} owner={} {}-{} type={} pid={} flock={} wait={}", node,
                        handle, owner, l.start, l.end, l.type, l.pid, flock, wait));
  Empty(std::move(reply));
}
void RecordingBackend::OpenDir(const RequestContext& c, uint64_t node, uint32_t flags,
                               Reply<OpenResult> reply) {
  Record(c, fmt::format("OpenDir {} flags={:#x}", node, flags));
  Value(std::move(reply), open);
}
void RecordingBackend::ReadDir(const RequestContext& c, uint64_t node, uint64_t handle,
                               uint64_t offset, bool plus, DirReply reply) {
  Record(c, fmt::format("ReadDir {} fh={} off={} plus={}", node, handle, offset, plus));
  Finish(std::move(reply), [this, items = dir, plus](DirReply& r) {
    size_t added = 0;
    for (const DirItem& it : items) {
      const bool fit = plus ? r.AddPlus(it.name, it.entry, it.next_offset)
                            : r.Add(it.name, it.ino, it.type, it.next_offset);
      if (!fit) break;
      ++added;
    }
    dir_added = added;
    r.Ok();
  });
}
void RecordingBackend::ReleaseDir(const RequestContext& c, uint64_t node, uint64_t handle,
                                  uint32_t flags, Reply<void> reply) {
  Record(c, fmt::format("ReleaseDir {} fh={} flags={:#x}", node, handle, flags));
  Empty(std::move(reply));
}
void RecordingBackend::FsyncDir(const RequestContext& c, uint64_t node, uint64_t handle,
                                bool datasync, Reply<void> reply) {
  Record(c, fmt::format("FsyncDir {} fh={} datasync={}", node, handle, datasync));
  Empty(std::move(reply));
}
void RecordingBackend::SetXattr(const RequestContext& c, uint64_t node, std::string_view name,
                                std::span<const uint8_t> value, uint32_t flags,
                                uint32_t setxattr_flags, Reply<void> reply) {
  Record(c, fmt::format("SetXattr {} {} size={} flags={} sflags={}{}", node, name, value.size(),
                        flags, setxattr_flags, Quoted(value)));
  bytes.assign(value.begin(), value.end());
  Empty(std::move(reply));
}
void RecordingBackend::GetXattr(const RequestContext& c, uint64_t node, std::string_view name,
                                Reply<std::string> reply) {
  Record(c, fmt::format("GetXattr {} {}", node, name));
  Value(std::move(reply), text);
}
void RecordingBackend::ListXattr(const RequestContext& c, uint64_t node, Reply<std::string> reply) {
  Record(c, fmt::format("ListXattr {}", node));
  Value(std::move(reply), text);
}
void RecordingBackend::RemoveXattr(const RequestContext& c, uint64_t node, std::string_view name,
                                   Reply<void> reply) {
  Record(c, fmt::format("RemoveXattr {} {}", node, name));
  Empty(std::move(reply));
}
void RecordingBackend::SyncFs(const RequestContext& c, uint64_t node, Reply<void> reply) {
  Record(c, fmt::format("SyncFs {}", node));
  Empty(std::move(reply));
}
void RecordingBackend::SetupMapping(const RequestContext& c, uint64_t node, uint64_t handle,
                                    uint64_t foffset, uint64_t len, uint64_t flags,
                                    uint64_t moffset, Reply<void> reply) {
  Record(c, fmt::format("SetupMapping {} fh={} foff={} len={} flags={} moff={}", node, handle,
                        foffset, len, flags, moffset));
  Empty(std::move(reply));
}
void RecordingBackend::RemoveMapping(const RequestContext& c,
                                     std::span<const RemoveMappingItem> items, Reply<void> reply) {
  std::string s = fmt::format("RemoveMapping {}", items.size());
  for (const RemoveMappingItem& it : items) s += fmt::format(" {}+{}", it.moffset, it.len);
  Record(c, s);
  Empty(std::move(reply));
}
void RecordingBackend::Interrupt(uint64_t unique) { Record(fmt::format("Interrupt {}", unique)); }

}  // namespace virtiofs::testing
