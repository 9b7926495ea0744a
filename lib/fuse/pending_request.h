// A request between decode and reply: owns the chain, knows where the reply
// goes, and encodes each reply type into the guest's writable buffers.
#ifndef VIRTIOFS_LIB_FUSE_PENDING_REQUEST_H_
#define VIRTIOFS_LIB_FUSE_PENDING_REQUEST_H_

#include <cstdint>
#include <span>

#include "lib/fuse/fuse_compat.h"
#include "virtiofs/chain_io.h"
#include "virtiofs/fuse_session.h"

namespace virtiofs::fuse_internal {

class PendingRequest {
 public:
  // `session` (may be null) gets the request's statistics when it is done.
  PendingRequest(DescriptorChain chain, CompletionSink* sink, FuseSession* session = nullptr);
  void set_header(uint64_t unique, uint32_t opcode) {
    unique_ = unique;
    opcode_ = opcode;
  }

  uint64_t unique() const { return unique_; }
  uint32_t opcode() const { return opcode_; }
  DescriptorChain& chain() { return chain_; }

  // Space for the reply payload after the out header (0 if not even a
  // header fits).
  size_t payload_space() const { return payload_.remaining(); }
  bool header_fits() const { return header_fits_; }

  // Variable replies (READ, READDIR, xattrs, READLINK, IOCTL): the size the
  // guest asked for.
  void set_size_limit(uint32_t n) { size_limit_ = n; }
  uint32_t size_limit() const { return size_limit_; }

  // READ: the guest memory the data goes to; WRITE: the data. Kept here so
  // they stay valid until the reply, however late it comes.
  IovecVector& data_buffers() { return data_buffers_; }

  // Replies -err with no payload, then completes (deletes this).
  void Fail(int err);
  // Replies with `parts` as the payload (must fit: checked at decode time
  // for fixed replies; ERANGE otherwise), then completes (deletes this).
  void Succeed(std::initializer_list<std::span<const uint8_t>> parts);
  // Replies with the payload already written through payload() (plus
  // `extra` bytes written straight to guest memory by a READ), then
  // completes (deletes this).
  void SucceedWritten(uint32_t extra = 0);
  // Completes with no reply at all (FORGET, BATCH_FORGET, INTERRUPT).
  void CompleteSilently();
  ChainWriter& payload() { return payload_; }

 private:
  void Finish(int32_t error, uint32_t payload_bytes);
  // Records the statistics, deletes this, and hands the chain to the sink.
  void Done(int32_t error, uint32_t reply_length);

  DescriptorChain chain_;
  CompletionSink* sink_;
  FuseSession* session_;
  uint64_t start_ns_ = 0;  // 0: not timed.
  uint64_t unique_ = 0;
  uint32_t opcode_ = 0;
  bool header_fits_ = false;
  uint32_t size_limit_ = 0;
  ChainWriter header_;
  ChainWriter payload_;
  IovecVector data_buffers_;
};

template <typename T>
std::span<const uint8_t> Bytes(const T& v) {
  return {reinterpret_cast<const uint8_t*>(&v), sizeof(T)};
}

// Wire conversions.
void FillAttr(const struct stat& st, uint32_t flags, fuse_attr* out);
void FillEntry(const Entry& e, fuse_entry_out* out);
// Seconds to (sec, nsec), clamped to [0, 2^63).
void SplitTimeout(double seconds, uint64_t* sec, uint32_t* nsec);

}  // namespace virtiofs::fuse_internal

#endif  // VIRTIOFS_LIB_FUSE_PENDING_REQUEST_H_
