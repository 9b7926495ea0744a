#!/usr/bin/env bash
# Runs the end-to-end test (tests/e2e/run.sh) over a matrix of configurations,
# against our daemon, the reference C virtiofsd, or both.
#
#   tests/e2e/matrix.sh [ci|full] [--daemon ours|reference|both] [--only REGEX]
#
#   ci     (default) what scripts/test runs: about 5 guest boots, < 10 min
#   full   every cache mode x writeback x io engine on the 6.1 kernel, cache
#          modes with one and two queues on the 6.12 kernel, and the reference
#          daemon on each kernel and cache mode (about 40 min under TCG)
#
# --daemon both (the default for "full") runs each configuration the reference
# can serve with both daemons and fails if a check the reference passes fails
# with ours. With "ci", the configurations marked "both" below do that.
# Environment: VIRTIOFSD (our daemon, default build/daemon/virtiofsd),
# REFERENCE_VIRTIOFSD (default /usr/lib/qemu/virtiofsd).
#
# Exit 0: every run passed; 1: something failed; 77: the environment cannot
# run guests (no QEMU, no kernel download), with the reason printed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

set_name=ci
daemons=
only=.
while [ $# -gt 0 ]; do
  case $1 in
    ci | full) set_name=$1; shift ;;
    --daemon) daemons=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    *) echo "matrix.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

ours=${VIRTIOFSD:-$root/build/daemon/virtiofsd}
reference=${REFERENCE_VIRTIOFSD:-/usr/lib/qemu/virtiofsd}

# A configuration:
#   NAME KERNEL CPUS QUEUES CACHE WRITEBACK ENGINE SANDBOX WHO
# KERNEL: bookworm (6.1) | bookworm-backports (6.12, virtiofs multi-queue)
# WRITEBACK: wb | -    ENGINE: uring | sync (ours only)
# SANDBOX: - (the daemon's default: namespace for both) | none | namespace | chroot. Ours gets
#   --sandbox only when its --help lists the option; until then such entries
#   are skipped with a note.
# WHO: ours | both (also the reference, and compare)
ci_matrix() {
  cat <<'EOF'
auto-6.1         bookworm           1 1 auto   -  uring -         both
never-sync-6.1   bookworm           1 1 never  -  sync  -         ours
always-wb-6.1    bookworm           1 1 always wb uring -         ours
mq2-auto-6.12    bookworm-backports 2 2 auto   -  uring -         ours
sandbox-none-6.1 bookworm           1 1 auto   -  uring none      ours
EOF
}

full_matrix() {
  local cache wb engine q
  for cache in auto always never; do
    for wb in - wb; do
      for engine in uring sync; do
        echo "$cache${wb/#-/}-$engine-6.1 bookworm 1 1 $cache $wb $engine - both"
      done
    done
  done
  for cache in auto always never; do
    for q in 1 2; do
      echo "$cache-q$q-6.12 bookworm-backports 2 $q $cache - uring - both"
    done
  done
  for sandbox in none namespace chroot; do
    echo "sandbox-$sandbox-6.1 bookworm 1 1 auto - uring $sandbox both"
  done
}

# The whole help first: grep -q would stop reading early, and the daemon's
# SIGPIPE would then fail the pipeline (pipefail).
has_option() { local help; help=$("$1" --help 2>&1); grep -q -- "$2" <<<"$help"; }

# Prints the daemon command line for a configuration, or nothing when this
# daemon cannot serve it (the reason on stderr).
ours_cmd() {  # CPUS QUEUES CACHE WB ENGINE SANDBOX
  local queues=$2 cache=$3 wb=$4 engine=$5 sandbox=$6
  if [ "$sandbox" != - ] && ! has_option "$ours" --sandbox; then
    echo "our daemon has no --sandbox yet" >&2
    return 0
  fi
  local c=("$ours" --socket-path {socket} --shared-dir {shared} --tag e2e --xattr
    --cache "$cache" --io-engine "$engine" --num-request-queues "$queues")
  [ "$wb" = wb ] && c+=(--writeback)
  [ "$sandbox" != - ] && c+=(--sandbox "$sandbox")
  echo "${c[@]}"
}

reference_cmd() {
  local queues=$2 cache=$3 wb=$4 engine=$5 sandbox=$6
  if [ "$queues" -gt 1 ]; then
    echo "the reference serves one request queue only" >&2
    return 0
  fi
  if [ "$engine" != uring ]; then
    echo "the reference has no io engine choice (run once, with uring)" >&2
    return 0
  fi
  if [ "$sandbox" = none ]; then
    echo "the reference has no sandbox=none" >&2
    return 0
  fi
  [ "$cache" = never ] && cache=none
  local o="source={shared},cache=$cache,posix_lock,flock,xattr"
  [ "$wb" = wb ] && o+=",writeback"
  local c=("$reference" --socket-path={socket} -o "$o")
  [ "$sandbox" != - ] && c+=(-o "sandbox=$sandbox")
  echo "${c[@]}"
}

