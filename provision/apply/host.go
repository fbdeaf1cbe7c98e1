package apply

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	dswarm "github.com/docker/docker/api/types/swarm"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/atomicfile"
	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/redact"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
	"github.com/provision/provision/provision/swarm"
)

// hostSteps gathers each host's facts in one remote call on every host at
// once and checks every step against them (a no-op re-apply is one round trip
// per host). Hosts with work to do then run their steps: new hosts and
// changes that leave the engine running all at once; swarm members whose
// engine restarts in rolling batches (managers one at a time, workers a
// quarter at a time), each batch back in the swarm before the next starts.
type hostSteps struct{}

func (hostSteps) Name() string { return "host" }

func (hostSteps) Run(ctx context.Context, r *run) error {
	peers := r.peers()
	r.peersUsed = peers
	if err := r.each(ctx, r.live(), "host.check", func(ctx context.Context, h *host) error {
		// One connection per host while it is checked, closed after: the
		// hosts with work dial again when their batch runs.
		defer r.release(h)
		if err := r.conn(ctx, h); err != nil {
			return err
		}
		return prepareHost(ctx, r, h, peers)
	}); err != nil {
		return err
	}
	if err := oldFirewalls(ctx, r, peers); err != nil {
		return err
	}
	var todo []*host
	for _, h := range r.live() {
		if len(h.pending) > 0 {
			todo = append(todo, h)
		} else if err := hostDone(r, h); err != nil {
			r.fail(h, "host", err)
		}
	}
	batches := rollout(todo, r.parallelism())
	var members *swarm.Membership
	if slices.ContainsFunc(batches, func(b batch) bool { return b.rolling }) {
		// Waiting for a member to come back asks engines; their clients
		// are opened here, before the batches run their hosts in parallel.
		if err := r.engines(ctx, r.live()); err != nil {
			return err
		}
		members = r.membership()
		for _, h := range r.live() {
			if h.rec.Role == spec.RoleManager && h.rec.NodeID != "" {
				members.AddManager(h.member)
			}
		}
		// A manager that restarts comes back locked under autolock: the
		// key must be on this machine before any restarts.
		r.keepUnlockKey(ctx, members.Via())
	}
	return rollBatches(ctx, r, batches, members, connectedSteps)
}

// connectedSteps runs the host's steps on a connection opened for them and
// closed after (the member's wait for its engine needs none).
func connectedSteps(ctx context.Context, r *run, h *host) error {
	if err := r.conn(ctx, h); err != nil {
		return err
	}
	defer r.release(h)
	return runSteps(ctx, r, h)
}

