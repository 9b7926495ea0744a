// Extended attribute name mapping between guest and host (virtiofsd's
// --xattrmap): rules that rename, pass, hide or refuse xattr names, so that
// a guest's security.* or trusted.* names need not be the host's.
//
// A rule is `<sep>type<sep>scope<sep>key<sep>prepend<sep>`, the separator
// being its first non-blank character; type is prefix, ok, bad or
// unsupported; scope client (guest names, matched on `key`), server (host
// names in listings, matched on `prepend`) or all. `<sep>map<sep>key<sep>
// prepend<sep>` is shorthand for the safe set of rules that prefixes `key`
// names (all names when empty) with `prepend`; it must be the last rule. The
// first matching rule decides; the rules must leave no name unmatched.
#ifndef VIRTIOFS_LIB_PASSTHROUGH_XATTR_MAP_H_
#define VIRTIOFS_LIB_PASSTHROUGH_XATTR_MAP_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace virtiofs::passthrough_internal {

class XattrMap {
 public:
  static absl::StatusOr<XattrMap> Parse(std::string_view spec);

  // The host name for a name the guest uses (get, set, remove), or the errno
  // to answer: EPERM for a `bad` rule, ENOTSUP for `unsupported`.
  int ToHost(std::string_view guest, std::string* host) const;
  // The guest's name for a host name in a listing, or nullopt to hide it.
  std::optional<std::string> ToGuest(std::string_view host) const;
  // A listxattr answer (NUL-terminated names) as the guest must see it.
  std::string ListToGuest(std::string_view host_list) const;

 private:
  struct Rule {
    enum Type { kPrefix, kOk, kBad, kUnsupported } type;
    bool client, server;
    std::string key, prepend;
  };
  std::vector<Rule> rules_;
};

}  // namespace virtiofs::passthrough_internal

#endif  // VIRTIOFS_LIB_PASSTHROUGH_XATTR_MAP_H_
