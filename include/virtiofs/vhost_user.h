// The back-end side of the vhost-user protocol, without an event loop.
//
//   VhostUserDevice   what a device (virtio-fs) implements: queues, features,
//                     config space, and starting/stopping a queue's worker.
//   Vring             one started ring as the device's worker sees it: pop
//                     chains, complete them, notify the guest. Dirty-page
//                     logging and inflight tracking happen inside.
//   VhostUserBackend  the protocol state machine for one front-end
//                     connection: feed it messages, send what it returns.
//   BackendChannel    back-end initiated requests (SET_BACKEND_REQ_FD).
//
// The front-end is untrusted: every message is checked (sizes, fds, indexes,
// addresses) before it changes any state. A framing error, or an error the
// front-end cannot be told about through REPLY_ACK, makes Handle() fail and
// the caller closes the connection.
#ifndef VIRTIOFS_VHOST_USER_H_
#define VIRTIOFS_VHOST_USER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "virtiofs/fd.h"
#include "virtiofs/guest_memory.h"
#include "virtiofs/mmap.h"
#include "virtiofs/vhost_user_message.h"
#include "virtiofs/vhost_user_protocol.h"
#include "virtiofs/virtqueue.h"

namespace virtiofs {

// The shared dirty-page bitmap of live migration (SET_LOG_BASE): one bit per
// 4 KiB page of guest physical memory.
class DirtyLog {
 public:
  // Maps `size` bytes of `fd` at `offset`.
  static absl::StatusOr<std::shared_ptr<DirtyLog>> Map(int fd, uint64_t size, uint64_t offset);
  // Marks every page touched by [gpa, gpa + len). Pages beyond the bitmap are
  // ignored (the front-end sized it for guest RAM) and counted.
  void MarkRange(uint64_t gpa, uint64_t len);
  uint64_t size() const { return region_.size(); }
  const uint8_t* bits() const { return region_.data(); }
  uint64_t out_of_range() const { return out_of_range_.load(std::memory_order_relaxed); }

 private:
  explicit DirtyLog(MmapRegion region) : region_(std::move(region)) {}
  MmapRegion region_;
  std::atomic<uint64_t> out_of_range_{0};
};

// Sends back-end initiated requests to the front-end. Thread-safe: one
// request (and its reply) at a time.
class BackendChannel {
 public:
  BackendChannel(UniqueFd fd, bool reply_ack, bool send_fd)
      : fd_(std::move(fd)), reply_ack_(reply_ack), send_fd_(send_fd) {}
  // Sends `request`. With REPLY_ACK negotiated and `need_reply`, waits for
  // the front-end's u64 reply and returns it (0 is success); otherwise
  // returns 0 once sent. Fds need BACKEND_SEND_FD.
  absl::StatusOr<uint64_t> Send(vhost_user::BackendRequest request,
                                std::span<const uint8_t> payload, std::span<const int> fds = {},
                                bool need_reply = true);

 private:
  std::mutex mu_;
  UniqueFd fd_;
  bool reply_ack_;
  bool send_fd_;
};

class Vring;

// Implemented by a device served over vhost-user. Called on the thread that
// drives the VhostUserBackend, never concurrently.
class VhostUserDevice {
 public:
  virtual ~VhostUserDevice() = default;

