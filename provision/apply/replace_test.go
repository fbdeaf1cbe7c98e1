package apply

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
)

// formed returns a run on a formed in-memory swarm of managers and
// workers, as the swarm and labels phases leave it, with a recording
// driver and raft backup.
func formed(t *testing.T, managers, workers int) (*run, *fakeSwarm, *testDriver, *[]string) {
	t.Helper()
	f := newFakeSwarm()
	r := fakeRun(t, f, managers, workers)
	d := &testDriver{}
	r.Drivers = map[string]drivers.Driver{"local": d}
	var backups []string
	r.TakeBackup = func(ctx context.Context, bt BackupTarget) (string, error) {
		backups = append(backups, fmt.Sprintf("%s stop=%v after %d calls", bt.Host, bt.Stop, len(f.w.Calls)))
		return "backups/raft-" + bt.Host, nil
	}
	ctx := context.Background()
	for _, ph := range []phase{swarmPhase{}, labels{}} {
		if err := ph.Run(ctx, r); err != nil {
			t.Fatalf("%s: %v", ph.Name(), err)
		}
	}
	for _, h := range r.hosts {
		h.comm = nil // no SSH in these tests: backups go through TakeBackup
	}
	return r, f, d, &backups
}

// replaced turns the run's hosts named into replacements, the way the
// machines phase leaves them: the next generation made at a new address,
// not yet in the swarm, the old one retiring (still running: alive).
func replaced(t *testing.T, r *run, f *fakeSwarm, names ...string) *run {
	t.Helper()
	r2 := newRun(r.Runner, &plan.Plan{})
	for i, name := range r.hostNames() {
		old := r.hosts[name]
		h := &host{rec: old.rec, pool: old.pool, action: plan.Action{Machine: name, Kind: plan.None, Generation: old.rec.Gen()}}
		if slices.Contains(names, name) {
			rec := h.rec
			rec.Retiring = append(rec.Retiring, state.Retiring{Machine: rec.Machine, Generation: rec.Gen(), NodeID: rec.NodeID})
			addr := fmt.Sprintf("10.0.9.%d", i+1)
			f.engines[addr] = f.w.Engine(name, addr)
			rec.Machine = drivers.Machine{Name: name, ID: "id2-" + name, Driver: "local", Address: addr}
			rec.Generation, rec.NodeID, rec.Status = 2, "", state.StatusCreated
			h.action = plan.Action{Machine: name, Kind: plan.Replace, Generation: 2, Observed: &drivers.Machine{ID: "id-" + name}}
		}
		r2.hosts[name] = h
	}
	r2.plan.Actions = nil
	for _, n := range r2.hostNames() {
		r2.plan.Actions = append(r2.plan.Actions, r2.hosts[n].action)
	}
	return r2
}

