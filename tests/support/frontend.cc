#include "tests/support/frontend.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "virtiofs/status_macros.h"

namespace virtiofs::testing {
namespace {

using vhost_user::Header;
using vhost_user::Message;
using vhost_user::RequestName;
using vhost_user::VringAddr;
using vhost_user::VringState;
using Req = vhost_user::Request;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "Frontend: %s\n", what.c_str());
  std::abort();
}

// Milliseconds left before a deadline, for poll(); -1 means no deadline.
class Deadline {
 public:
  explicit Deadline(int timeout_ms)
      : infinite_(timeout_ms < 0),
        end_(std::chrono::steady_clock::now() +
             std::chrono::milliseconds(timeout_ms < 0 ? 0 : timeout_ms)) {}
  int RemainingMs() const {
    if (infinite_) return -1;
    auto left = end_ - std::chrono::steady_clock::now();
    if (left <= std::chrono::steady_clock::duration::zero()) return 0;
    // Round up, so that a wait does not wake just before the deadline and spin.
    return static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(left).count());
  }
  bool Expired() const { return RemainingMs() == 0; }

 private:
  bool infinite_;
  std::chrono::steady_clock::time_point end_;
};

// poll() one fd for `events`, retrying on EINTR until the deadline. Returns
// revents, 0 on timeout, or an error.
absl::StatusOr<short> PollOne(int fd, short events, const Deadline& deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int n = poll(&p, 1, deadline.RemainingMs());
    if (n > 0) return p.revents;
    if (n == 0) return static_cast<short>(0);
    if (errno != EINTR) return absl::ErrnoToStatus(errno, "poll");
  }
}

// Sends `bytes` on a non-blocking socket with `fds` on the first byte. Unlike
// vhost_user::SendMessage it sends the bytes as they are (a raw header may
// lie about its size).
absl::Status SendBytes(int fd, std::span<const uint8_t> bytes, std::span<const int> fds,
                       int timeout_ms) {
  if (fds.size() > 253) return absl::InvalidArgumentError("too many fds for SCM_RIGHTS");
  std::vector<uint8_t> control(CMSG_SPACE(sizeof(int) * fds.size()));
  size_t sent = 0;
  Deadline deadline(timeout_ms);
  // A message with no bytes still has to carry its fds, so send once even
  // when `bytes` is empty.
  do {
    iovec iov{const_cast<uint8_t*>(bytes.data()) + sent, bytes.size() - sent};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (sent == 0 && !fds.empty()) {
      msg.msg_control = control.data();
      msg.msg_controllen = control.size();
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        VIRTIOFS_ASSIGN_OR_RETURN(short revents, PollOne(fd, POLLOUT, deadline));
        if (revents == 0) return absl::DeadlineExceededError("vhost-user: peer does not read");
        continue;
      }
      return absl::ErrnoToStatus(errno, "vhost-user sendmsg");
    }
    sent += static_cast<size_t>(n);
  } while (sent < bytes.size());
  return absl::OkStatus();
}

absl::Status Annotate(const absl::Status& s, const std::string& context) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(context, ": ", s.message()));
}

// RequestName as a std::string (Debian's abseil has its own string_view,
// which StrCat wants).
std::string Name(Req r) { return std::string(RequestName(r)); }

}  // namespace

Frontend::Frontend(UniqueFd fd)
    : fd_(std::move(fd)), reader_(std::make_unique<vhost_user::MessageReader>(fd_.get())) {}

Frontend::~Frontend() { Close(); }