  // Number of virtqueues (GET_QUEUE_NUM; for virtio-fs 1 + request queues).
  virtual uint32_t NumQueues() const = 0;
  // Largest queue size accepted by SET_VRING_NUM (a power of two).
  virtual uint32_t MaxQueueSize() const { return 1024; }
  // Device-specific virtio feature bits to offer. VERSION_1, INDIRECT_DESC,
  // EVENT_IDX, VHOST_F_LOG_ALL and VHOST_USER_F_PROTOCOL_FEATURES are added
  // by the back-end.
  virtual uint64_t DeviceFeatures() const { return 0; }
  // Config space (GET_CONFIG/SET_CONFIG; CONFIG is offered only when
  // ConfigSize() is not 0). ReadConfig fills `out` from `offset`.
  virtual uint32_t ConfigSize() const { return 0; }
  virtual absl::Status ReadConfig(uint32_t offset, std::span<uint8_t> out) const;
  virtual absl::Status WriteConfig(uint32_t offset, std::span<const uint8_t> data);
  // The acked virtio features (SET_FEATURES). May change while queues run
  // (VHOST_F_LOG_ALL toggles during migration).
  virtual void FeaturesChanged(uint64_t features) { (void)features; }
  // A ring is started and enabled: serve it. `vring` stays valid until the
  // matching StopQueue returns. Typically starts a worker thread that waits
  // on vring.kick_fd().
  virtual void StartQueue(Vring& vring) = 0;
  // Stop serving `vring`: return only when its worker no longer touches it
  // and every chain it popped has been completed and flushed.
  virtual void StopQueue(Vring& vring) = 0;
  // The back-end request channel changed (nullptr: gone).
  virtual void BackendChannelChanged(std::shared_ptr<BackendChannel> channel) { (void)channel; }
  // RESET_DEVICE, SET_STATUS(0) or the end of a connection, after all
  // queues were stopped.
  virtual void Reset() {}
};

// One started ring. The worker methods (Pop, Complete, Flush, the
// notification calls) belong to one thread at a time: the device's worker.
// The back-end updates memory, log and call fd from its own thread; those
// updates are picked up safely.
class Vring {
 public:
  struct Addresses {  // Front-end virtual addresses (SET_VRING_ADDR).
    uint64_t desc = 0, avail = 0, used = 0;
    uint64_t log_guest_addr = 0;  // Guest physical address of the used ring, for logging.
    bool log_used = false;        // VHOST_VRING_F_LOG
  };
  struct Params {
    uint32_t index = 0;
    uint32_t size = 0;
    uint16_t base = 0;  // SET_VRING_BASE
    Addresses addr;
    bool indirect_desc = false;
    bool event_idx = false;
    int kick_fd = -1;                                    // Borrowed from the back-end.
    UniqueFd call_fd;                                    // -1: no interrupts.
    UniqueFd err_fd;                                     // -1: none.
    vhost_user::InflightQueueSplit* inflight = nullptr;  // Inflight region, or nullptr.
    GuestMemoryMap::Ptr memory;
  };

  // Builds the ring, translating its addresses. With an inflight region, the
  // chains that were in flight when a previous back-end stopped are queued
  // for resubmission (Pop returns them first, oldest first).
  static absl::StatusOr<std::unique_ptr<Vring>> Create(Params params);

  uint32_t index() const { return index_; }
  uint32_t size() const { return queue_.size(); }
  // The eventfd the guest kicks; the worker waits on it and reads it.
  int kick_fd() const { return kick_fd_; }

  // --- worker side ---
  // The next chain: resubmitted ones first, then the available ring. Picks up
  // a pending memory table first. Errors as SplitQueue::Pop; on
  // kAvailIndexJump the err fd is signalled.
  absl::StatusOr<bool> Pop(DescriptorChain* chain);
  // The chain is done and `written` bytes of its writable part were written:
  // logs the dirty pages, records the completion for inflight tracking, and
  // adds it to the used ring. Visible to the guest after Flush.
  absl::Status Complete(const DescriptorChain& chain, uint32_t written);
  // Publishes completions and signals the call fd when the guest wants it.
  // Returns whether it signalled.
  bool Flush();
  void DisableNotification() { queue_.DisableNotification(); }
  bool EnableNotification() { return queue_.EnableNotification(); }
  // Chains popped and not completed yet.
  uint32_t in_flight() const { return in_flight_; }
  // Whether Pop() would return a chain (or an error) now: resubmissions or
  // new available entries. Cheap (one load of avail->idx): for polling.
  bool HasAvailable() { return !resubmit_.empty() || queue_.AvailableCount() > 0; }
  uint16_t last_avail_idx() const { return queue_.last_avail_idx(); }
  // Chains resubmitted from the inflight region at creation.
  size_t resubmitted() const { return resubmit_count_; }

  // --- back-end side (any thread) ---
  void UpdateMemory(GuestMemoryMap::Ptr memory);
  // Dirty logging: `log` is null when VHOST_F_LOG_ALL is off or there is no
  // log. The back-end keeps every log it hands out alive until the ring stops.
  void SetLog(DirtyLog* log) { log_.store(log, std::memory_order_release); }
  void SetCallFd(UniqueFd fd);
  void SetErrFd(UniqueFd fd);
  // Signals the call fd unconditionally.
  void Notify();

 private:
  Vring(Params& params, SplitQueue queue);
  void ApplyPendingMemory();
  void Recover();  // Inflight resubmission at creation.
  void LogUsedRing(uint16_t first, uint16_t count);

  uint32_t index_;
  Addresses addr_;
  int kick_fd_;
  SplitQueue queue_;
  std::atomic<DirtyLog*> log_{nullptr};

  std::mutex fd_mu_;  // call_fd_, err_fd_ (replaced by the back-end).
  UniqueFd call_fd_;
  UniqueFd err_fd_;

  std::mutex memory_mu_;
  GuestMemoryMap::Ptr pending_memory_;
  std::atomic<bool> memory_pending_{false};

