//go:build acceptance

package acceptance

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers/local"
)

// plainHost is a machine provision did not create: a system container with
// sshd, a non-root sudo user and its own host key, as a bare-metal box would be.
type plainHost struct {
	ID, Name, Address string
	HostKey           string // authorized_keys form
	hostPriv          []byte
}

func newKeyPair(t *testing.T) (privPEM []byte, authorized string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	sp, _ := ssh.NewPublicKey(pub)
	return pem.EncodeToMemory(blk), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))
}

func tarFiles(files map[string]struct {
	mode int64
	data []byte
}) *bytes.Buffer {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, f := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: f.mode, Size: int64(len(f.data))})
		tw.Write(f.data)
	}
	tw.Close()
	return &buf
}

type file = struct {
	mode int64
	data []byte
}

// startPlainHosts starts n sshd hosts of the bare host image on a network
// the test creates.
func startPlainHosts(t *testing.T, ctx context.Context, dc *client.Client, prefix string, n int, userKey string) []plainHost {
	t.Helper()
	img := os.Getenv("PROVISION_HOST_IMAGE")
	if img == "" {
		img = "provision/host:bookworm"
	}
	return startHostsFrom(t, ctx, dc, img, prefix, n, userKey)
}

// startHostsFrom starts n sshd hosts of image img on a network the test
// creates.
func startHostsFrom(t *testing.T, ctx context.Context, dc *client.Client, img, prefix string, n int, userKey string) []plainHost {
	t.Helper()
	netName := prefix + "-net"
	if _, err := dc.NetworkCreate(ctx, netName, network.CreateOptions{Driver: "bridge"}); err != nil {
		t.Fatalf("create network: %v", err)
	}
	var hosts []plainHost
	t.Cleanup(func() {
		bg := context.Background()
		for _, h := range hosts {
			dc.ContainerRemove(bg, h.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
		}
		dc.NetworkRemove(bg, netName)
	})
	info, err := dc.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cgroupV2 := info.CgroupVersion == "2"
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("%s-%d", prefix, i)
		hostPriv, hostPub := newKeyPair(t)
		cfg, hc, nc := local.SystemContainer(img, name, netName, "", cgroupV2)
		hc.Tmpfs["/tmp"] = ""
		cr, err := dc.ContainerCreate(ctx, cfg, hc, nc, nil, name)
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		h := plainHost{ID: cr.ID, Name: name, HostKey: hostPub, hostPriv: hostPriv}
		hosts = append(hosts, h)
		// Host key and the admin user's key go in before start.
		err = dc.CopyToContainer(ctx, cr.ID, "/", tarFiles(map[string]file{
			"etc/ssh/ssh_host_ed25519_key":       {0o600, hostPriv},
			"etc/ssh/ssh_host_ed25519_key.pub":   {0o644, []byte(hostPub + "\n")},
			"etc/ssh/sshd_config.d/hostkey.conf": {0o644, []byte("HostKey /etc/ssh/ssh_host_ed25519_key\n")},
			"etc/sudoers.d/admin":                {0o440, []byte("admin ALL=(ALL) NOPASSWD:ALL\n")},
			"root/admin.pub":                     {0o644, []byte(userKey + "\n")},
		}), container.CopyToContainerOptions{})
		if err != nil {
			t.Fatalf("copy into %s: %v", name, err)
		}
		if err := dc.ContainerStart(ctx, cr.ID, container.StartOptions{}); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
	}
	for i := range hosts {
		h := &hosts[i]
		mustExec(t, ctx, dc, h.ID, "useradd -m -s /bin/bash admin && install -d -m 700 -o admin -g admin /home/admin/.ssh && install -m 600 -o admin -g admin /root/admin.pub /home/admin/.ssh/authorized_keys")
		eventually(t, ctx, 90*time.Second, h.Name+" systemd running", func() error {
			out, _ := execOut(ctx, dc, h.ID, "systemctl is-system-running || true")
			if s := strings.TrimSpace(out); s != "running" && s != "degraded" {
				return fmt.Errorf("systemd is %q", s)
			}
			return nil
		})
		ins, err := dc.ContainerInspect(ctx, h.ID)
		if err != nil {
			t.Fatal(err)
		}
		h.Address = ins.NetworkSettings.Networks[netName].IPAddress
	}
	return hosts
}

