package apply

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
	"github.com/provision/provision/provision/swarm"
)

// run is one apply's typed state, shared by its phases: the engine's
// settings, the plan, the hosts taking part and what the phases learned.
type run struct {
	*Runner
	plan *plan.Plan
	log  *slog.Logger
	rep  Reporter

	hosts map[string]*host // guarded by Runner.mu, with State
	stats Stats
	saver saver

	ca *pki.CA // the CA that signs (credentials): during a CA rotation, the phase's
	// trust is what engines and the operator trust (the CA, or during a
	// rotation both CAs); cross is the new CA cross-signed by the old one,
	// appended to server certificates during a rotation's reissue phase.
	trust, cross []byte
	tlsMu        sync.Mutex
	clientTLS    *tls.Config // the operator's client certificate for engine APIs
	// members changes the swarm's membership (swarm phase on).
	members *swarm.Membership
	// stop is the caller's context: once it is done (SIGINT), no new work
	// starts and work in flight is cancelled.
	stop context.Context
	// retiring are earlier generations of replaced machines, still to leave
	// the swarm (swarm phase on).
	retiring []*retiree
	// backedUp is the raft backup this run took ("" before one).
	backupMu sync.Mutex
	backedUp string
	// peersUsed are the member addresses the host steps configured.
	peersUsed []string
}

// retiree is an earlier generation of a replaced machine on its way out.
type retiree struct {
	owner  *host // the machine's current generation
	rec    state.Retiring
	gone   bool        // the plan did not find its machine (or it was destroyed): nothing to reach there
	member *swarm.Host // its engine, when it still exists
	closer func() error
}

// host is one machine during an apply.
type host struct {
	rec     *state.Machine
	pool    spec.Pool
	comm    Conn
	target  *hostos.Target
	api     swarm.API    // the engine API (swarm phase on)
	closer  func() error // closes api
	member  *swarm.Host  // api as membership sees it
	changed bool
	err     error
	// action is the plan's line for this machine.
	action plan.Action
	// inPlace: the machine is replaced in place (reinstall phase).
	inPlace bool
	// joinedNow: the host joined the swarm in this run.
	joinedNow bool
	// steps are the host steps for this host, pending the IDs whose Check
	// found work before any ran; restarted says a step that restarts the
	// engine was applied.
	steps     []*hostos.Step
	pending   []string
	restarted bool
}

func newRun(e *Runner, p *plan.Plan) *run {
	return &run{Runner: e, plan: p, log: e.logger(), rep: e.reporter(), hosts: map[string]*host{}}
}

// stopped reports whether the caller asked the apply to stop.
func (r *run) stopped() bool { return r.stop != nil && r.stop.Err() != nil }

func (r *run) runPhase(ctx context.Context, ph phase) error {
	t0 := time.Now()
	n := len(r.live())
	if n == 0 && r.plan != nil {
		n = len(r.plan.Actions) // the machines phase: the hosts are made there
	}
	r.rep.Event(Event{Time: t0, Kind: PhaseStart, Phase: ph.Name(), Hosts: n})
	err := ph.Run(ctx, r)
	ev := Event{Time: time.Now(), Kind: PhaseEnd, Phase: ph.Name(), Took: time.Since(t0)}
	if err != nil {
		ev.Err = err.Error()
	} else if n := r.failedCount(); n > 0 {
		ev.Err = fmt.Sprintf("%d hosts failed", n)
	}
	r.rep.Event(ev)
	r.log.Debug("phase done", "phase", ph.Name(), "took", time.Since(t0))
	return err
}

// fail records a host's error; the host takes no further part.
func (r *run) fail(h *host, step string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// An error that already names this host's step (runSteps') keeps it:
	// the report says the step that failed, and the host once.
	se, ok := err.(*StepError)
	if !ok || se.Host != h.rec.Name {
		se = &StepError{Host: h.rec.Name, Step: step, Err: err}
	}
	if h.err == nil {
		h.err = se
	}
	r.rep.Event(Event{Time: time.Now(), Kind: StepFail, Host: h.rec.Name, Step: se.Step, Err: se.Err.Error()})
}

func (r *run) failedCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, h := range r.hosts {
		if h.err != nil {
			n++
		}
	}
	return n
}

func (r *run) hostNames() []string { return r.hostNamesLocked() }

