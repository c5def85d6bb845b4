#!/usr/bin/env bash
# vm-tests: a real Linux initiator (open-iscsi in a QEMU guest) against
# weft-gateway, and a VM booting from a LUN. The one command:
#
#   vm-tests/run.sh [--tests LIST] [--out DIR]
#   vm-tests/run.sh --cluster [--tests LIST] [--out DIR]
#
# LIST (comma-separated, default all): the guest scenarios initiator, digests,
# chap, pr, multipath (one guest boot runs them all, in that order), then
# boot (SeaBIOS boots a disk image from a LUN through QEMU's iscsi:// drive)
# and ipxe (iPXE `sanboot` of the same LUN).
#
# --cluster runs against a whole cluster from `weft up` (4 chunkservers, LUN
# demo 3+1) instead of standalone gateways: the checks are initiator,
# initiator-kill (the initiator scenario again, with the chunkserver that
# is the primary of the extent being written SIGKILLed during the pattern
# write), boot and ipxe (from a LUN filled with `weft lun import`, read with
# that chunkserver still dead), and stop (SIGINT: weft up exits 0, every
# process gone).
#
# Environment:
#   WEFT_VM_ACCEL=auto|kvm|tcg  auto (default) probes KVM once, else TCG
#   WEFT_VM_TIMEOUT=SECS        hard limit for the guest run (default 900)
#   WEFT_VM_MB=N                MiB per data round trip (default 64; 32 with
#                               --cluster, at most 48: one extent)
#   WEFT_VM_SABOTAGE=WHAT       break one check on purpose (docs/testing.md)
#   WEFT_VM_CACHE=DIR           guest/image cache (default vm-tests/.cache)
#   WEFT_GATEWAY=PATH           gateway binary (default: cargo build --release)
#   WEFT=PATH                   --cluster: the weft binary, with weft-chunkserver
#                               and weft-gateway beside it (default: cargo
#                               build --release of the three)
#   WEFT_VM_UP_TIMEOUT=SECS     --cluster: limit for weft up to be ready (120)
#   WEFT_VM_LOGLEVEL=N          the guest kernel's console loglevel (4)
#
# Prints one line per check and exits non-zero if any check failed or left no
# marker, after printing the tails of the guest's and the gateways' logs (and
# with --cluster of weft up's and every chunkserver's).
# Needs (Debian 12): qemu-system-x86, qemu-utils, qemu-block-extra,
# syslinux, syslinux-common, mtools, dosfstools (and apt-get access for
# build-guest.sh's first run). Sends traffic to loopback and its guests only.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
all_tests=initiator,digests,chap,pr,multipath,boot,ipxe
tests=
out=
cluster=0
while [ $# -gt 0 ]; do
	case $1 in
	--tests) tests=$2; shift ;;
	--out) out=$2; shift ;;
	--cluster) cluster=1 ;;
	-h | --help) sed -n '2,/^set -u/{/^set -u/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	*) echo "vm-tests/run.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
[ "$cluster" -eq 0 ] || all_tests=initiator,initiator-kill,boot,ipxe,stop
[ -n "$tests" ] || tests=$all_tests
[ -n "$out" ] || out=$(mktemp -d "${TMPDIR:-/tmp}/weft-vm.XXXXXX")
mkdir -p "$out"
out=$(cd "$out" && pwd)
sabotage=${WEFT_VM_SABOTAGE:-}
mb=${WEFT_VM_MB:-64}
[ "$cluster" -eq 0 ] || mb=${WEFT_VM_MB:-32}
guest_timeout=${WEFT_VM_TIMEOUT:-900}
IQN=iqn.2026-11.org.weft:vm
CHAP_USER=weft-init CHAP_SECRET=weft-chap-secret-1
MCHAP_USER=weft-init2 MCHAP_SECRET=weft-chap-secret-2 MCHAP_TUSER=weft-target MCHAP_TSECRET=weft-target-secret
t_start=$SECONDS

say() { echo "vm-tests: $*"; }
die() { echo "vm-tests: ERROR: $*" >&2; cleanup; exit 2; }
has() { case ",$tests," in *",$1,"*) return 0 ;; esac; return 1; }

# With --cluster, initiator-kill rewrites what initiator wrote: in a cluster
# of 4 a 3+1 extent cannot be placed while a node is down, so only extents
# allocated before the kill stay writable (docs/testing.md).
if [ "$cluster" -eq 1 ] && has initiator-kill && ! has initiator; then
	tests=initiator,$tests
	say "initiator-kill needs initiator before it (it allocates the extents): running both"
