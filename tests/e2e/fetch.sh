#!/usr/bin/env bash
# Makes sure everything the end-to-end tests need is here, and prints where the
# guest kernels are:
#   - Debian packages on the host (qemu-system-x86, busybox-static, kmod for depmod, the
#     decompressors for kernel modules, gcc for the static guest helper),
#     installed with apt when missing;
#   - guest kernels, taken from Debian's linux-image .deb files with
#     `apt-get download` under a private apt configuration and unpacked with
#     `dpkg-deb -x` (never installed on the host).
#
#   tests/e2e/fetch.sh [SUITE...]     default: bookworm bookworm-backports
#
# For each suite it prints one line "SUITE KERNEL_DIR"; KERNEL_DIR holds
# vmlinuz, version, package and ko/ (the guest's modules, plain .ko, and
# ko/order, the order to load them in).
# The mirror is read at run time from the machine's apt configuration
# (/etc/apt/sources.list, /etc/apt/sources.list.d/*.list and *.sources): no
# host name is written anywhere in the repository.
#
# Downloads are cached under $E2E_CACHE (default ~/.cache/virtiofs-e2e): a
# kernel unpacked less than $E2E_MAX_AGE_DAYS (default 30) days ago is used
# without touching the network.
#
# Exit status 77 (skip) with a reason on stderr when something cannot be had
# (no apt, no mirror configured, the download failed).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/virtiofs-e2e}
max_age_days=${E2E_MAX_AGE_DAYS:-30}
# Modules the guest needs (with what they depend on), unless built in.
guest_modules="virtio_pci virtiofs"
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(bookworm bookworm-backports)

skip() {
  echo "e2e: SKIP: $*" >&2
  exit 77
}

# --- host packages ---------------------------------------------------------
host_packages=(qemu-system-x86 busybox-static kmod xz-utils zstd cpio gzip gcc libc6-dev)
missing=()
for p in "${host_packages[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || skip "apt-get not found; cannot install ${missing[*]}"
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
  echo "e2e: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
    "${sudo[@]}" apt-get update -q >&2 || true
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
      skip "could not install ${missing[*]} with apt-get"
  fi
fi
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 not found after install"
[ -x /bin/busybox ] || skip "/bin/busybox not found after installing busybox-static"

# --- the mirror, from the machine's apt configuration -----------------------
# Prints "URI KEYRING" for the first configured Debian archive (a source that
# carries a main suite, not -security), keyring empty when none is named.
find_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && enabled != "no" && uris != "" &&
            suites ~ /(^| )(bookworm|bookworm-updates|bookworm-backports|trixie|stable|testing|sid|unstable)( |$)/) {
          split(uris, u, " "); print u[1], keyring; found = 1; exit
        }
        types = ""; uris = ""; suites = ""; keyring = ""; enabled = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      { line = $0; key = tolower(line); sub(/:.*/, "", key); val = line; sub(/^[^:]*:[ \t]*/, "", val)
        if (key == "types") types = val
        else if (key == "uris") uris = val
        else if (key == "suites") suites = val
        else if (key == "signed-by" && val ~ /^\//) keyring = val
        else if (key == "enabled") enabled = tolower(val) }
      END { if (!found) flush() }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '
      /^[ \t]*deb[ \t]/ {
        keyring = ""; i = 2
        if ($2 ~ /^\[/) {
          for (; i <= NF; i++) {
            if ($i ~ /signed-by=/) { k = $i; sub(/.*signed-by=/, "", k); sub(/\]$/, "", k); keyring = k }
            if ($i ~ /\]$/) { i++; break }
          }
        }
        uri = $i; suite = $(i + 1)
        if (suite ~ /^(bookworm|bookworm-updates|bookworm-backports|trixie|stable|testing|sid|unstable)$/) {
          print uri, keyring; exit
        }
      }' "$f"
  done
}

