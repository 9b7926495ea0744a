// uid/gid translation (virtiofsd's --translate-uid/--translate-gid): the
// rule parser, and the passthrough backend applying the rules to request
// credentials, to SETATTR owners, and to the owners in replies.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <string>
#include <thread>

#include "lib/passthrough/credentials.h"
#include "tests/support/fuse_harness.h"
#include "tests/support/fuse_request.h"
#include "tests/support/host_files.h"
#include "virtiofs/id_map.h"
#include "virtiofs/passthrough.h"

namespace virtiofs {
namespace {

using testing::BuildLookup;
using testing::BuildRequest;
using testing::FuseBody;
using testing::FuseHarness;
using testing::FuseReply;
using testing::TempDir;
using testing::WriteFile;
using Kind = IdMapRule::Kind;

// ---- The parser ---------------------------------------------------------

TEST_CASE("id map rules parse as virtiofsd writes them") {
  struct Case {
    const char* spec;
    Kind kind;
    uint32_t from, to;
    uint64_t count;
  };
  for (const Case& c : {
           Case{"map:1000:2000:10", Kind::kMap, 1000, 2000, 10},
           Case{"guest:0:100000:65536", Kind::kGuest, 0, 100000, 65536},
           Case{"host:501:0:1", Kind::kHost, 501, 0, 1},
           Case{"squash-guest:0:107:4294967295", Kind::kSquashGuest, 0, 107, 4294967295},
           Case{"squash-host:0:65534:4294967296", Kind::kSquashHost, 0, 65534, 4294967296},
           Case{"forbid-guest:2001:4294965294", Kind::kForbidGuest, 2001, 0, 4294965294},
           Case{"map:4294967295:4294967295:1", Kind::kMap, 4294967295u, 4294967295u, 1},
       }) {
    INFO(c.spec);
    auto r = ParseIdMapRule(c.spec);
    REQUIRE(r.ok());
    CHECK(r->kind == c.kind);
    CHECK(r->from == c.from);
    CHECK(r->to == c.to);
    CHECK(r->count == c.count);
  }
}

TEST_CASE("id map rules: malformed ones are refused with the rule named") {
  for (const char* bad : {
           "",
           "map",
           "map:1:2",
           "map:1:2:3:4",
           "forbid-guest:1:2:3",
           "squash:0:1:1",
           "MAP:1:2:3",
           "map:-1:2:3",
           "map:1:+2:3",
           "map: 1:2:3",
           "map:1:2:0",
           "map:a:2:3",
           "map:4294967296:0:1",
           "map:0:4294967296:1",
           "map:1:0:4294967296",
           "map:0:1:4294967296",
           "guest:4294967295:0:2",
           "forbid-guest:0:0",
           "squash-guest:0:1:99999999999",
           "host:1:2:",
           "::::",
       }) {
    INFO("'" << bad << "'");
    auto r = ParseIdMapRule(bad);
    CHECK(!r.ok());
    if (!r.ok())
      CHECK(r.status().message().find(std::string("'") + bad + "'") != std::string::npos);
  }
  // A squash range may end at the last id; its one target is any id.
  CHECK(ParseIdMapRule("squash-guest:1:4294967295:4294967295").ok());
}

TEST_CASE("id maps translate each direction on its own; unmapped ids stay") {
  IdMap m;
  REQUIRE(m.Add("map:1000:2000:10").ok());
  REQUIRE(m.Add("guest:50:60:5").ok());
  REQUIRE(m.Add("host:70:80:5").ok());
  REQUIRE(m.Add("squash-guest:100000:3000:65536").ok());
  REQUIRE(m.Add("squash-host:100000:65534:65536").ok());
  REQUIRE(m.Add("forbid-guest:5000:10").ok());
  CHECK(m.ToHost(1000) == 2000u);
  CHECK(m.ToHost(1009) == 2009u);
  CHECK(m.ToHost(1010) == 1010u);  // Past the range: itself.
  CHECK(m.ToGuest(2005) == 1005u);
  CHECK(m.ToHost(52) == 62u);
  CHECK(m.ToGuest(62) == 62u);  // guest: one way only.
  CHECK(m.ToGuest(72) == 82u);
  CHECK(m.ToHost(82) == 82u);  // host: one way only.
  CHECK(m.ToHost(100000) == 3000u);
  CHECK(m.ToHost(165535) == 3000u);
  CHECK(m.ToHost(165536) == 165536u);
  CHECK(m.ToGuest(123456) == 65534u);
  CHECK(!m.ToHost(5000).has_value());
  CHECK(!m.ToHost(5009).has_value());
  CHECK(m.ToHost(5010) == 5010u);
  CHECK(m.ToHost(4999) == 4999u);
  CHECK(m.ToGuest(5000) == 5000u);  // forbid-guest says nothing of host ids.
  CHECK(m.ToHost(0) == 0u);
  CHECK(m.ToGuest(4294967295u) == 4294967295u);
}

TEST_CASE("id maps: overlapping ranges of one direction are refused, atomically") {
  IdMap m;
  REQUIRE(m.Add("map:1000:2000:10").ok());
  CHECK(!m.Add("guest:1009:0:1").ok());        // Guest 1009 is mapped.
  CHECK(!m.Add("forbid-guest:990:11").ok());   // Ends at 1000 inclusive.
  CHECK(m.Add("forbid-guest:990:10").ok());    // [990, 1000): touches, fine.
  CHECK(!m.Add("squash-host:2009:0:5").ok());  // Host 2009 is mapped back.
  CHECK(m.Add("guest:2000:5:10").ok());        // Guest 2000..: a different direction.
  // map needs both directions free: the host side clashes, so the guest side
  // is not added either.
  CHECK(!m.Add("map:3000:2005:1").ok());
  CHECK(m.ToHost(3000) == 3000u);
  CHECK(m.Add("guest:3000:1:1").ok());
  // The full range at once.
  IdMap all;
  CHECK(all.Add("squash-guest:0:1000:4294967296").ok());
  CHECK(all.ToHost(0) == 1000u);
  CHECK(all.ToHost(4294967295u) == 1000u);
  CHECK(!all.Add("forbid-guest:4294967295:1").ok());
}

// ---- The backend --------------------------------------------------------

struct Env {
  explicit Env(PassthroughOptions o) {
    REQUIRE(chmod(dir.path.c_str(), 0777) == 0);
    o.root = dir.path;
    auto b = PassthroughBackend::Create(o);
    INFO(b.status().message());
    REQUIRE(b.ok());
    backend = *std::move(b);
    harness = std::make_unique<FuseHarness>(backend.get());
    harness->Init();
  }
  FuseReply Call(uint32_t opcode, uint64_t node, const FuseBody& body, uint32_t uid = 0,
                 uint32_t gid = 0, uint32_t reply = 4096) {
    return harness->Call(BuildRequest(opcode, harness->NextUnique(), node, body.bytes(), uid, gid),
                         reply);
  }
  FuseReply Lookup(std::string_view name, uint32_t uid = 0, uint32_t gid = 0) {
    std::vector<uint8_t> req = BuildLookup(harness->NextUnique(), FUSE_ROOT_ID, name);
    auto* h = reinterpret_cast<fuse_in_header*>(req.data());
    h->uid = uid;
    h->gid = gid;
    return harness->Call(req);
  }
  struct stat Host(std::string_view name) {
    struct stat st {};
    REQUIRE(lstat((dir / name).c_str(), &st) == 0);
    return st;
  }
  TempDir dir;
  std::unique_ptr<PassthroughBackend> backend;
  std::unique_ptr<FuseHarness> harness;
};

// With `squash_root`, guest root is host 3000 (and may not chown).
PassthroughOptions Translated(bool squash_root) {
  PassthroughOptions o;
  for (const char* r : {"map:1000:2000:10", "forbid-guest:5000:10", "host:4000:7000:1",
                        "squash-host:8000:65534:100"}) {
    REQUIRE(o.translate_uid.Add(r).ok());
  }
  for (const char* r : {"map:1000:2000:10", "forbid-guest:5000:10", "host:4000:7000:1"}) {
    REQUIRE(o.translate_gid.Add(r).ok());
  }
  if (squash_root) {
    REQUIRE(o.translate_uid.Add("squash-guest:0:3000:1").ok());
    REQUIRE(o.translate_gid.Add("squash-guest:0:3000:1").ok());
  }
  return o;
}

TEST_CASE("translated ids: files a guest user creates belong to the mapped host user") {
  if (geteuid() != 0) {
    WARN("not root: requests cannot run as other users; skipped");
    return;
  }
  Env e(Translated(true));
  fuse_create_in c{O_RDWR | O_CREAT, S_IFREG | 0644, 0, 0};
  auto r = e.Call(FUSE_CREATE, FUSE_ROOT_ID, FuseBody().Add(c).Name("mine"), 1001, 1002);
  REQUIRE(r.error() == 0);
  fuse_entry_out entry;
  std::memcpy(&entry, r.body.data(), sizeof entry);
  CHECK(e.Host("mine").st_uid == 2001u);
  CHECK(e.Host("mine").st_gid == 2002u);
  // ... and the guest sees its own ids back.
  CHECK(entry.attr.uid == 1001u);
  CHECK(entry.attr.gid == 1002u);
  fuse_mkdir_in mk{0755, 0};
  auto d = e.Call(FUSE_MKDIR, FUSE_ROOT_ID, FuseBody().Add(mk).Name("dir"), 1003, 1003);
  REQUIRE(d.error() == 0);
  CHECK(e.Host("dir").st_uid == 2003u);
  CHECK(d.BodyAs<fuse_entry_out>()->attr.uid == 1003u);

  // Guest root is squashed to host 3000: it creates as 3000, and it cannot
  // read a root-only host file (its request runs as 3000, not as root).
  fuse_create_in c2{O_RDWR | O_CREAT, S_IFREG | 0644, 0, 0};
  auto r2 = e.Call(FUSE_CREATE, FUSE_ROOT_ID, FuseBody().Add(c2).Name("rootmade"), 0, 0);
  REQUIRE(r2.error() == 0);
  CHECK(e.Host("rootmade").st_uid == 3000u);
  CHECK(e.Host("rootmade").st_gid == 3000u);
  WriteFile(e.dir / "secret", "s");
  REQUIRE(chmod((e.dir / "secret").c_str(), 0600) == 0);
  auto secret = e.Lookup("secret");
  REQUIRE(secret.error() == 0);
  const uint64_t s = secret.BodyAs<fuse_entry_out>()->nodeid;
  CHECK(e.Call(FUSE_OPEN, s, FuseBody().Add(fuse_open_in{O_RDONLY, 0}), 0, 0).error() == -EACCES);
  // Host root (uid 0 is not mapped back): the guest sees 0, unchanged.
  CHECK(secret.BodyAs<fuse_entry_out>()->attr.uid == 0u);
  // The squashed root may not give a file away either.
  fuse_setattr_in sa{};
  sa.valid = FATTR_UID;
  sa.uid = 1001;
  fuse_entry_out made;
  std::memcpy(&made, r2.body.data(), sizeof made);
  CHECK(e.Call(FUSE_SETATTR, made.nodeid, FuseBody().Add(sa)).error() == -EPERM);
  CHECK(e.Host("rootmade").st_uid == 3000u);
}

TEST_CASE("translated ids: forbidden guest ids fail with EPERM, as callers and as owners") {
  if (geteuid() != 0) {
    WARN("not root: skipped");
    return;
  }
  Env e(Translated(false));
  fuse_create_in c{O_RDWR | O_CREAT, S_IFREG | 0644, 0, 0};
  CHECK(e.Call(FUSE_CREATE, FUSE_ROOT_ID, FuseBody().Add(c).Name("x"), 5003, 100).error() ==
        -EPERM);
  CHECK(e.Call(FUSE_CREATE, FUSE_ROOT_ID, FuseBody().Add(c).Name("x"), 100, 5009).error() ==
        -EPERM);
  CHECK(e.Lookup("x", 5000, 5000).error() == -EPERM);
  CHECK(access((e.dir / "x").c_str(), F_OK) != 0);
  WriteFile(e.dir / "f", "f");
  auto f = e.Lookup("f");
  REQUIRE(f.error() == 0);
  const uint64_t node = f.BodyAs<fuse_entry_out>()->nodeid;
  fuse_setattr_in sa{};
  sa.valid = FATTR_UID;
  sa.uid = 5005;
  CHECK(e.Call(FUSE_SETATTR, node, FuseBody().Add(sa)).error() == -EPERM);
  sa.valid = FATTR_GID;
  sa.gid = 5001;
  CHECK(e.Call(FUSE_SETATTR, node, FuseBody().Add(sa)).error() == -EPERM);
  CHECK(e.Host("f").st_uid == 0u);
  CHECK(e.Host("f").st_gid == 0u);
  // Just outside the range: allowed, and unmapped (the same on the host).
  sa.valid = FATTR_UID | FATTR_GID;
  sa.uid = 5010;
  sa.gid = 4999;
  auto ok = e.Call(FUSE_SETATTR, node, FuseBody().Add(sa));
  REQUIRE(ok.error() == 0);
  CHECK(e.Host("f").st_uid == 5010u);
  CHECK(e.Host("f").st_gid == 4999u);
  CHECK(ok.BodyAs<fuse_attr_out>()->attr.uid == 5010u);
}

TEST_CASE("translated ids: SETATTR owners go guest->host, replies host->guest") {
  Env e(Translated(false));
  WriteFile(e.dir / "f", "f");
  auto f = e.Lookup("f");
  REQUIRE(f.error() == 0);
  const uint64_t node = f.BodyAs<fuse_entry_out>()->nodeid;
  fuse_setattr_in sa{};
  sa.valid = FATTR_UID | FATTR_GID;
  sa.uid = 1005;
  sa.gid = 1006;
  auto r = e.Call(FUSE_SETATTR, node, FuseBody().Add(sa));
  REQUIRE(r.error() == 0);
  CHECK(e.Host("f").st_uid == 2005u);
  CHECK(e.Host("f").st_gid == 2006u);
  CHECK(r.BodyAs<fuse_attr_out>()->attr.uid == 1005u);
  CHECK(r.BodyAs<fuse_attr_out>()->attr.gid == 1006u);

  // One-way host rules and squash-host, in LOOKUP, GETATTR and READDIRPLUS.
  WriteFile(e.dir / "h4000", "h");
  REQUIRE(chown((e.dir / "h4000").c_str(), 4000, 4000) == 0);
  WriteFile(e.dir / "h8042", "h");
  REQUIRE(chown((e.dir / "h8042").c_str(), 8042, 8042) == 0);
  auto l = e.Lookup("h4000");
  REQUIRE(l.error() == 0);
  CHECK(l.BodyAs<fuse_entry_out>()->attr.uid == 7000u);
  CHECK(l.BodyAs<fuse_entry_out>()->attr.gid == 7000u);
  auto g =
      e.Call(FUSE_GETATTR, l.BodyAs<fuse_entry_out>()->nodeid, FuseBody().Add(fuse_getattr_in{}));
  REQUIRE(g.error() == 0);
  CHECK(g.BodyAs<fuse_attr_out>()->attr.uid == 7000u);
  auto l2 = e.Lookup("h8042");
  REQUIRE(l2.error() == 0);
  CHECK(l2.BodyAs<fuse_entry_out>()->attr.uid == 65534u);
  CHECK(l2.BodyAs<fuse_entry_out>()->attr.gid == 8042u);  // No squash-host for gids.

  auto od = e.Call(FUSE_OPENDIR, FUSE_ROOT_ID, FuseBody().Add(fuse_open_in{O_RDONLY, 0}));
  REQUIRE(od.error() == 0);
  fuse_read_in rd{};
  rd.fh = od.BodyAs<fuse_open_out>()->fh;
  rd.size = 8192;
  auto dr = e.Call(FUSE_READDIRPLUS, FUSE_ROOT_ID, FuseBody().Add(rd), 0, 0, 16 + 8192);
  REQUIRE(dr.error() == 0);
  int seen = 0;
  for (size_t pos = 0; pos < dr.body.size();) {
    auto* dp = reinterpret_cast<const fuse_direntplus*>(dr.body.data() + pos);
    const std::string name(dp->dirent.name, dp->dirent.namelen);
    if (name == "h4000") {
      CHECK(dp->entry_out.attr.uid == 7000u);
      ++seen;
    } else if (name == "h8042") {
      CHECK(dp->entry_out.attr.uid == 65534u);
      ++seen;
    } else if (name == "f") {
      CHECK(dp->entry_out.attr.uid == 1005u);
      ++seen;
    }
    pos += FUSE_DIRENTPLUS_SIZE(dp);
  }
  CHECK(seen == 3);
}

}  // namespace
}  // namespace virtiofs

