// The split virtqueue, device side (VIRTIO 1.2 section 2.7).
//
// A SplitQueue reads the available ring and descriptor table that the guest
// driver fills, and writes the used ring. All of that memory is shared with,
// and writable by, a hostile guest: every descriptor is copied once out of
// guest memory and only the copy is validated and used (no double fetch), and
// every address goes through the GuestMemoryMap's checked translation.
//
// Threading: a SplitQueue is used by one thread at a time (the queue's worker).
// Descriptor chains it hands out may complete on any thread, but AddUsed and
// PublishUsed must then be called by the worker (or under the caller's lock).
//
// Errors carry a VirtqueueError kind (GetVirtqueueError) so that callers and
// tests can tell them apart without parsing messages.
#ifndef VIRTIOFS_VIRTQUEUE_H_
#define VIRTIOFS_VIRTQUEUE_H_

#include <sys/uio.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "virtiofs/guest_memory.h"

namespace virtiofs {

enum class VirtqueueError {
  kBadQueueSize,           // 0, not a power of two, or above 32768 (2.7).
  kMisaligned,             // A ring area violates the 2.7 alignment table.
  kRingNotMapped,          // A ring area is not inside one memory region.
  kAvailIndexJump,         // avail->idx ran more than the queue size ahead (2.7.6).
  kHeadOutOfRange,         // An available ring entry >= queue size.
  kNextOutOfRange,         // A `next` field beyond the (indirect) table.
  kChainTooLong,           // More descriptors than the table holds: a loop (2.7.5.3.1).
  kIndirectNotNegotiated,  // VIRTQ_DESC_F_INDIRECT without VIRTIO_F_INDIRECT_DESC.
  kIndirectWithNext,       // INDIRECT and NEXT both set (2.7.5.3.1).
  kNestedIndirect,         // INDIRECT inside an indirect table (2.7.5.3.1).
  kIndirectBadLength,      // Indirect table length 0 or not a multiple of 16.
  kIndirectTooLarge,       // Indirect table of more than 65535 entries.
  kReadableAfterWritable,  // Device-readable descriptor after a writable one (2.7.4.2).
  kLengthOverflow,         // Chain longer than 2^32 - 1 bytes (used len is 32 bits).
  kBadBufferAddress,       // A buffer or indirect table not backed by guest memory.
  kUsedHeadOutOfRange,     // AddUsed with a head >= queue size (a device bug).
};

std::string_view VirtqueueErrorName(VirtqueueError error);
// The kind of a status produced by this module, or nullopt for any other status.
std::optional<VirtqueueError> GetVirtqueueError(const absl::Status& status);

// Where a split queue lives and what was negotiated for it.
struct VirtqueueConfig {
  uint32_t size = 0;        // Queue size: a power of two, 1..32768.
  uint64_t desc_addr = 0;   // Guest physical address of the descriptor table.
  uint64_t avail_addr = 0;  // ... of the available (driver) ring.
  uint64_t used_addr = 0;   // ... of the used (device) ring.
  bool indirect_desc = false;  // VIRTIO_F_INDIRECT_DESC (VIRTIO_RING_F_INDIRECT_DESC).
  bool event_idx = false;      // VIRTIO_F_EVENT_IDX (VIRTIO_RING_F_EVENT_IDX).
};

// A guest physical range, for dirty-page logging of what the device wrote.
struct GuestRange {
  uint64_t gpa;
  uint32_t len;
};

// One available descriptor chain, translated to host iovecs. It holds a
// reference to the memory map it was translated with, so its iovecs stay
// valid until it is destroyed, even if the queue's memory is replaced.
class DescriptorChain {
 public:
  DescriptorChain() = default;
  DescriptorChain(DescriptorChain&&) = default;
  DescriptorChain& operator=(DescriptorChain&&) = default;
  DescriptorChain(const DescriptorChain&) = delete;
  DescriptorChain& operator=(const DescriptorChain&) = delete;

  // Head descriptor index: what AddUsed takes back.
  uint16_t head() const { return head_; }
  // Device-readable buffers (the request), in chain order.
  std::span<const iovec> readable() const { return readable_; }
  // Device-writable buffers (the reply space), in chain order.
  std::span<const iovec> writable() const { return writable_; }
  uint32_t readable_bytes() const { return readable_bytes_; }
  uint32_t writable_bytes() const { return writable_bytes_; }
  // The writable buffers as guest physical ranges (one per descriptor).
  std::span<const GuestRange> writable_ranges() const { return writable_ranges_; }
  // Number of descriptors walked, indirect entries included.
  uint32_t descriptor_count() const { return descriptor_count_; }
  const GuestMemoryMap::Ptr& memory() const { return memory_; }

 private:
  friend class SplitQueue;
  void Clear();

