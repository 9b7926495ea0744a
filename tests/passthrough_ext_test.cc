// PassthroughBackend's extended operations through the FUSE session, against
// a temporary host directory: xattrs and ACLs, POSIX (OFD) and flock locks
// with SETLKW answered from other threads, fallocate, lseek,
// copy_file_range, O_TMPFILE, syncfs and the ioctl allow-list; each checked
// against what the host sees. Cases the host file system cannot do are
// skipped with a warning.
#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <tuple>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/host_files.h"
#include "tests/support/driver_queue.h"
#include "tests/support/fuse_harness.h"
#include "tests/support/fuse_request.h"
#include "tests/support/guest_ram.h"
#include "virtiofs/passthrough.h"

namespace virtiofs {
namespace {

using testing::CountThreads;
using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;

using testing::BuildLookup;
using testing::BuildRequest;
using testing::DriverQueue;
using testing::FuseBody;
using testing::FuseHarness;
using testing::FuseReply;
using testing::GuestRam;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr uint64_t kOffsetMax = INT64_MAX;  // FUSE's "to the end of the file".

std::string HostGetXattr(const std::string& path, const char* name) {
  char buf[65536];
  const ssize_t n = lgetxattr(path.c_str(), name, buf, sizeof buf);
  if (n < 0) return "<errno " + std::to_string(errno) + ">";
  return std::string(buf, static_cast<size_t>(n));
}

bool IsRoot() { return geteuid() == 0; }

// What the session offers when asked: locks, the extended SETXATTR struct
// (setxattr_flags) and ACLs.
constexpr uint64_t kInitFlags =
    FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS | FUSE_SETXATTR_EXT | FUSE_POSIX_ACL | FUSE_DONT_MASK;

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
    harness->Init(kInitFlags);
  }
  FuseReply Call(uint32_t opcode, uint64_t node, const FuseBody& body = FuseBody(),
                 uint32_t reply = 4096, uint32_t uid = 0, uint32_t gid = 0) {
    return harness->Call(
        BuildRequest(opcode, harness->NextUnique(), node, body.bytes(), uid, gid), reply);
  }
  uint64_t Lookup(uint64_t parent, std::string_view name) {
    auto r = harness->Call(BuildLookup(harness->NextUnique(), parent, name));
    INFO("lookup " << name);
    REQUIRE(r.error() == 0);
    return r.BodyAs<fuse_entry_out>()->nodeid;
  }
  uint64_t Open(uint64_t node, uint32_t flags) {
    fuse_open_in in{flags, 0};
    auto r = Call(FUSE_OPEN, node, FuseBody().Add(in));
    REQUIRE(r.error() == 0);
    return r.BodyAs<fuse_open_out>()->fh;
  }
  void Forget(uint64_t node, uint64_t n = 1) {  // No reply.
    Call(FUSE_FORGET, node, FuseBody().Add(fuse_forget_in{n}), 0);
  }
  uint64_t OpenDir(uint64_t node) {
    fuse_open_in in{O_RDONLY, 0};
    auto r = Call(FUSE_OPENDIR, node, FuseBody().Add(in));
    REQUIRE(r.error() == 0);
    return r.BodyAs<fuse_open_out>()->fh;
  }

  // ---- xattrs ----
  int SetXattr(uint64_t node, std::string_view name, std::string_view value, uint32_t flags = 0,
               uint32_t setxattr_flags = 0, uint32_t uid = 0, uint32_t gid = 0) {
    fuse_setxattr_in in{};
    in.size = static_cast<uint32_t>(value.size());
    in.flags = flags;
    in.setxattr_flags = setxattr_flags;
    return Call(FUSE_SETXATTR, node, FuseBody().Add(in).Name(name).Raw(value), 4096, uid, gid)
        .error();
  }
  FuseReply GetXattr(uint64_t node, std::string_view name, uint32_t size, uint32_t uid = 0,
                     uint32_t gid = 0) {
    fuse_getxattr_in in{};
    in.size = size;
    return Call(FUSE_GETXATTR, node, FuseBody().Add(in).Name(name), 16 + 65536, uid, gid);
  }
  // The whole value as a guest reads it: size probe, then the value.
  std::string GetXattrValue(uint64_t node, std::string_view name, uint32_t uid = 0,
                            uint32_t gid = 0) {
    auto probe = GetXattr(node, name, 0, uid, gid);
    if (probe.error() != 0) return "<errno " + std::to_string(-probe.error()) + ">";
    const uint32_t size = probe.BodyAs<fuse_getxattr_out>()->size;
    if (size == 0) return "";
    auto r = GetXattr(node, name, size, uid, gid);
    REQUIRE(r.error() == 0);
    return std::string(r.body.begin(), r.body.end());
  }
  FuseReply ListXattr(uint64_t node, uint32_t size, uint32_t uid = 0, uint32_t gid = 0) {
    fuse_getxattr_in in{};
    in.size = size;
    return Call(FUSE_LISTXATTR, node, FuseBody().Add(in), 16 + 65536, uid, gid);
  }
  std::vector<std::string> ListXattrNames(uint64_t node, uint32_t uid = 0, uint32_t gid = 0) {
    auto probe = ListXattr(node, 0, uid, gid);
    REQUIRE(probe.error() == 0);
    const uint32_t size = probe.BodyAs<fuse_getxattr_out>()->size;
    std::vector<std::string> names;
    if (size == 0) return names;
    auto r = ListXattr(node, size, uid, gid);
    REQUIRE(r.error() == 0);
    std::string all(r.body.begin(), r.body.end());
    for (size_t pos = 0; pos < all.size();) {
      const size_t end = all.find('\0', pos);
      REQUIRE(end != std::string::npos);
      names.push_back(all.substr(pos, end - pos));
      pos = end + 1;
    }
    std::sort(names.begin(), names.end());
    return names;
  }
  int RemoveXattr(uint64_t node, std::string_view name, uint32_t uid = 0, uint32_t gid = 0) {
    return Call(FUSE_REMOVEXATTR, node, FuseBody().Name(name), 4096, uid, gid).error();
  }

  TempDir dir;
  std::unique_ptr<PassthroughBackend> backend;
  std::unique_ptr<FuseHarness> harness;
};

// A lock request of guest process (lock owner) `owner`.
FuseBody LockBody(uint64_t fh, uint32_t type, uint64_t start, uint64_t end, bool flock = false,
                  uint64_t owner = 0x1234) {
  fuse_lk_in in{};
  in.fh = fh;
  in.owner = owner;
  in.lk.start = start;
  in.lk.end = end;
  in.lk.type = type;
  in.lk.pid = 42;
  in.lk_flags = flock ? FUSE_LK_FLOCK : 0;
  return FuseBody().Add(in);
}

// Requests in flight at once, on a queue of its own that shares the
// harness's session (as a device's second request queue would):
// FuseHarness::Call waits for each answer, and a SETLKW is not answered
// until its lock is free.
class AsyncQueue : public CompletionSink {
 public:
  static constexpr uint64_t kRamSize = 4 << 20;
  static constexpr uint64_t kDataGpa = 0x10000;

  explicit AsyncQueue(FuseSession& session)
      : session_(session),
        ram_(GuestRam::CreateOrDie(kRamSize)),
        driver_(*ram_, 256, 0, kDataGpa, kRamSize - kDataGpa),
        queue_(MakeQueue(driver_, *ram_)) {}

  // Sends `request`; returns its unique id once the session has taken it
  // (the backend may answer later, from another thread).
  uint64_t Submit(const std::vector<uint8_t>& request, uint32_t reply_size = 4096) {
    fuse_in_header h;
    std::memcpy(&h, request.data(), sizeof h);
    DescriptorChain chain;
    {
      std::lock_guard lock(mu_);
      if (in_flight_.empty()) driver_.ResetAlloc();
      const uint64_t in = driver_.Alloc(request.size());
      const uint64_t out = driver_.Alloc(reply_size);
      ram_->Write(in, request.data(), request.size());
      std::vector<DriverQueue::Buffer> bufs = {{in, static_cast<uint32_t>(request.size()), false},
                                               {out, reply_size, true}};
      auto head = driver_.AddChain(bufs);
      REQUIRE(head);
      in_flight_[*head] = out;
      auto popped = queue_.Pop(&chain);
      REQUIRE(popped.ok());
      REQUIRE(*popped);
    }
    session_.Handle(std::move(chain), this);  // May complete inline: no lock held.
    return h.unique;
  }

  bool Done(uint64_t unique) {
    std::lock_guard lock(mu_);
    return replies_.count(unique) != 0;
  }

