package hostos_test

// The container tests drive a real Debian 12 host: a system container from
// provision/host:bookworm (systemd as PID 1, its own network namespace and
// nested dockerd), started with the Docker Engine SDK exactly as the local
// driver does. The transport is execComm, a Comm over the engine's exec API,
// running as an unprivileged login user with sudo like the SSH transport.
// SSH itself (host keys, sessions, SFTP) is tested in provision/comm and end
// to end in acceptance/.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/provision/provision/drivers/local"
	"github.com/provision/provision/provision/comm"
)

const hostImage = "provision/host:bookworm"

// needDocker returns the machine's engine, or skips (fails with
// PROVISION_REQUIRE_DOCKER=1) when there is none or the host image is absent.
func needDocker(t *testing.T) *client.Client {
	t.Helper()
	skip := func(format string, args ...any) {
		t.Helper()
		if os.Getenv("PROVISION_REQUIRE_DOCKER") == "1" {
			t.Fatalf("docker required (PROVISION_REQUIRE_DOCKER=1): "+format, args...)
		}
		t.Skipf(format, args...)
	}
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		skip("no docker client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Ping(ctx); err != nil {
		c.Close()
		skip("no docker engine (%v): run acceptance/env/dockerd.sh", err)
	}
	if _, err := c.ImageInspect(ctx, hostImage); err != nil {
		c.Close()
		skip("host image %s missing (%v): run drivers/local/image/build.sh", hostImage, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// testHost is one system container on its own network.
type testHost struct {
	ID      string
	IP      string // the host's address
	Gateway string // the machine's address as the host sees it (the test's source address)
	Comm    *execComm
}

// startHost starts a system container with the local driver's run flags on
// a new network and waits for systemd. Everything is removed at cleanup.
// With internal, the network has no route out (an air-gapped host).
func startHost(t *testing.T, dc *client.Client, hostname string, internal bool) *testHost {
	t.Helper()
	return startHostWith(t, dc, hostname, internal, nil)
}

// startHostWith is startHost with the container's host config changed by
// tweak before it is created (devices, mounts).
func startHostWith(t *testing.T, dc *client.Client, hostname string, internal bool, tweak func(*container.HostConfig)) *testHost {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	suffix := randHex(4)
	netName := "provision-hostos-test-" + suffix
	nw, err := dc.NetworkCreate(ctx, netName, network.CreateOptions{Driver: "bridge", Internal: internal, Labels: map[string]string{"provision-test": "hostos"}})
	if err != nil {
		t.Fatalf("create network: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := dc.NetworkRemove(ctx, nw.ID); err != nil {
			t.Errorf("remove network %s: %v", netName, err)
		}
	})
	info, err := dc.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The local driver's recipe; the anonymous /var/lib/docker volume gives
	// the nested engine a real overlay2 backing.
	cfg, hc, nc := local.SystemContainer(hostImage, hostname, netName, "", info.CgroupVersion == "2")
	cfg.Labels = map[string]string{"provision-test": "hostos"}
	if tweak != nil {
		tweak(hc)
	}
	cr, err := dc.ContainerCreate(ctx, cfg, hc, nc, nil, "provision-hostos-test-"+suffix)
	if err != nil {
		t.Fatalf("create container: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := dc.ContainerRemove(ctx, cr.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
			t.Errorf("remove container: %v", err)
		}
	})
	if err := dc.ContainerStart(ctx, cr.ID, container.StartOptions{}); err != nil {
		t.Fatalf("start container: %v", err)
	}
	ins, err := dc.ContainerInspect(ctx, cr.ID)
	if err != nil {
		t.Fatalf("inspect container: %v", err)
	}
	ep := ins.NetworkSettings.Networks[netName]
	if ep == nil || ep.IPAddress == "" {
		t.Fatalf("container has no address on %s", netName)
	}
	h := &testHost{ID: cr.ID, IP: ep.IPAddress, Gateway: ep.Gateway}
	root := &execComm{dc: dc, id: cr.ID, user: "root"}
	// Until PID 1 has its bus up, systemctl cannot even ask.
	for {
		out, err := root.Run(ctx, "systemctl is-system-running --wait", nil)
		state := strings.TrimSpace(string(out))
		if state == "running" || state == "degraded" {
			if state == "degraded" {
				failed, _ := root.Run(ctx, "systemctl --failed --no-legend", nil)
				t.Logf("systemd degraded: %s", failed)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("systemd did not come up: %q %v", state, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// What the local driver does before the first login: host keys, and an
	// admin user with passwordless sudo.
	setup := `set -e
ssh-keygen -A >/dev/null
# sshd may be mid-way through failing without host keys: settle, then start.
systemctl stop ssh.service || true
systemctl reset-failed ssh.service || true
for i in 1 2 3 4 5; do systemctl start ssh.service && break; sleep 1; systemctl reset-failed ssh.service || true; done
systemctl is-active ssh.service >/dev/null
useradd -m -s /bin/bash provision
printf 'provision ALL=(ALL) NOPASSWD:ALL\n' >/etc/sudoers.d/provision
chmod 0440 /etc/sudoers.d/provision`
	if out, err := root.Run(ctx, setup, nil); err != nil {
		t.Fatalf("prepare host: %v\n%s", err, out)
	}
	h.Comm = &execComm{dc: dc, id: cr.ID, user: "provision",
		// as sshd sets it: client address and port, server address and port
		env: []string{"SSH_CONNECTION=" + h.Gateway + " 50022 " + h.IP + " 22"}}
	return h
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// execComm is a Comm over the engine's exec API: each Run is `sh -c CMD`
// as user, with stdin streamed in.
type execComm struct {
	dc   *client.Client
	id   string
	user string
	env  []string
	runs int // commands run, for cost assertions
}

func (e *execComm) Sudo(cmd string) string {
	if e.user == "root" {
		return cmd
	}
	return "sudo -n " + cmd
}

func (e *execComm) Run(ctx context.Context, cmd string, stdin io.Reader) ([]byte, error) {
	e.runs++
	ex, err := e.dc.ContainerExecCreate(ctx, e.id, container.ExecOptions{
		User: e.user, Env: e.env, Cmd: []string{"sh", "-c", cmd},
		AttachStdin: stdin != nil, AttachStdout: true, AttachStderr: true,
	})
	if err != nil {
		return nil, fmt.Errorf("exec create: %w", err)
	}
	hj, err := e.dc.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		return nil, fmt.Errorf("exec attach: %w", err)
	}
	defer hj.Close()
	stop := context.AfterFunc(ctx, func() { hj.Conn.Close() })
	defer stop()
	if stdin != nil {
		go func() {
			io.Copy(hj.Conn, stdin)
			hj.CloseWrite()
		}()
	}
	var stdout, stderr bytes.Buffer
	if _, err := stdcopy.StdCopy(&stdout, &stderr, hj.Reader); err != nil {
		if ctx.Err() != nil {
			return stdout.Bytes(), ctx.Err()
		}
		return stdout.Bytes(), fmt.Errorf("exec read: %w", err)
	}
	ins, err := e.dc.ContainerExecInspect(ctx, ex.ID)
	if err != nil {
		return stdout.Bytes(), fmt.Errorf("exec inspect: %w", err)
	}
	if ins.ExitCode != 0 {
		se := stderr.String()
		if len(se) > 4096 {
			se = se[len(se)-4096:]
		}
		return stdout.Bytes(), &comm.ExitError{Host: e.id[:12], Cmd: cmd, Code: ins.ExitCode, Stderr: strings.TrimSpace(se)}
	}
	return stdout.Bytes(), nil
}

func (e *execComm) Upload(ctx context.Context, path string, content io.Reader, mode fs.FileMode) error {
	p := comm.Quote(path)
	_, err := e.Run(ctx, fmt.Sprintf("umask 077; cat >%s && chmod %04o %s", p, mode.Perm(), p), content)
	return err
}

func (e *execComm) Download(ctx context.Context, path string) ([]byte, error) {
	return e.Run(ctx, "cat "+comm.Quote(path), nil)
}
