// The engine implementations behind IoEngine::Create.
#ifndef VIRTIOFS_LIB_IO_ENGINES_H_
#define VIRTIOFS_LIB_IO_ENGINES_H_

#include <liburing.h>

#include <memory>

#include "absl/status/statusor.h"
#include "virtiofs/guest_memory.h"
#include "virtiofs/io_engine.h"

namespace virtiofs::io_internal {

std::unique_ptr<IoEngine> MakeSyncEngine();
absl::StatusOr<std::unique_ptr<IoEngine>> MakeUringEngine(uint32_t depth);
// Restricts a ring created with IORING_SETUP_R_DISABLED to the opcodes the
// engine submits (see IoEngine::RestrictUringOpcodes) and enables it; 0 or
// a negative errno. Separate so that tests can check a restricted ring.
int RestrictAndEnableRing(io_uring* ring);
// Advances `iov` past `n` bytes.
void ConsumeIovecs(IovecVector& iov, size_t n);

}  // namespace virtiofs::io_internal

#endif  // VIRTIOFS_LIB_IO_ENGINES_H_