  // The reply to `unique`, or nullopt after `timeout`.
  std::optional<FuseReply> Wait(uint64_t unique, std::chrono::milliseconds timeout = 5s) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return replies_.count(unique) != 0; })) {
      return std::nullopt;
    }
    FuseReply r = std::move(replies_[unique]);
    replies_.erase(unique);
    return r;
  }

  void Complete(DescriptorChain chain, uint32_t reply_length) override {
    std::lock_guard lock(mu_);
    (void)queue_.AddUsed(chain.head(), reply_length);
    queue_.PublishUsed();
    while (auto used = driver_.PopUsed()) {
      auto it = in_flight_.find(static_cast<uint16_t>(used->id));
      if (it == in_flight_.end()) continue;
      std::vector<uint8_t> bytes(used->len);
      if (used->len > 0) ram_->Read(it->second, bytes.data(), bytes.size());
      in_flight_.erase(it);
      FuseReply r;
      if (bytes.size() >= sizeof(fuse_out_header)) {
        std::memcpy(&r.header, bytes.data(), sizeof r.header);
        r.body.assign(bytes.begin() + sizeof(fuse_out_header), bytes.end());
      }
      replies_[r.header.unique] = std::move(r);
    }
    cv_.notify_all();
  }

 private:
  static SplitQueue MakeQueue(const DriverQueue& d, const GuestRam& ram) {
    auto q = SplitQueue::Create(d.config(), ram.map());
    REQUIRE(q.ok());
    return *std::move(q);
  }

  FuseSession& session_;
  std::unique_ptr<GuestRam> ram_;
  DriverQueue driver_;
  SplitQueue queue_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint16_t, uint64_t> in_flight_;     // Head -> reply buffer.
  std::map<uint64_t, FuseReply> replies_;      // Unique -> reply.
};

// A host OFD lock on `fd` (no wait); returns the errno.
int HostLock(int fd, short type, off_t start, off_t len) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = start;
  fl.l_len = len;
  return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : errno;
}

// What the host reports against a `type` lock on [start, start + len).
struct flock HostGetLk(int fd, short type, off_t start, off_t len) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = start;
  fl.l_len = len;
  REQUIRE(fcntl(fd, F_OFD_GETLK, &fl) == 0);
  return fl;
}

bool HostHasUserXattrs(const std::string& dir) {
  const std::string probe = dir + "/.xattr-probe";
  WriteFile(probe, "");
  const bool ok = setxattr(probe.c_str(), "user.probe", "1", 1, 0) == 0;
  unlink(probe.c_str());
  return ok;
}

// ---------------------------------------------------------------------------
// Extended attributes.

TEST_CASE("xattrs on files and directories match the host") {
  Env e;
  if (!HostHasUserXattrs(e.dir.path)) {
    WARN("the host file system has no user xattrs; skipped");
    return;
  }
  WriteFile(e.dir / "f", "x");
  fs::create_directory(e.dir / "d");
  const uint64_t f = e.Lookup(FUSE_ROOT_ID, "f");
  const uint64_t d = e.Lookup(FUSE_ROOT_ID, "d");

  REQUIRE(e.SetXattr(f, "user.color", "blue") == 0);
  CHECK(HostGetXattr(e.dir / "f", "user.color") == "blue");

  // Size probe, exact size, too small.
  auto probe = e.GetXattr(f, "user.color", 0);
  REQUIRE(probe.error() == 0);
  CHECK(probe.BodyAs<fuse_getxattr_out>()->size == 4);
  auto exact = e.GetXattr(f, "user.color", 4);
  REQUIRE(exact.error() == 0);
  CHECK(std::string(exact.body.begin(), exact.body.end()) == "blue");
  CHECK(e.GetXattr(f, "user.color", 3).error() == -ERANGE);

  // XATTR_CREATE / XATTR_REPLACE and missing names.
  CHECK(e.SetXattr(f, "user.color", "red", XATTR_CREATE) == -EEXIST);
  CHECK(e.SetXattr(f, "user.size", "big", XATTR_REPLACE) == -ENODATA);
  CHECK(e.SetXattr(f, "user.color", "red", XATTR_REPLACE) == 0);
  CHECK(HostGetXattr(e.dir / "f", "user.color") == "red");
  CHECK(e.GetXattr(f, "user.none", 0).error() == -ENODATA);
  CHECK(e.GetXattr(f, "user.none", 100).error() == -ENODATA);

  // Binary values, empty values, a large value.
  const std::string binary("a\0b\xff", 4);
  CHECK(e.SetXattr(f, "user.bin", binary) == 0);
  CHECK(HostGetXattr(e.dir / "f", "user.bin") == binary);
  CHECK(e.GetXattrValue(f, "user.bin") == binary);
  CHECK(e.SetXattr(f, "user.empty", "") == 0);
  CHECK(e.GetXattrValue(f, "user.empty").empty());
  const std::string large(3000, 'L');
  CHECK(e.SetXattr(f, "user.large", large) == 0);
  CHECK(e.GetXattrValue(f, "user.large") == large);

  // What the host sets, the guest lists.
  REQUIRE(setxattr((e.dir / "f").c_str(), "user.host", "h", 1, 0) == 0);
  CHECK(e.ListXattrNames(f) == std::vector<std::string>{"user.bin", "user.color", "user.empty",
                                                        "user.host", "user.large"});
  CHECK(e.GetXattrValue(f, "user.host") == "h");
  CHECK(e.ListXattr(f, 3).error() == -ERANGE);

  CHECK(e.RemoveXattr(f, "user.color") == 0);
  CHECK(HostGetXattr(e.dir / "f", "user.color") == "<errno " + std::to_string(ENODATA) + ">");
  CHECK(e.RemoveXattr(f, "user.color") == -ENODATA);

  // Directories, the root included.
  CHECK(e.SetXattr(d, "user.dir", "yes") == 0);
  CHECK(HostGetXattr(e.dir / "d", "user.dir") == "yes");
  CHECK(e.ListXattrNames(d) == std::vector<std::string>{"user.dir"});
  CHECK(e.SetXattr(FUSE_ROOT_ID, "user.root", "r") == 0);
  CHECK(HostGetXattr(e.dir.path, "user.root") == "r");
  CHECK(e.RemoveXattr(d, "user.dir") == 0);
  CHECK(e.ListXattrNames(d).empty());

  // Unknown nodes.
  CHECK(e.SetXattr(999999, "user.x", "1") == -EBADF);
  CHECK(e.GetXattr(999999, "user.x", 0).error() == -EBADF);
  CHECK(e.ListXattr(999999, 0).error() == -EBADF);
  CHECK(e.RemoveXattr(999999, "user.x") == -EBADF);
}

TEST_CASE("xattrmap: rules are checked") {
  CHECK(ValidateXattrMap(":map::user.virtiofs.:").ok());
  CHECK(ValidateXattrMap(":prefix:all::user.virtiofs.::bad:all:::").ok());
  CHECK(ValidateXattrMap("/prefix/all/trusted./user.virtiofs./\n /bad/server//trusted./\n"
                         " /bad/client/user.virtiofs.//\n /ok/all///").ok());
  CHECK(ValidateXattrMap(" :ok:client:user.:: :ok:server::user.: :bad:all::: ").ok());
  // Names left unmatched on either side, bad syntax.
  CHECK_FALSE(ValidateXattrMap(":ok:client:user.::").ok());
  CHECK_FALSE(ValidateXattrMap(":ok:client:::").ok());  // No server catch-all.
  CHECK_FALSE(ValidateXattrMap(":ok:all::").ok());
  CHECK_FALSE(ValidateXattrMap(":rename:all:::").ok());
  CHECK_FALSE(ValidateXattrMap(":ok:both:::").ok());
  CHECK_FALSE(ValidateXattrMap(":map:::").ok());  // Nothing to prepend.
  CHECK_FALSE(ValidateXattrMap(":map::a.: :ok:all:::").ok());  // map must be last.
  PassthroughOptions o;
  o.root = "/tmp";
  o.xattrmap = ":ok:client:::";
  CHECK(absl::IsInvalidArgument(PassthroughBackend::Create(o).status()));
}

TEST_CASE("xattrmap: guest names are prefixed on the host, host names hidden or stripped") {
  if (geteuid() != 0) {
    WARN("not root: trusted.* xattrs need CAP_SYS_ADMIN; skipped");
    return;
  }
  PassthroughOptions o;
  o.xattr = true;
  // Example 2 of virtiofsd's documentation: trusted.* lives in
  // user.virtiofs.trusted.* on the host, the rest passes.
  o.xattrmap = "/map/trusted./user.virtiofs./";
  Env e(o);
  if (!HostHasUserXattrs(e.dir.path)) {
    WARN("the host file system has no user xattrs; skipped");
    return;
  }
  WriteFile(e.dir / "f", "x");
  const uint64_t f = e.Lookup(FUSE_ROOT_ID, "f");
  REQUIRE(e.SetXattr(f, "trusted.overlay", "o") == 0);
  CHECK(HostGetXattr(e.dir / "f", "user.virtiofs.trusted.overlay") == "o");
  CHECK(HostGetXattr(e.dir / "f", "trusted.overlay") ==
        "<errno " + std::to_string(ENODATA) + ">");
  CHECK(e.GetXattrValue(f, "trusted.overlay") == "o");
  REQUIRE(e.SetXattr(f, "user.plain", "p") == 0);
  CHECK(HostGetXattr(e.dir / "f", "user.plain") == "p");
  // The guest may not reach the prefixed names directly (EPERM)...
  CHECK(e.SetXattr(f, "user.virtiofs.trusted.overlay", "forged") == -EPERM);
  CHECK(e.GetXattr(f, "user.virtiofs.trusted.overlay", 0).error() == -EPERM);
  CHECK(e.RemoveXattr(f, "user.virtiofs.x") == -EPERM);
  // ...and the host's own trusted.* names are hidden from its listing.
  REQUIRE(setxattr((e.dir / "f").c_str(), "trusted.host", "h", 1, 0) == 0);
  CHECK(e.ListXattrNames(f) == std::vector<std::string>{"trusted.overlay", "user.plain"});
  CHECK(e.RemoveXattr(f, "trusted.overlay") == 0);
  CHECK(HostGetXattr(e.dir / "f", "user.virtiofs.trusted.overlay") ==
        "<errno " + std::to_string(ENODATA) + ">");
  CHECK(e.ListXattrNames(f) == std::vector<std::string>{"user.plain"});
}

