#!/usr/bin/env bash
# Builds (once) a small Debian 12 cloud-like base image for the libvirt VM tests and puts it
# in a libvirt storage pool, so that a spec names it as a volume:
#   pool "provision-acc" (a dir pool on $PROVISION_LIBVIRT_CACHE, default /var/cache/provision/libvirt)
#   volume "debian-12-provision.qcow2": MBR disk, one ext4 partition (LABEL=rootfs) with extlinux,
#   linux-image-amd64, systemd, openssh-server, cloud-init (NoCloud only, manages /etc/hosts),
#   sudo, locales and python3-cffi-backend (cloud-init fails without the last two).
# The image is rebuilt only when this script changes (its sha256 is stamped beside the image);
# debootstrap's downloads are cached too. The host kernel cannot scan partition tables of loop
# files, so the filesystem is made with `mkfs.ext4 -d` at the partition's offset and extlinux is
# installed through a loop device at that offset. Needs acceptance/env/libvirt.sh daemon first.
# Prints the volume name on success.
set -euo pipefail
cache=${PROVISION_LIBVIRT_CACHE:-/var/cache/provision/libvirt}
pool=${PROVISION_LIBVIRT_POOL:-provision-acc}
name=debian-12-provision.qcow2
uri=qemu:///system
build=$cache/build
stamp=$cache/$name.sha256
want=$(sha256sum "$0" | cut -d' ' -f1)
mkdir -p "$cache" "$build"

# The pool first: a dir pool on the cache directory, persistent and started.
if ! virsh -c "$uri" pool-info "$pool" >/dev/null 2>&1; then
  virsh -c "$uri" pool-define-as "$pool" dir --target "$cache" >/dev/null
  virsh -c "$uri" pool-autostart "$pool" >/dev/null
fi
if [ "$(virsh -c "$uri" pool-info "$pool" | awk '/^State:/{print $2}')" != running ]; then
  virsh -c "$uri" pool-start "$pool" >/dev/null
fi

if [ -s "$cache/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  virsh -c "$uri" pool-refresh "$pool" >/dev/null
  echo "$name"; exit 0
fi

t0=$(date +%s)
rootfs=$build/rootfs
rm -rf "$rootfs"
mkdir -p "$build/debs"
# No mirror argument: debootstrap's default. python3-cffi-backend must be named (debootstrap
# ignores virtual packages and cloud-init then fails to configure).
debootstrap --variant=minbase --cache-dir="$build/debs" \
  --include=python3-cffi-backend,linux-image-amd64,systemd-sysv,udev,kmod,dbus,openssh-server,cloud-init,cloud-guest-utils,sudo,ca-certificates,ifupdown,isc-dhcp-client,iproute2,netbase,procps,zstd,locales \
  bookworm "$rootfs" >"$build/debootstrap.log" 2>&1 || { tail -40 "$build/debootstrap.log" >&2; exit 1; }

sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' "$rootfs/etc/locale.gen"
chroot "$rootfs" locale-gen >/dev/null
chroot "$rootfs" update-locale LANG=en_US.UTF-8
echo 'LABEL=rootfs / ext4 errors=remount-ro 0 1' >"$rootfs/etc/fstab"
echo debian >"$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
printf 'auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n' >"$rootfs/etc/network/interfaces"
# Like a cloud image: only the NoCloud seed is read (no metadata address is probed), and
# cloud-init keeps /etc/hosts naming the host (sudo resolves it).
cat >"$rootfs/etc/cloud/cloud.cfg.d/90-provision-image.cfg" <<'CFG'
datasource_list: [ NoCloud, None ]
manage_etc_hosts: true
CFG
: >"$rootfs/etc/machine-id"; rm -f "$rootfs/var/lib/dbus/machine-id"
rm -f "$rootfs"/etc/ssh/ssh_host_*
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
kver=$(ls "$rootfs"/boot/vmlinuz-* | sed 's#.*/vmlinuz-##' | sort -V | tail -1)
mkdir -p "$rootfs/boot/extlinux"
cat >"$rootfs/boot/extlinux/extlinux.conf" <<CFG
SERIAL 0 115200
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  KERNEL /boot/vmlinuz-$kver
  APPEND initrd=/boot/initrd.img-$kver root=LABEL=rootfs ro console=tty0 console=ttyS0,115200n8
CFG

raw=$build/base.raw
rm -f "$raw"; truncate -s 4G "$raw"
echo 'start=2048, type=83, bootable' | sfdisk -q "$raw"
off=$((2048 * 512)); size=$(($(stat -c %s "$raw") - off))
# ^64bit: extlinux reads the filesystem.
mkfs.ext4 -q -F -L rootfs -O ^64bit -E offset=$off -d "$rootfs" "$raw" $((size / 1024))k
loop=$(losetup -f --show -o $off --sizelimit $size "$raw")
trap 'umount "$build/mnt" 2>/dev/null || true; losetup -d "$loop" 2>/dev/null || true' EXIT
mkdir -p "$build/mnt"; mount "$loop" "$build/mnt"
extlinux --install "$build/mnt/boot/extlinux" 2>/dev/null
umount "$build/mnt"; losetup -d "$loop"; trap - EXIT
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
qemu-img convert -f raw -O qcow2 "$raw" "$cache/$name.tmp"
mv "$cache/$name.tmp" "$cache/$name"
rm -rf "$raw" "$rootfs"
echo "$want" >"$stamp"
virsh -c "$uri" pool-refresh "$pool" >/dev/null
echo "built $cache/$name (kernel $kver) in $(($(date +%s) - t0)) s" >&2
echo "$name"
