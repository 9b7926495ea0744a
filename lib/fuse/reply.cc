// Reply encoding: every Backend answer becomes a FUSE reply written straight
// into the guest's writable buffers.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <ctime>
#include <limits>

#include "lib/fuse/pending_request.h"
#include "virtiofs/log.h"

namespace virtiofs {
namespace fuse_internal {

namespace {
uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000 + uint64_t(ts.tv_nsec);
}
}  // namespace

PendingRequest::PendingRequest(DescriptorChain chain, CompletionSink* sink, FuseSession* session)
    : chain_(std::move(chain)),
      sink_(sink),
      session_(session),
      header_(chain_.writable()),
      payload_(std::span<const iovec>()) {
  if (session_ != nullptr) {
    session_->in_flight_.fetch_add(1, std::memory_order_relaxed);
    if (session_->options_.measure_latency) start_ns_ = NowNs();
  }
  auto rest = header_.SplitAt(sizeof(fuse_out_header));
  if (rest.ok()) {
    header_fits_ = true;
    payload_ = *rest;
  }
}

void PendingRequest::Finish(int32_t error, uint32_t payload_bytes) {
  uint32_t len = 0;
  if (header_fits_) {
    fuse_out_header h{};
    h.len = static_cast<uint32_t>(sizeof h) + payload_bytes;
    h.error = error;
    h.unique = unique_;
    (void)header_.WriteObject(h);  // Fits: checked at construction.
    len = h.len;
  } else {
    VIRTIOFS_LOG(kWarning, "fuse: request {} (opcode {}) has no room for a reply", unique_,
                 opcode_);
  }
  Done(error, len);
}

void PendingRequest::Done(int32_t error, uint32_t reply_length) {
  if (session_ != nullptr) {
    session_->RecordReply(opcode_, error, start_ns_);
    session_->in_flight_.fetch_sub(1, std::memory_order_relaxed);
  }
  CompletionSink* sink = sink_;
  DescriptorChain chain = std::move(chain_);
  delete this;
  sink->Complete(std::move(chain), reply_length);
}

void PendingRequest::Fail(int err) {
  // The guest takes errors in (-512, 0) only (fs/fuse/dev.c refuses others;
  // 512 and up are the kernel's internal ERESTART* codes).
  if (err <= 0 || err >= 512) err = EIO;
  Finish(-err, 0);
}

void PendingRequest::Succeed(std::initializer_list<std::span<const uint8_t>> parts) {
  size_t total = 0;
  for (auto p : parts) total += p.size();
  if (total > payload_.remaining()) {
    VIRTIOFS_LOG(kWarning, "fuse: reply of {} bytes to request {} does not fit in {}", total,
                 unique_, payload_.remaining());
    Fail(ERANGE);
    return;
  }
  for (auto p : parts) (void)payload_.Write(p.data(), p.size());
  Finish(0, static_cast<uint32_t>(total));
}

void PendingRequest::SucceedWritten(uint32_t extra) {
  Finish(0, static_cast<uint32_t>(payload_.bytes_written()) + extra);
}

void PendingRequest::CompleteSilently() { Done(0, 0); }

}  // namespace fuse_internal

void FuseSession::RecordReply(uint32_t opcode, int32_t error, uint64_t start_ns) {
  OpCounters& c = ops_[opcode < kMaxOpcode ? opcode : 0];
  c.replies.fetch_add(1, std::memory_order_relaxed);
  if (error != 0) c.errors.fetch_add(1, std::memory_order_relaxed);
  if (start_ns == 0) return;
  const uint64_t ns = fuse_internal::NowNs() - start_ns;
  c.total_ns.fetch_add(ns, std::memory_order_relaxed);
  const uint64_t us = ns / 1000;
  // Bucket i > 0 holds [2^(i-1), 2^i) us: i is the bit width of us.
  int bucket = us == 0 ? 0 : 64 - __builtin_clzll(us);
  if (bucket > FuseOpStats::kBuckets - 1) bucket = FuseOpStats::kBuckets - 1;
  c.buckets[bucket].fetch_add(1, std::memory_order_relaxed);
}

FuseOpStats FuseSession::op_stats(uint32_t opcode) const {
  FuseOpStats s;
  if (opcode >= kMaxOpcode) return s;
  const OpCounters& c = ops_[opcode];
  s.replies = c.replies.load(std::memory_order_relaxed);
  s.errors = c.errors.load(std::memory_order_relaxed);
  s.total_ns = c.total_ns.load(std::memory_order_relaxed);
  for (int i = 0; i < FuseOpStats::kBuckets; ++i) {
    s.buckets[i] = c.buckets[i].load(std::memory_order_relaxed);
  }
  return s;
}

