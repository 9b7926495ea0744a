#include "virtiofs/id_map.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace virtiofs {

namespace {

constexpr uint64_t kIdSpace = uint64_t{1} << 32;

// Plain decimal digits (no sign, no spaces), at most 2^32.
bool ParseU64(std::string_view s, uint64_t* out) {
  if (s.empty() || s.size() > 10) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  *out = v;
  return true;
}

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  for (;;) {
    const size_t at = s.find(sep);
    parts.push_back(s.substr(0, at));
    if (at == std::string_view::npos) return parts;
    s.remove_prefix(at + 1);
  }
}

}  // namespace

absl::StatusOr<IdMapRule> ParseIdMapRule(std::string_view spec) {
  using Kind = IdMapRule::Kind;
  const std::vector<std::string_view> parts = Split(spec, ':');
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrFormat("id translation '%s': %s", std::string(spec), std::string(why)));
  };
  IdMapRule r;
  const std::string_view kind = parts[0];
  if (kind == "map") {
    r.kind = Kind::kMap;
  } else if (kind == "guest") {
    r.kind = Kind::kGuest;
  } else if (kind == "host") {
    r.kind = Kind::kHost;
  } else if (kind == "squash-guest") {
    r.kind = Kind::kSquashGuest;
  } else if (kind == "squash-host") {
    r.kind = Kind::kSquashHost;
  } else if (kind == "forbid-guest") {
    r.kind = Kind::kForbidGuest;
  } else {
    return bad("the type must be map, guest, host, squash-guest, squash-host or forbid-guest");
  }
  const size_t fields = r.kind == Kind::kForbidGuest ? 3 : 4;
  if (parts.size() != fields) {
    return bad(r.kind == Kind::kForbidGuest ? "expected forbid-guest:FROM:COUNT"
                                            : "expected TYPE:FROM:TO:COUNT");
  }
  uint64_t from = 0, to = 0, count = 0;
  if (!ParseU64(parts[1], &from) || from >= kIdSpace) return bad("FROM is not an id");
  if (fields == 4 && (!ParseU64(parts[2], &to) || to >= kIdSpace)) return bad("TO is not an id");
  if (!ParseU64(parts[fields - 1], &count) || count == 0 || count > kIdSpace) {
    return bad("COUNT must be 1 to 4294967296");
  }
  if (from + count > kIdSpace) return bad("the source range runs past 4294967295");
  const bool ranged_target =
      r.kind == Kind::kMap || r.kind == Kind::kGuest || r.kind == Kind::kHost;
  if (ranged_target && to + count > kIdSpace) return bad("the target range runs past 4294967295");
  r.from = static_cast<uint32_t>(from);
  r.to = static_cast<uint32_t>(to);
  r.count = count;
  return r;
}

absl::Status IdMap::Insert(std::vector<Range>* ranges, const Range& r, std::string_view what) {
  auto it = std::lower_bound(ranges->begin(), ranges->end(), r.begin,
                             [](const Range& a, uint64_t b) { return a.begin < b; });
  const bool overlaps_next = it != ranges->end() && it->begin < r.end;
  const bool overlaps_prev = it != ranges->begin() && std::prev(it)->end > r.begin;
  if (overlaps_next || overlaps_prev) {
    const Range& o = overlaps_next ? *it : *std::prev(it);
    return absl::InvalidArgumentError(
        absl::StrFormat("%s range [%d, %d) overlaps [%d, %d) of an earlier rule", std::string(what),
                        r.begin, r.end, o.begin, o.end));
  }
  ranges->insert(it, r);
  return absl::OkStatus();
}

absl::Status IdMap::Add(const IdMapRule& rule) {
  using Kind = IdMapRule::Kind;
  const uint64_t begin = rule.from, end = uint64_t{rule.from} + rule.count;
  if (rule.count == 0 || end > kIdSpace) return absl::InvalidArgumentError("bad id range");
  Range fwd{begin, end, rule.to, false, false};
  switch (rule.kind) {
    case Kind::kMap: {
      Range back{rule.to, uint64_t{rule.to} + rule.count, rule.from, false, false};
      if (back.end > kIdSpace) return absl::InvalidArgumentError("bad id range");
      // Both or neither.
      std::vector<Range> host = to_host_;
      if (absl::Status s = Insert(&host, fwd, "guest"); !s.ok()) return s;
      if (absl::Status s = Insert(&to_guest_, back, "host"); !s.ok()) return s;
      to_host_ = std::move(host);
      return absl::OkStatus();
    }
    case Kind::kGuest:
      return Insert(&to_host_, fwd, "guest");
    case Kind::kHost:
      return Insert(&to_guest_, fwd, "host");
    case Kind::kSquashGuest:
      fwd.squash = true;
      return Insert(&to_host_, fwd, "guest");
    case Kind::kSquashHost:
      fwd.squash = true;
      return Insert(&to_guest_, fwd, "host");
    case Kind::kForbidGuest:
      fwd.forbid = true;
      return Insert(&to_host_, fwd, "guest");
  }
  return absl::InvalidArgumentError("unknown rule type");
}

absl::Status IdMap::Add(std::string_view spec) {
  auto rule = ParseIdMapRule(spec);
  if (!rule.ok()) return rule.status();
  if (absl::Status s = Add(*rule); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("id translation '%s': %s", std::string(spec), std::string(s.message())));
  }
  return absl::OkStatus();
}

const IdMap::Range* IdMap::Find(const std::vector<Range>& ranges, uint32_t id) {
  auto it = std::upper_bound(ranges.begin(), ranges.end(), uint64_t{id},
                             [](uint64_t v, const Range& r) { return v < r.begin; });
  if (it == ranges.begin()) return nullptr;
  --it;
  return id < it->end ? &*it : nullptr;
}

std::optional<uint32_t> IdMap::ToHost(uint32_t guest) const {
  const Range* r = Find(to_host_, guest);
  if (r == nullptr) return guest;
  if (r->forbid) return std::nullopt;
  if (r->squash) return r->to;
  return static_cast<uint32_t>(r->to + (guest - r->begin));
}

uint32_t IdMap::ToGuest(uint32_t host) const {
  const Range* r = Find(to_guest_, host);
  if (r == nullptr) return host;
  if (r->squash) return r->to;
  return static_cast<uint32_t>(r->to + (host - r->begin));
}

}  // namespace virtiofs
