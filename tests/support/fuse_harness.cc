#include "tests/support/fuse_harness.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace virtiofs::testing {

namespace {
SplitQueue MakeQueue(const DriverQueue& d, const GuestRam& ram) {
  auto q = SplitQueue::Create(d.config(), ram.map());
  if (!q.ok()) {
    std::fprintf(stderr, "FuseHarness: %s\n", std::string(q.status().message()).c_str());
    std::abort();
  }
  return *std::move(q);
}
}  // namespace

FuseHarness::FuseHarness(Backend* backend, FuseSessionOptions options)
    : session_(backend, options),
      ram_(GuestRam::CreateOrDie(16 << 20)),
      driver_(*ram_, 256, 0, 0x100000, (16 << 20) - 0x100000),
      queue_(MakeQueue(driver_, *ram_)) {}

void FuseHarness::Complete(DescriptorChain chain, uint32_t reply_length) {
  std::lock_guard lock(mu_);
  (void)queue_.AddUsed(chain.head(), reply_length);
  queue_.PublishUsed();
  done_ = true;
  cv_.notify_all();
}

FuseReply FuseHarness::Call(std::span<const uint8_t> request, uint32_t reply_size) {
  driver_.ResetAlloc();
  const uint64_t in = driver_.Alloc(request.size());
  const uint64_t out = driver_.Alloc(std::max<uint32_t>(reply_size, 1));
  ram_->Write(in, request.data(), request.size());
  std::vector<DriverQueue::Buffer> bufs = {{in, static_cast<uint32_t>(request.size()), false}};
  if (reply_size > 0) bufs.push_back({out, reply_size, true});
  REQUIRE(driver_.AddChain(bufs));
  DescriptorChain chain;
  {
    std::lock_guard lock(mu_);
    done_ = false;
    auto popped = queue_.Pop(&chain);
    REQUIRE(popped.ok());
    REQUIRE(*popped);
  }
  session_.Handle(std::move(chain), this);
  {
    std::unique_lock lock(mu_);
    REQUIRE(cv_.wait_for(lock, std::chrono::seconds(5), [this] { return done_; }));
  }
  auto used = driver_.PopUsed();
  REQUIRE(used);
  std::vector<uint8_t> bytes(used->len);
  if (used->len > 0) ram_->Read(out, bytes.data(), bytes.size());
  FuseReply reply;
  if (bytes.size() >= sizeof(fuse_out_header)) {
    std::memcpy(&reply.header, bytes.data(), sizeof reply.header);
    REQUIRE(reply.header.len == bytes.size());
    reply.body.assign(bytes.begin() + sizeof(fuse_out_header), bytes.end());
  }
  return reply;
}

FuseReply FuseHarness::Init(uint64_t flags) {
  auto r = Call(BuildInit(NextUnique(), static_cast<uint32_t>(flags) | FUSE_INIT_EXT,
                          static_cast<uint32_t>(flags >> 32)));
  REQUIRE(r.error() == 0);
  return r;
}

}  // namespace virtiofs::testing
