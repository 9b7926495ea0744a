// memfs (examples/memfs), the model SyncFileSystem: first through direct
// SyncFileSystem calls, operation by operation with the error cases POSIX
// defines; then served end to end (SyncAdapter, VirtioFsDevice,
// VhostUserServer) to the test front-end playing a guest.
#include "examples/memfs/memfs.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/fuse.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/driver_queue.h"
#include "tests/support/frontend.h"
#include "tests/support/fuse_request.h"
#include "tests/support/guest_ram.h"
#include "virtiofs/server.h"
#include "virtiofs/sync_file_system.h"
#include "virtiofs/vhost_user_protocol.h"
#include "virtiofs/virtio_fs_device.h"

namespace virtiofs {
namespace {

using memfs::MemFs;
using memfs::MemFsOptions;

// ==== Part 1: direct calls ===============================================

RequestContext User(uint32_t uid, uint32_t gid) {
  RequestContext c;
  c.uid = uid;
  c.gid = gid;
  return c;
}
const RequestContext kRoot = User(0, 0);
const RequestContext kAlice = User(1000, 1000);
const RequestContext kBob = User(1001, 1001);

template <typename T>
int Err(const Result<T>& r) {
  return r.error();
}

timespec Ts(time_t sec) { return timespec{sec, 0}; }
bool Later(const timespec& a, const timespec& b) {
  return a.tv_sec > b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec > b.tv_nsec);
}

// A MemFs with helpers that REQUIRE success.
struct Fs {
  explicit Fs(MemFsOptions o = {}) : fs(o) {}

  Entry Mkdir(uint64_t parent, std::string_view name, uint32_t mode = 0755,
              const RequestContext& ctx = kRoot) {
    auto r = fs.Mkdir(ctx, parent, name, mode, 0);
    INFO("mkdir " << name << ": errno " << r.error());
    REQUIRE(r.ok());
    return *r;
  }
  CreateResult Create(uint64_t parent, std::string_view name, uint32_t mode = 0644,
                      const RequestContext& ctx = kRoot, uint32_t flags = O_RDWR) {
    auto r = fs.Create(ctx, parent, name, mode, flags | O_CREAT, 0);
    INFO("create " << name << ": errno " << r.error());
    REQUIRE(r.ok());
    return *r;
  }
  uint64_t Open(uint64_t node, uint32_t flags, const RequestContext& ctx = kRoot) {
    auto r = fs.Open(ctx, node, flags);
    INFO("open: errno " << r.error());
    REQUIRE(r.ok());
    return r->handle;
  }
  Result<uint32_t> Write(uint64_t node, uint64_t fh, uint64_t offset, std::string_view data,
                         const RequestContext& ctx = kRoot) {
    iovec iov{const_cast<char*>(data.data()), data.size()};
    WriteRequest w;
    w.handle = fh;
    w.offset = offset;
    w.size = static_cast<uint32_t>(data.size());
    w.data = std::span<const iovec>(&iov, 1);
    return fs.Write(ctx, node, w);
  }
  // Reads through two iovecs, to exercise the scatter.
  Result<std::string> Read(uint64_t node, uint64_t fh, uint64_t offset, uint32_t size) {
    std::string buf(size, '\xee');
    const size_t half = size / 2;
    iovec iov[2] = {{buf.data(), half}, {buf.data() + half, size - half}};
    ReadRequest r;
    r.handle = fh;
    r.offset = offset;
    r.size = size;
    auto n = fs.Read(kRoot, node, r, iov);
    if (!n.ok()) return Errno{n.error()};
    buf.resize(*n);
    return buf;
  }
  Attributes Attr(uint64_t node) {
    auto r = fs.GetAttr(kRoot, node, std::nullopt);
    REQUIRE(r.ok());
    return *r;
  }
  void Release(uint64_t node, uint64_t fh) { REQUIRE(fs.Release(kRoot, node, fh, 0, 0, 0).ok()); }
  Result<Attributes> SetTimes(uint64_t node, timespec atime, timespec mtime,
                              const RequestContext& ctx = kRoot) {
    SetAttrRequest sa;
    sa.valid = FATTR_ATIME | FATTR_MTIME;
    sa.atime = atime;
    sa.mtime = mtime;
    return fs.SetAttr(ctx, node, sa);
  }

