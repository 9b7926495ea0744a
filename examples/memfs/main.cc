// memfs: serves an in-memory file system to a virtual machine over
// vhost-user (virtio-fs).
//
//   memfs --socket-path PATH [--tag TAG] [--num-request-queues N]
//         [--log-level LEVEL]
//
// It prints the QEMU arguments that attach a vhost-user-fs-pci device to it;
// in the guest: mount -t virtiofs TAG /mnt. The contents live as long as the
// program: a guest that reboots (or the next one) finds them again. SIGINT or
// SIGTERM ends it.
#include <pthread.h>
#include <signal.h>

#include <charconv>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "examples/common/example_args.h"
#include "examples/memfs/memfs.h"
#include "virtiofs/log.h"
#include "virtiofs/server.h"
#include "virtiofs/sync_file_system.h"
#include "virtiofs/virtio_fs_device.h"

namespace {

struct Args {
  std::string socket_path;
  std::string tag = "memfs";
  uint32_t num_request_queues = 1;
  virtiofs::LogLevel log_level = virtiofs::LogLevel::kInfo;
};

constexpr char kUsage[] =
    "usage: memfs --socket-path PATH [--tag TAG] [--num-request-queues N]\n"
    "             [--log-level error|warn|info|debug|trace]\n";

// The options; nullopt (after a message) on bad input.
std::optional<Args> ParseArgs(int argc, char** argv) {
  Args args;
  const bool ok = examples::ParseOptions(
      argc, argv, "memfs", kUsage, [&](std::string_view name, std::string_view value) {
        if (name == "--socket-path") {
          args.socket_path = value;
        } else if (name == "--tag") {
          args.tag = value;
        } else if (name == "--num-request-queues") {
          auto [end, ec] =
              std::from_chars(value.data(), value.data() + value.size(), args.num_request_queues);
          if (ec != std::errc() || end != value.data() + value.size()) {
            std::fprintf(stderr, "memfs: bad number of queues '%.*s'\n",
                         static_cast<int>(value.size()), value.data());
            return examples::OptionResult::kBad;
          }
        } else if (name == "--log-level") {
          auto level = examples::ParseLogLevelOption("memfs", value);
          if (!level) return examples::OptionResult::kBad;
          args.log_level = *level;
        } else {
          return examples::OptionResult::kUnknown;
        }
        return examples::OptionResult::kOk;
      });
  if (!ok) return std::nullopt;
  if (args.socket_path.empty()) {
    std::fprintf(stderr, "memfs: --socket-path is required\n%s", kUsage);
    return std::nullopt;
  }
  return args;
}

void PrintQemuArgs(const Args& args) {
  // vhost-user needs the guest RAM shared with this process: a memfd
  // backend as large as -m, and a NUMA node that uses it.
  std::printf(
      "memfs: serving on %s. Start QEMU with:\n"
      "  -m 4G -object memory-backend-memfd,id=mem,size=4G,share=on -numa node,memdev=mem \\\n"
      "  -chardev socket,id=char0,path=%s \\\n"
      "  -device vhost-user-fs-pci,queue-size=1024,chardev=char0,tag=%s",
      args.socket_path.c_str(), args.socket_path.c_str(), args.tag.c_str());
  if (args.num_request_queues > 1) std::printf(",num-request-queues=%u", args.num_request_queues);
  std::printf("\nand in the guest: mount -t virtiofs %s /mnt\n", args.tag.c_str());
  std::fflush(stdout);
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

  memfs::MemFs fs;
  virtiofs::SyncAdapter backend(fs);
  virtiofs::VirtioFsDeviceOptions device_options;
  device_options.tag = args->tag;
  device_options.num_request_queues = args->num_request_queues;
  auto device = virtiofs::VirtioFsDevice::Create(&backend, device_options);
  if (!device.ok()) {
    std::fprintf(stderr, "memfs: %s\n", device.status().ToString().c_str());
    return 1;
  }
  virtiofs::ServerOptions server_options;
  server_options.keep_serving = true;  // A rebooted guest reconnects.
  auto server = virtiofs::VhostUserServer::Listen(args->socket_path, device->get(), server_options);
  if (!server.ok()) {
    std::fprintf(stderr, "memfs: %s\n", server.status().ToString().c_str());
    return 1;
  }
  PrintQemuArgs(*args);

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
    std::fprintf(stderr, "memfs: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
