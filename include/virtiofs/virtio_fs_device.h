// VirtioFsDevice: a virtio-fs device (VIRTIO 1.2 section 5.11) over
// vhost-user, serving one Backend.
//
// Queue 0 is the high-priority queue (FORGET, BATCH_FORGET, INTERRUPT) and
// queues 1..N are request queues, as the Linux driver numbers them. Each
// started queue gets a worker thread that waits on the queue's kick eventfd,
// pops every available chain, runs it through the FuseSession, and completes
// it; EVENT_IDX suppresses notifications both ways. A Backend may answer from
// any thread: the answer is handed back to the queue's worker.
//
// Embedding: give a VhostUserServer this device (see server.h), or drive a
// VhostUserBackend with it from your own event loop (see vhost_user.h).
#ifndef VIRTIOFS_VIRTIO_FS_DEVICE_H_
#define VIRTIOFS_VIRTIO_FS_DEVICE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "virtiofs/backend.h"
#include "virtiofs/fuse_session.h"
#include "virtiofs/vhost_user.h"

namespace virtiofs {

struct VirtioFsDeviceOptions {
  // The mount tag the guest sees (config space; at most 36 bytes). Empty:
  // no config space at all (VHOST_USER_PROTOCOL_F_CONFIG not offered), and
  // the front-end supplies the tag, as QEMU's vhost-user-fs-pci tag= does.
  std::string tag = "virtiofs";
  // Request queues (the device has one more: the high-priority queue).
  uint32_t num_request_queues = 1;
  // Largest queue size accepted (a power of two, at most 32768).
  uint32_t max_queue_size = 1024;
  // After a batch of requests, how long (microseconds) a queue's worker
  // keeps polling the ring for more before it re-enables kicks and sleeps:
  // under load the driver then need not kick (a VM exit each) and the worker
  // need not be woken; an idle guest costs nothing. 0 disables it.
  uint32_t poll_us = 0;
  // FUSE session settings; max_pages is further limited by the request
  // queues' size, as the Linux driver does (queue size - 4 descriptors).
  FuseSessionOptions fuse;
};

class VirtioFsDevice : public VhostUserDevice {
 public:
  // Fails (InvalidArgument) on a tag over 36 bytes, zero or more than 255
  // request queues, or a bad maximum queue size. `backend` must outlive the
  // device.
  static absl::StatusOr<std::unique_ptr<VirtioFsDevice>> Create(Backend* backend,
                                                                VirtioFsDeviceOptions options);
  ~VirtioFsDevice() override;

  uint32_t NumQueues() const override { return 1 + options_.num_request_queues; }
  uint32_t MaxQueueSize() const override { return options_.max_queue_size; }
  uint32_t ConfigSize() const override;
  absl::Status ReadConfig(uint32_t offset, std::span<uint8_t> out) const override;
  void StartQueue(Vring& vring) override;
  void StopQueue(Vring& vring) override;
  void Reset() override;

  FuseSession& session() { return *session_; }
  const FuseSession& session() const { return *session_; }
  const VirtioFsDeviceOptions& options() const { return options_; }
  // Chains completed per queue so far (index = queue).
  uint64_t completed(uint32_t queue) const;
  // Chains taken from a running queue and not completed yet (its depth).
  uint64_t in_flight(uint32_t queue) const;
  // Queues with a running worker.
  size_t running_queues() const;

 private:
  class Worker;
  VirtioFsDevice(Backend* backend, VirtioFsDeviceOptions options);

  Backend* backend_;
  VirtioFsDeviceOptions options_;
  std::unique_ptr<FuseSession> session_;
  mutable std::mutex mu_;
  std::map<uint32_t, std::unique_ptr<Worker>> workers_;
  std::map<uint32_t, uint64_t> completed_;  // Of stopped workers.
};

}  // namespace virtiofs

#endif  // VIRTIOFS_VIRTIO_FS_DEVICE_H_
