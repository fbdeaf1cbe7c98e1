#!/usr/bin/env bash
# make bench: wall-clock figures for local clusters in one run, each as seconds
# and as a ratio to the floor measured in the same run: three fresh hosts doing
# `apt-get update && apt-get install --no-install-recommends docker.io` by hand
# at once (what any tool must at least spend on a 3-node cluster). Runs on the
# local driver; needs the Docker engine and the host image (make env). Heavy:
# run it under the shared lock (flock /tmp/provision-docker.lock make bench).
#
# BENCH_ONLY="fresh ten" runs only the named groups (the floor always runs): pkgs (the floor
# with the hardening profile's packages), fresh-off, fresh (hardened 3 nodes, no-op, destroy),
# audit and scale (3 -> 5 -> 3) inside fresh, golden (hardened 3 nodes from the golden image:
# the engine and packages preinstalled), ten (hardened 3+7 nodes, no-op, destroy).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/provision}
IMAGE=${PROVISION_HOST_IMAGE:-provision/host:bookworm}
ONLY=${BENCH_ONLY:-}
work=$(mktemp -d)
floors=(provision-bench-floor-1 provision-bench-floor-2 provision-bench-floor-3)
cleanup() {
  set +e
  for f in "$work"/*.hcl; do
    [ -e "$f" ] && "$BIN" destroy "$f" --state-dir "$work/state-$(basename "$f" .hcl)" --auto-approve >/dev/null 2>&1
  done
  docker rm -f -v "${floors[@]}" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

spec() { # name managers workers profile
  cat >"$work/$1.hcl" <<HCL
variable "managers" { default = $2 }
variable "workers" { default = $3 }
name = "$1"
driver "local" {}
managers { count = var.managers }
workers  { count = var.workers }
hardening { profile = "$4" }
HCL
}
spec bench 1 2 default
spec benchoff 1 2 off
spec bench10 3 7 default
# The same 3 hardened nodes from the golden image (drivers/local/image/engine.sh:
# the engine and the profile's packages already installed, as hosts from a
# Packer image or a provider snapshot come).
spec benchgold 1 2 default
sed -i 's|^driver "local" {}|driver "local" { image = "'"${PROVISION_ENGINE_IMAGE:-provision/host:bookworm-engine}"'" }|' "$work/benchgold.hcl"

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
want() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }
rows=()
run() { # row label, spec, then provision args
  local label=$1 name=$2; shift 2
  local t0 t1; t0=$(now)
  "$BIN" "$@" "$work/$name.hcl" --state-dir "$work/state-$name" --auto-approve --json >"$work/$label.events" 2>"$work/$label.log" ||
    { echo "$label failed:" >&2; tail -30 "$work/$label.log" >&2; exit 1; }
  t1=$(now)
  rows+=("$label|$(secs "$t0" "$t1")")
  echo "  $label: $(secs "$t0" "$t1") s (load $(load))" >&2
}
steps() { # the slowest steps of a run, from its events (needs jq)
  command -v jq >/dev/null || return 0
  echo "slowest steps in $1 (host, step, seconds):"
  jq -r 'select(.kind == "step_changed" or .kind == "step_done") | select(.took_ns != null) | [.host, .step, (.took_ns / 1e9 * 10 | round / 10)] | @tsv' "$work/$1.events" |
    sort -t$'\t' -k3 -rn | head -12 | sed 's/^/  /'
  echo "phases in $1:"
  jq -r 'select(.kind == "phase_end") | "  \(.phase) \(.took_ns / 1e9 * 10 | round / 10)"' "$work/$1.events" | paste -sd' '
}

# floor LABEL PACKAGES...: three fresh hosts install PACKAGES by hand, at once.
floor_run() {
  local label=$1; shift
  local pkgs="$*"
  echo "$label ..." >&2
  for f in "${floors[@]}"; do
    docker run -d --name "$f" --cap-add ALL --cap-drop SYS_RESOURCE \
      --security-opt seccomp=unconfined --security-opt apparmor=unconfined --security-opt systempaths=unconfined \
      -v /sys/fs/cgroup:/sys/fs/cgroup:ro --tmpfs /run --tmpfs /run/lock -v /var/lib/docker \
      -e container=docker "$IMAGE" /sbin/init >/dev/null
  done
  # Wait for systemd to finish booting (as the local driver does) before timing.
  for f in "${floors[@]}"; do
    for _ in $(seq 1 120); do
      st=$(docker exec "$f" systemctl is-system-running 2>/dev/null || true)
      case $st in running|degraded) break ;; esac
      sleep 0.5
    done
  done
  local t0 pids=() p
  t0=$(now)
  for f in "${floors[@]}"; do
    docker exec "$f" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >/dev/null" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  last=$(secs "$t0" "$(now)")
  rows+=("$label|$last")
  echo "  $label: $last s (load $(load))" >&2
  docker rm -f -v "${floors[@]}" >/dev/null
}

echo "load at start: $(load)" >&2
floor_run "floor: 3 hosts apt-get install docker.io" docker.io
floor=$last
if want pkgs; then
  # The same, with every package the default hardening profile installs, in one transaction.
  floor_run "  the same + hardening's packages" docker.io nftables unattended-upgrades auditd libpam-pwquality libpam-tmpdir debsums acct
fi

if want fresh-off; then
  run "fresh, hardening off (3 nodes)" benchoff apply
  run "destroy, hardening off" benchoff destroy
fi
if want fresh; then
  run "fresh, hardened (3 nodes)" bench apply
  run "no-op (3 nodes)" bench apply
  if want audit; then # Lynis on the 3 hosts at once, installed on first use
    t0=$(now)
    "$BIN" audit "$work/bench.hcl" --state-dir "$work/state-bench" >"$work/audit.log" 2>&1 || { echo "audit failed:" >&2; tail -20 "$work/audit.log" >&2; exit 1; }
    rows+=("audit (3 nodes, Lynis installed)|$(secs "$t0" "$(now)")")
    echo "  audit: $(secs "$t0" "$(now)") s (load $(load))" >&2
  fi
  if want scale; then
    run "scale 3 -> 5" bench apply -var workers=4
    run "scale 5 -> 3" bench apply -var workers=2
  fi
  run "destroy (3 nodes)" bench destroy
fi
if want golden; then
  run "fresh, hardened, golden image (3 nodes)" benchgold apply
  run "destroy, golden image" benchgold destroy
fi
if want ten; then
  run "fresh, hardened (10 nodes: 3+7)" bench10 apply
  ready=$("$BIN" status "$work/bench10.hcl" --state-dir "$work/state-bench10" --json | grep -c '"swarm": *"ready"' || true)
  echo "  10-node cluster: $ready nodes ready" >&2
  if [ "$ready" -ne 10 ]; then
    echo "bench: the 10-node cluster has $ready Ready nodes, want 10: its time does not count" >&2
    "$BIN" status "$work/bench10.hcl" --state-dir "$work/state-bench10" >&2 || true
    "$BIN" destroy "$work/bench10.hcl" --state-dir "$work/state-bench10" --auto-approve >/dev/null 2>&1 || true
    exit 1
  fi
  run "no-op (10 nodes)" bench10 apply
  run "destroy (10 nodes)" bench10 destroy
fi

echo "load at end: $(load)" >&2
printf '\n%-40s %8s %8s\n' "run (local driver, this machine)" "seconds" "x floor"
for row in "${rows[@]}"; do
  label=${row%|*}; s=${row##*|}
  printf '%-40s %8s %8s\n' "$label" "$s" "$(awk -v s="$s" -v f="$floor" 'BEGIN { printf "%.2f", s / f }')"
done
echo "load average (1, 5, 15 min) at the end: $(load); $(nproc) cores"
echo
for label in "fresh, hardened (3 nodes)" "fresh, hardening off (3 nodes)" "fresh, hardened, golden image (3 nodes)" "no-op (3 nodes)" "fresh, hardened (10 nodes: 3+7)"; do
  [ -e "$work/$label.events" ] && steps "$label"
done
exit 0
