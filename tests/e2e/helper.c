// e2e-helper: the system calls busybox has no applet for, for the end-to-end
// workload. Built with `gcc -static` on the host and run both in the guest
// (through the virtiofs mount) and on the host (holding or probing locks on
// the shared directory). Every subcommand exits 0 on success and prints a
// reason and exits non-zero otherwise.
//
//   errno OP ARGS...          run one call, print the errno name ("0" on success)
//       OP: mkdir P | rmdir P | open P | openw P | creat_excl P | unlink P |
//           rename A B | link A B | symlink T P
//   append FILE TAG N         N writes of "TAG i\n" through one O_APPEND fd
//   mmap FILE SIZE            write a pattern through a shared mapping, msync,
//                             check it with read(); then map the file again
//                             read-only and compare with read()
//   unlinkopen FILE           write, unlink, read back through the open fd
//   fsync FILE                write, fsync, fdatasync
//   statfs PATH               print bsize blocks bfree bavail files ffree namelen
//   xattr FILE                set/get/list/remove user.e2e
//   trylock posix|flock FILE  exit 0 when the lock was taken, 3 when it is busy
//   hold posix|flock FILE READY RELEASE|-
//                             take the lock (waiting), create READY, then hold
//                             until RELEASE exists (polled) or, with -, until
//                             killed; unlock and create READY.released
//   wait FILE SECONDS [STOP]  poll until FILE exists; exit 3 on timeout or
//                             when the file STOP exists
//   getxattr FILE NAME        print the attribute's value
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

static int Fail(const char *what) {
  fprintf(stderr, "e2e-helper: %s: %s\n", what, strerror(errno));
  return 1;
}

static const char *ErrnoName(int e) {
  switch (e) {
    case 0: return "0";
    case EEXIST: return "EEXIST";
    case ENOENT: return "ENOENT";
    case ENOTEMPTY: return "ENOTEMPTY";
    case EISDIR: return "EISDIR";
    case ENOTDIR: return "ENOTDIR";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EINVAL: return "EINVAL";
    case EXDEV: return "EXDEV";
    case ENOSYS: return "ENOSYS";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EBUSY: return "EBUSY";
    case EMLINK: return "EMLINK";
    default: {
      static char buf[32];
      snprintf(buf, sizeof buf, "E%d", e);
      return buf;
    }
  }
}

static int CmdErrno(int argc, char **argv) {
  if (argc < 2) return 2;
  const char *op = argv[0];
  int r = -1;
  if (!strcmp(op, "mkdir")) r = mkdir(argv[1], 0755);
  else if (!strcmp(op, "rmdir")) r = rmdir(argv[1]);
  else if (!strcmp(op, "open")) r = open(argv[1], O_RDONLY);
  else if (!strcmp(op, "openw")) r = open(argv[1], O_WRONLY);
  else if (!strcmp(op, "creat_excl")) r = open(argv[1], O_WRONLY | O_CREAT | O_EXCL, 0644);
  else if (!strcmp(op, "unlink")) r = unlink(argv[1]);
  else if (!strcmp(op, "rename") && argc >= 3) r = rename(argv[1], argv[2]);
  else if (!strcmp(op, "link") && argc >= 3) r = link(argv[1], argv[2]);
  else if (!strcmp(op, "symlink") && argc >= 3) r = symlink(argv[1], argv[2]);
  else return 2;
  printf("%s\n", ErrnoName(r < 0 ? errno : 0));
  return 0;
}

