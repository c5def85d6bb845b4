#!/usr/bin/env bash
# Throughput of tgt (file LUN on tmpfs), weft-gateway on a RAM LUN, and
# weft-gateway on a whole cluster (`weft up`: 4 chunkservers, a 3+1 LUN, data
# on tmpfs), same machine, same client, same run. Not a test: it prints a
# table and exits 0 unless something could not run. Method and results:
# docs/benchmarks.md.
#
#   benches/bench.sh [--targets tgt,weft,cluster] [--runtime SECS] [--size 1G]
#
# Client: fio 3.33's nbd engine -> qemu-storage-daemon (NBD server on a Unix
# socket) -> QEMU's iscsi driver (libiscsi) -> the target on 127.0.0.1.
# Debian's fio has no libiscsi engine, and this VM's kernel has no SCSI layer
# (no iscsi_tcp, no sd), so the kernel initiator is not an option here. The
# same qemu layer sits in front of both targets. As a check on what that
# layer costs, libiscsi's own iscsi-perf (reads only) measures the 4 KiB
# random read and 1 MiB sequential read rows directly too.
#
# Rows: 4 KiB random read and write at queue depth 32; 1 MiB sequential read
# and write at queue depth 8. Each runs --runtime seconds (default 20) after
# 3 s of ramp; the LUN is written in full first so reads return data.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../tests/conformance/targets.sh
. "$here/../tests/conformance/targets.sh"

targets=tgt,weft,cluster runtime=20 size=1G
while [ $# -gt 0 ]; do
	case $1 in
	--targets) targets=$2; shift 2 ;;
	--runtime) runtime=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done
for tool in fio qemu-storage-daemon iscsi-perf; do
	command -v "$tool" >/dev/null || die "$tool not found (apt-get install fio qemu-system-common libiscsi-bin)"
done
fio --enghelp 2>/dev/null | grep -qw nbd || die "this fio has no nbd engine"

work=$(mktemp -d "${TMPDIR:-/tmp}/weft-bench.XXXXXX")
iqn=iqn.2026-11.org.weft:bench
qsd_pid=

