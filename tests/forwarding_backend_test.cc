// ForwardingBackend (include/virtiofs/forwarding_backend.h): every call
// reaches the inner backend with its arguments unchanged, and the inner
// backend's answer reaches the guest.
//
// Each FUSE request of every opcode runs twice through the FUSE harness (a
// real split queue in guest RAM): once on a RecordingBackend directly, once
// on a ForwardingBackend over the same RecordingBackend. The calls the
// recorder saw (every argument, the request context, guest buffers as
// offsets in guest RAM) and the reply bytes the guest got must be the same,
// and the call must be the operation the request names. A method the
// forwarder did not override would answer ENOSYS without reaching the
// recorder; one that mixed up arguments would record something else.
#include "virtiofs/forwarding_backend.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/fuse.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "lib/fuse/fuse_compat.h"
#include "tests/support/fuse_harness.h"
#include "tests/support/fuse_request.h"
#include "virtiofs/backend.h"

namespace virtiofs {
namespace {

using testing::BuildRequest;
using testing::FuseBody;
using testing::FuseHarness;
using testing::FuseReply;

template <typename T>
T Zeroed() {
  T v;
  std::memset(&v, 0, sizeof v);
  return v;
}

std::string Opt(const std::optional<uint64_t>& v) {
  return v ? fmt::format("{}", *v) : std::string("none");
}

// Canned answers, distinctive enough that a wrong one shows.
Entry TestEntry() {
  Entry e;
  e.node_id = 77;
  e.generation = 5;
  e.attr.st.st_ino = 0xABCD;
  e.attr.st.st_mode = S_IFREG | 0640;
  e.attr.st.st_size = 12345;
  e.attr.st.st_nlink = 2;
  e.attr.timeout = 3.5;
  e.entry_timeout = 1.25;
  return e;
}

class QueueContextStub : public QueueContext {
 public:
  int fd() const override { return -1; }
  void Process() override {}
  void Flush() override {}
};

// Records every call with all its arguments and answers it with a canned
// value (inline, or from another thread when `async` is set).
class RecordingBackend : public Backend {
 public:
  ~RecordingBackend() override {
    for (auto& t : threads_) t.join();
  }

  // Guest RAM of the harness in use: iovecs are recorded as offsets in it.
  const uint8_t* ram_base = nullptr;
  bool async = false;
  uint64_t init_flags = 0;
  QueueContext* queue_context_made = nullptr;  // The last CreateQueueContext result.

  std::vector<std::string> Take() {
    std::lock_guard l(mu_);
    return std::exchange(calls_, {});
  }

  uint64_t InitFlags() const override { return init_flags; }
  void Init(uint32_t minor, uint64_t flags) override {
    Record(fmt::format("Init {} {:#x}", minor, flags));
  }
  std::unique_ptr<QueueContext> CreateQueueContext(uint32_t queue_index) override {
    Record(fmt::format("CreateQueueContext {}", queue_index));
    auto q = std::make_unique<QueueContextStub>();
    queue_context_made = q.get();
    return q;
  }
  void InterruptWaits() override { Record("InterruptWaits"); }
  void Destroy() override { Record("Destroy"); }

