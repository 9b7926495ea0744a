// The parts of FUSE protocol 7.39 this library serves that <linux/fuse.h>
// 7.38 lacks, defined once. With newer headers the kernel's definitions are
// used.
#ifndef VIRTIOFS_LIB_FUSE_FUSE_COMPAT_H_
#define VIRTIOFS_LIB_FUSE_FUSE_COMPAT_H_

#include <linux/fuse.h>

#include <cstdint>

#if FUSE_KERNEL_MINOR_VERSION < 39

#define FUSE_CREATE_SUPP_GROUP (1ULL << 34)
#define FUSE_STATX 52
#define FUSE_EXT_GROUPS 32

struct fuse_sx_time {
  int64_t tv_sec;
  uint32_t tv_nsec;
  int32_t __reserved;
};

struct fuse_statx {
  uint32_t mask;
  uint32_t blksize;
  uint64_t attributes;
  uint32_t nlink;
  uint32_t uid;
  uint32_t gid;
  uint16_t mode;
  uint16_t __spare0[1];
  uint64_t ino;
  uint64_t size;
  uint64_t blocks;
  uint64_t attributes_mask;
  struct fuse_sx_time atime;
  struct fuse_sx_time btime;
  struct fuse_sx_time ctime;
  struct fuse_sx_time mtime;
  uint32_t rdev_major;
  uint32_t rdev_minor;
  uint32_t dev_major;
  uint32_t dev_minor;
  uint64_t __spare2[14];
};

struct fuse_statx_in {
  uint32_t getattr_flags;
  uint32_t reserved;
  uint64_t fh;
  uint32_t sx_flags;
  uint32_t sx_mask;
};

struct fuse_statx_out {
  uint64_t attr_valid;
  uint32_t attr_valid_nsec;
  uint32_t flags;
  uint64_t spare[2];
  struct fuse_statx stat;
};

struct fuse_supp_groups {
  uint32_t nr_groups;
  // uint32_t groups[nr_groups] follows.
};

#endif  // FUSE_KERNEL_MINOR_VERSION < 39

// 7.39 headers of Linux 6.6 call bit 36 FUSE_DIRECT_IO_RELAX.
#ifndef FUSE_DIRECT_IO_ALLOW_MMAP
#define FUSE_DIRECT_IO_ALLOW_MMAP (1ULL << 36)
#endif

namespace virtiofs {
// Limits of the Linux FUSE client (fs/fuse/fuse_i.h), not in the UAPI header.
inline constexpr size_t kFuseNameMax = 1024;       // FUSE_NAME_MAX
inline constexpr uint32_t kFuseMaxMaxPages = 256;  // FUSE_MAX_MAX_PAGES
}  // namespace virtiofs

static_assert(sizeof(fuse_statx) == 256);
static_assert(sizeof(fuse_statx_out) == 288);
static_assert(sizeof(fuse_in_header) == 40);

#endif  // VIRTIOFS_LIB_FUSE_FUSE_COMPAT_H_
