// examples/readonly_view: ReadOnlyView over the passthrough backend.
//
// Part 1 drives it through the FUSE harness on a temporary host directory:
// reads work, every request that would change something answers EROFS, and
// the host directory (names, types, modes, owners, sizes, contents, link
// targets, xattrs, mtimes and ctimes) is exactly as before. The same change
// requests sent to the passthrough backend without the view do change the
// directory (so they are well formed and the view is what stops them).
//
// Part 2 runs the readonly_view program (path in $READONLY_VIEW) and drives
// it over its vhost-user socket with the test front-end.
#include "examples/readonly_view/readonly_view.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/fs.h>
#include <linux/fuse.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tests/support/daemon_process.h"
#include "tests/support/driver_queue.h"
#include "tests/support/frontend.h"
#include "tests/support/fuse_harness.h"
#include "tests/support/fuse_request.h"
#include "tests/support/guest_ram.h"
#include "tests/support/host_files.h"
#include "virtiofs/passthrough.h"

namespace virtiofs {
namespace {

using readonly_view::ReadOnlyView;
using testing::BuildInit;
using testing::BuildLookup;
using testing::BuildRequest;
using testing::FuseBody;
using testing::FuseHarness;
using testing::FuseReply;
using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;
namespace fs = std::filesystem;

constexpr char kHello[] = "hello, read-only world\n";

// The tree every test starts from.
bool Populate(const std::string& root) {
  WriteFile(root + "/hello.txt", kHello);
  WriteFile(root + "/victim.txt", "unlink me");
  WriteFile(root + "/moveme", "m1");
  WriteFile(root + "/moveme2", "m2");
  fs::create_directory(root + "/sub");
  WriteFile(root + "/sub/inner.txt", "inner");
  fs::create_directory(root + "/emptydir");
  fs::create_symlink("hello.txt", root + "/link");
  // user xattrs, where the host file system has them.
  return setxattr((root + "/hello.txt").c_str(), "user.note", "kept", 4, 0) == 0;
}

// Everything about the tree that a change would show (atimes aside: reads
// may move them).
std::map<std::string, std::string> Snapshot(const std::string& root) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    const std::string path = e.path().string();
    struct stat st;
    REQUIRE(lstat(path.c_str(), &st) == 0);
    std::string d =
        fmt::format("mode={:o} uid={} gid={} size={} nlink={} mtime={}.{} ctime={}.{}", st.st_mode,
                    st.st_uid, st.st_gid, st.st_size, st.st_nlink, st.st_mtim.tv_sec,
                    st.st_mtim.tv_nsec, st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
    if (S_ISREG(st.st_mode)) d += " data=" + ReadFile(path);
    if (S_ISLNK(st.st_mode)) d += " target=" + fs::read_symlink(path).string();
    char names[4096];
    const ssize_t n = llistxattr(path.c_str(), names, sizeof names);
    for (ssize_t i = 0; i < n; i += static_cast<ssize_t>(std::strlen(names + i)) + 1) {
      char value[256];
      const ssize_t v = lgetxattr(path.c_str(), names + i, value, sizeof value);
      d += fmt::format(" xattr {}={}", names + i, std::string(value, v > 0 ? v : 0));
    }
    out[path.substr(root.size())] = d;
  }
  struct stat st;
  REQUIRE(lstat(root.c_str(), &st) == 0);
  out["/"] = fmt::format("mode={:o} mtime={}.{} ctime={}.{}", st.st_mode, st.st_mtim.tv_sec,
                         st.st_mtim.tv_nsec, st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
  return out;
}

// The passthrough backend on a populated temporary directory, behind the
// view or not, with a FUSE session on it.
struct Env {
  explicit Env(bool view, PassthroughOptions o = {}) {
    has_xattrs = Populate(dir.path);
    o.root = dir.path;
    auto b = PassthroughBackend::Create(o);
    INFO(b.status().message());
    REQUIRE(b.ok());
    passthrough = *std::move(b);
    if (view) readonly = std::make_unique<ReadOnlyView>(passthrough.get());
    harness = std::make_unique<FuseHarness>(view ? static_cast<Backend*>(readonly.get())
                                                 : passthrough.get());
  }
  FuseReply Call(uint32_t opcode, uint64_t node, const FuseBody& body = FuseBody(),
                 uint32_t reply = 4096) {
    return harness->Call(BuildRequest(opcode, harness->NextUnique(), node, body.bytes()), reply);
  }
  uint64_t Lookup(std::string_view name, uint64_t parent = FUSE_ROOT_ID) {
    auto r = harness->Call(BuildLookup(harness->NextUnique(), parent, name));
    INFO("lookup " << name);
    REQUIRE(r.error() == 0);
    return r.BodyAs<fuse_entry_out>()->nodeid;
  }
  uint64_t Open(uint64_t node, uint32_t flags) {
    auto r = Call(FUSE_OPEN, node, FuseBody().Add(fuse_open_in{flags, 0}));
    INFO("open flags " << flags);
    REQUIRE(r.error() == 0);
    return r.BodyAs<fuse_open_out>()->fh;
  }

