package apply

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	dswarm "github.com/docker/docker/api/types/swarm"

	"github.com/provision/provision/drivers"
	_ "github.com/provision/provision/drivers/local" // the spec's driver block needs its factory
	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
)

func mkHost(name, role, nodeID string, pending ...string) *host {
	rec := &state.Machine{Role: role, Pool: role + "s"}
	rec.Name = name
	rec.NodeID = nodeID
	return &host{rec: rec, pending: pending}
}

func batchNames(bs []batch) string {
	var out []string
	for _, b := range bs {
		var names []string
		for _, h := range b.hosts {
			names = append(names, h.rec.Name)
		}
		s := strings.Join(names, ",")
		if b.rolling {
			s = "roll:" + s
		}
		out = append(out, s)
	}
	return strings.Join(out, " | ")
}

// TestRollout: members whose engine restarts go in rolling batches (managers
// one at a time, then a quarter of the workers at a time); new hosts and
// changes that keep the engine running go together first.
func TestRollout(t *testing.T) {
	var hosts []*host
	for i := 1; i <= 3; i++ {
		hosts = append(hosts, mkHost(fmt.Sprintf("m%d", i), spec.RoleManager, fmt.Sprintf("n-m%d", i), "engine.config"))
	}
	for i := 1; i <= 8; i++ {
		hosts = append(hosts, mkHost(fmt.Sprintf("w%d", i), spec.RoleWorker, fmt.Sprintf("n-w%d", i), "engine.tls", "prune"))
	}
	hosts = append(hosts,
		mkHost("new-m", spec.RoleManager, "", "engine.install", "engine.config"), // not yet a member
		mkHost("w-prune", spec.RoleWorker, "n-p", "prune"),                       // engine keeps running
		mkHost("m-ssh", spec.RoleManager, "n-s", "harden.ssh"),
	)
	got := batchNames(rollout(hosts, 16))
	want := "new-m,w-prune,m-ssh | roll:m1 | roll:m2 | roll:m3 | roll:w1,w2 | roll:w3,w4 | roll:w5,w6 | roll:w7,w8"
	if got != want {
		t.Fatalf("batches\n got %s\nwant %s", got, want)
	}
	// Parallelism caps a worker batch; few workers still go one at a time.
	if got := batchNames(rollout(hosts[3:11], 1)); got != "roll:w1 | roll:w2 | roll:w3 | roll:w4 | roll:w5 | roll:w6 | roll:w7 | roll:w8" {
		t.Fatalf("parallelism 1: %s", got)
	}
	if got := batchNames(rollout(hosts[3:6], 16)); got != "roll:w1 | roll:w2 | roll:w3" {
		t.Fatalf("3 workers: %s", got)
	}
	if got := rollout(nil, 4); len(got) != 0 {
		t.Fatalf("no hosts: %v", batchNames(got))
	}
}

// TestRestartSteps pins which steps make a member go in a rolling batch: the
// ones whose change restarts the engine, and no other.
func TestRestartSteps(t *testing.T) {
	for _, id := range []string{"engine.install", "engine.tls", "engine.config"} {
		if !hostos.RestartsEngine(id) {
			t.Errorf("%s restarts the engine", id)
		}
	}
	for _, id := range []string{"os.supported", "os.ready", "host.hostname", "logging.journald", "prune.timer", "harden.ssh", "harden.firewall"} {
		if hostos.RestartsEngine(id) {
			t.Errorf("%s does not restart the engine", id)
		}
	}
}

// TestOwned: destroy and adoption find a machine by tags derived from state,
// never overriding tags the driver reported.
func TestOwned(t *testing.T) {
	m := owned("cid", drivers.Machine{Name: "c-worker-1"}, 2)
	if m.Tags[drivers.TagCluster] != "cid" || m.Tags[drivers.TagMachine] != "c-worker-1" || m.Tags[drivers.TagGeneration] != "2" {
		t.Fatalf("tags %v", m.Tags)
	}
	orig := map[string]string{drivers.TagCluster: "other", "k": "v"}
	m = owned("cid", drivers.Machine{Name: "x", Tags: orig}, 1)
	if m.Tags[drivers.TagCluster] != "other" || m.Tags["k"] != "v" || m.Tags[drivers.TagMachine] != "x" {
		t.Fatalf("tags %v", m.Tags)
	}
	if _, ok := orig[drivers.TagMachine]; ok {
		t.Fatal("owned changed the caller's map")
	}
}

