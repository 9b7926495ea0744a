// A vhost-user front-end for tests and benchmarks: it plays the VMM (QEMU's
// role) on the vhost-user socket of a back-end, whether the back-end is this
// library's or a reference daemon such as QEMU's virtiofsd.
//
// Two levels:
//  - raw: SendRaw / Receive / PeerClosed send and read any bytes and fds,
//    for hostile tests that probe how a back-end handles bad messages;
//  - typed: Request / Call / GetU64 and the setup steps (Negotiate,
//    SetMemTable, StartVring, GetVringBase) in the order QEMU uses, each
//    checking the reply (flags exactly version 1 | REPLY, the same request
//    code, the right size) and turning any deviation into an absl::Status.
//
// Guest memory is a GuestRam (memfd regions) and each queue a DriverQueue in
// it. GuestRam maps every region at user_addr = its host address in this
// process, so the "front-end virtual addresses" sent in SET_MEM_TABLE and
// SET_VRING_ADDR are host addresses here, as they are in QEMU.
//
// Ownership: the Frontend owns the socket and, per started ring, a kick and
// a call eventfd (copies are sent to the back-end). It borrows nothing past a
// call, except that Transact writes into the GuestRam and DriverQueue given.
//
// Errors: every failure of the peer (a closed socket, a bad or missing reply,
// a timeout) is an absl::Status. Only misuse by the test itself (kicking a
// ring that was never started) aborts. Not thread-safe: one thread drives a
// Frontend.
#ifndef VIRTIOFS_TESTS_SUPPORT_FRONTEND_H_
#define VIRTIOFS_TESTS_SUPPORT_FRONTEND_H_

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tests/support/driver_queue.h"
#include "tests/support/guest_ram.h"
#include "virtiofs/fd.h"
#include "virtiofs/vhost_user_message.h"
#include "virtiofs/vhost_user_protocol.h"

namespace virtiofs::testing {

class Frontend {
 public:
  // Virtio feature bits a front-end commonly asks for (VIRTIO 1.2, 6).
  static constexpr int kVirtioFVersion1 = 32;          // VIRTIO_F_VERSION_1
  static constexpr int kVirtioRingFIndirectDesc = 28;  // VIRTIO_RING_F_INDIRECT_DESC
  static constexpr int kVirtioRingFEventIdx = 29;      // VIRTIO_RING_F_EVENT_IDX

  // Connects to the back-end listening at `socket_path`, retrying while the
  // socket does not exist yet or refuses (the daemon is still starting) until
  // `timeout_ms` has passed. DeadlineExceeded then, with the last errno.
  static absl::StatusOr<std::unique_ptr<Frontend>> Connect(const std::string& socket_path,
                                                           int timeout_ms = 5000);
  // Takes a connected stream socket (e.g. one end of a socketpair whose other
  // end a back-end in this process serves). The socket is made non-blocking.
  // Aborts if `connected` is empty (test bug).
  static std::unique_ptr<Frontend> Adopt(UniqueFd connected);

  Frontend(const Frontend&) = delete;
  Frontend& operator=(const Frontend&) = delete;
  ~Frontend();

  // The socket, or -1 after Close().
  int fd() const { return fd_.get(); }

  // How long typed requests wait for a reply (default 5000 ms).
  void set_reply_timeout_ms(int ms) { reply_timeout_ms_ = ms; }

  // ---- Raw access (hostile tests) ----------------------------------------

  // Sends `h` followed by `payload`, with `fds` attached. `h.size` is sent
  // as given (it may lie about the payload); `h.flags` too.
  absl::Status SendRaw(vhost_user::Header h, std::span<const uint8_t> payload,
                       std::span<const int> fds = {});
  // The next whole message from the back-end, waiting up to `timeout_ms`
  // (-1: forever). DeadlineExceeded on timeout (a partial message is kept
  // for the next call), Unavailable("peer closed") when the back-end closed
  // the connection, other codes for malformed data (then the connection is
  // unusable: every later call fails the same way).
  absl::StatusOr<vhost_user::Message> Receive(int timeout_ms);
  // Whether the back-end closes the connection within `timeout_ms`. Any
  // message that arrives meanwhile is read and dropped; a reset or a
  // malformed message counts as closed.
  bool PeerClosed(int timeout_ms);

  // ---- Typed requests ----------------------------------------------------

  // A request that has no reply of its own (SET_*). When REPLY_ACK was
  // negotiated it sets NEED_REPLY and waits for the u64 ack: non-zero is an
  // error (Internal, naming the request). Without REPLY_ACK it returns once
  // the message is sent (as QEMU does).
  absl::Status Request(vhost_user::Request r, std::span<const uint8_t> payload = {},
                       std::span<const int> fds = {});
  // Request() with a u64 payload.
  absl::Status RequestU64(vhost_user::Request r, uint64_t value, std::span<const int> fds = {});
  // A request with a reply of its own (GET_*): sends it without NEED_REPLY
  // and returns the reply, whose flags must be exactly version 1 | REPLY and
  // whose code must be `r` (else FailedPrecondition / DataLoss).
  absl::StatusOr<vhost_user::Message> Call(vhost_user::Request r,
                                           std::span<const uint8_t> payload = {},
                                           std::span<const int> fds = {});
  // Call() for GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM,
  // GET_MAX_MEM_SLOTS, GET_STATUS: no payload, a u64 reply.
  absl::StatusOr<uint64_t> GetU64(vhost_user::Request r);

