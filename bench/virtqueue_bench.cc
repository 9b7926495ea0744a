// Micro benchmark of the split virtqueue's device side: pop + walk + add used
// + publish, for chains of 1 and 4 descriptors, direct and indirect. The
// driver side (filling the available ring) is outside the timed part.
//
// Usage: virtqueue_bench [--quick]
#include <linux/virtio_ring.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tests/support/driver_queue.h"
#include "tests/support/guest_ram.h"
#include "virtiofs/virtqueue.h"

namespace virtiofs {
namespace {

using testing::DriverQueue;
using testing::GuestRam;
using Clock = std::chrono::steady_clock;

constexpr uint32_t kQueueSize = 256;

struct Result {
  double chains_per_sec;
  double ns_per_chain;
};

Result Run(int descriptors, bool indirect, double seconds) {
  auto ram = GuestRam::CreateOrDie(8 << 20);
  DriverQueue d(*ram, kQueueSize, 0, 1 << 20, 7 << 20, /*event_idx=*/true, true);
  auto q = SplitQueue::Create(d.config(), ram->map());
  if (!q.ok()) {
    std::fprintf(stderr, "queue: %s\n", std::string(q.status().message()).c_str());
    std::exit(1);
  }
  // A FUSE-like chain: in header, in payload, out header, out payload.
  const uint32_t lens[4] = {40, 64, 16, 4096};
  const int per_chain_ring_descs = indirect ? 1 : descriptors;
  const uint32_t batch = kQueueSize / per_chain_ring_descs;
  std::vector<uint16_t> heads;
  for (uint32_t c = 0; c < batch; ++c) {
    const uint16_t first = static_cast<uint16_t>(c * per_chain_ring_descs);
    uint64_t table = indirect ? d.Alloc(16ull * descriptors, 16) : 0;
    for (int i = 0; i < descriptors; ++i) {
      const uint32_t len = descriptors == 1 ? 4096 : lens[i];
      const bool writable = descriptors == 1 ? true : i >= 2;
      const uint64_t buf = d.Alloc(len, 64);
      const bool last = i + 1 == descriptors;
      const uint16_t flags = (writable ? VRING_DESC_F_WRITE : 0) | (last ? 0 : VRING_DESC_F_NEXT);
      if (indirect) {
        vring_desc e{buf, len, flags, static_cast<uint16_t>(i + 1)};
        ram->Write(table + 16ull * i, &e, sizeof e);
      } else {
        d.SetDesc(static_cast<uint16_t>(first + i), buf, len, flags,
                  static_cast<uint16_t>(first + i + 1));
      }
    }
    if (indirect) d.SetDesc(first, table, 16u * descriptors, VRING_DESC_F_INDIRECT, 0);
    heads.push_back(first);
  }

  DescriptorChain chain;
  uint64_t chains = 0;
  Clock::duration busy{};
  uint16_t avail = 0;
  const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < deadline) {
    for (uint32_t i = 0; i < batch; ++i) d.SetAvailRing((avail + i) % kQueueSize, heads[i]);
    avail = static_cast<uint16_t>(avail + batch);
    d.SetAvailIdx(avail);
    const auto start = Clock::now();
    q->DisableNotification();
    for (;;) {
      auto r = q->Pop(&chain);
      if (!r.ok() || !*r) break;
      (void)q->AddUsed(chain.head(), chain.writable_bytes());
    }
    q->PublishUsed();
    q->EnableNotification();
    busy += Clock::now() - start;
    chains += batch;
  }
  const double secs = std::chrono::duration<double>(busy).count();
  return {chains / secs, secs * 1e9 / chains};
}

}  // namespace
}  // namespace virtiofs

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const double seconds = quick ? 0.1 : 0.5;
  std::printf("split virtqueue, device side: pop + walk + add used + publish (queue size %u)\n",
              virtiofs::kQueueSize);
  std::printf("%-12s %-9s %16s %12s\n", "descriptors", "layout", "chains/s", "ns/chain");
  for (int descs : {1, 4}) {
    for (bool indirect : {false, true}) {
      auto r = virtiofs::Run(descs, indirect, seconds);
      std::printf("%-12d %-9s %16.0f %12.1f\n", descs, indirect ? "indirect" : "direct",
                  r.chains_per_sec, r.ns_per_chain);
    }
  }
  return 0;
}