mirror_line=$(find_mirror | head -n 1)
mirror=${mirror_line%% *}
keyring=${mirror_line#* }
[ "$keyring" != "$mirror_line" ] || keyring=""
[ -n "$mirror" ] || skip "no Debian archive found in the machine's apt configuration"
[ -n "$keyring" ] || keyring=/usr/share/keyrings/debian-archive-keyring.gpg

# --- one kernel per suite ---------------------------------------------------
# apt_private DIR ARGS...: apt with its own sources, state and cache under DIR
# (the machine's other apt settings, e.g. a proxy, still apply).
apt_private() {
  local dir=$1 tool=$2
  shift 2
  "$tool" -q \
    -o Dir::Etc::SourceList="$dir/sources.list" \
    -o Dir::Etc::SourceParts="$dir/empty" \
    -o Dir::Etc::Preferences="$dir/empty/none" \
    -o Dir::Etc::PreferencesParts="$dir/empty" \
    -o Dir::State="$dir/state" \
    -o Dir::State::Lists="$dir/state/lists" \
    -o Dir::State::status="$dir/state/status" \
    -o Dir::Cache="$dir/cache" \
    -o Dir::Cache::archives="$dir/cache/archives" \
    -o Debug::NoLocking=1 \
    -o APT::Sandbox::User=root \
    -o APT::Architecture=amd64 \
    -o Acquire::Languages=none \
    "$@"
}

fetch_kernel() {  # fetch_kernel SUITE -> prints the kernel dir
  local suite=$1
  local dir=$cache/apt-$suite
  local kdir=$cache/kernel-$suite
  if [ -f "$kdir/stamp" ] && [ -n "$(find "$kdir/stamp" -mtime -"$max_age_days" 2>/dev/null)" ]; then
    echo "$kdir"
    return 0
  fi
  mkdir -p "$dir/empty" "$dir/state/lists/partial" "$dir/cache/archives/partial" "$dir/debs"
  : >"$dir/state/status"
  echo "deb [signed-by=$keyring] $mirror $suite main" >"$dir/sources.list"
  echo "e2e: updating the package list of $suite (private apt configuration in $dir)" >&2
  apt_private "$dir" apt-get update >&2 || return 1
  # linux-image-amd64 (the metapackage) depends on the versioned image.
  local pkg
  pkg=$(apt_private "$dir" apt-cache depends linux-image-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  [ -n "$pkg" ] || { echo "e2e: no linux-image-amd64 in $suite" >&2; return 1; }
  echo "e2e: downloading $pkg from $suite" >&2
  (cd "$dir/debs" && rm -f ./*.deb && apt_private "$dir" apt-get download "$pkg" >&2) || return 1
  local deb
  deb=$(ls "$dir"/debs/*.deb | head -n 1)
  rm -rf "$kdir.new" && mkdir -p "$kdir.new/root"
  dpkg-deb -x "$deb" "$kdir.new/root"
  local vmlinuz moddir
  vmlinuz=$(ls "$kdir.new"/root/boot/vmlinuz-* | head -n 1)
  moddir=$(ls -d "$kdir.new"/root/lib/modules/* "$kdir.new"/root/usr/lib/modules/* 2>/dev/null | head -n 1)
  [ -f "$vmlinuz" ] && [ -d "$moddir/kernel" ] || { echo "e2e: $deb has no kernel or modules" >&2; return 1; }
  # The package does not ship modules.dep (depmod makes it when the package is
  # installed): make it here, in the unpacked tree.
  local base=${moddir%/modules/*}
  base=${base%/lib}
  depmod -b "$base" "$(basename "$moddir")" || { echo "e2e: depmod failed on $deb" >&2; return 1; }
  mv "$vmlinuz" "$kdir.new/vmlinuz"
  basename "$moddir" >"$kdir.new/version"
  # Keep only the modules the guest loads, with their dependencies from
  # modules.dep, decompressed (busybox insmod takes plain .ko files), and
  # ko/order: the load order (modules.dep lists a module's dependencies so
  # that the last one is loaded first).
  mkdir -p "$kdir.new/ko"
  local m line path deps d name
  for m in $guest_modules; do
    line=$(awk -v m="$m" '{ p = $1; sub(/:$/, "", p); n = p; sub(/.*\//, "", n); sub(/\.ko(\.(xz|zst|gz))?$/, "", n)
                           gsub(/-/, "_", n); if (n == m) { print; exit } }' "$moddir/modules.dep")
    if [ -z "$line" ]; then
      grep -q "/$m.ko\$" "$moddir/modules.builtin" 2>/dev/null ||
        grep -q "/${m//_/-}.ko\$" "$moddir/modules.builtin" 2>/dev/null ||
        { echo "e2e: module $m is neither in modules.dep nor built in" >&2; return 1; }
      continue
    fi
    path=${line%%:*}
    deps=${line#*:}
    for d in $(echo $deps | tr ' ' '\n' | tac) "$path"; do
      name=$(basename "$d")
      name=${name%.xz}; name=${name%.zst}; name=${name%.gz}
      grep -qx "$name" "$kdir.new/ko/order" 2>/dev/null && continue
      case $d in
        *.xz) xz -dc "$moddir/$d" >"$kdir.new/ko/$name" ;;
        *.zst) zstd -q -dc "$moddir/$d" >"$kdir.new/ko/$name" ;;
        *.gz) gzip -dc "$moddir/$d" >"$kdir.new/ko/$name" ;;
        *) cp "$moddir/$d" "$kdir.new/ko/$name" ;;
      esac
      echo "$name" >>"$kdir.new/ko/order"
    done
  done
  touch "$kdir.new/ko/order"
  rm -rf "$kdir.new/root" "$deb"  # vmlinuz and ko/ are all we keep
  echo "$pkg" >"$kdir.new/package"
  date -u +%FT%TZ >"$kdir.new/stamp"
  rm -rf "$kdir" && mv "$kdir.new" "$kdir"
  echo "$kdir"
}

for suite in "${suites[@]}"; do
  kdir=$(fetch_kernel "$suite") || skip "could not download a kernel from $suite (see messages above)"
  echo "$suite $kdir"
done
