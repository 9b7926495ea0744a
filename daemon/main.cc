// virtiofsd: serves a host directory to a virtual machine over vhost-user.
//
// This is the first part of the drop-in virtiofsd (see issue "The daemon"):
// the options below work; virtiofsd's others (sandboxing, seccomp, id
// mapping, the legacy -o form, ...) are refused with a message until they
// exist, never silently ignored.
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/program_options.hpp>
#include <fmt/format.h>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

#include "virtiofs/log.h"
#include "virtiofs/passthrough.h"
#include "virtiofs/server.h"
#include "virtiofs/virtio_fs_device.h"

namespace po = boost::program_options;
using namespace virtiofs;  // NOLINT: a program's main file.

namespace {

constexpr char kVersion[] = "virtiofsd (virtiofs library) 0.1.0";

int Fail(const std::string& message) {
  std::fprintf(stderr, "virtiofsd: %s\n", message.c_str());
  return 1;
}

void PrintQemuLine(const std::string& socket, const std::string& tag, uint32_t queues) {
  std::printf(
      "virtiofsd: serving on %s. Attach QEMU with:\n"
      "  -object memory-backend-memfd,id=mem,size=2G,share=on -numa node,memdev=mem \\\n"
      "  -chardev socket,id=vfs,path=%s \\\n"
      "  -device vhost-user-fs-pci,chardev=vfs,queue-size=1024,tag=%s%s\n"
      "and in the guest: mount -t virtiofs %s /mnt\n",
      socket.c_str(), socket.c_str(), tag.c_str(),
      queues > 1 ? (",num-request-queues=" + std::to_string(queues)).c_str() : "", tag.c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::string shared_dir, socket_path, tag, cache, io_engine, log_level;
  int fd = -1;
  uint32_t queues = 0;
  po::options_description opts("Options");
  opts.add_options()
      ("help,h", "print this help and exit")
      ("version,V", "print the version and exit")
      ("print-capabilities", "print the vhost-user back-end capabilities (JSON) and exit")
      ("shared-dir", po::value(&shared_dir), "the directory to share")
      ("socket-path", po::value(&socket_path), "the vhost-user socket to listen on")
      ("fd", po::value(&fd), "an inherited listening socket fd (instead of --socket-path)")
      ("tag", po::value(&tag)->default_value("virtiofs"), "the mount tag the guest sees")
      ("cache", po::value(&cache)->default_value("auto"), "auto | always | metadata | never")
      ("readonly", "refuse every change (EROFS)")
      ("writeback", "enable the guest's writeback cache")
      ("no-readdirplus", "disable READDIRPLUS")
      ("allow-direct-io", "honour O_DIRECT from the guest")
      ("announce-submounts", "tell the guest about host submounts")
      ("xattr", "serve extended attributes")
      ("posix-acl", "serve POSIX ACLs (implies --xattr)")
      ("num-request-queues", po::value(&queues)->default_value(1),
       "request queues (the guest uses up to one per vCPU)")
      ("io-engine", po::value(&io_engine)->default_value("uring"), "uring | sync")
      ("thread-pool-size", po::value<int>(),
       "accepted for virtiofsd compatibility (libvirt, Kata): requests run on one worker per "
       "queue with io_uring, there is no pool to size")
      ("rlimit-nofile", po::value<uint64_t>(),
       "set the open file limit (default: raise the soft limit to the hard one)")
      ("log-level", po::value(&log_level)->default_value("info"),
       "error | warn | info | debug | trace");
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, opts), vm);
    po::notify(vm);
  } catch (const std::exception& e) {
    return Fail(std::string(e.what()) + " (--help lists the options)");
  }
  if (vm.count("help")) {
    std::cout << "usage: virtiofsd --shared-dir DIR (--socket-path PATH | --fd N) [options]\n"
              << opts;
    return 0;
  }
  if (vm.count("version")) {
    std::puts(kVersion);
    return 0;
  }
  if (vm.count("print-capabilities")) {
    std::puts("{\n  \"type\": \"fs\"\n}");
    return 0;
  }
  auto level = ParseLogLevel(log_level);
  if (!level) return Fail("--log-level: '" + log_level + "' is not a level");
  SetLogLevel(*level);
  if (shared_dir.empty()) return Fail("--shared-dir is required");
  if (socket_path.empty() == (fd < 0)) return Fail("give exactly one of --socket-path and --fd");

  PassthroughOptions popt;
  popt.root = shared_dir;
  if (cache == "auto") {
    popt.cache = PassthroughOptions::Cache::kAuto;
  } else if (cache == "always") {
    popt.cache = PassthroughOptions::Cache::kAlways;
  } else if (cache == "metadata") {
    popt.cache = PassthroughOptions::Cache::kMetadata;
  } else if (cache == "never" || cache == "none") {
    popt.cache = PassthroughOptions::Cache::kNever;
  } else {
    return Fail("--cache: '" + cache + "' is not auto, always, metadata or never");
  }
  if (io_engine == "uring") {
    popt.io_engine = IoEngineKind::kUring;
  } else if (io_engine == "sync") {
    popt.io_engine = IoEngineKind::kSync;
  } else {
    return Fail("--io-engine: '" + io_engine + "' is not uring or sync");
  }
  popt.readonly = vm.count("readonly") > 0;
  popt.writeback = vm.count("writeback") > 0;
  popt.readdirplus = vm.count("no-readdirplus") == 0;
  popt.allow_direct_io = vm.count("allow-direct-io") > 0;
  popt.announce_submounts = vm.count("announce-submounts") > 0;
  popt.posix_acl = vm.count("posix-acl") > 0;
  popt.xattr = vm.count("xattr") > 0 || popt.posix_acl;

  // Modes from the guest are exact (its umask is applied by it or by the
  // backend); the queue workers also set a umask of 0 of their own.
  umask(0);
  // Every inode the guest knows holds an fd: raise the limit as virtiofsd does.
  rlimit nofile{};
  getrlimit(RLIMIT_NOFILE, &nofile);
  if (vm.count("rlimit-nofile")) {
    nofile.rlim_cur = nofile.rlim_max = vm["rlimit-nofile"].as<uint64_t>();
  } else {
    nofile.rlim_cur = nofile.rlim_max;
  }
  if (setrlimit(RLIMIT_NOFILE, &nofile) != 0) {
    return Fail("--rlimit-nofile: " + std::string(strerror(errno)));
  }
  if (vm.count("thread-pool-size")) {
    VIRTIOFS_LOG(kDebug, "--thread-pool-size {} ignored: one worker per queue",
                 vm["thread-pool-size"].as<int>());
  }
  auto backend = PassthroughBackend::Create(popt);
  if (!backend.ok()) return Fail(std::string(backend.status().message()));
  VirtioFsDeviceOptions dopt;
  dopt.tag = tag;
  dopt.num_request_queues = queues;
  auto device = VirtioFsDevice::Create(backend->get(), dopt);
  if (!device.ok()) return Fail(std::string(device.status().message()));

  // SIGINT/SIGTERM end serving from a thread of their own: Stop() is not
  // async-signal-safe. Blocked before any other thread starts.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  ServerOptions sopt;
  sopt.keep_serving = true;
  auto server = fd >= 0 ? VhostUserServer::FromListeningFd(UniqueFd(fd), device->get(), sopt)
                        : VhostUserServer::Listen(socket_path, device->get(), sopt);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  if (fd < 0) PrintQemuLine(socket_path, tag, queues);

  std::thread signals([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    VIRTIOFS_LOG(kInfo, "signal {}: stopping", sig);
    (*server)->Stop();
  });
  absl::Status result = (*server)->Run();
  if (signals.joinable()) {
    pthread_kill(signals.native_handle(), SIGTERM);  // Wakes sigwait if Run ended alone.
    signals.join();
  }
  // Which queues carried the guest's requests (0 is hiprio): shows whether a
  // multi-queue guest spread its load.
  std::string per_queue;
  for (uint32_t q = 0; q < (*device)->NumQueues(); ++q) {
    per_queue += fmt::format("{}{}:{}", q == 0 ? "" : " ", q, (*device)->completed(q));
  }
  VIRTIOFS_LOG(kInfo, "requests completed per queue: {}", per_queue);
  if (!result.ok()) return Fail(std::string(result.message()));
  return 0;
}
