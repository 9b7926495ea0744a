#include "tests/support/fail_fs.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/status/status.h"

namespace virtiofs::testing {

namespace {

constexpr uint64_t kGood = 2;
constexpr uint64_t kBad = 3;
constexpr uint32_t kBadSize = 4096;
constexpr uint32_t kMaxWrite = 64 * 1024;

}  // namespace

absl::StatusOr<std::unique_ptr<FailFs>> FailFs::Mount(const std::string& dir) {
  const int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    return absl::UnavailableError(std::string("open /dev/fuse: ") + std::strerror(errno));
  }
  const std::string opts =
      "fd=" + std::to_string(fd) + ",rootmode=40000,user_id=0,group_id=0,allow_other";
  if (mount("failfs", dir.c_str(), "fuse.failfs", MS_NOSUID | MS_NODEV, opts.c_str()) != 0) {
    const int err = errno;
    close(fd);
    return absl::UnavailableError(std::string("mount fuse: ") + std::strerror(err));
  }
  return std::unique_ptr<FailFs>(new FailFs(dir, fd));
}

FailFs::FailFs(std::string dir, int fd) : dir_(std::move(dir)), fd_(fd) {
  thread_ = std::thread([this] { Serve(); });
}

FailFs::~FailFs() {
  umount2(dir_.c_str(), MNT_DETACH);
  stop_ = true;
  thread_.join();
  close(fd_);  // The last reference: the kernel aborts the connection.
}

std::string FailFs::good() const {
  std::lock_guard lock(mu_);
  return good_;
}

void FailFs::Serve() {
  // The kernel needs room for the largest WRITE and its headers.
  std::vector<uint8_t> buf(kMaxWrite + 4096 + sizeof(fuse_in_header) + sizeof(fuse_write_in));
  while (!stop_) {
    pollfd p{fd_, POLLIN, 0};
    const int n = poll(&p, 1, 50);
    if (n <= 0) continue;
    if (p.revents & (POLLERR | POLLHUP)) return;
    const ssize_t len = read(fd_, buf.data(), buf.size());
    if (len < 0) {
      // ENOENT: the request was interrupted before it was read.
      if (errno == EINTR || errno == ENOENT || errno == EAGAIN) continue;
      return;  // ENODEV: unmounted.
    }
    if (static_cast<size_t>(len) >= sizeof(fuse_in_header)) Answer(buf.data(), len);
  }
}

namespace {

fuse_attr Attr(uint64_t ino, uint64_t size) {
  fuse_attr a{};
  a.ino = ino;
  a.mode = ino == FUSE_ROOT_ID ? (S_IFDIR | 0755) : (S_IFREG | 0644);
  a.nlink = ino == FUSE_ROOT_ID ? 2 : 1;
  a.size = size;
  a.blocks = (size + 511) / 512;
  a.blksize = 4096;
  return a;
}

}  // namespace

