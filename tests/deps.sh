#!/usr/bin/env bash
# Installs the Debian packages the tests need, if any is missing. Called by
# tests/run.sh (so the README's test command works on a fresh machine) and
# safe to run again. Needs root or password-less sudo to install; otherwise
# it prints the apt-get command to run and fails.
set -euo pipefail

# What each package is for:
#   libiscsi-bin      iscsi-test-cu (conformance suite), iscsi-inq, iscsi-ls, iscsi-perf
#   qemu-utils        qemu-img (data round trips)
#   qemu-block-extra  QEMU's iscsi:// block driver (libiscsi)
#   tgt               the reference target (conformance --target tgt, benches)
#   sg3-utils, fio    manual checks and benches/bench.sh
#   qemu-system-x86   vm-tests: the open-iscsi guest and the VMs booting from a LUN
#   syslinux, syslinux-common, mtools, dosfstools   vm-tests: the bootable disk image
#   ca-certificates, git, build-essential, pkg-config: cargo and crates
packages=(
	libiscsi-bin qemu-utils qemu-block-extra tgt sg3-utils fio
	qemu-system-x86 syslinux syslinux-common mtools dosfstools
	ca-certificates git build-essential pkg-config
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# QEMU's iscsi driver must come with the qemu-img of the same version:
# an image that ships a newer qemu-utils alone (10.x from backports, seen
# on these machines) loses it when qemu-block-extra 7.2 comes in, unless
# both are installed together (a downgrade of qemu-utils).
if ! qemu-img --help 2>/dev/null | grep -qw iscsi; then
	[[ " ${missing[*]} " == *" qemu-block-extra "* ]] || missing+=(qemu-block-extra)
	[[ " ${missing[*]} " == *" qemu-utils "* ]] || missing+=(qemu-utils)
fi
[ ${#missing[@]} -gt 0 ] || exit 0

sudo=
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
		sudo="sudo -n"
	else
		echo "tests/deps.sh: missing packages; run: sudo apt-get install -y ${missing[*]}" >&2
		exit 2
	fi
fi
echo "tests/deps.sh: installing ${missing[*]}"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --allow-downgrades "${missing[@]}"
