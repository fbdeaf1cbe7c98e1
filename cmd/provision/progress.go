package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/provision/provision/provision/apply"
	"github.com/provision/provision/provision/plan"
)

// Progress goes to stderr for people: live lines per host on a terminal,
// one line per event otherwise. With --json the same events go to stdout
// as NDJSON (the schema is in the README) and stdout carries nothing else;
// human text (log lines, the summary) stays on stderr.

// reporter builds the command's progress reporter and makes the log (and
// its warnings) cooperate with it: on a terminal log lines are printed
// above the live block; with --json warnings are also events.
func (g *globals) reporter(cmd *cobra.Command, jsonOut bool) apply.Reporter {
	var rep apply.Reporter
	stderr := cmd.ErrOrStderr()
	switch {
	case jsonOut && g.stream != nil:
		rep = g.stream
	case jsonOut:
		rep = &apply.JSON{W: secretWriter{g, cmd.OutOrStdout()}}
		g.events.Store(&rep)
	case isTTY(stderr):
		live := &apply.Live{W: secretWriter{g, stderr}, Color: !g.noColor, Size: termSize(stderr)}
		rep = live
		var w io.Writer = live
		g.logOut.Store(&w)
	default:
		rep = &apply.Lines{W: secretWriter{g, stderr}}
	}
	return rep
}

func termSize(w io.Writer) func() (int, int) {
	return func() (int, int) {
		f, ok := w.(*os.File)
		if !ok {
			return 0, 0
		}
		c, r, err := term.GetSize(int(f.Fd()))
		if err != nil {
			return 0, 0
		}
		return c, r
	}
}

// logWriter is where the stderr log handler writes: stderr, or the live
// reporter while one draws (it prints the line above its block).
type logWriter struct{ g *globals }

func (w logWriter) Write(p []byte) (int, error) {
	if l := w.g.logOut.Load(); l != nil {
		return (*l).Write(p)
	}
	return w.g.stderr.Write(p)
}

// warnEvents turns the log's warnings into warning events while a --json
// reporter is set (the stderr log keeps them too).
type warnEvents struct {
	g     *globals
	attrs []slog.Attr
}

func (h warnEvents) Enabled(_ context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && h.g.events.Load() != nil
}

func (h warnEvents) Handle(_ context.Context, r slog.Record) error {
	rp := h.g.events.Load()
	if rp == nil {
		return nil
	}
	ev := apply.Event{Time: r.Time, Kind: apply.Warning}
	var b strings.Builder
	b.WriteString(r.Message)
	add := func(a slog.Attr) bool {
		switch a.Key {
		case "host":
			ev.Host = a.Value.String()
		case "step":
			ev.Step = a.Value.String()
		default:
			fmt.Fprintf(&b, " %s=%s", a.Key, a.Value.String())
		}
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	ev.Msg = b.String()
	(*rp).Event(ev)
	return nil
}

func (h warnEvents) WithAttrs(as []slog.Attr) slog.Handler {
	return warnEvents{g: h.g, attrs: append(append([]slog.Attr{}, h.attrs...), as...)}
}

func (h warnEvents) WithGroup(string) slog.Handler { return h }

// planEvent reports the plan about to be carried out (--json).
func (g *globals) planEvent(rep apply.Reporter, l *loaded, p *plan.Plan) {
	rep.Event(apply.Event{Time: time.Now(), Kind: apply.PlanEvent, Plan: p.Redacted(g.secrets.Load(), l.spec.SensitivePaths)})
}

// summaryEvent ends a command's events.
func summaryEvent(rep apply.Reporter, command string, s apply.Stats, next string, err error) {
	sum := &apply.Summary{Command: command, Changed: nonNil(s.Changed), Unchanged: nonNil(s.Unchanged), Failed: nonNil(s.Failed),
		HeldBack: s.HeldBack, NotDone: s.NotDone, Created: s.Created, Removed: s.Removed, TookNS: int64(s.Took), Next: next}
	if err != nil {
		sum.Error = unwrapCode(err).Error()
	}
	rep.Event(apply.Event{Time: time.Now(), Kind: apply.SummaryEnd, Summary: sum})
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