TEST_CASE("xattrmap: unsupported and bad rules refuse, ok passes") {
  PassthroughOptions o;
  o.xattr = true;
  o.xattrmap = ":unsupported:all:security.:security.: :bad:client:trusted.:: :ok:all:::";
  Env e(o);
  if (!HostHasUserXattrs(e.dir.path)) {
    WARN("the host file system has no user xattrs; skipped");
    return;
  }
  WriteFile(e.dir / "f", "x");
  const uint64_t f = e.Lookup(FUSE_ROOT_ID, "f");
  CHECK(e.SetXattr(f, "security.selinux", "x") == -ENOTSUP);
  CHECK(e.GetXattr(f, "security.selinux", 0).error() == -ENOTSUP);
  CHECK(e.SetXattr(f, "trusted.x", "x") == -EPERM);
  CHECK(e.SetXattr(f, "user.ok", "v") == 0);
  CHECK(HostGetXattr(e.dir / "f", "user.ok") == "v");
  CHECK(e.ListXattrNames(f) == std::vector<std::string>{"user.ok"});
}

TEST_CASE("xattrs of symlinks and special files are the node's own") {
  if (!IsRoot()) {
    WARN("not root: trusted.* xattrs need CAP_SYS_ADMIN; skipped");
    return;
  }
  Env e;
  WriteFile(e.dir / "target", "t");
  REQUIRE(symlink("target", (e.dir / "ln").c_str()) == 0);
  REQUIRE(mkfifo((e.dir / "fifo").c_str(), 0644) == 0);
  if (lsetxattr((e.dir / "ln").c_str(), "trusted.probe", "1", 1, 0) != 0) {
    WARN("the host file system has no trusted xattrs on symlinks; skipped");
    return;
  }
  REQUIRE(lremovexattr((e.dir / "ln").c_str(), "trusted.probe") == 0);
  const uint64_t ln = e.Lookup(FUSE_ROOT_ID, "ln");
  const uint64_t fifo = e.Lookup(FUSE_ROOT_ID, "fifo");

  // On the symlink, never on its target.
  REQUIRE(e.SetXattr(ln, "trusted.link", "L") == 0);
  CHECK(HostGetXattr(e.dir / "ln", "trusted.link") == "L");
  CHECK(HostGetXattr(e.dir / "target", "trusted.link") ==
        "<errno " + std::to_string(ENODATA) + ">");
  CHECK(e.GetXattrValue(ln, "trusted.link") == "L");
  CHECK(e.ListXattrNames(ln) == std::vector<std::string>{"trusted.link"});
  CHECK(e.RemoveXattr(ln, "trusted.link") == 0);
  CHECK(HostGetXattr(e.dir / "ln", "trusted.link") == "<errno " + std::to_string(ENODATA) + ">");
  // The host's rule: user.* only on regular files and directories.
  CHECK(e.SetXattr(ln, "user.x", "1") == -EPERM);

  // A fifo is never opened (an open would block here: no writer).
  REQUIRE(e.SetXattr(fifo, "trusted.pipe", "P") == 0);
  CHECK(HostGetXattr(e.dir / "fifo", "trusted.pipe") == "P");
  CHECK(e.GetXattrValue(fifo, "trusted.pipe") == "P");
  CHECK(e.RemoveXattr(fifo, "trusted.pipe") == 0);
  CHECK(e.ListXattrNames(fifo).empty());
}

TEST_CASE("xattr calls are checked as the caller") {
  if (!IsRoot()) {
    WARN("not root: fs ids cannot be switched; skipped");
    return;
  }
  Env e;
  if (!HostHasUserXattrs(e.dir.path)) {
    WARN("the host file system has no user xattrs; skipped");
    return;
  }
  REQUIRE(chmod(e.dir.path.c_str(), 0755) == 0);
  WriteFile(e.dir / "mine", "m");
  REQUIRE(chown((e.dir / "mine").c_str(), 1000, 1000) == 0);
  WriteFile(e.dir / "roots", "r");
  REQUIRE(chmod((e.dir / "roots").c_str(), 0644) == 0);
  const uint64_t mine = e.Lookup(FUSE_ROOT_ID, "mine");
  const uint64_t roots = e.Lookup(FUSE_ROOT_ID, "roots");

  // trusted.* needs CAP_SYS_ADMIN, which a non-root caller does not have.
  CHECK(e.SetXattr(mine, "trusted.t", "1", 0, 0, 1000, 1000) == -EPERM);
  CHECK(HostGetXattr(e.dir / "mine", "trusted.t") == "<errno " + std::to_string(ENODATA) + ">");
  REQUIRE(e.SetXattr(mine, "trusted.t", "1") == 0);  // Root can.
  CHECK(e.GetXattr(mine, "trusted.t", 0, 1000, 1000).error() == -ENODATA);
  CHECK(e.RemoveXattr(mine, "trusted.t", 1000, 1000) == -EPERM);
  REQUIRE(e.SetXattr(mine, "user.u", "2") == 0);
  CHECK(e.ListXattrNames(mine, 1000, 1000) == std::vector<std::string>{"user.u"});
  CHECK(e.ListXattrNames(mine) == std::vector<std::string>{"trusted.t", "user.u"});

  // user.* needs write permission...
  CHECK(e.SetXattr(roots, "user.u", "1", 0, 0, 1000, 1000) == -EACCES);
  CHECK(e.RemoveXattr(roots, "user.u", 1000, 1000) == -EACCES);
  // ...and not read permission: a write-only file of the caller's.
  REQUIRE(chmod((e.dir / "mine").c_str(), 0200) == 0);
  CHECK(e.SetXattr(mine, "user.w", "w", 0, 0, 1000, 1000) == 0);
  CHECK(HostGetXattr(e.dir / "mine", "user.w") == "w");
  // Reading user.* needs read permission.
  CHECK(e.GetXattr(mine, "user.w", 0, 1000, 1000).error() == -EACCES);
  CHECK(e.GetXattrValue(mine, "user.w") == "w");  // Root.
}

TEST_CASE("xattrs: disabled is ENOSYS, read-only is EROFS") {
  {
    PassthroughOptions o;
    o.xattr = false;
    Env e(o);
    WriteFile(e.dir / "f", "x");
    const uint64_t f = e.Lookup(FUSE_ROOT_ID, "f");
    CHECK(e.SetXattr(f, "user.a", "1") == -ENOSYS);
    CHECK(e.GetXattr(f, "user.a", 0).error() == -ENOSYS);
    CHECK(e.ListXattr(f, 0).error() == -ENOSYS);
    CHECK(e.RemoveXattr(f, "user.a") == -ENOSYS);
  }
  PassthroughOptions o;
  o.readonly = true;
  Env e(o);
  if (!HostHasUserXattrs(e.dir.path)) {
    WARN("the host file system has no user xattrs; skipped");
    return;
  }
  WriteFile(e.dir / "f", "x");
  REQUIRE(setxattr((e.dir / "f").c_str(), "user.a", "1", 1, 0) == 0);
  const uint64_t f = e.Lookup(FUSE_ROOT_ID, "f");
  CHECK(e.SetXattr(f, "user.b", "1") == -EROFS);
  CHECK(e.RemoveXattr(f, "user.a") == -EROFS);
  CHECK(e.GetXattrValue(f, "user.a") == "1");
  CHECK(e.ListXattrNames(f) == std::vector<std::string>{"user.a"});
}

// A POSIX ACL in its xattr form (<linux/posix_acl_xattr.h>).
std::string AclXattr(std::initializer_list<std::tuple<uint16_t, uint16_t, uint32_t>> entries) {
  std::string out;
  auto put = [&](const void* p, size_t n) { out.append(static_cast<const char*>(p), n); };
  const uint32_t version = 2;
  put(&version, 4);
  for (auto [tag, perm, id] : entries) {
    put(&tag, 2);
    put(&perm, 2);
    put(&id, 4);
  }
  return out;
}
constexpr uint16_t kUserObj = 0x01, kUser = 0x02, kGroupObj = 0x04, kMask = 0x10, kOther = 0x20;
constexpr uint32_t kNoId = 0xffffffff;

