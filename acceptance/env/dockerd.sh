#!/usr/bin/env bash
# Makes sure a Docker engine answers on this machine: installs docker.io from the
# machine's own apt sources when missing and starts dockerd by hand (systemd is not
# PID 1 on CI machines). Idempotent; prints nothing on success beyond one line.
set -euo pipefail
log=${PROVISION_DOCKERD_LOG:-/tmp/provision-dockerd.log}

# Static busybox: the acceptance tests import it as a tiny service image.
if ! command -v busybox >/dev/null 2>&1 && [ ! -x /bin/busybox ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq busybox-static >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq busybox-static >/dev/null; }
fi
if docker info >/dev/null 2>&1; then
  echo "dockerd: already running"; exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi
if ! pgrep -x dockerd >/dev/null 2>&1; then
  nohup dockerd >"$log" 2>&1 &
fi
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then echo "dockerd: started"; exit 0; fi
  sleep 1
done
echo "dockerd did not come up; last lines of $log:" >&2
tail -20 "$log" >&2
exit 1
