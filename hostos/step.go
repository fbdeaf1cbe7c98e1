package hostos

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Step is one host step as a record: what it owns on the host (files,
// units, packages), what a change means for the cluster (the engine
// restarts, the node must be drained first), how it is undone and which
// certificates it needs. Steps() is the only table of them; facts, the
// rolling batches, the generic driver's wipe and certificate issuance are
// derived from it. Each step lives in its own file (step_<id>.go).
//
// A new step is one file defining `func stepX() *Step` and one line in
// Steps(); TestStepRecords checks that its record is complete.
type Step struct {
	// ID is stable and dotted ("engine.install"); it is stored in state.
	ID string
	// Files are every path the step may write or remove, whatever its
	// switch: GatherFacts hashes them, a switched-off step removes them,
	// the generic driver's wipe removes them.
	Files []FileRule
	// Units are the systemd units whose state the step reads (GatherFacts
	// reports ActiveState and UnitFileState of each).
	Units []string
	// Packages are the distro packages the step needs; engine.install
	// installs those of every enabled step (the engine's first).
	Packages func(*Config, Family) []string
	// Extras are packages the step uses when the host's sources have them
	// and works without (the login policy's PAM modules): engine.install
	// puts those of every enabled step into its one package transaction,
	// and installs without them when that transaction fails. They are not
	// required (engine.install's Check does not ask for them) and not in
	// the offline bundle.
	Extras func(*Config, Family) []string
	// BeforeEngine: the step's files are written before the engine package
	// is first installed, so that the engine's first start (the package's
	// own) already uses them and no restart follows the install.
	BeforeEngine bool
	// RestartsEngine: a change restarts dockerd, so swarm members take it in
	// rolling batches and wait to be back before the next batch. Several
	// such steps in a row restart the engine once, at the last of them.
	RestartsEngine bool
	// Drain says whether the step's pending change stops the engine's
	// tasks for longer than a restart (a new engine version) or restarts it
	// while live-restore cannot keep them (new engine certificates under
	// swarm): a swarm member is then drained before it runs and made active
	// again once it is back. nil: never. DrainReason says why, for apply's
	// notes.
	Drain       func(*Target) bool
	DrainReason string
	// Certs are the certificates the operator's CA issues for the step
	// before the host steps run (Config.TLS).
	Certs []Cert
	// Undo is how the step is undone when a host is released with wipe.
	Undo Undo
	// Enabled is the step's switch (nil: always on). A step switched off
	// removes its files (running Off first and OffDone after).
	Enabled func(*Config) bool

	// A file step renders its files and installs the changed ones; its
	// Check is "every file as rendered and ready"; check/apply are set
	// for the steps that are not file steps.
	render  func(*Target, Family) ([]File, error)
	ready   func(*Target) bool                           // extra done condition (unit states)
	put     func(context.Context, *Target, []File) error // install changed files; nil: install, then Validate each
	after   func(context.Context, *Target, []File) error // after installing (changed may be empty)
	off     func(context.Context, *Target) error         // before removing the files when switched off
	offDone func(context.Context, *Target) error         // after removing them
	check   func(context.Context, *Target) (bool, error)
	apply   func(context.Context, *Target) error

	// flushRestart is set by Steps() on the last of a run of
	// RestartsEngine steps: it restarts the engine for all of them.
	flushRestart bool
}

// FileRule is one path a step owns.
type FileRule struct {
	Path string
	// Validate is a command run as root after the file is installed, %s
	// standing for its path; when it fails the file is removed again (the
	// next apply retries) and the step fails.
	Validate string
	// OnChange runs once after the step's files are installed, when this
	// one changed; when it fails the file is removed again, so the next
	// apply installs it and retries instead of counting the step as done.
	OnChange func(ctx context.Context, t *Target, f File) error
	// Distro marks a path the distro ships and the step rewrites
	// (/etc/issue): wipe leaves it in place.
	Distro bool
	// Old marks where an earlier version wrote one of the step's files:
	// never rendered, removed by the step (and by wipe) when present.
	Old bool
}

// Undo is what the generic driver's wipe runs for a step, as root, besides
// removing its files: Stop before any file goes (units disabled), After
// once every step's files are gone and systemd has reloaded.
type Undo struct {
	Stop  string
	After string
}

// Cert is a certificate a step needs from the cluster's CA.
type Cert string

// CertServer is the engine's TLS server certificate for the node's names
// and addresses (Config.TLS).
const CertServer Cert = "server"

// Steps returns the host steps in order: the one table. Every step is
// always listed; a step whose switch is off makes sure its files are gone.
func Steps() []*Step {
	steps := []*Step{
		stepOSSupported(),
		stepOSReady(),
		stepHostname(),
		stepEngineDisk(),
		stepEngineInstall(),
		stepEngineTLS(),
		stepEngineConfig(),
		stepJournald(),
		stepPrune(),
		stepHardenSSH(),
		stepHardenLogin(),
		stepHardenKernel(),
		stepHardenFirewall(),
		stepHardenAudit(),
		stepHardenUpdates(),
	}
	out := make([]*Step, len(steps))
	for i, s := range steps {
		c := *s
		c.flushRestart = s.RestartsEngine && (i+1 == len(steps) || !steps[i+1].RestartsEngine)
		out[i] = &c
	}
	return out
}

// byID indexes the table once.
var byID = sync.OnceValue(func() map[string]*Step {
	m := map[string]*Step{}
	for _, s := range Steps() {
		m[s.ID] = s
	}
	return m
})

// StepByID finds a step of the table.
func StepByID(id string) (*Step, bool) {
	s, ok := byID()[id]
	return s, ok
}

// RestartsEngine reports whether the step with this ID restarts the
// engine when it changes something (false for an unknown ID).
func RestartsEngine(id string) bool {
	s, ok := byID()[id]
	return ok && s.RestartsEngine
}

// DrainReasons says why a host whose pending steps are ids must be drained
// before they run (the DrainReason of each step whose Drain holds on t),
// nil when none needs it. Unknown IDs count for nothing.
func DrainReasons(ids []string, t *Target) []string {
	var out []string
	all := byID()
	for _, id := range ids {
		if s, ok := all[id]; ok && s.Drain != nil && s.Drain(t) {
			out = append(out, s.DrainReason)
		}
	}
	return out
}

// always is a Drain for steps whose every change needs the drain.
func always(*Target) bool { return true }

// ManagedPaths lists every file a step may write or remove, for GatherFacts
// to hash. It does not depend on which switches are on: a step whose switch
// is off checks that its files are gone. Besides the table's fixed paths it
// names the files whose paths come from the spec (a private registry's CA
// under certs.d, written by engine.config); cfg may be nil.
func ManagedPaths(cfg *Config) []string {
	var out []string
	for _, s := range Steps() {
		for _, f := range s.Files {
			out = append(out, f.Path)
		}
	}
	if cfg != nil {
		out = append(out, registryCAPaths(cfg)...)
	}
	return out
}

// ManagedUnits lists the systemd units whose state GatherFacts reports.
func ManagedUnits() []string {
	var out []string
	for _, s := range Steps() {
		for _, u := range s.Units {
			if !slices.Contains(out, u) {
				out = append(out, u)
			}
		}
	}
	return out
}

// NeedsCert reports whether any step needs certificate c.
func NeedsCert(c Cert) bool {
	for _, s := range Steps() {
		if slices.Contains(s.Certs, c) {
			return true
		}
	}
	return false
}

// wantPackages lists every package the enabled steps need, in table order
// (the engine's first), without duplicates.
func wantPackages(cfg *Config, fam Family) []string {
	var out []string
	for _, s := range Steps() {
		if s.Packages == nil || !s.On(cfg) {
			continue
		}
		for _, p := range s.Packages(cfg, fam) {
			if p != "" && !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	return out
}

// extraPackages lists the enabled steps' Extras not already in want.
func extraPackages(cfg *Config, fam Family, want []string) []string {
	var out []string
	for _, s := range Steps() {
		if s.Extras == nil || !s.On(cfg) {
			continue
		}
		for _, p := range s.Extras(cfg, fam) {
			if p != "" && !slices.Contains(out, p) && !slices.Contains(want, p) {
				out = append(out, p)
			}
		}
	}
	return out
}

// prestage writes the files of the enabled BeforeEngine steps (the engine's
// certificates and settings) before the engine package is first installed.
// All or nothing: when one of them cannot render (engine.install run on its
// own, without certificates), none is written, the package starts the
// engine with its defaults and the steps do their work after it as before
// (a daemon.json naming TLS files that are not there would keep the engine
// from starting at all).
func prestage(ctx context.Context, t *Target, fam Family) ([]string, error) {
	var files []File
	var ids []string
	for _, s := range Steps() {
		if !s.BeforeEngine || !s.On(t.Config) || s.render == nil {
			continue
		}
		fs, err := s.render(t, fam)
		if err != nil {
			t.Log.Debug("engine settings not written before its install", "step", s.ID, "reason", err)
			return nil, nil
		}
		if ch := t.changed(fs); len(ch) > 0 {
			files = append(files, ch...)
			ids = append(ids, s.ID)
		}
	}
	if err := t.install(ctx, files...); err != nil {
		return nil, err
	}
	return ids, nil
}

// WipeScript is the POSIX sh program the generic driver runs as root when
// it releases a host with wipe = true: every step's Stop (in reverse
// order), every file the steps own removed (except the distro's own files
// they rewrite), systemd reloaded, then every step's After. Packages and
// /var/lib/docker stay.
func WipeScript() string {
	steps := Steps()
	var b strings.Builder
	b.WriteString("set -u\nexport LC_ALL=C PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n")
	for i := len(steps) - 1; i >= 0; i-- {
		if s := steps[i].Undo.Stop; s != "" {
			fmt.Fprintf(&b, "# %s\n%s\n", steps[i].ID, strings.TrimSpace(s))
		}
	}
	var files []string
	for _, s := range steps {
		for _, f := range s.Files {
			if !f.Distro {
				files = append(files, f.Path)
			}
		}
	}
	fmt.Fprintf(&b, "rm -f -- %s\n", strings.Join(files, " "))
	b.WriteString("systemctl daemon-reload >/dev/null 2>&1\n")
	for i := len(steps) - 1; i >= 0; i-- {
		if s := steps[i].Undo.After; s != "" {
			fmt.Fprintf(&b, "# %s\n%s\n", steps[i].ID, strings.TrimSpace(s))
		}
	}
	b.WriteString("exit 0\n")
	return b.String()
}

// On reports whether the step's switch is on for cfg.
func (s *Step) On(cfg *Config) bool { return s.Enabled == nil || s.Enabled(cfg) }

// paths are the step's file paths.
func (s *Step) paths() []string {
	out := make([]string, len(s.Files))
	for i, f := range s.Files {
		out[i] = f.Path
	}
	return out
}

func (s *Step) rule(path string) FileRule {
	for _, f := range s.Files {
		if f.Path == path {
			return f
		}
	}
	return FileRule{Path: path}
}

// Check reports whether the host already is as the step wants, from Facts
// only (no remote call). An error means the step cannot run here.
func (s *Step) Check(ctx context.Context, t *Target) (bool, error) {
	done, err := s.checkOwn(ctx, t)
	if err != nil || !done {
		return done, err
	}
	if s.flushRestart && t.restartPending {
		return false, nil
	}
	return true, nil
}

func (s *Step) checkOwn(ctx context.Context, t *Target) (bool, error) {
	if s.check != nil {
		return s.check(ctx, t)
	}
	fam, err := t.family()
	if err != nil {
		return false, err
	}
	if !s.On(t.Config) {
		return len(t.present(s.paths())) == 0, nil
	}
	files, err := s.render(t, fam)
	if err != nil {
		return false, err
	}
	if len(t.changed(files)) > 0 {
		return false, nil
	}
	return s.ready == nil || s.ready(t), nil
}

// Apply changes the host. It must be safe to run again after a failure.
func (s *Step) Apply(ctx context.Context, t *Target) error {
	if err := s.applyOwn(ctx, t); err != nil {
		return err
	}
	if s.flushRestart && (t.restartPending || !t.unitActive("docker.service")) {
		reload := t.reloadPending
		t.restartPending, t.reloadPending = false, false
		return restartDocker(ctx, t, reload)
	}
	return nil
}

func (s *Step) applyOwn(ctx context.Context, t *Target) error {
	if s.apply != nil {
		return s.apply(ctx, t)
	}
	fam, err := t.family()
	if err != nil {
		return err
	}
	if !s.On(t.Config) {
		if s.off != nil {
			if err := s.off(ctx, t); err != nil {
				return err
			}
		}
		if err := t.remove(ctx, t.present(s.paths())...); err != nil {
			return err
		}
		if s.offDone != nil {
			return s.offDone(ctx, t)
		}
		return nil
	}
	files, err := s.render(t, fam)
	if err != nil {
		return err
	}
	changed := t.changed(files)
	if len(changed) > 0 {
		put := s.put
		if put == nil {
			put = s.installValidated
		}
		if err := put(ctx, t, changed); err != nil {
			return err
		}
		t.Log.Info("files written", "step", s.ID, "files", filePaths(changed))
		if s.RestartsEngine {
			t.restartPending = true
			for _, f := range changed {
				t.reloadPending = t.reloadPending || strings.HasPrefix(f.Path, "/etc/systemd/system/")
			}
		}
	}
	for _, f := range changed {
		if r := s.rule(f.Path); r.OnChange != nil {
			if err := onChangeOf(ctx, t, f, r.OnChange); err != nil {
				return err
			}
		}
	}
	if s.after != nil {
		return s.after(ctx, t, changed)
	}
	return nil
}

// installValidated installs files, then runs each one's Validate; a file
// that fails it is removed again.
func (s *Step) installValidated(ctx context.Context, t *Target, files []File) error {
	if err := t.install(ctx, files...); err != nil {
		return err
	}
	for _, f := range files {
		v := s.rule(f.Path).Validate
		if v == "" {
			continue
		}
		if _, err := t.sudoSh(ctx, fmt.Sprintf(v, f.Path)); err != nil {
			if rerr := t.remove(ctx, f.Path); rerr != nil {
				return fmt.Errorf("%s rejected by %q: %w (and removing it: %v)", f.Path, v, err, rerr)
			}
			return fmt.Errorf("%s rejected by %q (removed): %w", f.Path, v, err)
		}
	}
	return nil
}

// onChangeOf runs do for f; when it fails, f is removed again, so the next
// apply installs it and retries instead of counting the step as done.
func onChangeOf(ctx context.Context, t *Target, f File, do func(context.Context, *Target, File) error) error {
	if err := do(ctx, t, f); err != nil {
		if rerr := t.remove(ctx, f.Path); rerr != nil {
			return fmt.Errorf("%w (and removing %s: %v)", err, f.Path, rerr)
		}
		return err
	}
	return nil
}

func filePaths(fs []File) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = f.Path
	}
	return out
}

// files turns paths into rules with no validation or action.
func files(paths ...string) []FileRule {
	out := make([]FileRule, len(paths))
	for i, p := range paths {
		out[i] = FileRule{Path: p}
	}
	return out
}

// daemonReload reloads systemd when a unit file is among changed.
func daemonReload(ctx context.Context, t *Target, changed []File) error {
	for _, f := range changed {
		if strings.HasPrefix(f.Path, "/etc/systemd/system/") {
			if _, err := t.sudo(ctx, "systemctl daemon-reload"); err != nil {
				return fmt.Errorf("systemctl daemon-reload: %w", err)
			}
			return nil
		}
	}
	return nil
}
