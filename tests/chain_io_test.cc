#include <catch2/catch.hpp>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "virtiofs/chain_io.h"

namespace virtiofs {
namespace {

// Three buffers of 3, 0 and 5 bytes: reads must cross the boundaries and
// skip the empty one.
struct Buffers {
  Buffers() {
    std::iota(a.begin(), a.end(), 1);
    std::iota(c.begin(), c.end(), 10);
    iov = {iovec{a.data(), a.size()}, iovec{nullptr, 0}, iovec{c.data(), c.size()}};
  }
  std::vector<uint8_t> a = std::vector<uint8_t>(3);
  std::vector<uint8_t> c = std::vector<uint8_t>(5);
  std::vector<iovec> iov;
};

TEST_CASE("ChainReader reads across buffers") {
  Buffers b;
  ChainReader r(b.iov);
  CHECK(r.remaining() == 8);
  uint8_t two[2];
  REQUIRE(r.Read(two, 2).ok());
  CHECK(two[0] == 1);
  CHECK(two[1] == 2);
  auto v = r.ReadObject<uint32_t>();  // Bytes 3, 10, 11, 12.
  REQUIRE(v.ok());
  uint8_t expect[4] = {3, 10, 11, 12};
  uint32_t want;
  std::memcpy(&want, expect, 4);
  CHECK(*v == want);
  CHECK(r.consumed() == 6);
  CHECK(r.remaining() == 2);

  SECTION("short read fails and consumes nothing") {
    uint8_t three[3];
    CHECK(absl::IsOutOfRange(r.Read(three, 3)));
    CHECK(r.remaining() == 2);
    CHECK(absl::IsOutOfRange(r.ReadObject<uint64_t>().status()));
    CHECK(absl::IsOutOfRange(r.Skip(3)));
    CHECK(r.Skip(2).ok());
    CHECK(r.remaining() == 0);
  }
  SECTION("TakeIovecs hands out the bytes without copying") {
    IovecVector out;
    REQUIRE(r.TakeIovecs(2, &out).ok());
    REQUIRE(out.size() == 1);
    CHECK(out[0].iov_base == b.c.data() + 3);
    CHECK(out[0].iov_len == 2);
    CHECK(r.remaining() == 0);
    CHECK(absl::IsOutOfRange(r.TakeIovecs(1, &out)));
  }
}

TEST_CASE("TakeIovecs across several buffers") {
  Buffers b;
  ChainReader r(b.iov);
  REQUIRE(r.Skip(1).ok());
  IovecVector out;
  REQUIRE(r.TakeIovecs(6, &out).ok());
  REQUIRE(out.size() == 2);  // The empty buffer is not handed out.
  CHECK(out[0].iov_base == b.a.data() + 1);
  CHECK(out[0].iov_len == 2);
  CHECK(out[1].iov_base == b.c.data());
  CHECK(out[1].iov_len == 4);
}

TEST_CASE("ChainWriter writes, peeks, advances and splits") {
  Buffers b;
  ChainWriter w(b.iov);
  SECTION("write across buffers") {
    const uint8_t data[5] = {100, 101, 102, 103, 104};
    REQUIRE(w.Write(data, 5).ok());
    CHECK(b.a[2] == 102);
    CHECK(b.c[0] == 103);
    CHECK(b.c[1] == 104);
    CHECK(w.bytes_written() == 5);
    CHECK(absl::IsOutOfRange(w.Write(data, 4)));  // Only 3 left: nothing written.
    CHECK(b.c[2] == 12);
    CHECK(w.bytes_written() == 5);
  }
  SECTION("peek for preadv, then advance by what was written") {
    IovecVector out;
    REQUIRE(w.PeekIovecs(8, &out).ok());
    CHECK(out.size() == 2);
    CHECK(w.bytes_written() == 0);
    REQUIRE(w.Advance(4).ok());
    CHECK(w.bytes_written() == 4);
    CHECK(absl::IsOutOfRange(w.PeekIovecs(5, &out)));
  }
  SECTION("split: payload first, header last") {
    auto payload = w.SplitAt(4);
    REQUIRE(payload.ok());
    CHECK(w.remaining() == 4);
    CHECK(payload->remaining() == 4);
    const uint8_t body[4] = {1, 2, 3, 4};
    REQUIRE(payload->Write(body, 4).ok());
    CHECK(b.c[1] == 1);  // Byte 4 of the chain is c[1].
    CHECK(b.c[4] == 4);
    const uint32_t header = 0xdeadbeef;
    REQUIRE(w.WriteObject(header).ok());
    CHECK(absl::IsOutOfRange(w.Write(body, 1)));  // The head part ends at the split.
    uint8_t first[4] = {b.a[0], b.a[1], b.a[2], b.c[0]};
    uint32_t got;
    std::memcpy(&got, first, 4);
    CHECK(got == header);
    CHECK(w.bytes_written() + payload->bytes_written() == 8);
    CHECK(absl::IsOutOfRange(w.SplitAt(1).status()));
  }
  SECTION("split at the ends") {
    auto all = w.SplitAt(0);
    REQUIRE(all.ok());
    CHECK(w.remaining() == 0);
    CHECK(all->remaining() == 8);
    auto none = all->SplitAt(8);
    REQUIRE(none.ok());
    CHECK(none->remaining() == 0);
    CHECK(all->remaining() == 8);
  }
}

TEST_CASE("empty chains") {
  ChainReader r(std::span<const iovec>{});
  CHECK(r.remaining() == 0);
  CHECK(r.Skip(0).ok());
  CHECK(absl::IsOutOfRange(r.ReadObject<uint8_t>().status()));
  ChainWriter w(std::span<const iovec>{});
  CHECK(absl::IsOutOfRange(w.WriteObject(uint8_t{1})));
}

}  // namespace
}  // namespace virtiofs
