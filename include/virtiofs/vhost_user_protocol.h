// vhost-user wire format (QEMU docs/interop/vhost-user.rst), shared by the
// back-end in this library and by front-ends (tests, benchmarks, embedders).
//
// All integers are in host byte order, as the protocol says. Payload structs
// are laid out exactly as on the wire; their sizes are checked below.
#ifndef VIRTIOFS_VHOST_USER_PROTOCOL_H_
#define VIRTIOFS_VHOST_USER_PROTOCOL_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace virtiofs::vhost_user {

// Front-end requests ("Front-end message types").
enum class Request : uint32_t {
  kNone = 0,
  kGetFeatures = 1,
  kSetFeatures = 2,
  kSetOwner = 3,
  kResetOwner = 4,
  kSetMemTable = 5,
  kSetLogBase = 6,
  kSetLogFd = 7,
  kSetVringNum = 8,
  kSetVringAddr = 9,
  kSetVringBase = 10,
  kGetVringBase = 11,
  kSetVringKick = 12,
  kSetVringCall = 13,
  kSetVringErr = 14,
  kGetProtocolFeatures = 15,
  kSetProtocolFeatures = 16,
  kGetQueueNum = 17,
  kSetVringEnable = 18,
  kSendRarp = 19,
  kNetSetMtu = 20,
  kSetBackendReqFd = 21,
  kIotlbMsg = 22,
  kSetVringEndian = 23,
  kGetConfig = 24,
  kSetConfig = 25,
  kCreateCryptoSession = 26,
  kCloseCryptoSession = 27,
  kPostcopyAdvise = 28,
  kPostcopyListen = 29,
  kPostcopyEnd = 30,
  kGetInflightFd = 31,
  kSetInflightFd = 32,
  kGpuSetSocket = 33,
  kResetDevice = 34,
  kVringKick = 35,
  kGetMaxMemSlots = 36,
  kAddMemReg = 37,
  kRemMemReg = 38,
  kSetStatus = 39,
  kGetStatus = 40,
  kGetSharedObject = 41,
  kSetDeviceStateFd = 42,
  kCheckDeviceState = 43,
};

// Back-end requests on the backend request channel ("Back-end message types").
enum class BackendRequest : uint32_t {
  kNone = 0,
  kIotlbMsg = 1,
  kConfigChangeMsg = 2,
  kVringHostNotifierMsg = 3,
  kVringCall = 4,
  kVringErr = 5,
  kSharedObjectAdd = 6,
  kSharedObjectRemove = 7,
  kSharedObjectLookup = 8,
};

std::string_view RequestName(Request r);

// Header flags.
inline constexpr uint32_t kVersionMask = 0x3;
inline constexpr uint32_t kVersion = 0x1;
inline constexpr uint32_t kReplyFlag = 0x4;
inline constexpr uint32_t kNeedReplyFlag = 0x8;

// Limits. Payloads are small; 4096 is what rust-vmm accepts and far above
// the largest message we take (a full SET_MEM_TABLE is 264 bytes).
inline constexpr uint32_t kMaxPayload = 4096;
inline constexpr size_t kMaxFds = 8;                  // VHOST_MEMORY_BASELINE_NREGIONS
inline constexpr uint32_t kMemTableRegions = 8;       // Regions in one SET_MEM_TABLE.
inline constexpr uint32_t kMaxConfigSize = 256;       // VHOST_USER_MAX_CONFIG_SIZE
inline constexpr uint64_t kLogPageSize = 0x1000;      // VHOST_LOG_PAGE

// Virtio feature bits vhost-user adds (in GET/SET_FEATURES).
inline constexpr int kFeatureLogAll = 26;             // VHOST_F_LOG_ALL
inline constexpr int kFeatureProtocolFeatures = 30;   // VHOST_USER_F_PROTOCOL_FEATURES