namespace virtiofs {
namespace {

// This thread's effective capabilities, from /proc.
std::string CapEff() {
  std::string status = testing::ReadFile("/proc/thread-self/status");
  const size_t at = status.find("CapEff:");
  if (at == std::string::npos) return "?";
  return status.substr(at + 7, status.find('\n', at) - at - 7);
}

TEST_CASE("a non-root caller's request runs without any of the daemon's capabilities") {
  if (geteuid() != 0) {
    WARN("not root: skipped");
    return;
  }
  // On a thread of its own: the switch is per thread.
  std::thread([] {
    const std::string before = CapEff();
    REQUIRE(before.find_first_not_of("0\t ") != std::string::npos);  // Root has some.
    {
      passthrough::HostIds user;
      user.uid = 1000;
      user.gid = 1000;
      passthrough::ScopedCredentials creds(true, user);
      REQUIRE(creds.ok());
      // Not only the file-system capabilities a non-root fsuid drops:
      // CAP_SYS_ADMIN, CAP_SYS_RESOURCE, CAP_SETFCAP, ... too.
      CHECK(CapEff().find_first_not_of("0\t ") == std::string::npos);
    }
    CHECK(CapEff() == before);
    {
      passthrough::HostIds root;
      passthrough::ScopedCredentials creds(true, root);
      REQUIRE(creds.ok());
      CHECK(CapEff() == before);  // Root callers keep them.
    }
    CHECK(CapEff() == before);
  }).join();
}

}  // namespace
}  // namespace virtiofs
