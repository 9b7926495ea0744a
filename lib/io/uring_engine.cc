// The io_uring engine: one ring per owning thread, iovecs into guest memory.
#include <liburing.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <iterator>

#include "absl/strings/str_format.h"
#include "lib/io/engines.h"
#include "virtiofs/fd.h"
#include "virtiofs/log.h"

namespace virtiofs {
namespace io_internal {
namespace {

class UringEngine final : public IoEngine {
 public:
  static absl::StatusOr<std::unique_ptr<IoEngine>> Create(uint32_t depth) {
    std::unique_ptr<UringEngine> e(new UringEngine());
    const bool restricted = IoEngine::uring_opcodes_restricted();
    int r = io_uring_queue_init(std::max<uint32_t>(depth, 8), &e->ring_,
                                restricted ? IORING_SETUP_R_DISABLED : 0);
    if (r < 0) {
      return absl::UnavailableError(absl::StrFormat("io_uring_queue_init: %s", strerror(-r)));
    }
    e->ring_ready_ = true;
    // Restrictions last: once enabled, a restricted ring takes no register
    // operation at all (none is allowed).
    if (restricted && (r = RestrictAndEnableRing(&e->ring_)) < 0) {
      return absl::UnavailableError(absl::StrFormat("io_uring restrictions: %s", strerror(-r)));
    }
    return std::unique_ptr<IoEngine>(std::move(e));
  }

  ~UringEngine() override {
    if (!ring_ready_) return;
    // Guest memory is in use by the kernel until each operation completes:
    // wait for all of them (their callbacks run) before the ring goes.
    Submit();
    while (in_flight_ > 0) {
      io_uring_cqe* cqe;
      if (io_uring_wait_cqe(&ring_, &cqe) < 0) break;
      Reap();
    }
    io_uring_queue_exit(&ring_);
  }

  IoEngineKind kind() const override { return IoEngineKind::kUring; }

  void Readv(int fd, std::span<const iovec> iov, int64_t offset, Callback done) override {
    Start(Op::kRead, fd, iov, offset, std::move(done));
  }
  void Writev(int fd, std::span<const iovec> iov, int64_t offset, Callback done) override {
    Start(Op::kWrite, fd, iov, offset, std::move(done));
  }
  void Fsync(int fd, bool datasync, Callback done) override {
    auto* op = new Op{Op::kFsync, fd, 0, {}, std::move(done)};
    op->datasync = datasync;
    Queue(op);
  }
  void Fallocate(int fd, int mode, uint64_t offset, uint64_t length, Callback done) override {
    auto* op = new Op{Op::kFallocate, fd, static_cast<int64_t>(offset), {}, std::move(done)};
    op->mode = mode;
    op->length = length;
    Queue(op);
  }

  void Submit() override {
    if (queued_ == 0) return;
    int r = io_uring_submit(&ring_);
    if (r < 0) VIRTIOFS_LOG(kError, "io_uring_submit: {}", strerror(-r));
    queued_ = 0;
  }

  // The ring's own fd: readable while completions wait in the ring (no
  // eventfd to signal and to read back for every batch).
  int completion_fd() const override { return ring_.ring_fd; }

  size_t Reap() override {
    size_t finished = 0;
    io_uring_cqe* cqe;
    while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
      auto* op = static_cast<Op*>(io_uring_cqe_get_data(cqe));
      const int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      if (Continue(op, res)) continue;
      ++finished;
    }
    Submit();  // Continuations, and whatever the callbacks queued.
    return finished;
  }

  size_t in_flight() const override { return in_flight_; }

 private:
  struct Op {
    enum Type { kRead, kWrite, kFsync, kFallocate } type;
    int fd;
    int64_t offset;
    IovecVector iov;
    Callback done;
    int64_t transferred = 0;
    bool datasync = false;
    int mode = 0;
    uint64_t length = 0;
  };

  UringEngine() = default;

  void Start(Op::Type type, int fd, std::span<const iovec> iov, int64_t offset, Callback done) {
    auto* op = new Op{type, fd, offset, IovecVector(iov.begin(), iov.end()), std::move(done)};
    if (op->iov.empty()) {
      Finish(op, 0, /*counted=*/false);
      return;
    }
    Queue(op);
  }

