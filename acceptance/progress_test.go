//go:build acceptance

package acceptance

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provision/provision/provision/apply"
	"github.com/provision/provision/provision/apply/eventtest"
)

const progressSpec = `name = "prog"
driver "local" {}
managers { count = 1 }
workers  { count = 0 }
hardening { profile = "off" }
`

// TestJSONEvents: `apply --json`, a no-op re-apply, `plan --json` and
// `destroy --json` on a one-host cluster (hardening off) write only NDJSON
// events to stdout, every line parsing, in a sane sequence (eventtest); the
// human summary stays on stderr. The fresh apply reports the host's steps
// with their durations.
func TestJSONEvents(t *testing.T) {
	hostTest(t) // each local-host test has its own cluster, network and state; longest first, a few at a time (schedule_test.go)
	requireAcc(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()
	spec := filepath.Join(dir, "prog.hcl")
	if err := os.WriteFile(spec, []byte(progressSpec), 0o600); err != nil {
		t.Fatal(err)
	}
	sd := "--state-dir=" + filepath.Join(dir, "state")
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			provision(t, context.Background(), nil, "destroy", spec, sd, "--auto-approve")
		}
	})
	check := func(r result, command string) []apply.Event {
		t.Helper()
		_, evs, err := eventtest.Check([]byte(r.stdout), command)
		if err != nil {
			t.Fatalf("%s --json: %v\nstdout:\n%s\nstderr:\n%s", command, err, r.stdout, r.stderr)
		}
		for _, l := range strings.Split(r.stderr, "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), "{") {
				t.Errorf("%s --json: an event on stderr: %s", command, l)
			}
		}
		return evs
	}

	r := mustProvision(t, ctx, nil, "apply", spec, sd, "--auto-approve", "--json")
	evs := check(r, "apply")
	t.Logf("fresh apply (1 host, hardening off): %s, %d events", r.took.Round(time.Second), len(evs))
	steps := map[string]time.Duration{}
	var phases []string
	for _, e := range evs {
		switch e.Kind {
		case apply.StepChange:
			steps[e.Step] = e.Took
		case apply.PhaseEnd:
			phases = append(phases, e.Phase+" "+e.Took.Round(100*time.Millisecond).String())
		}
	}
	t.Logf("phases: %s", strings.Join(phases, ", "))
	for _, id := range []string{"machine.create", "engine.install", "swarm.init"} {
		if _, ok := steps[id]; !ok {
			t.Errorf("no step_changed for %s in the fresh apply: %v", id, steps)
		}
	}
	if d := steps["engine.install"]; d <= 0 {
		t.Errorf("engine.install without its duration")
	}
	sum := evs[len(evs)-1].Summary
	if len(sum.Changed) != 1 || sum.Created != 1 || sum.Error != "" || !strings.Contains(r.stderr, "1 changed") {
		t.Errorf("fresh apply summary %+v\nstderr:\n%s", sum, r.stderr)
	}

	r = mustProvision(t, ctx, nil, "apply", spec, sd, "--auto-approve", "--json")
	evs = check(r, "apply")
	sum = evs[len(evs)-1].Summary
	t.Logf("no-op apply: %s", r.took.Round(10*time.Millisecond))
	if len(sum.Changed) != 0 || len(sum.Unchanged) != 1 || !strings.Contains(r.stderr, "No changes") {
		t.Errorf("no-op summary %+v\nstderr:\n%s", sum, r.stderr)
	}
	for _, e := range evs {
		if e.Kind == apply.StepChange {
			t.Errorf("no-op apply changed %s on %s", e.Step, e.Host)
		}
	}

	r = mustProvision(t, ctx, nil, "plan", spec, sd, "--json")
	evs = check(r, "plan")
	var p struct {
		Summary struct{ Unchanged int } `json:"summary"`
	}
	b, _ := json.Marshal(evs[0].Plan)
	if err := json.Unmarshal(b, &p); err != nil || p.Summary.Unchanged != 1 {
		t.Errorf("plan event: %v %s", err, b)
	}

	r = mustProvision(t, ctx, nil, "destroy", spec, sd, "--auto-approve", "--json")
	destroyed = true
	evs = check(r, "destroy")
	sum = evs[len(evs)-1].Summary
	if sum.Removed != 1 || !strings.Contains(r.stderr, "Destroyed cluster") {
		t.Errorf("destroy summary %+v\nstderr:\n%s", sum, r.stderr)
	}
}
