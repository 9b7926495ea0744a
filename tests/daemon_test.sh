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
"$bin" --print-capabilities | grep -q '"separate-options"' || fail "--print-capabilities features"

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
[ "$(cat "$dir/sock.pid")" = "$pid" ] || fail "pid file: $(cat "$dir/sock.pid") is not $pid"
[ "$(stat -c %a "$dir/sock")" = 600 ] || fail "socket mode $(stat -c %a "$dir/sock")"
kill -TERM $pid
wait $pid
status=$?
[ $status -eq 0 ] || fail "exit status $status after SIGTERM: $(cat "$dir/err")"
[ -e "$dir/sock" ] && fail "socket left behind"
[ -e "$dir/sock.pid" ] && fail "pid file left behind"

# The legacy form (C virtiofsd, libvirt without separate-options), a log
# file that SIGHUP reopens (logrotate), and --socket-group.
"$bin" --socket-path="$dir/sock" -o source="$dir/share",cache=always,xattr,flock,no_posix_lock \
  -o log_level=info --log-file "$dir/log" --socket-group root >"$dir/out" 2>"$dir/err" &
pid=$!
for _ in $(seq 100); do [ -S "$dir/sock" ] && break; sleep 0.05; done
[ -S "$dir/sock" ] || fail "legacy form: no socket: $(cat "$dir/err")"
[ "$(stat -c %a:%G "$dir/sock")" = 660:root ] || fail "--socket-group: $(stat -c %a:%G "$dir/sock")"
grep -q "deprecated: -o" "$dir/log" || fail "--log-file: no deprecation warning: $(cat "$dir/log")"
mv "$dir/log" "$dir/log.1"
kill -HUP $pid
for _ in $(seq 100); do [ -s "$dir/log" ] && break; sleep 0.05; done
grep -q "SIGHUP: log reopened" "$dir/log" || fail "SIGHUP did not reopen the log"
kill -0 $pid || fail "SIGHUP killed the daemon"
kill -TERM $pid
wait $pid || fail "legacy form: exit status $?"
"$bin" --socket-path="$dir/sock" -o source="$dir/share",frobnicate 2>/dev/null &&
  fail "unknown -o option accepted"

# --daemonize: the command returns once the socket listens; the pid file
# names the daemon, which SIGTERM stops.
"$bin" --shared-dir "$dir/share" --socket-path "$dir/sock" --daemonize --log-file "$dir/dlog" ||
  fail "--daemonize: exit status $?"
[ -S "$dir/sock" ] || fail "--daemonize: not listening when the command returned"
dpid=$(cat "$dir/sock.pid")
kill -0 "$dpid" || fail "--daemonize: pid file names no process"
kill -TERM "$dpid"
# Gone, or a zombie (its reaper is whoever adopted it, not us).
alive() { [ -e "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
for _ in $(seq 200); do alive "$dpid" || break; sleep 0.05; done
alive "$dpid" && fail "--daemonize: SIGTERM did not stop it"
[ -e "$dir/sock" ] && fail "--daemonize: socket left behind"
echo "daemon: ok"