// Protocol feature bits (GET/SET_PROTOCOL_FEATURES).
enum ProtocolFeature : int {
  kProtocolMq = 0,
  kProtocolLogShmfd = 1,
  kProtocolRarp = 2,
  kProtocolReplyAck = 3,
  kProtocolMtu = 4,
  kProtocolBackendReq = 5,
  kProtocolCrossEndian = 6,
  kProtocolCryptoSession = 7,
  kProtocolPagefault = 8,
  kProtocolConfig = 9,
  kProtocolBackendSendFd = 10,
  kProtocolHostNotifier = 11,
  kProtocolInflightShmfd = 12,
  kProtocolResetDevice = 13,
  kProtocolInbandNotifications = 14,
  kProtocolConfigureMemSlots = 15,
  kProtocolStatus = 16,
};

constexpr uint64_t Bit(int n) { return uint64_t{1} << n; }

// Kick/call/err payload: ring index in bits 0-7, "no fd" in bit 8.
inline constexpr uint64_t kVringIndexMask = 0xff;
inline constexpr uint64_t kVringNoFdMask = 0x100;

// SET_VRING_ADDR flag: log writes to the used ring at log_guest_addr.
inline constexpr uint32_t kVringFlagLog = 0x1;

struct Header {
  uint32_t request;
  uint32_t flags;
  uint32_t size;
};

struct VringState {
  uint32_t index;
  uint32_t num;
};

struct VringAddr {
  uint32_t index;
  uint32_t flags;
  uint64_t desc_user_addr;
  uint64_t used_user_addr;
  uint64_t avail_user_addr;
  uint64_t log_guest_addr;
};

struct MemoryRegion {
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
  uint64_t mmap_offset;
};

// SET_MEM_TABLE: a variable number of regions follows.
struct MemoryTableHeader {
  uint32_t nregions;
  uint32_t padding;
};

// ADD_MEM_REG / REM_MEM_REG.
struct SingleMemoryRegion {
  uint64_t padding;
  MemoryRegion region;
};

struct LogDescription {
  uint64_t mmap_size;
  uint64_t mmap_offset;
};

// GET_CONFIG / SET_CONFIG: `size` bytes of config space follow.
struct ConfigHeader {
  uint32_t offset;
  uint32_t size;
  uint32_t flags;
};

struct InflightDescription {
  uint64_t mmap_size;
  uint64_t mmap_offset;
  uint16_t num_queues;
  uint16_t queue_size;
  uint32_t padding;  // Implementations send sizeof (24), not 20.
};

// Inflight shared memory, split ring ("Inflight I/O tracking").
struct InflightDescSplit {
  uint8_t inflight;
  uint8_t padding[5];
  uint16_t next;
  uint64_t counter;
};

struct InflightQueueSplit {
  uint64_t features;
  uint16_t version;
  uint16_t desc_num;
  uint16_t last_batch_head;
  uint16_t used_idx;
  // desc_num InflightDescSplit entries follow (a flexible array in the spec).
};

inline constexpr uint64_t kInflightAlignment = 64;
// Bytes of one queue's inflight region for a queue of `queue_size`.
constexpr uint64_t InflightQueueBytes(uint64_t queue_size) {
  return (16 + 16 * queue_size + kInflightAlignment - 1) & ~(kInflightAlignment - 1);
}

static_assert(sizeof(Header) == 12);
static_assert(sizeof(VringState) == 8);
static_assert(sizeof(VringAddr) == 40);
static_assert(sizeof(MemoryRegion) == 32);
static_assert(sizeof(MemoryTableHeader) == 8);
static_assert(sizeof(SingleMemoryRegion) == 40);
static_assert(sizeof(LogDescription) == 16);
static_assert(sizeof(ConfigHeader) == 12);
static_assert(sizeof(InflightDescription) == 24);
static_assert(sizeof(InflightDescSplit) == 16);
static_assert(sizeof(InflightQueueSplit) == 16);

}  // namespace virtiofs::vhost_user

#endif  // VIRTIOFS_VHOST_USER_PROTOCOL_H_
