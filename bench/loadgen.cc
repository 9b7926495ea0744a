// fsbench: the load generator of bench/run.
//
//   fsbench prepare DIR
//       creates the fixture the workloads use in DIR (a shared directory).
//   fsbench daemon --socket PATH --target NAME --queues Q --workloads W,.. --depths D,..
//                  [--seconds S] [--warmup S] [--repeat R] [--pid PID] [--rss-out FILE]
//       plays the VMM and the guest's virtiofs driver against a vhost-user-fs
//       daemon listening on PATH: negotiates VERSION_1 + EVENT_IDX, maps guest
//       RAM, starts the hiprio queue and Q request queues, sends FUSE_INIT,
//       and for each workload and depth keeps that many requests in flight
//       per request queue (one thread per queue) for S seconds after a
//       warm-up; R repetitions, the median row printed as CSV.
//   fsbench limit --dir DIR --target limit --queues Q --workloads .. --depths ..
//       the same host system calls in a loop, no virtio (one thread per
//       "queue"; depth does not apply, each depth row is measured anew).
//   fsbench soak --socket PATH --pid PID [--requests N] [--rounds R] [--queues Q]
//                [--depths D] [--anon-slack-kb K] [--out CSV]
//       N mixed requests (every kind in kMixed, each reply checked) in R
//       rounds; after each round the serving process's RSS, anonymous
//       memory, open fds and threads are sampled (CSV). Exits 1 unless the
//       fds stay as after round 1 and anonymous memory within K KiB of it.
//   fsbench report --csv FILE [--rss FILE] [--markdown] [--plot-data FILE]
//       prints the table with ratios; writes the chart's data.
//
// The guest side works like Linux's driver (fs/fuse/virtio_fs.c,
// drivers/virtio/virtio_ring.c): direct descriptors, a request in
// device-readable buffers followed by device-writable reply space; with
// EVENT_IDX it re-arms used_event to the last used index it consumed and
// checks again before sleeping on the call eventfd, and kicks only when the
// device's avail_event asks for it.
#include <dirent.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/driver_queue.h"
#include "tests/support/frontend.h"
#include "tests/support/fuse_request.h"
#include "tests/support/guest_ram.h"
#include "virtiofs/vhost_user_protocol.h"

namespace {

using virtiofs::testing::DriverQueue;
using virtiofs::testing::Frontend;
using virtiofs::testing::GuestRam;
namespace vu = virtiofs::vhost_user;
using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "fsbench: %s\n", what.c_str());
  std::exit(1);
}

// ---- The fixture ---------------------------------------------------------------

constexpr uint64_t kDataSize = 64ull << 20;   // read-*: a cached file, wrapped around.
constexpr uint64_t kWriteWrap = 64ull << 20;  // write-1m-seq wraps here.
constexpr int kNames = 1000;                  // lookup: names/f0..f999.
constexpr int kBigDir = 10000;                // readdirplus-10k: big/e0..e9999.
constexpr uint32_t kReaddirSize = 4096;       // What Linux asks per READDIRPLUS (a page).

uint64_t Bytes(const std::string& workload) {
  if (workload == "read-4k-rand") return 4096;
  if (workload == "read-64k-seq") return 64 << 10;
  if (workload == "read-1m-seq" || workload == "write-1m-seq") return 1 << 20;
  return 0;
}

const std::vector<std::string> kWorkloads = {"getattr",      "lookup",        "open-release",
                                             "read-4k-rand", "read-64k-seq",  "read-1m-seq",
                                             "write-1m-seq", "create-unlink", "readdirplus-10k"};

void Prepare(const std::string& dir) {
  auto mk = [](const std::string& p) {
    if (mkdir(p.c_str(), 0755) != 0 && errno != EEXIST) Die("mkdir " + p);
  };
  mk(dir);
  mk(dir + "/names");
  mk(dir + "/big");
  mk(dir + "/cu");
  // A fixture left by an earlier run is reused (writing 128 MiB takes long
  // on a busy disk); what a run changes (cu/) is cleaned.
  auto has_size = [](const std::string& p, uint64_t size) {
    struct stat st;
    return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
           static_cast<uint64_t>(st.st_size) == size;
  };
  if (DIR* cu = opendir((dir + "/cu").c_str())) {
    while (dirent* e = readdir(cu)) {
      if (e->d_name[0] != '.') unlinkat(dirfd(cu), e->d_name, 0);
    }
    closedir(cu);
  }
  if (!has_size(dir + "/data", kDataSize)) {
    int fd = open((dir + "/data").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) Die("create data");
    std::vector<char> buf(1 << 20);
    std::mt19937_64 rng(1);
    for (auto& c : buf) c = static_cast<char>(rng());
    for (uint64_t off = 0; off < kDataSize; off += buf.size()) {
      if (pwrite(fd, buf.data(), buf.size(), static_cast<off_t>(off)) !=
          static_cast<ssize_t>(buf.size()))
        Die("write data");
    }
    close(fd);
  }
  for (int i = 0; i < kNames; ++i) {
    int fd = open((dir + "/names/f" + std::to_string(i)).c_str(), O_WRONLY | O_CREAT, 0644);
    if (fd < 0) Die("create names");
    close(fd);
  }
  for (int i = 0; i < kBigDir; ++i) {
    int fd = open((dir + "/big/e" + std::to_string(i)).c_str(), O_WRONLY | O_CREAT, 0644);
    if (fd < 0) Die("create big");
    close(fd);
  }
  // write-1m-seq overwrites this file's blocks, whichever target runs first
  // (extending an empty file would cost the first target block allocation).
  int fd = -1;
  if (!has_size(dir + "/wfile", kWriteWrap)) {
    fd = open((dir + "/wfile").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) Die("create wfile");
    std::vector<char> zeros(1 << 20, 'w');
    for (uint64_t off = 0; off < kWriteWrap; off += zeros.size()) {
      if (pwrite(fd, zeros.data(), zeros.size(), static_cast<off_t>(off)) !=
          static_cast<ssize_t>(zeros.size()))
        Die("write wfile");
    }
    close(fd);
  }
  // Warm the page cache for the read workloads.
  fd = open((dir + "/data").c_str(), O_RDONLY);
  std::vector<char> buf(1 << 20);
  while (read(fd, buf.data(), buf.size()) > 0) {
  }
  close(fd);
}

// ---- Results -------------------------------------------------------------------

struct Row {
  std::string workload;
  int depth = 0;
  int queues = 0;
  std::string target;
  double ops = 0, mbs = 0, p50 = 0, p99 = 0;
  double cpu_us = 0;  // Server CPU time (all threads, user + system) per operation.
};

void PrintRow(const Row& r) {
  std::printf("%s,%d,%d,%s,%.1f,%.2f,%.1f,%.1f,%.2f\n", r.workload.c_str(), r.depth, r.queues,
              r.target.c_str(), r.ops, r.mbs, r.p50, r.p99, r.cpu_us);
  std::fflush(stdout);
}

// What one thread measured.
struct Sample {
  uint64_t ops = 0;
  uint64_t bytes = 0;
  uint64_t entries = 0;       // readdirplus-10k: directory entries received.
  uint64_t missed_calls = 0;  // 1 s waits that ended with completions but no call.
  std::vector<double> lat_us;
};

// readdirplus-10k counts listings by the entries received (10,000 = one
// listing), so that a window shorter than 16 concurrent listings still
// measures; its latencies are those of whole listings ending in the window.
Row Summarize(std::vector<Sample>& samples, double seconds, bool by_entries) {
  Row r;
  std::vector<double> all;
  uint64_t ops = 0, bytes = 0, entries = 0;
  for (auto& s : samples) {
    ops += s.ops;
    bytes += s.bytes;
    entries += s.entries;
    all.insert(all.end(), s.lat_us.begin(), s.lat_us.end());
  }
  r.ops = by_entries ? entries / static_cast<double>(kBigDir) / seconds : ops / seconds;
  r.mbs = bytes / seconds / (1 << 20);
  auto pct = [&](double p) {
    if (all.empty()) return 0.0;
    size_t k = std::min(all.size() - 1, static_cast<size_t>(p * all.size()));
    std::nth_element(all.begin(), all.begin() + k, all.end());
    return all[k];
  };
  r.p50 = pct(0.50);
  r.p99 = pct(0.99);
  return r;
}

// CPU time of every thread of `pid` so far, in ns (schedstat: on-CPU time),
// or of this process when pid <= 0.
uint64_t CpuNs(int pid) {
  if (pid <= 0) {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + ts.tv_nsec;
  }
  uint64_t total = 0;
  const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = opendir(tasks.c_str());
  if (d == nullptr) return 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream in(tasks + "/" + e->d_name + "/schedstat");
    uint64_t ns = 0;
    if (in >> ns) total += ns;
  }
  closedir(d);
  return total;
}