absl::StatusOr<std::unique_ptr<Frontend>> Frontend::Connect(const std::string& socket_path,
                                                            int timeout_ms) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof addr.sun_path) {
    return absl::InvalidArgumentError(
        absl::StrFormat("socket path \"%s\": empty or too long", socket_path));
  }
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  Deadline deadline(timeout_ms);
  for (;;) {
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) return absl::ErrnoToStatus(errno, "socket(AF_UNIX)");
    if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) {
      return std::unique_ptr<Frontend>(new Frontend(std::move(fd)));
    }
    const int err = errno;
    // Not there yet (ENOENT), not listening yet (ECONNREFUSED), or its
    // backlog is full (EAGAIN on a non-blocking unix socket): try again.
    if (err != ENOENT && err != ECONNREFUSED && err != EAGAIN && err != EINTR) {
      return absl::ErrnoToStatus(err, absl::StrCat("connect to ", socket_path));
    }
    if (deadline.Expired()) {
      return absl::DeadlineExceededError(absl::StrFormat(
          "connect to %s: still %s after %d ms", socket_path, std::strerror(err), timeout_ms));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::unique_ptr<Frontend> Frontend::Adopt(UniqueFd connected) {
  if (!connected) Die("Adopt: no socket");
  int flags = fcntl(connected.get(), F_GETFL);
  if (flags < 0 || fcntl(connected.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
    Die(absl::StrCat("Adopt: fcntl: ", std::strerror(errno)));
  }
  return std::unique_ptr<Frontend>(new Frontend(std::move(connected)));
}

// ---- Raw access --------------------------------------------------------------

absl::Status Frontend::SendRaw(Header h, std::span<const uint8_t> payload,
                               std::span<const int> fds) {
  if (!fd_) return absl::FailedPreconditionError("front-end is closed");
  std::vector<uint8_t> bytes(sizeof h + payload.size());
  std::memcpy(bytes.data(), &h, sizeof h);
  if (!payload.empty()) std::memcpy(bytes.data() + sizeof h, payload.data(), payload.size());
  return SendBytes(fd_.get(), bytes, fds, reply_timeout_ms_);
}

absl::StatusOr<Message> Frontend::Receive(int timeout_ms) {
  if (!fd_) return absl::FailedPreconditionError("front-end is closed");
  if (!broken_.ok()) return broken_;
  Deadline deadline(timeout_ms);
  for (;;) {
    auto m = reader_->Read();
    if (!m.ok()) {
      broken_ = m.status();
      return broken_;
    }
    if (m->has_value()) return std::move(**m);
    VIRTIOFS_ASSIGN_OR_RETURN(short revents, PollOne(fd_.get(), POLLIN, deadline));
    if (revents == 0) {
      return absl::DeadlineExceededError(
          absl::StrFormat("no message from the back-end within %d ms", timeout_ms));
    }
  }
}

bool Frontend::PeerClosed(int timeout_ms) {
  if (!fd_ || !broken_.ok()) return true;
  Deadline deadline(timeout_ms);
  for (;;) {
    auto revents = PollOne(fd_.get(), POLLIN | POLLRDHUP, deadline);
    if (!revents.ok()) return false;  // poll itself failed: we cannot tell.
    if (*revents == 0) return false;
    if (*revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)) return true;
    // Data: read (and drop) whatever message it is, then look again.
    auto m = reader_->Read();
    if (!m.ok()) {
      broken_ = m.status();
      return true;
    }
  }
}

// ---- Typed requests ----------------------------------------------------------

absl::Status Frontend::Send(Req r, uint32_t flags, std::span<const uint8_t> payload,
                            std::span<const int> fds) {
  if (!fd_) return absl::FailedPreconditionError("front-end is closed");
  Header h{static_cast<uint32_t>(r), flags, 0};
  return Annotate(vhost_user::SendMessage(fd_.get(), h, payload, fds, reply_timeout_ms_),
                  absl::StrCat("sending ", Name(r)));
}

absl::StatusOr<Message> Frontend::ReceiveReply(Req r) {
  auto m = Receive(reply_timeout_ms_);
  if (!m.ok()) return Annotate(m.status(), absl::StrCat("waiting for the reply to ", Name(r)));
  // "The reply ... has the REPLY flag set": QEMU requires flags == 0x5 exactly.
  const uint32_t want_flags = vhost_user::kVersion | vhost_user::kReplyFlag;
  if (m->header.flags != want_flags) {
    return absl::DataLossError(absl::StrFormat("reply to %s has flags 0x%x, expected 0x%x",
                                               RequestName(r), m->header.flags, want_flags));
  }
  if (m->header.request != static_cast<uint32_t>(r)) {
    return absl::DataLossError(absl::StrFormat("reply to %s has request code %d (%s)",
                                               RequestName(r), m->header.request,
                                               RequestName(m->request())));
  }
  return m;
}

absl::Status Frontend::Request(Req r, std::span<const uint8_t> payload, std::span<const int> fds) {
  const bool ack = has_protocol_feature(vhost_user::kProtocolReplyAck);
  VIRTIOFS_RETURN_IF_ERROR(
      Send(r, vhost_user::kVersion | (ack ? vhost_user::kNeedReplyFlag : 0), payload, fds));
  if (!ack) return absl::OkStatus();
  VIRTIOFS_ASSIGN_OR_RETURN(Message reply, ReceiveReply(r));
  auto value = reply.PayloadAs<uint64_t>();
  if (!value.ok()) return Annotate(value.status(), "ack");
  if (*value != 0) {
    return absl::InternalError(
        absl::StrFormat("%s: the back-end acked with error %d", RequestName(r), *value));
  }
  return absl::OkStatus();
}

absl::Status Frontend::RequestU64(Req r, uint64_t value, std::span<const int> fds) {
  return Request(r, vhost_user::AsBytes(value), fds);
}

absl::StatusOr<Message> Frontend::Call(Req r, std::span<const uint8_t> payload,
                                       std::span<const int> fds) {
  VIRTIOFS_RETURN_IF_ERROR(Send(r, vhost_user::kVersion, payload, fds));
  return ReceiveReply(r);
}

absl::StatusOr<uint64_t> Frontend::GetU64(Req r) {
  VIRTIOFS_ASSIGN_OR_RETURN(Message reply, Call(r));
  auto value = reply.PayloadAs<uint64_t>();
  if (!value.ok()) return Annotate(value.status(), "reply");
  return *value;
}

// ---- Session setup -----------------------------------------------------------

absl::Status Frontend::Negotiate(uint64_t virtio_features_wanted,
                                 uint64_t protocol_features_wanted) {
  offered_features_ = offered_protocol_features_ = features_ = protocol_features_ = 0;
  VIRTIOFS_ASSIGN_OR_RETURN(offered_features_, GetU64(Req::kGetFeatures));
  uint64_t wanted = virtio_features_wanted;
  if (protocol_features_wanted != 0)
    wanted |= vhost_user::Bit(vhost_user::kFeatureProtocolFeatures);
  const uint64_t agreed = offered_features_ & wanted;
  if (agreed & vhost_user::Bit(vhost_user::kFeatureProtocolFeatures)) {
    VIRTIOFS_ASSIGN_OR_RETURN(offered_protocol_features_, GetU64(Req::kGetProtocolFeatures));
    const uint64_t agreed_protocol = offered_protocol_features_ & protocol_features_wanted;
    // Sent before REPLY_ACK is in force, so without NEED_REPLY (as QEMU).
    VIRTIOFS_RETURN_IF_ERROR(RequestU64(Req::kSetProtocolFeatures, agreed_protocol));
    protocol_features_ = agreed_protocol;
  }
  VIRTIOFS_RETURN_IF_ERROR(Request(Req::kSetOwner));
  features_ = agreed;
  return RequestU64(Req::kSetFeatures, agreed);
}

absl::Status Frontend::SetMemTable(const GuestRam& ram) {
  const size_t n = ram.region_count();
  if (n == 0 || n > vhost_user::kMemTableRegions) {
    return absl::InvalidArgumentError(absl::StrFormat("SET_MEM_TABLE takes 1 to %d regions, not %d",
                                                      vhost_user::kMemTableRegions, n));
  }
  std::vector<uint8_t> payload(sizeof(vhost_user::MemoryTableHeader) +
                               n * sizeof(vhost_user::MemoryRegion));
  const vhost_user::MemoryTableHeader header{static_cast<uint32_t>(n), 0};
  std::memcpy(payload.data(), &header, sizeof header);
  std::vector<int> fds;
  std::vector<TableEntry> table;
  for (size_t i = 0; i < n; ++i) {
    const GuestMemoryRegion& r = ram.region(i);
    if (ram.fd(i) < 0) {
      return absl::FailedPreconditionError("SET_MEM_TABLE needs memfd-backed guest RAM");
    }
    const vhost_user::MemoryRegion wire{r.guest_phys_addr, r.size, r.user_addr, 0};
    std::memcpy(payload.data() + sizeof header + i * sizeof wire, &wire, sizeof wire);
    fds.push_back(ram.fd(i));
    table.push_back({r.guest_phys_addr, r.size, r.user_addr});
  }
  VIRTIOFS_RETURN_IF_ERROR(Request(Req::kSetMemTable, payload, fds));
  table_ = std::move(table);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Frontend::GuestToUser(uint64_t gpa, uint64_t len) const {
  for (const TableEntry& e : table_) {
    // Both sides are bounded by the entry (gpa >= e.gpa checked first), so
    // neither subtraction wraps.
    if (gpa >= e.gpa && gpa - e.gpa <= e.size && len <= e.size - (gpa - e.gpa)) {
      return e.user_addr + (gpa - e.gpa);
    }
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "guest range [0x%x, +0x%x) is not inside one region of the memory table", gpa, len));
}

absl::Status Frontend::StartVring(uint32_t index, const DriverQueue& q, uint16_t base) {
  if (index > vhost_user::kVringIndexMask) {
    return absl::InvalidArgumentError(
        absl::StrFormat("ring index %d does not fit in 8 bits", index));
  }
  const VirtqueueConfig cfg = q.config();
  if (cfg.event_idx != has_feature(kVirtioRingFEventIdx)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("ring %d: the driver queue %s EVENT_IDX but the negotiation %s", index,
                        cfg.event_idx ? "uses" : "does not use",
                        has_feature(kVirtioRingFEventIdx) ? "agreed it" : "did not"));
  }
  // Ring sizes (VIRTIO 1.2, 2.7): desc 16*n; avail 4 + 2*n (+2 used_event);
  // used 4 + 8*n (+2 avail_event). n <= 32768, so nothing overflows.
  const uint64_t n = cfg.size;
  VIRTIOFS_ASSIGN_OR_RETURN(uint64_t desc, GuestToUser(cfg.desc_addr, 16 * n));
  VIRTIOFS_ASSIGN_OR_RETURN(uint64_t avail, GuestToUser(cfg.avail_addr, 6 + 2 * n));
  VIRTIOFS_ASSIGN_OR_RETURN(uint64_t used, GuestToUser(cfg.used_addr, 6 + 8 * n));

  Vring ring;
  ring.kick.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  ring.call.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!ring.kick || !ring.call) return absl::ErrnoToStatus(errno, "eventfd");
  const int kick = ring.kick.get();
  const int call = ring.call.get();
  vrings_[index] = std::move(ring);  // Replaces (closes) the fds of an earlier start.

  VIRTIOFS_RETURN_IF_ERROR(
      Request(Req::kSetVringNum, vhost_user::AsBytes(VringState{index, cfg.size})));
  VIRTIOFS_RETURN_IF_ERROR(
      Request(Req::kSetVringBase, vhost_user::AsBytes(VringState{index, base})));
  const VringAddr addr{index, 0, desc, used, avail, 0};
  VIRTIOFS_RETURN_IF_ERROR(Request(Req::kSetVringAddr, vhost_user::AsBytes(addr)));
  // Kick/call payload: the ring index in bits 0-7, NOFD (bit 8) clear.
  VIRTIOFS_RETURN_IF_ERROR(RequestU64(Req::kSetVringKick, index, std::span<const int>(&kick, 1)));
  VIRTIOFS_RETURN_IF_ERROR(RequestU64(Req::kSetVringCall, index, std::span<const int>(&call, 1)));
  // Without PROTOCOL_FEATURES, SET_FEATURES enabled every ring; with it, a
  // ring stays disabled until SET_VRING_ENABLE ("Ring states").
  if (has_feature(vhost_user::kFeatureProtocolFeatures)) {
    VIRTIOFS_RETURN_IF_ERROR(SetVringEnable(index, true));
  }
  return absl::OkStatus();
}

