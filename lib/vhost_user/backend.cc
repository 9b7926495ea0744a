// The vhost-user back-end state machine. Message names and rules are those of
// QEMU's docs/interop/vhost-user.rst.
#include <fcntl.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_format.h"
#include "virtiofs/log.h"
#include "virtiofs/vhost_user.h"

namespace virtiofs {

using namespace vhost_user;  // NOLINT: the protocol's names, in this file only.

namespace {

// Fixed payload sizes ("Front-end message types"); -1: variable, checked by
// the handler; -2: a request we do not serve.
int ExpectedPayload(Request r) {
  switch (r) {
    case Request::kGetFeatures:
    case Request::kSetOwner:
    case Request::kResetOwner:
    case Request::kSetLogFd:
    case Request::kGetProtocolFeatures:
    case Request::kGetQueueNum:
    case Request::kSetBackendReqFd:
    case Request::kResetDevice:
    case Request::kGetMaxMemSlots:
    case Request::kGetStatus:
      return 0;
    case Request::kSetFeatures:
    case Request::kSetProtocolFeatures:
    case Request::kSetVringKick:
    case Request::kSetVringCall:
    case Request::kSetVringErr:
    case Request::kSetStatus:
      return 8;
    case Request::kSetVringNum:
    case Request::kSetVringBase:
    case Request::kGetVringBase:
    case Request::kSetVringEnable:
      return sizeof(VringState);
    case Request::kSetVringAddr:
      return sizeof(VringAddr);
    case Request::kSetLogBase:
      return sizeof(LogDescription);
    case Request::kGetInflightFd:
    case Request::kSetInflightFd:
      return sizeof(InflightDescription);
    case Request::kAddMemReg:
    case Request::kRemMemReg:
      return sizeof(SingleMemoryRegion);
    case Request::kSetMemTable:
    case Request::kGetConfig:
    case Request::kSetConfig:
      return -1;
    default:
      return -2;
  }
}

// The most fds a request may carry (exact counts are checked by handlers).
size_t MaxFds(Request r) {
  switch (r) {
    case Request::kSetMemTable:
      return kMemTableRegions;
    case Request::kSetLogBase:
    case Request::kSetLogFd:
    case Request::kSetVringKick:
    case Request::kSetVringCall:
    case Request::kSetVringErr:
    case Request::kSetBackendReqFd:
    case Request::kSetInflightFd:
    case Request::kAddMemReg:
    case Request::kRemMemReg:
      return 1;
    default:
      return 0;
  }
}

// Requests whose reply is their own answer: REPLY_ACK adds nothing to them.
bool HasOwnReply(Request r) {
  switch (r) {
    case Request::kGetFeatures:
    case Request::kGetProtocolFeatures:
    case Request::kGetQueueNum:
    case Request::kGetVringBase:
    case Request::kGetConfig:
    case Request::kSetLogBase:
    case Request::kGetInflightFd:
    case Request::kGetMaxMemSlots:
    case Request::kGetStatus:
      return true;
    default:
      return false;
  }
}

VhostUserBackend::Reply U64Reply(Request r, uint64_t value) {
  VhostUserBackend::Reply reply;
  reply.header = Header{static_cast<uint32_t>(r), kVersion | kReplyFlag, 8};
  reply.payload.resize(8);
  std::memcpy(reply.payload.data(), &value, 8);
  return reply;
}

bool IsPowerOfTwo(uint64_t n) { return n != 0 && (n & (n - 1)) == 0; }

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(message); }

// Maps a front-end memory region: the whole [0, mmap_offset + size) of the
// fd, like libvhost-user, after checking the fd really holds that much (a
// mapping past the end of a file faults on access instead of failing).
absl::StatusOr<GuestMemoryRegion> MapRegion(const MemoryRegion& r, int fd) {
  uint64_t end;
  if (r.memory_size == 0 || __builtin_add_overflow(r.mmap_offset, r.memory_size, &end)) {
    return Invalid(absl::StrFormat("memory region gpa 0x%x: size 0x%x offset 0x%x invalid",
                                   r.guest_phys_addr, r.memory_size, r.mmap_offset));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) return absl::ErrnoToStatus(errno, "fstat memory region fd");
  if (!S_ISREG(st.st_mode)) {
    return Invalid("memory region fd is not a regular file (memfd, shm or hugetlbfs)");
  }
  if (static_cast<uint64_t>(st.st_size) < end) {
    return Invalid(absl::StrFormat("memory region gpa 0x%x: fd holds %d bytes, region needs %d",
                                   r.guest_phys_addr, st.st_size, end));
  }
  void* p = mmap(nullptr, end, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (p == MAP_FAILED) return absl::ErrnoToStatus(errno, "mmap memory region");
  GuestMemoryRegion region;
  region.guest_phys_addr = r.guest_phys_addr;
  region.size = r.memory_size;
  region.user_addr = r.userspace_addr;
  region.mmap_offset = r.mmap_offset;
  region.mapping =
      std::make_shared<const MmapRegion>(MmapRegion::Adopt(p, end, PROT_READ | PROT_WRITE));
  return region;
}

}  // namespace

absl::Status VhostUserDevice::ReadConfig(uint32_t, std::span<uint8_t>) const {
  return absl::UnimplementedError("device has no config space");
}

absl::Status VhostUserDevice::WriteConfig(uint32_t, std::span<const uint8_t>) {
  return absl::UnimplementedError("device config space is read-only");
}

VhostUserBackend::VhostUserBackend(VhostUserDevice* device, VhostUserBackendOptions options)
    : device_(device), options_(options), rings_(device->NumQueues()) {}

VhostUserBackend::~VhostUserBackend() { Disconnect(); }

uint64_t VhostUserBackend::OfferedFeatures() const {
  return device_->DeviceFeatures() | Bit(VIRTIO_F_VERSION_1) |
         Bit(VIRTIO_RING_F_INDIRECT_DESC) | Bit(VIRTIO_RING_F_EVENT_IDX) |
         Bit(kFeatureProtocolFeatures) | Bit(kFeatureLogAll);
}

uint64_t VhostUserBackend::OfferedProtocolFeatures() const {
  uint64_t f = Bit(kProtocolMq) | Bit(kProtocolLogShmfd) | Bit(kProtocolReplyAck) |
               Bit(kProtocolBackendReq) | Bit(kProtocolBackendSendFd) |
               Bit(kProtocolInflightShmfd) | Bit(kProtocolResetDevice) |
               Bit(kProtocolConfigureMemSlots) | Bit(kProtocolStatus);
  if (device_->ConfigSize() > 0) f |= Bit(kProtocolConfig);
  return f;
}

bool VhostUserBackend::Negotiated(int bit) const {
  return (acked_protocol_features_ & Bit(bit)) != 0;
}

absl::Status VhostUserBackend::RequireProtocol(int bit, Request r) const {
  if (Negotiated(bit)) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrFormat("%s needs protocol feature %d, not negotiated", RequestName(r), bit));
}