  // Puts `op` on the submission queue (submitting when it is full).
  void Queue(Op* op, bool counted = false) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
      Submit();
      sqe = io_uring_get_sqe(&ring_);
    }
    if (sqe == nullptr) {  // The kernel is not taking entries: give up on it.
      Finish(op, -EAGAIN, counted);
      return;
    }
    const uint64_t pos = op->offset == kCurrentPosition
                             ? static_cast<uint64_t>(-1)
                             : static_cast<uint64_t>(op->offset + op->transferred);
    const unsigned count = static_cast<unsigned>(std::min<size_t>(op->iov.size(), IOV_MAX));
    switch (op->type) {
      case Op::kRead:
        io_uring_prep_readv(sqe, op->fd, op->iov.data(), count, pos);
        break;
      case Op::kWrite:
        io_uring_prep_writev(sqe, op->fd, op->iov.data(), count, pos);
        break;
      case Op::kFsync:
        io_uring_prep_fsync(sqe, op->fd, op->datasync ? IORING_FSYNC_DATASYNC : 0);
        break;
      case Op::kFallocate:
        io_uring_prep_fallocate(sqe, op->fd, op->mode, static_cast<uint64_t>(op->offset),
                                op->length);
        break;
    }
    io_uring_sqe_set_data(sqe, op);
    ++queued_;
    if (!counted) ++in_flight_;
  }

  // Handles one completion; true when the operation goes on.
  bool Continue(Op* op, int res) {
    if (op->type == Op::kFsync || op->type == Op::kFallocate) {
      Finish(op, res, true);
      return false;
    }
    if (res == -EINTR || res == -EAGAIN) {
      Queue(op, /*counted=*/true);
      return true;
    }
    if (res <= 0) {
      // An error after progress reports the progress; 0 is end of file.
      Finish(op, op->transferred > 0 ? op->transferred : res, true);
      return false;
    }
    op->transferred += res;
    ConsumeIovecs(op->iov, static_cast<size_t>(res));
    if (op->iov.empty()) {
      Finish(op, op->transferred, true);
      return false;
    }
    Queue(op, /*counted=*/true);  // A short transfer: the rest.
    return true;
  }

  void Finish(Op* op, int64_t result, bool counted) {
    if (counted) --in_flight_;
    Callback done = std::move(op->done);
    delete op;
    done(result);
  }

  io_uring ring_{};
  bool ring_ready_ = false;
  size_t queued_ = 0;
  size_t in_flight_ = 0;
};

std::atomic<bool> g_restrict_uring{false};

}  // namespace

int RestrictAndEnableRing(io_uring* ring) {
  // Exactly what Queue() submits; sqe_flags stay 0 (no IOSQE_* flag is
  // allowed, so no fixed files, links or buffer selection either).
  constexpr uint8_t kOps[] = {IORING_OP_READV, IORING_OP_WRITEV, IORING_OP_FSYNC,
                              IORING_OP_FALLOCATE};
  io_uring_restriction res[std::size(kOps) + 1] = {};
  for (size_t i = 0; i < std::size(kOps); ++i) {
    res[i].opcode = IORING_RESTRICTION_SQE_OP;
    res[i].sqe_op = kOps[i];
  }
  res[std::size(kOps)].opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED;
  res[std::size(kOps)].sqe_flags = 0;
  // Raw io_uring_register(2): Debian's liburing 2.3 declares
  // io_uring_register_restrictions and io_uring_enable_rings but does not
  // export them.
  if (syscall(__NR_io_uring_register, ring->ring_fd, IORING_REGISTER_RESTRICTIONS, res,
              std::size(res)) < 0) {
    return -errno;
  }
  if (syscall(__NR_io_uring_register, ring->ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) <
      0) {
    return -errno;
  }
  return 0;
}

absl::StatusOr<std::unique_ptr<IoEngine>> MakeUringEngine(uint32_t depth) {
  return UringEngine::Create(depth);
}

}  // namespace io_internal

std::string_view IoEngineName(IoEngineKind kind) {
  return kind == IoEngineKind::kUring ? "uring" : "sync";
}

absl::StatusOr<std::unique_ptr<IoEngine>> IoEngine::Create(IoEngineKind kind, uint32_t depth) {
  if (kind == IoEngineKind::kSync) return io_internal::MakeSyncEngine();
  return io_internal::MakeUringEngine(depth);
}

void IoEngine::RestrictUringOpcodes() { io_internal::g_restrict_uring.store(true); }

bool IoEngine::uring_opcodes_restricted() { return io_internal::g_restrict_uring.load(); }

std::unique_ptr<IoEngine> IoEngine::CreateBest(uint32_t depth) {
  auto uring = io_internal::MakeUringEngine(depth);
  if (uring.ok()) return *std::move(uring);
  static std::atomic<bool> logged{false};
  if (!logged.exchange(true)) {
    VIRTIOFS_LOG(kWarning, "io_uring unavailable ({}); using synchronous I/O",
                 uring.status().message());
  }
  return io_internal::MakeSyncEngine();
}

}  // namespace virtiofs
