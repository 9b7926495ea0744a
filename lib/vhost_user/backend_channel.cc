#include <poll.h>

#include "absl/strings/str_format.h"
#include "virtiofs/vhost_user.h"

namespace virtiofs {

using vhost_user::Header;

absl::StatusOr<uint64_t> BackendChannel::Send(vhost_user::BackendRequest request,
                                              std::span<const uint8_t> payload,
                                              std::span<const int> fds, bool need_reply) {
  if (!fds.empty() && !send_fd_) {
    return absl::FailedPreconditionError("backend channel: BACKEND_SEND_FD not negotiated");
  }
  std::lock_guard lock(mu_);
  if (!fd_.valid()) return absl::FailedPreconditionError("backend channel closed");
  const bool wait = need_reply && reply_ack_;
  Header h{static_cast<uint32_t>(request),
           vhost_user::kVersion | (wait ? vhost_user::kNeedReplyFlag : 0u), 0};
  if (absl::Status s = vhost_user::SendMessage(fd_.get(), h, payload, fds); !s.ok()) return s;
  if (!wait) return 0;
  pollfd p{fd_.get(), POLLIN, 0};
  if (poll(&p, 1, 5000) != 1) {
    return absl::DeadlineExceededError("backend channel: no reply from the front-end");
  }
  auto reply = vhost_user::ReceiveMessage(fd_.get());
  if (!reply.ok()) return reply.status();
  if (reply->header.request != h.request ||
      reply->header.flags != (vhost_user::kVersion | vhost_user::kReplyFlag)) {
    return absl::DataLossError(absl::StrFormat(
        "backend channel: bad reply (request %d flags 0x%x)", reply->header.request,
        reply->header.flags));
  }
  return reply->PayloadAs<uint64_t>();
}

}  // namespace virtiofs
