package apply

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// SummaryAbove is the phase size above which the line and live reporters
// summarise instead of printing a line per host change: counts per step,
// the slowest hosts and every failed one, at the end of the phase. --json
// still has every event.
const SummaryAbove = 50

// tally collects one phase's events for its summary.
type tally struct {
	changed map[string]int           // step -> hosts changed
	took    map[string]time.Duration // host -> time its steps took
	failed  []string                 // "host: step: error"
	notes   int
}

func newTally() *tally {
	return &tally{changed: map[string]int{}, took: map[string]time.Duration{}}
}

func (t *tally) add(e Event) {
	switch e.Kind {
	case StepChange:
		t.changed[e.Step]++
		if e.Took > 0 { // steps that say how long they took
			t.took[e.Host] += e.Took
		}
	case StepFail:
		t.failed = append(t.failed, e.Host+": "+e.Step+": "+e.Err)
	case Note:
		t.notes++
	}
}

// write prints the summary, indented under the phase's line.
func (t *tally) write(w io.Writer) {
	if len(t.changed) > 0 {
		steps := make([]string, 0, len(t.changed))
		for s := range t.changed {
			steps = append(steps, s)
		}
		sort.Strings(steps)
		parts := make([]string, len(steps))
		for i, s := range steps {
			parts[i] = fmt.Sprintf("%s %d", s, t.changed[s])
		}
		fmt.Fprintf(w, "    changed: %s\n", strings.Join(parts, ", "))
	}
	if len(t.took) > 0 {
		hosts := make([]string, 0, len(t.took))
		for h := range t.took {
			hosts = append(hosts, h)
		}
		sort.Slice(hosts, func(i, j int) bool {
			if t.took[hosts[i]] != t.took[hosts[j]] {
				return t.took[hosts[i]] > t.took[hosts[j]]
			}
			return hosts[i] < hosts[j]
		})
		hosts = hosts[:min(3, len(hosts))]
		parts := make([]string, len(hosts))
		for i, h := range hosts {
			parts[i] = fmt.Sprintf("%s %s", h, t.took[h].Round(time.Millisecond))
		}
		fmt.Fprintf(w, "    slowest: %s\n", strings.Join(parts, ", "))
	}
	if t.notes > 0 {
		fmt.Fprintf(w, "    %d notes (--json lists them)\n", t.notes)
	}
	if len(t.failed) > 0 {
		sort.Strings(t.failed)
		fmt.Fprintf(w, "    %d failed:\n", len(t.failed))
		for _, f := range t.failed {
			fmt.Fprintf(w, "      %s\n", f)
		}
	}
}