// Samples CpuNs(pid) at `from` and `until` (the measuring window).
struct CpuWindow {
  uint64_t ns = 0;
  void Measure(int pid, Clock::time_point from, Clock::time_point until) {
    std::this_thread::sleep_until(from);
    const uint64_t a = CpuNs(pid);
    std::this_thread::sleep_until(until);
    ns = CpuNs(pid) - a;
  }
  double PerOp(const Row& r, double seconds) const {
    const double ops = r.ops * seconds;
    return ops > 0 ? ns / 1000.0 / ops : 0;
  }
};

Row MedianRow(std::vector<Row> reps) {
  std::sort(reps.begin(), reps.end(), [](const Row& a, const Row& b) { return a.ops < b.ops; });
  return reps[reps.size() / 2];
}

// ---- The daemon driver -----------------------------------------------------------

constexpr uint32_t kQueueSize = 1024;
constexpr uint32_t kMaxDepth = 64;
constexpr uint64_t kSlotReq = 8192;                // Request header + body.
constexpr uint64_t kSlotReply = (1 << 20) + 4096;  // Reply header + up to 1 MiB.
constexpr uint64_t kSlotPayload = 1 << 20;         // WRITE data.
constexpr uint64_t kSlotBytes = kSlotReq + kSlotReply + kSlotPayload;

struct Session;

// One request queue and the thread that drives it.
class QueueDriver {
 public:
  QueueDriver(Session* s, uint32_t index, uint64_t ring_gpa, uint64_t data_gpa, uint64_t data_size);
  void Run(const std::string& workload, int depth, Clock::time_point measure_from,
           Clock::time_point until);
  Sample& sample() { return sample_; }
  DriverQueue& q() { return *q_; }
  std::string error;

 private:
  struct Slot {
    uint64_t req = 0, reply = 0, payload = 0;
    int step = 0;         // Position in the slot's sequence of requests.
    uint64_t fh = 0;      // File handle open in this slot.
    uint64_t nodeid = 0;  // Node created in this slot.
    uint64_t offset = 0;  // READDIRPLUS position.
    uint64_t unique = 0;
    uint32_t reply_cap = 0;
    uint32_t opcode = 0;
    Clock::time_point started;
    bool op_started = false;
    int name = 0;
    uint32_t entries = 0;  // READDIRPLUS entries seen in this listing.
    std::string kind;      // mixed: the operation this slot is doing.
  };

  uint8_t* Host(uint64_t gpa);
  // Writes the slot's next request, returns its buffers.
  void Submit(Slot& s, const std::string& w);
  // A reply for `s` arrived (`len` bytes). Returns true when the slot's
  // operation is complete.
  bool Complete(Slot& s, const std::string& w, uint32_t len, uint64_t* bytes, uint64_t* entries);
  void Forget(uint64_t nodeid);
  // BATCH_FORGET of one lookup each (Linux batches forgets this way).
  void ForgetMany(const std::vector<uint64_t>& nodeids);
  // Queues one hiprio message (no reply); the caller holds hiprio_mu.
  void SendHiprio(const void* msg, uint32_t len);
  // mixed: picks the next operation of a slot.
  const char* PickKind();

  Session* s_;
  uint32_t index_;
  std::unique_ptr<DriverQueue> q_;
  std::vector<Slot> slots_;
  std::vector<int> slot_of_head_;
  uint64_t next_unique_ = 0;
  std::mt19937_64 rng_;
  Sample sample_;
};

struct Session {
  std::unique_ptr<Frontend> fe;
  std::unique_ptr<GuestRam> ram;
  std::unique_ptr<DriverQueue> hiprio;
  std::mutex hiprio_mu;
  std::vector<std::unique_ptr<QueueDriver>> queues;
  uint64_t data_node = 0, names_node = 0, big_node = 0, cu_node = 0, wfile_node = 0;
  std::atomic<uint64_t> seq_offset{0};  // Shared sequential position (read/write-*-seq).
  std::atomic<uint64_t> create_seq{0};
  uint64_t shared_fh = 0;    // The file read-* / write-* go through.
  uint64_t forget_area = 0;  // FORGET buffers on the hiprio queue.
  // Every request sent (hiprio ones included), and how many may be: a
  // queue thread starts no new operation once `requests` reaches `budget`.
  std::atomic<uint64_t> requests{0};
  uint64_t budget = UINT64_MAX;
};

// The hiprio queue: one buffer per avail slot, reused once the ring has gone
// round (the device completes FORGETs in order).
constexpr uint32_t kHiprioSlot = 1024;
// mixed: the operations and their weights (see README "Soak").
const std::vector<std::pair<const char*, int>> kMixed = {
    {"getattr", 20},      {"lookup-forget", 15}, {"lookup-missing", 5}, {"open-release", 10},
    {"read-4k-rand", 15}, {"file-life", 10},     {"mkdir-rmdir", 5},    {"readdir-page", 5},
    {"statfs", 5},        {"chmod", 5},          {"flush", 5},
};
constexpr uint32_t kFileLifeBytes = 4096;

// The 4 KiB a file-life operation writes and reads back: its number, then a
// pattern of it.
void FillPattern(uint8_t* p, uint64_t seq) {
  std::memcpy(p, &seq, sizeof seq);
  for (uint32_t i = sizeof seq; i < kFileLifeBytes; ++i) p[i] = static_cast<uint8_t>(seq * 31 + i);
}

QueueDriver::QueueDriver(Session* s, uint32_t index, uint64_t ring_gpa, uint64_t data_gpa,
                         uint64_t data_size)
    : s_(s), index_(index), rng_(index) {
  q_ = std::make_unique<DriverQueue>(*s->ram, kQueueSize, ring_gpa, data_gpa, data_size,
                                     /*event_idx=*/true, /*indirect_desc=*/false);
  slots_.resize(kMaxDepth);
  for (auto& slot : slots_) {
    slot.req = q_->Alloc(kSlotReq, 4096);
    slot.reply = q_->Alloc(kSlotReply, 4096);
    slot.payload = q_->Alloc(kSlotPayload, 4096);
  }
  slot_of_head_.assign(kQueueSize, -1);
  next_unique_ = (static_cast<uint64_t>(index) << 48) + 2;
}

uint8_t* QueueDriver::Host(uint64_t gpa) { return s_->ram->Host(gpa); }

template <typename T>
void Put(uint8_t* p, const T& v) {
  std::memcpy(p, &v, sizeof v);
}

// Request bodies, as Linux fills them.
fuse_open_in OpenIn(uint32_t flags) {
  fuse_open_in in{};
  in.flags = flags;
  return in;
}
fuse_release_in ReleaseIn(uint64_t fh, uint32_t flags) {
  fuse_release_in in{};
  in.fh = fh;
  in.flags = flags;
  return in;
}
fuse_read_in ReadIn(uint64_t fh, uint64_t offset, uint32_t size, uint32_t flags) {
  fuse_read_in in{};
  in.fh = fh;
  in.offset = offset;
  in.size = size;
  in.flags = flags;
  return in;
}
fuse_write_in WriteIn(uint64_t fh, uint64_t offset, uint32_t size, uint32_t flags) {
  fuse_write_in in{};
  in.fh = fh;
  in.offset = offset;
  in.size = size;
  in.flags = flags;
  return in;
}