up_pid= up_dir=
cluster_stop() {
	if [ -n "$up_pid" ]; then
		kill -INT "$up_pid" 2>/dev/null || true
		wait "$up_pid" 2>/dev/null || true
		up_pid=
	fi
	if [ -n "$up_dir" ]; then rm -rf "$up_dir"; up_dir=; fi
}
cleanup() {
	if [ -n "$qsd_pid" ]; then stop_pid "$qsd_pid" qemu-storage-daemon || true; qsd_pid=; fi
	cluster_stop
	weft_stop >/dev/null 2>&1 || true
	tgt_stop
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# name, fio arguments
rows=(
	"4k-randread-qd32|--rw=randread --bs=4k --iodepth=32"
	"4k-randwrite-qd32|--rw=randwrite --bs=4k --iodepth=32"
	"1m-seqread-qd8|--rw=read --bs=1M --iodepth=8"
	"1m-seqwrite-qd8|--rw=write --bs=1M --iodepth=8"
)
declare -A iops mbps

# fio_job NAME ARGS...: runs one fio job on the NBD export and records
# IOPS and MB/s (10^6 bytes/s) under "$cur.$NAME".
fio_job() {
	local name=$1 line
	shift
	line=$(timeout -k 10 $((runtime + 120)) fio --name="$name" --ioengine=nbd \
		--uri="nbd+unix:///lun?socket=$work/nbd.sock" --size="$size" \
		--output-format=terse --terse-version=3 "$@" 2>"$work/$cur.$name.err" | grep '^3;' | tail -n 1) ||
		{ msg "fio $name against $cur failed:"; cat "$work/$cur.$name.err" >&2; return 1; }
	# terse v3: field 7/8 = read KiB/s and IOPS, 48/49 = write KiB/s and IOPS
	iops[$cur.$name]=$(awk -F';' '{printf "%d", $8 + $49}' <<<"$line")
	mbps[$cur.$name]=$(awk -F';' '{printf "%.0f", ($7 + $48) * 1024 / 1e6}' <<<"$line")
	msg "$cur $name: ${iops[$cur.$name]} IOPS, ${mbps[$cur.$name]} MB/s"
}

# perf_job NAME URL ARGS...: iscsi-perf for $runtime seconds, average IOPS.
perf_job() {
	local name=$1 url=$2 out avg
	shift 2
	out=$(timeout -s INT -k 10 "$runtime" iscsi-perf "$@" "$url" 2>&1 | tr '\r' '\n' || true)
	avg=$(grep -o 'iops average [0-9]* ([0-9]* MB/s)' <<<"$out" | tail -n 1)
	[ -n "$avg" ] || { msg "iscsi-perf $name against $cur printed no result: $(tail -c 300 <<<"$out")"; return 1; }
	iops[$cur.$name]=$(awk '{print $3}' <<<"$avg")
	mbps[$cur.$name]=$(awk '{gsub(/\(/, "", $4); print $4}' <<<"$avg") # iscsi-perf's MB/s are MiB/s
	msg "$cur $name: ${iops[$cur.$name]} IOPS, ${mbps[$cur.$name]} MiB/s (iscsi-perf)"
}

bench_target() {
	local port=$1 lun=$2 tiqn=$3 url
	url=iscsi://127.0.0.1:$port/$tiqn/$lun
	rm -f "$work/nbd.sock"
	qemu-storage-daemon \
		--blockdev "driver=iscsi,node-name=lun,transport=tcp,portal=127.0.0.1:$port,target=$tiqn,lun=$lun,initiator-name=iqn.2026-11.org.weft:bench-qsd,cache.direct=on" \
		--nbd-server "addr.type=unix,addr.path=$work/nbd.sock" \
		--export type=nbd,id=e0,node-name=lun,name=lun,writable=on >"$work/$cur.qsd.log" 2>&1 &
	qsd_pid=$!
	local i
	for i in $(seq 1 100); do [ -S "$work/nbd.sock" ] && break; kill -0 "$qsd_pid" 2>/dev/null || break; sleep 0.1; done
	[ -S "$work/nbd.sock" ] || { msg "qemu-storage-daemon did not start:"; cat "$work/$cur.qsd.log" >&2; return 1; }

	msg "$cur: filling the $size LUN"
	timeout -k 10 600 fio --name=fill --ioengine=nbd --uri="nbd+unix:///lun?socket=$work/nbd.sock" \
		--size="$size" --rw=write --bs=1M --iodepth=8 >"$work/$cur.fill.log" 2>&1 ||
		{ msg "filling the LUN failed:"; tail -n 20 "$work/$cur.fill.log" >&2; return 1; }
	local row
	for row in "${rows[@]}"; do
		# shellcheck disable=SC2086
		fio_job "${row%%|*}" ${row#*|} --time_based --runtime="$runtime" --ramp_time=3 --direct=1 || return 1
	done
	stop_pid "$qsd_pid" qemu-storage-daemon || true
	qsd_pid=

	perf_job perf-4k-randread-qd32 "$url" -i iqn.2026-11.org.weft:bench-perf -m 32 -b 8 -r || true
	perf_job perf-1m-seqread-qd8 "$url" -i iqn.2026-11.org.weft:bench-perf -m 8 -b 2048 || true
}

bs=512
for cur in ${targets//,/ }; do
	case $cur in
	weft)
		weft_start "$work/weft-gateway.log" --iqn "$iqn" --lun "ram:$size" --block-size "$bs" || { msg "weft did not start; skipping it"; continue; }
		bench_target "$WEFT_PORT" 0 "$iqn" || msg "weft benchmark incomplete (log: $work/weft-gateway.log)"
		weft_stop || true
		;;
	cluster)
		# The cluster's data on tmpfs, like tgt's file.
		up_dir=$(mktemp -d /dev/shm/weft-bench-cluster.XXXXXX)
		port=$(free_port)
		"$WEFT_ROOT/target/release/weft" up --dir "$up_dir" --port "$port" --size "$size" >"$work/weft-up.log" 2>&1 &
		up_pid=$!
		for _ in $(seq 1 600); do [ -s "$up_dir/ready.json" ] && break; kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
		if [ ! -s "$up_dir/ready.json" ]; then
			msg "weft up did not get ready; skipping the cluster (log: $work/weft-up.log)"
			tail -n 20 "$work/weft-up.log" >&2
			cluster_stop
			continue
		fi
		bench_target "$port" 0 iqn.2026-11.org.weft:demo || msg "cluster benchmark incomplete (log: $work/weft-up.log, $up_dir)"
		cluster_stop
		;;
	tgt)
		tgt_start "$work/tgt" "$size" "$bs" || { msg "tgt did not start; skipping it"; continue; }
		bench_target "$TGT_PORT" "$TGT_LUN" "$TGT_IQN" || msg "tgt benchmark incomplete"
		tgt_stop
		;;
	*) die "unknown target $cur" ;;
	esac
done

val() { local v=${1:-}; echo "${v:-n/a}"; }
ratio() {
	awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'
}
echo
echo "tgt $(dpkg-query -W -f='${Version}' tgt 2>/dev/null) (tmpfs file LUN) vs weft-gateway (RAM LUN) vs weft cluster (weft up: 4 chunkservers, 3+1, tmpfs), $size LUN, ${bs}-byte blocks, ${runtime}s per row, $(nproc) CPUs, $(date -u +%Y-%m-%d)"
echo "client: fio nbd -> qemu-storage-daemon -> libiscsi; 'perf-' rows: libiscsi iscsi-perf directly (MB/s there are MiB/s)"
printf '%-24s %10s %8s %10s %8s %10s %8s %9s %9s\n' test "tgt IOPS" "tgt MB/s" "weft IOPS" "weft MB/s" "clu IOPS" "clu MB/s" "weft/tgt" "clu/tgt"
for name in 4k-randread-qd32 4k-randwrite-qd32 1m-seqread-qd8 1m-seqwrite-qd8 perf-4k-randread-qd32 perf-1m-seqread-qd8; do
	printf '%-24s %10s %8s %10s %8s %10s %8s %9s %9s\n' "$name" \
		"$(val "${iops[tgt.$name]:-}")" "$(val "${mbps[tgt.$name]:-}")" \
		"$(val "${iops[weft.$name]:-}")" "$(val "${mbps[weft.$name]:-}")" \
		"$(val "${iops[cluster.$name]:-}")" "$(val "${mbps[cluster.$name]:-}")" \
		"$(ratio "${iops[weft.$name]:-}" "${iops[tgt.$name]:-}")" \
		"$(ratio "${iops[cluster.$name]:-}" "${iops[tgt.$name]:-}")"
done
echo "(logs: $work)"