  MemFs fs;
};

TEST_CASE("memfs: the root, and unknown node ids and handles") {
  Fs f;
  Attributes root = f.Attr(FUSE_ROOT_ID);
  CHECK(S_ISDIR(root.st.st_mode));
  CHECK((root.st.st_mode & 07777) == 0755);
  CHECK(root.st.st_nlink == 2);
  CHECK(root.st.st_ino == FUSE_ROOT_ID);
  CHECK(f.fs.node_count() == 1);

  // A hostile guest names nodes and handles that do not exist.
  const uint64_t bogus = 0xdeadbeef;
  CHECK(Err(f.fs.GetAttr(kRoot, bogus, std::nullopt)) == ENOENT);
  CHECK(Err(f.fs.GetAttr(kRoot, FUSE_ROOT_ID, bogus)) == EBADF);
  CHECK(Err(f.fs.Lookup(kRoot, bogus, "x")) == ENOENT);
  CHECK(Err(f.fs.Mkdir(kRoot, bogus, "x", 0755, 0)) == ENOENT);
  CHECK(Err(f.fs.Open(kRoot, bogus, O_RDONLY)) == ENOENT);
  CHECK(Err(f.fs.OpenDir(kRoot, bogus, 0)) == ENOENT);
  CHECK(Err(f.fs.Unlink(kRoot, bogus, "x")) == ENOENT);
  CHECK(Err(f.fs.Rename(kRoot, bogus, "x", FUSE_ROOT_ID, "y", 0)) == ENOENT);
  CHECK(Err(f.fs.Link(kRoot, bogus, FUSE_ROOT_ID, "y")) == ENOENT);
  CHECK(Err(f.fs.ReadLink(kRoot, bogus)) == ENOENT);
  CHECK(Err(f.fs.GetXattr(kRoot, bogus, "user.x")) == ENOENT);
  CHECK(Err(f.fs.StatFs(kRoot, bogus)) == ENOENT);
  CHECK(Err(f.fs.Access(kRoot, bogus, F_OK)) == ENOENT);
  CHECK(Err(f.Write(FUSE_ROOT_ID, bogus, 0, "x")) == EBADF);
  CHECK(Err(f.Read(FUSE_ROOT_ID, bogus, 0, 4)) == EBADF);
  CHECK(Err(f.fs.Flush(kRoot, FUSE_ROOT_ID, bogus, 0)) == EBADF);
  CHECK(Err(f.fs.Fsync(kRoot, FUSE_ROOT_ID, bogus, false)) == EBADF);
  CHECK(Err(f.fs.Release(kRoot, FUSE_ROOT_ID, bogus, 0, 0, 0)) == EBADF);
  CHECK(Err(f.fs.ReleaseDir(kRoot, FUSE_ROOT_ID, bogus, 0)) == EBADF);
  CHECK(Err(f.fs.FsyncDir(kRoot, FUSE_ROOT_ID, bogus, false)) == EBADF);
  f.fs.Forget(bogus, 5);         // Ignored.
  f.fs.Forget(FUSE_ROOT_ID, 5);  // The root never goes.
  CHECK(f.fs.node_count() == 1);
  // Not a directory.
  auto file = f.Create(FUSE_ROOT_ID, "file");
  CHECK(Err(f.fs.Lookup(kRoot, file.entry.node_id, "x")) == ENOTDIR);
  CHECK(Err(f.fs.Mkdir(kRoot, file.entry.node_id, "x", 0755, 0)) == ENOTDIR);
  CHECK(Err(f.fs.OpenDir(kRoot, file.entry.node_id, 0)) == ENOTDIR);
  // A handle names its own node only.
  CHECK(Err(f.Write(FUSE_ROOT_ID, file.open.handle, 0, "x")) == EBADF);
}

TEST_CASE("memfs: mkdir, lookup, link counts and forget") {
  Fs f;
  Entry d = f.Mkdir(FUSE_ROOT_ID, "d", 0750);
  CHECK(S_ISDIR(d.attr.st.st_mode));
  CHECK((d.attr.st.st_mode & 07777) == 0750);
  CHECK(d.attr.st.st_nlink == 2);
  CHECK(f.Attr(FUSE_ROOT_ID).st.st_nlink == 3);  // d's "..".
  CHECK(f.fs.lookup_count(d.node_id) == 1);
  CHECK(Err(f.fs.Mkdir(kRoot, FUSE_ROOT_ID, "d", 0755, 0)) == EEXIST);

  auto l = f.fs.Lookup(kRoot, FUSE_ROOT_ID, "d");
  REQUIRE(l.ok());
  CHECK(l->node_id == d.node_id);
  CHECK(f.fs.lookup_count(d.node_id) == 2);
  CHECK(Err(f.fs.Lookup(kRoot, FUSE_ROOT_ID, "nothing")) == ENOENT);
  // "." and ".." (FUSE_EXPORT_SUPPORT) are references too.
  Entry sub = f.Mkdir(d.node_id, "sub");
  auto dot = f.fs.Lookup(kRoot, sub.node_id, ".");
  auto dotdot = f.fs.Lookup(kRoot, sub.node_id, "..");
  REQUIRE(dot.ok());
  REQUIRE(dotdot.ok());
  CHECK(dot->node_id == sub.node_id);
  CHECK(dotdot->node_id == d.node_id);
  CHECK(f.fs.lookup_count(d.node_id) == 3);
  CHECK(f.fs.lookup_count(sub.node_id) == 2);

  // umask applies.
  auto m = f.fs.Mkdir(kRoot, FUSE_ROOT_ID, "masked", 0777, 027);
  REQUIRE(m.ok());
  CHECK((m->attr.st.st_mode & 07777) == 0750);

  // rmdir: ENOTEMPTY, ENOTDIR, then the node lives on while referenced.
  CHECK(Err(f.fs.Rmdir(kRoot, FUSE_ROOT_ID, "d")) == ENOTEMPTY);
  f.Create(FUSE_ROOT_ID, "file");
  CHECK(Err(f.fs.Rmdir(kRoot, FUSE_ROOT_ID, "file")) == ENOTDIR);
  CHECK(Err(f.fs.Rmdir(kRoot, FUSE_ROOT_ID, "none")) == ENOENT);
  const size_t before = f.fs.node_count();
  REQUIRE(f.fs.Rmdir(kRoot, d.node_id, "sub").ok());
  CHECK(f.Attr(d.node_id).st.st_nlink == 2);
  CHECK(f.fs.node_count() == before);  // Still referenced by the guest.
  CHECK(f.Attr(sub.node_id).st.st_nlink == 0);
  // A removed directory takes no names and shows none.
  CHECK(Err(f.fs.Mkdir(kRoot, sub.node_id, "x", 0755, 0)) == ENOENT);
  CHECK(Err(f.fs.Lookup(kRoot, sub.node_id, "..")) == ENOENT);
  f.fs.Forget(sub.node_id, 1);
  CHECK(f.fs.node_count() == before);
  f.fs.BatchForget(std::vector<ForgetItem>{{sub.node_id, 1}, {d.node_id, 1}});
  CHECK(f.fs.node_count() == before - 1);
  CHECK(Err(f.fs.GetAttr(kRoot, sub.node_id, std::nullopt)) == ENOENT);
  // d keeps its name: forgetting it all does not free it.
  f.fs.Forget(d.node_id, 100);
  CHECK(f.fs.lookup_count(d.node_id) == 0);
  CHECK(f.Attr(d.node_id).st.st_nlink == 2);
}

TEST_CASE("memfs: create, open, read and write") {
  Fs f;
  CreateResult c = f.Create(FUSE_ROOT_ID, "f", 0640);
  const uint64_t node = c.entry.node_id;
  const uint64_t fh = c.open.handle;
  CHECK(S_ISREG(c.entry.attr.st.st_mode));
  CHECK((c.entry.attr.st.st_mode & 07777) == 0640);
  CHECK(c.entry.attr.st.st_nlink == 1);
  CHECK(f.fs.lookup_count(node) == 1);
  CHECK(f.fs.handle_count() == 1);

  REQUIRE(f.Write(node, fh, 0, "hello, world").ok());
  CHECK(f.Attr(node).st.st_size == 12);
  CHECK(*f.Read(node, fh, 0, 100) == "hello, world");
  CHECK(*f.Read(node, fh, 7, 5) == "world");
  CHECK(*f.Read(node, fh, 12, 10) == "");  // At EOF.
  CHECK(*f.Read(node, fh, 1000, 10) == "");
  // A write past the end leaves zeros between.
  REQUIRE(*f.Write(node, fh, 14, "!") == 1);
  CHECK(*f.Read(node, fh, 10, 10) == std::string("ld\0\0!", 5));

  // O_EXCL on an existing name; without it, the existing file opens.
  CHECK(Err(f.fs.Create(kRoot, FUSE_ROOT_ID, "f", 0644, O_CREAT | O_EXCL | O_RDWR, 0)) == EEXIST);
  auto again = f.fs.Create(kRoot, FUSE_ROOT_ID, "f", 0644, O_CREAT | O_RDWR, 0);
  REQUIRE(again.ok());
  CHECK(again->entry.node_id == node);
  CHECK(f.fs.lookup_count(node) == 2);
  f.Release(node, again->open.handle);
  f.Mkdir(FUSE_ROOT_ID, "dir");
  CHECK(Err(f.fs.Create(kRoot, FUSE_ROOT_ID, "dir", 0644, O_CREAT | O_RDWR, 0)) == EISDIR);

  // Access modes of handles.
  const uint64_t ro = f.Open(node, O_RDONLY);
  const uint64_t wo = f.Open(node, O_WRONLY);
  CHECK(Err(f.Write(node, ro, 0, "x")) == EBADF);
  CHECK(Err(f.Read(node, wo, 0, 1)) == EBADF);
  CHECK(Err(f.fs.Open(kRoot, node, O_ACCMODE)) == EINVAL);
  // O_APPEND writes at the end whatever the offset says.
  const uint64_t ap = f.Open(node, O_WRONLY | O_APPEND);
  REQUIRE(f.Write(node, ap, 0, "++").ok());
  CHECK(*f.Read(node, ro, 13, 10) == std::string("\0!++", 4));
  // O_TRUNC empties the file.
  const uint64_t tr = f.Open(node, O_WRONLY | O_TRUNC);
  CHECK(f.Attr(node).st.st_size == 0);
  for (uint64_t h : {ro, wo, ap, tr}) f.Release(node, h);
  CHECK(Err(f.fs.Release(kRoot, node, ro, 0, 0, 0)) == EBADF);  // Twice.
  CHECK(Err(f.Read(node, ro, 0, 1)) == EBADF);

  // Flush and fsync check the handle; a directory handle is not a file's.
  CHECK(f.fs.Flush(kRoot, node, fh, 0).ok());
  CHECK(f.fs.Fsync(kRoot, node, fh, true).ok());
  auto dh = f.fs.OpenDir(kRoot, FUSE_ROOT_ID, 0);
  REQUIRE(dh.ok());
  CHECK(Err(f.fs.Release(kRoot, FUSE_ROOT_ID, dh->handle, 0, 0, 0)) == EBADF);
  CHECK(Err(f.fs.ReleaseDir(kRoot, node, fh, 0)) == EBADF);
  CHECK(f.fs.FsyncDir(kRoot, FUSE_ROOT_ID, dh->handle, false).ok());
  CHECK(f.fs.ReleaseDir(kRoot, FUSE_ROOT_ID, dh->handle, 0).ok());
  CHECK(Err(f.fs.Open(kRoot, FUSE_ROOT_ID, O_RDONLY)) == EISDIR);
  f.Release(node, fh);
  CHECK(f.fs.handle_count() == 0);
}

TEST_CASE("memfs: an unlinked file lives while open or referenced") {
  Fs f;
  CreateResult c = f.Create(FUSE_ROOT_ID, "f");
  const uint64_t node = c.entry.node_id;
  REQUIRE(f.Write(node, c.open.handle, 0, "data").ok());
  const uint64_t used = f.fs.used_bytes();
  CHECK(used == 4);
  REQUIRE(f.fs.Unlink(kRoot, FUSE_ROOT_ID, "f").ok());
  CHECK(Err(f.fs.Lookup(kRoot, FUSE_ROOT_ID, "f")) == ENOENT);
  CHECK(Err(f.fs.Unlink(kRoot, FUSE_ROOT_ID, "f")) == ENOENT);
  CHECK(f.Attr(node).st.st_nlink == 0);
  CHECK(*f.Read(node, c.open.handle, 0, 10) == "data");
  // A deleted file gets no name back.
  CHECK(Err(f.fs.Link(kRoot, node, FUSE_ROOT_ID, "back")) == ENOENT);
  f.fs.Forget(node, 1);
  CHECK(f.fs.node_count() == 2);  // The handle keeps it.
  f.Release(node, c.open.handle);
  CHECK(f.fs.node_count() == 1);
  CHECK(f.fs.used_bytes() == 0);
  // unlink refuses directories.
  f.Mkdir(FUSE_ROOT_ID, "d");
  CHECK(Err(f.fs.Unlink(kRoot, FUSE_ROOT_ID, "d")) == EISDIR);
}

TEST_CASE("memfs: hard links") {
  Fs f;
  CreateResult c = f.Create(FUSE_ROOT_ID, "a");
  const uint64_t node = c.entry.node_id;
  Entry d = f.Mkdir(FUSE_ROOT_ID, "d");
  auto l = f.fs.Link(kRoot, node, d.node_id, "b");
  REQUIRE(l.ok());
  CHECK(l->node_id == node);
  CHECK(l->attr.st.st_nlink == 2);
  CHECK(f.fs.lookup_count(node) == 2);
  CHECK(Err(f.fs.Link(kRoot, node, d.node_id, "b")) == EEXIST);
  CHECK(Err(f.fs.Link(kRoot, d.node_id, FUSE_ROOT_ID, "dlink")) == EPERM);
  CHECK(Err(f.fs.Link(kRoot, node, node, "x")) == ENOTDIR);
  REQUIRE(f.Write(node, c.open.handle, 0, "shared").ok());
  REQUIRE(f.fs.Unlink(kRoot, FUSE_ROOT_ID, "a").ok());
  auto b = f.fs.Lookup(kRoot, d.node_id, "b");
  REQUIRE(b.ok());
  CHECK(b->attr.st.st_nlink == 1);
  CHECK(b->attr.st.st_size == 6);
}

TEST_CASE("memfs: symlinks") {
  Fs f;
  auto s = f.fs.Symlink(kAlice, FUSE_ROOT_ID, "s", "../target");
  CHECK(Err(s) == EACCES);  // Alice may not write the root.
  s = f.fs.Symlink(kRoot, FUSE_ROOT_ID, "s", "../target");
  REQUIRE(s.ok());
  CHECK(S_ISLNK(s->attr.st.st_mode));
  CHECK((s->attr.st.st_mode & 0777) == 0777);
  CHECK(s->attr.st.st_size == 9);
  CHECK(*f.fs.ReadLink(kRoot, s->node_id) == "../target");
  CHECK(Err(f.fs.Symlink(kRoot, FUSE_ROOT_ID, "s", "x")) == EEXIST);
  CHECK(Err(f.fs.Open(kRoot, s->node_id, O_RDONLY)) == ELOOP);
  CHECK(Err(f.fs.ReadLink(kRoot, FUSE_ROOT_ID)) == EINVAL);
}

TEST_CASE("memfs: rename") {
  Fs f;
  Entry a = f.Mkdir(FUSE_ROOT_ID, "a");
  Entry b = f.Mkdir(FUSE_ROOT_ID, "b");
  CreateResult x = f.Create(a.node_id, "x");
  CreateResult y = f.Create(b.node_id, "y");
  const uint64_t xn = x.entry.node_id, yn = y.entry.node_id;

  SECTION("plain, to another directory") {
    REQUIRE(f.fs.Rename(kRoot, a.node_id, "x", b.node_id, "z", 0).ok());
    CHECK(Err(f.fs.Lookup(kRoot, a.node_id, "x")) == ENOENT);
    CHECK(f.fs.Lookup(kRoot, b.node_id, "z")->node_id == xn);
    CHECK(Err(f.fs.Rename(kRoot, a.node_id, "x", b.node_id, "z", 0)) == ENOENT);
  }
  SECTION("over an existing file, which goes once forgotten and closed") {
    const size_t before = f.fs.node_count();
    REQUIRE(f.fs.Rename(kRoot, a.node_id, "x", b.node_id, "y", 0).ok());
    CHECK(f.fs.Lookup(kRoot, b.node_id, "y")->node_id == xn);
    CHECK(f.Attr(yn).st.st_nlink == 0);
    f.fs.Forget(yn, 1);
    f.Release(yn, y.open.handle);
    CHECK(f.fs.node_count() == before - 1);
  }
  SECTION("RENAME_NOREPLACE") {
    CHECK(Err(f.fs.Rename(kRoot, a.node_id, "x", b.node_id, "y", RENAME_NOREPLACE)) == EEXIST);
    CHECK(f.fs.Rename(kRoot, a.node_id, "x", b.node_id, "new", RENAME_NOREPLACE).ok());
  }
  SECTION("RENAME_EXCHANGE of a file and a directory across parents") {
    Entry sub = f.Mkdir(b.node_id, "sub");
    CHECK(f.Attr(b.node_id).st.st_nlink == 3);
    REQUIRE(f.fs.Rename(kRoot, a.node_id, "x", b.node_id, "sub", RENAME_EXCHANGE).ok());
    CHECK(f.fs.Lookup(kRoot, a.node_id, "x")->node_id == sub.node_id);
    CHECK(f.fs.Lookup(kRoot, b.node_id, "sub")->node_id == xn);
    CHECK(f.Attr(a.node_id).st.st_nlink == 3);  // Gained a subdirectory.
    CHECK(f.Attr(b.node_id).st.st_nlink == 2);
    CHECK(f.fs.Lookup(kRoot, sub.node_id, "..")->node_id == a.node_id);
    CHECK(Err(f.fs.Rename(kRoot, a.node_id, "x", b.node_id, "none", RENAME_EXCHANGE)) == ENOENT);
  }
  SECTION("over an empty directory; not over a full one") {
    Entry d1 = f.Mkdir(a.node_id, "d1");
    Entry d2 = f.Mkdir(b.node_id, "d2");
    f.Mkdir(b.node_id, "full");
    f.Create(f.fs.Lookup(kRoot, b.node_id, "full")->node_id, "inside");
    CHECK(Err(f.fs.Rename(kRoot, a.node_id, "d1", b.node_id, "full", 0)) == ENOTEMPTY);
    REQUIRE(f.fs.Rename(kRoot, a.node_id, "d1", b.node_id, "d2", 0).ok());
    CHECK(f.fs.Lookup(kRoot, b.node_id, "d2")->node_id == d1.node_id);
    CHECK(f.Attr(d2.node_id).st.st_nlink == 0);
    CHECK(f.Attr(a.node_id).st.st_nlink == 2);
    CHECK(f.Attr(b.node_id).st.st_nlink == 4);  // d2 (now d1) and full.
  }
  SECTION("type mismatches") {
    f.Mkdir(b.node_id, "dir");
    CHECK(Err(f.fs.Rename(kRoot, a.node_id, "x", b.node_id, "dir", 0)) == EISDIR);
    CHECK(Err(f.fs.Rename(kRoot, b.node_id, "dir", a.node_id, "x", 0)) == ENOTDIR);
  }
  SECTION("a directory into its own subtree") {
    Entry sub = f.Mkdir(a.node_id, "sub");
    Entry deep = f.Mkdir(sub.node_id, "deep");
    CHECK(Err(f.fs.Rename(kRoot, FUSE_ROOT_ID, "a", deep.node_id, "a", 0)) == EINVAL);
    CHECK(Err(f.fs.Rename(kRoot, FUSE_ROOT_ID, "a", a.node_id, "a2", 0)) == EINVAL);
    // Swapping "deep" with "a" would put a under its own child.
    CHECK(Err(f.fs.Rename(kRoot, sub.node_id, "deep", FUSE_ROOT_ID, "a", RENAME_EXCHANGE)) ==
          EINVAL);
    // Moving it up is fine.
    CHECK(f.fs.Rename(kRoot, sub.node_id, "deep", FUSE_ROOT_ID, "deep", 0).ok());
  }
  SECTION("two names of one node: nothing happens") {
    REQUIRE(f.fs.Link(kRoot, xn, b.node_id, "x2").ok());
    REQUIRE(f.fs.Rename(kRoot, a.node_id, "x", b.node_id, "x2", 0).ok());
    CHECK(f.fs.Lookup(kRoot, a.node_id, "x").ok());
    CHECK(f.Attr(xn).st.st_nlink == 2);
  }
  SECTION("flags") {
    CHECK(Err(f.fs.Rename(kRoot, a.node_id, "x", b.node_id, "q", RENAME_WHITEOUT)) == EINVAL);
    CHECK(Err(f.fs.Rename(kRoot, a.node_id, "x", b.node_id, "y",
                          RENAME_NOREPLACE | RENAME_EXCHANGE)) == EINVAL);
    CHECK(Err(f.fs.Rename(kRoot, a.node_id, "x", xn, "q", 0)) == ENOTDIR);
  }
}

TEST_CASE("memfs: permissions") {
  Fs f;
  // Alice owns a 0755 home; Bob is a stranger.
  Entry home = f.Mkdir(FUSE_ROOT_ID, "home", 0755);
  SetAttrRequest chown;
  chown.valid = FATTR_UID | FATTR_GID;
  chown.uid = kAlice.uid;
  chown.gid = kAlice.gid;
  REQUIRE(f.fs.SetAttr(kRoot, home.node_id, chown).ok());
  CHECK(Err(f.fs.Create(kBob, home.node_id, "b", 0644, O_CREAT | O_RDWR, 0)) == EACCES);
  auto mine = f.fs.Create(kAlice, home.node_id, "mine", 0600, O_CREAT | O_RDWR, 0);
  REQUIRE(mine.ok());
  CHECK(mine->entry.attr.st.st_uid == kAlice.uid);
  CHECK(mine->entry.attr.st.st_gid == kAlice.gid);
  const uint64_t mn = mine->entry.node_id;

  // Read and write bits, owner / group / other.
  CHECK(Err(f.fs.Open(kBob, mn, O_RDONLY)) == EACCES);
  CHECK(f.fs.Open(kRoot, mn, O_RDWR).ok());  // Root bypasses.
  SetAttrRequest chmod;
  chmod.valid = FATTR_MODE;
  chmod.mode = 0640;
  CHECK(Err(f.fs.SetAttr(kBob, mn, chmod)) == EPERM);  // Owner-only chmod.
  REQUIRE(f.fs.SetAttr(kAlice, mn, chmod).ok());
  const RequestContext colleague = User(1002, kAlice.gid);
  CHECK(f.fs.Open(colleague, mn, O_RDONLY).ok());
  CHECK(Err(f.fs.Open(colleague, mn, O_WRONLY)) == EACCES);
  CHECK(Err(f.fs.Open(colleague, mn, O_RDONLY | O_TRUNC)) == EACCES);
  CHECK(Err(f.fs.Open(kBob, mn, O_RDONLY)) == EACCES);
  // access(2), including root and execute.
  CHECK(f.fs.Access(kBob, mn, F_OK).ok());
  CHECK(Err(f.fs.Access(kBob, mn, R_OK)) == EACCES);
  CHECK(f.fs.Access(colleague, mn, R_OK).ok());
  CHECK(Err(f.fs.Access(colleague, mn, R_OK | W_OK)) == EACCES);
  CHECK(f.fs.Access(kRoot, mn, R_OK | W_OK).ok());
  CHECK(Err(f.fs.Access(kRoot, mn, X_OK)) == EACCES);  // No x bit at all.
  CHECK(f.fs.Access(kRoot, home.node_id, X_OK).ok());
  CHECK(Err(f.fs.Access(kRoot, mn, 8)) == EINVAL);

  // Search permission on directories.
  chmod.mode = 0700;
  REQUIRE(f.fs.SetAttr(kAlice, home.node_id, chmod).ok());
  CHECK(Err(f.fs.Lookup(kBob, home.node_id, "mine")) == EACCES);
  CHECK(Err(f.fs.OpenDir(kBob, home.node_id, 0)) == EACCES);
  CHECK(f.fs.Lookup(kAlice, home.node_id, "mine").ok());

  // chown: root only; the owner may change the group to his own.
  SetAttrRequest give;
  give.valid = FATTR_UID;
  give.uid = kBob.uid;
  CHECK(Err(f.fs.SetAttr(kAlice, mn, give)) == EPERM);
  SetAttrRequest group;
  group.valid = FATTR_GID;
  group.gid = 4242;
  CHECK(Err(f.fs.SetAttr(kAlice, mn, group)) == EPERM);
  group.gid = kAlice.gid;
  CHECK(f.fs.SetAttr(kAlice, mn, group).ok());
  CHECK(Err(f.fs.SetAttr(kBob, mn, group)) == EPERM);  // Even a no-op, by a stranger.
  CHECK(f.fs.SetAttr(kRoot, mn, give)->st.st_uid == kBob.uid);
}

TEST_CASE("memfs: the sticky bit") {
  Fs f;
  Entry tmp = f.Mkdir(FUSE_ROOT_ID, "tmp", 01777);
  CHECK((tmp.attr.st.st_mode & 07777) == 01777);
  auto a = f.fs.Create(kAlice, tmp.node_id, "alice", 0644, O_CREAT | O_RDWR, 0);
  REQUIRE(a.ok());
  CHECK(Err(f.fs.Unlink(kBob, tmp.node_id, "alice")) == EPERM);
  CHECK(Err(f.fs.Rename(kBob, tmp.node_id, "alice", tmp.node_id, "bob", 0)) == EPERM);
  auto b = f.fs.Create(kBob, tmp.node_id, "bob", 0644, O_CREAT | O_RDWR, 0);
  REQUIRE(b.ok());
  // Replacing Alice's file is deleting it, too.
  CHECK(Err(f.fs.Rename(kBob, tmp.node_id, "bob", tmp.node_id, "alice", 0)) == EPERM);
  CHECK(f.fs.Rename(kAlice, tmp.node_id, "alice", tmp.node_id, "alice2", 0).ok());
  CHECK(f.fs.Unlink(kAlice, tmp.node_id, "alice2").ok());
  CHECK(f.fs.Unlink(kRoot, tmp.node_id, "bob").ok());
  // Without the sticky bit, write permission on the directory is enough.
  Entry open_dir = f.Mkdir(FUSE_ROOT_ID, "open", 0777);
  REQUIRE(f.fs.Create(kAlice, open_dir.node_id, "a", 0644, O_CREAT | O_RDWR, 0).ok());
  CHECK(f.fs.Unlink(kBob, open_dir.node_id, "a").ok());
}

TEST_CASE("memfs: setattr: truncate, times, setuid") {
  Fs f;
  CreateResult c = f.Create(FUSE_ROOT_ID, "f", 0666);
  const uint64_t node = c.entry.node_id;
  REQUIRE(f.Write(node, c.open.handle, 0, "0123456789").ok());
  SetAttrRequest size;
  size.valid = FATTR_SIZE;
  size.size = 4;
  auto r = f.fs.SetAttr(kRoot, node, size);
  REQUIRE(r.ok());
  CHECK(r->st.st_size == 4);
  CHECK(*f.Read(node, c.open.handle, 0, 100) == "0123");
  size.size = 8;
  REQUIRE(f.fs.SetAttr(kRoot, node, size).ok());
  CHECK(*f.Read(node, c.open.handle, 0, 100) == std::string("0123\0\0\0\0", 8));
  CHECK(f.fs.used_bytes() == 8);
  Entry d = f.Mkdir(FUSE_ROOT_ID, "d");
  CHECK(Err(f.fs.SetAttr(kRoot, d.node_id, size)) == EISDIR);
  auto fifo = f.fs.Mknod(kRoot, FUSE_ROOT_ID, "p", S_IFIFO | 0644, 0, 0);
  REQUIRE(fifo.ok());
  CHECK(Err(f.fs.SetAttr(kRoot, fifo->node_id, size)) == EINVAL);
  // A handle open for writing lets a non-owner truncate (ftruncate).
  const RequestContext other = User(2000, 2000);
  SetAttrRequest chmod;
  chmod.valid = FATTR_MODE;
  chmod.mode = 0644;
  REQUIRE(f.fs.SetAttr(kRoot, node, chmod).ok());
  CHECK(Err(f.fs.SetAttr(other, node, size)) == EACCES);
  size.handle = c.open.handle;
  CHECK(f.fs.SetAttr(other, node, size).ok());
  SetAttrRequest bad_fh = size;
  bad_fh.handle = 777;
  CHECK(Err(f.fs.SetAttr(kRoot, node, bad_fh)) == EBADF);

  // Times: explicit values need ownership, "now" write permission.
  auto t = f.SetTimes(node, Ts(1000), Ts(2000));
  REQUIRE(t.ok());
  CHECK(t->st.st_atim.tv_sec == 1000);
  CHECK(t->st.st_mtim.tv_sec == 2000);
  CHECK(t->st.st_ctim.tv_sec > 2000);  // ctime is now, always.
  CHECK(Err(f.SetTimes(node, Ts(1), Ts(1), other)) == EPERM);
  SetAttrRequest now;
  now.valid = FATTR_ATIME | FATTR_ATIME_NOW | FATTR_MTIME | FATTR_MTIME_NOW;
  CHECK(Err(f.fs.SetAttr(other, node, now)) == EACCES);  // 0644: no write for others.
  chmod.mode = 0666;
  REQUIRE(f.fs.SetAttr(kRoot, node, chmod).ok());
  auto touched = f.fs.SetAttr(other, node, now);
  REQUIRE(touched.ok());
  CHECK(touched->st.st_atim.tv_sec > 1000);
  CHECK(touched->st.st_mtim.tv_sec > 2000);

  // setuid goes on a write by anyone but root, and on chown.
  chmod.mode = 04755 | S_ISGID;
  REQUIRE(f.fs.SetAttr(kRoot, node, chmod).ok());
  REQUIRE(f.Write(node, c.open.handle, 0, "x").ok());  // Root: kept.
  CHECK((f.Attr(node).st.st_mode & 07777) == 06755);
  REQUIRE(f.fs.SetAttr(kRoot, node, chmod).ok());
  chmod.mode = 06777;
  REQUIRE(f.fs.SetAttr(kRoot, node, chmod).ok());
  const uint64_t wfh = f.Open(node, O_WRONLY, other);
  REQUIRE(f.Write(node, wfh, 0, "y", other).ok());
  CHECK((f.Attr(node).st.st_mode & 07777) == 0777);
  SetAttrRequest kill;
  kill.valid = FATTR_KILL_SUIDGID;
  chmod.mode = 06755;
  REQUIRE(f.fs.SetAttr(kRoot, node, chmod).ok());
  CHECK((f.fs.SetAttr(kRoot, node, kill)->st.st_mode & 07777) == 0755);
  // The file type never changes.
  chmod.mode = S_IFDIR | 0700;
  CHECK(S_ISREG(f.fs.SetAttr(kRoot, node, chmod)->st.st_mode));
}

TEST_CASE("memfs: timestamps follow POSIX") {
  Fs f;
  Entry d = f.Mkdir(FUSE_ROOT_ID, "d");
  REQUIRE(f.SetTimes(d.node_id, Ts(100), Ts(100)).ok());
  CreateResult c = f.Create(d.node_id, "f");
  const uint64_t node = c.entry.node_id;
  Attributes dir = f.Attr(d.node_id);
  CHECK(dir.st.st_mtim.tv_sec > 100);  // A new name changes the directory.
  CHECK(dir.st.st_ctim.tv_sec > 100);
  CHECK(dir.st.st_atim.tv_sec == 100);

  REQUIRE(f.SetTimes(node, Ts(100), Ts(100)).ok());
  const timespec ctime0 = f.Attr(node).st.st_ctim;
  REQUIRE(f.Write(node, c.open.handle, 0, "abc").ok());
  Attributes after_write = f.Attr(node);
  CHECK(after_write.st.st_mtim.tv_sec > 100);
  CHECK(after_write.st.st_atim.tv_sec == 100);
  CHECK_FALSE(Later(ctime0, after_write.st.st_ctim));

  REQUIRE(f.SetTimes(node, Ts(100), Ts(100)).ok());
  REQUIRE(f.Read(node, c.open.handle, 0, 3).ok());
  Attributes after_read = f.Attr(node);
  CHECK(after_read.st.st_atim.tv_sec > 100);
  CHECK(after_read.st.st_mtim.tv_sec == 100);

  // A link or unlink changes the node's ctime and the directories' mtime.
  REQUIRE(f.SetTimes(d.node_id, Ts(100), Ts(100)).ok());
  REQUIRE(f.SetTimes(FUSE_ROOT_ID, Ts(100), Ts(100)).ok());
  REQUIRE(f.fs.Link(kRoot, node, FUSE_ROOT_ID, "link").ok());
  CHECK(f.Attr(FUSE_ROOT_ID).st.st_mtim.tv_sec > 100);
  REQUIRE(f.fs.Unlink(kRoot, d.node_id, "f").ok());
  CHECK(f.Attr(d.node_id).st.st_mtim.tv_sec > 100);
  // Rename touches both directories.
  REQUIRE(f.SetTimes(d.node_id, Ts(100), Ts(100)).ok());
  REQUIRE(f.SetTimes(FUSE_ROOT_ID, Ts(100), Ts(100)).ok());
  REQUIRE(f.fs.Rename(kRoot, FUSE_ROOT_ID, "link", d.node_id, "moved", 0).ok());
  CHECK(f.Attr(FUSE_ROOT_ID).st.st_mtim.tv_sec > 100);
  CHECK(f.Attr(d.node_id).st.st_mtim.tv_sec > 100);
  // statx adds the birth time.
  auto sx = f.fs.Statx(kRoot, node, std::nullopt, 0, STATX_BASIC_STATS | STATX_BTIME);
  REQUIRE(sx.ok());
  CHECK((sx->stx.stx_mask & STATX_BTIME) != 0);
  CHECK(sx->stx.stx_btime.tv_sec > 100);
  CHECK(sx->stx.stx_mtime.tv_sec == f.Attr(node).st.st_mtim.tv_sec);
  CHECK(sx->stx.stx_ino == node);
}

TEST_CASE("memfs: extended attributes") {
  Fs f;
  CreateResult c = f.Create(FUSE_ROOT_ID, "f", 0644);
  const uint64_t node = c.entry.node_id;
  auto bytes = [](std::string_view s) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  CHECK(Err(f.fs.GetXattr(kRoot, node, "user.a")) == ENODATA);
  CHECK(Err(f.fs.SetXattr(kRoot, node, "user.a", bytes("1"), XATTR_REPLACE, 0)) == ENODATA);
  REQUIRE(f.fs.SetXattr(kRoot, node, "user.a", bytes("1"), XATTR_CREATE, 0).ok());
  CHECK(Err(f.fs.SetXattr(kRoot, node, "user.a", bytes("2"), XATTR_CREATE, 0)) == EEXIST);
  REQUIRE(f.fs.SetXattr(kRoot, node, "user.a", bytes("two"), XATTR_REPLACE, 0).ok());
  CHECK(*f.fs.GetXattr(kRoot, node, "user.a") == "two");
  REQUIRE(f.fs.SetXattr(kRoot, node, "user.b", bytes(std::string_view("\0\1", 2)), 0, 0).ok());
  CHECK(*f.fs.GetXattr(kRoot, node, "user.b") == std::string("\0\1", 2));
  REQUIRE(f.fs.SetXattr(kRoot, node, "trusted.t", bytes("t"), 0, 0).ok());
  CHECK(Err(f.fs.SetXattr(kRoot, node, "user.a", bytes("x"), 4, 0)) == EINVAL);
  CHECK(*f.fs.ListXattr(kRoot, node) == std::string("trusted.t\0user.a\0user.b\0", 24));
  // Others: trusted.* is root's, user.* follows the mode bits.
  CHECK(*f.fs.ListXattr(kAlice, node) == std::string("user.a\0user.b\0", 14));
  CHECK(Err(f.fs.GetXattr(kAlice, node, "trusted.t")) == ENODATA);
  CHECK(Err(f.fs.SetXattr(kAlice, node, "trusted.t", bytes("x"), 0, 0)) == EPERM);
  CHECK(*f.fs.GetXattr(kAlice, node, "user.a") == "two");
  CHECK(Err(f.fs.SetXattr(kAlice, node, "user.a", bytes("x"), 0, 0)) == EACCES);
  CHECK(Err(f.fs.RemoveXattr(kAlice, node, "user.a")) == EACCES);
  CHECK(Err(f.fs.SetXattr(kAlice, node, "security.s", bytes("x"), 0, 0)) == EPERM);
  // POSIX ACLs (system.*) are not served; user.* only on files and dirs.
  CHECK(Err(f.fs.SetXattr(kRoot, node, "system.posix_acl_access", bytes("x"), 0, 0)) == EOPNOTSUPP);
  auto s = f.fs.Symlink(kRoot, FUSE_ROOT_ID, "s", "f");
  REQUIRE(s.ok());
  CHECK(Err(f.fs.SetXattr(kRoot, s->node_id, "user.a", bytes("x"), 0, 0)) == EPERM);
  CHECK(Err(f.fs.GetXattr(kRoot, s->node_id, "user.a")) == ENODATA);
  // Removal.
  REQUIRE(f.fs.RemoveXattr(kRoot, node, "user.a").ok());
  CHECK(Err(f.fs.RemoveXattr(kRoot, node, "user.a")) == ENODATA);
  CHECK(Err(f.fs.GetXattr(kRoot, node, "user.a")) == ENODATA);
  // Values count against capacity, and are returned when the node goes.
  CHECK(f.fs.used_bytes() == 1 /* symlink */ + 6 + 2 + 9 + 1);
  REQUIRE(f.fs.Unlink(kRoot, FUSE_ROOT_ID, "f").ok());
  f.fs.Forget(node, 1);
  f.Release(node, c.open.handle);
  CHECK(f.fs.used_bytes() == 1);
}

TEST_CASE("memfs: capacity and statfs") {
  MemFsOptions o;
  o.max_bytes = 64 * 1024;
  o.max_nodes = 4;
  Fs f(o);
  auto st = f.fs.StatFs(kRoot, FUSE_ROOT_ID);
  REQUIRE(st.ok());
  CHECK(st->f_bsize == 4096);
  CHECK(st->f_blocks == 16);
  CHECK(st->f_bfree == 16);
  CHECK(st->f_files == 4);
  CHECK(st->f_ffree == 3);
  CHECK(st->f_namemax == 255);
  CreateResult c = f.Create(FUSE_ROOT_ID, "f");
  const uint64_t node = c.entry.node_id;
  REQUIRE(f.Write(node, c.open.handle, 0, std::string(8192, 'x')).ok());
  st = f.fs.StatFs(kRoot, FUSE_ROOT_ID);
  CHECK(st->f_bfree == 14);
  CHECK(st->f_ffree == 2);
  // Past the whole capacity: EFBIG; past what is left: ENOSPC.
  CHECK(Err(f.Write(node, c.open.handle, 64 * 1024, "x")) == EFBIG);
  CHECK(Err(f.Write(node, c.open.handle, UINT64_MAX - 1, "xyz")) == EFBIG);
  CreateResult g = f.Create(FUSE_ROOT_ID, "g");
  CHECK(Err(f.Write(g.entry.node_id, g.open.handle, 0, std::string(60 * 1024, 'y'))) == ENOSPC);
  SetAttrRequest size;
  size.valid = FATTR_SIZE;
  size.size = 60 * 1024;
  CHECK(Err(f.fs.SetAttr(kRoot, g.entry.node_id, size)) == ENOSPC);
  f.Mkdir(FUSE_ROOT_ID, "d");
  CHECK(Err(f.fs.Mkdir(kRoot, FUSE_ROOT_ID, "e", 0755, 0)) == ENOSPC);
  CHECK(f.fs.node_count() == 4);
}

TEST_CASE("memfs: mknod") {
  Fs f;
  auto fifo = f.fs.Mknod(kAlice, FUSE_ROOT_ID, "p", S_IFIFO | 0644, 0, 0);
  CHECK(Err(fifo) == EACCES);
  fifo = f.fs.Mknod(kRoot, FUSE_ROOT_ID, "p", S_IFIFO | 0666, 0, 022);
  REQUIRE(fifo.ok());
  CHECK(S_ISFIFO(fifo->attr.st.st_mode));
  CHECK((fifo->attr.st.st_mode & 0777) == 0644);
  CHECK(Err(f.fs.Open(kRoot, fifo->node_id, O_RDONLY)) == ENXIO);
  auto sock = f.fs.Mknod(kRoot, FUSE_ROOT_ID, "s", S_IFSOCK | 0644, 0, 0);
  REQUIRE(sock.ok());
  CHECK(S_ISSOCK(sock->attr.st.st_mode));
  const uint32_t rdev = static_cast<uint32_t>(makedev(8, 1));
  auto blk = f.fs.Mknod(kRoot, FUSE_ROOT_ID, "sda1", S_IFBLK | 0660, rdev, 0);
  REQUIRE(blk.ok());
  CHECK(S_ISBLK(blk->attr.st.st_mode));
  CHECK(blk->attr.st.st_rdev == rdev);
  auto reg = f.fs.Mknod(kRoot, FUSE_ROOT_ID, "r", 0644, 0, 0);  // No type: a file.
  REQUIRE(reg.ok());
  CHECK(S_ISREG(reg->attr.st.st_mode));
  Entry tmp = f.Mkdir(FUSE_ROOT_ID, "tmp", 0777);
  CHECK(Err(f.fs.Mknod(kAlice, tmp.node_id, "c", S_IFCHR | 0644, rdev, 0)) == EPERM);
  CHECK(f.fs.Mknod(kAlice, tmp.node_id, "p", S_IFIFO | 0644, 0, 0).ok());
  CHECK(Err(f.fs.Mknod(kRoot, FUSE_ROOT_ID, "d", S_IFDIR | 0755, 0, 0)) == EPERM);
  CHECK(Err(f.fs.Mknod(kRoot, FUSE_ROOT_ID, "x", 0170000 | 0644, 0, 0)) == EINVAL);
  CHECK(Err(f.fs.Mknod(kRoot, FUSE_ROOT_ID, "p", S_IFIFO | 0644, 0, 0)) == EEXIST);
}

TEST_CASE("memfs: O_TMPFILE") {
  Fs f;
  CHECK(Err(f.fs.TmpFile(kRoot, FUSE_ROOT_ID, 0600, O_RDONLY, 0)) == EINVAL);
  auto t = f.fs.TmpFile(kRoot, FUSE_ROOT_ID, 0600, O_RDWR, 0);
  REQUIRE(t.ok());
  const uint64_t node = t->entry.node_id;
  CHECK(t->entry.attr.st.st_nlink == 0);
  REQUIRE(f.Write(node, t->open.handle, 0, "tmp").ok());
  // linkat(2) gives it a name.
  auto l = f.fs.Link(kRoot, node, FUSE_ROOT_ID, "named");
  REQUIRE(l.ok());
  CHECK(l->attr.st.st_nlink == 1);
  f.Release(node, t->open.handle);
  f.fs.Forget(node, 2);
  CHECK(f.fs.Lookup(kRoot, FUSE_ROOT_ID, "named")->attr.st.st_size == 3);
  // O_EXCL: never linkable; it goes with its handle.
  auto x = f.fs.TmpFile(kRoot, FUSE_ROOT_ID, 0600, O_RDWR | O_EXCL, 0);
  REQUIRE(x.ok());
  CHECK(Err(f.fs.Link(kRoot, x->entry.node_id, FUSE_ROOT_ID, "x")) == ENOENT);
  const size_t before = f.fs.node_count();
  f.fs.Forget(x->entry.node_id, 1);
  f.Release(x->entry.node_id, x->open.handle);
  CHECK(f.fs.node_count() == before - 1);
}

TEST_CASE("memfs: lseek and fallocate") {
  Fs f;
  CreateResult c = f.Create(FUSE_ROOT_ID, "f");
  const uint64_t node = c.entry.node_id, fh = c.open.handle;
  REQUIRE(f.fs.Fallocate(kRoot, node, fh, 0, 100, 0).ok());
  CHECK(f.Attr(node).st.st_size == 100);
  REQUIRE(f.fs.Fallocate(kRoot, node, fh, 0, 1000, FALLOC_FL_KEEP_SIZE).ok());
  CHECK(f.Attr(node).st.st_size == 100);
  REQUIRE(f.Write(node, fh, 0, "abcdef").ok());
  REQUIRE(f.fs.Fallocate(kRoot, node, fh, 1, 2, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE).ok());
  CHECK(*f.Read(node, fh, 0, 6) == std::string("a\0\0def", 6));
  CHECK(Err(f.fs.Fallocate(kRoot, node, fh, 0, 10, FALLOC_FL_COLLAPSE_RANGE)) == EOPNOTSUPP);
  CHECK(Err(f.fs.Fallocate(kRoot, node, fh, 0, 0, 0)) == EINVAL);
  CHECK(*f.fs.Lseek(kRoot, node, fh, 10, SEEK_DATA) == 10);
  CHECK(*f.fs.Lseek(kRoot, node, fh, 10, SEEK_HOLE) == 100);
  CHECK(Err(f.fs.Lseek(kRoot, node, fh, 100, SEEK_DATA)) == ENXIO);
  CHECK(Err(f.fs.Lseek(kRoot, node, 999, 0, SEEK_DATA)) == EBADF);
}

TEST_CASE("memfs: DESTROY forgets references and handles, keeps contents") {
  Fs f;
  CreateResult kept = f.Create(FUSE_ROOT_ID, "kept");
  REQUIRE(f.Write(kept.entry.node_id, kept.open.handle, 0, "still here").ok());
  CreateResult gone = f.Create(FUSE_ROOT_ID, "gone");
  REQUIRE(f.fs.Unlink(kRoot, FUSE_ROOT_ID, "gone").ok());
  CHECK(f.fs.node_count() == 3);
  f.fs.Destroy();
  CHECK(f.fs.node_count() == 2);
  CHECK(f.fs.handle_count() == 0);
  CHECK(f.fs.lookup_count(kept.entry.node_id) == 0);
  CHECK(Err(f.Read(kept.entry.node_id, kept.open.handle, 0, 1)) == EBADF);
  auto l = f.fs.Lookup(kRoot, FUSE_ROOT_ID, "kept");
  REQUIRE(l.ok());
  const uint64_t fh = f.Open(l->node_id, O_RDONLY);
  CHECK(*f.Read(l->node_id, fh, 0, 100) == "still here");
  CHECK(Err(f.fs.GetAttr(kRoot, gone.entry.node_id, std::nullopt)) == ENOENT);
}

TEST_CASE("memfs: several threads at once") {
  Fs f;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      Entry d = *f.fs.Mkdir(kRoot, FUSE_ROOT_ID, "t" + std::to_string(t), 0755, 0);
      for (int i = 0; i < 200; ++i) {
        const std::string name = "f" + std::to_string(i);
        auto c = f.fs.Create(kRoot, d.node_id, name, 0644, O_CREAT | O_RDWR, 0);
        if (!c.ok()) {
          ++failures;
          continue;
        }
        if (!f.Write(c->entry.node_id, c->open.handle, 0, name).ok()) ++failures;
        if (*f.Read(c->entry.node_id, c->open.handle, 0, 16) != name) ++failures;
        if (!f.fs.Rename(kRoot, d.node_id, name, FUSE_ROOT_ID, name + "." + std::to_string(t), 0)
                 .ok()) {
          ++failures;
        }
        (void)f.fs.Release(kRoot, c->entry.node_id, c->open.handle, 0, 0, 0);
        if (!f.fs.Unlink(kRoot, FUSE_ROOT_ID, name + "." + std::to_string(t)).ok()) ++failures;
        f.fs.Forget(c->entry.node_id, 1);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(failures == 0);
  CHECK(f.fs.node_count() == 5);  // The root and four directories.
  CHECK(f.fs.used_bytes() == 0);
}

// ==== Part 2: served end to end ==========================================

using testing::BuildInit;
using testing::BuildRequest;
using testing::DriverQueue;
using testing::Frontend;
using testing::FuseBody;
using testing::FuseReply;
using testing::FuseTransact;
using testing::GuestRam;

constexpr uint64_t kVirtio = vhost_user::Bit(VIRTIO_F_VERSION_1) |
                             vhost_user::Bit(VIRTIO_RING_F_INDIRECT_DESC) |
                             vhost_user::Bit(VIRTIO_RING_F_EVENT_IDX) |
                             vhost_user::Bit(vhost_user::kFeatureProtocolFeatures);
constexpr uint64_t kProtocol = vhost_user::Bit(vhost_user::kProtocolReplyAck) |
                               vhost_user::Bit(vhost_user::kProtocolMq) |
                               vhost_user::Bit(vhost_user::kProtocolConfig);

// A SyncFileSystem served on a temporary socket, with a front-end that has
// started the hiprio queue (0) and one request queue (1).
class Served {
 public:
  explicit Served(SyncFileSystem& fs) : adapter_(fs), ram_(GuestRam::CreateOrDie(8 << 20)) {
    VirtioFsDeviceOptions o;
    o.tag = "memfs";
    auto d = VirtioFsDevice::Create(&adapter_, o);
    REQUIRE(d.ok());
    device_ = *std::move(d);
    char dir[] = "/tmp/memfs-test-XXXXXX";
    REQUIRE(mkdtemp(dir) != nullptr);
    dir_ = dir;
    ServerOptions so;
    so.keep_serving = true;
    auto s = VhostUserServer::Listen(dir_ + "/sock", device_.get(), so);
    REQUIRE(s.ok());
    server_ = *std::move(s);
    thread_ = std::thread([this] { (void)server_->Run(); });
    auto f = Frontend::Connect(dir_ + "/sock");
    REQUIRE(f.ok());
    fe_ = *std::move(f);
    REQUIRE(fe_->Negotiate(kVirtio, kProtocol).ok());
    REQUIRE(fe_->SetMemTable(*ram_).ok());
    for (uint32_t i = 0; i < 2; ++i) {
      queues_.push_back(std::make_unique<DriverQueue>(*ram_, 256, 0x100000 * i,
                                                      0x100000 * i + 0x40000, 0xc0000, true));
      REQUIRE(fe_->StartVring(i, *queues_.back()).ok());
    }
  }
  ~Served() {
    fe_->Close();
    server_->Stop();
    thread_.join();
    server_.reset();
    rmdir(dir_.c_str());
  }

  uint64_t Unique() { return unique_ += 2; }
  // A request on the request queue; its reply.
  FuseReply Send(uint32_t opcode, uint64_t node, const FuseBody& body,
                 uint32_t reply_capacity = 4096, const RequestContext& ctx = kRoot) {
    auto req = BuildRequest(opcode, Unique(), node, body.bytes(), ctx.uid, ctx.gid);
    auto r = FuseTransact(*fe_, 1, *queues_[1], *ram_, req, reply_capacity);
    INFO("opcode " << opcode << ": " << r.status().message());
    REQUIRE(r.ok());
    queues_[1]->ResetAlloc();
    return *std::move(r);
  }
  FuseReply Init() {
    auto r = FuseTransact(*fe_, 1, *queues_[1], *ram_, BuildInit(Unique()));
    REQUIRE(r.ok());
    queues_[1]->ResetAlloc();
    return *std::move(r);
  }
  // FORGET on the hiprio queue: no reply, the chain comes back empty.
  void Forget(uint64_t node, uint64_t nlookup) {
    fuse_forget_in in{nlookup};
    auto req = BuildRequest(FUSE_FORGET, Unique(), node, FuseBody().Add(in).bytes());
    auto r = fe_->Transact(0, *queues_[0], *ram_, req, 0);
    INFO(r.status().message());
    REQUIRE(r.ok());
    CHECK(r->empty());
    queues_[0]->ResetAlloc();
  }
  VirtioFsDevice& device() { return *device_; }

 private:
  SyncAdapter adapter_;
  std::unique_ptr<GuestRam> ram_;
  std::unique_ptr<VirtioFsDevice> device_;
  std::string dir_;
  std::unique_ptr<VhostUserServer> server_;
  std::thread thread_;
  std::unique_ptr<Frontend> fe_;
  std::vector<std::unique_ptr<DriverQueue>> queues_;
  uint64_t unique_ = 0;
};

template <typename T>
T Body(const FuseReply& r) {
  INFO("error " << r.error() << ", " << r.body.size() << " body bytes");
  REQUIRE(r.error() == 0);
  auto v = r.BodyAs<T>();
  REQUIRE(v.ok());
  return *v;
}

struct DirEntry {
  std::string name;
  uint64_t ino;
  uint64_t off;
  uint32_t type;
  std::optional<fuse_entry_out> entry;  // READDIRPLUS.
};

std::vector<DirEntry> ParseDir(const FuseReply& r, bool plus) {
  REQUIRE(r.error() == 0);
  std::vector<DirEntry> out;
  size_t pos = 0;
  const auto& b = r.body;
  while (pos < b.size()) {
    DirEntry e;
    if (plus) {
      REQUIRE(b.size() - pos >= sizeof(fuse_entry_out));
      fuse_entry_out eo;
      std::memcpy(&eo, b.data() + pos, sizeof eo);
      e.entry = eo;
      pos += sizeof eo;
    }
    REQUIRE(b.size() - pos >= FUSE_NAME_OFFSET);
    fuse_dirent d;
    std::memcpy(&d, b.data() + pos, FUSE_NAME_OFFSET);
    REQUIRE(b.size() - pos >= FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + d.namelen));
    e.name.assign(reinterpret_cast<const char*>(b.data() + pos + FUSE_NAME_OFFSET), d.namelen);
    e.ino = d.ino;
    e.off = d.off;
    e.type = d.type;
    pos += FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + d.namelen);
    out.push_back(std::move(e));
  }
  return out;
}