TEST_CASE("POSIX ACLs pass through; ACL_KILL_SGID drops setgid") {
  if (!IsRoot()) {
    WARN("not root: ownership and fs ids cannot be set; skipped");
    return;
  }
  PassthroughOptions o;
  o.posix_acl = true;
  Env e(o);
  const std::string acl = AclXattr({{kUserObj, 7, kNoId},
                                    {kUser, 6, 1234},
                                    {kGroupObj, 5, kNoId},
                                    {kMask, 7, kNoId},
                                    {kOther, 4, kNoId}});
  WriteFile(e.dir / "probe", "");
  if (setxattr((e.dir / "probe").c_str(), "system.posix_acl_access", acl.data(), acl.size(), 0) !=
      0) {
    WARN("the host file system has no POSIX ACLs; skipped");
    return;
  }
  WriteFile(e.dir / "f", "x");
  const uint64_t f = e.Lookup(FUSE_ROOT_ID, "f");
  REQUIRE(e.SetXattr(f, "system.posix_acl_access", acl) == 0);
  CHECK(HostGetXattr(e.dir / "f", "system.posix_acl_access") == acl);
  CHECK(e.GetXattrValue(f, "system.posix_acl_access") == acl);
  struct stat st;
  REQUIRE(stat((e.dir / "f").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0774);  // The group bits are the mask's.

  // A default ACL on a directory.
  fs::create_directory(e.dir / "d");
  const uint64_t d = e.Lookup(FUSE_ROOT_ID, "d");
  const std::string def = AclXattr({{kUserObj, 7, kNoId}, {kGroupObj, 5, kNoId}, {kOther, 0, kNoId}});
  REQUIRE(e.SetXattr(d, "system.posix_acl_default", def) == 0);
  CHECK(HostGetXattr(e.dir / "d", "system.posix_acl_default") == def);
  CHECK(e.RemoveXattr(d, "system.posix_acl_default") == 0);

  // A setgid file of user 1000, group 2000.
  REQUIRE(chmod(e.dir.path.c_str(), 0755) == 0);
  auto setgid_file = [&](const char* name) {
    WriteFile(e.dir / name, "x");
    REQUIRE(chown((e.dir / name).c_str(), 1000, 2000) == 0);
    REQUIRE(chmod((e.dir / name).c_str(), 02775) == 0);
    return e.Lookup(FUSE_ROOT_ID, name);
  };
  auto mode_of = [&](const char* name) {
    struct stat s;
    REQUIRE(stat((e.dir / name).c_str(), &s) == 0);
    return s.st_mode & 07777;
  };
  const std::string owner_acl =
      AclXattr({{kUserObj, 7, kNoId}, {kGroupObj, 5, kNoId}, {kOther, 5, kNoId}});
  // The owner, not in the file's group: S_ISGID goes.
  const uint64_t a = setgid_file("a");
  REQUIRE(e.SetXattr(a, "system.posix_acl_access", owner_acl, 0, FUSE_SETXATTR_ACL_KILL_SGID,
                     1000, 1000) == 0);
  CHECK(mode_of("a") == 0755);
  // The owner in the file's group keeps it, and so does root.
  const uint64_t b = setgid_file("b");
  REQUIRE(e.SetXattr(b, "system.posix_acl_access", owner_acl, 0, FUSE_SETXATTR_ACL_KILL_SGID,
                     1000, 2000) == 0);
  CHECK(mode_of("b") == 02755);
  const uint64_t c = setgid_file("c");
  REQUIRE(e.SetXattr(c, "system.posix_acl_access", owner_acl, 0, FUSE_SETXATTR_ACL_KILL_SGID) ==
          0);
  CHECK(mode_of("c") == 02755);
  // Not the owner: refused by the host, nothing changes.
  const uint64_t g = setgid_file("g");
  CHECK(e.SetXattr(g, "system.posix_acl_access", owner_acl, 0, FUSE_SETXATTR_ACL_KILL_SGID, 1001,
                   1001) == -EPERM);
  CHECK(mode_of("g") == 02775);
}

// ---------------------------------------------------------------------------
// Locks.

struct LockFile {
  explicit LockFile(Env& e) {
    WriteFile(e.dir / "locked", std::string(1000, 'l'));
    node = e.Lookup(FUSE_ROOT_ID, "locked");
    path = e.dir / "locked";
    host = open(path.c_str(), O_RDWR | O_CLOEXEC);
    REQUIRE(host >= 0);
  }
  ~LockFile() { close(host); }
  uint64_t node;
  std::string path;
  int host;  // The host's own open file.
};

TEST_CASE("POSIX locks are host OFD locks, one per guest lock owner") {
  Env e;
  LockFile lf(e);
  const uint64_t a = e.Open(lf.node, O_RDWR), b = e.Open(lf.node, O_RDWR);
  // Two guest processes (lock owners), P1 and P2.
  auto lk = [&](uint64_t fh, uint32_t type, uint64_t start, uint64_t end, uint64_t owner) {
    return LockBody(fh, type, start, end, /*flock=*/false, owner);
  };
  constexpr uint64_t kP1 = 0x1234, kP2 = 0x5678;

  REQUIRE(e.Call(FUSE_SETLK, lf.node, lk(a, F_WRLCK, 0, 99, kP1)).error() == 0);
  // The host sees the guest's lock (an OFD lock: pid -1).
  struct flock seen = HostGetLk(lf.host, F_RDLCK, 0, 0);
  CHECK(seen.l_type == F_WRLCK);
  CHECK(seen.l_start == 0);
  CHECK(seen.l_len == 100);
  CHECK(seen.l_pid == -1);

  // Another owner conflicts, through another open file or the same one (a
  // forked process sharing it); the holder's own handles do not.
  for (uint64_t fh : {b, a}) {
    INFO("P2 through handle " << fh);
    auto got = e.Call(FUSE_GETLK, lf.node, lk(fh, F_RDLCK, 50, 60, kP2));
    REQUIRE(got.error() == 0);
    CHECK(got.BodyAs<fuse_lk_out>()->lk.type == F_WRLCK);
    CHECK(got.BodyAs<fuse_lk_out>()->lk.start == 0);
    CHECK(got.BodyAs<fuse_lk_out>()->lk.end == 99);
    CHECK(got.BodyAs<fuse_lk_out>()->lk.pid == 0);
    CHECK(e.Call(FUSE_SETLK, lf.node, lk(fh, F_RDLCK, 50, 60, kP2)).error() == -EAGAIN);
  }
  for (uint64_t fh : {a, b}) {
    auto own = e.Call(FUSE_GETLK, lf.node, lk(fh, F_WRLCK, 0, kOffsetMax, kP1));
    REQUIRE(own.error() == 0);
    CHECK(own.BodyAs<fuse_lk_out>()->lk.type == F_UNLCK);
  }
  // P1 changes its lock through its other handle, as one process may.
  CHECK(e.Call(FUSE_SETLK, lf.node, lk(b, F_RDLCK, 0, 49, kP1)).error() == 0);
  CHECK(e.Call(FUSE_SETLK, lf.node, lk(a, F_RDLCK, 0, 10, kP2)).error() == 0);
  CHECK(e.Call(FUSE_SETLK, lf.node, lk(b, F_WRLCK, 100, 199, kP2)).error() == 0);
  CHECK(HostLock(lf.host, F_RDLCK, 150, 10) == EAGAIN);

  // Unlock: the host sees the range free.
  REQUIRE(e.Call(FUSE_SETLK, lf.node, lk(a, F_UNLCK, 0, 99, kP1)).error() == 0);
  REQUIRE(e.Call(FUSE_SETLK, lf.node, lk(a, F_UNLCK, 0, 99, kP2)).error() == 0);
  CHECK(HostGetLk(lf.host, F_WRLCK, 0, 100).l_type == F_UNLCK);
  CHECK(HostLock(lf.host, F_RDLCK, 0, 10) == 0);
  // An owner that never locked unlocks nothing, successfully.
  CHECK(e.Call(FUSE_SETLK, lf.node, lk(a, F_UNLCK, 0, kOffsetMax, 0x9999)).error() == 0);

  // A host lock to the end of the file against guest ranges.
  REQUIRE(HostLock(lf.host, F_WRLCK, 500, 0) == 0);
  CHECK(e.Call(FUSE_SETLK, lf.node, lk(a, F_RDLCK, 600, 700, kP1)).error() == -EAGAIN);
  auto host_lock = e.Call(FUSE_GETLK, lf.node, lk(a, F_RDLCK, 600, kOffsetMax, kP1));
  REQUIRE(host_lock.error() == 0);
  CHECK(host_lock.BodyAs<fuse_lk_out>()->lk.type == F_WRLCK);
  CHECK(host_lock.BodyAs<fuse_lk_out>()->lk.start == 500);
  CHECK(host_lock.BodyAs<fuse_lk_out>()->lk.end == kOffsetMax);
  CHECK(e.Call(FUSE_SETLK, lf.node, lk(a, F_RDLCK, 300, 499, kP1)).error() == 0);

  // A close(2) by P2, of any of its descriptors of the file (FLUSH with its
  // lock_owner), drops P2's locks; P1's stay.
  fuse_flush_in flush{};
  flush.fh = a;
  flush.lock_owner = kP2;
  REQUIRE(e.Call(FUSE_FLUSH, lf.node, FuseBody().Add(flush)).error() == 0);
  CHECK(HostGetLk(lf.host, F_WRLCK, 100, 100).l_type == F_UNLCK);
  CHECK(HostGetLk(lf.host, F_WRLCK, 300, 200).l_type == F_RDLCK);
  // And the last FORGET of the node drops every owner's.
  fuse_release_in rel{b, 0, 0, 0};
  REQUIRE(e.Call(FUSE_RELEASE, lf.node, FuseBody().Add(rel)).error() == 0);

  // Bad ranges and handles.
  CHECK(e.Call(FUSE_SETLK, lf.node, lk(a, F_WRLCK, 10, 5, kP1)).error() == -EINVAL);
  CHECK(e.Call(FUSE_SETLK, lf.node, lk(a, F_WRLCK, 0, kOffsetMax + 1, kP1)).error() == -EINVAL);
  CHECK(e.Call(FUSE_GETLK, lf.node, lk(a, F_WRLCK, 7, 6, kP1)).error() == -EINVAL);
  CHECK(e.Call(FUSE_SETLK, lf.node, lk(b, F_WRLCK, 0, 1, kP1)).error() == -EBADF);
  CHECK(e.Call(FUSE_GETLK, lf.node, lk(4242, F_WRLCK, 0, 1, kP1)).error() == -EBADF);
  CHECK(e.Call(FUSE_SETLKW, lf.node, lk(4242, F_WRLCK, 0, 1, kP1)).error() == -EBADF);

  fuse_release_in rel_a{a, 0, 0, 0};
  REQUIRE(e.Call(FUSE_RELEASE, lf.node, FuseBody().Add(rel_a)).error() == 0);
  CHECK(HostGetLk(lf.host, F_WRLCK, 300, 200).l_type == F_RDLCK);  // Not the owner's close.
  e.Forget(lf.node);
  CHECK(HostGetLk(lf.host, F_WRLCK, 300, 200).l_type == F_UNLCK);
}

TEST_CASE("lock owners are bounded; their descriptors go with FLUSH and FORGET") {
  rlimit rl;
  REQUIRE(getrlimit(RLIMIT_NOFILE, &rl) == 0);
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < 6000) {
    WARN("skipped: RLIMIT_NOFILE hard limit " << rl.rlim_max << " < 6000");
    return;
  }
  const rlimit saved = rl;
  rl.rlim_cur = 6000;
  REQUIRE(setrlimit(RLIMIT_NOFILE, &rl) == 0);
  {
    Env e;
    const int start = testing::CountFds();
    LockFile lf(e);
    const uint64_t a = e.Open(lf.node, O_RDWR);
    const int fds = testing::CountFds();
    constexpr uint64_t kOwners = 4096;  // PassthroughFs::kMaxLockOwners
    for (uint64_t owner = 1; owner <= kOwners; ++owner) {
      auto r = e.Call(FUSE_SETLK, lf.node, LockBody(a, F_RDLCK, owner, owner, false, owner));
      if (r.error() != 0) FAIL("owner " << owner << ": error " << r.error());
    }
    CHECK(testing::CountFds() == fds + static_cast<int>(kOwners));
    // One owner more: the lock table is full.
    CHECK(e.Call(FUSE_SETLK, lf.node, LockBody(a, F_RDLCK, 0, 0, false, kOwners + 1)).error() ==
          -ENOLCK);
    // An owner's close frees its entry.
    fuse_flush_in flush{};
    flush.fh = a;
    flush.lock_owner = 7;
    REQUIRE(e.Call(FUSE_FLUSH, lf.node, FuseBody().Add(flush)).error() == 0);
    CHECK(e.Call(FUSE_SETLK, lf.node, LockBody(a, F_RDLCK, 0, 0, false, kOwners + 1)).error() == 0);
    fuse_release_in rel{a, 0, 0, 0};
    REQUIRE(e.Call(FUSE_RELEASE, lf.node, FuseBody().Add(rel)).error() == 0);
    e.Forget(lf.node);
    // The handle's, the node's and every owner's descriptor went (the host's
    // own is left).
    CHECK(testing::CountFds() == start + 1);
    CHECK(HostGetLk(lf.host, F_WRLCK, 0, 0).l_type == F_UNLCK);
  }
  setrlimit(RLIMIT_NOFILE, &saved);
}