// rollBatches runs the batches in order, the hosts of a batch in parallel.
// In a rolling batch each member goes through swarm's Cycle: drained first
// when a pending step needs it (an engine upgrade), its steps run, its
// engine back in the swarm (Ready, Reachable for a manager) and reporting
// the version dockerd --version gave, made active again. A failed member
// stops the rollout after its batch (the next manager could take quorum
// with it); the later batches are left untouched.
func rollBatches(ctx context.Context, r *run, batches []batch, members *swarm.Membership, steps func(context.Context, *run, *host) error) error {
	if members != nil && slices.ContainsFunc(batches, func(b batch) bool { return b.rolling && b.hosts[0].rec.Role == spec.RoleManager }) {
		// Managers restart followers first and the leader last: the raft
		// holds an election (seconds without a leader, no swarm writes)
		// once, when the leader goes, not each time leadership moves to a
		// manager yet to restart.
		if nodes, err := members.Refresh(ctx); err == nil {
			leaderLast(batches, nodes)
		}
	}
	for i, b := range batches {
		if r.stopped() {
			return nil
		}
		if b.rolling && b.hosts[0].rec.Role == spec.RoleManager {
			if err := r.backup(ctx, "manager engines restart", b.hosts[0].rec.NodeID); err != nil {
				return err
			}
		}
		if b.rolling {
			names := make([]string, len(b.hosts))
			for j, h := range b.hosts {
				names[j] = h.rec.Name
			}
			why := "engine restart"
			if b.drain {
				var reasons []string
				for _, h := range b.hosts {
					for _, rs := range hostos.DrainReasons(h.pending, h.target) {
						if !slices.Contains(reasons, rs) {
							reasons = append(reasons, rs)
						}
					}
				}
				why = strings.Join(reasons, ", ") + ": drained first"
			}
			r.note("", fmt.Sprintf("rolling batch %d/%d: %s (%s)", i+1, len(batches), strings.Join(names, ", "), why))
		}
		if err := r.each(ctx, b.hosts, "host", func(ctx context.Context, h *host) error {
			if !b.rolling {
				if err := steps(ctx, r, h); err != nil {
					return err
				}
				return hostDone(r, h)
			}
			r.mu.Lock()
			drainedByUs := h.rec.Drained // an earlier run's drain it did not undo (a failed turn)
			r.mu.Unlock()
			turn := swarm.Turn{Host: h.member, NodeID: h.rec.NodeID, Manager: h.rec.Role == spec.RoleManager, Drain: needsDrain(h), DrainedByUs: drainedByUs}
			if turn.Drain {
				// Recorded first: a drain an interrupted run leaves behind
				// is undone by the next apply (labels phase).
				if err := r.setDrained(h.rec, true); err != nil {
					return err
				}
			}
			err := members.Cycle(ctx, turn, func(ctx context.Context) (bool, error) {
				if err := steps(ctx, r, h); err != nil {
					return false, err
				}
				return h.restarted, nil
			}, func(l swarm.Local) error {
				// dockerd --version (facts) and the engine API must agree.
				if t := h.target; t != nil && t.Facts != nil && t.Facts.Engine != "" && l.Engine != "" && l.Engine != t.Facts.Engine {
					return fmt.Errorf("the engine reports version %s after the change, dockerd --version %s", l.Engine, t.Facts.Engine)
				}
				return nil
			})
			if err != nil {
				return err
			}
			if turn.Drain {
				if err := r.setDrained(h.rec, false); err != nil {
					return err
				}
			}
			return hostDone(r, h)
		}); err != nil {
			return err
		}
		if b.rolling && r.batchFailed(b.hosts) {
			// A member that did not come back stops the rollout: the next
			// manager could take quorum with it.
			for _, later := range batches[i+1:] {
				for _, h := range later.hosts {
					r.fail(h, "host", ErrHeldBack)
				}
			}
			return nil
		}
	}
	return nil
}

// needsDrain reports whether one of the host's pending steps needs its node
// drained first, as the steps' records say (hostos.Step.Drain).
func needsDrain(h *host) bool {
	return len(hostos.DrainReasons(h.pending, h.target)) > 0
}

// setDrained records in state that provision drained a machine for a
// rolling change or a raft backup (or that it is active again); an
// unchanged flag or a nil record writes nothing.
func (r *run) setDrained(rec *state.Machine, drained bool) error {
	if rec == nil {
		return nil
	}
	r.mu.Lock()
	changed := rec.Drained != drained
	rec.Drained = drained
	r.mu.Unlock()
	if !changed {
		return nil
	}
	return r.save()
}

// reactivate makes a node an earlier, interrupted run drained take tasks
// again (labels phase).
func reactivate(ctx context.Context, r *run, m *swarm.Membership, h *host) error {
	r.mu.Lock()
	drained, id := h.rec.Drained, h.rec.NodeID
	r.mu.Unlock()
	if !drained || id == "" {
		return nil
	}
	if err := m.Activate(ctx, h.rec.Name, id); err != nil {
		return fmt.Errorf("make the node active again after its engine restart: %w", err)
	}
	return r.setDrained(h.rec, false)
}

// oldFirewalls lets the new machines through the firewalls of the earlier
// generations still in the swarm: the new ones must reach them (2377, 7946,
// 4789) to join before the old ones leave. Only the firewall step runs
// there; the old machines take no other change.
func oldFirewalls(ctx context.Context, r *run, peers []string) error {
	if !r.Spec.Hardening.Firewall {
		return nil
	}
	r.openRetiring(ctx)
	for _, o := range r.retiring {
		if o.member == nil || o.rec.Address == "" {
			continue // gone already
		}
		name := fmt.Sprintf("%s (generation %d)", o.owner.rec.Name, max(1, o.rec.Generation))
		if err := firewallOnly(ctx, r, o, peers); err != nil {
			// Its successor cannot join without it: that host fails here,
			// the old one stays in the swarm.
			r.fail(o.owner, "harden.firewall", fmt.Errorf("%s: let the new machines in: %w", name, err))
		}
	}
	return nil
}