FuseBody Named(std::string_view name) {
  FuseBody b;
  b.Name(name);
  return b;
}

fuse_read_in ReadIn(uint64_t fh, uint64_t offset, uint32_t size) {
  fuse_read_in in{};
  in.fh = fh;
  in.offset = offset;
  in.size = size;
  return in;
}

TEST_CASE("memfs served: a guest's session from INIT to DESTROY") {
  MemFs fs;
  Served s(fs);
  // INIT: the session offers what memfs honours.
  auto init = s.Init().BodyPrefixAs<fuse_init_out>(24);
  REQUIRE(init.ok());
  CHECK(init->major == FUSE_KERNEL_VERSION);

  // MKDIR /dir.
  fuse_mkdir_in mk{};
  mk.mode = 0755;
  auto dir = Body<fuse_entry_out>(s.Send(FUSE_MKDIR, FUSE_ROOT_ID, FuseBody().Add(mk).Name("dir")));
  CHECK(S_ISDIR(dir.attr.mode));
  CHECK(dir.attr.nlink == 2);
  CHECK(fs.lookup_count(dir.nodeid) == 1);
  auto again = s.Send(FUSE_MKDIR, FUSE_ROOT_ID, FuseBody().Add(mk).Name("dir"));
  CHECK(again.error() == -EEXIST);

  // CREATE /dir/file.
  fuse_create_in cr{};
  cr.flags = O_RDWR | O_CREAT | O_EXCL;
  cr.mode = S_IFREG | 0644;
  auto created = s.Send(FUSE_CREATE, dir.nodeid, FuseBody().Add(cr).Name("file"));
  REQUIRE(created.error() == 0);
  REQUIRE(created.body.size() == sizeof(fuse_entry_out) + sizeof(fuse_open_out));
  fuse_entry_out file;
  fuse_open_out open;
  std::memcpy(&file, created.body.data(), sizeof file);
  std::memcpy(&open, created.body.data() + sizeof file, sizeof open);
  CHECK(S_ISREG(file.attr.mode));
  CHECK(fs.handle_count() == 1);

  // WRITE, then READ it back (straight from and into guest memory).
  const std::string text = "Hello from the guest, through a virtqueue.";
  fuse_write_in wr{};
  wr.fh = open.fh;
  wr.size = static_cast<uint32_t>(text.size());
  auto written =
      Body<fuse_write_out>(s.Send(FUSE_WRITE, file.nodeid, FuseBody().Add(wr).Raw(text)));
  CHECK(written.size == text.size());
  auto read = s.Send(FUSE_READ, file.nodeid, FuseBody().Add(ReadIn(open.fh, 0, 4096)), 8192);
  REQUIRE(read.error() == 0);
  CHECK(std::string(read.body.begin(), read.body.end()) == text);
  read = s.Send(FUSE_READ, file.nodeid, FuseBody().Add(ReadIn(open.fh, 6, 4)), 8192);
  CHECK(std::string(read.body.begin(), read.body.end()) == "from");

  // READDIRPLUS of /dir: ".", "..", "file"; only "file" counts as a lookup.
  fuse_open_in oi{};
  auto dh = Body<fuse_open_out>(s.Send(FUSE_OPENDIR, dir.nodeid, FuseBody().Add(oi)));
  auto listing = ParseDir(
      s.Send(FUSE_READDIRPLUS, dir.nodeid, FuseBody().Add(ReadIn(dh.fh, 0, 4096)), 8192), true);
  REQUIRE(listing.size() == 3);
  CHECK(listing[0].name == ".");
  CHECK(listing[0].entry->nodeid == 0);
  CHECK(listing[0].ino == dir.nodeid);
  CHECK(listing[1].name == "..");
  CHECK(listing[1].entry->nodeid == 0);
  CHECK(listing[1].ino == FUSE_ROOT_ID);
  CHECK(listing[2].name == "file");
  CHECK(listing[2].entry->nodeid == file.nodeid);
  CHECK(listing[2].entry->attr.size == text.size());
  CHECK(listing[2].type == DT_REG);
  CHECK(fs.lookup_count(file.nodeid) == 2);
  // Continuing from the last offset: nothing more.
  auto rest = ParseDir(s.Send(FUSE_READDIRPLUS, dir.nodeid,
                              FuseBody().Add(ReadIn(dh.fh, listing[2].off, 4096)), 8192),
                       true);
  CHECK(rest.empty());
  fuse_release_in rel{};
  rel.fh = dh.fh;
  CHECK(s.Send(FUSE_RELEASEDIR, dir.nodeid, FuseBody().Add(rel)).error() == 0);

  // RENAME /dir/file -> /moved; GETATTR follows the node.
  fuse_rename_in rn{};
  rn.newdir = FUSE_ROOT_ID;
  auto renamed = s.Send(FUSE_RENAME, dir.nodeid, FuseBody().Add(rn).Name("file").Name("moved"));
  CHECK(renamed.error() == 0);
  fuse_getattr_in ga{};
  auto attr = Body<fuse_attr_out>(s.Send(FUSE_GETATTR, file.nodeid, FuseBody().Add(ga)));
  CHECK(attr.attr.size == text.size());
  CHECK(attr.attr.nlink == 1);
  auto lookup = s.Send(FUSE_LOOKUP, FUSE_ROOT_ID, Named("moved"));
  CHECK(Body<fuse_entry_out>(lookup).nodeid == file.nodeid);
  CHECK(s.Send(FUSE_LOOKUP, dir.nodeid, Named("file")).error() == -ENOENT);
  CHECK(fs.lookup_count(file.nodeid) == 3);

  // UNLINK: the name goes; the open file stays readable.
  CHECK(s.Send(FUSE_UNLINK, FUSE_ROOT_ID, Named("moved")).error() == 0);
  attr = Body<fuse_attr_out>(s.Send(FUSE_GETATTR, file.nodeid, FuseBody().Add(ga)));
  CHECK(attr.attr.nlink == 0);
  read = s.Send(FUSE_READ, file.nodeid, FuseBody().Add(ReadIn(open.fh, 0, 5)), 8192);
  CHECK(std::string(read.body.begin(), read.body.end()) == "Hello");
  rel.fh = open.fh;
  CHECK(s.Send(FUSE_RELEASE, file.nodeid, FuseBody().Add(rel)).error() == 0);
  CHECK(fs.handle_count() == 0);

  // FORGET on the hiprio queue drops the guest's references: the node goes.
  const size_t before = fs.node_count();
  s.Forget(file.nodeid, 3);
  CHECK(fs.node_count() == before - 1);
  CHECK(s.Send(FUSE_GETATTR, file.nodeid, FuseBody().Add(ga)).error() == -ENOENT);
  CHECK(s.device().completed(0) == 1);

  // DESTROY: the session ends, the contents stay for the next mount.
  CHECK(s.Send(FUSE_DESTROY, 0, FuseBody()).error() == 0);
  CHECK(fs.lookup_count(dir.nodeid) == 0);
  CHECK(s.Send(FUSE_LOOKUP, FUSE_ROOT_ID, Named("dir")).error() == -EIO);  // Before INIT.
  s.Init();
  CHECK(Body<fuse_entry_out>(s.Send(FUSE_LOOKUP, FUSE_ROOT_ID, Named("dir"))).nodeid == dir.nodeid);
}

