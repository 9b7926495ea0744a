// A VhostUserDevice for tests and benchmarks: each request queue has a
// worker thread that echoes the readable bytes of every chain into its
// writable buffers. Completions can be held back to keep requests in flight.
#ifndef VIRTIOFS_TESTS_SUPPORT_ECHO_DEVICE_H_
#define VIRTIOFS_TESTS_SUPPORT_ECHO_DEVICE_H_

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "virtiofs/fd.h"
#include "virtiofs/vhost_user.h"

namespace virtiofs::testing {

class EchoDevice : public VhostUserDevice {
 public:
  explicit EchoDevice(uint32_t num_queues, uint32_t max_queue_size = 1024)
      : num_queues_(num_queues), max_queue_size_(max_queue_size) {}
  ~EchoDevice() override;

  uint32_t NumQueues() const override { return num_queues_; }
  uint32_t MaxQueueSize() const override { return max_queue_size_; }
  uint32_t ConfigSize() const override { return sizeof config_; }
  absl::Status ReadConfig(uint32_t offset, std::span<uint8_t> out) const override;
  absl::Status WriteConfig(uint32_t offset, std::span<const uint8_t> data) override;
  void FeaturesChanged(uint64_t features) override { features_ = features; }
  void StartQueue(Vring& vring) override;
  void StopQueue(Vring& vring) override;
  void BackendChannelChanged(std::shared_ptr<BackendChannel> channel) override;
  void Reset() override { resets_.fetch_add(1); }

  // While holding, popped chains wait unanswered until Release() or the
  // queue stops (StopQueue completes them, as a device must).
  void Hold(bool on) { hold_.store(on); }
  void Release();
  size_t held() const;
  // Simulates a back-end that dies: StopQueue drops held chains unanswered
  // (a real device must complete them), leaving them for inflight recovery.
  void AbandonHeldOnStop(bool on) { abandon_.store(on); }

  uint64_t completed() const { return completed_.load(); }
  uint64_t errors() const { return errors_.load(); }
  uint64_t starts() const { return starts_.load(); }
  uint64_t stops() const { return stops_.load(); }
  uint64_t resets() const { return resets_.load(); }
  uint64_t features() const { return features_.load(); }
  std::shared_ptr<BackendChannel> channel() const;
  // Waits until `n` chains completed in total (or times out).
  bool WaitCompleted(uint64_t n, int timeout_ms = 5000) const;

 private:
  struct Worker {
    Vring* vring;
    UniqueFd stop;
    UniqueFd wake;  // Release(): complete what is held.
    std::thread thread;
    std::vector<DescriptorChain> held;
    std::mutex mu;  // held
  };
  void Run(Worker* w);
  void Process(Worker* w, DescriptorChain chain);
  void CompleteHeld(Worker* w);

  const uint32_t num_queues_;
  const uint32_t max_queue_size_;
  uint8_t config_[8] = {'e', 'c', 'h', 'o', 0, 0, 0, 0};
  std::atomic<bool> hold_{false};
  std::atomic<bool> abandon_{false};
  std::atomic<uint64_t> completed_{0}, errors_{0}, starts_{0}, stops_{0}, resets_{0};
  std::atomic<uint64_t> features_{0};
  mutable std::mutex mu_;
  std::map<uint32_t, std::unique_ptr<Worker>> workers_;
  std::shared_ptr<BackendChannel> channel_;
};

}  // namespace virtiofs::testing

#endif  // VIRTIOFS_TESTS_SUPPORT_ECHO_DEVICE_H_
