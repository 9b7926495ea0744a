#include "virtiofs/chain_io.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace virtiofs {

IovecCursor::IovecCursor(std::span<const iovec> iov) : iov_(iov) {
  for (const iovec& v : iov) total_ += v.iov_len;  // A chain's total fits in 32 bits.
  remaining_ = total_;
}

absl::Status IovecCursor::ShortError(size_t len) const {
  return absl::OutOfRangeError(
      absl::StrFormat("need %d bytes, %d left in the chain", len, remaining_));
}

template <typename Fn>
void IovecCursor::Consume(size_t len, Fn&& fn) {
  // Callers checked len <= remaining_, so the loop stays inside iov_.
  remaining_ -= len;
  while (len > 0) {
    size_t take = std::min(iov_[index_].iov_len - offset_, len);
    if (take > 0) fn(static_cast<uint8_t*>(iov_[index_].iov_base) + offset_, take);
    len -= take;
    offset_ += take;
    if (offset_ == iov_[index_].iov_len) {
      ++index_;
      offset_ = 0;
    }
  }
}

absl::Status IovecCursor::Advance(size_t len) {
  if (len > remaining_) return ShortError(len);
  Consume(len, [](uint8_t*, size_t) {});
  return absl::OkStatus();
}

absl::Status IovecCursor::Peek(size_t len, IovecVector* out) const {
  if (len > remaining_) return ShortError(len);
  size_t i = index_;
  size_t off = offset_;
  while (len > 0) {
    size_t take = std::min(iov_[i].iov_len - off, len);
    if (take > 0) out->push_back(iovec{static_cast<uint8_t*>(iov_[i].iov_base) + off, take});
    len -= take;
    ++i;
    off = 0;
  }
  return absl::OkStatus();
}

absl::Status IovecCursor::CopyOut(void* dst, size_t len) {
  if (len > remaining_) return ShortError(len);
  auto* p = static_cast<uint8_t*>(dst);
  Consume(len, [&p](uint8_t* guest, size_t n) {
    std::memcpy(p, guest, n);
    p += n;
  });
  return absl::OkStatus();
}

absl::Status IovecCursor::CopyIn(const void* src, size_t len) {
  if (len > remaining_) return ShortError(len);
  const auto* p = static_cast<const uint8_t*>(src);
  Consume(len, [&p](uint8_t* guest, size_t n) {
    std::memcpy(guest, p, n);
    p += n;
  });
  return absl::OkStatus();
}

absl::StatusOr<IovecCursor> IovecCursor::SplitAt(size_t offset) {
  if (offset > remaining_) return ShortError(offset);
  IovecCursor tail = *this;
  if (absl::Status s = tail.Advance(offset); !s.ok()) return s;
  tail.total_ = tail.remaining_;
  total_ = consumed() + offset;
  remaining_ = offset;
  return tail;
}

}  // namespace virtiofs
