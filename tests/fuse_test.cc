// The FUSE layer end to end on real guest memory: a DriverQueue plays the
// guest's virtiofs driver, a SplitQueue pops its chains, FuseSession decodes
// them and runs them on a RecordingBackend (tests/support/recording_backend.h),
// and the test reads the reply bytes back out of guest RAM as the guest would.
//
// Each opcode of <linux/fuse.h> 7.38 plus FUSE_STATX (7.39) has a test of the
// decoded arguments and the exact reply bytes; then INIT negotiation; then
// hostile requests, each expecting one exact errno.
#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/fuse.h>
#include <linux/limits.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "lib/fuse/fuse_compat.h"
#include "tests/support/driver_queue.h"
#include "tests/support/fuse_request.h"
#include "tests/support/guest_ram.h"
#include "tests/support/recording_backend.h"
#include "virtiofs/backend.h"
#include "virtiofs/fuse_session.h"
#include "virtiofs/log.h"
#include "virtiofs/virtqueue.h"

#if defined(__SANITIZE_ADDRESS__)
// An iovec array that dies with a stack frame while the backend still holds
// it (WriteRequest::data must live until the reply) is then reported.
extern "C" const char* __asan_default_options() { return "detect_stack_use_after_return=1"; }
#endif

namespace virtiofs {
namespace {

using namespace std::chrono_literals;
using testing::BuildInit;
using testing::BuildLookup;
using testing::BuildRequest;
using testing::BuildRequestWithExtensions;
using testing::BuildSecurityContext;
using testing::BuildSuppGroupsExtension;
using testing::DirItem;
using testing::DriverQueue;
using testing::FuseBody;
using testing::FuseReply;
using testing::GuestRam;
using testing::RecordingBackend;
using testing::TestAttributes;
using testing::TestEntry;
using testing::TestStat;
using testing::TestStatvfs;
using testing::TestStatx;
using Mode = RecordingBackend::Mode;

constexpr uint64_t kRamBytes = 32ull << 20;
constexpr uint64_t kDataGpa = 1ull << 20;
constexpr uint32_t kQueueSize = 256;
constexpr uint8_t kPoison = 0xEE;  // Reply space the device did not write keeps it.
constexpr uint64_t kDir = 5;       // A directory node id the tests use.
constexpr uint64_t kFile = 9;      // A file node id.

template <typename T>
T Zeroed() {
  T v;
  std::memset(&v, 0, sizeof v);
  return v;
}

template <typename T>
std::vector<uint8_t> AsBytes(const T& v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  return std::vector<uint8_t>(p, p + sizeof(T));
}

std::string Hex(std::span<const uint8_t> bytes) {
  std::string s;
  for (size_t i = 0; i < bytes.size(); ++i) {
    s += fmt::format("{:02x}{}", bytes[i], (i + 1) % 16 == 0 ? "\n" : " ");
  }
  return s;
}

// ---- the wire form the guest must see for the recorder's canned answers ----
// (TestStat, TestAttributes, TestEntry, TestStatx and TestStatvfs are in
// tests/support/recording_backend.h.)

fuse_attr TestFuseAttr(uint32_t flags, mode_t mode = S_IFREG | 0640,
                       uint64_t ino = 0x1111222233334444) {
  auto a = Zeroed<fuse_attr>();
  a.ino = ino;
  a.size = 123456789;
  a.blocks = 241;
  a.atime = 1700000001;
  a.mtime = 1700000002;
  a.ctime = 1700000003;
  a.atimensec = 11;
  a.mtimensec = 22;
  a.ctimensec = 33;
  a.mode = mode;
  a.nlink = 3;
  a.uid = 1001;
  a.gid = 1002;
  a.rdev = 0x0805;
  a.blksize = 4096;
  a.flags = flags;
  return a;
}

fuse_attr_out TestAttrOut() {
  auto o = Zeroed<fuse_attr_out>();
  o.attr_valid = 2;
  o.attr_valid_nsec = 500000000;
  o.attr = TestFuseAttr(FUSE_ATTR_SUBMOUNT);
  return o;
}

fuse_entry_out TestEntryOut(uint64_t node = 42, mode_t mode = S_IFREG | 0640,
                            uint64_t ino = 0x1111222233334444) {
  auto o = Zeroed<fuse_entry_out>();
  o.nodeid = node;
  o.generation = 7;
  o.entry_valid = 1;
  o.entry_valid_nsec = 250000000;
  o.attr_valid = 2;
  o.attr_valid_nsec = 500000000;
  o.attr = TestFuseAttr(FUSE_ATTR_SUBMOUNT, mode, ino);
  return o;
}

fuse_statx_out TestStatxOut() {
  auto o = Zeroed<fuse_statx_out>();
  o.attr_valid = 0;
  o.attr_valid_nsec = 750000000;
  o.flags = FUSE_ATTR_SUBMOUNT;
  fuse_statx& d = o.stat;
  d.mask = STATX_BASIC_STATS | STATX_BTIME;
  d.blksize = 4096;
  d.attributes = STATX_ATTR_IMMUTABLE;
  d.nlink = 2;
  d.uid = 501;
  d.gid = 502;
  d.mode = S_IFDIR | 0755;
  d.ino = 0xABCDEF;
  d.size = 8192;
  d.blocks = 16;
  d.attributes_mask = STATX_ATTR_IMMUTABLE | STATX_ATTR_APPEND;
  d.atime = {1600000001, 101, 0};
  d.btime = {1600000002, 102, 0};
  d.ctime = {1600000003, 103, 0};
  d.mtime = {-5, 104, 0};
  d.rdev_major = 8;
  d.rdev_minor = 1;
  d.dev_major = 253;
  d.dev_minor = 4;
  return o;
}

// The packed records a guest expects (fs/fuse/readdir.c parse_dirfile).
void AppendDirent(std::vector<uint8_t>& out, uint64_t ino, uint64_t off, uint32_t type,
                  std::string_view name) {
  auto d = Zeroed<fuse_dirent>();
  d.ino = ino;
  d.off = off;
  d.namelen = static_cast<uint32_t>(name.size());
  d.type = type;
  const auto* p = reinterpret_cast<const uint8_t*>(&d);
  out.insert(out.end(), p, p + FUSE_NAME_OFFSET);
  out.insert(out.end(), name.begin(), name.end());
  while (out.size() % 8 != 0) out.push_back(0);
}

// ---- the harness: guest RAM, the guest's queue, the device's queue ----

struct Completed {
  uint32_t len = 0;
  std::vector<uint8_t> bytes;     // The first `len` bytes of the reply space.
  std::vector<uint8_t> writable;  // All of the reply space afterwards.
  std::thread::id thread;         // Where Complete ran.
};

class Harness final : public CompletionSink {
 public:
  struct Sent {
    uint16_t head = 0;
    uint64_t unique = 0;
    bool has_header = false;
    std::vector<DriverQueue::Buffer> readable;
    std::vector<DriverQueue::Buffer> writable;
  };

  explicit Harness(FuseSessionOptions options = {}, Backend* backend = nullptr)
      : ram_(GuestRam::CreateOrDie(kRamBytes)),
        driver_(*ram_, kQueueSize, 0, kDataGpa, kRamBytes - kDataGpa),
        session_(backend != nullptr ? backend : &backend_, options) {
    auto q = SplitQueue::Create(driver_.config(), ram_->map());
    REQUIRE(q.ok());
    queue_.emplace(*std::move(q));
    backend_.ram_base = ram_->Host(0);
    backend_.ram_size = kRamBytes;
  }
  ~Harness() override { backend_.JoinAll(); }

  RecordingBackend& backend() { return backend_; }
  FuseSession& session() { return session_; }
  const GuestRam& ram() const { return *ram_; }
  uint64_t NextUnique() { return ids_.Next(); }

  // CompletionSink: may run on any thread; gives the chain back to the ring.
  void Complete(DescriptorChain chain, uint32_t reply_length) override {
    std::lock_guard l(mu_);
    const uint16_t head = chain.head();
    if (outstanding_.erase(head) == 0) ++unexpected_completions_;
    done_[head] = Done{reply_length, std::this_thread::get_id()};
    if (!queue_->AddUsed(head, reply_length).ok()) ++add_used_failures_;
    queue_->PublishUsed();
    cv_.notify_all();
  }

  // Puts `request` in guest memory as readable buffers (split after each
  // size in `pieces`, the rest in one more), followed by writable buffers
  // of `reply_sizes` bytes (poisoned), makes the chain available, pops it
  // from the device's queue and hands it to the session.
  Sent Submit(std::span<const uint8_t> request,
              std::vector<uint32_t> reply_sizes = {testing::kDefaultReplyCapacity},
              std::vector<size_t> pieces = {}) {
    Sent s;
    if (request.size() >= sizeof(fuse_in_header)) {
      fuse_in_header h;
      std::memcpy(&h, request.data(), sizeof h);
      s.unique = h.unique;
      s.has_header = true;
    }
    size_t pos = 0;
    pieces.push_back(request.size());
    for (size_t piece : pieces) {
      const size_t n = std::min(piece, request.size() - pos);
      if (n == 0) continue;
      const uint64_t gpa = driver_.Alloc(n);
      ram_->Write(gpa, request.data() + pos, n);
      s.readable.push_back({gpa, static_cast<uint32_t>(n), false});
      pos += n;
    }
    for (uint32_t size : reply_sizes) {
      const uint64_t gpa = driver_.Alloc(size);
      ram_->Fill(gpa, kPoison, size);
      s.writable.push_back({gpa, size, true});
    }
    std::vector<DriverQueue::Buffer> all = s.readable;
    all.insert(all.end(), s.writable.begin(), s.writable.end());
    auto head = driver_.AddChain(all);
    REQUIRE(head.has_value());
    s.head = *head;
    DescriptorChain chain;
    {
      std::lock_guard l(mu_);
      auto popped = queue_->Pop(&chain);
      REQUIRE(popped.ok());
      REQUIRE(*popped);
      outstanding_.insert(chain.head());
    }
    REQUIRE(chain.head() == s.head);
    ++in_flight_;
    session_.Handle(std::move(chain), this);
    return s;
  }

  bool IsDone(const Sent& s) {
    std::lock_guard l(mu_);
    return done_.count(s.head) != 0;
  }

  // Waits for the completion of `s` and reads the reply space back.
  Completed Collect(const Sent& s, std::chrono::milliseconds timeout = 10s) {
    Done d;
    {
      std::unique_lock l(mu_);
      const bool ok = cv_.wait_for(l, timeout, [&] { return done_.count(s.head) != 0; });
      REQUIRE(ok);
      d = done_[s.head];
      done_.erase(s.head);
      CHECK(unexpected_completions_ == 0);
      CHECK(add_used_failures_ == 0);
    }
    // The guest sees the same length in its used ring.
    while (auto u = driver_.PopUsed()) used_[static_cast<uint16_t>(u->id)] = u->len;
    REQUIRE(used_.count(s.head) == 1);
    CHECK(used_[s.head] == d.len);
    used_.erase(s.head);

    Completed c;
    c.len = d.len;
    c.thread = d.thread;
    for (const auto& w : s.writable) {
      const size_t at = c.writable.size();
      c.writable.resize(at + w.len);
      ram_->Read(w.gpa, c.writable.data() + at, w.len);
    }
    REQUIRE(c.len <= c.writable.size());
    c.bytes.assign(c.writable.begin(), c.writable.begin() + c.len);
    if (--in_flight_ == 0) driver_.ResetAlloc();
    return c;
  }

  FuseReply Parse(const Sent& s, const Completed& c) {
    auto r = testing::ParseReply(c.bytes,
                                 s.has_header ? std::optional<uint64_t>(s.unique) : std::nullopt);
    INFO("reply bytes:\n" << Hex(c.bytes));
    INFO(r.status().ToString());
    REQUIRE(r.ok());
    return *std::move(r);
  }

  Completed DoRaw(std::span<const uint8_t> request,
                  std::vector<uint32_t> reply_sizes = {testing::kDefaultReplyCapacity},
                  std::vector<size_t> pieces = {}) {
    Sent s = Submit(request, std::move(reply_sizes), std::move(pieces));
    return Collect(s);
  }

  // One request, its parsed reply.
  FuseReply Do(std::span<const uint8_t> request,
               std::vector<uint32_t> reply_sizes = {testing::kDefaultReplyCapacity},
               std::vector<size_t> pieces = {}) {
    Sent s = Submit(request, std::move(reply_sizes), std::move(pieces));
    Completed c = Collect(s);
    return Parse(s, c);
  }

  // The error of a request's reply (0 for success).
  int32_t Errno(std::span<const uint8_t> request,
                std::vector<uint32_t> reply_sizes = {testing::kDefaultReplyCapacity}) {
    return Do(request, std::move(reply_sizes)).error();
  }

  FuseReply Init(uint32_t flags = testing::kDefaultInitFlags, uint32_t flags2 = 0,
                 uint32_t minor = FUSE_KERNEL_MINOR_VERSION) {
    return Do(BuildInit(NextUnique(), flags, flags2, testing::kDefaultMaxReadahead, minor));
  }
  void InitOk(uint32_t flags = testing::kDefaultInitFlags, uint32_t flags2 = 0,
              uint32_t minor = FUSE_KERNEL_MINOR_VERSION) {
    REQUIRE(Init(flags, flags2, minor).error() == 0);
    REQUIRE(session_.initialized());
    backend_.ClearCalls();
  }

  // A request of `opcode` on `node` with `body`, and a fresh unique id.
  std::vector<uint8_t> Build(uint32_t opcode, uint64_t node, const FuseBody& body = {}) {
    return BuildRequest(opcode, NextUnique(), node, body.bytes());
  }

 private:
  struct Done {
    uint32_t len = 0;
    std::thread::id thread;
  };

