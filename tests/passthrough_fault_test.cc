// Host faults through the passthrough backend (FUSE requests through a
// FuseSession): a full file system (ENOSPC, a small tmpfs) and one that
// fails on purpose (EIO, a FUSE file system of our own, tests/support/
// fail_fs.h). Each case asserts the errno the guest gets, that the backend
// still serves afterwards, that fsync'd data is intact and that no fd leaks.
// A case that cannot mount (no privilege, no /dev/fuse) says why and passes
// without running (Catch2 v2 has no skip); when neither a tmpfs nor a FUSE
// file system can be mounted, the whole binary exits 77 (skipped).
#define CATCH_CONFIG_RUNNER
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

#include "tests/support/device_rig.h"
#include "tests/support/driver_queue.h"
#include "tests/support/fail_fs.h"
#include "tests/support/fault_env.h"
#include "tests/support/frontend.h"
#include "tests/support/guest_ram.h"
#include "tests/support/host_files.h"
#include "virtiofs/server.h"
#include "virtiofs/virtio_fs_device.h"

namespace virtiofs {
namespace {

using testing::BuildInit;
using testing::BuildLookup;
using testing::BuildRequest;
using testing::CountFds;
using testing::DeviceRig;
using testing::FaultEnv;
using testing::FuseBody;
using testing::ReadFile;
using testing::TempDir;
namespace fs = std::filesystem;

std::string Pattern(size_t n, int seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 7 + seed) % 251);
  return s;
}

// A tmpfs of `size` mounted on `dir` for the scope.
struct SmallTmpfs {
  SmallTmpfs(const std::string& dir, const char* size) : dir(dir) {
    const std::string opts = std::string("size=") + size + ",mode=0755";
    mounted = mount("tmpfs", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, opts.c_str()) == 0;
    if (!mounted) reason = std::strerror(errno);
  }
  ~SmallTmpfs() {
    if (mounted) umount2(dir.c_str(), MNT_DETACH);
  }
  std::string dir;
  bool mounted = false;
  std::string reason;
};

TEST_CASE("ENOSPC: WRITE and FALLOCATE beyond a full tmpfs; fsync'd data intact") {
  TempDir dir("virtiofs-enospc");
  SmallTmpfs tmpfs(dir.path, "256k");
  if (!tmpfs.mounted) {
    WARN("skipped: mount tmpfs refused: " << tmpfs.reason);
    return;
  }
  const int fds_before = CountFds();
  {
    FaultEnv e(dir.path);
    // 64 KiB written and fsync'd before the file system fills up.
    const std::string kept = Pattern(65536, 1);
    auto [kept_node, kept_fh] = e.Create(FUSE_ROOT_ID, "kept");
    REQUIRE(kept_node != 0);
    auto w = e.Write(kept_node, kept_fh, 0, kept);
    REQUIRE(w.error() == 0);
    REQUIRE(w.BodyAs<fuse_write_out>()->size == kept.size());
    REQUIRE(e.Fsync(kept_node, kept_fh) == 0);

    // Fill the rest: short writes are fine, then ENOSPC.
    auto [fill_node, fill_fh] = e.Create(FUSE_ROOT_ID, "filler");
    REQUIRE(fill_node != 0);
    const std::string chunk = Pattern(65536, 2);
    uint64_t offset = 0;
    int error = 0;
    for (int i = 0; i < 16 && error == 0; ++i) {
      auto r = e.Write(fill_node, fill_fh, offset, chunk);
      error = r.error();
      if (error == 0) offset += r.BodyAs<fuse_write_out>()->size;
    }
    CHECK(error == -ENOSPC);
    CHECK(offset < 256 * 1024);

    // FALLOCATE of 1 MiB on a full file system.
    fuse_fallocate_in fa{kept_fh, 65536, 1 << 20, 0, 0};
    CHECK(e.Call(FUSE_FALLOCATE, kept_node, FuseBody().Add(fa)).error() == -ENOSPC);
    // And a WRITE that extends the kept file.
    CHECK(e.Write(kept_node, kept_fh, kept.size(), chunk).error() == -ENOSPC);

    // What was acknowledged and fsync'd is intact, through the guest's view
    // and on the host.
    auto r = e.Read(kept_node, kept_fh, 0, 65536 + 4096);
    REQUIRE(r.error() == 0);
    CHECK(std::string(r.body.begin(), r.body.end()) == kept);
    CHECK(ReadFile(dir / "kept") == kept);

    // Still serving: metadata, STATFS, and writes once space is freed.
    CHECK(e.Call(FUSE_GETATTR, FUSE_ROOT_ID, FuseBody().Add(fuse_getattr_in{})).error() == 0);
    CHECK(e.Call(FUSE_STATFS, FUSE_ROOT_ID).error() == 0);
    e.Release(fill_node, fill_fh);
    REQUIRE(e.Call(FUSE_UNLINK, FUSE_ROOT_ID, FuseBody().Name("filler")).error() == 0);
    e.Forget(fill_node);
    auto more = e.Write(kept_node, kept_fh, kept.size(), chunk);
    REQUIRE(more.error() == 0);
    CHECK(more.BodyAs<fuse_write_out>()->size == chunk.size());
    fuse_fallocate_in fa2{kept_fh, 0, 4 * 65536, 0, 0};
    CHECK(e.Call(FUSE_FALLOCATE, kept_node, FuseBody().Add(fa2)).error() == 0);
    CHECK(e.Fsync(kept_node, kept_fh) == 0);
    CHECK(ReadFile(dir / "kept").substr(0, kept.size() + chunk.size()) == kept + chunk);
    e.Release(kept_node, kept_fh);
    e.Forget(kept_node);
  }
  CHECK(CountFds() == fds_before);
}

