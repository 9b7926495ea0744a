// PassthroughBackend: serves a host directory to the guest, confined to it.
//
// Every node the guest knows is a counter in an inode table, mapped to an
// O_PATH file descriptor (or, with inode_file_handles, a file handle that is
// opened again when needed, so a guest walking millions of files does not
// exhaust the fd limit). Every path operation is relative to such a
// descriptor with a single, checked name component, never a path string, so
// no name, symlink or rename race leads outside the shared directory.
//
// Requests that create nodes run with the caller's fsuid/fsgid so that
// ownership is the guest user's; others run with them too, so that the host
// kernel checks permissions as the guest user. File data moves between the
// host file and guest memory with the queue's IoEngine (io_uring) when the
// device provides one, else with preadv/pwritev.
#ifndef VIRTIOFS_PASSTHROUGH_H_
#define VIRTIOFS_PASSTHROUGH_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "virtiofs/backend.h"
#include "virtiofs/id_map.h"
#include "virtiofs/io_engine.h"

namespace virtiofs {

struct PassthroughOptions {
  // The shared directory.
  std::string root;

  // How long the guest may cache names and attributes, and whether it may
  // keep file data cached across opens (virtiofsd's --cache).
  enum class Cache { kNever, kMetadata, kAuto, kAlways };
  Cache cache = Cache::kAuto;
  // Overrides the entry and attribute timeout (seconds) the cache policy
  // implies (the legacy `-o timeout=`).
  std::optional<double> timeout;

  // How inodes are held (virtiofsd's --inode-file-handles):
  //   kNever:     one O_PATH fd per inode the guest knows (limited by
  //               RLIMIT_NOFILE: a large walk runs into EMFILE).
  //   kPrefer:    a file handle (name_to_handle_at) per inode, opened again
  //               only while a request uses it; O_PATH fds on file systems
  //               that cannot make handles (logged once each) and everywhere
  //               when open_by_handle_at is not permitted.
  //   kMandatory: file handles only: Create fails when the shared directory's
  //               file system cannot make them or open_by_handle_at is not
  //               permitted; lookups on other file systems without them fail
  //               with EOPNOTSUPP.
  // open_by_handle_at needs CAP_DAC_READ_SEARCH (in the initial user
  // namespace for most file systems). A node whose host inode was removed
  // answers ESTALE (an fd-held one keeps the removed inode alive instead).
  enum class FileHandles { kNever, kPrefer, kMandatory };
  FileHandles inode_file_handles = FileHandles::kNever;

  bool readonly = false;          // Every change fails with EROFS.
  bool writeback = false;         // FUSE_WRITEBACK_CACHE.
  bool readdirplus = true;        // FUSE_DO_READDIRPLUS / READDIRPLUS_AUTO.
  bool xattr = true;              // Extended attributes (else ENOSYS).
  bool posix_acl = false;         // FUSE_POSIX_ACL (needs xattr).
  bool security_label = false;    // FUSE_SECURITY_CTX.
  // Extended attribute name mapping (virtiofsd's --xattrmap syntax, see
  // ValidateXattrMap); empty: names pass unchanged.
  std::string xattrmap;
  bool killpriv_v2 = true;        // FUSE_HANDLE_KILLPRIV_V2.
  bool announce_submounts = false;  // FUSE_SUBMOUNTS and FUSE_ATTR_SUBMOUNT.
  bool allow_direct_io = false;   // Keep O_DIRECT from the guest.
  // FUSE_DIRECT_IO_ALLOW_MMAP: the guest may mmap files opened with
  // direct I/O (cache never/metadata); shared mappings then go through the
  // guest's page cache without coherence with the host.
  bool allow_mmap = false;
  // Keep O_NOATIME from the guest. When false it is dropped, for a daemon
  // without CAP_FOWNER that would otherwise fail opens of others' files.
  bool preserve_noatime = true;
  // FUSE_POSIX_LOCKS: host OFD locks, one open file per (node, lock owner)
  // that locks, so guest processes conflict with each other and a close()
  // (FLUSH) drops the closing process's locks. At most 4096 owners with
  // locks at once (then ENOLCK); each holds one descriptor.
  bool posix_locks = true;
  bool flock = true;              // FUSE_FLOCK_LOCKS.
  // File data I/O: io_uring on each queue worker (falls back to the
  // synchronous engine where io_uring is unavailable), or synchronous.
  IoEngineKind io_engine = IoEngineKind::kUring;
  // An O_PATH descriptor of /proc/self/fd to use (duplicated; the caller
  // keeps its own), or -1 to open "/proc/self/fd" at creation. A sandbox
  // that pivots into the shared directory opens it before the pivot, when
  // /proc is still reachable by path.
  int proc_self_fd = -1;
  // Guest <-> host uid and gid translation (virtiofsd's --translate-uid and
  // --translate-gid; syntax in virtiofs/id_map.h): applied to the caller's
  // ids of every request, to owners set by SETATTR, and to the owners in
  // every attribute reply. POSIX ACL xattr values are passed unchanged.
  IdMap translate_uid;
  IdMap translate_gid;
  // Drop the process's supplementary groups at creation (CVE-2022-0358); a
  // library user who manages credentials itself can turn this off.
  bool drop_supplementary_groups = true;
};

// Checks an xattr mapping (virtiofsd's --xattrmap): rules
// `<sep>type<sep>scope<sep>key<sep>prepend<sep>` with type prefix | ok | bad |
// unsupported and scope client | server | all, or a final
// `<sep>map<sep>key<sep>prepend<sep>`. The first matching rule decides;
// guest names matching `key` are refused (bad: EPERM, unsupported: ENOTSUP),
// passed (ok) or prefixed with `prepend` (prefix); host names in listings
// matching `prepend` are hidden, passed or stripped of it. Fails when the
// rules leave a name unmatched or do not parse.
absl::Status ValidateXattrMap(std::string_view spec);

class PassthroughBackend : public Backend {
 public:
  // Opens the shared directory. Fails when it is missing, not a directory,
  // or when file handles are mandatory and unsupported there.
  static absl::StatusOr<std::unique_ptr<PassthroughBackend>> Create(PassthroughOptions options);

  // Introspection (stats, tests).
  virtual size_t inode_count() const = 0;
  virtual size_t handle_count() const = 0;
  virtual const PassthroughOptions& options() const = 0;
};

}  // namespace virtiofs

#endif  // VIRTIOFS_PASSTHROUGH_H_