  TempDir dir{"readonly-view-test"};
  bool has_xattrs = false;
  std::unique_ptr<PassthroughBackend> passthrough;
  std::unique_ptr<ReadOnlyView> readonly;
  std::unique_ptr<FuseHarness> harness;
};

struct ChangeCase {
  std::string name;
  uint32_t opcode;
  uint64_t node;
  FuseBody body;
  // Without the view, the passthrough backend may not serve it at all
  // (DAX mappings, ioctls that write): any answer but EROFS is then fine.
  bool may_be_unsupported = false;
};

// Every request that would change the tree. `fh` is an open handle of
// hello.txt (read-only behind the view, read-write without it).
std::vector<ChangeCase> ChangeCases(Env& e, uint64_t fh) {
  const uint64_t hello = e.Lookup("hello.txt");
  const uint64_t sub = e.Lookup("sub");
  std::vector<ChangeCase> v;
  auto add = [&](std::string name, uint32_t opcode, uint64_t node, FuseBody body,
                 bool may_be_unsupported = false) {
    v.push_back({std::move(name), opcode, node, std::move(body), may_be_unsupported});
  };
  fuse_setattr_in chmod{};
  chmod.valid = FATTR_MODE;
  chmod.mode = S_IFREG | 0600;
  add("SETATTR mode", FUSE_SETATTR, hello, FuseBody().Add(chmod));
  fuse_setattr_in truncate{};
  truncate.valid = FATTR_SIZE | FATTR_FH;
  truncate.fh = fh;
  truncate.size = 3;
  add("SETATTR size", FUSE_SETATTR, hello, FuseBody().Add(truncate));
  add("MKNOD", FUSE_MKNOD, FUSE_ROOT_ID,
      FuseBody().Add(fuse_mknod_in{S_IFIFO | 0600, 0, 0, 0}).Name("fifo"));
  add("MKDIR", FUSE_MKDIR, FUSE_ROOT_ID, FuseBody().Add(fuse_mkdir_in{0755, 0}).Name("newdir"));
  add("SYMLINK", FUSE_SYMLINK, sub, FuseBody().Name("newlink").Name("../hello.txt"));
  add("UNLINK", FUSE_UNLINK, FUSE_ROOT_ID, FuseBody().Name("victim.txt"));
  add("RMDIR", FUSE_RMDIR, FUSE_ROOT_ID, FuseBody().Name("emptydir"));
  add("RENAME", FUSE_RENAME, FUSE_ROOT_ID,
      FuseBody().Add(fuse_rename_in{sub}).Name("moveme").Name("moved"));
  add("RENAME2", FUSE_RENAME2, FUSE_ROOT_ID,
      FuseBody()
          .Add(fuse_rename2_in{FUSE_ROOT_ID, RENAME_NOREPLACE, 0})
          .Name("moveme2")
          .Name("m2"));
  add("LINK", FUSE_LINK, sub, FuseBody().Add(fuse_link_in{hello}).Name("hardlink"));
  add("CREATE", FUSE_CREATE, FUSE_ROOT_ID,
      FuseBody().Add(fuse_create_in{O_RDWR | O_CREAT | O_EXCL, S_IFREG | 0644, 0, 0}).Name("new"));
  add("TMPFILE", FUSE_TMPFILE, FUSE_ROOT_ID,
      FuseBody().Add(fuse_create_in{O_RDWR | O_TMPFILE, S_IFREG | 0600, 0, 0}).Name("/"),
      /*may_be_unsupported=*/true);  // Then not a change either.
  fuse_write_in write{};
  write.fh = fh;
  write.offset = 0;
  write.size = 5;
  add("WRITE", FUSE_WRITE, hello, FuseBody().Add(write).Raw("XXXXX"));
  fuse_fallocate_in falloc{};
  falloc.fh = fh;
  falloc.length = 1 << 20;
  add("FALLOCATE", FUSE_FALLOCATE, hello, FuseBody().Add(falloc));
  fuse_copy_file_range_in copy{};
  copy.fh_in = fh;
  copy.off_in = 0;
  copy.nodeid_out = hello;
  copy.fh_out = fh;
  copy.off_out = 4096;
  copy.len = 3;
  add("COPY_FILE_RANGE", FUSE_COPY_FILE_RANGE, hello, FuseBody().Add(copy));
  if (e.has_xattrs) {
    add("SETXATTR", FUSE_SETXATTR, hello,
        FuseBody().AddPrefix(fuse_setxattr_in{3, 0, 0, 0}, 8).Name("user.new").Raw("new"));
    add("REMOVEXATTR", FUSE_REMOVEXATTR, hello, FuseBody().Name("user.note"));
  }
  // Opens that would change or could change: the open itself is refused.
  add("OPEN O_WRONLY", FUSE_OPEN, hello, FuseBody().Add(fuse_open_in{O_WRONLY, 0}));
  add("OPEN O_RDWR", FUSE_OPEN, hello, FuseBody().Add(fuse_open_in{O_RDWR, 0}));
  add("OPEN O_TRUNC", FUSE_OPEN, hello, FuseBody().Add(fuse_open_in{O_RDONLY | O_TRUNC, 0}));
  add("ACCESS W_OK", FUSE_ACCESS, hello, FuseBody().Add(fuse_access_in{W_OK, 0}));
  fuse_ioctl_in setflags{};
  setflags.fh = fh;
  setflags.cmd = FS_IOC_SETFLAGS;
  setflags.in_size = 4;
  add("IOCTL FS_IOC_SETFLAGS", FUSE_IOCTL, hello,
      FuseBody().Add(setflags).Add(int32_t{FS_APPEND_FL}), /*may_be_unsupported=*/true);
  fuse_setupmapping_in map{};
  map.fh = fh;
  map.len = 4096;
  map.flags = FUSE_SETUPMAPPING_FLAG_READ | FUSE_SETUPMAPPING_FLAG_WRITE;
  add("SETUPMAPPING write", FUSE_SETUPMAPPING, hello, FuseBody().Add(map),
      /*may_be_unsupported=*/true);
  return v;
}

TEST_CASE("readonly_view: every change is EROFS and the host directory is unchanged") {
  Env e(/*view=*/true);
  e.harness->Init();
  if (!e.has_xattrs) WARN("the host file system has no user xattrs: xattr cases skipped");
  const auto before = Snapshot(e.dir.path);
  const uint64_t fh = e.Open(e.Lookup("hello.txt"), O_RDONLY);
  for (const ChangeCase& c : ChangeCases(e, fh)) {
    INFO(c.name);
    CHECK(e.Call(c.opcode, c.node, c.body).error() == -EROFS);
  }
  // Nothing the inner backend would count was created (no stray lookups).
  CHECK(e.passthrough->inode_count() == 3);  // The root, hello.txt and sub.
  CHECK(Snapshot(e.dir.path) == before);
}

TEST_CASE("readonly_view: the same requests change the directory without the view") {
  Env e(/*view=*/false);
  e.harness->Init();
  const auto before = Snapshot(e.dir.path);
  const uint64_t fh = e.Open(e.Lookup("hello.txt"), O_RDWR);
  for (const ChangeCase& c : ChangeCases(e, fh)) {
    INFO(c.name);
    const int32_t err = e.Call(c.opcode, c.node, c.body).error();
    CHECK(err != -EROFS);
    if (!c.may_be_unsupported) CHECK(err == 0);
  }
  const auto after = Snapshot(e.dir.path);
  CHECK(after != before);
  CHECK(fs::is_directory(e.dir / "newdir"));
  CHECK_FALSE(fs::exists(e.dir / "victim.txt"));
  CHECK(fs::exists(e.dir / "sub/moved"));
  // Written, extended, and finally emptied by OPEN with O_TRUNC.
  CHECK(ReadFile(e.dir / "hello.txt").empty());
}

TEST_CASE("readonly_view: reads, listings, xattrs and locks go through") {
  Env e(/*view=*/true);
  e.harness->Init();
  const auto before = Snapshot(e.dir.path);

  const uint64_t hello = e.Lookup("hello.txt");
  auto attr = e.Call(FUSE_GETATTR, hello, FuseBody().Add(fuse_getattr_in{}));
  REQUIRE(attr.error() == 0);
  CHECK(attr.BodyAs<fuse_attr_out>()->attr.size == sizeof kHello - 1);
  CHECK(e.Call(FUSE_ACCESS, hello, FuseBody().Add(fuse_access_in{R_OK, 0})).error() == 0);

  const uint64_t fh = e.Open(hello, O_RDONLY);
  fuse_read_in rd{};
  rd.fh = fh;
  rd.size = 4096;
  auto data = e.Call(FUSE_READ, hello, FuseBody().Add(rd), 16 + 4096);
  REQUIRE(data.error() == 0);
  CHECK(std::string(data.body.begin(), data.body.end()) == kHello);

  // Locks are advisory: a read lock on the read-only handle, then unlocked.
  fuse_lk_in lk{};
  lk.fh = fh;
  lk.owner = 7;
  lk.lk = {0, 10, F_RDLCK, 0};
  CHECK(e.Call(FUSE_SETLK, hello, FuseBody().Add(lk)).error() == 0);
  auto held = e.Call(FUSE_GETLK, hello, FuseBody().Add(lk));
  CHECK(held.error() == 0);
  lk.lk.type = F_UNLCK;
  CHECK(e.Call(FUSE_SETLK, hello, FuseBody().Add(lk)).error() == 0);
  CHECK(e.Call(FUSE_FLUSH, hello, FuseBody().Add(fuse_flush_in{fh, 0, 0, 7})).error() == 0);
  CHECK(e.Call(FUSE_FSYNC, hello, FuseBody().Add(fuse_fsync_in{fh, 0, 0})).error() == 0);
  fuse_release_in rel{};
  rel.fh = fh;
  CHECK(e.Call(FUSE_RELEASE, hello, FuseBody().Add(rel)).error() == 0);

  // A read-only ioctl passes the view (the passthrough serves GETFLAGS, or
  // answers what the host file system says, never EROFS).
  const uint64_t fh2 = e.Open(hello, O_RDONLY);
  fuse_ioctl_in getflags{};
  getflags.fh = fh2;
  getflags.cmd = FS_IOC_GETFLAGS;
  getflags.out_size = 4;
  CHECK(e.Call(FUSE_IOCTL, hello, FuseBody().Add(getflags)).error() != -EROFS);

  // The symlink and the directory.
  auto target = e.Call(FUSE_READLINK, e.Lookup("link"));
  REQUIRE(target.error() == 0);
  CHECK(std::string(target.body.begin(), target.body.end()) == "hello.txt");
  const uint64_t sub = e.Lookup("sub");
  auto od = e.Call(FUSE_OPENDIR, sub, FuseBody().Add(fuse_open_in{O_RDONLY | O_DIRECTORY, 0}));
  REQUIRE(od.error() == 0);
  fuse_read_in rdir{};
  rdir.fh = od.BodyAs<fuse_open_out>()->fh;
  rdir.size = 4096;
  auto listing = e.Call(FUSE_READDIR, sub, FuseBody().Add(rdir), 16 + 4096);
  REQUIRE(listing.error() == 0);
  const std::string names(listing.body.begin(), listing.body.end());
  CHECK(names.find("inner.txt") != std::string::npos);
  CHECK(e.Lookup("inner.txt", sub) != 0);

  auto statfs = e.Call(FUSE_STATFS, FUSE_ROOT_ID);
  CHECK(statfs.error() == 0);

  if (e.has_xattrs) {
    auto value =
        e.Call(FUSE_GETXATTR, hello, FuseBody().Add(fuse_getxattr_in{64, 0}).Name("user.note"));
    REQUIRE(value.error() == 0);
    CHECK(std::string(value.body.begin(), value.body.end()) == "kept");
    auto list = e.Call(FUSE_LISTXATTR, hello, FuseBody().Add(fuse_getxattr_in{256, 0}));
    REQUIRE(list.error() == 0);
    CHECK(std::string(list.body.begin(), list.body.end()).find("user.note") != std::string::npos);
  } else {
    WARN("the host file system has no user xattrs: xattr reads skipped");
  }
  CHECK(Snapshot(e.dir.path) == before);
}

TEST_CASE("readonly_view: the writeback cache is never offered") {
  PassthroughOptions o;
  o.writeback = true;
  // Without the view the passthrough offers it (the test would pass
  // vacuously otherwise)...
  {
    Env plain(/*view=*/false, o);
    auto init = plain.harness->Init(FUSE_WRITEBACK_CACHE).BodyPrefixAs<fuse_init_out>(24);
    REQUIRE(init.ok());
    REQUIRE((init->flags & FUSE_WRITEBACK_CACHE) != 0);
  }
  // ...and the view masks it out, keeping the rest.
  Env e(/*view=*/true, o);
  CHECK((e.readonly->InitFlags() & FUSE_WRITEBACK_CACHE) == 0);
  CHECK(e.readonly->InitFlags() == (e.passthrough->InitFlags() & ~uint64_t{FUSE_WRITEBACK_CACHE}));
  auto init =
      e.harness->Init(FUSE_WRITEBACK_CACHE | FUSE_POSIX_LOCKS).BodyPrefixAs<fuse_init_out>(24);
  REQUIRE(init.ok());
  CHECK((init->flags & FUSE_WRITEBACK_CACHE) == 0);
  CHECK((init->flags & FUSE_POSIX_LOCKS) != 0);
}

// ==== Part 2: the program, over vhost-user ================================

// The readonly_view program with `args`, always reaped (SIGKILL if it
// lingers).
class Program : public testing::DaemonProcess {
 public:
  Program(std::vector<std::string> args, const std::string& log)
      : DaemonProcess(WithPath(std::move(args)), log) {}