TEST_CASE("EIO: a host file system that fails READ, WRITE and FSYNC of one file") {
  TempDir dir("virtiofs-eio");
  fs::create_directory(dir / "fail");
  auto failfs = testing::FailFs::Mount(dir / "fail");
  if (!failfs.ok()) {
    WARN("skipped: " << failfs.status().message());
    return;
  }
  const int fds_before = CountFds();
  {
    FaultEnv e(dir.path);
    const uint64_t mnt = e.Lookup(FUSE_ROOT_ID, "fail");
    REQUIRE(mnt != 0);
    const uint64_t bad = e.Lookup(mnt, "bad");
    const uint64_t good = e.Lookup(mnt, "good");
    REQUIRE(bad != 0);
    REQUIRE(good != 0);
    const uint64_t bad_fh = e.Open(bad, O_RDWR);
    const uint64_t good_fh = e.Open(good, O_RDWR);
    REQUIRE(bad_fh != 0);
    REQUIRE(good_fh != 0);

    CHECK(e.Read(bad, bad_fh, 0, 4096).error() == -EIO);
    CHECK(e.Write(bad, bad_fh, 0, "data").error() == -EIO);
    CHECK(e.Fsync(bad, bad_fh) == -EIO);
    CHECK((*failfs)->failed() >= 3);

    // The other file of the same file system, and the rest of the share.
    auto r = e.Read(good, good_fh, 0, 4096);
    REQUIRE(r.error() == 0);
    CHECK(std::string(r.body.begin(), r.body.end()) == "good data\n");
    auto w = e.Write(good, good_fh, 0, "GOOD");
    REQUIRE(w.error() == 0);
    CHECK(w.BodyAs<fuse_write_out>()->size == 4);
    CHECK(e.Fsync(good, good_fh) == 0);
    CHECK((*failfs)->good() == "GOOD data\n");
    auto [node, fh] = e.Create(FUSE_ROOT_ID, "elsewhere");
    REQUIRE(node != 0);
    CHECK(e.Write(node, fh, 0, "fine").error() == 0);
    CHECK(e.Fsync(node, fh) == 0);
    CHECK(ReadFile(dir / "elsewhere") == "fine");
    // Again after the successes: the failures stay failures, nothing stuck.
    CHECK(e.Read(bad, bad_fh, 0, 4096).error() == -EIO);

    e.Release(bad, bad_fh);
    e.Release(good, good_fh);
    e.Release(node, fh);
    e.Forget(node);
    e.Forget(bad);
    e.Forget(good);
    e.Forget(mnt);
  }
  CHECK(CountFds() == fds_before);
}

