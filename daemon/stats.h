// The daemon's statistics: per-opcode counts and latency histograms, queue
// depths, inode and handle counts, fds in use and memory, as JSON or as
// Prometheus text, on demand (SIGUSR1) or on a unix socket (--stats-socket).
#ifndef VIRTIOFS_DAEMON_STATS_H_
#define VIRTIOFS_DAEMON_STATS_H_

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "virtiofs/fd.h"
#include "virtiofs/passthrough.h"
#include "virtiofs/virtio_fs_device.h"

namespace virtiofsd {

// Where the figures come from; both must outlive every use.
struct StatsSources {
  const virtiofs::VirtioFsDevice* device = nullptr;
  const virtiofs::PassthroughBackend* backend = nullptr;
  // O_PATH of this process's /proc/self/fd (the caller keeps it open), or
  // -1: /proc/self by path (which a sandbox may not have).
  int proc_self_fd = -1;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
};

// One JSON object (a single line when `compact`).
std::string StatsJson(const StatsSources& s, bool compact = false);
// Prometheus text exposition format 0.0.4.
std::string StatsPrometheus(const StatsSources& s);

// Serves the statistics on a unix socket, one request per connection, from a
// thread of its own. A request is either HTTP (GET /metrics: Prometheus
// text; any other path: JSON) or one plain line ("metrics" or "prometheus":
// Prometheus text; anything else: JSON). A client that sends nothing within
// a second gets the JSON.
class StatsServer {
 public:
  // Serves on `listening` (from virtiofs::ListenUnixSocket, bound before
  // the daemon sandboxed itself; removing the path is the caller's).
  static absl::StatusOr<std::unique_ptr<StatsServer>> Start(virtiofs::UniqueFd listening,
                                                            StatsSources sources);
  ~StatsServer();  // Stops serving.
  StatsServer(const StatsServer&) = delete;
  StatsServer& operator=(const StatsServer&) = delete;

 private:
  StatsServer(virtiofs::UniqueFd listen, virtiofs::UniqueFd stop, StatsSources sources);
  void Run();
  void Serve(int fd);

  virtiofs::UniqueFd listen_, stop_;
  StatsSources sources_;
  std::thread thread_;
};

}  // namespace virtiofsd

#endif  // VIRTIOFS_DAEMON_STATS_H_
