#!/usr/bin/env bash
# Run libiscsi's conformance suite (iscsi-test-cu, every test, destructive
# ones included) against a target on loopback and compare the failures with
# tests/conformance/expected-failures.txt. See docs/conformance.md.
#
#   tests/conformance/run.sh [--target weft|tgt] [options]
#
#   --target weft     (default) start target/release/weft-gateway with a RAM LUN
#   --target tgt      start a private tgtd with a thin file LUN on tmpfs
#   --url URL         run against an already running target instead
#   --block-size N    512 (default) or 4096
#   --lun-size SIZE   LUN size (default 256M)
#   --expected FILE   expected failures (default: expected-failures.txt for
#                     weft and --url, expected-failures-tgt.txt for tgt)
#   --expected-skips FILE  tests allowed to skip (default: expected-skips.txt
#                     for weft; none checked for tgt and --url). A skip not
#                     listed fails the run: it means a command stopped working.
#   --out DIR         keep logs and results in DIR (default: a new temp dir)
#   --timeout SECS    hard limit for the whole suite (default 900)
#   --tests GLOBS     only the tests matching ALL.GLOB, for each GLOB of a
#                     comma-separated list (e.g. 'Read10.*,Unmap.Simple');
#                     the expected-failures check then covers only those
#
# Exit status: 0 when every failure is expected, 1 on an unexpected failure
# (or a gateway that crashed or did not exit cleanly), 2 when the suite could
# not run or its output could not be read.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=targets.sh
. "$here/targets.sh"

target=weft url= block_size=512 lun_size=256M expected= expected_skips= out= timeout_s=900 tests='*'
while [ $# -gt 0 ]; do
	case $1 in
	--target) target=$2; shift 2 ;;
	--url) url=$2; target=url; shift 2 ;;
	--block-size) block_size=$2; shift 2 ;;
	--lun-size) lun_size=$2; shift 2 ;;
	--expected) expected=$2; shift 2 ;;
	--expected-skips) expected_skips=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--timeout) timeout_s=$2; shift 2 ;;
	--tests) tests=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done
case $target in weft | tgt | url) ;; *) die "--target must be weft or tgt" ;; esac
case $block_size in 512 | 4096) ;; *) die "--block-size must be 512 or 4096" ;; esac
if [ -z "$expected" ]; then
	if [ "$target" = tgt ]; then expected=$here/expected-failures-tgt.txt; else expected=$here/expected-failures.txt; fi
fi
[ -f "$expected" ] || die "no expected-failures file $expected"
if [ -z "$expected_skips" ] && [ "$target" = weft ] && [ -z "$url" ]; then expected_skips=$here/expected-skips.txt; fi
[ -z "$expected_skips" ] || [ -f "$expected_skips" ] || die "no expected-skips file $expected_skips"
command -v iscsi-test-cu >/dev/null || die "iscsi-test-cu not found: apt-get install libiscsi-bin"

if [ -z "$out" ]; then out=$(mktemp -d "${TMPDIR:-/tmp}/weft-conformance.XXXXXX"); fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
raw=$out/iscsi-test-cu.log
results=$out/results.txt
details=$out/failures.txt

# Two initiator names: the multi-initiator tests (Reserve6.2Initiators,
# ProutReserve.Access*, ...) log in a second time with -I's name.
init1=iqn.2026-11.org.weft:conformance-1
init2=iqn.2026-11.org.weft:conformance-2
iqn=iqn.2026-11.org.weft:conformance

target_log=
cleanup() {
	weft_stop >/dev/null 2>&1 || true
	tgt_stop
}
trap cleanup EXIT
trap 'exit 130' INT TERM

case $target in
weft)
	target_log=$out/weft-gateway.log
	weft_start "$target_log" --iqn "$iqn" --lun "ram:$lun_size" --block-size "$block_size" || exit 2
	url=iscsi://127.0.0.1:$WEFT_PORT/$iqn/0
	;;
tgt)
	tgt_start "$out/tgt" "$lun_size" "$block_size" || exit 2
	target_log=$out/tgt/tgtd.log
	url=iscsi://127.0.0.1:$TGT_PORT/$TGT_IQN/$TGT_LUN
	;;
esac

# The same URL twice: the MultipathIO tests need a second path and skip
# without one; here both paths are sessions to the same portal and LUN.
cmd=(iscsi-test-cu --dataloss --allow-sanitize -t "$(sed 's/[^,]\{1,\}/ALL.&/g' <<<"$tests")" -i "$init1" -I "$init2" "$url" "$url")
msg "running: ${cmd[*]} (limit ${timeout_s}s, output: $raw)"
start=$SECONDS
rc=0
timeout -k 10 "$timeout_s" "${cmd[@]}" >"$raw" 2>&1 || rc=$?
elapsed=$((SECONDS - start))
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
	msg "iscsi-test-cu did not finish within ${timeout_s}s"
