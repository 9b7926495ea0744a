# The end-to-end workload, run by busybox sh in the guest on the virtiofs mount:
#   sh /workload.sh MOUNTPOINT
# Each check prints "E2E ok NAME" or "E2E FAIL NAME DETAIL"; at the end the
# tree the guest leaves in MOUNTPOINT/w is printed as "E2E TREE ..." lines
# (what the host compares with its own view after poweroff), then
# "E2E DONE pass=N fail=M".
# Environment: E2E_CACHE_MODE (auto|always|never...), E2E_QUEUES (request
# queues the device has). The host prepared MOUNTPOINT/locks/host-posix and
# host-flock, each locked by a host process for the whole run.
mnt=$1
H=/bin/e2e-helper
W=$mnt/w
pass=0
fail=0

ok() { echo "E2E ok $1"; pass=$((pass + 1)); }
bad() { echo "E2E FAIL $1 $2"; fail=$((fail + 1)); }
# run NAME FUNCTION: the function fails by printing why and returning non-zero.
run() {
  local out
  # A step that failed without a message still names the check.
  if out=$("$2" 2>&1); then ok "$1"; else bad "$1" "$(echo "${out:-a step failed silently}" | tr '\n' ' ' | tail -c 300)"; fi
}
die() { echo "$*"; return 1; }
expect_eq() {  # expect_eq WHAT GOT WANT
  [ "$2" = "$3" ] || die "$1: got '$2', want '$3'"
}
expect_errno() {  # expect_errno ERRNO OP ARGS...
  local want=$1 got
  shift
  got=$($H errno "$@") || die "helper errno $* failed"
  expect_eq "$*" "$got" "$want"
}
sha() { sha256sum "$1" | cut -d' ' -f1; }

mkdir -p "$W" || { bad setup "mkdir $W"; echo "E2E DONE pass=$pass fail=$fail"; exit 1; }
cd "$W" || exit 1

# --- files -------------------------------------------------------------------
t_create_write_read() {
  echo "hello virtiofs" >f1 || return 1
  expect_eq content "$(cat f1)" "hello virtiofs"
}
t_append() {
  echo "line two" >>f1 || return 1
  expect_eq lines "$(wc -l <f1)" 2 && expect_eq last "$(tail -n 1 f1)" "line two"
}
t_overwrite() {
  printf 'XXXXX' | dd of=f1 bs=1 seek=0 conv=notrunc || return 1
  expect_eq content "$(head -n 1 f1)" "XXXXX virtiofs" && expect_eq size "$(stat -c %s f1)" 24
}
t_truncate() {
  printf '0123456789' >trunc || return 1
  truncate -s 4 trunc && expect_eq down "$(cat trunc)" "0123" || return 1
  truncate -s 100000 trunc && expect_eq up "$(stat -c %s trunc)" 100000 || return 1
  # The new bytes read as zeros.
  expect_eq zeros "$(dd if=trunc bs=1 skip=4 count=99996 | tr -d '\000' | wc -c)" 0 || return 1
  expect_eq head "$(head -c 4 trunc)" "0123"
}
t_sparse() {
  dd if=/dev/zero of=sparse bs=1 count=0 seek=$((1 << 30)) || return 1
  printf 'end' | dd of=sparse bs=1 seek=$((1 << 30)) conv=notrunc || return 1
  expect_eq size "$(stat -c %s sparse)" $(((1 << 30) + 3)) || return 1
  # Blocks actually allocated stay small (the host file system keeps holes).
  local blocks
  blocks=$(stat -c %b sparse)
  [ "$blocks" -lt 1024 ] || die "sparse file has $blocks blocks"
  expect_eq tail "$(tail -c 3 sparse)" end &&
    expect_eq middle "$(dd if=sparse bs=4096 skip=1000 count=1 | tr -d '\000' | wc -c)" 0
}
t_big_file() {
  dd if=/dev/urandom of=big bs=1M count=64 || return 1
  local a b
  a=$(sha big)
  sync
  echo 3 >/proc/sys/vm/drop_caches
  b=$(sha big)
  expect_eq "sha256 after drop_caches" "$b" "$a" || return 1
  echo "$a" >/tmp/big.sha
}
t_o_append_two_writers() {
  rm -f appended
  $H append appended A 500 &
  local p1=$!
  $H append appended B 500 &
  local p2=$!
  wait $p1 || return 1
  wait $p2 || return 1
  expect_eq lines "$(wc -l <appended)" 1000 &&
    expect_eq A "$(grep -c '^A [0-9]*$' appended)" 500 &&
    expect_eq B "$(grep -c '^B [0-9]*$' appended)" 500
}
run file-create-write-read t_create_write_read
run file-append t_append
run file-overwrite t_overwrite
run file-truncate-down-up t_truncate
run file-sparse t_sparse
run file-64MiB-checksum t_big_file
[ -f /tmp/big.sha ] && echo "E2E SHA big $(cat /tmp/big.sha)"
run file-o-append-two-writers t_o_append_two_writers

