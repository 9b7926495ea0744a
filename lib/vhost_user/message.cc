#include "virtiofs/vhost_user_message.h"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>

#include "absl/strings/str_format.h"

namespace virtiofs::vhost_user {

absl::Status Message::SizeError(size_t want) const {
  return absl::InvalidArgumentError(absl::StrFormat("%s: payload of %d bytes, expected %d",
                                                    RequestName(request()), payload.size(),
                                                    want));
}

absl::StatusOr<std::optional<size_t>> MessageReader::Receive(uint8_t* buf, size_t len) {
  iovec iov{buf, len};
  // Room for one more fd than allowed, so that "too many" is seen as such
  // rather than as truncation.
  alignas(cmsghdr) uint8_t control[CMSG_SPACE(sizeof(int) * (kMaxFds + 1))];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return std::optional<size_t>();
    return absl::ErrnoToStatus(errno, "vhost-user recvmsg");
  }
  // Adopt every descriptor before any check, so an error path closes them.
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      pending_.fds.emplace_back(fd);
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    return absl::InvalidArgumentError("vhost-user message: truncated control data");
  }
  if (pending_.fds.size() > kMaxFds) {
    return absl::InvalidArgumentError(
        absl::StrFormat("vhost-user message: %d fds, at most %d", pending_.fds.size(), kMaxFds));
  }
  return std::optional<size_t>(static_cast<size_t>(n));
}

absl::StatusOr<std::optional<Message>> MessageReader::Read() {
  while (header_got_ < sizeof(Header)) {
    auto n = Receive(header_bytes_ + header_got_, sizeof(Header) - header_got_);
    if (!n.ok()) return n.status();
    if (!n->has_value()) return std::optional<Message>();
    if (**n == 0) {
      if (header_got_ == 0 && pending_.fds.empty()) return absl::UnavailableError("peer closed");
      return absl::DataLossError("vhost-user: peer closed inside a message header");
    }
    header_got_ += **n;
    if (header_got_ == sizeof(Header)) {
      std::memcpy(&pending_.header, header_bytes_, sizeof(Header));
      const Header& h = pending_.header;
      if ((h.flags & kVersionMask) != kVersion) {
        return absl::InvalidArgumentError(
            absl::StrFormat("vhost-user: unsupported version in flags 0x%x", h.flags));
      }
      if (h.size > kMaxPayload) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "vhost-user: payload of %d bytes exceeds the limit of %d", h.size, kMaxPayload));
      }
      pending_.payload.resize(h.size);
      payload_got_ = 0;
    }
  }
  while (payload_got_ < pending_.payload.size()) {
    auto n = Receive(pending_.payload.data() + payload_got_,
                     pending_.payload.size() - payload_got_);
    if (!n.ok()) return n.status();
    if (!n->has_value()) return std::optional<Message>();
    if (**n == 0) return absl::DataLossError("vhost-user: peer closed inside a message payload");
    payload_got_ += **n;
  }
  Message done = std::move(pending_);
  pending_ = Message();
  header_got_ = 0;
  payload_got_ = 0;
  return std::optional<Message>(std::move(done));
}

absl::StatusOr<Message> ReceiveMessage(int fd) {
  MessageReader reader(fd);
  for (;;) {
    auto m = reader.Read();
    if (!m.ok()) return m.status();
    if (m->has_value()) return std::move(**m);
    pollfd p{fd, POLLIN, 0};  // Non-blocking socket: wait for the rest.
    if (poll(&p, 1, 5000) != 1) return absl::DeadlineExceededError("vhost-user: read timed out");
  }
}