fi

harness_error=0
awk -v results="$results" -v details="$details" -f "$here/parse.awk" "$raw" || harness_error=1
if [ ! -s "$results" ]; then
	msg "iscsi-test-cu produced no test results (exit status $rc); its output:"
	tail -n 30 "$raw" >&2
	harness_error=1
fi

# The target must have survived the suite, and weft must exit cleanly.
target_error=0
if [ "$target" = weft ]; then
	weft_stop || target_error=1
fi

count() { awk -v s="$1" '$2 == s' "$results" | wc -l; }
passed=$(count PASSED) failed=$(count FAILED) skipped=$(count SKIPPED)
printf '%s\n' "$target $passed passed $failed failed $skipped skipped $elapsed s" >"$out/summary.txt"

# Expected failures: "Suite.Test  # reason"; blank lines and comments ignored.
expected_names=$(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e 's/^[[:space:]]*//' "$expected" | awk 'NF')
is_expected() { grep -qxF -- "$1" <<<"$expected_names"; }

skip_names=
if [ -n "$expected_skips" ]; then
	skip_names=$(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e 's/^[[:space:]]*//' "$expected_skips" | awk 'NF')
fi
is_expected_skip() { [ -z "$expected_skips" ] || grep -qxF -- "$1" <<<"$skip_names"; }

unexpected=() unexpected_skips=() now_passing=() stale=()
while read -r name status; do
	if [ "$status" = FAILED ] && ! is_expected "$name"; then unexpected+=("$name"); fi
	if [ "$status" = SKIPPED ] && ! is_expected_skip "$name"; then unexpected_skips+=("$name"); fi
	if [ "$status" != FAILED ] && is_expected "$name"; then now_passing+=("$name ($status)"); fi
done <"$results"
if [ "$tests" = '*' ]; then
	while read -r name; do
		[ -n "$name" ] || continue
		grep -q "^$name " "$results" || stale+=("$name")
	done <<<"$expected_names"
fi

echo
echo "== iscsi-test-cu against $target ($url), ${block_size}-byte blocks: $passed passed, $failed failed, $skipped skipped in ${elapsed}s"
echo "   results: $results   raw output: $raw"
if [ ${#now_passing[@]} -gt 0 ]; then
	echo
	echo "These tests are listed in ${expected#"$WEFT_ROOT"/} but did not fail; remove them from the list:"
	printf '    %s\n' "${now_passing[@]}"
fi
if [ ${#stale[@]} -gt 0 ]; then
	echo
	echo "These names in ${expected#"$WEFT_ROOT"/} are not tests of this suite (typo, or renamed):"
	printf '    %s\n' "${stale[@]}"
fi
status=0
if [ ${#unexpected[@]} -gt 0 ]; then
	echo
	echo "UNEXPECTED FAILURES (${#unexpected[@]}); rerun one with:"
	echo "    iscsi-test-cu --dataloss -t ALL.SUITE.TEST -i $init1 -I $init2 URL URL"
	for name in "${unexpected[@]}"; do
		awk -v n="=== $name" '$0 == n || index($0, n " (") == 1 {p = 1; print; next} /^=== / {p = 0} p' "$details"
	done
	status=1
fi
if [ ${#unexpected_skips[@]} -gt 0 ]; then
	echo
	echo "UNEXPECTED SKIPS (${#unexpected_skips[@]}): libiscsi found these commands or features missing;"
	echo "list them in ${expected_skips#"$WEFT_ROOT"/} with a reason, or bring the feature back:"
	printf '    %s\n' "${unexpected_skips[@]}"
	status=1
fi
if [ "$harness_error" -ne 0 ]; then
	echo
	echo "HARNESS ERROR: the suite's output could not be fully read (see above and $raw)"
	echo "Last lines of the output:"
	tail -n 15 "$raw" | sed 's/^/    /'
	status=2
fi
if [ "$target_error" -ne 0 ]; then status=$((status > 1 ? status : 1)); fi
if [ "$status" -ne 0 ] && [ -n "$target_log" ] && [ -s "$target_log" ]; then
	echo
	echo "The target's log ($target_log): warnings and errors (first 30), then its last 15 lines:"
	grep -E 'WARN|ERROR|panic' "$target_log" | head -n 30 | sed 's/^/    /' || true
	echo "    ..."
	tail -n 15 "$target_log" | sed 's/^/    /'
fi
if [ "$status" -eq 0 ]; then
	echo "OK: every failure is listed in ${expected#"$WEFT_ROOT"/}${expected_skips:+, every skip in ${expected_skips#"$WEFT_ROOT"/}}"
fi
exit "$status"
