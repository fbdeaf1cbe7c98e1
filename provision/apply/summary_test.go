package apply

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestLinesSummary: above SummaryAbove hosts a phase prints counts per
// step, the slowest hosts and every failed one, not a line per change;
// small phases keep a line per change.
func TestLinesSummary(t *testing.T) {
	var b bytes.Buffer
	r := &Lines{W: &b}
	r.Event(Event{Kind: PhaseStart, Phase: "host", Hosts: 60})
	for i := 1; i <= 60; i++ {
		h := fmt.Sprintf("w-%d", i)
		if i == 7 {
			r.Event(Event{Kind: StepFail, Host: h, Step: "engine.install", Err: "apt-get install: exited 100"})
			continue
		}
		r.Event(Event{Kind: StepChange, Host: h, Step: "engine.install", Took: time.Duration(i) * time.Second})
		r.Event(Event{Kind: StepChange, Host: h, Step: "engine.tls", Took: time.Millisecond})
	}
	r.Event(Event{Kind: PhaseEnd, Phase: "host", Took: time.Minute, Err: "1 hosts failed"})
	out := b.String()
	for _, want := range []string{
		"changed: engine.install 59, engine.tls 59",
		"slowest: w-60 1m0.001s, w-59 59.001s, w-58 58.001s",
		"1 failed:\n      w-7: engine.install: apt-get install: exited 100",
		"✗ host 1m0s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n"); n > 8 {
		t.Errorf("%d lines for 60 hosts:\n%s", n, out)
	}
	b.Reset()
	r.Event(Event{Kind: PhaseStart, Phase: "host", Hosts: 3})
	r.Event(Event{Kind: StepChange, Host: "w-1", Step: "engine.install"})
	r.Event(Event{Kind: PhaseEnd, Phase: "host"})
	if !strings.Contains(b.String(), "w-1: engine.install changed") {
		t.Errorf("small phase: %s", b.String())
	}
}

// TestLiveSummary: the terminal view keeps its counter line and, above
// SummaryAbove hosts, prints the summary instead of a line per change.
func TestLiveSummary(t *testing.T) {
	var b bytes.Buffer
	r := &Live{W: &b}
	r.Event(Event{Kind: PhaseStart, Phase: "host", Hosts: 60})
	for i := 1; i <= 60; i++ {
		h := fmt.Sprintf("w-%d", i)
		r.Event(Event{Kind: StepChange, Host: h, Step: "engine.install", Took: time.Second})
		r.Event(Event{Kind: StepDone, Host: h})
	}
	r.Event(Event{Kind: StepFail, Host: "w-61", Step: "swarm.join", Err: "timeout"})
	r.Event(Event{Kind: PhaseEnd, Phase: "host", Took: time.Second})
	out := b.String()
	if strings.Contains(out, "w-5: engine.install changed") {
		t.Errorf("a line per change above %d hosts:\n%q", SummaryAbove, out)
	}
	for _, want := range []string{"host: 61 hosts, 60 changes, 1 failed", "changed: engine.install 60", "1 failed:\n      w-61: swarm.join: timeout"} {
		if !strings.Contains(out, want) {
			t.Errorf("live output lacks %q:\n%q", want, out)
		}
	}
}
