#!/usr/bin/env bash
# Build the boot test's disk image, without loop devices or root:
#
#   MBR (syslinux mbr.bin, one active FAT16 partition at 1 MiB)
#   partition: syslinux (ldlinux.sys/.c32), syslinux.cfg, the guest's vmlinuz
#              and boot-initrd.img (whose /init prints WEFT-BOOT-OK, powers off)
#
#   vm-tests/build-boot-image.sh GUEST_DIR     prints the image's path
#
# GUEST_DIR is build-guest.sh's output; the image is cached beside it and
# rebuilt when the guest changes. Needs syslinux, syslinux-common, mtools,
# dosfstools (Debian packages).
set -euo pipefail

guest=${1:?usage: build-boot-image.sh GUEST_DIR}
img=$guest/boot.img
die() { echo "build-boot-image: ERROR: $*" >&2; exit 1; }
for t in syslinux mcopy mkfs.fat; do
	command -v "$t" >/dev/null || die "$t not found (apt-get install syslinux syslinux-common mtools dosfstools)"
done
mbr=/usr/lib/syslinux/mbr/mbr.bin
[ -f "$mbr" ] || die "$mbr not found (apt-get install syslinux-common)"

key=$(cat "$guest/key" "$0" | sha256sum | cut -c1-16)
if [ -f "$img" ] && [ "$(cat "$img.key" 2>/dev/null)" = "$key" ]; then
	echo "$img"
	exit 0
fi

size_mb=64 # the whole disk; the boot LUN is this size
start=2048 # partition start, in 512-byte sectors (1 MiB)
sectors=$(((size_mb * 1024 * 1024) / 512 - start))
work=$(mktemp -d "$guest/bootimg.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The partition: FAT16 with a fixed volume id and file times (syslinux still
# stamps ldlinux.sys with the current time, so the image is not bit-for-bit
# reproducible; the kernel and initramfs inside it are).
truncate -s $((sectors * 512)) "$work/part.img"
mkfs.fat -F 16 -n WEFTBOOT -i 5745f7b0 --invariant "$work/part.img" >/dev/null
cat >"$work/syslinux.cfg" <<'EOF'
SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT weft
LABEL weft
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND console=ttyS0,115200 panic=1 quiet
EOF
export MTOOLS_SKIP_CHECK=1 SOURCE_DATE_EPOCH=0
mcopy -i "$work/part.img" -m "$guest/vmlinuz" ::/vmlinuz
mcopy -i "$work/part.img" -m "$guest/boot-initrd.img" ::/initrd.img
mcopy -i "$work/part.img" -m "$work/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$work/part.img"

# The disk: MBR boot code, one active partition (type 0x0e, FAT16 LBA).
truncate -s $((size_mb * 1024 * 1024)) "$work/disk.img"
dd if="$mbr" of="$work/disk.img" bs=440 count=1 conv=notrunc status=none
le32() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $((($1 >> 8) & 255)) $((($1 >> 16) & 255)) $((($1 >> 24) & 255)); }
# status, CHS first (unused: LBA), type, CHS last (unused), LBA first, count
entry="\\x80\\xfe\\xff\\xff\\x0e\\xfe\\xff\\xff$(le32 $start)$(le32 $sectors)"
# shellcheck disable=SC2059 # $entry is the format: its \x escapes are the bytes
printf "$entry" | dd of="$work/disk.img" bs=1 seek=446 conv=notrunc status=none
printf '\x55\xaa' | dd of="$work/disk.img" bs=1 seek=510 conv=notrunc status=none
dd if="$work/part.img" of="$work/disk.img" bs=1M seek=1 conv=notrunc,sparse status=none

mv "$work/disk.img" "$img"
echo "$key" >"$img.key"
echo "$img"