TEST_CASE("a host process's lock: GETLK reports it without the host pid") {
  Env e;
  LockFile lf(e);
  const uint64_t a = e.Open(lf.node, O_RDWR);
  int ready[2], finish[2];
  REQUIRE(pipe(ready) == 0);
  REQUIRE(pipe(finish) == 0);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // A classic POSIX lock, owned by this process.
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 10;
    fl.l_len = 10;
    const char ok = fcntl(lf.host, F_SETLK, &fl) == 0 ? 'y' : 'n';
    (void)!write(ready[1], &ok, 1);
    char c;
    (void)!read(finish[0], &c, 1);
    _exit(0);
  }
  char ok = 0;
  REQUIRE(read(ready[0], &ok, 1) == 1);
  REQUIRE(ok == 'y');
  auto got = e.Call(FUSE_GETLK, lf.node, LockBody(a, F_RDLCK, 0, kOffsetMax));
  REQUIRE(got.error() == 0);
  CHECK(got.BodyAs<fuse_lk_out>()->lk.type == F_WRLCK);
  CHECK(got.BodyAs<fuse_lk_out>()->lk.start == 10);
  CHECK(got.BodyAs<fuse_lk_out>()->lk.end == 19);
  CHECK(got.BodyAs<fuse_lk_out>()->lk.pid == 0);  // Not the host's pid.
  CHECK(e.Call(FUSE_SETLK, lf.node, LockBody(a, F_WRLCK, 15, 15)).error() == -EAGAIN);
  REQUIRE(write(finish[1], "x", 1) == 1);
  int status;
  REQUIRE(waitpid(child, &status, 0) == child);
  CHECK(e.Call(FUSE_SETLK, lf.node, LockBody(a, F_WRLCK, 15, 15)).error() == 0);
  for (int fd : {ready[0], ready[1], finish[0], finish[1]}) close(fd);
}

TEST_CASE("SETLKW waits on a thread of its own: the queue goes on") {
  Env e;
  LockFile lf(e);
  const uint64_t a = e.Open(lf.node, O_RDWR);
  REQUIRE(HostLock(lf.host, F_WRLCK, 0, 0) == 0);
  CHECK(e.Call(FUSE_SETLK, lf.node, LockBody(a, F_WRLCK, 0, kOffsetMax)).error() == -EAGAIN);

  AsyncQueue q(e.harness->session());
  // If the backend blocked here, Submit would never return (and the test
  // would time out).
  const auto start = std::chrono::steady_clock::now();
  const uint64_t wait = q.Submit(BuildRequest(FUSE_SETLKW, e.harness->NextUnique(), lf.node,
                                              LockBody(a, F_WRLCK, 0, kOffsetMax).bytes()));
  CHECK(std::chrono::steady_clock::now() - start < 1s);
  CHECK(!q.Done(wait));

  // Meanwhile requests on the same queue, and on the harness's, complete.
  for (int i = 0; i < 3; ++i) {
    const uint64_t attr = q.Submit(BuildRequest(FUSE_GETATTR, e.harness->NextUnique(), lf.node,
                                                FuseBody().Add(fuse_getattr_in{}).bytes()));
    auto r = q.Wait(attr);
    REQUIRE(r);
    CHECK(r->error() == 0);
  }
  auto got = e.Call(FUSE_GETLK, lf.node, LockBody(a, F_WRLCK, 0, kOffsetMax));
  REQUIRE(got.error() == 0);
  CHECK(got.BodyAs<fuse_lk_out>()->lk.type == F_WRLCK);  // The host's lock.
  std::this_thread::sleep_for(100ms);
  CHECK(!q.Done(wait));

  // The host unlocks: the guest's lock is granted and the host sees it.
  REQUIRE(HostLock(lf.host, F_UNLCK, 0, 0) == 0);
  auto granted = q.Wait(wait);
  REQUIRE(granted);
  CHECK(granted->error() == 0);
  struct flock seen = HostGetLk(lf.host, F_RDLCK, 0, 0);
  CHECK(seen.l_type == F_WRLCK);
  CHECK(seen.l_len == 0);
  CHECK(HostLock(lf.host, F_RDLCK, 0, 1) == EAGAIN);

  // A SETLKW that need not wait is answered at once.
  const uint64_t free_now = q.Submit(BuildRequest(FUSE_SETLKW, e.harness->NextUnique(), lf.node,
                                                  LockBody(a, F_UNLCK, 0, kOffsetMax).bytes()));
  CHECK(q.Done(free_now));
  CHECK(q.Wait(free_now)->error() == 0);
  CHECK(HostLock(lf.host, F_RDLCK, 0, 1) == 0);
}

