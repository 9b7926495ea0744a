// A Backend for tests that records every call it gets as one line of text
// (the method and its arguments) and answers it with canned values, inline
// or from another thread, or fails it in one of several ways (Mode).
//
// fuse_test.cc checks the decoded arguments and reply bytes of each opcode
// against it; forwarding_backend_test.cc runs every request on it directly
// and through a ForwardingBackend and compares what it saw (with
// record_details set, so that the lines also hold the request context, the
// guest buffers and the bytes passed).
#ifndef VIRTIOFS_TESTS_SUPPORT_RECORDING_BACKEND_H_
#define VIRTIOFS_TESTS_SUPPORT_RECORDING_BACKEND_H_

#include <fcntl.h>
#include <linux/fuse.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "virtiofs/backend.h"

namespace virtiofs::testing {

// The canned answers the recorder gives by default (fuse_test.cc holds the
// wire form the guest must see for each).
struct stat TestStat(mode_t mode = S_IFREG | 0640, ino_t ino = 0x1111222233334444);
Attributes TestAttributes();
Entry TestEntry(uint64_t node = 42, mode_t mode = S_IFREG | 0640, ino_t ino = 0x1111222233334444);
StatxResult TestStatx();
struct statvfs TestStatvfs();

// One READDIR / READDIRPLUS entry a backend serves.
struct DirItem {
  std::string name;
  uint64_t ino;
  uint32_t type;  // DT_*
  uint64_t next_offset;
  Entry entry;  // READDIRPLUS.
};

class RecordingBackend : public Backend {
 public:
  // How a request is answered.
  enum class Mode {
    kOk,     // Answers inline with the canned value.
    kError,  // Answers Error(error) inline.
    kDrop,   // Drops the reply unanswered.
    kTwice,  // Answers Ok twice, then Error: only the first may count.
    kAsync,  // Answers from another thread, once `hold` is false (and async_delay has passed).
    kThrow,  // Throws out of the Backend method.
  };

  ~RecordingBackend() override { JoinAll(); }

  // ---- configuration (set before the request) ----
  Mode mode = Mode::kOk;
  int error = ENOENT;
  std::atomic<bool> hold{false};
  // kAsync: how long the answering thread sleeps before it answers (after
  // `hold`), so that the answer comes after the call has returned.
  std::chrono::milliseconds async_delay{0};
  uint64_t init_flags = 0;
  // When set, each recorded line of a request also holds the request
  // context (" | unique=... queue=..."), the guest buffers of READ and WRITE
  // as offsets from ram_base, and the bytes of WRITE data, SETXATTR values
  // and IOCTL input.
  bool record_details = false;

  Entry entry = TestEntry();
  Attributes attr = TestAttributes();
  StatxResult statx = TestStatx();
  OpenResult open{0xF00D, FOPEN_KEEP_CACHE};
  CreateResult create{TestEntry(43), OpenResult{0xBEEF, FOPEN_DIRECT_IO}};
  struct statvfs statfs = TestStatvfs();
  std::string text = "some/link/target";  // READLINK, GETXATTR, LISTXATTR.
  uint32_t u32 = 0;                       // WRITE (bytes written), POLL (revents).
  uint64_t u64 = 0;                       // LSEEK, BMAP, COPY_FILE_RANGE.
  FileLock lock{100, 199, F_WRLCK, 4242};
  IoctlResult ioctl{-7, {1, 2, 3}};
  std::string read_data;
  std::optional<uint32_t> read_answer;  // READ: Ok(this) instead of read_data.size().
  std::vector<DirItem> dir;
  // Guest RAM, to tell whether an iovec points into it.
  const uint8_t* ram_base = nullptr;
  size_t ram_size = 0;

  // ---- what the backend saw ----
  std::vector<std::string> calls() const;
  std::string last() const;  // The last call, or "<no call>".
  size_t call_count() const;
  RequestContext ctx() const;  // The context of the last request.
  void ClearCalls();
  std::vector<std::string> Take();  // The calls so far, cleared.

