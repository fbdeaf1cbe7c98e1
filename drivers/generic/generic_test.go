package generic

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/drivers/drivertest"
	"github.com/provision/provision/provision/comm"
)

// newTestDriver builds a driver from block source through New, as the CLI does.
func newTestDriver(t *testing.T, stateDir, src string) *Driver {
	t.Helper()
	d, diags := New(parseBody(t, src), drivers.Options{Name: "metal", StateDir: stateDir, Log: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if diags.HasErrors() {
		t.Fatalf("New: %v", diags)
	}
	gd := d.(*Driver)
	gd.createTimeout = 60 * time.Second
	gd.probeTimeout = 4 * time.Second
	return gd
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func spec(name, cluster, addr string) drivers.MachineSpec {
	return drivers.MachineSpec{Name: name, Role: "manager", Pool: "default", Address: addr, Tags: map[string]string{
		drivers.TagCluster: cluster, drivers.TagMachine: name, drivers.TagRole: "manager", drivers.TagPool: "default",
	}}
}

func TestHosts(t *testing.T) {
	dc := needDocker(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()
	keyFile, userPub := adminKeyFile(t, dir)
	hosts := startHosts(t, ctx, dc, 2, userPub)
	h1, h2 := hosts[0], hosts[1]
	exec1 := func(h testHost, cmd string) string { return mustExec(t, ctx, dc, h.ID, cmd) }
	tagOf := func(h testHost) (string, *tag) {
		out, err := execOut(ctx, dc, h.ID, "test -e "+TagFile+" || exit 0; stat -c '%U %a' "+TagFile+"; cat "+TagFile)
		if err != nil {
			t.Fatal(err)
		}
		if out == "" {
			return "", nil
		}
		meta, body, _ := strings.Cut(out, "\n")
		var tg tag
		if err := json.Unmarshal([]byte(body), &tg); err != nil {
			t.Fatalf("machine.json on %s: %v\n%s", h.Name, err, body)
		}
		return strings.TrimSpace(meta), &tg
	}
	block := func(extra string) string {
		return fmt.Sprintf("user = \"admin\"\nkey_file = %q\n%s\n", keyFile, extra)
	}

	stateA := filepath.Join(dir, "stateA")
	pinned := newTestDriver(t, stateA, block(fmt.Sprintf("trust_on_first_use = false\nhost_keys = { %q = %q }", h1.Address, h1.HostKey)))

	var m1 drivers.Machine
	t.Run("pinned key", func(t *testing.T) {
		var err error
		m1, err = pinned.Create(ctx, "c1", spec("m1", "c1", h1.Address))
		if err != nil {
			t.Fatal(err)
		}
		abs, _ := filepath.Abs(keyFile)
		if m1.ID != h1.Address+":22" || m1.Address != h1.Address || m1.Driver != "metal" || m1.State != "running" ||
			m1.SSH.User != "admin" || m1.SSH.Port != 22 || m1.SSH.HostKey != h1.HostKey || m1.SSH.KeyFile != abs || m1.SSH.Bastion != nil {
			t.Errorf("machine %+v", m1)
		}
		if m1.Tags[drivers.TagCluster] != "c1" || m1.Tags[drivers.TagMachine] != "m1" || m1.Tags[drivers.TagRole] != "manager" {
			t.Errorf("tags %v", m1.Tags)
		}
		meta, tg := tagOf(h1)
		if tg == nil || meta != "root 644" || tg.cluster() != "c1" || tg.machine() != "m1" || tg.Tags[drivers.TagPool] != "default" {
			t.Fatalf("machine.json %q %+v", meta, tg)
		}
		// Idempotent: the same machine again changes nothing.
		again, err := pinned.Create(ctx, "c1", spec("m1", "c1", h1.Address))
		if err != nil || again.ID != m1.ID || again.SSH.HostKey != m1.SSH.HostKey {
			t.Fatalf("second create: %+v %v", again, err)
		}
		if _, tg2 := tagOf(h1); tg2 == nil || !tg2.ClaimedAt.Equal(tg.ClaimedAt) {
			t.Errorf("second create rewrote the tag: %+v", tg2)
		}
		// Nothing was recorded as trusted on first use: the key was pinned.
		if _, err := os.Stat(filepath.Join(stateA, "generic", knownHostsFile)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("known_hosts written for a pinned host: %v", err)
		}
	})

	t.Run("no pinned key without trust on first use", func(t *testing.T) {
		_, err := pinned.Create(ctx, "c1", spec("m2", "c1", h2.Address))
		if err == nil || !strings.Contains(err.Error(), "trust_on_first_use = false") || !strings.Contains(err.Error(), h2.Address) {
			t.Fatalf("create without a key: %v", err)
		}
		t.Logf("reported: %v", err)
		if meta, _ := tagOf(h2); meta != "" {
			t.Errorf("host was claimed anyway")
		}
	})

	t.Run("another cluster is refused", func(t *testing.T) {
		other := newTestDriver(t, filepath.Join(dir, "stateOther"), block(fmt.Sprintf("host_keys = { %q = %q }", h1.Address, h1.HostKey)))
		_, err := other.Create(ctx, "c2", spec("x1", "c2", h1.Address))
		if err == nil || !strings.Contains(err.Error(), "host already belongs to cluster c1") || !strings.Contains(err.Error(), h1.Address) {
			t.Fatalf("create on a host of another cluster: %v", err)
		}
		t.Logf("reported: %v", err)
		if _, tg := tagOf(h1); tg == nil || tg.cluster() != "c1" {
			t.Errorf("tag changed: %+v", tg)
		}
		ms, err := other.Machines(ctx, "c2")
		if err != nil || len(ms) != 0 {
			t.Errorf("other cluster's machines: %v %v", ms, err)
		}
	})

	t.Run("user without sudo", func(t *testing.T) {
		d := newTestDriver(t, filepath.Join(dir, "stateNoSudo"), fmt.Sprintf("user = \"nosudo\"\nkey_file = %q\nhost_keys = { %q = %q }\n", keyFile, h2.Address, h2.HostKey))
		_, err := d.Create(ctx, "c1", spec("m9", "c1", h2.Address))
		want := "user nosudo on " + h2.Address + ":22 cannot sudo without a password"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("create as a user without sudo: %v, want %q", err, want)
		}
		t.Logf("reported: %v", err)
	})

	t.Run("sudo that hangs", func(t *testing.T) {
		// A sudo stuck on a directory service: the check gives up at its
		// bound, naming the host, and claims nothing.
		exec1(h2, `printf '#!/bin/sh\nsleep 3600\n' >/usr/local/bin/sudo && chmod 755 /usr/local/bin/sudo`)
		defer exec1(h2, "rm -f /usr/local/bin/sudo")
		defer func(d time.Duration) { sudoTimeout = d }(sudoTimeout)
		sudoTimeout = 2 * time.Second
		d := newTestDriver(t, filepath.Join(dir, "stateHang"), fmt.Sprintf("user = \"admin\"\nkey_file = %q\nhost_keys = { %q = %q }\n", keyFile, h2.Address, h2.HostKey))
		start := time.Now()
		_, err := d.Create(ctx, "c1", spec("m9", "c1", h2.Address))
		if err == nil || !strings.Contains(err.Error(), "did not answer within 2s") || !strings.Contains(err.Error(), h2.Address) {
			t.Fatalf("create with a hanging sudo: %v", err)
		}
		if time.Since(start) > 30*time.Second {
			t.Errorf("create took %s", time.Since(start))
		}
		if meta, _ := tagOf(h2); meta != "" {
			t.Errorf("host was claimed anyway")
		}
		t.Logf("reported: %v", err)
	})

	t.Run("key not authorized", func(t *testing.T) {
		otherKey := writeKey(t, t.TempDir(), 0o600)
		d := newTestDriver(t, filepath.Join(dir, "stateWrongKey"), fmt.Sprintf("user = \"admin\"\nkey_file = %q\nhost_keys = { %q = %q }\n", otherKey, h2.Address, h2.HostKey))
		_, err := d.Create(ctx, "c1", spec("m9", "c1", h2.Address))
		if err == nil || !strings.Contains(err.Error(), "authorized_keys") || !strings.Contains(err.Error(), h2.Address) {
			t.Fatalf("create with a key the host does not accept: %v", err)
		}
		t.Logf("reported: %v", err)
	})

	stateB := filepath.Join(dir, "stateB")
	tofu := newTestDriver(t, stateB, block(""))
	t.Run("trust on first use", func(t *testing.T) {
		m2, err := tofu.Create(ctx, "c1", spec("m2", "c1", h2.Address))
		if err != nil {
			t.Fatal(err)
		}
		if m2.SSH.HostKey != h2.HostKey {
			t.Errorf("pinned %q, host has %q", m2.SSH.HostKey, h2.HostKey)
		}
		kh := filepath.Join(stateB, "generic", knownHostsFile)
		fi, err := os.Stat(kh)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("known_hosts: %v %v", fi, err)
		}
		if k, _ := tofu.store.knownKey(h2.Address, 22); k != h2.HostKey {
			t.Errorf("recorded %q", k)
		}
		// It is an OpenSSH known_hosts file.
		data, _ := os.ReadFile(kh)
		_, hostsOf, key, _, _, err := ssh.ParseKnownHosts(data)
		if err != nil || len(hostsOf) != 1 || hostsOf[0] != h2.Address || strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))) != h2.HostKey {
			t.Errorf("known_hosts %q: %v", data, err)
		}

		// The host gets a new key: the recorded one is enforced.
		newPriv, newPub := keyPair(t)
		setHostKey(t, ctx, dc, h2, newPriv, newPub)
		fresh := newTestDriver(t, stateB, block("")) // a later run, same state
		_, err = fresh.Create(ctx, "c1", spec("m2", "c1", h2.Address))
		if !errors.Is(err, comm.ErrHostKeyMismatch) || !strings.Contains(err.Error(), h2.Address) || !strings.Contains(err.Error(), kh) {
			t.Fatalf("changed key: %v", err)
		}
		t.Logf("reported: %v", err)
		if _, err := fresh.Machines(ctx, "c1"); !errors.Is(err, comm.ErrHostKeyMismatch) || !strings.Contains(err.Error(), h2.Address) {
			t.Errorf("machines with a changed key: %v", err)
		}
		if k, _ := fresh.store.knownKey(h2.Address, 22); k != h2.HostKey {
			t.Errorf("recorded key replaced: %q", k)
		}
		setHostKey(t, ctx, dc, h2, h2.hostPriv, h2.HostKey)
	})

	t.Run("machines finds claimed hosts", func(t *testing.T) {
		ms, err := tofu.Machines(ctx, "c1")
		if err != nil || len(ms) != 1 || ms[0].Name != "m2" || ms[0].ID != h2.Address+":22" || ms[0].SSH.HostKey != h2.HostKey || ms[0].Tags[drivers.TagCluster] != "c1" {
			t.Fatalf("machines: %+v %v", ms, err)
		}
		ms, err = pinned.Machines(ctx, "c1")
		if err != nil || len(ms) != 1 || ms[0].Name != "m1" || ms[0].SSH.HostKey != h1.HostKey {
			t.Fatalf("machines: %+v %v", ms, err)
		}
		if ms, err := pinned.Machines(ctx, "c-other"); err != nil || len(ms) != 0 {
			t.Errorf("machines of another cluster: %+v %v", ms, err)
		}
	})

	t.Run("unreachable host", func(t *testing.T) {
		exec1(h2, "systemctl stop ssh.socket ssh.service 2>/dev/null; systemctl stop ssh")
		defer exec1(h2, "systemctl start ssh")
		_, err := tofu.Machines(ctx, "c1")
		if err == nil || !strings.Contains(err.Error(), h2.Address) {
			t.Fatalf("machines with an unreachable host: %v", err)
		}
		t.Logf("reported: %v", err)
		m2 := drivers.Machine{Name: "m2", Address: h2.Address, SSH: drivers.SSHEndpoint{Port: 22, HostKey: h2.HostKey}, Tags: map[string]string{drivers.TagCluster: "c1"}}
		if err := tofu.Destroy(ctx, m2); err == nil || !strings.Contains(err.Error(), h2.Address) {
			t.Fatalf("destroy of an unreachable claimed host: %v", err)
		}
		if c, _ := tofu.claims(); c[h2.Address+":22"].Name != "m2" {
			t.Errorf("claim dropped after a failed destroy: %v", c)
		}
	})

	t.Run("destroy releases", func(t *testing.T) {
		if err := pinned.Destroy(ctx, m1); err != nil {
			t.Fatal(err)
		}
		if meta, _ := tagOf(h1); meta != "" {
			t.Errorf("machine.json left on %s", h1.Name)
		}
		// The OS stays: the user still logs in.
		exec1(h1, "id admin")
		if ms, err := pinned.Machines(ctx, "c1"); err != nil || len(ms) != 0 {
			t.Errorf("machines after destroy: %+v %v", ms, err)
		}
		if c, _ := pinned.claims(); len(c) != 0 {
			t.Errorf("claims after destroy: %v", c)
		}
		// Gone already: success.
		if err := pinned.Destroy(ctx, m1); err != nil {
			t.Errorf("second destroy: %v", err)
		}
		// Released, the host can join another cluster.
		other := newTestDriver(t, filepath.Join(dir, "stateOther2"), block(fmt.Sprintf("host_keys = { %q = %q }", h1.Address, h1.HostKey)))
		mx, err := other.Create(ctx, "c2", spec("x1", "c2", h1.Address))
		if err != nil {
			t.Fatal(err)
		}
		// The first state's destroy of its old machine leaves the new owner alone.
		if err := pinned.Destroy(ctx, m1); err != nil {
			t.Fatal(err)
		}
		if _, tg := tagOf(h1); tg == nil || tg.cluster() != "c2" {
			t.Fatalf("another cluster's tag removed: %+v", tg)
		}
		if err := other.Destroy(ctx, mx); err != nil {
			t.Fatal(err)
		}
		// The host trusted on first use is released too.
		ms, err := tofu.Machines(ctx, "c1")
		if err != nil || len(ms) != 1 {
			t.Fatalf("machines: %+v %v", ms, err)
		}
		if err := tofu.Destroy(ctx, ms[0]); err != nil {
			t.Fatal(err)
		}
		if meta, _ := tagOf(h2); meta != "" {
			t.Errorf("machine.json left on %s", h2.Name)
		}
	})

	t.Run("bastion", func(t *testing.T) {
		// h2 accepts the admin user only from h1: the direct way in is closed.
		exec1(h2, fmt.Sprintf("printf 'AllowUsers admin@%s nosudo@%s\\n' >/etc/ssh/sshd_config.d/00-only-bastion.conf && systemctl restart ssh", h1.Address, h1.Address))
		defer exec1(h2, "rm -f /etc/ssh/sshd_config.d/00-only-bastion.conf && systemctl restart ssh")
		signer, err := loadSigner(keyFile)
		if err != nil {
			t.Fatal(err)
		}
		if c, err := comm.Dial(ctx, comm.Config{Host: "direct", Address: h2.Address, User: "admin", Signer: signer, HostKey: h2.HostKey, Timeout: 3 * time.Second}); err == nil {
			c.Close()
			t.Fatal("direct login still works: the test proves nothing")
		}
		stateC := filepath.Join(dir, "stateC")
		d := newTestDriver(t, stateC, block(fmt.Sprintf("bastion {\n  address = %q\n  host_key = %q\n}", h1.Address, h1.HostKey)))
		m, err := d.Create(ctx, "c3", spec("b1", "c3", h2.Address))
		if err != nil {
			t.Fatal(err)
		}
		if b := m.SSH.Bastion; b == nil || b.Address != h1.Address || b.Port != 22 || b.User != "admin" || b.HostKey != h1.HostKey || b.KeyFile == "" {
			t.Errorf("bastion %+v", m.SSH.Bastion)
		}
		// h2's key was trusted on first use, scanned through the bastion.
		if m.SSH.HostKey != h2.HostKey {
			t.Errorf("host key through bastion %q", m.SSH.HostKey)
		}
		if _, tg := tagOf(h2); tg == nil || tg.cluster() != "c3" {
			t.Fatalf("tag through bastion: %+v", tg)
		}
		// The bastion's host key was pinned, not recorded.
		if k, _ := d.store.knownKey(h1.Address, 22); k != "" {
			t.Errorf("pinned bastion key recorded")
		}
		ms, err := d.Machines(ctx, "c3")
		if err != nil || len(ms) != 1 || ms[0].Name != "b1" {
			t.Fatalf("machines through bastion: %+v %v", ms, err)
		}
		// A bastion presenting another key is refused.
		_, wrong := keyPair(t)
		bad := newTestDriver(t, filepath.Join(dir, "stateD"), block(fmt.Sprintf("host_keys = { %q = %q }\nbastion {\n  address = %q\n  host_key = %q\n}", h2.Address, h2.HostKey, h1.Address, wrong)))
		if _, err := bad.Create(ctx, "c3", spec("b1", "c3", h2.Address)); !errors.Is(err, comm.ErrHostKeyMismatch) {
			t.Errorf("wrong bastion key: %v", err)
		}
		if err := d.Destroy(ctx, m); err != nil {
			t.Fatal(err)
		}
		if meta, _ := tagOf(h2); meta != "" {
			t.Errorf("machine.json left on %s after destroy through bastion", h2.Name)
		}
	})

	t.Run("wipe", func(t *testing.T) {
		exec1(h1, `set -e
mkdir -p /etc/docker /etc/provision /etc/systemd/system/docker.service.d
echo '{}' >/etc/docker/daemon.json
echo 'net.ipv4.ip_forward = 1' >/etc/sysctl.d/90-provision.conf
echo 'MaxAuthTries 4' >/etc/ssh/sshd_config.d/10-provision.conf
echo '[Service]' >/etc/systemd/system/docker.service.d/provision.conf
echo 'table inet provision {}' >/etc/provision/firewall.nft`)
		d := newTestDriver(t, filepath.Join(dir, "stateE"), block(fmt.Sprintf("wipe = true\nhost_keys = { %q = %q }", h1.Address, h1.HostKey)))
		m, err := d.Create(ctx, "c4", spec("w1", "c4", h1.Address))
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Destroy(ctx, m); err != nil {
			t.Fatal(err)
		}
		exec1(h1, "test ! -e /etc/docker && test ! -e /etc/provision && test ! -e /etc/sysctl.d/90-provision.conf && test ! -e /etc/ssh/sshd_config.d/10-provision.conf && test ! -e /etc/systemd/system/docker.service.d/provision.conf")
		// sshd still serves the host after the wipe reloaded it.
		if _, err := d.Create(ctx, "c4", spec("w1", "c4", h1.Address)); err != nil {
			t.Fatalf("login after wipe: %v", err)
		}
	})
}