TEST_CASE("flock locks, with waits") {
  Env e;
  LockFile lf(e);
  const uint64_t a = e.Open(lf.node, O_RDWR), b = e.Open(lf.node, O_RDONLY);
  REQUIRE(e.Call(FUSE_SETLK, lf.node, LockBody(a, F_WRLCK, 0, 0, true)).error() == 0);
  CHECK(flock(lf.host, LOCK_SH | LOCK_NB) == -1);
  CHECK(e.Call(FUSE_SETLK, lf.node, LockBody(b, F_RDLCK, 0, 0, true)).error() == -EAGAIN);
  REQUIRE(e.Call(FUSE_SETLK, lf.node, LockBody(a, F_RDLCK, 0, 0, true)).error() == 0);  // Down.
  CHECK(e.Call(FUSE_SETLK, lf.node, LockBody(b, F_RDLCK, 0, 0, true)).error() == 0);
  REQUIRE(e.Call(FUSE_SETLK, lf.node, LockBody(a, F_UNLCK, 0, 0, true)).error() == 0);
  REQUIRE(e.Call(FUSE_SETLK, lf.node, LockBody(b, F_UNLCK, 0, 0, true)).error() == 0);
  CHECK(flock(lf.host, LOCK_EX | LOCK_NB) == 0);
  // flock(2) has no query.
  CHECK(e.Call(FUSE_GETLK, lf.node, LockBody(a, F_WRLCK, 0, 0, true)).error() == -EINVAL);

  // The host holds it; a guest SETLKW waits until it lets go.
  AsyncQueue q(e.harness->session());
  const uint64_t wait = q.Submit(BuildRequest(FUSE_SETLKW, e.harness->NextUnique(), lf.node,
                                              LockBody(a, F_WRLCK, 0, 0, true).bytes()));
  CHECK(!q.Wait(wait, 100ms));
  CHECK(e.Call(FUSE_GETATTR, lf.node, FuseBody().Add(fuse_getattr_in{})).error() == 0);
  REQUIRE(flock(lf.host, LOCK_UN) == 0);
  auto granted = q.Wait(wait);
  REQUIRE(granted);
  CHECK(granted->error() == 0);
  CHECK(flock(lf.host, LOCK_SH | LOCK_NB) == -1);
  // RELEASE with FLOCK_UNLOCK lets it go.
  fuse_release_in rel{a, 0, FUSE_RELEASE_FLOCK_UNLOCK, 0};
  REQUIRE(e.Call(FUSE_RELEASE, lf.node, FuseBody().Add(rel)).error() == 0);
  CHECK(flock(lf.host, LOCK_SH | LOCK_NB) == 0);
}

TEST_CASE("locks disabled by the options are ENOSYS") {
  PassthroughOptions o;
  o.posix_locks = false;
  o.flock = false;
  Env e(o);
  LockFile lf(e);
  const uint64_t a = e.Open(lf.node, O_RDWR);
  CHECK(e.Call(FUSE_GETLK, lf.node, LockBody(a, F_WRLCK, 0, 1)).error() == -ENOSYS);
  CHECK(e.Call(FUSE_SETLK, lf.node, LockBody(a, F_WRLCK, 0, 1)).error() == -ENOSYS);
  CHECK(e.Call(FUSE_SETLK, lf.node, LockBody(a, F_WRLCK, 0, 1, true)).error() == -ENOSYS);
}

TEST_CASE("SETLKW waiters are bounded, and stopped with the backend") {
  const int threads_before = CountThreads();
  auto e = std::make_unique<Env>();
  LockFile lf(*e);
  const uint64_t a = e->Open(lf.node, O_RDWR);
  REQUIRE(HostLock(lf.host, F_WRLCK, 0, 0) == 0);
  auto q = std::make_unique<AsyncQueue>(e->harness->session());
  auto setlkw = [&] {
    return q->Submit(BuildRequest(FUSE_SETLKW, e->harness->NextUnique(), lf.node,
                                  LockBody(a, F_WRLCK, 0, kOffsetMax).bytes()));
  };

  // 64 wait; the next one is refused.
  std::vector<uint64_t> waiting;
  for (int i = 0; i < 64; ++i) waiting.push_back(setlkw());
  const uint64_t refused = setlkw();
  auto r = q->Wait(refused, 1s);
  REQUIRE(r);
  CHECK(r->error() == -ENOLCK);
  for (uint64_t u : waiting) CHECK(!q->Done(u));
  CHECK(CountThreads() >= threads_before + 64);

  // All granted once the host lets go (the same open file: no conflict).
  REQUIRE(HostLock(lf.host, F_UNLCK, 0, 0) == 0);
  for (uint64_t u : waiting) {
    auto g = q->Wait(u);
    REQUIRE(g);
    CHECK(g->error() == 0);
  }
  REQUIRE(e->Call(FUSE_SETLK, lf.node, LockBody(a, F_UNLCK, 0, kOffsetMax)).error() == 0);

  // Waiting again, then the backend goes: the waiters answer EINTR and no
  // thread is left.
  REQUIRE(HostLock(lf.host, F_WRLCK, 0, 0) == 0);
  std::vector<uint64_t> stopped;
  for (int i = 0; i < 3; ++i) stopped.push_back(setlkw());
  CHECK(!q->Wait(stopped[0], 100ms));
  e->backend.reset();
  for (uint64_t u : stopped) {
    CHECK(q->Done(u));
    auto s = q->Wait(u, 0ms);
    REQUIRE(s);
    CHECK(s->error() == -EINTR);
  }
  q.reset();
  e.reset();
  CHECK(CountThreads() == threads_before);
}

TEST_CASE("a stopping queue interrupts SETLKW waits (InterruptWaits): EINTR, backend usable") {
  Env e;
  LockFile lf(e);
  const uint64_t a = e.Open(lf.node, O_RDWR);
  REQUIRE(HostLock(lf.host, F_WRLCK, 0, 0) == 0);
  auto q = std::make_unique<AsyncQueue>(e.harness->session());
  std::vector<uint64_t> waiting;
  for (int i = 0; i < 3; ++i) {
    waiting.push_back(q->Submit(BuildRequest(FUSE_SETLKW, e.harness->NextUnique(), lf.node,
                                             LockBody(a, F_WRLCK, 0, kOffsetMax).bytes())));
  }
  CHECK(!q->Wait(waiting[0], 100ms));
  e.backend->InterruptWaits();  // Returns once all three have answered.
  for (uint64_t u : waiting) {
    auto r = q->Wait(u, 0ms);
    REQUIRE(r);
    CHECK(r->error() == -EINTR);
  }
  // Later waits are not affected: this one waits for the host, as usual.
  const uint64_t later = q->Submit(BuildRequest(FUSE_SETLKW, e.harness->NextUnique(), lf.node,
                                                LockBody(a, F_WRLCK, 0, kOffsetMax).bytes()));
  CHECK(!q->Wait(later, 100ms));
  REQUIRE(HostLock(lf.host, F_UNLCK, 0, 0) == 0);
  auto g = q->Wait(later);
  REQUIRE(g);
  CHECK(g->error() == 0);
}

// ---------------------------------------------------------------------------
// fallocate, lseek, copy_file_range.

struct DataFile {
  DataFile(Env& e, std::string name, size_t size) : path(e.dir / name) {
    content.resize(size);
    for (size_t i = 0; i < size; ++i) content[i] = static_cast<char>('a' + i % 23);
    WriteFile(path, content);
    node = e.Lookup(FUSE_ROOT_ID, name);
    fh = e.Open(node, O_RDWR);
  }
  off_t Size() const {
    struct stat st;
    REQUIRE(stat(path.c_str(), &st) == 0);
    return st.st_size;
  }
  std::string path;
  std::string content;
  uint64_t node, fh;
};

int Fallocate(Env& e, const DataFile& f, uint32_t mode, uint64_t offset, uint64_t length,
              uint64_t fh = 0) {
  fuse_fallocate_in in{fh ? fh : f.fh, offset, length, mode, 0};
  return e.Call(FUSE_FALLOCATE, f.node, FuseBody().Add(in)).error();
}

FuseReply Lseek(Env& e, const DataFile& f, uint64_t offset, uint32_t whence, uint64_t fh = 0) {
  fuse_lseek_in in{fh ? fh : f.fh, offset, whence, 0};
  return e.Call(FUSE_LSEEK, f.node, FuseBody().Add(in));
}

