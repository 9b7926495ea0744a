// Both I/O engines: the same operations, the same results.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

#include "virtiofs/fd.h"
#include "virtiofs/io_engine.h"

namespace virtiofs {
namespace {

// Runs `engine` until `n` operations finished (the sync engine finishes
// inline).
void WaitFor(IoEngine& engine, size_t n, size_t* finished) {
  engine.Submit();
  while (*finished < n) {
    pollfd p{engine.completion_fd(), POLLIN, 0};
    REQUIRE(poll(&p, 1, 5000) == 1);
    engine.Reap();
  }
}

struct TempFile {
  TempFile() {
    char path[] = "/tmp/virtiofs-io-XXXXXX";
    fd.reset(mkstemp(path));
    REQUIRE(fd.valid());
    unlink(path);
  }
  UniqueFd fd;
};

std::unique_ptr<IoEngine> Make(IoEngineKind kind) {
  auto e = IoEngine::Create(kind);
  if (!e.ok() && kind == IoEngineKind::kUring) {
    WARN("io_uring unavailable here: " << e.status().message());
    return nullptr;
  }
  REQUIRE(e.ok());
  return *std::move(e);
}

TEST_CASE("write, read back, fsync and fallocate on both engines") {
  for (IoEngineKind kind : {IoEngineKind::kUring, IoEngineKind::kSync}) {
    DYNAMIC_SECTION(IoEngineName(kind)) {
      auto engine = Make(kind);
      if (!engine) return;
      CHECK(engine->kind() == kind);
      TempFile f;
      // Three buffers of odd sizes, like guest pages split by a chain.
      std::vector<uint8_t> a(1000), b(3000), c(5);
      std::iota(a.begin(), a.end(), 0);
      std::iota(b.begin(), b.end(), 7);
      std::iota(c.begin(), c.end(), 100);
      iovec out[] = {{a.data(), a.size()}, {b.data(), b.size()}, {c.data(), c.size()}};
      size_t finished = 0;
      int64_t wrote = -1, synced = -1, fallocated = -1;
      engine->Writev(f.fd.get(), out, 4096, [&](int64_t r) { wrote = r, ++finished; });
      engine->Fsync(f.fd.get(), true, [&](int64_t r) { synced = r, ++finished; });
      engine->Fallocate(f.fd.get(), 0, 0, 65536, [&](int64_t r) { fallocated = r, ++finished; });
      WaitFor(*engine, 3, &finished);
      CHECK(wrote == 4005);
      CHECK(synced == 0);
      CHECK(fallocated == 0);
      struct stat st;
      REQUIRE(fstat(f.fd.get(), &st) == 0);
      CHECK(st.st_size == 65536);

      std::vector<uint8_t> x(10), y(4000);
      iovec in[] = {{x.data(), x.size()}, {y.data(), y.size()}};
      int64_t got = -1;
      finished = 0;
      engine->Readv(f.fd.get(), in, 4096 + 995, [&](int64_t r) { got = r, ++finished; });
      WaitFor(*engine, 1, &finished);
      CHECK(got == 4010);
      CHECK(x[0] == a[995]);
      CHECK(x[5] == b[0]);
      CHECK(y[0] == b[5]);
      CHECK(engine->in_flight() == 0);

      // Reading past the end stops at it.
      std::vector<uint8_t> big(8192);
      iovec tail[] = {{big.data(), big.size()}};
      finished = 0;
      engine->Readv(f.fd.get(), tail, 65536 - 100, [&](int64_t r) { got = r, ++finished; });
      WaitFor(*engine, 1, &finished);
      CHECK(got == 100);

      // Errors come back as -errno.
      finished = 0;
      engine->Readv(-1, tail, 0, [&](int64_t r) { got = r, ++finished; });
      WaitFor(*engine, 1, &finished);
      CHECK(got == -EBADF);
      UniqueFd ro(open("/dev/null", O_RDONLY | O_CLOEXEC));
      finished = 0;
      engine->Writev(ro.get(), out, 0, [&](int64_t r) { got = r, ++finished; });
      WaitFor(*engine, 1, &finished);
      CHECK(got == -EBADF);
    }
  }
}

// A socket delivers the bytes in pieces: the engine must continue a short
// read until the request is complete.
TEST_CASE("short transfers are continued") {
  for (IoEngineKind kind : {IoEngineKind::kUring, IoEngineKind::kSync}) {
    DYNAMIC_SECTION(IoEngineName(kind)) {
      auto engine = Make(kind);
      if (!engine) return;
      int sv[2];
      REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
      UniqueFd reader(sv[0]), writer(sv[1]);
      bool wrote_all = true;  // Checked after join: Catch is not thread-safe.
      std::thread t([&] {
        for (const char* piece : {"abcd", "efghij"}) {
          std::this_thread::sleep_for(std::chrono::milliseconds(30));
          const ssize_t len = static_cast<ssize_t>(strlen(piece));
          if (write(writer.get(), piece, static_cast<size_t>(len)) != len) wrote_all = false;
        }
      });
      char buf[10];
      iovec in[] = {{buf, 3}, {buf + 3, 7}};
      size_t finished = 0;
      int64_t got = -1;
      engine->Readv(reader.get(), in, IoEngine::kCurrentPosition,
                    [&](int64_t r) { got = r, ++finished; });
      WaitFor(*engine, 1, &finished);
      t.join();
      CHECK(wrote_all);
      CHECK(got == 10);
      CHECK(std::string(buf, 10) == "abcdefghij");
    }
  }
}

TEST_CASE("many operations in flight, more than the ring holds") {
  auto engine = Make(IoEngineKind::kUring);
  if (!engine) return;
  auto small = IoEngine::Create(IoEngineKind::kUring, 8);
  REQUIRE(small.ok());
  TempFile f;
  std::vector<uint64_t> values(100);
  std::iota(values.begin(), values.end(), 1000);
  std::vector<iovec> iovs(values.size());
  size_t finished = 0;
  int64_t total = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    iovs[i] = {&values[i], 8};
    (*small)->Writev(f.fd.get(), {&iovs[i], 1}, static_cast<int64_t>(8 * i),
                     [&](int64_t r) { total += r, ++finished; });
  }
  WaitFor(**small, values.size(), &finished);
  CHECK(total == 800);
  std::vector<uint64_t> back(100);
  REQUIRE(pread(f.fd.get(), back.data(), 800, 0) == 800);
  CHECK(back == values);
}

TEST_CASE("destroying an engine waits for its operations") {
  auto e = IoEngine::Create(IoEngineKind::kUring);
  if (!e.ok()) return;
  TempFile f;
  char data[64] = "x";
  iovec v{data, sizeof data};
  bool done = false;
  (*e)->Writev(f.fd.get(), {&v, 1}, 0, [&](int64_t r) {
    CHECK(r == 64);
    done = true;
  });
  e->reset();
  CHECK(done);
}

TEST_CASE("CreateBest gives a working engine") {
  auto e = IoEngine::CreateBest();
  REQUIRE(e);
  TempFile f;
  char data[4] = {1, 2, 3, 4};
  iovec v{data, 4};
  size_t finished = 0;
  int64_t got = 0;
  e->Writev(f.fd.get(), {&v, 1}, 0, [&](int64_t r) { got = r, ++finished; });
  if (e->kind() == IoEngineKind::kUring) WaitFor(*e, 1, &finished);
  CHECK(got == 4);
}

}  // namespace
}  // namespace virtiofs
