//go:build acceptance

// Package acceptance runs the real provision binary against real hosts:
// system containers on this machine's Docker engine, plain sshd hosts for the
// generic driver, and real clouds when credentials are present. It is run by
// `make test` with PROVISION_ACC=1; without it every test skips.
package acceptance

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/swarm"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	// builtDir is the directory this process built the binary into; a
	// child process (the moto test re-executes itself in a namespace) is
	// handed the parent's binary and must not remove it.
	builtDir string
)

// TestMain removes the provision binary the run built.
func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

// requireAcc skips unless PROVISION_ACC=1.
func requireAcc(t *testing.T) {
	t.Helper()
	if os.Getenv("PROVISION_ACC") != "1" {
		t.Skip("acceptance tests run on real hosts: set PROVISION_ACC=1 (make test does)")
	}
}

// engineImage is the golden host image (drivers/local/image/engine.sh, built
// by make env): the local driver's image with the engine and the default
// hardening profile's packages installed, as hosts made from a Packer image
// or a provider snapshot come. The tests about changing a cluster (scaling,
// replacing, restoring, rotating) boot their hosts from it, so apply has no
// package transaction to run and their time goes to what they test; the
// tests of the install itself (TestLocalEndToEnd, TestHardening,
// TestEngineUpgrade, TestOfflineBundle, the generic driver's) use the bare
// image.
const engineImage = "provision/host:bookworm-engine"

// requireImage fails (PROVISION_REQUIRE_DOCKER=1) or skips a test whose
// host image is missing.
func requireImage(t *testing.T, dc *client.Client, img, builtBy string) {
	t.Helper()
	if _, err := dc.ImageInspect(context.Background(), img); err != nil {
		if os.Getenv("PROVISION_REQUIRE_DOCKER") == "1" {
			t.Fatalf("host image %s: %v (%s builds it; make env runs it)", img, err, builtBy)
		}
		t.Skipf("host image %s missing: run %s", img, builtBy)
	}
}

// repoRoot is the repository's top directory.
func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// binary builds cmd/provision once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "provision-acc-bin")
		if err != nil {
			buildErr = err
			return
		}
		builtDir = dir
		binPath = filepath.Join(dir, "provision")
		cmd := exec.Command("go", "build", "-tags", "libvirt_dlopen", "-o", binPath, "./cmd/provision") // as make build
		cmd.Dir = repoRoot(t)
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// result is one run of the binary.
type result struct {
	code           int
	stdout, stderr string
	took           time.Duration
}

// provision runs the binary with args and returns its result; it never fails
// the test by itself.
func provision(t *testing.T, ctx context.Context, env []string, args ...string) result {
	t.Helper()
	cmd := exec.CommandContext(ctx, binary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	t0 := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), took: time.Since(t0)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run provision %v: %v", args, err)
	}
	t.Logf("provision %s: exit %d in %s", strings.Join(args, " "), r.code, r.took.Round(time.Millisecond))
	return r
}