  void Lookup(const RequestContext& c, uint64_t parent, std::string_view name,
              Reply<Entry> reply) override {
    Record(c, fmt::format("Lookup {} {}", parent, name));
    Answer(std::move(reply), TestEntry());
  }
  void Forget(uint64_t node, uint64_t nlookup) override {
    Record(fmt::format("Forget {} {}", node, nlookup));
  }
  void BatchForget(std::span<const ForgetItem> items) override {
    std::string s = "BatchForget";
    for (const ForgetItem& it : items) s += fmt::format(" {}:{}", it.node_id, it.nlookup);
    Record(s);
  }
  void GetAttr(const RequestContext& c, uint64_t node, std::optional<uint64_t> handle,
               Reply<Attributes> reply) override {
    Record(c, fmt::format("GetAttr {} fh={}", node, Opt(handle)));
    Answer(std::move(reply), TestEntry().attr);
  }
  void SetAttr(const RequestContext& c, uint64_t node, const SetAttrRequest& a,
               Reply<Attributes> reply) override {
    Record(c, fmt::format("SetAttr {} valid={:#x} fh={} mode={:o} uid={} gid={} size={} "
                          "atime={}.{} mtime={}.{} ctime={}.{} owner={}",
                          node, a.valid, Opt(a.handle), a.mode, a.uid, a.gid, a.size,
                          a.atime.tv_sec, a.atime.tv_nsec, a.mtime.tv_sec, a.mtime.tv_nsec,
                          a.ctime.tv_sec, a.ctime.tv_nsec, a.lock_owner));
    Answer(std::move(reply), TestEntry().attr);
  }
  void Statx(const RequestContext& c, uint64_t node, std::optional<uint64_t> handle,
             uint32_t sx_flags, uint32_t sx_mask, Reply<StatxResult> reply) override {
    Record(c, fmt::format("Statx {} fh={} flags={:#x} mask={:#x}", node, Opt(handle), sx_flags,
                          sx_mask));
    StatxResult r;
    r.stx.stx_mask = STATX_BASIC_STATS;
    r.stx.stx_ino = 0xABCD;
    r.stx.stx_mode = S_IFDIR | 0755;
    Answer(std::move(reply), r);
  }
  void ReadLink(const RequestContext& c, uint64_t node, Reply<std::string> reply) override {
    Record(c, fmt::format("ReadLink {}", node));
    Answer(std::move(reply), std::string("the/target"));
  }
  void Symlink(const RequestContext& c, uint64_t parent, std::string_view name,
               std::string_view target, Reply<Entry> reply) override {
    Record(c, fmt::format("Symlink {} {} -> {}", parent, name, target));
    Answer(std::move(reply), TestEntry());
  }
  void Mknod(const RequestContext& c, uint64_t parent, std::string_view name, uint32_t mode,
             uint32_t rdev, uint32_t umask, Reply<Entry> reply) override {
    Record(c, fmt::format("Mknod {} {} mode={:o} rdev={:#x} umask={:o}", parent, name, mode, rdev,
                          umask));
    Answer(std::move(reply), TestEntry());
  }
  void Mkdir(const RequestContext& c, uint64_t parent, std::string_view name, uint32_t mode,
             uint32_t umask, Reply<Entry> reply) override {
    Record(c, fmt::format("Mkdir {} {} mode={:o} umask={:o}", parent, name, mode, umask));
    Answer(std::move(reply), TestEntry());
  }
  void Unlink(const RequestContext& c, uint64_t parent, std::string_view name,
              Reply<void> reply) override {
    Record(c, fmt::format("Unlink {} {}", parent, name));
    Empty(std::move(reply));
  }
  void Rmdir(const RequestContext& c, uint64_t parent, std::string_view name,
             Reply<void> reply) override {
    Record(c, fmt::format("Rmdir {} {}", parent, name));
    Empty(std::move(reply));
  }
  void Rename(const RequestContext& c, uint64_t parent, std::string_view name, uint64_t new_parent,
              std::string_view new_name, uint32_t flags, Reply<void> reply) override {
    Record(c, fmt::format("Rename {} {} -> {} {} flags={}", parent, name, new_parent, new_name,
                          flags));
    Empty(std::move(reply));
  }
  void Link(const RequestContext& c, uint64_t node, uint64_t new_parent, std::string_view new_name,
            Reply<Entry> reply) override {
    Record(c, fmt::format("Link {} -> {} {}", node, new_parent, new_name));
    Answer(std::move(reply), TestEntry());
  }
  void Access(const RequestContext& c, uint64_t node, uint32_t mask, Reply<void> reply) override {
    Record(c, fmt::format("Access {} mask={}", node, mask));
    Empty(std::move(reply));
  }
  void StatFs(const RequestContext& c, uint64_t node, Reply<struct statvfs> reply) override {
    Record(c, fmt::format("StatFs {}", node));
    struct statvfs v {};
    v.f_bsize = 4096;
    v.f_blocks = 1000;
    v.f_bfree = 500;
    v.f_namemax = 255;
    Answer(std::move(reply), v);
  }
  void Open(const RequestContext& c, uint64_t node, uint32_t flags,
            Reply<OpenResult> reply) override {
    Record(c, fmt::format("Open {} flags={:#x}", node, flags));
    Answer(std::move(reply), OpenResult{0xF00D, FOPEN_KEEP_CACHE});
  }
  void Create(const RequestContext& c, uint64_t parent, std::string_view name, uint32_t mode,
              uint32_t flags, uint32_t umask, Reply<CreateResult> reply) override {
    Record(c, fmt::format("Create {} {} mode={:o} flags={:#x} umask={:o}", parent, name, mode,
                          flags, umask));
    Answer(std::move(reply), CreateResult{TestEntry(), OpenResult{0xBEEF, FOPEN_DIRECT_IO}});
  }
  void TmpFile(const RequestContext& c, uint64_t parent, uint32_t mode, uint32_t flags,
               uint32_t umask, Reply<CreateResult> reply) override {
    Record(c,
           fmt::format("TmpFile {} mode={:o} flags={:#x} umask={:o}", parent, mode, flags, umask));
    Answer(std::move(reply), CreateResult{TestEntry(), OpenResult{0xCAFE, 0}});
  }
  void Read(const RequestContext& c, uint64_t node, const ReadRequest& r,
            ReadReply reply) override {
    Record(c, fmt::format("Read {} fh={} off={} size={} flags={:#x} rflags={:#x} owner={} buf={}",
                          node, r.handle, r.offset, r.size, r.flags, r.read_flags, r.lock_owner,
                          Iovecs(reply.buffers())));
    Later(std::move(reply), [](ReadReply& rr) {
      static constexpr char kData[] = "forwarded data";
      size_t done = 0;
      for (const iovec& v : rr.buffers()) {
        const size_t k = std::min(v.iov_len, sizeof kData - 1 - done);
        std::memcpy(v.iov_base, kData + done, k);
        done += k;
      }
      rr.Ok(static_cast<uint32_t>(done));
    });
  }
  void Write(const RequestContext& c, uint64_t node, const WriteRequest& w,
             Reply<uint32_t> reply) override {
    std::string data;
    for (const iovec& v : w.data) data.append(static_cast<const char*>(v.iov_base), v.iov_len);
    Record(c, fmt::format("Write {} fh={} off={} size={} flags={:#x} wflags={:#x} owner={} "
                          "data={} '{}'",
                          node, w.handle, w.offset, w.size, w.flags, w.write_flags, w.lock_owner,
                          Iovecs(w.data), data));
    Answer(std::move(reply), w.size);
  }
  void Flush(const RequestContext& c, uint64_t node, uint64_t handle, uint64_t lock_owner,
             Reply<void> reply) override {
    Record(c, fmt::format("Flush {} fh={} owner={}", node, handle, lock_owner));
    Empty(std::move(reply));
  }
  void Release(const RequestContext& c, uint64_t node, uint64_t handle, uint32_t flags,
               uint32_t release_flags, uint64_t lock_owner, Reply<void> reply) override {
    Record(c, fmt::format("Release {} fh={} flags={:#x} rflags={:#x} owner={}", node, handle, flags,
                          release_flags, lock_owner));
    Empty(std::move(reply));
  }
  void Fsync(const RequestContext& c, uint64_t node, uint64_t handle, bool datasync,
             Reply<void> reply) override {
    Record(c, fmt::format("Fsync {} fh={} datasync={}", node, handle, datasync));
    Empty(std::move(reply));
  }
  void Fallocate(const RequestContext& c, uint64_t node, uint64_t handle, uint64_t offset,
                 uint64_t length, uint32_t mode, Reply<void> reply) override {
    Record(c, fmt::format("Fallocate {} fh={} off={} len={} mode={}", node, handle, offset, length,
                          mode));
    Empty(std::move(reply));
  }
  void Lseek(const RequestContext& c, uint64_t node, uint64_t handle, uint64_t offset,
             uint32_t whence, Reply<uint64_t> reply) override {
    Record(c, fmt::format("Lseek {} fh={} off={} whence={}", node, handle, offset, whence));
    Answer(std::move(reply), uint64_t{0x5EEC});
  }
  void CopyFileRange(const RequestContext& c, uint64_t node_in, uint64_t handle_in,
                     uint64_t offset_in, uint64_t node_out, uint64_t handle_out,
                     uint64_t offset_out, uint64_t length, uint64_t flags,
                     Reply<uint64_t> reply) override {
    Record(c,
           fmt::format("CopyFileRange {} fh={} off={} -> {} fh={} off={} len={} flags={}", node_in,
                       handle_in, offset_in, node_out, handle_out, offset_out, length, flags));
    Answer(std::move(reply), uint64_t{25});  // At most the length asked.
  }
  void Bmap(const RequestContext& c, uint64_t node, uint32_t blocksize, uint64_t block,
            Reply<uint64_t> reply) override {
    Record(c, fmt::format("Bmap {} blocksize={} block={}", node, blocksize, block));
    Answer(std::move(reply), uint64_t{0xB10C});
  }
  void Ioctl(const RequestContext& c, uint64_t node, uint64_t handle, uint32_t flags, uint32_t cmd,
             uint64_t arg, std::span<const uint8_t> in, uint32_t out_size,
             Reply<IoctlResult> reply) override {
    Record(c, fmt::format("Ioctl {} fh={} flags={:#x} cmd={:#x} arg={:#x} in={} out_size={}", node,
                          handle, flags, cmd, arg, std::string(in.begin(), in.end()), out_size));
    Answer(std::move(reply), IoctlResult{3, {9, 8, 7}});
  }
  void Poll(const RequestContext& c, uint64_t node, uint64_t handle, uint64_t kh, uint32_t flags,
            uint32_t events, Reply<uint32_t> reply) override {
    Record(c, fmt::format("Poll {} fh={} kh={} flags={} events={:#x}", node, handle, kh, flags,
                          events));
    Answer(std::move(reply), uint32_t{kPollIn});
  }
  void GetLk(const RequestContext& c, uint64_t node, uint64_t handle, uint64_t owner,
             const FileLock& l, bool flock, Reply<FileLock> reply) override {
    Record(c, fmt::format("GetLk {} fh={} owner={} {}-{} type={} pid={} flock={}", node, handle,
                          owner, l.start, l.end, l.type, l.pid, flock));
    Answer(std::move(reply), FileLock{10, 20, F_WRLCK, 999});
  }
  void SetLk(const RequestContext& c, uint64_t node, uint64_t handle, uint64_t owner,
             const FileLock& l, bool flock, bool wait, Reply<void> reply) override {
    Record(c, fmt::format("SetLk {} fh={} owner={} {}-{} type={} pid={} flock={} wait={}", node,
                          handle, owner, l.start, l.end, l.type, l.pid, flock, wait));
    Empty(std::move(reply));
  }
  void OpenDir(const RequestContext& c, uint64_t node, uint32_t flags,
               Reply<OpenResult> reply) override {
    Record(c, fmt::format("OpenDir {} flags={:#x}", node, flags));
    Answer(std::move(reply), OpenResult{0xD1D1, 0});
  }
  void ReadDir(const RequestContext& c, uint64_t node, uint64_t handle, uint64_t offset, bool plus,
               DirReply reply) override {
    Record(c, fmt::format("ReadDir {} fh={} off={} plus={}", node, handle, offset, plus));
    Later(std::move(reply), [plus](DirReply& r) {
      const bool added = plus ? r.AddPlus("entry", TestEntry(), 1) : r.Add("entry", 77, DT_REG, 1);
      (void)added;
      r.Ok();
    });
  }
  void ReleaseDir(const RequestContext& c, uint64_t node, uint64_t handle, uint32_t flags,
                  Reply<void> reply) override {
    Record(c, fmt::format("ReleaseDir {} fh={} flags={:#x}", node, handle, flags));
    Empty(std::move(reply));
  }
  void FsyncDir(const RequestContext& c, uint64_t node, uint64_t handle, bool datasync,
                Reply<void> reply) override {
    Record(c, fmt::format("FsyncDir {} fh={} datasync={}", node, handle, datasync));
    Empty(std::move(reply));
  }
  void SetXattr(const RequestContext& c, uint64_t node, std::string_view name,
                std::span<const uint8_t> value, uint32_t flags, uint32_t setxattr_flags,
                Reply<void> reply) override {
    Record(c, fmt::format("SetXattr {} {} '{}' flags={} sflags={}", node, name,
                          std::string(value.begin(), value.end()), flags, setxattr_flags));
    Empty(std::move(reply));
  }
  void GetXattr(const RequestContext& c, uint64_t node, std::string_view name,
                Reply<std::string> reply) override {
    Record(c, fmt::format("GetXattr {} {}", node, name));
    Answer(std::move(reply), std::string("xattr value"));
  }
  void ListXattr(const RequestContext& c, uint64_t node, Reply<std::string> reply) override {
    Record(c, fmt::format("ListXattr {}", node));
    Answer(std::move(reply), std::string("user.a\0user.b\0", 14));
  }
  void RemoveXattr(const RequestContext& c, uint64_t node, std::string_view name,
                   Reply<void> reply) override {
    Record(c, fmt::format("RemoveXattr {} {}", node, name));
    Empty(std::move(reply));
  }
  void SyncFs(const RequestContext& c, uint64_t node, Reply<void> reply) override {
    Record(c, fmt::format("SyncFs {}", node));
    Empty(std::move(reply));
  }
  void SetupMapping(const RequestContext& c, uint64_t node, uint64_t handle, uint64_t foffset,
                    uint64_t len, uint64_t flags, uint64_t moffset, Reply<void> reply) override {
    Record(c, fmt::format("SetupMapping {} fh={} foff={} len={} flags={} moff={}", node, handle,
                          foffset, len, flags, moffset));
    Empty(std::move(reply));
  }
  void RemoveMapping(const RequestContext& c, std::span<const RemoveMappingItem> items,
                     Reply<void> reply) override {
    std::string s = "RemoveMapping";
    for (const RemoveMappingItem& it : items) s += fmt::format(" {}+{}", it.moffset, it.len);
    Record(c, s);
    Empty(std::move(reply));
  }
  void Interrupt(uint64_t unique) override { Record(fmt::format("Interrupt {}", unique)); }

