#!/usr/bin/env bash
# vm-tests: a real Linux initiator (open-iscsi in a QEMU guest) against
# weft-gateway, and a VM booting from a LUN. The one command:
#
#   vm-tests/run.sh [--tests LIST] [--out DIR]
#
# LIST (comma-separated, default all): the guest scenarios initiator, digests,
# chap, pr, multipath (one guest boot runs them all, in that order), then
# boot (SeaBIOS boots a disk image from a LUN through QEMU's iscsi:// drive)
# and ipxe (iPXE `sanboot` of the same LUN).
#
# Environment:
#   WEFT_VM_ACCEL=auto|kvm|tcg  auto (default) probes KVM once, else TCG
#   WEFT_VM_TIMEOUT=SECS        hard limit for the guest run (default 900)
#   WEFT_VM_MB=N                MiB per data round trip (default 64)
#   WEFT_VM_SABOTAGE=WHAT       break one check on purpose (docs/testing.md)
#   WEFT_VM_CACHE=DIR           guest/image cache (default vm-tests/.cache)
#   WEFT_GATEWAY=PATH           gateway binary (default: cargo build --release)
#
# Prints one line per check and exits non-zero if any check failed or left no
# marker, after printing the tails of the guest's and the gateways' logs.
# Needs (Debian 12): qemu-system-x86, qemu-utils, qemu-block-extra,
# syslinux, syslinux-common, mtools, dosfstools (and apt-get access for
# build-guest.sh's first run). Sends traffic to loopback and its guests only.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
all_tests=initiator,digests,chap,pr,multipath,boot,ipxe
tests=$all_tests
out=
while [ $# -gt 0 ]; do
	case $1 in
	--tests) tests=$2; shift ;;
	--out) out=$2; shift ;;
	-h | --help) sed -n '2,/^set -u/{/^set -u/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	*) echo "vm-tests/run.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
[ -n "$out" ] || out=$(mktemp -d "${TMPDIR:-/tmp}/weft-vm.XXXXXX")
mkdir -p "$out"
out=$(cd "$out" && pwd)
sabotage=${WEFT_VM_SABOTAGE:-}
mb=${WEFT_VM_MB:-64}
guest_timeout=${WEFT_VM_TIMEOUT:-900}
IQN=iqn.2026-11.org.weft:vm
CHAP_USER=weft-init CHAP_SECRET=weft-chap-secret-1
MCHAP_USER=weft-init2 MCHAP_SECRET=weft-chap-secret-2 MCHAP_TUSER=weft-target MCHAP_TSECRET=weft-target-secret
t_start=$SECONDS

say() { echo "vm-tests: $*"; }
die() { echo "vm-tests: ERROR: $*" >&2; cleanup; exit 2; }
has() { case ",$tests," in *",$1,"*) return 0 ;; esac; return 1; }

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
gw=${WEFT_GATEWAY:-}
if [ -z "$gw" ]; then
	say "building weft-gateway"
	(cd "$root" && timeout 1200 cargo build --release -q -p iscsi-target) || die "cargo build -p iscsi-target failed"
	gw=$root/target/release/weft-gateway
fi
[ -x "$gw" ] || die "no gateway binary at $gw"

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

