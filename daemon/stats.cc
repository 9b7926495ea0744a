#include "daemon/stats.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "virtiofs/fuse_session.h"
#include "virtiofs/log.h"
#include "virtiofs/server.h"

namespace virtiofsd {
namespace {

using virtiofs::FuseOpStats;
using virtiofs::FuseSession;

// Opens `name` under /proc/self/fd: through `proc_fd` when it is one, else
// by path.
int OpenProc(int proc_fd, const char* name, int flags) {
  if (proc_fd >= 0) return openat(proc_fd, name, flags | O_CLOEXEC);
  return open((std::string("/proc/self/fd/") + name).c_str(), flags | O_CLOEXEC);
}

// Open fds of this process (what /proc/self/fd lists, minus the one used to
// list it), or -1.
int CountFds(int proc_fd) {
  const int fd = OpenProc(proc_fd, ".", O_RDONLY | O_DIRECTORY);
  if (fd < 0) return -1;
  DIR* d = fdopendir(fd);
  if (d == nullptr) {
    close(fd);
    return -1;
  }
  int n = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n - 1;
}

uint64_t RssBytes(int proc_fd) {
  const int fd = OpenProc(proc_fd, "../statm", O_RDONLY);
  if (fd < 0) return 0;
  FILE* f = fdopen(fd, "re");
  if (f == nullptr) {
    close(fd);
    return 0;
  }
  unsigned long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  return n == 2 ? uint64_t{resident} * uint64_t(sysconf(_SC_PAGESIZE)) : 0;
}

// The latency under which `fraction` of the replies came (the upper bound
// of the histogram bucket holding that rank), in microseconds; 0 when empty.
double PercentileUs(const FuseOpStats& s, double fraction) {
  uint64_t total = 0;
  for (uint64_t b : s.buckets) total += b;
  if (total == 0) return 0;
  const uint64_t rank = static_cast<uint64_t>(std::ceil(fraction * double(total)));
  uint64_t seen = 0;
  for (int i = 0; i < FuseOpStats::kBuckets; ++i) {
    seen += s.buckets[i];
    if (seen >= rank) {
      // The open last bucket reports its lower bound.
      return i == FuseOpStats::kBuckets - 1 ? FuseOpStats::BucketLimitUs(i - 1)
                                            : FuseOpStats::BucketLimitUs(i);
    }
  }
  return FuseOpStats::BucketLimitUs(FuseOpStats::kBuckets - 2);
}

double Seconds(const StatsSources& s) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - s.start).count();
}

}  // namespace

std::string StatsJson(const StatsSources& s, bool compact) {
  const char* nl = compact ? "" : "\n";
  const char* in = compact ? "" : "  ";
  const char* in2 = compact ? "" : "    ";
  std::string o = "{";
  o += nl;
  o += fmt::format("{}\"uptime_seconds\": {:.3f},{}", in, Seconds(s), nl);
  o += fmt::format("{}\"rss_bytes\": {},{}", in, RssBytes(s.proc_self_fd), nl);
  o += fmt::format("{}\"open_fds\": {},{}", in, CountFds(s.proc_self_fd), nl);
  if (s.backend != nullptr) {
    o += fmt::format("{}\"inodes\": {},{}", in, s.backend->inode_count(), nl);
    o += fmt::format("{}\"handles\": {},{}", in, s.backend->handle_count(), nl);
  }
  const FuseSession& session = s.device->session();
  o += fmt::format("{}\"session\": {{\"initialized\": {}, \"minor\": {}, \"in_flight\": {}}},{}",
                   in, session.initialized(), session.minor(), session.in_flight(), nl);
  o += fmt::format("{}\"queues\": [", in);
  for (uint32_t q = 0; q < s.device->NumQueues(); ++q) {
    o += fmt::format("{}{}{}{{\"index\": {}, \"completed\": {}, \"in_flight\": {}}}",
                     q == 0 ? "" : ",", nl, in2, q, s.device->completed(q), s.device->in_flight(q));
  }
  o += fmt::format("{}{}],{}", nl, in, nl);
  o += fmt::format("{}\"opcodes\": {{", in);
  bool first = true;
  for (uint32_t op = 0; op < FuseSession::kMaxOpcode; ++op) {
    const uint64_t requests = session.count(op);
    const FuseOpStats st = session.op_stats(op);
    if (requests == 0 && st.replies == 0) continue;
    uint64_t timed = 0;
    for (uint64_t b : st.buckets) timed += b;
    o += fmt::format(
        "{}{}{}\"{}\": {{\"requests\": {}, \"replies\": {}, \"errors\": {}, \"mean_us\": {:.1f}, "
        "\"p50_us\": {}, \"p99_us\": {}, \"buckets\": [",
        first ? "" : ",", nl, in2, virtiofs::FuseOpcodeName(op), requests, st.replies, st.errors,
        timed == 0 ? 0.0 : double(st.total_ns) / 1000.0 / double(timed), PercentileUs(st, 0.5),
        PercentileUs(st, 0.99));
    for (int i = 0; i < FuseOpStats::kBuckets; ++i) {
      o += fmt::format("{}{}", i == 0 ? "" : ",", st.buckets[i]);
    }
    o += "]}";
    first = false;
  }
  o += fmt::format("{}{}}}{}}}{}", nl, in, nl, compact ? "" : "\n");
  return o;
}

