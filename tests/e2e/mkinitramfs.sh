#!/usr/bin/env bash
# Builds the end-to-end guest's initramfs for one kernel:
#   tests/e2e/mkinitramfs.sh KERNEL_DIR OUT.cpio.gz
# Contents: static busybox, /init (guest-init.sh), /workload.sh, the static
# e2e-helper (helper.c, compiled here with gcc -static) and the kernel's
# modules from KERNEL_DIR/ko (made by fetch.sh) with their load order.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kdir=$1
out=$2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/modules"
cp /bin/busybox "$work/bin/busybox"
ln -s busybox "$work/bin/sh"
gcc -static -O2 -Wall -Werror -o "$work/bin/e2e-helper" "$here/helper.c"
install -m 755 "$here/guest-init.sh" "$work/init"
install -m 644 "$here/workload.sh" "$work/workload.sh"
cp "$kdir"/ko/* "$work/modules/"
(cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) >"$out.tmp"
mv "$out.tmp" "$out"