TEST_CASE("EIO and ENOSPC through the device's queue worker, on both engines") {
  for (IoEngineKind kind : {IoEngineKind::kUring, IoEngineKind::kSync}) {
    DYNAMIC_SECTION(IoEngineName(kind)) {
      TempDir dir("virtiofs-faultdev");
      const std::string share = dir / "share";
      fs::create_directories(share + "/fail");
      fs::create_directories(share + "/full");
      auto failfs = testing::FailFs::Mount(share + "/fail");
      if (!failfs.ok()) {
        WARN("skipped: " << failfs.status().message());
        return;
      }
      SmallTmpfs tmpfs(share + "/full", "128k");
      if (!tmpfs.mounted) {
        WARN("skipped: mount tmpfs refused: " << tmpfs.reason);
        return;
      }
      const int fds_before = CountFds();
      {
        DeviceRig d(share, dir / "sock", kind);
        const uint64_t mnt = d.Lookup(FUSE_ROOT_ID, "fail");
        const uint64_t bad = d.Lookup(mnt, "bad");
        const uint64_t bad_fh = d.Open(bad);
        CHECK(d.Read(bad, bad_fh, 4096).error() == -EIO);
        CHECK(d.Write(bad, bad_fh, 0, "data").error() == -EIO);
        CHECK(d.Fsync(bad, bad_fh) == -EIO);
        const uint64_t good = d.Lookup(mnt, "good");
        const uint64_t good_fh = d.Open(good);
        auto r = d.Read(good, good_fh, 4096);
        REQUIRE(r.error() == 0);
        CHECK(std::string(r.body.begin(), r.body.end()) == "good data\n");

        const uint64_t full = d.Lookup(FUSE_ROOT_ID, "full");
        fuse_create_in c{O_RDWR | O_CREAT, S_IFREG | 0644, 0, 0};
        auto cr = d.Call(FUSE_CREATE, full, FuseBody().Add(c).Name("f"));
        REQUIRE(cr.error() == 0);
        fuse_entry_out e;
        fuse_open_out o;
        std::memcpy(&e, cr.body.data(), sizeof e);
        std::memcpy(&o, cr.body.data() + sizeof e, sizeof o);
        const std::string kept = Pattern(32768, 3);
        REQUIRE(d.Write(e.nodeid, o.fh, 0, kept).error() == 0);
        REQUIRE(d.Fsync(e.nodeid, o.fh) == 0);
        // 256 KiB in one WRITE on a 128 KiB file system: short, then ENOSPC.
        const std::string big = Pattern(256 << 10, 4);
        auto w = d.Write(e.nodeid, o.fh, kept.size(), big);
        if (w.error() == 0) {
          CHECK(w.BodyAs<fuse_write_out>()->size < big.size());
          w = d.Write(e.nodeid, o.fh, kept.size() + w.BodyAs<fuse_write_out>()->size, big);
        }
        CHECK(w.error() == -ENOSPC);
        CHECK(ReadFile(share + "/full/f").substr(0, kept.size()) == kept);
        // Still serving.
        auto again = d.Read(good, good_fh, 4096);
        CHECK(again.error() == 0);
        for (auto [node, fh] : {std::pair{bad, bad_fh}, {good, good_fh}, {e.nodeid, o.fh}}) {
          REQUIRE(
              d.Call(FUSE_RELEASE, node, FuseBody().Add(fuse_release_in{fh, 0, 0, 0})).error() ==
              0);
        }
      }
      CHECK(CountFds() == fds_before);
    }
  }
}

// Why a mount of this kind is refused here, or "" when it works.
std::string CannotMount(bool fuse) {
  TempDir dir("virtiofs-probe");
  if (fuse) {
    auto f = testing::FailFs::Mount(dir.path);
    return f.ok() ? "" : std::string(f.status().message());
  }
  SmallTmpfs t(dir.path, "64k");
  return t.mounted ? "" : "mount tmpfs: " + t.reason;
}

}  // namespace
}  // namespace virtiofs

int main(int argc, char** argv) {
  const std::string tmpfs = virtiofs::CannotMount(false);
  const std::string fuse = virtiofs::CannotMount(true);
  if (!tmpfs.empty() && !fuse.empty()) {
    std::fprintf(stderr, "skipped: %s; %s\n", tmpfs.c_str(), fuse.c_str());
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