TEST_CASE("memfs served: readdir offsets stay valid while the directory changes") {
  MemFs fs;
  Served s(fs);
  s.Init();
  fuse_create_in cr{};
  cr.flags = O_RDWR | O_CREAT;
  cr.mode = S_IFREG | 0644;
  std::map<std::string, uint64_t> handles;
  for (const char* name : {"a", "b", "c", "d"}) {
    auto r = s.Send(FUSE_CREATE, FUSE_ROOT_ID, FuseBody().Add(cr).Name(name));
    REQUIRE(r.error() == 0);
  }
  fuse_open_in oi{};
  auto dh = Body<fuse_open_out>(s.Send(FUSE_OPENDIR, FUSE_ROOT_ID, FuseBody().Add(oi)));
  // Room for "." ".." "a" only: each name pads to a 32-byte dirent here.
  auto first = ParseDir(
      s.Send(FUSE_READDIR, FUSE_ROOT_ID, FuseBody().Add(ReadIn(dh.fh, 0, 3 * 32 + 8)), 4096),
      false);
  REQUIRE(first.size() == 3);
  CHECK(first[2].name == "a");
  CHECK(first[2].type == DT_REG);
  // Meanwhile "b" goes and "e" comes.
  CHECK(s.Send(FUSE_UNLINK, FUSE_ROOT_ID, Named("b")).error() == 0);
  REQUIRE(s.Send(FUSE_CREATE, FUSE_ROOT_ID, FuseBody().Add(cr).Name("e")).error() == 0);
  auto second = ParseDir(
      s.Send(FUSE_READDIR, FUSE_ROOT_ID, FuseBody().Add(ReadIn(dh.fh, first[2].off, 4096)), 4096),
      false);
  std::vector<std::string> names;
  for (const auto& e : second) names.push_back(e.name);
  CHECK(names == std::vector<std::string>{"c", "d", "e"});
  // READDIRPLUS that runs out of room: the entry that did not fit is no
  // reference.
  const uint64_t c_node =
      Body<fuse_entry_out>(s.Send(FUSE_LOOKUP, FUSE_ROOT_ID, Named("c"))).nodeid;
  const uint64_t before = fs.lookup_count(c_node);
  const uint32_t one_plus = sizeof(fuse_entry_out) + 32;
  auto partial = ParseDir(s.Send(FUSE_READDIRPLUS, FUSE_ROOT_ID,
                                 FuseBody().Add(ReadIn(dh.fh, first[2].off, one_plus)), 4096),
                          true);
  REQUIRE(partial.size() == 1);
  CHECK(partial[0].name == "c");
  CHECK(fs.lookup_count(c_node) == before + 1);
  // A stale or foreign handle.
  CHECK(s.Send(FUSE_READDIR, FUSE_ROOT_ID, FuseBody().Add(ReadIn(999, 0, 4096))).error() == -EBADF);
}

