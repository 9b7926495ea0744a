#!/usr/bin/env bash
# One end-to-end run: a vhost-user-fs daemon serving a fresh directory, a Linux
# guest under QEMU (TCG) mounting it with the kernel's virtiofs driver and
# running tests/e2e/workload.sh, then checks on the host.
#
#   tests/e2e/run.sh [options] -- DAEMON COMMAND LINE...
#
# In the daemon command line, {socket} and {shared} are replaced by the
# vhost-user socket path and the shared directory, e.g.
#   tests/e2e/run.sh -- build/daemon/virtiofsd --socket-path {socket} --shared-dir {shared}
#   tests/e2e/run.sh -- /usr/lib/qemu/virtiofsd --socket-path={socket} \
#       -o source={shared},cache=auto,posix_lock,flock,xattr -o sandbox=chroot
#
# Options:
#   --name NAME        run name (default: e2e), output in build-e2e/runs/NAME
#   --kernel SUITE     bookworm (6.1, default) or bookworm-backports (6.12)
#   --queues N         num-request-queues of the device (default 1)
#   --cpus N           guest vCPUs (default 1)
#   --cache MODE       the daemon's cache mode, told to the guest (default auto)
#   --timeout SECONDS  hard limit for the guest (default 600)
#   --writeback        the daemon enables the guest's writeback cache: a
#                      regular file's host mtime may then be up to 1 s later
#                      than the guest's (see tree_matches)
#
# Prints "E2E ok NAME" / "E2E FAIL NAME DETAIL" lines (guest and host checks)
# and "e2e RUN: N passed, M failed, K skipped". Exit 0 when nothing failed,
# 1 when something did (the console and daemon logs are printed and kept),
# 77 when the environment cannot run it (see fetch.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export LC_ALL=C

name=e2e
suite=bookworm
queues=1
cpus=1
cache_mode=auto
timeout_s=600
writeback=false
while [ $# -gt 0 ]; do
  case $1 in
    --name) name=$2; shift 2 ;;
    --kernel) suite=$2; shift 2 ;;
    --queues) queues=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --cache) cache_mode=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --writeback) writeback=true; shift ;;
    --) shift; break ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "run.sh: no daemon command line after --" >&2; exit 2; }

