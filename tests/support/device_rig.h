// The passthrough backend behind the virtio-fs device, served over
// vhost-user on a socket, with a test front-end attached and FUSE INIT done:
// data requests go through the queue worker's engine (io_uring or inline),
// as in the daemon. Request queue 1 (1024 entries) and the hiprio queue are
// started; Call() sends one request and waits for its answer.
#ifndef VIRTIOFS_TESTS_SUPPORT_DEVICE_RIG_H_
#define VIRTIOFS_TESTS_SUPPORT_DEVICE_RIG_H_

#include <fcntl.h>
#include <linux/fuse.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>

#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "tests/support/driver_queue.h"
#include "tests/support/frontend.h"
#include "tests/support/fuse_request.h"
#include "tests/support/guest_ram.h"
#include "virtiofs/passthrough.h"
#include "virtiofs/server.h"
#include "virtiofs/virtio_fs_device.h"

namespace virtiofs::testing {

struct DeviceRig {
  DeviceRig(const std::string& share, const std::string& sock, IoEngineKind kind)
      : ram(GuestRam::CreateOrDie(16 << 20)),
        hiprio(*ram, 128, 0, 0x10000, 0x10000, true),
        q(*ram, 1024, 0x100000, 0x200000, 14 << 20, true) {
    PassthroughOptions po;
    po.root = share;
    po.io_engine = kind;
    auto b = PassthroughBackend::Create(po);
    REQUIRE(b.ok());
    backend = *std::move(b);
    auto d = VirtioFsDevice::Create(backend.get(), VirtioFsDeviceOptions{});
    REQUIRE(d.ok());
    device = *std::move(d);
    auto s = VhostUserServer::Listen(sock, device.get());
    REQUIRE(s.ok());
    server = *std::move(s);
    thread = std::thread([this] { (void)server->Run(); });
    auto f = Frontend::Connect(sock);
    REQUIRE(f.ok());
    fe = *std::move(f);
    using namespace vhost_user;  // NOLINT: protocol names.
    REQUIRE(fe->Negotiate(Bit(VIRTIO_F_VERSION_1) | Bit(VIRTIO_RING_F_INDIRECT_DESC) |
                              Bit(VIRTIO_RING_F_EVENT_IDX) | Bit(kFeatureProtocolFeatures),
                          Bit(kProtocolReplyAck) | Bit(kProtocolMq))
                .ok());
    REQUIRE(fe->SetMemTable(*ram).ok());
    REQUIRE(fe->StartVring(0, hiprio).ok());
    REQUIRE(fe->StartVring(1, q).ok());
    REQUIRE(Call(BuildInit(unique += 2)).error() == 0);
  }
  ~DeviceRig() {
    fe->Close();
    server->Stop();
    thread.join();
    server.reset();
    device.reset();
    backend.reset();
  }
  FuseReply Call(std::vector<uint8_t> req, uint32_t reply = 4096) {
    auto r = FuseTransact(*fe, 1, q, *ram, req, reply);
    INFO(r.status().message());
    REQUIRE(r.ok());
    q.ResetAlloc();
    return *std::move(r);
  }
  FuseReply Call(uint32_t opcode, uint64_t node, const FuseBody& body, uint32_t reply = 4096) {
    return Call(BuildRequest(opcode, unique += 2, node, body.bytes()), reply);
  }
  uint64_t Lookup(uint64_t parent, const std::string& name) {
    auto r = Call(BuildLookup(unique += 2, parent, name));
    REQUIRE(r.error() == 0);
    return r.BodyAs<fuse_entry_out>()->nodeid;
  }
  uint64_t Open(uint64_t node) {
    auto r = Call(FUSE_OPEN, node, FuseBody().Add(fuse_open_in{O_RDWR, 0}));
    REQUIRE(r.error() == 0);
    return r.BodyAs<fuse_open_out>()->fh;
  }
  FuseReply Write(uint64_t node, uint64_t fh, uint64_t offset, std::string_view data) {
    fuse_write_in w{};
    w.fh = fh;
    w.offset = offset;
    w.size = static_cast<uint32_t>(data.size());
    return Call(FUSE_WRITE, node, FuseBody().Add(w).Raw(data));
  }
  FuseReply Read(uint64_t node, uint64_t fh, uint32_t size) {
    fuse_read_in r{};
    r.fh = fh;
    r.size = size;
    return Call(FUSE_READ, node, FuseBody().Add(r), sizeof(fuse_out_header) + size);
  }
  int Fsync(uint64_t node, uint64_t fh) {
    return Call(FUSE_FSYNC, node, FuseBody().Add(fuse_fsync_in{fh, 0, 0})).error();
  }

  std::unique_ptr<GuestRam> ram;
  DriverQueue hiprio, q;
  std::unique_ptr<PassthroughBackend> backend;
  std::unique_ptr<VirtioFsDevice> device;
  std::unique_ptr<VhostUserServer> server;
  std::thread thread;
  std::unique_ptr<Frontend> fe;
  uint64_t unique = 0;
};

}  // namespace virtiofs::testing

#endif  // VIRTIOFS_TESTS_SUPPORT_DEVICE_RIG_H_
