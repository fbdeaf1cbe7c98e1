// Package apply carries out a plan: it creates machines through their drivers,
// connects once per host, runs the host steps, issues certificates and forms
// the swarm, recording progress in state after every change so that an
// interrupted apply is finished by the next one.
package apply

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	dswarm "github.com/docker/docker/api/types/swarm"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
	"github.com/provision/provision/provision/swarm"
)

// Engine runs one apply or destroy. It is used once.
type Engine struct {
	Spec    *spec.Cluster
	Store   *state.Store
	State   *state.State
	Drivers map[string]drivers.Driver // by driver block name
	Log     *slog.Logger
	Report  Reporter
	// Parallelism bounds concurrent host work (drivers' API calls, SSH).
	Parallelism int
	// ForceNewCluster allows re-forming the swarm on a surviving manager when
	// quorum was lost.
	ForceNewCluster bool
	// ConnectTimeout bounds SSH connection retries per host (default 3m).
	ConnectTimeout time.Duration

	mu    sync.Mutex // guards State and hosts
	hosts map[string]*host
	// keyOnce loads the admin key (admin, adminPub) once; Dial and
	// credentials share it, so concurrent Dials need no engine of their own.
	keyOnce  sync.Once
	keyErr   error
	admin    ssh.Signer
	adminPub string
	ca       *pki.CA
	plan     *plan.Plan
	// staleNodes are swarm node IDs of replaced machines, removed once their replacements joined.
	staleNodes []string
	// nodes is the swarm's node list as the leader last reported it.
	nodes map[string]dswarm.Node
	stats Stats
	// stop is the caller's context: once it is done (SIGINT), no new work
	// starts, while running steps finish on a context that is not cancelled.
	stop context.Context
	// loginWait bounds the fresh login that proves a rotated host key
	// (default 20s).
	loginWait time.Duration
	// tunnels carry the engine API of hosts behind a bastion.
	tunnels tunnels
}

// errStopped ends a host's work early because the apply was interrupted; the
// host is not counted as failed.
var errStopped = errors.New("interrupted before this step")

// stopped reports whether the caller asked the apply to stop.
func (e *Engine) stopped() bool { return e.stop != nil && e.stop.Err() != nil }

// Stats is what an apply did, for the summary line.
type Stats struct {
	Changed   []string // hosts where something changed
	Unchanged []string
	Failed    []string
	Created   int
	Removed   int
	Took      time.Duration
}

// host is one machine during an apply.
type host struct {
	rec     *state.Machine
	pool    spec.Pool
	comm    *comm.Client
	target  *hostos.Target
	engine  *swarm.Engine
	changed bool
	err     error
	// steps are the host steps for this host, pending the IDs whose Check
	// found work before any ran; restarted says a step that restarts the
	// engine was applied.
	steps     []hostos.Step
	pending   []string
	restarted bool
}

func (e *Engine) init() {
	if e.Log == nil {
		e.Log = slog.New(slog.DiscardHandler)
	}
	if e.Report == nil {
		e.Report = Discard{}
	}
	if e.Parallelism <= 0 {
		e.Parallelism = e.Spec.Parallelism
	}
	if e.Parallelism <= 0 {
		e.Parallelism = 16
	}
	e.ConnectTimeout = e.connectTimeout()
	e.hosts = map[string]*host{}
}

// phase is one named stage of an apply.
type phase struct {
	name string
	run  func(ctx context.Context) error
}

// Apply carries out p. Per-host failures do not stop other hosts: a failed host
// drops out of later phases and its error is returned, joined with the others,
// at the end. State is saved after every change and at the end, also when ctx
// is cancelled.
func (e *Engine) Apply(ctx context.Context, p *plan.Plan) (Stats, error) {
	start := time.Now()
	e.init()
	e.plan = p
	e.State.Name = e.Spec.Name
	// Steps already running when ctx ends (SIGINT) finish on run; nothing new
	// starts (e.stopped), state is saved and the caller says to re-run.
	e.stop = ctx
	run := context.WithoutCancel(ctx)
	var err error
	for _, ph := range e.phases() {
		if e.stopped() {
			break
		}
		if err = e.runPhase(run, ph); err != nil {
			break
		}
	}
	if e.stopped() {
		err = errors.Join(err, fmt.Errorf("interrupted: %w", context.Cause(ctx)))
	}
	var hostErrs []error
	for _, name := range e.hostNames() {
		h := e.hosts[name]
		switch {
		case h.err != nil:
			e.stats.Failed = append(e.stats.Failed, name)
			hostErrs = append(hostErrs, h.err)
		case h.changed:
			e.stats.Changed = append(e.stats.Changed, name)
		default:
			e.stats.Unchanged = append(e.stats.Unchanged, name)
		}
	}
	// The cluster-wide settings are recorded only when every host has them,
	// so a failed apply shows the same setting change in the next plan.
	if err == nil && len(hostErrs) == 0 {
		e.mu.Lock()
		e.State.Settings = plan.Settings(e.Spec)
		e.mu.Unlock()
	}
	// Save whatever happened, even when interrupted.
	if serr := e.save(); serr != nil {
		err = errors.Join(err, serr)
	}
	e.closeAll()
	e.stats.Took = time.Since(start)
	return e.stats, errors.Join(append([]error{err}, hostErrs...)...)
}

// phases is the literal order of an apply.
func (e *Engine) phases() []phase {
	return []phase{
		{"credentials", e.credentials},
		{"machines", e.machines},
		{"connect", e.connect},
		{"host", e.hostSteps},
		{"swarm", e.swarm},
		{"labels", e.labels},
		{"remove", e.remove},
		{"load-balancer", e.loadBalancer}, // lb.go
	}
}