  uint16_t head_ = 0;
  uint32_t readable_bytes_ = 0;
  uint32_t writable_bytes_ = 0;
  uint32_t descriptor_count_ = 0;
  IovecVector readable_;
  IovecVector writable_;
  absl::InlinedVector<GuestRange, 4> writable_ranges_;
  GuestMemoryMap::Ptr memory_;
};

class SplitQueue {
 public:
  static constexpr uint32_t kMaxSize = 32768;
  static constexpr uint32_t kMaxIndirectEntries = 65535;

  // Validates the configuration (size, alignment, ring areas fully inside
  // guest memory, used ring writable) and builds a queue that resumes at
  // `last_avail_idx` (vhost-user SET_VRING_BASE). The used index is read back
  // from the used ring, as a device resuming a ring does.
  static absl::StatusOr<SplitQueue> Create(const VirtqueueConfig& config,
                                           GuestMemoryMap::Ptr memory,
                                           uint16_t last_avail_idx = 0);

  SplitQueue(SplitQueue&&) = default;
  SplitQueue& operator=(SplitQueue&&) = default;

  // Switches to a new memory map (the ring addresses are translated again).
  // Chains already popped keep the old map alive. On failure the queue is
  // unchanged. Used elements added but not published are kept.
  absl::Status SetMemory(GuestMemoryMap::Ptr memory);
  // Same, with the rings at new guest addresses (a vhost-user front-end gives
  // ring addresses in its own address space, which a new table may move).
  absl::Status Relocate(uint64_t desc_addr, uint64_t avail_addr, uint64_t used_addr,
                        GuestMemoryMap::Ptr memory);

  // Walks the chain starting at descriptor `head` without touching the
  // available ring (resubmitting an in-flight request after a reconnect).
  // Chain errors as for Pop; nothing is given back to the used ring.
  absl::Status ReadChain(uint16_t head, DescriptorChain* chain);

  // Pops the next available chain into `*chain`, reusing its storage.
  // Returns true with a chain, false when the ring is empty, or an error:
  //  - kAvailIndexJump: the queue is broken; every later Pop fails the same way.
  //  - any chain error: that chain was consumed and, when its head is in
  //    range, already given back with used length 0 (the caller publishes it
  //    with the next PublishUsed; chain->head() names it, with no buffers);
  //    the next Pop continues with the next chain.
  absl::StatusOr<bool> Pop(DescriptorChain* chain);

  // Number of chains the driver has made available that were not popped yet
  // (0 when the queue is broken).
  uint16_t AvailableCount();

  // Puts (head, written length) in the next used ring slot. Not visible to the
  // driver until PublishUsed.
  absl::Status AddUsed(uint16_t head, uint32_t len);

  // Makes the added used elements visible (release-store of used->idx) and
  // says whether the driver wants a notification now: with EVENT_IDX, when
  // used_event lies in the published range (2.7.10.2); without it, unless the
  // driver set VRING_AVAIL_F_NO_INTERRUPT.
  bool PublishUsed();

  // Kick suppression, device side (2.7.10.1). The lost-wakeup-free loop:
  //   DisableNotification();
  //   for (;;) {
  //     while (Pop(&c) == true) Process(c);
  //     if (!EnableNotification()) break;   // re-checks after a full barrier
  //     DisableNotification();
  //   }
  void DisableNotification();
  // Asks the driver for a kick on the next buffer and returns whether buffers
  // became available meanwhile (then the caller must keep popping).
  bool EnableNotification();

  uint16_t last_avail_idx() const { return last_avail_idx_; }
  // Index of the next used element (what PublishUsed will publish).
  uint16_t used_idx() const { return used_idx_; }
  uint32_t size() const { return config_.size; }
  const VirtqueueConfig& config() const { return config_; }
  const GuestMemoryMap::Ptr& memory() const { return memory_; }
  bool broken() const { return broken_; }

 private:
  struct Rings {
    uint8_t* desc = nullptr;
    uint8_t* avail = nullptr;
    uint8_t* used = nullptr;
  };
  SplitQueue(const VirtqueueConfig& config, GuestMemoryMap::Ptr memory, Rings rings,
             uint16_t last_avail_idx);
  static absl::StatusOr<Rings> MapRings(const VirtqueueConfig& config,
                                        const GuestMemoryMap& memory);
  uint16_t ReadAvailIdx() const;
  absl::Status WalkChain(uint16_t head, DescriptorChain* chain);
  absl::Status AddBuffer(uint64_t addr, uint32_t len, bool writable, DescriptorChain* chain);

  VirtqueueConfig config_;
  GuestMemoryMap::Ptr memory_;
  Rings rings_;
  uint16_t last_avail_idx_ = 0;
  uint16_t used_idx_ = 0;
  uint16_t published_used_idx_ = 0;
  bool broken_ = false;
  bool notifications_enabled_ = true;
  std::vector<uint8_t> indirect_copy_;  // Scratch for indirect tables spanning regions.
};

}  // namespace virtiofs

#endif  // VIRTIOFS_VIRTQUEUE_H_
