// Byte-level access to the two halves of a descriptor chain.
//
// ChainReader walks the device-readable buffers (the request), ChainWriter the
// device-writable ones (the reply). Both work on host iovecs that point into
// guest memory; neither owns them (keep the DescriptorChain alive).
//
// Reads copy bytes out of guest memory exactly once, so a value read from a
// reader can be validated and then trusted even though the guest may change
// the buffer afterwards. Bulk payloads are not copied at all: TakeIovecs and
// PeekIovecs hand out iovecs for pwritev/preadv or io_uring.
#ifndef VIRTIOFS_CHAIN_IO_H_
#define VIRTIOFS_CHAIN_IO_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstring>
#include <span>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "virtiofs/guest_memory.h"

namespace virtiofs {

// A cursor over a list of buffers: shared by reader and writer.
class IovecCursor {
 public:
  IovecCursor() = default;
  explicit IovecCursor(std::span<const iovec> iov);

  // Bytes from the cursor to the end.
  size_t remaining() const { return remaining_; }
  // Bytes passed so far.
  size_t consumed() const { return total_ - remaining_; }

  // Moves the cursor forward; fails (OutOfRange) and stays put if fewer than
  // `len` bytes remain.
  absl::Status Advance(size_t len);
  // Appends iovecs covering the next `len` bytes, without moving.
  absl::Status Peek(size_t len, IovecVector* out) const;
  // Copies the next `len` bytes out of (or into) the buffers and moves on.
  absl::Status CopyOut(void* dst, size_t len);
  absl::Status CopyIn(const void* src, size_t len);
  // Splits off everything from `offset` bytes ahead to the end: the returned
  // cursor covers [offset, end) and this one is limited to [0, offset).
  absl::StatusOr<IovecCursor> SplitAt(size_t offset);

 private:
  absl::Status ShortError(size_t len) const;
  // Passes each chunk of the next `len` bytes to fn(pointer, size) and moves on.
  template <typename Fn>
  void Consume(size_t len, Fn&& fn);
  std::span<const iovec> iov_;
  size_t index_ = 0;   // Current iovec.
  size_t offset_ = 0;  // Offset inside iov_[index_].
  size_t remaining_ = 0;
  size_t total_ = 0;
  // Entries past `remaining_` bytes from the cursor are never touched, which
  // is how SplitAt limits the head part without copying the list.
};

// Reads the request out of a chain's readable buffers.
class ChainReader {
 public:
  explicit ChainReader(std::span<const iovec> readable) : cursor_(readable) {}

  size_t remaining() const { return cursor_.remaining(); }
  size_t consumed() const { return cursor_.consumed(); }

  // Copies `len` bytes; OutOfRange if the chain is shorter.
  absl::Status Read(void* dst, size_t len) { return cursor_.CopyOut(dst, len); }
  template <typename T>
  absl::StatusOr<T> ReadObject() {
    static_assert(std::is_trivially_copyable_v<T>);
    T value;
    if (absl::Status s = cursor_.CopyOut(&value, sizeof(T)); !s.ok()) return s;
    return value;
  }
  absl::Status Skip(size_t len) { return cursor_.Advance(len); }
  // Appends iovecs over the next `len` bytes and consumes them (a WRITE
  // payload going to pwritev without a copy).
  absl::Status TakeIovecs(size_t len, IovecVector* out) {
    if (absl::Status s = cursor_.Peek(len, out); !s.ok()) return s;
    return cursor_.Advance(len);
  }

 private:
  IovecCursor cursor_;
};

// Writes the reply into a chain's writable buffers.
class ChainWriter {
 public:
  explicit ChainWriter(std::span<const iovec> writable) : cursor_(writable) {}

  // Space left.
  size_t remaining() const { return cursor_.remaining(); }
  // Bytes written (or skipped over with Advance) so far.
  size_t bytes_written() const { return cursor_.consumed(); }

  // Copies `len` bytes in; OutOfRange (and nothing written) if they do not fit.
  absl::Status Write(const void* src, size_t len) { return cursor_.CopyIn(src, len); }
  template <typename T>
  absl::Status WriteObject(const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    return cursor_.CopyIn(&value, sizeof(T));
  }
  // Appends iovecs over the next `len` bytes of space without counting them
  // as written: hand them to preadv/io_uring, then Advance by what it wrote.
  absl::Status PeekIovecs(size_t len, IovecVector* out) const { return cursor_.Peek(len, out); }
  absl::Status Advance(size_t len) { return cursor_.Advance(len); }
  // Splits the remaining space at `offset`: the returned writer gets
  // [offset, end), this one keeps [0, offset). For a reply header written
  // after its payload.
  absl::StatusOr<ChainWriter> SplitAt(size_t offset) {
    auto c = cursor_.SplitAt(offset);
    if (!c.ok()) return c.status();
    return ChainWriter(*c);
  }

 private:
  explicit ChainWriter(IovecCursor cursor) : cursor_(cursor) {}
  IovecCursor cursor_;
};

}  // namespace virtiofs

#endif  // VIRTIOFS_CHAIN_IO_H_
