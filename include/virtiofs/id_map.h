// Guest <-> host uid or gid translation, as virtiofsd's --translate-uid and
// --translate-gid (virtiofsd 1.11+). One IdMap holds the rules for uids or
// for gids; the two directions are independent (need not be inverses).
//
// Rule syntax (numbers in decimal; ranges are [base, base + count)):
//   map:GUEST:HOST:COUNT           guest GUEST+i <-> host HOST+i, both ways
//   guest:GUEST:HOST:COUNT         guest GUEST+i -> host HOST+i only
//   host:HOST:GUEST:COUNT          host HOST+i -> guest GUEST+i only
//   squash-guest:GUEST:HOST:COUNT  every guest id in the range -> host HOST
//   squash-host:HOST:GUEST:COUNT   every host id in the range -> guest GUEST
//   forbid-guest:GUEST:COUNT       guest ids in the range may not be used:
//                                  requests as them and chown to them fail
//                                  with EPERM
// Ranges of one direction may not overlap (an error when added). An id that
// no rule covers is the same on both sides.
#ifndef VIRTIOFS_ID_MAP_H_
#define VIRTIOFS_ID_MAP_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace virtiofs {

struct IdMapRule {
  enum class Kind { kMap, kGuest, kHost, kSquashGuest, kSquashHost, kForbidGuest };
  Kind kind = Kind::kMap;
  uint32_t from = 0;   // First id of the source range (guest, or host for kHost/kSquashHost).
  uint32_t to = 0;     // First id (or the one id when squashing) on the other side.
  uint64_t count = 0;  // Range length, 1 to 2^32 - from.
};

// Parses one rule; the error names what is wrong with `spec`.
absl::StatusOr<IdMapRule> ParseIdMapRule(std::string_view spec);

class IdMap {
 public:
  // Adds a rule; fails (and changes nothing) when a range overlaps one
  // already added in the same direction or runs past 2^32 - 1.
  absl::Status Add(const IdMapRule& rule);
  // ParseIdMapRule and Add: what the daemon calls for each
  // --translate-uid / --translate-gid value, in order.
  absl::Status Add(std::string_view spec);

  // The host id for a guest id; nullopt when it is forbidden.
  std::optional<uint32_t> ToHost(uint32_t guest) const;
  // The guest id for a host id.
  uint32_t ToGuest(uint32_t host) const;
  bool empty() const { return to_host_.empty() && to_guest_.empty(); }

 private:
  struct Range {
    uint64_t begin = 0, end = 0;  // [begin, end) of the source ids.
    uint32_t to = 0;
    bool squash = false;
    bool forbid = false;
  };
  static absl::Status Insert(std::vector<Range>* ranges, const Range& r, std::string_view what);
  static const Range* Find(const std::vector<Range>& ranges, uint32_t id);
  std::vector<Range> to_host_;   // Sorted by begin.
  std::vector<Range> to_guest_;  // Sorted by begin.
};

}  // namespace virtiofs

#endif  // VIRTIOFS_ID_MAP_H_
