//go:build acceptance

package acceptance

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

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
`

// TestEngineExtrasLocal is issue 15's metrics part on the local driver:
//   - every engine serves Prometheus metrics on its private address, port
//     9323, and another member reads them;
//   - a host on the same network that is not a member cannot connect to it
//     (the firewall opens it to members and metrics_cidrs only);
//   - `status --prometheus` prints a file_sd list naming each node's endpoint;
//   - `status --metrics` shows each node's containers, CPU, memory and disk.
func TestEngineExtrasLocal(t *testing.T) {
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
}

// NodeMetricsJSON is one entry of `status --metrics --json`'s "metrics".
type NodeMetricsJSON struct {
	Name     string        `json:"name"`
	Endpoint string        `json:"endpoint"`
	Summary  *metrics.Node `json:"summary"`
	Error    string        `json:"error"`
}