  vhost_user::InflightQueueSplit* inflight_ = nullptr;
  vhost_user::InflightDescSplit* inflight_desc_ = nullptr;
  uint64_t inflight_counter_ = 0;
  std::vector<uint16_t> batch_;     // Heads completed since the last Flush.
  std::vector<uint16_t> resubmit_;  // In-flight heads from a previous back-end, oldest last.
  size_t resubmit_count_ = 0;
  uint32_t in_flight_ = 0;
  uint16_t logged_used_idx_ = 0;
};

struct VhostUserBackendOptions {
  // GET_MAX_MEM_SLOTS; also the region limit of ADD_MEM_REG.
  uint32_t max_mem_slots = 509;
};

// The protocol state of one front-end connection.
class VhostUserBackend {
 public:
  // A reply to send back, with borrowed fds valid until the next Handle().
  struct Reply {
    vhost_user::Header header{};
    std::vector<uint8_t> payload;
    std::vector<int> fds;
  };

  VhostUserBackend(VhostUserDevice* device, VhostUserBackendOptions options = {});
  // Stops every running ring (Disconnect()).
  ~VhostUserBackend();
  VhostUserBackend(const VhostUserBackend&) = delete;
  VhostUserBackend& operator=(const VhostUserBackend&) = delete;

  // Handles one message. Returns the reply to send, if any; an error means
  // the connection must be closed (the message was malformed, or it failed
  // and the front-end asked for no acknowledgement).
  absl::StatusOr<std::optional<Reply>> Handle(vhost_user::Message message);

  // The front-end went away: stop every ring (waiting for in-flight chains),
  // release memory, logs and fds, and reset the device.
  void Disconnect();

  // Introspection, for tests and stats.
  uint64_t acked_features() const { return acked_features_; }
  uint64_t acked_protocol_features() const { return acked_protocol_features_; }
  bool ring_running(uint32_t index) const;
  const GuestMemoryMap::Ptr& memory() const { return memory_; }

  // What the back-end offers.
  uint64_t OfferedFeatures() const;
  uint64_t OfferedProtocolFeatures() const;

 private:
  struct RingSlot {
    uint32_t num = 0;
    uint16_t base = 0;
    bool addr_set = false;
    Vring::Addresses addr;
    UniqueFd kick, call, err;
    bool kick_set = false;
    bool enabled = false;
    std::unique_ptr<Vring> vring;  // Non-null while running.
  };

  absl::Status Dispatch(vhost_user::Message& m, std::optional<Reply>& reply);
  absl::Status CheckFds(const vhost_user::Message& m) const;
  bool Negotiated(int protocol_bit) const;
  absl::Status RequireProtocol(int bit, vhost_user::Request r) const;
  absl::StatusOr<RingSlot*> Slot(uint32_t index);

  absl::Status SetFeatures(uint64_t features);
  absl::Status SetMemTable(vhost_user::Message& m);
  absl::Status AddMemReg(vhost_user::Message& m);
  absl::Status RemMemReg(const vhost_user::Message& m);
  absl::Status InstallMemory(std::vector<GuestMemoryRegion> regions);
  absl::Status SetVringAddr(const vhost_user::VringAddr& a);
  absl::Status SetVringFd(vhost_user::Message& m);
  absl::Status SetLogBase(vhost_user::Message& m);
  absl::StatusOr<Reply> GetInflightFd(const vhost_user::Message& m);
  absl::Status SetInflightFd(vhost_user::Message& m);
  absl::StatusOr<Reply> GetConfig(const vhost_user::Message& m);
  absl::Status SetConfig(const vhost_user::Message& m);

  // Starts the ring if it is configured, kicked and enabled; stops it if it
  // runs and no longer should. Idempotent.
  absl::Status UpdateRing(uint32_t index);
  void StopRing(RingSlot& slot);
  void StopAllRings();
  void ResetRings();
  DirtyLog* ActiveLog() const;
  vhost_user::InflightQueueSplit* InflightQueue(uint32_t index, uint32_t size) const;

  VhostUserDevice* device_;
  VhostUserBackendOptions options_;
  uint64_t acked_features_ = 0;
  uint64_t acked_protocol_features_ = 0;
  bool features_set_ = false;
  uint8_t status_ = 0;
  std::vector<RingSlot> rings_;
  std::vector<GuestMemoryRegion> regions_;
  GuestMemoryMap::Ptr memory_;
  std::vector<std::shared_ptr<DirtyLog>> logs_;  // All logs handed out; the last is current.
  UniqueFd log_fd_;
  UniqueFd inflight_fd_;
  MmapRegion inflight_map_;
  uint16_t inflight_queues_ = 0;
  uint16_t inflight_queue_size_ = 0;
  std::shared_ptr<BackendChannel> channel_;
};

}  // namespace virtiofs

#endif  // VIRTIOFS_VHOST_USER_H_
