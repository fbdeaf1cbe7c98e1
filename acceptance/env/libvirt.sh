#!/usr/bin/env bash
# Makes sure libvirt is usable on this machine, from the machine's own apt sources.
#   libvirt.sh lib     what the operator's side of the driver needs: the client library (libvirt0)
#                      and genisoimage (NoCloud seeds); also all that `go test ./drivers/libvirt/`
#                      needs for its test:///default unit tests (make env runs this)
#   libvirt.sh daemon  also QEMU, the daemons and the image tools, and starts virtlogd and
#                      libvirtd by hand (systemd is not PID 1 on CI machines); what the VM
#                      acceptance test needs (make acceptance-libvirt runs this)
# Idempotent; prints one line per part on success.
set -euo pipefail
what=${1:-daemon}
export DEBIAN_FRONTEND=noninteractive
log=${PROVISION_LIBVIRT_LOG:-/tmp/provision-libvirt-apt.log}

updated=
install() { # packages whose status is not "installed" are installed
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ -z "$updated" ]; then apt-get update -qq >>"$log" 2>&1; updated=1; fi
  apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$log" 2>&1 || {
    echo "apt-get install ${missing[*]} failed; last lines of $log:" >&2; tail -20 "$log" >&2; exit 1; }
}

install libvirt0 genisoimage
echo "libvirt: libvirt0 $(dpkg-query -W -f='${Version}' libvirt0), genisoimage"
[ "$what" = lib ] && exit 0
[ "$what" = daemon ] || { echo "usage: $0 lib|daemon" >&2; exit 2; }

# The daemon and QEMU (TCG works without /dev/kvm), qemu-img, and what the base
# image build needs: debootstrap, sfdisk (fdisk), mkfs.ext4 -d, extlinux and the
# syslinux MBR.
install libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils \
  debootstrap e2fsprogs fdisk extlinux syslinux-common dnsmasq-base
# Without udev nothing applies the packaged rule that makes /dev/kvm root:kvm 0660. A /dev/kvm
# that libvirt's QEMU user cannot open while QEMU probed as root with KVM makes libvirtd think its
# capability cache is stale on every call ("KVM was enabled when probing ... but it is not
# available now"): each define/start then re-probes QEMU (seconds to minutes). Apply the rule.
if [ -c /dev/kvm ] && [ "$(stat -c %G:%a /dev/kvm)" != kvm:660 ]; then
  chgrp kvm /dev/kvm && chmod 660 /dev/kvm
fi
mkdir -p /run/libvirt
if ! pgrep -x virtlogd >/dev/null; then /usr/sbin/virtlogd -d; fi
if ! pgrep -x libvirtd >/dev/null; then /usr/sbin/libvirtd -d; fi
for _ in $(seq 1 100); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
virsh -c qemu:///system version >/dev/null || { echo "libvirtd does not answer on qemu:///system" >&2; exit 1; }
# libvirt's default NAT network (192.168.122.0/24) is never used by provision's tests.
virsh -c qemu:///system net-autostart default --disable >/dev/null 2>&1 || true
echo "libvirt: libvirtd $(virsh -c qemu:///system version | sed -n 's/.*Running hypervisor: //p') running (pid $(pgrep -x libvirtd))"