bool VhostUserBackend::ring_running(uint32_t index) const {
  return index < rings_.size() && rings_[index].vring != nullptr;
}

absl::StatusOr<VhostUserBackend::RingSlot*> VhostUserBackend::Slot(uint32_t index) {
  if (index >= rings_.size()) {
    return Invalid(absl::StrFormat("vring index %d, the device has %d queues", index,
                                   rings_.size()));
  }
  return &rings_[index];
}

absl::StatusOr<std::optional<VhostUserBackend::Reply>> VhostUserBackend::Handle(Message m) {
  const Request r = m.request();
  // Framing: anything wrong here closes the connection.
  if ((m.header.flags & ~(kVersionMask | kNeedReplyFlag)) != 0) {
    return Invalid(absl::StrFormat("%s: bad header flags 0x%x", RequestName(r), m.header.flags));
  }
  const int expected = ExpectedPayload(r);
  if (expected >= 0 && m.payload.size() != static_cast<size_t>(expected)) {
    return Invalid(absl::StrFormat("%s: payload of %d bytes, expected %d", RequestName(r),
                                   m.payload.size(), expected));
  }
  if (m.fds.size() > MaxFds(r)) {
    return Invalid(absl::StrFormat("%s: carries %d fds, at most %d allowed", RequestName(r),
                                   m.fds.size(), MaxFds(r)));
  }

  std::optional<Reply> reply;
  absl::Status s = expected == -2 ? absl::UnimplementedError(absl::StrFormat(
                                        "%s (%d) is not supported", RequestName(r),
                                        m.header.request))
                                  : Dispatch(m, reply);
  const bool can_ack = m.need_reply() && Negotiated(kProtocolReplyAck) && !HasOwnReply(r);
  if (!s.ok()) {
    VIRTIOFS_LOG(kWarning, "vhost-user {}: {}", RequestName(r), s.message());
    if (!can_ack) return s;
    return std::optional<Reply>(U64Reply(r, 1));
  }
  if (!reply && can_ack) reply = U64Reply(r, 0);
  return reply;
}

