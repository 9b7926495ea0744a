// Fuzz target: FUSE INIT negotiation on the passthrough backend over a
// temporary directory. An input is a script: byte 0 picks one of four
// session configurations (max_pages, allowed INIT flags), then each step is
// an INIT with fuzzed fields (major, every minor 0 to 99, flags, flags2,
// max_readahead, short / long bodies, small reply space) or a request
// before / after it (GETATTR, LOOKUP, STATFS, WRITE around max_write,
// DESTROY, FORGET, an unknown opcode). Each reply is checked against a model
// of the session, and the target aborts when an invariant breaks:
//  - every request that needs a reply and has room for its header gets
//    exactly one well-formed reply, with its unique id;
//  - a successful INIT's reply: major 7, minor min(asked, ours), flags a
//    subset of what was asked and of what is offered (configuration and
//    backend), every asked protocol flag that is allowed granted, flags2
//    only for minor >= 36 with FUSE_INIT_EXT, max_write = the configured
//    max_pages * 4096 (1 to 256 pages), max_pages = max_write / 4096,
//    max_readahead not above the guest's;
//  - an INIT refused (old minor or major: EPROTO; newer major: our version,
//    no session) leaves no session: the next request gets EIO; a malformed
//    one (body under 16 bytes: EINVAL, no room for the reply: ERANGE) leaves
//    the session as it was;
//  - before INIT and after DESTROY requests get EIO; on a live session a
//    WRITE above max_write gets EINVAL and one within it reaches the backend.
#include <linux/fuse.h>
#include <stdlib.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/driver_queue.h"
#include "tests/support/fuse_request.h"
#include "tests/support/guest_ram.h"
#include "virtiofs/fuse_session.h"
#include "virtiofs/log.h"
#include "virtiofs/passthrough.h"

using namespace virtiofs;  // NOLINT: a fuzz target.

