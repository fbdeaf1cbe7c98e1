package apply

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"
)

// Kind is what an Event says happened.
type Kind string

const (
	PhaseStart Kind = "phase_start"
	PhaseEnd   Kind = "phase_end"
	StepStart  Kind = "step_start"
	StepDone   Kind = "step_done"    // checked, nothing to change
	StepChange Kind = "step_changed" // applied a change
	StepFail   Kind = "step_failed"
	Note       Kind = "note"
)

// Event is one progress event. Progress is not logging: it goes to a
// Reporter, which renders it for a person (stderr) or a machine (NDJSON).
type Event struct {
	Time  time.Time     `json:"time"`
	Kind  Kind          `json:"kind"`
	Phase string        `json:"phase,omitempty"`
	Host  string        `json:"host,omitempty"`
	Step  string        `json:"step,omitempty"`
	Msg   string        `json:"msg,omitempty"`
	Err   string        `json:"error,omitempty"`
	Took  time.Duration `json:"took_ns,omitempty"`
	Hosts int           `json:"hosts,omitempty"` // phase_start: how many hosts take part
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
	if r.sum != nil && e.Kind != PhaseEnd {
		r.sum.add(e)
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
	case Note:
		if e.Host != "" {
			fmt.Fprintf(r.W, "    %s: %s\n", e.Host, e.Msg)
		} else {
			fmt.Fprintf(r.W, "    %s\n", e.Msg)
		}
	}
}

func suffix(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}

// JSON writes NDJSON, one object per event.
type JSON struct {
	mu sync.Mutex
	W  io.Writer
}

func (r *JSON) Event(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, _ := json.Marshal(e)
	r.W.Write(append(b, '\n'))
}

// Live shows one line per phase that updates as hosts finish
// ("host [2/3 hosts]"), then ✓ or ✗, plus one line per change or failure. For
// terminals.
type Live struct {
	mu      sync.Mutex
	W       io.Writer
	phase   string
	total   int
	done    map[string]bool
	failed  map[string]bool
	started time.Time
	sum     *tally // a phase of more than SummaryAbove hosts (summary.go)
}

func (r *Live) Event(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sum != nil {
		switch e.Kind {
		case StepChange, Note:
			r.sum.add(e)
			return
		case StepFail:
			r.sum.add(e)
			r.failed[e.Host] = true
			r.redraw()
			return
		case PhaseEnd:
			fmt.Fprint(r.W, "\r\033[K")
			r.sum.write(r.W)
			r.sum = nil
		}
	}
	switch e.Kind {
	case PhaseStart:
		r.phase, r.total, r.started = e.Phase, e.Hosts, e.Time
		r.done, r.failed = map[string]bool{}, map[string]bool{}
		if e.Hosts > SummaryAbove {
			r.sum = newTally()
		}
		r.redraw()
	case PhaseEnd:
		mark := "\033[32m✓\033[0m"
		if e.Err != "" {
			mark = "\033[31m✗\033[0m"
		}
		fmt.Fprintf(r.W, "\r\033[K%s %s (%s)\n", mark, e.Phase, e.Took.Round(time.Millisecond))
		r.phase = ""
	case StepChange:
		fmt.Fprintf(r.W, "\r\033[K    %s: %s changed%s\n", e.Host, e.Step, suffix(e.Msg))
		r.redraw()
	case StepFail:
		r.failed[e.Host] = true
		fmt.Fprintf(r.W, "\r\033[K    \033[31m%s: %s: %s\033[0m\n", e.Host, e.Step, e.Err)
		r.redraw()
	case StepDone:
		if e.Step == "" && e.Host != "" { // a host finished the phase
			r.done[e.Host] = true
			r.redraw()
		}
	case Note:
		fmt.Fprintf(r.W, "\r\033[K    %s%s\n", hostPrefix(e.Host), e.Msg)
		r.redraw()
	}
}

func hostPrefix(h string) string {
	if h == "" {
		return ""
	}
	return h + ": "
}

func (r *Live) redraw() {
	if r.phase == "" {
		return
	}
	fmt.Fprintf(r.W, "\r\033[K  %s [%d/%d hosts]", r.phase, len(r.done), r.total)
	if r.sum != nil && len(r.failed) > 0 {
		fmt.Fprintf(r.W, " %d failed", len(r.failed)) // named at the end of the phase
	} else if len(r.failed) > 0 {
		names := make([]string, 0, len(r.failed))
		for h := range r.failed {
			names = append(names, h)
		}
		sort.Strings(names)
		fmt.Fprintf(r.W, " failed: %s", strings.Join(names, ","))
	}
}