absl::Status VhostUserBackend::Dispatch(Message& m, std::optional<Reply>& reply) {
  const Request r = m.request();
  switch (r) {
    case Request::kGetFeatures:
      reply = U64Reply(r, OfferedFeatures());
      return absl::OkStatus();
    case Request::kSetFeatures:
      return SetFeatures(*m.PayloadAs<uint64_t>());
    case Request::kSetOwner:
      return absl::OkStatus();
    case Request::kResetOwner:
      // Deprecated; as libvhost-user: disable the rings, keep the session.
      StopAllRings();
      for (RingSlot& slot : rings_) slot.enabled = false;
      return absl::OkStatus();
    case Request::kGetProtocolFeatures:
      reply = U64Reply(r, OfferedProtocolFeatures());
      return absl::OkStatus();
    case Request::kSetProtocolFeatures: {
      const uint64_t f = *m.PayloadAs<uint64_t>();
      if (f & ~OfferedProtocolFeatures()) {
        return Invalid(absl::StrFormat("protocol features 0x%x not offered (0x%x)", f,
                                       OfferedProtocolFeatures()));
      }
      acked_protocol_features_ = f;
      return absl::OkStatus();
    }
    case Request::kGetQueueNum:
      if (absl::Status s = RequireProtocol(kProtocolMq, r); !s.ok()) return s;
      reply = U64Reply(r, device_->NumQueues());
      return absl::OkStatus();
    case Request::kGetMaxMemSlots:
      if (absl::Status s = RequireProtocol(kProtocolConfigureMemSlots, r); !s.ok()) return s;
      reply = U64Reply(r, options_.max_mem_slots);
      return absl::OkStatus();
    case Request::kSetMemTable:
      return SetMemTable(m);
    case Request::kAddMemReg:
      if (absl::Status s = RequireProtocol(kProtocolConfigureMemSlots, r); !s.ok()) return s;
      return AddMemReg(m);
    case Request::kRemMemReg:
      if (absl::Status s = RequireProtocol(kProtocolConfigureMemSlots, r); !s.ok()) return s;
      return RemMemReg(m);
    case Request::kSetVringNum: {
      const VringState st = *m.PayloadAs<VringState>();
      auto slot = Slot(st.index);
      if (!slot.ok()) return slot.status();
      if ((*slot)->vring) return Invalid("SET_VRING_NUM on a running ring");
      if (!IsPowerOfTwo(st.num) || st.num > device_->MaxQueueSize()) {
        return Invalid(absl::StrFormat("vring %d: size %d is not a power of two in 1..%d",
                                       st.index, st.num, device_->MaxQueueSize()));
      }
      (*slot)->num = st.num;
      return absl::OkStatus();
    }
    case Request::kSetVringAddr:
      return SetVringAddr(*m.PayloadAs<VringAddr>());
    case Request::kSetVringBase: {
      const VringState st = *m.PayloadAs<VringState>();
      auto slot = Slot(st.index);
      if (!slot.ok()) return slot.status();
      if ((*slot)->vring) return Invalid("SET_VRING_BASE on a running ring");
      // Split ring: the next available index in bits 0-15, the rest zero.
      if (st.num > 0xffff) return Invalid(absl::StrFormat("vring base 0x%x", st.num));
      (*slot)->base = static_cast<uint16_t>(st.num);
      return absl::OkStatus();
    }
    case Request::kGetVringBase: {
      const VringState st = *m.PayloadAs<VringState>();
      auto slot = Slot(st.index);
      if (!slot.ok()) return slot.status();
      RingSlot& rs = **slot;
      StopRing(rs);
      // The ring is stopped until a new kick fd arrives (as libvhost-user).
      rs.kick.reset();
      rs.kick_set = false;
      VringState out{st.index, rs.base};
      reply = Reply{Header{static_cast<uint32_t>(r), kVersion | kReplyFlag, sizeof out}, {}, {}};
      reply->payload.assign(AsBytes(out).begin(), AsBytes(out).end());
      return absl::OkStatus();
    }
    case Request::kSetVringKick:
    case Request::kSetVringCall:
    case Request::kSetVringErr:
      return SetVringFd(m);
    case Request::kSetVringEnable: {
      if (!(acked_features_ & Bit(kFeatureProtocolFeatures))) {
        return absl::FailedPreconditionError(
            "SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES");
      }
      const VringState st = *m.PayloadAs<VringState>();
      auto slot = Slot(st.index);
      if (!slot.ok()) return slot.status();
      if (st.num > 1) return Invalid(absl::StrFormat("SET_VRING_ENABLE num %d", st.num));
      (*slot)->enabled = st.num == 1;
      return UpdateRing(st.index);
    }
    case Request::kSetBackendReqFd: {
      if (absl::Status s = RequireProtocol(kProtocolBackendReq, r); !s.ok()) return s;
      if (m.fds.size() != 1) return Invalid("SET_BACKEND_REQ_FD needs one fd");
      channel_ = std::make_shared<BackendChannel>(std::move(m.fds[0]),
                                                  Negotiated(kProtocolReplyAck),
                                                  Negotiated(kProtocolBackendSendFd));
      device_->BackendChannelChanged(channel_);
      return absl::OkStatus();
    }
    case Request::kSetLogBase: {
      if (absl::Status s = RequireProtocol(kProtocolLogShmfd, r); !s.ok()) return s;
      if (absl::Status s = SetLogBase(m); !s.ok()) return s;
      reply = U64Reply(r, 0);  // Always answered: QEMU waits for it.
      return absl::OkStatus();
    }
    case Request::kSetLogFd:
      if (absl::Status s = RequireProtocol(kProtocolLogShmfd, r); !s.ok()) return s;
      if (m.fds.size() != 1) return Invalid("SET_LOG_FD needs one fd");
      log_fd_ = std::move(m.fds[0]);
      return absl::OkStatus();
    case Request::kGetInflightFd: {
      if (absl::Status s = RequireProtocol(kProtocolInflightShmfd, r); !s.ok()) return s;
      auto rep = GetInflightFd(m);
      if (!rep.ok()) return rep.status();
      reply = *std::move(rep);
      return absl::OkStatus();
    }
    case Request::kSetInflightFd:
      if (absl::Status s = RequireProtocol(kProtocolInflightShmfd, r); !s.ok()) return s;
      return SetInflightFd(m);
    case Request::kGetConfig: {
      if (absl::Status s = RequireProtocol(kProtocolConfig, r); !s.ok()) return s;
      auto rep = GetConfig(m);
      if (!rep.ok()) return rep.status();
      reply = *std::move(rep);
      return absl::OkStatus();
    }
    case Request::kSetConfig:
      if (absl::Status s = RequireProtocol(kProtocolConfig, r); !s.ok()) return s;
      return SetConfig(m);
    case Request::kResetDevice:
      if (absl::Status s = RequireProtocol(kProtocolResetDevice, r); !s.ok()) return s;
      ResetRings();
      return absl::OkStatus();
    case Request::kSetStatus: {
      if (absl::Status s = RequireProtocol(kProtocolStatus, r); !s.ok()) return s;
      const uint64_t v = *m.PayloadAs<uint64_t>();
      if (v > 0xff) return Invalid(absl::StrFormat("device status 0x%x", v));
      status_ = static_cast<uint8_t>(v);
      if (v == 0) ResetRings();  // Writing 0 resets the device (VIRTIO 1.2 2.1).
      return absl::OkStatus();
    }
    case Request::kGetStatus:
      if (absl::Status s = RequireProtocol(kProtocolStatus, r); !s.ok()) return s;
      reply = U64Reply(r, status_);
      return absl::OkStatus();
    default:
      return absl::UnimplementedError(absl::StrFormat("%s is not supported", RequestName(r)));
  }
}

