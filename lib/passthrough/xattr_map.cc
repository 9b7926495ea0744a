#include "lib/passthrough/xattr_map.h"

#include <cctype>
#include <cerrno>

#include "absl/strings/str_format.h"

namespace virtiofs::passthrough_internal {
namespace {

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

}  // namespace

absl::StatusOr<XattrMap> XattrMap::Parse(std::string_view spec) {
  XattrMap m;
  bool mapped = false;
  size_t pos = 0;
  auto fail = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrFormat("xattrmap: %s (at offset %d)", why, pos));
  };
  for (;;) {
    while (pos < spec.size() && std::isspace(static_cast<unsigned char>(spec[pos]))) ++pos;
    if (pos == spec.size()) break;
    if (mapped) return fail("'map' must be the last rule");
    const char sep = spec[pos++];
    // Fields up to the next separator; a missing one ends the rule badly.
    auto field = [&](std::string* out) {
      const size_t end = spec.find(sep, pos);
      if (end == std::string_view::npos) return false;
      *out = std::string(spec.substr(pos, end - pos));
      pos = end + 1;
      return true;
    };
    std::string type, scope, key, prepend;
    if (!field(&type)) return fail("a rule ends early");
    if (type == "map") {
      if (!field(&key) || !field(&prepend)) return fail("a 'map' rule ends early");
      if (prepend.empty()) return fail("'map' needs a prefix to add");
      if (key.empty()) {
        m.rules_.push_back({Rule::kPrefix, true, true, "", prepend});
        m.rules_.push_back({Rule::kBad, true, true, "", ""});
      } else {
        m.rules_.push_back({Rule::kPrefix, true, true, key, prepend});
        // Host names that look like the guest's own are hidden, and the
        // guest may not reach the prefixed names directly.
        m.rules_.push_back({Rule::kBad, false, true, "", key});
        m.rules_.push_back({Rule::kBad, true, false, prepend, ""});
        m.rules_.push_back({Rule::kOk, true, true, "", ""});
      }
      mapped = true;
      continue;
    }
    if (!field(&scope) || !field(&key) || !field(&prepend)) return fail("a rule ends early");
    Rule r{Rule::kOk, false, false, key, prepend};
    if (type == "prefix") {
      r.type = Rule::kPrefix;
    } else if (type == "ok") {
      r.type = Rule::kOk;
    } else if (type == "bad") {
      r.type = Rule::kBad;
    } else if (type == "unsupported") {
      r.type = Rule::kUnsupported;
    } else {
      return fail("unknown rule type '" + type + "'");
    }
    if (scope == "client") {
      r.client = true;
    } else if (scope == "server") {
      r.server = true;
    } else if (scope == "all") {
      r.client = r.server = true;
    } else {
      return fail("unknown scope '" + scope + "'");
    }
    m.rules_.push_back(std::move(r));
  }
  bool client_catch_all = false, server_catch_all = false;
  for (const Rule& r : m.rules_) {
    client_catch_all |= r.client && r.key.empty();
    server_catch_all |= r.server && r.prepend.empty();
  }
  if (!client_catch_all || !server_catch_all) {
    return absl::InvalidArgumentError(
        "xattrmap: no rule matches every name (end with a catch-all such as ':ok:all:::' or "
        "':bad:all:::')");
  }
  return m;
}

int XattrMap::ToHost(std::string_view guest, std::string* host) const {
  for (const Rule& r : rules_) {
    if (!r.client || !StartsWith(guest, r.key)) continue;
    switch (r.type) {
      case Rule::kPrefix:
        *host = r.prepend + std::string(guest);
        return 0;
      case Rule::kOk:
        *host = std::string(guest);
        return 0;
      case Rule::kBad:
        return EPERM;
      case Rule::kUnsupported:
        return ENOTSUP;
    }
  }
  return EPERM;  // Parse() makes sure this is not reached.
}

std::optional<std::string> XattrMap::ToGuest(std::string_view host) const {
  for (const Rule& r : rules_) {
    if (!r.server || !StartsWith(host, r.prepend)) continue;
    switch (r.type) {
      case Rule::kPrefix:
        if (host.size() == r.prepend.size()) return std::nullopt;  // Nothing left.
        return std::string(host.substr(r.prepend.size()));
      case Rule::kOk:
        return std::string(host);
      default:
        return std::nullopt;
    }
  }
  return std::nullopt;
}

std::string XattrMap::ListToGuest(std::string_view host_list) const {
  std::string out;
  size_t pos = 0;
  while (pos < host_list.size()) {
    size_t end = host_list.find('\0', pos);
    if (end == std::string_view::npos) end = host_list.size();
    if (auto name = ToGuest(host_list.substr(pos, end - pos))) {
      out += *name;
      out += '\0';
    }
    pos = end + 1;
  }
  return out;
}

}  // namespace virtiofs::passthrough_internal
