#!/usr/bin/env bash
# Build the vm-tests guest from Debian's packages, reproducibly and cached:
#
#   vmlinuz          the kernel of linux-image-amd64 (unpacked, never installed)
#   initrd.img       busybox, the iSCSI/SCSI/ext4/dm-multipath/virtio modules
#                    (closure from modules.dep), iscsiadm + iscsid, mke2fs +
#                    e2fsck, sg3-utils, multipath-tools, their libraries, and
#                    guest/init (the test scenarios, driven by the kernel
#                    command line)
#   boot-initrd.img  busybox + guest/boot-init only: what the boot test's
#                    disk image starts (prints a marker, powers off)
#   manifest.txt     every package and version that went in, and checksums
#
#   vm-tests/build-guest.sh [--print-dir]
#
# The output goes to $WEFT_VM_CACHE/guest (default vm-tests/.cache/guest).
# Downloaded .debs are kept in $WEFT_VM_CACHE/debs; the guest is rebuilt only
# when the package versions, this script or guest/* change. Two builds from the
# same inputs give byte-identical images (sorted cpio, fixed mtimes, gzip -n).
# Needs: apt-get (with package lists; it runs `apt-get update` if they are
# missing), dpkg, gzip. Nothing is installed on the host.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${WEFT_VM_CACHE:-$here/.cache}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
out=$cache/guest
# One build at a time per cache (concurrent runs share pkgroot/ and guest/).
exec 9>"$cache/.lock"
flock -w 900 9 || { echo "build-guest: ERROR: $cache is locked" >&2; exit 1; }
print_dir=0
[ "${1:-}" = --print-dir ] && print_dir=1

log() { echo "build-guest: $*" >&2; }
die() { echo "build-guest: ERROR: $*" >&2; exit 1; }

# Packages whose files go into the guest. Shared libraries not listed here
# are taken from the host, which must be Debian 12 like the guest (ldd
# resolves them; manifest.txt records which host package supplied each).
packages=(
	busybox-static
	open-iscsi libisns0 libopeniscsiusr
	e2fsprogs libext2fs2 libcom-err2 libss2
	sg3-utils libsgutils2-1.46-2
	multipath-tools kpartx libaio1 liburcu8 libdevmapper1.02.1 libjson-c5
)
# Kernel modules the guest loads (plus their dependencies, from modules.dep).
# The crc helpers are requested by the crypto API at run time, which needs a
# modprobe the kernel can call; loading them up front is simpler.
modules=(
	virtio_pci virtio_net
	crc32c_generic crct10dif_generic crc64_rocksoft_generic
	scsi_mod sd_mod sg iscsi_tcp
	ext4
	dm_mod dm_multipath dm_round_robin dm_service_time scsi_dh_alua
)
# Binaries copied from the unpacked packages (guest path = package path).
binaries=(
	/sbin/iscsiadm /sbin/iscsid /sbin/iscsi-iname
	/sbin/mke2fs /sbin/e2fsck
	/usr/bin/sg_persist /usr/bin/sg_inq /usr/bin/sg_turs /usr/bin/sg_readcap /usr/bin/sg_rtpg
	/usr/bin/sg_dd /usr/bin/sg_raw /usr/bin/sg_vpd
	/sbin/multipath /sbin/multipathd /sbin/kpartx
)

# --- 1. package lists and the kernel's real package name ---------------------
if ! apt-cache show busybox-static >/dev/null 2>&1; then
	log "no apt package lists: running apt-get update"
	apt-get update -q >&2 || die "apt-get update failed"
