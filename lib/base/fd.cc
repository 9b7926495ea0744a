#include "virtiofs/fd.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

namespace virtiofs {

void UniqueFd::reset(int fd) {
  int old = std::exchange(fd_, fd < 0 ? -1 : fd);
  // close() is not retried on EINTR: on Linux the descriptor is gone either way.
  if (old >= 0) ::close(old);
}

Result<UniqueFd> UniqueFd::Dup() const {
  if (fd_ < 0) return Errno{EBADF};
  int fd = ::fcntl(fd_, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return Errno{errno};
  return UniqueFd(fd);
}

}  // namespace virtiofs
