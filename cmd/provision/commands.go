package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/provision/provision/provision/apply"
	"github.com/provision/provision/provision/plan"
)

func newValidate(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "validate FILE",
		Short:   "Check a cluster file without touching anything",
		Example: "  provision validate examples/local.hcl\n  provision validate cluster.hcl -var managers=3",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.loadSpec(cmd, args[0])
			if err != nil {
				return err
			}
			n := c.Managers.Count
			for _, w := range c.Workers {
				n += w.Count
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: valid (cluster %q, %d machines)\n", args[0], c.Name, n)
			return nil
		},
	}
}

func newPlan(g *globals) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "plan FILE",
		Short: "Show what apply would do",
		Long: `Compare the spec with the recorded state and with what the drivers report,
and print per machine: create, adopt, reconfigure, replace, remove or nothing.
Drivers that cannot be asked (no credentials) are named; the plan is then
based on state alone for them.`,
		Example: "  provision plan examples/local.hcl\n  provision plan cluster.hcl --json | jq 'select(.kind == \"plan\").plan.summary'",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.openRead(cmd, args[0])
			if err != nil {
				return err
			}
			defer l.close()
			obs := l.observe(cmd.Context(), g.log)
			l.observeEngines(cmd.Context(), g, &obs)
			p := plan.Build(l.spec, l.state, obs).Redacted(g.secrets.Load(), l.spec.SensitivePaths)
			p.Notes = append(p.Notes, loadBalancers(cmd.Context(), g, l, 8*time.Second).lines()...) // lb.go
			if jsonOut {
				rep := g.reporter(cmd, true)
				rep.Event(apply.Event{Time: time.Now(), Kind: apply.PlanEvent, Plan: p})
				for _, name := range sortedKeys(obs.Unknown) {
					rep.Event(apply.Event{Time: time.Now(), Kind: apply.Warning, Msg: g.redact(fmt.Sprintf("driver %s cannot list machines (%s): the plan is based on state alone for it", name, obs.Unknown[name]))})
				}
				next := ""
				if p.Summary.Changes() > 0 || len(p.Settings) > 0 {
					next = "provision apply " + args[0]
				}
				summaryEvent(rep, "plan", apply.Stats{}, next, nil)
				return nil
			}
			return p.WriteText(cmd.OutOrStdout(), !g.noColor && isTTY(cmd.OutOrStdout()))
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the plan as NDJSON events on stdout (plan, warnings, summary)")
	return g.jsonEvents(cmd, "plan", &jsonOut)
}

// approve asks before destructive plans. Without a terminal and without
// --auto-approve, a destructive plan is refused.
func approve(cmd *cobra.Command, auto bool, what string) error {
	if auto {
		return nil
	}
	if !isTTYIn(cmd.InOrStdin()) {
		return withCode(exitRefused, fmt.Errorf("%s: that needs a confirmation, and there is no terminal to ask on; re-run with --auto-approve", what))
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "\n%s. Type 'yes' to go on: ", what)
	line, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
	if strings.TrimSpace(line) != "yes" {
		return withCode(exitRefused, fmt.Errorf("not confirmed"))
	}
	return nil
}

