// A started vhost-user ring: the split queue plus what vhost-user adds
// around it (call/err eventfds, dirty logging, inflight tracking).
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "virtiofs/log.h"
#include "virtiofs/vhost_user.h"

namespace virtiofs {

using vhost_user::InflightDescSplit;
using vhost_user::InflightQueueSplit;

namespace {

void SignalEventFd(int fd) {
  if (fd < 0) return;
  uint64_t one = 1;
  // EAGAIN means the counter is saturated: the peer will wake anyway.
  (void)!write(fd, &one, sizeof one);
}

struct RingGpas {
  uint64_t desc, avail, used;
};

absl::StatusOr<RingGpas> TranslateRings(const GuestMemoryMap& memory,
                                        const Vring::Addresses& a, uint32_t size) {
  // Sizes per VIRTIO 1.2 2.7, with the event fields; size <= 32768.
  const uint64_t desc_len = 16ull * size;
  const uint64_t avail_len = 6 + 2ull * size;
  const uint64_t used_len = 6 + 8ull * size;
  auto desc = memory.UserToGuest(a.desc, desc_len);
  if (!desc.ok()) return desc.status();
  auto avail = memory.UserToGuest(a.avail, avail_len);
  if (!avail.ok()) return avail.status();
  auto used = memory.UserToGuest(a.used, used_len);
  if (!used.ok()) return used.status();
  return RingGpas{*desc, *avail, *used};
}

InflightDescSplit* Descs(InflightQueueSplit* q) {
  return reinterpret_cast<InflightDescSplit*>(reinterpret_cast<uint8_t*>(q) +
                                              sizeof(InflightQueueSplit));
}

}  // namespace

absl::StatusOr<std::shared_ptr<DirtyLog>> DirtyLog::Map(int fd, uint64_t size, uint64_t offset) {
  if (size == 0) return absl::InvalidArgumentError("dirty log of size 0");
  auto region = MmapRegion::MapFile(fd, offset, size, PROT_READ | PROT_WRITE);
  if (!region.ok()) {
    return absl::ErrnoToStatus(region.error(),
                               absl::StrFormat("map dirty log (%d bytes at %d)", size, offset));
  }
  return std::shared_ptr<DirtyLog>(new DirtyLog(*std::move(region)));
}

void DirtyLog::MarkRange(uint64_t gpa, uint64_t len) {
  if (len == 0) return;
  const uint64_t first = gpa / vhost_user::kLogPageSize;
  // gpa + len - 1 may exceed 2^64 only for a range the map refused already;
  // saturate rather than wrap.
  uint64_t last_addr;
  if (__builtin_add_overflow(gpa, len - 1, &last_addr)) last_addr = UINT64_MAX;
  const uint64_t last = last_addr / vhost_user::kLogPageSize;
  uint8_t* bits = region_.data();
  for (uint64_t page = first; page <= last; ++page) {
    const uint64_t byte = page / 8;
    if (byte >= region_.size()) {
      out_of_range_.fetch_add(1, std::memory_order_relaxed);
      break;
    }
    __atomic_fetch_or(&bits[byte], static_cast<uint8_t>(1u << (page % 8)), __ATOMIC_RELAXED);
  }
}

Vring::Vring(Params& p, SplitQueue queue)
    : index_(p.index),
      addr_(p.addr),
      kick_fd_(p.kick_fd),
      queue_(std::move(queue)),
      call_fd_(std::move(p.call_fd)),
      err_fd_(std::move(p.err_fd)),
      inflight_(p.inflight) {
  if (inflight_ != nullptr) inflight_desc_ = Descs(inflight_);
  logged_used_idx_ = queue_.used_idx();
}

absl::StatusOr<std::unique_ptr<Vring>> Vring::Create(Params p) {
  if (p.memory == nullptr) return absl::FailedPreconditionError("no memory table");
  auto gpas = TranslateRings(*p.memory, p.addr, p.size);
  if (!gpas.ok()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("vring %d: ring addresses: %s", p.index, gpas.status().message()));
  }
  VirtqueueConfig config;
  config.size = p.size;
  config.desc_addr = gpas->desc;
  config.avail_addr = gpas->avail;
  config.used_addr = gpas->used;
  config.indirect_desc = p.indirect_desc;
  config.event_idx = p.event_idx;
  auto queue = SplitQueue::Create(config, p.memory, p.base);
  if (!queue.ok()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("vring %d: %s", p.index, queue.status().message()));
  }
  std::unique_ptr<Vring> v(new Vring(p, *std::move(queue)));
  if (v->inflight_ != nullptr) v->Recover();
  return v;
}

