package apply

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var ansi = regexp.MustCompile("\033\\[[0-9;]*[A-Za-z]")

// TestLiveCollapses: while a phase runs there is a line per host with its
// step and elapsed time; at the end the block is gone, replaced by one ✓
// line with the counts; failures stay; no line is wider than the terminal;
// without Color there is no color code (cursor movements only).
func TestLiveCollapses(t *testing.T) {
	var out bytes.Buffer
	r := &Live{W: &out, Size: func() (int, int) { return 40, 10 }, Tick: time.Hour}
	t0 := time.Now()
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	r.Event(Event{Time: t0, Kind: PhaseStart, Phase: "host", Hosts: 2})
	r.Event(Event{Time: at(0.1), Kind: HostStart, Host: "demo-manager-1", Step: "host"})
	r.Event(Event{Time: at(0.1), Kind: HostStart, Host: "demo-worker-1-with-a-very-long-name", Step: "host"})
	r.Event(Event{Time: at(0.2), Kind: StepStart, Host: "demo-manager-1", Step: "engine.install"})
	mid := out.String()
	if !strings.Contains(mid, "demo-manager-1") || !strings.Contains(mid, "engine.install") || !strings.Contains(mid, "host [0/2 hosts]") {
		t.Fatalf("live block while running:\n%q", mid)
	}
	r.Event(Event{Time: at(3), Kind: StepChange, Host: "demo-manager-1", Step: "engine.install", Took: 3 * time.Second})
	r.Event(Event{Time: at(3), Kind: HostDone, Host: "demo-manager-1", Step: "host"})
	r.Event(Event{Time: at(4), Kind: StepFail, Host: "demo-worker-1-with-a-very-long-name", Step: "engine.install", Err: "exit 100"})
	r.Event(Event{Time: at(5), Kind: PhaseEnd, Phase: "host", Took: 5 * time.Second, Err: "1 hosts failed"})
	all := out.String()
	if regexp.MustCompile("\033\\[[0-9;]*m").MatchString(all) {
		t.Errorf("colors without Color:\n%q", all)
	}
	// What the terminal shows at the end: replay the erases.
	screen := replay(all)
	want := []string{
		"    demo-worker-1-with-a-very-long-name: engine.install: exit 100",
		"✗ host: 2 hosts, 1 change, 1 failed (5s)",
	}
	if strings.Join(screen, "\n") != strings.Join(want, "\n") {
		t.Errorf("screen after the phase:\n%s\nwant:\n%s", strings.Join(screen, "\n"), strings.Join(want, "\n"))
	}
	for _, l := range strings.Split(ansi.ReplaceAllString(mid, ""), "\n") {
		if n := utf8.RuneCountInString(l); n >= 40 {
			t.Errorf("live line of %d columns on a 40-column terminal: %q", n, l)
		}
	}
	// Color on: marks are colored.
	out.Reset()
	r = &Live{W: &out, Color: true, Tick: time.Hour}
	r.Event(Event{Time: t0, Kind: PhaseStart, Phase: "connect", Hosts: 1})
	r.Event(Event{Time: t0, Kind: PhaseEnd, Phase: "connect", Took: time.Second})
	if !strings.Contains(out.String(), "\033[32m✓\033[0m connect") {
		t.Errorf("colored end line: %q", out.String())
	}
}

// replay interprets the output's "cursor up N, clear to end" erases and
// returns the lines left on the screen.
func replay(s string) []string {
	var lines []string
	erase := regexp.MustCompile("\033\\[(\\d+)A\r\033\\[J")
	for {
		loc := erase.FindStringSubmatchIndex(s)
		chunk := s
		if loc != nil {
			chunk = s[:loc[0]]
		}
		for _, l := range strings.SplitAfter(chunk, "\n") {
			if l != "" {
				lines = append(lines, strings.TrimSuffix(ansi.ReplaceAllString(l, ""), "\n"))
			}
		}
		if loc == nil {
			break
		}
		n := 0
		for _, c := range s[loc[2]:loc[3]] {
			n = n*10 + int(c-'0')
		}
		lines = lines[:len(lines)-n]
		s = s[loc[1]:]
	}
	return lines
}

// TestLinesPlain: without a terminal, one plain line per event that says
// something, no escape sequences.
func TestLinesPlain(t *testing.T) {
	var out bytes.Buffer
	r := &Lines{W: &out}
	t0 := time.Now()
	r.Event(Event{Time: t0, Kind: PhaseStart, Phase: "host", Hosts: 1})
	r.Event(Event{Time: t0, Kind: StepStart, Host: "n1", Step: "engine.install"})
	r.Event(Event{Time: t0, Kind: StepChange, Host: "n1", Step: "engine.install", Took: 2 * time.Second})
	r.Event(Event{Time: t0, Kind: Warning, Host: "n1", Msg: "login policy applied without its packages"})
	r.Event(Event{Time: t0, Kind: PhaseEnd, Phase: "host", Took: 2 * time.Second})
	want := "==> host (1 hosts)\n    n1: engine.install changed (2s)\n    n1: warning: login policy applied without its packages\n✓ host 2s\n"
	if out.String() != want {
		t.Errorf("lines:\n%s\nwant:\n%s", out.String(), want)
	}
}
