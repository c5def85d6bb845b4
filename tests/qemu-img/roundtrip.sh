#!/usr/bin/env bash
# Data round trip through QEMU's iSCSI driver (libiscsi): qemu-img convert
# writes a random 256 MiB raw image to LUN 0, reads it back to a file, and
# the sha256 sums must match. Three passes, each against its own target:
#
#   plain          no digests (header-digest=none), no CHAP
#   header-digest  QEMU asks for HeaderDigest=CRC32C only (header-digest=crc32c),
#                  and the login reply must say HeaderDigest=CRC32C
#   chap           target started with --chap and --mutual-chap; QEMU logs in
#                  with one-way CHAP (QEMU has no option for mutual CHAP), and
#                  libiscsi's iscsi-inq checks the rest: no credentials and a
#                  wrong secret are refused, mutual CHAP with the right target
#                  secret works, with a wrong target secret it is refused.
#
#   tests/qemu-img/roundtrip.sh [--target weft|tgt] [--passes plain,header-digest,chap]
#                               [--block-size 512|4096] [--out DIR]
#
# DataDigest is not tested: libiscsi (so QEMU too) always offers
# DataDigest=None and has no data digest code (docs/conformance.md).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../conformance/targets.sh
. "$here/../conformance/targets.sh"

target=weft passes=plain,header-digest,chap block_size=512 out=
size=256M
step_timeout=${ROUNDTRIP_STEP_TIMEOUT:-300} # seconds per qemu-img command
while [ $# -gt 0 ]; do
	case $1 in
	--target) target=$2; shift 2 ;;
	--passes) passes=$2; shift 2 ;;
	--block-size) block_size=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done
case $target in weft | tgt) ;; *) die "--target must be weft or tgt" ;; esac
command -v qemu-img >/dev/null || die "qemu-img not found: apt-get install qemu-utils qemu-block-extra"
qemu-img --help | grep -qw iscsi || die "qemu-img has no iscsi driver: apt-get install qemu-block-extra"

[ -n "$out" ] || out=$(mktemp -d "${TMPDIR:-/tmp}/weft-roundtrip.XXXXXX")
mkdir -p "$out"
iqn=iqn.2026-11.org.weft:roundtrip
chap_user=weft-initiator chap_secret=initiator-secret-12
mutual_user=weft-target mutual_secret=target-secret-1234