func newApply(g *globals) *cobra.Command {
	var (
		auto, jsonOut, forceNew, replaceMissing, leaveOther, allowDowngrade bool
		parallelism                                                         int
	)
	cmd := &cobra.Command{
		Use:   "apply FILE",
		Short: "Create or converge the cluster",
		Long: `Create what is missing, adopt what a crashed run left, finish what an
interrupted run started, reconfigure hosts whose settings changed, and remove
what the spec no longer wants. A second apply with no change does nothing.`,
		Example: "  provision apply examples/local.hcl\n  provision apply cluster.hcl -var workers=4 --auto-approve",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// The spec's bounds: -5 and 0 were ignored in silence, 1000
			// went past the cap that keeps file descriptors in hand.
			if cmd.Flags().Changed("parallelism") && (parallelism < 1 || parallelism > apply.MaxParallelism) {
				return withCode(exitUsage, fmt.Errorf("--parallelism %d: use 1 to %d", parallelism, apply.MaxParallelism))
			}
			l, err := g.open(cmd, args[0])
			if err != nil {
				return err
			}
			defer l.close()
			ctx := cmd.Context()
			p := plan.Build(l.spec, l.state, l.observe(ctx, g.log))
			out := cmd.ErrOrStderr()
			rep := g.reporter(cmd, jsonOut)
			if jsonOut {
				g.planEvent(rep, l, p)
			} else {
				if err := p.Redacted(g.secrets.Load(), l.spec.SensitivePaths).WriteText(out, !g.noColor && isTTY(out)); err != nil {
					return err
				}
			}
			if p.Destructive() {
				if err := approve(cmd, auto, "This plan replaces or removes machines"); err != nil {
					return err
				}
			}
			if p.Missing != nil && !replaceMissing {
				err := withCode(exitRefused, fmt.Errorf("%w: %s. Nothing was changed. If the machines really are gone, run apply again with --replace-missing", apply.ErrMissing, p.Missing.Message))
				if jsonOut {
					summaryEvent(rep, "apply", apply.Stats{}, "", err)
				}
				return err
			}
			e := l.runner(g, rep)
			e.ForceNewCluster = forceNew
			e.ReplaceMissing = replaceMissing
			e.LeaveOtherSwarm = leaveOther
			e.AllowEngineDowngrade = allowDowngrade
			if parallelism > 0 {
				e.Parallelism = parallelism
			}
			stats, err := e.Apply(ctx, p)
			next := summary(out, stats, args[0], err)
			if jsonOut {
				summaryEvent(rep, "apply", stats, next, err)
			}
			if errors.Is(err, apply.ErrMissing) {
				return withCode(exitRefused, err)
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&auto, "auto-approve", false, "do not ask before replacing or removing machines")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "progress as NDJSON events on stdout (human text stays on stderr)")
	cmd.Flags().IntVar(&parallelism, "parallelism", 0, "hosts worked on at once, 1-256 (default: the spec's, else every host up to 256)")
	cmd.Flags().BoolVar(&forceNew, "force-new-cluster", false, "when swarm quorum is lost, re-form the swarm on a surviving manager")
	cmd.Flags().BoolVar(&replaceMissing, "replace-missing", false, "create replacements even when every machine (or every manager) appears gone at once")
	cmd.Flags().BoolVar(&leaveOther, "leave-other-swarm", false, "make hosts that are members of another swarm leave it and join this one")
	cmd.Flags().BoolVar(&allowDowngrade, "allow-engine-downgrade", false, "let an engine.version pin below a host's installed engine package downgrade it (refused otherwise; plan says which hosts)")
	return g.jsonEvents(cmd, "apply", &jsonOut)
}

// summary prints the apply's last lines and returns the command it
// suggests running next ("" when none).
func summary(w io.Writer, s apply.Stats, file string, err error) string {
	held := ""
	if len(s.HeldBack) > 0 {
		held = fmt.Sprintf(", %d held back", len(s.HeldBack))
	}
	if len(s.NotDone) > 0 {
		held += fmt.Sprintf(", %d not done", len(s.NotDone))
	}
	fmt.Fprintf(w, "\n%d changed, %d unchanged, %d failed%s hosts (%d created, %d removed) in %s.\n",
		len(s.Changed), len(s.Unchanged), len(s.Failed), held, s.Created, s.Removed, s.Took.Round(100*time.Millisecond))
	switch {
	case len(s.Failed) > 0:
		fmt.Fprintf(w, "Failed: %s.", strings.Join(s.Failed, ", "))
		if len(s.HeldBack) > 0 {
			fmt.Fprintf(w, " Held back, untouched, because a rolling batch before them failed: %s.", strings.Join(s.HeldBack, ", "))
		}
		fmt.Fprintf(w, " Fix the cause and run `provision apply %s` again: finished hosts are kept.\n", file)
		return "provision apply " + file
	case err != nil && errors.Is(err, context.Canceled):
		return "provision apply " + file // interrupted: main says so, and what to run
	case err != nil:
		fmt.Fprintf(w, "Stopped before the cluster converged (the error follows). Fix the cause and run `provision apply %s` again.\n", file)
		return "provision apply " + file
	case len(s.Changed) == 0 && s.Removed == 0:
		fmt.Fprintln(w, "No changes: the cluster matches the spec.")
		return ""
	default:
		fmt.Fprintf(w, "Next: `provision status %s`, or `eval \"$(provision env %s NODE)\"` to use docker.\n", file, file)
		return "provision status " + file
	}
}

