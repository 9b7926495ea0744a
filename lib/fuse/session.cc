// FUSE request decoding and dispatch. Every request is checked against the
// wire format of <linux/fuse.h> (protocol minors noted where they matter)
// before the Backend sees it.
#include <linux/limits.h>
#include <sys/xattr.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <vector>

#include "lib/fuse/fuse_compat.h"
#include "lib/fuse/pending_request.h"
#include "virtiofs/fuse_session.h"
#include "virtiofs/log.h"

namespace virtiofs {

using fuse_internal::PendingRequest;

namespace {

// Flags the library implements by itself: no backend semantics behind them.
constexpr uint64_t kProtocolFlags = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES |
                                    FUSE_INIT_EXT | FUSE_SETXATTR_EXT | FUSE_ASYNC_DIO |
                                    FUSE_PARALLEL_DIROPS;
// Flags that change what the backend must do; offered only when it says so.
constexpr uint64_t kBackendFlags =
    FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO | FUSE_WRITEBACK_CACHE | FUSE_POSIX_LOCKS |
    FUSE_FLOCK_LOCKS | FUSE_EXPORT_SUPPORT | FUSE_SUBMOUNTS | FUSE_HANDLE_KILLPRIV_V2 |
    FUSE_POSIX_ACL | FUSE_DONT_MASK | FUSE_SECURITY_CTX | FUSE_CREATE_SUPP_GROUP |
    FUSE_CACHE_SYMLINKS | FUSE_MAP_ALIGNMENT | FUSE_AUTO_INVAL_DATA | FUSE_ATOMIC_O_TRUNC |
    FUSE_DIRECT_IO_ALLOW_MMAP;

// Largest request other than WRITE: a SETXATTR of the largest value
// (XATTR_SIZE_MAX) plus its name and headers, with room for extensions.
constexpr size_t kMaxRequestArgs = XATTR_SIZE_MAX + 4096;

// The arguments of one request, copied once out of guest memory.
class Args {
 public:
  explicit Args(std::span<const uint8_t> bytes) : bytes_(bytes) {}
  size_t remaining() const { return bytes_.size() - pos_; }
  template <typename T>
  bool Take(T* out) {
    if (remaining() < sizeof(T)) return false;
    std::memcpy(out, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  // A struct that older minors send shorter: takes `size` bytes, zero-fills.
  template <typename T>
  bool TakePrefix(T* out, size_t size) {
    if (size > sizeof(T) || remaining() < size) return false;
    std::memset(out, 0, sizeof(T));
    std::memcpy(out, bytes_.data() + pos_, size);
    pos_ += size;
    return true;
  }
  std::span<const uint8_t> TakeBytes(size_t n) {
    auto s = bytes_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  // A NUL-terminated string; `errno_out` says why it is refused.
  bool TakeString(size_t max_len, std::string_view* out, int* errno_out) {
    // Nothing left (the bytes may then be a null span: no memchr on it).
    if (remaining() == 0) {
      *errno_out = EINVAL;
      return false;
    }
    const uint8_t* start = bytes_.data() + pos_;
    const void* nul = std::memchr(start, 0, remaining());
    if (nul == nullptr) {
      *errno_out = EINVAL;
      return false;
    }
    const size_t len = static_cast<const uint8_t*>(nul) - start;
    pos_ += len + 1;
    if (len > max_len) {
      *errno_out = ENAMETOOLONG;
      return false;
    }
    *out = std::string_view(reinterpret_cast<const char*>(start), len);
    return true;
  }

 private:
  std::span<const uint8_t> bytes_;
  size_t pos_ = 0;
};

enum class NameUse { kLookup, kCreate };

// A directory entry name: 1..NAME_MAX bytes, no '/'. "." and ".." only in a
// lookup (NFS export looks them up); the VFS never sends them elsewhere.
bool TakeName(Args& a, NameUse use, std::string_view* name, int* err) {
  if (!a.TakeString(NAME_MAX, name, err)) return false;
  if (name->empty() || name->find('/') != std::string_view::npos) {
    *err = EINVAL;
    return false;
  }
  if (use == NameUse::kCreate && (*name == "." || *name == "..")) {
    *err = EINVAL;
    return false;
  }
  return true;
}

}  // namespace

// The decoder, a friend of FuseSession. One per request, on the stack.
class FuseDispatcher {
 public:
  FuseDispatcher(FuseSession* s, PendingRequest* r, const fuse_in_header& h, QueueContext* queue)
      : s_(s), b_(s->backend_), r_(r), h_(h) {
    ctx_.queue = queue;
    ctx_.unique = h.unique;
    ctx_.uid = h.uid;
    ctx_.gid = h.gid;
    ctx_.pid = h.pid;
  }

  void Run(ChainReader& in);
  // After an exception: EIO, unless the request was handed on already.
  void FailPending() {
    if (r_ != nullptr) Fail(EIO);
  }

 private:
  // Fails the request with `err` when a check does not hold. `err` by
  // reference: in Check(TakeName(..., &err), err) the order in which the
  // arguments are evaluated is unspecified, and a copy could be taken
  // before TakeName sets it.
  bool Check(bool ok, const int& err = EINVAL) {
    if (!ok && r_ != nullptr) {
      VIRTIOFS_LOG(kDebug, "fuse: request {} opcode {} refused: errno {}", h_.unique, h_.opcode,
                   err);
      Fail(err);
    }
    return ok;
  }
  void Fail(int err) {
    r_->Fail(err);
    r_ = nullptr;
  }
  // The reply needs `n` bytes of payload space; ERANGE otherwise.
  bool Room(size_t n) { return Check(r_->payload_space() >= n, ERANGE); }
  // All arguments consumed (trailing bytes are malformed input).
  bool Done(const Args& a) { return Check(a.remaining() == 0); }
  PendingRequest* Release() { return std::exchange(r_, nullptr); }
  template <typename R>
  R Hand() {
    return R(Release());
  }
  bool ParseExtensions(std::span<const uint8_t> ext);
  bool ParseSecctx(std::span<const uint8_t> blob);
  bool CreateExtras(Args& a);

  void Dispatch(Args& a);
  void Init(Args& a);

  FuseSession* s_;
  Backend* b_;
  PendingRequest* r_;
  const fuse_in_header& h_;
  RequestContext ctx_;
};

FuseSession::FuseSession(Backend* backend, FuseSessionOptions options)
    : backend_(backend), options_(options) {
  options_.max_pages = std::clamp<uint32_t>(options_.max_pages, 1, kFuseMaxMaxPages);
  max_pages_.store(options_.max_pages, std::memory_order_relaxed);
}

void FuseSession::LimitMaxPages(uint32_t max_pages) {
  std::lock_guard lock(init_mu_);
  if (initialized()) return;
  max_pages = std::max<uint32_t>(max_pages, 1);
  if (max_pages < max_pages_.load(std::memory_order_relaxed)) {
    max_pages_.store(max_pages, std::memory_order_relaxed);
  }
}

void FuseSession::Reset() {
  std::lock_guard lock(init_mu_);
  if (initialized_.exchange(false)) backend_->Destroy();
}

void FuseSession::Handle(DescriptorChain chain, CompletionSink* sink, QueueContext* queue) {
  auto* req = new PendingRequest(std::move(chain), sink, this);
  // The reader must use the chain where the request keeps it.
  ChainReader in(req->chain().readable());
  fuse_in_header h;
  if (!in.Read(&h, sizeof h).ok()) {
    VIRTIOFS_LOG(kWarning, "fuse: chain of {} readable bytes has no request header",
                 req->chain().readable_bytes());
    req->CompleteSilently();
    return;
  }
  req->set_header(h.unique, h.opcode);
  counts_[h.opcode < kMaxOpcode ? h.opcode : 0].fetch_add(1, std::memory_order_relaxed);
  FuseDispatcher d(this, req, h, queue);
  // No exception crosses the Backend boundary: one that escapes is EIO (the
  // Reply it was given replies EIO as it unwinds).
  try {
    d.Run(in);
  } catch (const std::exception& e) {
    VIRTIOFS_LOG(kError, "fuse: request {} (opcode {}): exception: {}", h.unique, h.opcode,
                 e.what());
    d.FailPending();
  } catch (...) {
    VIRTIOFS_LOG(kError, "fuse: request {} (opcode {}): unknown exception", h.unique, h.opcode);
    d.FailPending();
  }
}

void FuseDispatcher::Run(ChainReader& in) {
  // The header's length must be the chain's: nothing trails, nothing lacks.
  if (!Check(h_.len == r_->chain().readable_bytes())) return;
  const size_t body = h_.len - sizeof(fuse_in_header);
  const size_t ext = size_t{h_.total_extlen} * 8;
  if (!Check(ext <= body)) return;
  const bool no_reply =
      h_.opcode == FUSE_FORGET || h_.opcode == FUSE_BATCH_FORGET || h_.opcode == FUSE_INTERRUPT;
  if (!no_reply && !r_->header_fits()) {
    // The guest could never learn the outcome: do not run it at all.
    VIRTIOFS_LOG(kWarning, "fuse: request {} (opcode {}) has no room for a reply: dropped",
                 h_.unique, h_.opcode);
    Release()->CompleteSilently();
    return;
  }
  if (h_.opcode != FUSE_INIT && !s_->initialized()) {
    if (no_reply) {
      Release()->CompleteSilently();
    } else {
      Fail(EIO);
    }
    return;
  }
  if (h_.opcode == FUSE_WRITE) {
    // The payload stays in guest memory; only the header is copied.
    fuse_write_in w;
    if (!Check(ext == 0 && body >= sizeof w && in.Read(&w, sizeof w).ok())) return;
    if (!Check(w.size == body - sizeof w)) return;
    if (!Check(w.size <= s_->max_write())) return;
    if (!Room(sizeof(fuse_write_out))) return;
    WriteRequest req;
    req.handle = w.fh;
    req.offset = w.offset;
    req.size = w.size;
    req.flags = w.flags;
    req.write_flags = w.write_flags;
    req.lock_owner = w.lock_owner;
    // WriteRequest::data must stay valid until the reply, which may come
    // after this returns: the iovecs live in the request (its READ buffer
    // list, unused by a WRITE).
    IovecVector& data = r_->data_buffers();
    if (!Check(in.TakeIovecs(w.size, &data).ok())) return;
    r_->set_size_limit(w.size);  // Ok(n) may not claim more.

    req.data = data;
    b_->Write(ctx_, h_.nodeid, req, Hand<Reply<uint32_t>>());
    return;
  }
  if (!Check(body <= kMaxRequestArgs)) return;
  // Copied once; the backend sees only this copy.
  thread_local std::vector<uint8_t> buffer;
  buffer.resize(body);
  if (!Check(in.Read(buffer.data(), body).ok())) return;
  std::span<const uint8_t> all(buffer.data(), body);
  if (ext > 0 && !ParseExtensions(all.subspan(body - ext))) return;
  Args a(all.first(body - ext));
  Dispatch(a);
}

bool FuseDispatcher::ParseExtensions(std::span<const uint8_t> ext) {
  // A sequence of fuse_ext_header-led records, each a multiple of 8 bytes.
  while (!ext.empty()) {
    fuse_ext_header eh;
    if (!Check(ext.size() >= sizeof eh)) return false;
    std::memcpy(&eh, ext.data(), sizeof eh);
    if (!Check(eh.size >= sizeof eh && eh.size % 8 == 0 && eh.size <= ext.size())) return false;
    auto data = ext.subspan(sizeof eh, eh.size - sizeof eh);
    if (eh.type <= FUSE_MAX_NR_SECCTX) {
      // The security context: fuse_secctx_header doubles as the extension
      // header, nr_secctx as its type (<linux/fuse.h> 7.38, fuse_ext_header).
      if (!ParseSecctx(ext.first(eh.size))) return false;
    } else if (eh.type == FUSE_EXT_GROUPS) {
      fuse_supp_groups g;
      if (!Check(data.size() >= sizeof g)) return false;
      std::memcpy(&g, data.data(), sizeof g);
      if (!Check(g.nr_groups <= (data.size() - sizeof g) / 4)) return false;
      if (g.nr_groups >= 1) {
        uint32_t gid;
        std::memcpy(&gid, data.data() + sizeof g, 4);
        ctx_.supplementary_gid = gid;
      }
    }  // Unknown extensions are ignored, as the kernel allows.
    ext = ext.subspan(eh.size);
  }
  return true;
}

bool FuseDispatcher::ParseSecctx(std::span<const uint8_t> blob) {
  fuse_secctx_header sh;
  if (!Check(blob.size() >= sizeof sh)) return false;
  std::memcpy(&sh, blob.data(), sizeof sh);
  if (!Check(sh.size >= sizeof sh && sh.size <= blob.size() && sh.nr_secctx <= 1)) {
    return false;
  }
  if (sh.nr_secctx == 0) return true;
  Args a(blob.subspan(sizeof sh, sh.size - sizeof sh));
  fuse_secctx c;
  std::string_view name;
  int err = EINVAL;
  if (!Check(a.Take(&c))) return false;
  if (!a.TakeString(XATTR_NAME_MAX, &name, &err)) return Check(false, err);
  if (!Check(c.size <= a.remaining() && c.size <= XATTR_SIZE_MAX)) return false;
  auto value = a.TakeBytes(c.size);
  ctx_.security_context.emplace(std::string(name),
                                std::string(reinterpret_cast<const char*>(value.data()),
                                            value.size()));
  return true;
}

// Before 7.39 the security context trails the arguments of a create-type
// request instead of riding in an extension.
bool FuseDispatcher::CreateExtras(Args& a) {
  if (s_->minor() < 39 && (s_->flags() & FUSE_SECURITY_CTX) && a.remaining() > 0) {
    return ParseSecctx(a.TakeBytes(a.remaining()));
  }
  return Done(a);
}

void FuseDispatcher::Init(Args& a) {
  std::lock_guard lock(s_->init_mu_);
  fuse_init_in in;
  // Minors before 36 send only major, minor, max_readahead and flags.
  const size_t size = std::min(a.remaining(), sizeof in);
  if (!Check(size >= 16 && a.TakePrefix(&in, size))) return;
  // A reply that cannot arrive must not start (or end) a session.
  if (!Room(sizeof(fuse_init_out))) return;
  if (s_->initialized()) {
    // A guest that rebooted without unmounting starts a new session on the
    // live one (the C virtiofsd learned this too): the old one is gone.
    VIRTIOFS_LOG(kWarning, "fuse: INIT on a live session (guest rebooted?): starting over");
    s_->initialized_.store(false, std::memory_order_release);
    b_->Destroy();
  }
  fuse_init_out out{};
  out.major = FUSE_KERNEL_VERSION;
  out.minor = kFuseMinor;
  if (in.major > FUSE_KERNEL_VERSION) {
    // A newer major: answer ours and let the guest decide (libfuse does so).
    Release()->Succeed({fuse_internal::Bytes(out)});
    return;
  }
  if (in.major < FUSE_KERNEL_VERSION || in.minor < kFuseMinMinor) {
    VIRTIOFS_LOG(kError, "fuse: guest speaks {}.{}, at least {}.{} is needed", in.major, in.minor,
                 FUSE_KERNEL_VERSION, kFuseMinMinor);
    Fail(EPROTO);
    return;
  }
  uint64_t wanted = in.flags;
  if (in.minor >= 36 && (in.flags & FUSE_INIT_EXT)) wanted |= uint64_t{in.flags2} << 32;
  const FuseSessionOptions& o = s_->options_;
  const uint64_t flags = wanted & o.allowed_init_flags &
                         (kProtocolFlags | (b_->InitFlags() & kBackendFlags));
  out.minor = std::min(in.minor, kFuseMinor);
  out.max_readahead = in.max_readahead;
  out.flags = static_cast<uint32_t>(flags);
  out.flags2 = static_cast<uint32_t>(flags >> 32);
  out.max_background = o.max_background;
  out.congestion_threshold = o.congestion_threshold;
  out.max_write = s_->max_write();
  out.time_gran = 1;
  out.max_pages = static_cast<uint16_t>(s_->max_write() / 4096);
  out.map_alignment = (flags & FUSE_MAP_ALIGNMENT) ? 12 : 0;  // log2(4 KiB)
  s_->minor_.store(out.minor, std::memory_order_relaxed);
  s_->flags_.store(flags, std::memory_order_relaxed);
  b_->Init(out.minor, flags);
  // Before the reply: the guest may send the next request on another queue
  // as soon as it sees it.
  s_->initialized_.store(true, std::memory_order_release);
  VIRTIOFS_LOG(kInfo, "fuse: session 7.{} with flags {:#x}, max_write {}", out.minor, flags,
               out.max_write);
  Release()->Succeed({fuse_internal::Bytes(out)});
}

void FuseDispatcher::Dispatch(Args& a) {
  const uint64_t node = h_.nodeid;
  int err = EINVAL;
  std::string_view name, name2;
  switch (h_.opcode) {
    case FUSE_INIT:
      Init(a);
      return;
    case FUSE_DESTROY:
      if (!Done(a)) return;
      s_->Reset();
      Release()->Succeed({});
      return;
    case FUSE_LOOKUP:
      if (!Check(TakeName(a, NameUse::kLookup, &name, &err), err) || !Done(a)) return;
      if (!Room(sizeof(fuse_entry_out))) return;
      b_->Lookup(ctx_, node, name, Hand<Reply<Entry>>());
      return;
    case FUSE_FORGET: {
      fuse_forget_in f;
      if (a.Take(&f) && a.remaining() == 0) b_->Forget(node, f.nlookup);
      Release()->CompleteSilently();
      return;
    }
    case FUSE_BATCH_FORGET: {
      fuse_batch_forget_in bf;
      std::vector<ForgetItem> items;
      if (a.Take(&bf) && bf.count <= a.remaining() / sizeof(fuse_forget_one) &&
          a.remaining() == bf.count * sizeof(fuse_forget_one)) {
        items.resize(bf.count);
        for (auto& it : items) {
          fuse_forget_one one;
          a.Take(&one);
          it = ForgetItem{one.nodeid, one.nlookup};
        }
        b_->BatchForget(items);
      } else {
        VIRTIOFS_LOG(kWarning, "fuse: malformed BATCH_FORGET ignored");
      }
      Release()->CompleteSilently();
      return;
    }
    case FUSE_INTERRUPT: {
      fuse_interrupt_in i;
      if (a.Take(&i) && a.remaining() == 0) b_->Interrupt(i.unique);
      Release()->CompleteSilently();
      return;
    }
    case FUSE_GETATTR: {
      fuse_getattr_in g;
      if (!Check(a.Take(&g)) || !Done(a) || !Room(sizeof(fuse_attr_out))) return;
      std::optional<uint64_t> fh;
      if (g.getattr_flags & FUSE_GETATTR_FH) fh = g.fh;
      b_->GetAttr(ctx_, node, fh, Hand<Reply<Attributes>>());
      return;
    }
    case FUSE_STATX: {
      fuse_statx_in g;
      if (!Check(a.Take(&g)) || !Done(a) || !Room(sizeof(fuse_statx_out))) return;
      std::optional<uint64_t> fh;
      if (g.getattr_flags & FUSE_GETATTR_FH) fh = g.fh;
      b_->Statx(ctx_, node, fh, g.sx_flags, g.sx_mask, Hand<Reply<StatxResult>>());
      return;
    }
    case FUSE_SETATTR: {
      fuse_setattr_in in;
      if (!Check(a.Take(&in)) || !Done(a) || !Room(sizeof(fuse_attr_out))) return;
      SetAttrRequest sa;
      sa.valid = in.valid;
      if (in.valid & FATTR_FH) sa.handle = in.fh;
      sa.mode = in.mode;
      sa.uid = in.uid;
      sa.gid = in.gid;
      sa.size = in.size;
      sa.atime = {static_cast<time_t>(in.atime), static_cast<long>(in.atimensec)};
      sa.mtime = {static_cast<time_t>(in.mtime), static_cast<long>(in.mtimensec)};
      sa.ctime = {static_cast<time_t>(in.ctime), static_cast<long>(in.ctimensec)};
      sa.lock_owner = in.lock_owner;
      if (!Check(in.atimensec < 1000000000 && in.mtimensec < 1000000000 &&
                 in.ctimensec < 1000000000)) {
        return;
      }
      b_->SetAttr(ctx_, node, sa, Hand<Reply<Attributes>>());
      return;
    }
    case FUSE_READLINK:
      if (!Done(a)) return;
      b_->ReadLink(ctx_, node, Hand<Reply<std::string>>());
      return;
    case FUSE_SYMLINK:
      // Arguments: the new name, then the link target (both NUL-terminated).
      if (!Check(TakeName(a, NameUse::kCreate, &name, &err), err)) return;
      if (!Check(a.TakeString(PATH_MAX - 1, &name2, &err), err) || !Check(!name2.empty())) return;
      if (!CreateExtras(a) || !Room(sizeof(fuse_entry_out))) return;
      b_->Symlink(ctx_, node, name, name2, Hand<Reply<Entry>>());
      return;
    case FUSE_MKNOD: {
      fuse_mknod_in m;
      if (!Check(a.Take(&m)) || !Check(TakeName(a, NameUse::kCreate, &name, &err), err)) return;
      if (!CreateExtras(a) || !Room(sizeof(fuse_entry_out))) return;
      b_->Mknod(ctx_, node, name, m.mode, m.rdev, m.umask, Hand<Reply<Entry>>());
      return;
    }
    case FUSE_MKDIR: {
      fuse_mkdir_in m;
      if (!Check(a.Take(&m)) || !Check(TakeName(a, NameUse::kCreate, &name, &err), err)) return;
      if (!CreateExtras(a) || !Room(sizeof(fuse_entry_out))) return;
      b_->Mkdir(ctx_, node, name, m.mode, m.umask, Hand<Reply<Entry>>());
      return;
    }
    case FUSE_UNLINK:
    case FUSE_RMDIR:
      if (!Check(TakeName(a, NameUse::kCreate, &name, &err), err) || !Done(a)) return;
      if (h_.opcode == FUSE_UNLINK) {
        b_->Unlink(ctx_, node, name, Hand<Reply<void>>());
      } else {
        b_->Rmdir(ctx_, node, name, Hand<Reply<void>>());
      }
      return;
    case FUSE_RENAME:
    case FUSE_RENAME2: {
      uint64_t new_dir = 0;
      uint32_t flags = 0;
      if (h_.opcode == FUSE_RENAME) {
        fuse_rename_in rn;
        if (!Check(a.Take(&rn))) return;
        new_dir = rn.newdir;
      } else {
        fuse_rename2_in rn;
        if (!Check(a.Take(&rn))) return;
        new_dir = rn.newdir;
        flags = rn.flags;
        if (!Check((flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT)) == 0)) {
          return;
        }
      }
      if (!Check(TakeName(a, NameUse::kCreate, &name, &err), err)) return;
      if (!Check(TakeName(a, NameUse::kCreate, &name2, &err), err) || !Done(a)) return;
      b_->Rename(ctx_, node, name, new_dir, name2, flags, Hand<Reply<void>>());
      return;
    }
    case FUSE_LINK: {
      fuse_link_in l;
      if (!Check(a.Take(&l)) || !Check(TakeName(a, NameUse::kCreate, &name, &err), err)) return;
      if (!Done(a) || !Room(sizeof(fuse_entry_out))) return;
      // nodeid is the new parent; oldnodeid the node to link.
      b_->Link(ctx_, l.oldnodeid, node, name, Hand<Reply<Entry>>());
      return;
    }
    case FUSE_OPEN:
    case FUSE_OPENDIR: {
      fuse_open_in o;
      if (!Check(a.Take(&o)) || !Done(a) || !Room(sizeof(fuse_open_out))) return;
      if (h_.opcode == FUSE_OPEN) {
        b_->Open(ctx_, node, o.flags, Hand<Reply<OpenResult>>());
      } else {
        b_->OpenDir(ctx_, node, o.flags, Hand<Reply<OpenResult>>());
      }
      return;
    }
    case FUSE_READ: {
      fuse_read_in rd;
      if (!Check(a.Take(&rd)) || !Done(a)) return;
      if (!Check(rd.size <= s_->max_write())) return;
      if (!Room(rd.size)) return;
      ReadRequest req;
      req.handle = rd.fh;
      req.offset = rd.offset;
      req.size = rd.size;
      req.flags = rd.flags;
      req.read_flags = rd.read_flags;
      req.lock_owner = rd.lock_owner;
      r_->set_size_limit(rd.size);
      (void)r_->payload().PeekIovecs(rd.size, &r_->data_buffers());  // Fits: checked.
      b_->Read(ctx_, node, req, Hand<ReadReply>());
      return;
    }
    case FUSE_STATFS:
      if (!Done(a) || !Room(sizeof(fuse_statfs_out))) return;
      b_->StatFs(ctx_, node, Hand<Reply<struct statvfs>>());
      return;
    case FUSE_RELEASE:
    case FUSE_RELEASEDIR: {
      fuse_release_in rl;
      if (!Check(a.Take(&rl)) || !Done(a)) return;
      if (h_.opcode == FUSE_RELEASE) {
        b_->Release(ctx_, node, rl.fh, rl.flags, rl.release_flags, rl.lock_owner,
                    Hand<Reply<void>>());
      } else {
        b_->ReleaseDir(ctx_, node, rl.fh, rl.flags, Hand<Reply<void>>());
      }
      return;
    }
    case FUSE_FSYNC:
    case FUSE_FSYNCDIR: {
      fuse_fsync_in f;
      if (!Check(a.Take(&f)) || !Done(a)) return;
      const bool datasync = (f.fsync_flags & 1) != 0;
      if (h_.opcode == FUSE_FSYNC) {
        b_->Fsync(ctx_, node, f.fh, datasync, Hand<Reply<void>>());
      } else {
        b_->FsyncDir(ctx_, node, f.fh, datasync, Hand<Reply<void>>());
      }
      return;
    }
    case FUSE_SETXATTR: {
      // 7.33+: the extended struct when SETXATTR_EXT was negotiated.
      fuse_setxattr_in sx{};
      const bool ext = (s_->flags() & FUSE_SETXATTR_EXT) != 0;
      if (!Check(a.TakePrefix(&sx, ext ? sizeof sx : FUSE_COMPAT_SETXATTR_IN_SIZE))) return;
      if (!Check(a.TakeString(XATTR_NAME_MAX, &name, &err), err) || !Check(!name.empty())) {
        return;
      }
      if (!Check(sx.size <= XATTR_SIZE_MAX, E2BIG) || !Check(sx.size == a.remaining())) return;
      b_->SetXattr(ctx_, node, name, a.TakeBytes(sx.size), sx.flags, sx.setxattr_flags,
                   Hand<Reply<void>>());
      return;
    }
    case FUSE_GETXATTR:
    case FUSE_LISTXATTR: {
      fuse_getxattr_in g;
      if (!Check(a.Take(&g))) return;
      if (h_.opcode == FUSE_GETXATTR &&
          (!Check(a.TakeString(XATTR_NAME_MAX, &name, &err), err) || !Check(!name.empty()))) {
        return;
      }
      if (!Done(a)) return;
      if (!Room(g.size == 0 ? sizeof(fuse_getxattr_out) : g.size)) return;
      r_->set_size_limit(std::min<uint32_t>(g.size, XATTR_SIZE_MAX));
      if (h_.opcode == FUSE_GETXATTR) {
        b_->GetXattr(ctx_, node, name, Hand<Reply<std::string>>());
      } else {
        b_->ListXattr(ctx_, node, Hand<Reply<std::string>>());
      }
      return;
    }
    case FUSE_REMOVEXATTR:
      if (!Check(a.TakeString(XATTR_NAME_MAX, &name, &err), err) || !Check(!name.empty())) {
        return;
      }
      if (!Done(a)) return;
      b_->RemoveXattr(ctx_, node, name, Hand<Reply<void>>());
      return;
    case FUSE_FLUSH: {
      fuse_flush_in f;
      if (!Check(a.Take(&f)) || !Done(a)) return;
      b_->Flush(ctx_, node, f.fh, f.lock_owner, Hand<Reply<void>>());
      return;
    }
    case FUSE_READDIR:
    case FUSE_READDIRPLUS: {
      fuse_read_in rd;
      if (!Check(a.Take(&rd)) || !Done(a)) return;
      if (!Check(rd.size <= s_->max_write())) return;
      r_->set_size_limit(static_cast<uint32_t>(std::min<size_t>(rd.size, r_->payload_space())));
      b_->ReadDir(ctx_, node, rd.fh, rd.offset, h_.opcode == FUSE_READDIRPLUS,
                  Hand<DirReply>());
      return;
    }
    case FUSE_GETLK:
    case FUSE_SETLK:
    case FUSE_SETLKW: {
      fuse_lk_in lk;
      if (!Check(a.Take(&lk)) || !Done(a)) return;
      if (!Check(lk.lk.type == F_RDLCK || lk.lk.type == F_WRLCK || lk.lk.type == F_UNLCK)) {
        return;
      }
      FileLock l{lk.lk.start, lk.lk.end, lk.lk.type, lk.lk.pid};
      const bool flock = (lk.lk_flags & FUSE_LK_FLOCK) != 0;
      if (h_.opcode == FUSE_GETLK) {
        if (!Room(sizeof(fuse_lk_out))) return;
        b_->GetLk(ctx_, node, lk.fh, lk.owner, l, flock, Hand<Reply<FileLock>>());
      } else {
        b_->SetLk(ctx_, node, lk.fh, lk.owner, l, flock, h_.opcode == FUSE_SETLKW,
                  Hand<Reply<void>>());
      }
      return;
    }
    case FUSE_ACCESS: {
      fuse_access_in ac;
      if (!Check(a.Take(&ac)) || !Done(a)) return;
      b_->Access(ctx_, node, ac.mask, Hand<Reply<void>>());
      return;
    }
    case FUSE_CREATE: {
      fuse_create_in c;
      if (!Check(a.Take(&c)) || !Check(TakeName(a, NameUse::kCreate, &name, &err), err)) return;
      if (!CreateExtras(a) || !Room(sizeof(fuse_entry_out) + sizeof(fuse_open_out))) return;
      b_->Create(ctx_, node, name, c.mode, c.flags, c.umask, Hand<Reply<CreateResult>>());
      return;
    }
    case FUSE_TMPFILE: {
      // Linux sends the name of the unnamed dentry after fuse_create_in
      // (fs/fuse/dir.c fuse_create_open; vfs_tmpfile names it "/"): a
      // placeholder, not checked as a name and not passed on.
      fuse_create_in c;
      std::string_view placeholder;
      if (!Check(a.Take(&c)) || !Check(a.TakeString(NAME_MAX, &placeholder, &err), err)) return;
      if (!CreateExtras(a)) return;
      if (!Room(sizeof(fuse_entry_out) + sizeof(fuse_open_out))) return;
      b_->TmpFile(ctx_, node, c.mode, c.flags, c.umask, Hand<Reply<CreateResult>>());
      return;
    }
    case FUSE_BMAP: {
      fuse_bmap_in bm;
      if (!Check(a.Take(&bm)) || !Done(a) || !Room(sizeof(fuse_bmap_out))) return;
      b_->Bmap(ctx_, node, bm.blocksize, bm.block, Hand<Reply<uint64_t>>());
      return;
    }
    case FUSE_IOCTL: {
      fuse_ioctl_in io;
      if (!Check(a.Take(&io)) || !Check(io.in_size == a.remaining())) return;
      if (!Check(io.out_size <= XATTR_SIZE_MAX)) return;
      if (!Room(sizeof(fuse_ioctl_out) + io.out_size)) return;
      r_->set_size_limit(io.out_size);
      b_->Ioctl(ctx_, node, io.fh, io.flags, io.cmd, io.arg, a.TakeBytes(io.in_size), io.out_size,
                Hand<Reply<IoctlResult>>());
      return;
    }
    case FUSE_POLL: {
      fuse_poll_in p;
      if (!Check(a.Take(&p)) || !Done(a) || !Room(sizeof(fuse_poll_out))) return;
      b_->Poll(ctx_, node, p.fh, p.kh, p.flags, p.events, Hand<Reply<uint32_t>>());
      return;
    }
    case FUSE_FALLOCATE: {
      fuse_fallocate_in f;
      if (!Check(a.Take(&f)) || !Done(a)) return;
      b_->Fallocate(ctx_, node, f.fh, f.offset, f.length, f.mode, Hand<Reply<void>>());
      return;
    }
    case FUSE_LSEEK: {
      fuse_lseek_in l;
      if (!Check(a.Take(&l)) || !Done(a) || !Room(sizeof(fuse_lseek_out))) return;
      b_->Lseek(ctx_, node, l.fh, l.offset, l.whence, Hand<Reply<uint64_t>>());
      return;
    }
    case FUSE_COPY_FILE_RANGE: {
      fuse_copy_file_range_in c;
      if (!Check(a.Take(&c)) || !Done(a) || !Room(sizeof(fuse_write_out))) return;
      // The reply carries 32 bits; the kernel never asks for more.
      const uint64_t len = std::min<uint64_t>(c.len, UINT32_MAX & ~uint64_t{4095});
      r_->set_size_limit(static_cast<uint32_t>(len));  // Ok(n) may not claim more.
      b_->CopyFileRange(ctx_, node, c.fh_in, c.off_in, c.nodeid_out, c.fh_out, c.off_out, len,
                        c.flags, Hand<Reply<uint64_t>>());
      return;
    }
    case FUSE_SETUPMAPPING: {
      fuse_setupmapping_in m;
      if (!Check(a.Take(&m)) || !Done(a)) return;
      b_->SetupMapping(ctx_, node, m.fh, m.foffset, m.len, m.flags, m.moffset,
                       Hand<Reply<void>>());
      return;
    }
    case FUSE_REMOVEMAPPING: {
      fuse_removemapping_in rm;
      if (!Check(a.Take(&rm))) return;
      if (!Check(rm.count <= a.remaining() / sizeof(fuse_removemapping_one) &&
                 a.remaining() == rm.count * sizeof(fuse_removemapping_one))) {
        return;
      }
      std::vector<RemoveMappingItem> items(rm.count);
      for (auto& it : items) {
        fuse_removemapping_one one;
        a.Take(&one);
        it = RemoveMappingItem{one.moffset, one.len};
      }
      b_->RemoveMapping(ctx_, items, Hand<Reply<void>>());
      return;
    }
    case FUSE_SYNCFS: {
      fuse_syncfs_in sf;
      if (!Check(a.Take(&sf)) || !Done(a)) return;
      b_->SyncFs(ctx_, node, Hand<Reply<void>>());
      return;
    }
    default:
      VIRTIOFS_LOG(kDebug, "fuse: unknown opcode {}", h_.opcode);
      Fail(ENOSYS);
      return;
  }
}

}  // namespace virtiofs
