//go:build acceptance

package acceptance

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	dswarm "github.com/docker/docker/api/types/swarm"

	"github.com/provision/provision/drivers"
)

const restoreSpec = `
name = "rst"
driver "local" { image = "provision/host:bookworm-engine" }
managers {
  count = 1
}
workers {
  count = 1
}
`

// TestRaftRestoreAndMissing is issue 11's last two cases on a 1-manager
// cluster with one worker. A backup taken by `provision backup` brings a
// config back after the manager's raft is wiped (`provision restore`),
// with the same swarm and the worker back in it. Then the manager's
// container goes behind the tool's back: plan says every manager appears
// gone, apply refuses without --replace-missing and, with it, forms a new
// swarm that the worker leaves its old one to join (never left hanging).
// Last, every container goes: the same refusal, and --replace-missing
// rebuilds the cluster.
func TestRaftRestoreAndMissing(t *testing.T) {
	hostTest(t) // each local-host test has its own cluster, network and state; longest first, a few at a time (schedule_test.go)
	requireAcc(t)
	dc := dockerClient(t)
	requireImage(t, dc, engineImage, "drivers/local/image/engine.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dir := t.TempDir()
	d := &day2{dc: dc, spec: filepath.Join(dir, "rst.hcl"), stateDir: filepath.Join(dir, "state"), vars: map[string]string{}}
	if err := os.WriteFile(d.spec, []byte(restoreSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			provision(t, context.Background(), nil, d.args("destroy", "--auto-approve")...)
		}
	})
	mustProvision(t, ctx, nil, d.args("apply", "--auto-approve")...)
	d.clusterID = d.state(t).ClusterID
	swarmID := d.state(t).Swarm.ID
	mgr := d.manager(t, ctx)
	if _, err := mgr.ConfigCreate(ctx, dswarm.ConfigSpec{Annotations: dswarm.Annotations{Name: "rst-config"}, Data: []byte("keep me\n")}); err != nil {
		t.Fatal(err)
	}

	// A backup, by the command.
	out := strings.TrimSpace(mustProvision(t, ctx, nil, d.args("backup")...).stdout)
	backup := out
	if !filepath.IsAbs(backup) {
		backup, _ = filepath.Abs(backup)
	}
	fi, err := os.Stat(backup)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup %q: %v", out, err)
	}
	if di, err := os.Stat(filepath.Dir(backup)); err != nil || di.Mode().Perm() != 0o700 {
		t.Fatalf("backup directory: %v", err)
	}
	if l := mustProvision(t, ctx, nil, d.args("backup", "--list")...).stdout; !strings.Contains(l, filepath.Base(backup)) {
		t.Errorf("backup --list: %q", l)
	}

	// The raft is wiped: the manager's swarm directory is gone.
	mgrID := d.containerOf(t, ctx, "rst-manager-1")
	if out, err := runIn(ctx, dc, mgrID, []string{"sh", "-c", "systemctl stop docker.socket docker.service; rm -rf /var/lib/docker/swarm; systemctl start docker.service"}); err != nil {
		t.Fatalf("wipe the raft: %v %s", err, out)
	}
	eventually(t, ctx, time.Minute, "manager's engine back without a swarm", func() error {
		l, err := mgr.Inspect(ctx)
		if err == nil && l.State != dswarm.LocalNodeStateInactive {
			err = errorf("swarm state %s", l.State)
		}
		return err
	})

	r := mustProvision(t, ctx, nil, d.args("restore", backup, "--auto-approve")...)
	t.Logf("restore:\n%s", r.stderr)
	sw, err := mgr.SwarmInspect(ctx)
	if err != nil || sw.ID != swarmID || d.state(t).Swarm.ID != swarmID {
		t.Fatalf("restored swarm %s (state %s), want %s: %v", sw.ID, d.state(t).Swarm.ID, swarmID, err)
	}
	cs, err := mgr.ConfigList(ctx, dswarm.ConfigListOptions{Filters: filters.NewArgs(filters.Arg("name", "rst-config"))})
	if err != nil || len(cs) != 1 || string(cs[0].Spec.Data) != "keep me\n" {
		t.Fatalf("config after restore: %v %+v", err, cs)
	}
	mustProvision(t, ctx, nil, d.args("apply", "--auto-approve")...)
	d.convergedN(t, ctx, 1, 1)

	// Every manager gone (the worker stays): refused, then replaced; the
	// worker leaves the lost swarm and joins the new one.
	d.removeContainers(t, ctx, "rst-manager-1")
	p := mustProvision(t, ctx, nil, d.args("plan")...)
	if !strings.Contains(p.stdout, "WARNING: every manager of cluster \"rst\" appears gone") {
		t.Errorf("plan does not warn:\n%s", p.stdout)
	}
	d.refusedThenReplaced(t, ctx)
	if st := d.state(t); st.Swarm.ID == swarmID || !slices.Contains(st.Swarm.Retired, swarmID) {
		t.Errorf("swarm after the managers were replaced: %s, retired %v", st.Swarm.ID, st.Swarm.Retired)
	}
	d.convergedN(t, ctx, 1, 1)

	// Every container gone.
	d.removeContainers(t, ctx, "")
	p = mustProvision(t, ctx, nil, d.args("plan")...)
	if !strings.Contains(p.stdout, "WARNING: every machine of cluster \"rst\" appears gone") {
		t.Errorf("plan does not warn:\n%s", p.stdout)
	}
	d.refusedThenReplaced(t, ctx)
	d.convergedN(t, ctx, 1, 1)

	mustProvision(t, ctx, nil, d.args("destroy", "--auto-approve")...)
	destroyed = true
	if left := leftovers(t, dc, d.clusterID); len(left) > 0 {
		t.Errorf("destroy left: %v", left)
	}
}

