//go:build acceptance

package acceptance

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"

	"github.com/provision/provision/drivers"
)

// TestMixedDrivers: one cluster on two drivers. The manager is a system
// container the local driver makes on a network the test made; the worker
// is an existing machine on that network reached through the generic
// driver. Both join one swarm whose overlay carries traffic between them,
// and destroy removes the local machine and releases the generic one.
func TestMixedDrivers(t *testing.T) {
	hostTest(t) // schedule_test.go
	requireAcc(t)
	dc := dockerClient(t)
	requireImage(t, dc, engineImage, "drivers/local/image/engine.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	dir := t.TempDir()
	userPriv, userPub := newKeyPair(t)
	keyFile := filepath.Join(dir, "admin_ed25519")
	if err := os.WriteFile(keyFile, userPriv, 0o600); err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("acc-mixed-%d", time.Now().UnixNano()%100000)
	metal := startPlainHosts(t, ctx, dc, prefix, 1, userPub)[0]

	specFile := filepath.Join(dir, "mixed.hcl")
	if err := os.WriteFile(specFile, []byte(fmt.Sprintf(`
name = "mixed"
driver "local" {
  image   = "provision/host:bookworm-engine"
  network = %q
}
driver "generic" {
  alias     = "metal"
  user      = "admin"
  key_file  = %q
  host_keys = { %q = %q }
}
managers {
  driver = "local"
  count  = 1
}
workers {
  pool   = "metal"
  driver = "metal"
  count  = 1
  hosts  = [%q]
}
hardening { profile = "off" }
`, prefix+"-net", keyFile, metal.Address, metal.HostKey, metal.Address)), 0o644); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(dir, "state")
	sd := "--state-dir=" + stateDir
	clusterID := ""
	t.Cleanup(func() {
		if clusterID == "" {
			provision(t, context.Background(), nil, "destroy", specFile, sd, "--auto-approve")
		}
	})

	r := mustProvision(t, ctx, nil, "apply", specFile, sd, "--auto-approve")
	t.Logf("mixed apply took %s", r.took)
	st := readState(t, stateDir)
	ens, _ := engines(t, stateDir)
	var mgrName, wrkName string
	for _, m := range st.Machines {
		switch m.Role {
		case "manager":
			mgrName = m.Name
		default:
			wrkName = m.Name
			if m.Address != metal.Address {
				t.Errorf("worker %s at %s, want the generic host %s", m.Name, m.Address, metal.Address)
			}
		}
	}
	if mgrName == "" || wrkName == "" {
		t.Fatalf("state: %+v", st.Machines)
	}
	// The manager is the local driver's container (it carries the cluster label).
	cs, err := dc.ContainerList(ctx, containerListAll(filters.NewArgs(filters.Arg("label", drivers.TagCluster+"="+st.ClusterID))))
	if err != nil || len(cs) != 1 {
		t.Fatalf("local driver's containers for the cluster: %d (%v)", len(cs), err)
	}
	mgr := ens[mgrName]
	nodes, err := mgr.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ready := map[string]bool{}
	for _, n := range nodes {
		ready[n.Description.Hostname] = n.Status.State == swarm.NodeStateReady
	}
	if len(nodes) != 2 || !ready[mgrName] || !ready[wrkName] {
		t.Fatalf("swarm nodes %v, want %s and %s Ready", ready, mgrName, wrkName)
	}
	overlayService(t, ctx, ens, mgr, 2)

	r = mustProvision(t, ctx, nil, "apply", specFile, sd, "--auto-approve")
	if !strings.Contains(r.stderr, "No changes") {
		t.Errorf("second apply was not a no-op:\n%s", r.stderr)
	}

	clusterID = st.ClusterID
	mustProvision(t, ctx, nil, "destroy", specFile, sd, "--auto-approve")
	if left := leftovers(t, dc, clusterID); len(left) > 0 {
		t.Errorf("destroy left: %v", left)
	}
	if _, err := execOut(ctx, dc, metal.ID, "test ! -e /etc/provision/machine.json"); err != nil {
		t.Errorf("destroy left the ownership tag on the generic host %s: %v", metal.Name, err)
	}
}