// firewallOnly runs the firewall step alone on an old generation.
func firewallOnly(ctx context.Context, r *run, o *retiree, peers []string) error {
	m := o.rec.Machine
	m.Name = o.owner.rec.Name
	c, err := r.Dial(ctx, m)
	if err != nil {
		return err
	}
	defer c.Close()
	cfg := &hostos.Config{
		Cluster:       r.Spec.Name,
		ClusterID:     r.State.ClusterID,
		Node:          o.owner.rec.Name,
		Role:          o.owner.rec.Role,
		Index:         o.owner.rec.Index,
		AdminUser:     m.SSH.User,
		Engine:        r.Spec.Engine,
		Logging:       r.Spec.Logging,
		Prune:         r.Spec.Prune,
		Hardening:     r.Spec.Hardening,
		Peers:         peers,
		OperatorCIDRs: r.Spec.TLS.AllowedCIDRs,
		BundleDir:     r.bundleDir(),
		MetricsAddr:   r.Spec.Engine.MetricsListen(o.rec.Advertise()),
		DockerDisk:    o.rec.DockerDisk,
	}
	facts, err := hostos.GatherFacts(ctx, c, hostos.ManagedPaths(cfg))
	if err != nil {
		return fmt.Errorf("facts: %w", err)
	}
	if cfg.MetricsAddr != "" && !facts.MetricsBindable(cfg.MetricsAddr) {
		cfg.MetricsAddr = ""
	}
	t := &hostos.Target{Name: m.Name, Comm: c, Facts: facts, Config: cfg, Log: r.log.With("host", m.Name, "generation", max(1, o.rec.Generation))}
	st, _ := hostos.StepByID("harden.firewall")
	done, err := st.Check(ctx, t)
	if err != nil || done {
		return err
	}
	t0 := time.Now()
	if err := st.Apply(ctx, t); err != nil {
		return err
	}
	r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: m.Name, Step: st.ID, Msg: fmt.Sprintf("generation %d lets its successor in", max(1, o.rec.Generation)), Took: time.Since(t0)})
	return nil
}

// batch is hosts whose steps run at once.
type batch struct {
	hosts   []*host
	rolling bool // members whose engine restarts: wait until they are back
	drain   bool // one of them is drained first (an engine upgrade)
}

// rollout splits hosts with pending steps into batches: first every host
// that is not yet a swarm member or keeps its engine running, together;
// then members whose engine restarts: managers one per batch, then workers
// in batches of a quarter of them (at least one, at most parallelism).
func rollout(hosts []*host, parallelism int) []batch {
	var free, managers, workers []*host
	for _, h := range hosts {
		restarts := false
		for _, id := range h.pending {
			restarts = restarts || hostos.RestartsEngine(id)
		}
		switch {
		case h.rec.NodeID == "" || !restarts:
			free = append(free, h)
		case h.rec.Role == spec.RoleManager:
			managers = append(managers, h)
		default:
			workers = append(workers, h)
		}
	}
	var out []batch
	if len(free) > 0 {
		out = append(out, batch{hosts: free})
	}
	for _, h := range managers {
		out = append(out, batch{hosts: []*host{h}, rolling: true, drain: needsDrain(h)})
	}
	size := plan.WorkerBatch(len(workers), parallelism)
	for len(workers) > 0 {
		n := min(size, len(workers))
		out = append(out, batch{hosts: workers[:n], rolling: true, drain: slices.ContainsFunc(workers[:n], needsDrain)})
		workers = workers[n:]
	}
	return out
}

// leaderLast orders the managers' rolling batches (one manager each) by
// swarm.LeaderLastRank: managers out of the raft first, then followers,
// the leader last.
func leaderLast(batches []batch, nodes map[string]dswarm.Node) {
	var idx []int
	var ms []*host
	for i, b := range batches {
		if b.rolling && len(b.hosts) == 1 && b.hosts[0].rec.Role == spec.RoleManager {
			idx = append(idx, i)
			ms = append(ms, b.hosts[0])
		}
	}
	swarm.SortLeaderLast(ms, nodes, func(h *host) (string, string) { return h.rec.Name, h.rec.NodeID })
	for j, i := range idx {
		batches[i].hosts = []*host{ms[j]}
		batches[i].drain = needsDrain(ms[j])
	}
}

func (r *run) batchFailed(hs []*host) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, h := range hs {
		if h.err != nil {
			return true
		}
	}
	return false
}

