// FUSE requests as the guest's virtiofs driver sends them, and replies as a
// device returns them, for tests and benchmarks (wire format from
// <linux/fuse.h>; virtio-fs carries one request per descriptor chain:
// device-readable fuse_in_header + body, then device-writable space for
// fuse_out_header + body).
//
// Builders return the request bytes; submit them with Frontend::Transact or
// FuseTransact below. Parsers check what the kernel checks of a reply
// (fs/fuse/dev.c): the header's length equals the bytes the device wrote,
// the error is 0 or a negative errno above -512, an error reply has no body,
// and the unique id is the request's.
#ifndef VIRTIOFS_TESTS_SUPPORT_FUSE_REQUEST_H_
#define VIRTIOFS_TESTS_SUPPORT_FUSE_REQUEST_H_

#include <linux/fuse.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tests/support/driver_queue.h"
#include "tests/support/frontend.h"
#include "tests/support/guest_ram.h"

static_assert(FUSE_KERNEL_MINOR_VERSION >= 36, "needs FUSE_INIT_EXT (protocol 7.36)");

namespace virtiofs::testing {

// What a Linux guest asks for at mount, give or take: asynchronous reads,
// big writes, max_pages, parallel directory operations, and the second
// flags word (FUSE_INIT_EXT).
inline constexpr uint32_t kDefaultInitFlags =
    FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_PARALLEL_DIROPS | FUSE_INIT_EXT;
inline constexpr uint32_t kDefaultMaxReadahead = 128 * 1024;
// Room for any reply a test expects besides READ / READDIR data.
inline constexpr uint32_t kDefaultReplyCapacity = 4096;

// Unique ids as the kernel hands them out: even, increasing, never 0 (the
// low bit marks interrupts, FUSE_INT_REQ_BIT).
class FuseUniqueIds {
 public:
  uint64_t Next() { return next_ += 2; }

 private:
  uint64_t next_ = 0;
};

// fuse_in_header followed by `body`; header.len is the total length.
std::vector<uint8_t> BuildRequest(uint32_t opcode, uint64_t unique, uint64_t nodeid,
                                  std::span<const uint8_t> body, uint32_t uid = 0, uint32_t gid = 0,
                                  uint32_t pid = 0);

// FUSE_INIT (nodeid 0) with fuse_init_in {7, minor, max_readahead, flags,
// flags2}. flags2 is meaningful only with FUSE_INIT_EXT in `flags`.
std::vector<uint8_t> BuildInit(uint64_t unique, uint32_t flags = kDefaultInitFlags,
                               uint32_t flags2 = 0, uint32_t max_readahead = kDefaultMaxReadahead,
                               uint32_t minor = FUSE_KERNEL_MINOR_VERSION);

// FUSE_LOOKUP of `name` in directory `parent` (FUSE_ROOT_ID for the root):
// the body is the name and its terminating NUL.
std::vector<uint8_t> BuildLookup(uint64_t unique, uint64_t parent, std::string_view name);

// A request body assembled piece by piece, in wire order: fixed structs,
// NUL-terminated names, raw bytes.
class FuseBody {
 public:
  template <typename T>
  FuseBody& Add(const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto* p = reinterpret_cast<const uint8_t*>(&value);
    bytes_.insert(bytes_.end(), p, p + sizeof(T));
    return *this;
  }
  // The first `n` bytes of `value` (a struct that older minors send shorter,
  // or a truncated one for hostile tests).
  template <typename T>
  FuseBody& AddPrefix(const T& value, size_t n) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto* p = reinterpret_cast<const uint8_t*>(&value);
    bytes_.insert(bytes_.end(), p, p + std::min(n, sizeof(T)));
    return *this;
  }
  // `name` and its terminating NUL.
  FuseBody& Name(std::string_view name);
  // Bytes as they are (no NUL added).
  FuseBody& Raw(std::string_view bytes);
  FuseBody& Raw(std::span<const uint8_t> bytes);
  // Zero bytes up to the next multiple of `align`.
  FuseBody& Pad(size_t align = 8);

  const std::vector<uint8_t>& bytes() const { return bytes_; }
  size_t size() const { return bytes_.size(); }

