package swarm_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	dswarm "github.com/docker/docker/api/types/swarm"

	"github.com/provision/provision/provision/swarm"
	"github.com/provision/provision/provision/swarm/swarmtest"
)

// TestDrainKeepsReplicas: Docker's drain stops a node's tasks before their
// replacements run (swarmtest does the same), so a drain alone takes a
// service below its replicas. For start-first services, drains pause the
// node, scale the service up by what the node runs, wait for the extra
// tasks, drain, and scale back: the service never runs fewer than its
// replicas. A stop-first one (a singleton database) is never scaled.
func TestDrainKeepsReplicas(t *testing.T) {
	w := swarmtest.New()
	m, ms, ws := cluster(t, w, 1, 2)
	ctx := context.Background()
	sw := ms[0].API.(*swarmtest.Engine).Swarm()
	w.AddService(sw, "web", 3)
	sw.StartFirst("web")
	w.AddService(sw, "db", 1) // stop-first: drains as Docker does
	var notes []string
	m.Notify = func(host, msg string) { notes = append(notes, host+": "+msg) }
	if drained, err := m.Drain(ctx, "w1", ws[0].NodeID); err != nil || !drained {
		t.Fatalf("drain: %v %v", drained, err)
	}
	if got := w.MinRunning["web"]; got < 3 {
		t.Errorf("web ran %d of its 3 replicas during the drain; calls:\n%s", got, strings.Join(w.Calls, "\n"))
	}
	if n, labels := sw.Replicas("web"); n != 3 || labels[swarm.LabelSurge] != "" {
		t.Errorf("after the drain: %d replicas, labels %v; want 3 and no surge label", n, labels)
	}
	if sw.Running("web") != 3 || sw.TasksOn(ws[0].API.(*swarmtest.Engine)) != 0 {
		t.Errorf("%d running, %d on the drained node", sw.Running("web"), sw.TasksOn(ws[0].API.(*swarmtest.Engine)))
	}
	up := slices.Index(w.Calls, "ServiceUpdate web replicas=4")
	drain := slices.IndexFunc(w.Calls, func(c string) bool { return strings.Contains(c, "w1 availability=drain") })
	down := slices.Index(w.Calls, "ServiceUpdate web replicas=3")
	if up < 0 || drain < up || down < drain || !slices.Contains(w.Calls, "NodeUpdate w1 availability=pause") {
		t.Errorf("want pause, scale up, drain, scale back; calls:\n%s", strings.Join(w.Calls, "\n"))
	}
	if slices.ContainsFunc(w.Calls, func(c string) bool { return strings.HasPrefix(c, "ServiceUpdate db") }) {
		t.Errorf("a stop-first service was scaled: %v", w.Calls)
	}
	if !slices.ContainsFunc(notes, func(n string) bool { return strings.Contains(n, "web 3→4") }) {
		t.Errorf("notes do not say what was scaled: %v", notes)
	}
}

