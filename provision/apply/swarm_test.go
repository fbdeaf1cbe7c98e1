package apply

import (
	"context"
	"fmt"
	"testing"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
	"github.com/provision/provision/provision/swarm"
	"github.com/provision/provision/provision/swarm/swarmtest"
)

// fakeSwarm wires a run to an in-memory swarm: one fake engine per recorded
// machine, found by address.
type fakeSwarm struct {
	w       *swarmtest.World
	engines map[string]*swarmtest.Engine // by address
}

func newFakeSwarm() *fakeSwarm {
	return &fakeSwarm{w: swarmtest.New(), engines: map[string]*swarmtest.Engine{}}
}

func (f *fakeSwarm) api(name, address string) (swarm.API, error) {
	e := f.engines[address]
	if e == nil {
		return nil, fmt.Errorf("no engine at %s", address)
	}
	return e, nil
}

// addHost records a machine in state with a fake engine, as the machines
// phase would leave it, and puts it in the run.
func (f *fakeSwarm) addHost(r *run, name, role, addr string, index int) *host {
	f.engines[addr] = f.w.Engine(name, addr)
	rec := &state.Machine{Role: role, Pool: role, Index: index, Status: state.StatusCreated}
	rec.Machine = drivers.Machine{Name: name, ID: "id-" + name, Driver: "local", Address: addr}
	r.State.Put(rec)
	p, _ := r.pool(role, role)
	h := &host{rec: rec, pool: p}
	r.hosts[name] = h
	return h
}

func fakeRun(t *testing.T, f *fakeSwarm, managers, workers int) *run {
	t.Helper()
	c, diags := spec.LoadBytes("t.hcl", []byte(fmt.Sprintf("name = \"t\"\ndriver \"local\" {}\nmanagers {\n  count = %d\n}\nworkers {\n  count = %d\n  labels = { zone = \"a\" }\n}\n", managers, workers)), spec.Vars{})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	store, err := state.Open(t.TempDir(), "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	st, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	e := &Runner{Spec: c, Store: store, State: st, EngineAPI: f.api}
	r := newRun(e, &plan.Plan{})
	for i := 1; i <= managers; i++ {
		f.addHost(r, fmt.Sprintf("t-manager-%d", i), spec.RoleManager, fmt.Sprintf("10.0.0.%d", i), i)
	}
	for i := 1; i <= workers; i++ {
		f.addHost(r, fmt.Sprintf("t-worker-%d", i), spec.RoleWorker, fmt.Sprintf("10.0.1.%d", i), i)
	}
	return r
}

// TestSwarmPhaseFormsAndConverges: the swarm and labels phases on fresh
// hosts init on the first manager, join the others one at a time and the
// workers, label every node and make the overlay network; a second run on
// the recorded state changes nothing.
func TestSwarmPhaseFormsAndConverges(t *testing.T) {
	f := newFakeSwarm()
	r := fakeRun(t, f, 3, 2)
	ctx := context.Background()
	for _, ph := range []phase{swarmPhase{}, labels{}} {
		if err := ph.Run(ctx, r); err != nil {
			t.Fatalf("%s: %v", ph.Name(), err)
		}
	}
	for _, h := range r.hosts {
		if h.err != nil || h.rec.NodeID == "" || h.rec.Status != state.StatusReady {
			t.Fatalf("%s: err %v node %q status %s", h.rec.Name, h.err, h.rec.NodeID, h.rec.Status)
		}
	}
	if r.State.Swarm.ID == "" {
		t.Fatal("no swarm ID recorded")
	}
	nodes, err := r.members.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range r.hosts {
		n := nodes[h.rec.NodeID]
		if n.Spec.Labels[swarm.LabelName] != h.rec.Name || (h.rec.Role == spec.RoleWorker && n.Spec.Labels["zone"] != "a") {
			t.Errorf("%s labels %v", h.rec.Name, n.Spec.Labels)
		}
	}
	if len(f.w.Violations) > 0 {
		t.Fatalf("quorum lost: %v", f.w.Violations)
	}
	// Again, from what state recorded: nothing changes.
	calls := len(f.w.Calls)
	r2 := newRun(r.Runner, &plan.Plan{})
	for name, h := range r.hosts {
		r2.hosts[name] = &host{rec: h.rec, pool: h.pool}
	}
	for _, ph := range []phase{swarmPhase{}, labels{}} {
		if err := ph.Run(ctx, r2); err != nil {
			t.Fatalf("second %s: %v", ph.Name(), err)
		}
	}
	if extra := f.w.Calls[calls:]; len(extra) > 0 {
		t.Errorf("a converged swarm changed: %v", extra)
	}
}
