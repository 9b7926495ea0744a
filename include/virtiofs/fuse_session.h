// FuseSession: decodes FUSE requests out of descriptor chains, checks them,
// runs them on a Backend, and writes the replies into the chains.
//
// One session serves one virtio-fs device (all its queues): INIT is
// negotiated once and every queue's worker calls Handle() concurrently.
// Handle() never fails: a request that cannot be served gets an error reply
// (-EIO before INIT, -ENOSYS for an unknown opcode, -EINVAL for a malformed
// one, -ERANGE when the reply does not fit the guest's buffers), and a chain
// too broken to carry any reply is completed with length 0 and logged.
#ifndef VIRTIOFS_FUSE_SESSION_H_
#define VIRTIOFS_FUSE_SESSION_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string_view>

#include "virtiofs/backend.h"
#include "virtiofs/virtqueue.h"

namespace virtiofs {

// The FUSE protocol minor this library speaks (7.39: it serves FUSE_STATX).
inline constexpr uint32_t kFuseMinor = 39;
// The oldest guest minor served (Linux 4.20 / 5.x era kernels send 27+).
inline constexpr uint32_t kFuseMinMinor = 27;

// Where a finished request goes: the device gives the chain back to its
// queue. Called exactly once per chain, on whichever thread answered it (the
// queue's worker when the backend answers inline).
class CompletionSink {
 public:
  virtual ~CompletionSink() = default;
  // `reply_length` bytes of the chain's writable part hold the reply (0 for
  // requests that get none).
  virtual void Complete(DescriptorChain chain, uint32_t reply_length) = 0;
};

struct FuseSessionOptions {
  // Largest request data the guest may send or ask for, in 4 KiB pages
  // (FUSE max_pages; max_write = max_pages * 4096). The device sets it from
  // its queue size, as the Linux driver limits a request to the queue.
  uint32_t max_pages = 256;
  // INIT flags (bits 0-63, flags2 shifted up) that configuration allows; the
  // session offers the guest what it asks & backend->InitFlags() & this.
  uint64_t allowed_init_flags = ~uint64_t{0};
  // max_background and congestion_threshold sent in INIT (0: guest default).
  uint16_t max_background = 0;
  uint16_t congestion_threshold = 0;
  // Time every request (two clock reads) for FuseSession::op_stats.
  bool measure_latency = true;
};

// The opcode's name as in <linux/fuse.h> without "FUSE_" ("LOOKUP"), or
// "UNKNOWN".
std::string_view FuseOpcodeName(uint32_t opcode);

// What one opcode has cost so far (a snapshot; see FuseSession::op_stats).
struct FuseOpStats {
  // Latency histogram: bucket 0 counts replies under 1 us, bucket i (1 to
  // kBuckets - 2) those in [2^(i-1), 2^i) us, the last one everything slower
  // (over 2^(kBuckets-2) us, about 4 s).
  static constexpr int kBuckets = 24;
  uint64_t replies = 0;   // Requests answered (or completed without reply).
  uint64_t errors = 0;    // Of them, answered with an error.
  uint64_t total_ns = 0;  // Sum of latencies (decode to reply).
  std::array<uint64_t, kBuckets> buckets{};
  // Upper bound of bucket i in microseconds (infinity for the last).
  static double BucketLimitUs(int i);
};

class FuseSession {
 public:
  FuseSession(Backend* backend, FuseSessionOptions options = {});
  FuseSession(const FuseSession&) = delete;
  FuseSession& operator=(const FuseSession&) = delete;

  // Decodes `chain`, runs it, and hands it to `sink` when answered. `queue`
  // is the calling worker's QueueContext, given to the backend.
  void Handle(DescriptorChain chain, CompletionSink* sink, QueueContext* queue = nullptr);

  // Ends the session: the backend forgets everything and the next request
  // must be INIT. DESTROY does this; so does an INIT on a live session (a
  // guest that rebooted without unmounting sends one).
  void Reset();

  // Lowers max_pages (the device does, from its request queues' size).
  // Effective for the next INIT; never raises it.
  void LimitMaxPages(uint32_t max_pages);

  bool initialized() const { return initialized_.load(std::memory_order_acquire); }
  uint32_t minor() const { return minor_.load(std::memory_order_relaxed); }
  // Negotiated INIT flags (flags2 in the upper 32 bits).
  uint64_t flags() const { return flags_.load(std::memory_order_relaxed); }
  uint32_t max_write() const { return max_pages_.load(std::memory_order_relaxed) * 4096; }
  Backend* backend() const { return backend_; }

  // Requests seen per opcode (index = opcode, 0 for unknown ones).
  static constexpr uint32_t kMaxOpcode = 53;
  uint64_t count(uint32_t opcode) const {
    return opcode < kMaxOpcode ? counts_[opcode].load(std::memory_order_relaxed) : 0;
  }
  // Replies, errors and latencies per opcode (index as count()); zero when
  // FuseSessionOptions::measure_latency is off, but for replies and errors.
  FuseOpStats op_stats(uint32_t opcode) const;
  // Requests decoded and not answered yet (running, or waiting on a lock).
  uint64_t in_flight() const { return in_flight_.load(std::memory_order_relaxed); }

 private:
  void HandleInit(class fuse_internal::PendingRequest* req, std::span<const uint8_t> payload);

  Backend* backend_;
  FuseSessionOptions options_;
  std::mutex init_mu_;
  std::atomic<bool> initialized_{false};
  std::atomic<uint32_t> minor_{0};
  std::atomic<uint64_t> flags_{0};
  std::atomic<uint32_t> max_pages_;
  std::atomic<uint64_t> counts_[kMaxOpcode] = {};
  struct OpCounters {
    std::atomic<uint64_t> replies{0}, errors{0}, total_ns{0};
    std::atomic<uint64_t> buckets[FuseOpStats::kBuckets] = {};
  };
  void RecordReply(uint32_t opcode, int32_t error, uint64_t start_ns);
  OpCounters ops_[kMaxOpcode];
  std::atomic<uint64_t> in_flight_{0};

  friend class FuseDispatcher;
  friend class fuse_internal::PendingRequest;
};

}  // namespace virtiofs

#endif  // VIRTIOFS_FUSE_SESSION_H_
