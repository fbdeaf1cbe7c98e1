package hostos_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/comm"
)

// TestFactsOnHost runs the facts script on a real host: managed files hashed
// by one sha256sum (absent ones absent), units from one systemctl show,
// hostname and container type from builtins, and dockerd --version run
// once, then read back from /run until the package database (or the binary)
// changes.
func TestFactsOnHost(t *testing.T) {
	t.Parallel()
	dc := needDocker(t)
	h := startHost(t, dc, "facts-host", false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := func(script string) string {
		t.Helper()
		out, err := h.Comm.Run(ctx, h.Comm.Sudo("sh -c "+comm.Quote(script)), nil)
		if err != nil {
			t.Fatalf("%s: %v", script, err)
		}
		return string(out)
	}
	run(`mkdir -p /etc/docker && printf '{}\n' >/etc/docker/daemon.json`)
	// A stand-in dockerd that counts its runs.
	run(`printf '#!/bin/sh\necho run >>/tmp/dockerd-runs\necho "Docker version 99.1.2, build abc"\n' >/usr/local/bin/dockerd && chmod 755 /usr/local/bin/dockerd && touch -d 2000-01-01 /usr/local/bin/dockerd`)
	paths := []string{"/etc/docker/daemon.json", "/etc/provision-none"}
	f, err := hostos.GatherFacts(ctx, h.Comm, paths)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("{}\n"))
	if len(f.Files) != 1 || f.Files["/etc/docker/daemon.json"] != hex.EncodeToString(sum[:]) {
		t.Errorf("files %v", f.Files)
	}
	if f.Units["ssh.service"] != "active" || f.UnitFiles["ssh.service"] != "enabled" || f.Units["docker.service"] != "inactive" || f.UnitFiles["docker.service"] != "" {
		t.Errorf("units %v unit files %v", f.Units, f.UnitFiles)
	}
	if f.Hostname != "facts-host" || f.Virt != "docker" || f.Arch == "" || f.Packages["systemd"] == "" || f.Commands["dockerd"] != "/usr/local/bin/dockerd" {
		t.Errorf("hostname %q virt %q arch %q systemd %q dockerd %q", f.Hostname, f.Virt, f.Arch, f.Packages["systemd"], f.Commands["dockerd"])
	}
	if f.Engine != "99.1.2" {
		t.Errorf("engine %q", f.Engine)
	}
	// Again: the version comes from /run, dockerd does not run.
	run(`sed -i s/99.1.2/99.1.3/ /usr/local/bin/dockerd && touch -d 2000-01-01 /usr/local/bin/dockerd`)
	if f, err = hostos.GatherFacts(ctx, h.Comm, paths); err != nil || f.Engine != "99.1.2" {
		t.Errorf("second gather: engine %q, %v", f.Engine, err)
	}
	if n := strings.Count(run("cat /tmp/dockerd-runs"), "run"); n != 1 {
		t.Errorf("dockerd ran %d times, want once", n)
	}
	// A package change (the dpkg database is newer) makes it ask again.
	run(`sleep 1.1; touch /var/lib/dpkg/status`)
	if f, err = hostos.GatherFacts(ctx, h.Comm, paths); err != nil || f.Engine != "99.1.3" {
		t.Errorf("after a package change: engine %q, %v", f.Engine, err)
	}
}