// prepareHost gathers the facts, builds the host's target and lists the steps
// whose Check says there is work.
func prepareHost(ctx context.Context, r *run, h *host, peers []string) error {
	var tlsFiles hostos.TLSFiles
	if hostos.NeedsCert(hostos.CertServer) {
		f, err := serverCert(r, h)
		if err != nil {
			return fmt.Errorf("server certificate: %w", err)
		}
		tlsFiles = f
	}
	cfg := &hostos.Config{
		Cluster:        r.Spec.Name,
		ClusterID:      r.State.ClusterID,
		Node:           h.rec.Name,
		Role:           h.rec.Role,
		Index:          h.rec.Index,
		AdminUser:      h.rec.SSH.User,
		Engine:         r.Spec.Engine,
		Logging:        r.Spec.Logging,
		Prune:          r.Spec.Prune,
		Hardening:      r.Spec.Hardening,
		TLS:            tlsFiles,
		Peers:          peers,
		OperatorCIDRs:  r.Spec.TLS.AllowedCIDRs,
		BundleDir:      r.bundleDir(),
		AllowDowngrade: r.AllowEngineDowngrade,
		MetricsAddr:    r.Spec.Engine.MetricsListen(h.rec.Advertise()),
		DockerDisk:     h.rec.DockerDisk,
	}
	t0 := time.Now()
	r.rep.Event(Event{Time: t0, Kind: StepStart, Host: h.rec.Name, Step: "host.facts"})
	facts, err := hostos.GatherFacts(ctx, h.comm, hostos.ManagedPaths(cfg))
	if err != nil {
		return fmt.Errorf("facts: %w", err)
	}
	r.rep.Event(Event{Time: time.Now(), Kind: StepDone, Host: h.rec.Name, Step: "host.facts", Took: time.Since(t0)})
	r.log.Debug("facts gathered", "host", h.rec.Name, "took", time.Since(t0))
	if cfg.MetricsAddr != "" && !facts.MetricsBindable(cfg.MetricsAddr) {
		// Binding an address the host lacks would keep the engine down.
		r.log.Warn("engine metrics endpoint left off: the host does not have that address (behind NAT?); set engine.metrics_addr to one it has, or \"0.0.0.0:9323\" with the firewall on",
			"host", h.rec.Name, "metrics_addr", cfg.MetricsAddr, "host_addresses", strings.Join(facts.Addrs, " "))
		cfg.MetricsAddr = ""
	}
	if err := r.checkSwarm(h, facts); err != nil {
		return &StepError{Host: h.rec.Name, Step: "swarm.check", Err: err}
	}
	if len(facts.InputDrop) > 0 {
		// ufw or an operator's own ruleset filters input as well: what
		// provision's firewall opens (2376, swarm ports) must pass there
		// too, or the engine and the swarm time out with no other clue.
		r.log.Warn("another firewall drops this host's input by default (ufw, or rules of the operator's own): allow 2376/tcp from the operator and 2377/tcp, 7946/tcp+udp, 4789/udp from the cluster's hosts there too, or disable it (provision's own nftables table already filters)",
			"host", h.rec.Name, "chains", strings.Join(facts.InputDrop, ", "))
	}
	t := &hostos.Target{Name: h.rec.Name, Comm: h.comm, Facts: facts, Config: cfg, Log: r.log.With("host", h.rec.Name)}
	// A fresh login with the host's own connection settings (pinned key,
	// bastion): harden.ssh's proof that a changed sshd still lets us in.
	t.Relogin = func(ctx context.Context) error {
		c, err := r.login(ctx, h.rec.Machine)
		if err != nil {
			return fmt.Errorf("fresh ssh login: %w", err)
		}
		defer c.Close()
		if _, err := c.Run(ctx, "true", nil); err != nil {
			return fmt.Errorf("fresh ssh login: run true: %w", err)
		}
		return nil
	}
	h.target = t
	h.steps = hostos.Steps()
	h.pending = nil
	for _, st := range h.steps {
		done, err := st.Check(ctx, t)
		if err != nil {
			return &StepError{Host: h.rec.Name, Step: st.ID, Err: err}
		}
		if !done {
			h.pending = append(h.pending, st.ID)
		}
	}
	return nil
}