// TestRestoreSurges: an apply interrupted between the scale-up and the
// scale-back leaves the label; the next apply puts the service's own count
// back, unless someone scaled it meanwhile (then their count stays).
func TestRestoreSurges(t *testing.T) {
	w := swarmtest.New()
	m, ms, _ := cluster(t, w, 1, 1)
	ctx := context.Background()
	e := ms[0].API.(*swarmtest.Engine)
	sw := e.Swarm()
	w.AddService(sw, "web", 2)
	w.AddService(sw, "api", 2)
	w.AddService(sw, "db", 1)
	set := func(name string, replicas uint64, label string) {
		t.Helper()
		svc, _, err := e.ServiceInspectWithRaw(ctx, name, dswarm.ServiceInspectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		spec := svc.Spec
		spec.Labels = map[string]string{"team": "a", swarm.LabelSurge: label}
		spec.Mode.Replicated = &dswarm.ReplicatedService{Replicas: &replicas}
		if _, err := e.ServiceUpdate(ctx, name, svc.Version, spec, dswarm.ServiceUpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	set("web", 3, "2:3") // interrupted surge
	set("api", 5, "2:3") // scaled by someone after the surge
	if err := m.RestoreSurges(ctx); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]uint64{"web": 2, "api": 5, "db": 1} {
		n, labels := sw.Replicas(name)
		if n != want || labels[swarm.LabelSurge] != "" || (name != "db" && labels["team"] != "a") {
			t.Errorf("%s: %d replicas, labels %v; want %d, the surge label gone, others kept", name, n, labels, want)
		}
	}
	calls := len(w.Calls)
	if err := m.RestoreSurges(ctx); err != nil || len(w.Calls) != calls {
		t.Errorf("a second restore changed something: %v %v", err, w.Calls[calls:])
	}
}

// TestSurgeWithoutRoom: when the swarm cannot place the extra tasks (every
// other node full), the service is scaled back at once and the node drains
// as Docker does, without waiting for the reschedule timeout first.
func TestSurgeWithoutRoom(t *testing.T) {
	w := swarmtest.New()
	m, ms, ws := cluster(t, w, 1, 1)
	ctx := context.Background()
	sw := ms[0].API.(*swarmtest.Engine).Swarm()
	w.AddService(sw, "web", 2)
	sw.StartFirst("web")
	ms[0].API.(*swarmtest.Engine).Full = true
	m.Timeouts.Reschedule = 3 * time.Second
	var notes []string
	m.Notify = func(host, msg string) { notes = append(notes, host+": "+msg) }
	t0 := time.Now()
	if _, err := m.Drain(ctx, "w1", ws[0].NodeID); err != nil {
		t.Fatal(err)
	}
	if n, labels := sw.Replicas("web"); n != 2 || labels[swarm.LabelSurge] != "" {
		t.Errorf("after the drain: %d replicas, labels %v", n, labels)
	}
	if !slices.ContainsFunc(notes, func(n string) bool { return strings.Contains(n, "no room for its extra replicas") }) {
		t.Errorf("notes: %v", notes)
	}
	// The surge gave up at once; only the plain drain's own wait (its
	// stopped task has nowhere to go either) took the reschedule timeout.
	if took := time.Since(t0); took > 5*time.Second {
		t.Errorf("drain took %s: the surge waited for tasks that could not be placed", took)
	}
}

// TestDrainWaitsForReplacements: right after a drain stops a node's tasks
// the swarm has not yet made their replacements, so every task it lists is
// Running while a service is short. The drain must not count that as done
// (CI saw a stop-first service at 2 of 4 when the next node was drained).
func TestDrainWaitsForReplacements(t *testing.T) {
	w := swarmtest.New()
	m, ms, ws := cluster(t, w, 1, 2)
	sw := ms[0].API.(*swarmtest.Engine).Swarm()
	w.AddService(sw, "db", 3) // stop-first
	w.ReplaceLag = 3
	if drained, err := m.Drain(context.Background(), "w1", ws[0].NodeID); err != nil || !drained {
		t.Fatalf("drain: %v %v", drained, err)
	}
	if got := sw.Running("db"); got != 3 {
		t.Errorf("the drain returned with db at %d of 3 running", got)
	}
}

// TestScaleBackAfterReplacementsRun: the scale-back after a surged drain
// must wait until the drained task's replacement runs. Swarm's scale-down
// removes the highest copy on a node first, even a running one, before a
// replacement still in its restart delay on a node of its own, so scaling
// back at once leaves the service a task short until the delay is over
// (CI saw 3 of 4 on real hosts: a node with two copies after earlier
// drains, two emptied nodes taking the extra task and the replacement).
func TestScaleBackAfterReplacementsRun(t *testing.T) {
	w := swarmtest.New()
	m, ms, ws := cluster(t, w, 1, 4)
	sw := ms[0].API.(*swarmtest.Engine).Swarm()
	// Four replicas on three nodes (one holds two), two nodes empty.
	for _, h := range ws[2:] {
		h.API.(*swarmtest.Engine).Full = true
	}
	w.AddService(sw, "web", 4)
	sw.StartFirst("web")
	for _, h := range ws[2:] {
		h.API.(*swarmtest.Engine).Full = false
	}
	var target *swarm.Host
	for _, h := range ws[:2] {
		if sw.TasksOn(h.API.(*swarmtest.Engine)) == 1 {
			target = h
		}
	}
	if target == nil {
		t.Fatal("no worker with one task")
	}
	w.ReplaceLag = 3
	var notes []string
	m.Notify = func(host, msg string) { notes = append(notes, host+": "+msg) }
	if drained, err := m.Drain(context.Background(), target.Name, target.NodeID); err != nil || !drained {
		t.Fatalf("drain: %v %v", drained, err)
	}
	if got := w.MinRunning["web"]; got < 4 {
		t.Errorf("web ran %d of its 4 replicas during the drain; calls:\n%s\nnotes:\n%s", got, strings.Join(w.Calls, "\n"), strings.Join(notes, "\n"))
	}
	if n, _ := sw.Replicas("web"); n != 4 || sw.Running("web") != 4 {
		t.Errorf("after the drain: %d replicas, %d running", n, sw.Running("web"))
	}
}
