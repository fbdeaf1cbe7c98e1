package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/provision/provision/drivers"
	_ "github.com/provision/provision/drivers/all" // link every driver
	"github.com/provision/provision/provision/apply"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/redact"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
)

// globals are the flags every command shares.
type globals struct {
	stateDir  string
	vars      []string
	varFiles  []string
	logLevel  string
	logFile   string
	jsonOut   bool
	noColor   bool
	log       *slog.Logger
	logCloser io.Closer
	// secrets replaces the values of the spec's sensitive variables in
	// everything the command prints: logs (both handlers write through
	// it), plans and the final error. Set once the spec is loaded.
	secrets atomic.Pointer[redact.Values]
	// stderr is the command's stderr; logOut, when set, replaces it for
	// log lines (the live reporter prints them above its block); events,
	// when set, also receives the log's warnings (--json).
	stderr io.Writer
	logOut atomic.Pointer[io.Writer]
	events atomic.Pointer[apply.Reporter]
	// stream is the --json event stream of the running command, when it
	// has one (jsonEvents).
	stream *jsonStream
}

// redact returns s with the sensitive values of the loaded spec replaced.
func (g *globals) redact(s string) string { return g.secrets.Load().String(s) }

// secretWriter passes w's writes through the spec's sensitive values, as
// they are known at the time of each write.
type secretWriter struct {
	g *globals
	w io.Writer
}

func (w secretWriter) Write(p []byte) (int, error) {
	return w.g.secrets.Load().Writer(w.w).Write(p)
}

const rootLong = `provision turns one HCL file into a running, TLS-secured Docker Swarm.

It creates hosts through drivers (local system containers, existing machines
over SSH, libvirt, AWS, Azure, DigitalOcean), installs a pinned Docker engine
over SSH, protects every daemon with TLS on 2376 under a cluster CA, and forms
the swarm. State lives in .provision/<cluster>/ next to the spec.

Exit codes:
  0    success (plan: whatever the diff)
  1    the run failed (the error names the host and step)
  2    bad flags or arguments, an unusable --state-dir, or an invalid spec
       (diagnostics with file:line:col)
  3    the state is locked by another provision (the holder is named)
  4    refused: a destructive plan without --auto-approve and no terminal,
       every machine or manager gone without --replace-missing, or a state
       file that is corrupt or from a newer provision (left untouched)
  130  interrupted: state was saved, run the command again to finish
  provision ssh exits with the remote command's status (255: provision failed)`

func newRoot() *cobra.Command {
	root, _ := newRootWith()
	return root
}

// usage marks argument errors as bad usage (exit 2).
func usage(a cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		return withCode(exitUsage, a(cmd, args))
	}
}

func newRootWith() (*cobra.Command, *globals) {
	g := &globals{}
	root := &cobra.Command{
		Use:           "provision",
		Short:         "Turn one HCL file into a TLS-secured Docker Swarm",
		Long:          rootLong,
		SilenceUsage:  true,
		SilenceErrors: true,
		Example: `  provision apply examples/local.hcl
  provision plan cluster.hcl -var workers=5
  provision status cluster.hcl
  eval "$(provision env cluster.hcl demo-manager-1)"
  provision destroy cluster.hcl --auto-approve`,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			sigpipeFor(cmd) // main.go
			return g.setupLog(cmd.ErrOrStderr())
		},
		PersistentPostRun: func(*cobra.Command, []string) {
			if g.logCloser != nil {
				g.logCloser.Close()
			}
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.stateDir, "state-dir", "", "state directory (default: .provision/<cluster> next to the spec)")
	pf.StringArrayVar(&g.vars, "var", nil, "set a variable: -var name=value (repeatable)")
	pf.StringArrayVar(&g.varFiles, "var-file", nil, "read variables from an HCL file (repeatable)")
	pf.StringVar(&g.logLevel, "log-level", "warn", "log level on stderr: debug, info, warn, error")
	pf.StringVar(&g.logFile, "log-file", "", "also write a JSON log (debug level) to this file")
	pf.BoolVar(&g.noColor, "no-color", false, "no colors in output")
	root.AddCommand(
		newValidate(g), newPlan(g), newApply(g), newDestroy(g), newAudit(g),
		newStatus(g), newEnv(g), newSSH(g), newLB(g), newBackup(g), newRestore(g), newRotate(g), newUnlock(g), newVersion(),
	)
	// Bad flags and arguments are usage errors (exit 2), as documented.
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return withCode(exitUsage, err) })
	for _, c := range root.Commands() {
		if c.Args != nil {
			c.Args = usage(c.Args)
		}
	}
	// Every command that only groups others (the root, rotate, lb,
	// completion) is runnable, so that an unknown or misspelt subcommand
	// (`provision rotate cert FILE`) is an argument error (exit 2), not
	// help and exit 0 as if something had been done.
	root.InitDefaultCompletionCmd()
	groupsRunnable(root)
	root.SetHelpCommand(newHelp(root))
	return root, g
}