if [ "$set_name" = ci ]; then lines=$(ci_matrix); else lines=$(full_matrix); fi
[ -n "$daemons" ] || { [ "$set_name" = full ] && daemons=both || daemons=matrix; }

# Fetch (or find cached) kernels first: a skip here skips everything.
"$here/fetch.sh" bookworm bookworm-backports >/dev/null || exit $?
if [ ! -x "$ours" ] && [ "$daemons" != reference ]; then
  echo "matrix.sh: $ours not built" >&2
  exit 1
fi

summary=()
failed=0
parity_failed=0
start_all=$(date +%s)
while read -r name kernel cpus queues cache wb engine sandbox who; do
  [ -n "$name" ] || continue
  echo "$name" | grep -Eq -- "$only" || continue
  which=()
  case $daemons in
    ours) which=(ours) ;;
    reference) which=(reference) ;;
    both) which=(ours reference) ;;
    matrix) which=(ours); [ "$who" = both ] && which+=(reference) ;;
  esac
  ran=""
  for d in "${which[@]}"; do
    cmdline=$("${d}_cmd" "$cpus" "$queues" "$cache" "$wb" "$engine" "$sandbox" 2>"/tmp/e2e-why.$$") || true
    if [ -z "$cmdline" ]; then
      summary+=("SKIP $d/$name: $(cat "/tmp/e2e-why.$$")")
      continue
    fi
    # shellcheck disable=SC2086  # the command line is words without spaces
    set -- $cmdline
    t0=$(date +%s)
    ran+=" $d"
    rc=0
    wbopt=()
    [ "$wb" = wb ] && wbopt=(--writeback)
    "$here/run.sh" --name "$d-$name" --kernel "$kernel" --cpus "$cpus" --queues "$queues" \
      --cache "$cache" --timeout 480 "${wbopt[@]}" -- "$@" >"/tmp/e2e-run.$$" 2>&1 || rc=$?
    t1=$(date +%s)
    tail_line=$(tail -n 1 "/tmp/e2e-run.$$")
    if [ $rc -eq 77 ]; then
      cat "/tmp/e2e-run.$$"
      rm -f "/tmp/e2e-run.$$" "/tmp/e2e-why.$$"
      exit 77
    fi
    if [ $rc -ne 0 ]; then
      cat "/tmp/e2e-run.$$"
      # A failure of the reference alone is noted, not ours to fix (the
      # parity check below is what holds ours to it).
      if [ "$d" = reference ]; then
        summary+=("NOTE $d/$name failed ($((t1 - t0))s): $tail_line")
      else
        failed=$((failed + 1))
        summary+=("FAIL $d/$name ($((t1 - t0))s): $tail_line")
      fi
    else
      summary+=("ok   $d/$name ($((t1 - t0))s): $tail_line")
    fi
    grep -E '^e2e .*: wall' "/tmp/e2e-run.$$" || true
  done
  # Parity: every check the reference passed must pass with ours.
  out=${E2E_BUILD:-$root/build-e2e}/runs
  if [ "$ran" = " ours reference" ]; then
    missing=$(comm -23 <(grep '^E2E ok ' "$out/reference-$name/results" | cut -d' ' -f3 | sort -u) \
      <(grep '^E2E ok ' "$out/ours-$name/results" | cut -d' ' -f3 | sort -u))
    if [ -n "$missing" ]; then
      parity_failed=$((parity_failed + 1))
      summary+=("FAIL parity/$name: the reference passes, ours does not: $(echo $missing)")
    else
      summary+=("ok   parity/$name: ours passes every check the reference passes")
    fi
  fi
done <<<"$lines"

echo "==== e2e matrix ($set_name), $(($(date +%s) - start_all))s ===="
printf '%s\n' "${summary[@]}"
# Runs (and parity checks) as one line: "e2e: N passed, M failed, K skipped".
echo "e2e: $(printf '%s\n' "${summary[@]}" | grep -c '^ok') passed," \
  "$(printf '%s\n' "${summary[@]}" | grep -c '^FAIL') failed," \
  "$(printf '%s\n' "${summary[@]}" | grep -c '^SKIP') skipped"
rm -f "/tmp/e2e-run.$$" "/tmp/e2e-why.$$"
[ $failed -eq 0 ] && [ $parity_failed -eq 0 ]
