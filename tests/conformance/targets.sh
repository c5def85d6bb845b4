# shellcheck shell=bash
# Start and stop iSCSI targets on loopback for the test and bench scripts.
# Source it; it defines functions and variables, runs nothing.
#
#   weft_start LOG ARGS...   start target/release/weft-gateway (ARGS after
#                            --portal) on a free port; sets WEFT_PID, WEFT_PORT
#   weft_stop                SIGTERM, wait; fails if it does not exit 0
#   tgt_start DIR SIZE BS [tgt options]
#                            start a private tgtd (own IPC socket, own port)
#                            with one disk LUN backed by a file on tmpfs;
#                            sets TGT_PID, TGT_PORT, TGT_IQN, TGT_LUN
#   tgt_stop                 stop it and delete the backing file
#
# Everything listens on 127.0.0.1 only.

: "${WEFT_ROOT:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
: "${WEFT_GATEWAY:=$WEFT_ROOT/target/release/weft-gateway}"
: "${TARGET_START_TIMEOUT:=30}" # seconds to wait for a portal to listen
: "${TARGET_STOP_TIMEOUT:=15}"  # seconds to wait for a clean exit

msg() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { msg "error: $*"; exit 2; }

# Exits with status 0 if something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prints a port in 20000-59999 that nothing listens on.
free_port() {
	local p i
	for i in $(seq 1 100); do
		# Below Linux's ephemeral range (32768-60999): an outgoing
		# connection cannot take the port between this check and the bind.
		p=$((20000 + (RANDOM * 32768 + RANDOM) % 12768))
		port_open "$p" || { echo "$p"; return 0; }
	done
	die "no free port found"
}

# wait_listen PORT PID LOG: wait until PORT accepts connections, failing
# early (with the log) if PID dies.
wait_listen() {
	local port=$1 pid=$2 log=$3 deadline=$((SECONDS + TARGET_START_TIMEOUT))
	while ! port_open "$port"; do
		if ! kill -0 "$pid" 2>/dev/null; then
			msg "the target (pid $pid) exited before listening on 127.0.0.1:$port; its log ($log):"
			tail -n 40 "$log" >&2
			return 1
		fi
		if ((SECONDS >= deadline)); then
			msg "nothing listens on 127.0.0.1:$port after ${TARGET_START_TIMEOUT}s; log ($log):"
			tail -n 40 "$log" >&2
			return 1
		fi
		sleep 0.1
	done
}

# stop_pid PID NAME: SIGTERM, wait up to TARGET_STOP_TIMEOUT, then SIGKILL.
# Returns the process's exit status, or 124 if it had to be killed.
stop_pid() {
	local pid=$1 name=$2 deadline=$((SECONDS + TARGET_STOP_TIMEOUT)) rc
	kill -TERM "$pid" 2>/dev/null || true
	while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
	if kill -0 "$pid" 2>/dev/null; then
		msg "$name (pid $pid) still runs ${TARGET_STOP_TIMEOUT}s after SIGTERM: killing it"
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		return 124
	fi
	wait "$pid" 2>/dev/null && rc=0 || rc=$?
	return "$rc"
}

WEFT_PID=
WEFT_PORT=
WEFT_LOG=

# weft_start LOG ARGS...: ARGS are the gateway's arguments after --portal.
weft_start() {
	WEFT_LOG=$1
	shift
	[ -x "$WEFT_GATEWAY" ] || die "$WEFT_GATEWAY does not exist: run 'cargo build --release -p iscsi-target' first"
	WEFT_PORT=$(free_port)
	msg "starting $WEFT_GATEWAY --portal 127.0.0.1:$WEFT_PORT $* (log: $WEFT_LOG)"
	NO_COLOR=1 RUST_BACKTRACE=1 "$WEFT_GATEWAY" --portal "127.0.0.1:$WEFT_PORT" "$@" >"$WEFT_LOG" 2>&1 &
	WEFT_PID=$!
	if ! wait_listen "$WEFT_PORT" "$WEFT_PID" "$WEFT_LOG"; then
		stop_pid "$WEFT_PID" weft-gateway || true
		WEFT_PID=
		return 1
	fi
}

# weft_stop: stops the gateway; fails unless it exits with status 0 on
# SIGTERM (the gateway's contract), after printing the end of its log.
weft_stop() {
	[ -n "$WEFT_PID" ] || return 0
	local pid=$WEFT_PID rc=0
	WEFT_PID=
	if ! kill -0 "$pid" 2>/dev/null; then
		wait "$pid" 2>/dev/null && rc=0 || rc=$?
		msg "weft-gateway (pid $pid) had already exited (status $rc) before it was asked to stop; end of its log ($WEFT_LOG):"
		tail -n 40 "$WEFT_LOG" >&2
		return 1
	fi
	stop_pid "$pid" weft-gateway || rc=$?
	if [ "$rc" -ne 0 ]; then
		msg "weft-gateway did not exit cleanly on SIGTERM (status $rc); end of its log ($WEFT_LOG):"
		tail -n 40 "$WEFT_LOG" >&2
		return 1
	fi
}