uint64_t SeekOk(Env& e, const DataFile& f, uint64_t offset, uint32_t whence) {
  auto r = Lseek(e, f, offset, whence);
  REQUIRE(r.error() == 0);
  return r.BodyAs<fuse_lseek_out>()->offset;
}

// The host's answer for a mode, or the skip when it has none.
bool HostCan(const DataFile& f, int mode, off_t offset, off_t length) {
  const std::string probe = f.path + ".probe";
  WriteFile(probe, std::string(1 << 20, 'p'));
  const int fd = open(probe.c_str(), O_RDWR);
  const bool ok = fallocate(fd, mode, offset, length) == 0;
  close(fd);
  unlink(probe.c_str());
  if (!ok) WARN("the host file system cannot fallocate mode " << mode << "; skipped");
  return ok;
}

TEST_CASE("fallocate in every mode the host has, seen by the host") {
  Env e;
  DataFile f(e, "f", 1 << 20);
  constexpr uint64_t k64 = 64 << 10;

  // Mode 0 past the end: the size grows.
  REQUIRE(Fallocate(e, f, 0, 1 << 20, k64) == 0);
  CHECK(f.Size() == (1 << 20) + static_cast<off_t>(k64));
  f.content.append(k64, '\0');
  // KEEP_SIZE: blocks, not size.
  struct stat before, after;
  REQUIRE(stat(f.path.c_str(), &before) == 0);
  REQUIRE(Fallocate(e, f, FALLOC_FL_KEEP_SIZE, 2 << 20, k64) == 0);
  REQUIRE(stat(f.path.c_str(), &after) == 0);
  CHECK(after.st_size == before.st_size);
  CHECK(after.st_blocks > before.st_blocks);

  if (HostCan(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096)) {
    REQUIRE(Fallocate(e, f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, k64, k64) == 0);
    std::fill_n(f.content.begin() + k64, k64, '\0');
    const int fd = open(f.path.c_str(), O_RDONLY);
    CHECK(lseek(fd, 0, SEEK_HOLE) == static_cast<off_t>(k64));
    CHECK(lseek(fd, static_cast<off_t>(k64), SEEK_DATA) == static_cast<off_t>(2 * k64));
    close(fd);
    // The guest sees the same hole through LSEEK.
    CHECK(SeekOk(e, f, 0, SEEK_HOLE) == k64);
    CHECK(SeekOk(e, f, k64, SEEK_DATA) == 2 * k64);
    CHECK(ReadFile(f.path) == f.content);
  }
  if (HostCan(f, FALLOC_FL_ZERO_RANGE, 0, 4096)) {
    REQUIRE(Fallocate(e, f, FALLOC_FL_ZERO_RANGE, 200000, 5000) == 0);
    std::fill_n(f.content.begin() + 200000, 5000, '\0');
    CHECK(ReadFile(f.path) == f.content);
  }
  if (HostCan(f, FALLOC_FL_COLLAPSE_RANGE, 0, 4096)) {
    const off_t size = f.Size();
    REQUIRE(Fallocate(e, f, FALLOC_FL_COLLAPSE_RANGE, 4096, 8192) == 0);
    f.content.erase(4096, 8192);
    CHECK(f.Size() == size - 8192);
    CHECK(ReadFile(f.path) == f.content);
    // Not block-aligned: the host refuses.
    CHECK(Fallocate(e, f, FALLOC_FL_COLLAPSE_RANGE, 100, 4096) == -EINVAL);
  }
  if (HostCan(f, FALLOC_FL_INSERT_RANGE, 0, 4096)) {
    REQUIRE(Fallocate(e, f, FALLOC_FL_INSERT_RANGE, 8192, 4096) == 0);
    f.content.insert(8192, 4096, '\0');
    CHECK(ReadFile(f.path) == f.content);
  }
  // Bad arguments are the host's to refuse; bad handles are ours.
  CHECK(Fallocate(e, f, 0, 0, 0) == -EINVAL);
  CHECK(Fallocate(e, f, 0, uint64_t{1} << 63, 4096) == -EINVAL);
  CHECK(Fallocate(e, f, 0, 0, 4096, 4242) == -EBADF);
}

TEST_CASE("lseek on a handle: SEEK_SET/CUR/END/DATA/HOLE and ENXIO") {
  Env e;
  DataFile f(e, "f", 10000);
  CHECK(SeekOk(e, f, 123, SEEK_SET) == 123);
  CHECK(SeekOk(e, f, 7, SEEK_CUR) == 130);
  CHECK(SeekOk(e, f, 0, SEEK_END) == 10000);
  CHECK(SeekOk(e, f, static_cast<uint64_t>(-100), SEEK_END) == 9900);
  CHECK(SeekOk(e, f, 0, SEEK_DATA) == 0);
  CHECK(SeekOk(e, f, 0, SEEK_HOLE) == 10000);  // The end is a hole.
  CHECK(Lseek(e, f, 10000, SEEK_DATA).error() == -ENXIO);
  CHECK(Lseek(e, f, 20000, SEEK_HOLE).error() == -ENXIO);
  CHECK(Lseek(e, f, 0, 99).error() == -EINVAL);
  CHECK(Lseek(e, f, 0, SEEK_SET, 4242).error() == -EBADF);
}

FuseReply CopyRange(Env& e, const DataFile& in, uint64_t off_in, const DataFile& out,
                    uint64_t off_out, uint64_t len, uint64_t flags = 0, uint64_t fh_out = 0) {
  fuse_copy_file_range_in c{};
  c.fh_in = in.fh;
  c.off_in = off_in;
  c.nodeid_out = out.node;
  c.fh_out = fh_out ? fh_out : out.fh;
  c.off_out = off_out;
  c.len = len;
  c.flags = flags;
  return e.Call(FUSE_COPY_FILE_RANGE, in.node, FuseBody().Add(c));
}

TEST_CASE("copy_file_range between handles") {
  Env e;
  DataFile src(e, "src", 20000), dst(e, "dst", 100);
  auto r = CopyRange(e, src, 1000, dst, 50, 5000);
  REQUIRE(r.error() == 0);
  CHECK(r.BodyAs<fuse_write_out>()->size == 5000);
  CHECK(ReadFile(dst.path) == dst.content.substr(0, 50) + src.content.substr(1000, 5000));
  // Past the end of the source: what there is.
  auto tail = CopyRange(e, src, 19000, dst, 0, 5000);
  REQUIRE(tail.error() == 0);
  CHECK(tail.BodyAs<fuse_write_out>()->size == 1000);
  CHECK(CopyRange(e, src, 0, dst, 0, 10, 1).error() == -EINVAL);
  CHECK(CopyRange(e, src, 0, dst, 0, 10, 0, 4242).error() == -EBADF);
}

TEST_CASE("read-only: fallocate and copy_file_range are EROFS") {
  PassthroughOptions o;
  o.readonly = true;
  Env e(o);
  WriteFile(e.dir / "f", std::string(8192, 'f'));
  const uint64_t node = e.Lookup(FUSE_ROOT_ID, "f");
  const uint64_t fh = e.Open(node, O_RDONLY);
  fuse_fallocate_in fa{fh, 0, 4096, FALLOC_FL_KEEP_SIZE, 0};
  CHECK(e.Call(FUSE_FALLOCATE, node, FuseBody().Add(fa)).error() == -EROFS);
  fuse_copy_file_range_in c{};
  c.fh_in = fh;
  c.nodeid_out = node;
  c.fh_out = fh;
  c.len = 10;
  CHECK(e.Call(FUSE_COPY_FILE_RANGE, node, FuseBody().Add(c)).error() == -EROFS);
  // Reading ones still work.
  fuse_lseek_in l{fh, 0, SEEK_HOLE, 0};
  CHECK(e.Call(FUSE_LSEEK, node, FuseBody().Add(l)).error() == 0);
}

// ---------------------------------------------------------------------------
// O_TMPFILE, syncfs, ioctl.

bool HostHasTmpfile(const std::string& dir) {
  const int fd = open(dir.c_str(), O_TMPFILE | O_RDWR, 0600);
  if (fd < 0) {
    WARN("the host file system has no O_TMPFILE (errno " << errno << "); skipped");
    return false;
  }
  close(fd);
  return true;
}

std::set<std::string> HostNames(const std::string& dir) {
  std::set<std::string> names;
  for (auto& entry : fs::directory_iterator(dir)) names.insert(entry.path().filename());
  return names;
}

