#!/usr/bin/env bash
# The daemon as a process: its command line, its errors, serving, SIGTERM.
set -u
bin=$1
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$bin" --version | grep -q virtiofsd || fail "--version"
"$bin" --help | grep -q -- "--shared-dir" || fail "--help"
"$bin" --print-capabilities | grep -q '"type": "fs"' || fail "--print-capabilities"

# Errors: one clear line on stderr and a non-zero exit, nothing listening.
out=$("$bin" --bogus 2>&1) && fail "unknown flag accepted"
[ "$(echo "$out" | wc -l)" -eq 1 ] || fail "unknown flag: not one line: $out"
"$bin" --socket-path "$dir/s" 2>/dev/null && fail "missing --shared-dir accepted"
"$bin" --shared-dir "$dir/none" --socket-path "$dir/s" 2>/dev/null && fail "missing dir accepted"
[ -e "$dir/s" ] && fail "a socket was created for a bad command line"
"$bin" --shared-dir "$dir" --socket-path "$dir/s" --cache=sometimes 2>/dev/null &&
  fail "bad --cache accepted"
# Lockdown flags: bad values are one line, a non-zero exit and no socket.
nr_open=$(cat /proc/sys/fs/nr_open)
bad_flags=(--sandbox=jail --seccomp=allow --modcaps=+bogus --modcaps=sys_admin
  --uid-map=0:1000:1 --gid-map=:0:1000: "--rlimit-nofile=$((nr_open + 1))")
# As root no user namespace is made: a valid map is refused as well.
[ "$(id -u)" -eq 0 ] && bad_flags+=(--uid-map=:0:1000:1:)
for bad in "${bad_flags[@]}"; do
  out=$("$bin" --shared-dir "$dir" --socket-path "$dir/s" "$bad" 2>&1) &&
    fail "$bad accepted"
  [ "$(echo "$out" | wc -l)" -eq 1 ] || fail "$bad: not one line: $out"
  [ -e "$dir/s" ] && fail "$bad: a socket was created"
done

# Serving: the socket appears, the QEMU line is printed, SIGTERM ends it (0).
# Kata's and libvirt's extra options are accepted.
mkdir "$dir/share"
"$bin" --shared-dir "$dir/share" --socket-path "$dir/sock" --tag mytag --thread-pool-size=1 \
  --rlimit-nofile=4096 --cache=auto >"$dir/out" 2>"$dir/err" &
pid=$!
for _ in $(seq 100); do [ -S "$dir/sock" ] && break; sleep 0.05; done
[ -S "$dir/sock" ] || fail "no socket: $(cat "$dir/err")"
grep -q "vhost-user-fs-pci,chardev=vfs,queue-size=1024,tag=mytag" "$dir/out" || fail "QEMU line"
# A second daemon on the same socket is refused.
"$bin" --shared-dir "$dir/share" --socket-path "$dir/sock" 2>/dev/null && fail "socket in use"
kill -TERM $pid
wait $pid
status=$?
[ $status -eq 0 ] || fail "exit status $status after SIGTERM: $(cat "$dir/err")"
[ -e "$dir/sock" ] && fail "socket left behind"
echo "daemon: ok"