absl::Status Frontend::SetVringEnable(uint32_t index, bool enable) {
  return Request(Req::kSetVringEnable, vhost_user::AsBytes(VringState{index, enable ? 1u : 0u}));
}

void Frontend::Kick(uint32_t index) {
  auto it = vrings_.find(index);
  if (it == vrings_.end()) Die(absl::StrFormat("Kick(%d): ring was never started", index));
  // EAGAIN only if the counter is about to overflow: the back-end has a
  // pending kick anyway.
  (void)eventfd_write(it->second.kick.get(), 1);
}

bool Frontend::WaitCall(uint32_t index, int timeout_ms) {
  auto it = vrings_.find(index);
  if (it == vrings_.end()) Die(absl::StrFormat("WaitCall(%d): ring was never started", index));
  const int fd = it->second.call.get();
  Deadline deadline(timeout_ms);
  for (;;) {
    auto revents = PollOne(fd, POLLIN, deadline);
    if (!revents.ok() || *revents == 0) return false;
    eventfd_t value;
    if (eventfd_read(fd, &value) == 0) return true;
    if (errno != EAGAIN) return false;
  }
}

int Frontend::kick_fd(uint32_t index) const {
  auto it = vrings_.find(index);
  return it == vrings_.end() ? -1 : it->second.kick.get();
}

