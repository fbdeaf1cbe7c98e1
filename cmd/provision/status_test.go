package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestParsePruneRun(t *testing.T) {
	p := parsePruneRun([]byte("exit\t@1700000000\nresult\tsuccess\nreclaimed\t1.2MB\nreclaimed\t0B\n"))
	if p.LastRun != "2023-11-14T22:13:20Z" || p.Result != "success" || p.Reclaimed != "1.2MB + 0B" {
		t.Errorf("%+v", p)
	}
	// Never ran since boot: systemd still reports a result; it means nothing.
	if p := parsePruneRun([]byte("exit\t\nresult\tsuccess\n")); p != (PruneRun{}) {
		t.Errorf("never-run service parsed as %+v", p)
	}
	if p := parsePruneRun([]byte("exit\t@1700000000\nresult\texit-code\n")); p.Result != "exit-code" || p.Reclaimed != "" {
		t.Errorf("failed run parsed as %+v", p)
	}
}

func TestPruneColumn(t *testing.T) {
	now := time.Date(2023, 11, 15, 1, 13, 20, 0, time.UTC)
	for _, c := range []struct {
		r    NodeStatus
		want string
	}{
		{NodeStatus{}, "-"},
		{NodeStatus{PruneResult: "unknown"}, "?"},
		{NodeStatus{PruneLastRun: "2023-11-14T22:13:20Z", PruneResult: "success", PruneReclaimed: "1.2MB"}, "3h ago 1.2MB"},
		{NodeStatus{PruneLastRun: "2023-11-15T01:13:00Z", PruneResult: "success", PruneReclaimed: "0B"}, "just now 0B"},
		{NodeStatus{PruneLastRun: "2023-11-15T00:43:20Z", PruneResult: "exit-code"}, "30m ago exit-code"},
		{NodeStatus{PruneLastRun: "2023-11-10T01:13:20Z", PruneResult: "success"}, "5d ago"},
	} {
		if got := pruneColumn(c.r, now); got != c.want {
			t.Errorf("%+v: %q, want %q", c.r, got, c.want)
		}
	}
}

// TestNoColorEnv: NO_COLOR (no-color.org) with any non-empty value turns
// colors off as --no-color does; empty or unset leaves them to the terminal.
func TestNoColorEnv(t *testing.T) {
	for _, c := range []struct {
		env  string
		want bool
	}{{"1", true}, {"no", true}, {"", false}} {
		t.Setenv("NO_COLOR", c.env)
		g := &globals{logLevel: "info"}
		if err := g.setupLog(io.Discard); err != nil {
			t.Fatal(err)
		}
		if g.noColor != c.want {
			t.Errorf("NO_COLOR=%q: no color %v, want %v", c.env, g.noColor, c.want)
		}
	}
}

// TestPrometheusAlone: --prometheus with --json or --metrics printed the
// target list and ignored the others; it is a usage error.
func TestPrometheusAlone(t *testing.T) {
	for _, f := range []string{"--json", "--metrics"} {
		out, _, err := runCLI(t, "status", "/nonexistent/c.hcl", "--prometheus", f)
		if code(err) != exitUsage || out != "" || !strings.Contains(err.Error(), "--prometheus") {
			t.Errorf("--prometheus %s: code %d, stdout %q, err %v", f, code(err), out, err)
		}
	}
}