fi
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1)
[ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 to a versioned kernel package"
packages+=("$kpkg")

# --- 2. download what is missing (one .deb per package, candidate version) ---
debs=$cache/debs
mkdir -p "$debs"
# Candidate version of every package, in one apt-cache call.
declare -A ver=()
while read -r p v; do ver[$p]=$v; done < <(apt-cache policy "${packages[@]}" |
	awk '/^[^ ]/ { sub(":$", ""); p = $0 } /^  Candidate:/ { print p, $2 }')
want=()
for p in "${packages[@]}"; do
	v=${ver[$p]:-}
	[ -n "$v" ] && [ "$v" != "(none)" ] || die "package $p has no candidate version"
	ls "$debs/${p}_${v//:/%3a}_"*.deb >/dev/null 2>&1 || want+=("$p=$v")
done
if [ ${#want[@]} -gt 0 ]; then
	log "downloading ${want[*]}"
	# apt's sandbox user cannot write to a root-owned cache: download as is.
	(cd "$debs" && timeout 600 apt-get download -q -o APT::Sandbox::User=root "${want[@]}" >&2) ||
		die "apt-get download failed"
fi
deb_files=()
for p in "${packages[@]}"; do
	v=${ver[$p]}
	# shellcheck disable=SC2012 # .deb names have no odd characters
	f=$(ls "$debs/${p}_${v//:/%3a}_"*.deb 2>/dev/null | head -n1)
	[ -n "$f" ] || die "missing $p $v in $debs"
	deb_files+=("$f")
done

# --- 3. cache key: package versions + the scripts that shape the guest -------
key=$( {
	for f in "${deb_files[@]}"; do basename "$f"; done
	cat "$0" "$here"/guest/*
} | sha256sum | cut -c1-16)
if [ -f "$out/key" ] && [ "$(cat "$out/key")" = "$key" ] && [ -f "$out/initrd.img" ]; then
	log "up to date ($key) in $out"
	[ $print_dir -eq 1 ] && echo "$out"
	exit 0
fi

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
rd=$work/initrd  # the guest's initramfs tree
brd=$work/bootrd # the boot test's initramfs tree
mkdir -p "$rd" "$brd"
# Every package unpacked, kept between builds while the .debs stay the same
# (unpacking the kernel is most of a build's time).
root=$cache/pkgroot
debkey=$(for f in "${deb_files[@]}"; do basename "$f"; done | sha256sum | cut -c1-16)
if [ "$(cat "$root.key" 2>/dev/null)" != "$debkey" ]; then
	log "unpacking ${#deb_files[@]} packages"
	rm -rf "$root" "$root.key"
	mkdir -p "$root"
	for f in "${deb_files[@]}"; do dpkg-deb -x "$f" "$root"; done
	echo "$debkey" >"$root.key"
fi
bb=$root/bin/busybox
[ -x "$bb" ] || die "busybox-static did not provide /bin/busybox"
kver=$(ls "$root/lib/modules")
[ "$(echo "$kver" | wc -l)" -eq 1 ] || die "expected one kernel in $kpkg, found: $kver"

# --- 4. busybox and the directory skeleton -----------------------------------
# populate TREE: busybox with one symlink per applet in /bin.
populate_busybox() {
	local t=$1 a
	mkdir -p "$t"/{bin,sbin,dev,proc,sys,run,tmp,etc,mnt,root,var}
	cp "$bb" "$t/bin/busybox"
	for a in $("$bb" --list); do
		[ "$a" = busybox ] || ln -sf busybox "$t/bin/$a"
	done
}
populate_busybox "$rd"
populate_busybox "$brd"

# --- 5. kernel modules: closure from modules.dep, in load order --------------
mods=$work/mods
mkdir -p "$mods/lib"
cp -a "$root/lib/modules" "$mods/lib/"
"$bb" depmod -b "$mods" "$kver" || die "busybox depmod failed"
mdir=$mods/lib/modules/$kver
# path_of NAME: the module's path relative to $mdir (- and _ are the same).
path_of() {
	local n=${1//_/[-_]}
	grep -o "^[^:]*/${n}\.ko" "$mdir/modules.dep" | head -n1
}
declare -A seen=()
order=()
# visit PATH: depth-first, dependencies before the module (post-order).
visit() {
	local p=$1 d
	[ -n "${seen[$p]:-}" ] && return 0
	seen[$p]=1
	# shellcheck disable=SC2013 # the dependencies are words on one line
	for d in $(sed -n "s|^$p: *||p" "$mdir/modules.dep"); do visit "$d"; done
	order+=("$p")
}
for m in "${modules[@]}"; do
	p=$(path_of "$m")
	[ -n "$p" ] || die "module $m not in $kpkg"
	visit "$p"
done
mkdir -p "$rd/lib/modules/$kver" "$rd/etc/weft"
: >"$rd/etc/weft/modules"
for p in "${order[@]}"; do
	mkdir -p "$rd/lib/modules/$kver/$(dirname "$p")"
	cp "$mdir/$p" "$rd/lib/modules/$kver/$p"
	echo "/lib/modules/$kver/$p" >>"$rd/etc/weft/modules"
done
cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"

# --- 6. binaries and every library they (and multipath's plugins) need -------
libpath=$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu:$root/lib
mkdir -p "$rd/lib/x86_64-linux-gnu" "$rd/lib64" "$rd/usr/bin" "$rd/sbin"
host_libs=()
# copy_libs ELF: copy its libraries (resolved by ldd, unpacked ones first).
copy_libs() {
	local l
	LD_LIBRARY_PATH=$libpath ldd "$1" | grep -q 'not found' &&
		die "$1: $(LD_LIBRARY_PATH=$libpath ldd "$1" | grep 'not found' | tr -s ' \t' ' ')"
	for l in $(LD_LIBRARY_PATH=$libpath ldd "$1" | grep -o '/[^ ]*'); do
		case $l in
		*/ld-linux-x86-64.so.2) dst=$rd/lib64/ld-linux-x86-64.so.2 ;;
		*) dst=$rd/lib/x86_64-linux-gnu/$(basename "$l") ;;
		esac
		[ -f "$dst" ] && continue
		cp -L "$l" "$dst"
		case $l in "$root"/*) ;; *) host_libs+=("$l") ;; esac
	done
}
for b in "${binaries[@]}"; do
	[ -f "$root$b" ] || die "$b is in none of the packages"
	mkdir -p "$rd$(dirname "$b")"
	cp -L "$root$b" "$rd$b"
	copy_libs "$root$b"
done
# multipath loads checkers/prioritizers/foreign libraries with dlopen from
# its compiled-in plugin directory, /lib/multipath.
mkdir -p "$rd/lib/multipath"
for so in "$root"/lib/multipath/*.so; do
	cp -L "$so" "$rd/lib/multipath/"
	copy_libs "$so"
done
# Configuration the tools expect.
mkdir -p "$rd/etc/iscsi" "$rd/var/lib/iscsi" "$rd/etc/multipath"
cp "$root/etc/iscsi/iscsid.conf" "$rd/etc/iscsi/iscsid.conf"
[ -f "$root/etc/mke2fs.conf" ] && cp "$root/etc/mke2fs.conf" "$rd/etc/"
echo "root:x:0:0:root:/root:/bin/sh" >"$rd/etc/passwd"
echo "root:x:0:" >"$rd/etc/group"

# --- 7. the init scripts -----------------------------------------------------
install -m 0755 "$here/guest/init" "$rd/init"
install -m 0755 "$here/guest/boot-init" "$brd/init"

# --- 8. pack: sorted, fixed mtimes, no gzip name/time -> reproducible --------
# newc headers also carry the source files' inode and device numbers: number
# the inodes 1, 2, 3... and zero the device (perl-base is always there).
normalize_newc() {
	perl -e '
		binmode STDIN; binmode STDOUT; $/ = \110; my $n = 0;
		while (defined(my $h = <STDIN>)) {
			die "not newc\n" unless substr($h, 0, 6) eq "070701";
			my $fsize = hex(substr($h, 54, 8)); my $nsize = hex(substr($h, 94, 8));
			substr($h, 6, 8) = sprintf("%08X", ++$n);
			substr($h, 62, 16) = "0" x 16;
			my $nl = (($nsize + 110 + 3) & ~3) - 110; my $dl = ($fsize + 3) & ~3;
			read(STDIN, my $name, $nl); read(STDIN, my $data, $dl);
			print $h, $name, $data;
			last if substr($name, 0, 10) eq "TRAILER!!!";
		}'
}
# pack TREE OUT
pack() {
	(
		cd "$1"
		find . -exec touch -h -d @0 {} +
		find . | LC_ALL=C sort | "$bb" cpio -o -H newc 2>/dev/null
	) | normalize_newc | gzip -n -9 >"$2"
}
pack "$rd" "$work/initrd.img"
pack "$brd" "$work/boot-initrd.img"

{
	echo "# vm-tests guest $key, kernel $kver"
	echo "# packages unpacked into the guest:"
	for f in "${deb_files[@]}"; do basename "$f"; done
	echo "# libraries taken from the host (package: file):"
	for l in $(printf '%s\n' "${host_libs[@]}" | sort -u); do
		echo "$(dpkg -S "$(readlink -f "$l")" 2>/dev/null | cut -d: -f1-2 | head -n1 || echo '?'): $l"
	done
	echo "# modules (load order):"
	cat "$rd/etc/weft/modules"
	echo "# sha256:"
	(cd "$work" && sha256sum vmlinuz initrd.img boot-initrd.img)
} >"$work/manifest.txt"

rm -rf "$out.new"
mkdir -p "$out.new"
mv "$work/vmlinuz" "$work/initrd.img" "$work/boot-initrd.img" "$work/manifest.txt" "$out.new/"
echo "$key" >"$out.new/key"
rm -rf "$out"
mv "$out.new" "$out"
log "built $out ($(du -sh "$out/initrd.img" | cut -f1) initrd, kernel $kver)"
[ $print_dir -eq 1 ] && echo "$out"
exit 0