// newHelp is `provision help [COMMAND...]`: cobra's, except that a topic
// naming no command is a usage error (exit 2) rather than a line and exit 0.
func newHelp(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, rest, err := root.Find(args)
			if err != nil || c == nil || len(rest) > 0 {
				return withCode(exitUsage, fmt.Errorf("unknown help topic %q: see `provision help`", strings.Join(args, " ")))
			}
			c.InitDefaultHelpFlag()
			return c.Help()
		},
	}
}

// groupsRunnable makes c and every command under it that has subcommands
// and no action of its own print its help when called alone and refuse
// arguments (an unknown subcommand) as a usage error.
func groupsRunnable(c *cobra.Command) {
	if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
		c.Args = usage(cobra.NoArgs)
		c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	}
	for _, sub := range c.Commands() {
		groupsRunnable(sub)
	}
}

func (g *globals) setupLog(stderr io.Writer) error {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		return withCode(exitUsage, fmt.Errorf("--log-level: %w", err))
	}
	// On stderr the progress lines already carry the time: drop it from log
	// lines; the --log-file JSON log keeps it.
	dropTime := func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	// NO_COLOR (no-color.org): any non-empty value turns colors off, as --no-color does.
	if os.Getenv("NO_COLOR") != "" {
		g.noColor = true
	}
	g.stderr = stderr
	handlers := []slog.Handler{slog.NewTextHandler(secretWriter{g, logWriter{g}}, &slog.HandlerOptions{Level: lvl, ReplaceAttr: dropTime}), warnEvents{g: g}}
	if g.logFile != "" {
		f, err := openLogFile(g.logFile)
		if err != nil {
			return withCode(exitUsage, fmt.Errorf("--log-file: %w", err))
		}
		g.logCloser = f
		handlers = append(handlers, slog.NewJSONHandler(secretWriter{g, f}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	g.log = slog.New(slog.NewMultiHandler(handlers...))
	return nil
}

// openLogFile opens the debug log for appending, creating it 0600; an
// existing regular file that others may read is tightened to 0600 before
// anything is written (debug logs name hosts, commands and addresses).
// Devices and pipes (/dev/stderr) are written as they are.
func openLogFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if fi.Mode().IsRegular() && fi.Mode().Perm()&0o077 != 0 {
		if err := f.Chmod(0o600); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s is readable by others and cannot be made private: %w", path, err)
		}
	}
	return f, nil
}

// positiveDuration refuses (exit 2) a duration flag set to zero or less: it
// was ignored in silence (--resync) or made the wait fail at once after the
// change had started (--timeout).
func positiveDuration(cmd *cobra.Command, name string, d time.Duration) error {
	if cmd.Flags().Changed(name) && d <= 0 {
		return withCode(exitUsage, fmt.Errorf("--%s %s: give a duration above zero", name, d))
	}
	return nil
}

// requireState refuses (exit 2) a command that reports on a cluster when no
// state of it was ever written in the state directory: nothing was made from
// here (or --state-dir points elsewhere), and an empty report would pass for
// a healthy answer.
func (l *loaded) requireState() error {
	if l.state.Updated.IsZero() && len(l.state.Machines) == 0 {
		return withCode(exitUsage, fmt.Errorf("no state of cluster %q in %s: run `provision apply` first (or pass the --state-dir it used)", l.spec.Name, l.store.Dir()))
	}
	return nil
}

