// PassthroughBackend through the FUSE session, against a temporary host
// directory: what the guest sees matches what the host has, errors are
// exact, and nothing reaches outside the shared directory.
#include "virtiofs/passthrough.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "tests/support/fuse_harness.h"
#include "tests/support/fuse_request.h"
#include "tests/support/host_files.h"

namespace virtiofs {
namespace {

using testing::CountFds;
using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;

using testing::BuildLookup;
using testing::BuildRequest;
using testing::FuseBody;
using testing::FuseHarness;
using testing::FuseReply;
namespace fs = std::filesystem;

struct Env {
  explicit Env(PassthroughOptions o = {}) {
    o.root = dir.path;
    if (testing::TestWithFileHandles()) {
      o.inode_file_handles = PassthroughOptions::FileHandles::kMandatory;
    }
    auto b = PassthroughBackend::Create(o);
    INFO(b.status().message());
    REQUIRE(b.ok());
    backend = *std::move(b);
    harness = std::make_unique<FuseHarness>(backend.get());
    harness->Init();
  }
  FuseReply Call(uint32_t opcode, uint64_t node, const FuseBody& body = FuseBody(),
                 uint32_t reply = 4096, uint32_t uid = 0, uint32_t gid = 0) {
    return harness->Call(BuildRequest(opcode, harness->NextUnique(), node, body.bytes(), uid, gid),
                         reply);
  }
  fuse_entry_out Lookup(uint64_t parent, std::string_view name) {
    auto r = harness->Call(BuildLookup(harness->NextUnique(), parent, name));
    INFO("lookup " << name);
    REQUIRE(r.error() == 0);
    return *r.BodyAs<fuse_entry_out>();
  }
  int LookupError(uint64_t parent, std::string_view name) {
    return harness->Call(BuildLookup(harness->NextUnique(), parent, name)).error();
  }
  uint64_t Open(uint64_t node, uint32_t flags) {
    fuse_open_in in{flags, 0};
    auto r = Call(FUSE_OPEN, node, FuseBody().Add(in));
    REQUIRE(r.error() == 0);
    return r.BodyAs<fuse_open_out>()->fh;
  }
  TempDir dir;
  std::unique_ptr<PassthroughBackend> backend;
  std::unique_ptr<FuseHarness> harness;
};

// Host open flags of the fd this process holds open on `path` (as fdinfo
// says; O_PATH fds, the inodes' own, are passed over), or -1 when none is.
long HostOpenFlags(const std::string& path) {
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    if (std::filesystem::read_symlink(e.path(), ec) != path) continue;
    std::ifstream info("/proc/self/fdinfo/" + e.path().filename().string());
    for (std::string line; std::getline(info, line);) {
      if (line.rfind("flags:", 0) != 0) continue;
      const long flags = std::stol(line.substr(6), nullptr, 8);
      if ((flags & O_PATH) == 0) return flags;
    }
  }
  return -1;
}

TEST_CASE("timeout override, allow_mmap and O_NOATIME as the daemon sets them") {
  constexpr uint64_t kAllowMmap = uint64_t{1} << 36;  // FUSE_DIRECT_IO_ALLOW_MMAP
  SECTION("defaults") {
    Env e;
    auto init = e.harness->Init(kAllowMmap);
    CHECK((init.BodyAs<fuse_init_out>()->flags2 & (kAllowMmap >> 32)) == 0);
    WriteFile(e.dir / "f", "x");
    auto entry = e.Lookup(FUSE_ROOT_ID, "f");
    CHECK(entry.entry_valid == 1);  // cache=auto
    e.Open(entry.nodeid, O_RDONLY | O_NOATIME);
    const long flags = HostOpenFlags(e.dir / "f");
    REQUIRE(flags >= 0);
    CHECK((flags & O_NOATIME) != 0);
  }
  SECTION("set") {
    PassthroughOptions o;
    o.timeout = 7.5;
    o.allow_mmap = true;
    o.preserve_noatime = false;
    Env e(o);
    auto init = e.harness->Init(kAllowMmap);
    CHECK((init.BodyAs<fuse_init_out>()->flags2 & (kAllowMmap >> 32)) != 0);
    WriteFile(e.dir / "f", "x");
    auto entry = e.Lookup(FUSE_ROOT_ID, "f");
    CHECK(entry.entry_valid == 7);
    CHECK(entry.entry_valid_nsec == 500000000);
    CHECK(entry.attr_valid == 7);
    e.Open(entry.nodeid, O_RDONLY | O_NOATIME);
    const long flags = HostOpenFlags(e.dir / "f");
    REQUIRE(flags >= 0);
    CHECK((flags & O_NOATIME) == 0);
  }
}

TEST_CASE("lookup and getattr match the host") {
  Env e;
  WriteFile(e.dir / "hello.txt", "hello world");
  struct stat st;
  REQUIRE(stat((e.dir / "hello.txt").c_str(), &st) == 0);
  auto entry = e.Lookup(FUSE_ROOT_ID, "hello.txt");
  CHECK(entry.nodeid > FUSE_ROOT_ID);
  CHECK(entry.attr.ino == st.st_ino);
  CHECK(entry.attr.size == 11);
  CHECK(entry.attr.mode == st.st_mode);
  CHECK(entry.attr.mtime == static_cast<uint64_t>(st.st_mtim.tv_sec));
  CHECK(entry.attr_valid == 1);  // cache=auto

  // The same inode again is the same node; the lookup count grows.
  auto again = e.Lookup(FUSE_ROOT_ID, "hello.txt");
  CHECK(again.nodeid == entry.nodeid);
  CHECK(e.backend->inode_count() == 2);

  auto attr = e.Call(FUSE_GETATTR, entry.nodeid, FuseBody().Add(fuse_getattr_in{}));
  REQUIRE(attr.error() == 0);
  CHECK(attr.BodyAs<fuse_attr_out>()->attr.size == 11);

  CHECK(e.LookupError(FUSE_ROOT_ID, "missing") == -ENOENT);
  CHECK(e.LookupError(entry.nodeid, "x") == -ENOTDIR);

  // Two FORGETs of one lookup each drop the node.
  for (int i = 0; i < 2; ++i) {
    e.Call(FUSE_FORGET, entry.nodeid, FuseBody().Add(fuse_forget_in{1}), 0);
  }
  CHECK(e.backend->inode_count() == 1);
  auto gone = e.Call(FUSE_GETATTR, entry.nodeid, FuseBody().Add(fuse_getattr_in{}));
  CHECK(gone.error() == -EBADF);
}

TEST_CASE("hard links are one node") {
  Env e;
  WriteFile(e.dir / "a", "x");
  REQUIRE(link((e.dir / "a").c_str(), (e.dir / "b").c_str()) == 0);
  CHECK(e.Lookup(FUSE_ROOT_ID, "a").nodeid == e.Lookup(FUSE_ROOT_ID, "b").nodeid);
}

TEST_CASE("create, write, read back, truncate, release") {
  Env e;
  fuse_create_in c{O_RDWR | O_CREAT, S_IFREG | 0640, 022, 0};
  auto r = e.Call(FUSE_CREATE, FUSE_ROOT_ID, FuseBody().Add(c).Name("new.bin"));
  REQUIRE(r.error() == 0);
  REQUIRE(r.body.size() == sizeof(fuse_entry_out) + sizeof(fuse_open_out));
  fuse_entry_out entry;
  fuse_open_out open;
  std::memcpy(&entry, r.body.data(), sizeof entry);
  std::memcpy(&open, r.body.data() + sizeof entry, sizeof open);
  struct stat st;
  REQUIRE(stat((e.dir / "new.bin").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0640);
  CHECK(e.backend->handle_count() == 1);

  std::string data(10000, 'q');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>('a' + i % 26);
  fuse_write_in w{};
  w.fh = open.fh;
  w.offset = 100;
  w.size = static_cast<uint32_t>(data.size());
  auto wr = e.Call(FUSE_WRITE, entry.nodeid, FuseBody().Add(w).Raw(data));
  REQUIRE(wr.error() == 0);
  CHECK(wr.BodyAs<fuse_write_out>()->size == data.size());
  CHECK(ReadFile(e.dir / "new.bin").substr(100) == data);

  fuse_read_in rd{};
  rd.fh = open.fh;
  rd.offset = 5000;
  rd.size = 8192;
  auto rr = e.Call(FUSE_READ, entry.nodeid, FuseBody().Add(rd), 16 + 8192);
  REQUIRE(rr.error() == 0);
  CHECK(rr.body.size() == 10100 - 5000);  // Short at end of file.
  CHECK(std::string(rr.body.begin(), rr.body.end()) == data.substr(4900));

  fuse_setattr_in sa{};
  sa.valid = FATTR_SIZE | FATTR_FH;
  sa.fh = open.fh;
  sa.size = 42;
  auto tr = e.Call(FUSE_SETATTR, entry.nodeid, FuseBody().Add(sa));
  REQUIRE(tr.error() == 0);
  CHECK(tr.BodyAs<fuse_attr_out>()->attr.size == 42);
  REQUIRE(stat((e.dir / "new.bin").c_str(), &st) == 0);
  CHECK(st.st_size == 42);

  fuse_fsync_in fs{open.fh, 0, 0};
  CHECK(e.Call(FUSE_FSYNC, entry.nodeid, FuseBody().Add(fs)).error() == 0);
  fuse_release_in rel{open.fh, 0, 0, 0};
  CHECK(e.Call(FUSE_RELEASE, entry.nodeid, FuseBody().Add(rel)).error() == 0);
  CHECK(e.backend->handle_count() == 0);
  CHECK(e.Call(FUSE_RELEASE, entry.nodeid, FuseBody().Add(rel)).error() == -EBADF);

  // Linux guests pass O_NOFOLLOW through: the open still works.
  const uint64_t again = e.Open(entry.nodeid, O_RDONLY | O_NOFOLLOW);
  fuse_release_in rel2{again, 0, 0, 0};
  CHECK(e.Call(FUSE_RELEASE, entry.nodeid, FuseBody().Add(rel2)).error() == 0);

  // O_EXCL on an existing name.
  fuse_create_in excl{O_RDWR | O_CREAT | O_EXCL, S_IFREG | 0600, 0, 0};
  CHECK(e.Call(FUSE_CREATE, FUSE_ROOT_ID, FuseBody().Add(excl).Name("new.bin")).error() == -EEXIST);
}

TEST_CASE("directories: mkdir, readdir, readdirplus, rename, rmdir") {
  Env e;
  fuse_mkdir_in m{0755, 0};
  auto r = e.Call(FUSE_MKDIR, FUSE_ROOT_ID, FuseBody().Add(m).Name("d"));
  REQUIRE(r.error() == 0);
  const uint64_t d = r.BodyAs<fuse_entry_out>()->nodeid;
  CHECK(fs::is_directory(e.dir / "d"));
  std::set<std::string> names;
  for (int i = 0; i < 300; ++i) {
    std::string n = "file-" + std::to_string(i);
    WriteFile(e.dir / ("d/" + n), "x");
    names.insert(n);
  }
  CHECK(e.Call(FUSE_MKDIR, FUSE_ROOT_ID, FuseBody().Add(m).Name("d")).error() == -EEXIST);

  for (bool plus : {false, true}) {
    fuse_open_in o{O_RDONLY, 0};
    auto od = e.Call(FUSE_OPENDIR, d, FuseBody().Add(o));
    REQUIRE(od.error() == 0);
    const uint64_t fh = od.BodyAs<fuse_open_out>()->fh;
    std::set<std::string> seen;
    uint64_t offset = 0;
    const size_t before = e.backend->inode_count();
    size_t looked_up = 0;
    for (int rounds = 0; rounds < 1000; ++rounds) {
      fuse_read_in rd{};
      rd.fh = fh;
      rd.offset = offset;
      rd.size = 4096;
      auto dr = e.Call(plus ? FUSE_READDIRPLUS : FUSE_READDIR, d, FuseBody().Add(rd), 16 + 4096);
      REQUIRE(dr.error() == 0);
      if (dr.body.empty()) break;
      size_t pos = 0;
      while (pos < dr.body.size()) {
        const fuse_dirent* de;
        if (plus) {
          auto* dp = reinterpret_cast<const fuse_direntplus*>(dr.body.data() + pos);
          de = &dp->dirent;
          if (dp->entry_out.nodeid != 0) ++looked_up;
          pos += FUSE_DIRENTPLUS_SIZE(dp);
        } else {
          de = reinterpret_cast<const fuse_dirent*>(dr.body.data() + pos);
          pos += FUSE_DIRENT_SIZE(de);
        }
        seen.insert(std::string(de->name, de->namelen));
        offset = de->off;
      }
    }
    CHECK(seen.count(".") == 1);
    CHECK(seen.count("..") == 1);
    seen.erase(".");
    seen.erase("..");
    CHECK(seen == names);
    if (plus) {
      CHECK(looked_up == 300);
      CHECK(e.backend->inode_count() == before + 300);
    }
    fuse_release_in rel{fh, 0, 0, 0};
    CHECK(e.Call(FUSE_RELEASEDIR, d, FuseBody().Add(rel)).error() == 0);
  }

  CHECK(e.Call(FUSE_RMDIR, FUSE_ROOT_ID, FuseBody().Name("d")).error() == -ENOTEMPTY);
  fuse_rename_in rn{FUSE_ROOT_ID};
  CHECK(e.Call(FUSE_RENAME, d, FuseBody().Add(rn).Name("file-7").Name("moved")).error() == 0);
  CHECK(fs::exists(e.dir / "moved"));
  fuse_rename2_in rn2{FUSE_ROOT_ID, RENAME_NOREPLACE, 0};
  WriteFile(e.dir / "other", "y");
  CHECK(
      e.Call(FUSE_RENAME2, FUSE_ROOT_ID, FuseBody().Add(rn2).Name("moved").Name("other")).error() ==
      -EEXIST);
  fuse_rename2_in ex{FUSE_ROOT_ID, RENAME_EXCHANGE, 0};
  CHECK(
      e.Call(FUSE_RENAME2, FUSE_ROOT_ID, FuseBody().Add(ex).Name("moved").Name("other")).error() ==
      0);
  CHECK(ReadFile(e.dir / "moved") == "y");
  CHECK(e.Call(FUSE_UNLINK, FUSE_ROOT_ID, FuseBody().Name("moved")).error() == 0);
  CHECK(e.Call(FUSE_UNLINK, FUSE_ROOT_ID, FuseBody().Name("moved")).error() == -ENOENT);
  CHECK(e.Call(FUSE_UNLINK, FUSE_ROOT_ID, FuseBody().Name("d")).error() == -EISDIR);
}

// READDIR keeps what it read from the host between calls (as a DIR*
// stream): going on where the last call stopped, going back to 0, or to any
// earlier offset must give exactly what a fresh seek there gives.
TEST_CASE("readdir: one handle, continued, rewound and re-read at an earlier offset") {
  Env e;
  fuse_mkdir_in m{0755, 0};
  auto r = e.Call(FUSE_MKDIR, FUSE_ROOT_ID, FuseBody().Add(m).Name("d"));
  REQUIRE(r.error() == 0);
  const uint64_t d = r.BodyAs<fuse_entry_out>()->nodeid;
  std::set<std::string> names = {".", ".."};
  for (int i = 0; i < 1000; ++i) {
    std::string n = "entry-with-a-longer-name-" + std::to_string(i);
    WriteFile(e.dir / ("d/" + n), "");
    names.insert(n);
  }
  fuse_open_in o{O_RDONLY, 0};
  auto od = e.Call(FUSE_OPENDIR, d, FuseBody().Add(o));
  REQUIRE(od.error() == 0);
  const uint64_t fh = od.BodyAs<fuse_open_out>()->fh;
  // One page of entries at `offset`: (name, next offset) pairs.
  auto page = [&](uint64_t offset, uint32_t size) {
    fuse_read_in rd{};
    rd.fh = fh;
    rd.offset = offset;
    rd.size = size;
    auto dr = e.Call(FUSE_READDIR, d, FuseBody().Add(rd), 16 + size);
    REQUIRE(dr.error() == 0);
    std::vector<std::pair<std::string, uint64_t>> out;
    for (size_t pos = 0; pos < dr.body.size();) {
      auto* de = reinterpret_cast<const fuse_dirent*>(dr.body.data() + pos);
      out.emplace_back(std::string(de->name, de->namelen), de->off);
      pos += FUSE_DIRENT_SIZE(de);
    }
    return out;
  };
  // The whole listing in small pages, remembering where each page began.
  auto list_all = [&](uint32_t size, std::vector<uint64_t>* starts) {
    std::multiset<std::string> seen;
    uint64_t offset = 0;
    for (int rounds = 0; rounds < 5000; ++rounds) {
      if (starts) starts->push_back(offset);
      auto p = page(offset, size);
      if (p.empty()) break;
      for (auto& [n, off] : p) {
        seen.insert(n);
        offset = off;
      }
    }
    return seen;
  };
  std::vector<uint64_t> starts;
  auto first = list_all(512, &starts);
  CHECK(std::set<std::string>(first.begin(), first.end()) == names);
  CHECK(first.size() == names.size());  // Each entry once.
  REQUIRE(starts.size() > 20);
  // Rewound to 0 on the same handle: everything again, once.
  auto second = list_all(4096, nullptr);
  CHECK(second.size() == names.size());
  CHECK(std::set<std::string>(second.begin(), second.end()) == names);
  // Pages read again out of order give what they gave the first time.
  const uint64_t a = starts[7], b = starts[3];
  auto pa = page(a, 512);
  auto pb = page(b, 512);
  auto pa2 = page(a, 512);
  CHECK(!pa.empty());
  CHECK(pa == pa2);
  CHECK(pb != pa);
  // Continued from the end of pb: the page that follows it.
  auto next = page(pb.back().second, 512);
  REQUIRE(!next.empty());
  CHECK(next == page(pb.back().second, 512));
  CHECK(std::find_if(pb.begin(), pb.end(), [&](auto& x) { return x.first == next[0].first; }) ==
        pb.end());
  fuse_release_in rel{fh, 0, 0, 0};
  CHECK(e.Call(FUSE_RELEASEDIR, d, FuseBody().Add(rel)).error() == 0);
}

TEST_CASE("symlinks, readlink, hard links, mknod, statfs, setattr") {
  Env e;
  fuse_mkdir_in m{0755, 0};
  REQUIRE(e.Call(FUSE_MKDIR, FUSE_ROOT_ID, FuseBody().Add(m).Name("sub")).error() == 0);
  auto sl = e.Call(FUSE_SYMLINK, FUSE_ROOT_ID, FuseBody().Name("ln").Name("sub/target"));
  REQUIRE(sl.error() == 0);
  const uint64_t ln = sl.BodyAs<fuse_entry_out>()->nodeid;
  CHECK(fs::is_symlink(e.dir / "ln"));
  auto rl = e.Call(FUSE_READLINK, ln);
  REQUIRE(rl.error() == 0);
  CHECK(std::string(rl.body.begin(), rl.body.end()) == "sub/target");

  WriteFile(e.dir / "f", "data");
  const uint64_t f = e.Lookup(FUSE_ROOT_ID, "f").nodeid;
  fuse_link_in li{f};
  auto lk = e.Call(FUSE_LINK, FUSE_ROOT_ID, FuseBody().Add(li).Name("f2"));
  REQUIRE(lk.error() == 0);
  CHECK(lk.BodyAs<fuse_entry_out>()->nodeid == f);
  CHECK(lk.BodyAs<fuse_entry_out>()->attr.nlink == 2);

  fuse_mknod_in mk{S_IFIFO | 0644, 0, 0, 0};
  auto fifo = e.Call(FUSE_MKNOD, FUSE_ROOT_ID, FuseBody().Add(mk).Name("pipe"));
  REQUIRE(fifo.error() == 0);
  CHECK(S_ISFIFO(fifo.BodyAs<fuse_entry_out>()->attr.mode));

  auto sf = e.Call(FUSE_STATFS, FUSE_ROOT_ID);
  REQUIRE(sf.error() == 0);
  CHECK(sf.BodyAs<fuse_statfs_out>()->st.bsize > 0);

  fuse_setattr_in sa{};
  sa.valid = FATTR_MODE | FATTR_ATIME | FATTR_MTIME;
  sa.mode = S_IFREG | 0600;
  sa.atime = 1000;
  sa.mtime = 2000;
  sa.mtimensec = 5;
  auto r = e.Call(FUSE_SETATTR, f, FuseBody().Add(sa));
  REQUIRE(r.error() == 0);
  struct stat st;
  REQUIRE(stat((e.dir / "f").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  CHECK(st.st_atim.tv_sec == 1000);
  CHECK(st.st_mtim.tv_sec == 2000);
  CHECK(st.st_mtim.tv_nsec == 5);
  sa.valid = FATTR_MTIME | FATTR_MTIME_NOW;
  REQUIRE(e.Call(FUSE_SETATTR, f, FuseBody().Add(sa)).error() == 0);
  REQUIRE(stat((e.dir / "f").c_str(), &st) == 0);
  CHECK(st.st_mtim.tv_sec > 2000);
}

TEST_CASE("confinement: nothing outside the shared directory") {
  Env e;
  // ".." of the root is the root.
  auto up = e.Lookup(FUSE_ROOT_ID, "..");
  struct stat root;
  REQUIRE(stat(e.dir.path.c_str(), &root) == 0);
  CHECK(up.attr.ino == root.st_ino);
  // Symlinks pointing out are nodes of their own, never followed.
  REQUIRE(symlink("/etc/passwd", (e.dir / "abs").c_str()) == 0);
  REQUIRE(symlink("../../../../etc", (e.dir / "rel").c_str()) == 0);
  auto abs = e.Lookup(FUSE_ROOT_ID, "abs");
  CHECK(S_ISLNK(abs.attr.mode));
  fuse_open_in o{O_RDONLY, 0};
  CHECK(e.Call(FUSE_OPEN, abs.nodeid, FuseBody().Add(o)).error() == -ELOOP);
  auto rel = e.Lookup(FUSE_ROOT_ID, "rel");
  CHECK(e.LookupError(rel.nodeid, "passwd") == -ENOTDIR);
  // A name with '/' never gets here (the session refuses it).
  CHECK(e.LookupError(FUSE_ROOT_ID, "rel/passwd") == -EINVAL);
  // Special files are not opened on the host.
  REQUIRE(mkfifo((e.dir / "fifo").c_str(), 0666) == 0);
  auto fifo = e.Lookup(FUSE_ROOT_ID, "fifo");
  CHECK(e.Call(FUSE_OPEN, fifo.nodeid, FuseBody().Add(o)).error() == -EPERM);
  // Forged node ids and handles.
  CHECK(e.LookupError(987654, "x") == -EBADF);
  CHECK(e.Call(FUSE_GETATTR, 0xdeadbeef, FuseBody().Add(fuse_getattr_in{})).error() == -EBADF);
  fuse_read_in rd{};
  rd.fh = 4242;
  rd.size = 16;
  CHECK(e.Call(FUSE_READ, FUSE_ROOT_ID, FuseBody().Add(rd)).error() == -EBADF);
  // A hard link of a symlink that points outside links the symlink, not
  // its target.
  fuse_link_in li{abs.nodeid};
  REQUIRE(e.Call(FUSE_LINK, FUSE_ROOT_ID, FuseBody().Add(li).Name("abs2")).error() == 0);
  CHECK(fs::is_symlink(e.dir / "abs2"));
}

TEST_CASE("read-only mode refuses every change") {
  PassthroughOptions o;
  o.readonly = true;
  Env e(o);
  WriteFile(e.dir / "f", "x");
  const uint64_t f = e.Lookup(FUSE_ROOT_ID, "f").nodeid;
  fuse_mkdir_in m{0755, 0};
  CHECK(e.Call(FUSE_MKDIR, FUSE_ROOT_ID, FuseBody().Add(m).Name("d")).error() == -EROFS);
  CHECK(e.Call(FUSE_UNLINK, FUSE_ROOT_ID, FuseBody().Name("f")).error() == -EROFS);
  fuse_open_in w{O_WRONLY, 0};
  CHECK(e.Call(FUSE_OPEN, f, FuseBody().Add(w)).error() == -EROFS);
  fuse_open_in r{O_RDONLY, 0};
  CHECK(e.Call(FUSE_OPEN, f, FuseBody().Add(r)).error() == 0);
  fuse_setattr_in sa{};
  sa.valid = FATTR_MODE;
  sa.mode = 0777;
  CHECK(e.Call(FUSE_SETATTR, f, FuseBody().Add(sa)).error() == -EROFS);
}

TEST_CASE("a non-root caller gets the host's permission checks") {
  if (geteuid() != 0) {
    WARN("not root: fs ids cannot be switched; skipped");
    return;
  }
  Env e;
  WriteFile(e.dir / "secret", "root only");
  REQUIRE(chmod((e.dir / "secret").c_str(), 0600) == 0);
  REQUIRE(chmod(e.dir.path.c_str(), 0755) == 0);
  const uint64_t f = e.Lookup(FUSE_ROOT_ID, "secret").nodeid;
  fuse_open_in o{O_RDONLY, 0};
  CHECK(e.Call(FUSE_OPEN, f, FuseBody().Add(o), 4096, 1000, 1000).error() == -EACCES);
  CHECK(e.Call(FUSE_OPEN, f, FuseBody().Add(o)).error() == 0);  // Root still can.
  fuse_mkdir_in m{0755, 0};
  CHECK(e.Call(FUSE_MKDIR, FUSE_ROOT_ID, FuseBody().Add(m).Name("x"), 4096, 1000, 1000).error() ==
        -EACCES);
  fuse_access_in a{R_OK, 0};
  CHECK(e.Call(FUSE_ACCESS, f, FuseBody().Add(a), 4096, 1000, 1000).error() == -EACCES);
  CHECK(e.Call(FUSE_ACCESS, f, FuseBody().Add(a)).error() == 0);
  // A file created by a user belongs to that user.
  REQUIRE(chmod(e.dir.path.c_str(), 0777) == 0);
  fuse_create_in c{O_RDWR | O_CREAT, S_IFREG | 0644, 0, 0};
  auto cr = e.Call(FUSE_CREATE, FUSE_ROOT_ID, FuseBody().Add(c).Name("mine"), 4096, 1234, 4321);
  REQUIRE(cr.error() == 0);
  struct stat st;
  REQUIRE(stat((e.dir / "mine").c_str(), &st) == 0);
  CHECK(st.st_uid == 1234);
  CHECK(st.st_gid == 4321);
}

TEST_CASE("no fd leak over a session") {
  const int before = CountFds();
  {
    Env e;
    WriteFile(e.dir / "f", "x");
    const uint64_t f = e.Lookup(FUSE_ROOT_ID, "f").nodeid;
    e.Open(f, O_RDONLY);
    e.Open(f, O_RDONLY);
    CHECK(e.backend->handle_count() == 2);
    // DESTROY forgets every node and handle.
    CHECK(e.Call(FUSE_DESTROY, 0).error() == 0);
    CHECK(e.backend->handle_count() == 0);
    CHECK(e.backend->inode_count() == 1);
  }
  CHECK(CountFds() == before);
}

}  // namespace
}  // namespace virtiofs

namespace virtiofs {
namespace {

TEST_CASE("security labels (FUSE_SECURITY_CTX) are set on new nodes, or the creation fails") {
  PassthroughOptions o;
  o.security_label = true;
  TempDir dir;
  o.root = dir.path;
  auto b = PassthroughBackend::Create(o);
  REQUIRE(b.ok());
  FuseHarness h(b->get());
  auto init = h.Init(FUSE_SECURITY_CTX);
  auto out = init.BodyPrefixAs<fuse_init_out>(24);
  REQUIRE(out.ok());
  REQUIRE((uint64_t{out->flags2} << 32 & FUSE_SECURITY_CTX) != 0);
  // user.* stands in for security.* (no LSM on the test host).
  auto ext = testing::BuildSecurityContext("user.label", "system_u:object_r:x_t");
  fuse_mkdir_in m{0755, 0};
  auto r = h.Call(testing::BuildRequestWithExtensions(FUSE_MKDIR, h.NextUnique(), FUSE_ROOT_ID,
                                                      FuseBody().Add(m).Name("d").bytes(), ext));
  REQUIRE(r.error() == 0);
  char value[64] = {};
  ssize_t n = getxattr((dir / "d").c_str(), "user.label", value, sizeof value);
  CHECK(std::string(value, n > 0 ? static_cast<size_t>(n) : 0) == "system_u:object_r:x_t");

  fuse_create_in c{O_RDWR | O_CREAT, S_IFREG | 0644, 0, 0};
  r = h.Call(testing::BuildRequestWithExtensions(FUSE_CREATE, h.NextUnique(), FUSE_ROOT_ID,
                                                 FuseBody().Add(c).Name("f").bytes(), ext));
  REQUIRE(r.error() == 0);
  n = getxattr((dir / "f").c_str(), "user.label", value, sizeof value);
  CHECK(n == 21);

  // O_TMPFILE: labelled too (seen through the new file's handle).
  fuse_create_in t{O_RDWR | O_TMPFILE, S_IFREG | 0644, 0, 0};
  r = h.Call(testing::BuildRequestWithExtensions(FUSE_TMPFILE, h.NextUnique(), FUSE_ROOT_ID,
                                                 FuseBody().Add(t).Name("/").bytes(), ext));
  if (r.error() == -EOPNOTSUPP) {
    WARN("no O_TMPFILE on " << dir.path << "; its label is not checked");
  } else {
    REQUIRE(r.error() == 0);
    fuse_entry_out te;
    std::memcpy(&te, r.body.data(), sizeof te);
    fuse_getxattr_in gx{};
    gx.size = sizeof value;
    auto got = h.Call(BuildRequest(FUSE_GETXATTR, h.NextUnique(), te.nodeid,
                                   FuseBody().Add(gx).Name("user.label").bytes()));
    REQUIRE(got.error() == 0);
    CHECK(std::string(got.body.begin(), got.body.end()) == "system_u:object_r:x_t");
  }

  // A label the host refuses: nothing is left behind.
  auto bad = testing::BuildSecurityContext("bogus.label", "x");
  r = h.Call(testing::BuildRequestWithExtensions(FUSE_MKDIR, h.NextUnique(), FUSE_ROOT_ID,
                                                 FuseBody().Add(m).Name("e").bytes(), bad));
  CHECK(r.error() == -EOPNOTSUPP);
  CHECK_FALSE(fs::exists(dir / "e"));
  const size_t handles = b->get()->handle_count(), inodes = b->get()->inode_count();
  r = h.Call(testing::BuildRequestWithExtensions(FUSE_TMPFILE, h.NextUnique(), FUSE_ROOT_ID,
                                                 FuseBody().Add(t).Name("/").bytes(), bad));
  CHECK((r.error() == -EOPNOTSUPP));
  CHECK(b->get()->handle_count() == handles);  // No unlabelled tmpfile left open.
  CHECK(b->get()->inode_count() == inodes);
}

}  // namespace
}  // namespace virtiofs