# The main gateway: the initiator/digests/pr target (LUN 0 raw data, LUN 1
# ext4, LUN 2 reservations), the CHAP targets and the boot target.
port=$(free_port)
chap_secret_gw=$CHAP_SECRET
[ "$sabotage" = gw-chap-secret ] && chap_secret_gw=another-secret-1 && say "sabotage: gateway expects another CHAP secret"
boot_bs=512
[ "$sabotage" = gw-boot-4096 ] && boot_bs=4096 && say "sabotage: boot LUN has 4096-byte blocks"
cat >"$out/gateway-main.toml" <<EOF
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
	say "gateways mp1 on :$mp1 (pid $gw_pid_mp1), mp2 on :$mp2 (pid $gw_pid_mp2), LUN file $out/mp.img"
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
for t in initiator digests chap pr multipath; do has "$t" && guest_tests+=("$t"); done
if [ ${#guest_tests[@]} -gt 0 ]; then
	glog=$out/guest.log
	: >"$glog"
	gsab=$sabotage
	case $sabotage in gw-*) gsab= ;; esac
	cmdline="console=ttyS0,115200 panic=1 loglevel=4 weft.tests=$(IFS=,; echo "${guest_tests[*]}")"
	cmdline+=" weft.gw=$port weft.dgw=$dport weft.iqn=$IQN weft.mb=$mb weft.mp=$mp_ports"
	cmdline+=" weft.chap=$CHAP_USER:$CHAP_SECRET weft.mchap=$MCHAP_USER:$MCHAP_SECRET:$MCHAP_TUSER:$MCHAP_TSECRET"
	cmdline+=" weft.recvq=${WEFT_VM_RECVQ:-0} ${gsab:+weft.sabotage=$gsab}"
	say "booting the guest ($accel): ${guest_tests[*]}"
	t0=$SECONDS
	timeout -k 5 "$guest_timeout" qemu-system-x86_64 "${qemu_common[@]}" -accel "$accel" "${cpu_args[@]}" \
		-m 1024 -smp 2 -kernel "$guest/vmlinuz" -initrd "$guest/initrd.img" -append "$cmdline" \
		-netdev user,id=n0 -device virtio-net-pci,netdev=n0 \
		-serial "file:$glog" >"$out/qemu-guest.log" 2>&1 &
	qpid=$!
	pids+=("$qpid")
	# Follow the console: print markers as they come, act on WEFT-ACTION.
	shown=0 killed=
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
		if grep -aq "WEFT-TEST-PASS $t\b" "$glog"; then
			record "$t" "ok $(grep -ao "WEFT-TEST-PASS $t .*" "$glog" | head -n1 | grep -o '([0-9]*s)')"
		elif r=$(grep -ao "WEFT-TEST-FAIL $t .*" "$glog" | head -n1) && [ -n "$r" ]; then
			record "$t" "FAILED: ${r#WEFT-TEST-FAIL $t }"
		else
			record "$t" "FAILED: no marker (guest crashed or timed out)"
		fi
	done
fi

# --- 4. boot from a LUN: SeaBIOS (iscsi:// drive) and iPXE sanboot ----------
boot_lun=iscsi://127.0.0.1:$port/$IQN-boot/0
# boot_wait NAME LOG QEMU-ARGS...: boot, wait for WEFT-BOOT-OK, record. Stops
# early when the firmware gives up ("No bootable device", iPXE "Could not").
boot_wait() {
	local name=$1 log=$2 t0=$SECONDS rc qpid why=
	shift 2
	: >"$log"
	timeout -k 5 "${WEFT_VM_BOOT_TIMEOUT:-240}" qemu-system-x86_64 "${qemu_common[@]}" -accel "$accel" "${cpu_args[@]}" \
		-m 512 -serial "file:$log" -iscsi initiator-name=iqn.2026-11.org.weft:boot-$name "$@" \
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
	say "writing $img into $boot_lun"
	if [ "$sabotage" = boot-noimage ]; then
		say "sabotage: not writing the image (the boot LUN stays blank)"
		converted=true
	else
		converted="timeout 120 qemu-img convert -n -f raw -O raw $img $boot_lun"
	fi
	if ! $converted >"$out/qemu-img.log" 2>&1; then
		cat "$out/qemu-img.log"
		has boot && record boot "FAILED: qemu-img convert to $boot_lun"
		has ipxe && record ipxe "FAILED: qemu-img convert to $boot_lun"
	else
		if has boot; then
			say "booting from $boot_lun through SeaBIOS"
			boot_wait boot "$out/boot.log" -drive "file=$boot_lun,format=raw,if=virtio" -boot c
		fi
		if has ipxe; then
			say "booting from $boot_lun through iPXE sanboot"
			mkdir -p "$out/tftp"
			printf '#!ipxe\necho weft: sanboot\nsanboot iscsi:10.0.2.2::%s:0:%s\n' "$port" "$IQN-boot" >"$out/tftp/boot.ipxe"
			boot_wait ipxe "$out/ipxe.log" -netdev "user,id=n0,tftp=$out/tftp,bootfile=boot.ipxe" \
				-device virtio-net-pci,netdev=n0 -boot n
		fi
	fi
fi

# --- 5. report ----------------------------------------------------------------
cleanup
status=0
printf '\n===== vm-tests summary (%s, %ss, logs in %s)\n' "$accel" "$((SECONDS - t_start))" "$out"
for i in "${!names[@]}"; do
	printf '  %-10s %s\n' "${names[$i]}" "${results[$i]}"
	case ${results[$i]} in FAILED*) status=1 ;; esac
done
if [ $status -ne 0 ]; then
	for f in "$out"/guest.log "$out"/boot.log "$out"/ipxe.log; do
		[ -s "$f" ] || continue
		printf '\n----- tail of %s\n' "$f"
		tail -n 60 "$f" | tr -d '\r' | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g'
	done
	for f in "$out"/gateway-*.log; do
		printf '\n----- tail of %s\n' "$f"
		tail -n 25 "$f"
	done
fi
npass=0 nfail=0
for r in "${results[@]}"; do case $r in ok*) npass=$((npass + 1)) ;; *) nfail=$((nfail + 1)) ;; esac; done
echo "vm-tests: $npass passed, $nfail failed"
exit $status