// TestRollingManagerReplacement: replacing all three managers keeps the
// swarm (same ID, workers and service kept), never has fewer than a
// majority of the raft reachable, takes a raft backup before the first
// manager leaves, and changes one manager at a time: each new one joins
// before its old one is demoted, and the next joins only after that.
func TestRollingManagerReplacement(t *testing.T) {
	r, f, d, backups := formed(t, 3, 2)
	id := r.State.Swarm.ID
	sw := f.engines["10.0.0.1"].Swarm()
	f.w.AddService(sw, "web", 4)
	f.w.ResetMin()
	calls := len(f.w.Calls)
	r2 := replaced(t, r, f, "t-manager-1", "t-manager-2", "t-manager-3")
	if err := (swarmPhase{}).Run(context.Background(), r2); err != nil {
		t.Fatal(err)
	}
	for _, h := range r2.hosts {
		if h.err != nil {
			t.Fatalf("%s: %v", h.rec.Name, h.err)
		}
		if len(h.rec.Retiring) != 0 || h.rec.NodeID == "" {
			t.Errorf("%s: retiring %v, node %q", h.rec.Name, h.rec.Retiring, h.rec.NodeID)
		}
	}
	if len(f.w.Violations) > 0 {
		t.Fatalf("quorum lost: %v", f.w.Violations)
	}
	if got := f.w.MinReachable[id]; got < 3 {
		t.Errorf("fewest reachable managers %d of %d during the roll", got, f.w.MinOf[id])
	}
	if r2.State.Swarm.ID != id || sw.Running("web") != 4 {
		t.Errorf("swarm %s (was %s), %d of 4 tasks running", r2.State.Swarm.ID, id, sw.Running("web"))
	}
	if strings.Join(sw.Managers(), " ") == "" || len(sw.Managers()) != 3 || sw.NodeCount() != 5 {
		t.Errorf("managers %v, %d nodes", sw.Managers(), sw.NodeCount())
	}
	slices.Sort(d.destroyed)
	if got := strings.Join(d.destroyed, " "); got != "t-manager-1/1 t-manager-2/1 t-manager-3/1" {
		t.Errorf("destroyed %s", got)
	}
	// The order of manager changes.
	var seq []string
	for _, c := range f.w.Calls[calls:] {
		switch {
		case strings.HasPrefix(c, "SwarmJoin"):
			seq = append(seq, "join "+strings.Fields(c)[1])
		case strings.Contains(c, "demote"):
			seq = append(seq, "demote "+strings.Fields(c)[1])
		}
	}
	// t-manager-1 inited the swarm and leads: its replacement goes last.
	want := "join t-manager-2 demote t-manager-2 join t-manager-3 demote t-manager-3 join t-manager-1 demote t-manager-1"
	if got := strings.Join(seq, " "); got != want {
		t.Errorf("manager changes\n got %s\nwant %s", got, want)
	}
	if len(*backups) != 1 || !strings.Contains((*backups)[0], "stop=true") {
		t.Errorf("backups %v", *backups)
	}
	if first := slices.IndexFunc(f.w.Calls, func(c string) bool { return strings.Contains(c, "demote") }); first < 0 || !strings.Contains((*backups)[0], fmt.Sprintf("after %d calls", first)) && !beforeCall(*backups, first) {
		t.Errorf("backup %v not before the first demotion (call %d)", *backups, first)
	}
	// A second run changes nothing.
	calls = len(f.w.Calls)
	r3 := newRun(r.Runner, &plan.Plan{})
	for n, h := range r2.hosts {
		r3.hosts[n] = &host{rec: h.rec, pool: h.pool}
	}
	if err := (swarmPhase{}).Run(context.Background(), r3); err != nil {
		t.Fatal(err)
	}
	if extra := f.w.Calls[calls:]; len(extra) > 0 {
		t.Errorf("a converged swarm changed: %v", extra)
	}
}

func beforeCall(backups []string, call int) bool {
	var n int
	_, err := fmt.Sscanf(backups[0][strings.Index(backups[0], "after "):], "after %d calls", &n)
	return err == nil && n <= call
}

// TestFailedManagerJoinStopsTheRoll: when the second new manager cannot
// join, its old one stays, the third manager (the leader's, last) is not
// touched, and quorum is never at risk.
func TestFailedManagerJoinStopsTheRoll(t *testing.T) {
	r, f, d, _ := formed(t, 3, 0)
	r.Timeouts.Join = 300e6
	r2 := replaced(t, r, f, "t-manager-1", "t-manager-2", "t-manager-3")
	f.w.Kill(f.engines[r2.hosts["t-manager-3"].rec.Address])
	if err := (swarmPhase{}).Run(context.Background(), r2); err != nil {
		t.Fatal(err)
	}
	if h := r2.hosts["t-manager-2"]; h.err != nil || len(h.rec.Retiring) != 0 {
		t.Errorf("manager-2: %v %v", h.err, h.rec.Retiring)
	}
	if h := r2.hosts["t-manager-3"]; h.err == nil || len(h.rec.Retiring) != 1 {
		t.Errorf("manager-3 should fail and keep its old generation: %v", h.rec.Retiring)
	}
	if h := r2.hosts["t-manager-1"]; len(h.rec.Retiring) != 1 || h.rec.NodeID != "" {
		t.Errorf("manager-1 was changed after manager-3 failed")
	}
	if got := strings.Join(d.destroyed, " "); got != "t-manager-2/1" {
		t.Errorf("destroyed %s", got)
	}
	if len(f.w.Violations) > 0 {
		t.Fatalf("quorum lost: %v", f.w.Violations)
	}
}