// refusedThenReplaced: apply refuses (exit 4) naming the flag and the
// likely causes, and makes nothing; with --replace-missing it converges.
func (d *day2) refusedThenReplaced(t *testing.T, ctx context.Context) {
	t.Helper()
	before := d.containers(t, ctx)
	r := provision(t, ctx, nil, d.args("apply", "--auto-approve")...)
	if r.code != 4 {
		t.Errorf("apply with machines missing: exit %d, want 4\n%s", r.code, r.stderr)
	}
	for _, want := range []string{"--replace-missing", "DOCKER_HOST", "credentials", "region"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("refusal does not name %q:\n%s", want, r.stderr)
		}
	}
	if after := d.containers(t, ctx); len(after) != len(before) {
		t.Errorf("a refused apply made containers: %v -> %v", before, after)
	}
	mustProvision(t, ctx, nil, d.args("apply", "--auto-approve", "--replace-missing")...)
}

// removeContainers removes a machine's container (every container of the
// cluster when name is "") behind the tool's back.
func (d *day2) removeContainers(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	f := filters.NewArgs(filters.Arg("label", drivers.TagCluster+"="+d.clusterID))
	if name != "" {
		f.Add("label", drivers.TagMachine+"="+name)
	}
	cs, err := d.dc.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil || len(cs) == 0 {
		t.Fatalf("containers to remove: %v %d", err, len(cs))
	}
	for _, c := range cs {
		if err := d.dc.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
			t.Fatal(err)
		}
	}
}

func (d *day2) containers(t *testing.T, ctx context.Context) []string {
	t.Helper()
	cs, err := d.dc.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", drivers.TagCluster+"="+d.clusterID))})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range cs {
		out = append(out, c.ID)
	}
	return out
}

// convergedN waits until status shows the machines ready and in the swarm.
func (d *day2) convergedN(t *testing.T, ctx context.Context, managers, workers int) {
	t.Helper()
	eventually(t, ctx, 90*time.Second, "status converged", func() error {
		st := parseStatus(t, mustProvision(t, ctx, nil, d.args("status", "--json")...).stdout)
		m, w := 0, 0
		for _, n := range st.Nodes {
			if n.Status != "ready" || n.Swarm != "ready" || n.Error != "" || (n.Role == "manager" && n.Manager != "reachable") {
				return errorf("%s is %s, swarm %q, manager %q, error %q", n.Name, n.Status, n.Swarm, n.Manager, n.Error)
			}
			if n.Role == "manager" {
				m++
			} else {
				w++
			}
		}
		if m != managers || w != workers || len(st.Unrecorded) > 0 {
			return errorf("%d managers, %d workers, unrecorded %v", m, w, st.Unrecorded)
		}
		return nil
	})
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
