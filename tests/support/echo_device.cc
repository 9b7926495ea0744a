#include "tests/support/echo_device.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "virtiofs/chain_io.h"
#include "virtiofs/log.h"

namespace virtiofs::testing {

EchoDevice::~EchoDevice() {
  std::vector<Vring*> running;
  {
    std::lock_guard lock(mu_);
    for (auto& [index, w] : workers_) running.push_back(w->vring);
  }
  for (Vring* v : running) StopQueue(*v);
}

absl::Status EchoDevice::ReadConfig(uint32_t offset, std::span<uint8_t> out) const {
  if (offset > sizeof config_ || out.size() > sizeof config_ - offset) {
    return absl::OutOfRangeError("config read out of range");
  }
  std::memcpy(out.data(), config_ + offset, out.size());
  return absl::OkStatus();
}

absl::Status EchoDevice::WriteConfig(uint32_t offset, std::span<const uint8_t> data) {
  if (offset > sizeof config_ || data.size() > sizeof config_ - offset) {
    return absl::OutOfRangeError("config write out of range");
  }
  std::memcpy(config_ + offset, data.data(), data.size());
  return absl::OkStatus();
}

void EchoDevice::BackendChannelChanged(std::shared_ptr<BackendChannel> channel) {
  std::lock_guard lock(mu_);
  channel_ = std::move(channel);
}

std::shared_ptr<BackendChannel> EchoDevice::channel() const {
  std::lock_guard lock(mu_);
  return channel_;
}

void EchoDevice::StartQueue(Vring& vring) {
  auto w = std::make_unique<Worker>();
  w->vring = &vring;
  w->stop.reset(eventfd(0, EFD_CLOEXEC));
  w->wake.reset(eventfd(0, EFD_CLOEXEC));
  Worker* raw = w.get();
  {
    std::lock_guard lock(mu_);
    workers_[vring.index()] = std::move(w);
  }
  raw->thread = std::thread([this, raw] { Run(raw); });
  starts_.fetch_add(1);
}

void EchoDevice::StopQueue(Vring& vring) {
  std::unique_ptr<Worker> w;
  {
    std::lock_guard lock(mu_);
    auto it = workers_.find(vring.index());
    if (it == workers_.end() || it->second->vring != &vring) return;
    w = std::move(it->second);
    workers_.erase(it);
  }
  uint64_t one = 1;
  (void)!write(w->stop.get(), &one, sizeof one);
  w->thread.join();
  // The worker is gone: this thread owns the vring now. Finish what is held.
  if (abandon_.load()) {
    std::lock_guard lock(w->mu);
    w->held.clear();
  } else {
    CompleteHeld(w.get());
  }
  stops_.fetch_add(1);
}

void EchoDevice::Run(Worker* w) {
  Vring& v = *w->vring;
  DescriptorChain chain;
  for (;;) {
    pollfd fds[3] = {{v.kick_fd(), POLLIN, 0}, {w->stop.get(), POLLIN, 0},
                     {w->wake.get(), POLLIN, 0}};
    if (poll(fds, 3, -1) < 0) continue;
    if (fds[1].revents) return;
    if (fds[2].revents) {
      uint64_t n;
      (void)!read(w->wake.get(), &n, sizeof n);
      CompleteHeld(w);
      continue;
    }
    uint64_t n;
    (void)!read(v.kick_fd(), &n, sizeof n);
    v.DisableNotification();
    for (;;) {
      for (;;) {
        auto r = v.Pop(&chain);
        if (!r.ok()) {
          errors_.fetch_add(1);
          if (GetVirtqueueError(r.status()) == VirtqueueError::kAvailIndexJump) break;
          continue;
        }
        if (!*r) break;
        Process(w, std::move(chain));
        chain = DescriptorChain();
      }
      v.Flush();
      if (!v.EnableNotification()) break;
      v.DisableNotification();
    }
  }
}

void EchoDevice::Process(Worker* w, DescriptorChain chain) {
  if (hold_.load()) {
    std::lock_guard lock(w->mu);
    w->held.push_back(std::move(chain));
    return;
  }
  ChainReader in(chain.readable());
  ChainWriter out(chain.writable());
  const size_t n = std::min(in.remaining(), out.remaining());
  std::vector<uint8_t> buf(n);
  if (!in.Read(buf.data(), n).ok() || !out.Write(buf.data(), n).ok() ||
      !w->vring->Complete(chain, static_cast<uint32_t>(n)).ok()) {
    errors_.fetch_add(1);
    return;
  }
  completed_.fetch_add(1);
}

void EchoDevice::CompleteHeld(Worker* w) {
  std::vector<DescriptorChain> held;
  {
    std::lock_guard lock(w->mu);
    held.swap(w->held);
  }
  if (held.empty()) return;
  const bool was = hold_.exchange(false);
  for (DescriptorChain& c : held) Process(w, std::move(c));
  hold_.store(was);
  w->vring->Flush();
}

void EchoDevice::Release() {
  // Completions belong to each worker's thread: wake them to do it.
  hold_.store(false);
  std::lock_guard lock(mu_);
  for (auto& [index, w] : workers_) {
    uint64_t one = 1;
    (void)!write(w->wake.get(), &one, sizeof one);
  }
}

size_t EchoDevice::held() const {
  std::lock_guard lock(mu_);
  size_t n = 0;
  for (auto& [index, w] : workers_) {
    std::lock_guard wl(w->mu);
    n += w->held.size();
  }
  return n;
}

bool EchoDevice::WaitCompleted(uint64_t n, int timeout_ms) const {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (completed_.load() < n) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

}  // namespace virtiofs::testing
