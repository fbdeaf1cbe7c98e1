//go:build acceptance

package acceptance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	dswarm "github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"

	"github.com/provision/provision/provision/swarm"
)

const quorumSpec = `
name = "quorum"
driver "local" { image = "provision/host:bookworm-engine" }
managers {
  count = 3
}
`

const (
	quorumService = "quorum-svc"
)

// quorum is the cluster TestQuorumLoss works on.
type quorum struct {
	dc       *client.Client
	spec     string
	stateDir string
}

func (q *quorum) sd() string { return "--state-dir=" + q.stateDir }

// TestQuorumLoss is issue 6's last lifecycle case on real hosts: with three
// managers, losing the leader leaves the other two in charge and apply
// replaces it; losing two of three loses quorum, and apply then refuses with
// a message naming quorum and --force-new-cluster, leaving the survivor as
// it is; apply --force-new-cluster re-forms the swarm on the survivor (its
// services kept) and converges back to three managers.
func TestQuorumLoss(t *testing.T) {
	hostTest(t) // each local-host test has its own cluster, network and state; longest first, a few at a time (schedule_test.go)
	requireAcc(t)
	dc := dockerClient(t)
	requireImage(t, dc, engineImage, "drivers/local/image/engine.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	dir := t.TempDir()
	q := &quorum{dc: dc, spec: filepath.Join(dir, "quorum.hcl"), stateDir: filepath.Join(dir, "state")}
	if err := os.WriteFile(q.spec, []byte(quorumSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			provision(t, context.Background(), nil, "destroy", q.spec, q.sd(), "--auto-approve")
		}
	})

	// 1. Three managers, one leader, and a service kept in the raft store.
	mustProvision(t, ctx, nil, "apply", q.spec, q.sd(), "--auto-approve")
	clusterID := readState(t, q.stateDir).ClusterID
	q.converged(t, ctx)
	ens, _ := engines(t, q.stateDir)
	leader := q.leader(t, ctx, ens)
	for _, e := range ens {
		busyboxImage(t, ctx, e)
	}
	replicas := uint64(1)
	if _, err := ens[leader].ServiceCreate(ctx, dswarm.ServiceSpec{
		Annotations: dswarm.Annotations{Name: quorumService},
		TaskTemplate: dswarm.TaskSpec{
			ContainerSpec: &dswarm.ContainerSpec{Image: testImage, Command: []string{"/bin/sleep", "3600"}},
		},
		Mode: dswarm.ServiceMode{Replicated: &dswarm.ReplicatedService{Replicas: &replicas}},
	}, dswarm.ServiceCreateOptions{QueryRegistry: false}); err != nil {
		t.Fatalf("create service: %v", err)
	}

	// 2. The leader's container goes: the other two keep the swarm and elect
	// a new leader; apply replaces the lost manager.
	q.remove(t, ctx, leader)
	var survivor string
	for name := range ens {
		if name != leader {
			survivor = name
			break
		}
	}
	eventually(t, ctx, 90*time.Second, "a new leader among the surviving managers", func() error {
		l, err := leaderOf(ctx, ens[survivor])
		if err == nil && (l == "" || l == leader) {
			err = fmt.Errorf("leader is %q", l)
		}
		return err
	})
	newLeader, _ := leaderOf(ctx, ens[survivor])
	t.Logf("leader %s removed; %s leads now", leader, newLeader)
	mustProvision(t, ctx, nil, "apply", q.spec, q.sd(), "--auto-approve")
	q.converged(t, ctx)

	// 3. Two managers go, the leader among them: quorum is lost. apply
	// without the flag refuses, says why and how to recover, and leaves
	// the survivor alone.
	ens, _ = engines(t, q.stateDir)
	leader = q.leader(t, ctx, ens)
	survivor = ""
	var victims []string
	for _, name := range sortedNames(ens) {
		if name != leader && survivor == "" {
			survivor = name
		} else {
			victims = append(victims, name)
		}
	}
	var survivorID string
	for _, m := range readState(t, q.stateDir).Machines {
		if m.Name == survivor {
			survivorID = m.ID
		}
	}
	before, err := ens[survivor].Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range victims {
		q.remove(t, ctx, v)
	}
	t.Logf("removed %v; %s survives", victims, survivor)
	r := provision(t, ctx, nil, "apply", q.spec, q.sd(), "--auto-approve")
	if r.code == 0 {
		t.Fatalf("apply without --force-new-cluster succeeded after quorum loss:\n%s", r.stderr)
	}
	if !strings.Contains(strings.ToLower(r.stderr), "quorum") || !strings.Contains(r.stderr, "--force-new-cluster") {
		t.Errorf("apply after quorum loss (exit %d) does not name quorum and --force-new-cluster:\n%s", r.code, r.stderr)
	}
	t.Logf("refused apply:\n%s", r.stderr)
	ct, err := dc.ContainerInspect(ctx, survivorID)
	if err != nil || !ct.State.Running {
		t.Fatalf("the surviving manager %s is gone or stopped after the refused apply: %v", survivor, err)
	}
	after, err := ens[survivor].Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// (A manager without quorum cannot read the cluster object: its
	// ClusterID is blank until quorum is back.)
	if after.State != dswarm.LocalNodeStateActive || !after.Manager || after.NodeID != before.NodeID {
		t.Errorf("the refused apply changed the survivor's swarm membership: before %+v, after %+v", before, after)
	}

	// 4. The documented recovery: the swarm is re-formed on the survivor,
	// keeps its service, and grows back to three managers.
	r = mustProvision(t, ctx, nil, "apply", q.spec, q.sd(), "--force-new-cluster", "--auto-approve")
	t.Logf("apply --force-new-cluster:\n%s", r.stderr)
	q.converged(t, ctx)
	ens, _ = engines(t, q.stateDir)
	if _, _, err := ens[survivor].ServiceInspectWithRaw(ctx, quorumService, dswarm.ServiceInspectOptions{}); err != nil {
		t.Errorf("service %s lost in the re-formed swarm: %v", quorumService, err)
	}
	// The swarm was autolocked: the re-formed one is too, and the
	// survivor's node key is encrypted again (it was written in the clear
	// only for Docker to re-form the swarm).
	eventually(t, ctx, time.Minute, "the survivor's node key encrypted again", func() error {
		out, err := runIn(ctx, dc, survivorID, []string{"head", "-1", "/var/lib/docker/swarm/certificates/swarm-node.key"})
		if err != nil {
			return err
		}
		if !strings.Contains(out, "ENCRYPTED") {
			return fmt.Errorf("first line %q", strings.TrimSpace(out))
		}
		return nil
	})
	// Once re-formed, a plain apply has nothing left to do.
	if r := mustProvision(t, ctx, nil, "apply", q.spec, q.sd(), "--auto-approve"); !strings.Contains(r.stderr, "No changes") {
		t.Errorf("apply after the recovery is not a no-op:\n%s", r.stderr)
	}

	// 5. destroy leaves nothing.
	mustProvision(t, ctx, nil, "destroy", q.spec, q.sd(), "--auto-approve")
	destroyed = true
	if left := leftovers(t, dc, clusterID); len(left) > 0 {
		t.Errorf("destroy left: %v", left)
	}
}

