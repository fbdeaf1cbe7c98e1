#!/usr/bin/env bash
# Builds the local driver's host image from Debian bookworm with debootstrap (no
# registry needed) and imports it into the Docker engine as $IMAGE.
#
# The image is a plain systemd host: sshd enabled, no SSH host keys (the driver
# generates one per host and injects it before the container starts, so the key is
# pinned before the first connection), container=docker for systemd (the driver sets SIGRTMIN+3
# as the stop signal on each container, so systemd shuts down cleanly).
set -euo pipefail
IMAGE=${1:-${PROVISION_HOST_IMAGE:-provision/host:bookworm}}
SUITE=${SUITE:-bookworm}
CACHE=${PROVISION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/provision}

if docker image inspect "$IMAGE" >/dev/null 2>&1 && [ -z "${FORCE:-}" ]; then
  echo "host image $IMAGE: present (FORCE=1 rebuilds)"; exit 0
fi
command -v debootstrap >/dev/null 2>&1 || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
}

root=$(mktemp -d "${TMPDIR:-/tmp}/provision-rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$CACHE/debootstrap"
echo "host image $IMAGE: debootstrap $SUITE (about a minute)"
debootstrap --variant=minbase --cache-dir="$CACHE/debootstrap" \
  --include=openssh-server,systemd,systemd-sysv,dbus,iproute2,ca-certificates,curl,sudo,procps,kmod,iptables,nftables \
  "$SUITE" "$root" >"$root.log" 2>&1 || { tail -30 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

# Same apt sources as the machine that built the image: the host reaches the same mirror.
# No host keys in the image: each host gets its own from the driver.
rm -f "$root"/etc/ssh/ssh_host_*
# Units that make no sense in a container and slow boot or fail.
for u in getty@tty1.service serial-getty@.service systemd-udevd.service systemd-udev-trigger.service \
         systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount \
         systemd-remount-fs.service systemd-firstboot.service e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$u"
done
ln -sf /lib/systemd/system/ssh.service "$root/etc/systemd/system/multi-user.target.wants/ssh.service"
echo "" >"$root/etc/machine-id"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

tar -C "$root" -c . | docker import \
  --change 'ENV container=docker' \
  --change 'CMD ["/sbin/init"]' \
  - "$IMAGE" >/dev/null
echo "host image $IMAGE: built"
