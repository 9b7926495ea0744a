// Per-thread filesystem credentials for the duration of one request.
//
// setfsuid/setfsgid and setgroups as raw system calls change only the
// calling thread (glibc's wrappers for setgroups change every thread).
// Requests from root, the common case, cost no system call.
#ifndef VIRTIOFS_LIB_PASSTHROUGH_CREDENTIALS_H_
#define VIRTIOFS_LIB_PASSTHROUGH_CREDENTIALS_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>

namespace virtiofs::passthrough {

// A request's caller as host ids (after uid/gid translation); `error` is
// set (EPERM) when the guest ids are forbidden.
struct HostIds {
  uid_t uid = 0;
  gid_t gid = 0;
  std::optional<gid_t> supplementary;
  int error = 0;
};

class ScopedCredentials {
 public:
  // The caller's host ids; `ids.error` fails the switch (even when disabled).
  ScopedCredentials(bool enabled, const HostIds& ids)
      : ScopedCredentials(enabled && ids.error == 0, ids.uid, ids.gid, ids.supplementary) {
    if (ids.error != 0) error_ = ids.error;
  }
  // Switches to (uid, gid) and, if given, one supplementary group; `enabled`
  // false (the daemon is not root) leaves the thread as it is. For a uid
  // other than 0 the thread also drops every effective capability while
  // this lives: a non-root fsuid drops only the file-system ones (CAP_CHOWN,
  // CAP_DAC_*, CAP_FOWNER, CAP_FSETID, CAP_MKNOD, ...), and a guest user must
  // not act with the daemon's CAP_SYS_RESOURCE (reserved blocks, quotas),
  // CAP_SYS_ADMIN or CAP_SETFCAP, as virtiofsd's switch of the euid ensures.
  ScopedCredentials(bool enabled, uid_t uid, gid_t gid,
                    std::optional<gid_t> supplementary = std::nullopt);
  // Back to the daemon's ids (root) and no supplementary group.
  ~ScopedCredentials();
  ScopedCredentials(const ScopedCredentials&) = delete;
  ScopedCredentials& operator=(const ScopedCredentials&) = delete;

  // Whether the switch happened (false: the errno is in `error()`).
  bool ok() const { return error_ == 0; }
  int error() const { return error_; }

 private:
  bool enabled_;
  bool groups_set_ = false;
  bool caps_dropped_ = false;
  uint32_t saved_caps_[6] = {};  // Two __user_cap_data_struct (3 words each).
  int error_ = 0;
};

// Drops every supplementary group of the process (all threads).
int DropSupplementaryGroups();

}  // namespace virtiofs::passthrough

#endif  // VIRTIOFS_LIB_PASSTHROUGH_CREDENTIALS_H_