// A file system that breaks the rules: the adapter must hold them.
class ThrowingFs : public SyncFileSystem {
 public:
  Result<Entry> Lookup(const RequestContext&, uint64_t, std::string_view name) override {
    if (name == "int") throw 42;
    throw std::runtime_error("bug in a backend");
  }
  void Forget(uint64_t, uint64_t) override {
    ++forgets;
    throw std::runtime_error("forget bug");
  }
  std::atomic<int> forgets{0};
};

TEST_CASE("memfs served: the adapter answers ENOSYS by default and EIO for exceptions") {
  ThrowingFs fs;
  Served s(fs);
  s.Init();
  CHECK(s.Send(FUSE_LOOKUP, FUSE_ROOT_ID, Named("x")).error() == -EIO);
  CHECK(s.Send(FUSE_LOOKUP, FUSE_ROOT_ID, Named("int")).error() == -EIO);
  fuse_getattr_in ga{};
  CHECK(s.Send(FUSE_GETATTR, FUSE_ROOT_ID, FuseBody().Add(ga)).error() == -ENOSYS);
  fuse_open_in oi{};
  CHECK(s.Send(FUSE_OPENDIR, FUSE_ROOT_ID, FuseBody().Add(oi)).error() == -ENOSYS);
  CHECK(s.Send(FUSE_READDIR, FUSE_ROOT_ID, FuseBody().Add(ReadIn(1, 0, 4096))).error() == -ENOSYS);
  CHECK(s.Send(FUSE_READ, 2, FuseBody().Add(ReadIn(1, 0, 16)), 4096).error() == -ENOSYS);
  s.Forget(5, 1);  // Thrown and swallowed: the queue goes on.
  CHECK(fs.forgets == 1);
  CHECK(s.Send(FUSE_GETATTR, FUSE_ROOT_ID, FuseBody().Add(ga)).error() == -ENOSYS);
}

}  // namespace
}  // namespace virtiofs
