// Package apply carries out a plan: it creates machines through their drivers,
// connects once per host, runs the host steps, issues certificates and forms
// the swarm, recording progress in state after every change so that an
// interrupted apply is finished by the next one.
//
// An apply is a literal ordered list of phases (phases.go), one small type
// per phase in its own file, sharing one typed run (run.go). Swarm
// membership (init, join, demote, drain, quorum, removal order, waits) is
// provision/swarm's; the phases decide what changes and in which order.
package apply

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
	"github.com/provision/provision/provision/swarm"
)

// Runner runs one apply or destroy (or backup, restore, and the engine
// clients status, audit and lb need). It is used once. ("Engine" is only
// ever the Docker engine: swarm.Engine is one host's engine client,
// spec.Engine the engine block.)
type Runner struct {
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
	// Timeouts bound the swarm membership waits (defaults: swarm.Timeouts).
	Timeouts swarm.Timeouts
	// EngineAPI opens a host's engine API; nil means the Docker Engine SDK
	// over mutual TLS on 2376 (tests give an in-memory swarm).
	EngineAPI func(name, address string) (swarm.API, error)
	// DialSSH opens a host's SSH connection; nil means comm.Dial (the fleet
	// simulation gives in-memory hosts).
	DialSSH func(ctx context.Context, cfg comm.Config) (Conn, error)
	// JoinAttempts is how often a worker's join is tried before the host
	// is reported failed (default 3), JoinBackoff the first pause between
	// tries, doubling (default 2s).
	JoinAttempts int
	JoinBackoff  time.Duration
	// ReplaceMissing lets apply create replacements when every recorded
	// machine, or every manager, appears gone at once (plan.Missing).
	ReplaceMissing bool
	// ForgetMissing lets destroy drop from state machines that all appear
	// gone at once on a driver (plan.Missing of a destroy plan).
	ForgetMissing bool
	// LeaveOtherSwarm lets apply make a host that is a member of another
	// swarm leave it (hosts in an earlier swarm of this cluster always do).
	LeaveOtherSwarm bool
	// AllowEngineDowngrade lets engine.install take a host's engine package
	// to a lower version than it has (refused otherwise, before anything
	// changes on the host).
	AllowEngineDowngrade bool
	// KeepBackups is how many raft backups to keep (default 5).
	KeepBackups int
	// TakeBackup takes a raft backup; nil means over SSH from a manager
	// with its engine stopped briefly (backup.go). Tests replace it.
	TakeBackup func(ctx context.Context, t BackupTarget) (string, error)

	// mu guards State and the records of its machines while a run or
	// concurrent Dials use them.
	mu sync.Mutex
	// loginWait bounds the fresh login that proves a rotated host key
	// (default 20s).
	loginWait time.Duration
	// tunnels carry the engine API of hosts behind a bastion.
	tunnels tunnels
	// gates bound the logins in progress through each bastion (dialSSH).
	gateMu sync.Mutex
	gates  map[string]chan struct{}

	// keyOnce loads the admin key (admin, adminPub) once; Dial and the
	// credentials phase share it, so concurrent Dials need no engine of
	// their own.
	keyOnce  sync.Once
	keyErr   error
	admin    ssh.Signer
	adminPub string
}

// ErrQuorumLost means no manager of the recorded swarm answers as a manager.
var ErrQuorumLost = swarm.ErrQuorumLost

// ErrMissing means the plan finds every recorded machine (or every manager)
// gone at once and the caller did not say to replace them.
var ErrMissing = errors.New("refusing to replace machines that all appear gone")

// ErrMissingDestroy means a destroy plan finds every machine recorded on a
// driver gone at once and the caller did not say to forget them.
var ErrMissingDestroy = errors.New("refusing to forget machines that all appear gone")

// Stats is what an apply did, for the summary line.
type Stats struct {
	Changed   []string // hosts where something changed
	Unchanged []string
	Failed    []string
	// HeldBack are hosts a rolling change did not reach because an earlier
	// batch failed (ErrHeldBack): untouched, still to do.
	HeldBack []string
	// NotDone are hosts an apply that stopped early (an error outside any
	// host, an interrupt) left without a change or an error of their own:
	// not known to match the spec yet.
	NotDone []string
	Created int
	Removed int
	Took    time.Duration
}

// StepError names the host and step an error happened in.
type StepError struct {
	Host, Step string
	Err        error
}

func (e *StepError) Error() string { return e.Host + ": " + e.Step + ": " + e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }

// ErrHeldBack is the error of a host a rolling change did not reach: an
// earlier batch failed, so this one was left as it was (the next manager
// could take quorum with it). It is reported apart from the failures.
var ErrHeldBack = errors.New("not reconfigured: an earlier rolling batch failed")

// errStopped ends a host's work early because the apply was interrupted; the
// host is not counted as failed.
var errStopped = errors.New("interrupted before this step")

func (e *Runner) parallelism() int {
	switch {
	case e.Parallelism > 0:
		return e.Parallelism
	case e.Spec != nil && e.Spec.Parallelism > 0:
		// The spec's, or its default (every host, up to 256), within
		// the file descriptors this process may open.
		return DefaultParallelism(e.Spec.Parallelism, fdLimit())
	}
	return 16
}

