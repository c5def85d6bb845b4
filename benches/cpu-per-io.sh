#!/usr/bin/env bash
# CPU time each target spends per I/O under the same load: a measure that a
# busy machine disturbs much less than IOPS. Not a test; prints a table.
#
#   benches/cpu-per-io.sh [--seconds N]
#
# Both targets get a 1 GiB LUN filled with the same random data (weft: RAM;
# tgt: file on tmpfs), then libiscsi's iscsi-perf drives each in turn (4 KiB
# random reads with 32 in flight, 1 MiB sequential reads with 8 in flight)
# while `perf stat -e task-clock` counts the target process's CPU time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../tests/conformance/targets.sh
. "$here/../tests/conformance/targets.sh"
secs=8
while [ $# -gt 0 ]; do
	case $1 in
	--seconds) secs=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	*) die "unknown argument $1" ;;
	esac
done
for tool in perf iscsi-perf qemu-img tgtd; do command -v "$tool" >/dev/null || die "$tool not found"; done
work=$(mktemp -d "${TMPDIR:-/tmp}/weft-cpu.XXXXXX")
cargo build --release -q -p iscsi-target --bin weft-gateway --manifest-path "$here/../Cargo.toml"

tgt_start "$work/tgt" 1G 512
url_t="iscsi://127.0.0.1:$TGT_PORT/$TGT_IQN/$TGT_LUN"
port=$(free_port)
"$here/../target/release/weft-gateway" --portal "127.0.0.1:$port" --iqn iqn.2026-11.org.weft:cpu --lun ram:1G >"$work/weft.log" 2>&1 &
wpid=$!
trap 'kill $wpid 2>/dev/null || true; tgt_stop || true' EXIT
wait_listen "$port" "$wpid" "$work/weft.log"
url_w="iscsi://127.0.0.1:$port/iqn.2026-11.org.weft:cpu/0"

head -c 1G /dev/urandom >"$work/fill.img"
for url in "$url_t" "$url_w"; do qemu-img convert -n -O raw "$work/fill.img" "$url"; done
rm -f "$work/fill.img"

printf '%-6s %-24s %10s %14s %16s\n' target load IOPS "CPU ms" "CPU us per I/O"
for load in "-m 32 -b 8 -r" "-m 8 -b 2048"; do
	for t in tgt weft; do
		if [ $t = tgt ]; then pid=$TGT_PID url=$url_t; else pid=$wpid url=$url_w; fi
		perf stat -e task-clock -p "$pid" -- sleep "$secs" 2>"$work/perf-$t.txt" &
		ps=$!
		# shellcheck disable=SC2086
		out=$(timeout -s INT "$secs" iscsi-perf $load "$url" 2>&1 | tr '\r' '\n' | grep average | tail -1 || true)
		wait $ps
		iops=$(sed -E 's/.*iops average ([0-9]+).*/\1/' <<<"$out")
		ms=$(awk '/task-clock/ {gsub(",", "", $1); print $1}' "$work/perf-$t.txt")
		# iscsi-perf's average covers about secs - 0.5 s of the window.
		per=$(awk -v ms="$ms" -v i="$iops" -v s="$secs" 'BEGIN { if (i > 0) printf "%.1f", ms * 1000 / (i * (s - 0.5)); else print "-" }')
		printf '%-6s %-24s %10s %14s %16s\n' "$t" "$load" "$iops" "$ms" "$per"
	done
done
