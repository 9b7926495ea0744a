// A host file system that fails on purpose, for fault tests: a minimal FUSE
// server of our own (no libfuse) that opens /dev/fuse, mounts itself with
// mount(2) and answers the kernel from a thread.
//
// Its root holds two regular files:
//  - "good": kept in memory, READ / WRITE / FSYNC work;
//  - "bad": 4096 bytes whose READ, WRITE and FSYNC answer EIO.
// It also answers INIT, LOOKUP, FORGET, GETATTR, SETATTR, OPEN, FLUSH,
// RELEASE, OPENDIR, READDIR, RELEASEDIR, STATFS, ACCESS and DESTROY;
// anything else gets ENOSYS. Opens are FOPEN_DIRECT_IO so that every read
// and write reaches the server (no page cache in between).
#ifndef VIRTIOFS_TESTS_SUPPORT_FAIL_FS_H_
#define VIRTIOFS_TESTS_SUPPORT_FAIL_FS_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace virtiofs::testing {

class FailFs {
 public:
  // Mounts a FailFs on the existing directory `dir`. Unavailable, with the
  // reason, when /dev/fuse cannot be opened or mount(2) is refused (no
  // privilege, no fuse module): the caller skips.
  static absl::StatusOr<std::unique_ptr<FailFs>> Mount(const std::string& dir);
  // Detaches the mount, stops the server and closes /dev/fuse.
  ~FailFs();
  FailFs(const FailFs&) = delete;
  FailFs& operator=(const FailFs&) = delete;

  // Requests of "bad" answered EIO so far.
  int failed() const { return failed_.load(); }
  // The content of "good".
  std::string good() const;

 private:
  FailFs(std::string dir, int fd);
  void Serve();
  void Answer(const uint8_t* req, size_t len);

  std::string dir_;
  int fd_;
  std::atomic<bool> stop_{false};
  std::atomic<int> failed_{0};
  mutable std::mutex mu_;
  std::string good_ = "good data\n";
  std::thread thread_;
};

}  // namespace virtiofs::testing

#endif  // VIRTIOFS_TESTS_SUPPORT_FAIL_FS_H_