cleanup() {
	weft_stop >/dev/null 2>&1 || true
	tgt_stop
	rm -f "$out/source.raw" "$out/readback.raw"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The random image, made once; its sum is what every read-back must match.
head -c "$size" /dev/urandom >"$out/source.raw" 2>/dev/null ||
	dd if=/dev/urandom of="$out/source.raw" bs=1M count="${size%M}" status=none
want=$(sha256sum "$out/source.raw" | cut -d' ' -f1)

# start_target NAME [chap]: sets PORT, LUN, TIQN and TLOG.
start_target() {
	local name=$1 with_chap=${2:-}
	if [ "$target" = weft ]; then
		local extra=()
		[ -z "$with_chap" ] || extra=(--chap "$chap_user:$chap_secret" --mutual-chap "$mutual_user:$mutual_secret")
		TLOG=$out/$name.weft-gateway.log
		weft_start "$TLOG" --iqn "$iqn" --lun "ram:$size" --block-size "$block_size" "${extra[@]}" || return 1
		PORT=$WEFT_PORT LUN=0 TIQN=$iqn
	else
		local extra=(header-digest=CRC32C,None)
		[ -z "$with_chap" ] || extra+=("chap=$chap_user:$chap_secret" "mutual-chap=$mutual_user:$mutual_secret")
		tgt_start "$out/$name.tgt" "$size" "$block_size" "${extra[@]}" || return 1
		TLOG=$out/$name.tgt/tgtd.log
		PORT=$TGT_PORT LUN=$TGT_LUN TIQN=$TGT_IQN
	fi
}

stop_target() {
	if [ "$target" = weft ]; then weft_stop; else tgt_stop; fi
}

# run_logged LOG CMD...: run with a hard timeout, output to LOG.
run_logged() {
	local log=$1
	shift
	printf '+ %s\n' "$*" >>"$log"
	timeout -k 5 "$step_timeout" "$@" >>"$log" 2>&1
}

# roundtrip NAME OPTS: write and read back through
# --image-opts driver=iscsi,transport=tcp,portal=...,OPTS
roundtrip() {
	local name=$1 opts=$2 log=$out/$1.log got
	local img="driver=iscsi,transport=tcp,portal=127.0.0.1:$PORT,target=$TIQN,lun=$LUN,initiator-name=iqn.2026-11.org.weft:qemu-img${opts:+,$opts}"
	: >"$log"
	# LIBISCSI_DEBUG=6 makes libiscsi log the target's login reply keys.
	LIBISCSI_DEBUG=6 run_logged "$log" qemu-img convert -n -f raw "$out/source.raw" --target-image-opts "$img" ||
		{ fail "$name: qemu-img convert to the LUN failed"; return 1; }
	rm -f "$out/readback.raw"
	run_logged "$log" qemu-img convert --image-opts "$img" -O raw "$out/readback.raw" ||
		{ fail "$name: qemu-img convert from the LUN failed"; return 1; }
	got=$(sha256sum "$out/readback.raw" | cut -d' ' -f1)
	[ "$got" = "$want" ] || { fail "$name: read back sha256 $got, wrote $want"; return 1; }
	msg "$name: 256 MiB written and read back, sha256 $want"
}

failures=()
fail() {
	failures+=("$1")
	msg "FAIL: $1"
}

# login_check NAME EXPECT URL [REASON]: iscsi-inq must succeed (EXPECT=ok),
# or fail (EXPECT=refused) with REASON in its output.
login_check() {
	local name=$1 expect=$2 url=$3 reason=${4:-} rc=0 output
	printf '+ iscsi-inq %s\n' "$url" >>"$out/chap-logins.log"
	output=$(timeout -k 5 60 iscsi-inq -i iqn.2026-11.org.weft:iscsi-inq "$url" 2>&1) || rc=$?
	printf '%s\n' "$output" >>"$out/chap-logins.log"
	if [ "$expect" = ok ] && [ "$rc" -ne 0 ]; then fail "chap: $name: login failed (status $rc): $(tail -n 1 <<<"$output")"; fi
	if [ "$expect" = refused ]; then
		if [ "$rc" -eq 0 ]; then fail "chap: $name: login succeeded but must be refused"
		elif ! grep -qF "$reason" <<<"$output"; then fail "chap: $name: refused, but not with '$reason': $(tail -n 1 <<<"$output")"; fi
	fi
	return 0
}

declare -A took
for pass in ${passes//,/ }; do
	t0=$SECONDS
	case $pass in
	plain)
		start_target plain || { fail "plain: target did not start"; continue; }
		roundtrip plain header-digest=none || true
		stop_target || fail "plain: target did not stop cleanly"
		;;
	header-digest)
		start_target header-digest || { fail "header-digest: target did not start"; continue; }
		if roundtrip header-digest header-digest=crc32c; then
			grep -q 'TargetLoginReply: HeaderDigest=CRC32C' "$out/header-digest.log" ||
				fail "header-digest: the target's login reply did not say HeaderDigest=CRC32C (see $out/header-digest.log)"
		fi
		stop_target || fail "header-digest: target did not stop cleanly"
		;;
	chap)
		start_target chap with-chap || { fail "chap: target did not start"; continue; }
		: >"$out/chap-logins.log"
		base=127.0.0.1:$PORT/$TIQN/$LUN
		login_check "no credentials" refused "iscsi://$base" "Authentication failure"
		login_check "wrong secret" refused "iscsi://$chap_user%wrong-secret-1234@$base" "Authentication failure"
		login_check "one-way" ok "iscsi://$chap_user%$chap_secret@$base"
		login_check "mutual" ok "iscsi://$chap_user%$chap_secret@$base?target_user=$mutual_user&target_password=$mutual_secret"
		login_check "mutual, wrong target secret" refused "iscsi://$chap_user%$chap_secret@$base?target_user=$mutual_user&target_password=not-the-target-secret" "Invalid CHAP_R"
		roundtrip chap "user=$chap_user,password=$chap_secret" || true
		stop_target || fail "chap: target did not stop cleanly"
		;;
	*) die "unknown pass $pass" ;;
	esac
	took[$pass]=$((SECONDS - t0))
	msg "pass $pass done in ${took[$pass]}s"
done

if [ ${#failures[@]} -gt 0 ]; then
	echo "qemu-img round trip against $target: ${#failures[@]} failure(s):"
	printf '    %s\n' "${failures[@]}"
	echo "Logs in $out"
	for f in "$out"/*.log "$out"/*.tgt/tgtd.log; do
		[ -s "$f" ] || continue
		echo "--- last lines of $f"
		tail -n 15 "$f" | sed 's/^/    /'
	done
	exit 1
fi
echo "qemu-img round trip against $target: OK ($passes; logs in $out)"