// TestConformance runs the shared driver contract on two plain hosts, one
// with a pinned key and one trusted on first use, created in parallel.
func TestConformance(t *testing.T) {
	dc := needDocker(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	keyFile, userPub := adminKeyFile(t, dir)
	hosts := startHosts(t, ctx, dc, 2, userPub)
	d := newTestDriver(t, filepath.Join(dir, "state"), fmt.Sprintf("user = \"admin\"\nkey_file = %q\nhost_keys = { %q = %q }\n", keyFile, hosts[0].Address, hosts[0].HostKey))
	signer, err := loadSigner(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	cluster := drivertest.ClusterID(t)
	var specs []drivers.MachineSpec
	for i, h := range hosts {
		s := drivertest.Spec(t, cluster, fmt.Sprintf("m%d", i+1), "manager", "")
		// Existing hosts keep their own host key and login: the engine's
		// generated ones do not apply.
		s.HostKey = drivers.HostKey{}
		s.SSH = drivers.SSHAccess{User: "admin"}
		s.Address = h.Address
		specs = append(specs, s)
	}
	drivertest.Run(t, d, drivertest.Config{Cluster: cluster, Machines: specs, Admin: signer, DialTimeout: time.Minute})
}

// TestLearnAddressOfNamedHost: a host listed by name gets the address its
// sshd took the connection on as its private address (what the swarm
// advertises and the firewalls admit: they take addresses, and Debian
// resolves the host's own name to 127.0.1.1); a host listed by address
// keeps none.
func TestLearnAddressOfNamedHost(t *testing.T) {
	dc := needDocker(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	keyFile, userPub := adminKeyFile(t, dir)
	h := startHosts(t, ctx, dc, 1, userPub)[0]
	d := newTestDriver(t, filepath.Join(dir, "state"), fmt.Sprintf("user = \"admin\"\nkey_file = %q\n", keyFile))
	signer, err := loadSigner(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	byIP := target{host: h.Address, port: 22, hostKey: h.HostKey}
	c, err := d.dial(ctx, byIP, signer, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := byIP.learnAddress(ctx, c); err != nil || byIP.private != "" {
		t.Errorf("host by address: private %q, %v", byIP.private, err)
	}
	byName := target{host: "node1.cluster.example", port: 22}
	if err := byName.learnAddress(ctx, c); err != nil || byName.private != h.Address {
		t.Errorf("host by name: private %q, want %s (%v)", byName.private, h.Address, err)
	}
	if m := d.machine("m1", byName, nil); m.Advertise() != h.Address {
		t.Errorf("advertised %q", m.Advertise())
	}
}

// adminKeyFile writes a new admin key pair's private half into dir (0600)
// and returns its path and the public half for the hosts.
func adminKeyFile(t *testing.T, dir string) (string, string) {
	t.Helper()
	priv, pub := keyPair(t)
	keyFile := filepath.Join(dir, "admin_ed25519")
	if err := os.WriteFile(keyFile, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	return keyFile, pub
}