TEST_CASE("O_TMPFILE: an unnamed file, linked in to appear") {
  Env e;
  if (!HostHasTmpfile(e.dir.path)) return;
  const size_t inodes_before = e.backend->inode_count();
  fuse_create_in c{O_RDWR | O_TMPFILE, S_IFREG | 0666, 022, 0};
  auto r = e.Call(FUSE_TMPFILE, FUSE_ROOT_ID, FuseBody().Add(c).Name("/"));
  REQUIRE(r.error() == 0);
  REQUIRE(r.body.size() == sizeof(fuse_entry_out) + sizeof(fuse_open_out));
  fuse_entry_out entry;
  fuse_open_out open;
  std::memcpy(&entry, r.body.data(), sizeof entry);
  std::memcpy(&open, r.body.data() + sizeof entry, sizeof open);
  CHECK(S_ISREG(entry.attr.mode));
  CHECK((entry.attr.mode & 07777) == 0644);  // The umask applied.
  CHECK(entry.attr.nlink == 0);
  CHECK(e.backend->inode_count() == inodes_before + 1);
  CHECK(HostNames(e.dir.path).empty());  // Nothing to see yet.

  const std::string data = "written before it had a name";
  fuse_write_in w{};
  w.fh = open.fh;
  w.size = static_cast<uint32_t>(data.size());
  REQUIRE(e.Call(FUSE_WRITE, entry.nodeid, FuseBody().Add(w).Raw(data)).error() == 0);

  fuse_link_in li{entry.nodeid};
  auto linked = e.Call(FUSE_LINK, FUSE_ROOT_ID, FuseBody().Add(li).Name("named"));
  REQUIRE(linked.error() == 0);
  CHECK(linked.BodyAs<fuse_entry_out>()->nodeid == entry.nodeid);
  CHECK(linked.BodyAs<fuse_entry_out>()->attr.nlink == 1);
  CHECK(HostNames(e.dir.path) == std::set<std::string>{"named"});
  CHECK(ReadFile(e.dir / "named") == data);
  struct stat st;
  REQUIRE(stat((e.dir / "named").c_str(), &st) == 0);
  CHECK(st.st_ino == entry.attr.ino);
  CHECK((st.st_mode & 07777) == 0644);

  // O_EXCL: never linkable.
  fuse_create_in excl{O_RDWR | O_TMPFILE | O_EXCL, S_IFREG | 0600, 0, 0};
  auto x = e.Call(FUSE_TMPFILE, FUSE_ROOT_ID, FuseBody().Add(excl).Name("/"));
  REQUIRE(x.error() == 0);
  fuse_entry_out excl_entry;
  std::memcpy(&excl_entry, x.body.data(), sizeof excl_entry);
  fuse_link_in lx{excl_entry.nodeid};
  CHECK(e.Call(FUSE_LINK, FUSE_ROOT_ID, FuseBody().Add(lx).Name("never")).error() == -ENOENT);

  // In a file, or in an unknown node: no.
  const uint64_t named = e.Lookup(FUSE_ROOT_ID, "named");
  CHECK(e.Call(FUSE_TMPFILE, named, FuseBody().Add(c).Name("/")).error() == -ENOTDIR);
  CHECK(e.Call(FUSE_TMPFILE, 777777, FuseBody().Add(c).Name("/")).error() == -EBADF);
}

TEST_CASE("O_TMPFILE belongs to the caller; read-only refuses it") {
  {
    PassthroughOptions o;
    o.readonly = true;
    Env e(o);
    fuse_create_in c{O_RDWR | O_TMPFILE, S_IFREG | 0644, 0, 0};
    CHECK(e.Call(FUSE_TMPFILE, FUSE_ROOT_ID, FuseBody().Add(c).Name("/")).error() == -EROFS);
  }
  if (!IsRoot()) {
    WARN("not root: fs ids cannot be switched; skipped");
    return;
  }
  Env e;
  if (!HostHasTmpfile(e.dir.path)) return;
  REQUIRE(chmod(e.dir.path.c_str(), 0777) == 0);
  fuse_create_in c{O_RDWR | O_TMPFILE, S_IFREG | 0640, 0, 0};
  auto r = e.Call(FUSE_TMPFILE, FUSE_ROOT_ID, FuseBody().Add(c).Name("/"), 4096, 1234, 4321);
  REQUIRE(r.error() == 0);
  fuse_entry_out entry;
  std::memcpy(&entry, r.body.data(), sizeof entry);
  CHECK(entry.attr.uid == 1234);
  CHECK(entry.attr.gid == 4321);
  REQUIRE(chmod(e.dir.path.c_str(), 0755) == 0);
  CHECK(e.Call(FUSE_TMPFILE, FUSE_ROOT_ID, FuseBody().Add(c).Name("/"), 4096, 1234, 4321)
            .error() == -EACCES);
}

TEST_CASE("syncfs") {
  Env e;
  fuse_syncfs_in in{};
  CHECK(e.Call(FUSE_SYNCFS, FUSE_ROOT_ID, FuseBody().Add(in)).error() == 0);
  fs::create_directory(e.dir / "d");
  CHECK(e.Call(FUSE_SYNCFS, e.Lookup(FUSE_ROOT_ID, "d"), FuseBody().Add(in)).error() == 0);
  CHECK(e.Call(FUSE_SYNCFS, 555555, FuseBody().Add(in)).error() == -EBADF);
}

FuseReply Ioctl(Env& e, uint64_t node, uint64_t fh, uint32_t cmd, uint32_t out_size,
                uint32_t flags = 0) {
  fuse_ioctl_in in{};
  in.fh = fh;
  in.flags = flags;
  in.cmd = cmd;
  in.out_size = out_size;
  return e.Call(FUSE_IOCTL, node, FuseBody().Add(in), 16 + sizeof(fuse_ioctl_out) + out_size);
}

template <typename T>
T IoctlOut(const FuseReply& r) {
  REQUIRE(r.error() == 0);
  REQUIRE(r.body.size() == sizeof(fuse_ioctl_out) + sizeof(T));
  fuse_ioctl_out out;
  std::memcpy(&out, r.body.data(), sizeof out);
  CHECK(out.result == 0);
  T value;
  std::memcpy(&value, r.body.data() + sizeof out, sizeof value);
  return value;
}

TEST_CASE("ioctl: an allow-list of reads, ENOTTY for the rest") {
  Env e;
  DataFile f(e, "f", 100);
  const int host = open(f.path.c_str(), O_RDONLY);
  REQUIRE(host >= 0);
  int host_flags = 0;
  if (ioctl(host, FS_IOC_GETFLAGS, &host_flags) != 0) {
    WARN("the host file system has no FS_IOC_GETFLAGS; skipped");
    close(host);
    return;
  }
  // A flag of our own, when the host lets us set one.
  int with_noatime = host_flags | FS_NOATIME_FL;
  if (IsRoot() && ioctl(host, FS_IOC_SETFLAGS, &with_noatime) == 0) host_flags = with_noatime;
  CHECK(IoctlOut<int>(Ioctl(e, f.node, f.fh, FS_IOC_GETFLAGS, sizeof(int))) == host_flags);
  // More room than needed: the int only.
  CHECK(IoctlOut<int>(Ioctl(e, f.node, f.fh, FS_IOC_GETFLAGS, 8)) == host_flags);
  CHECK(Ioctl(e, f.node, f.fh, FS_IOC_GETFLAGS, 2).error() == -EINVAL);

  struct fsxattr host_fsx {};
  if (ioctl(host, FS_IOC_FSGETXATTR, &host_fsx) == 0) {
    const auto fsx = IoctlOut<struct fsxattr>(
        Ioctl(e, f.node, f.fh, FS_IOC_FSGETXATTR, sizeof(struct fsxattr)));
    CHECK(fsx.fsx_xflags == host_fsx.fsx_xflags);
    CHECK(fsx.fsx_projid == host_fsx.fsx_projid);
    CHECK(fsx.fsx_extsize == host_fsx.fsx_extsize);
  } else {
    WARN("the host file system has no FS_IOC_FSGETXATTR; not compared");
  }
  // A directory handle too.
  const uint64_t dh = e.OpenDir(FUSE_ROOT_ID);
  (void)IoctlOut<int>(Ioctl(e, FUSE_ROOT_ID, dh, FS_IOC_GETFLAGS, sizeof(int), FUSE_IOCTL_DIR));

  // Anything that could change something, or is unknown: ENOTTY.
  CHECK(Ioctl(e, f.node, f.fh, FS_IOC_SETFLAGS, 0).error() == -ENOTTY);
  CHECK(Ioctl(e, f.node, f.fh, FS_IOC_FSSETXATTR, 0).error() == -ENOTTY);
  CHECK(Ioctl(e, f.node, f.fh, FIONREAD, sizeof(int)).error() == -ENOTTY);
  CHECK(Ioctl(e, f.node, f.fh, 0xdeadbeef, 16).error() == -ENOTTY);
  CHECK(Ioctl(e, f.node, 4242, FS_IOC_GETFLAGS, sizeof(int)).error() == -EBADF);
  // The flag we set is still there: nothing changed it.
  int now = 0;
  REQUIRE(ioctl(host, FS_IOC_GETFLAGS, &now) == 0);
  CHECK(now == host_flags);
  close(host);
}

}  // namespace
}  // namespace virtiofs
