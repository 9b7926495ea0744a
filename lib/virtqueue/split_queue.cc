// Split virtqueue, device side. Section numbers are VIRTIO 1.2.
#include <endian.h>
#include <linux/virtio_ring.h>

#include <cstring>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/str_format.h"
#include "virtiofs/virtqueue.h"

namespace virtiofs {
namespace {

constexpr absl::string_view kErrorPayloadUrl = "virtiofs/VirtqueueError";

absl::Status QueueError(VirtqueueError kind, std::string message) {
  absl::Status s = kind == VirtqueueError::kUsedHeadOutOfRange
                       ? absl::InternalError(std::move(message))
                       : absl::InvalidArgumentError(std::move(message));
  s.SetPayload(kErrorPayloadUrl, absl::Cord(std::to_string(static_cast<int>(kind))));
  return s;
}

// Ring layout offsets (2.7.6, 2.7.8): both rings start with flags and idx.
constexpr uint64_t kRingHeader = 4;
constexpr uint64_t kAvailEntry = 2;
constexpr uint64_t kUsedEntry = 8;  // struct vring_used_elem

// Guest-shared ring fields are accessed atomically: the driver may write them
// at any moment, and the acquire/release pairs order the ring against the
// buffers it describes (2.7.13).
uint16_t Load16(const uint8_t* p, int order = __ATOMIC_RELAXED) {
  return le16toh(__atomic_load_n(reinterpret_cast<const uint16_t*>(p), order));
}
void Store16(uint8_t* p, uint16_t v, int order = __ATOMIC_RELAXED) {
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), htole16(v), order);
}
void Store32(uint8_t* p, uint32_t v) {
  __atomic_store_n(reinterpret_cast<uint32_t*>(p), htole32(v), __ATOMIC_RELAXED);
}

bool IsPowerOfTwo(uint32_t n) { return n != 0 && (n & (n - 1)) == 0; }

