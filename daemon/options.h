// The daemon's command line: virtiofsd's modern flags, its legacy `-o` form,
// and ours, turned into one configuration.
//
// Parsing has no side effects (nothing is opened, created or changed), so the
// daemon can refuse a bad command line before anything listens, and tests can
// check every flag without starting a daemon.
#ifndef VIRTIOFS_DAEMON_OPTIONS_H_
#define VIRTIOFS_DAEMON_OPTIONS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/lockdown.h"
#include "virtiofs/log.h"
#include "virtiofs/passthrough.h"

namespace virtiofsd {

struct Config {
  // What the command line asks for.
  enum class Action { kServe, kHelp, kVersion, kPrintCapabilities };
  Action action = Action::kServe;
  std::string help_text;  // For kHelp.

  // Where to serve: exactly one of socket_path and fd.
  std::string socket_path;
  int fd = -1;
  std::string socket_group;  // Group that may connect (socket mode 0660).
  // The mount tag in the device's config space; empty: no config space, as
  // virtiofsd (the front-end's tag= is what the guest sees then).
  std::string tag;
  uint32_t num_request_queues = 1;

  // The file system (root = the shared directory).
  virtiofs::PassthroughOptions passthrough;

  // Lockdown (daemon/lockdown.h).
  SandboxKind sandbox = SandboxKind::kNamespace;
  SeccompAction seccomp = SeccompAction::kKill;
  std::string modcaps;  // "+cap:-cap..." as given (checked by CheckLockdownConfig).
  std::vector<IdMap> uid_map, gid_map;  // Repeatable flags.
  std::optional<uint64_t> rlimit_nofile;  // 0: leave the limit alone.

  // Life cycle and observability.
  virtiofs::LogLevel log_level = virtiofs::LogLevel::kInfo;
  bool syslog = false;
  std::string log_file;     // Append logs here instead of stderr (SIGHUP reopens it).
  bool daemonize = false;   // Detach once listening.
  bool reconnect = false;   // Serve the next front-end after one leaves.
  std::string stats_socket; // Serve stats (JSON, Prometheus text) on this socket.
  std::optional<int> thread_pool_size;  // Accepted; see --help.

  // Deprecated spellings seen (-o, -f, -d, --socket), for one warning each.
  std::vector<std::string> deprecations;
};

// Parses argv. Errors are one line, meant for "virtiofsd: <message>" on
// stderr. Defaults that depend on the machine (sandbox and request queues)
// are filled in by the caller-supplied `defaults`.
struct Defaults {
  SandboxKind sandbox = SandboxKind::kNamespace;  // virtiofsd's, as root.
  SeccompAction seccomp = SeccompAction::kKill;
  uint32_t num_request_queues = 1;
};
absl::StatusOr<Config> ParseCommandLine(int argc, const char* const* argv,
                                        const Defaults& defaults = {});

// The JSON --print-capabilities prints (vhost-user backend program
// conventions; libvirt reads "features").
std::string CapabilitiesJson();

}  // namespace virtiofsd

#endif  // VIRTIOFS_DAEMON_OPTIONS_H_
