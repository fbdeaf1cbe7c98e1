#!/usr/bin/env bash
# Builds a "golden" host image: the local driver's host image ($BASE, built by
# build.sh) with the engine package and the packages the default hardening
# profile needs already installed, as a fleet built from a Packer image or a
# provider snapshot would have them. `provision apply` finds them in place:
# engine.install has nothing to install when the installed engine matches the
# spec's pin, and the other steps configure, restart and harden as on any host.
#
# The acceptance tests that are about scaling, replacing and restoring rather
# than installing build their hosts from it (the package transaction is most of
# a fresh host's time); the tests of the install itself use $BASE.
#
#   engine.sh [IMAGE [PACKAGES...]]
set -euo pipefail
BASE=${PROVISION_HOST_IMAGE:-provision/host:bookworm}
IMAGE=${1:-provision/host:bookworm-engine}
shift || true
# docker.io and the packages of hardening { profile = "default" }: nftables
# (firewall), unattended-upgrades (updates), auditd (audit), and the login
# step's libpam-pwquality, libpam-tmpdir, debsums, acct (hostos.LoginPackages).
PKGS=("$@")
[ ${#PKGS[@]} -gt 0 ] || PKGS=(docker.io nftables unattended-upgrades auditd libpam-pwquality libpam-tmpdir debsums acct)

base_id=$(docker image inspect -f '{{.Id}}' "$BASE")
if have=$(docker image inspect -f '{{index .Config.Labels "provision.base"}}' "$IMAGE" 2>/dev/null) &&
  [ "$have" = "$base_id" ] && [ -z "${FORCE:-}" ]; then
  echo "host image $IMAGE: present (FORCE=1 rebuilds)"; exit 0
fi
echo "host image $IMAGE: $BASE with ${PKGS[*]}"
name=provision-engine-image-$$
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
# No systemd runs here, so the packages' scripts start nothing; the engine
# first starts when a host boots from the image (with the distro's defaults,
# until apply writes its TLS settings and restarts it).
docker run --name "$name" "$BASE" sh -c "
  set -e
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends ${PKGS[*]} >/dev/null
  apt-get clean
  rm -rf /var/lib/apt/lists/* /var/lib/docker/* /etc/ssh/ssh_host_*
  : >/etc/machine-id
" >/dev/null
docker commit \
  --change 'ENV container=docker' \
  --change 'CMD ["/sbin/init"]' \
  --change "LABEL provision.base=$base_id" \
  "$name" "$IMAGE" >/dev/null
echo "host image $IMAGE: built"