  // ---- Session setup, in QEMU's order ------------------------------------

  // GET_FEATURES; if the back-end offers VHOST_USER_F_PROTOCOL_FEATURES and
  // it is wanted: GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES(offered &
  // wanted); then SET_OWNER and SET_FEATURES(offered & wanted). Bit 30
  // (PROTOCOL_FEATURES) counts as wanted when `protocol_features_wanted` is
  // non-zero. What was offered and agreed is kept (accessors below).
  absl::Status Negotiate(uint64_t virtio_features_wanted, uint64_t protocol_features_wanted);

  uint64_t offered_features() const { return offered_features_; }
  uint64_t offered_protocol_features() const { return offered_protocol_features_; }
  uint64_t features() const { return features_; }                    // Agreed.
  uint64_t protocol_features() const { return protocol_features_; }  // Agreed.
  bool has_feature(int bit) const { return (features_ & vhost_user::Bit(bit)) != 0; }
  bool has_protocol_feature(int bit) const {
    return (protocol_features_ & vhost_user::Bit(bit)) != 0;
  }

  // SET_MEM_TABLE with every region of `ram` (at most 8), one memfd each,
  // mmap_offset 0 and userspace_addr = the region's host address. The table
  // is remembered to translate ring addresses in StartVring.
  // FailedPrecondition if `ram` is not memfd-backed.
  absl::Status SetMemTable(const GuestRam& ram);

  // Configures ring `index` over `q` and starts it: new kick and call
  // eventfds, then SET_VRING_NUM, SET_VRING_BASE(base), SET_VRING_ADDR,
  // SET_VRING_KICK, SET_VRING_CALL, and SET_VRING_ENABLE(1) when
  // PROTOCOL_FEATURES was negotiated (without it SET_FEATURES enabled every
  // ring). The ring addresses are translated through the last SetMemTable.
  // InvalidArgument if `q` uses EVENT_IDX and it was not negotiated or the
  // other way round, or if a ring lies outside the memory table.
  absl::Status StartVring(uint32_t index, const DriverQueue& q, uint16_t base = 0);
  // SET_VRING_ENABLE(index, enable).
  absl::Status SetVringEnable(uint32_t index, bool enable);

  // Signals ring `index`'s kick eventfd. Aborts if the ring was never
  // started (test bug).
  void Kick(uint32_t index);
  // Waits up to `timeout_ms` for the back-end to signal ring `index`'s call
  // eventfd, and consumes the signal. False on timeout. Note that a back-end
  // may signal a call fd as soon as it receives it (libvhost-user does, to
  // unstick a reconnected guest), so a signal does not prove a completion:
  // look at the used ring (Transact does).
  bool WaitCall(uint32_t index, int timeout_ms);
  // The ring's eventfds (this side's copies), or -1.
  int kick_fd(uint32_t index) const;
  int call_fd(uint32_t index) const;

  // GET_VRING_BASE: stops the ring and returns its next available index.
  // The reply must name the same ring. The eventfds stay open here.
  absl::StatusOr<uint32_t> GetVringBase(uint32_t index);

  // Submits one request on ring `index` and waits for its completion:
  // allocates a device-readable buffer holding `request` and a
  // device-writable buffer of `reply_capacity` bytes from `q`'s data area
  // (either may be empty, not both), adds the chain, kicks, waits for the
  // used element (up to `timeout_ms`), and returns the bytes the back-end
  // reports it wrote. With EVENT_IDX it first sets used_event to the current
  // used index, so the completion is signalled. It kicks whatever the
  // device's notification suppression says. Errors: ResourceExhausted when the ring is full,
  // DeadlineExceeded with no completion, DataLoss when the used element
  // names another head or a length over the capacity. `q`'s data area is
  // bump-allocated: call q.ResetAlloc() between transactions when nothing
  // else is in flight. Aborts if the data area is exhausted (test bug).
  absl::StatusOr<std::vector<uint8_t>> Transact(uint32_t index, DriverQueue& q, const GuestRam& ram,
                                                std::span<const uint8_t> request,
                                                uint32_t reply_capacity, int timeout_ms = 5000);

  // Closes the socket and every eventfd. Idempotent.
  void Close();

 private:
  struct Vring {
    UniqueFd kick;
    UniqueFd call;
  };
  struct TableEntry {
    uint64_t gpa;
    uint64_t size;
    uint64_t user_addr;
  };

  explicit Frontend(UniqueFd fd);
  absl::Status Send(vhost_user::Request r, uint32_t flags, std::span<const uint8_t> payload,
                    std::span<const int> fds);
  // Reads the reply to `r` and checks its flags and code.
  absl::StatusOr<vhost_user::Message> ReceiveReply(vhost_user::Request r);
  // Front-end virtual address of guest [gpa, gpa + len) in one table entry.
  absl::StatusOr<uint64_t> GuestToUser(uint64_t gpa, uint64_t len) const;

  UniqueFd fd_;
  std::unique_ptr<vhost_user::MessageReader> reader_;
  absl::Status broken_;  // Set after a receive error: the stream is unusable.
  int reply_timeout_ms_ = 5000;
  uint64_t offered_features_ = 0;
  uint64_t offered_protocol_features_ = 0;
  uint64_t features_ = 0;
  uint64_t protocol_features_ = 0;
  std::vector<TableEntry> table_;
  std::map<uint32_t, Vring> vrings_;
};

}  // namespace virtiofs::testing

#endif  // VIRTIOFS_TESTS_SUPPORT_FRONTEND_H_
