package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/spf13/cobra"

	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/apply"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/state"
)

// AuditResult is one host's Lynis result.
type AuditResult struct {
	Name string `json:"name"`
	hostos.LynisReport
	Error string `json:"error,omitempty"`
}

func newAudit(g *globals) *cobra.Command {
	var jsonOut, showSuggestions bool
	cmd := &cobra.Command{
		Use:   "audit FILE [NODE]",
		Short: "Measure host hardening with Lynis",
		Long: `Run Lynis on every node, or one, all hosts at once, and print each host's
hardening index and warnings as soon as its audit ends (progress per host on
stderr). Lynis comes from the host's distro packages when it is missing and is
kept for the next audit. The same measurement the README records for a plain
and a provisioned host.`,
		Example: "  provision audit examples/local.hcl\n  provision audit cluster.hcl demo-worker-1 --json",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.openRead(cmd, args[0])
			if err != nil {
				return err
			}
			defer l.close()
			var targets []*state.Machine
			if len(args) == 2 {
				m, err := pickMachine(l, args[1])
				if err != nil {
					return err
				}
				targets = append(targets, m)
			} else {
				targets = l.state.Machines
			}
			if len(targets) == 0 {
				return withCode(exitUsage, fmt.Errorf("cluster %q has no machines yet: run `provision apply` first", l.spec.Name))
			}
			rep := g.reporter(cmd, false) // progress on stderr, live on a terminal
			e := l.runner(g, rep)
			out := cmd.OutOrStdout()
			if lw := g.logOut.Load(); lw != nil && isTTY(out) {
				out = *lw // the rows go above the live lines
			}
			width := len("NAME")
			for _, m := range targets {
				width = max(width, len(m.Name))
			}
			var mu sync.Mutex
			if !jsonOut {
				fmt.Fprintf(out, "%-*s  %5s  %5s  %8s  %11s\n", width, "NAME", "INDEX", "TESTS", "WARNINGS", "SUGGESTIONS")
			}
			// Each host's row as soon as its audit ends.
			show := func(r AuditResult) {
				mu.Lock()
				defer mu.Unlock()
				if jsonOut {
					return
				}
				var b strings.Builder
				if r.Error != "" {
					fmt.Fprintf(&b, "%-*s  %5s  %5s  %8s  %11s  %s\n", width, r.Name, "-", "-", "-", "-", r.Error)
				} else {
					fmt.Fprintf(&b, "%-*s  %5d  %5d  %8d  %11d\n", width, r.Name, r.Index, r.Tests, len(r.Warnings), len(r.Suggestions))
				}
				for _, w := range r.Warnings {
					fmt.Fprintf(&b, "%s: warning: %s\n", r.Name, w)
				}
				if showSuggestions {
					for _, s := range r.Suggestions {
						fmt.Fprintf(&b, "%s: suggestion: %s\n", r.Name, s)
					}
				}
				io.WriteString(out, g.redact(b.String()))
			}
			t0 := time.Now()
			rep.Event(apply.Event{Time: t0, Kind: apply.PhaseStart, Phase: "audit", Hosts: len(targets)})
			results := make([]AuditResult, len(targets))
			g2 := new(errgroup.Group)
			g2.SetLimit(max(1, l.spec.Parallelism))
			for i, m := range targets {
				g2.Go(func() error {
					results[i] = auditHost(cmd.Context(), e, rep, m)
					show(results[i])
					return nil
				})
			}
			_ = g2.Wait()
			failed := 0
			for _, r := range results {
				if r.Error != "" {
					failed++
				}
			}
			end := apply.Event{Time: time.Now(), Kind: apply.PhaseEnd, Phase: "audit", Took: time.Since(t0)}
			if failed > 0 {
				end.Err = fmt.Sprintf("%d hosts failed", failed)
			}
			rep.Event(end)
			if jsonOut {
				if err := writeJSON(cmd.OutOrStdout(), map[string]any{"cluster": l.spec.Name, "hosts": results}); err != nil {
					return err
				}
			}
			if failed > 0 {
				return withCode(exitError, fmt.Errorf("%d of %d hosts could not be audited", failed, len(results)))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	cmd.Flags().BoolVar(&showSuggestions, "suggestions", false, "also list Lynis suggestions")
	return cmd
}

// auditHost installs Lynis when the host lacks it (once: it is kept for the
// next audit), runs it and reads its report, reporting each part as a step.
func auditHost(ctx context.Context, e *apply.Runner, rep apply.Reporter, m *state.Machine) AuditResult {
	r := AuditResult{Name: m.Name}
	step := func(id string, fn func() error) error {
		t0 := time.Now()
		rep.Event(apply.Event{Time: t0, Kind: apply.StepStart, Host: m.Name, Step: id})
		err := fn()
		if err != nil {
			rep.Event(apply.Event{Time: time.Now(), Kind: apply.StepFail, Host: m.Name, Step: id, Err: err.Error()})
		} else {
			rep.Event(apply.Event{Time: time.Now(), Kind: apply.StepDone, Host: m.Name, Step: id, Took: time.Since(t0)})
		}
		return err
	}
	rep.Event(apply.Event{Time: time.Now(), Kind: apply.HostStart, Host: m.Name, Step: "audit"})
	var c *comm.Client
	err := step("ssh.connect", func() (err error) {
		c, err = e.Dial(ctx, m.Machine)
		return err
	})
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer c.Close()
	err = step("lynis.install", func() error {
		out, err := c.Run(ctx, c.Sudo("sh -s"), strings.NewReader(hostos.LynisInstall))
		if err == nil && strings.Contains(string(out), "installed") {
			rep.Event(apply.Event{Time: time.Now(), Kind: apply.Note, Host: m.Name, Msg: "lynis installed (kept for the next audit)"})
		}
		return err
	})
	if err != nil {
		r.Error = "install lynis: " + err.Error()
		return r
	}
	var out []byte
	err = step("lynis.audit", func() (err error) {
		out, err = c.Run(ctx, c.Sudo("sh -s"), strings.NewReader(hostos.LynisRun))
		if err != nil {
			return err
		}
		r.LynisReport, err = hostos.ParseLynisReport(out)
		return err
	})
	if err != nil {
		r.Error = "lynis: " + err.Error()
		return r
	}
	rep.Event(apply.Event{Time: time.Now(), Kind: apply.HostDone, Host: m.Name, Step: "audit"})
	return r
}
