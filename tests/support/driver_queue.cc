#include "tests/support/driver_queue.h"

#include <endian.h>
#include <linux/virtio_ring.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace virtiofs::testing {

uint64_t DriverQueue::RingBytes(uint32_t size) {
  // desc, avail (+used_event), used aligned to 4 KiB (+avail_event).
  uint64_t used_off = (16ull * size + 6 + 2ull * size + 4095) & ~4095ull;
  return used_off + 6 + 8ull * size;
}

DriverQueue::DriverQueue(const GuestRam& ram, uint32_t size, uint64_t ring_gpa,
                         uint64_t data_gpa, uint64_t data_size, bool event_idx,
                         bool indirect_desc)
    : ram_(ram), data_gpa_(data_gpa), data_size_(data_size) {
  config_.size = size;
  config_.desc_addr = ring_gpa;
  config_.avail_addr = ring_gpa + 16ull * size;
  config_.used_addr = ring_gpa + ((16ull * size + 6 + 2ull * size + 4095) & ~4095ull);
  config_.event_idx = event_idx;
  config_.indirect_desc = indirect_desc;
  ram_.Fill(ring_gpa, 0, RingBytes(size));
  owned_.resize(size);
  for (uint32_t i = size; i > 0; --i) free_.push_back(static_cast<uint16_t>(i - 1));
}

// Ring fields shared with the device are sequentially consistent atomics: the
// driver's side of the 2.7.10 handshakes needs a full barrier between its
// store and its load, as the device's.
uint16_t DriverQueue::Load16(uint64_t gpa) const {
  return le16toh(__atomic_load_n(reinterpret_cast<uint16_t*>(ram_.Host(gpa)), __ATOMIC_SEQ_CST));
}

void DriverQueue::Store16(uint64_t gpa, uint16_t v, bool ordered) const {
  __atomic_store_n(reinterpret_cast<uint16_t*>(ram_.Host(gpa)), htole16(v),
                   ordered ? __ATOMIC_SEQ_CST : __ATOMIC_RELAXED);
}

uint64_t DriverQueue::Alloc(uint64_t len, uint64_t align) {
  uint64_t start = (data_used_ + align - 1) & ~(align - 1);
  if (start + len > data_size_) {
    std::fprintf(stderr, "DriverQueue: data area exhausted\n");
    std::abort();
  }
  data_used_ = start + len;
  ram_.Fill(data_gpa_ + start, 0, len);
  return data_gpa_ + start;
}

void DriverQueue::ResetAlloc() { data_used_ = 0; }

void DriverQueue::SetDesc(uint16_t index, uint64_t addr, uint32_t len, uint16_t flags,
                          uint16_t next) {
  vring_desc d{htole64(addr), htole32(len), htole16(flags), htole16(next)};
  ram_.Write(config_.desc_addr + 16ull * index, &d, sizeof d);
}

std::optional<uint16_t> DriverQueue::AddChainNoPublish(std::span<const Buffer> buffers,
                                                       bool indirect) {
  const size_t need = indirect ? 1 : buffers.size();
  if (need == 0 || free_.size() < need) return std::nullopt;
  std::vector<uint16_t> descs(free_.end() - need, free_.end());
  free_.resize(free_.size() - need);
  std::reverse(descs.begin(), descs.end());
  const uint16_t head = descs[0];
  if (indirect) {
    uint64_t table = Alloc(16ull * buffers.size(), 16);
    for (size_t i = 0; i < buffers.size(); ++i) {
      const Buffer& b = buffers[i];
      uint16_t flags = (b.writable ? VRING_DESC_F_WRITE : 0) |
                       (i + 1 < buffers.size() ? VRING_DESC_F_NEXT : 0);
      vring_desc d{htole64(b.gpa), htole32(b.len), htole16(flags),
                   htole16(static_cast<uint16_t>(i + 1))};
      ram_.Write(table + 16 * i, &d, sizeof d);
    }
    SetDesc(head, table, static_cast<uint32_t>(16 * buffers.size()), VRING_DESC_F_INDIRECT, 0);
  } else {
    for (size_t i = 0; i < buffers.size(); ++i) {
      const Buffer& b = buffers[i];
      bool last = i + 1 == buffers.size();
      uint16_t flags = (b.writable ? VRING_DESC_F_WRITE : 0) | (last ? 0 : VRING_DESC_F_NEXT);
      SetDesc(descs[i], b.gpa, b.len, flags, last ? 0 : descs[i + 1]);
    }
  }
  owned_[head] = std::move(descs);
  SetAvailRing(shadow_avail_idx_ & (config_.size - 1), head);
  ++shadow_avail_idx_;
  return head;
}

std::optional<uint16_t> DriverQueue::AddChain(std::span<const Buffer> buffers, bool indirect) {
  auto head = AddChainNoPublish(buffers, indirect);
  if (head) Publish();
  return head;
}

void DriverQueue::Publish() {
  // Release: descriptors and ring entries are visible before the index.
  Store16(config_.avail_addr + 2, shadow_avail_idx_, /*ordered=*/true);
}

void DriverQueue::SetAvailRing(uint16_t slot, uint16_t head) {
  Store16(config_.avail_addr + 4 + 2ull * slot, head);
}

void DriverQueue::SetAvailIdx(uint16_t idx) {
  shadow_avail_idx_ = idx;
  Publish();
}

void DriverQueue::PushHead(uint16_t head) {
  SetAvailRing(shadow_avail_idx_ & (config_.size - 1), head);
  ++shadow_avail_idx_;
  Publish();
}

uint16_t DriverQueue::used_idx() const { return Load16(config_.used_addr + 2); }

std::optional<DriverQueue::UsedElem> DriverQueue::PopUsed() {
  if (used_idx() == last_used_idx_) return std::nullopt;
  uint64_t elem = config_.used_addr + 4 + 8ull * (last_used_idx_ & (config_.size - 1));
  vring_used_elem e;
  ram_.Read(elem, &e, sizeof e);
  ++last_used_idx_;
  UsedElem out{le32toh(e.id), le32toh(e.len)};
  if (out.id < config_.size) {
    for (uint16_t d : owned_[out.id]) free_.push_back(d);
    owned_[out.id].clear();
  }
  return out;
}

void DriverQueue::SetUsedEvent(uint16_t idx) {
  Store16(config_.avail_addr + 4 + 2ull * config_.size, idx, /*ordered=*/true);
}

void DriverQueue::SetNoInterrupt(bool on) {
  Store16(config_.avail_addr, on ? VRING_AVAIL_F_NO_INTERRUPT : 0, /*ordered=*/true);
}

uint16_t DriverQueue::avail_event() const {
  return Load16(config_.used_addr + 4 + 8ull * config_.size);
}

uint16_t DriverQueue::used_flags() const { return Load16(config_.used_addr); }

bool DriverQueue::DeviceWantsKick(uint16_t old_idx) const {
  // Publish() stored avail->idx; the sequentially consistent loads here are
  // ordered after it (the driver's mb() before it reads avail_event).
  if (config_.event_idx) return vring_need_event(avail_event(), shadow_avail_idx_, old_idx) != 0;
  return (used_flags() & VRING_USED_F_NO_NOTIFY) == 0;
}

}  // namespace virtiofs::testing