TGT_PID=
TGT_PORT=
TGT_DIR=
TGT_IMG=
TGT_IQN=iqn.2026-11.org.weft:tgt-reference
TGT_LUN=1 # tgt's LUN 0 is its controller; the disk is LUN 1

# tgtadm with the private instance's IPC socket.
tgt_adm() { TGT_IPC_SOCKET="$TGT_DIR/ipc" tgtadm -C 0 --lld iscsi "$@"; }

# tgt_start DIR SIZE BLOCKSIZE [OPTION...]
#   OPTION: chap=USER:SECRET  mutual-chap=USER:SECRET  header-digest=VALUES
#   (e.g. header-digest=CRC32C,None; tgt's default is None only)
# The backing file is sparse, on tmpfs (/dev/shm), with thin provisioning on
# (tgt then answers UNMAP by punching holes, like weft's RAM backend).
tgt_start() {
	TGT_DIR=$1
	local size=$2 bs=$3 opt user secret
	shift 3
	command -v tgtd >/dev/null || die "tgtd not found: apt-get install tgt"
	mkdir -p "$TGT_DIR"
	TGT_IMG=$(mktemp /dev/shm/weft-tgt.XXXXXX.img)
	truncate -s "$size" "$TGT_IMG"
	TGT_PORT=$(free_port)
	msg "starting tgtd on 127.0.0.1:$TGT_PORT, LUN $TGT_LUN = $TGT_IMG ($size, ${bs}-byte blocks, thin), log: $TGT_DIR/tgtd.log"
	# -f: foreground. The IPC socket is private (TGT_IPC_SOCKET), so this
	# neither needs nor disturbs a system tgtd.
	TGT_IPC_SOCKET="$TGT_DIR/ipc" tgtd -f -C 0 --iscsi "portal=127.0.0.1:$TGT_PORT" >"$TGT_DIR/tgtd.log" 2>&1 &
	TGT_PID=$!
	wait_listen "$TGT_PORT" "$TGT_PID" "$TGT_DIR/tgtd.log" || { tgt_stop; return 1; }
	{
		tgt_adm --mode target --op new --tid 1 --targetname "$TGT_IQN" &&
			tgt_adm --mode logicalunit --op new --tid 1 --lun "$TGT_LUN" --backing-store "$TGT_IMG" --blocksize "$bs" &&
			tgt_adm --mode logicalunit --op update --tid 1 --lun "$TGT_LUN" --params thin_provisioning=1 &&
			tgt_adm --mode target --op bind --tid 1 --initiator-address ALL
	} >>"$TGT_DIR/tgtd.log" 2>&1 || { msg "configuring tgtd failed:"; tail -n 20 "$TGT_DIR/tgtd.log" >&2; tgt_stop; return 1; }
	for opt in "$@"; do
		case $opt in
		chap=* | mutual-chap=*)
			user=${opt#*=}; secret=${user#*:}; user=${user%%:*}
			tgt_adm --mode account --op new --user "$user" --password "$secret" &&
				if [ "${opt%%=*}" = chap ]; then
					tgt_adm --mode account --op bind --tid 1 --user "$user"
				else
					tgt_adm --mode account --op bind --tid 1 --user "$user" --outgoing
				fi
			;;
		header-digest=*)
			tgt_adm --mode target --op update --tid 1 --name HeaderDigest --value "${opt#*=}"
			;;
		*) die "tgt_start: unknown option $opt" ;;
		esac >>"$TGT_DIR/tgtd.log" 2>&1 || { msg "tgt option $opt failed"; tgt_stop; return 1; }
	done
}

tgt_stop() {
	if [ -n "$TGT_PID" ]; then
		# tgtd ignores SIGTERM; it quits on "delete system", which it
		# refuses while a target exists.
		tgt_adm --mode target --op delete --tid 1 --force >/dev/null 2>&1 || true
		TGT_IPC_SOCKET="$TGT_DIR/ipc" tgtadm -C 0 --mode system --op delete >/dev/null 2>&1 || true
		stop_pid "$TGT_PID" tgtd || true
		TGT_PID=
	fi
	if [ -n "$TGT_IMG" ]; then rm -f "$TGT_IMG"; TGT_IMG=; fi
}