 private:
  static constexpr uint32_t kPollIn = 1;

  std::string Iovecs(std::span<const iovec> iov) const {
    std::string s;
    for (const iovec& v : iov) {
      s += fmt::format("[{}+{}]", static_cast<const uint8_t*>(v.iov_base) - ram_base, v.iov_len);
    }
    return s;
  }
  void Record(std::string call) {
    std::lock_guard l(mu_);
    calls_.push_back(std::move(call));
  }
  void Record(const RequestContext& c, std::string call) {
    Record(fmt::format("{} | unique={} uid={} gid={} pid={} queue={}", call, c.unique, c.uid, c.gid,
                       c.pid, static_cast<const void*>(c.queue)));
  }
  // Answers now, or from another thread when `async`.
  template <typename R, typename Fn>
  void Later(R reply, Fn answer) {
    if (!async) {
      answer(reply);
      return;
    }
    threads_.emplace_back([r = std::move(reply), answer]() mutable {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      answer(r);
    });
  }
  template <typename T>
  void Answer(Reply<T> reply, T v) {
    Later(std::move(reply), [v](Reply<T>& r) { r.Ok(v); });
  }
  void Empty(Reply<void> reply) {
    Later(std::move(reply), [](Reply<void>& r) { r.Ok(); });
  }

