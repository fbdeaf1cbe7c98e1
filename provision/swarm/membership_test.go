package swarm_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	dswarm "github.com/docker/docker/api/types/swarm"

	"github.com/provision/provision/provision/swarm"
	"github.com/provision/provision/provision/swarm/swarmtest"
)

// cluster forms a swarm of managers and workers through Membership, the way
// the apply engine does: the first manager inits, the others join one at a
// time, workers join.
func cluster(t *testing.T, w *swarmtest.World, managers, workers int) (*swarm.Membership, []*swarm.Host, []*swarm.Host) {
	t.Helper()
	ctx := context.Background()
	m := &swarm.Membership{}
	var ms, ws []*swarm.Host
	for i := 1; i <= managers; i++ {
		ms = append(ms, w.Engine(fmt.Sprintf("m%d", i), fmt.Sprintf("10.0.0.%d", i)).Host())
	}
	for i := 1; i <= workers; i++ {
		ws = append(ws, w.Engine(fmt.Sprintf("w%d", i), fmt.Sprintf("10.0.1.%d", i)).Host())
	}
	f, err := m.Bootstrap(ctx, ms, swarm.Form{Label: "cid"})
	if err != nil {
		t.Fatal(err)
	}
	if !f.Inited || f.Via != ms[0] {
		t.Fatalf("bootstrap %+v", f)
	}
	for _, h := range ms[1:] {
		if _, changed, err := m.Join(ctx, h, true); err != nil || !changed {
			t.Fatalf("join %s: %v %v", h.Name, changed, err)
		}
	}
	for _, h := range ws {
		if _, _, err := m.Join(ctx, h, false); err != nil {
			t.Fatalf("join %s: %v", h.Name, err)
		}
	}
	return m, ms, ws
}

func TestBootstrapAndJoin(t *testing.T) {
	w := swarmtest.New()
	m, ms, ws := cluster(t, w, 3, 2)
	ctx := context.Background()
	nodes, err := m.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 5 {
		t.Fatalf("%d nodes", len(nodes))
	}
	for _, h := range ms {
		if !m.Member(h.NodeID, true) {
			t.Errorf("%s is not a Ready manager", h.Name)
		}
	}
	for _, h := range ws {
		if !m.Member(h.NodeID, false) || m.Member(h.NodeID, true) {
			t.Errorf("%s is not a Ready worker", h.Name)
		}
	}
	if sw, _ := ms[0].API.SwarmInspect(ctx); sw.Spec.Annotations.Labels[swarm.LabelCluster] != "cid" {
		t.Errorf("a new swarm is not labelled with the cluster: %v", sw.Spec.Annotations.Labels)
	}
	// Joining again changes nothing.
	for _, h := range append(ms[1:], ws...) {
		id, changed, err := m.Join(ctx, h, h.Name[0] == 'm')
		if err != nil || changed || id != h.NodeID {
			t.Errorf("second join of %s: %s %v %v", h.Name, id, changed, err)
		}
	}
	// A fresh Membership finds the running swarm through any manager and
	// makes nothing new.
	m2 := &swarm.Membership{}
	f, err := m2.Bootstrap(ctx, ms[1:], swarm.Form{ClusterID: m.ClusterID, Recorded: true})
	if err != nil || f.Inited || f.Via != ms[1] || m2.ClusterID != m.ClusterID {
		t.Fatalf("second bootstrap: %+v %v", f, err)
	}
	if len(w.Violations) > 0 {
		t.Errorf("quorum lost: %v", w.Violations)
	}
}

// TestBootstrapWaitsForLeader: a swarm just formed, or re-formed with
// --force-new-cluster, may answer "no leader" for a while (its raft electing
// the one manager on a loaded host); Bootstrap waits for it instead of
// failing the apply, and gives up at its deadline naming the host.
func TestBootstrapWaitsForLeader(t *testing.T) {
	ctx := context.Background()
	w := swarmtest.New()
	e := w.Engine("m1", "10.0.0.1")
	e.Leaderless = 3
	m := &swarm.Membership{}
	f, err := m.Bootstrap(ctx, []*swarm.Host{e.Host()}, swarm.Form{Label: "cid"})
	if err != nil || !f.Inited {
		t.Fatalf("bootstrap of a new swarm whose leader comes late: %+v %v", f, err)
	}
	if len(m.Nodes()) != 1 {
		t.Fatalf("nodes after the wait: %v", m.Nodes())
	}

	// Quorum lost: m1 survives of three managers; re-formed, it lists
	// nodes only after a few tries.
	w = swarmtest.New()
	m, ms, _ := cluster(t, w, 3, 0)
	ms[1].API.(*swarmtest.Engine).Down = true
	ms[2].API.(*swarmtest.Engine).Down = true
	ms[0].API.(*swarmtest.Engine).Leaderless = 2
	m2 := &swarm.Membership{}
	f, err = m2.Bootstrap(ctx, []*swarm.Host{ms[0]}, swarm.Form{ClusterID: m.ClusterID, Recorded: true, ForceNewCluster: true})
	if err != nil || !f.Forced {
		t.Fatalf("force-new-cluster with a late leader: %+v %v", f, err)
	}

	// A leader that never comes: the wait ends at its deadline and says
	// which host and what it waited for.
	defer swarm.SetFormTimeout(300 * time.Millisecond)()
	w = swarmtest.New()
	e = w.Engine("m9", "10.0.0.9")
	e.Leaderless = 1 << 30
	_, err = (&swarm.Membership{}).Bootstrap(ctx, []*swarm.Host{e.Host()}, swarm.Form{Label: "cid"})
	if err == nil || !strings.Contains(err.Error(), "m9") || !strings.Contains(err.Error(), "leader") {
		t.Fatalf("a leader that never comes: %v", err)
	}
}