std::string_view FuseOpcodeName(uint32_t opcode) {
  static constexpr std::string_view kNames[FuseSession::kMaxOpcode] = {
      "UNKNOWN",   "LOOKUP",       "FORGET",      "GETATTR",        "SETATTR",
      "READLINK",  "SYMLINK",      "UNKNOWN",     "MKNOD",          "MKDIR",
      "UNLINK",    "RMDIR",        "RENAME",      "LINK",           "OPEN",
      "READ",      "WRITE",        "STATFS",      "RELEASE",        "UNKNOWN",
      "FSYNC",     "SETXATTR",     "GETXATTR",    "LISTXATTR",      "REMOVEXATTR",
      "FLUSH",     "INIT",         "OPENDIR",     "READDIR",        "RELEASEDIR",
      "FSYNCDIR",  "GETLK",        "SETLK",       "SETLKW",         "ACCESS",
      "CREATE",    "INTERRUPT",    "BMAP",        "DESTROY",        "IOCTL",
      "POLL",      "NOTIFY_REPLY", "BATCH_FORGET", "FALLOCATE",     "READDIRPLUS",
      "RENAME2",   "LSEEK",        "COPY_FILE_RANGE", "SETUPMAPPING", "REMOVEMAPPING",
      "SYNCFS",    "TMPFILE",      "STATX"};
  return opcode < FuseSession::kMaxOpcode ? kNames[opcode] : kNames[0];
}

double FuseOpStats::BucketLimitUs(int i) {
  if (i >= kBuckets - 1) return std::numeric_limits<double>::infinity();
  return std::ldexp(1.0, i);
}