// mustProvision runs the binary and fails the test on a non-zero exit.
func mustProvision(t *testing.T, ctx context.Context, env []string, args ...string) result {
	t.Helper()
	r := provision(t, ctx, env, args...)
	if r.code != 0 {
		t.Fatalf("provision %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// dockerClient returns the machine's Docker engine, or skips/fails per
// PROVISION_REQUIRE_DOCKER.
func dockerClient(t *testing.T) *client.Client {
	t.Helper()
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = c.Ping(ctx)
		cancel()
	}
	if err != nil {
		if os.Getenv("PROVISION_REQUIRE_DOCKER") == "1" {
			t.Fatalf("docker engine required (PROVISION_REQUIRE_DOCKER=1): %v", err)
		}
		t.Skipf("no docker engine (%v): run acceptance/env/dockerd.sh", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// stateOf reads a state directory's state.json.
type stateFile struct {
	ClusterID string `json:"cluster_id"`
	Swarm     struct {
		ID string `json:"id"`
	} `json:"swarm"`
	Machines []struct {
		Name    string `json:"name"`
		ID      string `json:"id"`
		Address string `json:"address"`
		Role    string `json:"role"`
		Status  string `json:"status"`
		NodeID  string `json:"node_id"`
	} `json:"machines"`
}

func readState(t *testing.T, dir string) stateFile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatalf("read state: %v", err)
	}
	var s stateFile
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("parse state: %v", err)
	}
	return s
}

// engines opens TLS engine clients to every machine in state.
func engines(t *testing.T, stateDir string) (map[string]*swarm.Engine, *tls.Config) {
	t.Helper()
	cfg, err := pki.ClientTLS(filepath.Join(stateDir, "pki"))
	if err != nil {
		t.Fatalf("client TLS: %v", err)
	}
	out := map[string]*swarm.Engine{}
	for _, m := range readState(t, stateDir).Machines {
		e, err := swarm.Connect(m.Name, m.Address, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		out[m.Name] = e
	}
	return out, cfg
}

// leftovers lists containers, volumes and networks still labelled with the
// cluster ID on the machine's engine.
func leftovers(t *testing.T, dc *client.Client, clusterID string) []string {
	t.Helper()
	ctx := context.Background()
	f := filters.NewArgs(filters.Arg("label", drivers.TagCluster+"="+clusterID))
	var out []string
	cs, err := dc.ContainerList(ctx, containerListAll(f))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		out = append(out, "container "+strings.Join(c.Names, ","))
	}
	vs, err := dc.VolumeList(ctx, volume.ListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs.Volumes {
		out = append(out, "volume "+v.Name)
	}
	ns, err := dc.NetworkList(ctx, network.ListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		out = append(out, "network "+n.Name)
	}
	return out
}

// testImage is the image the tests run on cluster nodes; busyboxImage makes it.
const testImage = "provision-acceptance/busybox:1"

// busyboxImage imports testImage, a tiny image made from the machine's static
// busybox, into an engine (no registry is reachable): /bin/busybox plus
// applet links.
func busyboxImage(t *testing.T, ctx context.Context, e *swarm.Engine) {
	t.Helper()
	if err := importBusybox(ctx, e); err != nil {
		t.Fatal(err)
	}
}

var (
	busyboxOnce sync.Once
	busyboxTar  []byte
	busyboxErr  error
)

// importBusybox is busyboxImage for goroutines: it returns the error.
func importBusybox(ctx context.Context, e *swarm.Engine) error {
	busyboxOnce.Do(func() {
		bb, err := exec.LookPath("busybox")
		if err != nil {
			for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
				if _, e := os.Stat(p); e == nil {
					bb = p
				}
			}
		}
		if bb == "" {
			busyboxErr = fmt.Errorf("static busybox not found: apt-get install busybox-static (acceptance/env/dockerd.sh installs it)")
			return
		}
		data, err := os.ReadFile(bb)
		if err != nil {
			busyboxErr = err
			return
		}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, d := range []string{"bin/", "tmp/", "www/"} {
			tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755})
		}
		tw.WriteHeader(&tar.Header{Name: "bin/busybox", Mode: 0o755, Size: int64(len(data))})
		tw.Write(data)
		for _, a := range []string{"sh", "nc", "httpd", "sleep", "echo", "cat", "hostname", "ip", "printf", "ls"} {
			tw.WriteHeader(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
		}
		idx := []byte("provision-acceptance\n")
		tw.WriteHeader(&tar.Header{Name: "www/index.html", Mode: 0o644, Size: int64(len(idx))})
		tw.Write(idx)
		tw.Close()
		busyboxTar = buf.Bytes()
	})
	if busyboxErr != nil {
		return busyboxErr
	}
	rc, err := e.ImageImport(ctx, image.ImportSource{Source: bytes.NewReader(busyboxTar), SourceName: "-"}, testImage, image.ImportOptions{})
	if err != nil {
		return fmt.Errorf("%s: import busybox image: %w", e.Name, err)
	}
	io.Copy(io.Discard, rc)
	rc.Close()
	return nil
}

// eventually polls fn until it returns nil or the timeout passes.
func eventually(t *testing.T, ctx context.Context, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = fn(); err == nil {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// execer is the part of the engine API that runs commands in containers: the
// machine's own engine and a provisioned node's TLS engine both have it.
type execer interface {
	ContainerExecCreate(ctx context.Context, id string, o container.ExecOptions) (types.IDResponse, error)
	ContainerExecAttach(ctx context.Context, id string, o container.ExecAttachOptions) (types.HijackedResponse, error)
	ContainerExecInspect(ctx context.Context, id string) (container.ExecInspect, error)
}

// runIn runs a command in a container and returns what it printed (stdout
// and stderr, demultiplexed); a non-zero exit is an error carrying the output.
func runIn(ctx context.Context, e execer, id string, cmd []string) (string, error) {
	ex, err := e.ContainerExecCreate(ctx, id, container.ExecOptions{Cmd: cmd, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return "", err
	}
	att, err := e.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		return "", err
	}
	defer att.Close()
	var sb strings.Builder
	if _, err := stdcopy.StdCopy(&sb, &sb, att.Reader); err != nil {
		return sb.String(), err
	}
	ins, err := e.ContainerExecInspect(ctx, ex.ID)
	if err != nil {
		return sb.String(), err
	}
	if ins.ExitCode != 0 {
		return sb.String(), fmt.Errorf("%q exited %d: %s", strings.Join(cmd, " "), ins.ExitCode, sb.String())
	}
	return sb.String(), nil
}

// statusDoc is what the tests read of `provision status --json`.
type statusDoc struct {
	ClusterID  string       `json:"cluster_id"`
	Nodes      []nodeStatus `json:"nodes"`
	Unrecorded []string     `json:"unrecorded_nodes"`
}

type nodeStatus struct {
	Name           string `json:"name"`
	Role           string `json:"role"`
	Address        string `json:"address"`
	Status         string `json:"status"`
	Swarm          string `json:"swarm"`
	Manager        string `json:"manager"`
	Leader         bool   `json:"leader"`
	Error          string `json:"error"`
	PruneLastRun   string `json:"prune_last_run"`
	PruneReclaimed string `json:"prune_reclaimed"`
}

// parseStatus decodes the output of `provision status --json`.
func parseStatus(t *testing.T, out string) statusDoc {
	t.Helper()
	var st statusDoc
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}
