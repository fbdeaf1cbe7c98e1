package main

import (
	"fmt"
	"strings"
	"sync"

	"github.com/hashicorp/hcl/v2"
	"github.com/spf13/cobra"

	"github.com/provision/provision/provision/apply"
)

// jsonStream is the NDJSON event stream of a command run with --json. It
// exists from the moment the command starts, so that whatever happens before
// the plan is known (a warning while loading, a stale lock taken over, the
// lock held by another run, an invalid spec) is still an event, and every
// stream ends with a summary, carrying the error when the command failed.
//
// The plan stays the first event when there is one: warnings raised before it
// are held and written right after it. A command that stops before it has a
// plan writes what it held and a summary with the error.
type jsonStream struct {
	mu      sync.Mutex
	out     apply.Reporter
	planned bool
	held    []apply.Event
	ended   bool // the last event written is a summary
	failed  bool // ... and it carries an error
}

func (s *jsonStream) Event(e apply.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case e.Kind == apply.PlanEvent:
		s.out.Event(e)
		s.planned = true
		s.flush()
	case !s.planned && e.Kind != apply.SummaryEnd:
		s.held = append(s.held, e)
		return
	default:
		s.flush()
		s.out.Event(e)
	}
	s.ended = e.Kind == apply.SummaryEnd
	s.failed = s.ended && e.Summary != nil && e.Summary.Error != ""
}

func (s *jsonStream) flush() {
	for _, h := range s.held {
		s.out.Event(h)
	}
	s.held = nil
}

// finish ends the stream after the command returned err: a summary is
// written unless the command wrote one that says as much.
func (s *jsonStream) finish(command string, err error) {
	s.mu.Lock()
	ended, failed := s.ended, s.failed
	s.mu.Unlock()
	if ended && (err == nil || failed) {
		return
	}
	summaryEvent(s, command, apply.Stats{}, "", err)
}

// jsonEvents makes cmd's --json output (jsonOut) a jsonStream from the start
// of its run to its end, named command in its summary.
func (g *globals) jsonEvents(cmd *cobra.Command, command string, jsonOut *bool) *cobra.Command {
	run := cmd.RunE
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if !*jsonOut {
			return run(c, args)
		}
		s := &jsonStream{out: &apply.JSON{W: secretWriter{g, c.OutOrStdout()}}}
		g.stream = s
		var rep apply.Reporter = s
		g.events.Store(&rep)
		err := run(c, args)
		s.finish(command, err)
		return err
	}
	return cmd
}

// diagError is an invalid spec whose diagnostics were printed on stderr:
// main prints nothing more, and a --json summary carries their text.
type diagError struct{ diags hcl.Diagnostics }

func (e diagError) Is(target error) bool { return target == errSilent }

func (e diagError) Error() string {
	var msgs []string
	for _, d := range e.diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		m := d.Summary
		if d.Subject != nil {
			m = fmt.Sprintf("%s:%d:%d: %s", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column, m)
		}
		if d.Detail != "" {
			m += ": " + d.Detail
		}
		msgs = append(msgs, m)
	}
	if len(msgs) == 0 {
		return "invalid cluster file"
	}
	return strings.Join(msgs, "; ")
}