func (e *Engine) runPhase(ctx context.Context, ph phase) error {
	t0 := time.Now()
	e.Report.Event(Event{Time: t0, Kind: PhaseStart, Phase: ph.name, Hosts: len(e.live())})
	err := ph.run(ctx)
	ev := Event{Time: time.Now(), Kind: PhaseEnd, Phase: ph.name, Took: time.Since(t0)}
	if err != nil {
		ev.Err = err.Error()
	} else if n := e.failedCount(); n > 0 {
		ev.Err = fmt.Sprintf("%d hosts failed", n)
	}
	e.Report.Event(ev)
	e.Log.Debug("phase done", "phase", ph.name, "took", time.Since(t0))
	return err
}

// StepError names the host and step an error happened in.
type StepError struct {
	Host, Step string
	Err        error
}

func (e *StepError) Error() string { return e.Host + ": " + e.Step + ": " + e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }

// fail records a host's error; the host takes no further part.
func (e *Engine) fail(h *host, step string, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if h.err == nil {
		h.err = &StepError{Host: h.rec.Name, Step: step, Err: err}
	}
	e.Report.Event(Event{Time: time.Now(), Kind: StepFail, Host: h.rec.Name, Step: step, Err: err.Error()})
}

func (e *Engine) failedCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, h := range e.hosts {
		if h.err != nil {
			n++
		}
	}
	return n
}

func (e *Engine) hostNames() []string {
	names := make([]string, 0, len(e.hosts))
	for n := range e.hosts {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// live returns the hosts still in the apply, managers first, by index.
func (e *Engine) live() []*host {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*host
	for _, h := range e.hosts {
		if h.err == nil {
			out = append(out, h)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].rec, out[j].rec
		if a.Role != b.Role {
			return a.Role == spec.RoleManager
		}
		if a.Pool != b.Pool {
			return a.Pool < b.Pool
		}
		return a.Index < b.Index
	})
	return out
}

// each runs fn for every live host with bounded parallelism. A host's error is
// recorded on the host; each never returns a host's error, only ctx's.
func (e *Engine) each(ctx context.Context, hosts []*host, step string, fn func(ctx context.Context, h *host) error) error {
	g := new(errgroup.Group)
	g.SetLimit(e.Parallelism)
	for _, h := range hosts {
		if ctx.Err() != nil || e.stopped() {
			break
		}
		g.Go(func() error {
			if e.stopped() {
				return nil // not started: the next apply does it
			}
			if err := fn(ctx, h); errors.Is(err, errStopped) {
				return nil
			} else if err != nil {
				e.fail(h, step, err)
			} else {
				e.Report.Event(Event{Time: time.Now(), Kind: StepDone, Host: h.rec.Name})
			}
			return nil
		})
	}
	_ = g.Wait()
	return ctx.Err()
}

func (e *Engine) save() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.Store.Save(e.State); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}

func (e *Engine) closeAll() {
	for _, h := range e.hosts {
		if h.comm != nil {
			h.comm.Close()
		}
		if h.engine != nil {
			h.engine.Close()
		}
	}
	e.Close()
}

// connectTimeout bounds SSH connection retries: the caller's setting, else
// the spec's ssh.connect_timeout, else 3 minutes.
func (e *Engine) connectTimeout() time.Duration {
	switch {
	case e.ConnectTimeout != 0:
		return e.ConnectTimeout
	case e.Spec != nil && e.Spec.SSH.ConnectTimeout != 0:
		return e.Spec.SSH.ConnectTimeout // ssh { connect_timeout = "..." }
	}
	return 3 * time.Minute
}

// logger is e.Log, or a discarding one before init.
func (e *Engine) logger() *slog.Logger {
	if e.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return e.Log
}

// adminKey loads or creates the cluster's admin SSH key, once.
func (e *Engine) adminKey() error {
	e.keyOnce.Do(func() {
		e.admin, e.adminPub, e.keyErr = state.EnsureSSHKey(e.Store.Dir())
	})
	return e.keyErr
}

// credentials loads or creates the cluster's admin SSH key, CA and the
// operator's client certificate.
func (e *Engine) credentials(ctx context.Context) error {
	if err := e.adminKey(); err != nil {
		return err
	}
	ca, err := pki.LoadOrCreateCA(e.Store.PKIDir(), e.Spec.Name)
	if err != nil {
		return err
	}
	e.ca = ca
	validity := time.Duration(e.Spec.TLS.ValidityHours) * time.Hour
	client, err := pki.EnsureClient(e.Store.PKIDir(), ca, validity)
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.State.PKI.CASerial = ca.Cert.SerialNumber.Text(16)
	e.State.PKI.CANotAfter = ca.Cert.NotAfter
	e.State.PKI.ClientSerial = client.Serial
	e.State.PKI.ClientNotAfter = client.NotAfter
	e.mu.Unlock()
	return nil
}

// loadSigner reads a private key file for hosts that use their own login key.
func loadSigner(path string) (ssh.Signer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("ssh key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("ssh key %s is readable by others (mode %o): chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ssh key: %w", err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("ssh key %s: %w", path, err)
	}
	return s, nil
}

// nodeCertDir is where a node's server cert and key are kept (0600): the
// operator re-uploads them when a host lost them and renews them before expiry.
func (e *Engine) nodeCertDir(name string) string {
	return filepath.Join(e.Store.PKIDir(), "nodes", name)
}