// hostNamesLocked is hostNames for callers that hold r.mu (or need no lock).
func (r *run) hostNamesLocked() []string {
	names := make([]string, 0, len(r.hosts))
	for n := range r.hosts {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// live returns the hosts still in the apply, managers first, by index.
func (r *run) live() []*host {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*host
	for _, h := range r.hosts {
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

// each runs fn for every host with bounded parallelism. A host's error is
// recorded on the host; each never returns a host's error, only ctx's.
func (r *run) each(ctx context.Context, hosts []*host, step string, fn func(ctx context.Context, h *host) error) error {
	g := new(errgroup.Group)
	g.SetLimit(r.parallelism())
	for _, h := range hosts {
		if ctx.Err() != nil || r.stopped() {
			break
		}
		g.Go(func() error {
			if r.stopped() {
				return nil // not started: the next apply does it
			}
			r.rep.Event(Event{Time: time.Now(), Kind: HostStart, Host: h.rec.Name, Step: step})
			if err := fn(ctx, h); errors.Is(err, errStopped) || (err != nil && r.stopped() && errors.Is(err, context.Canceled)) {
				return nil // interrupted: not a failure, the next apply goes on
			} else if err != nil {
				r.fail(h, step, err)
			} else {
				r.rep.Event(Event{Time: time.Now(), Kind: HostDone, Host: h.rec.Name, Step: step})
			}
			return nil
		})
	}
	_ = g.Wait()
	return ctx.Err()
}

// save writes state and returns once a write that began after the call
// has finished: what the caller changed before calling is on disk. Hosts
// that save at the same time share one write (a group commit), so a fleet
// of N hosts costs far fewer than N writes of an N-machine state.
func (r *run) save() error {
	s := &r.saver
	s.mu.Lock()
	if s.cond == nil {
		s.cond = sync.NewCond(&s.mu)
	}
	s.asked++
	ticket := s.asked
	for s.done < ticket {
		if s.writing {
			s.cond.Wait()
			continue
		}
		s.writing = true
		upto := s.asked
		s.mu.Unlock()
		// Encoding needs the state still; writing it out does not.
		r.mu.Lock()
		b, err := r.Store.Encode(r.State)
		r.mu.Unlock()
		if err == nil {
			err = r.Store.Write(b)
		}
		s.mu.Lock()
		s.writing, s.done, s.err = false, upto, err
		s.cond.Broadcast()
	}
	err := s.err
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}

// saver groups concurrent saves (run.save).
type saver struct {
	mu      sync.Mutex
	cond    *sync.Cond
	asked   uint64 // saves asked for
	done    uint64 // saves covered by the last finished write
	writing bool
	err     error // the last write's
}

func (r *run) note(hostName, msg string) {
	r.log.Info("note", "host", hostName, "msg", msg) // --log-file keeps them (backup, unlock: no other trail)
	r.rep.Event(Event{Time: time.Now(), Kind: Note, Host: hostName, Msg: msg})
}

func (r *run) closeAll() {
	for _, h := range r.hosts {
		if h.comm != nil {
			h.comm.Close()
		}
		if h.closer != nil {
			h.closer()
		}
	}
	for _, o := range r.retiring {
		if o.closer != nil {
			o.closer()
		}
	}
	r.Close() // the bastions' engine API tunnels
}

// pool returns the spec pool a machine belongs to.
func (r *run) pool(role, name string) (spec.Pool, bool) {
	for _, p := range r.Spec.Pools() {
		if p.Role == role && p.Name == name {
			return p, true
		}
	}
	return spec.Pool{}, false
}

func (r *run) driver(name string) (drivers.Driver, error) {
	d, ok := r.Drivers[name]
	if !ok {
		return nil, fmt.Errorf("driver %q is not configured", name)
	}
	return d, nil
}

// owned returns generation gen of machine m with the cluster's ownership
// tags filled in, so that a driver can find a machine whose create was
// interrupted before its ID was recorded (the tags are derived from state,
// never from the driver).
func owned(clusterID string, m drivers.Machine, gen int) drivers.Machine {
	tags := make(map[string]string, len(m.Tags)+3)
	for k, v := range m.Tags {
		tags[k] = v
	}
	if tags[drivers.TagCluster] == "" {
		tags[drivers.TagCluster] = clusterID
	}
	if tags[drivers.TagMachine] == "" {
		tags[drivers.TagMachine] = m.Name
	}
	if tags[drivers.TagGeneration] == "" && gen > 1 {
		tags[drivers.TagGeneration] = strconv.Itoa(gen)
	}
	m.Tags = tags
	return m
}

// destroyMachine destroys one generation of a machine through its driver.
func (r *run) destroyMachine(ctx context.Context, m drivers.Machine, gen int) error {
	d, err := r.driver(m.Driver)
	if err != nil {
		return err
	}
	if err := d.Destroy(ctx, owned(r.State.ClusterID, m, gen)); err != nil && !errors.Is(err, drivers.ErrNotFound) {
		return fmt.Errorf("destroy: %w", err)
	}
	return nil
}