 private:
  std::vector<uint8_t> bytes_;
};

// A request with `extensions` (protocol 7.38) after the body:
// header.total_extlen is their length in 8-byte units (a multiple of 8 is
// expected; hostile tests may give anything, the length is rounded down).
std::vector<uint8_t> BuildRequestWithExtensions(uint32_t opcode, uint64_t unique, uint64_t nodeid,
                                                std::span<const uint8_t> body,
                                                std::span<const uint8_t> extensions,
                                                uint32_t uid = 0, uint32_t gid = 0,
                                                uint32_t pid = 0);

// The security context as Linux (fs/fuse/dir.c, get_security_context) sends
// it: fuse_secctx_header {size, nr_secctx}, then for one context fuse_secctx
// {size of value}, the xattr name with its NUL and the value, padded to 8
// bytes. From 7.38 this record is also an extension: fuse_secctx_header
// doubles as fuse_ext_header, nr_secctx as its type (<= FUSE_MAX_NR_SECCTX).
// An empty `name` gives the record of no context (nr_secctx 0).
std::vector<uint8_t> BuildSecurityContext(std::string_view name, std::string_view value);

// The supplementary group extension (7.39, FUSE_EXT_GROUPS = 32):
// fuse_ext_header, fuse_supp_groups {nr_groups}, the gids, padded to 8.
std::vector<uint8_t> BuildSuppGroupsExtension(std::span<const uint32_t> gids);

// Rewrites fields of a built request's fuse_in_header (hostile tests).
void PatchHeader(std::vector<uint8_t>& request, void (*patch)(fuse_in_header&));
// Sets fuse_in_header.len of a built request to `len`.
void SetHeaderLen(std::vector<uint8_t>& request, uint32_t len);

// A parsed reply.
struct FuseReply {
  fuse_out_header header{};
  std::vector<uint8_t> body;

  int32_t error() const { return header.error; }
  uint64_t unique() const { return header.unique; }

  // The body as a T: InvalidArgument unless it is exactly sizeof(T) bytes.
  template <typename T>
  absl::StatusOr<T> BodyAs() const {
    static_assert(std::is_trivially_copyable_v<T>);
    if (body.size() != sizeof(T)) return BodySizeError(sizeof(T), sizeof(T));
    T value;
    std::memcpy(&value, body.data(), sizeof(T));
    return value;
  }
  // The body as a T that older protocol minors send shorter (fuse_init_out,
  // fuse_entry_out): at least `min_size` bytes, at most sizeof(T); the rest
  // is zero.
  template <typename T>
  absl::StatusOr<T> BodyPrefixAs(size_t min_size) const {
    static_assert(std::is_trivially_copyable_v<T>);
    if (body.size() < min_size || body.size() > sizeof(T)) {
      return BodySizeError(min_size, sizeof(T));
    }
    T value;
    std::memset(&value, 0, sizeof(T));
    std::memcpy(&value, body.data(), body.size());
    return value;
  }

 private:
  absl::Status BodySizeError(size_t min, size_t max) const;
};

// Parses the bytes a device wrote (the used element's length of them).
// DataLoss when they are not a valid reply, or when `expected_unique` is
// given and differs.
absl::StatusOr<FuseReply> ParseReply(std::span<const uint8_t> bytes,
                                     std::optional<uint64_t> expected_unique = std::nullopt);
// Same, reading `len` bytes at guest address `gpa`.
absl::StatusOr<FuseReply> ReadReply(const GuestRam& ram, uint64_t gpa, uint32_t len,
                                    std::optional<uint64_t> expected_unique = std::nullopt);

// Submits `request` (built above) on ring `queue` through `frontend`, waits
// for the completion and parses the reply, checking its unique id against
// the request's. See Frontend::Transact for buffer allocation and errors.
absl::StatusOr<FuseReply> FuseTransact(Frontend& frontend, uint32_t queue, DriverQueue& q,
                                       const GuestRam& ram, std::span<const uint8_t> request,
                                       uint32_t reply_capacity = kDefaultReplyCapacity,
                                       int timeout_ms = 5000);

}  // namespace virtiofs::testing

#endif  // VIRTIOFS_TESTS_SUPPORT_FUSE_REQUEST_H_
