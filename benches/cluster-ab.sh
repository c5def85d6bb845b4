#!/bin/bash
# CPU per I/O of a whole weft cluster, A/B between builds.
#
#   benches/cluster-ab.sh [--row randwrite|write] [--rounds N] [--secs S] BINDIR[@VAR=VALUE] ...
#
# For each round and each BINDIR (a directory holding weft, weft-chunkserver
# and weft-gateway, e.g. a copy of target/release), alternating: `weft up`
# on /dev/shm (4 chunkservers, a 3+1 LUN, 1 GiB), filled by 1 MiB writes,
# then fio through qemu-storage-daemon (nbd engine, iSCSI, cache.direct=on)
# for S seconds after a 2 s ramp: 4 KiB random writes at QD32 (randwrite)
# or 1 MiB sequential writes at QD8 (write). Prints IOPS, the CPU cores used
# by the five weft processes (from /proc/PID/stat over the run) and their
# CPU time per I/O. `@VAR=VALUE` runs that build with an environment
# variable (e.g. @TOKIO_WORKER_THREADS=1).
#
# On a shared machine absolute rates move a lot; compare CPU per I/O of the
# builds within one invocation, over several rounds.
set -u
row=randwrite rounds=3 secs=10
while [ $# -gt 0 ]; do
	case $1 in
	--row) row=$2; shift 2 ;;
	--rounds) rounds=$2; shift 2 ;;
	--secs) secs=$2; shift 2 ;;
	-h|--help) sed -n '2,17p' "$0"; exit 0 ;;
	*) break ;;
	esac
done
[ $# -gt 0 ] || { sed -n '2,17p' "$0"; exit 2; }

# "pid ticks config" of the weft processes started from $1.
snapshot() {
	for p in $(pgrep -f "^$1/weft-(chunkserver|gateway)"); do
		echo "$p $(awk '{print $14+$15}' /proc/$p/stat) $(tr '\0' ' ' < /proc/$p/cmdline | awk '{print $3}' | sed 's|.*/\([^/]*\)/[^/]*$|\1|')"
	done
}

# One run of build $1: prints "IOPS MB/s cores".
run() {
	local bin=$1 d w port up q args t0 t1
	d=$(mktemp -d /dev/shm/weft-ab.XXXX); w=$(mktemp -d /tmp/weft-ab.XXXX)
	port=$((4000 + RANDOM % 1000))
	"$bin/weft" up --dir "$d" --port $port --size 1G > "$w/up.log" 2>&1 &
	up=$!
	for _ in $(seq 1 600); do [ -s "$d/ready.json" ] && break; sleep 0.1; done
	qemu-storage-daemon --blockdev "driver=iscsi,node-name=lun,transport=tcp,portal=127.0.0.1:$port,target=iqn.2026-11.org.weft:demo,lun=0,initiator-name=iqn.2026-11.org.weft:bench-qsd,cache.direct=on" \
		--nbd-server "addr.type=unix,addr.path=$w/nbd.sock" \
		--export type=nbd,id=e0,node-name=lun,name=lun,writable=on > "$w/qsd.log" 2>&1 &
	q=$!
	for _ in $(seq 1 100); do [ -S "$w/nbd.sock" ] && break; sleep 0.1; done
	fio --name=fill --ioengine=nbd --uri="nbd+unix:///lun?socket=$w/nbd.sock" --size=1G \
		--rw=write --bs=1M --iodepth=8 --output-format=terse --terse-version=3 > /dev/null
	if [ "$row" = randwrite ]; then args="--rw=randwrite --bs=4k --iodepth=32"; else args="--rw=write --bs=1M --iodepth=8"; fi
	snapshot "$bin" | sort > "$w/c0"; t0=$(date +%s.%N)
	# shellcheck disable=SC2086
	fio --name=x --ioengine=nbd --uri="nbd+unix:///lun?socket=$w/nbd.sock" --size=1G $args \
		--time_based --runtime="$secs" --ramp_time=2 --direct=1 --output-format=terse --terse-version=3 \
		| awk -F';' '$8+$49>0 {printf "%d %d ", $8+$49, ($7+$48)*1024/1e6}'
	snapshot "$bin" | sort > "$w/c1"; t1=$(date +%s.%N)
	join "$w/c0" "$w/c1" | awk -v t="$(echo "$t1 - $t0" | bc)" '{s+=$4-$2} END {printf "%.3f\n", s/100/t}'
	kill $q; wait $q 2>/dev/null
	kill -INT $up; wait $up 2>/dev/null
	rm -rf "$d" "$w"
}

printf '%-5s %-40s %8s %7s %6s %12s\n' round build IOPS MB/s cores "CPU per I/O"
for r in $(seq 1 "$rounds"); do
	for spec in "$@"; do
		bin=${spec%@*} env=""
		[ "$spec" != "$bin" ] && env=${spec#*@}
		# shellcheck disable=SC2086
		read -r iops mbs cores < <(env $env bash -c "$(declare -f run snapshot); row=$row secs=$secs run $bin")
		awk -v r="$r" -v b="$spec" -v i="${iops:-0}" -v m="${mbs:-0}" -v c="${cores:-0}" \
			'BEGIN {printf "%-5s %-40s %8d %7d %6.2f %9.1f us\n", r, b, i, m, c, (i > 0 ? c / i * 1e6 : 0)}'
	done
done
