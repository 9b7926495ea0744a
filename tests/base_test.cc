#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <mutex>
#include <string>
#include <vector>

#include "virtiofs/fd.h"
#include "virtiofs/log.h"
#include "virtiofs/mmap.h"
#include "virtiofs/result.h"
#include "virtiofs/status_macros.h"

namespace virtiofs {
namespace {

bool FdIsOpen(int fd) { return fcntl(fd, F_GETFD) != -1; }

TEST_CASE("Result holds a value or an errno") {
  Result<int> ok = 42;
  CHECK(ok.ok());
  CHECK(ok.error() == 0);
  CHECK(*ok == 42);

  Result<int> err = Errno{ENOENT};
  CHECK_FALSE(err.ok());
  CHECK(err.error() == ENOENT);

  // A non-positive errno must never read as success.
  Result<int> bad = Errno{0};
  CHECK_FALSE(bad.ok());
  CHECK(bad.error() == EIO);
  Result<void> bad_void = Errno{-3};
  CHECK(bad_void.error() == EIO);

  Result<std::string> s = std::string("abc");
  CHECK(s->size() == 3);
  Result<void> v = Ok();
  CHECK(v.ok());
}

Result<int> Half(int x) {
  if (x % 2 != 0) return Errno{EINVAL};
  return x / 2;
}

Result<int> Quarter(int x) {
  VIRTIOFS_ASSIGN_OR_RETURN(int h, Half(x));
  VIRTIOFS_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

absl::Status QuarterAsStatus(int x, int* out) {
  VIRTIOFS_ASSIGN_OR_RETURN(*out, Quarter(x));
  return absl::OkStatus();
}

absl::StatusOr<int> Parse(bool fail) {
  if (fail) return absl::InvalidArgumentError("nope");
  return 7;
}

absl::StatusOr<int> AddOne(bool fail) {
  VIRTIOFS_ASSIGN_OR_RETURN(int v, Parse(fail));
  return v + 1;
}

absl::Status Check(bool fail) {
  VIRTIOFS_RETURN_IF_ERROR(Parse(fail));
  VIRTIOFS_RETURN_IF_ERROR(absl::OkStatus());
  return absl::OkStatus();
}

Result<void> CheckErrno(int x) {
  VIRTIOFS_RETURN_IF_ERROR(Half(x));
  return Ok();
}

TEST_CASE("status macros propagate Status and errno") {
  CHECK(*Quarter(8) == 2);
  CHECK(Quarter(6).error() == EINVAL);  // 6/2 = 3 is odd.

  int out = 0;
  CHECK(QuarterAsStatus(12, &out).ok());
  CHECK(out == 3);
  absl::Status s = QuarterAsStatus(5, &out);
  CHECK(absl::IsInvalidArgument(s));  // EINVAL maps to InvalidArgument.

  CHECK(*AddOne(false) == 8);
  CHECK(AddOne(true).status().message() == "nope");
  CHECK(Check(false).ok());
  CHECK(absl::IsInvalidArgument(Check(true)));
  CHECK(CheckErrno(4).ok());
  CHECK(CheckErrno(3).error() == EINVAL);
}

TEST_CASE("UniqueFd closes what it owns, exactly once") {
  int fds[2];
  REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
  {
    UniqueFd a(fds[0]);
    UniqueFd b(fds[1]);
    CHECK(a.valid());
    UniqueFd moved = std::move(a);
    CHECK_FALSE(a.valid());  // NOLINT: checking the moved-from state on purpose.
    CHECK(moved.get() == fds[0]);
    auto dup = moved.Dup();
    REQUIRE(dup.ok());
    CHECK(dup->get() != fds[0]);
    CHECK(FdIsOpen(dup->get()));
    int raw = b.release();
    CHECK(raw == fds[1]);
    b.reset(raw);
  }
  CHECK_FALSE(FdIsOpen(fds[0]));
  CHECK_FALSE(FdIsOpen(fds[1]));
  CHECK(UniqueFd(-5).get() == -1);
  CHECK(UniqueFd().Dup().error() == EBADF);
}

TEST_CASE("MmapRegion maps and unmaps") {
  auto r = MmapRegion::MapAnonymous(8192);
  REQUIRE(r.ok());
  CHECK(r->size() == 8192);
  r->data()[8191] = 1;
  uint8_t* addr = r->data();
  {
    MmapRegion moved = *std::move(r);
    CHECK(moved.data() == addr);
  }
  // Unmapped: mincore reports ENOMEM for an unmapped page.
  unsigned char vec;
  CHECK(mincore(addr, 4096, &vec) == -1);
  CHECK(errno == ENOMEM);

  CHECK(MmapRegion::MapAnonymous(0).error() == EINVAL);
  CHECK(MmapRegion::MapFile(-1, 0, 4096, PROT_READ).error() == EBADF);

  int fd = memfd_create("t", MFD_CLOEXEC);
  REQUIRE(fd >= 0);
  UniqueFd owner(fd);
  REQUIRE(ftruncate(fd, 4096) == 0);
  auto f = MmapRegion::MapFile(fd, 0, 4096, PROT_READ | PROT_WRITE);
  REQUIRE(f.ok());
  f->data()[0] = 'x';
  char c = 0;
  REQUIRE(pread(fd, &c, 1, 0) == 1);
  CHECK(c == 'x');
}

TEST_CASE("logging honours the level and the sink") {
  std::mutex mu;
  std::vector<std::string> lines;
  SetLogSink([&](LogLevel, std::string_view m) {
    std::lock_guard lock(mu);
    lines.emplace_back(m);
  });
  SetLogLevel(LogLevel::kWarning);
  VIRTIOFS_LOG(kError, "e {}", 1);
  VIRTIOFS_LOG(kWarning, "w {}", 2);
  VIRTIOFS_LOG(kInfo, "i {}", 3);
  VIRTIOFS_LOG(kDebug, "d {}", 4);
  SetLogSink(nullptr);
  SetLogLevel(LogLevel::kInfo);
  REQUIRE(lines.size() == 2);
  CHECK(lines[0] == "e 1");
  CHECK(lines[1] == "w 2");

  CHECK(ParseLogLevel("debug") == LogLevel::kDebug);
  CHECK(ParseLogLevel("warning") == LogLevel::kWarning);
  CHECK_FALSE(ParseLogLevel("loud").has_value());
  CHECK(LogLevelName(LogLevel::kTrace) == "trace");
}

}  // namespace
}  // namespace virtiofs