// requireMachines refuses (exit 2) a command that acts on machines when the
// cluster has none yet.
func (l *loaded) requireMachines() error {
	if len(l.state.Machines) == 0 {
		return withCode(exitUsage, fmt.Errorf("cluster %q has no machines yet: run `provision apply` first", l.spec.Name))
	}
	return nil
}

// loaded is a spec with its state store open (and locked).
type loaded struct {
	spec    *spec.Cluster
	store   *state.Store
	state   *state.State
	drivers map[string]drivers.Driver
}

func (l *loaded) close() {
	if l.store != nil {
		l.store.Close()
	}
}

// loadSpec parses and validates the file, printing diagnostics.
func (g *globals) loadSpec(cmd *cobra.Command, file string) (*spec.Cluster, error) {
	c, diags := spec.Load([]string{file}, spec.Vars{Args: g.vars, Files: g.varFiles, Env: os.Environ()})
	if c != nil {
		g.secrets.Store(redact.NewValues(c.Secrets...))
		diags = append(diags, unbuiltDrivers(c)...)
	}
	if len(diags) > 0 {
		spec.WriteDiagnostics(cmd.ErrOrStderr(), diags, !g.noColor && isTTY(cmd.ErrOrStderr()))
	}
	if diags.HasErrors() {
		return nil, withCode(exitUsage, diagError{diags})
	}
	return c, nil
}

// unbuiltDrivers refuses driver blocks whose type the spec language knows but
// this binary does not link, pointing at the block.
func unbuiltDrivers(c *spec.Cluster) hcl.Diagnostics {
	var diags hcl.Diagnostics
	for _, b := range c.Drivers {
		if info, _ := drivers.Lookup(b.Type); info.New == nil {
			r := b.Range
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Driver not built in",
				Detail:   fmt.Sprintf("The %q driver type is part of the spec language, but this provision binary does not include it (built in: %s). Use one of those drivers for this role.", b.Type, strings.Join(builtDrivers(), ", ")),
				Subject:  &r,
			})
		}
	}
	return diags
}

func builtDrivers() []string {
	var out []string
	for _, t := range drivers.Types() {
		if info, _ := drivers.Lookup(t); info.New != nil {
			out = append(out, t)
		}
	}
	return out
}

// open loads the spec, takes the state lock and builds the drivers: for
// the commands that change the cluster (apply, destroy, backup, restore).
func (g *globals) open(cmd *cobra.Command, file string) (*loaded, error) {
	return g.openState(cmd, file, true)
}

// openRead loads the spec and reads the state without the lock, for the
// commands that only read (plan, status, env, ssh, audit): they work while
// an apply runs, each reads one consistent snapshot of the state, and an
// open ssh session holds nothing up.
func (g *globals) openRead(cmd *cobra.Command, file string) (*loaded, error) {
	return g.openState(cmd, file, false)
}

func (g *globals) openState(cmd *cobra.Command, file string, lock bool) (*loaded, error) {
	c, err := g.loadSpec(cmd, file)
	if err != nil {
		return nil, err
	}
	l := &loaded{spec: c}
	dir := g.stateDir
	if dir == "" {
		dir = state.DefaultDir(file, c.Name)
	}
	if lock {
		l.store, err = state.Open(dir, holder(cmd))
	} else {
		l.store, err = state.OpenReadOnly(dir)
	}
	if err != nil {
		var le *state.LockedError
		if errors.As(err, &le) {
			return nil, withCode(exitLocked, err)
		}
		if g.stateDir != "" {
			return nil, withCode(exitUsage, fmt.Errorf("--state-dir %s: %w", g.stateDir, err))
		}
		return nil, err
	}
	if prev, ok := l.store.Stale(); ok {
		if l.store.ReadOnly() {
			g.log.Warn("stale state lock: its holder died without finishing; the next apply goes on from where it stopped", "holder", prev.String())
		} else {
			g.log.Warn("took over a stale state lock: its holder is gone", "holder", prev.String())
		}
	}
	l.state, err = l.store.Load()
	if err != nil {
		l.close()
		return nil, withCode(exitRefused, err)
	}
	if l.state.Name != "" && l.state.Name != c.Name {
		l.close()
		return nil, withCode(exitRefused, fmt.Errorf("state in %s belongs to cluster %q, the spec names %q", dir, l.state.Name, c.Name))
	}
	l.drivers = map[string]drivers.Driver{}
	for _, b := range c.Drivers {
		info, _ := drivers.Lookup(b.Type) // loadSpec refused types without a factory
		d, diags := info.New(b.Body, drivers.Options{Name: b.Name, StateDir: dir, Log: g.log.With("driver", b.Name), Eval: b.Eval})
		// spec.Load already ran every factory and printed its warnings.
		if diags.HasErrors() {
			spec.WriteDiagnostics(cmd.ErrOrStderr(), diags, !g.noColor && isTTY(cmd.ErrOrStderr()))
			l.close()
			return nil, withCode(exitUsage, diagError{diags})
		}
		l.drivers[b.Name] = d
	}
	return l, nil
}

