// UniqueFd: sole owner of a file descriptor; closes it on destruction.
#ifndef VIRTIOFS_FD_H_
#define VIRTIOFS_FD_H_

#include <utility>

#include "virtiofs/result.h"

namespace virtiofs {

class UniqueFd {
 public:
  UniqueFd() = default;
  // Takes ownership of `fd`; a negative value means "empty".
  explicit UniqueFd(int fd) : fd_(fd < 0 ? -1 : fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }

  // Gives up ownership without closing.
  int release() { return std::exchange(fd_, -1); }
  // Closes the current descriptor (if any) and takes `fd`.
  void reset(int fd = -1);

  // A new owner of a duplicate (F_DUPFD_CLOEXEC) of this descriptor.
  Result<UniqueFd> Dup() const;

 private:
  int fd_ = -1;
};

}  // namespace virtiofs

#endif  // VIRTIOFS_FD_H_