func TestNeedsMachineWork(t *testing.T) {
	cases := []struct {
		a    plan.Action
		want bool
	}{
		{plan.Action{Kind: plan.Create}, true},
		{plan.Action{Kind: plan.Adopt}, true},
		{plan.Action{Kind: plan.Replace}, true},
		{plan.Action{Kind: plan.Reconfigure}, false},
		{plan.Action{Kind: plan.Reconfigure, Observed: &drivers.Machine{State: "running"}}, false},
		{plan.Action{Kind: plan.Reconfigure, Observed: &drivers.Machine{State: "exited"}}, true},
		{plan.Action{Kind: plan.Reconfigure, Observed: &drivers.Machine{State: "running"}, Moved: &plan.Moved{From: "a", To: "b"}}, true},
		{plan.Action{Kind: plan.None, Observed: &drivers.Machine{State: "exited"}}, false},
		{plan.Action{Kind: plan.Remove}, false},
	}
	for _, c := range cases {
		if got := needsMachineWork(c.a); got != c.want {
			t.Errorf("%s observed=%v: %v, want %v", c.a.Kind, c.a.Observed, got, c.want)
		}
	}
}

// testDriver is a drivers.Driver for the engine's bookkeeping tests only: it
// records calls and makes no machine. Real hosts are covered by the driver
// tests and the acceptance suite.
type testDriver struct {
	mu        sync.Mutex
	created   []string
	destroyed []string // "name/gen"
	specs     []drivers.MachineSpec
	fail      map[string]error // Create fails for these names
	block     chan struct{}    // when set, Create waits for it
	started   chan string      // when set, Create reports its name
}

func (d *testDriver) Machines(ctx context.Context, cluster string) ([]drivers.Machine, error) {
	return nil, nil
}

func (d *testDriver) Create(ctx context.Context, cluster string, want drivers.MachineSpec) (drivers.Machine, error) {
	if d.started != nil {
		d.started <- want.Name
	}
	if d.block != nil {
		<-d.block
	}
	if err := d.fail[want.Name]; err != nil {
		return drivers.Machine{}, err
	}
	d.mu.Lock()
	d.created = append(d.created, want.Name)
	d.specs = append(d.specs, want)
	d.mu.Unlock()
	if want.Tags[drivers.TagCluster] != cluster || want.Tags[drivers.TagMachine] != want.Name {
		return drivers.Machine{}, fmt.Errorf("ownership tags missing: %v", want.Tags)
	}
	return drivers.Machine{Name: want.Name, ID: "id-" + want.Name, Address: "192.0.2.1", SSH: drivers.SSHEndpoint{User: "admin", HostKey: want.HostKey.Public}, State: "running"}, nil
}

func (d *testDriver) Destroy(ctx context.Context, m drivers.Machine) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.destroyed = append(d.destroyed, fmt.Sprintf("%s/%d", m.Name, drivers.GenerationOf(m.Tags)))
	return nil
}

func newTestEngine(t *testing.T, workers int, d drivers.Driver) (*Runner, *plan.Plan) {
	t.Helper()
	c, diags := spec.LoadBytes("t.hcl", []byte(fmt.Sprintf("name = \"t\"\ndriver \"local\" {}\nmanagers {\n  count = 1\n}\nworkers {\n  count = %d\n}\n", workers)), spec.Vars{})
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
	e := &Runner{Spec: c, Store: store, State: st, Drivers: map[string]drivers.Driver{"local": d}, Parallelism: 2}
	return e, plan.Build(c, st, plan.Observed{})
}

