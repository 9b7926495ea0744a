#include "virtiofs/server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <optional>

#include "absl/strings/str_format.h"
#include "virtiofs/log.h"
#include "virtiofs/vhost_user_message.h"

namespace virtiofs {

namespace asio = boost::asio;
using Socket = asio::local::stream_protocol::socket;
using Acceptor = asio::local::stream_protocol::acceptor;

struct VhostUserServer::Impl {
  Impl(VhostUserDevice* d, ServerOptions o) : device(d), options(o), acceptor(io) {}

  VhostUserDevice* device;
  ServerOptions options;
  asio::io_context io;
  Acceptor acceptor;
  bool listening = false;
  std::string path;
  bool owns_path = false;

  // The current connection.
  std::optional<Socket> socket;
  std::optional<vhost_user::MessageReader> reader;
  std::unique_ptr<VhostUserBackend> backend;
  absl::Status result;
  std::atomic<uint64_t> connections{0};

  void Accept();
  void Serve(Socket s);
  void WaitRead();
  void OnReadable();
  void CloseConnection(const absl::Status& why);
};

void VhostUserServer::Impl::Accept() {
  acceptor.async_accept([this](const boost::system::error_code& ec, Socket s) {
    if (ec) {
      if (ec != asio::error::operation_aborted) {
        result = absl::InternalError("accept: " + ec.message());
        io.stop();
      }
      return;
    }
    Serve(std::move(s));
  });
}

void VhostUserServer::Impl::Serve(Socket s) {
  connections.fetch_add(1, std::memory_order_relaxed);
  s.non_blocking(true);
  socket.emplace(std::move(s));
  reader.emplace(socket->native_handle());
  backend = std::make_unique<VhostUserBackend>(device, options.backend);
  VIRTIOFS_LOG(kInfo, "vhost-user front-end connected (connection {})", connections.load());
  WaitRead();
}

void VhostUserServer::Impl::WaitRead() {
  socket->async_wait(Socket::wait_read, [this](const boost::system::error_code& ec) {
    if (ec) {
      if (ec != asio::error::operation_aborted) CloseConnection(absl::InternalError(ec.message()));
      return;
    }
    OnReadable();
  });
}

void VhostUserServer::Impl::OnReadable() {
  for (;;) {
    auto m = reader->Read();
    if (!m.ok()) {
      CloseConnection(m.status());
      return;
    }
    if (!m->has_value()) break;  // Wait for more bytes.
    const vhost_user::Request request = (*m)->request();
    VIRTIOFS_LOG(kTrace, "vhost-user <- {}", vhost_user::RequestName(request));
    auto reply = backend->Handle(std::move(**m));
    if (!reply.ok()) {
      CloseConnection(reply.status());
      return;
    }
    if (reply->has_value()) {
      const VhostUserBackend::Reply& r = **reply;
      if (absl::Status s = vhost_user::SendMessage(socket->native_handle(), r.header, r.payload,
                                                   r.fds);
          !s.ok()) {
        CloseConnection(s);
        return;
      }
    }
  }
  WaitRead();
}

void VhostUserServer::Impl::CloseConnection(const absl::Status& why) {
  if (absl::IsUnavailable(why)) {
    VIRTIOFS_LOG(kInfo, "vhost-user front-end disconnected");
  } else {
    VIRTIOFS_LOG(kError, "vhost-user connection closed: {}", why.message());
  }
  backend.reset();  // Stops the rings and releases the front-end's memory.
  reader.reset();
  boost::system::error_code ignored;
  if (socket) socket->close(ignored);
  socket.reset();
  if (options.keep_serving && listening) {
    Accept();
  } else {
    io.stop();
  }
}

VhostUserServer::VhostUserServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

VhostUserServer::~VhostUserServer() {
  impl_->backend.reset();
  if (impl_->owns_path) unlink(impl_->path.c_str());
}

absl::StatusOr<UniqueFd> VhostUserServer::BindListeningSocket(const std::string& path) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return absl::InvalidArgumentError(
        absl::StrFormat("socket path '%s' is empty or longer than %d bytes", path,
                        sizeof addr.sun_path - 1));
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::AlreadyExistsError(
          absl::StrFormat("socket path '%s' exists and is not a socket", path));
    }
    UniqueFd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      return absl::AlreadyExistsError(
          absl::StrFormat("socket path '%s' is in use by another process", path));
    }
    unlink(path.c_str());  // Stale: its server is gone.
  }
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, "socket");
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrFormat("bind '%s'", path));
  }
  if (listen(fd.get(), 1) != 0) {
    const int e = errno;
    unlink(path.c_str());
    return absl::ErrnoToStatus(e, "listen");
  }
  return fd;
}

absl::StatusOr<std::unique_ptr<VhostUserServer>> VhostUserServer::Listen(
    const std::string& path, VhostUserDevice* device, ServerOptions options) {
  auto fd = BindListeningSocket(path);
  if (!fd.ok()) return fd.status();
  auto server = FromListeningFd(*std::move(fd), device, options);
  if (!server.ok()) {
    unlink(path.c_str());
    return server.status();
  }
  (*server)->impl_->path = path;
  (*server)->impl_->owns_path = true;
  return server;
}

absl::StatusOr<std::unique_ptr<VhostUserServer>> VhostUserServer::FromListeningFd(
    UniqueFd fd, VhostUserDevice* device, ServerOptions options) {
  int accepting = 0;
  socklen_t len = sizeof accepting;
  if (getsockopt(fd.get(), SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) != 0 || !accepting) {
    return absl::InvalidArgumentError(
        absl::StrFormat("fd %d is not a listening socket", fd.get()));
  }
  auto impl = std::make_unique<Impl>(device, options);
  boost::system::error_code ec;
  impl->acceptor.assign(asio::local::stream_protocol(), fd.get(), ec);
  if (ec) return absl::InternalError("adopt listening socket: " + ec.message());
  fd.release();  // Owned by the acceptor now.
  impl->listening = true;
  return std::unique_ptr<VhostUserServer>(new VhostUserServer(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<VhostUserServer>> VhostUserServer::FromConnectedFd(
    UniqueFd fd, VhostUserDevice* device, ServerOptions options) {
  int type = 0;
  socklen_t len = sizeof type;
  if (getsockopt(fd.get(), SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) {
    return absl::InvalidArgumentError(
        absl::StrFormat("fd %d is not a stream socket", fd.get()));
  }
  auto impl = std::make_unique<Impl>(device, options);
  Socket s(impl->io);
  boost::system::error_code ec;
  s.assign(asio::local::stream_protocol(), fd.get(), ec);
  if (ec) return absl::InternalError("adopt connected socket: " + ec.message());
  fd.release();
  impl->Serve(std::move(s));
  return std::unique_ptr<VhostUserServer>(new VhostUserServer(std::move(impl)));
}

absl::Status VhostUserServer::Run() {
  if (impl_->listening && !impl_->socket) impl_->Accept();
  impl_->io.run();
  impl_->io.restart();
  return impl_->result;
}

void VhostUserServer::Stop() {
  asio::post(impl_->io, [impl = impl_.get()] {
    boost::system::error_code ignored;
    impl->acceptor.close(ignored);
    impl->listening = false;
    if (impl->socket) {
      impl->CloseConnection(absl::UnavailableError("server stopped"));
    } else {
      impl->io.stop();
    }
  });
}

uint64_t VhostUserServer::connections() const {
  return impl_->connections.load(std::memory_order_relaxed);
}

const std::string& VhostUserServer::path() const { return impl_->path; }

}  // namespace virtiofs
