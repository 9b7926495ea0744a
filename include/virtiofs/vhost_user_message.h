// vhost-user message framing over a unix stream socket, with file
// descriptors passed as SCM_RIGHTS. Used by the back-end (reading requests,
// sending replies) and by front-ends (tests, benchmarks).
//
// Every descriptor received is owned by a UniqueFd from the moment recvmsg
// returns, so a message that is rejected later closes its fds.
#ifndef VIRTIOFS_VHOST_USER_MESSAGE_H_
#define VIRTIOFS_VHOST_USER_MESSAGE_H_

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "virtiofs/fd.h"
#include "virtiofs/vhost_user_protocol.h"

namespace virtiofs::vhost_user {

struct Message {
  Header header{};
  std::vector<uint8_t> payload;
  std::vector<UniqueFd> fds;

  Request request() const { return static_cast<Request>(header.request); }
  bool need_reply() const { return (header.flags & kNeedReplyFlag) != 0; }

  // The payload as a T; InvalidArgument unless it is exactly sizeof(T) bytes.
  template <typename T>
  absl::StatusOr<T> PayloadAs() const {
    static_assert(std::is_trivially_copyable_v<T>);
    if (payload.size() != sizeof(T)) return SizeError(sizeof(T));
    T value;
    std::memcpy(&value, payload.data(), sizeof(T));
    return value;
  }

 private:
  absl::Status SizeError(size_t want) const;
};

// Reads messages from a stream socket, whether blocking or not. A message may
// arrive in pieces; Read() keeps what it has and returns nullopt until the
// whole message is in (on a non-blocking socket).
class MessageReader {
 public:
  // `fd` is borrowed; it must outlive the reader.
  explicit MessageReader(int fd) : fd_(fd) {}

  // A complete message, nullopt on EAGAIN, or an error:
  //  - Unavailable("peer closed") at a message boundary,
  //  - DataLoss when the peer closes in the middle of a message,
  //  - InvalidArgument for a bad version, a payload over kMaxPayload, more
  //    than kMaxFds descriptors, or truncated control data,
  //  - the recvmsg errno otherwise.
  // After an error the reader is unusable: close the connection.
  absl::StatusOr<std::optional<Message>> Read();

 private:
  // recvmsg into [buf, buf+len); adopts any fds. Returns bytes, 0 at EOF,
  // or nullopt on EAGAIN.
  absl::StatusOr<std::optional<size_t>> Receive(uint8_t* buf, size_t len);

  int fd_;
  uint8_t header_bytes_[sizeof(Header)] = {};
  size_t header_got_ = 0;
  Message pending_;
  size_t payload_got_ = 0;
};

// Blocking read of one message (for front-ends and tests on blocking sockets).
absl::StatusOr<Message> ReceiveMessage(int fd);

// Sends header + payload, with `fds` attached to the first byte. Waits (up to
// `timeout_ms`) when a non-blocking socket is full. `header.size` is set from
// the payload. Never raises SIGPIPE.
absl::Status SendMessage(int fd, Header header, std::span<const uint8_t> payload,
                         std::span<const int> fds = {}, int timeout_ms = 5000);

// Payload helpers.
template <typename T>
std::span<const uint8_t> AsBytes(const T& value) {
  static_assert(std::is_trivially_copyable_v<T>);
  return {reinterpret_cast<const uint8_t*>(&value), sizeof(T)};
}

}  // namespace virtiofs::vhost_user

#endif  // VIRTIOFS_VHOST_USER_MESSAGE_H_
