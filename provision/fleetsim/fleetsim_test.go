package fleetsim

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/provision/provision/provision/apply"
)

func newCluster(t testing.TB, managers, workers int, l Latency) *Cluster {
	t.Helper()
	return &Cluster{Fleet: New(l), Dir: t.TempDir(), Name: "sim", Managers: managers, Workers: workers}
}

// TestApplyNoopDestroy: a fresh apply forms the swarm with every host, a
// second apply changes nothing and costs one SSH session per host (the
// facts), and destroy leaves no machine.
func TestApplyNoopDestroy(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 3, 20, Latency{})
	stats, _, err := c.Apply(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(stats.Changed) != 23 || len(stats.Failed) != 0 {
		t.Fatalf("changed %d, failed %v", len(stats.Changed), stats.Failed)
	}
	h := c.Fleet.Host("sim-manager-1")
	sw := h.f.engines[h.Address].Swarm()
	if sw == nil || sw.NodeCount() != 23 || len(sw.Managers()) != 3 {
		t.Fatalf("swarm: %v", sw)
	}
	first := c.Fleet.Take()
	t.Logf("fresh apply: %+v", first)
	stats, p, err := c.Apply(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(stats.Changed) != 0 || len(stats.Unchanged) != 23 || !p.Empty() {
		t.Fatalf("no-op apply changed %v (plan empty %v)", stats.Changed, p.Empty())
	}
	noop := c.Fleet.Take()
	if noop.MaxSessions != 1 || noop.Writes != 0 {
		t.Fatalf("no-op apply: %d sessions on the busiest host, %d SFTP writes; want 1 and 0", noop.MaxSessions, noop.Writes)
	}
	if err := c.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if n := c.Fleet.Driver.Count(); n != 0 {
		t.Fatalf("%d machines left", n)
	}
}

// TestFailuresConverge: with hosts failing at random steps, the apply
// finishes every other host, reports each failed one with the step it
// failed in, and the next apply converges exactly those.
func TestFailuresConverge(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 3, 97, Latency{})
	c.JoinBackoff = time.Millisecond
	names := c.Names()
	var workers []string
	for _, n := range names {
		if strings.Contains(n, "worker") {
			workers = append(workers, n)
		}
	}
	failed := c.Fleet.FailRandom(workers, 7)
	stats, _, err := c.Apply(ctx)
	if err == nil {
		t.Fatal("apply with failing hosts returned no error")
	}
	if len(stats.Failed) != len(failed) || len(stats.Changed) != 100-len(failed) {
		t.Fatalf("failed %v, changed %d; injected %v", stats.Failed, len(stats.Changed), failed)
	}
	for name, step := range failed {
		found := false
		for _, e := range unjoin(err) {
			var se *apply.StepError
			if errors.As(e, &se) && se.Host == name {
				found = true
				if se.Step != step {
					t.Errorf("%s failed in %s, injected at %s: %v", name, se.Step, step, se)
				}
			}
		}
		if !found {
			t.Errorf("%s (injected at %s) is not reported", name, step)
		}
	}
	c.Fleet.Take()
	c.Fleet.Heal()
	stats, _, err = c.Apply(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(stats.Failed) != 0 || len(stats.Changed) != len(failed) {
		t.Fatalf("re-apply changed %v, want exactly %v", stats.Changed, failed)
	}
	for _, n := range stats.Changed {
		if _, ok := failed[n]; !ok {
			t.Errorf("re-apply changed %s, which had not failed", n)
		}
	}
	h := c.Fleet.Host("sim-manager-1")
	if sw := h.f.engines[h.Address].Swarm(); sw.NodeCount() != 100 {
		t.Fatalf("swarm has %d nodes after the re-apply", sw.NodeCount())
	}
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, unjoin(e)...)
		}
		return out
	}
	return []error{err}
}

// TestConnectionsFollowParallelism: SSH connections open at once stay
// within the parallelism (a host in flight may hold its own and the fresh
// login that proves a rotated host key), whatever the fleet's size, and
// none is left open.
func TestConnectionsFollowParallelism(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 3, 97, Latency{SSHRTT: 50 * time.Microsecond})
	c.Parallelism = 8
	if _, _, err := c.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	n := c.Fleet.Take()
	if n.PeakOpen > 2*8 || n.OpenAtEnd != 0 {
		t.Fatalf("%d SSH connections open at once for parallelism 8 (%d at the end)", n.PeakOpen, n.OpenAtEnd)
	}
	if n.PeakJoins > 8 {
		t.Fatalf("%d joins at once", n.PeakJoins)
	}
}

// TestJoinRetried: a worker whose join fails twice joins on the third
// try; one that keeps failing is reported after the attempts, and every
// other worker joins.
func TestJoinRetried(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 1, 10, Latency{})
	c.JoinBackoff = time.Millisecond
	c.Fleet.FailTimes("sim-worker-3", "join", 2)
	c.Fleet.Fail("sim-worker-5", "join")
	stats, _, err := c.Apply(ctx)
	if len(stats.Failed) != 1 || stats.Failed[0] != "sim-worker-5" {
		t.Fatalf("failed %v (%v)", stats.Failed, err)
	}
	var se *apply.StepError
	if !errors.As(err, &se) || se.Step != "swarm.join" || !strings.Contains(se.Error(), "after 3 attempts") {
		t.Fatalf("error %v", err)
	}
	h := c.Fleet.Host("sim-manager-1")
	if n := h.f.engines[h.Address].Swarm().NodeCount(); n != 10 {
		t.Fatalf("%d nodes, want the 10 others", n)
	}
}

// TestScaleDownInWaves: removing 24 of 40 workers drains them in waves of
// at most a quarter of the 16 that stay (4), never more at once, and
// leaves the swarm with exactly the workers the spec keeps.
func TestScaleDownInWaves(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 3, 40, Latency{})
	if _, _, err := c.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	c.Fleet.World.MaxDrained = 0
	// Engine calls that take a moment, so that a wave's removals are in
	// flight together (at zero latency each could end before the next
	// starts, and one at a time would look the same).
	c.Fleet.Latency.EngineAPI = 20 * time.Millisecond
	c.Workers = 16
	stats, _, err := c.Apply(ctx)
	if err != nil || len(stats.Failed) != 0 {
		t.Fatalf("scale down: %v %v", err, stats.Failed)
	}
	if d := c.Fleet.World.MaxDrained; d > 4 || d < 2 {
		t.Errorf("at most %d workers drained at once; want waves of up to 4 (a quarter of the 16 that stay), more than one at a time", d)
	}
	h := c.Fleet.Host("sim-manager-1")
	if sw := h.f.engines[h.Address].Swarm(); sw.NodeCount() != 19 {
		t.Errorf("swarm has %d nodes after the scale down, want 19", sw.NodeCount())
	}
	if n := c.Fleet.Driver.Count(); n != 19 {
		t.Errorf("%d machines after the scale down, want 19", n)
	}
}
