// The synchronous engine: preadv/pwritev on the calling thread.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>

#include "lib/io/engines.h"

namespace virtiofs::io_internal {

void ConsumeIovecs(IovecVector& iov, size_t n) {
  size_t i = 0;
  while (i < iov.size() && n >= iov[i].iov_len) {
    n -= iov[i].iov_len;
    ++i;
  }
  iov.erase(iov.begin(), iov.begin() + static_cast<long>(i));
  if (!iov.empty() && n > 0) {
    iov[0].iov_base = static_cast<uint8_t*>(iov[0].iov_base) + n;
    iov[0].iov_len -= n;
  }
}

namespace {

class SyncEngine final : public IoEngine {
 public:
  IoEngineKind kind() const override { return IoEngineKind::kSync; }

  void Readv(int fd, std::span<const iovec> iov, int64_t offset, Callback done) override {
    done(Transfer(fd, iov, offset, /*write=*/false));
  }
  void Writev(int fd, std::span<const iovec> iov, int64_t offset, Callback done) override {
    done(Transfer(fd, iov, offset, /*write=*/true));
  }
  void Fsync(int fd, bool datasync, Callback done) override {
    int r = datasync ? fdatasync(fd) : fsync(fd);
    done(r == 0 ? 0 : -errno);
  }
  void Fallocate(int fd, int mode, uint64_t offset, uint64_t length, Callback done) override {
    int r = fallocate(fd, mode, static_cast<off_t>(offset), static_cast<off_t>(length));
    done(r == 0 ? 0 : -errno);
  }
  void Submit() override {}
  int completion_fd() const override { return -1; }
  size_t Reap() override { return 0; }
  size_t in_flight() const override { return 0; }

 private:
  static int64_t Transfer(int fd, std::span<const iovec> in, int64_t offset, bool write) {
    IovecVector iov(in.begin(), in.end());
    int64_t total = 0;
    while (!iov.empty()) {
      // IOV_MAX bounds one call; the loop continues with the rest.
      const int count = static_cast<int>(std::min<size_t>(iov.size(), IOV_MAX));
      ssize_t n;
      if (offset == kCurrentPosition) {
        n = write ? writev(fd, iov.data(), count) : readv(fd, iov.data(), count);
      } else {
        n = write ? pwritev(fd, iov.data(), count, offset + total)
                  : preadv(fd, iov.data(), count, offset + total);
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        return total > 0 ? total : -errno;
      }
      if (n == 0) break;  // End of file (reads); a zero write cannot progress.
      total += n;
      ConsumeIovecs(iov, static_cast<size_t>(n));
    }
    return total;
  }
};

}  // namespace

std::unique_ptr<IoEngine> MakeSyncEngine() { return std::make_unique<SyncEngine>(); }

}  // namespace virtiofs::io_internal
