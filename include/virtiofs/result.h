// Result<T>: a value or an errno.
//
// The Backend boundary speaks errno (FUSE replies carry -errno), so operations
// that can fail with a file-system error return Result<T> rather than
// absl::Status: the errno survives exactly (ENOENT is not ENOTDIR).
//
//   Result<int> OpenThing() {
//     int fd = open(...);
//     if (fd < 0) return Errno{errno};
//     return fd;
//   }
//
// A Result in the error state holds a positive errno value. Accessing the value
// of an error Result is a programming error and aborts.
#ifndef VIRTIOFS_RESULT_H_
#define VIRTIOFS_RESULT_H_

#include <cerrno>
#include <cstdlib>
#include <type_traits>
#include <utility>
#include <variant>

namespace virtiofs {

// A positive errno value used to build an error Result.
struct Errno {
  int value;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  static_assert(!std::is_same_v<std::decay_t<T>, Errno>, "Result<Errno> is not allowed");
  static_assert(!std::is_reference_v<T>, "Result<T&> is not allowed");

  // An error. `e.value` must be a positive errno; anything else becomes EIO so
  // that an error Result never reads as success on the wire.
  Result(Errno e) : v_(Errno{e.value > 0 ? e.value : EIO}) {}  // NOLINT: implicit by design
  template <typename U = T,
            typename = std::enable_if_t<std::is_constructible_v<T, U&&> &&
                                        !std::is_same_v<std::decay_t<U>, Errno> &&
                                        !std::is_same_v<std::decay_t<U>, Result>>>
  Result(U&& value) : v_(std::in_place_index<0>, std::forward<U>(value)) {}  // NOLINT

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  // The errno, or 0 when ok().
  int error() const { return ok() ? 0 : std::get<1>(v_).value; }

  T& value() & { Check(); return std::get<0>(v_); }
  const T& value() const& { Check(); return std::get<0>(v_); }
  T&& value() && { Check(); return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  void Check() const {
    if (!ok()) std::abort();  // Programming error: value of an error Result.
  }
  std::variant<T, Errno> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Errno e) : err_(e.value > 0 ? e.value : EIO) {}  // NOLINT: implicit by design
  bool ok() const { return err_ == 0; }
  explicit operator bool() const { return ok(); }
  int error() const { return err_; }

 private:
  int err_ = 0;
};

// Result<void> success value, for symmetry: `return Ok();`.
inline Result<void> Ok() { return {}; }

// Runs `fn` while it fails with EINTR and returns its result; `fn` returns a
// syscall-style value (-1 and errno on failure).
template <typename Fn>
auto RetryOnEintr(Fn&& fn) {
  for (;;) {
    auto r = fn();
    if (r != -1 || errno != EINTR) return r;
  }
}

}  // namespace virtiofs

#endif  // VIRTIOFS_RESULT_H_