func execOut(ctx context.Context, dc *client.Client, id, cmd string) (string, error) {
	return runIn(ctx, dc, id, []string{"/bin/sh", "-c", cmd})
}

func mustExec(t *testing.T, ctx context.Context, dc *client.Client, id, cmd string) string {
	t.Helper()
	out, err := execOut(ctx, dc, id, cmd)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestGenericEndToEnd is issue 4's second check: the generic driver against
// plain sshd hosts with a non-root sudo user, with pinned host keys, forming a
// TLS swarm; a changed host key stops the next apply.
func TestGenericEndToEnd(t *testing.T) {
	hostTest(t) // each local-host test has its own cluster, network and state; longest first, a few at a time (schedule_test.go)
	requireAcc(t)
	dc := dockerClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dir := t.TempDir()
	userPriv, userPub := newKeyPair(t)
	keyFile := filepath.Join(dir, "admin_ed25519")
	if err := os.WriteFile(keyFile, userPriv, 0o600); err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("acc-metal-%d", time.Now().UnixNano()%100000)
	hosts := startPlainHosts(t, ctx, dc, prefix, 2, userPub)

	// The first host's key is pinned in the spec; the second is trusted on
	// first use and recorded.
	spec := fmt.Sprintf(`
name = "metal"
driver "generic" {
  user      = "admin"
  key_file  = %q
  host_keys = { %q = %q }
}
managers {
  count = 1
  hosts = [%q]
}
workers {
  count = 1
  hosts = [%q]
}
`, keyFile, hosts[0].Address, hosts[0].HostKey, hosts[0].Address, hosts[1].Address)
	specFile := filepath.Join(dir, "metal.hcl")
	if err := os.WriteFile(specFile, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(dir, "state")
	sd := "--state-dir=" + stateDir

	mustProvision(t, ctx, nil, "apply", specFile, sd, "--auto-approve")
	ens, _ := engines(t, stateDir)
	var mgrName string
	for _, m := range readState(t, stateDir).Machines {
		if m.Role == "manager" {
			mgrName = m.Name
		}
	}
	nodes, err := ens[mgrName].Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 {
		t.Fatalf("swarm has %d nodes, want 2", len(nodes))
	}
	// Logged in as the non-root user: the engine's files belong to root.
	if out := mustExec(t, ctx, dc, hosts[1].ID, "stat -c %U /etc/docker/daemon.json"); strings.TrimSpace(out) != "root" {
		t.Errorf("daemon.json owner %q", out)
	}

	// Re-apply: nothing changes.
	r := mustProvision(t, ctx, nil, "apply", specFile, sd, "--auto-approve")
	if !strings.Contains(r.stderr, "No changes") {
		t.Errorf("second apply was not a no-op:\n%s", r.stderr)
	}

	// The TOFU host (the worker) gets a new host key: the next apply refuses it.
	newPriv, newPub := newKeyPair(t)
	if err := dc.CopyToContainer(ctx, hosts[1].ID, "/", tarFiles(map[string]file{
		"etc/ssh/ssh_host_ed25519_key":     {0o600, newPriv},
		"etc/ssh/ssh_host_ed25519_key.pub": {0o644, []byte(newPub + "\n")},
	}), container.CopyToContainerOptions{}); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, dc, hosts[1].ID, "systemctl restart ssh")
	r = provision(t, ctx, nil, "apply", specFile, sd, "--auto-approve")
	if r.code == 0 {
		t.Fatalf("apply accepted a changed host key:\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, "host key") || !strings.Contains(r.stderr, hosts[1].Address) {
		t.Errorf("changed host key error does not name the problem and host:\n%s", r.stderr)
	}

	// Put the recorded key back so destroy can reach the host again.
	if err := dc.CopyToContainer(ctx, hosts[1].ID, "/", tarFiles(map[string]file{
		"etc/ssh/ssh_host_ed25519_key":     {0o600, hosts[1].hostPriv},
		"etc/ssh/ssh_host_ed25519_key.pub": {0o644, []byte(hosts[1].HostKey + "\n")},
	}), container.CopyToContainerOptions{}); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, dc, hosts[1].ID, "systemctl restart ssh")
	mustProvision(t, ctx, nil, "destroy", specFile, sd, "--auto-approve")
	if _, err := execOut(ctx, dc, hosts[0].ID, "test ! -e /etc/provision/machine.json"); err != nil {
		t.Errorf("destroy left the ownership tag on %s: %v", hosts[0].Name, err)
	}
}