// runSteps runs the host's steps in order, checking each again against the
// facts the earlier steps updated. An interrupt stops it between steps.
func runSteps(ctx context.Context, r *run, h *host) error {
	t := h.target
	for _, st := range h.steps {
		if r.stopped() {
			return errStopped
		}
		done, err := st.Check(ctx, t)
		if err != nil {
			return &StepError{Host: h.rec.Name, Step: st.ID, Err: err}
		}
		if done {
			r.markStep(h, st.ID)
			continue
		}
		s0 := time.Now()
		r.rep.Event(Event{Time: s0, Kind: StepStart, Host: h.rec.Name, Step: st.ID})
		if err := st.Apply(ctx, t); err != nil {
			return &StepError{Host: h.rec.Name, Step: st.ID, Err: err}
		}
		h.changed = true
		h.restarted = h.restarted || st.RestartsEngine
		r.markStep(h, st.ID)
		r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: h.rec.Name, Step: st.ID, Took: time.Since(s0)})
		r.log.Info("step applied", "host", h.rec.Name, "step", st.ID, "took", time.Since(s0))
	}
	return nil
}

// hostDone records a host whose steps all hold. State is saved when the
// record changed (a host that was already converged costs no write: the
// apply saves once at its end anyway).
func hostDone(r *run, h *host) error {
	r.mu.Lock()
	dirty := h.changed
	for _, st := range h.steps {
		if h.rec.Steps[st.ID] == "" {
			if h.rec.Steps == nil {
				h.rec.Steps = map[string]string{}
			}
			h.rec.Steps[st.ID] = time.Now().UTC().Format(time.RFC3339)
			dirty = true
		}
	}
	if t := h.target; t != nil && t.Facts != nil && t.Facts.Engine != "" {
		if h.rec.Engine != t.Facts.Engine {
			h.rec.Engine = t.Facts.Engine
			dirty = true
		}
		if v := t.Facts.Packages[t.Config.Engine.Package]; v != "" && h.rec.EnginePackage != v {
			h.rec.EnginePackage = v
			dirty = true
		}
	}
	r.mu.Unlock()
	if !dirty {
		return nil // nothing to record: a no-op apply writes state once, at the end
	}
	return r.save()
}

func (r *run) markStep(h *host, id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if h.rec.Steps == nil {
		h.rec.Steps = map[string]string{}
	}
	h.rec.Steps[id] = time.Now().UTC().Format(time.RFC3339)
}

func (r *run) bundleDir() string {
	if r.Spec.Engine.BundleDir != "" {
		return r.Spec.Engine.BundleDir
	}
	return filepath.Join(r.Store.Dir(), "bundles")
}

// peers lists every member's advertise address, sorted: every machine
// state records (including hosts that failed in this run: a host whose SSH
// connect failed is still a swarm member, and dropping it from the others'
// firewalls would cut it off until an apply succeeds; and machines about to
// be removed, until they are) and the earlier generations of replaced
// machines until they have left.
func (r *run) peers() []string {
	r.mu.Lock()
	var out []string
	for _, m := range r.State.Machines {
		if a := m.Advertise(); a != "" {
			out = append(out, a)
		}
		for _, old := range m.Retiring {
			if a := old.Advertise(); a != "" && !old.Destroyed {
				out = append(out, a)
			}
		}
	}
	r.mu.Unlock()
	sort.Strings(out)
	return slices.Compact(out)
}

// checkSwarm refuses a host whose engine is a member of a swarm that is
// not this cluster's (facts read its swarm node certificate) before any
// step changes it, unless the operator said it may leave that swarm.
// Members of this swarm, or of an earlier swarm of this cluster (they leave
// it in the swarm phase), pass.
func (r *run) checkSwarm(h *host, f *hostos.Facts) error {
	sm := f.Swarm
	if sm == nil || r.LeaveOtherSwarm {
		return nil
	}
	r.mu.Lock()
	ours, retired := r.State.Swarm.ID, slices.Clone(r.State.Swarm.Retired)
	r.mu.Unlock()
	var info drivers.Info
	if db, ok := r.Spec.Driver(h.rec.Driver); ok {
		info, _ = drivers.Lookup(db.Type)
	}
	switch {
	case ours != "" && sm.ClusterID == ours, slices.Contains(retired, sm.ClusterID):
		return nil
	case ours == "" && !info.NeedsHosts:
		// A machine this cluster made: a swarm on it is one an earlier,
		// interrupted run formed; the swarm phase checks its label.
		return nil
	}
	return fmt.Errorf("%w: the host's engine is %s node %s of swarm %s, not of this cluster's swarm%s; provision changes nothing on it. If it belongs to this cluster now, run apply with --leave-other-swarm: it leaves that swarm, then joins this one",
		swarm.ErrOtherSwarm, sm.Role, sm.NodeID, sm.ClusterID, map[bool]string{true: "", false: " " + ours}[ours == ""])
}

