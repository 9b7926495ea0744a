// Fuzz target: the vhost-user back-end state machine, fed a sequence of
// messages with fds. Input: records of [request u8][flags u8][fd kind u8]
// [payload length u8][payload]. The fd kind attaches nothing, an eventfd, or
// a 1 MiB memfd (memory for tables and logs), up to 3 of them. A new
// back-end per input over a shared echo device; the input ends where a
// message would close the connection.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "tests/support/echo_device.h"
#include "virtiofs/log.h"
#include "virtiofs/vhost_user.h"

using namespace virtiofs;  // NOLINT: a fuzz target.

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static testing::EchoDevice* device = [] {
    SetLogLevel(LogLevel::kError);
    return new testing::EchoDevice(2);
  }();
  VhostUserBackend backend(device);
  size_t pos = 0;
  while (pos + 4 <= size) {
    vhost_user::Message m;
    m.header.request = data[pos];
    m.header.flags = vhost_user::kVersion | (data[pos + 1] & 0x0c);
    const uint8_t fd_kind = data[pos + 2];
    const size_t len = std::min<size_t>(data[pos + 3], size - pos - 4);
    m.header.size = static_cast<uint32_t>(len);
    m.payload.assign(data + pos + 4, data + pos + 4 + len);
    pos += 4 + len;
    for (int i = 0; i < (fd_kind >> 2) % 4; ++i) {
      if (fd_kind & 1) {
        UniqueFd fd(memfd_create("fuzz", MFD_CLOEXEC));
        if (ftruncate(fd.get(), 1 << 20) != 0) return 0;
        m.fds.push_back(std::move(fd));
      } else {
        m.fds.emplace_back(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      }
    }
    auto r = backend.Handle(std::move(m));
    if (!r.ok()) break;  // The connection would close here.
  }
  return 0;  // The back-end stops its rings as it goes.
}