namespace {

#define INIT_FUZZ_CHECK(cond)                                                                \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      std::fprintf(stderr, "init_fuzz: invariant broken at line %d: %s\n", __LINE__, #cond); \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)

// Flags the session implements by itself (lib/fuse/session.cc offers them
// to any backend).
constexpr uint64_t kProtocolFlags = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES |
                                    FUSE_INIT_EXT | FUSE_SETXATTR_EXT | FUSE_ASYNC_DIO |
                                    FUSE_PARALLEL_DIROPS;

struct Config {
  uint32_t max_pages;       // Asked of the session.
  uint32_t expected_pages;  // What it must use (clamped to 1..256).
  uint64_t allowed;
};
constexpr std::array<Config, 4> kConfigs = {{
    {256, 256, ~uint64_t{0}},
    {0, 1, ~uint64_t{0}},
    {32, 32, FUSE_ASYNC_READ | FUSE_DO_READDIRPLUS | FUSE_INIT_EXT | FUSE_SECURITY_CTX},
    {1000, 256, ~uint64_t{FUSE_INIT_EXT | FUSE_MAX_PAGES}},
}};

// Reads the script; zeros once it runs out.
class Script {
 public:
  Script(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  uint8_t U8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint32_t U32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t{U8()} << (8 * i);
    return v;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

struct Answer {
  bool replied = false;  // A used element with a non-zero length.
  testing::FuseReply reply;
};

class Rig : public CompletionSink {
 public:
  explicit Rig(const Config& c)
      : config_(c),
        ram_(testing::GuestRam::CreateOrDie(8 << 20, testing::GuestRam::Backing::kAnonymous)),
        driver_(*ram_, 16, 0, 0x10000, (8 << 20) - 0x10000),
        queue_(*SplitQueue::Create(driver_.config(), ram_->map())) {
    char dir[] = "/tmp/virtiofs-initfuzz-XXXXXX";
    root_ = mkdtemp(dir);
    std::FILE* f = std::fopen((root_ + "/f").c_str(), "w");
    if (f != nullptr) std::fclose(f);
    PassthroughOptions o;
    o.root = root_;
    o.xattr = true;
    backend_ = *PassthroughBackend::Create(o);
    FuseSessionOptions so;
    so.max_pages = c.max_pages;
    so.allowed_init_flags = c.allowed;
    session_ = std::make_unique<FuseSession>(backend_.get(), so);
  }

  void Complete(DescriptorChain chain, uint32_t len) override {
    std::lock_guard lock(mu_);
    (void)queue_.AddUsed(chain.head(), len);
    queue_.PublishUsed();
  }

  // Sends one request with `reply` bytes of reply space and waits for its
  // used element (every request here is answered at once or by a worker).
  Answer Send(const std::vector<uint8_t>& req, uint32_t reply) {
    uint64_t unique = 0;
    if (req.size() >= sizeof(fuse_in_header)) {
      fuse_in_header h;
      std::memcpy(&h, req.data(), sizeof h);
      unique = h.unique;
    }
    DescriptorChain chain;
    uint64_t reply_gpa = 0;
    {
      std::lock_guard lock(mu_);
      driver_.ResetAlloc();
      std::vector<testing::DriverQueue::Buffer> bufs;
      const uint64_t in = driver_.Alloc(req.size());
      ram_->Write(in, req.data(), req.size());
      bufs.push_back({in, static_cast<uint32_t>(req.size()), false});
      if (reply > 0) {
        reply_gpa = driver_.Alloc(reply);
        bufs.push_back({reply_gpa, reply, true});
      }
      INIT_FUZZ_CHECK(driver_.AddChain(bufs).has_value());
      auto r = queue_.Pop(&chain);
      INIT_FUZZ_CHECK(r.ok() && *r);
    }
    session_->Handle(std::move(chain), this);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (;;) {
      std::optional<testing::DriverQueue::UsedElem> used;
      {
        std::lock_guard lock(mu_);
        used = driver_.PopUsed();
      }
      if (used) {
        Answer a;
        INIT_FUZZ_CHECK(used->len <= reply);
        if (used->len == 0) return a;
        auto parsed = testing::ReadReply(*ram_, reply_gpa, used->len, unique);
        INIT_FUZZ_CHECK(parsed.ok());
        a.replied = true;
        a.reply = *std::move(parsed);
        return a;
      }
      INIT_FUZZ_CHECK(std::chrono::steady_clock::now() < deadline);  // A lost request.
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  uint64_t NextUnique() { return unique_ += 2; }
  FuseSession& session() { return *session_; }
  const Config& config() const { return config_; }
  Backend* backend() { return backend_.get(); }
  const std::string& root() const { return root_; }

 private:
  Config config_;
  std::unique_ptr<testing::GuestRam> ram_;
  testing::DriverQueue driver_;
  SplitQueue queue_;
  std::mutex mu_;
  std::string root_;
  std::unique_ptr<PassthroughBackend> backend_;
  std::unique_ptr<FuseSession> session_;
  uint64_t unique_ = 0;
};

std::vector<uint8_t> Bytes(const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  return std::vector<uint8_t>(b, b + n);
}

void FuzzInit(Rig& rig, Script& s) {
  const uint8_t mode = s.U8();
  fuse_init_in in{};
  in.major = (mode & 0x80) ? s.U8() : FUSE_KERNEL_VERSION;
  in.minor = s.U8() % 100;
  in.max_readahead = s.U32();
  in.flags = s.U32();
  in.flags2 = s.U32();
  // Body: the whole struct, the pre-7.36 16 bytes, or any length 0..80
  // (past the struct: trailing bytes).
  size_t body_len = sizeof in;
  if ((mode & 0x03) == 1) body_len = 16;
  if ((mode & 0x03) == 2) body_len = s.U8() % 81;
  std::vector<uint8_t> body = Bytes(&in, sizeof in);
  body.resize(body_len, 0xa5);
  // Reply space: plenty, or any size below what the reply needs.
  uint32_t reply = 4096;
  if (mode & 0x04) reply = s.U8() % (sizeof(fuse_out_header) + sizeof(fuse_init_out) + 8);

  const bool was_live = rig.session().initialized();
  Answer a = rig.Send(testing::BuildRequest(FUSE_INIT, rig.NextUnique(), 0, body), reply);
  const bool live = rig.session().initialized();
  if (reply < sizeof(fuse_out_header)) {
    // No room for any answer: dropped, nothing changed.
    INIT_FUZZ_CHECK(!a.replied && live == was_live);
    return;
  }
  INIT_FUZZ_CHECK(a.replied);
  const int32_t err = a.reply.error();
  if (body_len < 16) {
    INIT_FUZZ_CHECK(err == -EINVAL && live == was_live);
    return;
  }
  if (reply < sizeof(fuse_out_header) + sizeof(fuse_init_out)) {
    INIT_FUZZ_CHECK(err == -ERANGE && live == was_live);
    return;
  }
  // What the session may read: fields past the body are zero.
  fuse_init_in seen{};
  std::memcpy(&seen, body.data(), std::min(body_len, sizeof seen));
  if (seen.major > FUSE_KERNEL_VERSION) {
    // Ours, for the guest to retry with: no session.
    INIT_FUZZ_CHECK(err == 0 && !live);
    auto out = a.reply.BodyAs<fuse_init_out>();
    INIT_FUZZ_CHECK(out.ok() && out->major == FUSE_KERNEL_VERSION && out->minor == kFuseMinor);
    return;
  }
  if (seen.major < FUSE_KERNEL_VERSION || seen.minor < kFuseMinMinor) {
    INIT_FUZZ_CHECK(err == -EPROTO && !live);
    return;
  }
  INIT_FUZZ_CHECK(err == 0 && live);
  auto out = a.reply.BodyAs<fuse_init_out>();
  INIT_FUZZ_CHECK(out.ok());
  INIT_FUZZ_CHECK(out->major == FUSE_KERNEL_VERSION);
  INIT_FUZZ_CHECK(out->minor == std::min(seen.minor, kFuseMinor));
  const bool ext = seen.minor >= 36 && (seen.flags & FUSE_INIT_EXT);
  const uint64_t wanted = seen.flags | (ext ? uint64_t{seen.flags2} << 32 : 0);
  const uint64_t got = out->flags | uint64_t{out->flags2} << 32;
  if (!ext) INIT_FUZZ_CHECK(out->flags2 == 0);
  const uint64_t allowed = rig.config().allowed;
  const uint64_t offered = allowed & (kProtocolFlags | rig.backend()->InitFlags());
  INIT_FUZZ_CHECK((got & ~wanted) == 0);
  INIT_FUZZ_CHECK((got & ~offered) == 0);
  INIT_FUZZ_CHECK((wanted & allowed & kProtocolFlags & ~got) == 0);
  INIT_FUZZ_CHECK(rig.session().flags() == got);
  INIT_FUZZ_CHECK(rig.session().minor() == out->minor);
  INIT_FUZZ_CHECK(out->max_write == rig.config().expected_pages * 4096);
  INIT_FUZZ_CHECK(out->max_write >= 4096 && out->max_write <= 256 * 4096);
  INIT_FUZZ_CHECK(out->max_pages == out->max_write / 4096);
  INIT_FUZZ_CHECK(out->max_readahead <= seen.max_readahead);
  INIT_FUZZ_CHECK(((got & FUSE_MAP_ALIGNMENT) != 0) == (out->map_alignment != 0));
}

// A request that needs a session: EIO without one, `ok_error` with one.
void Probe(Rig& rig, const std::vector<uint8_t>& req, int32_t ok_error) {
  const bool live = rig.session().initialized();
  Answer a = rig.Send(req, 4096);
  INIT_FUZZ_CHECK(a.replied);
  INIT_FUZZ_CHECK(a.reply.error() == (live ? ok_error : -EIO));
}

// One step; `wrote` limits WRITEs (up to 1 MiB each) to one per input.
void Step(Rig& rig, Script& s, bool* wrote) {
  uint8_t op = s.U8() % 9;
  if (op == 5 && *wrote) op = 2;
  if (op == 5) *wrote = true;
  switch (op) {
    case 0:
    case 1:
      FuzzInit(rig, s);
      return;
    case 2: {
      fuse_getattr_in g{};
      Probe(
          rig,
          testing::BuildRequest(FUSE_GETATTR, rig.NextUnique(), FUSE_ROOT_ID, Bytes(&g, sizeof g)),
          0);
      return;
    }
    case 3: {
      const bool live = rig.session().initialized();
      Answer a = rig.Send(testing::BuildLookup(rig.NextUnique(), FUSE_ROOT_ID, "f"), 4096);
      INIT_FUZZ_CHECK(a.replied && a.reply.error() == (live ? 0 : -EIO));
      if (!live) return;
      auto e = a.reply.BodyPrefixAs<fuse_entry_out>(FUSE_COMPAT_ENTRY_OUT_SIZE);
      INIT_FUZZ_CHECK(e.ok() && e->nodeid != 0);
      // Given back at once, as a guest that drops its dentry does.
      fuse_forget_in f{1};
      Answer fa = rig.Send(
          testing::BuildRequest(FUSE_FORGET, rig.NextUnique(), e->nodeid, Bytes(&f, sizeof f)),
          4096);
      INIT_FUZZ_CHECK(!fa.replied);
      return;
    }
    case 4:
      Probe(rig, testing::BuildRequest(FUSE_STATFS, rig.NextUnique(), FUSE_ROOT_ID, {}), 0);
      return;
    case 5: {
      // A WRITE of max_write - 2 .. max_write + 2 bytes on a handle that does
      // not exist: the size limit comes first (EINVAL), else the backend
      // refuses the handle (EBADF).
      const uint32_t max_write = rig.session().max_write();
      const uint32_t size = max_write - 2 + s.U8() % 5;
      fuse_write_in w{};
      w.fh = ~uint64_t{0};
      w.size = size;
      std::vector<uint8_t> body = Bytes(&w, sizeof w);
      body.resize(sizeof w + size, 0x5a);
      Probe(rig, testing::BuildRequest(FUSE_WRITE, rig.NextUnique(), FUSE_ROOT_ID, body),
            size > max_write ? -EINVAL : -EBADF);
      return;
    }
    case 6: {
      const bool live = rig.session().initialized();
      Answer a = rig.Send(testing::BuildRequest(FUSE_DESTROY, rig.NextUnique(), 0, {}), 4096);
      INIT_FUZZ_CHECK(a.replied && a.reply.error() == (live ? 0 : -EIO));
      INIT_FUZZ_CHECK(!rig.session().initialized());
      return;
    }
    case 7: {
      // No reply either way, and no change.
      const bool live = rig.session().initialized();
      fuse_forget_in f{s.U8()};
      Answer a = rig.Send(
          testing::BuildRequest(FUSE_FORGET, rig.NextUnique(), s.U8(), Bytes(&f, sizeof f)), 4096);
      INIT_FUZZ_CHECK(!a.replied && rig.session().initialized() == live);
      return;
    }
    case 8:
      Probe(rig, testing::BuildRequest(200 + s.U8(), rig.NextUnique(), FUSE_ROOT_ID, {}), -ENOSYS);
      return;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::array<Rig*, kConfigs.size()>* rigs = [] {
    SetLogLevel(LogLevel::kError);
    auto* r = new std::array<Rig*, kConfigs.size()>();  // Lives for the process.
    for (size_t i = 0; i < kConfigs.size(); ++i) (*r)[i] = new Rig(kConfigs[i]);
    // The temporary directories go at exit (the rigs themselves stay).
    std::atexit([] {
      std::error_code ignored;
      for (Rig* rig : *rigs) std::filesystem::remove_all(rig->root(), ignored);
    });
    return r;
  }();
  if (size < 1) return 0;
  Rig& rig = *(*rigs)[data[0] % kConfigs.size()];
  Script s(data + 1, size - 1);
  bool wrote = false;
  for (int steps = 0; steps < 32 && !s.empty(); ++steps) Step(rig, s, &wrote);
  return 0;
}
