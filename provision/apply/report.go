package apply

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"
)

// Kind is what an Event says happened.
type Kind string

const (
	PlanEvent  Kind = "plan" // the plan about to be carried out (Plan)
	PhaseStart Kind = "phase_start"
	PhaseEnd   Kind = "phase_end"
	HostStart  Kind = "host_start" // a host enters the phase's per-host work
	HostDone   Kind = "host_done"  // a host finished its part of the phase
	StepStart  Kind = "step_start"
	StepDone   Kind = "step_done"    // checked, nothing to change
	StepChange Kind = "step_changed" // applied a change
	StepFail   Kind = "step_failed"  // also ends the host's part of the phase
	Note       Kind = "note"
	Warning    Kind = "warning" // going on in a degraded state (the log's warnings)
	SummaryEnd Kind = "summary" // the last event of a command (Summary)
)

// Event is one progress event. Progress is not logging: it goes to a
// Reporter, which renders it for a person (stderr) or a machine (NDJSON on
// stdout). The schema is in the README (Progress and --json).
type Event struct {
	Time    time.Time     `json:"time"`
	Kind    Kind          `json:"kind"`
	Phase   string        `json:"phase,omitempty"`
	Host    string        `json:"host,omitempty"`
	Step    string        `json:"step,omitempty"`
	Msg     string        `json:"msg,omitempty"`
	Err     string        `json:"error,omitempty"`
	Took    time.Duration `json:"took_ns,omitempty"`
	Hosts   int           `json:"hosts,omitempty"`   // phase_start: how many hosts take part
	Plan    any           `json:"plan,omitempty"`    // plan: the plan, as `plan --json` shows it
	Summary *Summary      `json:"summary,omitempty"` // summary
}

// Summary is what a command did, for its last event.
type Summary struct {
	Command   string   `json:"command"` // apply, destroy, plan
	Changed   []string `json:"changed"`
	Unchanged []string `json:"unchanged"`
	Failed    []string `json:"failed"`
	HeldBack  []string `json:"held_back,omitempty"` // untouched: an earlier rolling batch failed
	NotDone   []string `json:"not_done,omitempty"`  // the apply stopped before it finished these
	Created   int      `json:"created"`
	Removed   int      `json:"removed"`
	TookNS    int64    `json:"took_ns"`
	Error     string   `json:"error,omitempty"`
	Next      string   `json:"next,omitempty"` // the command to run next, if any
}

// Reporter receives progress events from concurrent goroutines.
type Reporter interface {
	Event(Event)
}

// Discard drops every event.
type Discard struct{}

func (Discard) Event(Event) {}

// Lines prints one line per event: for logs, CI and pipes.
type Lines struct {
	mu  sync.Mutex
	W   io.Writer
	sum *tally // a phase of more than SummaryAbove hosts (summary.go)
}

func (r *Lines) Event(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sum != nil && (e.Kind == StepChange || e.Kind == StepFail || e.Kind == Note) {
		r.sum.add(e) // warnings still print: they are few and each matters
		return
	}
	switch e.Kind {
	case PhaseStart:
		fmt.Fprintf(r.W, "==> %s (%d hosts)\n", e.Phase, e.Hosts)
		if e.Hosts > SummaryAbove {
			r.sum = newTally()
		}
	case PhaseEnd:
		if r.sum != nil {
			r.sum.write(r.W)
			r.sum = nil
		}
		mark := "✓"
		if e.Err != "" {
			mark = "✗"
		}
		fmt.Fprintf(r.W, "%s %s %s\n", mark, e.Phase, e.Took.Round(time.Millisecond))
	case StepChange:
		took := ""
		if e.Took > 0 {
			took = " (" + e.Took.Round(time.Millisecond).String() + ")"
		}
		fmt.Fprintf(r.W, "    %s: %s changed%s%s\n", e.Host, e.Step, suffix(e.Msg), took)
	case StepFail:
		fmt.Fprintf(r.W, "    %s: %s FAILED: %s\n", e.Host, e.Step, e.Err)
	case Note, Warning:
		w := ""
		if e.Kind == Warning {
			w = "warning: "
		}
		fmt.Fprintf(r.W, "    %s%s%s\n", hostPrefix(e.Host), w, e.Msg)
	}
}

func suffix(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}

func hostPrefix(h string) string {
	if h == "" {
		return ""
	}
	return h + ": "
}

// JSON writes NDJSON, one object per event.
type JSON struct {
	mu sync.Mutex
	W  io.Writer
}

func (r *JSON) Event(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, err := json.Marshal(e)
	if err != nil { // a plan that cannot be encoded: say so, stay NDJSON
		b, _ = json.Marshal(Event{Time: e.Time, Kind: Warning, Msg: fmt.Sprintf("%s event not encoded: %v", e.Kind, err)})
	}
	r.W.Write(append(b, '\n'))
}
