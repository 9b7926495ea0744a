#!/usr/bin/env bash
# Installs the library into a staging directory and builds a small program
# against it with nothing but `pkg-config --cflags --libs virtiofs`, the way a
# VMM outside this tree would.
set -euo pipefail
build=$1
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
meson install -C "$build" --destdir "$stage" --quiet
pc=$(dirname "$(find "$stage" -name virtiofs.pc | head -n 1)")
export PKG_CONFIG_PATH=$pc PKG_CONFIG_SYSROOT_DIR=$stage
cat > "$stage/user.cc" <<'CC'
#include <virtiofs/guest_memory.h>
#include <virtiofs/virtqueue.h>
int main() {
  auto map = virtiofs::GuestMemoryMap::Create({});
  virtiofs::VirtqueueConfig c;
  c.size = 3;
  auto q = virtiofs::SplitQueue::Create(c, *map);
  return q.ok() ? 1 : 0;  // Size 3 must be refused.
}
CC
# shellcheck disable=SC2046
c++ -std=c++20 "$stage/user.cc" -o "$stage/user" $(pkg-config --cflags --libs virtiofs) \
  -Wl,-rpath,"$(dirname "$pc")"
"$stage/user"
echo "install check: ok"