void QueueDriver::Submit(Slot& s, const std::string& w) {
  uint8_t* p = Host(s.req);
  fuse_in_header h{};
  h.unique = s.unique = (next_unique_ += 2);
  size_t body = 0;
  uint8_t* b = p + sizeof h;
  uint32_t payload = 0;  // Bytes of s.payload after the request.
  s.reply_cap = 4096;
  // One request: opcode, node, then the body's parts in order.
  auto req = [&](uint32_t opcode, uint64_t node) {
    h.opcode = opcode;
    h.nodeid = node;
  };
  auto add = [&](const auto& in) {
    Put(b + body, in);
    body += sizeof in;
  };
  auto name = [&](const std::string& n) {
    std::memcpy(b + body, n.c_str(), n.size() + 1);
    body += n.size() + 1;
  };
  auto reply_space = [&](uint32_t bytes) { s.reply_cap = sizeof(fuse_out_header) + bytes; };
  // OPENDIR, READDIRPLUS pages from s.offset, RELEASEDIR.
  auto listing = [&](uint64_t dir) {
    if (s.step == 0) {
      req(FUSE_OPENDIR, dir);
      add(OpenIn(0));
    } else if (s.step == 1) {
      req(FUSE_READDIRPLUS, dir);
      add(ReadIn(s.fh, s.offset, kReaddirSize, 0));
      reply_space(kReaddirSize);
    } else {
      req(FUSE_RELEASEDIR, dir);
      add(ReleaseIn(s.fh, 0));
    }
  };
  if (w == "getattr") {
    req(FUSE_GETATTR, s_->data_node);
    add(fuse_getattr_in{});
  } else if (w == "lookup" || w == "lookup-forget" || w == "lookup-missing") {
    req(FUSE_LOOKUP, s_->names_node);
    name((w == "lookup-missing" ? "missing" : "f") + std::to_string(rng_() % kNames));
  } else if (w == "open-release" || w == "flush") {
    // flush: OPEN, FLUSH, RELEASE, what close(2) sends.
    const int last = w == "flush" ? 2 : 1;
    if (s.step == 0) {
      req(FUSE_OPEN, s_->data_node);
      add(OpenIn(O_RDONLY));
    } else if (s.step < last) {
      req(FUSE_FLUSH, s_->data_node);
      fuse_flush_in in{};
      in.fh = s.fh;
      in.lock_owner = 0x1000 + index_;
      add(in);
    } else {
      req(FUSE_RELEASE, s_->data_node);
      add(ReleaseIn(s.fh, O_RDONLY));
    }
  } else if (w.rfind("read-", 0) == 0) {
    const uint32_t size = static_cast<uint32_t>(Bytes(w));
    const uint64_t offset = w == "read-4k-rand" ? (rng_() % (kDataSize / 4096)) * 4096
                                                : s_->seq_offset.fetch_add(size) % kDataSize;
    req(FUSE_READ, s_->data_node);
    add(ReadIn(s.fh, offset, size, O_RDONLY));
    reply_space(size);
  } else if (w == "write-1m-seq") {
    req(FUSE_WRITE, s_->wfile_node);
    add(WriteIn(s.fh, s_->seq_offset.fetch_add(1 << 20) % kWriteWrap, 1 << 20, O_WRONLY));
    payload = 1 << 20;
  } else if (w == "create-unlink" || w == "file-life") {
    // create-unlink: CREATE, RELEASE, UNLINK. file-life: CREATE, WRITE
    // 4 KiB, FSYNC, READ it back, SETATTR size, RELEASE, RENAME, UNLINK.
    // Both then FORGET the node on the hiprio queue.
    static const std::vector<uint32_t> kShort = {FUSE_CREATE, FUSE_RELEASE, FUSE_UNLINK};
    static const std::vector<uint32_t> kLong = {FUSE_CREATE, FUSE_WRITE,   FUSE_FSYNC,
                                                FUSE_READ,   FUSE_SETATTR, FUSE_RELEASE,
                                                FUSE_RENAME, FUSE_UNLINK};
    const bool life = w == "file-life";
    const uint32_t op = (life ? kLong : kShort).at(static_cast<size_t>(s.step));
    const uint32_t flags = life ? O_RDWR : O_WRONLY;
    const std::string n = (life ? "m" : "c") + std::to_string(s.name);
    const std::string renamed = "r" + std::to_string(s.name);
    const bool renamed_yet = life && s.step == 7;
    switch (op) {
      case FUSE_CREATE: {
        req(op, s_->cu_node);
        fuse_create_in in{};
        in.flags = flags | O_CREAT | O_EXCL;
        in.mode = S_IFREG | 0644;
        add(in);
        name(n);
        break;
      }
      case FUSE_WRITE:
        req(op, s.nodeid);
        add(WriteIn(s.fh, 0, kFileLifeBytes, flags));
        FillPattern(Host(s.payload), static_cast<uint64_t>(s.name));
        payload = kFileLifeBytes;
        break;
      case FUSE_FSYNC: {
        req(op, s.nodeid);
        fuse_fsync_in in{};
        in.fh = s.fh;
        add(in);
        break;
      }
      case FUSE_READ:
        req(op, s.nodeid);
        add(ReadIn(s.fh, 0, kFileLifeBytes, flags));
        reply_space(kFileLifeBytes);
        break;
      case FUSE_SETATTR: {
        req(op, s.nodeid);
        fuse_setattr_in in{};
        in.valid = FATTR_SIZE | FATTR_FH;
        in.fh = s.fh;
        in.size = 1000;
        add(in);
        break;
      }
      case FUSE_RELEASE:
        req(op, s.nodeid);
        add(ReleaseIn(s.fh, flags));
        break;
      case FUSE_RENAME: {
        req(op, s_->cu_node);
        fuse_rename_in in{};
        in.newdir = s_->cu_node;
        add(in);
        name(n);
        name(renamed);
        break;
      }
      default:
        req(FUSE_UNLINK, s_->cu_node);
        name(renamed_yet ? renamed : n);
        break;
    }
  } else if (w == "mkdir-rmdir") {
    if (s.step == 0) {
      req(FUSE_MKDIR, s_->cu_node);
      fuse_mkdir_in in{};
      in.mode = 0755;
      in.umask = 022;
      add(in);
    } else {
      req(FUSE_RMDIR, s_->cu_node);
    }
    name("d" + std::to_string(s.name));
  } else if (w == "readdirplus-10k") {
    listing(s_->big_node);
  } else if (w == "readdir-page") {  // The first page of names/, its entries forgotten.
    s.offset = 0;
    listing(s_->names_node);
  } else if (w == "statfs") {
    req(FUSE_STATFS, FUSE_ROOT_ID);
  } else if (w == "chmod") {
    req(FUSE_SETATTR, s_->data_node);
    fuse_setattr_in in{};
    in.valid = FATTR_MODE;
    in.mode = S_IFREG | 0644;
    add(in);
  } else {
    Die("unknown workload " + w);
  }
  h.len = static_cast<uint32_t>(sizeof h + body + payload);
  Put(p, h);
  s.opcode = h.opcode;
  DriverQueue::Buffer bufs[3];
  size_t n = 0;
  bufs[n++] = {s.req, static_cast<uint32_t>(sizeof h + body), false};
  if (payload != 0) bufs[n++] = {s.payload, payload, false};
  bufs[n++] = {s.reply, s.reply_cap, true};
  auto head = q_->AddChainNoPublish(std::span(bufs, n));
  if (!head) Die("ring full");
  slot_of_head_[*head] = static_cast<int>(&s - slots_.data());
}

void QueueDriver::SendHiprio(const void* msg, uint32_t len) {
  DriverQueue& hq = *s_->hiprio;
  while (hq.PopUsed()) {
  }
  if (len > kHiprioSlot) Die("hiprio message too long");
  const uint64_t buf = s_->forget_area + uint64_t{kHiprioSlot} * (hq.avail_idx() % kQueueSize);
  std::memcpy(Host(buf), msg, len);
  DriverQueue::Buffer b{buf, len, false};
  const uint16_t old = hq.avail_idx();
  if (!hq.AddChain(std::span(&b, 1))) {
    // The daemon is behind on hiprio; wait for it.
    for (int i = 0; i < 1000 && !hq.PopUsed(); ++i) usleep(100);
    if (!hq.AddChain(std::span(&b, 1))) Die("hiprio queue full");
  }
  s_->requests.fetch_add(1, std::memory_order_relaxed);
  if (hq.DeviceWantsKick(old)) s_->fe->Kick(0);
}

void QueueDriver::Forget(uint64_t nodeid) {
  // Linux sends FORGET on the high-priority queue, no reply.
  struct {
    fuse_in_header h;
    fuse_forget_in f;
  } msg{};
  msg.h.len = sizeof msg;
  msg.h.opcode = FUSE_FORGET;
  msg.h.unique = (next_unique_ += 2);
  msg.h.nodeid = nodeid;
  msg.f.nlookup = 1;
  std::lock_guard lock(s_->hiprio_mu);
  SendHiprio(&msg, sizeof msg);
}

void QueueDriver::ForgetMany(const std::vector<uint64_t>& nodeids) {
  constexpr size_t kMax = (kHiprioSlot - sizeof(fuse_in_header) - sizeof(fuse_batch_forget_in)) /
                          sizeof(fuse_forget_one);
  for (size_t first = 0; first < nodeids.size(); first += kMax) {
    const size_t count = std::min(kMax, nodeids.size() - first);
    uint8_t msg[kHiprioSlot] = {};
    fuse_in_header h{};
    h.len = static_cast<uint32_t>(sizeof h + sizeof(fuse_batch_forget_in) +
                                  count * sizeof(fuse_forget_one));
    h.opcode = FUSE_BATCH_FORGET;
    h.unique = (next_unique_ += 2);
    fuse_batch_forget_in in{};
    in.count = static_cast<uint32_t>(count);
    std::memcpy(msg, &h, sizeof h);
    std::memcpy(msg + sizeof h, &in, sizeof in);
    for (size_t i = 0; i < count; ++i) {
      const fuse_forget_one one{nodeids[first + i], 1};
      std::memcpy(msg + sizeof h + sizeof in + i * sizeof one, &one, sizeof one);
    }
    std::lock_guard lock(s_->hiprio_mu);
    SendHiprio(msg, h.len);
  }
}

