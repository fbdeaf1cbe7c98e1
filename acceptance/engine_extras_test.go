//go:build acceptance

package acceptance

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/provision/provision/drivers/local"
	"github.com/provision/provision/provision/metrics"
)

// extrasSpec is a lean two-node local cluster: hardening off except the
// firewall, which is what the metrics endpoint's openings are checked
// against.
const extrasSpec = `name = "mxacc"
driver "local" {}
managers { count = 1 }
workers { count = 1 }
hardening {
  profile  = "off"
  firewall = true
}
images = ["app.tar"]
engine {
  registry_mirrors = ["https://mirror.acc.test:5000"]
  registry "registry.acc.test:5000" {
    ca_file = "ca.crt"
  }
}
`

// extrasImage is the small image the test saves into app.tar: made on this
// machine's engine from a one-file tar (no registry is reachable).
const extrasImage = "mxacc/scratch:1"

// TestEngineExtrasLocal is issue 15's metrics and image parts on the local
// driver:
//   - every engine serves Prometheus metrics on its private address, port
//     9323, and another member reads them;
//   - a host on the same network that is not a member cannot connect to it
//     (the firewall opens it to members and metrics_cidrs only);
//   - `status --prometheus` prints a file_sd list naming each node's endpoint;
//   - `status --metrics` shows each node's containers, CPU, memory and disk;
//   - `images = ["app.tar"]` loads the archive onto every node through the
//     engine API under its ID and tag, and a second apply loads nothing;
//   - the registry mirror lands in daemon.json and the private registry's
//     CA in /etc/docker/certs.d/<host>/ca.crt.
func TestEngineExtrasLocal(t *testing.T) {
	hostTest(t) // each local-host test has its own cluster, network and state; longest first, a few at a time (schedule_test.go)
	requireAcc(t)
	dc := dockerClient(t)
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	sd := "--state-dir=" + stateDir
	file := filepath.Join(dir, "extras.hcl")
	if err := os.WriteFile(file, []byte(extrasSpec), 0o600); err != nil {
		t.Fatal(err)
	}
	imageID := saveScratchImage(t, ctx, dc, filepath.Join(dir, "app.tar"))
	ca := registryCA(t)
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		provision(t, context.Background(), nil, "destroy", file, sd, "--auto-approve")
		t.Logf("TestEngineExtrasLocal took %s", time.Since(t0).Round(time.Second))
	})
	mustProvision(t, ctx, nil, "apply", file, sd, "--auto-approve")
	ms := hardMachines(t, stateDir)
	var mgr, wrk hardMachine
	for _, m := range ms {
		if m.Role == "manager" {
			mgr = m
		} else {
			wrk = m
		}
	}
	if mgr.ID == "" || wrk.ID == "" {
		t.Fatalf("machines: %+v", ms)
	}

	// file_sd: one group per node, its private address and 9323.
	r := mustProvision(t, ctx, nil, "status", file, sd, "--prometheus")
	var groups []metrics.Group
	if err := json.Unmarshal([]byte(r.stdout), &groups); err != nil {
		t.Fatalf("status --prometheus is not a file_sd list: %v\n%s", err, r.stdout)
	}
	want := map[string]string{mgr.Name: mgr.Address + ":9323", wrk.Name: wrk.Address + ":9323"}
	if len(groups) != 2 {
		t.Fatalf("file_sd groups: %s", r.stdout)
	}
	for _, g := range groups {
		if len(g.Targets) != 1 || g.Targets[0] != want[g.Labels["node"]] || g.Labels["cluster"] != "mxacc" || g.Labels["role"] == "" {
			t.Errorf("file_sd group %+v, want target %q", g, want[g.Labels["node"]])
		}
	}

	// A member reads the other's metrics.
	for _, c := range []struct{ from, to hardMachine }{{wrk, mgr}, {mgr, wrk}} {
		out, err := rootRun(ctx, dc, c.from, fmt.Sprintf("curl -sS --max-time 5 http://%s:9323/metrics", c.to.Address))
		if err != nil || !strings.Contains(out, "engine_daemon_engine_info") {
			t.Errorf("%s reading %s:9323/metrics: %v\n%.400s", c.from.Name, c.to.Name, err, out)
		}
	}

	// A non-member on the same network does not get in (SSH, the control, does).
	ci, err := dc.ContainerInspect(ctx, mgr.ID)
	if err != nil {
		t.Fatal(err)
	}
	outsider := startContainer(t, ctx, dc, "mxacc-outsider", ci.Config.Labels[local.TagNetwork], &container.Config{Image: local.DefaultImage, Cmd: []string{"sleep", "infinity"}}, &container.HostConfig{})
	tcp := func(ip string, port int) error {
		_, err := runIn(ctx, dc, outsider, []string{"timeout", "4", "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d", ip, port)})
		return err
	}
	if err := tcp(mgr.Address, 22); err != nil {
		t.Fatalf("the outsider cannot reach %s:22, so it proves nothing: %v", mgr.Name, err)
	}
	if err := tcp(mgr.Address, 9323); err == nil {
		t.Errorf("a non-member reached %s:9323", mgr.Name)
	}

	// The live summary.
	r = mustProvision(t, ctx, nil, "status", file, sd, "--metrics")
	for _, m := range ms {
		line := ""
		for _, l := range strings.Split(r.stdout, "\n") {
			if strings.HasPrefix(l, m.Name+" ") && strings.Contains(l, "running") {
				line = l
			}
		}
		if line == "" || !strings.Contains(line, "cpu") || !strings.Contains(line, "in /var/lib/docker") || !strings.Contains(line, m.Address+":9323") {
			t.Errorf("status --metrics has no summary for %s:\n%s", m.Name, r.stdout)
		}
	}
	r = mustProvision(t, ctx, nil, "status", file, sd, "--metrics", "--json")
	var js struct {
		Metrics []NodeMetricsJSON `json:"metrics"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &js); err != nil || len(js.Metrics) != 2 {
		t.Fatalf("status --metrics --json: %v\n%s", err, r.stdout)
	}
	for _, m := range js.Metrics {
		if m.Summary == nil || m.Summary.CPUs < 1 || m.Summary.MemTotal == 0 || m.Summary.DiskRoot != "/var/lib/docker" {
			t.Errorf("summary of %s: %+v (%s)", m.Name, m.Summary, m.Error)
		}
	}

	// Images: on every node under their ID and tag.
	ens, _ := engines(t, stateDir)
	for name, e := range ens {
		im, err := e.ImageInspect(ctx, extrasImage)
		if err != nil || im.ID != imageID {
			t.Errorf("%s: %s is %q (%v), want %s", name, extrasImage, im.ID, err, imageID)
		}
	}
	// Registry settings on the hosts.
	for _, m := range ms {
		out, err := rootRun(ctx, dc, m, "cat /etc/docker/certs.d/registry.acc.test:5000/ca.crt")
		if err != nil || out != string(ca) {
			t.Errorf("%s: registry CA %q (%v)", m.Name, out, err)
		}
		out, err = rootRun(ctx, dc, m, "cat /etc/docker/daemon.json")
		if err != nil || !strings.Contains(out, `"registry-mirrors": ["https://mirror.acc.test:5000"]`) || !strings.Contains(out, `"metrics-addr": "`+m.Address+`:9323"`) {
			t.Errorf("%s: daemon.json:\n%s (%v)", m.Name, out, err)
		}
	}
	// A second apply loads nothing.
	r = mustProvision(t, ctx, nil, "apply", file, sd, "--auto-approve", "--json")
	for _, l := range strings.Split(r.stdout+r.stderr, "\n") {
		if strings.Contains(l, `"step":"engine.images"`) && strings.Contains(l, `"kind":"step_changed"`) {
			t.Errorf("the second apply loaded again: %s", l)
		}
	}
}

// saveScratchImage imports a one-file image into this machine's engine,
// saves it into file (`docker save` format, through the SDK) and removes it
// again; it returns the image's ID.
func saveScratchImage(t *testing.T, ctx context.Context, dc *client.Client, file string) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	body := []byte("provision acceptance image\n")
	tw.WriteHeader(&tar.Header{Name: "hello.txt", Mode: 0o644, Size: int64(len(body))})
	tw.Write(body)
	tw.Close()
	rc, err := dc.ImageImport(ctx, image.ImportSource{Source: &buf, SourceName: "-"}, extrasImage, image.ImportOptions{})
	if err != nil {
		t.Fatalf("import %s: %v", extrasImage, err)
	}
	io.Copy(io.Discard, rc)
	rc.Close()
	t.Cleanup(func() { dc.ImageRemove(context.Background(), extrasImage, image.RemoveOptions{Force: true}) })
	im, err := dc.ImageInspect(ctx, extrasImage)
	if err != nil {
		t.Fatal(err)
	}
	rc, err = dc.ImageSave(ctx, []string{extrasImage})
	if err != nil {
		t.Fatalf("save %s: %v", extrasImage, err)
	}
	defer rc.Close()
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, rc); err != nil {
		t.Fatalf("save %s: %v", extrasImage, err)
	}
	return im.ID
}

// registryCA is a throwaway CA certificate (PEM) standing in for a private
// registry's.
func registryCA(t *testing.T) []byte {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "registry.acc.test CA"}, NotBefore: time.Now(), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// NodeMetricsJSON is one entry of `status --metrics --json`'s "metrics".
type NodeMetricsJSON struct {
	Name     string        `json:"name"`
	Endpoint string        `json:"endpoint"`
	Summary  *metrics.Node `json:"summary"`
	Error    string        `json:"error"`
}
