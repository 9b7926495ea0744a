// ForwardingBackend (include/virtiofs/forwarding_backend.h): every call
// reaches the inner backend with its arguments unchanged, and the inner
// backend's answer reaches the guest.
//
// Each FUSE request of every opcode runs twice through the FUSE harness (a
// real split queue in guest RAM): once on a RecordingBackend directly, once
// on a ForwardingBackend over the same RecordingBackend. The calls the
// recorder saw (every argument, the request context, guest buffers as
// offsets in guest RAM) and the reply bytes the guest got must be the same,
// and the call must be the operation the request names. A method the
// forwarder did not override would answer ENOSYS without reaching the
// recorder; one that mixed up arguments would record something else.
#include "virtiofs/forwarding_backend.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/fuse.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "lib/fuse/fuse_compat.h"
#include "tests/support/fuse_harness.h"
#include "tests/support/fuse_request.h"
#include "tests/support/recording_backend.h"
#include "virtiofs/backend.h"

namespace virtiofs {
namespace {

using testing::BuildRequest;
using testing::FuseBody;
using testing::FuseHarness;
using testing::FuseReply;

template <typename T>
T Zeroed() {
  T v;
  std::memset(&v, 0, sizeof v);
  return v;
}

// The shared recorder (tests/support/recording_backend.h), with every
// argument, the request context and the guest buffers in its lines, and
// answers distinctive enough that a wrong one shows where its defaults are
// empty or zero.
class Recorder : public testing::RecordingBackend {
 public:
  Recorder() {
    record_details = true;
    read_data = "forwarded data";
    text = "xattr value";
    u32 = 7;   // WRITE: all of the 7 bytes sent; POLL: the revents.
    u64 = 25;  // COPY_FILE_RANGE: at most the length asked; LSEEK; BMAP.
    dir = {{"entry", 77, DT_REG, 1, testing::TestEntry(77)}};
  }
};

// A request of every opcode that gets a reply, with distinct non-zero values
// in every field, and the name of the Backend method it must reach.
struct OpCase {
  std::string method;
  uint32_t opcode;
  uint64_t node;
  FuseBody body;
};

std::vector<OpCase> AllOpCases() {
  constexpr uint64_t kDir = 5, kFile = 9;
  std::vector<OpCase> v;
  auto add = [&](std::string method, uint32_t opcode, uint64_t node, FuseBody body) {
    v.push_back({std::move(method), opcode, node, std::move(body)});
  };
  auto getattr = Zeroed<fuse_getattr_in>();
  getattr.getattr_flags = FUSE_GETATTR_FH;
  getattr.fh = 0x4411;
  auto setattr = Zeroed<fuse_setattr_in>();
  setattr.valid = FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_SIZE | FATTR_ATIME | FATTR_MTIME |
                  FATTR_FH | FATTR_LOCKOWNER | FATTR_CTIME;
  setattr.fh = 0x4412;
  setattr.size = 4096;
  setattr.lock_owner = 0x10c0;
  setattr.atime = 1700000001;
  setattr.mtime = 1700000002;
  setattr.ctime = 1700000003;
  setattr.atimensec = 11;
  setattr.mtimensec = 22;
  setattr.ctimensec = 33;
  setattr.mode = S_IFREG | 0604;
  setattr.uid = 1234;
  setattr.gid = 5678;
  auto read = Zeroed<fuse_read_in>();
  read.fh = 0x4413;
  read.offset = 8192;
  read.size = 100;
  read.read_flags = FUSE_READ_LOCKOWNER;
  read.lock_owner = 0x10c1;
  read.flags = O_RDONLY | O_NOATIME;
  auto write = Zeroed<fuse_write_in>();
  write.fh = 0x4414;
  write.offset = 12288;
  write.size = 7;
  write.write_flags = FUSE_WRITE_LOCKOWNER;
  write.lock_owner = 0x10c2;
  write.flags = O_WRONLY | O_APPEND;
  auto lk = Zeroed<fuse_lk_in>();
  lk.fh = 0x4415;
  lk.owner = 0x10c3;
  lk.lk = {100, 199, F_RDLCK, 4242};
  auto flk = lk;
  flk.lk_flags = FUSE_LK_FLOCK;
  flk.lk = {0, INT64_MAX, F_WRLCK, 4243};
  auto ioctl = Zeroed<fuse_ioctl_in>();
  ioctl.fh = 0x4416;
  ioctl.flags = FUSE_IOCTL_UNRESTRICTED;
  ioctl.cmd = 0x8004660b;
  ioctl.arg = 0xA0A0;
  ioctl.in_size = 4;
  ioctl.out_size = 8;
  auto fallocate = Zeroed<fuse_fallocate_in>();
  fallocate.fh = 0x4417;
  fallocate.offset = 1000;
  fallocate.length = 2000;
  fallocate.mode = 1;  // FALLOC_FL_KEEP_SIZE
  auto lseek = Zeroed<fuse_lseek_in>();
  lseek.fh = 0x4418;
  lseek.offset = 3000;
  lseek.whence = SEEK_DATA;
  auto copy = Zeroed<fuse_copy_file_range_in>();
  copy.fh_in = 0x4419;
  copy.off_in = 10;
  copy.nodeid_out = 11;
  copy.fh_out = 0x441a;
  copy.off_out = 20;
  copy.len = 30;
  copy.flags = 0;
  auto setup = Zeroed<fuse_setupmapping_in>();
  setup.fh = 0x441b;
  setup.foffset = 0x200000;
  setup.len = 0x200000;
  setup.flags = FUSE_SETUPMAPPING_FLAG_READ;
  setup.moffset = 0x400000;
  auto create = Zeroed<fuse_create_in>();
  create.flags = O_RDWR | O_CREAT | O_EXCL;
  create.mode = S_IFREG | 0640;
  create.umask = 022;
  auto tmpfile = create;
  tmpfile.flags = O_RDWR | O_TMPFILE;
  auto statx = Zeroed<fuse_statx_in>();
  statx.getattr_flags = FUSE_GETATTR_FH;
  statx.fh = 0x441c;
  statx.sx_flags = 0x800;  // AT_STATX_FORCE_SYNC
  statx.sx_mask = STATX_BASIC_STATS;
  auto poll = Zeroed<fuse_poll_in>();
  poll.fh = 0x441d;
  poll.kh = 0x441e;
  poll.flags = FUSE_POLL_SCHEDULE_NOTIFY;
  poll.events = 0x5;
  auto release = Zeroed<fuse_release_in>();
  release.fh = 0x441f;
  release.flags = O_RDWR;
  release.release_flags = FUSE_RELEASE_FLUSH;
  release.lock_owner = 0x10c4;
  auto releasedir = release;
  releasedir.flags = O_RDONLY | O_DIRECTORY;
  releasedir.release_flags = 0;
  releasedir.lock_owner = 0;
  auto fsync = Zeroed<fuse_fsync_in>();
  fsync.fh = 0x4420;
  fsync.fsync_flags = 1;  // datasync
  auto flush = Zeroed<fuse_flush_in>();
  flush.fh = 0x4421;
  flush.lock_owner = 0x10c5;
  auto rmap = Zeroed<fuse_removemapping_one>();
  rmap.moffset = 0x600000;
  rmap.len = 0x1000;

  add("Lookup", FUSE_LOOKUP, kDir, FuseBody().Name("name"));
  add("GetAttr", FUSE_GETATTR, kFile, FuseBody().Add(getattr));
  add("SetAttr", FUSE_SETATTR, kFile, FuseBody().Add(setattr));
  add("ReadLink", FUSE_READLINK, kFile, FuseBody());
  add("Symlink", FUSE_SYMLINK, kDir, FuseBody().Name("link").Name("../target"));
  add("Mknod", FUSE_MKNOD, kDir,
      FuseBody().Add(fuse_mknod_in{S_IFCHR | 0600, 0x0103, 027, 0}).Name("node"));
  add("Mkdir", FUSE_MKDIR, kDir, FuseBody().Add(fuse_mkdir_in{0750, 002}).Name("subdir"));
  add("Unlink", FUSE_UNLINK, kDir, FuseBody().Name("gone"));
  add("Rmdir", FUSE_RMDIR, kDir, FuseBody().Name("gonedir"));
  add("Rename", FUSE_RENAME, kDir, FuseBody().Add(fuse_rename_in{kFile}).Name("a").Name("b"));
  add("Rename", FUSE_RENAME2, kDir,
      FuseBody().Add(fuse_rename2_in{kFile, RENAME_NOREPLACE, 0}).Name("c").Name("d"));
  add("Link", FUSE_LINK, kDir, FuseBody().Add(fuse_link_in{kFile}).Name("hard"));
  add("Open", FUSE_OPEN, kFile, FuseBody().Add(fuse_open_in{O_RDWR | O_APPEND, 0}));
  add("Read", FUSE_READ, kFile, FuseBody().Add(read));
  add("Write", FUSE_WRITE, kFile, FuseBody().Add(write).Raw("payload"));
  add("StatFs", FUSE_STATFS, kFile, FuseBody());
  add("Release", FUSE_RELEASE, kFile, FuseBody().Add(release));
  add("Fsync", FUSE_FSYNC, kFile, FuseBody().Add(fsync));
  add("SetXattr", FUSE_SETXATTR, kFile,
      FuseBody().AddPrefix(fuse_setxattr_in{5, XATTR_CREATE, 0, 0}, 8).Name("user.k").Raw("value"));
  add("GetXattr", FUSE_GETXATTR, kFile, FuseBody().Add(fuse_getxattr_in{100, 0}).Name("user.k"));
  add("ListXattr", FUSE_LISTXATTR, kFile, FuseBody().Add(fuse_getxattr_in{100, 0}));
  add("RemoveXattr", FUSE_REMOVEXATTR, kFile, FuseBody().Name("user.old"));
  add("Flush", FUSE_FLUSH, kFile, FuseBody().Add(flush));
  add("OpenDir", FUSE_OPENDIR, kDir, FuseBody().Add(fuse_open_in{O_RDONLY | O_DIRECTORY, 0}));
  auto readdir = read;
  readdir.fh = 0xD1D1;
  readdir.offset = 3;
  readdir.size = 1024;
  readdir.read_flags = 0;
  readdir.lock_owner = 0;
  add("ReadDir", FUSE_READDIR, kDir, FuseBody().Add(readdir));
  add("ReadDir", FUSE_READDIRPLUS, kDir, FuseBody().Add(readdir));
  add("ReleaseDir", FUSE_RELEASEDIR, kDir, FuseBody().Add(releasedir));
  add("FsyncDir", FUSE_FSYNCDIR, kDir, FuseBody().Add(fsync));
  add("GetLk", FUSE_GETLK, kFile, FuseBody().Add(lk));
  add("SetLk", FUSE_SETLK, kFile, FuseBody().Add(lk));
  add("SetLk", FUSE_SETLKW, kFile, FuseBody().Add(flk));
  add("Access", FUSE_ACCESS, kFile, FuseBody().Add(fuse_access_in{R_OK | X_OK, 0}));
  add("Create", FUSE_CREATE, kDir, FuseBody().Add(create).Name("new"));
  add("Bmap", FUSE_BMAP, kFile, FuseBody().Add(fuse_bmap_in{77, 1024, 0}));
  add("Ioctl", FUSE_IOCTL, kFile, FuseBody().Add(ioctl).Raw("abcd"));
  add("Poll", FUSE_POLL, kFile, FuseBody().Add(poll));
  add("Fallocate", FUSE_FALLOCATE, kFile, FuseBody().Add(fallocate));
  add("Lseek", FUSE_LSEEK, kFile, FuseBody().Add(lseek));
  add("CopyFileRange", FUSE_COPY_FILE_RANGE, kFile, FuseBody().Add(copy));
  add("SetupMapping", FUSE_SETUPMAPPING, kFile, FuseBody().Add(setup));
  add("RemoveMapping", FUSE_REMOVEMAPPING, kFile,
      FuseBody().Add(fuse_removemapping_in{1}).Add(rmap));
  add("SyncFs", FUSE_SYNCFS, FUSE_ROOT_ID, FuseBody().Add(fuse_syncfs_in{}));
  add("TmpFile", FUSE_TMPFILE, kDir, FuseBody().Add(tmpfile).Name("/"));
  add("Statx", FUSE_STATX, kFile, FuseBody().Add(statx));
  return v;
}

// What the recorder saw and what the guest got for one request.
struct Outcome {
  std::vector<std::string> calls;
  FuseReply reply;
};

// Every case through `backend` (the recorder, or a forwarder over it), on a
// fresh harness; the recorder records iovecs relative to that harness's RAM.
std::vector<Outcome> RunAll(Backend* backend, Recorder& rec, const std::vector<OpCase>& cases) {
  FuseHarness h(backend);
  rec.ram_base = h.ram().Host(0);
  h.Init(FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS);
  (void)rec.Take();
  std::vector<Outcome> out;
  uint64_t unique = 100;
  for (const OpCase& op : cases) {
    unique += 2;
    // A caller with its own ids, so that the context is checked too.
    FuseReply r = h.Call(BuildRequest(op.opcode, unique, op.node, op.body.bytes(), 1001, 1002, 77));
    out.push_back({rec.Take(), std::move(r)});
  }
  return out;
}

std::vector<uint8_t> Bytes(const FuseReply& r) {
  std::vector<uint8_t> b(reinterpret_cast<const uint8_t*>(&r.header),
                         reinterpret_cast<const uint8_t*>(&r.header) + sizeof r.header);
  b.insert(b.end(), r.body.begin(), r.body.end());
  return b;
}

void CheckSame(bool async) {
  Recorder rec;
  if (async) {
    rec.mode = Recorder::Mode::kAsync;
    rec.async_delay = std::chrono::milliseconds(2);
  }
  rec.init_flags = FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS;
  ForwardingBackend fwd(&rec);
  const std::vector<OpCase> cases = AllOpCases();
  const std::vector<Outcome> direct = RunAll(&rec, rec, cases);
  const std::vector<Outcome> forwarded = RunAll(&fwd, rec, cases);
  REQUIRE(direct.size() == cases.size());
  REQUIRE(forwarded.size() == cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    INFO(cases[i].method << " (opcode " << cases[i].opcode << ")");
    // The direct run is the reference: the recorder served it.
    REQUIRE(direct[i].calls.size() == 1);
    CHECK(direct[i].calls[0].rfind(cases[i].method + " ", 0) == 0);
    CHECK(direct[i].reply.error() == 0);
    // Through the forwarder: the same single call, the same reply bytes.
    REQUIRE(forwarded[i].calls.size() == 1);
    CHECK(forwarded[i].calls[0] == direct[i].calls[0]);
    CHECK(forwarded[i].reply.error() == 0);
    CHECK(Bytes(forwarded[i].reply) == Bytes(direct[i].reply));
  }
}

TEST_CASE("ForwardingBackend: every operation reaches the inner backend unchanged") {
  CheckSame(/*async=*/false);
}

TEST_CASE("ForwardingBackend: answers the inner backend gives later, from another thread") {
  CheckSame(/*async=*/true);
}

TEST_CASE("ForwardingBackend: arguments reach the inner backend as the guest sent them") {
  // Spot checks of the recorded values against the request, so that the
  // comparison above is not between two equally wrong runs.
  Recorder rec;
  ForwardingBackend fwd(&rec);
  const std::vector<OpCase> cases = AllOpCases();
  const std::vector<Outcome> out = RunAll(&fwd, rec, cases);
  auto find = [&](uint32_t opcode) -> const Outcome& {
    for (size_t i = 0; i < cases.size(); ++i) {
      if (cases[i].opcode == opcode) return out[i];
    }
    FAIL("no case for opcode " << opcode);
    return out[0];
  };
  CHECK(find(FUSE_LOOKUP)
            .calls.at(0)
            .rfind("Lookup 5 name | unique=102 uid=1001 gid=1002 pid=77", 0) == 0);
  CHECK(find(FUSE_RENAME2).calls.at(0).rfind("Rename 5 c -> 9 d flags=1 ", 0) == 0);
  CHECK(find(FUSE_WRITE).calls.at(0).find("fh=17428 off=12288 size=7") != std::string::npos);
  CHECK(find(FUSE_WRITE).calls.at(0).find("'payload'") != std::string::npos);
  CHECK(find(FUSE_COPY_FILE_RANGE)
            .calls.at(0)
            .rfind("CopyFileRange 9 fh=17433 off=10 -> 11 fh=17434 off=20 len=30 flags=0", 0) == 0);
  CHECK(find(FUSE_SETLKW).calls.at(0).find("flock=true wait=true") != std::string::npos);
  CHECK(find(FUSE_SETXATTR).calls.at(0).rfind("SetXattr 9 user.k size=5 flags=1 ", 0) == 0);
  CHECK(find(FUSE_SETXATTR).calls.at(0).find("'value'") != std::string::npos);
  // The data the inner backend wrote reached the guest's buffer.
  const FuseReply& read = find(FUSE_READ).reply;
  CHECK(std::string(read.body.begin(), read.body.end()) == "forwarded data");
  auto open = find(FUSE_OPEN).reply.BodyAs<fuse_open_out>();
  REQUIRE(open.ok());
  CHECK(open->fh == 0xF00D);
  CHECK(open->open_flags == FOPEN_KEEP_CACHE);
}

TEST_CASE("ForwardingBackend: session calls, forgets and interrupts are forwarded") {
  Recorder rec;
  ForwardingBackend fwd(&rec);
  CHECK(fwd.inner() == &rec);

  // InitFlags: what the inner backend honours, and no more, is offered.
  rec.init_flags = FUSE_POSIX_LOCKS | FUSE_EXPORT_SUPPORT;
  CHECK(fwd.InitFlags() == rec.init_flags);
  FuseHarness h(&fwd);
  auto init = h.Init(FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS | FUSE_EXPORT_SUPPORT)
                  .BodyPrefixAs<fuse_init_out>(24);
  REQUIRE(init.ok());
  CHECK((init->flags & FUSE_POSIX_LOCKS) != 0);
  CHECK((init->flags & FUSE_EXPORT_SUPPORT) != 0);
  CHECK((init->flags & FUSE_FLOCK_LOCKS) == 0);
  auto calls = rec.Take();
  REQUIRE(calls.size() == 1);
  CHECK(calls[0].rfind(fmt::format("Init {} ", h.session().minor()), 0) == 0);
  CHECK(calls[0].find(fmt::format("{:#x}", h.session().flags())) != std::string::npos);

  // FORGET, BATCH_FORGET and INTERRUPT: no reply, forwarded as sent.
  h.Call(BuildRequest(FUSE_FORGET, h.NextUnique(), 42, FuseBody().Add(fuse_forget_in{3}).bytes()),
         0);
  h.Call(BuildRequest(FUSE_BATCH_FORGET, h.NextUnique(), 0,
                      FuseBody()
                          .Add(fuse_batch_forget_in{2, 0})
                          .Add(fuse_forget_one{43, 1})
                          .Add(fuse_forget_one{44, 7})
                          .bytes()),
         0);
  h.Call(BuildRequest(FUSE_INTERRUPT, h.NextUnique() | 1 /* the kernel's FUSE_INT_REQ_BIT */, 0,
                      FuseBody().Add(fuse_interrupt_in{0x1234}).bytes()),
         0);
  CHECK(rec.Take() ==
        std::vector<std::string>{"Forget 42 3", "BatchForget 2 43:1 44:7", "Interrupt 4660"});

  // DESTROY.
  CHECK(h.Call(BuildRequest(FUSE_DESTROY, h.NextUnique(), 0, {})).error() == 0);
  CHECK(rec.Take() == std::vector<std::string>{"Destroy"});

  // The per-queue hooks (the device calls them, not the session).
  std::unique_ptr<QueueContext> q = fwd.CreateQueueContext(3);
  REQUIRE(q != nullptr);
  CHECK(q.get() == rec.queue_context_made);
  fwd.InterruptWaits();
  CHECK(rec.Take() == std::vector<std::string>{"CreateQueueContext 3", "InterruptWaits"});
}

// A decorator as the header describes it: one operation changed, the rest
// forwarded.
class NoXattrWrites : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  void SetXattr(const RequestContext&, uint64_t, std::string_view, std::span<const uint8_t>,
                uint32_t, uint32_t, Reply<void> reply) override {
    reply.Error(EPERM);
  }
};

TEST_CASE("ForwardingBackend: a decorator overrides one operation") {
  Recorder rec;
  NoXattrWrites deco(&rec);
  FuseHarness h(&deco);
  h.Init();
  (void)rec.Take();
  auto set = h.Call(BuildRequest(
      FUSE_SETXATTR, h.NextUnique(), 9,
      FuseBody().AddPrefix(fuse_setxattr_in{1, 0, 0, 0}, 8).Name("user.a").Raw("v").bytes()));
  CHECK(set.error() == -EPERM);
  CHECK(rec.Take().empty());
  auto get = h.Call(BuildRequest(FUSE_GETXATTR, h.NextUnique(), 9,
                                 FuseBody().Add(fuse_getxattr_in{100, 0}).Name("user.a").bytes()));
  CHECK(get.error() == 0);
  CHECK(std::string(get.body.begin(), get.body.end()) == "xattr value");
  CHECK(rec.Take().size() == 1);
}

}  // namespace
}  // namespace virtiofs