// TestRollingWorkerReplacement: new workers join, then the old ones are
// drained (their tasks Running elsewhere) and removed; no task is lost.
func TestRollingWorkerReplacement(t *testing.T) {
	r, f, d, backups := formed(t, 1, 4)
	sw := f.engines["10.0.0.1"].Swarm()
	f.w.AddService(sw, "web", 6)
	r2 := replaced(t, r, f, "t-worker-1", "t-worker-2", "t-worker-3", "t-worker-4")
	if err := (swarmPhase{}).Run(context.Background(), r2); err != nil {
		t.Fatal(err)
	}
	if sw.Running("web") != 6 || sw.NodeCount() != 5 {
		t.Errorf("%d of 6 tasks running, %d nodes", sw.Running("web"), sw.NodeCount())
	}
	if len(d.destroyed) != 4 || len(*backups) != 0 {
		t.Errorf("destroyed %v, backups %v (no manager changed)", d.destroyed, *backups)
	}
	for _, h := range r2.hosts {
		if h.err != nil || len(h.rec.Retiring) > 0 {
			t.Errorf("%s: %v %v", h.rec.Name, h.err, h.rec.Retiring)
		}
	}
}

// TestReinstallRefusesTheLastManager: a driver that reuses the host cannot
// replace the only manager in place: it would take the swarm with it.
func TestReinstallRefusesTheLastManager(t *testing.T) {
	r, f, d, _ := formed(t, 1, 1)
	h := r.hosts["t-manager-1"]
	h.inPlace = true
	h.action = plan.Action{Machine: h.rec.Name, Kind: plan.Replace, InPlace: true, Generation: 2}
	calls := len(f.w.Calls)
	if err := (reinstall{}).Run(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	var se *StepError
	if !errors.As(h.err, &se) || !strings.Contains(se.Error(), "last manager") {
		t.Fatalf("in-place replacement of the only manager: %v", h.err)
	}
	if len(d.destroyed) > 0 || len(f.w.Calls) != calls {
		t.Errorf("something changed: destroyed %v, calls %v", d.destroyed, f.w.Calls[calls:])
	}
}

// TestScaleDownManagersOneAtATime: removing four of five managers goes one
// at a time, leader last, quorum kept throughout.
func TestScaleDownManagersOneAtATime(t *testing.T) {
	r, f, _, backups := formed(t, 5, 0)
	var acts []plan.Action
	for _, n := range []string{"t-manager-2", "t-manager-3", "t-manager-4", "t-manager-5"} {
		rec := r.hosts[n].rec
		acts = append(acts, plan.Action{Machine: n, Role: spec.RoleManager, Kind: plan.Remove, Recorded: rec, Generation: 1})
	}
	r2 := newRun(r.Runner, &plan.Plan{Actions: acts})
	r2.hosts["t-manager-1"] = &host{rec: r.hosts["t-manager-1"].rec, pool: r.hosts["t-manager-1"].pool}
	if err := (swarmPhase{}).Run(context.Background(), r2); err != nil {
		t.Fatal(err)
	}
	if err := (remove{}).Run(context.Background(), r2); err != nil {
		t.Fatal(err)
	}
	sw := f.engines["10.0.0.1"].Swarm()
	if len(sw.Managers()) != 1 || len(f.w.Violations) > 0 {
		t.Fatalf("managers %v, violations %v", sw.Managers(), f.w.Violations)
	}
	if len(*backups) != 1 {
		t.Errorf("backups %v", *backups)
	}
}

// TestMissingRefused: a plan where every machine appears gone is refused
// before anything is done, unless the operator says to replace them.
func TestMissingRefused(t *testing.T) {
	d := &testDriver{}
	e, p := newTestEngine(t, 1, d)
	p.Missing = &plan.Missing{Machines: []string{"t-manager-1"}, Message: "every machine appears gone"}
	_, err := e.Apply(context.Background(), p)
	if !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), "--replace-missing") {
		t.Fatalf("apply: %v", err)
	}
	if len(d.created) > 0 {
		t.Fatalf("created %v", d.created)
	}
}