const char* QueueDriver::PickKind() {
  static const int total = [] {
    int t = 0;
    for (const auto& [k, weight] : kMixed) t += weight;
    return t;
  }();
  int r = static_cast<int>(rng_() % total);
  for (const auto& [k, weight] : kMixed) {
    if (r < weight) return k;
    r -= weight;
  }
  return kMixed.front().first;
}

bool QueueDriver::Complete(Slot& s, const std::string& w, uint32_t len, uint64_t* bytes,
                           uint64_t* entries) {
  if (len < sizeof(fuse_out_header)) Die("reply shorter than a header");
  fuse_out_header oh;
  std::memcpy(&oh, Host(s.reply), sizeof oh);
  if (oh.unique != s.unique || oh.len != len) Die("reply does not match the request");
  if (w == "lookup-missing") {
    if (oh.error != -ENOENT) error = "LOOKUP of a missing name: error " + std::to_string(oh.error);
    return true;
  }
  if (oh.error != 0) {
    error = "opcode " + std::to_string(s.opcode) + " failed: " + std::strerror(-oh.error);
    return true;
  }
  const uint8_t* body = Host(s.reply) + sizeof oh;
  const uint32_t body_len = len - sizeof oh;
  // A node created in this slot: remember it and the handle (CREATE),
  // or forget it at the end, and name the next one.
  auto created = [&] {
    fuse_entry_out e;
    std::memcpy(&e, body, sizeof e);
    s.nodeid = e.nodeid;
    if (body_len >= sizeof e + sizeof(fuse_open_out)) {
      fuse_open_out o;
      std::memcpy(&o, body + sizeof e, sizeof o);
      s.fh = o.fh;
    }
  };
  auto finished = [&] {
    Forget(s.nodeid);
    s.step = 0;
    s.name = static_cast<int>(s_->create_seq.fetch_add(1));
    return true;
  };
  if (w == "open-release" || w == "flush") {
    if (s.step == 0) {
      fuse_open_out out;
      std::memcpy(&out, body, sizeof out);
      s.fh = out.fh;
    }
    s.step = (s.step + 1) % (w == "flush" ? 3 : 2);
    return s.step == 0;
  }
  if (w.rfind("read-", 0) == 0) {
    if (body_len != Bytes(w)) Die("short read: " + std::to_string(body_len));
    *bytes += body_len;
    return true;
  }
  if (w == "write-1m-seq") {
    fuse_write_out out;
    std::memcpy(&out, body, sizeof out);
    if (out.size != 1u << 20) Die("short write");
    *bytes += out.size;
    return true;
  }
  if (w == "create-unlink") {
    if (s.step == 0) created();
    return ++s.step <= 2 ? false : finished();
  }
  if (w == "lookup-forget") {
    fuse_entry_out e;
    if (body_len < sizeof e) Die("short LOOKUP reply");
    std::memcpy(&e, body, sizeof e);
    Forget(e.nodeid);
    return true;
  }
  if (w == "file-life") {
    if (s.step == 0) {
      created();
    } else if (s.step == 1) {
      fuse_write_out out;
      std::memcpy(&out, body, sizeof out);
      if (out.size != kFileLifeBytes) {
        error = "file-life: WRITE wrote " + std::to_string(out.size);
        return true;
      }
    } else if (s.step == 3) {
      uint8_t want[kFileLifeBytes];
      FillPattern(want, static_cast<uint64_t>(s.name));
      if (body_len != kFileLifeBytes || std::memcmp(body, want, kFileLifeBytes) != 0) {
        error = "file-life: READ did not return what WRITE wrote (" + std::to_string(body_len) +
                " bytes)";
        return true;
      }
      *bytes += body_len;
    } else if (s.step == 4) {
      fuse_attr_out a;
      std::memcpy(&a, body, sizeof a);
      if (a.attr.size != 1000) {
        error = "file-life: SETATTR size gave " + std::to_string(a.attr.size);
        return true;
      }
    }
    return ++s.step <= 7 ? false : finished();
  }
  if (w == "mkdir-rmdir") {
    if (s.step == 0) created();
    return ++s.step <= 1 ? false : finished();
  }
  if (w == "readdir-page") {
    if (s.step == 0) {
      fuse_open_out o;
      std::memcpy(&o, body, sizeof o);
      s.fh = o.fh;
      s.step = 1;
      return false;
    }
    if (s.step == 1) {
      std::vector<uint64_t> looked_up;
      uint32_t pos = 0;
      while (pos + sizeof(fuse_direntplus) <= body_len) {
        fuse_direntplus d;
        std::memcpy(&d, body + pos, sizeof d);
        if (d.entry_out.nodeid != 0) looked_up.push_back(d.entry_out.nodeid);
        pos += FUSE_DIRENTPLUS_SIZE(&d);
      }
      if (looked_up.empty()) {
        error = "readdir-page: no entry in the first page of names/";
        return true;
      }
      *entries += looked_up.size();
      ForgetMany(looked_up);
      s.step = 2;
      return false;
    }
    s.step = 0;
    return true;
  }
  if (w == "readdirplus-10k") {
    if (s.step == 0) {
      fuse_open_out o;
      std::memcpy(&o, body, sizeof o);
      s.fh = o.fh;
      s.offset = 0;
      s.entries = 0;
      s.step = 1;
      return false;
    }
    if (s.step == 1) {
      if (body_len == 0) {
        // Every entry once ("." and ".." may or may not be listed).
        if (s.entries < kBigDir || s.entries > kBigDir + 2) {
          Die("a listing of big/ returned " + std::to_string(s.entries) + " entries");
        }
        s.step = 2;
        return false;
      }
      *bytes += body_len;
      // Walk to the last entry's offset.
      uint32_t pos = 0;
      while (pos + sizeof(fuse_direntplus) <= body_len) {
        fuse_direntplus d;
        std::memcpy(&d, body + pos, sizeof d);
        s.offset = d.dirent.off;
        pos += FUSE_DIRENTPLUS_SIZE(&d);
        ++s.entries;
        ++*entries;
      }
      return false;
    }
    s.step = 0;
    return true;
  }
  return true;
}

void QueueDriver::Run(const std::string& w, int depth, Clock::time_point measure_from,
                      Clock::time_point until) {
  sample_ = Sample();
  sample_.lat_us.reserve(1 << 20);
  const int kick_fd = s_->fe->kick_fd(index_);
  const int call_fd = s_->fe->call_fd(index_);
  DriverQueue& q = *q_;
  std::vector<int> ready;
  for (int i = 0; i < depth; ++i) {
    slots_[i].step = 0;
    slots_[i].op_started = false;
    slots_[i].name = static_cast<int>(s_->create_seq.fetch_add(1));
    ready.push_back(i);
  }
  // Files that a workload reads or writes through: one open per slot.
  const bool mixed = w == "mixed";
  auto needs_fh = [](const std::string& kind) {
    return kind.rfind("read-", 0) == 0 || kind == "write-1m-seq";
  };
  int in_flight = 0;
  bool stopping = false;
  for (;;) {
    const auto now = Clock::now();
    if (!stopping && now >= until) stopping = true;
    if (!ready.empty()) {
      const uint16_t old = q.avail_idx();
      for (int i : ready) {
        Slot& s = slots_[i];
        if (!s.op_started) {
          if (stopping || s_->requests.load(std::memory_order_relaxed) >= s_->budget) continue;
          s.op_started = true;
          s.started = now;
          s.kind = mixed ? PickKind() : w;
        }
        if (needs_fh(s.kind)) s.fh = s_->shared_fh;
        Submit(s, s.kind);
        s_->requests.fetch_add(1, std::memory_order_relaxed);
        ++in_flight;
      }
      ready.clear();
      q.Publish();
      if (q.DeviceWantsKick(old)) eventfd_write(kick_fd, 1);
    }
    if (in_flight == 0) break;
    // Reap.
    int got = 0;
    while (auto u = q.PopUsed()) {
      ++got;
      --in_flight;
      const int idx = u->id < kQueueSize ? slot_of_head_[u->id] : -1;
      if (idx < 0) Die("used element for an unknown head");
      slot_of_head_[u->id] = -1;
      Slot& s = slots_[idx];
      uint64_t bytes = 0, entries = 0;
      const bool done = Complete(s, s.kind, u->len, &bytes, &entries);
      if (!error.empty()) return;
      if (done) {
        s.op_started = false;
        const auto t = Clock::now();
        // Operations that end in the window count (a listing at depth 16 lasts
        // longer than a short window).
        if (t >= measure_from && t <= until) {
          ++sample_.ops;
          sample_.bytes += bytes;
          sample_.lat_us.push_back(
              std::chrono::duration<double, std::micro>(t - s.started).count());
        }
      } else {
        const auto t = Clock::now();
        if (t >= measure_from && t <= until) {  // READDIRPLUS pages.
          sample_.bytes += bytes;
          sample_.entries += entries;
        }
      }
      ready.push_back(idx);
    }
    if (got > 0) continue;
    // Nothing used: re-arm the interrupt (used_event = last consumed), check
    // again, then sleep on the call eventfd.
    q.SetUsedEvent(q.last_used_idx());
    if (q.used_idx() != q.last_used_idx()) continue;
    pollfd p{call_fd, POLLIN, 0};
    int n = poll(&p, 1, 1000);
    if (n == 0 && q.used_idx() != q.last_used_idx()) {
      // Completions were there but no call came: the device missed the
      // notification the driver asked for (used_event).
      ++sample_.missed_calls;
    }
    if (n == 0 && Clock::now() > until + std::chrono::seconds(10)) {
      error = "no completion for 10 s";
      return;
    }
    eventfd_t v;
    (void)eventfd_read(call_fd, &v);
  }
}

