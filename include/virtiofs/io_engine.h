// IoEngine: file I/O straight between host files and guest memory.
//
// The io_uring engine submits reads, writes, fsyncs and fallocates to a ring
// owned by one thread (a queue worker), with iovecs that point into guest
// memory: no bounce buffer. Completions are reaped by that thread, which runs
// each operation's callback. Short reads and writes are continued until the
// request is complete, the file ends (reads), or an error occurs.
//
// The synchronous engine does the same with preadv/pwritev on the calling
// thread, running the callback before returning; it is the fallback where
// io_uring is unavailable (old kernels, seccomp policies) and a reference in
// tests.
//
// Threading: an engine belongs to one thread. The iovecs passed in must stay
// valid until the callback runs.
#ifndef VIRTIOFS_IO_ENGINE_H_
#define VIRTIOFS_IO_ENGINE_H_

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"

namespace virtiofs {

enum class IoEngineKind { kUring, kSync };
std::string_view IoEngineName(IoEngineKind kind);

class IoEngine {
 public:
  // The result: bytes transferred (read, write), 0 (fsync, fallocate), or a
  // negative errno.
  using Callback = absl::AnyInvocable<void(int64_t result)>;
  // Offset meaning "the file's current position" (pipes, sockets).
  static constexpr int64_t kCurrentPosition = -1;

  // An engine of `kind`. kUring fails (Unavailable) where io_uring cannot be
  // set up; `depth` is the ring's submission queue size.
  static absl::StatusOr<std::unique_ptr<IoEngine>> Create(IoEngineKind kind,
                                                          uint32_t depth = 256);
  // io_uring when it works here, else the synchronous engine (logged once).
  static std::unique_ptr<IoEngine> CreateBest(uint32_t depth = 256);

  // io_uring operations are not checked by seccomp: a process that installs
  // a seccomp filter calls this first, and every ring created afterwards (in
  // any thread) accepts only the opcodes this engine submits (readv, writev,
  // fsync, fallocate) and no SQE flags, through IORING_SETUP_R_DISABLED,
  // IORING_REGISTER_RESTRICTIONS and IORING_REGISTER_ENABLE_RINGS (Linux
  // 5.10). Where the kernel cannot restrict a ring, kUring creation fails
  // (and CreateBest falls back to the synchronous engine): never an
  // unrestricted ring once this is on. Process-wide; cannot be turned off.
  static void RestrictUringOpcodes();
  static bool uring_opcodes_restricted();

  virtual ~IoEngine() = default;
  virtual IoEngineKind kind() const = 0;

  // Reads into `iov` from `offset`; the result is short only at end of file.
  virtual void Readv(int fd, std::span<const iovec> iov, int64_t offset, Callback done) = 0;
  // Writes all of `iov` at `offset`; short only on an error after progress.
  virtual void Writev(int fd, std::span<const iovec> iov, int64_t offset, Callback done) = 0;
  virtual void Fsync(int fd, bool datasync, Callback done) = 0;
  virtual void Fallocate(int fd, int mode, uint64_t offset, uint64_t length, Callback done) = 0;

  // Hands queued operations to the kernel. Operations are also submitted
  // when the queue fills; call this once per batch of requests.
  virtual void Submit() = 0;
  // Becomes readable when completions wait to be reaped (-1: never; the
  // synchronous engine completes inline).
  virtual int completion_fd() const = 0;
  // Runs the callbacks of finished operations, without blocking; returns
  // how many operations finished.
  virtual size_t Reap() = 0;
  // Operations submitted and not finished.
  virtual size_t in_flight() const = 0;
};

}  // namespace virtiofs

#endif  // VIRTIOFS_IO_ENGINE_H_
