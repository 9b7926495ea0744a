// virtiofsd: serves a host directory to a virtual machine over vhost-user.
//
// This is the first part of the drop-in virtiofsd (see issue "The daemon"):
// the options below work; virtiofsd's others (the legacy -o form, ...) are
// refused with a message until they exist, never silently ignored.
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/program_options.hpp>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "daemon/lockdown.h"
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
  std::string sandbox, seccomp, modcaps;
  std::vector<std::string> uid_maps, gid_maps;
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
       "set the open file limit (default: raise it to 1,000,000 where permitted, else to the "
       "hard limit; 0: leave it)")
      ("sandbox", po::value(&sandbox)->default_value("namespace"),
       "namespace (pivot_root into the shared dir in new mount/pid/net namespaces, plus a user "
       "namespace when not root) | chroot | none")
      ("seccomp", po::value(&seccomp)->default_value("kill"),
       "action on a system call outside the allow-list: kill | log | trap | none")
      ("modcaps", po::value(&modcaps), "adjust the capabilities kept, e.g. +sys_admin:-mknod")
      ("uid-map", po::value(&uid_maps), ":inside:outside:count: (namespace sandbox, not root)")
      ("gid-map", po::value(&gid_maps), ":inside:outside:count: (namespace sandbox, not root)")
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

  // Lockdown (daemon/lockdown.h): configuration checked before anything is
  // bound, so that a refusal is one line and nothing was listening.
  virtiofsd::LockdownConfig lock;
  lock.shared_dir = shared_dir;
  lock.modcaps = modcaps;
  lock.file_handles = popt.inode_file_handles != PassthroughOptions::FileHandles::kNever;
  lock.socket_path = socket_path;
  {
    auto sb = virtiofsd::ParseSandboxKind(sandbox);
    if (!sb.ok()) return Fail(std::string(sb.status().message()));
    lock.sandbox = *sb;
    auto sc = virtiofsd::ParseSeccompAction(seccomp);
    if (!sc.ok()) return Fail(std::string(sc.status().message()));
    lock.seccomp = *sc;
    for (auto [maps, out] : {std::pair{&uid_maps, &lock.uid_map}, {&gid_maps, &lock.gid_map}}) {
      for (const std::string& m : *maps) {
        auto map = virtiofsd::ParseIdMap(m);
        if (!map.ok()) return Fail(std::string(map.status().message()));
        out->push_back(*map);
      }
    }
  }
  if (absl::Status s = virtiofsd::CheckLockdownConfig(lock); !s.ok()) {
    return Fail(std::string(s.message()));
  }
  // Modes from the guest are exact (its umask is applied by it or by the
  // backend); the queue workers also set a umask of 0 of their own.
  umask(0);
  {
    std::optional<uint64_t> nofile;
    if (vm.count("rlimit-nofile")) nofile = vm["rlimit-nofile"].as<uint64_t>();
    auto limit = virtiofsd::SetupRlimitNofile(nofile, lock.file_handles);
    if (!limit.ok()) return Fail(std::string(limit.status().message()));
  }
  // The socket path is usually outside the shared directory: bound before
  // the sandbox hides it.
  if (fd < 0) {
    auto bound = VhostUserServer::BindListeningSocket(socket_path);
    if (!bound.ok()) return Fail(std::string(bound.status().message()));
    fd = bound->release();
  }
  lock.listen_fd = fd;
  // Forks in namespace and chroot modes: only the sandboxed child returns.
  auto sandboxed = virtiofsd::EnterSandbox(lock);
  if (!sandboxed.ok()) return Fail("sandbox: " + std::string(sandboxed.status().message()));
  popt.root = sandboxed->root;
  popt.proc_self_fd = sandboxed->proc_self_fd.get();
  if (!sandboxed->can_setgroups) popt.drop_supplementary_groups = false;
  if (vm.count("thread-pool-size")) {
    VIRTIOFS_LOG(kDebug, "--thread-pool-size {} ignored: one worker per queue",
                 vm["thread-pool-size"].as<int>());
  }
  auto backend = PassthroughBackend::Create(popt);
  if (!backend.ok()) return Fail(std::string(backend.status().message()));
  sandboxed->proc_self_fd.reset();  // The backend holds its own.
  // Capabilities before seccomp (capset is not allowed after it); both
  // before any thread.
  if (absl::Status s = virtiofsd::DropCapabilities(lock); !s.ok()) {
    return Fail("capabilities: " + std::string(s.message()));
  }
  if (absl::Status s = virtiofsd::InstallSeccomp(lock.seccomp); !s.ok()) {
    return Fail("seccomp: " + std::string(s.message()));
  }
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
  auto server = VhostUserServer::FromListeningFd(UniqueFd(fd), device->get(), sopt);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  if (!socket_path.empty()) PrintQemuLine(socket_path, tag, queues);

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
  if (!result.ok()) return Fail(std::string(result.message()));
  return 0;
}
