// A passthrough backend over a given host directory behind a FuseHarness,
// with the few FUSE calls the fault tests make (each checks its reply's
// shape; the errno is the caller's to assert).
#ifndef VIRTIOFS_TESTS_SUPPORT_FAULT_ENV_H_
#define VIRTIOFS_TESTS_SUPPORT_FAULT_ENV_H_

#include <fcntl.h>
#include <linux/fuse.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <string_view>

#include "tests/support/fuse_harness.h"
#include "tests/support/fuse_request.h"
#include "virtiofs/passthrough.h"

namespace virtiofs::testing {

struct FaultEnv {
  explicit FaultEnv(const std::string& root) {
    PassthroughOptions o;
    o.root = root;
    auto b = PassthroughBackend::Create(o);
    INFO(b.status().message());
    REQUIRE(b.ok());
    backend = *std::move(b);
    harness = std::make_unique<FuseHarness>(backend.get());
    harness->Init();
  }
  FuseReply Call(uint32_t opcode, uint64_t node, const FuseBody& body = FuseBody(),
                 uint32_t reply = 4096) {
    return harness->Call(BuildRequest(opcode, harness->NextUnique(), node, body.bytes()), reply);
  }
  // LOOKUP: the node id (0 on error, whose errno goes to *err).
  uint64_t Lookup(uint64_t parent, std::string_view name, int* err = nullptr) {
    auto r = harness->Call(BuildLookup(harness->NextUnique(), parent, name));
    if (err != nullptr) *err = r.error();
    if (r.error() != 0) return 0;
    auto e = r.BodyAs<fuse_entry_out>();
    REQUIRE(e.ok());
    return e->nodeid;
  }
  void Forget(uint64_t node, uint64_t n = 1) {
    Call(FUSE_FORGET, node, FuseBody().Add(fuse_forget_in{n}), 0);
  }
  // OPEN: the handle (0 on error, whose errno goes to *err).
  uint64_t Open(uint64_t node, uint32_t flags, int* err = nullptr) {
    fuse_open_in in{flags, 0};
    auto r = Call(FUSE_OPEN, node, FuseBody().Add(in));
    if (err != nullptr) *err = r.error();
    if (r.error() != 0) return 0;
    auto o = r.BodyAs<fuse_open_out>();
    REQUIRE(o.ok());
    return o->fh;
  }
  // CREATE (O_RDWR) of `name` in `parent`: {node, handle}, {0, 0} on error.
  std::pair<uint64_t, uint64_t> Create(uint64_t parent, std::string_view name, int* err = nullptr) {
    fuse_create_in c{O_RDWR | O_CREAT | O_EXCL, S_IFREG | 0644, 0, 0};
    auto r = Call(FUSE_CREATE, parent, FuseBody().Add(c).Name(name));
    if (err != nullptr) *err = r.error();
    if (r.error() != 0) return {0, 0};
    REQUIRE(r.body.size() == sizeof(fuse_entry_out) + sizeof(fuse_open_out));
    fuse_entry_out e;
    fuse_open_out o;
    std::memcpy(&e, r.body.data(), sizeof e);
    std::memcpy(&o, r.body.data() + sizeof e, sizeof o);
    return {e.nodeid, o.fh};
  }
  void Release(uint64_t node, uint64_t fh) {
    fuse_release_in r{fh, 0, 0, 0};
    REQUIRE(Call(FUSE_RELEASE, node, FuseBody().Add(r)).error() == 0);
  }
  // WRITE: the reply (error, or fuse_write_out).
  FuseReply Write(uint64_t node, uint64_t fh, uint64_t offset, std::string_view data) {
    fuse_write_in w{};
    w.fh = fh;
    w.offset = offset;
    w.size = static_cast<uint32_t>(data.size());
    return Call(FUSE_WRITE, node, FuseBody().Add(w).Raw(data));
  }
  FuseReply Read(uint64_t node, uint64_t fh, uint64_t offset, uint32_t size) {
    fuse_read_in r{};
    r.fh = fh;
    r.offset = offset;
    r.size = size;
    return Call(FUSE_READ, node, FuseBody().Add(r), sizeof(fuse_out_header) + size);
  }
  int Fsync(uint64_t node, uint64_t fh) {
    fuse_fsync_in f{fh, 0, 0};
    return Call(FUSE_FSYNC, node, FuseBody().Add(f)).error();
  }

  std::unique_ptr<PassthroughBackend> backend;
  std::unique_ptr<FuseHarness> harness;
};

}  // namespace virtiofs::testing

#endif  // VIRTIOFS_TESTS_SUPPORT_FAULT_ENV_H_