static int WriteAll(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int CmdAppend(char **argv) {
  int fd = open(argv[0], O_WRONLY | O_APPEND | O_CREAT, 0644);
  if (fd < 0) return Fail("open");
  int n = atoi(argv[2]);
  char line[128];
  for (int i = 0; i < n; i++) {
    int len = snprintf(line, sizeof line, "%s %d\n", argv[1], i);
    // One write per line: O_APPEND makes each one land whole at the end.
    if (write(fd, line, (size_t)len) != len) return Fail("write");
  }
  return close(fd) < 0 ? Fail("close") : 0;
}

static unsigned char Pattern(size_t i) { return (unsigned char)((i * 131u + 7u) >> 3); }

static int CmdMmap(char **argv) {
  size_t size = (size_t)atol(argv[1]);
  int fd = open(argv[0], O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return Fail("open");
  if (ftruncate(fd, (off_t)size) < 0) return Fail("ftruncate");
  unsigned char *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) return Fail("mmap shared rw");
  for (size_t i = 0; i < size; i++) m[i] = Pattern(i);
  if (msync(m, size, MS_SYNC) < 0) return Fail("msync");
  munmap(m, size);
  unsigned char *buf = malloc(size);
  if (pread(fd, buf, size, 0) != (ssize_t)size) return Fail("pread");
  for (size_t i = 0; i < size; i++) {
    if (buf[i] != Pattern(i)) {
      fprintf(stderr, "e2e-helper: byte %zu written through mmap reads back as %u\n", i, buf[i]);
      return 1;
    }
  }
  // And the other way: bytes written with write() seen through a new mapping.
  memset(buf, 0x5a, 4096);
  if (pwrite(fd, buf, 4096, 0) != 4096) return Fail("pwrite");
  m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) return Fail("mmap shared ro");
  for (size_t i = 0; i < size; i++) {
    unsigned char want = i < 4096 ? 0x5a : Pattern(i);
    if (m[i] != want) {
      fprintf(stderr, "e2e-helper: mapped byte %zu is %u, want %u\n", i, m[i], want);
      return 1;
    }
  }
  munmap(m, size);
  free(buf);
  return close(fd) < 0 ? Fail("close") : 0;
}

static int CmdUnlinkOpen(char **argv) {
  const char msg[] = "still readable after unlink\n";
  int fd = open(argv[0], O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return Fail("open");
  if (WriteAll(fd, msg, sizeof msg - 1) < 0) return Fail("write");
  if (unlink(argv[0]) < 0) return Fail("unlink");
  struct stat st;
  if (access(argv[0], F_OK) == 0 || errno != ENOENT) {
    fprintf(stderr, "e2e-helper: name still there after unlink\n");
    return 1;
  }
  if (fstat(fd, &st) < 0) return Fail("fstat");
  if (st.st_nlink != 0) {
    fprintf(stderr, "e2e-helper: st_nlink %lu after unlink\n", (unsigned long)st.st_nlink);
    return 1;
  }
  char buf[64] = {0};
  if (pread(fd, buf, sizeof msg - 1, 0) != (ssize_t)(sizeof msg - 1)) return Fail("pread");
  if (memcmp(buf, msg, sizeof msg - 1) != 0) {
    fprintf(stderr, "e2e-helper: read back other bytes after unlink\n");
    return 1;
  }
  // Still writable too.
  if (pwrite(fd, "X", 1, 0) != 1) return Fail("pwrite after unlink");
  return close(fd) < 0 ? Fail("close") : 0;
}

static int CmdFsync(char **argv) {
  int fd = open(argv[0], O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return Fail("open");
  if (WriteAll(fd, "fsync me\n", 9) < 0) return Fail("write");
  if (fsync(fd) < 0) return Fail("fsync");
  if (WriteAll(fd, "fdatasync me\n", 13) < 0) return Fail("write");
  if (fdatasync(fd) < 0) return Fail("fdatasync");
  int dfd = open(".", O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    if (fsync(dfd) < 0) return Fail("fsync directory");
    close(dfd);
  }
  return close(fd) < 0 ? Fail("close") : 0;
}

static int CmdStatfs(char **argv) {
  struct statfs s;
  if (statfs(argv[0], &s) < 0) return Fail("statfs");
  printf("%ld %llu %llu %llu %llu %llu %ld\n", (long)s.f_bsize, (unsigned long long)s.f_blocks,
         (unsigned long long)s.f_bfree, (unsigned long long)s.f_bavail,
         (unsigned long long)s.f_files, (unsigned long long)s.f_ffree, (long)s.f_namelen);
  return 0;
}

static int CmdXattr(char **argv) {
  const char *f = argv[0];
  if (setxattr(f, "user.e2e", "value-1", 7, XATTR_CREATE) < 0) return Fail("setxattr");
  if (setxattr(f, "user.e2e", "v", 1, XATTR_CREATE) == 0 || errno != EEXIST) {
    fprintf(stderr, "e2e-helper: XATTR_CREATE on an existing name did not fail with EEXIST\n");
    return 1;
  }
  char buf[256];
  ssize_t n = getxattr(f, "user.e2e", buf, sizeof buf);
  if (n != 7 || memcmp(buf, "value-1", 7) != 0) return Fail("getxattr");
  n = listxattr(f, buf, sizeof buf);
  if (n < 0) return Fail("listxattr");
  int found = 0;
  for (char *p = buf; p < buf + n; p += strlen(p) + 1) found |= !strcmp(p, "user.e2e");
  if (!found) {
    fprintf(stderr, "e2e-helper: listxattr lacks user.e2e\n");
    return 1;
  }
  if (removexattr(f, "user.e2e") < 0) return Fail("removexattr");
  if (getxattr(f, "user.e2e", buf, sizeof buf) >= 0 || errno != ENODATA) {
    fprintf(stderr, "e2e-helper: getxattr after remove did not fail with ENODATA\n");
    return 1;
  }
  // Left set for the host to check.
  if (setxattr(f, "user.e2e-kept", "kept", 4, 0) < 0) return Fail("setxattr kept");
  return 0;
}

static int Lock(const char *kind, int fd, int wait) {
  if (!strcmp(kind, "flock")) return flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB));
  struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
  return fcntl(fd, wait ? F_SETLKW : F_SETLK, &fl);
}

