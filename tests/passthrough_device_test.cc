// PassthroughBackend served by the virtio-fs device over vhost-user, on
// both I/O engines: data moves between host files and guest memory through
// the queue worker's io_uring (or inline with the sync engine).
#include <fcntl.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "tests/support/device_rig.h"
#include "tests/support/driver_queue.h"
#include "tests/support/frontend.h"
#include "tests/support/fuse_request.h"
#include "tests/support/guest_ram.h"
#include "virtiofs/passthrough.h"
#include "virtiofs/server.h"
#include "virtiofs/virtio_fs_device.h"

namespace virtiofs {
namespace {

using namespace vhost_user;  // NOLINT: protocol names in a test.
using testing::BuildInit;
using testing::BuildRequest;
using testing::DeviceRig;
using testing::DriverQueue;
using testing::Frontend;
using testing::FuseBody;
using testing::GuestRam;
namespace fs = std::filesystem;

// io_uring instances this process has open.
int CountRings() {
  int n = 0;
  for (auto& e : fs::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    auto target = fs::read_symlink(e.path(), ec);
    if (!ec && target.string().find("io_uring") != std::string::npos) ++n;
  }
  return n;
}

TEST_CASE("files written and read through the device on both engines") {
  for (IoEngineKind kind : {IoEngineKind::kUring, IoEngineKind::kSync}) {
    DYNAMIC_SECTION(IoEngineName(kind)) {
      char dir[] = "/tmp/virtiofs-ptdev-XXXXXX";
      REQUIRE(mkdtemp(dir) != nullptr);
      const std::string share = std::string(dir) + "/share";
      fs::create_directory(share);
      {
        DeviceRig d(share, std::string(dir) + "/sock", kind);  // INIT done.
        auto& fe = *d.fe;
        auto& q = d.q;
        auto& ram = d.ram;
        uint64_t& unique = d.unique;
        auto call = [&](std::vector<uint8_t> req, uint32_t reply = 4096) {
          return d.Call(std::move(req), reply);
        };
        const int rings = CountRings();
        CHECK(rings >= (kind == IoEngineKind::kUring ? 1 : 0));

        fuse_create_in c{O_RDWR | O_CREAT, S_IFREG | 0644, 0, 0};
        auto cr = call(BuildRequest(FUSE_CREATE, unique += 2, FUSE_ROOT_ID,
                                    FuseBody().Add(c).Name("data.bin").bytes()));
        REQUIRE(cr.error() == 0);
        fuse_entry_out entry;
        fuse_open_out open;
        std::memcpy(&entry, cr.body.data(), sizeof entry);
        std::memcpy(&open, cr.body.data() + sizeof entry, sizeof open);

        // 1 MiB in one WRITE, then read back in 256 KiB pieces.
        std::string data(1 << 20, '\0');
        for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 31 + i / 4096);
        fuse_write_in w{};
        w.fh = open.fh;
        w.size = static_cast<uint32_t>(data.size());
        auto wr = call(BuildRequest(FUSE_WRITE, unique += 2, entry.nodeid,
                                    FuseBody().Add(w).Raw(data).bytes()));
        REQUIRE(wr.error() == 0);
        CHECK(wr.BodyAs<fuse_write_out>()->size == data.size());
        fuse_fsync_in fsy{open.fh, 1, 0};
        CHECK(call(BuildRequest(FUSE_FSYNC, unique += 2, entry.nodeid, FuseBody().Add(fsy).bytes()))
                  .error() == 0);
        std::ifstream host(share + "/data.bin", std::ios::binary);
        CHECK(std::string(std::istreambuf_iterator<char>(host), {}) == data);

        std::string back;
        for (uint64_t off = 0; off < data.size() + 1; off += 256 << 10) {
          fuse_read_in rd{};
          rd.fh = open.fh;
          rd.offset = off;
          rd.size = 256 << 10;
          auto rr =
              call(BuildRequest(FUSE_READ, unique += 2, entry.nodeid, FuseBody().Add(rd).bytes()),
                   16 + (256 << 10));
          REQUIRE(rr.error() == 0);
          back.append(rr.body.begin(), rr.body.end());
        }
        CHECK(back == data);

        // WRITE then SETATTR(mtime) in one batch, as the guest's writeback cache
        // sends them (it does not wait for the WRITE): the time is set after the
        // data lands, or the host's write would move mtime to now.
        {
          fuse_write_in w2{};
          w2.fh = open.fh;
          w2.size = static_cast<uint32_t>(data.size());
          fuse_setattr_in sa{};
          sa.valid = FATTR_MTIME;
          sa.mtime = 1000000000;
          const std::vector<uint8_t> reqs[] = {
              BuildRequest(FUSE_WRITE, unique += 2, entry.nodeid,
                           FuseBody().Add(w2).Raw(data).bytes()),
              BuildRequest(FUSE_SETATTR, unique += 2, entry.nodeid, FuseBody().Add(sa).bytes())};
          uint64_t reply_gpa[2];
          uint16_t head[2];
          if (q.config().event_idx) q.SetUsedEvent(q.used_idx());
          for (int i = 0; i < 2; ++i) {
            const uint64_t gpa = q.Alloc(reqs[i].size());
            ram->Write(gpa, reqs[i].data(), reqs[i].size());
            reply_gpa[i] = q.Alloc(4096);
            const DriverQueue::Buffer chain[] = {
                {gpa, static_cast<uint32_t>(reqs[i].size()), false}, {reply_gpa[i], 4096, true}};
            auto h = q.AddChainNoPublish(chain);
            REQUIRE(h);
            head[i] = *h;
          }
          q.Publish();
          fe.Kick(1);
          std::vector<DriverQueue::UsedElem> used;
          for (int waited = 0; used.size() < 2 && waited < 5000; ++waited) {
            if (auto u = q.PopUsed()) {
              used.push_back(*u);
            } else {
              std::this_thread::sleep_for(std::chrono::milliseconds(1));
            }
          }
          REQUIRE(used.size() == 2);
          for (const auto& u : used) {  // In completion order, not necessarily submission order.
            const int i = u.id == head[0] ? 0 : 1;
            REQUIRE(u.id == head[i]);
            auto r = testing::ReadReply(*ram, reply_gpa[i], u.len);
            INFO(r.status().message());
            REQUIRE(r.ok());
            CHECK(r->error() == 0);
          }
          struct stat st {};
          REQUIRE(stat((share + "/data.bin").c_str(), &st) == 0);
          CHECK(st.st_mtim.tv_sec == 1000000000);
          q.ResetAlloc();
        }

        // Errors come back through the engine too.
        fuse_read_in bad{};
        bad.fh = 999;
        bad.size = 16;
        CHECK(call(BuildRequest(FUSE_READ, unique += 2, entry.nodeid, FuseBody().Add(bad).bytes()))
                  .error() == -EBADF);
      }
      CHECK(CountRings() == 0);  // The workers' rings went with the device.
      fs::remove_all(dir);
    }
  }
}

// A fault case of its own: the front-end stops the request queue
// (GET_VRING_BASE, as QEMU does when the guest resets the device or the VM
// stops) while a stream of requests is being served, then starts it again at
// the base it got. Every request the device took before the stop is answered
// before GET_VRING_BASE replies; none after it is touched; after the restart
// each of the rest runs exactly once (a MKNOD run twice would answer EEXIST)
// and every acknowledged WRITE is in the host file.
TEST_CASE("a queue stopped mid-stream and started again loses and repeats no request") {
  for (IoEngineKind kind : {IoEngineKind::kUring, IoEngineKind::kSync}) {
    DYNAMIC_SECTION(IoEngineName(kind)) {
      char dir[] = "/tmp/virtiofs-qstop-XXXXXX";
      REQUIRE(mkdtemp(dir) != nullptr);
      const std::string share = std::string(dir) + "/share";
      fs::create_directory(share);
      {
        DeviceRig d(share, std::string(dir) + "/sock", kind);  // INIT done.
        auto& fe = *d.fe;
        auto& q = d.q;
        auto& ram = d.ram;
        uint64_t& unique = d.unique;
        auto call = [&](std::vector<uint8_t> req) { return d.Call(std::move(req)); };
        fuse_create_in c{O_RDWR | O_CREAT, S_IFREG | 0644, 0, 0};
        auto cr = call(BuildRequest(FUSE_CREATE, unique += 2, FUSE_ROOT_ID,
                                    FuseBody().Add(c).Name("log").bytes()));
        REQUIRE(cr.error() == 0);
        fuse_entry_out entry;
        fuse_open_out open;
        std::memcpy(&entry, cr.body.data(), sizeof entry);
        std::memcpy(&open, cr.body.data() + sizeof entry, sizeof open);

        constexpr int kPerRound = 256;
        constexpr int kRecord = 32;  // Bytes each WRITE puts at its own offset.
        auto record = [](int n) {
          std::string s = "record " + std::to_string(n);
          s.resize(kRecord, '.');
          return s;
        };
        std::mt19937 rng(kind == IoEngineKind::kUring ? 1 : 2);
        int mid_stream = 0, rounds = 0, written = 0;
        for (; rounds < 60 && mid_stream < 8; ++rounds) {
          // Half MKNODs of fresh names, half WRITEs of numbered records.
          struct Req {
            uint64_t reply = 0;
            bool is_write = false;
            int n = 0;
          };
          std::vector<Req> reqs(kPerRound);
          std::vector<int> of_head(q.size(), -1);
          std::vector<std::vector<uint8_t>> bytes(kPerRound);
          for (int i = 0; i < kPerRound; ++i) {
            Req& r = reqs[i];
            r.is_write = i % 2 == 1;
            r.n = rounds * kPerRound + i;
            if (r.is_write) {
              fuse_write_in w{};
              w.fh = open.fh;
              w.offset = static_cast<uint64_t>(r.n) * kRecord;
              w.size = kRecord;
              bytes[i] = BuildRequest(FUSE_WRITE, unique += 2, entry.nodeid,
                                      FuseBody().Add(w).Raw(record(r.n)).bytes());
            } else {
              fuse_mknod_in m{};
              m.mode = S_IFREG | 0644;
              bytes[i] = BuildRequest(FUSE_MKNOD, unique += 2, FUSE_ROOT_ID,
                                      FuseBody().Add(m).Name("n" + std::to_string(r.n)).bytes());
            }
          }
          // The driver streams them in small batches, kicking each, while the
          // front-end stops the queue at a random moment.
          const uint16_t start = q.avail_idx();
          std::thread driver([&] {
            for (int i = 0; i < kPerRound; ++i) {
              Req& r = reqs[i];
              const uint64_t in = q.Alloc(bytes[i].size());
              ram->Write(in, bytes[i].data(), bytes[i].size());
              r.reply = q.Alloc(256);
              ram->Fill(r.reply, 0xab, 256);
              const DriverQueue::Buffer chain[] = {
                  {in, static_cast<uint32_t>(bytes[i].size()), false}, {r.reply, 256, true}};
              auto h = q.AddChain(chain);
              if (!h) return;  // Checked below (every request must be answered).
              of_head[*h] = i;
              if (i % 4 == 3) {
                fe.Kick(1);
                std::this_thread::sleep_for(std::chrono::microseconds(100));
              }
            }
            fe.Kick(1);
          });
          std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
          auto base = fe.GetVringBase(1);
          driver.join();
          REQUIRE(base.ok());
          const int taken = static_cast<uint16_t>(*base - start);
          INFO("round " << rounds << ": " << taken << " of " << kPerRound
                        << " taken before the stop");
          REQUIRE(taken <= kPerRound);
          // Everything taken was answered before the stop returned.
          CHECK(q.used_idx() == *base);
          if (taken > 0 && taken < kPerRound) ++mid_stream;
          std::vector<bool> answered(kPerRound, false);
          auto collect = [&](const DriverQueue::UsedElem& u) {
            REQUIRE(u.id < of_head.size());
            const int i = of_head[u.id];
            REQUIRE(i >= 0);
            REQUIRE_FALSE(answered[i]);
            answered[i] = true;
            auto r = testing::ReadReply(*ram, reqs[i].reply, u.len);
            REQUIRE(r.ok());
            INFO("request " << reqs[i].n << (reqs[i].is_write ? " WRITE" : " MKNOD"));
            CHECK(r->error() == 0);
            if (reqs[i].is_write && r->error() == 0) {
              CHECK(r->BodyAs<fuse_write_out>()->size == kRecord);
              ++written;
            }
          };
          int before = 0;
          while (auto u = q.PopUsed()) {
            collect(*u);
            ++before;
          }
          CHECK(before == taken);
          // The chains after the base are untouched: no reply written, no file.
          for (int i = 0; i < kPerRound; ++i) {
            if (answered[i]) continue;
            uint8_t head[16];
            ram->Read(reqs[i].reply, head, sizeof head);
            CHECK(std::all_of(head, head + sizeof head, [](uint8_t b) { return b == 0xab; }));
            if (!reqs[i].is_write) {
              CHECK_FALSE(fs::exists(share + "/n" + std::to_string(reqs[i].n)));
            }
          }
          // Start again where the device stopped: the rest is served once.
          REQUIRE(fe.StartVring(1, q, *base).ok());
          fe.Kick(1);
          int got = before;
          for (int waited = 0; got < kPerRound && waited < 10000; ++waited) {
            if (auto u = q.PopUsed()) {
              collect(*u);
              ++got;
            } else {
              std::this_thread::sleep_for(std::chrono::milliseconds(1));
            }
          }
          REQUIRE(got == kPerRound);
          q.ResetAlloc();
        }
        INFO(rounds << " rounds");
        CHECK(mid_stream >= 8);  // The stop did land in the middle of streams.
        CHECK(written == rounds * kPerRound / 2);
        // Every acknowledged record is on the host, every name exactly once.
        std::ifstream host(share + "/log", std::ios::binary);
        const std::string log(std::istreambuf_iterator<char>(host), {});
        REQUIRE(log.size() == static_cast<size_t>(rounds * kPerRound * kRecord));
        for (int n = 1; n < rounds * kPerRound; n += 2) {
          CHECK(log.substr(static_cast<size_t>(n) * kRecord, kRecord) == record(n));
        }
        int names = 0;
        for (auto& e : fs::directory_iterator(share))
          names += e.path().filename().string()[0] == 'n';
        CHECK(names == rounds * kPerRound / 2);
      }
      fs::remove_all(dir);
    }
  }
}

}  // namespace
}  // namespace virtiofs