# --- directories ---------------------------------------------------------------
t_nested() {
  mkdir -p n1/n2/n3/n4 && echo deep >n1/n2/n3/n4/file || return 1
  expect_eq content "$(cat n1/n2/n3/n4/file)" deep || return 1
  mkdir -p gone/a/b/c && touch gone/a/b/c/x gone/a/y && rm -r gone || return 1
  [ ! -e gone ] || die "gone still exists"
}
t_many_entries() {
  mkdir many || return 1
  local i=0
  while [ $i -lt 3000 ]; do
    : >many/entry-$i || return 1
    i=$((i + 1))
  done
  expect_eq "ls count" "$(ls many | wc -l)" 3000 || return 1
  expect_eq "unique" "$(ls many | sort -u | wc -l)" 3000 || return 1
  expect_eq "find count" "$(find many -type f | wc -l)" 3000 || return 1
  # After dropping the dentry cache too (readdir from the daemon again).
  echo 2 >/proc/sys/vm/drop_caches
  expect_eq "ls -l count" "$(ls -l many | grep -c entry-)" 3000 || return 1
  rm -r many && [ ! -e many ] || die "rm -r many"
}
t_rename() {
  mkdir -p ra rb && echo one >ra/x || return 1
  mv ra/x ra/y && [ ! -e ra/x ] && expect_eq within "$(cat ra/y)" one || return 1
  mv ra/y rb/z && [ ! -e ra/y ] && expect_eq across "$(cat rb/z)" one || return 1
  echo two >rb/victim && mv rb/z rb/victim || return 1
  expect_eq "over existing" "$(cat rb/victim)" one && [ ! -e rb/z ] || die "rb/z still there"
  mkdir -p rdir/sub && mv rdir rb/rdir2 && [ -d rb/rdir2/sub ] || die "directory rename"
}
t_errors() {
  mkdir -p e/full && touch e/full/x e/file || return 1
  expect_errno ENOTEMPTY rmdir e/full || return 1
  expect_errno EEXIST mkdir e/full || return 1
  expect_errno EEXIST creat_excl e/file || return 1
  expect_errno ENOENT open e/missing || return 1
  expect_errno ENOENT unlink e/missing || return 1
  expect_errno EISDIR openw e/full || return 1
  expect_errno ENOTDIR open e/file/x || return 1
  expect_errno ENOTDIR rmdir e/file || return 1
  expect_errno EISDIR unlink e/full || return 1
  expect_errno EISDIR rename e/file e/full || return 1
  expect_errno ENOTDIR rename e/full e/file || return 1
  rm -r e
}
run dir-nested-create-remove t_nested
run dir-3000-entries t_many_entries
run dir-rename t_rename
run dir-errnos t_errors

# --- links -------------------------------------------------------------------------
t_hardlinks() {
  echo linked >hl1 && ln hl1 hl2 && ln hl1 n1/hl3 || return 1
  expect_eq nlink "$(stat -c %h hl1)" 3 && expect_eq content "$(cat n1/hl3)" linked || return 1
  expect_eq "same inode" "$(stat -c %i hl2)" "$(stat -c %i hl1)" || return 1
  rm n1/hl3 && expect_eq "nlink after unlink" "$(stat -c %h hl2)" 2 || return 1
  expect_errno EEXIST link hl1 hl2
}
t_symlinks() {
  ln -s f1 sl && expect_eq readlink "$(readlink sl)" f1 || return 1
  expect_eq "through link" "$(cat sl)" "$(cat f1)" || return 1
  ln -s n1/n2/n3 sldir && [ -d sldir/n4 ] || die "symlink to a directory"
  ln -s does-not-exist dangling || return 1
  [ -L dangling ] && [ ! -e dangling ] || die "dangling symlink not dangling"
  expect_eq "dangling target" "$(readlink dangling)" does-not-exist && expect_errno ENOENT open dangling
}
run link-hard t_hardlinks
run link-symbolic-dangling t_symlinks

# --- metadata ----------------------------------------------------------------------
t_chmod() {
  echo m >meta && chmod 0640 meta && expect_eq mode "$(stat -c %a meta)" 640 || return 1
  chmod 4755 meta && expect_eq setuid "$(stat -c %a meta)" 4755 || return 1
  chmod 0600 meta
}
t_chown() {
  chown 1234:5678 meta && expect_eq owner "$(stat -c %u:%g meta)" 1234:5678 || return 1
  chown -h 4321:8765 sl && expect_eq "symlink owner" "$(stat -c %u:%g sl)" 4321:8765
}
t_utimes() {
  touch -d '2001-02-03 04:05:06' meta && expect_eq mtime "$(stat -c %Y meta)" "$(date -d '2001-02-03 04:05:06' +%s)"
}
t_statfs() {
  local s
  s=$($H statfs "$mnt") || return 1
  set -- $s
  [ "$1" -gt 0 ] && [ "$2" -gt 0 ] && [ "$3" -le "$2" ] && [ "$7" -ge 255 ] || die "statfs: $s"
  echo "E2E STATFS $s"
}
run meta-chmod t_chmod
run meta-chown t_chown
run meta-utimes t_utimes
run meta-statfs t_statfs