// One synchronous request on queue 1 before the threads start (setup).
virtiofs::testing::FuseReply Call(Session& s, uint32_t opcode, uint64_t nodeid,
                                  const std::vector<uint8_t>& body, uint32_t cap = 4096) {
  static uint64_t unique = 1ull << 60;
  unique += 2;
  auto req = virtiofs::testing::BuildRequest(opcode, unique, nodeid, body);
  DriverQueue& q = s.queues[0]->q();
  auto r = virtiofs::testing::FuseTransact(*s.fe, 1, q, *s.ram, req, cap);
  if (!r.ok()) Die("setup request " + std::to_string(opcode) + ": " + r.status().ToString());
  return *r;
}

uint64_t Lookup(Session& s, uint64_t parent, const std::string& name) {
  std::vector<uint8_t> body(name.begin(), name.end());
  body.push_back(0);
  auto r = Call(s, FUSE_LOOKUP, parent, body);
  if (r.error() != 0) Die("lookup " + name + ": " + std::strerror(-r.error()));
  auto e = r.BodyAs<fuse_entry_out>();
  if (!e.ok()) Die("lookup reply: " + e.status().ToString());
  return e->nodeid;
}

uint64_t Open(Session& s, uint64_t node, uint32_t flags) {
  fuse_open_in in{};
  in.flags = flags;
  std::vector<uint8_t> body(sizeof in);
  std::memcpy(body.data(), &in, sizeof in);
  auto r = Call(s, FUSE_OPEN, node, body);
  if (r.error() != 0) Die(std::string("open: ") + std::strerror(-r.error()));
  auto o = r.BodyAs<fuse_open_out>();
  if (!o.ok()) Die("open reply: " + o.status().ToString());
  return o->fh;
}

void Release(Session& s, uint64_t node, uint64_t fh) {
  fuse_release_in in{};
  in.fh = fh;
  std::vector<uint8_t> body(sizeof in);
  std::memcpy(body.data(), &in, sizeof in);
  Call(s, FUSE_RELEASE, node, body);
}

long ReadRssKb(int pid, const char* field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0)
      return std::strtol(line.c_str() + std::strlen(field), nullptr, 10);
  }
  return -1;
}

struct Options {
  std::string socket, target, dir, rss_out;
  int queues = 1;
  std::vector<std::string> workloads = kWorkloads;
  std::vector<int> depths = {1, 16};
  double seconds = 1.0, warmup = 0.2;
  int repeat = 1;
  int pid = -1;
  // soak
  uint64_t requests = 1000000;
  int rounds = 10;
  long anon_slack_kb = 2048;
  std::string out;
};

// A listing of 10,000 entries takes 100 ms or more: its window is at least
// 0.3 s (entries are counted, so a partial listing counts for its part).
double WindowSeconds(const Options& o, const std::string& w) {
  return w == "readdirplus-10k" ? std::max(o.seconds, 0.3) : o.seconds;
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

void RecordRss(const Options& o, std::FILE* rss, const std::string& phase) {
  if (o.pid <= 0 || rss == nullptr) return;
  // RssShmem is guest RAM the daemon touched (shared with the VMM); RssAnon
  // and RssFile are the daemon's own.
  std::fprintf(rss, "%s,%d,%s,%ld,%ld,%ld,%ld,%ld\n", o.target.c_str(), o.queues, phase.c_str(),
               ReadRssKb(o.pid, "VmRSS:"), ReadRssKb(o.pid, "VmHWM:"), ReadRssKb(o.pid, "RssAnon:"),
               ReadRssKb(o.pid, "RssFile:"), ReadRssKb(o.pid, "RssShmem:"));
  std::fflush(rss);
}

// Connects to the daemon, negotiates, maps guest RAM, starts the queues,
// sends FUSE_INIT and looks up the fixture's nodes. Returns 3 when the daemon
// offers fewer request queues than asked for, 0 when ready.
int SetUp(Session& s, const Options& o, fuse_init_out* init_out) {
  auto fe = Frontend::Connect(o.socket, 10000);
  if (!fe.ok()) Die(fe.status().ToString());
  s.fe = *std::move(fe);
  s.fe->set_reply_timeout_ms(10000);
  const uint64_t wanted = vu::Bit(Frontend::kVirtioFVersion1) |
                          vu::Bit(vu::kFeatureProtocolFeatures) |
                          vu::Bit(Frontend::kVirtioRingFEventIdx);
  const uint64_t wanted_protocol = vu::Bit(vu::kProtocolReplyAck) | vu::Bit(vu::kProtocolMq);
  if (auto st = s.fe->Negotiate(wanted, wanted_protocol); !st.ok()) Die(st.ToString());
  if (!s.fe->has_feature(Frontend::kVirtioRingFEventIdx)) Die("the daemon refuses EVENT_IDX");
  if (o.queues > 1) {
    uint64_t n = 2;
    if (s.fe->has_protocol_feature(vu::kProtocolMq)) {
      auto q = s.fe->GetU64(vu::Request::kGetQueueNum);
      if (!q.ok()) Die(q.status().ToString());
      n = *q;
    }
    if (n < static_cast<uint64_t>(1 + o.queues)) {
      std::fprintf(stderr, "fsbench: %s offers %" PRIu64 " queues: %d request queues unsupported\n",
                   o.target.c_str(), n, o.queues);
      return 3;
    }
  }
  // Guest RAM: rings, then per request queue its slots, then hiprio buffers.
  const uint64_t ring_bytes = (DriverQueue::RingBytes(kQueueSize) + 4095) & ~4095ull;
  const uint64_t per_queue = kMaxDepth * kSlotBytes + (4 << 20);
  const uint64_t hiprio_data = 4 << 20;
  const uint64_t rings = (1 + o.queues) * ring_bytes;
  uint64_t total = rings + hiprio_data + o.queues * per_queue;
  total = (total + (2 << 20) - 1) & ~((2ull << 20) - 1);
  s.ram = GuestRam::CreateOrDie(total);
  if (auto st = s.fe->SetMemTable(*s.ram); !st.ok()) Die(st.ToString());
  s.hiprio = std::make_unique<DriverQueue>(*s.ram, kQueueSize, 0, rings, hiprio_data, true, false);
  s.forget_area = s.hiprio->Alloc(uint64_t{kHiprioSlot} * kQueueSize, 64);
  if (auto st = s.fe->StartVring(0, *s.hiprio); !st.ok()) Die(st.ToString());
  for (int i = 0; i < o.queues; ++i) {
    s.queues.push_back(std::make_unique<QueueDriver>(
        &s, 1 + i, (1 + i) * ring_bytes, rings + hiprio_data + i * per_queue, per_queue));
    if (auto st = s.fe->StartVring(1 + i, s.queues.back()->q()); !st.ok()) Die(st.ToString());
  }
  // INIT, and the nodes the workloads use. Setup requests use queue 1's
  // spare area (after the slots), reset each time.
  auto init = Call(s, FUSE_INIT, 0, [] {
    auto r = virtiofs::testing::BuildInit(0);
    return std::vector<uint8_t>(r.begin() + sizeof(fuse_in_header), r.end());
  }());
  if (init.error() != 0) Die("INIT failed");
  auto io = init.BodyPrefixAs<fuse_init_out>(FUSE_COMPAT_22_INIT_OUT_SIZE);
  if (!io.ok()) Die(io.status().ToString());
  s.data_node = Lookup(s, FUSE_ROOT_ID, "data");
  s.names_node = Lookup(s, FUSE_ROOT_ID, "names");
  s.big_node = Lookup(s, FUSE_ROOT_ID, "big");
  s.cu_node = Lookup(s, FUSE_ROOT_ID, "cu");
  s.wfile_node = Lookup(s, FUSE_ROOT_ID, "wfile");
  std::fprintf(stderr, "fsbench: %s: max_write %u max_pages %u\n", o.target.c_str(), io->max_write,
               io->max_pages);
  *init_out = *io;
  return 0;
}

// The process that serves: a daemon in a sandbox forks (a supervisor stays
// outside and waits for a child that serves), so follow single children.
int ServingPid(int pid) {
  for (int depth = 0; pid > 0 && depth < 4; ++depth) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
    std::vector<int> children;
    int c;
    while (in >> c) children.push_back(c);
    if (children.size() != 1) break;
    pid = children[0];
  }
  return pid;
}

