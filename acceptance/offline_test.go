//go:build acceptance

package acceptance

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOfflineBundle is issue 4's third check: a host on a Docker network
// without outside access (`internal = true` makes the local driver create the
// cluster network with --internal) gets its engine through the offline bundle
// the operator's machine prepares and uploads, and joins a TLS swarm.
func TestOfflineBundle(t *testing.T) {
	hostTest(t) // each local-host test has its own cluster, network and state; longest first, a few at a time (schedule_test.go)
	requireAcc(t)
	dc := dockerClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	dir := t.TempDir()
	spec := `
name = "airgap"
driver "local" { internal = true }
managers { count = 1 }
engine { method = "bundle" }
`
	specFile := filepath.Join(dir, "airgap.hcl")
	if err := os.WriteFile(specFile, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(dir, "state")
	sd := "--state-dir=" + stateDir
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			provision(t, context.Background(), nil, "destroy", specFile, sd, "--auto-approve")
		}
	})
	mustProvision(t, ctx, nil, "apply", specFile, sd, "--auto-approve")
	st := readState(t, stateDir)
	if len(st.Machines) != 1 {
		t.Fatalf("%d machines, want 1", len(st.Machines))
	}
	m := st.Machines[0]

	// The host really is air-gapped: apt cannot reach the mirror.
	if out, err := execOut(ctx, dc, m.ID, "timeout 20 apt-get update -o Acquire::Retries=0 2>&1"); err == nil && !strings.Contains(out, "Err:") && !strings.Contains(out, "Could not") {
		t.Fatalf("host %s reached the package mirror; the test network is not internal:\n%s", m.Name, out)
	}
	// And yet it runs the engine, over TLS, in a swarm.
	ens, _ := engines(t, stateDir)
	loc, err := ens[m.Name].Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if loc.Engine == "" || !loc.Manager {
		t.Fatalf("engine %q manager=%v", loc.Engine, loc.Manager)
	}
	t.Logf("air-gapped host runs engine %s", loc.Engine)

	mustProvision(t, ctx, nil, "destroy", specFile, sd, "--auto-approve")
	destroyed = true
	if left := leftovers(t, dc, st.ClusterID); len(left) > 0 {
		t.Errorf("destroy left: %v", left)
	}
}