  std::mutex mu_;
  std::vector<std::string> calls_;
  std::vector<std::thread> threads_;
};

// A request of every opcode that gets a reply, with distinct non-zero values
// in every field, and the name of the Backend method it must reach.
struct OpCase {
  std::string method;
  uint32_t opcode;
  uint64_t node;
  FuseBody body;
};

std::vector<OpCase> AllOpCases() {
  constexpr uint64_t kDir = 5, kFile = 9;
  std::vector<OpCase> v;
  auto add = [&](std::string method, uint32_t opcode, uint64_t node, FuseBody body) {
    v.push_back({std::move(method), opcode, node, std::move(body)});
  };
  auto getattr = Zeroed<fuse_getattr_in>();
  getattr.getattr_flags = FUSE_GETATTR_FH;
  getattr.fh = 0x4411;
  auto setattr = Zeroed<fuse_setattr_in>();
  setattr.valid = FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_SIZE | FATTR_ATIME | FATTR_MTIME |
                  FATTR_FH | FATTR_LOCKOWNER | FATTR_CTIME;
  setattr.fh = 0x4412;
  setattr.size = 4096;
  setattr.lock_owner = 0x10c0;
  setattr.atime = 1700000001;
  setattr.mtime = 1700000002;
  setattr.ctime = 1700000003;
  setattr.atimensec = 11;
  setattr.mtimensec = 22;
  setattr.ctimensec = 33;
  setattr.mode = S_IFREG | 0604;
  setattr.uid = 1234;
  setattr.gid = 5678;
  auto read = Zeroed<fuse_read_in>();
  read.fh = 0x4413;
  read.offset = 8192;
  read.size = 100;
  read.read_flags = FUSE_READ_LOCKOWNER;
  read.lock_owner = 0x10c1;
  read.flags = O_RDONLY | O_NOATIME;
  auto write = Zeroed<fuse_write_in>();
  write.fh = 0x4414;
  write.offset = 12288;
  write.size = 7;
  write.write_flags = FUSE_WRITE_LOCKOWNER;
  write.lock_owner = 0x10c2;
  write.flags = O_WRONLY | O_APPEND;
  auto lk = Zeroed<fuse_lk_in>();
  lk.fh = 0x4415;
  lk.owner = 0x10c3;
  lk.lk = {100, 199, F_RDLCK, 4242};
  auto flk = lk;
  flk.lk_flags = FUSE_LK_FLOCK;
  flk.lk = {0, INT64_MAX, F_WRLCK, 4243};
  auto ioctl = Zeroed<fuse_ioctl_in>();
  ioctl.fh = 0x4416;
  ioctl.flags = FUSE_IOCTL_UNRESTRICTED;
  ioctl.cmd = 0x8004660b;
  ioctl.arg = 0xA0A0;
  ioctl.in_size = 4;
  ioctl.out_size = 8;
  auto fallocate = Zeroed<fuse_fallocate_in>();
  fallocate.fh = 0x4417;
  fallocate.offset = 1000;
  fallocate.length = 2000;
  fallocate.mode = 1;  // FALLOC_FL_KEEP_SIZE
  auto lseek = Zeroed<fuse_lseek_in>();
  lseek.fh = 0x4418;
  lseek.offset = 3000;
  lseek.whence = SEEK_DATA;
  auto copy = Zeroed<fuse_copy_file_range_in>();
  copy.fh_in = 0x4419;
  copy.off_in = 10;
  copy.nodeid_out = 11;
  copy.fh_out = 0x441a;
  copy.off_out = 20;
  copy.len = 30;
  copy.flags = 0;
  auto setup = Zeroed<fuse_setupmapping_in>();
  setup.fh = 0x441b;
  setup.foffset = 0x200000;
  setup.len = 0x200000;
  setup.flags = FUSE_SETUPMAPPING_FLAG_READ;
  setup.moffset = 0x400000;
  auto create = Zeroed<fuse_create_in>();
  create.flags = O_RDWR | O_CREAT | O_EXCL;
  create.mode = S_IFREG | 0640;
  create.umask = 022;
  auto tmpfile = create;
  tmpfile.flags = O_RDWR | O_TMPFILE;
  auto statx = Zeroed<fuse_statx_in>();
  statx.getattr_flags = FUSE_GETATTR_FH;
  statx.fh = 0x441c;
  statx.sx_flags = 0x800;  // AT_STATX_FORCE_SYNC
  statx.sx_mask = STATX_BASIC_STATS;
  auto poll = Zeroed<fuse_poll_in>();
  poll.fh = 0x441d;
  poll.kh = 0x441e;
  poll.flags = FUSE_POLL_SCHEDULE_NOTIFY;
  poll.events = 0x5;
  auto release = Zeroed<fuse_release_in>();
  release.fh = 0x441f;
  release.flags = O_RDWR;
  release.release_flags = FUSE_RELEASE_FLUSH;
  release.lock_owner = 0x10c4;
  auto releasedir = release;
  releasedir.flags = O_RDONLY | O_DIRECTORY;
  releasedir.release_flags = 0;
  releasedir.lock_owner = 0;
  auto fsync = Zeroed<fuse_fsync_in>();
  fsync.fh = 0x4420;
  fsync.fsync_flags = 1;  // datasync
  auto flush = Zeroed<fuse_flush_in>();
  flush.fh = 0x4421;
  flush.lock_owner = 0x10c5;
  auto rmap = Zeroed<fuse_removemapping_one>();
  rmap.moffset = 0x600000;
  rmap.len = 0x1000;

  add("Lookup", FUSE_LOOKUP, kDir, FuseBody().Name("name"));
  add("GetAttr", FUSE_GETATTR, kFile, FuseBody().Add(getattr));
  add("SetAttr", FUSE_SETATTR, kFile, FuseBody().Add(setattr));
  add("ReadLink", FUSE_READLINK, kFile, FuseBody());
  add("Symlink", FUSE_SYMLINK, kDir, FuseBody().Name("link").Name("../target"));
  add("Mknod", FUSE_MKNOD, kDir,
      FuseBody().Add(fuse_mknod_in{S_IFCHR | 0600, 0x0103, 027, 0}).Name("node"));
  add("Mkdir", FUSE_MKDIR, kDir, FuseBody().Add(fuse_mkdir_in{0750, 002}).Name("subdir"));
  add("Unlink", FUSE_UNLINK, kDir, FuseBody().Name("gone"));
  add("Rmdir", FUSE_RMDIR, kDir, FuseBody().Name("gonedir"));
  add("Rename", FUSE_RENAME, kDir, FuseBody().Add(fuse_rename_in{kFile}).Name("a").Name("b"));
  add("Rename", FUSE_RENAME2, kDir,
      FuseBody().Add(fuse_rename2_in{kFile, RENAME_NOREPLACE, 0}).Name("c").Name("d"));
  add("Link", FUSE_LINK, kDir, FuseBody().Add(fuse_link_in{kFile}).Name("hard"));
  add("Open", FUSE_OPEN, kFile, FuseBody().Add(fuse_open_in{O_RDWR | O_APPEND, 0}));
  add("Read", FUSE_READ, kFile, FuseBody().Add(read));
  add("Write", FUSE_WRITE, kFile, FuseBody().Add(write).Raw("payload"));
  add("StatFs", FUSE_STATFS, kFile, FuseBody());
  add("Release", FUSE_RELEASE, kFile, FuseBody().Add(release));
  add("Fsync", FUSE_FSYNC, kFile, FuseBody().Add(fsync));
  add("SetXattr", FUSE_SETXATTR, kFile,
      FuseBody().AddPrefix(fuse_setxattr_in{5, XATTR_CREATE, 0, 0}, 8).Name("user.k").Raw("value"));
  add("GetXattr", FUSE_GETXATTR, kFile, FuseBody().Add(fuse_getxattr_in{100, 0}).Name("user.k"));
  add("ListXattr", FUSE_LISTXATTR, kFile, FuseBody().Add(fuse_getxattr_in{100, 0}));
  add("RemoveXattr", FUSE_REMOVEXATTR, kFile, FuseBody().Name("user.old"));
  add("Flush", FUSE_FLUSH, kFile, FuseBody().Add(flush));
  add("OpenDir", FUSE_OPENDIR, kDir, FuseBody().Add(fuse_open_in{O_RDONLY | O_DIRECTORY, 0}));
  auto readdir = read;
  readdir.fh = 0xD1D1;
  readdir.offset = 3;
  readdir.size = 1024;
  readdir.read_flags = 0;
  readdir.lock_owner = 0;
  add("ReadDir", FUSE_READDIR, kDir, FuseBody().Add(readdir));
  add("ReadDir", FUSE_READDIRPLUS, kDir, FuseBody().Add(readdir));
  add("ReleaseDir", FUSE_RELEASEDIR, kDir, FuseBody().Add(releasedir));
  add("FsyncDir", FUSE_FSYNCDIR, kDir, FuseBody().Add(fsync));
  add("GetLk", FUSE_GETLK, kFile, FuseBody().Add(lk));
  add("SetLk", FUSE_SETLK, kFile, FuseBody().Add(lk));
  add("SetLk", FUSE_SETLKW, kFile, FuseBody().Add(flk));
  add("Access", FUSE_ACCESS, kFile, FuseBody().Add(fuse_access_in{R_OK | X_OK, 0}));
  add("Create", FUSE_CREATE, kDir, FuseBody().Add(create).Name("new"));
  add("Bmap", FUSE_BMAP, kFile, FuseBody().Add(fuse_bmap_in{77, 1024, 0}));
  add("Ioctl", FUSE_IOCTL, kFile, FuseBody().Add(ioctl).Raw("abcd"));
  add("Poll", FUSE_POLL, kFile, FuseBody().Add(poll));
  add("Fallocate", FUSE_FALLOCATE, kFile, FuseBody().Add(fallocate));
  add("Lseek", FUSE_LSEEK, kFile, FuseBody().Add(lseek));
  add("CopyFileRange", FUSE_COPY_FILE_RANGE, kFile, FuseBody().Add(copy));
  add("SetupMapping", FUSE_SETUPMAPPING, kFile, FuseBody().Add(setup));
  add("RemoveMapping", FUSE_REMOVEMAPPING, kFile,
      FuseBody().Add(fuse_removemapping_in{1}).Add(rmap));
  add("SyncFs", FUSE_SYNCFS, FUSE_ROOT_ID, FuseBody().Add(fuse_syncfs_in{}));
  add("TmpFile", FUSE_TMPFILE, kDir, FuseBody().Add(tmpfile).Name("/"));
  add("Statx", FUSE_STATX, kFile, FuseBody().Add(statx));
  return v;
}

// What the recorder saw and what the guest got for one request.
struct Outcome {
  std::vector<std::string> calls;
  FuseReply reply;
};

// Every case through `backend` (the recorder, or a forwarder over it), on a
// fresh harness; the recorder records iovecs relative to that harness's RAM.
std::vector<Outcome> RunAll(Backend* backend, RecordingBackend& rec,
                            const std::vector<OpCase>& cases) {
  FuseHarness h(backend);
  rec.ram_base = h.ram().Host(0);
  h.Init(FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS);
  (void)rec.Take();
  std::vector<Outcome> out;
  uint64_t unique = 100;
  for (const OpCase& op : cases) {
    unique += 2;
    // A caller with its own ids, so that the context is checked too.
    FuseReply r = h.Call(BuildRequest(op.opcode, unique, op.node, op.body.bytes(), 1001, 1002, 77));
    out.push_back({rec.Take(), std::move(r)});
  }
  return out;
}

std::vector<uint8_t> Bytes(const FuseReply& r) {
  std::vector<uint8_t> b(reinterpret_cast<const uint8_t*>(&r.header),
                         reinterpret_cast<const uint8_t*>(&r.header) + sizeof r.header);
  b.insert(b.end(), r.body.begin(), r.body.end());
  return b;
}

void CheckSame(bool async) {
  RecordingBackend rec;
  rec.async = async;
  rec.init_flags = FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS;
  ForwardingBackend fwd(&rec);
  const std::vector<OpCase> cases = AllOpCases();
  const std::vector<Outcome> direct = RunAll(&rec, rec, cases);
  const std::vector<Outcome> forwarded = RunAll(&fwd, rec, cases);
  REQUIRE(direct.size() == cases.size());
  REQUIRE(forwarded.size() == cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    INFO(cases[i].method << " (opcode " << cases[i].opcode << ")");
    // The direct run is the reference: the recorder served it.
    REQUIRE(direct[i].calls.size() == 1);
    CHECK(direct[i].calls[0].rfind(cases[i].method + " ", 0) == 0);
    CHECK(direct[i].reply.error() == 0);
    // Through the forwarder: the same single call, the same reply bytes.
    REQUIRE(forwarded[i].calls.size() == 1);
    CHECK(forwarded[i].calls[0] == direct[i].calls[0]);
    CHECK(forwarded[i].reply.error() == 0);
    CHECK(Bytes(forwarded[i].reply) == Bytes(direct[i].reply));
  }
}

TEST_CASE("ForwardingBackend: every operation reaches the inner backend unchanged") {
  CheckSame(/*async=*/false);
}

TEST_CASE("ForwardingBackend: answers the inner backend gives later, from another thread") {
  CheckSame(/*async=*/true);
}

TEST_CASE("ForwardingBackend: arguments reach the inner backend as the guest sent them") {
  // Spot checks of the recorded values against the request, so that the
  // comparison above is not between two equally wrong runs.
  RecordingBackend rec;
  ForwardingBackend fwd(&rec);
  const std::vector<OpCase> cases = AllOpCases();
  const std::vector<Outcome> out = RunAll(&fwd, rec, cases);
  auto find = [&](uint32_t opcode) -> const Outcome& {
    for (size_t i = 0; i < cases.size(); ++i) {
      if (cases[i].opcode == opcode) return out[i];
    }
    FAIL("no case for opcode " << opcode);
    return out[0];
  };
  CHECK(find(FUSE_LOOKUP)
            .calls.at(0)
            .rfind("Lookup 5 name | unique=102 uid=1001 gid=1002 pid=77", 0) == 0);
  CHECK(find(FUSE_RENAME2).calls.at(0).rfind("Rename 5 c -> 9 d flags=1 ", 0) == 0);
  CHECK(find(FUSE_WRITE).calls.at(0).find("fh=17428 off=12288 size=7") != std::string::npos);
  CHECK(find(FUSE_WRITE).calls.at(0).find("'payload'") != std::string::npos);
  CHECK(find(FUSE_COPY_FILE_RANGE)
            .calls.at(0)
            .rfind("CopyFileRange 9 fh=17433 off=10 -> 11 fh=17434 off=20 len=30 flags=0", 0) == 0);
  CHECK(find(FUSE_SETLKW).calls.at(0).find("flock=true wait=true") != std::string::npos);
  CHECK(find(FUSE_SETXATTR).calls.at(0).rfind("SetXattr 9 user.k 'value' flags=1", 0) == 0);
  // The data the inner backend wrote reached the guest's buffer.
  const FuseReply& read = find(FUSE_READ).reply;
  CHECK(std::string(read.body.begin(), read.body.end()) == "forwarded data");
  auto open = find(FUSE_OPEN).reply.BodyAs<fuse_open_out>();
  REQUIRE(open.ok());
  CHECK(open->fh == 0xF00D);
  CHECK(open->open_flags == FOPEN_KEEP_CACHE);
}

TEST_CASE("ForwardingBackend: session calls, forgets and interrupts are forwarded") {
  RecordingBackend rec;
  ForwardingBackend fwd(&rec);
  CHECK(fwd.inner() == &rec);

  // InitFlags: what the inner backend honours, and no more, is offered.
  rec.init_flags = FUSE_POSIX_LOCKS | FUSE_EXPORT_SUPPORT;
  CHECK(fwd.InitFlags() == rec.init_flags);
  FuseHarness h(&fwd);
  auto init = h.Init(FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS | FUSE_EXPORT_SUPPORT)
                  .BodyPrefixAs<fuse_init_out>(24);
  REQUIRE(init.ok());
  CHECK((init->flags & FUSE_POSIX_LOCKS) != 0);
  CHECK((init->flags & FUSE_EXPORT_SUPPORT) != 0);
  CHECK((init->flags & FUSE_FLOCK_LOCKS) == 0);
  auto calls = rec.Take();
  REQUIRE(calls.size() == 1);
  CHECK(calls[0].rfind(fmt::format("Init {} ", h.session().minor()), 0) == 0);
  CHECK(calls[0].find(fmt::format("{:#x}", h.session().flags())) != std::string::npos);

  // FORGET, BATCH_FORGET and INTERRUPT: no reply, forwarded as sent.
  h.Call(BuildRequest(FUSE_FORGET, h.NextUnique(), 42, FuseBody().Add(fuse_forget_in{3}).bytes()),
         0);
  h.Call(BuildRequest(FUSE_BATCH_FORGET, h.NextUnique(), 0,
                      FuseBody()
                          .Add(fuse_batch_forget_in{2, 0})
                          .Add(fuse_forget_one{43, 1})
                          .Add(fuse_forget_one{44, 7})
                          .bytes()),
         0);
  h.Call(BuildRequest(FUSE_INTERRUPT, h.NextUnique() | 1 /* the kernel's FUSE_INT_REQ_BIT */, 0,
                      FuseBody().Add(fuse_interrupt_in{0x1234}).bytes()),
         0);
  CHECK(rec.Take() ==
        std::vector<std::string>{"Forget 42 3", "BatchForget 43:1 44:7", "Interrupt 4660"});

  // DESTROY.
  CHECK(h.Call(BuildRequest(FUSE_DESTROY, h.NextUnique(), 0, {})).error() == 0);
  CHECK(rec.Take() == std::vector<std::string>{"Destroy"});

  // The per-queue hooks (the device calls them, not the session).
  std::unique_ptr<QueueContext> q = fwd.CreateQueueContext(3);
  REQUIRE(q != nullptr);
  CHECK(q.get() == rec.queue_context_made);
  fwd.InterruptWaits();
  CHECK(rec.Take() == std::vector<std::string>{"CreateQueueContext 3", "InterruptWaits"});
}

// A decorator as the header describes it: one operation changed, the rest
// forwarded.
class NoXattrWrites : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  void SetXattr(const RequestContext&, uint64_t, std::string_view, std::span<const uint8_t>,
                uint32_t, uint32_t, Reply<void> reply) override {
    reply.Error(EPERM);
  }
};

TEST_CASE("ForwardingBackend: a decorator overrides one operation") {
  RecordingBackend rec;
  NoXattrWrites deco(&rec);
  FuseHarness h(&deco);
  h.Init();
  (void)rec.Take();
  auto set = h.Call(BuildRequest(
      FUSE_SETXATTR, h.NextUnique(), 9,
      FuseBody().AddPrefix(fuse_setxattr_in{1, 0, 0, 0}, 8).Name("user.a").Raw("v").bytes()));
  CHECK(set.error() == -EPERM);
  CHECK(rec.Take().empty());
  auto get = h.Call(BuildRequest(FUSE_GETXATTR, h.NextUnique(), 9,
                                 FuseBody().Add(fuse_getxattr_in{100, 0}).Name("user.a").bytes()));
  CHECK(get.error() == 0);
  CHECK(std::string(get.body.begin(), get.body.end()) == "xattr value");
  CHECK(rec.Take().size() == 1);
}

}  // namespace
}  // namespace virtiofs
