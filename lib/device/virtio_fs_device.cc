// The virtio-fs device: one worker thread per started queue, FUSE requests
// from the queue to the session and replies back to the queue.
#include "virtiofs/virtio_fs_device.h"

#include <linux/virtio_fs.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "virtiofs/log.h"

namespace virtiofs {

namespace {

// The Linux driver keeps this many descriptors of a request for headers
// (FUSE_HEADER_OVERHEAD in fs/fuse/virtio_fs.c).
constexpr uint32_t kHeaderDescriptors = 4;

void Signal(int fd) {
  uint64_t one = 1;
  (void)!write(fd, &one, sizeof one);
}

void Drain(int fd) {
  uint64_t v;
  (void)!read(fd, &v, sizeof v);
}

}  // namespace

// One queue's worker. It alone touches the Vring; answers from other
// threads are queued and handed over through `wake_`.
class VirtioFsDevice::Worker : public CompletionSink {
 public:
  Worker(FuseSession* session, Backend* backend, Vring* vring, uint32_t poll_us)
      : session_(session),
        backend_(backend),
        vring_(vring),
        stop_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
        wake_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
        poll_(std::chrono::microseconds(poll_us)) {}

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }

  // Returns once every request the worker popped has been answered.
  void Stop() {
    Signal(stop_.get());
    if (thread_.joinable()) thread_.join();
  }

  void Complete(DescriptorChain chain, uint32_t reply_length) override {
    if (std::this_thread::get_id() == worker_id_) {
      Finish(chain, reply_length);
      return;
    }
    {
      std::lock_guard lock(mu_);
      remote_.emplace_back(std::move(chain), reply_length);
    }
    Signal(wake_.get());
  }

  Vring* vring() const { return vring_; }
  uint64_t completed() const { return completed_.load(std::memory_order_relaxed); }
  uint64_t in_flight() const {
    // Completed is read first: a chain completed after it counts as still
    // in flight, never as a negative depth.
    const uint64_t done = completed_.load(std::memory_order_relaxed);
    return popped_.load(std::memory_order_relaxed) - done;
  }

 private:
  void Finish(const DescriptorChain& chain, uint32_t reply_length) {
    if (absl::Status s = vring_->Complete(chain, reply_length); !s.ok()) {
      VIRTIOFS_LOG(kError, "queue {}: {}", vring_->index(), s.message());
    }
    completed_.fetch_add(1, std::memory_order_relaxed);
  }

  void DrainRemote() {
    std::vector<std::pair<DescriptorChain, uint32_t>> done;
    {
      std::lock_guard lock(mu_);
      done.swap(remote_);
    }
    for (auto& [chain, len] : done) Finish(chain, len);
  }

  // Pops and runs every available chain, with kick suppression around it
  // (VIRTIO 1.2 2.7.10): disable, drain, enable, re-check. With a poll
  // window, the worker first keeps looking for more (kicks still off, so
  // the driver need not kick) before it sleeps.
  void ProcessRing() {
    DescriptorChain chain;
    vring_->DisableNotification();
    for (;;) {
      for (;;) {
        auto r = vring_->Pop(&chain);
        if (!r.ok()) {
          VIRTIOFS_LOG(kWarning, "queue {}: dropped chain: {}", vring_->index(),
                       r.status().message());
          if (GetVirtqueueError(r.status()) == VirtqueueError::kAvailIndexJump) {
            broken_ = true;
            break;
          }
          continue;
        }
        if (!*r) break;
        popped_.fetch_add(1, std::memory_order_relaxed);
        session_->Handle(std::move(chain), this, queue_.get());
        chain = DescriptorChain();
      }
      if (queue_) {
        queue_->Flush();  // One submission for the whole batch.
        // What completed at submission (a read from the page cache) is
        // answered in the same used-ring update.
        queue_->Process();
      }
      vring_->Flush();
      if (broken_) break;
      if (PollForMore()) continue;
      if (!vring_->EnableNotification()) break;
      vring_->DisableNotification();
    }
  }

  // Spins up to the poll window for new chains, answering I/O completions
  // meanwhile. True when chains arrived.
  bool PollForMore() {
    if (poll_.count() == 0) return false;
    const auto end = std::chrono::steady_clock::now() + poll_;
    do {
      if (vring_->HasAvailable()) return true;
      if (queue_) {
        queue_->Process();
        vring_->Flush();
      }
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    } while (std::chrono::steady_clock::now() < end);
    return false;
  }

  void Run() {
    worker_id_ = std::this_thread::get_id();
    // Made on this thread: it belongs to it (an io_uring, say).
    queue_ = backend_->CreateQueueContext(vring_->index());
    const int queue_fd = queue_ ? queue_->fd() : -1;
    bool stopping = false;
    for (;;) {
      if (stopping && vring_->in_flight() == 0) break;
      pollfd fds[4] = {{wake_.get(), POLLIN, 0},
                       {stop_.get(), POLLIN, 0},
                       {vring_->kick_fd(), static_cast<short>(stopping || broken_ ? 0 : POLLIN), 0},
                       {queue_fd, POLLIN, 0}};
      if (poll(fds, queue_fd >= 0 ? 4 : 3, -1) < 0) continue;
      if (queue_fd >= 0 && fds[3].revents) {
        queue_->Process();  // Completions answer replies on this thread.
        queue_->Flush();
        vring_->Flush();
      }
      if (fds[0].revents) {
        Drain(wake_.get());
        DrainRemote();
        vring_->Flush();
      }
      if (fds[1].revents) {
        Drain(stop_.get());
        stopping = true;
      }
      if (fds[2].revents & POLLIN) {
        Drain(vring_->kick_fd());
        ProcessRing();
      }
    }
    vring_->Flush();
    queue_.reset();
  }