// MaxParallelism is the most hosts worked on at once by default. Hosts
// mostly wait (boot, package installs, round trips), so the bound is
// what the operator's machine holds per host in flight: one SSH
// connection (a file descriptor, its buffers and keepalive goroutine) and
// one engine API connection.
const MaxParallelism = 256

// DefaultParallelism adapts to the fleet: every host at once up to
// MaxParallelism, within a quarter of the file descriptors the process may
// open (each host in flight holds up to two, and the rest of the process
// needs some), never below 1.
func DefaultParallelism(hosts int, fds uint64) int {
	p := min(max(hosts, 1), MaxParallelism)
	if fds > 0 {
		p = min(p, max(1, int(fds/4)))
	}
	return p
}

// fdLimit is the process's open file limit (0: unknown).
func fdLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	return rl.Cur
}

func (e *Runner) reporter() Reporter {
	if e.Report == nil {
		return Discard{}
	}
	return e.Report
}

// Apply carries out p. Per-host failures do not stop other hosts: a failed host
// drops out of later phases and its error is returned, joined with the others,
// at the end. State is saved after every change and at the end, also when ctx
// is cancelled.
func (e *Runner) Apply(ctx context.Context, p *plan.Plan) (Stats, error) {
	start := time.Now()
	if m := p.Missing; m != nil && !e.ReplaceMissing {
		return Stats{}, fmt.Errorf("%w: %s. Nothing was changed. If the machines really are gone, run apply again with --replace-missing", ErrMissing, m.Message)
	}
	r := newRun(e, p)
	r.State.Name = e.Spec.Name
	if p.Missing != nil && e.State.Swarm.ID != "" {
		// Every manager is gone and the operator said so: the swarm went
		// with them. A new one is formed; hosts still in the old one leave it.
		r.note("", fmt.Sprintf("every manager is gone: swarm %s is lost with them; a new swarm is formed (--replace-missing)", e.State.Swarm.ID))
		r.State.Swarm.Retired = append(r.State.Swarm.Retired, r.State.Swarm.ID)
		r.State.Swarm.ID = ""
	}
	// ctx ends on the first interrupt: waits and calls in flight (SDK, SSH,
	// drivers) stop, nothing new starts, and state is saved below (saving
	// needs no context). The caller says to re-run.
	r.stop = ctx
	var err error
	for _, ph := range phases() {
		if r.stopped() {
			break
		}
		if err = r.runPhase(ctx, ph); err != nil {
			break
		}
	}
	if r.stopped() {
		if errors.Is(err, context.Canceled) {
			err = nil // the interrupt, said once below
		}
		err = errors.Join(err, fmt.Errorf("apply stopped: %w", context.Cause(ctx)))
	}
	var hostErrs []error
	for _, name := range r.hostNames() {
		h := r.hosts[name]
		switch {
		case errors.Is(h.err, ErrHeldBack):
			r.stats.HeldBack = append(r.stats.HeldBack, name)
		case h.err != nil:
			r.stats.Failed = append(r.stats.Failed, name)
			hostErrs = append(hostErrs, h.err)
		case err != nil && h.rec != nil && h.rec.Status != state.StatusReady:
			// Cut off before it was ready (its steps or its join not
			// done): whatever changed on it, it is not done, and saying
			// "changed" beside "0 failed" read as finished.
			r.stats.NotDone = append(r.stats.NotDone, name)
		case h.changed:
			r.stats.Changed = append(r.stats.Changed, name)
		case err != nil:
			r.stats.NotDone = append(r.stats.NotDone, name)
		default:
			r.stats.Unchanged = append(r.stats.Unchanged, name)
		}
	}
	// The cluster-wide settings are recorded only when every host has them,
	// so a failed apply shows the same setting change in the next plan.
	if err == nil && len(hostErrs) == 0 {
		r.mu.Lock()
		r.State.Settings = plan.Settings(e.Spec)
		// Every host has the phase's certificates: a CA rotation goes on
		// to its next phase, a `rotate certs` is done.
		r.rotationDone()
		r.mu.Unlock()
	}
	// Save whatever happened, even when interrupted.
	if serr := r.save(); serr != nil {
		err = errors.Join(err, serr)
	}
	r.closeAll()
	r.stats.Took = time.Since(start)
	return r.stats, errors.Join(append([]error{err}, hostErrs...)...)
}

// connectTimeout bounds SSH connection retries: the caller's setting, else
// the spec's ssh.connect_timeout, else 3 minutes.
func (e *Runner) connectTimeout() time.Duration {
	switch {
	case e.ConnectTimeout != 0:
		return e.ConnectTimeout
	case e.Spec != nil && e.Spec.SSH.ConnectTimeout != 0:
		return e.Spec.SSH.ConnectTimeout // ssh { connect_timeout = "..." }
	}
	return 3 * time.Minute
}

// logger is e.Log, or a discarding one.
func (e *Runner) logger() *slog.Logger {
	if e.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return e.Log
}

// adminKey loads or creates the cluster's admin SSH key, once.
func (e *Runner) adminKey() error {
	e.keyOnce.Do(func() {
		e.admin, e.adminPub, e.keyErr = state.EnsureSSHKey(e.Store.Dir())
	})
	return e.keyErr
}