 private:
  static std::vector<std::string> WithPath(std::vector<std::string> args) {
    const char* bin = std::getenv("READONLY_VIEW");
    REQUIRE(bin != nullptr);
    args.insert(args.begin(), bin);
    return args;
  }
};

TEST_CASE("readonly_view program: serves the directory read-only over vhost-user") {
  TempDir dir{"readonly-view-prog"};
  const std::string share = dir / "share";
  fs::create_directory(share);
  Populate(share);
  const auto before = Snapshot(share);
  Program prog({"--shared-dir", share, "--socket-path", dir / "sock"}, dir / "log");

  using namespace vhost_user;  // NOLINT: protocol names in a test.
  auto ram = testing::GuestRam::CreateOrDie(16 << 20);
  testing::DriverQueue hiprio(*ram, 128, 0, 0x10000, 0x10000, true);
  testing::DriverQueue q(*ram, 256, 0x100000, 0x200000, 14 << 20, true);
  auto f = testing::Frontend::Connect(dir / "sock", 10000);
  INFO(f.status().message() << "\nprogram output:\n" << ReadFile(dir / "log"));
  REQUIRE(f.ok());
  std::unique_ptr<testing::Frontend> fe = *std::move(f);
  REQUIRE(fe->Negotiate(Bit(VIRTIO_F_VERSION_1) | Bit(VIRTIO_RING_F_INDIRECT_DESC) |
                            Bit(VIRTIO_RING_F_EVENT_IDX) | Bit(kFeatureProtocolFeatures),
                        Bit(kProtocolReplyAck) | Bit(kProtocolMq) | Bit(kProtocolConfig))
              .ok());
  REQUIRE(fe->SetMemTable(*ram).ok());
  REQUIRE(fe->StartVring(0, hiprio).ok());
  REQUIRE(fe->StartVring(1, q).ok());
  uint64_t unique = 0;
  auto call = [&](std::vector<uint8_t> req, uint32_t reply = 4096) {
    auto r = testing::FuseTransact(*fe, 1, q, *ram, req, reply);
    INFO(r.status().message());
    REQUIRE(r.ok());
    q.ResetAlloc();
    return *std::move(r);
  };
  auto init = call(BuildInit(unique += 2, testing::kDefaultInitFlags | FUSE_WRITEBACK_CACHE));
  REQUIRE(init.error() == 0);
  CHECK((init.BodyPrefixAs<fuse_init_out>(24)->flags & FUSE_WRITEBACK_CACHE) == 0);

  // The tag the program was given (default "readonly") is in config space.
  auto config = fe->Call(Request::kGetConfig, [] {
    std::vector<uint8_t> p(12 + 40, 0);
    const uint32_t size = 40;
    std::memcpy(p.data() + 4, &size, 4);
    return p;
  }());
  INFO(config.status().message());
  REQUIRE(config.ok());
  REQUIRE(config->payload.size() == 12 + 40);
  CHECK(std::string(reinterpret_cast<const char*>(config->payload.data()) + 12) == "readonly");

  auto lookup = call(BuildLookup(unique += 2, FUSE_ROOT_ID, "hello.txt"));
  REQUIRE(lookup.error() == 0);
  const uint64_t hello = lookup.BodyAs<fuse_entry_out>()->nodeid;
  auto open = call(BuildRequest(FUSE_OPEN, unique += 2, hello,
                                FuseBody().Add(fuse_open_in{O_RDONLY, 0}).bytes()));
  REQUIRE(open.error() == 0);
  fuse_read_in rd{};
  rd.fh = open.BodyAs<fuse_open_out>()->fh;
  rd.size = 4096;
  auto data =
      call(BuildRequest(FUSE_READ, unique += 2, hello, FuseBody().Add(rd).bytes()), 16 + 4096);
  REQUIRE(data.error() == 0);
  CHECK(std::string(data.body.begin(), data.body.end()) == kHello);

  CHECK(call(BuildRequest(FUSE_MKDIR, unique += 2, FUSE_ROOT_ID,
                          FuseBody().Add(fuse_mkdir_in{0755, 0}).Name("d").bytes()))
            .error() == -EROFS);
  CHECK(call(BuildRequest(FUSE_OPEN, unique += 2, hello,
                          FuseBody().Add(fuse_open_in{O_WRONLY | O_TRUNC, 0}).bytes()))
            .error() == -EROFS);
  CHECK(call(BuildRequest(FUSE_UNLINK, unique += 2, FUSE_ROOT_ID,
                          FuseBody().Name("victim.txt").bytes()))
            .error() == -EROFS);
  fuse_write_in w{};
  w.fh = rd.fh;
  w.size = 3;
  CHECK(call(BuildRequest(FUSE_WRITE, unique += 2, hello, FuseBody().Add(w).Raw("abc").bytes()))
            .error() == -EROFS);

  // SIGTERM: a clean exit, the host directory as it was.
  fe.reset();
  kill(prog.pid(), SIGTERM);
  auto status = prog.Wait(10000);
  REQUIRE(status);
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 0);
  CHECK(Snapshot(share) == before);
  CHECK(ReadFile(dir / "log").find("serving " + share + " read-only") != std::string::npos);
}

TEST_CASE("readonly_view program: bad command lines fail before serving") {
  TempDir dir{"readonly-view-args"};
  {
    Program p({"--socket-path", dir / "sock"}, dir / "log");
    auto st = p.Wait(10000);
    REQUIRE(st);
    CHECK(WEXITSTATUS(*st) == 2);
    CHECK(ReadFile(dir / "log").find("--shared-dir and --socket-path are required") !=
          std::string::npos);
  }
  {
    Program p({"--shared-dir", dir / "missing", "--socket-path", dir / "sock"}, dir / "log");
    auto st = p.Wait(10000);
    REQUIRE(st);
    CHECK(WEXITSTATUS(*st) == 1);
    CHECK_FALSE(fs::exists(dir / "sock"));
  }
}

}  // namespace
}  // namespace virtiofs