// TestJoinOtherSwarm: an engine active in another swarm is refused, never
// taken over; the same for a worker whose node the swarm does not list (a
// worker left in a swarm whose managers were replaced).
func TestJoinOtherSwarm(t *testing.T) {
	w := swarmtest.New()
	m, _, _ := cluster(t, w, 1, 0)
	other := &swarm.Membership{}
	om := w.Engine("o1", "10.9.0.1").Host()
	ow := w.Engine("o2", "10.9.0.2").Host()
	ctx := context.Background()
	if _, err := other.Bootstrap(ctx, []*swarm.Host{om}, swarm.Form{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := other.Join(ctx, ow, false); err != nil {
		t.Fatal(err)
	}
	for _, h := range []*swarm.Host{om, ow} {
		_, _, err := m.Join(ctx, h, false)
		if !errors.Is(err, swarm.ErrOtherSwarm) {
			t.Errorf("%s: join of a member of another swarm: %v", h.Name, err)
		}
	}
}

// TestReplaceManagersNeverLosesQuorum replaces each of three managers the
// way the apply engine does (the new one joins and is Reachable, then the
// old one is demoted, drained, leaves and is removed): the raft never has
// fewer than a majority reachable, the service keeps its replicas, and the
// swarm's ID stays.
func TestReplaceManagersNeverLosesQuorum(t *testing.T) {
	w := swarmtest.New()
	m, ms, ws := cluster(t, w, 3, 2)
	ctx := context.Background()
	sw := ms[0].API.(*swarmtest.Engine).Swarm()
	w.AddService(sw, "web", 4)
	sw.StartFirst("web")
	id := m.ClusterID
	w.ResetMin()
	for i, old := range ms {
		nu := w.Engine(old.Name+"-g2", fmt.Sprintf("10.0.2.%d", i+1)).Host()
		if _, _, err := m.Join(ctx, nu, true); err != nil {
			t.Fatalf("join replacement of %s: %v", old.Name, err)
		}
		if err := m.Retire(ctx, old.Name, old.NodeID, old); err != nil {
			t.Fatalf("retire %s: %v", old.Name, err)
		}
		if n := sw.Running("web"); n != 4 {
			t.Errorf("after replacing %s: %d of 4 tasks running", old.Name, n)
		}
	}
	if len(w.Violations) > 0 {
		t.Fatalf("quorum lost: %v", w.Violations)
	}
	if got := w.MinRunning["web"]; got < 4 {
		t.Errorf("web ran %d of its 4 replicas during the roll", got)
	}
	if got := w.MinReachable[id]; got < 2 {
		t.Errorf("fewest reachable managers %d of %d", got, w.MinOf[id])
	}
	if got := strings.Join(sw.Managers(), " "); strings.Count(got, "-g2") != 3 || len(sw.Managers()) != 3 {
		t.Errorf("managers after the roll: %s", got)
	}
	if sw.NodeCount() != 5 || m.ClusterID != id {
		t.Errorf("%d nodes, cluster %s (was %s)", sw.NodeCount(), m.ClusterID, id)
	}
	for _, h := range ws {
		if !m.Member(h.NodeID, false) {
			t.Errorf("worker %s lost", h.Name)
		}
	}
}

// TestRetireRefusesQuorumLoss: with one of three managers dead, retiring a
// live one would leave one of two: refused, and nothing changes. The dead
// one may go. The last manager never goes.
func TestRetireRefusesQuorumLoss(t *testing.T) {
	w := swarmtest.New()
	m, ms, _ := cluster(t, w, 3, 0)
	ctx := context.Background()
	w.Kill(ms[2].API.(*swarmtest.Engine))
	before := len(w.Calls)
	err := m.Retire(ctx, ms[1].Name, ms[1].NodeID, ms[1])
	if err == nil || !strings.Contains(err.Error(), "quorum") {
		t.Fatalf("retire of a live manager with one dead: %v", err)
	}
	if len(w.Calls) != before {
		t.Errorf("a refused retire changed the swarm: %v", w.Calls[before:])
	}
	if err := m.Retire(ctx, ms[2].Name, ms[2].NodeID, nil); err != nil {
		t.Fatalf("retire of the dead manager: %v", err)
	}
	if err := m.Retire(ctx, ms[1].Name, ms[1].NodeID, ms[1]); err != nil {
		t.Fatalf("retire down to one manager: %v", err)
	}
	if err := m.Retire(ctx, ms[0].Name, ms[0].NodeID, ms[0]); err == nil {
		t.Fatal("the last manager was retired")
	}
	if len(w.Violations) > 0 {
		t.Fatalf("quorum lost: %v", w.Violations)
	}
}

// TestConcurrentRetiresAreSerial: asking to retire two of three managers at
// once changes one at a time, each checked against the raft as it is then,
// and never loses quorum.
func TestConcurrentRetiresAreSerial(t *testing.T) {
	w := swarmtest.New()
	m, ms, _ := cluster(t, w, 3, 0)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, h := range ms[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.Retire(ctx, h.Name, h.NodeID, h)
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("retires: %v", errs)
	}
	if len(w.Violations) > 0 {
		t.Fatalf("quorum lost: %v", w.Violations)
	}
	// Each demotion is followed by its leave and removal before the next
	// demotion starts.
	var seq []string
	for _, c := range w.Calls {
		if strings.Contains(c, "demote") || strings.HasPrefix(c, "NodeRemove") {
			seq = append(seq, c)
		}
	}
	if len(seq) != 4 || !strings.Contains(seq[0], "demote") || !strings.HasPrefix(seq[1], "NodeRemove") || !strings.Contains(seq[2], "demote") {
		t.Fatalf("manager changes interleaved: %v", seq)
	}
}

// TestJoinBlockedTimesOutAndCancels: a join that cannot complete (the new
// host cannot reach a manager's 2377) ends at its deadline with a WaitError
// naming the host and what it waited for, progress lines on the way; a
// cancelled context ends it at once.
func TestJoinBlockedTimesOutAndCancels(t *testing.T) {
	w := swarmtest.New()
	m, _, _ := cluster(t, w, 1, 0)
	var mu sync.Mutex
	var progress []string
	m.Notify = func(host, msg string) {
		mu.Lock()
		defer mu.Unlock()
		progress = append(progress, host+": "+msg)
	}
	m.Timeouts = swarm.Timeouts{Join: 700 * time.Millisecond}
	e := w.Engine("stuck", "10.0.5.1")
	e.BlockJoin = true
	_, _, err := m.Join(context.Background(), e.Host(), false)
	var we *swarm.WaitError
	if !errors.As(err, &we) || we.Host != "stuck" || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "join") {
		t.Fatalf("blocked join: %v", err)
	}
	// Cancelled: returns promptly, saying it was stopped.
	m.Timeouts = swarm.Timeouts{Join: time.Hour}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	t0 := time.Now()
	_, _, err = m.Join(ctx, e.Host(), false)
	if !errors.Is(err, context.Canceled) || time.Since(t0) > 2*time.Second {
		t.Fatalf("cancelled join: %v after %s", err, time.Since(t0))
	}
	// Once the path is open, the pending join completes and is waited for.
	if err := w.Unblock(e); err != nil {
		t.Fatal(err)
	}
	if id, _, err := m.Join(context.Background(), e.Host(), false); err != nil || !m.Member(id, false) {
		t.Fatalf("join after unblock: %s %v", id, err)
	}
}

func TestWaitProgressAndDeadline(t *testing.T) {
	var lines []string
	w := swarm.Wait{Host: "h1", What: "node Ready", Timeout: 300 * time.Millisecond, Every: 50 * time.Millisecond, First: 10 * time.Millisecond, Max: 20 * time.Millisecond,
		Progress: func(host, msg string) { lines = append(lines, host+": "+msg) }}
	err := w.Until(context.Background(), func(ctx context.Context) (bool, string, error) { return false, "down", nil })
	var we *swarm.WaitError
	if !errors.As(err, &we) || we.Last != "down" || !strings.Contains(err.Error(), "h1: waiting for node Ready: gave up after") {
		t.Fatalf("wait: %v", err)
	}
	if len(lines) == 0 || !strings.Contains(lines[0], "h1: waiting for node Ready (") || !strings.Contains(lines[0], ": down") {
		t.Fatalf("progress %q", lines)
	}
	boom := errors.New("boom")
	if err := w.Until(context.Background(), func(ctx context.Context) (bool, string, error) { return false, "", boom }); err != boom {
		t.Fatalf("fatal check error: %v", err)
	}
}

// TestRemoveDead: a dead worker and a dead manager (Down, ours by hostname)
// leave the node list; a dead node that is not ours stays.
func TestRemoveDead(t *testing.T) {
	w := swarmtest.New()
	m, ms, ws := cluster(t, w, 3, 2)
	ctx := context.Background()
	w.Kill(ms[2].API.(*swarmtest.Engine))
	w.Kill(ws[0].API.(*swarmtest.Engine))
	keep := map[string]bool{ms[0].NodeID: true, ms[1].NodeID: true, ws[1].NodeID: true}
	removed, err := m.RemoveDead(ctx, keep, nil, func(h string) bool { return h != "w1" })
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0].Description.Hostname != "m3" {
		t.Fatalf("removed %v", removed)
	}
	removed, err = m.RemoveDead(ctx, keep, map[string]bool{ws[0].NodeID: true}, func(string) bool { return false })
	if err != nil || len(removed) != 1 || removed[0].Description.Hostname != "w1" {
		t.Fatalf("stale removal: %v %v", removed, err)
	}
	if len(w.Violations) > 0 {
		t.Fatalf("quorum lost: %v", w.Violations)
	}
}

