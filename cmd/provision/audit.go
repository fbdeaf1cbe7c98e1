package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/apply"
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
		Long: `Run Lynis (installed from the host's distro packages when missing) on every
node, or one, and print each host's hardening index and warnings. The same
measurement the README records for a plain and a provisioned host.`,
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
			e := l.runner(g, apply.Discard{})
			results := make([]AuditResult, len(targets))
			var wg sync.WaitGroup
			sem := make(chan struct{}, max(1, l.spec.Parallelism))
			for i, m := range targets {
				wg.Add(1)
				go func() {
					defer wg.Done()
					sem <- struct{}{}
					defer func() { <-sem }()
					results[i] = auditHost(cmd.Context(), e, m)
				}()
			}
			wg.Wait()
			failed := 0
			for _, r := range results {
				if r.Error != "" {
					failed++
				}
			}
			if jsonOut {
				if err := writeJSON(cmd.OutOrStdout(), map[string]any{"cluster": l.spec.Name, "hosts": results}); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tINDEX\tTESTS\tWARNINGS\tSUGGESTIONS")
				for _, r := range results {
					if r.Error != "" {
						fmt.Fprintf(tw, "%s\t-\t-\t-\t%s\n", r.Name, r.Error)
						continue
					}
					fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\n", r.Name, r.Index, r.Tests, len(r.Warnings), len(r.Suggestions))
				}
				tw.Flush()
				for _, r := range results {
					for _, w := range r.Warnings {
						fmt.Fprintf(cmd.OutOrStdout(), "%s: warning: %s\n", r.Name, w)
					}
					if showSuggestions {
						for _, s := range r.Suggestions {
							fmt.Fprintf(cmd.OutOrStdout(), "%s: suggestion: %s\n", r.Name, s)
						}
					}
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

func auditHost(ctx context.Context, e *apply.Runner, m *state.Machine) AuditResult {
	r := AuditResult{Name: m.Name}
	c, err := e.Dial(ctx, m.Machine)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer c.Close()
	out, err := c.Run(ctx, c.Sudo("sh -s"), strings.NewReader(hostos.LynisScript))
	if err != nil {
		r.Error = "lynis: " + err.Error()
		return r
	}
	rep, err := hostos.ParseLynisReport(out)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.LynisReport = rep
	return r
}