// nodeCertDir is where a node's server cert and key are kept (0600): the
// operator re-uploads them when a host lost them and renews them before expiry.
func (r *run) nodeCertDir(name string) string {
	return filepath.Join(r.Store.PKIDir(), "nodes", name)
}

// serverCert returns the node's TLS files, issuing a new certificate when
// there is none or the stored one fails pki's CheckServer (another CA, not
// server-only, inside the renewal window, names no longer covering the
// node) or was issued before a `provision rotate certs` began. During a CA
// rotation's reissue phase a new certificate carries the new CA
// cross-signed by the old one; afterwards the stored one is the leaf alone.
func serverCert(r *run, h *host) (hostos.TLSFiles, error) {
	dir := r.nodeCertDir(h.rec.Name)
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	names := certNames(r, h)
	r.mu.Lock()
	reissue := r.State.PKI.ReissueBefore
	r.mu.Unlock()
	certPEM, cerr := os.ReadFile(certPath)
	keyPEM, kerr := pki.ReadPrivate(keyPath)
	if kerr != nil && !errors.Is(kerr, fs.ErrNotExist) {
		// Readable by others: whoever read it can pass as this node's
		// engine. Not silently replaced: the operator decides (chmod, or
		// `provision rotate ca` if it may have leaked).
		return hostos.TLSFiles{}, fmt.Errorf("node key: %w", kerr)
	}
	if cerr == nil && kerr == nil {
		err := r.ca.CheckServer(certPEM, keyPEM, names, time.Now(), r.renewBefore())
		if err == nil && pki.IssuedBefore(certPEM, reissue) {
			err = errors.New("was issued before `provision rotate certs`")
		}
		if err == nil {
			if leaf := pki.Leaf(certPEM); r.cross == nil && len(leaf) != len(certPEM) {
				// The rotation is over: no cross-signed CA any more.
				if err := atomicfile.Write(certPath, leaf, 0o600); err != nil {
					return hostos.TLSFiles{}, err
				}
				certPEM = leaf
			}
			r.recordCert(h, certPEM)
			return hostos.TLSFiles{CA: r.trust, Cert: certPEM, Key: redact.Secret(keyPEM)}, nil
		}
		r.log.Info("issuing a new server certificate", "host", h.rec.Name, "reason", "the stored one "+err.Error())
	}
	b, err := r.ca.Server(h.rec.Name, names, time.Duration(r.Spec.TLS.ValidityHours)*time.Hour)
	if err != nil {
		return hostos.TLSFiles{}, err
	}
	chain := append(append([]byte(nil), b.CertPEM...), r.cross...)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return hostos.TLSFiles{}, err
	}
	if err := atomicfile.Write(keyPath, b.KeyPEM, 0o600); err != nil {
		return hostos.TLSFiles{}, err
	}
	if err := atomicfile.Write(certPath, chain, 0o600); err != nil {
		return hostos.TLSFiles{}, err
	}
	r.mu.Lock()
	h.rec.CertSerial, h.rec.CertNotAfter = b.Serial, b.NotAfter
	r.mu.Unlock()
	return hostos.TLSFiles{CA: r.trust, Cert: chain, Key: b.KeyPEM}, nil
}

// recordCert records a node certificate's serial and expiry in state (for
// plan and status) when they are not recorded yet.
func (r *run) recordCert(h *host, certPEM []byte) {
	serial, notAfter, _, err := pki.Inspect(certPEM)
	if err != nil {
		return
	}
	r.mu.Lock()
	h.rec.CertSerial, h.rec.CertNotAfter = serial, notAfter
	r.mu.Unlock()
}

func certNames(r *run, h *host) []string {
	names := []string{h.rec.Name}
	if h.rec.Address != "" {
		names = append(names, h.rec.Address)
	}
	if h.rec.PrivateAddress != "" {
		names = append(names, h.rec.PrivateAddress)
	}
	names = append(names, r.Spec.TLS.ExtraNames...)
	return names
}
