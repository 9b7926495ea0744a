// The driver (guest) side of a split virtqueue, for tests and benchmarks.
//
// It lays out a descriptor table, available ring and used ring in GuestRam,
// adds chains the way the Linux virtio driver does (direct or through an
// indirect table), publishes them with a release store of avail->idx, and
// reads completions back from the used ring. Raw setters let hostile tests
// write any descriptor or index they like.
#ifndef VIRTIOFS_TESTS_SUPPORT_DRIVER_QUEUE_H_
#define VIRTIOFS_TESTS_SUPPORT_DRIVER_QUEUE_H_

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "tests/support/guest_ram.h"
#include "virtiofs/virtqueue.h"

namespace virtiofs::testing {

class DriverQueue {
 public:
  // A buffer in a chain: guest address, length, device-writable or not.
  struct Buffer {
    uint64_t gpa;
    uint32_t len;
    bool writable;
  };
  struct UsedElem {
    uint32_t id;
    uint32_t len;
  };

  // Rings at `ring_gpa` (needs RingBytes(size) bytes); buffers and indirect
  // tables are bump-allocated from [data_gpa, data_gpa + data_size).
  DriverQueue(const GuestRam& ram, uint32_t size, uint64_t ring_gpa, uint64_t data_gpa,
              uint64_t data_size, bool event_idx = false, bool indirect_desc = true);

  static uint64_t RingBytes(uint32_t size);
  VirtqueueConfig config() const { return config_; }
  uint32_t size() const { return config_.size; }

  // Allocates `len` bytes of guest memory (aligned to `align`), zeroed.
  // Aborts when the data area is exhausted (a test bug).
  uint64_t Alloc(uint64_t len, uint64_t align = 8);
  void ResetAlloc();

  // Adds a chain over `buffers` and makes it available. With `indirect`, one
  // ring descriptor points to an indirect table holding the buffers. Returns
  // the head, or nullopt when there are not enough free descriptors.
  std::optional<uint16_t> AddChain(std::span<const Buffer> buffers, bool indirect = false);
  // Same, without publishing: call Publish() to bump avail->idx once for all.
  std::optional<uint16_t> AddChainNoPublish(std::span<const Buffer> buffers, bool indirect = false);
  void Publish();

  // The next used element the device published, if any; its descriptors
  // return to the free list.
  std::optional<UsedElem> PopUsed();
  uint16_t used_idx() const;
  // How many used elements PopUsed consumed (the driver's last_used_idx).
  uint16_t last_used_idx() const { return last_used_idx_; }

  // Raw access for hostile tests.
  void SetDesc(uint16_t index, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next);
  void SetAvailRing(uint16_t slot, uint16_t head);
  void SetAvailIdx(uint16_t idx);
  uint16_t avail_idx() const { return shadow_avail_idx_; }
  // Places `head` in the next ring slot and publishes it (no free-list check).
  void PushHead(uint16_t head);

  // Notification control (2.7.10).
  void SetUsedEvent(uint16_t idx);
  void SetNoInterrupt(bool on);
  uint16_t avail_event() const;
  uint16_t used_flags() const;
  // Whether the driver would kick the device after publishing from
  // `old_idx` to the current avail index.
  bool DeviceWantsKick(uint16_t old_idx) const;

 private:
  uint16_t Load16(uint64_t gpa) const;
  void Store16(uint64_t gpa, uint16_t v, bool ordered = false) const;

  const GuestRam& ram_;
  VirtqueueConfig config_;
  uint64_t data_gpa_, data_size_, data_used_ = 0;
  uint16_t shadow_avail_idx_ = 0;
  uint16_t last_used_idx_ = 0;
  std::vector<uint16_t> free_;                 // Free descriptor indexes.
  std::vector<std::vector<uint16_t>> owned_;   // Per head: descriptors to free.
};

}  // namespace virtiofs::testing

#endif  // VIRTIOFS_TESTS_SUPPORT_DRIVER_QUEUE_H_
