// readonly_view: serves a host directory read-only to a virtual machine over
// vhost-user (virtio-fs): the passthrough backend, wrapped in ReadOnlyView.
//
//   readonly_view --shared-dir DIR --socket-path PATH [--tag TAG]
//                 [--log-level LEVEL]
//
// The point is the composition, three lines in main(): a PassthroughBackend
// (which would serve DIR read-write), a ReadOnlyView over it, a device over
// the view. Reads, lookups, directory listings, xattr reads and locks reach
// the host directory; every change answers EROFS and leaves it unchanged.
// (virtiofsd --readonly does the same inside the passthrough backend.)
// SIGINT or SIGTERM ends it.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "examples/common/example_args.h"
#include "examples/readonly_view/readonly_view.h"
#include "virtiofs/log.h"
#include "virtiofs/passthrough.h"
#include "virtiofs/server.h"
#include "virtiofs/virtio_fs_device.h"

namespace {

struct Args {
  std::string shared_dir;
  std::string socket_path;
  std::string tag = "readonly";
  virtiofs::LogLevel log_level = virtiofs::LogLevel::kInfo;
};

constexpr char kUsage[] =
    "usage: readonly_view --shared-dir DIR --socket-path PATH [--tag TAG]\n"
    "                     [--log-level error|warn|info|debug|trace]\n";

// The options; nullopt (after a message) on bad input.
std::optional<Args> ParseArgs(int argc, char** argv) {
  Args args;
  const bool ok = examples::ParseOptions(
      argc, argv, "readonly_view", kUsage, [&](std::string_view name, std::string_view value) {
        if (name == "--shared-dir") {
          args.shared_dir = value;
        } else if (name == "--socket-path") {
          args.socket_path = value;
        } else if (name == "--tag") {
          args.tag = value;
        } else if (name == "--log-level") {
          auto level = examples::ParseLogLevelOption("readonly_view", value);
          if (!level) return examples::OptionResult::kBad;
          args.log_level = *level;
        } else {
          return examples::OptionResult::kUnknown;
        }
        return examples::OptionResult::kOk;
      });
  if (!ok) return std::nullopt;
  if (args.shared_dir.empty() || args.socket_path.empty()) {
    std::fprintf(stderr, "readonly_view: --shared-dir and --socket-path are required\n%s", kUsage);
    return std::nullopt;
  }
  return args;
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<Args> args = ParseArgs(argc, argv);
  if (!args) return 2;
  virtiofs::SetLogLevel(args->log_level);

  // Signals go to one thread that stops the server; block them before any
  // other thread starts, so that every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  // The host directory, as the passthrough backend serves it (read-write:
  // the view is what makes it read-only).
  virtiofs::PassthroughOptions passthrough_options;
  passthrough_options.root = args->shared_dir;
  auto passthrough = virtiofs::PassthroughBackend::Create(passthrough_options);
  if (!passthrough.ok()) {
    std::fprintf(stderr, "readonly_view: %s\n", passthrough.status().ToString().c_str());
    return 1;
  }
  readonly_view::ReadOnlyView view(passthrough->get());

  virtiofs::VirtioFsDeviceOptions device_options;
  device_options.tag = args->tag;
  auto device = virtiofs::VirtioFsDevice::Create(&view, device_options);
  if (!device.ok()) {
    std::fprintf(stderr, "readonly_view: %s\n", device.status().ToString().c_str());
    return 1;
  }
  virtiofs::ServerOptions server_options;
  server_options.keep_serving = true;  // A rebooted guest reconnects.
  auto server = virtiofs::VhostUserServer::Listen(args->socket_path, device->get(), server_options);
  if (!server.ok()) {
    std::fprintf(stderr, "readonly_view: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf(
      "readonly_view: serving %s read-only on %s. Start QEMU with:\n"
      "  -m 4G -object memory-backend-memfd,id=mem,size=4G,share=on -numa node,memdev=mem \\\n"
      "  -chardev socket,id=char0,path=%s \\\n"
      "  -device vhost-user-fs-pci,queue-size=1024,chardev=char0,tag=%s\n"
      "and in the guest: mount -t virtiofs -o ro %s /mnt\n",
      args->shared_dir.c_str(), args->socket_path.c_str(), args->socket_path.c_str(),
      args->tag.c_str(), args->tag.c_str());
  std::fflush(stdout);

  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    (*server)->Stop();
  });
  absl::Status status = (*server)->Run();
  // Run() may end on its own (an error): wake the signal thread to join it.
  pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  if (!status.ok()) {
    std::fprintf(stderr, "readonly_view: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