fi

# --- results -----------------------------------------------------------------
names=() results=()
record() { names+=("$1"); results+=("$2"); }

# --- processes we start (killed by pid on exit) -----------------------------
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	pids=()
}
trap 'cleanup; exit 130' INT TERM

# --- 1. tools, guest, gateway ------------------------------------------------
for t in qemu-system-x86_64 qemu-img; do
	command -v "$t" >/dev/null || die "$t not found (apt-get install qemu-system-x86 qemu-utils)"
done
guest=$(timeout 900 "$here/build-guest.sh" --print-dir) || die "build-guest.sh failed"

# free_port: a loopback port nothing listens on.
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
	done
}
# start_gateway NAME CONFIG PORT: start it, wait until it listens; sets gw_pid_NAME.
start_gateway() {
	local name=$1 conf=$2 port=$3 i
	"$gw" --config "$conf" >"$out/gateway-$name.log" 2>&1 &
	local pid=$!
	pids+=("$pid")
	eval "gw_pid_$name=$pid"
	for i in $(seq 1 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	tail -n 20 "$out/gateway-$name.log" >&2
	die "gateway $name did not start listening on 127.0.0.1:$port"
}

# --- --cluster: weft up as a child ------------------------------------------
# wcli ARGS...: the weft CLI against the cluster (bounded; stderr to a log).
wcli() { timeout 60 "$weft" --config "$wdir/weft.toml" --timeout 20s "$@" 2>>"$out/weft-cli.log"; }
# json_field KEY: the first `"KEY": value` of a pretty-printed JSON document
# on stdin, unquoted (weft prints one field per line).
json_field() { sed -n "s/^ *\"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" | head -n 1; }
# dead PID: the process is gone (or a zombie its parent has not reaped yet).
dead() { [ ! -e "/proc/$1" ] || [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" = Z ]; }
declare -A cs_pid=()
start_cluster() {
	local i nodes
	weft=${WEFT:-}
	if [ -z "$weft" ]; then
		say "building weft, weft-chunkserver, weft-gateway"
		(cd "$root" && timeout 1200 cargo build --release -q -p admin-cli -p chunkserver -p iscsi-target --bins) ||
			die "cargo build of weft, weft-chunkserver and weft-gateway failed"
		weft=$root/target/release/weft
	fi
	[ -x "$weft" ] || die "no weft binary at $weft"
	command -v awk >/dev/null || die "awk not found"
	port=$(free_port)
	wdir=$out/weft-data
	# demo: one 48 MiB extent at 3+1 (16 MiB chunks), what the pattern uses.
	"$weft" up --dir "$wdir" --port "$port" --size 48M >"$out/weft-up.log" 2>&1 &
	up_pid=$!
	pids+=("$up_pid")
	say "weft up --dir $wdir --port $port (pid $up_pid), log $out/weft-up.log"
	for i in $(seq 1 $((${WEFT_VM_UP_TIMEOUT:-120} * 5))); do
		[ -s "$wdir/ready.json" ] && break
		kill -0 "$up_pid" 2>/dev/null || break
		sleep 0.2
	done
	if [ ! -s "$wdir/ready.json" ]; then
		tail -n 20 "$out/weft-up.log" >&2
		die "weft up was not ready within ${WEFT_VM_UP_TIMEOUT:-120}s (or exited)"
	fi
	cp "$wdir/ready.json" "$out/ready.json"
	grep -q "\"127.0.0.1:$port\"" "$out/ready.json" || die "ready.json does not list the portal 127.0.0.1:$port"
	IQN=$(json_field iqn <"$out/ready.json")
	lun_name=$(json_field lun_name <"$out/ready.json")
	[ "$(json_field lun <"$out/ready.json")" = 0 ] && [ -n "$IQN" ] && [ -n "$lun_name" ] ||
		die "unexpected ready.json: $(tr -d ' \n' <"$out/ready.json")"
	# node_id then pid, per process, in order.
	while read -r n p; do cs_pid[$n]=$p; done < <(awk -F'"' '/"node_id":/ { n = $4 } /"pid":/ { gsub(/[^0-9]/, "", $3); print n, $3 }' "$out/ready.json")
	nodes=$(for n in "${!cs_pid[@]}"; do case $n in cs-*) echo "$n=${cs_pid[$n]}" ;; esac; done | sort | tr '\n' ' ')
	[ "$(echo "$nodes" | wc -w)" -eq 4 ] || die "ready.json lists chunkservers $nodes, wanted 4"
	say "cluster ready in $((SECONDS - t_start))s: portal 127.0.0.1:$port, $IQN LUN 0 = $lun_name; chunkservers $nodes"
	# LUN 1 for the ext4 part of the initiator scenario (one extent), and a
	# boot target; a running gateway serves new maps and targets at once.
	wcli lun create fs --size 48M >/dev/null && wcli target map "$IQN" fs --lun 1 >/dev/null ||
		die "weft lun create fs / target map failed: $(tail -n 2 "$out/weft-cli.log")"
	boot_iqn=$IQN-boot
	wcli lun create boot --size 64M >/dev/null && wcli target create "$boot_iqn" >/dev/null &&
		wcli target map "$boot_iqn" boot --lun 0 >/dev/null ||
		die "weft lun create boot / target create / map failed: $(tail -n 2 "$out/weft-cli.log")"
	dport=$port mp_ports=
}

# kill_chunkservers: the guest asked (WEFT-ACTION kill-chunkserver) while it
# writes its pattern to demo's extent 0. SIGKILL that extent's primary (it
# holds the parity and orders every write to the extent; the gateway must
# get another holder to take over); WEFT_VM_SABOTAGE=cluster-kill-two kills
# a second holder too (cs-4, the non-voter, or cs-3), which a 3+1 LUN cannot
# survive. Waits until they are gone, then answers the guest on its second
# serial port. Sets killed_desc.
kill_chunkservers() {
	local prim v role victims=() t0=$SECONDS
	prim=$(wcli lun show "$lun_name" --extents -o json | awk '/"index": 0,/ { f = 1 } f && /"primary":/ { gsub(/[",]/, "", $2); print $2; exit }')
	if [ -z "$prim" ] || [ -z "${cs_pid[$prim]:-}" ]; then
		say "could not find the primary of $lun_name extent 0 ('$prim'): killing cs-1"
		prim=cs-1
	fi
	victims=("$prim")
	if [ "$sabotage" = cluster-kill-two ]; then
		for v in cs-4 cs-3; do [ "$v" != "$prim" ] && victims+=("$v") && break; done
		say "sabotage: killing two chunkservers: ${victims[*]}"
	fi
	killed_desc=
	for v in "${victims[@]}"; do
		role=$(wcli node show "$v" -o json | json_field metadata)
		case $role in leader) role="metadata leader" ;; voter) role="metadata voter" ;; *) role="no metadata replica" ;; esac
		[ "$v" = "$prim" ] && role="primary of $lun_name extent 0, $role"
		kill -9 "${cs_pid[$v]}" 2>/dev/null
		killed_desc+="${killed_desc:+ and }$v ($role)"
	done
	for v in "${victims[@]}"; do
		for _ in $(seq 1 50); do dead "${cs_pid[$v]}" && break; sleep 0.1; done
		dead "${cs_pid[$v]}" || say "chunkserver $v (pid ${cs_pid[$v]}) still alive after SIGKILL"
	done
	killed_desc="SIGKILLed $killed_desc"
	say "$killed_desc, $((SECONDS - t0))s after the guest asked"
	# shellcheck disable=SC2016 # $1 and $2 expand in the inner shell
	timeout 10 bash -c 'printf "%s\n" "$1" >"$2"' _ "$killed_desc" "$out/ctl.in" ||
		say "could not answer the guest on $out/ctl.in"
}