absl::Status SendMessage(int fd, Header header, std::span<const uint8_t> payload,
                         std::span<const int> fds, int timeout_ms) {
  if (fds.size() > kMaxFds) return absl::InvalidArgumentError("too many fds to send");
  header.size = static_cast<uint32_t>(payload.size());
  iovec iov[2] = {{&header, sizeof header},
                  {const_cast<uint8_t*>(payload.data()), payload.size()}};
  size_t total = sizeof header + payload.size();
  size_t sent = 0;
  alignas(cmsghdr) uint8_t control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  while (sent < total) {
    // Rebuild the iovecs past what was sent.
    iovec rest[2];
    int count = 0;
    size_t skip = sent;
    for (const iovec& v : iov) {
      if (skip >= v.iov_len) {
        skip -= v.iov_len;
        continue;
      }
      rest[count++] = iovec{static_cast<uint8_t*>(v.iov_base) + skip, v.iov_len - skip};
      skip = 0;
    }
    msghdr msg{};
    msg.msg_iov = rest;
    msg.msg_iovlen = static_cast<size_t>(count);
    if (sent == 0 && !fds.empty()) {
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
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
        pollfd p{fd, POLLOUT, 0};
        if (poll(&p, 1, timeout_ms) != 1) {
          return absl::DeadlineExceededError("vhost-user: peer does not read");
        }
        continue;
      }
      return absl::ErrnoToStatus(errno, "vhost-user sendmsg");
    }
    sent += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

std::string_view RequestName(Request r) {
  switch (r) {
    case Request::kNone: return "NONE";
    case Request::kGetFeatures: return "GET_FEATURES";
    case Request::kSetFeatures: return "SET_FEATURES";
    case Request::kSetOwner: return "SET_OWNER";
    case Request::kResetOwner: return "RESET_OWNER";
    case Request::kSetMemTable: return "SET_MEM_TABLE";
    case Request::kSetLogBase: return "SET_LOG_BASE";
    case Request::kSetLogFd: return "SET_LOG_FD";
    case Request::kSetVringNum: return "SET_VRING_NUM";
    case Request::kSetVringAddr: return "SET_VRING_ADDR";
    case Request::kSetVringBase: return "SET_VRING_BASE";
    case Request::kGetVringBase: return "GET_VRING_BASE";
    case Request::kSetVringKick: return "SET_VRING_KICK";
    case Request::kSetVringCall: return "SET_VRING_CALL";
    case Request::kSetVringErr: return "SET_VRING_ERR";
    case Request::kGetProtocolFeatures: return "GET_PROTOCOL_FEATURES";
    case Request::kSetProtocolFeatures: return "SET_PROTOCOL_FEATURES";
    case Request::kGetQueueNum: return "GET_QUEUE_NUM";
    case Request::kSetVringEnable: return "SET_VRING_ENABLE";
    case Request::kSendRarp: return "SEND_RARP";
    case Request::kNetSetMtu: return "NET_SET_MTU";
    case Request::kSetBackendReqFd: return "SET_BACKEND_REQ_FD";
    case Request::kIotlbMsg: return "IOTLB_MSG";
    case Request::kSetVringEndian: return "SET_VRING_ENDIAN";
    case Request::kGetConfig: return "GET_CONFIG";
    case Request::kSetConfig: return "SET_CONFIG";
    case Request::kCreateCryptoSession: return "CREATE_CRYPTO_SESSION";
    case Request::kCloseCryptoSession: return "CLOSE_CRYPTO_SESSION";
    case Request::kPostcopyAdvise: return "POSTCOPY_ADVISE";
    case Request::kPostcopyListen: return "POSTCOPY_LISTEN";
    case Request::kPostcopyEnd: return "POSTCOPY_END";
    case Request::kGetInflightFd: return "GET_INFLIGHT_FD";
    case Request::kSetInflightFd: return "SET_INFLIGHT_FD";
    case Request::kGpuSetSocket: return "GPU_SET_SOCKET";
    case Request::kResetDevice: return "RESET_DEVICE";
    case Request::kVringKick: return "VRING_KICK";
    case Request::kGetMaxMemSlots: return "GET_MAX_MEM_SLOTS";
    case Request::kAddMemReg: return "ADD_MEM_REG";
    case Request::kRemMemReg: return "REM_MEM_REG";
    case Request::kSetStatus: return "SET_STATUS";
    case Request::kGetStatus: return "GET_STATUS";
    case Request::kGetSharedObject: return "GET_SHARED_OBJECT";
    case Request::kSetDeviceStateFd: return "SET_DEVICE_STATE_FD";
    case Request::kCheckDeviceState: return "CHECK_DEVICE_STATE";
  }
  return "UNKNOWN";
}

}  // namespace virtiofs::vhost_user
