// Package eventtest checks a command's --json output: every line is one
// progress event of a known kind, and the sequence is sane (the plan first,
// the summary last, phases one after another, every step and host that
// starts in a phase ends in it). Tests of the CLI and the acceptance suite
// share it.
package eventtest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/provision/provision/provision/apply"
)

var kinds = map[apply.Kind]bool{
	apply.PlanEvent: true, apply.PhaseStart: true, apply.PhaseEnd: true, apply.HostStart: true, apply.HostDone: true,
	apply.StepStart: true, apply.StepDone: true, apply.StepChange: true, apply.StepFail: true,
	apply.Note: true, apply.Warning: true, apply.SummaryEnd: true,
}

// Check parses out (NDJSON) as the events of command ("apply", "destroy",
// "plan") and returns each line raw, in order, with the decoded events.
func Check(out []byte, command string) ([]json.RawMessage, []apply.Event, error) {
	var raws []json.RawMessage
	var evs []apply.Event
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	n := 0
	for sc.Scan() {
		n++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			return nil, nil, fmt.Errorf("line %d is empty", n)
		}
		var e apply.Event
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			return nil, nil, fmt.Errorf("line %d is not an event: %v: %s", n, err, line)
		}
		if dec.More() {
			return nil, nil, fmt.Errorf("line %d holds more than one JSON value: %s", n, line)
		}
		if !kinds[e.Kind] {
			return nil, nil, fmt.Errorf("line %d: unknown kind %q", n, e.Kind)
		}
		if e.Time.IsZero() {
			return nil, nil, fmt.Errorf("line %d: no time: %s", n, line)
		}
		raws = append(raws, append(json.RawMessage(nil), line...))
		evs = append(evs, e)
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	return raws, evs, sequence(evs, command)
}

type key struct{ host, step string }

func sequence(evs []apply.Event, command string) error {
	if len(evs) == 0 {
		return fmt.Errorf("no events: want at least the summary")
	}
	last := evs[len(evs)-1]
	if last.Kind != apply.SummaryEnd || last.Summary == nil {
		return fmt.Errorf("last event is %s, want the summary", last.Kind)
	}
	if last.Summary.Command != command {
		return fmt.Errorf("summary of %q, want %q", last.Summary.Command, command)
	}
	if evs[0].Kind != apply.PlanEvent || evs[0].Plan == nil {
		// A command that stopped before it had a plan (invalid spec, state
		// locked or corrupt) writes the warnings it met and the summary
		// with its error, nothing else.
		if last.Summary.Error == "" {
			return fmt.Errorf("first event is %s, want the plan (only a failed command may have none)", evs[0].Kind)
		}
		for i, e := range evs[:len(evs)-1] {
			if e.Kind != apply.Warning && e.Kind != apply.Note {
				return fmt.Errorf("event %d (%s) before any plan", i+1, e.Kind)
			}
		}
		return nil
	}
	if len(evs) < 2 {
		return fmt.Errorf("%d events: want at least the plan and the summary", len(evs))
	}
	interrupted := last.Summary.Error != ""
	phase := ""
	var phaseAt time.Time
	steps := map[key]int{}
	hosts := map[key]int{}
	open := func() error {
		if interrupted {
			return nil
		}
		for k, n := range steps {
			if n > 0 {
				return fmt.Errorf("phase %s ended with %s still running %s", phase, k.host, k.step)
			}
		}
		for k, n := range hosts {
			if n > 0 {
				return fmt.Errorf("phase %s ended with host %s not done (%s)", phase, k.host, k.step)
			}
		}
		return nil
	}
	closeHost := func(host string) {
		for k := range steps {
			if k.host == host {
				steps[k] = 0
			}
		}
		for k := range hosts {
			if k.host == host {
				hosts[k] = 0
			}
		}
	}
	for i, e := range evs[1 : len(evs)-1] {
		at := fmt.Sprintf("event %d (%s)", i+2, e.Kind)
		switch e.Kind {
		case apply.PlanEvent, apply.SummaryEnd:
			return fmt.Errorf("%s: a second %s", at, e.Kind)
		case apply.PhaseStart:
			if phase != "" {
				return fmt.Errorf("%s: phase %s starts inside phase %s", at, e.Phase, phase)
			}
			if e.Phase == "" {
				return fmt.Errorf("%s: phase without a name", at)
			}
			phase, phaseAt = e.Phase, e.Time
			steps, hosts = map[key]int{}, map[key]int{}
		case apply.PhaseEnd:
			if e.Phase != phase {
				return fmt.Errorf("%s: phase %s ends, %q runs", at, e.Phase, phase)
			}
			if e.Time.Before(phaseAt) {
				return fmt.Errorf("%s: phase %s ends before it started", at, e.Phase)
			}
			if err := open(); err != nil {
				return err
			}
			phase = ""
		case apply.HostStart, apply.HostDone, apply.StepStart, apply.StepDone, apply.StepChange, apply.StepFail:
			if phase == "" {
				return fmt.Errorf("%s: %s %s outside any phase", at, e.Host, e.Step)
			}
			if e.Host == "" {
				return fmt.Errorf("%s: no host", at)
			}
			k := key{e.Host, e.Step}
			switch e.Kind {
			case apply.HostStart:
				hosts[k]++
			case apply.HostDone:
				if hosts[k] == 0 {
					return fmt.Errorf("%s: host %s done with %s it never started", at, e.Host, e.Step)
				}
				hosts[k]--
			case apply.StepStart:
				steps[k]++
			case apply.StepDone, apply.StepChange:
				if steps[k] > 0 {
					steps[k]--
				}
			case apply.StepFail:
				if e.Err == "" {
					return fmt.Errorf("%s: %s %s failed without an error", at, e.Host, e.Step)
				}
				closeHost(e.Host)
			}
		case apply.Note, apply.Warning:
			if e.Msg == "" {
				return fmt.Errorf("%s: empty message", at)
			}
		}
	}
	if phase != "" && !interrupted {
		return fmt.Errorf("phase %s never ended", phase)
	}
	return nil
}