// TestPartialCreateFailureIsRecorded: one failed create does not stop the
// others; state on disk has the created machines, the failed one stays
// "creating" (so the next plan creates or adopts it), and the apply's error
// names the failed host and step while Stats lists it as failed.
func TestPartialCreateFailureIsRecorded(t *testing.T) {
	d := &testDriver{fail: map[string]error{"t-worker-2": errors.New("quota exceeded")}}
	e, p := newTestEngine(t, 3, d)
	r := newRun(e, p)
	if err := (credentials{}).Run(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if err := (machines{}).Run(context.Background(), r); err != nil {
		t.Fatalf("machines returned %v: host errors belong to hosts", err)
	}
	if len(d.created) != 3 {
		t.Fatalf("created %v, want the 3 others", d.created)
	}
	saved, err := e.Store.Load()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, m := range saved.Machines {
		got[m.Name] = m.Status
		if m.Status == state.StatusCreated && (m.ID == "" || m.SpecHash == "" || m.SSH.HostKey == "") {
			t.Errorf("%s recorded without ID, spec hash or host key: %+v", m.Name, m)
		}
	}
	want := map[string]string{"t-manager-1": "created", "t-worker-1": "created", "t-worker-2": "creating", "t-worker-3": "created"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("saved %v, want %v", got, want)
	}
	h := r.hosts["t-worker-2"]
	var se *StepError
	if !errors.As(h.err, &se) || se.Step != "machine.create" || se.Host != "t-worker-2" || !strings.Contains(se.Error(), "quota exceeded") {
		t.Fatalf("host error %v", h.err)
	}
	if live := r.live(); len(live) != 3 || live[0].rec.Name != "t-manager-1" {
		t.Fatalf("live hosts after the failure: %d", len(live))
	}
	// The next plan creates the failed one again and leaves the rest.
	p2 := plan.Build(e.Spec, saved, plan.Observed{Machines: map[string][]drivers.Machine{"local": {
		{Name: "t-manager-1", ID: "id-t-manager-1", State: "running"},
		{Name: "t-worker-1", ID: "id-t-worker-1", State: "running"},
		{Name: "t-worker-3", ID: "id-t-worker-3", State: "running"},
	}}})
	for _, a := range p2.Actions {
		if wantKind := map[bool]plan.Kind{true: plan.Create, false: plan.Reconfigure}[a.Machine == "t-worker-2"]; a.Kind != wantKind {
			t.Errorf("next plan: %s %s, want %s", a.Machine, a.Kind, wantKind)
		}
	}
}

// TestInterruptStopsNewWork: once the caller's context ends (SIGINT), the
// create already running finishes and is recorded, no further create
// starts, no later phase runs, and Apply reports the interrupt.
func TestInterruptStopsNewWork(t *testing.T) {
	d := &testDriver{block: make(chan struct{}), started: make(chan string, 8)}
	e, p := newTestEngine(t, 3, d)
	e.Parallelism = 1
	ctx, cancel := context.WithCancel(context.Background())
	type res struct {
		st  Stats
		err error
	}
	done := make(chan res)
	go func() {
		st, err := e.Apply(ctx, p)
		done <- res{st, err}
	}()
	first := <-d.started
	cancel()
	close(d.block)
	r := <-done
	if r.err == nil || !strings.Contains(r.err.Error(), "apply stopped") || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("Apply returned %v, want an interrupt", r.err)
	}
	if len(d.created) != 1 || d.created[0] != first {
		t.Fatalf("created %v after the interrupt, want only %s", d.created, first)
	}
	if len(r.st.Failed) != 0 {
		t.Errorf("hosts not started count as failed: %v", r.st.Failed)
	}
	// Every host, the one created too, is unfinished: none is "changed"
	// (the summary read "1 changed, 0 failed" for a machine never set up).
	if len(r.st.Changed) != 0 || len(r.st.NotDone) != 4 {
		t.Errorf("changed %v, not done %v: want the 4 hosts not done", r.st.Changed, r.st.NotDone)
	}
	saved, err := e.Store.Load()
	if err != nil {
		t.Fatal(err)
	}
	if m := saved.Machine(first); m == nil || m.Status != state.StatusCreated || m.ID == "" {
		t.Fatalf("the finished create is not saved: %+v", m)
	}
	if len(saved.Settings) != 0 {
		t.Errorf("settings recorded by an interrupted apply: %v", saved.Settings)
	}
	for _, m := range saved.Machines {
		if m.Name != first && m.Status != state.StatusCreating {
			t.Errorf("%s is %s", m.Name, m.Status)
		}
	}
}

// preflightDriver refuses in Preflight; bookkeeping only, like testDriver.
type preflightDriver struct {
	testDriver
	got []drivers.MachineSpec
}

func (d *preflightDriver) Preflight(ctx context.Context, want []drivers.MachineSpec) error {
	d.got = want
	return errors.New("instance type t9.huge is not offered")
}

