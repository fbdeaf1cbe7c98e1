package apply

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Live renders progress on a terminal: while a phase runs, a header line
// (the phase, how many hosts are done, its elapsed time) and one live line
// per host showing the step it runs and that step's elapsed time, redrawn a
// few times a second. When the phase ends the block collapses to one ✓ or ✗
// line with the number of hosts and changes. Failures, notes and warnings
// are printed above the block as they happen and stay.
type Live struct {
	W io.Writer
	// Color enables ANSI colors (off with --no-color or NO_COLOR); the
	// cursor movements that make the block live are used either way.
	Color bool
	// Size returns the terminal's columns and rows; nil means 100x40.
	Size func() (cols, rows int)
	// Tick is the redraw period (default 200ms).
	Tick time.Duration

	mu      sync.Mutex
	phase   string
	started time.Time
	total   int
	hosts   []*liveHost
	byName  map[string]*liveHost
	changes int
	drawn   int // lines of the live block on the screen now
	stop    chan struct{}
	sum     *tally // a phase of more than SummaryAbove hosts (summary.go)
}

type liveHost struct {
	name    string
	start   time.Time
	step    string
	stepAt  time.Time
	end     time.Time // zero while the host works
	failed  bool
	changes int
}

func (r *Live) Event(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch e.Kind {
	case PhaseStart:
		r.erase()
		r.endPhase()
		r.phase, r.started, r.total = e.Phase, e.Time, e.Hosts
		r.hosts, r.byName, r.changes = nil, map[string]*liveHost{}, 0
		r.sum = nil
		if e.Hosts > SummaryAbove {
			r.sum = newTally()
		}
		r.stop = make(chan struct{})
		go r.loop(r.stop, r.tick())
	case PhaseEnd:
		r.erase()
		mark := r.paint("32", "✓")
		if e.Err != "" {
			mark = r.paint("31", "✗")
		}
		fmt.Fprintf(r.W, "%s %s%s (%s)\n", mark, e.Phase, r.counts(), e.Took.Round(100*time.Millisecond))
		if r.sum != nil {
			r.sum.write(r.W)
			r.sum = nil
		}
		r.endPhase()
		return
	case HostStart:
		r.host(e.Host, e.Time)
	case StepStart:
		h := r.host(e.Host, e.Time)
		h.step, h.stepAt, h.end = e.Step, e.Time, time.Time{}
	case StepChange, StepDone:
		if e.Host == "" {
			break
		}
		if r.phase == "" && e.Kind == StepChange { // outside a phase (backup, restore): say it
			r.erase()
			fmt.Fprintf(r.W, "    %s%s changed%s\n", hostPrefix(e.Host), e.Step, suffix(e.Msg))
			break
		}
		h := r.host(e.Host, e.Time)
		if e.Kind == StepChange {
			h.changes++
			r.changes++
			if r.sum != nil {
				r.sum.add(e)
			}
		}
		if h.step == e.Step {
			h.step = ""
		}
	case HostDone:
		h := r.host(e.Host, e.Time)
		h.end, h.step = e.Time, ""
	case StepFail:
		if e.Host != "" {
			h := r.host(e.Host, e.Time)
			h.failed, h.end, h.step = true, e.Time, ""
		}
		if r.sum != nil { // named in the phase's summary
			r.sum.add(e)
			break
		}
		r.erase()
		fmt.Fprintln(r.W, r.paint("31", fmt.Sprintf("    %s%s: %s", hostPrefix(e.Host), e.Step, e.Err)))
	case Note:
		if r.sum != nil { // counted in the phase's summary (--json has each)
			r.sum.add(e)
			break
		}
		r.erase()
		fmt.Fprintf(r.W, "    %s%s\n", hostPrefix(e.Host), e.Msg)
	case Warning:
		r.erase()
		fmt.Fprintln(r.W, r.paint("33", "    "+hostPrefix(e.Host)+"warning: "+e.Msg))
	default:
		return
	}
	r.erase()
	r.draw(time.Now())
}

func (r *Live) tick() time.Duration {
	if r.Tick > 0 {
		return r.Tick
	}
	return 200 * time.Millisecond
}

func (r *Live) loop(stop chan struct{}, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			r.mu.Lock()
			select {
			case <-stop: // the phase ended while we waited for the lock
			default:
				r.erase()
				r.draw(now)
			}
			r.mu.Unlock()
		}
	}
}

