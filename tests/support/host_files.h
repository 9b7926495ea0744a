// Small host-side helpers shared by the tests: temporary directories, whole
// files, and counts of the process's open fds and threads (leak checks).
#ifndef VIRTIOFS_TESTS_SUPPORT_HOST_FILES_H_
#define VIRTIOFS_TESTS_SUPPORT_HOST_FILES_H_

#include <dirent.h>
#include <stdlib.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>

namespace virtiofs::testing {

// A directory under /tmp, removed with everything in it.
class TempDir {
 public:
  explicit TempDir(std::string_view prefix = "virtiofs-test") {
    std::string t = "/tmp/" + std::string(prefix) + "-XXXXXX";
    if (mkdtemp(t.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    path = t;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(std::string_view name) const { return path + "/" + std::string(name); }
  std::string path;
};

inline void WriteFile(const std::string& path, std::string_view data) {
  std::ofstream f(path, std::ios::binary);
  f << data;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Entries of a /proc/self directory, not counting the one this reads with.
inline int CountProcEntries(const char* dir) {
  int n = 0;
  DIR* d = opendir(dir);
  if (d == nullptr) return -1;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n;
}
inline int CountFds() { return CountProcEntries("/proc/self/fd") - 1; }  // Minus the DIR's.

// The passthrough suites run a second time with inodes held by file handles
// (tests/meson.build sets VIRTIOFS_TEST_FILE_HANDLES=mandatory for that run).
inline bool TestWithFileHandles() {
  const char* v = std::getenv("VIRTIOFS_TEST_FILE_HANDLES");
  return v != nullptr && std::string_view(v) == "mandatory";
}
inline int CountThreads() { return CountProcEntries("/proc/self/task"); }

}  // namespace virtiofs::testing

#endif  // VIRTIOFS_TESTS_SUPPORT_HOST_FILES_H_