static int CmdTryLock(char **argv) {
  int fd = open(argv[1], O_RDWR | O_CREAT, 0644);
  if (fd < 0) return Fail("open");
  if (Lock(argv[0], fd, 0) == 0) return 0;
  if (errno == EAGAIN || errno == EACCES || errno == EWOULDBLOCK) return 3;
  return Fail("lock");
}

static void Touch(const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT, 0644);
  if (fd >= 0) close(fd);
}

static volatile sig_atomic_t stop;
static void OnSignal(int sig) {
  (void)sig;
  stop = 1;
}

static void Nap(void) {
  struct timespec ts = {0, 50 * 1000 * 1000};
  nanosleep(&ts, NULL);
}

static int CmdHold(char **argv) {
  int fd = open(argv[1], O_RDWR | O_CREAT, 0644);
  if (fd < 0) return Fail("open");
  // Take the lock, retrying F_SETLK: some daemons answer F_SETLKW with EOPNOTSUPP.
  while (Lock(argv[0], fd, 0) < 0) {
    if (errno != EAGAIN && errno != EACCES && errno != EWOULDBLOCK) return Fail("lock");
    Nap();
  }
  signal(SIGTERM, OnSignal);
  signal(SIGINT, OnSignal);
  Touch(argv[2]);
  const char *release = argv[3];
  while (!stop && (!strcmp(release, "-") || access(release, F_OK) != 0)) Nap();
  if (!strcmp(argv[0], "flock")) {
    flock(fd, LOCK_UN);
  } else {
    struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    fcntl(fd, F_SETLK, &fl);
  }
  close(fd);
  char done[4096];
  snprintf(done, sizeof done, "%s.released", argv[2]);
  Touch(done);
  return 0;
}

static int CmdWait(int argc, char **argv) {
  int rounds = atoi(argv[1]) * 20;
  for (int i = 0; i < rounds; i++) {
    if (access(argv[0], F_OK) == 0) return 0;
    if (argc > 2 && access(argv[2], F_OK) == 0) return 3;
    Nap();
  }
  return 3;
}

static int CmdGetXattr(char **argv) {
  char buf[4096];
  ssize_t n = getxattr(argv[0], argv[1], buf, sizeof buf - 1);
  if (n < 0) return Fail("getxattr");
  buf[n] = 0;
  printf("%s\n", buf);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: e2e-helper COMMAND ARGS...\n");
    return 2;
  }
  const char *cmd = argv[1];
  int n = argc - 2;
  char **a = argv + 2;
  if (!strcmp(cmd, "errno")) return CmdErrno(n, a);
  if (!strcmp(cmd, "append") && n == 3) return CmdAppend(a);
  if (!strcmp(cmd, "mmap") && n == 2) return CmdMmap(a);
  if (!strcmp(cmd, "unlinkopen") && n == 1) return CmdUnlinkOpen(a);
  if (!strcmp(cmd, "fsync") && n == 1) return CmdFsync(a);
  if (!strcmp(cmd, "statfs") && n == 1) return CmdStatfs(a);
  if (!strcmp(cmd, "xattr") && n == 1) return CmdXattr(a);
  if (!strcmp(cmd, "trylock") && n == 2) return CmdTryLock(a);
  if (!strcmp(cmd, "hold") && n == 4) return CmdHold(a);
  if (!strcmp(cmd, "wait") && (n == 2 || n == 3)) return CmdWait(n, a);
  if (!strcmp(cmd, "getxattr") && n == 2) return CmdGetXattr(a);
  fprintf(stderr, "e2e-helper: bad command %s\n", cmd);
  return 2;
}