  FuseSession* session_;
  Backend* backend_;
  std::unique_ptr<QueueContext> queue_;
  Vring* vring_;
  UniqueFd stop_;
  UniqueFd wake_;
  std::thread thread_;
  std::thread::id worker_id_;
  std::chrono::nanoseconds poll_;
  bool broken_ = false;
  std::mutex mu_;
  std::vector<std::pair<DescriptorChain, uint32_t>> remote_;
  std::atomic<uint64_t> completed_{0};
  std::atomic<uint64_t> popped_{0};
};

absl::StatusOr<std::unique_ptr<VirtioFsDevice>> VirtioFsDevice::Create(
    Backend* backend, VirtioFsDeviceOptions options) {
  if (backend == nullptr) return absl::InvalidArgumentError("no backend");
  if (options.tag.size() > sizeof(virtio_fs_config::tag)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tag '%s' has more than 36 bytes", options.tag));
  }
  if (options.num_request_queues == 0 || options.num_request_queues > 255) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%d request queues: 1 to 255 are possible", options.num_request_queues));
  }
  const uint32_t m = options.max_queue_size;
  if (m == 0 || (m & (m - 1)) != 0 || m > SplitQueue::kMaxSize) {
    return absl::InvalidArgumentError(
        absl::StrFormat("maximum queue size %d is not a power of two up to 32768", m));
  }
  return std::unique_ptr<VirtioFsDevice>(new VirtioFsDevice(backend, std::move(options)));
}

VirtioFsDevice::VirtioFsDevice(Backend* backend, VirtioFsDeviceOptions options)
    : backend_(backend),
      options_(std::move(options)),
      session_(std::make_unique<FuseSession>(backend_, options_.fuse)) {}

VirtioFsDevice::~VirtioFsDevice() {
  std::vector<Vring*> running;
  {
    std::lock_guard lock(mu_);
    for (auto& [index, w] : workers_) running.push_back(w->vring());
  }
  for (Vring* v : running) StopQueue(*v);
}

uint32_t VirtioFsDevice::ConfigSize() const {
  return options_.tag.empty() ? 0 : sizeof(virtio_fs_config);
}

absl::Status VirtioFsDevice::ReadConfig(uint32_t offset, std::span<uint8_t> out) const {
  virtio_fs_config config{};
  std::memcpy(config.tag, options_.tag.data(), options_.tag.size());  // NUL padded.
  config.num_request_queues = htole32(options_.num_request_queues);
  if (offset > sizeof config || out.size() > sizeof config - offset) {
    return absl::OutOfRangeError("read beyond the virtio-fs config space");
  }
  std::memcpy(out.data(), reinterpret_cast<const uint8_t*>(&config) + offset, out.size());
  return absl::OkStatus();
}

void VirtioFsDevice::StartQueue(Vring& vring) {
  if (vring.index() >= 1 && !session_->initialized()) {
    // A request the guest sends is limited by the queue size, so is max_write.
    const uint32_t pages =
        vring.size() > kHeaderDescriptors ? vring.size() - kHeaderDescriptors : 1;
    session_->LimitMaxPages(pages);
  }
  auto worker = std::make_unique<Worker>(session_.get(), backend_, &vring, options_.poll_us);
  Worker* raw = worker.get();
  {
    std::lock_guard lock(mu_);
    workers_[vring.index()] = std::move(worker);
  }
  raw->Start();
  VIRTIOFS_LOG(kDebug, "queue {} started (size {})", vring.index(), vring.size());
}

void VirtioFsDevice::StopQueue(Vring& vring) {
  std::unique_ptr<Worker> worker;
  {
    std::lock_guard lock(mu_);
    auto it = workers_.find(vring.index());
    if (it == workers_.end() || it->second->vring() != &vring) return;
    worker = std::move(it->second);
    workers_.erase(it);
  }
  // Requests that wait indefinitely would hold the stop (and the front-end's
  // GET_VRING_BASE) forever.
  backend_->InterruptWaits();
  worker->Stop();
  std::lock_guard lock(mu_);
  completed_[vring.index()] += worker->completed();
}

void VirtioFsDevice::Reset() {
  // The FUSE session outlives the device's vhost-user state: QEMU sends
  // SET_STATUS(0) on every VM stop and a front-end may reconnect under a
  // mounted guest, which goes on with its session. It ends with DESTROY or
  // with a new INIT (a rebooted guest).
}

uint64_t VirtioFsDevice::completed(uint32_t queue) const {
  std::lock_guard lock(mu_);
  uint64_t n = 0;
  if (auto it = completed_.find(queue); it != completed_.end()) n += it->second;
  if (auto it = workers_.find(queue); it != workers_.end()) n += it->second->completed();
  return n;
}

uint64_t VirtioFsDevice::in_flight(uint32_t queue) const {
  std::lock_guard lock(mu_);
  auto it = workers_.find(queue);
  return it == workers_.end() ? 0 : it->second->in_flight();
}

size_t VirtioFsDevice::running_queues() const {
  std::lock_guard lock(mu_);
  return workers_.size();
}

}  // namespace virtiofs