int RunDaemon(const Options& given) {
  Session s;
  fuse_init_out init{};
  if (int rc = SetUp(s, given, &init); rc != 0) return rc;
  Options o = given;
  o.pid = ServingPid(given.pid);  // The queues are started: a sandboxed daemon has forked.
  const fuse_init_out* io = &init;
  std::FILE* rss = o.rss_out.empty() ? nullptr : std::fopen(o.rss_out.c_str(), "a");
  RecordRss(o, rss, "idle");

  for (const std::string& w : o.workloads) {
    const bool needs_fh = w.rfind("read-", 0) == 0 || w == "write-1m-seq";
    if (w == "write-1m-seq" && io->max_write < (1u << 20)) {
      std::fprintf(stderr, "fsbench: %s: max_write %u < 1 MiB, skipping %s\n", o.target.c_str(),
                   io->max_write, w.c_str());
      continue;
    }
    for (int depth : o.depths) {
      if (depth < 1 || depth > static_cast<int>(kMaxDepth)) Die("depth 1..64");
      std::vector<Row> reps;
      const double seconds = WindowSeconds(o, w);
      for (int rep = 0; rep < o.repeat; ++rep) {
        std::vector<uint64_t> fhs;
        std::vector<uint64_t> fh_nodes;
        if (needs_fh) {
          const bool wr = w == "write-1m-seq";
          const uint64_t node = wr ? s.wfile_node : s.data_node;
          const uint64_t fh = Open(s, node, wr ? O_WRONLY : O_RDONLY);
          fhs.push_back(fh);
          s.shared_fh = fh;
          fh_nodes.push_back(node);
        }
        for (auto& qd : s.queues) qd->q().ResetAlloc();  // Setup buffers are free again.
        s.seq_offset = 0;
        const auto start = Clock::now();
        const auto from = start + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(o.warmup));
        const auto until = from + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(seconds));
        std::vector<std::thread> threads;
        for (auto& qd : s.queues) {
          QueueDriver* d = qd.get();
          threads.emplace_back([&, d, depth] { d->Run(w, depth, from, until); });
        }
        CpuWindow cpu;
        cpu.Measure(o.pid, from, until);
        for (auto& t : threads) t.join();
        std::vector<Sample> samples;
        for (auto& qd : s.queues) {
          if (!qd->error.empty()) Die(o.target + " " + w + ": " + qd->error);
          if (qd->sample().missed_calls > 0) {
            std::fprintf(stderr, "fsbench: %s %s depth %d: %llu completion(s) without a call\n",
                         o.target.c_str(), w.c_str(), depth,
                         static_cast<unsigned long long>(qd->sample().missed_calls));
          }
          samples.push_back(std::move(qd->sample()));
        }
        Row r = Summarize(samples, seconds, w == "readdirplus-10k");
        r.workload = w;
        r.depth = depth;
        r.queues = o.queues;
        r.target = o.target;
        r.cpu_us = o.pid > 0 ? cpu.PerOp(r, seconds) : 0;
        reps.push_back(r);
        for (size_t i = 0; i < fhs.size(); ++i) Release(s, fh_nodes[i], fhs[i]);
      }
      PrintRow(MedianRow(reps));
    }
    RecordRss(o, rss, "after-" + w);
  }
  if (rss) std::fclose(rss);
  return 0;
}

// ---- Soak: millions of mixed requests, the daemon's memory and fds sampled ------

struct ProcSample {
  long rss_kb = -1, anon_kb = -1, file_kb = -1, shmem_kb = -1, threads = -1;
  int fds = -1;
};

ProcSample SampleProcess(int pid) {
  ProcSample p;
  p.rss_kb = ReadRssKb(pid, "VmRSS:");
  p.anon_kb = ReadRssKb(pid, "RssAnon:");
  p.file_kb = ReadRssKb(pid, "RssFile:");
  p.shmem_kb = ReadRssKb(pid, "RssShmem:");
  p.threads = ReadRssKb(pid, "Threads:");
  if (DIR* d = opendir(("/proc/" + std::to_string(pid) + "/fd").c_str())) {
    p.fds = 0;
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') ++p.fds;
    }
    closedir(d);
  }
  return p;
}

// Waits until the daemon has taken every hiprio message (FORGETs): then the
// inodes they release are gone and their fds closed.
bool WaitHiprioDrained(Session& s) {
  for (int i = 0; i < 10000; ++i) {
    {
      std::lock_guard lock(s.hiprio_mu);
      while (s.hiprio->PopUsed()) {
      }
      if (s.hiprio->used_idx() == s.hiprio->avail_idx()) return true;
    }
    usleep(1000);
  }
  return false;
}

// Runs `requests` mixed requests in `rounds`; after each round (all
// operations finished, every FORGET taken) samples the serving process.
// Round 1 warms up (allocator arenas, the inode table, io_uring); from then
// on the open fds must stay exactly as after round 1 and the anonymous
// memory within `anon_slack_kb` of it.
int RunSoak(const Options& given) {
  Session s;
  fuse_init_out init{};
  if (int rc = SetUp(s, given, &init); rc != 0) return rc;
  Options o = given;
  o.pid = ServingPid(given.pid);
  const int depth = o.depths.empty() ? 16 : o.depths.front();
  if (depth < 1 || depth > static_cast<int>(kMaxDepth)) Die("depth 1..64");
  s.shared_fh = Open(s, s.data_node, O_RDONLY);
  for (auto& qd : s.queues) qd->q().ResetAlloc();
  std::FILE* out = o.out.empty() ? stdout : std::fopen(o.out.c_str(), "w");
  if (out == nullptr) Die("cannot write " + o.out);
  std::fprintf(out, "round,requests,seconds,rss_kb,anon_kb,file_kb,shmem_kb,fds,threads\n");
  std::fprintf(stderr,
               "fsbench soak: %s (pid %d serving), %" PRIu64
               " mixed requests, %d queue(s) x depth %d, %d rounds\n",
               o.target.c_str(), o.pid, o.requests, o.queues, depth, o.rounds);
  std::vector<ProcSample> samples;
  const auto start = Clock::now();
  for (int round = 1; round <= o.rounds; ++round) {
    s.budget = o.requests * round / o.rounds;
    const auto until = Clock::now() + std::chrono::hours(24 * 7);
    std::vector<std::thread> threads;
    for (auto& qd : s.queues) {
      QueueDriver* d = qd.get();
      threads.emplace_back([&, d] { d->Run("mixed", depth, Clock::now(), until); });
    }
    for (auto& t : threads) t.join();
    for (auto& qd : s.queues) {
      if (!qd->error.empty())
        Die(o.target + " soak, round " + std::to_string(round) + ": " + qd->error);
    }
    if (!WaitHiprioDrained(s)) Die("the daemon left FORGETs on the hiprio queue for 10 s");
    const ProcSample p = SampleProcess(o.pid);
    if (p.anon_kb < 0 || p.fds < 0) Die("cannot read /proc/" + std::to_string(o.pid));
    samples.push_back(p);
    const double secs = std::chrono::duration<double>(Clock::now() - start).count();
    const uint64_t done = s.requests.load();
    std::fprintf(out, "%d,%" PRIu64 ",%.1f,%ld,%ld,%ld,%ld,%d,%ld\n", round, done, secs, p.rss_kb,
                 p.anon_kb, p.file_kb, p.shmem_kb, p.fds, p.threads);
    std::fflush(out);
    std::fprintf(stderr,
                 "fsbench soak: round %d/%d: %" PRIu64
                 " requests, %.0f/s; anon %ld KiB, rss %ld KiB, %d fds, %ld threads\n",
                 round, o.rounds, done, done / secs, p.anon_kb, p.rss_kb, p.fds, p.threads);
  }
  Release(s, s.data_node, s.shared_fh);
  if (out != stdout) std::fclose(out);

  // The verdict.
  const ProcSample& base = samples.front();
  bool ok = true;
  long anon_max = base.anon_kb;
  for (size_t i = 1; i < samples.size(); ++i) {
    anon_max = std::max(anon_max, samples[i].anon_kb);
    if (samples[i].fds != base.fds) {
      std::fprintf(stderr, "fsbench soak: FAIL: %d open fds after round %zu, %d after round 1\n",
                   samples[i].fds, i + 1, base.fds);
      ok = false;
    }
  }
  const long growth = anon_max - base.anon_kb;
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  std::fprintf(stderr,
               "fsbench soak: %" PRIu64
               " requests in %.1f s (%.0f/s); fds %d after round 1, %d at the end; anonymous "
               "memory %ld KiB after round 1, %ld KiB at most, %ld KiB at the end (growth %ld "
               "KiB, allowed %ld)\n",
               s.requests.load(), secs, s.requests.load() / secs, base.fds, samples.back().fds,
               base.anon_kb, anon_max, samples.back().anon_kb, growth, o.anon_slack_kb);
  if (growth > o.anon_slack_kb) {
    std::fprintf(stderr, "fsbench soak: FAIL: anonymous memory grew by %ld KiB\n", growth);
    ok = false;
  }
  std::fprintf(stderr, "fsbench soak: %s\n", ok ? "flat" : "NOT flat");
  return ok ? 0 : 1;
}

