#!/usr/bin/env bash
# make bench: wall-clock figures for a 3-node local cluster in one run, each as
# seconds and as a ratio to a floor: one host doing `apt-get install docker.io`
# by hand (what any tool must at least spend). Runs on the local driver; needs
# the Docker engine and host image (make env).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/provision}
IMAGE=${PROVISION_HOST_IMAGE:-provision/host:bookworm}
work=$(mktemp -d)
trap 'set +e; "$BIN" destroy "$work/bench.hcl" --state-dir "$work/state" --auto-approve >/dev/null 2>&1; docker rm -f -v provision-bench-floor >/dev/null 2>&1; rm -rf "$work"' EXIT

cat >"$work/bench.hcl" <<'HCL'
variable "workers" { default = 2 }
name = "bench"
driver "local" {}
managers { count = 1 }
workers  { count = var.workers }
HCL

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
run() { # label, then provision args
  local label=$1; shift
  local t0; t0=$(now)
  "$BIN" "$@" --state-dir "$work/state" --auto-approve >"$work/$label.log" 2>&1 || { echo "$label failed:"; tail -30 "$work/$label.log"; exit 1; }
  secs "$t0" "$(now)"
}

echo "floor: one host, apt-get install docker.io by hand ..." >&2
docker run -d --name provision-bench-floor --cap-add ALL --cap-drop SYS_RESOURCE \
  --security-opt seccomp=unconfined --security-opt apparmor=unconfined --security-opt systempaths=unconfined \
  -v /sys/fs/cgroup:/sys/fs/cgroup:ro --tmpfs /run --tmpfs /run/lock -v /var/lib/docker \
  -e container=docker "$IMAGE" /sbin/init >/dev/null
# Wait for systemd to finish booting (as the local driver does) before timing.
for _ in $(seq 1 120); do
  st=$(docker exec provision-bench-floor systemctl is-system-running 2>/dev/null || true)
  case $st in running|degraded) break ;; esac
  sleep 0.5
done
t0=$(now)
docker exec provision-bench-floor sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null'
floor=$(secs "$t0" "$(now)")
docker rm -f -v provision-bench-floor >/dev/null

echo "fresh apply (1 manager + 2 workers) ..." >&2
fresh=$(run fresh apply "$work/bench.hcl")
echo "no-op apply ..." >&2
noop=$(run noop apply "$work/bench.hcl")
echo "scale 3 -> 5 ..." >&2
up=$(run up apply "$work/bench.hcl" -var workers=4)
echo "scale 5 -> 3 ..." >&2
down=$(run down apply "$work/bench.hcl" -var workers=2)
echo "destroy ..." >&2
destroy=$(run destroy destroy "$work/bench.hcl")

printf '\n%-34s %8s %8s\n' "run (3-node local cluster)" "seconds" "x floor"
for row in "floor: apt-get install docker.io:$floor" "fresh apply:$fresh" "no-op apply:$noop" "scale 3 -> 5:$up" "scale 5 -> 3:$down" "destroy:$destroy"; do
  label=${row%:*}; s=${row##*:}
  printf '%-34s %8s %8s\n' "$label" "$s" "$(awk -v s="$s" -v f="$floor" 'BEGIN { printf "%.2f", s / f }')"
done