e2e_dir=${E2E_BUILD:-$root/build-e2e}
mkdir -p "$e2e_dir"
# Kernel (cached), initramfs and the host copy of the helper.
kline=$("$here/fetch.sh" "$suite") || exit $?
kdir=${kline#* }
initrd=$e2e_dir/initramfs-$suite.cpio.gz
stamp_src=$(cat "$here/guest-init.sh" "$here/workload.sh" "$here/helper.c" "$here/mkinitramfs.sh" "$kdir/stamp" | sha256sum | cut -c1-16)
if [ ! -f "$initrd" ] || [ "$(cat "$initrd.src" 2>/dev/null)" != "$stamp_src" ]; then
  "$here/mkinitramfs.sh" "$kdir" "$initrd"
  echo "$stamp_src" >"$initrd.src"
fi
helper=$e2e_dir/e2e-helper
if [ ! -x "$helper" ] || [ "$here/helper.c" -nt "$helper" ]; then
  gcc -O2 -Wall -Werror -o "$helper" "$here/helper.c"
fi

out=$e2e_dir/runs/$name
rm -rf "$out"
mkdir -p "$out/share/locks"
share=$out/share
socket=$out/vhost.sock
results=$out/results
: >"$results"

cmd=()
for a in "$@"; do
  a=${a//\{socket\}/$socket}
  a=${a//\{shared\}/$share}
  cmd+=("$a")
done
echo "${cmd[*]}" >"$out/daemon.cmd"

pids=()
cleanup() {
  local p
  touch "$out/stop"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# Host processes that hold a lock on a shared file for the whole run.
for kind in posix flock; do
  "$helper" hold "$kind" "$share/locks/host-$kind" "$out/host-$kind.ready" - &
  pids+=($!)
  "$helper" wait "$out/host-$kind.ready" 10 || { echo "run.sh: host lock holder failed" >&2; exit 1; }
done

# The daemon.
"${cmd[@]}" >"$out/daemon.log" 2>&1 &
daemon_pid=$!
pids+=("$daemon_pid")
for _ in $(seq 100); do
  [ -S "$socket" ] && break
  kill -0 "$daemon_pid" 2>/dev/null || break
  sleep 0.1
done
if [ ! -S "$socket" ]; then
  echo "run.sh: the daemon did not create $socket; its log:" >&2
  cat "$out/daemon.log" >&2
  echo "E2E FAIL daemon-start no socket" >>"$results"
  echo "e2e $name: 0 passed, 1 failed, 0 skipped"
  exit 1
fi

# Watches the locks the guest takes, from the host (results in watcher.log).
watch_guest_lock() {  # watch_guest_lock posix|flock
  local kind=$1 r
  local f=$share/locks/guest-$kind
  "$helper" wait "$f.ready" "$timeout_s" "$out/stop" || return 0  # the guest never got there: its own check says so
  r=0
  "$helper" trylock "$kind" "$f" || r=$?
  if [ $r -eq 3 ]; then echo "E2E ok host-sees-guest-$kind-lock"; else echo "E2E FAIL host-sees-guest-$kind-lock host trylock returned $r while the guest held it"; fi
  "$helper" wait "$f.ready.released" 60 "$out/stop" || { echo "E2E FAIL host-lock-free-after-guest-$kind-release guest never released"; return 0; }
  # The guest takes the lock once more right after (its own check) and lets
  # it go on close, which the kernel sends as an asynchronous RELEASE: retry
  # for a while before calling the lock stuck.
  for _ in $(seq 60); do
    r=0
    "$helper" trylock "$kind" "$f" || r=$?
    [ $r -eq 3 ] || break
    sleep 0.1
  done
  if [ $r -eq 0 ]; then echo "E2E ok host-lock-free-after-guest-$kind-release"; else echo "E2E FAIL host-lock-free-after-guest-$kind-release host trylock returned $r for 6 s"; fi
}
(watch_guest_lock posix; watch_guest_lock flock) >"$out/watcher.log" 2>&1 &
watcher_pid=$!
pids+=("$watcher_pid")

mem=1G
dev=vhost-user-fs-pci,queue-size=1024,chardev=vfs,tag=e2e
[ "$queues" -gt 1 ] && dev+=",num-request-queues=$queues"
start=$(date +%s.%N)
qemu_rc=0
timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 \
  -M q35 -accel tcg -cpu max -smp "$cpus" -m "$mem" \
  -object memory-backend-memfd,id=mem,size=$mem,share=on -numa node,memdev=mem \
  -chardev socket,id=vfs,path="$socket" -device "$dev" \
  -kernel "$kdir/vmlinuz" -initrd "$initrd" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 e2e.tag=e2e e2e.cache=$cache_mode e2e.queues=$queues" \
  -display none -serial "file:$out/console.log" -monitor none -no-reboot -nodefaults \
  >"$out/qemu.log" 2>&1 &
qemu_pid=$!
pids+=("$qemu_pid")
# After "E2E DONE" the guest only unmounts and powers off: give it
# $poweroff_grace seconds, then stop QEMU instead of waiting for the hard
# limit. Debian's 6.1.0-50 guest kernel (6.1.176) sometimes never returns
# from umount: it waits in virtio_fs_drain_queue for a request it counts in
# flight, with either daemon (ours and the C virtiofsd alike). So ask our
# daemon (SIGUSR1: its stats line) what it has in flight: nothing means the
# guest's count is wrong (skip, with the reason); anything is ours (FAIL).
poweroff_grace=${E2E_POWEROFF_GRACE:-60}
done_at=""
while kill -0 "$qemu_pid" 2>/dev/null; do
  if [ -z "$done_at" ] && grep -q '^E2E DONE ' "$out/console.log" 2>/dev/null; then
    done_at=$SECONDS
  fi
  if [ -n "$done_at" ] && [ $((SECONDS - done_at)) -ge "$poweroff_grace" ]; then
    why="the guest was still up ${poweroff_grace}s after E2E DONE (umount or poweroff hung)"
    # (Whole outputs into variables, then grep: with pipefail, grep -q
    # ending a pipe early can fail it.)
    help=$("${cmd[0]}" --help 2>&1 || true)
    if grep -q -- --stats-socket <<<"$help"; then
      kill -USR1 "$daemon_pid" 2>/dev/null || true
      sleep 1
      stats=$(grep 'stats: {' "$out/daemon.log" | tail -n 1 || true)
      if [ -n "$stats" ] && ! grep -qE '"in_flight": [1-9]' <<<"$stats"; then
        echo "E2E skip guest-poweroff $why; the daemon has nothing in flight (guest kernel)" >>"$results"
      else
        line="E2E FAIL guest-poweroff $why; daemon: ${stats:-no stats line}"
        echo "${line:0:600}" >>"$results"
      fi
    else
      echo "E2E FAIL guest-poweroff $why" >>"$results"
    fi
    kill -TERM "$qemu_pid" 2>/dev/null || true
    break
  fi
  sleep 1
done
wait "$qemu_pid" || qemu_rc=$?
end=$(date +%s.%N)
wall=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%d", b - a }')

sleep 0.5
touch "$out/stop"  # ends the watcher's waits
wait "$watcher_pid" 2>/dev/null || true
# Stop the daemon (the C virtiofsd exits by itself when QEMU goes away).
kill -TERM "$daemon_pid" 2>/dev/null || true
for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$daemon_pid" 2>/dev/null || true
daemon_rc=0
wait "$daemon_pid" 2>/dev/null || daemon_rc=$?

tr -d '\r' <"$out/console.log" >"$out/console.txt"
grep -E '^E2E (ok|FAIL|skip) ' "$out/console.txt" >>"$results" || true
cat "$out/watcher.log" >>"$results"

host_check() {  # host_check NAME COMMAND...: the command prints why on failure
  local why
  if why=$("${@:2}" 2>&1); then echo "E2E ok $1" >>"$results"; else echo "E2E FAIL $1 $(echo "$why" | head -c 300 | tr '\n' ' ')" >>"$results"; fi
}
guest_done() { grep -q '^E2E DONE ' "$out/console.txt" || { echo "no E2E DONE line: qemu exit $qemu_rc (124 = timeout after ${timeout_s}s)"; return 1; }; }
tree_matches() {
  grep '^E2E TREE ' "$out/console.txt" | cut -d' ' -f3- >"$out/tree.guest"
  [ -s "$out/tree.guest" ] || { echo "the guest printed no tree"; return 1; }
  (cd "$share" && find w | sort | while read -r p; do
    extra=-
    if [ -L "$p" ]; then extra=$(readlink "$p");
    elif [ -f "$p" ] && [ "$(stat -c %s "$p")" -le 134217728 ]; then extra=$(sha256sum "$p" | cut -d' ' -f1); fi
    echo "$(stat -c '%n %f %u %g %s %h %Y' "$p") $extra"
  done) >"$out/tree.host"
  if $writeback; then
    # With the writeback cache the guest owns mtime and sends it (SETATTR)
    # only when its own clock moved: a second WRITE of a page within the same
    # guest clock tick is followed by none, and the host keeps its own write
    # time. The guest's clock starts from the RTC's whole second, so it lags
    # the host's by under a second: allow a regular file's host mtime to be
    # up to 1 s later, nothing else.
    paste -d'|' "$out/tree.guest" "$out/tree.host" | awk -F'|' '
      { split($1, g, " "); split($2, h, " "); d = h[7] - g[7]
        if (g[2] ~ /^81/ && h[2] == g[2] && d >= 0 && d <= 1) { g[7] = h[7] }
        a = g[1]; b = h[1]; for (i = 2; i <= 8; i++) { a = a " " g[i]; b = b " " h[i] }
        if (a != b || length(g) != length(h)) { print "< " $1; print "> " $2; bad = 1 } }
      END { exit bad }' >"$out/tree.diff" &&
      [ "$(wc -l <"$out/tree.guest")" -eq "$(wc -l <"$out/tree.host")" ] ||
      { echo "$(wc -l <"$out/tree.diff") diff lines (or different entry counts):"; head -n 8 "$out/tree.diff"; return 1; }
  else
    diff "$out/tree.guest" "$out/tree.host" >"$out/tree.diff" || { echo "$(wc -l <"$out/tree.diff") diff lines:"; head -n 8 "$out/tree.diff"; return 1; }
  fi
}
big_checksum() {
  local g h
  g=$(awk '$1 == "E2E" && $2 == "SHA" && $3 == "big" { print $4 }' "$out/console.txt")
  h=$(sha256sum "$share/w/big" | cut -d' ' -f1)
  [ -n "$g" ] && [ "$g" = "$h" ] || { echo "guest '$g' host '$h'"; return 1; }
}
xattr_kept() {
  local v
  v=$("$helper" getxattr "$share/w/xat" user.e2e-kept) && [ "$v" = kept ] || { echo "user.e2e-kept is '$v'"; return 1; }
}
host_check guest-finished guest_done
host_check host-tree-matches-guest tree_matches
host_check host-64MiB-checksum big_checksum
if grep -q '^E2E ok xattr-user' "$results"; then host_check host-sees-guest-xattr xattr_kept; fi
# Daemons that report per-queue counts at exit (ours: "requests completed per
# queue: 0:N 1:M ..."): with several request queues, each must have carried some.
queues_in_daemon_log() {
  local counts
  counts=$(grep -o 'requests completed per queue: .*' "$out/daemon.log" | tail -n 1 | cut -d: -f2-)
  echo "daemon per-queue counts:$counts"
  for q in $(seq 1 "$queues"); do
    echo "$counts" | grep -Eq "(^| )$q:[1-9]" || return 1
  done
}
if [ "$queues" -gt 1 ] && grep -q 'requests completed per queue: ' "$out/daemon.log"; then
  host_check daemon-stats-all-queues-used queues_in_daemon_log
fi
host_check daemon-exit sh -c "[ $daemon_rc -eq 0 ] || [ $daemon_rc -eq 143 ] || { echo 'daemon exit status $daemon_rc'; exit 1; }"

booted=$(awk '$1 == "E2E" && $2 == "BOOTED" { for (i = 3; i <= NF; i++) if ($i ~ /^uptime=/) { sub(/uptime=/, "", $i); print $i } }' "$out/console.txt")
done_up=$(awk '$1 == "E2E" && $2 == "DONE" { for (i = 3; i <= NF; i++) if ($i ~ /^uptime=/) { sub(/uptime=/, "", $i); print $i } }' "$out/console.txt")
npass=$(grep -c '^E2E ok ' "$results" || true)
nfail=$(grep -c '^E2E FAIL ' "$results" || true)
nskip=$(grep -c '^E2E skip ' "$results" || true)
cat "$results"
echo "e2e $name: wall ${wall}s, guest uptime at init ${booted:-?}s, at end ${done_up:-?}s"
if [ "$nfail" -gt 0 ]; then
  echo "---- $name: console (last 60 lines of $out/console.txt) ----"
  grep -v '^E2E TREE ' "$out/console.txt" | tail -n 60
  echo "---- $name: daemon log (last 40 lines of $out/daemon.log) ----"
  tail -n 40 "$out/daemon.log"
  echo "---- $name: qemu log ----"
  cat "$out/qemu.log"
fi
echo "e2e $name: $npass passed, $nfail failed, $nskip skipped"
[ "$nfail" -eq 0 ] || exit 1
rm -rf "$share"  # what a failed run leaves is kept for a look
