// Runs FUSE requests through a FuseSession over a real split queue in guest
// RAM, without vhost-user: for backend tests. Answers may come from any
// thread; Call() waits for them.
#ifndef VIRTIOFS_TESTS_SUPPORT_FUSE_HARNESS_H_
#define VIRTIOFS_TESTS_SUPPORT_FUSE_HARNESS_H_

#include <condition_variable>
#include <memory>
#include <mutex>

#include "tests/support/driver_queue.h"
#include "tests/support/fuse_request.h"
#include "tests/support/guest_ram.h"
#include "virtiofs/fuse_session.h"
#include "virtiofs/virtqueue.h"

namespace virtiofs::testing {

class FuseHarness : public CompletionSink {
 public:
  explicit FuseHarness(Backend* backend, FuseSessionOptions options = {});

  // Sends `request` (header and body, as built by fuse_request.h) with a
  // reply buffer of `reply_size` bytes; waits up to 5 s for the answer.
  // Aborts the test (REQUIRE) on a timeout or a malformed reply.
  FuseReply Call(std::span<const uint8_t> request, uint32_t reply_size = 4096);
  // INIT with `flags` (FUSE_INIT_EXT is added for flags2); returns the reply.
  FuseReply Init(uint64_t flags = 0);
  uint64_t NextUnique() { return unique_ += 2; }

  FuseSession& session() { return session_; }
  const GuestRam& ram() const { return *ram_; }

  void Complete(DescriptorChain chain, uint32_t reply_length) override;

 private:
  FuseSession session_;
  std::unique_ptr<GuestRam> ram_;
  DriverQueue driver_;
  SplitQueue queue_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  uint64_t unique_ = 0;
};

}  // namespace virtiofs::testing

#endif  // VIRTIOFS_TESTS_SUPPORT_FUSE_HARNESS_H_