// holder is how the lock names this command: its path, its arguments and
// the names of the flags set, never their values (-var and -var-file
// values, or anything else, may be secret).
func holder(cmd *cobra.Command) string {
	parts := []string{cmd.CommandPath()}
	parts = append(parts, cmd.Flags().Args()...)
	seen := map[string]bool{}
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if !seen[f.Name] {
			seen[f.Name] = true
			parts = append(parts, "--"+f.Name)
		}
	})
	return strings.Join(parts, " ")
}

// observe asks every driver what the cluster owns. A driver that cannot
// answer (no credentials, unreachable) is reported, not fatal: plan says which
// checks it could not make.
func (l *loaded) observe(ctx context.Context, log *slog.Logger) plan.Observed {
	obs := plan.Observed{Machines: map[string][]drivers.Machine{}, Unknown: map[string]string{},
		Resources: map[string][]drivers.Resource{}, ResourceErrs: map[string]string{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	wanted := plan.Wanted(l.spec, l.state.ClusterID)
	for name, d := range l.drivers {
		if ms, ok := d.(drivers.MachineSettings); ok {
			if obs.DriverSettings == nil {
				obs.DriverSettings = map[string]map[string]string{}
			}
			obs.DriverSettings[name] = ms.MachineSettings()
		}
		if ip, ok := d.(drivers.InPlacer); ok {
			if why := ip.ReplaceInPlace(); why != "" {
				if obs.InPlace == nil {
					obs.InPlace = map[string]string{}
				}
				obs.InPlace[name] = why
			}
		}
		if pl, ok := d.(drivers.Placer); ok && len(wanted[name]) > 0 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
				defer cancel()
				p, err := pl.Placement(ctx, l.state.ClusterID, wanted[name])
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					log.Debug("driver cannot say where machines go", "driver", name, "err", err)
					return
				}
				if obs.Placement == nil {
					obs.Placement = map[string]drivers.Placement{}
				}
				obs.Placement[name] = p
			}()
		}
		if r, ok := d.(drivers.Resourcer); ok {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
				defer cancel()
				rs, err := r.Resources(ctx, l.state.ClusterID, wanted[name])
				mu.Lock()
				defer mu.Unlock()
				obs.Resources[name] = rs
				if err != nil {
					obs.ResourceErrs[name] = err.Error()
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			ms, err := d.Machines(ctx, l.state.ClusterID)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				obs.Unknown[name] = err.Error()
				log.Debug("driver cannot list machines", "driver", name, "err", err)
				return
			}
			obs.Machines[name] = ms
		}()
	}
	wg.Wait()
	return obs
}

func (l *loaded) runner(g *globals, rep apply.Reporter) *apply.Runner {
	return &apply.Runner{
		Spec:    l.spec,
		Store:   l.store,
		State:   l.state,
		Drivers: l.drivers,
		Log:     g.log,
		Report:  rep,
	}
}

func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func isTTYIn(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// relPath shortens a path for messages.
func relPath(p string) string {
	if wd, err := os.Getwd(); err == nil {
		if r, err := filepath.Rel(wd, p); err == nil && !strings.HasPrefix(r, "..") {
			return r
		}
	}
	return p
}