void Vring::Recover() {
  InflightQueueSplit* q = inflight_;
  const uint32_t size = queue_.size();
  const uint16_t used = queue_.used_idx();
  if (q->version == 0 || q->desc_num != size) {
    // A fresh region (or one sized for another queue): start tracking.
    if (q->version != 0) {
      VIRTIOFS_LOG(kWarning, "vring {}: inflight region for {} descriptors, queue has {}: reset",
                   index_, q->desc_num, size);
    }
    std::memset(inflight_desc_, 0, sizeof(InflightDescSplit) * size);
    q->version = 1;
    q->desc_num = static_cast<uint16_t>(size);
    q->last_batch_head = 0;
    q->used_idx = used;
    return;
  }
  // The last batch may have reached the used ring without its inflight bits
  // being cleared: walk it from last_batch_head.
  uint16_t unaccounted = static_cast<uint16_t>(used - q->used_idx);
  uint32_t head = q->last_batch_head;
  for (uint32_t i = 0; i < unaccounted && i < size && head < size; ++i) {
    inflight_desc_[head].inflight = 0;
    head = inflight_desc_[head].next;
  }
  q->used_idx = used;

  uint64_t max_counter = 0;
  for (uint32_t i = 0; i < size; ++i) {
    if (inflight_desc_[i].inflight != 1) continue;
    resubmit_.push_back(static_cast<uint16_t>(i));
    max_counter = std::max(max_counter, inflight_desc_[i].counter);
  }
  // Oldest last, so that pop_back() resubmits in submission order.
  std::sort(resubmit_.begin(), resubmit_.end(), [this](uint16_t a, uint16_t b) {
    return inflight_desc_[a].counter > inflight_desc_[b].counter;
  });
  resubmit_count_ = resubmit_.size();
  inflight_counter_ = resubmit_.empty() ? 0 : max_counter + 1;
  // Every chain popped is either used or still in flight, so the next one to
  // pop is used + in flight. A front-end that lost the ring state sends the
  // used index as base; never go back before what it sent.
  const uint16_t next = static_cast<uint16_t>(used + resubmit_.size());
  if (static_cast<uint16_t>(queue_.last_avail_idx() - used) < resubmit_.size()) {
    auto q2 = SplitQueue::Create(queue_.config(), queue_.memory(), next);
    if (q2.ok()) queue_ = *std::move(q2);
  }
  if (!resubmit_.empty()) {
    VIRTIOFS_LOG(kInfo, "vring {}: resubmitting {} in-flight requests", index_, resubmit_.size());
  }
}

absl::StatusOr<bool> Vring::Pop(DescriptorChain* chain) {
  if (memory_pending_.load(std::memory_order_acquire)) ApplyPendingMemory();
  if (!resubmit_.empty()) {
    const uint16_t head = resubmit_.back();
    resubmit_.pop_back();
    if (absl::Status s = queue_.ReadChain(head, chain); !s.ok()) {
      // The guest changed the chain meanwhile; give it back empty.
      inflight_desc_[head].inflight = 0;
      (void)queue_.AddUsed(head, 0);
      return s;
    }
    ++in_flight_;
    return true;
  }
  const uint16_t used_before = queue_.used_idx();
  auto r = queue_.Pop(chain);
  if (!r.ok()) {
    if (GetVirtqueueError(r.status()) == VirtqueueError::kAvailIndexJump) {
      std::lock_guard lock(fd_mu_);
      SignalEventFd(err_fd_.get());
    } else if (inflight_ != nullptr && queue_.used_idx() != used_before) {
      // Given back empty: part of the next batch for inflight accounting.
      inflight_desc_[chain->head()].next = inflight_->last_batch_head;
      inflight_->last_batch_head = chain->head();
    }
    return r;
  }
  if (*r) {
    ++in_flight_;
    if (inflight_ != nullptr) {
      InflightDescSplit& d = inflight_desc_[chain->head()];
      d.counter = inflight_counter_++;
      d.inflight = 1;
    }
  }
  return r;
}