std::string StatsPrometheus(const StatsSources& s) {
  std::string o;
  auto gauge = [&](std::string_view name, std::string_view help, auto value) {
    o += fmt::format("# HELP {} {}\n# TYPE {} gauge\n{} {}\n", name, help, name, name, value);
  };
  gauge("virtiofs_uptime_seconds", "Seconds since the daemon started.", Seconds(s));
  gauge("process_resident_memory_bytes", "Resident memory size in bytes.",
        RssBytes(s.proc_self_fd));
  gauge("process_open_fds", "Open file descriptors.", CountFds(s.proc_self_fd));
  if (s.backend != nullptr) {
    gauge("virtiofs_inodes", "Inodes the guest knows.", s.backend->inode_count());
    gauge("virtiofs_handles", "Open file and directory handles.", s.backend->handle_count());
  }
  const FuseSession& session = s.device->session();
  gauge("virtiofs_requests_in_flight", "FUSE requests being served.", session.in_flight());
  o += "# HELP virtiofs_queue_completed_total Chains completed per virtqueue.\n"
       "# TYPE virtiofs_queue_completed_total counter\n";
  for (uint32_t q = 0; q < s.device->NumQueues(); ++q) {
    o += fmt::format("virtiofs_queue_completed_total{{queue=\"{}\"}} {}\n", q,
                     s.device->completed(q));
  }
  o += "# HELP virtiofs_queue_in_flight Chains taken from a virtqueue and not completed.\n"
       "# TYPE virtiofs_queue_in_flight gauge\n";
  for (uint32_t q = 0; q < s.device->NumQueues(); ++q) {
    o += fmt::format("virtiofs_queue_in_flight{{queue=\"{}\"}} {}\n", q, s.device->in_flight(q));
  }
  o += "# HELP virtiofs_requests_total FUSE requests received per opcode.\n"
       "# TYPE virtiofs_requests_total counter\n";
  std::string errors =
      "# HELP virtiofs_errors_total FUSE requests answered with an error per opcode.\n"
      "# TYPE virtiofs_errors_total counter\n";
  std::string hist =
      "# HELP virtiofs_request_duration_seconds Time from decoding a request to its reply.\n"
      "# TYPE virtiofs_request_duration_seconds histogram\n";
  for (uint32_t op = 0; op < FuseSession::kMaxOpcode; ++op) {
    const uint64_t requests = session.count(op);
    const FuseOpStats st = session.op_stats(op);
    if (requests == 0 && st.replies == 0) continue;
    const std::string_view name = virtiofs::FuseOpcodeName(op);
    o += fmt::format("virtiofs_requests_total{{opcode=\"{}\"}} {}\n", name, requests);
    errors += fmt::format("virtiofs_errors_total{{opcode=\"{}\"}} {}\n", name, st.errors);
    uint64_t cumulative = 0;
    for (int i = 0; i < FuseOpStats::kBuckets; ++i) {
      cumulative += st.buckets[i];
      const double le = FuseOpStats::BucketLimitUs(i);
      hist += fmt::format(
          "virtiofs_request_duration_seconds_bucket{{opcode=\"{}\",le=\"{}\"}} {}\n", name,
          std::isinf(le) ? std::string("+Inf") : fmt::format("{}", le / 1e6), cumulative);
    }
    hist += fmt::format("virtiofs_request_duration_seconds_sum{{opcode=\"{}\"}} {}\n", name,
                        double(st.total_ns) / 1e9);
    hist += fmt::format("virtiofs_request_duration_seconds_count{{opcode=\"{}\"}} {}\n", name,
                        cumulative);
  }
  return o + errors + hist;
}

absl::StatusOr<std::unique_ptr<StatsServer>> StatsServer::Start(virtiofs::UniqueFd listening,
                                                                StatsSources sources) {
  virtiofs::UniqueFd stop(eventfd(0, EFD_CLOEXEC));
  if (!stop.valid()) return absl::ErrnoToStatus(errno, "eventfd");
  return std::unique_ptr<StatsServer>(
      new StatsServer(std::move(listening), std::move(stop), sources));
}

StatsServer::StatsServer(virtiofs::UniqueFd listen, virtiofs::UniqueFd stop, StatsSources sources)
    : listen_(std::move(listen)),
      stop_(std::move(stop)),
      sources_(sources),
      thread_([this] { Run(); }) {}

StatsServer::~StatsServer() {
  const uint64_t one = 1;
  (void)!write(stop_.get(), &one, sizeof one);
  thread_.join();
}

void StatsServer::Run() {
  for (;;) {
    pollfd fds[2] = {{listen_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      VIRTIOFS_LOG(kError, "stats: poll: {}", strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    virtiofs::UniqueFd client(accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!client.valid()) continue;
    Serve(client.get());
  }
}

void StatsServer::Serve(int fd) {
  // Read the request (one line is enough to decide), a second at most.
  std::string request;
  char buf[1024];
  while (request.find('\n') == std::string::npos && request.size() < 4096) {
    pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 1000) <= 0) break;
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) break;
    request.append(buf, size_t(n));
  }
  const std::string line = request.substr(0, request.find_first_of("\r\n"));
  const bool http = line.rfind("GET ", 0) == 0 || line.rfind("HEAD ", 0) == 0;
  bool prometheus = false;
  if (http) {
    const size_t start = line.find(' ') + 1;
    const std::string target = line.substr(start, line.find(' ', start) - start);
    prometheus = target == "/metrics";
  } else {
    prometheus = line == "metrics" || line == "prometheus";
  }
  const std::string body = prometheus ? StatsPrometheus(sources_) : StatsJson(sources_);
  std::string out;
  if (http) {
    out = fmt::format(
        "HTTP/1.0 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        prometheus ? "text/plain; version=0.0.4" : "application/json", body.size());
  }
  if (!http || line.rfind("HEAD ", 0) != 0) out += body;
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = send(fd, out.data() + done, out.size() - done, MSG_NOSIGNAL);
    if (n <= 0) break;
    done += size_t(n);
  }
}

}  // namespace virtiofsd