func mgrNode(id string, reachable, leader bool) dswarm.Node {
	r := dswarm.ReachabilityUnreachable
	if reachable {
		r = dswarm.ReachabilityReachable
	}
	return dswarm.Node{ID: id, Spec: dswarm.NodeSpec{Role: dswarm.NodeRoleManager}, ManagerStatus: &dswarm.ManagerStatus{Reachability: r, Leader: leader}}
}

// TestSortLeaderLast: dead managers leave first, the leader last.
func TestSortLeaderLast(t *testing.T) {
	nodes := map[string]dswarm.Node{"a": mgrNode("a", true, true), "b": mgrNode("b", true, false), "c": mgrNode("c", false, false)}
	items := [][2]string{{"x-1", "a"}, {"x-2", "b"}, {"x-3", "c"}, {"x-4", ""}, {"x-5", "gone"}}
	swarm.SortLeaderLast(items, nodes, func(i [2]string) (string, string) { return i[0], i[1] })
	var got []string
	for _, i := range items {
		got = append(got, i[0])
	}
	if s := strings.Join(got, " "); s != "x-3 x-4 x-5 x-2 x-1" {
		t.Fatalf("order %s", s)
	}
}

// TestCanDemote: demoting a reachable manager must leave a majority of the
// remaining managers reachable.
func TestCanDemote(t *testing.T) {
	worker := dswarm.Node{ID: "w", Spec: dswarm.NodeSpec{Role: dswarm.NodeRoleWorker}}
	cases := []struct {
		name  string
		nodes []dswarm.Node
		id    string
		ok    bool
	}{
		{"3 up, demote one", []dswarm.Node{mgrNode("a", true, true), mgrNode("b", true, false), mgrNode("c", true, false), worker}, "c", true},
		{"2 up, demote one", []dswarm.Node{mgrNode("a", true, true), mgrNode("b", true, false)}, "b", true},
		{"last manager", []dswarm.Node{mgrNode("a", true, true), worker}, "a", false},
		{"3 with 1 dead: demoting a live one loses quorum", []dswarm.Node{mgrNode("a", true, true), mgrNode("b", true, false), mgrNode("c", false, false)}, "b", false},
		{"3 with 1 dead: the dead one may go", []dswarm.Node{mgrNode("a", true, true), mgrNode("b", true, false), mgrNode("c", false, false)}, "c", true},
		{"5 with 1 dead: a live one may go", []dswarm.Node{mgrNode("a", true, true), mgrNode("b", true, false), mgrNode("c", true, false), mgrNode("d", true, false), mgrNode("e", false, false)}, "d", true},
		{"5 with 2 dead: no live one may go", []dswarm.Node{mgrNode("a", true, true), mgrNode("b", true, false), mgrNode("c", true, false), mgrNode("d", false, false), mgrNode("e", false, false)}, "c", false},
		{"not a manager", []dswarm.Node{mgrNode("a", true, true), worker}, "w", true},
	}
	for _, c := range cases {
		err := swarm.CanDemote(c.nodes, c.id)
		if (err == nil) != c.ok {
			t.Errorf("%s: err = %v, want ok=%v", c.name, err, c.ok)
		}
	}
}
