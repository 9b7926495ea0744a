#include "lib/passthrough/inode_table.h"

#include <linux/fuse.h>

namespace virtiofs::passthrough {

void InodeTable::SetRoot(std::shared_ptr<Inode> root) {
  std::unique_lock lock(mu_);
  root->id = FUSE_ROOT_ID;
  root->lookups = 1;
  by_key_[root->key] = root;
  by_id_[FUSE_ROOT_ID] = std::move(root);
}

std::shared_ptr<Inode> InodeTable::Get(uint64_t id) const {
  std::shared_lock lock(mu_);
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : it->second;
}

std::shared_ptr<Inode> InodeTable::Ref(const InodeKey& key) {
  // Exclusive: a concurrent Forget must not drop the node between the find
  // and the count.
  std::unique_lock lock(mu_);
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return nullptr;
  it->second->lookups.fetch_add(1, std::memory_order_relaxed);
  return it->second;
}

std::shared_ptr<Inode> InodeTable::Intern(const InodeKey& key, uint32_t type, InodeHold hold) {
  std::unique_lock lock(mu_);
  if (auto it = by_key_.find(key); it != by_key_.end()) {
    it->second->lookups.fetch_add(1, std::memory_order_relaxed);
    return it->second;
  }
  auto inode = std::make_shared<Inode>();
  inode->id = next_id_++;
  inode->key = key;
  inode->type = type;
  inode->fd = std::move(hold.fd);
  inode->handle = std::move(hold.handle);
  inode->lookups = 1;
  by_key_[key] = inode;
  by_id_[inode->id] = inode;
  return inode;
}

void InodeTable::Forget(uint64_t id, uint64_t n) {
  if (id == FUSE_ROOT_ID) return;
  std::unique_lock lock(mu_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return;  // A guest forgetting what it never had.
  Inode& inode = *it->second;
  const uint64_t have = inode.lookups.load(std::memory_order_relaxed);
  if (n < have) {
    inode.lookups.store(have - n, std::memory_order_relaxed);
    return;
  }
  by_key_.erase(inode.key);
  by_id_.erase(it);  // The fd closes when the last request using it ends.
}

void InodeTable::Clear() {
  std::unique_lock lock(mu_);
  auto root = by_id_.find(FUSE_ROOT_ID);
  std::shared_ptr<Inode> keep = root == by_id_.end() ? nullptr : root->second;
  by_id_.clear();
  by_key_.clear();
  if (keep) {
    keep->lookups = 1;
    by_key_[keep->key] = keep;
    by_id_[FUSE_ROOT_ID] = keep;
  }
}

size_t InodeTable::size() const {
  std::shared_lock lock(mu_);
  return by_id_.size();
}

uint64_t HandleTable::Add(std::shared_ptr<Handle> h) {
  std::unique_lock lock(mu_);
  const uint64_t id = next_id_++;
  handles_[id] = std::move(h);
  return id;
}

std::shared_ptr<Handle> HandleTable::Get(uint64_t id) const {
  std::shared_lock lock(mu_);
  auto it = handles_.find(id);
  return it == handles_.end() ? nullptr : it->second;
}

std::shared_ptr<Handle> HandleTable::Remove(uint64_t id) {
  std::unique_lock lock(mu_);
  auto it = handles_.find(id);
  if (it == handles_.end()) return nullptr;
  auto h = std::move(it->second);
  handles_.erase(it);
  return h;
}

void HandleTable::Clear() {
  std::unique_lock lock(mu_);
  handles_.clear();
}

size_t HandleTable::size() const {
  std::shared_lock lock(mu_);
  return handles_.size();
}

}  // namespace virtiofs::passthrough
