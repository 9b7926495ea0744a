// VhostUserServer: serves one VhostUserDevice on a unix socket, one
// front-end at a time (as vhost-user is), with Boost.Asio inside.
//
// The socket can be a path to listen on, a listening fd inherited from the
// launcher (libvirt's --fd), or an already connected fd. When the front-end
// disconnects, every ring is stopped (in-flight requests complete), its
// memory and fds are released, and the server either returns from Run() or
// accepts the next front-end, as the embedder chooses.
#ifndef VIRTIOFS_SERVER_H_
#define VIRTIOFS_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "virtiofs/fd.h"
#include "virtiofs/vhost_user.h"

namespace virtiofs {

struct ServerOptions {
  // After a front-end disconnects, accept the next one instead of returning
  // from Run(). Has no effect for an already connected fd.
  bool keep_serving = false;
  VhostUserBackendOptions backend;
};

class VhostUserServer {
 public:
  // Binds and listens on `path`. A stale socket file (nobody listening) is
  // replaced; a live one is an error (AlreadyExists), as is any other file.
  static absl::StatusOr<std::unique_ptr<VhostUserServer>> Listen(const std::string& path,
                                                                  VhostUserDevice* device,
                                                                  ServerOptions options = {});
  // Binds and listens on `path` as Listen does (same stale-socket rules),
  // without serving: for a daemon that must bind before entering a sandbox
  // from which the path is out of reach. The caller removes the path.
  static absl::StatusOr<UniqueFd> BindListeningSocket(const std::string& path);
  // Serves on an inherited listening socket.
  static absl::StatusOr<std::unique_ptr<VhostUserServer>> FromListeningFd(
      UniqueFd fd, VhostUserDevice* device, ServerOptions options = {});
  // Serves one front-end on an already connected socket.
  static absl::StatusOr<std::unique_ptr<VhostUserServer>> FromConnectedFd(
      UniqueFd fd, VhostUserDevice* device, ServerOptions options = {});

  ~VhostUserServer();
  VhostUserServer(const VhostUserServer&) = delete;
  VhostUserServer& operator=(const VhostUserServer&) = delete;

  // Serves until the front-end leaves (unless keep_serving) or Stop().
  // Returns OK on a normal end, or the error that ended serving.
  absl::Status Run();
  // Ends Run() from any thread: the current front-end is disconnected first.
  void Stop();

  // Front-ends served so far (including the current one).
  uint64_t connections() const;
  // The path listened on ("" for fds).
  const std::string& path() const;

 private:
  struct Impl;
  explicit VhostUserServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace virtiofs

#endif  // VIRTIOFS_SERVER_H_