// 2.7 alignment table: descriptor table 16, available ring 2, used ring 4.
absl::Status CheckAlignment(const VirtqueueConfig& c) {
  if (c.desc_addr % 16 != 0 || c.avail_addr % 2 != 0 || c.used_addr % 4 != 0) {
    return QueueError(VirtqueueError::kMisaligned,
                      absl::StrFormat("ring addresses desc 0x%x avail 0x%x used 0x%x misaligned",
                                      c.desc_addr, c.avail_addr, c.used_addr));
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view VirtqueueErrorName(VirtqueueError error) {
  switch (error) {
    case VirtqueueError::kBadQueueSize: return "bad queue size";
    case VirtqueueError::kMisaligned: return "misaligned ring";
    case VirtqueueError::kRingNotMapped: return "ring not in guest memory";
    case VirtqueueError::kAvailIndexJump: return "available index jump";
    case VirtqueueError::kHeadOutOfRange: return "head index out of range";
    case VirtqueueError::kNextOutOfRange: return "next index out of range";
    case VirtqueueError::kChainTooLong: return "descriptor chain too long (loop)";
    case VirtqueueError::kIndirectNotNegotiated: return "indirect descriptor not negotiated";
    case VirtqueueError::kIndirectWithNext: return "indirect descriptor with NEXT";
    case VirtqueueError::kNestedIndirect: return "indirect descriptor in an indirect table";
    case VirtqueueError::kIndirectBadLength: return "bad indirect table length";
    case VirtqueueError::kIndirectTooLarge: return "indirect table too large";
    case VirtqueueError::kReadableAfterWritable: return "readable descriptor after writable";
    case VirtqueueError::kLengthOverflow: return "chain length overflow";
    case VirtqueueError::kBadBufferAddress: return "buffer outside guest memory";
    case VirtqueueError::kUsedHeadOutOfRange: return "used head out of range";
  }
  return "unknown virtqueue error";
}

std::optional<VirtqueueError> GetVirtqueueError(const absl::Status& status) {
  auto payload = status.GetPayload(kErrorPayloadUrl);  // absl::optional here.
  if (!payload) return std::nullopt;
  int v = 0;
  for (char c : payload->Flatten()) v = v * 10 + (c - '0');
  return static_cast<VirtqueueError>(v);
}

void DescriptorChain::Clear() {
  head_ = 0;
  readable_bytes_ = 0;
  writable_bytes_ = 0;
  descriptor_count_ = 0;
  readable_.clear();
  writable_.clear();
  writable_ranges_.clear();
}

SplitQueue::SplitQueue(const VirtqueueConfig& config, GuestMemoryMap::Ptr memory, Rings rings,
                       uint16_t last_avail_idx)
    : config_(config), memory_(std::move(memory)), rings_(rings), last_avail_idx_(last_avail_idx) {
  used_idx_ = Load16(rings_.used + 2);
  published_used_idx_ = used_idx_;
}

absl::StatusOr<SplitQueue::Rings> SplitQueue::MapRings(const VirtqueueConfig& c,
                                                       const GuestMemoryMap& memory) {
  // Sizes per 2.7: the event fields exist only with EVENT_IDX. size <= 32768
  // keeps every product far below 2^32.
  const uint64_t event = c.event_idx ? 2 : 0;
  const uint64_t desc_len = 16ull * c.size;
  const uint64_t avail_len = kRingHeader + kAvailEntry * c.size + event;
  const uint64_t used_len = kRingHeader + kUsedEntry * c.size + event;
  Rings rings;
  auto map = [&](const char* what, uint64_t gpa, uint64_t len, Access access, uint64_t align,
                 uint8_t** out) -> absl::Status {
    auto p = memory.TranslateContiguous(gpa, len, access);
    if (!p.ok()) {
      return QueueError(VirtqueueError::kRingNotMapped,
                        absl::StrFormat("%s ring: %s", what, p.status().message()));
    }
    // The host mapping must keep the guest alignment (atomic access).
    if (reinterpret_cast<uintptr_t>(*p) % align != 0) {
      return QueueError(VirtqueueError::kMisaligned,
                        absl::StrFormat("%s ring: host address not %d-byte aligned", what, align));
    }
    *out = *p;
    return absl::OkStatus();
  };
  if (absl::Status s = map("descriptor", c.desc_addr, desc_len, Access::kRead, 16, &rings.desc);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = map("available", c.avail_addr, avail_len, Access::kRead, 2, &rings.avail);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = map("used", c.used_addr, used_len, Access::kWrite, 4, &rings.used);
      !s.ok()) {
    return s;
  }
  return rings;
}

absl::StatusOr<SplitQueue> SplitQueue::Create(const VirtqueueConfig& config,
                                              GuestMemoryMap::Ptr memory,
                                              uint16_t last_avail_idx) {
  // 2.7: "Queue Size value is always a power of 2. The maximum Queue Size value is 32768."
  if (!IsPowerOfTwo(config.size) || config.size > kMaxSize) {
    return QueueError(VirtqueueError::kBadQueueSize,
                      absl::StrFormat("queue size %d is not a power of two in 1..32768",
                                      config.size));
  }
  if (absl::Status s = CheckAlignment(config); !s.ok()) return s;
  if (memory == nullptr) {
    return QueueError(VirtqueueError::kRingNotMapped, "no guest memory");
  }
  auto rings = MapRings(config, *memory);
  if (!rings.ok()) return rings.status();
  return SplitQueue(config, std::move(memory), *rings, last_avail_idx);
}

absl::Status SplitQueue::SetMemory(GuestMemoryMap::Ptr memory) {
  return Relocate(config_.desc_addr, config_.avail_addr, config_.used_addr, std::move(memory));
}

absl::Status SplitQueue::Relocate(uint64_t desc_addr, uint64_t avail_addr, uint64_t used_addr,
                                  GuestMemoryMap::Ptr memory) {
  if (memory == nullptr) return QueueError(VirtqueueError::kRingNotMapped, "no guest memory");
  VirtqueueConfig config = config_;
  config.desc_addr = desc_addr;
  config.avail_addr = avail_addr;
  config.used_addr = used_addr;
  if (absl::Status s = CheckAlignment(config); !s.ok()) return s;
  auto rings = MapRings(config, *memory);
  if (!rings.ok()) return rings.status();
  config_ = config;
  rings_ = *rings;
  memory_ = std::move(memory);
  return absl::OkStatus();
}

absl::Status SplitQueue::ReadChain(uint16_t head, DescriptorChain* chain) {
  if (head >= config_.size) {
    return QueueError(VirtqueueError::kHeadOutOfRange,
                      absl::StrFormat("head %d >= queue size %d", head, config_.size));
  }
  absl::Status s = WalkChain(head, chain);
  if (!s.ok()) {
    chain->Clear();
    chain->memory_.reset();
  }
  return s;
}

uint16_t SplitQueue::ReadAvailIdx() const {
  // Acquire: the ring entries and descriptors the index covers are read after it.
  return Load16(rings_.avail + 2, __ATOMIC_ACQUIRE);
}

uint16_t SplitQueue::AvailableCount() {
  if (broken_) return 0;
  uint16_t pending = static_cast<uint16_t>(ReadAvailIdx() - last_avail_idx_);
  return pending > config_.size ? 0 : pending;
}

absl::StatusOr<bool> SplitQueue::Pop(DescriptorChain* chain) {
  if (broken_) {
    return QueueError(VirtqueueError::kAvailIndexJump, "queue is broken by an earlier index jump");
  }
  const uint16_t avail_idx = ReadAvailIdx();
  const uint16_t pending = static_cast<uint16_t>(avail_idx - last_avail_idx_);
  if (pending == 0) return false;
  // 2.7.6: the driver never makes more than Queue Size buffers available
  // beyond what the device consumed; an index beyond that is corrupt.
  if (pending > config_.size) {
    broken_ = true;
    return QueueError(VirtqueueError::kAvailIndexJump,
                      absl::StrFormat("avail idx %d is %d ahead of %d, queue size %d", avail_idx,
                                      pending, last_avail_idx_, config_.size));
  }
  const uint32_t slot = last_avail_idx_ & (config_.size - 1);
  const uint16_t head = Load16(rings_.avail + kRingHeader + kAvailEntry * slot);
  ++last_avail_idx_;
  if (config_.event_idx && notifications_enabled_) {
    // 2.7.10.1: avail_event asks for a kick once the driver passes this index.
    Store16(rings_.used + kRingHeader + kUsedEntry * config_.size, last_avail_idx_);
  }
  if (head >= config_.size) {
    return QueueError(VirtqueueError::kHeadOutOfRange,
                      absl::StrFormat("available ring slot %d: head %d >= queue size %d", slot,
                                      head, config_.size));
  }
  if (absl::Status s = WalkChain(head, chain); !s.ok()) {
    // Give the chain back empty so the guest does not lose the descriptors.
    (void)AddUsed(head, 0);
    chain->Clear();
    chain->head_ = head;  // Callers may track what was given back.
    chain->memory_.reset();
    return s;
  }
  return true;
}

absl::Status SplitQueue::AddBuffer(uint64_t addr, uint32_t len, bool writable,
                                   DescriptorChain* chain) {
  if (len == 0) return absl::OkStatus();
  // The used length is 32 bits (2.7.8), so the whole chain must fit in it.
  const uint64_t total =
      uint64_t{chain->readable_bytes_} + chain->writable_bytes_ + uint64_t{len};
  if (total > UINT32_MAX) {
    return QueueError(VirtqueueError::kLengthOverflow,
                      absl::StrFormat("chain %d: total length %d exceeds 2^32-1", chain->head_,
                                      total));
  }
  absl::Status s = memory_->Translate(addr, len, writable ? Access::kWrite : Access::kRead,
                                      writable ? &chain->writable_ : &chain->readable_);
  if (!s.ok()) {
    return QueueError(VirtqueueError::kBadBufferAddress,
                      absl::StrFormat("chain %d: %s", chain->head_, s.message()));
  }
  if (writable) {
    chain->writable_bytes_ += len;
    chain->writable_ranges_.push_back(GuestRange{addr, len});
  } else {
    chain->readable_bytes_ += len;
  }
  return absl::OkStatus();
}

absl::Status SplitQueue::WalkChain(uint16_t head, DescriptorChain* chain) {
  chain->Clear();
  chain->head_ = head;
  if (chain->memory_ != memory_) chain->memory_ = memory_;

  const uint8_t* table = rings_.desc;
  uint32_t table_size = config_.size;
  bool in_indirect = false;
  bool seen_writable = false;
  uint32_t index = head;
  uint32_t hops = 0;
  for (;;) {
    // 2.7.5.3.1: a chain is never longer than its table; more hops is a loop.
    if (++hops > table_size) {
      return QueueError(VirtqueueError::kChainTooLong,
                        absl::StrFormat("chain %d: more than %d descriptors", head, table_size));
    }
    ++chain->descriptor_count_;
    // Copy the descriptor once; only the copy is checked and used.
    vring_desc d;
    std::memcpy(&d, table + 16ull * index, sizeof d);
    const uint64_t addr = le64toh(d.addr);
    const uint32_t len = le32toh(d.len);
    const uint16_t flags = le16toh(d.flags);
    const uint16_t next = le16toh(d.next);

    if (flags & VRING_DESC_F_INDIRECT) {
      // 2.7.5.3: indirect descriptors.
      if (!config_.indirect_desc) {
        return QueueError(VirtqueueError::kIndirectNotNegotiated,
                          absl::StrFormat("chain %d: INDIRECT flag without the feature", head));
      }
      if (in_indirect) {
        return QueueError(VirtqueueError::kNestedIndirect,
                          absl::StrFormat("chain %d: indirect descriptor inside an indirect table",
                                          head));
      }
      if (flags & VRING_DESC_F_NEXT) {
        return QueueError(VirtqueueError::kIndirectWithNext,
                          absl::StrFormat("chain %d: INDIRECT and NEXT both set", head));
      }
      if (len == 0 || len % 16 != 0) {
        return QueueError(VirtqueueError::kIndirectBadLength,
                          absl::StrFormat("chain %d: indirect table length %d", head, len));
      }
      if (len / 16 > kMaxIndirectEntries) {
        return QueueError(VirtqueueError::kIndirectTooLarge,
                          absl::StrFormat("chain %d: indirect table of %d entries", head,
                                          len / 16));
      }
      auto p = memory_->TranslateContiguous(addr, len, Access::kRead);
      if (p.ok()) {
        table = *p;
      } else {
        // A table spanning two adjacent regions: copy it out once.
        indirect_copy_.resize(len);
        if (absl::Status s = memory_->Read(addr, indirect_copy_.data(), len); !s.ok()) {
          return QueueError(VirtqueueError::kBadBufferAddress,
                            absl::StrFormat("chain %d: indirect table: %s", head, s.message()));
        }
        table = indirect_copy_.data();
      }
      table_size = len / 16;
      in_indirect = true;
      index = 0;
      hops = 0;
      continue;
    }

    const bool writable = (flags & VRING_DESC_F_WRITE) != 0;
    // 2.7.4.2: device-writable descriptors come after all device-readable ones.
    if (!writable && seen_writable) {
      return QueueError(VirtqueueError::kReadableAfterWritable,
                        absl::StrFormat("chain %d: readable descriptor after a writable one",
                                        head));
    }
    seen_writable |= writable;
    if (absl::Status s = AddBuffer(addr, len, writable, chain); !s.ok()) return s;

    if (!(flags & VRING_DESC_F_NEXT)) return absl::OkStatus();
    if (next >= table_size) {
      return QueueError(VirtqueueError::kNextOutOfRange,
                        absl::StrFormat("chain %d: next %d beyond table of %d", head, next,
                                        table_size));
    }
    index = next;
  }
}

absl::Status SplitQueue::AddUsed(uint16_t head, uint32_t len) {
  if (head >= config_.size) {
    return QueueError(VirtqueueError::kUsedHeadOutOfRange,
                      absl::StrFormat("used head %d >= queue size %d", head, config_.size));
  }
  uint8_t* elem = rings_.used + kRingHeader + kUsedEntry * (used_idx_ & (config_.size - 1));
  Store32(elem, head);
  Store32(elem + 4, len);
  ++used_idx_;
  return absl::OkStatus();
}

bool SplitQueue::PublishUsed() {
  const uint16_t old_idx = published_used_idx_;
  const uint16_t new_idx = used_idx_;
  if (old_idx == new_idx) return false;
  // The used elements (and the buffers they describe) are visible before
  // the index that publishes them (2.7.13), and the index store is ordered
  // before the read of used_event/flags below, or the driver could miss a
  // completion while we skip its notification. A sequentially consistent
  // store and load give both (a full barrier between them, as the driver's
  // mb()); unlike a fence, ThreadSanitizer understands them.
  Store16(rings_.used + 2, new_idx, __ATOMIC_SEQ_CST);
  published_used_idx_ = new_idx;
  if (config_.event_idx) {
    // 2.7.10.2: notify if used_event is in [old_idx, new_idx).
    const uint16_t used_event =
        Load16(rings_.avail + kRingHeader + kAvailEntry * config_.size, __ATOMIC_SEQ_CST);
    return vring_need_event(used_event, new_idx, old_idx) != 0;
  }
  return (Load16(rings_.avail, __ATOMIC_SEQ_CST) & VRING_AVAIL_F_NO_INTERRUPT) == 0;
}

void SplitQueue::DisableNotification() {
  notifications_enabled_ = false;
  // With EVENT_IDX, not advancing avail_event is enough: the driver only
  // kicks when it passes it (2.7.10.1).
  if (!config_.event_idx) Store16(rings_.used, VRING_USED_F_NO_NOTIFY);
}

bool SplitQueue::EnableNotification() {
  notifications_enabled_ = true;
  // The store must be visible before we look at avail->idx again, otherwise
  // a buffer added in between would get neither a kick nor a pop: a
  // sequentially consistent store and load order them (see PublishUsed).
  if (config_.event_idx) {
    Store16(rings_.used + kRingHeader + kUsedEntry * config_.size, last_avail_idx_,
            __ATOMIC_SEQ_CST);
  } else {
    Store16(rings_.used, 0, __ATOMIC_SEQ_CST);
  }
  return !broken_ && Load16(rings_.avail + 2, __ATOMIC_SEQ_CST) != last_avail_idx_;
}

}  // namespace virtiofs
