package hostos_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/provision/provision/hostos"
)

// loopDisk attaches a sparse file of this machine as a loop device (root
// only: skipped otherwise) and detaches it at cleanup.
func loopDisk(t *testing.T, mb int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.Truncate(createFile(t, img), int64(mb)<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", img).CombinedOutput()
	if err != nil {
		t.Skipf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

func createFile(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

// TestEngineDisk: engine.disk on a real host (a system container given two
// block devices, /var/lib/docker on its root file system as on a VM). A
// disk that holds a file system provision did not make is never
// formatted; data already in /var/lib/docker is never hidden; a blank disk
// is formatted, mounted by the unit at /var/lib/docker and enabled, and a
// later apply takes the same file system back without formatting it again.
func TestEngineDisk(t *testing.T) {
	t.Parallel()
	dc := needDocker(t)
	blank, used := loopDisk(t, 256), loopDisk(t, 256)
	if out, err := exec.Command("mkfs.ext4", "-q", "-L", "precious", used).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4: %v: %s", err, out)
	}
	h := startHostWith(t, dc, "disk-host", false, func(hc *container.HostConfig) {
		hc.Mounts = nil // /var/lib/docker on the root file system, as on a VM
		hc.Devices = []container.DeviceMapping{
			{PathOnHost: blank, PathInContainer: "/dev/pv-blank", CgroupPermissions: "rwm"},
			{PathOnHost: used, PathInContainer: "/dev/pv-used", CgroupPermissions: "rwm"},
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	root := &execComm{dc: dc, id: h.ID, user: "root"}
	run := func(cmd string) string {
		t.Helper()
		out, err := root.Run(ctx, cmd, nil)
		if err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	apply := func(dev string) (*hostos.Target, error) {
		t.Helper()
		cfg := baseConfig()
		cfg.DockerDisk = dev
		facts, err := hostos.GatherFacts(ctx, h.Comm, hostos.ManagedPaths(cfg))
		if err != nil {
			t.Fatal(err)
		}
		tgt := &hostos.Target{Name: "disk-host", Comm: h.Comm, Facts: facts, Config: cfg, Log: testLogger(t)}
		st := stepByID(t, cfg, "engine.disk")
		if done, err := st.Check(ctx, tgt); done || err != nil {
			t.Fatalf("Check before: done=%v err=%v", done, err)
		}
		return tgt, st.Apply(ctx, tgt)
	}
	check := func(tgt *hostos.Target) bool {
		t.Helper()
		facts, err := hostos.GatherFacts(ctx, h.Comm, hostos.ManagedPaths(tgt.Config))
		if err != nil {
			t.Fatal(err)
		}
		tgt.Facts = facts
		done, err := stepByID(t, tgt.Config, "engine.disk").Check(ctx, tgt)
		if err != nil {
			t.Fatal(err)
		}
		return done
	}

	// Someone else's file system: refused, untouched.
	if _, err := apply("/dev/pv-used"); err == nil || !strings.Contains(err.Error(), "not blank") {
		t.Fatalf("engine.disk on a disk holding ext4 'precious': %v, want a refusal", err)
	}
	if got := run("blkid -p -o value -s LABEL /dev/pv-used"); got != "precious" {
		t.Fatalf("the refused disk's label is now %q", got)
	}
	if run("mountpoint -q /var/lib/docker && echo yes || echo no") != "no" {
		t.Fatal("/var/lib/docker mounted after a refusal")
	}

	// Engine data on the root disk: refused, the blank disk not formatted.
	run("mkdir -p /var/lib/docker/volumes && echo data > /var/lib/docker/volumes/x")
	if _, err := apply("/dev/pv-blank"); err == nil || !strings.Contains(err.Error(), "already holds data") {
		t.Fatalf("engine.disk over a non-empty /var/lib/docker: %v, want a refusal", err)
	}
	if got := run("blkid -p -o value -s TYPE /dev/pv-blank || true"); got != "" {
		t.Fatalf("the blank disk was formatted (%q) although the mount was refused", got)
	}
	run("rm -rf /var/lib/docker")

	// A blank disk: formatted, mounted, enabled; the step's Check is done.
	tgt, err := apply("/dev/pv-blank")
	if err != nil {
		t.Fatalf("engine.disk on a blank disk: %v", err)
	}
	if got := run("findmnt -n -o FSTYPE,LABEL --mountpoint /var/lib/docker"); got != "ext4   provision-docker" && strings.Join(strings.Fields(got), " ") != "ext4 provision-docker" {
		t.Fatalf("/var/lib/docker: %q, want the ext4 file system labelled provision-docker", got)
	}
	if got := run("systemctl is-enabled var-lib-docker.mount"); got != "enabled" {
		t.Errorf("mount unit %s", got)
	}
	if got := run("stat -c %a /var/lib/docker"); got != "711" {
		t.Errorf("/var/lib/docker mode %s, want 711", got)
	}
	if !check(tgt) {
		t.Fatal("Check after apply: not done")
	}

	// Unmounted since (a reboot that lost it): the same file system is
	// mounted again, its data kept.
	run("echo kept > /var/lib/docker/marker && systemctl stop var-lib-docker.mount")
	if check(tgt) {
		t.Fatal("Check with the data disk unmounted: done")
	}
	if _, err := apply("/dev/pv-blank"); err != nil {
		t.Fatalf("engine.disk again: %v", err)
	}
	if got := run("cat /var/lib/docker/marker"); got != "kept" {
		t.Fatalf("marker after the second apply: %q (the disk was formatted again?)", got)
	}
}