// ---- The machine's limit: the same host system calls, no virtio ---------------------

// One operation of `w` on the host, as a passthrough daemon issues it.
class LimitWorker {
 public:
  // `depth` buffers of 1 MiB in a memfd mapping, used in turn: the same
  // kind and amount of destination memory as guest RAM at that depth.
  LimitWorker(const std::string& dir, int id, int depth)
      : dir_(dir),
        id_(id),
        rng_(id),
        ram_(GuestRam::CreateOrDie(depth * (1ull << 20))),
        buffers_(depth) {
    root_ = open(dir.c_str(), O_PATH | O_DIRECTORY);
    data_path_ = open((dir + "/data").c_str(), O_PATH);
    data_ = open((dir + "/data").c_str(), O_RDONLY);
    wfile_ = open((dir + "/wfile").c_str(), O_WRONLY);
    names_ = open((dir + "/names").c_str(), O_PATH | O_DIRECTORY);
    big_ = open((dir + "/big").c_str(), O_PATH | O_DIRECTORY);
    cu_ = open((dir + "/cu").c_str(), O_PATH | O_DIRECTORY);
    if (root_ < 0 || data_path_ < 0 || data_ < 0 || wfile_ < 0 || names_ < 0 || big_ < 0 || cu_ < 0)
      Die("limit: open the fixture in " + dir + " (run prepare)");
    ram_->Fill(0, 1, depth * (1ull << 20));  // Faulted in, as the guest's buffers are.
    dents_.resize(kReaddirSize);
  }
  ~LimitWorker() {
    for (int fd : {root_, data_path_, data_, wfile_, names_, big_, cu_}) close(fd);
  }

