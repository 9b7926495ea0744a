// Host fd exhaustion (EMFILE) through the passthrough backend. A test binary
// of its own: it lowers RLIMIT_NOFILE and fills the fd table, which the rest
// of the suite must not feel. LOOKUP, OPEN and CREATE fail with EMFILE (or
// ENFILE), nothing crashes, CREATE leaves no file behind, requests that need
// no new fd keep working, and everything works again once fds are free.
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <vector>

#include "tests/support/fault_env.h"
#include "tests/support/host_files.h"

namespace virtiofs {
namespace {

using testing::CountFds;
using testing::FaultEnv;
using testing::FuseBody;
using testing::TempDir;
using testing::WriteFile;
namespace fs = std::filesystem;

bool FdExhausted(int err) { return err == -EMFILE || err == -ENFILE; }

TEST_CASE("EMFILE: LOOKUP, OPEN and CREATE fail cleanly; all works again once fds are free") {
  TempDir dir("virtiofs-emfile");
  WriteFile(dir / "known", "known");
  WriteFile(dir / "other", "other");
  const int fds_before = CountFds();
  rlimit saved;
  REQUIRE(getrlimit(RLIMIT_NOFILE, &saved) == 0);
  {
    FaultEnv e(dir.path);
    const uint64_t known = e.Lookup(FUSE_ROOT_ID, "known");
    REQUIRE(known != 0);

    // A low limit, then every remaining fd taken.
    rlimit low = saved;
    low.rlim_cur = static_cast<rlim_t>(CountFds() + 32);
    REQUIRE(setrlimit(RLIMIT_NOFILE, &low) == 0);
    std::vector<int> hog;
    for (int fd; (fd = dup(0)) >= 0;) hog.push_back(fd);
    REQUIRE(errno == EMFILE);
    REQUIRE(!hog.empty());

    int err = 0;
    CHECK(e.Lookup(FUSE_ROOT_ID, "other", &err) == 0);
    CHECK(FdExhausted(err));
    CHECK(e.Open(known, O_RDONLY, &err) == 0);
    CHECK(FdExhausted(err));
    CHECK(e.Create(FUSE_ROOT_ID, "new", &err).first == 0);
    CHECK(FdExhausted(err));
    CHECK_FALSE(fs::exists(dir / "new"));  // Failed before anything was created.
    // Requests that need no new fd are served.
    CHECK(e.Call(FUSE_GETATTR, known, FuseBody().Add(fuse_getattr_in{})).error() == 0);
    CHECK(e.Call(FUSE_GETATTR, FUSE_ROOT_ID, FuseBody().Add(fuse_getattr_in{})).error() == 0);

    for (int fd : hog) close(fd);
    REQUIRE(setrlimit(RLIMIT_NOFILE, &saved) == 0);

    const uint64_t other = e.Lookup(FUSE_ROOT_ID, "other", &err);
    CHECK(err == 0);
    const uint64_t fh = e.Open(known, O_RDONLY, &err);
    CHECK(err == 0);
    auto r = e.Read(known, fh, 0, 100);
    REQUIRE(r.error() == 0);
    CHECK(std::string(r.body.begin(), r.body.end()) == "known");
    auto [node, nfh] = e.Create(FUSE_ROOT_ID, "new", &err);
    CHECK(err == 0);
    CHECK(fs::exists(dir / "new"));
    if (fh != 0) e.Release(known, fh);
    if (nfh != 0) e.Release(node, nfh);
    if (node != 0) e.Forget(node);
    if (other != 0) e.Forget(other);
    e.Forget(known);
  }
  CHECK(CountFds() == fds_before);
}

}  // namespace
}  // namespace virtiofs
