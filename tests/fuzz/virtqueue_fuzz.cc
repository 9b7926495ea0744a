// Fuzz target: the split virtqueue over arbitrary ring and descriptor memory.
// Input: byte 0 picks the queue size (1..256, a power of two) and the
// features; the rest fills guest RAM from address 0 (descriptor table, avail
// ring, buffers). Every chain popped is read and written through the chain
// I/O classes and given back; nothing may crash, hang or touch memory
// outside guest RAM (each region has a guard page).
#include <cstdint>
#include <cstring>
#include <vector>

#include "tests/support/guest_ram.h"
#include "virtiofs/chain_io.h"
#include "virtiofs/virtqueue.h"

using namespace virtiofs;  // NOLINT: a fuzz target.

namespace {

// Two regions with a hole between them, so that chains can span and miss.
constexpr uint64_t kRegion = 64 * 1024;
constexpr uint64_t kSecond = 0x20000;

testing::GuestRam& Ram() {
  static auto ram = testing::GuestRam::Create({{0, kRegion}, {kSecond, kRegion}},
                                              testing::GuestRam::Backing::kAnonymous);
  return **ram;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  testing::GuestRam& ram = Ram();
  ram.Fill(0, 0, kRegion);
  ram.Fill(kSecond, 0, kRegion);
  const size_t n = std::min<size_t>(size - 1, 2 * kRegion);
  ram.Write(0, data + 1, std::min<size_t>(n, kRegion));
  if (n > kRegion) ram.Write(kSecond, data + 1 + kRegion, n - kRegion);

  VirtqueueConfig c;
  c.size = 1u << (data[0] & 7);  // 1..128
  c.indirect_desc = (data[0] & 0x10) != 0;
  c.event_idx = (data[0] & 0x20) != 0;
  c.desc_addr = 0;
  c.avail_addr = 16ull * c.size;
  c.used_addr = (c.avail_addr + 6 + 2ull * c.size + 3) & ~3ull;
  auto q = SplitQueue::Create(c, ram.map(), data[0] & 0x40 ? 0xfff0 : 0);
  if (!q.ok()) return 0;
  DescriptorChain chain;
  std::vector<uint8_t> scratch;
  for (int i = 0; i < 300; ++i) {
    auto r = q->Pop(&chain);
    if (!r.ok()) {
      if (q->broken()) break;
      continue;
    }
    if (!*r) break;
    ChainReader in(chain.readable());
    scratch.resize(in.remaining());
    (void)in.Read(scratch.data(), scratch.size());
    ChainWriter out(chain.writable());
    const size_t w = std::min<size_t>(out.remaining(), scratch.size());
    (void)out.Write(scratch.data(), w);
    (void)q->AddUsed(chain.head(), static_cast<uint32_t>(w));
    if (i % 7 == 0) q->PublishUsed();
  }
  q->PublishUsed();
  (void)q->EnableNotification();
  return 0;
}