// endPhase stops the redraws; the caller has erased the block.
func (r *Live) endPhase() {
	if r.stop != nil {
		close(r.stop)
		r.stop = nil
	}
	r.phase = ""
}

func (r *Live) host(name string, at time.Time) *liveHost {
	if h, ok := r.byName[name]; ok {
		return h
	}
	if r.byName == nil {
		r.byName = map[string]*liveHost{}
	}
	h := &liveHost{name: name, start: at}
	r.byName[name] = h
	r.hosts = append(r.hosts, h)
	return h
}

func (r *Live) counts() string {
	var parts []string
	if n := len(r.hosts); n > 0 {
		parts = append(parts, plural(n, "host"))
	}
	if r.changes > 0 {
		parts = append(parts, plural(r.changes, "change"))
	}
	failed := 0
	for _, h := range r.hosts {
		if h.failed {
			failed++
		}
	}
	if failed > 0 {
		parts = append(parts, fmt.Sprintf("%d failed", failed))
	}
	if len(parts) == 0 {
		return ""
	}
	return ": " + strings.Join(parts, ", ")
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func (r *Live) size() (int, int) {
	if r.Size != nil {
		if c, rows := r.Size(); c > 10 && rows > 3 {
			return c, rows
		}
	}
	return 100, 40
}

// erase removes the live block (the cursor is on the line below it).
func (r *Live) erase() {
	if r.drawn > 0 {
		fmt.Fprintf(r.W, "\033[%dA\r\033[J", r.drawn)
		r.drawn = 0
	}
}

// draw writes the block: the header and a line per host, running hosts
// first when the terminal is too short for all of them.
func (r *Live) draw(now time.Time) {
	if r.phase == "" {
		return
	}
	cols, rows := r.size()
	done := 0
	for _, h := range r.hosts {
		if !h.end.IsZero() {
			done++
		}
	}
	total := max(r.total, len(r.hosts))
	lines := []string{fmt.Sprintf("%s %s [%d/%d hosts] %s", r.paint("36", "…"), r.phase, done, total, secs(now.Sub(r.started)))}
	shown := r.hosts
	if limit := rows - 3; len(shown) > limit {
		var running, finished []*liveHost
		for _, h := range shown {
			if h.end.IsZero() {
				running = append(running, h)
			} else {
				finished = append(finished, h)
			}
		}
		shown = append(running, finished...)[:max(1, limit)]
	}
	width := 0
	for _, h := range shown {
		width = max(width, utf8.RuneCountInString(h.name))
	}
	width = min(width, cols/2) // the step and its time must show
	for _, h := range shown {
		var what string
		switch {
		case h.failed:
			what = r.paint("31", "✗ failed")
		case !h.end.IsZero():
			what = r.paint("32", "✓") + " done " + secs(h.end.Sub(h.start))
			if h.changes > 0 {
				what += ", " + plural(h.changes, "change")
			}
		case h.step != "":
			what = h.step + " " + secs(now.Sub(h.stepAt))
		default:
			what = "working " + secs(now.Sub(h.start))
		}
		lines = append(lines, fmt.Sprintf("  %-*s  %s", width, clip(h.name, width), what))
	}
	if n := len(r.hosts) - len(shown); n > 0 {
		lines = append(lines, fmt.Sprintf("  … and %d more", n))
	}
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(clip(l, cols-1))
		b.WriteString("\033[K\n")
	}
	io.WriteString(r.W, b.String())
	r.drawn = len(lines)
}

func (r *Live) paint(code, s string) string {
	if !r.Color {
		return s
	}
	return "\033[" + code + "m" + s + "\033[0m"
}

func secs(d time.Duration) string {
	d = max(d, 0)
	return fmt.Sprintf("%.1fs", d.Seconds())
}

// clip cuts s to n visible runes, skipping over ANSI color sequences, so
// that no line wraps (a wrapped line would break the cursor movements).
func clip(s string, n int) string {
	visible, inEsc := 0, false
	for i, c := range s {
		switch {
		case inEsc:
			if c == 'm' {
				inEsc = false
			}
		case c == '\033':
			inEsc = true
		default:
			visible++
			if visible > n {
				if strings.Contains(s[:i], "\033") {
					return s[:i] + "\033[0m"
				}
				return s[:i]
			}
		}
	}
	return s
}

// Write prints p (log lines) above the live block, which is then redrawn.
func (r *Live) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.erase()
	n, err := r.W.Write(p)
	r.draw(time.Now())
	return n, err
}