int Frontend::call_fd(uint32_t index) const {
  auto it = vrings_.find(index);
  return it == vrings_.end() ? -1 : it->second.call.get();
}

absl::StatusOr<uint32_t> Frontend::GetVringBase(uint32_t index) {
  VIRTIOFS_ASSIGN_OR_RETURN(Message reply,
                            Call(Req::kGetVringBase, vhost_user::AsBytes(VringState{index, 0})));
  auto state = reply.PayloadAs<VringState>();
  if (!state.ok()) return Annotate(state.status(), "reply");
  if (state->index != index) {
    return absl::DataLossError(
        absl::StrFormat("GET_VRING_BASE for ring %d answered for ring %d", index, state->index));
  }
  return state->num;
}

absl::StatusOr<std::vector<uint8_t>> Frontend::Transact(uint32_t index, DriverQueue& q,
                                                        const GuestRam& ram,
                                                        std::span<const uint8_t> request,
                                                        uint32_t reply_capacity, int timeout_ms) {
  if (request.empty() && reply_capacity == 0) {
    return absl::InvalidArgumentError("Transact: nothing to send and no room for a reply");
  }
  if (request.size() > UINT32_MAX) return absl::InvalidArgumentError("Transact: request too big");
  std::vector<DriverQueue::Buffer> buffers;
  if (!request.empty()) {
    const uint64_t gpa = q.Alloc(request.size());
    ram.Write(gpa, request.data(), request.size());
    buffers.push_back({gpa, static_cast<uint32_t>(request.size()), false});
  }
  uint64_t reply_gpa = 0;
  if (reply_capacity > 0) {
    reply_gpa = q.Alloc(reply_capacity);
    buffers.push_back({reply_gpa, reply_capacity, true});
  }
  // With EVENT_IDX, ask for a call at the next completion, as the Linux
  // driver does when it re-enables callbacks (VIRTIO 1.2, 2.7.10): used_event
  // = the used index as it stands now.
  if (q.config().event_idx) q.SetUsedEvent(q.used_idx());
  auto head = q.AddChain(buffers);
  if (!head) return absl::ResourceExhaustedError(absl::StrFormat("ring %d is full", index));
  Kick(index);
  Deadline deadline(timeout_ms);
  for (;;) {
    if (auto used = q.PopUsed()) {
      if (used->id != *head) {
        return absl::DataLossError(absl::StrFormat("ring %d: used element for head %d, expected %d",
                                                   index, used->id, *head));
      }
      if (used->len > reply_capacity) {
        return absl::DataLossError(
            absl::StrFormat("ring %d: back-end wrote %d bytes into a %d-byte buffer", index,
                            used->len, reply_capacity));
      }
      std::vector<uint8_t> reply(used->len);
      if (used->len > 0) ram.Read(reply_gpa, reply.data(), used->len);
      return reply;
    }
    if (deadline.Expired()) {
      return absl::DeadlineExceededError(absl::StrFormat(
          "ring %d: no completion of head %d within %d ms", index, *head, timeout_ms));
    }
    // A call may be spurious, or suppressed by the ring's notification
    // settings: the used ring is the truth, so look at it at least every
    // 50 ms whatever the eventfd says.
    const int left = deadline.RemainingMs();
    WaitCall(index, left < 0 || left > 50 ? 50 : left);
  }
}

void Frontend::Close() {
  vrings_.clear();
  reader_.reset();
  fd_.reset();
}

}  // namespace virtiofs::testing
