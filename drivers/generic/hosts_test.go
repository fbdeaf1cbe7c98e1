package generic

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/provision/provision/drivers/local"
)

// The hosts these tests use are plain system containers with sshd, a
// non-root sudo user ("admin"), a user without sudo ("nosudo", same key) and
// their own ed25519 host key: what a bare-metal box looks like to the driver.

const hostImageDefault = "provision/host:bookworm"

// needDocker returns a Docker client, skipping the test when the engine or
// the host image is missing, unless PROVISION_REQUIRE_DOCKER=1.
func needDocker(t *testing.T) *client.Client {
	t.Helper()
	unavailable := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("PROVISION_REQUIRE_DOCKER") == "1" {
			t.Fatalf("%s (PROVISION_REQUIRE_DOCKER=1)", msg)
		}
		t.Skipf("%s: skipping (set PROVISION_REQUIRE_DOCKER=1 to fail instead)", msg)
	}
	if err := exec.Command("docker", "info").Run(); err != nil {
		unavailable("docker info failed: %v", err)
	}
	dc, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		unavailable("docker client: %v", err)
	}
	t.Cleanup(func() { dc.Close() })
	if _, err := dc.Ping(t.Context()); err != nil {
		unavailable("docker ping: %v", err)
	}
	if _, err := dc.ImageInspect(t.Context(), hostImage()); err != nil {
		unavailable("host image %s not built (drivers/local/image/build.sh): %v", hostImage(), err)
	}
	return dc
}

func hostImage() string {
	if img := os.Getenv("PROVISION_HOST_IMAGE"); img != "" {
		return img
	}
	return hostImageDefault
}

type testHost struct {
	ID, Name, Address string
	HostKey           string // authorized_keys form
	hostPriv          []byte
}

type tarFile struct {
	mode int64
	data []byte
}

func tarOf(files map[string]tarFile) *bytes.Buffer {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, f := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: f.mode, Size: int64(len(f.data)), Typeflag: tar.TypeReg})
		tw.Write(f.data)
	}
	tw.Close()
	return &buf
}

// startHosts starts n plain sshd hosts on a network the test creates and
// removes them (and their volumes and the network) when the test ends.
func startHosts(t *testing.T, ctx context.Context, dc *client.Client, n int, userKey string) []testHost {
	t.Helper()
	rb := make([]byte, 4)
	rand.Read(rb)
	prefix := "provision-generic-" + hex.EncodeToString(rb)
	netName := prefix + "-net"
	if _, err := dc.NetworkCreate(ctx, netName, network.CreateOptions{Driver: "bridge", Labels: map[string]string{"provision-test": "generic"}}); err != nil {
		t.Fatalf("create network: %v", err)
	}
	var hosts []testHost
	t.Cleanup(func() {
		bg, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, h := range hosts {
			if err := dc.ContainerRemove(bg, h.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
				t.Logf("remove %s: %v", h.Name, err)
			}
		}
		if err := dc.NetworkRemove(bg, netName); err != nil {
			t.Logf("remove network %s: %v", netName, err)
		}
	})
	info, err := dc.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cgroupV2 := info.CgroupVersion == "2"
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("%s-%d", prefix, i)
		hostPriv, hostPub := keyPair(t)
		cfg, hc, nc := local.SystemContainer(hostImage(), fmt.Sprintf("host%d", i), netName, "", cgroupV2)
		cfg.Labels = map[string]string{"provision-test": "generic"}
		cr, err := dc.ContainerCreate(ctx, cfg, hc, nc, nil, name)
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		hosts = append(hosts, testHost{ID: cr.ID, Name: name, HostKey: hostPub, hostPriv: hostPriv})
		err = dc.CopyToContainer(ctx, cr.ID, "/", tarOf(map[string]tarFile{
			"etc/ssh/ssh_host_ed25519_key":       {0o600, hostPriv},
			"etc/ssh/ssh_host_ed25519_key.pub":   {0o644, []byte(hostPub + "\n")},
			"etc/ssh/sshd_config.d/hostkey.conf": {0o644, []byte("HostKey /etc/ssh/ssh_host_ed25519_key\nAllowTcpForwarding yes\n")},
			"root/user.pub":                      {0o644, []byte(userKey + "\n")},
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
		mustExec(t, ctx, dc, h.ID, `set -e
for u in admin nosudo; do
  useradd -m -s /bin/bash $u
  install -d -m 700 -o $u -g $u /home/$u/.ssh
  install -m 600 -o $u -g $u /root/user.pub /home/$u/.ssh/authorized_keys
done
printf 'admin ALL=(ALL) NOPASSWD:ALL\n' >/etc/sudoers.d/admin
chmod 0440 /etc/sudoers.d/admin`)
		deadline := time.Now().Add(90 * time.Second)
		for {
			out, _ := execOut(ctx, dc, h.ID, "systemctl is-system-running || true")
			if s := strings.TrimSpace(out); s == "running" || s == "degraded" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: systemd not running: %q", h.Name, out)
			}
			select {
			case <-ctx.Done():
				t.Fatal(ctx.Err())
			case <-time.After(300 * time.Millisecond):
			}
		}
		ins, err := dc.ContainerInspect(ctx, h.ID)
		if err != nil {
			t.Fatal(err)
		}
		h.Address = ins.NetworkSettings.Networks[netName].IPAddress
	}
	return hosts
}

// execOut runs a shell command in the container as root.
func execOut(ctx context.Context, dc *client.Client, id, cmd string) (string, error) {
	ex, err := dc.ContainerExecCreate(ctx, id, container.ExecOptions{Cmd: []string{"/bin/sh", "-c", cmd}, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return "", err
	}
	att, err := dc.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		return "", err
	}
	defer att.Close()
	var stdout, stderr bytes.Buffer
	if _, err := stdcopy.StdCopy(&stdout, &stderr, att.Reader); err != nil {
		return stdout.String(), err
	}
	ins, err := dc.ContainerExecInspect(ctx, ex.ID)
	if err != nil {
		return stdout.String(), err
	}
	if ins.ExitCode != 0 {
		return stdout.String(), fmt.Errorf("%q exited %d: %s%s", cmd, ins.ExitCode, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

func mustExec(t *testing.T, ctx context.Context, dc *client.Client, id, cmd string) string {
	t.Helper()
	out, err := execOut(ctx, dc, id, cmd)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// setHostKey replaces a host's ed25519 host key and restarts sshd.
func setHostKey(t *testing.T, ctx context.Context, dc *client.Client, h testHost, priv []byte, pub string) {
	t.Helper()
	if err := dc.CopyToContainer(ctx, h.ID, "/", tarOf(map[string]tarFile{
		"etc/ssh/ssh_host_ed25519_key":     {0o600, priv},
		"etc/ssh/ssh_host_ed25519_key.pub": {0o644, []byte(pub + "\n")},
	}), container.CopyToContainerOptions{}); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, dc, h.ID, "systemctl restart ssh")
}