// TestDestroyMissingRefused: a destroy plan where every machine on a driver
// appears gone is refused before anything is removed from state, unless the
// operator says to forget them.
func TestDestroyMissingRefused(t *testing.T) {
	d := &testDriver{}
	e, _ := newTestEngine(t, 1, d)
	rec := &state.Machine{Role: spec.RoleManager, Pool: "manager", Index: 1, Status: state.StatusReady}
	rec.Machine = drivers.Machine{Name: "t-manager-1", ID: "c1", Driver: "local", Address: "192.0.2.9"}
	e.State.Put(rec)
	p := &plan.Plan{Actions: []plan.Action{{Machine: "t-manager-1", Role: spec.RoleManager, Driver: "local", Kind: plan.Remove, Recorded: rec}},
		Missing: &plan.Missing{Machines: []string{"t-manager-1"}, Message: "every machine appears gone"}}
	err := e.Destroy(context.Background(), p)
	if !errors.Is(err, ErrMissingDestroy) {
		t.Fatalf("destroy: %v", err)
	}
	if e.State.Machine("t-manager-1") == nil {
		t.Fatal("the machine was dropped from state")
	}
	e.ForgetMissing = true
	if err := e.Destroy(context.Background(), p); err != nil {
		t.Fatalf("destroy --forget-missing: %v", err)
	}
	if e.State.Machine("t-manager-1") != nil {
		t.Fatal("the machine is still in state")
	}
}

