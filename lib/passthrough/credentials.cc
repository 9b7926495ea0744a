#include "lib/passthrough/credentials.h"

#include <grp.h>
#include <linux/capability.h>
#include <sys/fsuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

namespace virtiofs::passthrough {

namespace {

// What this thread's fs ids are now. The daemon's are 0/0 (this is only
// used when it runs as root), so requests from root switch nothing.
thread_local uid_t t_fsuid = 0;
thread_local gid_t t_fsgid = 0;

// setfsuid/setfsgid return the previous id and report no error; calling
// again with -1 (invalid) returns the current one, which tells success.
bool SetFsUid(uid_t uid) {
  syscall(SYS_setfsuid, uid);
  return static_cast<uid_t>(syscall(SYS_setfsuid, -1)) == uid;
}
bool SetFsGid(gid_t gid) {
  syscall(SYS_setfsgid, gid);
  return static_cast<gid_t>(syscall(SYS_setfsgid, -1)) == gid;
}

// capget/capset as raw system calls act on the calling thread only.
bool DropEffectiveCaps(__user_cap_data_struct saved[2]) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  if (syscall(SYS_capget, &header, saved) != 0) return false;
  if ((saved[0].effective | saved[1].effective) == 0) return false;  // Nothing to drop.
  __user_cap_data_struct none[2] = {saved[0], saved[1]};
  none[0].effective = none[1].effective = 0;
  return syscall(SYS_capset, &header, none) == 0;
}

void RestoreCaps(const __user_cap_data_struct saved[2]) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  // Within the permitted set: cannot fail.
  (void)syscall(SYS_capset, &header, saved);
}

}  // namespace

ScopedCredentials::ScopedCredentials(bool enabled, uid_t uid, gid_t gid,
                                     std::optional<gid_t> supplementary)
    : enabled_(enabled) {
  if (!enabled_) return;
  // The group first: once fsuid is not 0 the thread may lack CAP_SETGID.
  if (t_fsgid != gid) {
    if (!SetFsGid(gid)) {
      error_ = EPERM;
      return;
    }
    t_fsgid = gid;
  }
  if (supplementary) {
    const gid_t g = *supplementary;
    if (syscall(SYS_setgroups, 1, &g) != 0) {
      error_ = errno;
      return;
    }
    groups_set_ = true;
  }
  if (t_fsuid != uid) {
    if (!SetFsUid(uid)) {
      error_ = EPERM;
      return;
    }
    t_fsuid = uid;
  }
  if (uid != 0) {
    static_assert(sizeof saved_caps_ == 2 * sizeof(__user_cap_data_struct));
    caps_dropped_ = DropEffectiveCaps(reinterpret_cast<__user_cap_data_struct*>(saved_caps_));
  }
}

ScopedCredentials::~ScopedCredentials() {
  if (!enabled_) return;
  // Capabilities first (the saved set lacks the file-system ones, which
  // setfsuid(0) below raises again).
  if (caps_dropped_) RestoreCaps(reinterpret_cast<const __user_cap_data_struct*>(saved_caps_));
  // Back to the daemon's ids: the thread may do other work next (an
  // embedder's thread, a completion), which must not run as the guest user.
  if (t_fsuid != 0) {
    syscall(SYS_setfsuid, 0);
    t_fsuid = 0;
  }
  if (groups_set_) syscall(SYS_setgroups, 0, nullptr);
  if (t_fsgid != 0) {
    syscall(SYS_setfsgid, 0);
    t_fsgid = 0;
  }
}

int DropSupplementaryGroups() { return setgroups(0, nullptr) == 0 ? 0 : errno; }

}  // namespace virtiofs::passthrough