namespace fuse_internal {

void SplitTimeout(double seconds, uint64_t* sec, uint32_t* nsec) {
  if (!(seconds > 0)) {  // Also NaN.
    *sec = 0;
    *nsec = 0;
    return;
  }
  if (seconds >= 9.2e18) {
    *sec = uint64_t{1} << 62;
    *nsec = 0;
    return;
  }
  double whole = std::floor(seconds);
  *sec = static_cast<uint64_t>(whole);
  *nsec = std::min<uint32_t>(static_cast<uint32_t>((seconds - whole) * 1e9), 999999999u);
}

void FillAttr(const struct stat& st, uint32_t flags, fuse_attr* a) {
  *a = fuse_attr{};
  a->ino = st.st_ino;
  a->size = static_cast<uint64_t>(st.st_size);
  a->blocks = static_cast<uint64_t>(st.st_blocks);
  a->atime = static_cast<uint64_t>(st.st_atim.tv_sec);
  a->mtime = static_cast<uint64_t>(st.st_mtim.tv_sec);
  a->ctime = static_cast<uint64_t>(st.st_ctim.tv_sec);
  a->atimensec = static_cast<uint32_t>(st.st_atim.tv_nsec);
  a->mtimensec = static_cast<uint32_t>(st.st_mtim.tv_nsec);
  a->ctimensec = static_cast<uint32_t>(st.st_ctim.tv_nsec);
  a->mode = st.st_mode;
  a->nlink = static_cast<uint32_t>(st.st_nlink);
  a->uid = st.st_uid;
  a->gid = st.st_gid;
  a->rdev = static_cast<uint32_t>(st.st_rdev);
  a->blksize = static_cast<uint32_t>(st.st_blksize);
  a->flags = flags;
}

void FillEntry(const Entry& e, fuse_entry_out* out) {
  *out = fuse_entry_out{};
  out->nodeid = e.node_id;
  out->generation = e.generation;
  SplitTimeout(e.entry_timeout, &out->entry_valid, &out->entry_valid_nsec);
  SplitTimeout(e.attr.timeout, &out->attr_valid, &out->attr_valid_nsec);
  FillAttr(e.attr.st, e.attr.flags, &out->attr);
}

void Answer(PendingRequest* r, const Entry& v) {
  fuse_entry_out out;
  FillEntry(v, &out);
  r->Succeed({Bytes(out)});
}

void Answer(PendingRequest* r, const Attributes& v) {
  fuse_attr_out out{};
  SplitTimeout(v.timeout, &out.attr_valid, &out.attr_valid_nsec);
  FillAttr(v.st, v.flags, &out.attr);
  r->Succeed({Bytes(out)});
}

void Answer(PendingRequest* r, const StatxResult& v) {
  fuse_statx_out out{};
  SplitTimeout(v.timeout, &out.attr_valid, &out.attr_valid_nsec);
  out.flags = v.flags;
  const struct statx& s = v.stx;
  fuse_statx& d = out.stat;
  d.mask = s.stx_mask;
  d.blksize = s.stx_blksize;
  d.attributes = s.stx_attributes;
  d.nlink = s.stx_nlink;
  d.uid = s.stx_uid;
  d.gid = s.stx_gid;
  d.mode = s.stx_mode;
  d.ino = s.stx_ino;
  d.size = s.stx_size;
  d.blocks = s.stx_blocks;
  d.attributes_mask = s.stx_attributes_mask;
  auto t = [](const struct statx_timestamp& ts) {
    return fuse_sx_time{ts.tv_sec, ts.tv_nsec, 0};
  };
  d.atime = t(s.stx_atime);
  d.btime = t(s.stx_btime);
  d.ctime = t(s.stx_ctime);
  d.mtime = t(s.stx_mtime);
  d.rdev_major = s.stx_rdev_major;
  d.rdev_minor = s.stx_rdev_minor;
  d.dev_major = s.stx_dev_major;
  d.dev_minor = s.stx_dev_minor;
  r->Succeed({Bytes(out)});
}

void Answer(PendingRequest* r, const OpenResult& v) {
  fuse_open_out out{};
  out.fh = v.handle;
  out.open_flags = v.open_flags;
  r->Succeed({Bytes(out)});
}

void Answer(PendingRequest* r, const CreateResult& v) {
  fuse_entry_out entry;
  FillEntry(v.entry, &entry);
  fuse_open_out open{};
  open.fh = v.open.handle;
  open.open_flags = v.open.open_flags;
  r->Succeed({Bytes(entry), Bytes(open)});
}

void Answer(PendingRequest* r, const struct statvfs& v) {
  fuse_statfs_out out{};
  out.st.blocks = v.f_blocks;
  out.st.bfree = v.f_bfree;
  out.st.bavail = v.f_bavail;
  out.st.files = v.f_files;
  out.st.ffree = v.f_ffree;
  out.st.bsize = static_cast<uint32_t>(v.f_bsize);
  out.st.namelen = static_cast<uint32_t>(v.f_namemax);
  out.st.frsize = static_cast<uint32_t>(v.f_frsize);
  r->Succeed({Bytes(out)});
}

void Answer(PendingRequest* r, const std::string& v) {
  const auto data = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()), v.size());
  switch (r->opcode()) {
    case FUSE_GETXATTR:
    case FUSE_LISTXATTR:
      // A size probe gets the size; a buffer too small gets ERANGE.
      if (r->size_limit() == 0) {
        fuse_getxattr_out out{};
        out.size = static_cast<uint32_t>(v.size());
        r->Succeed({Bytes(out)});
        return;
      }
      if (v.size() > r->size_limit()) {
        r->Fail(ERANGE);
        return;
      }
      r->Succeed({data});
      return;
    default:  // READLINK
      r->Succeed({data});
      return;
  }
}

void Answer(PendingRequest* r, uint32_t v) {
  if (r->opcode() == FUSE_POLL) {
    fuse_poll_out out{};
    out.revents = v;
    r->Succeed({Bytes(out)});
    return;
  }
  if (v > r->size_limit()) {  // WRITE: more than the guest sent.
    VIRTIOFS_LOG(kError, "fuse: WRITE answered {} bytes for {} sent: EIO", v, r->size_limit());
    r->Fail(EIO);
    return;
  }
  fuse_write_out out{};
  out.size = v;
  r->Succeed({Bytes(out)});
}

void Answer(PendingRequest* r, uint64_t v) {
  switch (r->opcode()) {
    case FUSE_LSEEK: {
      fuse_lseek_out out{};
      out.offset = v;
      r->Succeed({Bytes(out)});
      return;
    }
    case FUSE_BMAP: {
      fuse_bmap_out out{};
      out.block = v;
      r->Succeed({Bytes(out)});
      return;
    }
    default: {  // COPY_FILE_RANGE: never more than asked (which fits 32 bits).
      if (v > r->size_limit()) {
        r->Fail(EIO);
        return;
      }
      fuse_write_out out{};
      out.size = static_cast<uint32_t>(v);
      r->Succeed({Bytes(out)});
      return;
    }
  }
}

void Answer(PendingRequest* r, const FileLock& v) {
  fuse_lk_out out{};
  out.lk.start = v.start;
  out.lk.end = v.end;
  out.lk.type = v.type;
  out.lk.pid = v.pid;
  r->Succeed({Bytes(out)});
}