// TestMachinesPhaseMakesTheNextGeneration: a replacement records the old
// machine as retiring and asks the driver for the next generation, tagged.
func TestMachinesPhaseMakesTheNextGeneration(t *testing.T) {
	d := &testDriver{}
	e, _ := newTestEngine(t, 0, d)
	old := &state.Machine{Role: spec.RoleManager, Pool: "manager", Index: 1, Status: state.StatusReady, NodeID: "n1"}
	old.Machine = drivers.Machine{Name: "t-manager-1", ID: "c1", Driver: "local", Address: "192.0.2.9"}
	e.State.Put(old)
	p := &plan.Plan{Actions: []plan.Action{{Machine: "t-manager-1", Role: spec.RoleManager, Pool: "manager", Driver: "local", Index: 1, Kind: plan.Replace, Generation: 2,
		Recorded: old, Observed: &drivers.Machine{ID: "c1", State: "running"}, Made: map[string]string{"driver": "local", "size": "2cpu-2g"}}}}
	r := newRun(e, p)
	if err := (credentials{}).Run(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if err := (machines{}).Run(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	rec := e.State.Machine("t-manager-1")
	if rec.Generation != 2 || rec.ID != "id-t-manager-1" || rec.NodeID != "" || len(rec.Retiring) != 1 || rec.Retiring[0].ID != "c1" || rec.Retiring[0].NodeID != "n1" || rec.MadeWith["size"] != "2cpu-2g" {
		t.Fatalf("record %+v", rec)
	}
	if len(d.specs) != 1 || d.specs[0].Generation != 2 || d.specs[0].Tags[drivers.TagGeneration] != "2" {
		t.Fatalf("driver asked for %+v", d.specs)
	}
	if len(d.destroyed) != 0 {
		t.Fatalf("the old machine was destroyed before its successor joined: %v", d.destroyed)
	}
}

// TestLabelsRemovedFromSpecLeaveTheNode: labels provision set and the spec
// dropped are removed; labels someone else set stay.
func TestLabelsRemovedFromSpecLeaveTheNode(t *testing.T) {
	r, f, _, _ := formed(t, 1, 1)
	ctx := context.Background()
	w := r.hosts["t-worker-1"]
	if w.rec.Labels["zone"] != "a" {
		t.Fatalf("recorded labels %v", w.rec.Labels)
	}
	// Someone labels the node by hand; the spec drops zone and adds rack.
	if _, err := r.members.SetLabels(ctx, w.rec.NodeID, map[string]string{"owner": "ops"}, nil); err != nil {
		t.Fatal(err)
	}
	w.pool.Labels = map[string]string{"rack": "r1"}
	r.members.Refresh(ctx)
	if err := (labels{}).Run(ctx, r); err != nil {
		t.Fatal(err)
	}
	n, _, err := f.engines["10.0.0.1"].NodeInspectWithRaw(ctx, w.rec.NodeID)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := n.Spec.Labels["zone"]; ok || n.Spec.Labels["rack"] != "r1" || n.Spec.Labels["owner"] != "ops" {
		t.Fatalf("node labels %v", n.Spec.Labels)
	}
	if _, ok := w.rec.Labels["zone"]; ok || w.rec.Labels["rack"] != "r1" {
		t.Fatalf("recorded labels %v", w.rec.Labels)
	}
}

// TestStaleSwarmLeft: after every manager was replaced (--replace-missing),
// a worker still in the old swarm (its node certificate says so) leaves it
// and joins the new one, never left hanging; a host in a foreign swarm is
// left alone unless the operator says --leave-other-swarm.
func TestStaleSwarmLeft(t *testing.T) {
	r, f, _, _ := formed(t, 1, 2)
	ctx := context.Background()
	oldID := r.State.Swarm.ID
	mgr := r.hosts["t-manager-1"]
	f.w.Kill(f.engines[mgr.rec.Address])
	f.engines["10.0.7.1"] = f.w.Engine("t-manager-1", "10.0.7.1")
	mgr.rec.Machine.Address, mgr.rec.NodeID, mgr.rec.Generation = "10.0.7.1", "", 2
	r.State.Swarm.Retired, r.State.Swarm.ID = []string{oldID}, ""
	facts := map[string]string{"t-worker-1": oldID, "t-worker-2": "cluster-of-someone-else"}
	next := func(leaveOther bool) *run {
		r.LeaveOtherSwarm = leaveOther
		r2 := newRun(r.Runner, &plan.Plan{})
		for n, h := range r.hosts {
			h2 := &host{rec: h.rec, pool: h.pool}
			if id := facts[n]; id != "" {
				h2.target = &hostos.Target{Facts: &hostos.Facts{Swarm: &hostos.SwarmMember{ClusterID: id, Role: "worker"}}}
			}
			r2.hosts[n] = h2
		}
		if err := (swarmPhase{}).Run(ctx, r2); err != nil {
			t.Fatal(err)
		}
		return r2
	}
	r2 := next(false)
	if r2.State.Swarm.ID == "" || r2.State.Swarm.ID == oldID {
		t.Fatalf("no new swarm: %q", r2.State.Swarm.ID)
	}
	if h := r2.hosts["t-worker-1"]; h.err != nil || !r2.members.Member(h.rec.NodeID, false) {
		t.Fatalf("worker in the retired swarm: %v", h.err)
	}
	h := r2.hosts["t-worker-2"]
	if h.err == nil || !strings.Contains(h.err.Error(), "--leave-other-swarm") {
		t.Fatalf("worker in a foreign swarm: %v", h.err)
	}
	r3 := next(true)
	if h := r3.hosts["t-worker-2"]; h.err != nil || !r3.members.Member(h.rec.NodeID, false) {
		t.Fatalf("with --leave-other-swarm: %v", h.err)
	}
}

// TestRestartedMemberMarkedReady: a machine the machines phase restarted
// (status created) that the swarm still counts as a Ready member has no
// join to do; the swarm phase records it ready, so the next plan has
// nothing to reconfigure (it used to stay "created" for good).
func TestRestartedMemberMarkedReady(t *testing.T) {
	r, f, _, _ := formed(t, 3, 2)
	calls := len(f.w.Calls)
	for _, name := range []string{"t-manager-2", "t-worker-1"} {
		r.hosts[name].rec.Status = state.StatusCreated
	}
	if err := (swarmPhase{}).Run(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"t-manager-2", "t-worker-1"} {
		if h := r.hosts[name]; h.err != nil || h.rec.Status != state.StatusReady {
			t.Errorf("%s: status %q, err %v", name, h.rec.Status, h.err)
		}
	}
	for _, c := range f.w.Calls[calls:] {
		if strings.HasPrefix(c, "SwarmJoin") || strings.HasPrefix(c, "SwarmLeave") {
			t.Errorf("a member was joined again: %s", c)
		}
	}
}