// TestPreflightStopsBeforeAnyCreate: a driver's preflight sees every machine
// it would create (with ownership tags and a host key, as Create would) and
// its refusal stops the machines phase with nothing created or recorded.
func TestPreflightStopsBeforeAnyCreate(t *testing.T) {
	d := &preflightDriver{}
	e, p := newTestEngine(t, 2, d)
	r := newRun(e, p)
	if err := (credentials{}).Run(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	err := (machines{}).Run(context.Background(), r)
	if err == nil || !strings.Contains(err.Error(), "preflight (nothing was created)") || !strings.Contains(err.Error(), "t9.huge") {
		t.Fatalf("machines: %v", err)
	}
	if len(d.got) != 3 {
		t.Fatalf("preflight saw %d machines, want 3", len(d.got))
	}
	for _, m := range d.got {
		if m.Tags[drivers.TagMachine] != m.Name || m.HostKey.Public == "" {
			t.Errorf("preflight spec %s lacks tags or host key: %+v", m.Name, m)
		}
	}
	if len(d.created) != 0 {
		t.Errorf("created %v after a failed preflight", d.created)
	}
	saved, err := e.Store.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(saved.Machines) != 0 {
		t.Errorf("state records %d machines after a failed preflight", len(saved.Machines))
	}
}

// TestAdoptFinishesInterruptedCreate: a create interrupted after the
// driver made the machine but before it was recorded leaves the machine
// "creating" and its install key kept; the next apply adopts the machine
// by its tags and gives the driver that install key (a container never
// started needs it to be finished), treats it as installed (rotated on the
// first connection), and forgets the kept copy once recorded.
func TestAdoptFinishesInterruptedCreate(t *testing.T) {
	d := &testDriver{fail: map[string]error{"t-worker-2": context.Canceled}}
	e, p := newTestEngine(t, 3, d)
	r := newRun(e, p)
	if err := (credentials{}).Run(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	_ = (machines{}).Run(context.Background(), r)
	saved, err := e.Store.Load()
	if err != nil {
		t.Fatal(err)
	}
	rec := saved.Machine("t-worker-2")
	if rec == nil || rec.Status != state.StatusCreating || rec.SSH.HostKey == "" {
		t.Fatalf("interrupted create recorded as %+v", rec)
	}
	// The machine exists (the driver made it before the interrupt), found
	// by its tags: the plan adopts it.
	obs := plan.Observed{Machines: map[string][]drivers.Machine{"local": {
		{Name: "t-manager-1", ID: "id-t-manager-1", State: "running"},
		{Name: "t-worker-1", ID: "id-t-worker-1", State: "running"},
		{Name: "t-worker-2", ID: "id-t-worker-2", State: "created", SSH: drivers.SSHEndpoint{HostKey: rec.SSH.HostKey}},
		{Name: "t-worker-3", ID: "id-t-worker-3", State: "running"},
	}}}
	p2 := plan.Build(e.Spec, saved, obs)
	adopt := false
	for _, a := range p2.Actions {
		adopt = adopt || (a.Machine == "t-worker-2" && a.Kind == plan.Adopt)
	}
	if !adopt {
		t.Fatalf("plan does not adopt t-worker-2: %+v", p2.Actions)
	}
	delete(d.fail, "t-worker-2")
	d.specs = nil
	e.State = saved
	r2 := newRun(e, p2)
	if err := (credentials{}).Run(context.Background(), r2); err != nil {
		t.Fatal(err)
	}
	if err := (machines{}).Run(context.Background(), r2); err != nil {
		t.Fatal(err)
	}
	var got *drivers.MachineSpec
	for i := range d.specs {
		if d.specs[i].Name == "t-worker-2" {
			got = &d.specs[i]
		}
	}
	if got == nil || len(got.HostKey.PrivatePEM) == 0 || got.HostKey.Public != rec.SSH.HostKey {
		t.Fatalf("the adopting Create did not get the kept install key: %+v", got)
	}
	h := r2.hosts["t-worker-2"]
	if h.err != nil || h.rec.Status != state.StatusCreated || h.rec.HostKeySource != state.HostKeyInstalled {
		t.Fatalf("adopted: err %v, status %s, key source %q (want installed: rotated on the first connection)", h.err, h.rec.Status, h.rec.HostKeySource)
	}
	if _, ok := e.keptInstallKey("t-worker-2", rec.SSH.HostKey); ok {
		t.Error("the install key is still kept after the machine was recorded")
	}
}

// TestBackupSourceSkipsGoneGeneration: the generation of a manager being
// replaced because its machine is gone is never the raft backup's source,
// even while the node list still calls it Reachable (the raft notices a
// second later) and it is the node about to change: its address may be
// the new generation's already. A live one is the preferred source.
func TestBackupSourceSkipsGoneGeneration(t *testing.T) {
	e, p := newTestEngine(t, 0, &testDriver{})
	r := newRun(e, p)
	mk := func(name, node, addr string) *host {
		h := &host{rec: &state.Machine{Role: spec.RoleManager, NodeID: node}}
		h.rec.Name, h.rec.Address = name, addr
		return h
	}
	cur, other := mk("t-manager-1", "n2", "10.0.0.3"), mk("t-manager-2", "n3", "10.0.0.4")
	r.hosts = map[string]*host{"t-manager-1": cur, "t-manager-2": other}
	old := &retiree{owner: cur, rec: state.Retiring{Machine: drivers.Machine{Address: "10.0.0.3"}, Generation: 1, NodeID: "n1"}, gone: true}
	r.retiring = []*retiree{old}
	reach := func(leader bool) *dswarm.ManagerStatus {
		return &dswarm.ManagerStatus{Reachability: dswarm.ReachabilityReachable, Leader: leader}
	}
	nodes := map[string]dswarm.Node{"n1": {ID: "n1", ManagerStatus: reach(false)}, "n2": {ID: "n2", ManagerStatus: reach(false)}, "n3": {ID: "n3", ManagerStatus: reach(true)}}
	if src, _ := r.backupSource(nodes, "n1"); src == nil || src.nodeID == "n1" {
		t.Fatalf("source %+v: a gone generation was chosen", src)
	}
	// Four members in the node list, one of them gone: stopping a
	// follower's engine for the copy would leave 2 of 4 answering, under
	// the majority of 3: the copy is taken hot.
	third := mk("t-manager-3", "n4", "10.0.0.5")
	r.hosts["t-manager-3"] = third
	nodes["n4"] = dswarm.Node{ID: "n4", ManagerStatus: reach(false)}
	if src, stop := r.backupSource(nodes, "n1"); src == nil || src.nodeID == "n1" || stop {
		t.Fatalf("source %+v, stop %v: a gone member counted as reachable", src, stop)
	}
	old.gone = false
	if src, _ := r.backupSource(nodes, "n1"); src == nil || src.nodeID != "n1" {
		t.Fatalf("source %+v: the live generation about to change should be preferred", src)
	}
}

// TestFollowMovedAddress: a machine plan found at a new address (stopped
// and started outside provision) gets it recorded without a driver call,
// and keeps its host key; a member whose swarm address moved fails with a
// message naming it, and its record keeps the old addresses.
func TestFollowMovedAddress(t *testing.T) {
	d := &testDriver{}
	e, p := newTestEngine(t, 2, d)
	r := newRun(e, p)
	ctx := context.Background()
	if err := (credentials{}).Run(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := (machines{}).Run(ctx, r); err != nil {
		t.Fatal(err)
	}
	saved, err := e.Store.Load()
	if err != nil {
		t.Fatal(err)
	}
	var obs []drivers.Machine
	for _, m := range saved.Machines {
		m.Status, m.NodeID, m.PrivateAddress = state.StatusReady, "node-"+m.Name, "10.1.0."+fmt.Sprint(m.Index)
		if m.Role == "manager" {
			m.PrivateAddress = "10.1.0.100"
		}
		o := m.Machine
		switch m.Name {
		case "t-worker-1":
			o.Address = "198.51.100.9" // public address only: followed
		case "t-worker-2":
			o.PrivateAddress = "10.1.0.77" // the swarm address: refused
		}
		obs = append(obs, o)
	}
	if err := e.Store.Save(saved); err != nil {
		t.Fatal(err)
	}
	e.State = saved
	p2 := plan.Build(e.Spec, saved, plan.Observed{Machines: map[string][]drivers.Machine{"local": obs}})
	if got := fmt.Sprint(p2.Summary.Reconfigure); got != "2" {
		t.Fatalf("plan: %+v", p2.Actions)
	}
	d.created = nil
	r = newRun(e, p2)
	if err := (credentials{}).Run(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := (machines{}).Run(ctx, r); err != nil {
		t.Fatal(err)
	}
	if len(d.created) != 0 {
		t.Fatalf("the driver was asked to create %v", d.created)
	}
	after, err := e.Store.Load()
	if err != nil {
		t.Fatal(err)
	}
	w1, w2 := after.Machine("t-worker-1"), after.Machine("t-worker-2")
	if w1.Address != "198.51.100.9" || w1.PrivateAddress != "10.1.0.1" || w1.SSH.HostKey == "" || w1.SSH.HostKey != saved.Machine("t-worker-1").SSH.HostKey {
		t.Fatalf("worker-1 recorded %+v", w1.Machine)
	}
	if r.hosts["t-worker-1"].err != nil {
		t.Fatal(r.hosts["t-worker-1"].err)
	}
	if w2.PrivateAddress != "10.1.0.2" {
		t.Fatalf("worker-2's refused move was recorded: %+v", w2.Machine)
	}
	var se *StepError
	if h := r.hosts["t-worker-2"]; !errors.As(h.err, &se) || se.Host != "t-worker-2" || !strings.Contains(se.Error(), "10.1.0.77") || !strings.Contains(se.Error(), "swarm address 10.1.0.2 moved") {
		t.Fatalf("worker-2: %v", h.err)
	}
}