  // Returns payload bytes; counts directory entries in *entries.
  uint64_t Op(const std::string& w, uint64_t* entries) {
    struct stat st;
    if (w == "getattr") {
      if (fstatat(data_path_, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) Die("fstatat");
      return 0;
    }
    if (w == "lookup") {
      const std::string n = "f" + std::to_string(rng_() % kNames);
      int fd = openat(names_, n.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0 || fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) Die("lookup");
      close(fd);
      return 0;
    }
    if (w == "open-release") {
      // Passthrough daemons reopen their O_PATH inode fd through /proc.
      char path[64];
      std::snprintf(path, sizeof path, "/proc/self/fd/%d", data_path_);
      int fd = open(path, O_RDONLY | O_CLOEXEC);
      if (fd < 0) Die("reopen");
      close(fd);
      return 0;
    }
    if (w == "read-4k-rand") {
      const off_t off = static_cast<off_t>((rng_() % (kDataSize / 4096)) * 4096);
      if (pread(data_, Buffer(), 4096, off) != 4096) Die("pread");
      return 4096;
    }
    if (w == "read-64k-seq" || w == "read-1m-seq") {
      const size_t size = Bytes(w);
      if (pread(data_, Buffer(), size, static_cast<off_t>(pos_ % kDataSize)) !=
          static_cast<ssize_t>(size))
        Die("pread");
      pos_ += size;
      return size;
    }
    if (w == "write-1m-seq") {
      if (pwrite(wfile_, Buffer(), 1 << 20, static_cast<off_t>(pos_ % kWriteWrap)) != 1 << 20)
        Die("pwrite");
      pos_ += 1 << 20;
      return 1 << 20;
    }
    if (w == "create-unlink") {
      const std::string n = "l" + std::to_string(id_) + "_" + std::to_string(seq_++);
      int fd = openat(cu_, n.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
      if (fd < 0 || fstat(fd, &st) != 0) Die("create");
      close(fd);
      if (unlinkat(cu_, n.c_str(), 0) != 0) Die("unlink");
      return 0;
    }
    if (w == "readdirplus-10k") {
      int fd = openat(big_, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (fd < 0) Die("opendir");
      uint64_t bytes = 0;
      for (;;) {
        long n = syscall(SYS_getdents64, fd, dents_.data(), dents_.size());
        if (n < 0) Die("getdents64");
        if (n == 0) break;
        bytes += static_cast<uint64_t>(n);
        for (long pos = 0; pos < n;) {
          auto* d = reinterpret_cast<dirent64*>(dents_.data() + pos);
          pos += d->d_reclen;
          if (std::strcmp(d->d_name, ".") == 0 || std::strcmp(d->d_name, "..") == 0) continue;
          if (fstatat(fd, d->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) Die("fstatat entry");
          ++*entries;
        }
      }
      close(fd);
      return bytes;
    }
    Die("unknown workload " + w);
  }

 private:
  std::string dir_;
  int id_;
  std::mt19937_64 rng_;
  int root_, data_path_, data_, wfile_, names_, big_, cu_;
  char* Buffer() {
    next_ = (next_ + 1) % buffers_;
    return reinterpret_cast<char*>(ram_->Host(next_ * (1ull << 20)));
  }
  std::unique_ptr<GuestRam> ram_;
  int buffers_;
  int next_ = 0;
  std::vector<char> dents_;
  uint64_t pos_ = 0;
  uint64_t seq_ = 0;
};

int RunLimit(const Options& o) {
  for (const std::string& w : o.workloads) {
    for (int depth : o.depths) {
      std::vector<Row> reps;
      const double seconds = WindowSeconds(o, w);
      for (int rep = 0; rep < o.repeat; ++rep) {
        std::vector<Sample> samples(o.queues);
        std::vector<std::thread> threads;
        const auto start = Clock::now();
        const auto from = start + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(o.warmup));
        const auto until = from + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(seconds));
        for (int t = 0; t < o.queues; ++t) {
          threads.emplace_back([&, t] {
            LimitWorker worker(o.dir, t, depth);
            Sample& s = samples[t];
            s.lat_us.reserve(1 << 20);
            for (;;) {
              const auto t0 = Clock::now();
              if (t0 >= until) break;
              uint64_t entries = 0;
              const uint64_t bytes = worker.Op(w, &entries);
              const auto t1 = Clock::now();
              if (t0 >= from && t1 <= until) {
                ++s.ops;
                s.bytes += bytes;
                s.entries += entries;
                s.lat_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
              }
            }
          });
        }
        CpuWindow cpu;
        cpu.Measure(0, from, until);
        for (auto& t : threads) t.join();
        Row r = Summarize(samples, seconds, w == "readdirplus-10k");
        r.workload = w;
        r.depth = depth;
        r.queues = o.queues;
        r.target = o.target;
        r.cpu_us = cpu.PerOp(r, seconds);
        reps.push_back(r);
      }
      PrintRow(MedianRow(reps));
    }
  }
  return 0;
}

// ---- The report -------------------------------------------------------------------

std::string Fmt(double v) {
  char b[32];
  if (v >= 1e6)
    std::snprintf(b, sizeof b, "%.2fM", v / 1e6);
  else if (v >= 1e4)
    std::snprintf(b, sizeof b, "%.1fk", v / 1e3);
  else
    std::snprintf(b, sizeof b, "%.0f", v);
  return b;
}

int Report(const std::string& csv, bool markdown, const std::string& plot_data) {
  std::ifstream in(csv);
  if (!in) Die("cannot read " + csv);
  std::string line;
  std::getline(in, line);  // Header.
  // key: workload, depth, queues -> target -> row
  std::map<std::tuple<int, int, int>, std::map<std::string, Row>> table;
  while (std::getline(in, line)) {
    auto f = Split(line);
    if (f.size() < 8) continue;
    Row r{f[0],
          std::stoi(f[1]),
          std::stoi(f[2]),
          f[3],
          std::stod(f[4]),
          std::stod(f[5]),
          std::stod(f[6]),
          std::stod(f[7]),
          f.size() > 8 ? std::stod(f[8]) : 0.0};
    int wi = static_cast<int>(std::find(kWorkloads.begin(), kWorkloads.end(), r.workload) -
                              kWorkloads.begin());
    table[{r.queues, wi, r.depth}][r.target] = r;
  }
  const std::vector<std::string> targets = {"ours-uring", "ours-sync", "virtiofsd-c", "limit"};
  auto metric = [](const Row& r) { return Bytes(r.workload) > 0 ? r.mbs : r.ops; };
  auto ratio = [&](const std::map<std::string, Row>& m, const std::string& a,
                   const std::string& b) -> std::string {
    auto ia = m.find(a), ib = m.find(b);
    if (ia == m.end() || ib == m.end() || metric(ib->second) == 0) return "-";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", metric(ia->second) / metric(ib->second));
    return buf;
  };
  const char* sep = markdown ? " | " : "  ";
  if (markdown) {
    std::printf(
        "| workload | qd | q | ours-uring | ours-sync | virtiofsd-c | limit | uring/C | "
        "uring/limit | p50/p99 µs uring | p50/p99 µs C | CPU µs/op uring/C/limit |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  } else {
    std::printf("%-16s%s%3s%s%2s%s%10s%s%10s%s%11s%s%10s%s%7s%s%11s%s%15s%s%15s%s%s\n", "workload",
                sep, "qd", sep, "q", sep, "ours-uring", sep, "ours-sync", sep, "virtiofsd-c", sep,
                "limit", sep, "uring/C", sep, "uring/limit", sep, "p50/p99 uring", sep, "p50/p99 C",
                sep, "CPU us/op uring/C/limit");
  }
  for (auto& [key, m] : table) {
    auto [queues, wi, depth] = key;
    const std::string w = wi < static_cast<int>(kWorkloads.size()) ? kWorkloads[wi] : "?";
    const bool bw = Bytes(w) > 0;
    std::vector<std::string> cells;
    for (const auto& t : targets) {
      auto it = m.find(t);
      cells.push_back(it == m.end() ? "-"
                                    : (bw ? Fmt(it->second.mbs) + " MB/s" : Fmt(it->second.ops)));
    }
    auto lat = [&](const std::string& t) -> std::string {
      auto it = m.find(t);
      if (it == m.end()) return "-";
      char b[48];
      std::snprintf(b, sizeof b, "%.0f/%.0f", it->second.p50, it->second.p99);
      return b;
    };
    auto cpu = [&](const std::string& t) -> std::string {
      auto it = m.find(t);
      if (it == m.end()) return "-";
      char b[32];
      std::snprintf(b, sizeof b, "%.1f", it->second.cpu_us);
      return b;
    };
    const std::string cpus = cpu("ours-uring") + "/" + cpu("virtiofsd-c") + "/" + cpu("limit");
    if (markdown) {
      std::printf("| %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", w.c_str(),
                  depth, queues, cells[0].c_str(), cells[1].c_str(), cells[2].c_str(),
                  cells[3].c_str(), ratio(m, "ours-uring", "virtiofsd-c").c_str(),
                  ratio(m, "ours-uring", "limit").c_str(), lat("ours-uring").c_str(),
                  lat("virtiofsd-c").c_str(), cpus.c_str());
    } else {
      std::printf("%-16s%s%3d%s%2d%s%10s%s%10s%s%11s%s%10s%s%7s%s%11s%s%15s%s%15s%s%s\n", w.c_str(),
                  sep, depth, sep, queues, sep, cells[0].c_str(), sep, cells[1].c_str(), sep,
                  cells[2].c_str(), sep, cells[3].c_str(), sep,
                  ratio(m, "ours-uring", "virtiofsd-c").c_str(), sep,
                  ratio(m, "ours-uring", "limit").c_str(), sep, lat("ours-uring").c_str(), sep,
                  lat("virtiofsd-c").c_str(), sep, cpus.c_str());
    }
  }
  if (!plot_data.empty()) {
    // One line per (workload, depth) with one request queue: each target's
    // CPU efficiency, the limit's CPU time per operation over the target's
    // (1 = as cheap as the bare system calls). Unlike throughput, CPU time
    // per operation holds up on a machine that other jobs keep busy.
    std::FILE* f = std::fopen(plot_data.c_str(), "w");
    if (f == nullptr) Die("cannot write " + plot_data);
    std::fprintf(f, "label ours-uring ours-sync virtiofsd-c\n");
    for (auto& [key, m] : table) {
      auto [queues, wi, depth] = key;
      if (queues != 1) continue;
      auto lim = m.find("limit");
      if (lim == m.end() || lim->second.cpu_us <= 0) continue;
      std::fprintf(f, "\"%s qd%d\"", kWorkloads[wi].c_str(), depth);
      for (const char* t : {"ours-uring", "ours-sync", "virtiofsd-c"}) {
        auto it = m.find(t);
        if (it == m.end() || it->second.cpu_us <= 0)
          std::fprintf(f, " 0");
        else
          std::fprintf(f, " %.4f", lim->second.cpu_us / it->second.cpu_us);
      }
      std::fprintf(f, "\n");
    }
    std::fclose(f);
  }
  return 0;
}

Options ParseOptions(int argc, char** argv, int first) {
  Options o;
  for (int i = first; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Die(a + " needs a value");
      return argv[++i];
    };
    if (a == "--socket")
      o.socket = next();
    else if (a == "--target")
      o.target = next();
    else if (a == "--dir")
      o.dir = next();
    else if (a == "--queues")
      o.queues = std::stoi(next());
    else if (a == "--workloads")
      o.workloads = Split(next());
    else if (a == "--depths") {
      o.depths.clear();
      for (auto& d : Split(next())) o.depths.push_back(std::stoi(d));
    } else if (a == "--seconds")
      o.seconds = std::stod(next());
    else if (a == "--warmup")
      o.warmup = std::stod(next());
    else if (a == "--repeat")
      o.repeat = std::stoi(next());
    else if (a == "--pid")
      o.pid = std::stoi(next());
    else if (a == "--rss-out")
      o.rss_out = next();
    else if (a == "--requests")
      o.requests = std::stoull(next());
    else if (a == "--rounds")
      o.rounds = std::stoi(next());
    else if (a == "--anon-slack-kb")
      o.anon_slack_kb = std::stol(next());
    else if (a == "--out")
      o.out = next();
    else
      Die("unknown option " + a);
  }
  for (const auto& w : o.workloads) {
    if (w != "mixed" && std::find(kWorkloads.begin(), kWorkloads.end(), w) == kWorkloads.end())
      Die("unknown workload " + w);
  }
  if (o.queues < 1 || o.queues > 8) Die("--queues 1..8");
  if (o.repeat < 1) Die("--repeat >= 1");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(
        stderr,
        "usage: fsbench prepare DIR | daemon --socket P ... | soak --socket P --pid N ... | "
        "limit --dir D ... | "
        "report --csv F [--markdown] [--plot-data F]\n");
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "prepare") {
    if (argc != 3) Die("prepare DIR");
    Prepare(argv[2]);
    return 0;
  }
  if (cmd == "report") {
    std::string csv, plot;
    bool md = false;
    for (int i = 2; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--csv" && i + 1 < argc)
        csv = argv[++i];
      else if (a == "--plot-data" && i + 1 < argc)
        plot = argv[++i];
      else if (a == "--markdown")
        md = true;
      else
        Die("unknown option " + a);
    }
    return Report(csv, md, plot);
  }
  Options o = ParseOptions(argc, argv, 2);
  if (cmd == "daemon") {
    if (o.socket.empty() || o.target.empty()) Die("daemon needs --socket and --target");
    return RunDaemon(o);
  }
  if (cmd == "soak") {
    if (o.socket.empty() || o.pid <= 0) Die("soak needs --socket and --pid");
    if (o.target.empty()) o.target = "daemon";
    if (o.rounds < 2 || o.requests < static_cast<uint64_t>(o.rounds))
      Die("--rounds >= 2, <= --requests");
    return RunSoak(o);
  }
  if (cmd == "limit") {
    if (o.dir.empty()) Die("limit needs --dir");
    if (o.target.empty()) o.target = "limit";
    return RunLimit(o);
  }
  Die("unknown command " + cmd);
}
