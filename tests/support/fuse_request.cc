#include "tests/support/fuse_request.h"

#include "absl/strings/str_format.h"

namespace virtiofs::testing {

std::vector<uint8_t> BuildRequest(uint32_t opcode, uint64_t unique, uint64_t nodeid,
                                  std::span<const uint8_t> body, uint32_t uid, uint32_t gid,
                                  uint32_t pid) {
  fuse_in_header h{};
  h.len = static_cast<uint32_t>(sizeof h + body.size());
  h.opcode = opcode;
  h.unique = unique;
  h.nodeid = nodeid;
  h.uid = uid;
  h.gid = gid;
  h.pid = pid;
  std::vector<uint8_t> bytes(sizeof h + body.size());
  std::memcpy(bytes.data(), &h, sizeof h);
  if (!body.empty()) std::memcpy(bytes.data() + sizeof h, body.data(), body.size());
  return bytes;
}

std::vector<uint8_t> BuildInit(uint64_t unique, uint32_t flags, uint32_t flags2,
                               uint32_t max_readahead, uint32_t minor) {
  fuse_init_in in{};
  in.major = FUSE_KERNEL_VERSION;
  in.minor = minor;
  in.max_readahead = max_readahead;
  in.flags = flags;
  in.flags2 = flags2;
  return BuildRequest(FUSE_INIT, unique, 0, {reinterpret_cast<const uint8_t*>(&in), sizeof in});
}

std::vector<uint8_t> BuildLookup(uint64_t unique, uint64_t parent, std::string_view name) {
  std::vector<uint8_t> body(name.begin(), name.end());
  body.push_back(0);
  return BuildRequest(FUSE_LOOKUP, unique, parent, body);
}

FuseBody& FuseBody::Name(std::string_view name) {
  bytes_.insert(bytes_.end(), name.begin(), name.end());
  bytes_.push_back(0);
  return *this;
}

FuseBody& FuseBody::Raw(std::string_view bytes) {
  bytes_.insert(bytes_.end(), bytes.begin(), bytes.end());
  return *this;
}

FuseBody& FuseBody::Raw(std::span<const uint8_t> bytes) {
  bytes_.insert(bytes_.end(), bytes.begin(), bytes.end());
  return *this;
}

FuseBody& FuseBody::Pad(size_t align) {
  while (bytes_.size() % align != 0) bytes_.push_back(0);
  return *this;
}

std::vector<uint8_t> BuildRequestWithExtensions(uint32_t opcode, uint64_t unique, uint64_t nodeid,
                                                std::span<const uint8_t> body,
                                                std::span<const uint8_t> extensions, uint32_t uid,
                                                uint32_t gid, uint32_t pid) {
  std::vector<uint8_t> all(body.begin(), body.end());
  all.insert(all.end(), extensions.begin(), extensions.end());
  std::vector<uint8_t> request = BuildRequest(opcode, unique, nodeid, all, uid, gid, pid);
  fuse_in_header h;
  std::memcpy(&h, request.data(), sizeof h);
  h.total_extlen = static_cast<uint16_t>(extensions.size() / 8);
  std::memcpy(request.data(), &h, sizeof h);
  return request;
}

std::vector<uint8_t> BuildSecurityContext(std::string_view name, std::string_view value) {
  fuse_secctx_header header{};
  header.size = sizeof header;
  FuseBody record;
  if (!name.empty()) {
    header.nr_secctx = 1;
    fuse_secctx ctx{};
    ctx.size = static_cast<uint32_t>(value.size());
    FuseBody one;
    one.Add(ctx).Name(name).Raw(value).Pad(8);
    header.size += static_cast<uint32_t>(one.size());
    record.Add(header).Raw(one.bytes());
  } else {
    record.Add(header);
  }
  return record.bytes();
}

std::vector<uint8_t> BuildSuppGroupsExtension(std::span<const uint32_t> gids) {
  FuseBody payload;
  payload.Add(static_cast<uint32_t>(gids.size()));
  for (uint32_t g : gids) payload.Add(g);
  fuse_ext_header eh{};
  eh.type = 32;  // FUSE_EXT_GROUPS (7.39).
  eh.size = static_cast<uint32_t>((sizeof eh + payload.size() + 7) / 8 * 8);
  FuseBody record;
  record.Add(eh).Raw(payload.bytes()).Pad(8);
  return record.bytes();
}

void PatchHeader(std::vector<uint8_t>& request, void (*patch)(fuse_in_header&)) {
  fuse_in_header h;
  std::memcpy(&h, request.data(), sizeof h);
  patch(h);
  std::memcpy(request.data(), &h, sizeof h);
}

void SetHeaderLen(std::vector<uint8_t>& request, uint32_t len) {
  fuse_in_header h;
  std::memcpy(&h, request.data(), sizeof h);
  h.len = len;
  std::memcpy(request.data(), &h, sizeof h);
}

absl::Status FuseReply::BodySizeError(size_t min, size_t max) const {
  if (min == max) {
    return absl::InvalidArgumentError(
        absl::StrFormat("reply body of %d bytes, expected %d", body.size(), min));
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("reply body of %d bytes, expected %d to %d", body.size(), min, max));
}

absl::StatusOr<FuseReply> ParseReply(std::span<const uint8_t> bytes,
                                     std::optional<uint64_t> expected_unique) {
  FuseReply reply;
  if (bytes.size() < sizeof reply.header) {
    return absl::DataLossError(
        absl::StrFormat("reply of %d bytes is shorter than fuse_out_header", bytes.size()));
  }
  std::memcpy(&reply.header, bytes.data(), sizeof reply.header);
  const fuse_out_header& h = reply.header;
  if (h.len != bytes.size()) {
    return absl::DataLossError(absl::StrFormat(
        "fuse_out_header.len is %d but the device wrote %d bytes", h.len, bytes.size()));
  }
  // fs/fuse/dev.c (fuse_dev_do_write): error must be in (-512, 0], and an
  // error reply is the header alone.
  if (h.error > 0 || h.error <= -512) {
    return absl::DataLossError(absl::StrFormat("fuse_out_header.error %d is not -errno", h.error));
  }
  if (h.error != 0 && bytes.size() != sizeof h) {
    return absl::DataLossError(absl::StrFormat("error reply (%d) carries %d body bytes", h.error,
                                               bytes.size() - sizeof h));
  }
  if (expected_unique && h.unique != *expected_unique) {
    return absl::DataLossError(
        absl::StrFormat("reply unique %d, expected %d", h.unique, *expected_unique));
  }
  reply.body.assign(bytes.begin() + sizeof h, bytes.end());
  return reply;
}

absl::StatusOr<FuseReply> ReadReply(const GuestRam& ram, uint64_t gpa, uint32_t len,
                                    std::optional<uint64_t> expected_unique) {
  std::vector<uint8_t> bytes(len);
  if (len > 0) ram.Read(gpa, bytes.data(), len);
  return ParseReply(bytes, expected_unique);
}

absl::StatusOr<FuseReply> FuseTransact(Frontend& frontend, uint32_t queue, DriverQueue& q,
                                       const GuestRam& ram, std::span<const uint8_t> request,
                                       uint32_t reply_capacity, int timeout_ms) {
  std::optional<uint64_t> unique;
  if (request.size() >= sizeof(fuse_in_header)) {
    fuse_in_header h;
    std::memcpy(&h, request.data(), sizeof h);
    unique = h.unique;
  }
  auto bytes = frontend.Transact(queue, q, ram, request, reply_capacity, timeout_ms);
  if (!bytes.ok()) return bytes.status();
  return ParseReply(*bytes, unique);
}

}  // namespace virtiofs::testing
