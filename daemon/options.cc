#include "daemon/options.h"

#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <functional>
#include <map>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "virtiofs/status_macros.h"

namespace virtiofsd {
namespace {

namespace po = boost::program_options;
using virtiofs::PassthroughOptions;

absl::Status Bad(std::string_view flag, std::string_view value, std::string_view expected) {
  return absl::InvalidArgumentError(fmt::format("{}: '{}' is not {}", flag, value, expected));
}

absl::Status SetCache(std::string_view flag, std::string_view v, Config* c) {
  using Cache = PassthroughOptions::Cache;
  if (v == "auto") {
    c->passthrough.cache = Cache::kAuto;
  } else if (v == "always") {
    c->passthrough.cache = Cache::kAlways;
  } else if (v == "metadata") {
    c->passthrough.cache = Cache::kMetadata;
  } else if (v == "never" || v == "none") {
    c->passthrough.cache = Cache::kNever;
  } else {
    return Bad(flag, v, "auto, always, metadata or never");
  }
  return absl::OkStatus();
}

absl::Status SetSandbox(std::string_view flag, std::string_view v, Config* c) {
  auto kind = ParseSandboxKind(absl::string_view(v.data(), v.size()));
  if (!kind.ok()) return Bad(flag, v, "namespace, chroot or none");
  c->sandbox = *kind;
  return absl::OkStatus();
}

absl::Status SetLogLevel(std::string_view flag, std::string_view v, Config* c) {
  // virtiofsd's C spelling "err", and "off" (errors are still logged).
  if (v == "err" || v == "off") {
    c->log_level = virtiofs::LogLevel::kError;
    return absl::OkStatus();
  }
  auto level = virtiofs::ParseLogLevel(v);
  if (!level) return Bad(flag, v, "error, warn, info, debug or trace");
  c->log_level = *level;
  return absl::OkStatus();
}

absl::Status SetNonEmpty(std::string_view flag, std::string_view v, std::string* out) {
  if (v.empty()) return absl::InvalidArgumentError(fmt::format("{}: empty value", flag));
  *out = std::string(v);
  return absl::OkStatus();
}

template <typename T>
absl::Status SetNumber(std::string_view flag, std::string_view v, T min, T max, T* out) {
  T n{};
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || end != v.data() + v.size() || n < min || n > max) {
    return Bad(flag, v, fmt::format("a number from {} to {}", min, max));
  }
  *out = n;
  return absl::OkStatus();
}

// One `-o` item (C virtiofsd's and the Rust one's compatibility form).
absl::Status ApplyLegacy(std::string_view item, Config* c) {
  auto& p = c->passthrough;
  const size_t eq = item.find('=');
  if (eq != std::string_view::npos) {
    const std::string_view key = item.substr(0, eq), v = item.substr(eq + 1);
    const std::string flag = fmt::format("-o {}", key);
    if (key == "source") return SetNonEmpty(flag, v, &p.root);
    if (key == "cache") return SetCache(flag, v, c);
    if (key == "sandbox") return SetSandbox(flag, v, c);
    if (key == "log_level" || key == "loglevel") return SetLogLevel(flag, v, c);
    if (key == "modcaps") return SetNonEmpty(flag, v, &c->modcaps);
    if (key == "xattrmap") {
      VIRTIOFS_RETURN_IF_ERROR(virtiofs::ValidateXattrMap(v));
      c->passthrough.xattrmap = std::string(v);
      return absl::OkStatus();
    }
    if (key == "vhost_user_socket") return SetNonEmpty(flag, v, &c->socket_path);
    if (key == "timeout") {
      double t = 0;
      if (!absl::SimpleAtod(std::string(v), &t) || !std::isfinite(t) || t < 0 || t > 1e9) {
        return Bad(flag, v, "a number of seconds");
      }
      p.timeout = t;
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(fmt::format("unknown option '-o {}'", item));
  }
  static const std::map<std::string_view, std::function<void(Config*)>> kSwitches = {
      {"xattr", [](Config* x) { x->passthrough.xattr = true; }},
      {"no_xattr", [](Config* x) { x->passthrough.xattr = false; }},
      {"readdirplus", [](Config* x) { x->passthrough.readdirplus = true; }},
      {"no_readdirplus", [](Config* x) { x->passthrough.readdirplus = false; }},
      {"writeback", [](Config* x) { x->passthrough.writeback = true; }},
      {"no_writeback", [](Config* x) { x->passthrough.writeback = false; }},
      {"flock", [](Config* x) { x->passthrough.flock = true; }},
      {"no_flock", [](Config* x) { x->passthrough.flock = false; }},
      {"posix_lock", [](Config* x) { x->passthrough.posix_locks = true; }},
      {"no_posix_lock", [](Config* x) { x->passthrough.posix_locks = false; }},
      {"announce_submounts", [](Config* x) { x->passthrough.announce_submounts = true; }},
      {"no_announce_submounts", [](Config* x) { x->passthrough.announce_submounts = false; }},
      {"killpriv_v2", [](Config* x) { x->passthrough.killpriv_v2 = true; }},
      {"no_killpriv_v2", [](Config* x) { x->passthrough.killpriv_v2 = false; }},
      {"posix_acl", [](Config* x) { x->passthrough.posix_acl = true; }},
      {"no_posix_acl", [](Config* x) { x->passthrough.posix_acl = false; }},
      {"security_label", [](Config* x) { x->passthrough.security_label = true; }},
      {"no_security_label", [](Config* x) { x->passthrough.security_label = false; }},
      {"allow_direct_io", [](Config* x) { x->passthrough.allow_direct_io = true; }},
      {"no_allow_direct_io", [](Config* x) { x->passthrough.allow_direct_io = false; }},
      {"readonly", [](Config* x) { x->passthrough.readonly = true; }},
      {"debug", [](Config* x) { x->log_level = virtiofs::LogLevel::kDebug; }},
      // The C daemon's "no racy fallback": we have none, so this holds.
      {"norace", [](Config*) {}},
  };
  auto it = kSwitches.find(item);
  if (it == kSwitches.end()) {
    return absl::InvalidArgumentError(fmt::format("unknown option '-o {}'", item));
  }
  it->second(c);
  return absl::OkStatus();
}

po::options_description Describe() {
  po::options_description d("Options");
  // Values are taken as strings and checked by Apply, in command line order.
  auto str = [] { return po::value<std::string>(); };
  d.add_options()
      ("help,h", "print this help and exit")
      ("version,V", "print the version and exit")
      ("print-capabilities", "print the vhost-user back-end capabilities (JSON) and exit")
      ("shared-dir", str(), "the directory to share")
      ("socket-path", str(), "the vhost-user socket to listen on")
      ("socket", str(), "deprecated spelling of --socket-path")
      ("fd", str(), "an inherited listening socket fd (instead of --socket-path)")
      ("socket-group", str(), "group allowed to connect to the socket (mode 0660)")
      ("tag", str(), "the mount tag in the device's config space (1 to 36 bytes; "
                     "default: none, the front-end's tag= is used)")
      ("cache", str(), "auto | always | metadata | never (default auto)")
      ("readonly", "refuse every change (EROFS)")
      ("writeback", "enable the guest's writeback cache")
      ("no-readdirplus", "disable READDIRPLUS (always off with --cache never)")
      ("allow-direct-io", "honour O_DIRECT from the guest")
      ("allow-mmap", "let the guest mmap files opened with direct I/O (cache never)")
      ("announce-submounts", "tell the guest which directories are mount points (default)")
      ("no-announce-submounts", "do not tell the guest about mount points")
      ("xattr", "serve extended attributes")
      ("posix-acl", "serve POSIX ACLs (implies --xattr)")
      ("security-label", "store the security label the guest sends with new files")
      ("xattrmap", str(), "extended attribute name mapping rules, as virtiofsd's "
                          "(implies --xattr), e.g. :map::user.virtiofs.:")
      ("killpriv-v2", "FUSE_HANDLE_KILLPRIV_V2: clear setuid/setgid on write, "
                      "truncate and chown here (default)")
      ("no-killpriv-v2", "leave setuid/setgid clearing to the guest")
      ("inode-file-handles", str(), "never | prefer | mandatory (default never): hold "
                                    "inodes as file handles instead of O_PATH fds")
      ("preserve-noatime", "keep O_NOATIME from the guest even without CAP_FOWNER")
      ("translate-uid", str(), "guest/host uid translation rule (repeatable): "
                               "map:GUEST:HOST:COUNT, guest:..., host:..., squash-guest:..., "
                               "squash-host:..., forbid-guest:FROM:COUNT")
      ("translate-gid", str(), "guest/host gid translation rule (repeatable), as --translate-uid")
      ("sandbox", str(), "namespace (default: new mount, pid and net namespaces, plus a user "
                         "namespace when not root, pivot_root into the shared dir) | chroot | "
                         "none")
      ("seccomp", str(), "action on a system call outside the allow-list: kill (default) | "
                         "log | trap | none")
      ("modcaps", str(), "capabilities to add or drop, e.g. +sys_admin:-chown")
      ("uid-map", str(), ":namespace_uid:host_uid:count: for the namespace sandbox when not "
                         "root (repeatable)")
      ("gid-map", str(), ":namespace_gid:host_gid:count: (repeatable)")
      ("rlimit-nofile", str(), "open file limit (0: leave it; default: raise it as "
                               "virtiofsd does)")
      ("thread-pool-size", str(), "accepted for virtiofsd compatibility: requests run on one "
                                  "worker per queue with io_uring, there is no pool to size")
      ("num-request-queues", str(), "request queues offered (the guest uses up to one per "
                                    "vCPU; default: one per host CPU)")
      ("io-engine", str(), "uring | sync (default uring)")
      ("log-level", str(), "error | warn | info | debug | trace (default info)")
      ("syslog", "log to syslog instead of stderr")
      ("log-file", str(), "append the log to this file instead (SIGHUP reopens it)")
      ("daemonize", "go to the background once the socket is listening")
      ("reconnect", "keep serving after the front-end disconnects (the next one resumes "
                    "with the inflight state); default: exit, as virtiofsd")
      ("stats-socket", str(), "serve statistics on this unix socket (HTTP: /metrics "
                              "Prometheus text, anything else JSON); SIGUSR1 logs them")
      (",o", po::value<std::vector<std::string>>()->composing(),
       "legacy options, comma separated: source=,cache=,sandbox=,xattr,no_xattr,"
       "readdirplus,no_readdirplus,writeback,no_writeback,flock,no_flock,posix_lock,"
       "no_posix_lock,announce_submounts,killpriv_v2,no_killpriv_v2,posix_acl,"
       "security_label,timeout=,modcaps=,log_level=,vhost_user_socket=,...")
      (",f", "legacy: run in the foreground (always the case without --daemonize)")
      (",d", "legacy: --log-level debug");
  return d;
}

absl::Status Apply(const std::string& key, const std::string& v, Config* c) {
  auto& p = c->passthrough;
  using Handles = PassthroughOptions::FileHandles;
  if (key == "help") {
    c->action = Config::Action::kHelp;
  } else if (key == "version") {
    c->action = Config::Action::kVersion;
  } else if (key == "print-capabilities") {
    c->action = Config::Action::kPrintCapabilities;
  } else if (key == "shared-dir") {
    return SetNonEmpty("--shared-dir", v, &p.root);
  } else if (key == "socket-path" || key == "socket") {
    if (key == "socket") c->deprecations.push_back("--socket (use --socket-path)");
    return SetNonEmpty("--" + key, v, &c->socket_path);
  } else if (key == "fd") {
    return SetNumber<int>("--fd", v, 0, 1 << 30, &c->fd);
  } else if (key == "socket-group") {
    return SetNonEmpty("--socket-group", v, &c->socket_group);
  } else if (key == "tag") {
    if (v.empty() || v.size() > 36) return Bad("--tag", v, "1 to 36 bytes");
    c->tag = v;
  } else if (key == "cache") {
    return SetCache("--cache", v, c);
  } else if (key == "readonly") {
    p.readonly = true;
  } else if (key == "writeback") {
    p.writeback = true;
  } else if (key == "no-readdirplus") {
    p.readdirplus = false;
  } else if (key == "allow-direct-io") {
    p.allow_direct_io = true;
  } else if (key == "allow-mmap") {
    p.allow_mmap = true;
  } else if (key == "announce-submounts") {
    p.announce_submounts = true;
  } else if (key == "no-announce-submounts") {
    p.announce_submounts = false;
  } else if (key == "xattr") {
    p.xattr = true;
  } else if (key == "posix-acl") {
    p.posix_acl = true;
  } else if (key == "security-label") {
    p.security_label = true;
  } else if (key == "xattrmap") {
    VIRTIOFS_RETURN_IF_ERROR(virtiofs::ValidateXattrMap(v));
    p.xattrmap = v;
  } else if (key == "killpriv-v2") {
    p.killpriv_v2 = true;
  } else if (key == "no-killpriv-v2") {
    p.killpriv_v2 = false;
  } else if (key == "inode-file-handles") {
    if (v == "never") {
      p.inode_file_handles = Handles::kNever;
    } else if (v == "prefer" || v == "fallback") {
      p.inode_file_handles = Handles::kPrefer;
    } else if (v == "mandatory") {
      p.inode_file_handles = Handles::kMandatory;
    } else {
      return Bad("--inode-file-handles", v, "never, prefer or mandatory");
    }
  } else if (key == "preserve-noatime") {
    p.preserve_noatime = true;
  } else if (key == "translate-uid" || key == "translate-gid") {
    auto& map = key == "translate-uid" ? p.translate_uid : p.translate_gid;
    if (absl::Status st = map.Add(v); !st.ok()) {
      return absl::InvalidArgumentError(fmt::format("--{}: {}", key, st.message()));
    }
  } else if (key == "sandbox") {
    return SetSandbox("--sandbox", v, c);
  } else if (key == "seccomp") {
    auto action = ParseSeccompAction(v);
    if (!action.ok()) return Bad("--seccomp", v, "kill, log, trap or none");
    c->seccomp = *action;
  } else if (key == "modcaps") {
    return SetNonEmpty("--modcaps", v, &c->modcaps);
  } else if (key == "uid-map" || key == "gid-map") {
    auto map = ParseIdMap(v);
    if (!map.ok()) {
      return absl::InvalidArgumentError(fmt::format("--{}: {}", key, map.status().message()));
    }
    (key == "uid-map" ? c->uid_map : c->gid_map).push_back(*map);
  } else if (key == "rlimit-nofile") {
    uint64_t n = 0;
    VIRTIOFS_RETURN_IF_ERROR(
        SetNumber<uint64_t>("--rlimit-nofile", v, 0, UINT64_MAX, &n));
    c->rlimit_nofile = n;
  } else if (key == "thread-pool-size") {
    int n = 0;
    VIRTIOFS_RETURN_IF_ERROR(SetNumber<int>("--thread-pool-size", v, 0, 1 << 20, &n));
    c->thread_pool_size = n;
  } else if (key == "num-request-queues") {
    return SetNumber<uint32_t>("--num-request-queues", v, 1, 255, &c->num_request_queues);
  } else if (key == "io-engine") {
    if (v == "uring") {
      p.io_engine = virtiofs::IoEngineKind::kUring;
    } else if (v == "sync") {
      p.io_engine = virtiofs::IoEngineKind::kSync;
    } else {
      return Bad("--io-engine", v, "uring or sync");
    }
  } else if (key == "log-level") {
    return SetLogLevel("--log-level", v, c);
  } else if (key == "syslog") {
    c->syslog = true;
  } else if (key == "log-file") {
    return SetNonEmpty("--log-file", v, &c->log_file);
  } else if (key == "daemonize") {
    c->daemonize = true;
  } else if (key == "reconnect") {
    c->reconnect = true;
  } else if (key == "stats-socket") {
    return SetNonEmpty("--stats-socket", v, &c->stats_socket);
  } else if (key == "-o") {
    c->deprecations.push_back("-o (use the --long options)");
    for (absl::string_view item : absl::StrSplit(v, ',')) {
      if (item.empty()) continue;
      VIRTIOFS_RETURN_IF_ERROR(ApplyLegacy(std::string_view(item.data(), item.size()), c));
    }
  } else if (key == "-f") {
    c->deprecations.push_back("-f (the daemon runs in the foreground unless --daemonize)");
  } else if (key == "-d") {
    c->deprecations.push_back("-d (use --log-level debug)");
    c->log_level = virtiofs::LogLevel::kDebug;
  } else {
    return absl::InternalError(fmt::format("option '{}' has no meaning", key));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Config> ParseCommandLine(int argc, const char* const* argv,
                                        const Defaults& defaults) {
  Config c;
  c.sandbox = defaults.sandbox;
  c.seccomp = defaults.seccomp;
  c.num_request_queues = defaults.num_request_queues;
  // virtiofsd's defaults where they differ from the library's.
  c.passthrough.announce_submounts = true;
  c.passthrough.xattr = false;
  c.passthrough.preserve_noatime = false;  // The daemon keeps it when root (main).
  const po::options_description desc = Describe();
  po::parsed_options parsed(&desc);
  try {
    parsed = po::command_line_parser(argc, argv)
                 .options(desc)
                 .style(po::command_line_style::default_style &
                        ~po::command_line_style::allow_guessing)
                 .run();
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(fmt::format("{} (--help lists the options)", e.what()));
  }
  // In command line order, so that a later flag overrides an earlier one,
  // whichever form each has.
  for (const po::option& o : parsed.options) {
    if (o.unregistered || o.position_key >= 0) {
      return absl::InvalidArgumentError(
          fmt::format("unexpected argument '{}' (--help lists the options)",
                      o.original_tokens.empty() ? o.string_key : o.original_tokens[0]));
    }
    const std::string value = o.value.empty() ? std::string() : o.value.back();
    VIRTIOFS_RETURN_IF_ERROR(Apply(o.string_key, value, &c));
  }
  if (c.action == Config::Action::kHelp) {
    std::ostringstream out;
    out << "usage: virtiofsd --shared-dir DIR (--socket-path PATH | --fd N) [options]\n"
        << desc;
    c.help_text = out.str();
  }
  if (c.action != Config::Action::kServe) return c;

  auto& p = c.passthrough;
  if (p.root.empty()) return absl::InvalidArgumentError("--shared-dir (or -o source=) is required");
  if (c.socket_path.empty() == (c.fd < 0)) {
    return absl::InvalidArgumentError("give exactly one of --socket-path and --fd");
  }
  if (c.fd >= 0 && !c.socket_group.empty()) {
    return absl::InvalidArgumentError("--socket-group needs --socket-path (not --fd)");
  }
  if (p.posix_acl || !p.xattrmap.empty()) p.xattr = true;
  // As virtiofsd: with nothing cached, READDIRPLUS's attributes would be
  // thrown away at once.
  if (p.cache == PassthroughOptions::Cache::kNever) p.readdirplus = false;
  return c;
}

std::string CapabilitiesJson() {
  // "separate-options": libvirt may pass --shared-dir, --cache, ... rather
  // than -o. No "migrate-precopy": the FUSE state does not migrate yet.
  return "{\n  \"type\": \"fs\",\n  \"features\": [\n    \"separate-options\"\n  ]\n}\n";
}

}  // namespace virtiofsd