if [ "$cluster" -eq 1 ]; then
	start_cluster
else
	gw=${WEFT_GATEWAY:-}
	if [ -z "$gw" ]; then
		say "building weft-gateway"
		(cd "$root" && timeout 1200 cargo build --release -q -p iscsi-target) || die "cargo build -p iscsi-target failed"
		gw=$root/target/release/weft-gateway
	fi
	[ -x "$gw" ] || die "no gateway binary at $gw"

	# The main gateway: the initiator/digests/pr target (LUN 0 raw data, LUN 1
	# ext4, LUN 2 reservations), the CHAP targets and the boot target.
	port=$(free_port)
	chap_secret_gw=$CHAP_SECRET
	[ "$sabotage" = gw-chap-secret ] && chap_secret_gw=another-secret-1 && say "sabotage: gateway expects another CHAP secret"
	boot_bs=512
	[ "$sabotage" = gw-boot-4096 ] && boot_bs=4096 && say "sabotage: boot LUN has 4096-byte blocks"
	cat >"$out/gateway-main.toml" <<-EOF
	[gateway]
	portals = ["127.0.0.1:$port"]
	advertise = ["10.0.2.2:$port"]
	tpgt = 1

	[[target]]
	iqn = "$IQN"
	[[target.lun]]
	lun = 0
	backend = "ram:256M"
	[[target.lun]]
	lun = 1
	backend = "ram:256M"
	[[target.lun]]
	lun = 2
	backend = "ram:16M"

	[[target]]
	iqn = "$IQN-chap"
	[target.chap]
	user = "$CHAP_USER"
	secret = "$chap_secret_gw"
	[[target.lun]]
	lun = 0
	backend = "ram:16M"

	[[target]]
	iqn = "$IQN-mchap"
	[target.chap]
	user = "$MCHAP_USER"
	secret = "$MCHAP_SECRET"
	mutual_user = "$MCHAP_TUSER"
	mutual_secret = "$MCHAP_TSECRET"
	[[target.lun]]
	lun = 0
	backend = "ram:16M"

	[[target]]
	iqn = "$IQN-boot"
	[[target.lun]]
	lun = 0
	backend = "ram:64M"
	block_size = $boot_bs
	EOF
	start_gateway main "$out/gateway-main.toml" "$port"
	# shellcheck disable=SC2154 # gw_pid_* are set by start_gateway (eval)
	say "gateway main on 127.0.0.1:$port (pid $gw_pid_main), logs in $out"

	# For WEFT_VM_SABOTAGE=corrupt-data-digest / corrupt-header-digest: the
	# digests scenario goes through a proxy that spoils the target's digests.
	dport=$port
	case $sabotage in corrupt-data-digest | corrupt-header-digest)
		command -v python3 >/dev/null || die "$sabotage needs python3"
		dport=$(free_port)
		w=${sabotage#corrupt-}
		python3 "$here/tools/digest-corrupter.py" "$dport" "$port" --what "${w%-digest}" >"$out/digest-corrupter.log" 2>&1 &
		pids+=("$!")
		sleep 0.5
		say "sabotage: digests scenario goes through $here/tools/digest-corrupter.py on :$dport"
		;;
	esac

	# Two gateways for multipath: same target, one file LUN both open, own tpgt.
	mp_ports=
	if has multipath; then
		mp1=$(free_port)
		mp2=$(free_port)
		while [ "$mp2" = "$mp1" ]; do mp2=$(free_port); done
		rm -f "$out/mp.img"
		for i in 1 2; do
			p=$mp1 && [ $i -eq 2 ] && p=$mp2
			backend="file:$out/mp.img"
			[ "$sabotage" = gw-mp-ram ] && backend=ram:256M && say "sabotage: gateway mp$i keeps the LUN in its own RAM"
			cat >"$out/gateway-mp$i.toml" <<-EOF
				[gateway]
				portals = ["127.0.0.1:$p"]
				advertise = ["10.0.2.2:$p"]
				tpgt = $((i + 1))
				[[target]]
				iqn = "$IQN-mp"
				[[target.lun]]
				lun = 0
				backend = "$backend"
				size = "256M"
			EOF
			start_gateway "mp$i" "$out/gateway-mp$i.toml" "$p"
		done
		mp_ports=$mp1,$mp2
		# shellcheck disable=SC2154
		say "gateways mp1 on :$mp1 (pid $gw_pid_mp1), mp2 on :$mp2 (pid $gw_pid_mp2), LUN file $out/mp.img"
	fi
fi

# --cluster: the boot image goes into LUN boot now, with the CLI (the volume
# client, no iSCSI) while every chunkserver runs; with initiator-kill the
# boots then read it with one of them dead.
boot_imported=false
if [ "$cluster" -eq 1 ] && { has boot || has ipxe; } && [ "$sabotage" != boot-noimage ]; then
	img=$(timeout 300 "$here/build-boot-image.sh" "$guest") || die "build-boot-image.sh failed"
	wcli lun import "$img" boot >"$out/weft-import.log" && boot_imported=true
	say "weft lun import $img boot: $(tail -n 1 "$out/weft-import.log")"
fi

# --- 2. accelerator: KVM only if it really runs a guest ---------------------
# qemu_boot LOG TIMEOUT ARGS...: run QEMU (serial to LOG) with a hard timeout.
qemu_common=(-nodefaults -no-reboot -display none -machine graphics=off)
accel=${WEFT_VM_ACCEL:-auto}
if [ "$accel" = auto ]; then
	accel=tcg
	if [ -w /dev/kvm ]; then
		timeout -k 5 15 qemu-system-x86_64 "${qemu_common[@]}" -accel kvm -m 256 \
			-kernel "$guest/vmlinuz" -initrd "$guest/boot-initrd.img" \
			-append "console=ttyS0,115200 panic=1 quiet" -serial "file:$out/kvm-probe.log" \
			>/dev/null 2>&1
		grep -aq WEFT-BOOT-OK "$out/kvm-probe.log" 2>/dev/null && accel=kvm
	fi
	say "accelerator: $accel (probe log $out/kvm-probe.log)"
fi
cpu_args=()
[ "$accel" = kvm ] && cpu_args=(-cpu host)

# --- 3. the guest: all scenarios in one boot --------------------------------
guest_tests=()
for t in initiator initiator-kill digests chap pr multipath; do has "$t" && guest_tests+=("$t"); done
if [ ${#guest_tests[@]} -gt 0 ]; then
	glog=$out/guest.log
	: >"$glog"
	gsab=$sabotage
	case $sabotage in gw-*) gsab= ;; esac
	cmdline="console=ttyS0,115200 panic=1 loglevel=${WEFT_VM_LOGLEVEL:-4} weft.tests=$(IFS=,; echo "${guest_tests[*]}")"
	cmdline+=" weft.gw=$port weft.dgw=$dport weft.iqn=$IQN weft.mb=$mb weft.mp=$mp_ports"
	cmdline+=" weft.chap=$CHAP_USER:$CHAP_SECRET weft.mchap=$MCHAP_USER:$MCHAP_SECRET:$MCHAP_TUSER:$MCHAP_TSECRET"
	cmdline+=" weft.recvq=${WEFT_VM_RECVQ:-0} ${gsab:+weft.sabotage=$gsab}"
	[ "$cluster" -eq 0 ] || cmdline+=" weft.adv=127.0.0.1:$port"
	# A second serial port for the host's answers (initiator-kill).
	ctl_args=()
	if has initiator-kill; then
		rm -f "$out/ctl.in" "$out/ctl.out"
		mkfifo "$out/ctl.in" "$out/ctl.out" || die "mkfifo $out/ctl.in failed"
		ctl_args=(-serial "pipe:$out/ctl")
	fi
	say "booting the guest ($accel): ${guest_tests[*]}"
	t0=$SECONDS
	timeout -k 5 "$guest_timeout" qemu-system-x86_64 "${qemu_common[@]}" -accel "$accel" "${cpu_args[@]}" \
		-m 1024 -smp 2 -kernel "$guest/vmlinuz" -initrd "$guest/initrd.img" -append "$cmdline" \
		-netdev user,id=n0 -device virtio-net-pci,netdev=n0 \
		-serial "file:$glog" "${ctl_args[@]}" >"$out/qemu-guest.log" 2>&1 &
	qpid=$!
	pids+=("$qpid")
	# Follow the console: print markers as they come, act on WEFT-ACTION.
	shown=0 killed='' killed_desc=''
	while :; do
		alive=0
		kill -0 "$qpid" 2>/dev/null && alive=1
		n=$(wc -l <"$glog")
		if [ "$n" -gt "$shown" ]; then
			sed -n "$((shown + 1)),${n}p" "$glog" | grep -ao 'WEFT-TEST-[A-Z]* .*' | sed 's/^/  guest: /'
			a=$(sed -n "$((shown + 1)),${n}p" "$glog" | grep -ao 'WEFT-ACTION kill-gateway [0-9]*' | head -n 1)
			if [ -n "$a" ] && [ -z "$killed" ]; then
				kp=${a##* }
				[ "$kp" = "${mp_ports#*,}" ] && kill -9 "$gw_pid_mp2" 2>/dev/null && killed=1 &&
					say "killed gateway mp2 (pid $gw_pid_mp2, port $kp) as the guest asked, $((SECONDS - t0))s in"
			fi
			if [ "$cluster" -eq 1 ] && [ -z "$killed" ] &&
				sed -n "$((shown + 1)),${n}p" "$glog" | grep -aq 'WEFT-ACTION kill-chunkserver'; then
				say "the guest asks to kill a chunkserver, $((SECONDS - t0))s in"
				kill_chunkservers
				killed=1
			fi
			shown=$n
		fi
		[ $alive -eq 1 ] || break
		sleep 0.3
	done
	wait "$qpid"
	qrc=$?
	[ $qrc -eq 124 ] && say "guest exceeded ${guest_timeout}s and was stopped"
	say "guest ran $((SECONDS - t0))s (qemu exit $qrc)"
	for t in "${guest_tests[@]}"; do
		if grep -aq "WEFT-TEST-PASS $t " "$glog"; then
			r=$(grep -ao "WEFT-TEST-PASS $t .*" "$glog" | head -n1 | grep -o '([0-9]*s)')
			[ "$t" != initiator-kill ] || r="${r%?}; $killed_desc)"
			record "$t" "ok $r"
		elif r=$(grep -ao "WEFT-TEST-FAIL $t .*" "$glog" | head -n1) && [ -n "$r" ]; then
			record "$t" "FAILED: ${r#"WEFT-TEST-FAIL $t "}"
		else
			record "$t" "FAILED: no marker (guest crashed or timed out)"
		fi
	done
fi

# --- 4. boot from a LUN: SeaBIOS (iscsi:// drive) and iPXE sanboot ----------
boot_iqn=$IQN-boot
boot_lun=iscsi://127.0.0.1:$port/$boot_iqn/0
# boot_wait NAME LOG QEMU-ARGS...: boot, wait for WEFT-BOOT-OK, record. Stops
# early when the firmware gives up ("No bootable device", iPXE "Could not").
boot_wait() {
	local name=$1 log=$2 t0=$SECONDS rc qpid why=
	shift 2
	: >"$log"
	timeout -k 5 "${WEFT_VM_BOOT_TIMEOUT:-240}" qemu-system-x86_64 "${qemu_common[@]}" -accel "$accel" "${cpu_args[@]}" \
		-m 512 -serial "file:$log" -iscsi initiator-name="iqn.2026-11.org.weft:boot-$name" "$@" \
		>"$out/qemu-$name.log" 2>&1 &
	qpid=$!
	pids+=("$qpid")
	while kill -0 "$qpid" 2>/dev/null; do
		why=$(tr -d '\r' <"$log" | grep -ao 'No bootable device.*\|Could not [a-z].*\|Boot failed.*\|SAN device .* failed.*' | tail -n 1)
		if [ -n "$why" ]; then
			sleep 1 # let the firmware finish its message
			why=$(tr -d '\r' <"$log" | grep -ao 'No bootable device.*\|Could not [a-z].*\|Boot failed.*\|SAN device .* failed.*' | tr '\n' ' ')
			kill "$qpid" 2>/dev/null
			break
		fi
		sleep 0.5
	done
	wait "$qpid"
	rc=$?
	if grep -aq WEFT-BOOT-OK "$log"; then
		record "$name" "ok ($((SECONDS - t0))s)"
	elif [ -n "$why" ]; then
		record "$name" "FAILED: the firmware gave up: $why"
	else
		why="no WEFT-BOOT-OK marker"
		[ $rc -eq 124 ] && why="$why after ${WEFT_VM_BOOT_TIMEOUT:-240}s"
		record "$name" "FAILED: $why (qemu exit $rc: $(tail -n 1 "$out/qemu-$name.log"))"
	fi
}
if has boot || has ipxe; then
	img=$(timeout 300 "$here/build-boot-image.sh" "$guest") || die "build-boot-image.sh failed"
	writer="qemu-img convert to $boot_lun"
	[ "$cluster" -eq 0 ] || writer="weft lun import into LUN boot: $(tail -n 1 "$out/weft-cli.log" 2>/dev/null)"
	if [ "$sabotage" = boot-noimage ]; then
		say "sabotage: not writing the image (the boot LUN stays blank)"
		converted=true
	elif [ "$cluster" -eq 1 ]; then
		converted=$boot_imported # imported before the guest ran
	else
		say "writing $img into $boot_lun"
		converted="timeout 120 qemu-img convert -n -f raw -O raw $img $boot_lun"
	fi
	if ! $converted >"$out/qemu-img.log" 2>&1; then
		cat "$out/qemu-img.log"
		has boot && record boot "FAILED: $writer"
		has ipxe && record ipxe "FAILED: $writer"
	else
		if has boot; then
			say "booting from $boot_lun through SeaBIOS"
			boot_wait boot "$out/boot.log" -drive "file=$boot_lun,format=raw,if=virtio" -boot c
		fi
		if has ipxe; then
			say "booting from $boot_lun through iPXE sanboot"
			mkdir -p "$out/tftp"
			printf '#!ipxe\necho weft: sanboot\nsanboot iscsi:10.0.2.2::%s:0:%s\n' "$port" "$boot_iqn" >"$out/tftp/boot.ipxe"
			boot_wait ipxe "$out/ipxe.log" -netdev "user,id=n0,tftp=$out/tftp,bootfile=boot.ipxe" \
				-device virtio-net-pci,netdev=n0 -boot n
		fi
	fi
fi

# --- 5. --cluster: stop weft up as a script would (SIGINT) ------------------
if [ "$cluster" -eq 1 ] && has stop; then
	t0=$SECONDS
	sig=INT
	[ "$sabotage" = stop-sigkill ] && sig=KILL && say "sabotage: stopping weft up with SIGKILL"
	say "stopping weft up (SIG$sig to pid $up_pid)"
	kill -"$sig" "$up_pid" 2>/dev/null
	for _ in $(seq 1 300); do
		kill -0 "$up_pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$up_pid" 2>/dev/null; then
		record stop "FAILED: weft up still running 30s after SIG$sig"
	else
		wait "$up_pid"
		rc=$?
		left=$(for n in "${!cs_pid[@]}"; do dead "${cs_pid[$n]}" || echo "$n"; done | sort | tr '\n' ' ')
		if [ $rc -ne 0 ]; then
			record stop "FAILED: weft up exited $rc after SIG$sig: $(tail -n 1 "$out/weft-up.log")"
		elif [ -e "$wdir/ready.json" ]; then
			record stop "FAILED: weft up exited 0 but left $wdir/ready.json"
		elif [ -n "$left" ]; then
			record stop "FAILED: still running after weft up exited: $left"
		else
			record stop "ok ($((SECONDS - t0))s; exit 0, ready.json gone, no process left)"
		fi
	fi
fi

# --- 6. report ----------------------------------------------------------------
cleanup
status=0
printf '\n===== vm-tests summary (%s, %ss, logs in %s)\n' "$accel" "$((SECONDS - t_start))" "$out"
for i in "${!names[@]}"; do
	printf '  %-*s %s\n' "$([ "$cluster" -eq 1 ] && echo 14 || echo 10)" "${names[$i]}" "${results[$i]}"
	case ${results[$i]} in FAILED*) status=1 ;; esac
done
if [ $status -ne 0 ]; then
	for f in "$out"/guest.log "$out"/boot.log "$out"/ipxe.log; do
		[ -s "$f" ] || continue
		printf '\n----- tail of %s\n' "$f"
		tail -n 60 "$f" | tr -d '\r' | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g'
	done
	for f in "$out"/gateway-*.log; do
		[ -e "$f" ] || continue
		printf '\n----- tail of %s\n' "$f"
		tail -n 25 "$f"
	done
	if [ "$cluster" -eq 1 ]; then
		for f in "$out"/weft-up.log "$out"/weft-cli.log; do
			[ -s "$f" ] || continue
			printf '\n----- tail of %s\n' "$f"
			tail -n 25 "$f"
		done
		# Without the routine lines (retries, connections, Raft replication
		# to a dead voter), which would push out what matters.
		for f in "$wdir"/logs/*.log; do
			[ -e "$f" ] || continue
			printf '\n----- tail of %s (routine lines left out)\n' "$f"
			grep -v 'connect failed\|connection accepted\|frame refused\|closing client connection\|openraft::replication\|replication_handler' "$f" |
				tail -n 15 | cut -c1-300
		done
	fi
fi
npass=0 nfail=0
for r in "${results[@]}"; do case $r in ok*) npass=$((npass + 1)) ;; *) nfail=$((nfail + 1)) ;; esac; done
echo "vm-tests: $npass passed, $nfail failed"
exit $status