void Answer(PendingRequest* r, const IoctlResult& v) {
  if (v.out.size() > r->size_limit()) {
    r->Fail(EINVAL);
    return;
  }
  fuse_ioctl_out out{};
  out.result = v.result;
  r->Succeed({Bytes(out), std::span<const uint8_t>(v.out.data(), v.out.size())});
}

void AnswerEmpty(PendingRequest* r) { r->Succeed({}); }

void AnsweredTwice() { VIRTIOFS_LOG(kError, "fuse: a reply was answered twice; ignored"); }

}  // namespace fuse_internal

ReplyBase& ReplyBase::operator=(ReplyBase&& other) noexcept {
  if (this != &other) {
    if (request_ != nullptr) {
      VIRTIOFS_LOG(kError, "fuse: request {} replaced unanswered: EIO", request_->unique());
      request_->Fail(EIO);
    }
    request_ = std::exchange(other.request_, nullptr);
  }
  return *this;
}

ReplyBase::~ReplyBase() {
  if (request_ != nullptr) {
    VIRTIOFS_LOG(kError, "fuse: request {} (opcode {}) dropped unanswered: EIO",
                 request_->unique(), request_->opcode());
    request_->Fail(EIO);
  }
}

void ReplyBase::Error(int err) {
  if (fuse_internal::PendingRequest* r = std::exchange(request_, nullptr)) {
    r->Fail(err);
  } else {
    fuse_internal::AnsweredTwice();
  }
}

std::span<const iovec> ReadReply::buffers() const {
  if (request_ == nullptr) return {};
  return request_->data_buffers();
}

void ReadReply::Ok(uint32_t bytes) {
  fuse_internal::PendingRequest* r = Take();
  if (r == nullptr) {
    fuse_internal::AnsweredTwice();
    return;
  }
  if (bytes > r->size_limit()) {
    VIRTIOFS_LOG(kError, "fuse: READ answered {} bytes for {} asked: EIO", bytes,
                 r->size_limit());
    r->Fail(EIO);
    return;
  }
  r->SucceedWritten(bytes);
}

namespace {

// Appends one dirent (and, for READDIRPLUS, its entry) if it fits in the
// size the guest asked for; false otherwise.
bool AddDirent(fuse_internal::PendingRequest* r, const fuse_entry_out* entry,
               std::string_view name, uint64_t ino, uint32_t type, uint64_t next_offset) {
  // A name FUSE cannot carry ends the listing here: skipping it would let a
  // READDIRPLUS backend count a lookup the guest never receives.
  if (name.empty() || name.size() > kFuseNameMax || name.find('/') != std::string_view::npos) {
    VIRTIOFS_LOG(kWarning, "fuse: directory entry name of {} bytes cannot be sent", name.size());
    return false;
  }
  const size_t head = entry ? sizeof(fuse_entry_out) : 0;
  const size_t rec = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + name.size());
  ChainWriter& w = r->payload();
  if (w.bytes_written() + head + rec > r->size_limit() || head + rec > w.remaining()) {
    return false;
  }
  if (entry) (void)w.WriteObject(*entry);
  fuse_dirent d{};
  d.ino = ino;
  d.off = next_offset;
  d.namelen = static_cast<uint32_t>(name.size());
  d.type = type;
  (void)w.Write(&d, FUSE_NAME_OFFSET);
  (void)w.Write(name.data(), name.size());
  static constexpr uint8_t kZeros[8] = {};
  (void)w.Write(kZeros, rec - FUSE_NAME_OFFSET - name.size());
  return true;
}

}  // namespace

bool DirReply::Add(std::string_view name, uint64_t ino, uint32_t type, uint64_t next_offset) {
  if (request_ == nullptr) return false;
  return AddDirent(request_, nullptr, name, ino, type, next_offset);
}

bool DirReply::AddPlus(std::string_view name, const Entry& entry, uint64_t next_offset) {
  if (request_ == nullptr) return false;
  fuse_entry_out out;
  fuse_internal::FillEntry(entry, &out);
  // The guest takes no reference for "." and ".." (fs/fuse/readdir.c,
  // fuse_direntplus_link): never send them a node.
  if (name == "." || name == "..") {
    out.nodeid = 0;
    out.generation = 0;
  }
  return AddDirent(request_, &out, name, entry.attr.st.st_ino,
                   (entry.attr.st.st_mode & S_IFMT) >> 12, next_offset);
}

void DirReply::Ok() {
  if (fuse_internal::PendingRequest* r = Take()) {
    r->SucceedWritten();
  } else {
    fuse_internal::AnsweredTwice();
  }
}

}  // namespace virtiofs