  std::unique_ptr<GuestRam> ram_;
  DriverQueue driver_;
  std::optional<SplitQueue> queue_;
  testing::FuseUniqueIds ids_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<uint16_t> outstanding_;
  std::map<uint16_t, Done> done_;
  std::map<uint16_t, uint32_t> used_;
  int unexpected_completions_ = 0;
  int add_used_failures_ = 0;
  int in_flight_ = 0;
  RecordingBackend backend_;
  FuseSession session_;
};

// The body of `r` must be exactly the bytes of `expected`.
template <typename T>
void CheckBody(const FuseReply& r, const T& expected) {
  REQUIRE(r.error() == 0);
  CHECK(r.header.len == sizeof(fuse_out_header) + sizeof(T));
  const std::vector<uint8_t> want = AsBytes(expected);
  INFO("got:\n" << Hex(r.body) << "\nwant:\n" << Hex(want));
  CHECK(r.body == want);
}

void CheckEmptyOk(const FuseReply& r) {
  CHECK(r.error() == 0);
  CHECK(r.header.len == sizeof(fuse_out_header));
  CHECK(r.body.empty());
}

// A harness with a negotiated 7.38 session.
struct Session {
  explicit Session(FuseSessionOptions options = {}) : h(options) { h.InitOk(); }
  Harness h;
  RecordingBackend& b() { return h.backend(); }
};

// ======================= 1. Every opcode, decoded and encoded =======================

TEST_CASE("LOOKUP: name, parent and caller reach the backend; the entry reaches the guest") {
  Session s;
  auto req =
      BuildRequest(FUSE_LOOKUP, 1000, kDir, FuseBody().Name("hello.txt").bytes(), 1000, 1001, 1234);
  SECTION("an entry") {
    FuseReply r = s.h.Do(req);
    CHECK(s.b().last() == "Lookup 5 hello.txt");
    RequestContext c = s.b().ctx();
    CHECK(c.unique == 1000);
    CHECK(c.uid == 1000);
    CHECK(c.gid == 1001);
    CHECK(c.pid == 1234);
    CHECK_FALSE(c.supplementary_gid.has_value());
    CHECK_FALSE(c.security_context.has_value());
    CheckBody(r, TestEntryOut());
    CHECK(s.h.session().count(FUSE_LOOKUP) == 1);
  }
  SECTION("a negative entry (node id 0)") {
    s.b().entry.node_id = 0;
    CheckBody(s.h.Do(req), TestEntryOut(0));
  }
  SECTION("an error is the header alone") {
    s.b().mode = Mode::kError;
    s.b().error = ENOENT;
    FuseReply r = s.h.Do(req);
    CHECK(r.error() == -ENOENT);
    CHECK(r.header.len == sizeof(fuse_out_header));
    CHECK(r.unique() == 1000);
  }
  SECTION("the request split across descriptors, header included") {
    CheckBody(s.h.Do(req, {4096}, {1, 7, 20, 12, 3}), TestEntryOut());
    CHECK(s.b().last() == "Lookup 5 hello.txt");
  }
  SECTION("the out header split across reply descriptors") {
    CheckBody(s.h.Do(req, {10, 6, 7, 4096}), TestEntryOut());
  }
}

TEST_CASE("FORGET: the backend forgets, the chain completes with length 0 and no reply") {
  Session s;
  auto req = s.h.Build(FUSE_FORGET, 42, FuseBody().Add(fuse_forget_in{5}));
  SECTION("with reply space, untouched") {
    Completed c = s.h.DoRaw(req);
    CHECK(c.len == 0);
    CHECK(
        std::all_of(c.writable.begin(), c.writable.end(), [](uint8_t b) { return b == kPoison; }));
  }
  SECTION("without reply space, as the Linux driver sends it on the hiprio queue") {
    Completed c = s.h.DoRaw(req, {});
    CHECK(c.len == 0);
  }
  CHECK(s.b().calls() == std::vector<std::string>{"Forget 42 5"});
}

TEST_CASE("BATCH_FORGET: every item reaches the backend; no reply") {
  Session s;
  FuseBody body;
  body.Add(fuse_batch_forget_in{3, 0})
      .Add(fuse_forget_one{42, 1})
      .Add(fuse_forget_one{43, 2})
      .Add(fuse_forget_one{UINT64_MAX, 3});
  Completed c = s.h.DoRaw(s.h.Build(FUSE_BATCH_FORGET, 0, body), {});
  CHECK(c.len == 0);
  CHECK(s.b().last() == "BatchForget 3 42:1 43:2 18446744073709551615:3");
}

// A backend that implements Forget only: the default BatchForget forwards.
class ForgetOnlyBackend : public Backend {
 public:
  void Forget(uint64_t node, uint64_t nlookup) override { seen.push_back({node, nlookup}); }
  std::vector<ForgetItem> seen;
};

TEST_CASE("The default Backend::BatchForget calls Forget for each item") {
  ForgetOnlyBackend backend;
  Harness h({}, &backend);
  REQUIRE(h.Init().error() == 0);
  FuseBody body;
  body.Add(fuse_batch_forget_in{2, 0}).Add(fuse_forget_one{7, 1}).Add(fuse_forget_one{8, 9});
  CHECK(h.DoRaw(h.Build(FUSE_BATCH_FORGET, 0, body), {}).len == 0);
  REQUIRE(backend.seen.size() == 2);
  CHECK(backend.seen[0].node_id == 7);
  CHECK(backend.seen[0].nlookup == 1);
  CHECK(backend.seen[1].node_id == 8);
  CHECK(backend.seen[1].nlookup == 9);
}

TEST_CASE("GETATTR: the handle only with FUSE_GETATTR_FH; fuse_attr_out") {
  Session s;
  SECTION("with a handle") {
    CheckBody(s.h.Do(s.h.Build(FUSE_GETATTR, kFile,
                               FuseBody().Add(fuse_getattr_in{FUSE_GETATTR_FH, 0, 77}))),
              TestAttrOut());
    CHECK(s.b().last() == "GetAttr 9 fh=77");
  }
  SECTION("without") {
    CheckBody(s.h.Do(s.h.Build(FUSE_GETATTR, kFile, FuseBody().Add(fuse_getattr_in{0, 0, 77}))),
              TestAttrOut());
    CHECK(s.b().last() == "GetAttr 9 fh=none");
  }
  SECTION("timeouts: negative and NaN become 0, fractions become nanoseconds") {
    s.b().attr.timeout = -3;
    auto want = TestAttrOut();
    want.attr_valid = 0;
    want.attr_valid_nsec = 0;
    CheckBody(s.h.Do(s.h.Build(FUSE_GETATTR, kFile, FuseBody().Add(fuse_getattr_in{}))), want);
    s.b().attr.timeout = std::nan("");
    CheckBody(s.h.Do(s.h.Build(FUSE_GETATTR, kFile, FuseBody().Add(fuse_getattr_in{}))), want);
    s.b().attr.timeout = 86400.125;
    want.attr_valid = 86400;
    want.attr_valid_nsec = 125000000;
    CheckBody(s.h.Do(s.h.Build(FUSE_GETATTR, kFile, FuseBody().Add(fuse_getattr_in{}))), want);
  }
}

TEST_CASE("SETATTR: every field decoded") {
  Session s;
  auto in = Zeroed<fuse_setattr_in>();
  in.valid = FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_SIZE | FATTR_ATIME | FATTR_MTIME |
             FATTR_FH | FATTR_LOCKOWNER | FATTR_CTIME | FATTR_KILL_SUIDGID;
  in.fh = 66;
  in.size = 4096;
  in.lock_owner = 0x77;
  in.atime = 10;
  in.atimensec = 1;
  in.mtime = 20;
  in.mtimensec = 2;
  in.ctime = 30;
  in.ctimensec = 3;
  in.mode = 0600;
  in.uid = 7;
  in.gid = 8;
  SECTION("all of them") {
    CheckBody(s.h.Do(s.h.Build(FUSE_SETATTR, kFile, FuseBody().Add(in))), TestAttrOut());
    CHECK(s.b().last() ==
          "SetAttr 9 valid=0xe7f fh=66 mode=600 uid=7 gid=8 size=4096 atime=10.1 mtime=20.2 "
          "ctime=30.3 owner=119 kill=true");
  }
  SECTION("no FATTR_FH: no handle") {
    in.valid = FATTR_SIZE;
    CheckBody(s.h.Do(s.h.Build(FUSE_SETATTR, kFile, FuseBody().Add(in))), TestAttrOut());
    CHECK(s.b().last() ==
          "SetAttr 9 valid=0x8 fh=none mode=600 uid=7 gid=8 size=4096 atime=10.1 mtime=20.2 "
          "ctime=30.3 owner=119 kill=false");
  }
}

TEST_CASE("STATX (7.39): arguments and fuse_statx_out") {
  Session s;
  fuse_statx_in in{FUSE_GETATTR_FH, 0, 27, AT_STATX_DONT_SYNC, STATX_BASIC_STATS | STATX_BTIME};
  CheckBody(s.h.Do(s.h.Build(FUSE_STATX, kFile, FuseBody().Add(in))), TestStatxOut());
  CHECK(s.b().last() == "Statx 9 fh=27 sx_flags=0x4000 mask=0xfff");
  in.getattr_flags = 0;
  CheckBody(s.h.Do(s.h.Build(FUSE_STATX, kFile, FuseBody().Add(in))), TestStatxOut());
  CHECK(s.b().last() == "Statx 9 fh=none sx_flags=0x4000 mask=0xfff");
}

TEST_CASE("READLINK: the target, without a NUL") {
  Session s;
  FuseReply r = s.h.Do(s.h.Build(FUSE_READLINK, kFile));
  CHECK(s.b().last() == "ReadLink 9");
  REQUIRE(r.error() == 0);
  CHECK(r.header.len == sizeof(fuse_out_header) + s.b().text.size());
  CHECK(std::string(r.body.begin(), r.body.end()) == s.b().text);
}

TEST_CASE("SYMLINK: the name, then the target") {
  Session s;
  CheckBody(s.h.Do(s.h.Build(FUSE_SYMLINK, kDir, FuseBody().Name("lnk").Name("../target/x"))),
            TestEntryOut());
  CHECK(s.b().last() == "Symlink 5 lnk -> ../target/x");
}

TEST_CASE("MKNOD and MKDIR") {
  Session s;
  CheckBody(
      s.h.Do(s.h.Build(FUSE_MKNOD, kDir,
                       FuseBody().Add(fuse_mknod_in{S_IFCHR | 0600, 0x0103, 022, 0}).Name("dev"))),
      TestEntryOut());
  CHECK(s.b().last() == "Mknod 5 dev mode=20600 rdev=0x103 umask=22");
  CheckBody(
      s.h.Do(s.h.Build(FUSE_MKDIR, kDir, FuseBody().Add(fuse_mkdir_in{0755, 022}).Name("sub"))),
      TestEntryOut());
  CHECK(s.b().last() == "Mkdir 5 sub mode=755 umask=22");
}

TEST_CASE("UNLINK and RMDIR: an empty reply") {
  Session s;
  CheckEmptyOk(s.h.Do(s.h.Build(FUSE_UNLINK, kDir, FuseBody().Name("gone"))));
  CHECK(s.b().last() == "Unlink 5 gone");
  CheckEmptyOk(s.h.Do(s.h.Build(FUSE_RMDIR, kDir, FuseBody().Name("olddir"))));
  CHECK(s.b().last() == "Rmdir 5 olddir");
}

TEST_CASE("RENAME and RENAME2") {
  Session s;
  CheckEmptyOk(
      s.h.Do(s.h.Build(FUSE_RENAME, kDir, FuseBody().Add(fuse_rename_in{7}).Name("a").Name("b"))));
  CHECK(s.b().last() == "Rename 5 a -> 7 b flags=0");
  CheckEmptyOk(s.h.Do(
      s.h.Build(FUSE_RENAME2, kDir,
                FuseBody().Add(fuse_rename2_in{8, RENAME_EXCHANGE, 0}).Name("c").Name("d"))));
  CHECK(s.b().last() == "Rename 5 c -> 8 d flags=2");
  CheckEmptyOk(s.h.Do(s.h.Build(FUSE_RENAME2, kDir,
                                FuseBody()
                                    .Add(fuse_rename2_in{8, RENAME_NOREPLACE | RENAME_WHITEOUT, 0})
                                    .Name("c")
                                    .Name("d"))));
  CHECK(s.b().last() == "Rename 5 c -> 8 d flags=5");
  SECTION("unknown RENAME2 flags: EINVAL") {
    s.b().ClearCalls();
    CHECK(s.h.Errno(s.h.Build(FUSE_RENAME2, kDir,
                              FuseBody().Add(fuse_rename2_in{8, 8, 0}).Name("c").Name("d"))) ==
          -EINVAL);
    CHECK(s.b().call_count() == 0);
  }
}

TEST_CASE("LINK: nodeid is the new parent, oldnodeid the node") {
  Session s;
  CheckBody(s.h.Do(s.h.Build(FUSE_LINK, kDir, FuseBody().Add(fuse_link_in{42}).Name("hard"))),
            TestEntryOut());
  CHECK(s.b().last() == "Link 42 -> 5 hard");
}

TEST_CASE("OPEN and OPENDIR: fuse_open_out") {
  Session s;
  auto want = Zeroed<fuse_open_out>();
  want.fh = 0xF00D;
  want.open_flags = FOPEN_KEEP_CACHE;
  CheckBody(s.h.Do(s.h.Build(FUSE_OPEN, kFile, FuseBody().Add(fuse_open_in{O_RDWR | O_APPEND, 0}))),
            want);
  CHECK(s.b().last() == "Open 9 flags=0x402");
  CheckBody(s.h.Do(s.h.Build(FUSE_OPENDIR, kDir, FuseBody().Add(fuse_open_in{O_DIRECTORY, 0}))),
            want);
  CHECK(s.b().last() == "OpenDir 5 flags=0x10000");
}

TEST_CASE("CREATE: fuse_entry_out then fuse_open_out") {
  Session s;
  auto req = s.h.Build(FUSE_CREATE, kDir,
                       FuseBody()
                           .Add(fuse_create_in{O_CREAT | O_EXCL | O_RDWR, S_IFREG | 0644, 022, 0})
                           .Name("new.txt"));
  FuseReply r = s.h.Do(req);
  CHECK(s.b().last() == "Create 5 new.txt mode=100644 flags=0xc2 umask=22");
  auto open = Zeroed<fuse_open_out>();
  open.fh = 0xBEEF;
  open.open_flags = FOPEN_DIRECT_IO;
  std::vector<uint8_t> want = AsBytes(TestEntryOut(43));
  auto tail = AsBytes(open);
  want.insert(want.end(), tail.begin(), tail.end());
  REQUIRE(r.error() == 0);
  CHECK(r.header.len == sizeof(fuse_out_header) + sizeof(fuse_entry_out) + sizeof(fuse_open_out));
  CHECK(r.body == want);
}

TEST_CASE("TMPFILE (7.37): arguments as Linux sends them, with the placeholder name \"/\"") {
  Session s;
  // fs/fuse/dir.c fuse_tmpfile -> fuse_create_open sends the dentry name, which
  // vfs_tmpfile makes "/".
  FuseReply r = s.h.Do(
      s.h.Build(FUSE_TMPFILE, kDir,
                FuseBody().Add(fuse_create_in{O_RDWR | O_EXCL, S_IFREG | 0600, 077, 0}).Name("/")));
  CHECK(s.b().last() == "TmpFile 5 mode=100600 flags=0x82 umask=77");
  auto open = Zeroed<fuse_open_out>();
  open.fh = 0xBEEF;
  open.open_flags = FOPEN_DIRECT_IO;
  std::vector<uint8_t> want = AsBytes(TestEntryOut(43));
  auto tail = AsBytes(open);
  want.insert(want.end(), tail.begin(), tail.end());
  REQUIRE(r.error() == 0);
  CHECK(r.body == want);
  SECTION("without the placeholder: EINVAL") {
    s.b().ClearCalls();
    CHECK(s.h.Errno(s.h.Build(FUSE_TMPFILE, kDir, FuseBody().Add(fuse_create_in{}))) == -EINVAL);
    CHECK(s.b().call_count() == 0);
  }
}

TEST_CASE("READ: the data lands straight in the guest's buffers") {
  Session s;
  std::string data(3000, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + 1);
  s.b().read_data = data;
  auto in = Zeroed<fuse_read_in>();
  in.fh = 11;
  in.offset = 4096;
  in.size = 3000;
  in.read_flags = FUSE_READ_LOCKOWNER;
  in.lock_owner = 0x55;
  in.flags = 0x8002;
  auto req = s.h.Build(FUSE_READ, kFile, FuseBody().Add(in));
  // Reply space: the out header alone, then 100 bytes, then 4096.
  auto sent = s.h.Submit(req, {16, 100, 4096});
  Completed c = s.h.Collect(sent);
  FuseReply r = s.h.Parse(sent, c);
  CHECK(s.b().last() == "Read 9 fh=11 off=4096 size=3000 flags=0x8002 rflags=0x2 owner=85");
  // The backend was given the guest's memory, past the out header.
  REQUIRE(s.b().read_buffers.size() == 2);
  CHECK(s.b().read_buffers[0].iov_base == s.h.ram().Host(sent.writable[1].gpa));
  CHECK(s.b().read_buffers[0].iov_len == 100);
  CHECK(s.b().read_buffers[1].iov_base == s.h.ram().Host(sent.writable[2].gpa));
  CHECK(s.b().read_buffers[1].iov_len == 2900);
  REQUIRE(r.error() == 0);
  CHECK(r.header.len == 16 + 3000);
  CHECK(std::string(r.body.begin(), r.body.end()) == data);
  CHECK(std::all_of(c.writable.begin() + c.len, c.writable.end(),
                    [](uint8_t b) { return b == kPoison; }));
}

TEST_CASE("READ: short reads, async answers, and answers longer than asked") {
  Session s;
  auto in = Zeroed<fuse_read_in>();
  in.fh = 11;
  in.size = 3000;
  auto req = s.h.Build(FUSE_READ, kFile, FuseBody().Add(in));
  SECTION("a short read (end of file) replies what was read") {
    s.b().read_data = std::string(1000, 'x');
    Completed c = s.h.DoRaw(req, {4096});
    CHECK(c.len == 16 + 1000);
    CHECK(std::all_of(c.writable.begin() + c.len, c.writable.end(),
                      [](uint8_t b) { return b == kPoison; }));
  }
  SECTION("Ok(more than asked) is EIO") {
    s.b().read_data = std::string(3000, 'x');
    s.b().read_answer = 3001;
    CHECK(s.h.Errno(req, {4096}) == -EIO);
  }
  SECTION("answered later from another thread") {
    s.b().read_data = std::string(3000, 'y');
    s.b().mode = Mode::kAsync;
    s.b().hold = true;
    auto sent = s.h.Submit(req, {4096});
    std::this_thread::sleep_for(20ms);
    CHECK_FALSE(s.h.IsDone(sent));
    CHECK(s.h.session().in_flight() == 1);  // Decoded, not answered.
    s.b().hold = false;
    Completed c = s.h.Collect(sent);
    CHECK(s.h.session().in_flight() == 0);
    const FuseOpStats st = s.h.session().op_stats(FUSE_READ);
    CHECK(st.replies == 1);
    CHECK(st.errors == 0);
    // The answer was held 20 ms: the latency says so, in the right bucket.
    CHECK(st.total_ns >= 20'000'000);
    uint64_t slow = 0;  // Replies of 16.384 ms and more: buckets 15 and up.
    for (int i = 15; i < FuseOpStats::kBuckets; ++i) slow += st.buckets[i];
    CHECK(slow == 1);
    CHECK(c.thread != std::this_thread::get_id());
    FuseReply r = s.h.Parse(sent, c);
    CHECK(std::string(r.body.begin(), r.body.end()) == std::string(3000, 'y'));
  }
}

// Overwrites the stack below the caller, where a dead frame's locals were.
[[gnu::noinline]] void ScribbleStack() {
  volatile uint8_t junk[32768];
  for (size_t i = 0; i < sizeof junk; ++i) junk[i] = 0xA5;
}

TEST_CASE("WRITE: the payload reaches the backend as iovecs into guest memory") {
  Session s;
  std::string payload(10000, '\0');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 13 + 5);
  auto in = Zeroed<fuse_write_in>();
  in.fh = 12;
  in.offset = 8192;
  in.size = 10000;
  in.write_flags = FUSE_WRITE_LOCKOWNER | FUSE_WRITE_KILL_SUIDGID;
  in.lock_owner = 0x66;
  in.flags = O_WRONLY;
  auto req = s.h.Build(FUSE_WRITE, kFile, FuseBody().Add(in).Raw(payload));
  s.b().u32 = 10000;
  auto want = Zeroed<fuse_write_out>();
  want.size = 10000;

