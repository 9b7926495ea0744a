// The passthrough backend's tables: node ids to host inodes, handle ids to
// open files. Ids are counters handed to the guest; whatever number it sends
// back is looked up here, never trusted.
#ifndef VIRTIOFS_LIB_PASSTHROUGH_INODE_TABLE_H_
#define VIRTIOFS_LIB_PASSTHROUGH_INODE_TABLE_H_

#include <sys/stat.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "virtiofs/fd.h"

namespace virtiofs::passthrough {

// A host inode is one node however many names reach it (hard links, bind
// mounts of the same file system): (inode number, device, mount id).
struct InodeKey {
  uint64_t ino = 0;
  uint64_t dev = 0;
  uint64_t mnt_id = 0;
  bool operator==(const InodeKey&) const = default;
  template <typename H>
  friend H AbslHashValue(H h, const InodeKey& k) {
    return H::combine(std::move(h), k.ino, k.dev, k.mnt_id);
  }
};

// A mount that file handles are opened through. open_by_handle_at refuses
// O_PATH fds, so the first node met on the mount (its root, or the shared
// directory) is kept as O_PATH and opened for real the first time a handle
// is, as the daemon.
struct HandleMount {
  UniqueFd path;
  bool is_dir = false;
  std::mutex mu;
  UniqueFd fd;
  std::atomic<int> ready{-1};  // fd.get() once open.
};

// A file handle (name_to_handle_at) of a host inode, opened again with
// open_by_handle_at through its mount, which the backend's mount table keeps
// as long as the backend lives. Handles are made by the backend only, never
// taken from the guest; the file system refuses one whose inode is gone
// (ESTALE), its generation number telling a reused inode number apart.
struct FileHandle {
  int type = 0;
  std::vector<uint8_t> bytes;
  HandleMount* mount = nullptr;
};

// How a host inode is held: an O_PATH | O_NOFOLLOW fd, or a file handle
// (then `fd` is not valid and no fd is open while no request uses it).
struct InodeHold {
  UniqueFd fd;
  std::optional<FileHandle> handle;
};

struct Inode {
  uint64_t id = 0;
  InodeKey key;
  uint32_t type = 0;  // S_IFMT bits; a host inode never changes type.
  UniqueFd fd;        // O_PATH | O_NOFOLLOW, unless held by `handle`.
  std::optional<FileHandle> handle;
  std::atomic<uint64_t> lookups{0};
};

class InodeTable {
 public:
  // The root is node FUSE_ROOT_ID and is never forgotten.
  void SetRoot(std::shared_ptr<Inode> root);
  std::shared_ptr<Inode> Get(uint64_t id) const;
  // The node for `key` with one more lookup, or null when there is none.
  std::shared_ptr<Inode> Ref(const InodeKey& key);
  // The node for `key`, with one more lookup: the existing one (and `hold`
  // is dropped) or a new one made of `hold`.
  std::shared_ptr<Inode> Intern(const InodeKey& key, uint32_t type, InodeHold hold);
  // Drops `n` lookups; the node goes when none are left.
  void Forget(uint64_t id, uint64_t n);
  // Forgets every node but the root.
  void Clear();
  size_t size() const;

 private:
  mutable std::shared_mutex mu_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Inode>> by_id_;
  absl::flat_hash_map<InodeKey, std::shared_ptr<Inode>> by_key_;
  uint64_t next_id_ = 2;  // 1 is FUSE_ROOT_ID.
};

// What a directory handle read from the host and did not send yet, as a
// DIR* stream keeps it: a READDIR that goes on where the last one stopped
// needs no lseek (which makes ext4 rebuild its hash-order walk) and no
// second getdents64 of the same entries.
struct DirStream {
  std::vector<char> buf;  // getdents64 data; [pos, len) not sent yet.
  size_t pos = 0;
  size_t len = 0;
  uint64_t offset = 0;  // The guest's cookie for the entry at `pos`.
  bool valid = false;   // The fd's position matches [pos, len) and `offset`.
};

// An open file or directory.
struct Handle {
  std::shared_ptr<Inode> inode;
  UniqueFd fd;
  // The file is on a FUSE file system: its data goes through the synchronous
  // engine (PassthroughFs::DataEngine says why).
  bool inline_io = false;
  std::mutex mu;                   // Directory position (readdir) and lock waits.
  std::unique_ptr<DirStream> dir;  // Made by the first READDIR, under `mu`.
};

class HandleTable {
 public:
  uint64_t Add(std::shared_ptr<Handle> h);
  std::shared_ptr<Handle> Get(uint64_t id) const;
  // The handle, removed from the table (still open while referenced).
  std::shared_ptr<Handle> Remove(uint64_t id);
  void Clear();
  size_t size() const;

 private:
  mutable std::shared_mutex mu_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Handle>> handles_;
  uint64_t next_id_ = 1;
};

}  // namespace virtiofs::passthrough

#endif  // VIRTIOFS_LIB_PASSTHROUGH_INODE_TABLE_H_