void FailFs::Answer(const uint8_t* req, size_t len) {
  fuse_in_header h;
  std::memcpy(&h, req, sizeof h);
  const uint8_t* body = req + sizeof h;
  const size_t body_len = len - sizeof h;
  std::vector<uint8_t> out;
  int error = 0;
  auto put = [&out](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  };
  auto size_of = [this](uint64_t ino) -> uint64_t {
    if (ino == kBad) return kBadSize;
    std::lock_guard lock(mu_);
    return ino == kGood ? good_.size() : 0;
  };
  auto fail = [this](uint64_t ino) {
    if (ino != kBad) return false;
    failed_.fetch_add(1);
    return true;
  };
  switch (h.opcode) {
    case FUSE_INIT: {
      fuse_init_in in{};
      std::memcpy(&in, body, std::min(body_len, sizeof in));
      fuse_init_out o{};
      o.major = FUSE_KERNEL_VERSION;
      o.minor = std::min<uint32_t>(in.minor, FUSE_KERNEL_MINOR_VERSION);
      o.max_readahead = in.max_readahead;
      o.flags = FUSE_BIG_WRITES;
      o.max_background = 16;
      o.congestion_threshold = 12;
      o.max_write = kMaxWrite;
      o.time_gran = 1;
      put(&o, sizeof o);
      break;
    }
    case FUSE_FORGET:
    case FUSE_BATCH_FORGET:
    case FUSE_INTERRUPT:
      return;  // No reply.
    case FUSE_LOOKUP: {
      const std::string name(reinterpret_cast<const char*>(body),
                             strnlen(reinterpret_cast<const char*>(body), body_len));
      uint64_t ino = 0;
      if (h.nodeid == FUSE_ROOT_ID && name == "good") ino = kGood;
      if (h.nodeid == FUSE_ROOT_ID && name == "bad") ino = kBad;
      if (ino == 0) {
        error = ENOENT;
        break;
      }
      fuse_entry_out e{};
      e.nodeid = ino;
      e.generation = 1;
      e.attr = Attr(ino, size_of(ino));
      put(&e, sizeof e);
      break;
    }
    case FUSE_GETATTR:
    case FUSE_SETATTR: {
      if (h.opcode == FUSE_SETATTR && h.nodeid == kGood && body_len >= sizeof(fuse_setattr_in)) {
        fuse_setattr_in s;
        std::memcpy(&s, body, sizeof s);
        std::lock_guard lock(mu_);
        if (s.valid & FATTR_SIZE) good_.resize(s.size);
      }
      fuse_attr_out a{};
      a.attr = Attr(h.nodeid, size_of(h.nodeid));
      put(&a, sizeof a);
      break;
    }
    case FUSE_OPEN:
    case FUSE_OPENDIR: {
      fuse_open_out o{};
      o.fh = h.nodeid;
      o.open_flags = h.opcode == FUSE_OPEN ? FOPEN_DIRECT_IO : 0;
      put(&o, sizeof o);
      break;
    }
    case FUSE_READ: {
      fuse_read_in r;
      std::memcpy(&r, body, std::min(body_len, sizeof r));
      if (fail(h.nodeid)) {
        error = EIO;
        break;
      }
      std::lock_guard lock(mu_);
      if (h.nodeid == kGood && r.offset < good_.size()) {
        put(good_.data() + r.offset, std::min<size_t>(r.size, good_.size() - r.offset));
      }
      break;
    }
    case FUSE_WRITE: {
      fuse_write_in w;
      std::memcpy(&w, body, std::min(body_len, sizeof w));
      if (fail(h.nodeid)) {
        error = EIO;
        break;
      }
      if (h.nodeid != kGood || body_len < sizeof w + w.size) {
        error = EINVAL;
        break;
      }
      {
        std::lock_guard lock(mu_);
        if (good_.size() < w.offset + w.size) good_.resize(w.offset + w.size);
        std::memcpy(good_.data() + w.offset, body + sizeof w, w.size);
      }
      fuse_write_out o{};
      o.size = w.size;
      put(&o, sizeof o);
      break;
    }
    case FUSE_FSYNC:
      if (fail(h.nodeid)) error = EIO;
      break;
    case FUSE_READDIR:  // Empty: nothing to list past "." and "..".
    case FUSE_FLUSH:
    case FUSE_RELEASE:
    case FUSE_RELEASEDIR:
    case FUSE_FSYNCDIR:
    case FUSE_ACCESS:
    case FUSE_DESTROY:
      break;
    case FUSE_STATFS: {
      fuse_statfs_out s{};
      s.st.blocks = 1024;
      s.st.bfree = 512;
      s.st.bavail = 512;
      s.st.files = 16;
      s.st.ffree = 13;
      s.st.bsize = 4096;
      s.st.namelen = 255;
      s.st.frsize = 4096;
      put(&s, sizeof s);
      break;
    }
    default:
      error = ENOSYS;
      break;
  }
  fuse_out_header o{};
  o.unique = h.unique;
  o.error = -error;
  if (error != 0) out.clear();
  o.len = static_cast<uint32_t>(sizeof o + out.size());
  std::vector<uint8_t> reply(sizeof o);
  std::memcpy(reply.data(), &o, sizeof o);
  reply.insert(reply.end(), out.begin(), out.end());
  // ENOENT: the request was interrupted meanwhile; nothing to do.
  (void)!write(fd_, reply.data(), reply.size());
}

}  // namespace virtiofs::testing