  std::vector<iovec> read_buffers;  // virtiofs::ReadReply::buffers() as the backend got them.
  std::vector<iovec> write_iov;     // WriteRequest::data during the call.
  std::string write_data;           // Its bytes.
  std::string late_write_data;      // The bytes read again when answering (kAsync: later).
  std::vector<uint8_t> bytes;       // SETXATTR value, IOCTL input.
  std::vector<ForgetItem> forgotten;
  std::atomic<size_t> dir_added{0};
  uint32_t init_minor = 0;
  uint64_t init_negotiated = 0;
  int destroys = 0;
  QueueContext* queue_context_made = nullptr;  // The last CreateQueueContext result.

  bool InRam(const iovec& v) const;
  // The bytes of `iov`, or a marker when one points outside guest RAM.
  std::string Gather(std::span<const iovec> iov) const;

  // Releases `hold` and waits for the answering threads (kAsync).
  void JoinAll();

  // ---- Backend ----
  uint64_t InitFlags() const override { return init_flags; }
  void Init(uint32_t minor, uint64_t flags) override;
  std::unique_ptr<QueueContext> CreateQueueContext(uint32_t queue_index) override;
  void InterruptWaits() override;
  void Destroy() override;
  void Lookup(const RequestContext& c, uint64_t parent, std::string_view name,
              Reply<Entry> reply) override;
  void Forget(uint64_t node, uint64_t nlookup) override;
  void BatchForget(std::span<const ForgetItem> items) override;
  void GetAttr(const RequestContext& c, uint64_t node, std::optional<uint64_t> handle,
               Reply<Attributes> reply) override;
  void SetAttr(const RequestContext& c, uint64_t node, const SetAttrRequest& a,
               Reply<Attributes> reply) override;
  void Statx(const RequestContext& c, uint64_t node, std::optional<uint64_t> handle,
             uint32_t sx_flags, uint32_t sx_mask, Reply<StatxResult> reply) override;
  void ReadLink(const RequestContext& c, uint64_t node, Reply<std::string> reply) override;
  void Symlink(const RequestContext& c, uint64_t parent, std::string_view name,
               std::string_view target, Reply<Entry> reply) override;
  void Mknod(const RequestContext& c, uint64_t parent, std::string_view name, uint32_t mode_,
             uint32_t rdev, uint32_t umask, Reply<Entry> reply) override;
  void Mkdir(const RequestContext& c, uint64_t parent, std::string_view name, uint32_t mode_,
             uint32_t umask, Reply<Entry> reply) override;
  void Unlink(const RequestContext& c, uint64_t parent, std::string_view name,
              Reply<void> reply) override;
  void Rmdir(const RequestContext& c, uint64_t parent, std::string_view name,
             Reply<void> reply) override;
  void Rename(const RequestContext& c, uint64_t parent, std::string_view name, uint64_t new_parent,
              std::string_view new_name, uint32_t flags, Reply<void> reply) override;
  void Link(const RequestContext& c, uint64_t node, uint64_t new_parent, std::string_view new_name,
            Reply<Entry> reply) override;
  void Access(const RequestContext& c, uint64_t node, uint32_t mask, Reply<void> reply) override;
  void StatFs(const RequestContext& c, uint64_t node, Reply<struct statvfs> reply) override;
  void Open(const RequestContext& c, uint64_t node, uint32_t flags,
            Reply<OpenResult> reply) override;
  void Create(const RequestContext& c, uint64_t parent, std::string_view name, uint32_t mode_,
              uint32_t flags, uint32_t umask, Reply<CreateResult> reply) override;
  void TmpFile(const RequestContext& c, uint64_t parent, uint32_t mode_, uint32_t flags,
               uint32_t umask, Reply<CreateResult> reply) override;
  void Read(const RequestContext& c, uint64_t node, const ReadRequest& r,
            virtiofs::ReadReply reply) override;
  void Write(const RequestContext& c, uint64_t node, const WriteRequest& w,
             Reply<uint32_t> reply) override;
  void Flush(const RequestContext& c, uint64_t node, uint64_t handle, uint64_t lock_owner,
             Reply<void> reply) override;
  void Release(const RequestContext& c, uint64_t node, uint64_t handle, uint32_t flags,
               uint32_t release_flags, uint64_t lock_owner, Reply<void> reply) override;
  void Fsync(const RequestContext& c, uint64_t node, uint64_t handle, bool datasync,
             Reply<void> reply) override;
  void Fallocate(const RequestContext& c, uint64_t node, uint64_t handle, uint64_t offset,
                 uint64_t length, uint32_t mode_, Reply<void> reply) override;
  void Lseek(const RequestContext& c, uint64_t node, uint64_t handle, uint64_t offset,
             uint32_t whence, Reply<uint64_t> reply) override;
  void CopyFileRange(const RequestContext& c, uint64_t node_in, uint64_t handle_in,
                     uint64_t offset_in, uint64_t node_out, uint64_t handle_out,
                     uint64_t offset_out, uint64_t length, uint64_t flags,
                     Reply<uint64_t> reply) override;
  void Bmap(const RequestContext& c, uint64_t node, uint32_t blocksize, uint64_t block,
            Reply<uint64_t> reply) override;
  void Ioctl(const RequestContext& c, uint64_t node, uint64_t handle, uint32_t flags, uint32_t cmd,
             uint64_t arg, std::span<const uint8_t> in, uint32_t out_size,
             Reply<IoctlResult> reply) override;
  void Poll(const RequestContext& c, uint64_t node, uint64_t handle, uint64_t kh, uint32_t flags,
            uint32_t events, Reply<uint32_t> reply) override;
  void GetLk(const RequestContext& c, uint64_t node, uint64_t handle, uint64_t owner,
             const FileLock& l, bool flock, Reply<FileLock> reply) override;
  void SetLk(const RequestContext& c, uint64_t node, uint64_t handle, uint64_t owner,
             const FileLock& l, bool flock, bool wait, Reply<void> reply) override;
  void OpenDir(const RequestContext& c, uint64_t node, uint32_t flags,
               Reply<OpenResult> reply) override;
  void ReadDir(const RequestContext& c, uint64_t node, uint64_t handle, uint64_t offset, bool plus,
               DirReply reply) override;
  void ReleaseDir(const RequestContext& c, uint64_t node, uint64_t handle, uint32_t flags,
                  Reply<void> reply) override;
  void FsyncDir(const RequestContext& c, uint64_t node, uint64_t handle, bool datasync,
                Reply<void> reply) override;
  void SetXattr(const RequestContext& c, uint64_t node, std::string_view name,
                std::span<const uint8_t> value, uint32_t flags, uint32_t setxattr_flags,
                Reply<void> reply) override;
  void GetXattr(const RequestContext& c, uint64_t node, std::string_view name,
                Reply<std::string> reply) override;
  void ListXattr(const RequestContext& c, uint64_t node, Reply<std::string> reply) override;
  void RemoveXattr(const RequestContext& c, uint64_t node, std::string_view name,
                   Reply<void> reply) override;
  void SyncFs(const RequestContext& c, uint64_t node, Reply<void> reply) override;
  void SetupMapping(const RequestContext& c, uint64_t node, uint64_t handle, uint64_t foffset,
                    uint64_t len, uint64_t flags, uint64_t moffset, Reply<void> reply) override;
  void RemoveMapping(const RequestContext& c, std::span<const RemoveMappingItem> items,
                     Reply<void> reply) override;
  void Interrupt(uint64_t unique) override;

 private:
  void Record(std::string call);
  // Also keeps `c` as ctx(), and names it in the line when record_details.
  void Record(const RequestContext& c, std::string call);
  // " buf=[offset+length]...": `iov` relative to ram_base, when record_details.
  std::string Buffers(std::span<const iovec> iov) const;
  // " 'bytes'" when record_details, else nothing.
  std::string Quoted(std::span<const uint8_t> b) const;

  // Answers `reply` as `mode` says; `answer` gives the canned value.
  template <typename R, typename Fn>
  void Finish(R reply, Fn answer);
  template <typename T>
  void Value(Reply<T> reply, T v);
  void Empty(Reply<void> reply);

  mutable std::mutex mu_;
  std::vector<std::string> calls_;
  RequestContext ctx_;
  std::mutex threads_mu_;
  std::vector<std::thread> threads_;
};

}  // namespace virtiofs::testing

#endif  // VIRTIOFS_TESTS_SUPPORT_RECORDING_BACKEND_H_