absl::Status Vring::Complete(const DescriptorChain& chain, uint32_t written) {
  if (written > chain.writable_bytes()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "vring %d: completion of %d bytes for %d writable", index_, written,
        chain.writable_bytes()));
  }
  if (DirtyLog* log = log_.load(std::memory_order_acquire); log != nullptr) {
    uint64_t left = written;
    for (const GuestRange& r : chain.writable_ranges()) {
      if (left == 0) break;
      const uint64_t n = std::min<uint64_t>(left, r.len);
      log->MarkRange(r.gpa, n);
      left -= n;
    }
  }
  if (absl::Status s = queue_.AddUsed(chain.head(), written); !s.ok()) return s;
  if (inflight_ != nullptr) {
    inflight_desc_[chain.head()].next = inflight_->last_batch_head;
    inflight_->last_batch_head = chain.head();
    batch_.push_back(chain.head());
  }
  if (in_flight_ > 0) --in_flight_;
  return absl::OkStatus();
}

void Vring::LogUsedRing(uint16_t first, uint16_t count) {
  DirtyLog* log = log_.load(std::memory_order_acquire);
  if (log == nullptr || !addr_.log_used) return;
  const uint32_t size = queue_.size();
  for (uint16_t i = 0; i < count; ++i) {
    const uint32_t slot = static_cast<uint16_t>(first + i) & (size - 1);
    log->MarkRange(addr_.log_guest_addr + 4 + 8ull * slot, 8);
  }
  log->MarkRange(addr_.log_guest_addr + 2, 2);  // used->idx
}

bool Vring::Flush() {
  const uint16_t first = logged_used_idx_;
  const uint16_t count = static_cast<uint16_t>(queue_.used_idx() - first);
  const bool notify = queue_.PublishUsed();
  if (count > 0) {
    LogUsedRing(first, count);
    logged_used_idx_ = queue_.used_idx();
  }
  if (inflight_ != nullptr && count > 0) {
    // After the used index is published: the batch is no longer in flight.
    for (uint16_t head : batch_) inflight_desc_[head].inflight = 0;
    batch_.clear();
    __atomic_store_n(&inflight_->used_idx, queue_.used_idx(), __ATOMIC_RELEASE);
  }
  if (notify) Notify();
  return notify;
}

void Vring::Notify() {
  std::lock_guard lock(fd_mu_);
  SignalEventFd(call_fd_.get());
}

void Vring::SetCallFd(UniqueFd fd) {
  std::lock_guard lock(fd_mu_);
  call_fd_ = std::move(fd);
}

void Vring::SetErrFd(UniqueFd fd) {
  std::lock_guard lock(fd_mu_);
  err_fd_ = std::move(fd);
}

void Vring::UpdateMemory(GuestMemoryMap::Ptr memory) {
  std::lock_guard lock(memory_mu_);
  pending_memory_ = std::move(memory);
  memory_pending_.store(true, std::memory_order_release);
}

void Vring::ApplyPendingMemory() {
  GuestMemoryMap::Ptr memory;
  {
    std::lock_guard lock(memory_mu_);
    memory = std::move(pending_memory_);
    memory_pending_.store(false, std::memory_order_relaxed);
  }
  if (memory == nullptr) return;
  auto gpas = TranslateRings(*memory, addr_, queue_.size());
  absl::Status s = gpas.ok() ? queue_.Relocate(gpas->desc, gpas->avail, gpas->used, memory)
                             : gpas.status();
  if (!s.ok()) {
    // Keep serving from the old table (still mapped, held by the queue).
    VIRTIOFS_LOG(kError, "vring {}: new memory table does not hold the ring: {}", index_,
                 s.message());
  }
}

}  // namespace virtiofs