# --- special files and calls -------------------------------------------------------
t_xattr() { echo x >xat && $H xattr xat; }
t_fifo() {
  mkfifo fifo && [ -p fifo ] || die "mkfifo"
  expect_eq mode "$(stat -c %F fifo)" fifo
}
t_unlink_open() { $H unlinkopen uo; }
t_fsync() { $H fsync synced && expect_eq content "$(cat synced)" "fsync me
fdatasync me"; }
t_mmap() { $H mmap mapped 1048576; }
run xattr-user t_xattr
run fifo t_fifo
run unlink-open-file t_unlink_open
run fsync t_fsync
# cache=never makes files direct-I/O: the kernel refuses shared writable mmap
# unless the daemon allows it, so the check is only there when pages are cached.
if [ "$E2E_CACHE_MODE" = never ] || [ "$E2E_CACHE_MODE" = none ]; then
  echo "E2E skip mmap cache=$E2E_CACHE_MODE has no page cache for shared mappings"
else
  run mmap t_mmap
fi

# --- locks, against a host process ---------------------------------------------------
L=$mnt/locks
t_lock_host_holds() {  # t_lock_host_holds posix|flock
  local r=0
  $H trylock "$1" "$L/host-$1" || r=$?
  expect_eq "trylock on a host-locked file (0 taken, 3 busy)" $r 3
}
t_lock_guest_holds() {  # the host watcher checks it sees this lock (host log)
  $H hold "$1" "$L/guest-$1" "$L/guest-$1.ready" - &
  local p=$!
  $H wait "$L/guest-$1.ready" 30 || { kill $p; die "lock not taken"; }
  sleep 4
  kill $p && wait $p || die "holder failed"
  $H trylock "$1" "$L/guest-$1" || die "lock not free after release"
}
t_lock_host_posix() { t_lock_host_holds posix; }
t_lock_host_flock() { t_lock_host_holds flock; }
t_lock_guest_posix() { t_lock_guest_holds posix; }
t_lock_guest_flock() { t_lock_guest_holds flock; }
if [ -d "$L" ]; then
  run lock-posix-held-by-host t_lock_host_posix
  run lock-flock-held-by-host t_lock_host_flock
  run lock-posix-held-by-guest t_lock_guest_posix
  run lock-flock-held-by-guest t_lock_guest_flock
else
  echo "E2E skip locks $L does not exist (the host prepares it in the shared directory)"
fi

# --- concurrency -------------------------------------------------------------------
t_parallel_writers() {
  local cpus i pids="" want
  cpus=$(nproc)
  mkdir -p par || return 1
  for i in 0 1 2 3; do
    taskset -c $((i % cpus)) sh -c "j=0; while [ \$j -lt 200 ]; do echo writer-$i-\$j; j=\$((j + 1)); done >par/w$i; \
      dd if=/dev/urandom of=par/d$i bs=64k count=64; sync par/d$i" &
    pids="$pids $!"
  done
  for i in $pids; do wait $i || die "writer $i failed"; done
  for i in 0 1 2 3; do
    expect_eq "w$i lines" "$(wc -l <par/w$i)" 200 || return 1
    expect_eq "w$i last" "$(tail -n 1 par/w$i)" "writer-$i-199" || return 1
    expect_eq "d$i size" "$(stat -c %s par/d$i)" 4194304 || return 1
  done
}
run parallel-writers t_parallel_writers

# Interrupt counts per virtqueue ("virtioN-requests.M" in /proc/interrupts).
t_queues_used() {
  local lines used
  lines=$(grep -E 'requests\.[0-9]+' /proc/interrupts | awk '{ n = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) n += $i; print $NF, n }')
  echo "$lines" | tr '\n' ' ' >/tmp/queues.txt
  used=$(echo "$lines" | awk '$2 > 0' | wc -l)
  expect_eq "request queues with completions" "$used" "$E2E_QUEUES"
}
if [ "${E2E_QUEUES:-1}" -gt 1 ]; then
  run queues-all-used t_queues_used
  echo "E2E QUEUES $(cat /tmp/queues.txt)"
fi

# --- the tree the host checks after poweroff -------------------------------------
cd "$mnt" || exit 1
sync
find w | sort | while read -r p; do
  extra=-
  # Files past 128 MiB (the sparse one) are compared by size only.
  if [ -L "$p" ]; then extra=$(readlink "$p"); elif [ -f "$p" ] && [ "$(stat -c %s "$p")" -le 134217728 ]; then extra=$(sha "$p"); fi
  echo "E2E TREE $(stat -c '%n %f %u %g %s %h %Y' "$p") $extra"
done
echo "E2E DONE pass=$pass fail=$fail uptime=$(cut -d' ' -f1 /proc/uptime)"
