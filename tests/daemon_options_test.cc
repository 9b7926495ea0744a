// The daemon's command line: every flag virtiofsd's users pass (libvirt,
// Kata, QEMU's docs, people), the legacy -o form, order, and refusals.
#include "daemon/options.h"

#include <catch2/catch.hpp>
#include <initializer_list>
#include <string>
#include <vector>

namespace virtiofsd {
namespace {

using Cache = virtiofs::PassthroughOptions::Cache;
using Handles = virtiofs::PassthroughOptions::FileHandles;

absl::StatusOr<Config> Parse(std::initializer_list<const char*> args, Defaults d = {}) {
  std::vector<const char*> argv = {"virtiofsd"};
  argv.insert(argv.end(), args.begin(), args.end());
  return ParseCommandLine(int(argv.size()), argv.data(), d);
}

Config ParseOk(std::initializer_list<const char*> args) {
  auto c = Parse(args);
  INFO(c.status().message());
  REQUIRE(c.ok());
  return *std::move(c);
}

std::string ParseError(std::initializer_list<const char*> args) {
  auto c = Parse(args);
  REQUIRE_FALSE(c.ok());
  return std::string(c.status().message());
}

TEST_CASE("defaults are virtiofsd's") {
  Defaults d;
  d.num_request_queues = 3;
  d.sandbox = SandboxKind::kChroot;
  auto c = Parse({"--shared-dir", "/srv", "--socket-path", "/tmp/s"}, d);
  REQUIRE(c.ok());
  CHECK(c->action == Config::Action::kServe);
  CHECK(c->passthrough.root == "/srv");
  CHECK(c->socket_path == "/tmp/s");
  CHECK(c->fd == -1);
  CHECK(c->num_request_queues == 3);
  CHECK(c->sandbox == SandboxKind::kChroot);
  CHECK(c->passthrough.cache == Cache::kAuto);
  CHECK(c->passthrough.announce_submounts);
  CHECK_FALSE(c->passthrough.xattr);
  CHECK(c->passthrough.readdirplus);
  CHECK(c->passthrough.inode_file_handles == Handles::kNever);
  CHECK(c->tag.empty());  // No config space unless asked.
  CHECK_FALSE(c->reconnect);
  CHECK(c->log_level == virtiofs::LogLevel::kInfo);
  CHECK(c->deprecations.empty());
  auto v = Parse({"--shared-dir", "/srv", "--socket-path", "/tmp/s"});
  REQUIRE(v.ok());
  CHECK(v->sandbox == SandboxKind::kNamespace);  // virtiofsd's defaults.
  CHECK(v->seccomp == SeccompAction::kKill);
}

TEST_CASE("libvirt's separate-options command line") {
  auto c = ParseOk({"--fd=3", "--shared-dir", "/srv/share", "--cache", "always", "--sandbox",
                    "chroot", "--xattr", "--thread-pool-size=16", "--rlimit-nofile=65536",
                    "--log-level", "debug", "--posix-acl", "--announce-submounts"});
  CHECK(c.fd == 3);
  CHECK(c.passthrough.cache == Cache::kAlways);
  CHECK(c.sandbox == SandboxKind::kChroot);
  CHECK(c.passthrough.xattr);
  CHECK(c.passthrough.posix_acl);
  CHECK(c.thread_pool_size == 16);
  CHECK(c.rlimit_nofile == uint64_t{65536});
  CHECK(c.log_level == virtiofs::LogLevel::kDebug);
}

TEST_CASE("libvirt's and the C virtiofsd's legacy -o command line") {
  auto c = ParseOk({"--fd=7", "-o", "source=/srv/share,cache=none,sandbox=namespace,xattr,flock,"
                    "posix_lock", "--thread-pool-size=0"});
  CHECK(c.passthrough.root == "/srv/share");
  CHECK(c.passthrough.cache == Cache::kNever);
  CHECK_FALSE(c.passthrough.readdirplus);  // Off with nothing cached, as virtiofsd.
  CHECK(c.sandbox == SandboxKind::kNamespace);
  CHECK(c.passthrough.xattr);
  CHECK(c.passthrough.flock);
  CHECK(c.passthrough.posix_locks);
  CHECK(c.deprecations.size() == 1);

  auto q = ParseOk({"-o", "vhost_user_socket=/tmp/v.sock", "-o", "source=/srv", "-f", "-d",
                    "-o", "no_flock,no_posix_lock,writeback,announce_submounts,killpriv_v2,"
                    "posix_acl,security_label,timeout=2.5,modcaps=+sys_admin:-mknod,"
                    "log_level=warn,norace,allow_direct_io,readdirplus"});
  CHECK(q.socket_path == "/tmp/v.sock");
  CHECK(q.passthrough.root == "/srv");
  CHECK_FALSE(q.passthrough.flock);
  CHECK_FALSE(q.passthrough.posix_locks);
  CHECK(q.passthrough.writeback);
  CHECK(q.passthrough.announce_submounts);
  CHECK(q.passthrough.killpriv_v2);
  CHECK(q.passthrough.posix_acl);
  CHECK(q.passthrough.xattr);  // Implied by posix_acl.
  CHECK(q.passthrough.security_label);
  REQUIRE(q.passthrough.timeout.has_value());
  CHECK(*q.passthrough.timeout == 2.5);
  CHECK(q.modcaps == "+sys_admin:-mknod");
  CHECK(q.log_level == virtiofs::LogLevel::kWarning);  // log_level= came after -d.
  CHECK(q.passthrough.allow_direct_io);
  CHECK(q.deprecations.size() == 5);  // Three -o, -f, -d.

  auto n = ParseOk({"--socket-path=/s", "-o", "source=/x,no_xattr,no_readdirplus,no_writeback,"
                    "no_killpriv_v2,no_posix_acl,no_security_label,no_announce_submounts,"
                    "cache=always,loglevel=err"});
  CHECK_FALSE(n.passthrough.xattr);
  CHECK_FALSE(n.passthrough.readdirplus);
  CHECK_FALSE(n.passthrough.writeback);
  CHECK_FALSE(n.passthrough.killpriv_v2);
  CHECK_FALSE(n.passthrough.posix_acl);
  CHECK_FALSE(n.passthrough.security_label);
  CHECK_FALSE(n.passthrough.announce_submounts);
  CHECK(n.log_level == virtiofs::LogLevel::kError);
}

TEST_CASE("Kata's command line") {
  auto c = ParseOk({"--syslog", "--cache=auto", "--shared-dir=/run/kata/shared", "--fd=3",
                    "--thread-pool-size=1", "-o", "announce_submounts"});
  CHECK(c.syslog);
  CHECK(c.fd == 3);
  CHECK(c.passthrough.announce_submounts);
  auto n = ParseOk({"--syslog", "--cache=never", "--shared-dir=/s", "--fd=3",
                    "--announce-submounts", "--sandbox=none", "--seccomp=none"});
  CHECK(n.sandbox == SandboxKind::kNone);
  CHECK(n.seccomp == SeccompAction::kNone);
}

TEST_CASE("every modern flag") {
  auto c = ParseOk({"--shared-dir", "/d", "--socket", "/s", "--socket-group", "kvm", "--tag",
                    "myfs", "--readonly", "--writeback", "--no-readdirplus", "--allow-direct-io",
                    "--allow-mmap", "--no-announce-submounts", "--security-label",
                    "--no-killpriv-v2", "--inode-file-handles=prefer", "--preserve-noatime",
                    "--seccomp", "log", "--modcaps=-chown", "--uid-map", ":0:100000:65536:",
                    "--gid-map", ":0:100000:65536:", "--num-request-queues", "4",
                    "--io-engine", "sync", "--log-file", "/tmp/log", "--daemonize",
                    "--reconnect", "--stats-socket", "/tmp/stats", "--cache", "metadata"});
  CHECK(c.socket_path == "/s");
  CHECK(c.deprecations.size() == 1);  // --socket.
  CHECK(c.socket_group == "kvm");
  CHECK(c.tag == "myfs");
  CHECK(c.passthrough.readonly);
  CHECK(c.passthrough.writeback);
  CHECK_FALSE(c.passthrough.readdirplus);
  CHECK(c.passthrough.allow_direct_io);
  CHECK(c.passthrough.allow_mmap);
  CHECK_FALSE(c.passthrough.announce_submounts);
  CHECK(c.passthrough.security_label);
  CHECK_FALSE(c.passthrough.killpriv_v2);
  CHECK(c.passthrough.inode_file_handles == Handles::kPrefer);
  CHECK(c.passthrough.preserve_noatime);
  CHECK(c.seccomp == SeccompAction::kLog);
  CHECK(c.modcaps == "-chown");
  REQUIRE(c.uid_map.size() == 1);
  CHECK(c.uid_map[0].inside == 0);
  CHECK(c.uid_map[0].outside == 100000);
  CHECK(c.uid_map[0].count == 65536);
  REQUIRE(c.gid_map.size() == 1);
  CHECK(c.gid_map[0].outside == 100000);
  CHECK(c.num_request_queues == 4);
  CHECK(c.passthrough.io_engine == virtiofs::IoEngineKind::kSync);
  CHECK(c.log_file == "/tmp/log");
  CHECK(c.daemonize);
  CHECK(c.reconnect);
  CHECK(c.stats_socket == "/tmp/stats");
  CHECK(c.passthrough.cache == Cache::kMetadata);
  CHECK(ParseOk({"--shared-dir=/d", "--fd=4", "--inode-file-handles=mandatory"})
            .passthrough.inode_file_handles == Handles::kMandatory);
  CHECK(ParseOk({"--shared-dir=/d", "--fd=4", "--inode-file-handles=fallback"})
            .passthrough.inode_file_handles == Handles::kPrefer);
}

TEST_CASE("--xattrmap and -o xattrmap= take the rules and imply --xattr") {
  auto c = ParseOk({"--shared-dir=/d", "--fd=3", "--xattrmap=:map::user.virtiofs.:"});
  CHECK(c.passthrough.xattrmap == ":map::user.virtiofs.:");
  CHECK(c.passthrough.xattr);
  auto l = ParseOk({"--fd=3", "-o", "source=/d,xattrmap=/map/trusted./user.virtiofs./"});
  CHECK(l.passthrough.xattrmap == "/map/trusted./user.virtiofs./");
  CHECK(l.passthrough.xattr);
}

TEST_CASE("--translate-uid/--translate-gid rules reach the passthrough") {
  auto c = ParseOk({"--shared-dir=/d", "--fd=3", "--translate-uid=map:0:100000:65536",
                    "--translate-uid=squash-guest:70000:99:1000", "--translate-gid",
                    "map:0:100000:65536"});
  CHECK(c.passthrough.translate_uid.ToHost(0) == uint32_t{100000});
  CHECK(c.passthrough.translate_uid.ToHost(70001) == uint32_t{99});
  CHECK(c.passthrough.translate_uid.ToGuest(100005) == 5);
  CHECK(c.passthrough.translate_gid.ToHost(7) == uint32_t{100007});
}

TEST_CASE("a later flag overrides an earlier one, whatever its form") {
  CHECK(ParseOk({"--shared-dir=/a", "-o", "source=/b", "--fd=3"}).passthrough.root == "/b");
  CHECK(ParseOk({"-o", "source=/b", "--shared-dir=/a", "--fd=3"}).passthrough.root == "/a");
  CHECK(ParseOk({"--shared-dir=/a", "--fd=3", "--cache=never", "--cache=auto"})
            .passthrough.readdirplus);
  CHECK_FALSE(ParseOk({"--shared-dir=/a", "--fd=3", "--announce-submounts",
                       "--no-announce-submounts"})
                  .passthrough.announce_submounts);
  CHECK(ParseOk({"--shared-dir=/a", "--fd=3", "--no-killpriv-v2", "--killpriv-v2"})
            .passthrough.killpriv_v2);
}

TEST_CASE("help, version and capabilities need nothing else") {
  auto h = ParseOk({"--help"});
  CHECK(h.action == Config::Action::kHelp);
  // Every flag of virtiofsd's that libvirt, Kata and users pass is listed.
  for (const char* flag :
       {"--shared-dir", "--socket-path", "--socket-group", "--fd", "--tag", "--thread-pool-size",
        "--cache", "--allow-mmap", "--no-readdirplus", "--writeback", "--allow-direct-io",
        "--xattr", "--xattrmap", "--posix-acl", "--security-label", "--sandbox", "--seccomp",
        "--readonly", "--announce-submounts", "--no-announce-submounts", "--inode-file-handles",
        "--killpriv-v2", "--no-killpriv-v2", "--modcaps", "--uid-map", "--gid-map",
        "--translate-uid", "--translate-gid", "--preserve-noatime", "--rlimit-nofile",
        "--log-level", "--syslog", "--print-capabilities", "--version", "--help", "-o", "-f",
        "-d", "--socket ", "--daemonize", "--num-request-queues", "--io-engine", "--reconnect",
        "--stats-socket"}) {
    INFO(flag);
    CHECK(h.help_text.find(flag) != std::string::npos);
  }
  CHECK(ParseOk({"-V"}).action == Config::Action::kVersion);
  CHECK(ParseOk({"--print-capabilities"}).action == Config::Action::kPrintCapabilities);
  const std::string caps = CapabilitiesJson();
  CHECK(caps.find("\"type\": \"fs\"") != std::string::npos);
  CHECK(caps.find("\"separate-options\"") != std::string::npos);
  // Migration of the FUSE state is not implemented: not claimed.
  CHECK(caps.find("migrate-precopy") == std::string::npos);
}

TEST_CASE("wrong command lines are one clear error") {
  CHECK(ParseError({"--socket-path=/s"}).find("--shared-dir") != std::string::npos);
  CHECK(ParseError({"--shared-dir=/d"}).find("exactly one of") != std::string::npos);
  CHECK(ParseError({"--shared-dir=/d", "--fd=3", "--socket-path=/s"}).find("exactly one of") !=
        std::string::npos);
  CHECK(ParseError({"--shared-dir=/d", "--fd=3", "--socket-group=kvm"}).find("--socket-group") !=
        std::string::npos);
  CHECK(ParseError({"--bogus"}).find("--bogus") != std::string::npos);
  CHECK(ParseError({"--shared-dir=/d", "--fd=3", "extra"}).find("'extra'") != std::string::npos);
  CHECK(ParseError({"--shared-dir=/d", "--fd=x"}).find("--fd: 'x'") != std::string::npos);
  CHECK(ParseError({"--shared-dir=/d", "--fd=3", "--cache=sometimes"}) ==
        "--cache: 'sometimes' is not auto, always, metadata or never");
  CHECK(ParseError({"--shared-dir=/d", "--fd=3", "--sandbox=jail"}).find("--sandbox") !=
        std::string::npos);
  CHECK(ParseError({"--shared-dir=/d", "--fd=3", "--seccomp=maybe"}).find("--seccomp") !=
        std::string::npos);
  CHECK(ParseError({"--shared-dir=/d", "--fd=3", "--uid-map=0:1:2"}).find("--uid-map") !=
        std::string::npos);
  CHECK(ParseError({"--shared-dir=/d", "--fd=3", "--log-level=loud"}).find("--log-level") !=
        std::string::npos);
  CHECK(ParseError({"--shared-dir=/d", "--fd=3", "--tag="}).find("--tag") != std::string::npos);
  CHECK(ParseError({"--shared-dir=/d", "--fd=3", "--tag=0123456789012345678901234567890123456"})
            .find("1 to 36 bytes") != std::string::npos);
  CHECK(ParseError({"--shared-dir=/d", "--fd=3", "--num-request-queues=0"})
            .find("--num-request-queues") != std::string::npos);
  CHECK(ParseError({"--shared-dir=/d", "--fd=3", "--num-request-queues=256"})
            .find("--num-request-queues") != std::string::npos);
  CHECK(ParseError({"--shared-dir=/d", "--fd=3", "--io-engine=aio"}).find("--io-engine") !=
        std::string::npos);
  CHECK(ParseError({"--shared-dir=/d", "--fd=3", "--inode-file-handles=always"})
            .find("--inode-file-handles") != std::string::npos);
  CHECK(ParseError({"--fd=3", "-o", "source=/d,bogus"}) == "unknown option '-o bogus'");
  CHECK(ParseError({"--fd=3", "-o", "source=/d,speed=fast"}) == "unknown option '-o speed=fast'");
  CHECK(ParseError({"--fd=3", "-o", "source=/d,timeout=soon"}).find("-o timeout") !=
        std::string::npos);
  CHECK(ParseError({"--fd=3", "-o", "source="}).find("-o source: empty") != std::string::npos);
  CHECK(ParseError({"--shared-dir=/d", "--fd=3", "--xattrmap=:ok:client:::"})
            .find("xattrmap") != std::string::npos);
  CHECK(ParseError({"--fd=3", "-o", "source=/d,xattrmap=:nonsense"}).find("xattrmap") !=
        std::string::npos);
  CHECK(ParseError({"--shared-dir=/d", "--fd=3", "--translate-uid=map:0:1000"})
            .find("--translate-uid") != std::string::npos);
  CHECK(ParseError({"--shared-dir=/d", "--fd=3", "--translate-gid=map:0:1000:1",
                    "--translate-gid=map:0:2000:1"})
            .find("--translate-gid") != std::string::npos);  // Overlap.
  // No abbreviations: "--shared" is not "--shared-dir".
  CHECK_FALSE(Parse({"--shared=/d", "--fd=3"}).ok());
}

}  // namespace
}  // namespace virtiofsd