// remove deletes a machine's container behind the tool's back.
func (q *quorum) remove(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	for _, m := range readState(t, q.stateDir).Machines {
		if m.Name == name {
			if err := q.dc.ContainerRemove(ctx, m.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
				t.Fatalf("remove %s behind the tool's back: %v", name, err)
			}
			return
		}
	}
	t.Fatalf("%s is not in state", name)
}

// leaderOf names the swarm's leader as the manager behind e sees it.
func leaderOf(ctx context.Context, e *swarm.Engine) (string, error) {
	nodes, err := e.Nodes(ctx)
	if err != nil {
		return "", err
	}
	for _, n := range nodes {
		if n.ManagerStatus != nil && n.ManagerStatus.Leader {
			return n.Description.Hostname, nil
		}
	}
	return "", errors.New("no leader in the node list")
}

// leader names the current leader, asking every manager until one answers.
func (q *quorum) leader(t *testing.T, ctx context.Context, ens map[string]*swarm.Engine) string {
	t.Helper()
	var err error
	for _, name := range sortedNames(ens) {
		var l string
		if l, err = leaderOf(ctx, ens[name]); err == nil {
			return l
		}
	}
	t.Fatalf("no manager names a leader: %v", err)
	return ""
}

func sortedNames(ens map[string]*swarm.Engine) []string {
	var out []string
	for n := range ens {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// converged checks that status lists the three managers, all ready and
// reachable with one leader, and that the swarm lists exactly them, Ready.
func (q *quorum) converged(t *testing.T, ctx context.Context) {
	t.Helper()
	want := []string{"quorum-manager-1", "quorum-manager-2", "quorum-manager-3"}
	st := parseStatus(t, mustProvision(t, ctx, nil, "status", q.spec, q.sd(), "--json").stdout)
	if len(st.Unrecorded) > 0 {
		t.Errorf("status: the swarm lists nodes provision does not record: %v", st.Unrecorded)
	}
	var got []string
	leaders := 0
	for _, n := range st.Nodes {
		got = append(got, n.Name)
		if n.Role != "manager" || n.Status != "ready" || n.Swarm != "ready" || n.Manager != "reachable" || n.Error != "" {
			t.Errorf("status: %s is %s %s, swarm %q, manager %q, error %q", n.Name, n.Role, n.Status, n.Swarm, n.Manager, n.Error)
		}
		if n.Leader {
			leaders++
		}
	}
	sort.Strings(got)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("status lists %v, want %v", got, want)
	}
	if leaders != 1 {
		t.Errorf("status shows %d leaders", leaders)
	}
	ens, _ := engines(t, q.stateDir)
	nodes, err := ens[q.leader(t, ctx, ens)].Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var hosts []string
	for _, n := range nodes {
		hosts = append(hosts, n.Description.Hostname)
		if n.Status.State != dswarm.NodeStateReady || n.Spec.Role != dswarm.NodeRoleManager {
			t.Errorf("swarm node %s (%s) is %s %s", n.Description.Hostname, n.ID, n.Spec.Role, n.Status.State)
		}
	}
	sort.Strings(hosts)
	if fmt.Sprint(hosts) != fmt.Sprint(want) {
		t.Errorf("swarm nodes %v, want %v", hosts, want)
	}
}