  SECTION("header, write_in and payload in separate descriptors, payload in three") {
    auto sent = s.h.Submit(req, {4096}, {40, 40, 3000, 4000});
    FuseReply r = s.h.Parse(sent, s.h.Collect(sent));
    CheckBody(r, want);
    CHECK(s.b().last() == "Write 9 fh=12 off=8192 size=10000 flags=0x1 wflags=0x6 owner=102");
    REQUIRE(s.b().write_iov.size() == 3);
    for (int i = 0; i < 3; ++i) {
      CHECK(s.b().write_iov[i].iov_base == s.h.ram().Host(sent.readable[i + 2].gpa));
      CHECK(s.b().write_iov[i].iov_len == sent.readable[i + 2].len);
      CHECK(s.b().InRam(s.b().write_iov[i]));
    }
    CHECK(s.b().write_data == payload);
  }
  SECTION("all in one descriptor") {
    auto sent = s.h.Submit(req, {4096});
    CheckBody(s.h.Parse(sent, s.h.Collect(sent)), want);
    REQUIRE(s.b().write_iov.size() == 1);
    CHECK(s.b().write_iov[0].iov_base ==
          s.h.ram().Host(sent.readable[0].gpa + sizeof(fuse_in_header) + sizeof in));
    CHECK(s.b().write_data == payload);
  }
  SECTION("the iovecs stay valid until an answer from another thread") {
    s.b().mode = Mode::kAsync;
    s.b().hold = true;
    auto sent = s.h.Submit(req, {4096}, {80, 5000});
    ScribbleStack();
    // Another request meanwhile, on the same thread.
    s.b().mode = Mode::kOk;
    CheckBody(s.h.Do(s.h.Build(FUSE_GETATTR, kFile, FuseBody().Add(fuse_getattr_in{}))),
              TestAttrOut());
    ScribbleStack();
    s.b().hold = false;
    Completed c = s.h.Collect(sent);
    CheckBody(s.h.Parse(sent, c), want);
    CHECK(c.thread != std::this_thread::get_id());
    CHECK(s.b().late_write_data == payload);
  }
  SECTION("a zero-length write") {
    in.size = 0;
    s.b().u32 = 0;
    want.size = 0;
    CheckBody(s.h.Do(s.h.Build(FUSE_WRITE, kFile, FuseBody().Add(in))), want);
    CHECK(s.b().write_data.empty());
  }
}

TEST_CASE("STATFS: fuse_statfs_out") {
  Session s;
  auto want = Zeroed<fuse_statfs_out>();
  want.st.blocks = 1000000;
  want.st.bfree = 500000;
  want.st.bavail = 400000;
  want.st.files = 65536;
  want.st.ffree = 60000;
  want.st.bsize = 4096;
  want.st.namelen = 255;
  want.st.frsize = 512;
  CheckBody(s.h.Do(s.h.Build(FUSE_STATFS, FUSE_ROOT_ID)), want);
  CHECK(s.b().last() == "StatFs 1");
}

TEST_CASE("RELEASE, RELEASEDIR, FLUSH, FSYNC, FSYNCDIR: arguments and empty replies") {
  Session s;
  CheckEmptyOk(
      s.h.Do(s.h.Build(FUSE_RELEASE, kFile,
                       FuseBody().Add(fuse_release_in{
                           13, O_RDWR, FUSE_RELEASE_FLUSH | FUSE_RELEASE_FLOCK_UNLOCK, 0x99}))));
  CHECK(s.b().last() == "Release 9 fh=13 flags=0x2 rflags=0x3 owner=153");
  CheckEmptyOk(s.h.Do(
      s.h.Build(FUSE_RELEASEDIR, kDir, FuseBody().Add(fuse_release_in{17, O_DIRECTORY, 0, 0}))));
  CHECK(s.b().last() == "ReleaseDir 5 fh=17 flags=0x10000");
  CheckEmptyOk(s.h.Do(s.h.Build(FUSE_FLUSH, kFile, FuseBody().Add(fuse_flush_in{15, 0, 0, 0x42}))));
  CHECK(s.b().last() == "Flush 9 fh=15 owner=66");
  CheckEmptyOk(s.h.Do(s.h.Build(FUSE_FSYNC, kFile, FuseBody().Add(fuse_fsync_in{14, 1, 0}))));
  CHECK(s.b().last() == "Fsync 9 fh=14 datasync=true");
  CheckEmptyOk(s.h.Do(s.h.Build(FUSE_FSYNC, kFile, FuseBody().Add(fuse_fsync_in{14, 0, 0}))));
  CHECK(s.b().last() == "Fsync 9 fh=14 datasync=false");
  CheckEmptyOk(s.h.Do(s.h.Build(FUSE_FSYNCDIR, kDir, FuseBody().Add(fuse_fsync_in{18, 1, 0}))));
  CHECK(s.b().last() == "FsyncDir 5 fh=18 datasync=true");
}

TEST_CASE("SETXATTR: name and value, with and without FUSE_SETXATTR_EXT") {
  const std::string_view value("v\0lue", 5);  // Values may hold NULs.
  SECTION("the 7.32 struct (8 bytes)") {
    Session s;
    fuse_setxattr_in in{5, XATTR_CREATE, 0, 0};
    CheckEmptyOk(s.h.Do(s.h.Build(
        FUSE_SETXATTR, kFile,
        FuseBody().AddPrefix(in, FUSE_COMPAT_SETXATTR_IN_SIZE).Name("user.k").Raw(value))));
    CHECK(s.b().last() == "SetXattr 9 user.k size=5 flags=1 sflags=0");
    CHECK(std::string(s.b().bytes.begin(), s.b().bytes.end()) == value);
  }
  SECTION("the extended struct once negotiated") {
    Harness h;
    h.InitOk(testing::kDefaultInitFlags | FUSE_SETXATTR_EXT);
    REQUIRE((h.session().flags() & FUSE_SETXATTR_EXT) != 0);
    fuse_setxattr_in in{5, XATTR_REPLACE, FUSE_SETXATTR_ACL_KILL_SGID, 0};
    CheckEmptyOk(h.Do(h.Build(FUSE_SETXATTR, kFile, FuseBody().Add(in).Name("user.k").Raw(value))));
    CHECK(h.backend().last() == "SetXattr 9 user.k size=5 flags=2 sflags=1");
    CHECK(std::string(h.backend().bytes.begin(), h.backend().bytes.end()) == value);
  }
}

TEST_CASE("GETXATTR and LISTXATTR: size probe, value, ERANGE") {
  Session s;
  struct Op {
    uint32_t opcode;
    std::string value;
    std::string call;
  };
  for (const Op& op : {Op{FUSE_GETXATTR, "security-label", "GetXattr 9 user.k"},
                       Op{FUSE_LISTXATTR, std::string("user.a\0user.bb\0", 15), "ListXattr 9"}}) {
    DYNAMIC_SECTION("opcode " << op.opcode) {
      s.b().text = op.value;
      auto build = [&](uint32_t size) {
        FuseBody body;
        body.Add(fuse_getxattr_in{size, 0});
        if (op.opcode == FUSE_GETXATTR) body.Name("user.k");
        return s.h.Build(op.opcode, kFile, body);
      };
      // Size 0 asks for the size.
      auto probe = Zeroed<fuse_getxattr_out>();
      probe.size = static_cast<uint32_t>(op.value.size());
      CheckBody(s.h.Do(build(0)), probe);
      CHECK(s.b().last() == op.call);
      // Room for exactly the value, or more: the value.
      for (uint32_t size : {static_cast<uint32_t>(op.value.size()), 100u}) {
        FuseReply r = s.h.Do(build(size));
        REQUIRE(r.error() == 0);
        CHECK(r.header.len == sizeof(fuse_out_header) + op.value.size());
        CHECK(std::string(r.body.begin(), r.body.end()) == op.value);
      }
      // Less room than the value: ERANGE.
      CHECK(s.h.Errno(build(static_cast<uint32_t>(op.value.size() - 1))) == -ERANGE);
      CHECK(s.b().call_count() == 4);
    }
  }
}

TEST_CASE("REMOVEXATTR") {
  Session s;
  CheckEmptyOk(s.h.Do(s.h.Build(FUSE_REMOVEXATTR, kFile, FuseBody().Name("user.k"))));
  CHECK(s.b().last() == "RemoveXattr 9 user.k");
}

TEST_CASE("READDIR: packed dirents, stopping when the size is full") {
  Session s;
  // Records of 32, 32 and 40 bytes (FUSE_DIRENT_ALIGN(24 + namelen)).
  s.b().dir = {
      {"a", 10, DT_REG, 1, {}}, {"dir_b", 11, DT_DIR, 2, {}}, {"longer_name_c", 12, DT_LNK, 3, {}}};
  std::vector<uint8_t> all;
  AppendDirent(all, 10, 1, DT_REG, "a");
  AppendDirent(all, 11, 2, DT_DIR, "dir_b");
  AppendDirent(all, 12, 3, DT_LNK, "longer_name_c");
  REQUIRE(all.size() == 104);
  auto build = [&](uint32_t size) {
    auto in = Zeroed<fuse_read_in>();
    in.fh = 16;
    in.offset = 3;
    in.size = size;
    return s.h.Build(FUSE_READDIR, kDir, FuseBody().Add(in));
  };
  SECTION("all fit") {
    FuseReply r = s.h.Do(build(104));
    CHECK(s.b().last() == "ReadDir 5 fh=16 off=3 plus=false");
    CHECK(s.b().dir_added == 3);
    REQUIRE(r.error() == 0);
    CHECK(r.body == all);
  }
  SECTION("one byte short: the last one does not fit") {
    FuseReply r = s.h.Do(build(103));
    CHECK(s.b().dir_added == 2);
    CHECK(r.body == std::vector<uint8_t>(all.begin(), all.begin() + 64));
  }
  SECTION("the guest's reply space is smaller than the size it asks") {
    FuseReply r = s.h.Do(build(4096), {16 + 40});
    CHECK(s.b().dir_added == 1);
    CHECK(r.body == std::vector<uint8_t>(all.begin(), all.begin() + 32));
  }
  SECTION("size 0: nothing fits, an empty reply") {
    FuseReply r = s.h.Do(build(0));
    CHECK(s.b().dir_added == 0);
    CheckEmptyOk(r);
  }
  SECTION("entries spread over several reply descriptors") {
    FuseReply r = s.h.Do(build(4096), {16, 20, 30, 4096});
    CHECK(s.b().dir_added == 3);
    CHECK(r.body == all);
  }
}

TEST_CASE("READDIRPLUS: fuse_direntplus records, stopping when the size is full") {
  Session s;
  s.b().dir = {{"a", 0, 0, 1, TestEntry(50, S_IFREG | 0644, 10)},
               {"dir_b", 0, 0, 2, TestEntry(51, S_IFDIR | 0755, 11)},
               {"longer_name_c", 0, 0, 3, TestEntry(52, S_IFLNK | 0777, 12)}};
  std::vector<uint8_t> all;
  auto append = [&](uint64_t node, mode_t mode, uint64_t ino, uint64_t off, uint32_t type,
                    std::string_view name) {
    auto e = AsBytes(TestEntryOut(node, mode, ino));
    all.insert(all.end(), e.begin(), e.end());
    AppendDirent(all, ino, off, type, name);
  };
  append(50, S_IFREG | 0644, 10, 1, DT_REG, "a");
  append(51, S_IFDIR | 0755, 11, 2, DT_DIR, "dir_b");
  append(52, S_IFLNK | 0777, 12, 3, DT_LNK, "longer_name_c");
  REQUIRE(all.size() == 488);
  auto build = [&](uint32_t size) {
    auto in = Zeroed<fuse_read_in>();
    in.fh = 16;
    in.size = size;
    return s.h.Build(FUSE_READDIRPLUS, kDir, FuseBody().Add(in));
  };
  SECTION("all fit") {
    FuseReply r = s.h.Do(build(488));
    CHECK(s.b().last() == "ReadDir 5 fh=16 off=0 plus=true");
    CHECK(s.b().dir_added == 3);
    CHECK(r.body == all);
  }
  SECTION("the third does not fit") {
    FuseReply r = s.h.Do(build(487));
    CHECK(s.b().dir_added == 2);
    CHECK(r.body == std::vector<uint8_t>(all.begin(), all.begin() + 320));
  }
  SECTION("answered from another thread") {
    s.b().mode = Mode::kAsync;
    FuseReply r = s.h.Do(build(4096));
    CHECK(s.b().dir_added == 3);
    CHECK(r.body == all);
  }
}

TEST_CASE("GETLK, SETLK, SETLKW") {
  Session s;
  fuse_lk_in in{19, 0x77, {0, 99, F_RDLCK, 321}, 0, 0};
  auto want = Zeroed<fuse_lk_out>();
  want.lk = {100, 199, F_WRLCK, 4242};
  CheckBody(s.h.Do(s.h.Build(FUSE_GETLK, kFile, FuseBody().Add(in))), want);
  CHECK(s.b().last() == "GetLk 9 fh=19 owner=119 0-99 type=0 pid=321 flock=false");
  in.lk_flags = FUSE_LK_FLOCK;
  in.lk.type = F_UNLCK;
  CheckEmptyOk(s.h.Do(s.h.Build(FUSE_SETLK, kFile, FuseBody().Add(in))));
  CHECK(s.b().last() == "SetLk 9 fh=19 owner=119 0-99 type=2 pid=321 flock=true wait=false");
  SECTION("SETLKW waits in another thread; other requests go on meanwhile") {
    in.lk.type = F_WRLCK;
    s.b().mode = Mode::kAsync;
    s.b().hold = true;
    auto lockw = s.h.Submit(s.h.Build(FUSE_SETLKW, kFile, FuseBody().Add(in)));
    CHECK(s.b().last() == "SetLk 9 fh=19 owner=119 0-99 type=1 pid=321 flock=true wait=true");
    s.b().mode = Mode::kOk;
    CheckBody(s.h.Do(s.h.Build(FUSE_GETATTR, kFile, FuseBody().Add(fuse_getattr_in{}))),
              TestAttrOut());
    CHECK_FALSE(s.h.IsDone(lockw));
    s.b().hold = false;
    Completed c = s.h.Collect(lockw);
    CheckEmptyOk(s.h.Parse(lockw, c));
    CHECK(c.thread != std::this_thread::get_id());
  }
  SECTION("a lock type other than F_RDLCK/F_WRLCK/F_UNLCK: EINVAL") {
    in.lk.type = 7;
    s.b().ClearCalls();
    CHECK(s.h.Errno(s.h.Build(FUSE_GETLK, kFile, FuseBody().Add(in))) == -EINVAL);
    CHECK(s.h.Errno(s.h.Build(FUSE_SETLK, kFile, FuseBody().Add(in))) == -EINVAL);
    CHECK(s.b().call_count() == 0);
  }
}

TEST_CASE("ACCESS") {
  Session s;
  CheckEmptyOk(
      s.h.Do(s.h.Build(FUSE_ACCESS, kFile, FuseBody().Add(fuse_access_in{R_OK | W_OK, 0}))));
  CHECK(s.b().last() == "Access 9 mask=6");
}

TEST_CASE("INTERRUPT: the backend hears of it; no reply") {
  Session s;
  Completed c = s.h.DoRaw(s.h.Build(FUSE_INTERRUPT, 0, FuseBody().Add(fuse_interrupt_in{1234})));
  CHECK(c.len == 0);
  CHECK(s.b().calls() == std::vector<std::string>{"Interrupt 1234"});
}

TEST_CASE("BMAP") {
  Session s;
  s.b().u64 = 9999;
  auto want = Zeroed<fuse_bmap_out>();
  want.block = 9999;
  CheckBody(s.h.Do(s.h.Build(FUSE_BMAP, kFile, FuseBody().Add(fuse_bmap_in{77, 4096, 0}))), want);
  CHECK(s.b().last() == "Bmap 9 blocksize=4096 block=77");
}

TEST_CASE("IOCTL: input bytes in, result and output bytes out") {
  Session s;
  fuse_ioctl_in in{20, FUSE_IOCTL_UNRESTRICTED, 0x80086601u, 0xdead, 4, 16};
  auto req = s.h.Build(FUSE_IOCTL, kFile, FuseBody().Add(in).Raw("\x01\x02\x03\x04"));
  SECTION("answered") {
    FuseReply r = s.h.Do(req);
    CHECK(s.b().last() == "Ioctl 9 fh=20 flags=0x2 cmd=0x80086601 arg=0xdead in=4 out_size=16");
    CHECK(s.b().bytes == std::vector<uint8_t>{1, 2, 3, 4});
    auto out = Zeroed<fuse_ioctl_out>();
    out.result = -7;
    std::vector<uint8_t> want = AsBytes(out);
    want.insert(want.end(), {1, 2, 3});
    REQUIRE(r.error() == 0);
    CHECK(r.header.len == 16 + 16 + 3);
    CHECK(r.body == want);
  }
  SECTION("more output than out_size: EINVAL") {
    s.b().ioctl.out.assign(17, 9);
    CHECK(s.h.Errno(req) == -EINVAL);
  }
}

TEST_CASE("POLL") {
  Session s;
  s.b().u32 = POLLIN;
  auto want = Zeroed<fuse_poll_out>();
  want.revents = POLLIN;
  CheckBody(s.h.Do(s.h.Build(FUSE_POLL, kFile,
                             FuseBody().Add(fuse_poll_in{21, 0x1234, FUSE_POLL_SCHEDULE_NOTIFY,
                                                         POLLIN | POLLOUT}))),
            want);
  CHECK(s.b().last() == "Poll 9 fh=21 kh=4660 flags=1 events=0x5");
}

TEST_CASE("FALLOCATE") {
  Session s;
  CheckEmptyOk(s.h.Do(
      s.h.Build(FUSE_FALLOCATE, kFile, FuseBody().Add(fuse_fallocate_in{22, 100, 200, 1, 0}))));
  CHECK(s.b().last() == "Fallocate 9 fh=22 off=100 len=200 mode=1");
}

TEST_CASE("LSEEK") {
  Session s;
  s.b().u64 = 8192;
  auto want = Zeroed<fuse_lseek_out>();
  want.offset = 8192;
  CheckBody(
      s.h.Do(s.h.Build(FUSE_LSEEK, kFile, FuseBody().Add(fuse_lseek_in{23, 5000, SEEK_DATA, 0}))),
      want);
  CHECK(s.b().last() == "Lseek 9 fh=23 off=5000 whence=3");
}

TEST_CASE("COPY_FILE_RANGE: fuse_write_out; lengths fit 32 bits") {
  Session s;
  fuse_copy_file_range_in in{24, 1, 10, 25, 2, 65536, 0};
  auto want = Zeroed<fuse_write_out>();
  want.size = 65536;
  s.b().u64 = 65536;
  SECTION("copied") {
    CheckBody(s.h.Do(s.h.Build(FUSE_COPY_FILE_RANGE, kFile, FuseBody().Add(in))), want);
    CHECK(s.b().last() == "CopyFileRange 9 fh=24 off=1 -> 10 fh=25 off=2 len=65536 flags=0");
  }
  SECTION("a length past 32 bits is clamped") {
    in.len = uint64_t{1} << 40;
    CheckBody(s.h.Do(s.h.Build(FUSE_COPY_FILE_RANGE, kFile, FuseBody().Add(in))), want);
    CHECK(s.b().last() == "CopyFileRange 9 fh=24 off=1 -> 10 fh=25 off=2 len=4294963200 flags=0");
  }
  SECTION("an answer past 32 bits is EIO") {
    s.b().u64 = uint64_t{1} << 32;
    CHECK(s.h.Errno(s.h.Build(FUSE_COPY_FILE_RANGE, kFile, FuseBody().Add(in))) == -EIO);
  }
  SECTION("an answer of more than asked is EIO") {
    s.b().u64 = 65537;
    CHECK(s.h.Errno(s.h.Build(FUSE_COPY_FILE_RANGE, kFile, FuseBody().Add(in))) == -EIO);
  }
}

TEST_CASE("WRITE answered with more bytes than were sent: EIO") {
  Session s;
  auto in = Zeroed<fuse_write_in>();
  in.size = 10;
  s.b().u32 = 11;
  CHECK(s.h.Errno(s.h.Build(FUSE_WRITE, kFile, FuseBody().Add(in).Raw("0123456789"))) == -EIO);
  s.b().u32 = 10;
  CHECK(s.h.Errno(s.h.Build(FUSE_WRITE, kFile, FuseBody().Add(in).Raw("0123456789"))) == 0);
}

TEST_CASE("READDIRPLUS: '.' and '..' are sent without a node; bad names end the listing") {
  Session s;
  Entry e;
  e.node_id = 77;
  e.attr.st.st_mode = S_IFDIR | 0755;
  s.b().dir = {{".", 1, DT_DIR, 1, e}, {"..", 2, DT_DIR, 2, e}, {"f", 3, DT_REG, 3, e},
               {"a/b", 4, DT_REG, 4, e}, {"g", 5, DT_REG, 5, e}};
  auto in = Zeroed<fuse_read_in>();
  in.size = 4096;
  FuseReply r = s.h.Do(s.h.Build(FUSE_READDIRPLUS, kDir, FuseBody().Add(in)));
  REQUIRE(r.error() == 0);
  std::vector<std::pair<std::string, uint64_t>> got;
  for (size_t pos = 0; pos < r.body.size();) {
    auto* d = reinterpret_cast<const fuse_direntplus*>(r.body.data() + pos);
    got.emplace_back(std::string(d->dirent.name, d->dirent.namelen), d->entry_out.nodeid);
    pos += FUSE_DIRENTPLUS_SIZE(d);
  }
  REQUIRE(got.size() == 3);  // Stopped at "a/b": not sent, not counted.
  CHECK(got[0] == std::make_pair(std::string("."), uint64_t{0}));
  CHECK(got[1] == std::make_pair(std::string(".."), uint64_t{0}));
  CHECK(got[2] == std::make_pair(std::string("f"), uint64_t{77}));
  CHECK(s.b().dir_added == 3);
}

TEST_CASE("SETUPMAPPING and REMOVEMAPPING") {
  Session s;
  CheckEmptyOk(s.h.Do(s.h.Build(FUSE_SETUPMAPPING, kFile,
                                FuseBody().Add(fuse_setupmapping_in{26, 0, 2 << 20, 2, 4 << 20}))));
  CHECK(s.b().last() == "SetupMapping 9 fh=26 foff=0 len=2097152 flags=2 moff=4194304");
  CheckEmptyOk(s.h.Do(s.h.Build(FUSE_REMOVEMAPPING, kFile,
                                FuseBody()
                                    .Add(fuse_removemapping_in{2})
                                    .Add(fuse_removemapping_one{0, 4096})
                                    .Add(fuse_removemapping_one{8192, 4096}))));
  CHECK(s.b().last() == "RemoveMapping 2 0+4096 8192+4096");
  SECTION("a count that disagrees with the items: EINVAL") {
    s.b().ClearCalls();
    CHECK(s.h.Errno(s.h.Build(
              FUSE_REMOVEMAPPING, kFile,
              FuseBody().Add(fuse_removemapping_in{3}).Add(fuse_removemapping_one{0, 4096}))) ==
          -EINVAL);
    CHECK(s.h.Errno(s.h.Build(FUSE_REMOVEMAPPING, kFile,
                              FuseBody().Add(fuse_removemapping_in{UINT32_MAX}))) == -EINVAL);
    CHECK(s.b().call_count() == 0);
  }
}

TEST_CASE("SYNCFS") {
  Session s;
  CheckEmptyOk(s.h.Do(s.h.Build(FUSE_SYNCFS, FUSE_ROOT_ID, FuseBody().Add(fuse_syncfs_in{0}))));
  CHECK(s.b().last() == "SyncFs 1");
}
// ======================= 2. INIT negotiation and the session's life =======================

fuse_init_in InitIn(uint32_t major, uint32_t minor, uint32_t flags, uint32_t flags2 = 0) {
  auto in = Zeroed<fuse_init_in>();
  in.major = major;
  in.minor = minor;
  in.max_readahead = testing::kDefaultMaxReadahead;
  in.flags = flags;
  in.flags2 = flags2;
  return in;
}

fuse_init_out InitOut(uint32_t minor, uint64_t flags, uint32_t max_pages = 256) {
  auto out = Zeroed<fuse_init_out>();
  out.major = 7;
  out.minor = minor;
  out.max_readahead = testing::kDefaultMaxReadahead;
  out.flags = static_cast<uint32_t>(flags);
  out.flags2 = static_cast<uint32_t>(flags >> 32);
  out.max_write = max_pages * 4096;
  out.time_gran = 1;
  out.max_pages = static_cast<uint16_t>(max_pages);
  out.map_alignment = (flags & FUSE_MAP_ALIGNMENT) ? 12 : 0;
  return out;
}

constexpr uint64_t kDefaultGranted = testing::kDefaultInitFlags;  // All protocol flags.

TEST_CASE("INIT 7.38: the reply carries what was negotiated") {
  FuseSessionOptions o;
  o.max_pages = 64;
  o.max_background = 12;
  o.congestion_threshold = 9;
  Harness h(o);
  h.backend().init_flags = FUSE_POSIX_LOCKS | FUSE_WRITEBACK_CACHE | FUSE_MAP_ALIGNMENT;
  auto in = InitIn(
      7, 38, testing::kDefaultInitFlags | FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS | FUSE_MAP_ALIGNMENT);
  in.max_readahead = 65536;
  FuseReply r = h.Do(h.Build(FUSE_INIT, 0, FuseBody().Add(in)));
  const uint64_t granted = kDefaultGranted | FUSE_POSIX_LOCKS | FUSE_MAP_ALIGNMENT;
  auto want = InitOut(38, granted, 64);
  want.max_readahead = 65536;  // The guest's, echoed.
  want.max_background = 12;
  want.congestion_threshold = 9;
  CheckBody(r, want);
  CHECK(h.session().initialized());
  CHECK(h.session().minor() == 38);
  CHECK(h.session().flags() == granted);
  CHECK(h.session().max_write() == 64 * 4096);
  CHECK(h.backend().init_minor == 38);
  CHECK(h.backend().init_negotiated == granted);
  CHECK(h.backend().calls() == std::vector<std::string>{fmt::format("Init 38 {:#x}", granted)});
}

TEST_CASE("INIT: minor negotiation") {
  Harness h;
  auto init = [&](const FuseBody& body) { return h.Do(h.Build(FUSE_INIT, 0, body)); };
  SECTION("a newer guest (7.40) gets ours, 39") {
    CheckBody(init(FuseBody().Add(InitIn(7, 40, testing::kDefaultInitFlags))),
              InitOut(39, kDefaultGranted));
    CHECK(h.session().minor() == 39);
    CHECK(h.backend().init_minor == 39);
  }
  SECTION("7.39 gets 39") {
    CheckBody(init(FuseBody().Add(InitIn(7, 39, testing::kDefaultInitFlags))),
              InitOut(39, kDefaultGranted));
  }
  SECTION("7.27 with the short pre-7.36 struct: served, no flags2") {
    CheckBody(init(FuseBody().AddPrefix(InitIn(7, 27, FUSE_ASYNC_READ | FUSE_BIG_WRITES), 16)),
              InitOut(27, FUSE_ASYNC_READ | FUSE_BIG_WRITES));
    CHECK(h.session().minor() == 27);
  }
  SECTION("7.35 sending flags2: ignored before 7.36") {
    h.backend().init_flags = FUSE_SECURITY_CTX;
    FuseReply r = init(
        FuseBody().Add(InitIn(7, 35, FUSE_ASYNC_READ | FUSE_INIT_EXT, FUSE_SECURITY_CTX >> 32)));
    auto out = r.BodyAs<fuse_init_out>();
    REQUIRE(out.ok());
    CHECK(out->minor == 35);
    CHECK(out->flags2 == 0);
    CHECK((h.session().flags() >> 32) == 0);
  }
  SECTION("7.26 is too old: EPROTO, no session") {
    CHECK(init(FuseBody().Add(InitIn(7, 26, testing::kDefaultInitFlags))).error() == -EPROTO);
    CHECK_FALSE(h.session().initialized());
    CHECK(h.backend().call_count() == 0);
    CHECK(h.Errno(BuildLookup(h.NextUnique(), 1, "x")) == -EIO);
  }
  SECTION("major 6: EPROTO") {
    CHECK(init(FuseBody().Add(InitIn(6, 38, 0))).error() == -EPROTO);
    CHECK_FALSE(h.session().initialized());
  }
  SECTION("major 8: the reply carries major 7 and the guest retries") {
    FuseReply r = init(FuseBody().Add(InitIn(8, 0, testing::kDefaultInitFlags)));
    REQUIRE(r.error() == 0);
    auto out = r.BodyAs<fuse_init_out>();
    REQUIRE(out.ok());
    CHECK(out->major == 7);
    CHECK(out->minor == kFuseMinor);
    CHECK_FALSE(h.session().initialized());
    CHECK(h.backend().call_count() == 0);
    CheckBody(init(FuseBody().Add(InitIn(7, 38, testing::kDefaultInitFlags))),
              InitOut(38, kDefaultGranted));
    CHECK(h.session().initialized());
  }
  SECTION("a body shorter than major, minor, max_readahead and flags: EINVAL") {
    CHECK(init(FuseBody().AddPrefix(InitIn(7, 38, 0), 15)).error() == -EINVAL);
    CHECK_FALSE(h.session().initialized());
  }
  SECTION("no room for fuse_init_out: ERANGE, and no session was started") {
    FuseReply r = h.Do(h.Build(FUSE_INIT, 0, FuseBody().Add(InitIn(7, 38, 0))),
                       {sizeof(fuse_out_header) + sizeof(fuse_init_out) - 1});
    CHECK(r.error() == -ERANGE);
    CHECK_FALSE(h.session().initialized());
    CHECK(h.backend().call_count() == 0);
  }
}

TEST_CASE("INIT flags: what the guest asks, the backend allows and the options allow") {
  FuseSessionOptions o;
  SECTION("the intersection, flags2 included") {
    o.allowed_init_flags = ~uint64_t{FUSE_FLOCK_LOCKS};
    Harness h(o);
    h.backend().init_flags = FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS | FUSE_DO_READDIRPLUS |
                             FUSE_WRITEBACK_CACHE | FUSE_SECURITY_CTX;
    FuseReply r = h.Init(testing::kDefaultInitFlags | FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS |
                             FUSE_DO_READDIRPLUS | FUSE_EXPORT_SUPPORT | FUSE_SETXATTR_EXT,
                         static_cast<uint32_t>((FUSE_SECURITY_CTX | FUSE_CREATE_SUPP_GROUP) >> 32));
    // FLOCK: not allowed by the options. EXPORT_SUPPORT: not by the backend.
    // WRITEBACK_CACHE: not asked. CREATE_SUPP_GROUP: not by the backend.
    const uint64_t granted = kDefaultGranted | FUSE_POSIX_LOCKS | FUSE_DO_READDIRPLUS |
                             FUSE_SETXATTR_EXT | FUSE_SECURITY_CTX;
    CheckBody(r, InitOut(38, granted));
    CHECK(h.session().flags() == granted);
    CHECK(h.backend().init_negotiated == granted);
  }
  SECTION("protocol flags are offered without the backend; backend flags are not") {
    Harness h(o);
    FuseReply r = h.Init(0x7FFFFFFF, 0xFFFFFFFF);
    const uint64_t protocol = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_INIT_EXT |
                              FUSE_SETXATTR_EXT | FUSE_ASYNC_DIO | FUSE_PARALLEL_DIROPS;
    CheckBody(r, InitOut(38, protocol));
  }
  SECTION("flags the library does not implement are never offered") {
    Harness h(o);
    h.backend().init_flags = FUSE_SPLICE_READ | FUSE_NO_OPEN_SUPPORT | FUSE_HANDLE_KILLPRIV |
                             FUSE_HAS_IOCTL_DIR | FUSE_HAS_INODE_DAX;
    FuseReply r = h.Init(testing::kDefaultInitFlags | FUSE_SPLICE_READ | FUSE_NO_OPEN_SUPPORT |
                             FUSE_HANDLE_KILLPRIV | FUSE_HAS_IOCTL_DIR,
                         static_cast<uint32_t>(FUSE_HAS_INODE_DAX >> 32));
    CheckBody(r, InitOut(38, kDefaultGranted));
  }
  SECTION("the options can withhold protocol flags too") {
    o.allowed_init_flags = ~uint64_t{FUSE_ASYNC_READ};
    Harness h(o);
    CheckBody(h.Init(), InitOut(38, kDefaultGranted & ~uint64_t{FUSE_ASYNC_READ}));
  }
  SECTION("flags2 only with FUSE_INIT_EXT") {
    Harness h(o);
    h.backend().init_flags = FUSE_SECURITY_CTX;
    FuseReply r = h.Init(testing::kDefaultInitFlags & ~FUSE_INIT_EXT,
                         static_cast<uint32_t>(FUSE_SECURITY_CTX >> 32));
    CheckBody(r, InitOut(38, kDefaultGranted & ~uint64_t{FUSE_INIT_EXT}));
  }
}

TEST_CASE("max_pages sets max_write and is clamped to 1..256") {
  for (auto [pages, want] : {std::pair<uint32_t, uint32_t>{32, 32}, {0, 1}, {1000, 256}}) {
    FuseSessionOptions o;
    o.max_pages = pages;
    Harness h(o);
    CHECK(h.session().max_write() == want * 4096);
    CheckBody(h.Init(), InitOut(38, kDefaultGranted, want));
  }
}

TEST_CASE("LimitMaxPages lowers max_pages for the next INIT only") {
  Harness h;
  h.session().LimitMaxPages(16);
  CHECK(h.session().max_write() == 16 * 4096);
  h.session().LimitMaxPages(64);  // Never raises.
  CHECK(h.session().max_write() == 16 * 4096);
  CheckBody(h.Init(), InitOut(38, kDefaultGranted, 16));
  h.session().LimitMaxPages(4);  // A live session keeps its limits.
  CHECK(h.session().max_write() == 16 * 4096);
}

TEST_CASE("Requests before INIT get EIO; no-reply requests are dropped") {
  Harness h;
  CHECK(h.Errno(BuildLookup(h.NextUnique(), 1, "x")) == -EIO);
  CHECK(h.Errno(h.Build(FUSE_GETATTR, kFile, FuseBody().Add(fuse_getattr_in{}))) == -EIO);
  CHECK(h.Errno(h.Build(FUSE_DESTROY, 0)) == -EIO);
  CHECK(h.Errno(h.Build(12345, 0)) == -EIO);  // Even an unknown opcode.
  CHECK(h.DoRaw(h.Build(FUSE_FORGET, 42, FuseBody().Add(fuse_forget_in{1}))).len == 0);
  CHECK(h.DoRaw(h.Build(FUSE_INTERRUPT, 0, FuseBody().Add(fuse_interrupt_in{2}))).len == 0);
  CHECK(h.backend().call_count() == 0);
  CHECK_FALSE(h.session().initialized());
}

TEST_CASE("INIT on a live session starts a new one (a rebooted guest)") {
  Session s;
  s.b().init_flags = FUSE_POSIX_LOCKS;
  FuseReply r = s.h.Init(testing::kDefaultInitFlags | FUSE_POSIX_LOCKS, 0, 36);
  CheckBody(r, InitOut(36, kDefaultGranted | FUSE_POSIX_LOCKS));
  CHECK(s.b().calls() ==
        std::vector<std::string>{"Destroy",
                                 fmt::format("Init 36 {:#x}", kDefaultGranted | FUSE_POSIX_LOCKS)});
  CHECK(s.h.session().initialized());
  CHECK(s.h.session().minor() == 36);
}

TEST_CASE("DESTROY ends the session; INIT starts a new one") {
  Session s;
  CheckEmptyOk(s.h.Do(s.h.Build(FUSE_DESTROY, 0)));
  CHECK(s.b().destroys == 1);
  CHECK_FALSE(s.h.session().initialized());
  CHECK(s.h.Errno(BuildLookup(s.h.NextUnique(), 1, "x")) == -EIO);
  CHECK(s.b().calls() == std::vector<std::string>{"Destroy"});
  s.h.InitOk();
  CheckBody(s.h.Do(BuildLookup(s.h.NextUnique(), 1, "x")), TestEntryOut());
  SECTION("a DESTROY with arguments is malformed") {
    s.b().ClearCalls();
    CHECK(s.h.Errno(s.h.Build(FUSE_DESTROY, 0, FuseBody().Add(uint64_t{0}))) == -EINVAL);
    CHECK(s.h.session().initialized());
    CHECK(s.b().call_count() == 0);
  }
}

TEST_CASE("Reset() ends the session once") {
  Session s;
  s.h.session().Reset();
  s.h.session().Reset();
  CHECK(s.b().destroys == 1);
  CHECK(s.h.Errno(BuildLookup(s.h.NextUnique(), 1, "x")) == -EIO);
  s.h.InitOk();
  CHECK(s.h.Errno(BuildLookup(s.h.NextUnique(), 1, "x")) == 0);
}

TEST_CASE("Requests are counted per opcode") {
  Session s;
  CHECK(s.h.session().count(FUSE_INIT) == 1);
  s.h.Do(BuildLookup(s.h.NextUnique(), 1, "x"));
  s.h.Do(BuildLookup(s.h.NextUnique(), 1, "y"));
  s.h.Do(s.h.Build(9999, 1));
  CHECK(s.h.session().count(FUSE_LOOKUP) == 2);
  CHECK(s.h.session().count(0) == 1);
  CHECK(s.h.session().count(9999) == 0);
  // Replies and errors per opcode (the test backend answers ENOSYS-free
  // lookups; the unknown opcode is ENOSYS, counted under 0).
  CHECK(s.h.session().op_stats(FUSE_LOOKUP).replies == 2);
  CHECK(s.h.session().op_stats(0).errors == 1);
  CHECK(s.h.session().in_flight() == 0);
  CHECK(FuseOpcodeName(FUSE_LOOKUP) == "LOOKUP");
  CHECK(FuseOpcodeName(FUSE_COPY_FILE_RANGE) == "COPY_FILE_RANGE");
  CHECK(FuseOpcodeName(52) == "STATX");
  CHECK(FuseOpcodeName(7) == "UNKNOWN");
  CHECK(FuseOpcodeName(9999) == "UNKNOWN");
  CHECK(FuseOpStats::BucketLimitUs(0) == 1);
  CHECK(FuseOpStats::BucketLimitUs(3) == 8);
  CHECK(std::isinf(FuseOpStats::BucketLimitUs(FuseOpStats::kBuckets - 1)));
}
// ======================= 3. Hostile input =======================

// A well-formed request of every opcode that gets a reply, with the sizes
// the decoder checks.
struct OpCase {
  std::string name;
  uint32_t opcode;
  uint64_t node;
  FuseBody body;
  size_t fixed_in;   // The leading fixed struct (0: none).
  size_t fixed_out;  // Reply payload checked before the backend runs (0: none).
};

std::vector<OpCase> AllOpCases() {
  std::vector<OpCase> v;
  auto add = [&](std::string name, uint32_t opcode, uint64_t node, FuseBody body, size_t in,
                 size_t out) {
    v.push_back({std::move(name), opcode, node, std::move(body), in, out});
  };
  auto read = Zeroed<fuse_read_in>();
  read.size = 100;
  auto write = Zeroed<fuse_write_in>();
  write.size = 4;
  auto lk = Zeroed<fuse_lk_in>();
  lk.lk.type = F_RDLCK;
  auto ioctl = Zeroed<fuse_ioctl_in>();
  ioctl.out_size = 8;
  constexpr size_t kCreateOut = sizeof(fuse_entry_out) + sizeof(fuse_open_out);
  add("LOOKUP", FUSE_LOOKUP, kDir, FuseBody().Name("x"), 0, sizeof(fuse_entry_out));
  add("GETATTR", FUSE_GETATTR, kFile, FuseBody().Add(Zeroed<fuse_getattr_in>()),
      sizeof(fuse_getattr_in), sizeof(fuse_attr_out));
  add("SETATTR", FUSE_SETATTR, kFile, FuseBody().Add(Zeroed<fuse_setattr_in>()),
      sizeof(fuse_setattr_in), sizeof(fuse_attr_out));
  add("READLINK", FUSE_READLINK, kFile, FuseBody(), 0, 0);
  add("SYMLINK", FUSE_SYMLINK, kDir, FuseBody().Name("l").Name("t"), 0, sizeof(fuse_entry_out));
  add("MKNOD", FUSE_MKNOD, kDir, FuseBody().Add(fuse_mknod_in{S_IFIFO | 0600, 0, 0, 0}).Name("p"),
      sizeof(fuse_mknod_in), sizeof(fuse_entry_out));
  add("MKDIR", FUSE_MKDIR, kDir, FuseBody().Add(fuse_mkdir_in{0755, 0}).Name("d"),
      sizeof(fuse_mkdir_in), sizeof(fuse_entry_out));
  add("UNLINK", FUSE_UNLINK, kDir, FuseBody().Name("u"), 0, 0);
  add("RMDIR", FUSE_RMDIR, kDir, FuseBody().Name("r"), 0, 0);
  add("RENAME", FUSE_RENAME, kDir, FuseBody().Add(fuse_rename_in{kDir}).Name("a").Name("b"),
      sizeof(fuse_rename_in), 0);
  add("RENAME2", FUSE_RENAME2, kDir,
      FuseBody().Add(fuse_rename2_in{kDir, 0, 0}).Name("a").Name("b"), sizeof(fuse_rename2_in), 0);
  add("LINK", FUSE_LINK, kDir, FuseBody().Add(fuse_link_in{kFile}).Name("h"), sizeof(fuse_link_in),
      sizeof(fuse_entry_out));
  add("OPEN", FUSE_OPEN, kFile, FuseBody().Add(fuse_open_in{}), sizeof(fuse_open_in),
      sizeof(fuse_open_out));
  add("READ", FUSE_READ, kFile, FuseBody().Add(read), sizeof read, 100);
  add("WRITE", FUSE_WRITE, kFile, FuseBody().Add(write).Raw("data"), sizeof write,
      sizeof(fuse_write_out));
  add("STATFS", FUSE_STATFS, kFile, FuseBody(), 0, sizeof(fuse_statfs_out));
  add("RELEASE", FUSE_RELEASE, kFile, FuseBody().Add(fuse_release_in{}), sizeof(fuse_release_in),
      0);
  add("FSYNC", FUSE_FSYNC, kFile, FuseBody().Add(fuse_fsync_in{}), sizeof(fuse_fsync_in), 0);
  add("SETXATTR", FUSE_SETXATTR, kFile,
      FuseBody().AddPrefix(fuse_setxattr_in{1, 0, 0, 0}, 8).Name("user.a").Raw("v"), 8, 0);
  add("GETXATTR", FUSE_GETXATTR, kFile, FuseBody().Add(fuse_getxattr_in{}).Name("user.a"),
      sizeof(fuse_getxattr_in), sizeof(fuse_getxattr_out));
  add("LISTXATTR", FUSE_LISTXATTR, kFile, FuseBody().Add(fuse_getxattr_in{}),
      sizeof(fuse_getxattr_in), sizeof(fuse_getxattr_out));
  add("REMOVEXATTR", FUSE_REMOVEXATTR, kFile, FuseBody().Name("user.a"), 0, 0);
  add("FLUSH", FUSE_FLUSH, kFile, FuseBody().Add(fuse_flush_in{}), sizeof(fuse_flush_in), 0);
  add("OPENDIR", FUSE_OPENDIR, kDir, FuseBody().Add(fuse_open_in{}), sizeof(fuse_open_in),
      sizeof(fuse_open_out));
  add("READDIR", FUSE_READDIR, kDir, FuseBody().Add(read), sizeof read, 0);
  add("READDIRPLUS", FUSE_READDIRPLUS, kDir, FuseBody().Add(read), sizeof read, 0);
  add("RELEASEDIR", FUSE_RELEASEDIR, kDir, FuseBody().Add(fuse_release_in{}),
      sizeof(fuse_release_in), 0);
  add("FSYNCDIR", FUSE_FSYNCDIR, kDir, FuseBody().Add(fuse_fsync_in{}), sizeof(fuse_fsync_in), 0);
  add("GETLK", FUSE_GETLK, kFile, FuseBody().Add(lk), sizeof lk, sizeof(fuse_lk_out));
  add("SETLK", FUSE_SETLK, kFile, FuseBody().Add(lk), sizeof lk, 0);
  add("SETLKW", FUSE_SETLKW, kFile, FuseBody().Add(lk), sizeof lk, 0);
  add("ACCESS", FUSE_ACCESS, kFile, FuseBody().Add(fuse_access_in{}), sizeof(fuse_access_in), 0);
  add("CREATE", FUSE_CREATE, kDir, FuseBody().Add(fuse_create_in{}).Name("c"),
      sizeof(fuse_create_in), kCreateOut);
  add("BMAP", FUSE_BMAP, kFile, FuseBody().Add(fuse_bmap_in{}), sizeof(fuse_bmap_in),
      sizeof(fuse_bmap_out));
  add("IOCTL", FUSE_IOCTL, kFile, FuseBody().Add(ioctl), sizeof ioctl, sizeof(fuse_ioctl_out) + 8);
  add("POLL", FUSE_POLL, kFile, FuseBody().Add(fuse_poll_in{}), sizeof(fuse_poll_in),
      sizeof(fuse_poll_out));
  add("FALLOCATE", FUSE_FALLOCATE, kFile, FuseBody().Add(fuse_fallocate_in{}),
      sizeof(fuse_fallocate_in), 0);
  add("LSEEK", FUSE_LSEEK, kFile, FuseBody().Add(fuse_lseek_in{}), sizeof(fuse_lseek_in),
      sizeof(fuse_lseek_out));
  add("COPY_FILE_RANGE", FUSE_COPY_FILE_RANGE, kFile, FuseBody().Add(fuse_copy_file_range_in{}),
      sizeof(fuse_copy_file_range_in), sizeof(fuse_write_out));
  add("SETUPMAPPING", FUSE_SETUPMAPPING, kFile, FuseBody().Add(fuse_setupmapping_in{}),
      sizeof(fuse_setupmapping_in), 0);
  add("REMOVEMAPPING", FUSE_REMOVEMAPPING, kFile, FuseBody().Add(fuse_removemapping_in{0}),
      sizeof(fuse_removemapping_in), 0);
  add("SYNCFS", FUSE_SYNCFS, FUSE_ROOT_ID, FuseBody().Add(fuse_syncfs_in{}), sizeof(fuse_syncfs_in),
      0);
  add("TMPFILE", FUSE_TMPFILE, kDir, FuseBody().Add(fuse_create_in{}).Name("/"),
      sizeof(fuse_create_in), kCreateOut);
  add("STATX", FUSE_STATX, kFile, FuseBody().Add(fuse_statx_in{}), sizeof(fuse_statx_in),
      sizeof(fuse_statx_out));
  return v;
}

TEST_CASE("Every operation defaults to ENOSYS in Backend") {
  Backend plain;
  Harness h({}, &plain);
  REQUIRE(h.Init().error() == 0);
  for (const OpCase& op : AllOpCases()) {
    INFO(op.name);
    CHECK(h.Errno(h.Build(op.opcode, op.node, op.body)) == -ENOSYS);
  }
}

TEST_CASE("Every well-formed request of the table is served") {
  Session s;
  for (const OpCase& op : AllOpCases()) {
    INFO(op.name);
    s.b().ClearCalls();
    CHECK(s.h.Errno(s.h.Build(op.opcode, op.node, op.body)) == 0);
    CHECK(s.b().call_count() == 1);
  }
}

TEST_CASE("Truncated fixed structs and trailing bytes: EINVAL, backend not called") {
  Session s;
  for (const OpCase& op : AllOpCases()) {
    INFO(op.name);
    if (op.fixed_in > 0) {
      std::vector<uint8_t> cut(op.body.bytes().begin(), op.body.bytes().begin() + op.fixed_in - 1);
      CHECK(s.h.Errno(BuildRequest(op.opcode, s.h.NextUnique(), op.node, cut)) == -EINVAL);
    }
    FuseBody longer = op.body;
    longer.Raw("z");
    CHECK(s.h.Errno(s.h.Build(op.opcode, op.node, longer)) == -EINVAL);
    CHECK(s.b().call_count() == 0);
  }
  SECTION("an empty body where a struct is due") {
    CHECK(s.h.Errno(s.h.Build(FUSE_GETATTR, kFile)) == -EINVAL);
    CHECK(s.h.Errno(s.h.Build(FUSE_WRITE, kFile)) == -EINVAL);
    CHECK(s.b().call_count() == 0);
  }
}

TEST_CASE("A fixed reply that does not fit the guest's space: ERANGE, backend not called") {
  Session s;
  for (const OpCase& op : AllOpCases()) {
    if (op.fixed_out == 0) continue;
    INFO(op.name);
    s.b().ClearCalls();
    const auto room = static_cast<uint32_t>(sizeof(fuse_out_header) + op.fixed_out);
    CHECK(s.h.Errno(s.h.Build(op.opcode, op.node, op.body), {room - 1}) == -ERANGE);
    CHECK(s.b().call_count() == 0);
    CHECK(s.h.Errno(s.h.Build(op.opcode, op.node, op.body), {room}) == 0);
    CHECK(s.b().call_count() == 1);
  }
}

TEST_CASE("Reply space smaller than fuse_out_header: completed with length 0") {
  Session s;
  SECTION("a fixed reply: the backend is not called") {
    for (std::vector<uint32_t> space : {std::vector<uint32_t>{}, {8}, {15}, {8, 7}}) {
      Completed c = s.h.DoRaw(BuildLookup(s.h.NextUnique(), 1, "x"), space);
      CHECK(c.len == 0);
      CHECK(std::all_of(c.writable.begin(), c.writable.end(),
                        [](uint8_t b) { return b == kPoison; }));
    }
    CHECK(s.b().call_count() == 0);
  }
  SECTION("an empty reply, an error reply: the backend is not called either") {
    CHECK(s.h.DoRaw(s.h.Build(FUSE_UNLINK, kDir, FuseBody().Name("u")), {8}).len == 0);
    CHECK(s.b().call_count() == 0);  // The guest could never learn the outcome.
    CHECK(s.h.DoRaw(s.h.Build(FUSE_UNLINK, kDir, FuseBody().Name("")), {8}).len == 0);
    CHECK(s.h.DoRaw(s.h.Build(4242, kDir), {}).len == 0);
  }
  SECTION("asynchronous answers too") {
    s.b().mode = Mode::kAsync;
    CHECK(s.h.DoRaw(s.h.Build(FUSE_RMDIR, kDir, FuseBody().Name("r")), {12}).len == 0);
  }
  // The session is unharmed.
  s.b().mode = Mode::kOk;
  CheckBody(s.h.Do(BuildLookup(s.h.NextUnique(), 1, "x")), TestEntryOut());
}

TEST_CASE("A chain shorter than fuse_in_header: completed with length 0") {
  Session s;
  std::vector<uint8_t> full = BuildLookup(s.h.NextUnique(), 1, "x");
  for (size_t n : {size_t{0}, size_t{1}, size_t{20}, sizeof(fuse_in_header) - 1}) {
    INFO(n);
    Completed c = s.h.DoRaw(std::span<const uint8_t>(full.data(), n));
    CHECK(c.len == 0);
    CHECK(
        std::all_of(c.writable.begin(), c.writable.end(), [](uint8_t b) { return b == kPoison; }));
  }
  CHECK(s.b().call_count() == 0);
}

TEST_CASE("Header length must equal the chain's readable bytes") {
  Session s;
  std::vector<uint8_t> req = BuildLookup(s.h.NextUnique(), 1, "name");
  const auto size = static_cast<uint32_t>(req.size());
  for (uint32_t len : {size + 1, size + 4096, UINT32_MAX, size - 1, uint32_t{40}, uint32_t{0}}) {
    INFO(len);
    testing::SetHeaderLen(req, len);
    CHECK(s.h.Errno(req) == -EINVAL);
  }
  SECTION("bytes trailing the request in the chain") {
    testing::SetHeaderLen(req, size);
    req.push_back(0);
    CHECK(s.h.Errno(req) == -EINVAL);
  }
  CHECK(s.b().call_count() == 0);
}

TEST_CASE("Unknown opcodes: ENOSYS") {
  Session s;
  for (uint32_t op :
       {0u, 7u, 19u, uint32_t{FUSE_NOTIFY_REPLY}, 53u, 100u, uint32_t{CUSE_INIT}, UINT32_MAX}) {
    INFO(op);
    CHECK(s.h.Errno(s.h.Build(op, 1, FuseBody().Add(uint64_t{0}))) == -ENOSYS);
  }
  CHECK(s.b().call_count() == 0);
}

TEST_CASE("Names: NUL-terminated, non-empty, no '/', at most NAME_MAX") {
  Session s;
  auto lookup = [&](std::string_view raw) {
    return s.h.Errno(s.h.Build(FUSE_LOOKUP, kDir, FuseBody().Raw(raw)));
  };
  CHECK(lookup("abc") == -EINVAL);                      // No NUL.
  CHECK(lookup(std::string_view("", 0)) == -EINVAL);    // Nothing at all.
  CHECK(lookup(std::string_view("\0", 1)) == -EINVAL);  // Empty.
  CHECK(lookup(std::string_view("a/b\0", 4)) == -EINVAL);
  CHECK(lookup(std::string_view("/\0", 2)) == -EINVAL);
  CHECK(lookup(std::string_view("ab\0c\0", 5)) == -EINVAL);  // Bytes after the NUL.
  CHECK(lookup(std::string(256, 'n') + '\0') == -ENAMETOOLONG);
  CHECK(lookup(std::string(5000, 'n') + '\0') == -ENAMETOOLONG);
  CHECK(s.b().call_count() == 0);
  CHECK(lookup(std::string(255, 'n') + '\0') == 0);
  CHECK(s.b().last() == "Lookup 5 " + std::string(255, 'n'));

  SECTION("in every name-carrying request") {
    s.b().ClearCalls();
    for (const std::string& bad : {std::string(""), std::string("a/b"), std::string(256, 'x')}) {
      INFO("name '" << bad << "'");
      const int32_t want = bad.size() > 255 ? -ENAMETOOLONG : -EINVAL;
      auto err = [&](uint32_t op, FuseBody body) { return s.h.Errno(s.h.Build(op, kDir, body)); };
      CHECK(err(FUSE_MKDIR, FuseBody().Add(fuse_mkdir_in{}).Name(bad)) == want);
      CHECK(err(FUSE_MKNOD, FuseBody().Add(fuse_mknod_in{}).Name(bad)) == want);
      CHECK(err(FUSE_CREATE, FuseBody().Add(fuse_create_in{}).Name(bad)) == want);
      CHECK(err(FUSE_SYMLINK, FuseBody().Name(bad).Name("target")) == want);
      CHECK(err(FUSE_UNLINK, FuseBody().Name(bad)) == want);
      CHECK(err(FUSE_RMDIR, FuseBody().Name(bad)) == want);
      CHECK(err(FUSE_LINK, FuseBody().Add(fuse_link_in{kFile}).Name(bad)) == want);
      CHECK(err(FUSE_RENAME, FuseBody().Add(fuse_rename_in{kDir}).Name(bad).Name("ok")) == want);
      CHECK(err(FUSE_RENAME, FuseBody().Add(fuse_rename_in{kDir}).Name("ok").Name(bad)) == want);
      CHECK(err(FUSE_RENAME2, FuseBody().Add(fuse_rename2_in{}).Name("ok").Name(bad)) == want);
    }
    CHECK(s.b().call_count() == 0);
  }
  SECTION("symlink targets: non-empty, shorter than PATH_MAX") {
    s.b().ClearCalls();
    CHECK(s.h.Errno(s.h.Build(FUSE_SYMLINK, kDir, FuseBody().Name("l").Name(""))) == -EINVAL);
    CHECK(s.h.Errno(s.h.Build(FUSE_SYMLINK, kDir,
                              FuseBody().Name("l").Name(std::string(PATH_MAX, 't')))) ==
          -ENAMETOOLONG);
    CHECK(s.h.Errno(s.h.Build(FUSE_SYMLINK, kDir, FuseBody().Name("l").Raw("t"))) == -EINVAL);
    CHECK(s.b().call_count() == 0);
    CHECK(s.h.Errno(s.h.Build(FUSE_SYMLINK, kDir,
                              FuseBody().Name("l").Name(std::string(PATH_MAX - 1, 't')))) == 0);
  }
  SECTION("xattr names: non-empty, at most XATTR_NAME_MAX") {
    s.b().ClearCalls();
    auto get = [&](const std::string& name) {
      return s.h.Errno(
          s.h.Build(FUSE_GETXATTR, kFile, FuseBody().Add(fuse_getxattr_in{}).Name(name)));
    };
    CHECK(get("") == -EINVAL);
    CHECK(get(std::string(XATTR_NAME_MAX + 1, 'x')) == -ENAMETOOLONG);
    CHECK(s.h.Errno(s.h.Build(FUSE_REMOVEXATTR, kFile, FuseBody().Name(""))) == -EINVAL);
    CHECK(s.h.Errno(s.h.Build(FUSE_REMOVEXATTR, kFile, FuseBody().Raw("user.x"))) == -EINVAL);
    CHECK(s.h.Errno(s.h.Build(FUSE_SETXATTR, kFile,
                              FuseBody().AddPrefix(fuse_setxattr_in{}, 8).Name(""))) == -EINVAL);
    CHECK(s.b().call_count() == 0);
    CHECK(get(std::string(XATTR_NAME_MAX, 'x')) == 0);
  }
}

TEST_CASE("\".\" and \"..\": allowed for LOOKUP only") {
  Session s;
  for (const char* dot : {".", ".."}) {
    INFO(dot);
    s.b().ClearCalls();
    auto err = [&](uint32_t op, FuseBody body) { return s.h.Errno(s.h.Build(op, kDir, body)); };
    CHECK(err(FUSE_MKDIR, FuseBody().Add(fuse_mkdir_in{}).Name(dot)) == -EINVAL);
    CHECK(err(FUSE_MKNOD, FuseBody().Add(fuse_mknod_in{}).Name(dot)) == -EINVAL);
    CHECK(err(FUSE_CREATE, FuseBody().Add(fuse_create_in{}).Name(dot)) == -EINVAL);
    CHECK(err(FUSE_SYMLINK, FuseBody().Name(dot).Name("t")) == -EINVAL);
    CHECK(err(FUSE_UNLINK, FuseBody().Name(dot)) == -EINVAL);
    CHECK(err(FUSE_RMDIR, FuseBody().Name(dot)) == -EINVAL);
    CHECK(err(FUSE_LINK, FuseBody().Add(fuse_link_in{kFile}).Name(dot)) == -EINVAL);
    CHECK(err(FUSE_RENAME, FuseBody().Add(fuse_rename_in{kDir}).Name(dot).Name("b")) == -EINVAL);
    CHECK(err(FUSE_RENAME, FuseBody().Add(fuse_rename_in{kDir}).Name("a").Name(dot)) == -EINVAL);
    CHECK(s.b().call_count() == 0);
    CHECK(err(FUSE_LOOKUP, FuseBody().Name(dot)) == 0);
    CHECK(s.b().last() == std::string("Lookup 5 ") + dot);
    // Names that merely start with dots are names.
    CHECK(err(FUSE_MKDIR, FuseBody().Add(fuse_mkdir_in{}).Name(std::string(dot) + "x")) == 0);
    CHECK(err(FUSE_MKDIR, FuseBody().Add(fuse_mkdir_in{}).Name("...")) == 0);
  }
}

TEST_CASE("An empty-bodied LOOKUP as the first request on a fresh thread") {
  // The argument buffer is per thread: on a new thread it has never held bytes.
  Session s;
  auto req = s.h.Build(FUSE_LOOKUP, kDir);
  Harness::Sent sent;
  std::thread t([&] { sent = s.h.Submit(req); });
  t.join();
  FuseReply r = s.h.Parse(sent, s.h.Collect(sent));
  CHECK(r.error() == -EINVAL);
  CHECK(s.b().call_count() == 0);
}

TEST_CASE("READ and READDIR larger than max_write: EINVAL") {
  FuseSessionOptions o;
  o.max_pages = 1;
  Session s(o);
  auto in = Zeroed<fuse_read_in>();
  in.size = 4097;
  CHECK(s.h.Errno(s.h.Build(FUSE_READ, kFile, FuseBody().Add(in)), {8192}) == -EINVAL);
  CHECK(s.h.Errno(s.h.Build(FUSE_READDIR, kDir, FuseBody().Add(in)), {8192}) == -EINVAL);
  CHECK(s.h.Errno(s.h.Build(FUSE_READDIRPLUS, kDir, FuseBody().Add(in)), {8192}) == -EINVAL);
  in.size = UINT32_MAX;
  CHECK(s.h.Errno(s.h.Build(FUSE_READ, kFile, FuseBody().Add(in)), {8192}) == -EINVAL);
  CHECK(s.b().call_count() == 0);
  in.size = 4096;
  s.b().read_data = std::string(4096, 'r');
  CHECK(s.h.DoRaw(s.h.Build(FUSE_READ, kFile, FuseBody().Add(in)), {16 + 4096}).len == 16 + 4096);
  SECTION("a READ whose data does not fit the reply space: ERANGE") {
    s.b().ClearCalls();
    CHECK(s.h.Errno(s.h.Build(FUSE_READ, kFile, FuseBody().Add(in)), {16 + 4095}) == -ERANGE);
    CHECK(s.b().call_count() == 0);
  }
}

TEST_CASE("WRITE: the size must be the payload's, within max_write, without extensions") {
  FuseSessionOptions o;
  o.max_pages = 1;
  Session s(o);
  auto write = [&](uint32_t size, size_t payload) {
    auto in = Zeroed<fuse_write_in>();
    in.size = size;
    return s.h.Errno(
        s.h.Build(FUSE_WRITE, kFile, FuseBody().Add(in).Raw(std::string(payload, 'w'))));
  };
  CHECK(write(10, 11) == -EINVAL);
  CHECK(write(12, 11) == -EINVAL);
  CHECK(write(UINT32_MAX, 11) == -EINVAL);
  CHECK(write(4097, 4097) == -EINVAL);  // Past max_write.
  auto in = Zeroed<fuse_write_in>();
  in.size = 8;
  const uint64_t ext = 0;
  CHECK(s.h.Errno(BuildRequestWithExtensions(FUSE_WRITE, s.h.NextUnique(), kFile,
                                             FuseBody().Add(in).Raw("12345678").bytes(),
                                             AsBytes(ext))) == -EINVAL);
  CHECK(s.b().call_count() == 0);
  s.b().u32 = 4096;
  CHECK(write(4096, 4096) == 0);
  CHECK(s.b().write_data == std::string(4096, 'w'));
}

TEST_CASE("SETXATTR: the value size must be the payload's, at most 64 KiB") {
  Session s;
  auto setx = [&](uint32_t size, size_t value) {
    return s.h.Errno(s.h.Build(FUSE_SETXATTR, kFile,
                               FuseBody()
                                   .AddPrefix(fuse_setxattr_in{size, 0, 0, 0}, 8)
                                   .Name("user.big")
                                   .Raw(std::string(value, 'v'))));
  };
  CHECK(setx(4, 5) == -EINVAL);
  CHECK(setx(6, 5) == -EINVAL);
  CHECK(setx(XATTR_SIZE_MAX + 1, XATTR_SIZE_MAX + 1) == -E2BIG);
  CHECK(setx(70000, 3) == -E2BIG);
  CHECK(setx(UINT32_MAX, 3) == -E2BIG);
  CHECK(setx(100000, 100000) == -EINVAL);  // The request itself is too large.
  CHECK(s.b().call_count() == 0);
  CHECK(setx(XATTR_SIZE_MAX, XATTR_SIZE_MAX) == 0);
  CHECK(s.b().bytes.size() == XATTR_SIZE_MAX);
  CHECK(setx(0, 0) == 0);
  CHECK(s.b().last() == "SetXattr 9 user.big size=0 flags=0 sflags=0");
}

TEST_CASE("GETXATTR and LISTXATTR sizes past the reply space: ERANGE before the backend") {
  Session s;
  CHECK(s.h.Errno(s.h.Build(FUSE_LISTXATTR, kFile,
                            FuseBody().Add(fuse_getxattr_in{UINT32_MAX, 0}))) == -ERANGE);
  CHECK(s.h.Errno(s.h.Build(FUSE_GETXATTR, kFile,
                            FuseBody().Add(fuse_getxattr_in{5000, 0}).Name("user.a"))) == -ERANGE);
  CHECK(s.b().call_count() == 0);
}

TEST_CASE("BATCH_FORGET whose count disagrees with the payload is ignored") {
  Session s;
  for (uint32_t count : {UINT32_MAX, 2u, 0x10000000u, 0u}) {
    INFO(count);
    FuseBody body;
    body.Add(fuse_batch_forget_in{count, 0}).Add(fuse_forget_one{42, 1});
    CHECK(s.h.DoRaw(s.h.Build(FUSE_BATCH_FORGET, 0, body), {}).len == 0);
  }
  FuseBody two;
  two.Add(fuse_batch_forget_in{1, 0}).Add(fuse_forget_one{42, 1}).Add(fuse_forget_one{43, 1});
  CHECK(s.h.DoRaw(s.h.Build(FUSE_BATCH_FORGET, 0, two), {}).len == 0);
  CHECK(s.h.DoRaw(s.h.Build(FUSE_BATCH_FORGET, 0, FuseBody().Add(uint32_t{1})), {}).len == 0);
  CHECK(s.h.DoRaw(s.h.Build(FUSE_FORGET, 42, FuseBody().Add(uint32_t{1})), {}).len == 0);
  CHECK(s.h.DoRaw(s.h.Build(FUSE_FORGET, 42, FuseBody().Add(fuse_forget_in{1}).Raw("x")), {}).len ==
        0);
  CHECK(s.h.DoRaw(s.h.Build(FUSE_INTERRUPT, 0, FuseBody().Add(uint32_t{1})), {}).len == 0);
  CHECK(s.b().call_count() == 0);
  // An empty batch is well formed.
  CHECK(s.h.DoRaw(s.h.Build(FUSE_BATCH_FORGET, 0, FuseBody().Add(fuse_batch_forget_in{0, 0})), {})
            .len == 0);
  CHECK(s.b().calls() == std::vector<std::string>{"BatchForget 0"});
}

TEST_CASE("SETATTR with nanoseconds of a second or more: EINVAL") {
  Session s;
  for (int field = 0; field < 3; ++field) {
    auto in = Zeroed<fuse_setattr_in>();
    (field == 0 ? in.atimensec : field == 1 ? in.mtimensec : in.ctimensec) = 1000000000;
    CHECK(s.h.Errno(s.h.Build(FUSE_SETATTR, kFile, FuseBody().Add(in))) == -EINVAL);
  }
  CHECK(s.b().call_count() == 0);
}

// ---- request extensions (7.38) ----

std::vector<uint8_t> Ext(uint32_t size, uint32_t type, size_t total) {
  FuseBody b;
  b.Add(fuse_ext_header{size, type});
  while (b.size() < total) b.Add(uint8_t{0});
  return b.bytes();
}

TEST_CASE("Extensions: the security context and supplementary groups reach the backend") {
  Harness h;
  h.backend().init_flags = FUSE_SECURITY_CTX | FUSE_CREATE_SUPP_GROUP;
  h.InitOk(testing::kDefaultInitFlags,
           static_cast<uint32_t>((FUSE_SECURITY_CTX | FUSE_CREATE_SUPP_GROUP) >> 32), 39);
  const std::string label = "system_u:object_r:tmp_t:s0";
  auto mkdir = [&](std::span<const uint8_t> ext) {
    return h.Do(BuildRequestWithExtensions(FUSE_MKDIR, h.NextUnique(), kDir,
                                           FuseBody().Add(fuse_mkdir_in{0700, 0}).Name("d").bytes(),
                                           ext));
  };
  SECTION("a security context as Linux sends it") {
    auto ext = BuildSecurityContext("security.selinux", label);
    REQUIRE(ext.size() % 8 == 0);
    CheckBody(mkdir(ext), TestEntryOut());
    CHECK(h.backend().last() == "Mkdir 5 d mode=700 umask=0");
    auto c = h.backend().ctx();
    REQUIRE(c.security_context.has_value());
    CHECK(c.security_context->first == "security.selinux");
    CHECK(c.security_context->second == label);
  }
  SECTION("no security context (nr_secctx 0)") {
    CheckBody(mkdir(BuildSecurityContext("", "")), TestEntryOut());
    CHECK_FALSE(h.backend().ctx().security_context.has_value());
  }
  SECTION("a supplementary group") {
    const uint32_t gids[] = {777};
    CheckBody(mkdir(BuildSuppGroupsExtension(gids)), TestEntryOut());
    CHECK(h.backend().ctx().supplementary_gid == std::optional<uint32_t>(777));
  }
  SECTION("both, and an unknown extension, which is skipped") {
    const uint32_t gids[] = {778};
    auto ext = BuildSecurityContext("security.selinux", label);
    auto groups = BuildSuppGroupsExtension(gids);
    auto unknown = Ext(24, 99, 24);
    ext.insert(ext.end(), unknown.begin(), unknown.end());
    ext.insert(ext.end(), groups.begin(), groups.end());
    auto r = h.Do(BuildRequestWithExtensions(
        FUSE_CREATE, h.NextUnique(), kDir,
        FuseBody().Add(fuse_create_in{O_RDWR, S_IFREG | 0600, 0, 0}).Name("f").bytes(), ext));
    CHECK(r.error() == 0);
    auto c = h.backend().ctx();
    CHECK(c.supplementary_gid == std::optional<uint32_t>(778));
    REQUIRE(c.security_context.has_value());
    CHECK(c.security_context->second == label);
  }
  SECTION("a group list of zero entries") {
    CheckBody(mkdir(BuildSuppGroupsExtension({})), TestEntryOut());
    CHECK_FALSE(h.backend().ctx().supplementary_gid.has_value());
  }
}

TEST_CASE("Malformed extensions: EINVAL, backend not called") {
  Session s;
  auto send = [&](std::span<const uint8_t> ext, uint16_t extlen) {
    auto req = BuildRequestWithExtensions(FUSE_MKDIR, s.h.NextUnique(), kDir,
                                          FuseBody().Add(fuse_mkdir_in{}).Name("d").bytes(), ext);
    fuse_in_header hdr;
    std::memcpy(&hdr, req.data(), sizeof hdr);
    hdr.total_extlen = extlen;
    std::memcpy(req.data(), &hdr, sizeof hdr);
    return s.h.Errno(req);
  };
  auto send_ext = [&](std::span<const uint8_t> ext) {
    return send(ext, static_cast<uint16_t>(ext.size() / 8));
  };
  SECTION("total_extlen larger than the body") {
    CHECK(send({}, 1) == -EINVAL);
    CHECK(send({}, 3) == -EINVAL);  // The body is 8 + 2 bytes.
    CHECK(send({}, UINT16_MAX) == -EINVAL);
  }
  SECTION("total_extlen cutting into the arguments") {
    // The last 8 body bytes taken as an extension: a header of size 0.
    CHECK(send({}, 1) == -EINVAL);
  }
  SECTION("an extension header of size 0, below 8, not a multiple of 8, past the end") {
    CHECK(send_ext(Ext(0, 99, 16)) == -EINVAL);
    CHECK(send_ext(Ext(4, 99, 16)) == -EINVAL);
    CHECK(send_ext(Ext(12, 99, 16)) == -EINVAL);
    CHECK(send_ext(Ext(24, 99, 16)) == -EINVAL);
    CHECK(send_ext(Ext(UINT32_MAX & ~7u, 99, 16)) == -EINVAL);
    // A good one followed by a bad one.
    auto two = Ext(16, 99, 16);
    auto bad = Ext(32, 99, 8);
    two.insert(two.end(), bad.begin(), bad.end());
    CHECK(send_ext(two) == -EINVAL);
  }
  SECTION("security contexts") {
    auto ctx = BuildSecurityContext("security.selinux", "label");
    auto patch32 = [](std::vector<uint8_t> v, size_t at, uint32_t value) {
      std::memcpy(v.data() + at, &value, 4);
      return v;
    };
    // Two contexts claimed (Linux sends at most one).
    CHECK(send_ext(patch32(ctx, 4, 2)) == -EINVAL);
    // A value longer than the record.
    CHECK(send_ext(patch32(ctx, 8, 1000)) == -EINVAL);
    // A name without its NUL: the record ends inside it.
    FuseBody noname;
    noname.Add(fuse_secctx_header{24, 1}).Add(fuse_secctx{0, 0}).Raw("security");
    CHECK(send_ext(noname.bytes()) == -EINVAL);
    // A record too short for fuse_secctx.
    FuseBody shortrec;
    shortrec.Add(fuse_secctx_header{8, 1});
    CHECK(send_ext(shortrec.bytes()) == -EINVAL);
    // A name longer than XATTR_NAME_MAX.
    CHECK(send_ext(BuildSecurityContext(std::string(XATTR_NAME_MAX + 1, 'n'), "v")) ==
          -ENAMETOOLONG);
  }
  SECTION("supplementary groups: more than the record holds") {
    const uint32_t gids[] = {1};
    auto g = BuildSuppGroupsExtension(gids);  // 8 + 4 + 4 bytes.
    const uint32_t many = 2;
    std::memcpy(g.data() + 8, &many, 4);
    CHECK(send_ext(g) == -EINVAL);
    const uint32_t huge = UINT32_MAX;
    std::memcpy(g.data() + 8, &huge, 4);
    CHECK(send_ext(g) == -EINVAL);
    CHECK(send_ext(Ext(8, 32, 8)) == -EINVAL);  // No fuse_supp_groups at all.
  }
  CHECK(s.b().call_count() == 0);
}

TEST_CASE("Before 7.38 the security context trails the arguments") {
  Harness h;
  h.backend().init_flags = FUSE_SECURITY_CTX;
  h.InitOk(testing::kDefaultInitFlags, static_cast<uint32_t>(FUSE_SECURITY_CTX >> 32), 36);
  REQUIRE((h.session().flags() & FUSE_SECURITY_CTX) != 0);
  auto ctx = BuildSecurityContext("security.selinux", "lbl");
  struct Op {
    uint32_t opcode;
    FuseBody args;
  };
  for (Op op : {Op{FUSE_CREATE, FuseBody().Add(fuse_create_in{}).Name("c")},
                Op{FUSE_MKNOD, FuseBody().Add(fuse_mknod_in{}).Name("n")},
                Op{FUSE_MKDIR, FuseBody().Add(fuse_mkdir_in{}).Name("d")},
                Op{FUSE_SYMLINK, FuseBody().Name("s").Name("t")},
                Op{FUSE_TMPFILE, FuseBody().Add(fuse_create_in{}).Name("/")}}) {
    INFO(op.opcode);
    h.backend().ClearCalls();
    FuseBody body = op.args;
    body.Raw(ctx);
    CHECK(h.Errno(h.Build(op.opcode, kDir, body)) == 0);
    REQUIRE(h.backend().call_count() == 1);
    auto c = h.backend().ctx();
    REQUIRE(c.security_context.has_value());
    CHECK(c.security_context->first == "security.selinux");
    CHECK(c.security_context->second == "lbl");
  }
  SECTION("a trailing header whose size is below its own") {
    h.backend().ClearCalls();
    FuseBody body;
    body.Add(fuse_mkdir_in{}).Name("d").Add(fuse_secctx_header{4, 1}).Add(fuse_secctx{0, 0});
    CHECK(h.Errno(h.Build(FUSE_MKDIR, kDir, body)) == -EINVAL);
    FuseBody body2;
    body2.Add(fuse_mkdir_in{}).Name("d").Add(fuse_secctx_header{0, 1});
    CHECK(h.Errno(h.Build(FUSE_MKDIR, kDir, body2)) == -EINVAL);
    CHECK(h.backend().call_count() == 0);
  }
  SECTION("without FUSE_SECURITY_CTX, trailing bytes are malformed") {
    Session s;
    FuseBody body;
    body.Add(fuse_mkdir_in{}).Name("d").Raw(ctx);
    CHECK(s.h.Errno(s.h.Build(FUSE_MKDIR, kDir, body)) == -EINVAL);
    CHECK(s.b().call_count() == 0);
  }
}

// ---- reply handles ----

// Captures log lines while alive.
class LogCapture {
 public:
  LogCapture() {
    SetLogSink([this](LogLevel, std::string_view m) {
      std::lock_guard l(mu_);
      lines_.emplace_back(m);
    });
  }
  ~LogCapture() { SetLogSink({}); }
  bool Contains(std::string_view s) const {
    std::lock_guard l(mu_);
    return std::any_of(lines_.begin(), lines_.end(),
                       [&](const std::string& line) { return line.find(s) != std::string::npos; });
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::string> lines_;
};

TEST_CASE("A reply dropped unanswered is EIO") {
  Session s;
  LogCapture log;
  s.b().mode = Mode::kDrop;
  CHECK(s.h.Errno(BuildLookup(s.h.NextUnique(), 1, "x")) == -EIO);
  CHECK(log.Contains("dropped unanswered"));
  CHECK(s.h.Errno(s.h.Build(FUSE_UNLINK, kDir, FuseBody().Name("u"))) == -EIO);
  auto in = Zeroed<fuse_read_in>();
  in.size = 10;
  CHECK(s.h.Errno(s.h.Build(FUSE_READ, kFile, FuseBody().Add(in))) == -EIO);
  in.size = 100;
  CHECK(s.h.Errno(s.h.Build(FUSE_READDIR, kDir, FuseBody().Add(in))) == -EIO);
}

TEST_CASE("A reply answered twice: the first answer counts, one completion") {
  Session s;
  LogCapture log;
  s.b().mode = Mode::kTwice;
  CheckBody(s.h.Do(BuildLookup(s.h.NextUnique(), 1, "x")), TestEntryOut());
  CHECK(log.Contains("answered twice"));
  CheckEmptyOk(s.h.Do(s.h.Build(FUSE_UNLINK, kDir, FuseBody().Name("u"))));
  s.b().read_data = "abc";
  auto in = Zeroed<fuse_read_in>();
  in.size = 10;
  FuseReply r = s.h.Do(s.h.Build(FUSE_READ, kFile, FuseBody().Add(in)));
  CHECK(std::string(r.body.begin(), r.body.end()) == "abc");
  s.b().dir = {{"a", 10, DT_REG, 1, {}}};
  in.size = 100;
  r = s.h.Do(s.h.Build(FUSE_READDIR, kDir, FuseBody().Add(in)));
  CHECK(r.body.size() == 32);
  // Another request still works: nothing completed twice (the harness counts).
  s.b().mode = Mode::kOk;
  CheckBody(s.h.Do(BuildLookup(s.h.NextUnique(), 1, "x")), TestEntryOut());
}

TEST_CASE("Error(): errno as given; 0, negative or out-of-range values become EIO") {
  Session s;
  s.b().mode = Mode::kError;
  for (auto [given, want] : {std::pair<int, int>{EAGAIN, -EAGAIN},
                             {ENOTDIR, -ENOTDIR},
                             {511, -511},
                             {0, -EIO},
                             {-ENOENT, -EIO},
                             {512, -EIO},
                             {100000, -EIO},
                             {INT32_MIN, -EIO}}) {
    INFO(given);
    s.b().error = given;
    CHECK(s.h.Errno(BuildLookup(s.h.NextUnique(), 1, "x")) == want);
  }
}

TEST_CASE("An exception out of the backend becomes EIO") {
  Session s;
  s.b().mode = Mode::kThrow;
  CHECK(s.h.Errno(BuildLookup(s.h.NextUnique(), 1, "x")) == -EIO);
  CHECK(s.h.Errno(s.h.Build(FUSE_UNLINK, kDir, FuseBody().Name("u"))) == -EIO);
  s.b().mode = Mode::kOk;
  CheckBody(s.h.Do(BuildLookup(s.h.NextUnique(), 1, "x")), TestEntryOut());
}

TEST_CASE("Many requests answered from other threads, in any order") {
  Session s;
  s.b().mode = Mode::kAsync;
  s.b().hold = true;
  std::vector<Harness::Sent> sent;
  for (int i = 0; i < 64; ++i) {
    if (i % 2 == 0) {
      sent.push_back(s.h.Submit(BuildLookup(s.h.NextUnique(), 1, fmt::format("n{}", i))));
    } else {
      sent.push_back(s.h.Submit(s.h.Build(FUSE_GETATTR, kFile, FuseBody().Add(fuse_getattr_in{}))));
    }
  }
  std::this_thread::sleep_for(20ms);
  for (const auto& x : sent) CHECK_FALSE(s.h.IsDone(x));
  s.b().hold = false;
  for (size_t i = sent.size(); i-- > 0;) {
    Completed c = s.h.Collect(sent[i]);
    CHECK(c.thread != std::this_thread::get_id());
    FuseReply r = s.h.Parse(sent[i], c);
    if (i % 2 == 0) {
      CheckBody(r, TestEntryOut());
    } else {
      CheckBody(r, TestAttrOut());
    }
  }
  CHECK(s.b().call_count() == 64);
}

}  // namespace
}  // namespace virtiofs