absl::Status VhostUserBackend::SetFeatures(uint64_t features) {
  if (features & ~OfferedFeatures()) {
    return Invalid(absl::StrFormat("features 0x%x include bits never offered (0x%x)", features,
                                   OfferedFeatures()));
  }
  acked_features_ = features;
  features_set_ = true;
  device_->FeaturesChanged(features);
  // Without VHOST_USER_F_PROTOCOL_FEATURES the rings are enabled right away.
  if (!(features & Bit(kFeatureProtocolFeatures))) {
    for (RingSlot& slot : rings_) slot.enabled = true;
  }
  // VHOST_F_LOG_ALL may toggle while rings run (migration): effective now.
  for (RingSlot& slot : rings_) {
    if (slot.vring) slot.vring->SetLog(ActiveLog());
  }
  for (uint32_t i = 0; i < rings_.size(); ++i) {
    if (absl::Status s = UpdateRing(i); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status VhostUserBackend::InstallMemory(std::vector<GuestMemoryRegion> regions) {
  auto map = GuestMemoryMap::Create(regions, options_.max_mem_slots);
  if (!map.ok()) return map.status();
  regions_ = std::move(regions);
  memory_ = *std::move(map);
  for (RingSlot& slot : rings_) {
    if (slot.vring) slot.vring->UpdateMemory(memory_);
  }
  for (uint32_t i = 0; i < rings_.size(); ++i) {
    if (absl::Status s = UpdateRing(i); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status VhostUserBackend::SetMemTable(Message& m) {
  if (m.payload.size() < sizeof(MemoryTableHeader)) return Invalid("SET_MEM_TABLE: short payload");
  MemoryTableHeader h;
  std::memcpy(&h, m.payload.data(), sizeof h);
  if (h.nregions > kMemTableRegions) {
    return Invalid(absl::StrFormat("SET_MEM_TABLE: %d regions, at most %d", h.nregions,
                                   kMemTableRegions));
  }
  if (m.payload.size() != sizeof h + sizeof(MemoryRegion) * h.nregions) {
    return Invalid(absl::StrFormat("SET_MEM_TABLE: %d regions in a payload of %d bytes",
                                   h.nregions, m.payload.size()));
  }
  if (m.fds.size() != h.nregions) {
    return Invalid(absl::StrFormat("SET_MEM_TABLE: %d regions but %d fds", h.nregions,
                                   m.fds.size()));
  }
  std::vector<GuestMemoryRegion> regions;
  for (uint32_t i = 0; i < h.nregions; ++i) {
    MemoryRegion r;
    std::memcpy(&r, m.payload.data() + sizeof h + i * sizeof r, sizeof r);
    auto region = MapRegion(r, m.fds[i].get());
    if (!region.ok()) return region.status();
    regions.push_back(*std::move(region));
  }
  return InstallMemory(std::move(regions));  // The fds close with the message.
}

absl::Status VhostUserBackend::AddMemReg(Message& m) {
  if (m.fds.size() != 1) return Invalid("ADD_MEM_REG needs exactly one fd");
  const SingleMemoryRegion sr = *m.PayloadAs<SingleMemoryRegion>();
  auto region = MapRegion(sr.region, m.fds[0].get());
  if (!region.ok()) return region.status();
  std::vector<GuestMemoryRegion> regions = regions_;
  regions.push_back(*std::move(region));
  return InstallMemory(std::move(regions));
}

absl::Status VhostUserBackend::RemMemReg(const Message& m) {
  const SingleMemoryRegion sr = *m.PayloadAs<SingleMemoryRegion>();
  std::vector<GuestMemoryRegion> regions = regions_;
  // Matched on guest address, size and user address; mmap_offset may differ.
  auto it = std::find_if(regions.begin(), regions.end(), [&](const GuestMemoryRegion& g) {
    return g.guest_phys_addr == sr.region.guest_phys_addr &&
           g.size == sr.region.memory_size && g.user_addr == sr.region.userspace_addr;
  });
  if (it == regions.end()) {
    return Invalid(absl::StrFormat("REM_MEM_REG: no region at gpa 0x%x size 0x%x",
                                   sr.region.guest_phys_addr, sr.region.memory_size));
  }
  regions.erase(it);
  return InstallMemory(std::move(regions));
}

absl::Status VhostUserBackend::SetVringAddr(const VringAddr& a) {
  auto slot = Slot(a.index);
  if (!slot.ok()) return slot.status();
  if (a.flags & ~kVringFlagLog) return Invalid(absl::StrFormat("vring flags 0x%x", a.flags));
  if (a.desc_user_addr % 16 != 0 || a.avail_user_addr % 2 != 0 || a.used_user_addr % 4 != 0) {
    return Invalid("SET_VRING_ADDR: misaligned ring address");
  }
  RingSlot& rs = **slot;
  if (memory_ != nullptr) {
    // Check now, so the front-end hears about it; checked again at start.
    const uint64_t n = rs.num == 0 ? 1 : rs.num;
    for (auto [addr, len] : {std::pair{a.desc_user_addr, 16 * n},
                             std::pair{a.avail_user_addr, 6 + 2 * n},
                             std::pair{a.used_user_addr, 6 + 8 * n}}) {
      if (auto g = memory_->UserToGuest(addr, len); !g.ok()) return g.status();
    }
  }
  // QEMU changes the log flag on running rings when migration starts:
  // restart the ring with the new addresses.
  StopRing(rs);
  rs.addr.desc = a.desc_user_addr;
  rs.addr.avail = a.avail_user_addr;
  rs.addr.used = a.used_user_addr;
  rs.addr.log_guest_addr = a.log_guest_addr;
  rs.addr.log_used = (a.flags & kVringFlagLog) != 0;
  rs.addr_set = true;
  return UpdateRing(a.index);
}

absl::Status VhostUserBackend::SetVringFd(Message& m) {
  const uint64_t v = *m.PayloadAs<uint64_t>();
  const Request r = m.request();
  if (v & ~(kVringIndexMask | kVringNoFdMask)) {
    return Invalid(absl::StrFormat("%s: payload 0x%x has unknown bits", RequestName(r), v));
  }
  const bool nofd = (v & kVringNoFdMask) != 0;
  if (m.fds.size() != (nofd ? 0u : 1u)) {
    return Invalid(absl::StrFormat("%s: %d fds with no-fd flag %d", RequestName(r),
                                   m.fds.size(), nofd));
  }
  const uint32_t index = static_cast<uint32_t>(v & kVringIndexMask);
  auto slot = Slot(index);
  if (!slot.ok()) return slot.status();
  RingSlot& rs = **slot;
  UniqueFd fd = nofd ? UniqueFd() : std::move(m.fds[0]);
  switch (r) {
    case Request::kSetVringKick:
      if (nofd) return absl::UnimplementedError("polling rings (kick without fd)");
      StopRing(rs);
      rs.kick = std::move(fd);
      rs.kick_set = true;
      return UpdateRing(index);
    case Request::kSetVringCall:
      if (rs.vring) {
        auto dup = fd.Dup();
        rs.vring->SetCallFd(dup.ok() ? *std::move(dup) : UniqueFd());
        // A completion may have signalled the old fd just before: signal
        // the new one once, so the guest cannot miss it (a spurious
        // interrupt is harmless; libvhost-user does the same).
        rs.vring->Notify();
      }
      rs.call = std::move(fd);
      return absl::OkStatus();
    default:  // kSetVringErr
      if (rs.vring) {
        auto dup = fd.Dup();
        rs.vring->SetErrFd(dup.ok() ? *std::move(dup) : UniqueFd());
      }
      rs.err = std::move(fd);
      return absl::OkStatus();
  }
}

absl::Status VhostUserBackend::SetLogBase(Message& m) {
  if (m.fds.size() != 1) return Invalid("SET_LOG_BASE needs one fd");
  const LogDescription d = *m.PayloadAs<LogDescription>();
  auto log = DirtyLog::Map(m.fds[0].get(), d.mmap_size, d.mmap_offset);
  if (!log.ok()) return log.status();
  logs_.push_back(*std::move(log));
  for (RingSlot& slot : rings_) {
    if (slot.vring) slot.vring->SetLog(ActiveLog());
  }
  return absl::OkStatus();
}

DirtyLog* VhostUserBackend::ActiveLog() const {
  if (!(acked_features_ & Bit(kFeatureLogAll)) || logs_.empty()) return nullptr;
  return logs_.back().get();
}

absl::StatusOr<VhostUserBackend::Reply> VhostUserBackend::GetInflightFd(const Message& m) {
  InflightDescription d = *m.PayloadAs<InflightDescription>();
  if (d.num_queues == 0 || d.num_queues > device_->NumQueues() || !IsPowerOfTwo(d.queue_size) ||
      d.queue_size > SplitQueue::kMaxSize) {
    return Invalid(absl::StrFormat("GET_INFLIGHT_FD: %d queues of %d", d.num_queues,
                                   d.queue_size));
  }
  const uint64_t size = d.num_queues * InflightQueueBytes(d.queue_size);  // < 2^32.
  UniqueFd fd(memfd_create("vhost-user-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "memfd_create inflight");
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return absl::ErrnoToStatus(errno, "size inflight region");
  }
  // The front-end keeps this fd across our restarts; it must not shrink.
  (void)fcntl(fd.get(), F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL);
  auto map = MmapRegion::MapFile(fd.get(), 0, size, PROT_READ | PROT_WRITE);
  if (!map.ok()) return absl::ErrnoToStatus(map.error(), "map inflight region");
  inflight_fd_ = std::move(fd);
  inflight_map_ = *std::move(map);
  inflight_queues_ = d.num_queues;
  inflight_queue_size_ = d.queue_size;
  d.mmap_size = size;
  d.mmap_offset = 0;
  Reply reply;
  reply.header = Header{static_cast<uint32_t>(Request::kGetInflightFd), kVersion | kReplyFlag,
                        sizeof d};
  reply.payload.assign(AsBytes(d).begin(), AsBytes(d).end());
  reply.fds.push_back(inflight_fd_.get());
  return reply;
}

absl::Status VhostUserBackend::SetInflightFd(Message& m) {
  if (m.fds.size() != 1) return Invalid("SET_INFLIGHT_FD needs one fd");
  const InflightDescription d = *m.PayloadAs<InflightDescription>();
  if (d.num_queues == 0 || d.num_queues > device_->NumQueues() || !IsPowerOfTwo(d.queue_size) ||
      d.queue_size > SplitQueue::kMaxSize) {
    return Invalid(absl::StrFormat("SET_INFLIGHT_FD: %d queues of %d", d.num_queues,
                                   d.queue_size));
  }
  const uint64_t need = d.num_queues * InflightQueueBytes(d.queue_size);
  uint64_t end;
  if (d.mmap_size < need || __builtin_add_overflow(d.mmap_offset, d.mmap_size, &end) ||
      d.mmap_offset % static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) != 0) {
    return Invalid(absl::StrFormat("SET_INFLIGHT_FD: %d bytes at %d, need %d", d.mmap_size,
                                   d.mmap_offset, need));
  }
  struct stat st;
  if (fstat(m.fds[0].get(), &st) != 0 || !S_ISREG(st.st_mode) ||
      static_cast<uint64_t>(st.st_size) < end) {
    return Invalid("SET_INFLIGHT_FD: fd is not a regular file of the given size");
  }
  auto map = MmapRegion::MapFile(m.fds[0].get(), d.mmap_offset, d.mmap_size,
                                 PROT_READ | PROT_WRITE);
  if (!map.ok()) return absl::ErrnoToStatus(map.error(), "map inflight region");
  for (RingSlot& slot : rings_) StopRing(slot);  // They point into the old region.
  inflight_fd_ = std::move(m.fds[0]);
  inflight_map_ = *std::move(map);
  inflight_queues_ = d.num_queues;
  inflight_queue_size_ = d.queue_size;
  for (uint32_t i = 0; i < rings_.size(); ++i) {
    if (absl::Status s = UpdateRing(i); !s.ok()) return s;
  }
  return absl::OkStatus();
}

InflightQueueSplit* VhostUserBackend::InflightQueue(uint32_t index, uint32_t size) const {
  if (!inflight_map_.valid() || index >= inflight_queues_ || size > inflight_queue_size_) {
    return nullptr;
  }
  return reinterpret_cast<InflightQueueSplit*>(inflight_map_.data() +
                                               index * InflightQueueBytes(inflight_queue_size_));
}

absl::StatusOr<VhostUserBackend::Reply> VhostUserBackend::GetConfig(const Message& m) {
  if (m.payload.size() < sizeof(ConfigHeader)) return Invalid("GET_CONFIG: short payload");
  ConfigHeader h;
  std::memcpy(&h, m.payload.data(), sizeof h);
  if (h.size > kMaxConfigSize || m.payload.size() != sizeof h + h.size) {
    return Invalid(absl::StrFormat("GET_CONFIG: size %d in a payload of %d", h.size,
                                   m.payload.size()));
  }
  if (h.offset > device_->ConfigSize() || h.size > device_->ConfigSize() - h.offset) {
    return Invalid(absl::StrFormat("GET_CONFIG: %d bytes at %d beyond config space of %d",
                                   h.size, h.offset, device_->ConfigSize()));
  }
  Reply reply;
  reply.header =
      Header{static_cast<uint32_t>(Request::kGetConfig), kVersion | kReplyFlag, 0};
  reply.payload.resize(sizeof h + h.size);
  std::memcpy(reply.payload.data(), &h, sizeof h);
  if (absl::Status s = device_->ReadConfig(
          h.offset, std::span<uint8_t>(reply.payload.data() + sizeof h, h.size));
      !s.ok()) {
    return s;
  }
  reply.header.size = static_cast<uint32_t>(reply.payload.size());
  return reply;
}

absl::Status VhostUserBackend::SetConfig(const Message& m) {
  if (m.payload.size() < sizeof(ConfigHeader)) return Invalid("SET_CONFIG: short payload");
  ConfigHeader h;
  std::memcpy(&h, m.payload.data(), sizeof h);
  if (h.size > kMaxConfigSize || m.payload.size() != sizeof h + h.size || h.flags > 1) {
    return Invalid(absl::StrFormat("SET_CONFIG: size %d flags %d in a payload of %d", h.size,
                                   h.flags, m.payload.size()));
  }
  if (h.offset > device_->ConfigSize() || h.size > device_->ConfigSize() - h.offset) {
    return Invalid("SET_CONFIG: beyond the config space");
  }
  return device_->WriteConfig(
      h.offset, std::span<const uint8_t>(m.payload.data() + sizeof h, h.size));
}

absl::Status VhostUserBackend::UpdateRing(uint32_t index) {
  RingSlot& rs = rings_[index];
  const bool should_run =
      rs.kick_set && rs.addr_set && rs.num != 0 && rs.enabled && memory_ != nullptr;
  if (!should_run) {
    StopRing(rs);
    return absl::OkStatus();
  }
  if (rs.vring) return absl::OkStatus();
  Vring::Params p;
  p.index = index;
  p.size = rs.num;
  p.base = rs.base;
  p.addr = rs.addr;
  p.indirect_desc = (acked_features_ & Bit(VIRTIO_RING_F_INDIRECT_DESC)) != 0;
  p.event_idx = (acked_features_ & Bit(VIRTIO_RING_F_EVENT_IDX)) != 0;
  p.kick_fd = rs.kick.get();
  if (rs.call.valid()) {
    auto dup = rs.call.Dup();
    if (!dup.ok()) return absl::ErrnoToStatus(dup.error(), "dup call fd");
    p.call_fd = *std::move(dup);
  }
  if (rs.err.valid()) {
    auto dup = rs.err.Dup();
    if (!dup.ok()) return absl::ErrnoToStatus(dup.error(), "dup err fd");
    p.err_fd = *std::move(dup);
  }
  p.inflight = InflightQueue(index, rs.num);
  p.memory = memory_;
  auto vring = Vring::Create(std::move(p));
  if (!vring.ok()) return vring.status();
  (*vring)->SetLog(ActiveLog());
  rs.vring = *std::move(vring);
  VIRTIOFS_LOG(kDebug, "vring {} started: size {} base {}", index, rs.num, rs.base);
  device_->StartQueue(*rs.vring);
  // Chains may be waiting (added before the start, or resubmitted).
  uint64_t one = 1;
  (void)!write(rs.kick.get(), &one, sizeof one);
  return absl::OkStatus();
}

void VhostUserBackend::StopRing(RingSlot& rs) {
  if (!rs.vring) return;
  device_->StopQueue(*rs.vring);
  rs.base = rs.vring->last_avail_idx();
  VIRTIOFS_LOG(kDebug, "vring {} stopped at {}", rs.vring->index(), rs.base);
  rs.vring.reset();
}

void VhostUserBackend::StopAllRings() {
  for (RingSlot& slot : rings_) StopRing(slot);
}

void VhostUserBackend::ResetRings() {
  StopAllRings();
  for (RingSlot& slot : rings_) slot = RingSlot();
  device_->Reset();
}

void VhostUserBackend::Disconnect() {
  StopAllRings();
  if (channel_) {
    channel_.reset();
    device_->BackendChannelChanged(nullptr);
  }
  device_->Reset();
  rings_ = std::vector<RingSlot>(device_->NumQueues());
  regions_.clear();
  memory_.reset();
  logs_.clear();
  log_fd_.reset();
  inflight_map_ = MmapRegion();
  inflight_fd_.reset();
}

}  // namespace virtiofs
