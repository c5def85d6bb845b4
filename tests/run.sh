#!/usr/bin/env bash
# The project's one test command: installs the Debian packages it needs
# (tests/deps.sh), builds, lints, runs the unit and integration tests, then
# the external checks against the real binaries (libiscsi's conformance suite
# at 512- and 4096-byte blocks, qemu-img data round trips, open-iscsi and
# booting VMs in QEMU guests). Prints a summary with the time of each step and
# exits non-zero if any step failed. Every step runs even when an earlier one
# failed, except those that need the build.
#
#   tests/run.sh            everything (about 15-20 minutes on 2 cores from cold)
#   tests/run.sh --quick    skip the external checks (conformance, qemu-img, vm-tests)
#
# Needs: the Rust toolchain (cargo, clippy, rustfmt); root or sudo the first
# time, to install the Debian packages listed in tests/deps.sh.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2

quick=0
for a in "$@"; do
	case $a in
	--quick) quick=1 ;;
	-h | --help) sed -n '2,/^set -u/{/^set -u/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	*) echo "tests/run.sh: unknown argument $a" >&2; exit 2 ;;
	esac
done

logdir=$(mktemp -d "${TMPDIR:-/tmp}/weft-tests.XXXXXX")
names=() results=() times=()
built=0

# step NAME TIMEOUT_SECS CMD...: run, show output live, record result and time.
step() {
	local name=$1 limit=$2 t0=$SECONDS rc=0
	shift 2
	printf '\n===== %s: %s\n' "$name" "$*"
	timeout -k 30 "$limit" "$@" 2>&1 | tee "$logdir/$name.log" || rc=${PIPESTATUS[0]}
	[ "$rc" -ne 124 ] || echo "tests/run.sh: $name exceeded ${limit}s and was stopped"
	names+=("$name")
	results+=("$([ "$rc" -eq 0 ] && echo ok || echo "FAILED ($rc)")")
	times+=("$((SECONDS - t0))")
	return "$rc"
}

skip() {
	names+=("$1")
	results+=("skipped: $2")
	times+=(0)
}

start=$SECONDS
step deps 900 tests/deps.sh
step build 1200 cargo build --release --workspace --all-targets --locked && built=1
step fmt 120 cargo fmt --all -- --check
step clippy 900 cargo clippy --workspace --all-targets --locked -- -D warnings
# The fuzz crate is its own workspace; check that it still builds against the library.
step fuzz-check 900 cargo check --manifest-path fuzz/Cargo.toml --locked
if [ "$built" -eq 1 ]; then
	step test 1800 cargo test --workspace --release --locked
else
	skip test "build failed"
fi
# The deterministic simulation: 500 seeds of 3+1 and 100 of 3+2, and one of each replayed (docs/simulation.md).
if [ "$built" -eq 1 ]; then step sim 1200 tests/sim/ci.sh 500 100; else skip sim "build failed"; fi
if [ "$quick" -eq 1 ]; then
	skip conformance "--quick"
	skip conformance-4k "--quick"
	skip qemu-img "--quick"
	skip vm-tests "--quick"
	skip vm-cluster "--quick"
elif [ "$built" -eq 1 ]; then
	# run.sh and roundtrip.sh have their own finer timeouts; these are backstops.
	step conformance 1200 tests/conformance/run.sh --target weft --out "$logdir/conformance"
	step conformance-4k 1200 tests/conformance/run.sh --target weft --block-size 4096 --out "$logdir/conformance-4k"
	step qemu-img 900 tests/qemu-img/roundtrip.sh --target weft --out "$logdir/qemu-img"
	step vm-tests 1500 env WEFT_GATEWAY="$root/target/release/weft-gateway" vm-tests/run.sh --out "$logdir/vm-tests"
	step vm-cluster 1200 env WEFT="$root/target/release/weft" vm-tests/run.sh --cluster --out "$logdir/vm-cluster"
else
	skip conformance "build failed"
	skip conformance-4k "build failed"
	skip qemu-img "build failed"
	skip vm-tests "build failed"
	skip vm-cluster "build failed"
fi

status=0
printf '\n===== summary (logs in %s)\n' "$logdir"
for i in "${!names[@]}"; do
	printf '  %-12s %-22s %5ss\n' "${names[$i]}" "${results[$i]}" "${times[$i]}"
	case ${results[$i]} in FAILED*) status=1 ;; esac
done
printf '  %-12s %-22s %5ss\n' total "$([ "$status" -eq 0 ] && echo ok || echo FAILED)" "$((SECONDS - start))"
exit "$status"
