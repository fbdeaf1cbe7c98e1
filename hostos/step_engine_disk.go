package hostos

import (
	"context"
	"fmt"
	"strings"

	"github.com/provision/provision/provision/comm"
)

// PathDockerMount is the mount unit of the engine's data disk.
const PathDockerMount = "/etc/systemd/system/" + unitDockerMount

const (
	unitDockerMount = "var-lib-docker.mount" // systemd names a mount unit after its mount point
	dockerDiskLabel = "provision-docker"     // the file system label engine.disk gives the disk
)

// engine.disk: the driver's blank data disk (Config.DockerDisk, a stable
// /dev/disk/by-id path) formatted ext4 and mounted at /var/lib/docker before
// the engine package is installed, so that everything the engine keeps is on
// it from the first start (CIS Docker Benchmark 1.1.1). It formats only a
// disk that holds nothing, or takes back the one it formatted (an apply
// interrupted after mkfs), and never mounts over engine data already on the
// root disk: both would lose data, so it stops and says what it found.
func stepEngineDisk() *Step {
	return &Step{
		ID:      "engine.disk",
		Files:   files(PathDockerMount),
		Units:   []string{unitDockerMount},
		Enabled: func(c *Config) bool { return c.DockerDisk != "" },
		// wipe keeps /var/lib/docker: the data stays on the disk.
		Undo:   Undo{Stop: "systemctl disable --now " + unitDockerMount + " >/dev/null 2>&1"},
		render: func(t *Target, _ Family) ([]File, error) { return DockerDiskFiles(t.Config) },
		ready: func(t *Target) bool {
			return t.unitActive(unitDockerMount) && t.Facts.UnitFiles[unitDockerMount] == "enabled"
		},
		after: func(ctx context.Context, t *Target, changed []File) error {
			if err := daemonReload(ctx, t, changed); err != nil {
				return err
			}
			out, err := t.sudoSh(ctx, dockerDiskScript(t.Config.DockerDisk))
			if err != nil {
				return fmt.Errorf("engine data disk %s: %w", t.Config.DockerDisk, err)
			}
			if s := strings.TrimSpace(string(out)); s != "" {
				t.Log.Info("engine data disk", "device", t.Config.DockerDisk, "did", s)
			}
			t.setUnit(unitDockerMount, "active", "enabled")
			return nil
		},
		off: func(ctx context.Context, t *Target) error {
			// The machine has no data disk (any more): the mount is no
			// longer started at boot. It is not unmounted under a running
			// engine; the next boot goes without it.
			if _, err := t.sudoSh(ctx, "systemctl disable "+unitDockerMount+" >/dev/null 2>&1 || true"); err != nil {
				return fmt.Errorf("disable %s: %w", unitDockerMount, err)
			}
			t.setUnit(unitDockerMount, "", "disabled")
			return nil
		},
		offDone: func(ctx context.Context, t *Target) error {
			return daemonReload(ctx, t, []File{{Path: PathDockerMount}})
		},
	}
}

// DockerDiskFiles renders the data disk's mount unit.
func DockerDiskFiles(cfg *Config) ([]File, error) {
	dev := cfg.DockerDisk
	if !strings.HasPrefix(dev, "/dev/") || strings.ContainsAny(dev, " \t\n\r\\\"'$`%") {
		return nil, fmt.Errorf("engine data disk %q: not a device path", dev)
	}
	f, err := render(PathDockerMount, 0o644, "docker-disk.mount.tmpl", struct{ Device string }{dev})
	if err != nil {
		return nil, err
	}
	return []File{f}, nil
}

// dockerDiskScript formats the device when it is blank and mounts it at
// /var/lib/docker through the mount unit. It prints what it did. Exit 3:
// the device never appeared; 4: it holds something engine.disk did not
// make; 5: /var/lib/docker already holds data on the root disk; 6: mounted
// from elsewhere.
func dockerDiskScript(dev string) string {
	return `dev=` + comm.Quote(dev) + `; label=` + dockerDiskLabel + `; unit=` + unitDockerMount + `
i=0; while [ ! -b "$dev" ] && [ $i -lt 30 ]; do udevadm settle >/dev/null 2>&1; sleep 1; i=$((i+1)); done
[ -b "$dev" ] || { echo "no block device $dev on this host (the driver attached none, or the kernel has not seen it)" >&2; exit 3; }
real=$(readlink -f "$dev")
if mountpoint -q /var/lib/docker; then
  src=$(readlink -f "$(findmnt -n -o SOURCE --mountpoint /var/lib/docker)")
  [ "$src" = "$real" ] || { echo "/var/lib/docker is mounted from $src, not from $dev" >&2; exit 6; }
else
  if [ -d /var/lib/docker ] && [ -n "$(ls -A /var/lib/docker 2>/dev/null)" ]; then
    echo "/var/lib/docker already holds data on the root disk; mounting $dev over it would hide it (move it onto the disk, or leave docker_disk unset)" >&2; exit 5
  fi
  fs=$(blkid -p -o value -s TYPE "$dev" 2>/dev/null || true)
  lb=$(blkid -p -o value -s LABEL "$dev" 2>/dev/null || true)
  pt=$(blkid -p -o value -s PTTYPE "$dev" 2>/dev/null || true)
  if [ -z "$fs$pt" ] && [ -z "$(wipefs -n "$dev" 2>/dev/null | tail -n +2)" ]; then
    mkfs.ext4 -q -L "$label" "$dev" && echo "formatted ext4"
  elif [ "$fs" != ext4 ] || [ "$lb" != "$label" ]; then
    echo "$dev is not blank (${fs:-${pt:+partition table }$pt}${lb:+, label $lb}): provision formats only an empty disk; not touching it" >&2; exit 4
  fi
fi
systemctl enable "$unit" >/dev/null 2>&1 && systemctl start "$unit" || exit 1
mountpoint -q /var/lib/docker || { echo "$unit started but /var/lib/docker is not a mount point" >&2; exit 1; }
chmod 0711 /var/lib/docker
echo mounted`
}