func newDestroy(g *globals) *cobra.Command {
	var auto, jsonOut, forgetMissing bool
	cmd := &cobra.Command{
		Use:     "destroy FILE",
		Short:   "Remove every machine, volume and network the cluster owns",
		Example: "  provision destroy examples/local.hcl --auto-approve",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.open(cmd, args[0])
			if err != nil {
				return err
			}
			defer l.close()
			ctx := cmd.Context()
			if l.state.Updated.IsZero() && len(l.state.Machines) == 0 {
				// No state: nothing was made from this directory (machines
				// are found by the cluster ID state holds).
				fmt.Fprintf(cmd.ErrOrStderr(), "Nothing to destroy: no state of cluster %q in %s.\n", l.spec.Name, l.store.Dir())
				if jsonOut {
					// The plan first, as in every stream: nothing to remove.
					rep := g.reporter(cmd, jsonOut)
					g.planEvent(rep, l, plan.Destroy(l.state, plan.Observed{}))
					summaryEvent(rep, "destroy", apply.Stats{}, "", nil)
				}
				return nil
			}
			obs := l.observe(ctx, g.log)
			p := plan.Destroy(l.state, obs)
			out := cmd.ErrOrStderr()
			rep := g.reporter(cmd, jsonOut)
			t0 := time.Now()
			if jsonOut {
				g.planEvent(rep, l, p)
			} else if err := p.Redacted(g.secrets.Load(), l.spec.SensitivePaths).WriteText(out, !g.noColor && isTTY(out)); err != nil {
				return err
			}
			for _, name := range sortedKeys(obs.Unknown) {
				msg := g.redact(fmt.Sprintf("driver %s cannot list machines (%s): only recorded machines are removed", name, obs.Unknown[name]))
				fmt.Fprintln(out, "warning: "+msg)
				if jsonOut {
					rep.Event(apply.Event{Time: time.Now(), Kind: apply.Warning, Msg: msg})
				}
			}
			done := func(err error) error {
				if jsonOut {
					var st apply.Stats
					if err == nil {
						st.Removed = len(p.Actions)
					}
					st.Took = time.Since(t0)
					summaryEvent(rep, "destroy", st, "", err)
				}
				return err
			}
			if p.Missing != nil && !forgetMissing {
				return done(withCode(exitRefused, fmt.Errorf("%w: %s. Nothing was changed", apply.ErrMissingDestroy, p.Missing.Message)))
			}
			if len(p.Actions) > 0 {
				if err := approve(cmd, auto, fmt.Sprintf("This destroys %d machines of cluster %q", len(p.Actions), l.spec.Name)); err != nil {
					return done(err)
				}
			}
			e := l.runner(g, rep)
			e.ForgetMissing = forgetMissing
			if err := e.Destroy(ctx, p); err != nil {
				if errors.Is(err, apply.ErrMissingDestroy) {
					err = withCode(exitRefused, err)
				}
				return done(err)
			}
			// Everything is gone: drop the state, keys and certificates.
			if err := l.store.Clear(); err != nil {
				return done(err)
			}
			fmt.Fprintf(out, "Destroyed cluster %q.\n", l.spec.Name)
			return done(nil)
		},
	}
	cmd.Flags().BoolVar(&auto, "auto-approve", false, "do not ask")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "progress as NDJSON events on stdout (human text stays on stderr)")
	cmd.Flags().BoolVar(&forgetMissing, "forget-missing", false, "drop from state machines that all appear gone at once on a driver (checked credentials, account and region first)")
	return g.jsonEvents(cmd, "destroy", &jsonOut)
}

func newVersion() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			v := "(devel)"
			if bi, ok := debug.ReadBuildInfo(); ok {
				v = bi.Main.Version
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" && len(s.Value) >= 12 {
						v += " " + s.Value[:12]
					}
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "provision %s\n", v)
		},
	}
}

// writeJSON prints v indented.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

var _ = os.Stdout

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
