package apply

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dswarm "github.com/docker/docker/api/types/swarm"

	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/swarm"
)

// upgradeRun forms a 3-manager, 4-worker swarm on the in-memory engines with
// a service of 7 replicas, and marks every host as having an engine upgrade
// pending (engine.install), as the host phase would after its checks.
func upgradeRun(t *testing.T) (*fakeSwarm, *run, *swarm.Membership, []batch) {
	t.Helper()
	f := newFakeSwarm()
	r := fakeRun(t, f, 3, 4)
	r.TakeBackup = func(ctx context.Context, bt BackupTarget) (string, error) { return "backup", nil }
	r.Timeouts = swarm.Timeouts{Member: 5 * time.Second, Ready: 5 * time.Second, Drain: 5 * time.Second, Reschedule: 2 * time.Second}
	ctx := context.Background()
	if err := (swarmPhase{}).Run(ctx, r); err != nil {
		t.Fatal(err)
	}
	f.w.AddService(f.engines["10.0.0.1"].Swarm(), "web", 7)
	r2 := newRun(r.Runner, &plan.Plan{})
	var hosts []*host
	for name, h := range r.hosts {
		if h.err != nil {
			t.Fatalf("%s: %v", name, h.err)
		}
		h2 := &host{rec: h.rec, pool: h.pool, pending: []string{"engine.install", "engine.config"}}
		r2.hosts[name] = h2
	}
	hosts = r2.live()
	if err := r2.engines(ctx, hosts); err != nil {
		t.Fatal(err)
	}
	members := r2.membership()
	for _, h := range hosts {
		if h.rec.Role == spec.RoleManager {
			members.AddManager(h.member)
		}
	}
	return f, r2, members, rollout(hosts, 16)
}

// TestEngineUpgradeRollout: every member is drained before its engine
// changes (its tasks Running elsewhere, the service at full strength),
// managers one at a time, then the workers a batch at a time; each comes
// back at the new version, active again, and the raft never loses quorum.
func TestEngineUpgradeRollout(t *testing.T) {
	f, r, members, batches := upgradeRun(t)
	sw := f.engines["10.0.0.1"].Swarm()
	// The leader's restart hands the raft to another manager, which knows
	// no node's state for a while: no node is paused or drained until it
	// does (the acceptance run lost a replica draining then).
	sw.StartFirst("web")
	f.w.UnknownAfterElection = 6
	var mu sync.Mutex
	var order []string
	// A raft backup is taken before the first manager's engine changes,
	// once per run.
	r.TakeBackup = func(ctx context.Context, bt BackupTarget) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, "backup:"+bt.Host)
		return "backups/raft-" + bt.Host, nil
	}
	steps := func(ctx context.Context, r *run, h *host) error {
		e := f.engines[h.rec.Address]
		mu.Lock()
		order = append(order, h.rec.Name)
		mu.Unlock()
		if n := sw.TasksOn(e); n != 0 {
			return fmt.Errorf("%s upgraded with %d tasks still on it", h.rec.Name, n)
		}
		if got := sw.Running("web"); got != 7 {
			return fmt.Errorf("%s upgraded while the service ran %d of 7 replicas", h.rec.Name, got)
		}
		f.w.Restart(e, "24.0.7")
		h.restarted = true
		h.target = &hostos.Target{Facts: &hostos.Facts{Engine: "24.0.7"}, Config: &hostos.Config{}}
		return nil
	}
	if err := rollBatches(context.Background(), r, batches, members, steps); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range batches {
		if !b.rolling || !b.drain {
			t.Errorf("batch %v: rolling %v drain %v", b.hosts, b.rolling, b.drain)
		}
		var names []string
		for _, h := range b.hosts {
			names = append(names, strings.TrimPrefix(h.rec.Name, "t-"))
		}
		got = append(got, strings.Join(names, ","))
	}
	// manager-1 formed the swarm and leads it: it goes last of the
	// managers, so the raft elects a leader once.
	if want := "manager-2 | manager-3 | manager-1 | worker-1 | worker-2 | worker-3 | worker-4"; strings.Join(got, " | ") != want {
		t.Errorf("batches %s, want %s", strings.Join(got, " | "), want)
	}
	if len(order) != 8 || !strings.HasPrefix(order[0], "backup:t-manager-") || !slices.Equal(order[1:4], []string{"t-manager-2", "t-manager-3", "t-manager-1"}) {
		t.Errorf("order %v: one raft backup, then the managers first, one at a time, the leader last", order)
	}
	if f.w.Elections != 1 {
		t.Errorf("%d elections during the rollout, want 1 (the leader last)", f.w.Elections)
	}
	nodes, err := members.Refresh(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range r.hosts {
		if h.err != nil {
			t.Errorf("%s: %v", h.rec.Name, h.err)
		}
		if n := nodes[h.rec.NodeID]; n.Spec.Availability != dswarm.NodeAvailabilityActive {
			t.Errorf("%s left %s", h.rec.Name, n.Spec.Availability)
		}
		if h.rec.Engine != "24.0.7" {
			t.Errorf("%s: recorded engine %q", h.rec.Name, h.rec.Engine)
		}
	}
	if len(f.w.Violations) > 0 {
		t.Errorf("quorum lost: %v", f.w.Violations)
	}
	if len(f.w.Unsettled) > 0 {
		t.Errorf("paused or drained while the new leader did not know the nodes' states: %v", f.w.Unsettled)
	}
	if !slices.ContainsFunc(f.w.Calls, func(c string) bool { return strings.HasPrefix(c, "ServiceUpdate web replicas=") }) {
		t.Errorf("the start-first service was never scaled up for a drain: %v", f.w.Calls)
	}
}

