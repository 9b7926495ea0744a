// Early-return macros for absl::Status, absl::StatusOr<T> and Result<T>.
//
// Abseil 20220623 has no ASSIGN_OR_RETURN, so the library carries its own.
// The public names are prefixed so that including this header never clashes
// with a VMM's own macros:
//
//   VIRTIOFS_RETURN_IF_ERROR(DoThing());             // Status, StatusOr or Result
//   VIRTIOFS_ASSIGN_OR_RETURN(auto fd, OpenThing()); // StatusOr or Result
//
// The error propagates to the enclosing function's return type:
//   - absl::Status / absl::StatusOr<U> from a Status error;
//   - absl::Status / absl::StatusOr<U> from a Result errno (absl::ErrnoToStatus);
//   - Result<U> from a Result errno.
// Converting a Status into a Result would lose information and does not compile.
#ifndef VIRTIOFS_STATUS_MACROS_H_
#define VIRTIOFS_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "virtiofs/result.h"

namespace virtiofs::status_internal {

// Holds the error of a failed expression until it converts into the
// enclosing function's return type.
class StatusError {
 public:
  explicit StatusError(absl::Status s) : status_(std::move(s)) {}
  operator absl::Status() && { return std::move(status_); }  // NOLINT
  template <typename T>
  operator absl::StatusOr<T>() && {  // NOLINT
    return absl::StatusOr<T>(std::move(status_));
  }

 private:
  absl::Status status_;
};

class ErrnoError {
 public:
  explicit ErrnoError(int err) : err_(err) {}
  operator absl::Status() const { return absl::ErrnoToStatus(err_, ""); }  // NOLINT
  template <typename T>
  operator absl::StatusOr<T>() const {  // NOLINT
    return absl::StatusOr<T>(absl::ErrnoToStatus(err_, ""));
  }
  template <typename T>
  operator Result<T>() const {  // NOLINT
    return Errno{err_};
  }

 private:
  int err_;
};

inline bool IsOk(const absl::Status& s) { return s.ok(); }
template <typename T>
bool IsOk(const absl::StatusOr<T>& s) { return s.ok(); }
template <typename T>
bool IsOk(const Result<T>& r) { return r.ok(); }

inline StatusError ToError(absl::Status&& s) { return StatusError(std::move(s)); }
template <typename T>
StatusError ToError(absl::StatusOr<T>&& s) { return StatusError(std::move(s).status()); }
template <typename T>
ErrnoError ToError(Result<T>&& r) { return ErrnoError(r.error()); }

template <typename T>
decltype(auto) Unwrap(absl::StatusOr<T>&& s) { return *std::move(s); }
template <typename T>
decltype(auto) Unwrap(Result<T>&& r) { return *std::move(r); }

}  // namespace virtiofs::status_internal

#define VIRTIOFS_STATUS_CONCAT_INNER_(a, b) a##b
#define VIRTIOFS_STATUS_CONCAT_(a, b) VIRTIOFS_STATUS_CONCAT_INNER_(a, b)

#define VIRTIOFS_RETURN_IF_ERROR(expr)                                        \
  do {                                                                        \
    auto virtiofs_status_ = (expr);                                           \
    if (!::virtiofs::status_internal::IsOk(virtiofs_status_))                 \
      return ::virtiofs::status_internal::ToError(std::move(virtiofs_status_)); \
  } while (0)

#define VIRTIOFS_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr)           \
  auto tmp = (expr);                                               \
  if (!::virtiofs::status_internal::IsOk(tmp))                     \
    return ::virtiofs::status_internal::ToError(std::move(tmp));   \
  lhs = ::virtiofs::status_internal::Unwrap(std::move(tmp))

#define VIRTIOFS_ASSIGN_OR_RETURN(lhs, expr) \
  VIRTIOFS_ASSIGN_OR_RETURN_IMPL_(           \
      VIRTIOFS_STATUS_CONCAT_(virtiofs_statusor_, __LINE__), lhs, expr)

#endif  // VIRTIOFS_STATUS_MACROS_H_