// TestEngineUpgradeStopsOnFailure: a node that fails its upgrade (its
// engine reports another version than dockerd --version said) stays
// drained, and no node after it is touched.
func TestEngineUpgradeStopsOnFailure(t *testing.T) {
	for _, tc := range []struct {
		name, fail string
		version    bool // fail by a version mismatch (else the steps fail)
	}{
		{"manager steps fail", "t-manager-2", false},
		{"worker comes back at the wrong version", "t-worker-1", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, r, members, batches := upgradeRun(t)
			var touched []string
			steps := func(ctx context.Context, r *run, h *host) error {
				touched = append(touched, h.rec.Name)
				if h.rec.Name == tc.fail && !tc.version {
					return errors.New("apt-get install: exit 100")
				}
				v := "24.0.7"
				if h.rec.Name == tc.fail {
					v = "20.10.24" // the old engine still answers
				}
				f.w.Restart(f.engines[h.rec.Address], v)
				h.restarted = true
				h.target = &hostos.Target{Facts: &hostos.Facts{Engine: "24.0.7"}, Config: &hostos.Config{}}
				return nil
			}
			if err := rollBatches(context.Background(), r, batches, members, steps); err != nil {
				t.Fatal(err)
			}
			if touched[len(touched)-1] != tc.fail {
				t.Fatalf("touched %v after the failure at %s", touched, tc.fail)
			}
			nodes, err := members.Refresh(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			failed := r.hosts[tc.fail]
			if failed.err == nil || !errors.Is(failed.err, swarm.ErrLeftDrained) {
				t.Fatalf("%s: error %v, want one saying it is left drained", tc.fail, failed.err)
			}
			if tc.version && !strings.Contains(failed.err.Error(), "reports version 20.10.24") {
				t.Errorf("error does not name the versions: %v", failed.err)
			}
			if n := nodes[failed.rec.NodeID]; n.Spec.Availability != dswarm.NodeAvailabilityDrain {
				t.Errorf("%s is %s, want left drained", tc.fail, n.Spec.Availability)
			}
			for name, h := range r.hosts {
				if slices.Contains(touched, name) {
					continue
				}
				if h.err == nil || !strings.Contains(h.err.Error(), "earlier rolling batch failed") {
					t.Errorf("%s: %v, want not reconfigured", name, h.err)
				}
				if e := f.engines[h.rec.Address]; e.Version != "" || nodes[h.rec.NodeID].Spec.Availability != dswarm.NodeAvailabilityActive {
					t.Errorf("%s was touched: version %q availability %s", name, e.Version, nodes[h.rec.NodeID].Spec.Availability)
				}
			}

			// The cause fixed, the next apply finishes the rollout from the
			// failed node on, and makes the node it left drained active
			// again: the drain was provision's (state says so), not the
			// operator's.
			if !failed.rec.Drained {
				t.Fatalf("%s: state does not record the drain the failed turn left", tc.fail)
			}
			var rest []*host
			for _, h := range r.hosts {
				if h.err != nil {
					h.err = nil
					rest = append(rest, h)
				}
			}
			touched = nil
			// A new run takes its raft backup again, from the manager about
			// to change: the one left drained, which must stay recorded.
			r.backedUp = ""
			if failed.rec.Role == spec.RoleManager {
				f.w.Restart(f.engines[failed.rec.Address], "") // a follower now, so the backup's source
			}
			fix := func(ctx context.Context, r *run, h *host) error {
				touched = append(touched, h.rec.Name)
				f.w.Restart(f.engines[h.rec.Address], "24.0.7")
				h.restarted = true
				h.target = &hostos.Target{Facts: &hostos.Facts{Engine: "24.0.7"}, Config: &hostos.Config{}}
				return nil
			}
			if err := rollBatches(context.Background(), r, rollout(rest, 16), members, fix); err != nil {
				t.Fatal(err)
			}
			if nodes, err = members.Refresh(context.Background()); err != nil {
				t.Fatal(err)
			}
			for name, h := range r.hosts {
				if h.err != nil {
					t.Errorf("%s after the fix: %v", name, h.err)
				}
				if a := nodes[h.rec.NodeID].Spec.Availability; a != dswarm.NodeAvailabilityActive || h.rec.Drained {
					t.Errorf("%s after the finished rollout: %s (drained in state: %v), want active", name, a, h.rec.Drained)
				}
			}
			if len(touched) != len(rest) || !slices.Contains(touched, tc.fail) {
				t.Errorf("the second run touched %v, want the failed node and the rest (%d)", touched, len(rest))
			}
		})
	}
}
