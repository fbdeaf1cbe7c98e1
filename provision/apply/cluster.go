package apply

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/docker/docker/api/types/filters"
	dswarm "github.com/docker/docker/api/types/swarm"
	"golang.org/x/sync/errgroup"

	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
	"github.com/provision/provision/provision/swarm"
)

// ErrQuorumLost means no manager of the recorded swarm answers as a manager.
var ErrQuorumLost = errors.New("swarm quorum lost")

func (e *Engine) clientTLS() (*tls.Config, error) {
	return pki.ClientTLS(e.Store.PKIDir())
}

// engines opens an engine API client (mutual TLS, 2376) for every live host,
// through the bastion's tunnel for hosts behind one.
func (e *Engine) engines(ctx context.Context, hosts []*host) error {
	cfg, err := e.clientTLS()
	if err != nil {
		return err
	}
	for _, h := range hosts {
		if h.engine != nil {
			continue
		}
		en, err := e.ConnectEngine(ctx, h.rec.Machine, cfg)
		if err != nil {
			return err
		}
		h.engine = en
	}
	return nil
}

// swarm forms or completes the swarm: the first manager inits it (unless a
// recorded manager already leads one), further managers join one at a time,
// then workers join in parallel. Nodes of replaced or lost machines are
// removed from the node list.
func (e *Engine) swarm(ctx context.Context) error {
	hosts := e.live()
	if err := e.engines(ctx, hosts); err != nil {
		return err
	}
	var managers, workers []*host
	for _, h := range hosts {
		if h.rec.Role == spec.RoleManager {
			managers = append(managers, h)
		} else {
			workers = append(workers, h)
		}
	}
	if len(managers) == 0 {
		return errors.New("no manager host is available: cannot form or reach the swarm")
	}
	// Find a manager that already runs the recorded swarm.
	var leader *host
	var local swarm.Local
	for _, h := range managers {
		l, err := h.engine.Inspect(ctx)
		if err != nil {
			e.fail(h, "swarm.inspect", err)
			continue
		}
		if l.State == dswarm.LocalNodeStateActive && l.Manager && (e.State.Swarm.ID == "" || l.ClusterID == e.State.Swarm.ID) {
			leader, local = h, l
			break
		}
	}
	if leader == nil {
		if e.State.Swarm.ID != "" && !e.ForceNewCluster {
			if e.anyManagerReady() {
				return fmt.Errorf("%w: no recorded manager answers as a manager of swarm %s; if the surviving managers cannot regain quorum, re-run apply with --force-new-cluster to re-form the swarm on one of them (services are kept)", ErrQuorumLost, e.State.Swarm.ID)
			}
		}
		first := e.firstLiveManager(managers)
		if first == nil {
			return errors.New("every manager host failed: cannot form the swarm")
		}
		l, err := first.engine.Inspect(ctx)
		if err != nil {
			return err
		}
		if e.State.Swarm.ID != "" && e.ForceNewCluster && l.State == dswarm.LocalNodeStateActive {
			e.note(first.rec.Name, "re-forming the swarm on this manager (--force-new-cluster)")
			l, err = first.engine.ForceNewCluster(ctx, first.rec.Advertise())
		} else {
			l, err = first.engine.Init(ctx, first.rec.Advertise())
			if err == nil {
				first.changed = true
				e.Report.Event(Event{Time: time.Now(), Kind: StepChange, Host: first.rec.Name, Step: "swarm.init"})
			}
		}
		if err != nil {
			e.fail(first, "swarm.init", err)
			return err
		}
		leader, local = first, l
	}
	e.mu.Lock()
	e.State.Swarm.ID = local.ClusterID
	leader.rec.NodeID = local.NodeID
	leader.rec.Status = state.StatusReady
	e.mu.Unlock()
	if err := e.save(); err != nil {
		return err
	}
	// One node list tells which hosts are already Ready members: a converged
	// cluster costs this call and nothing else.
	nodes, err := leader.engine.Nodes(ctx)
	if err != nil {
		return err
	}
	e.nodes = map[string]dswarm.Node{}
	for _, n := range nodes {
		e.nodes[n.ID] = n
	}
	member := func(h *host, role dswarm.NodeRole) bool {
		n, ok := e.nodes[h.rec.NodeID]
		return ok && h.rec.NodeID != "" && n.Status.State == dswarm.NodeStateReady && n.Spec.Role == role
	}
	var tokens *swarm.Tokens
	getTokens := func() (swarm.Tokens, error) {
		e.mu.Lock()
		defer e.mu.Unlock()
		if tokens == nil {
			t, err := leader.engine.Tokens(ctx)
			if err != nil {
				return swarm.Tokens{}, err
			}
			tokens = &t
		}
		return *tokens, nil
	}
	joined := []string{leader.rec.Advertise()}
	changed := false
	// Managers one at a time, each Ready before the next joins, so quorum is
	// never at risk.
	for _, h := range managers {
		if h == leader || h.err != nil {
			continue
		}
		if e.stopped() {
			break
		}
		if !member(h, dswarm.NodeRoleManager) {
			t, err := getTokens()
			if err == nil {
				err = e.join(ctx, h, leader, joined, t, true)
			}
			if err != nil {
				e.fail(h, "swarm.join", err)
				continue
			}
			changed = true
		}
		joined = append(joined, h.rec.Advertise())
	}
	// Workers in parallel.
	var pending []*host
	for _, h := range workers {
		if !member(h, dswarm.NodeRoleWorker) {
			pending = append(pending, h)
		}
	}
	if len(pending) > 0 {
		changed = true
		if err := e.each(ctx, pending, "swarm.join", func(ctx context.Context, h *host) error {
			t, err := getTokens()
			if err != nil {
				return err
			}
			return e.join(ctx, h, leader, joined, t, false)
		}); err != nil {
			return err
		}
	}
	if changed || len(e.staleNodes) > 0 {
		if nodes, err = leader.engine.Nodes(ctx); err != nil {
			return err
		}
		for _, n := range nodes {
			e.nodes[n.ID] = n
		}
	}
	if err := e.removeStale(ctx, leader, nodes); err != nil {
		return err
	}
	return e.save()
}

func (e *Engine) anyManagerReady() bool {
	for _, m := range e.State.Machines {
		if m.Role == spec.RoleManager && m.NodeID != "" {
			return true
		}
	}
	return false
}

func (e *Engine) firstLiveManager(managers []*host) *host {
	for _, h := range managers {
		if h.err == nil {
			return h
		}
	}
	return nil
}

func (e *Engine) join(ctx context.Context, h, leader *host, managers []string, t swarm.Tokens, manager bool) error {
	before, err := h.engine.Inspect(ctx)
	if err != nil {
		return err
	}
	if before.State == dswarm.LocalNodeStatePending {
		// A join an interrupted apply started goes on in the engine: let it
		// finish rather than leave and join again (which restarts the wait).
		e.note(h.rec.Name, "a join started earlier is in progress: waiting for it")
		before = e.settleJoin(ctx, h)
	}
	e.Report.Event(Event{Time: time.Now(), Kind: StepStart, Host: h.rec.Name, Step: "swarm.join"})
	l, err := h.engine.Join(ctx, e.State.Swarm.ID, h.rec.Advertise(), managers, t, manager)
	if err != nil && strings.Contains(err.Error(), "will continue in the background") {
		// The engine's own 20 s wait ended; the join itself goes on.
		if l = e.settleJoin(ctx, h); l.State == dswarm.LocalNodeStateActive {
			err = nil
		}
	}
	if err != nil {
		return err
	}
	if before.State != dswarm.LocalNodeStateActive {
		h.changed = true
		e.Report.Event(Event{Time: time.Now(), Kind: StepChange, Host: h.rec.Name, Step: "swarm.join"})
	}
	if err := leader.engine.WaitReady(ctx, []string{l.NodeID}); err != nil {
		return err
	}
	e.mu.Lock()
	h.rec.NodeID = l.NodeID
	h.rec.Status = state.StatusReady
	e.mu.Unlock()
	return e.save()
}

// settleJoin waits up to two minutes while the host's engine reports a join
// in progress, and returns its last view of itself.
func (e *Engine) settleJoin(ctx context.Context, h *host) swarm.Local {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var l swarm.Local
	poll(ctx, func() (bool, error) {
		got, err := h.engine.Inspect(ctx)
		if err != nil {
			return false, nil
		}
		l = got
		return l.State != dswarm.LocalNodeStatePending, nil
	})
	return l
}

// removeStale removes swarm nodes that belong to no machine we keep: nodes of
// replaced machines and nodes that are down (or unknown) and whose hostname
// is one of the cluster's machine names.
func (e *Engine) removeStale(ctx context.Context, leader *host, nodes []dswarm.Node) error {
	keep := map[string]bool{}
	e.mu.Lock()
	for _, m := range e.State.Machines {
		if m.NodeID != "" {
			keep[m.NodeID] = true
		}
	}
	stale := map[string]bool{}
	for _, id := range e.staleNodes {
		stale[id] = true
	}
	e.mu.Unlock()
	for _, n := range nodes {
		if keep[n.ID] {
			continue
		}
		ours := strings.HasPrefix(n.Description.Hostname, e.Spec.Name+"-")
		// A dead node is Down, or Unknown when leadership moved since it
		// died (after --force-new-cluster it stays Unknown for a while).
		dead := n.Status.State == dswarm.NodeStateDown || n.Status.State == dswarm.NodeStateUnknown
		if stale[n.ID] || (ours && dead) {
			// A manager still in the raft is demoted first; one the raft no
			// longer has (after --force-new-cluster) cannot be demoted, and
			// is removed as it is.
			if n.Spec.Role == dswarm.NodeRoleManager && n.ManagerStatus != nil {
				if err := e.demote(ctx, leader.engine, n.ID); err != nil {
					return err
				}
			}
			if err := leader.engine.Remove(ctx, n.ID); err != nil {
				return err
			}
			e.note(n.Description.Hostname, "removed dead swarm node "+n.ID)
		}
	}
	return nil
}

// OverlayName is the cluster's attachable overlay network.
func OverlayName(cluster string) string { return cluster + "-overlay" }

// labels sets provision's and the spec's labels on every node, and keeps the
// cluster's overlay network (encrypted when the spec says so): one call on
// the leader when nothing changes.
func (e *Engine) labels(ctx context.Context) error {
	leader := e.leader()
	if leader == nil {
		return nil
	}
	name := OverlayName(e.Spec.Name)
	changed, err := leader.engine.EnsureOverlay(ctx, name, e.State.ClusterID, e.Spec.Hardening.OverlayEncryption)
	if err != nil {
		e.fail(leader, "swarm.network", err)
	} else if changed {
		leader.changed = true
		e.Report.Event(Event{Time: time.Now(), Kind: StepChange, Host: leader.rec.Name, Step: "swarm.network", Msg: fmt.Sprintf("overlay network %s (encrypted: %v)", name, e.Spec.Hardening.OverlayEncryption)})
	}
	for _, h := range e.live() {
		if h.rec.NodeID == "" {
			continue
		}
		want := map[string]string{
			swarm.LabelRole: h.rec.Role,
			swarm.LabelPool: h.rec.Pool,
			swarm.LabelName: h.rec.Name,
		}
		for k, v := range h.pool.Labels {
			want[k] = v
		}
		if n, ok := e.nodes[h.rec.NodeID]; ok && hasLabels(n.Spec.Labels, want) {
			continue
		}
		changed, err := leader.engine.SetLabels(ctx, h.rec.NodeID, want)
		if err != nil {
			e.fail(h, "swarm.labels", err)
			continue
		}
		if changed {
			h.changed = true
			e.Report.Event(Event{Time: time.Now(), Kind: StepChange, Host: h.rec.Name, Step: "swarm.labels"})
		}
	}
	return nil
}

// leader returns a live manager that is in the swarm.
func (e *Engine) leader() *host {
	for _, h := range e.live() {
		if h.rec.Role == spec.RoleManager && h.rec.NodeID != "" && h.engine != nil {
			return h
		}
	}
	return nil
}

// remove drains and removes machines the spec no longer wants, then destroys
// their hosts: workers first, one at a time (each drained node's tasks Running
// elsewhere before the next goes), then managers one at a time in a
// quorum-safe order (demoted first, so quorum shrinks cleanly).
func (e *Engine) remove(ctx context.Context) error {
	var workers, managers []plan.Action
	for _, a := range e.plan.Actions {
		if a.Kind != plan.Remove {
			continue
		}
		if a.Role == spec.RoleManager {
			managers = append(managers, a)
		} else {
			workers = append(workers, a)
		}
	}
	if len(workers)+len(managers) == 0 {
		return nil
	}
	leader := e.leader()
	var errs []error
	removeOne := func(ctx context.Context, a plan.Action) error {
		rec := a.Recorded
		inSwarm := false
		if rec != nil && rec.NodeID != "" {
			e.mu.Lock()
			_, inSwarm = e.nodes[rec.NodeID]
			e.mu.Unlock()
		}
		if inSwarm && leader != nil {
			if a.Role == spec.RoleManager {
				if err := canDemote(e.nodeList(), rec.NodeID); err != nil {
					return err
				}
				e.note(a.Machine, "demoting")
				if err := e.demote(ctx, leader.engine, rec.NodeID); err != nil {
					return err
				}
			}
			e.note(a.Machine, "draining")
			if err := leader.engine.Drain(ctx, rec.NodeID); err != nil {
				return err
			}
			e.waitRescheduled(ctx, leader.engine, a.Machine)
			if err := leader.engine.Remove(ctx, rec.NodeID); err != nil {
				return err
			}
		}
		m := a.Observed
		if rec != nil {
			m = &rec.Machine
		}
		if m != nil {
			d, err := e.driver(m.Driver)
			if err != nil {
				return err
			}
			if err := d.Destroy(ctx, e.owned(*m)); err != nil {
				return fmt.Errorf("destroy: %w", err)
			}
		}
		e.mu.Lock()
		e.State.Remove(a.Machine)
		e.stats.Removed++
		e.mu.Unlock()
		e.Report.Event(Event{Time: time.Now(), Kind: StepChange, Host: a.Machine, Step: "machine.remove"})
		if err := e.save(); err != nil {
			return err
		}
		if leader != nil {
			// The swarm's view after the removal, for the next quorum check.
			if ns, err := leader.engine.Nodes(ctx); err == nil {
				e.setNodes(ns)
			}
		}
		return nil
	}
	// Workers one at a time: each drain reschedules its tasks onto nodes
	// that stay before the next node stops serving.
	for _, a := range workers {
		if e.stopped() {
			return nil
		}
		e.Report.Event(Event{Time: time.Now(), Kind: StepStart, Host: a.Machine, Step: "machine.remove"})
		if err := removeOne(ctx, a); err != nil {
			errs = append(errs, &StepError{Host: a.Machine, Step: "machine.remove", Err: err})
		}
	}
	e.mu.Lock()
	managers = orderManagerRemovals(managers, e.nodes)
	e.mu.Unlock()
	for _, a := range managers {
		if e.stopped() {
			return errors.Join(errs...)
		}
		e.Report.Event(Event{Time: time.Now(), Kind: StepStart, Host: a.Machine, Step: "machine.remove"})
		if err := removeOne(ctx, a); err != nil {
			errs = append(errs, &StepError{Host: a.Machine, Step: "machine.remove", Err: err})
			break // never remove a second manager after a failure
		}
	}
	return errors.Join(errs...)
}

func (e *Engine) setNodes(ns []dswarm.Node) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.nodes = map[string]dswarm.Node{}
	for _, n := range ns {
		e.nodes[n.ID] = n
	}
}

func (e *Engine) nodeList() []dswarm.Node {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]dswarm.Node, 0, len(e.nodes))
	for _, n := range e.nodes {
		out = append(out, n)
	}
	return out
}

// orderManagerRemovals puts managers to remove in a quorum-safe order: nodes
// already out of the raft (down, unreachable, or not in the swarm) first,
// then reachable followers, the current leader (as nodes report it) last, so
// that leadership moves at most once.
func orderManagerRemovals(as []plan.Action, nodes map[string]dswarm.Node) []plan.Action {
	rank := func(a plan.Action) int {
		if a.Recorded == nil || a.Recorded.NodeID == "" {
			return 0
		}
		n, ok := nodes[a.Recorded.NodeID]
		switch {
		case !ok || n.ManagerStatus == nil || n.ManagerStatus.Reachability != dswarm.ReachabilityReachable:
			return 0
		case n.ManagerStatus.Leader:
			return 2
		default:
			return 1
		}
	}
	out := slices.Clone(as)
	slices.SortStableFunc(out, func(a, b plan.Action) int {
		if r := rank(a) - rank(b); r != 0 {
			return r
		}
		return strings.Compare(a.Machine, b.Machine)
	})
	return out
}

// canDemote refuses to demote a reachable manager when the managers left
// would not hold a majority of the raft: demoting would lose quorum. Dead
// managers must leave first (the swarm phase removes them).
func canDemote(nodes []dswarm.Node, id string) error {
	total, reachable := 0, 0
	target := false
	for _, n := range nodes {
		if n.ManagerStatus == nil {
			continue
		}
		total++
		up := n.ManagerStatus.Reachability == dswarm.ReachabilityReachable
		if up {
			reachable++
		}
		if n.ID == id {
			target = true
			if !up {
				return nil // already out of the majority: removing it helps
			}
		}
	}
	if !target {
		return nil // not a manager (any more)
	}
	if total-1 == 0 {
		return errors.New("it is the last manager: the swarm would have none")
	}
	if reachable-1 < (total-1)/2+1 {
		return fmt.Errorf("demoting it would lose quorum: %d of %d managers reachable, %d needed after it leaves", reachable, total, (total-1)/2+1)
	}
	return nil
}

// demote turns a manager node into a worker and waits until the swarm has
// taken it out of the raft (it has no manager status any more): only then
// can it be removed. Errors while leadership moves are retried.
func (e *Engine) demote(ctx context.Context, en *swarm.Engine, id string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last error
	err := poll(ctx, func() (bool, error) {
		n, _, err := en.NodeInspectWithRaw(ctx, id)
		if err != nil {
			last = err
			return false, nil
		}
		if n.ManagerStatus == nil && n.Spec.Role == dswarm.NodeRoleWorker {
			return true, nil
		}
		if n.Spec.Role != dswarm.NodeRoleWorker {
			if err := en.Demote(ctx, id); err != nil {
				last = err
			}
		}
		return false, nil
	})
	if err != nil {
		if last != nil {
			return fmt.Errorf("demote %s: %w (last: %v)", id, err, last)
		}
		return fmt.Errorf("demote %s: %w", id, err)
	}
	return nil
}

// waitRescheduled waits, after a drain, until every task the swarm wants
// running is Running again (the drained node's tasks restarted elsewhere), so
// the next node to go does not take a service below its replicas. A task
// that cannot start anywhere does not block the removal for long: after a
// minute it is named in a note and the removal goes on.
func (e *Engine) waitRescheduled(ctx context.Context, en *swarm.Engine, machine string) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var waiting []string
	err := poll(ctx, func() (bool, error) {
		ts, err := en.TaskList(ctx, dswarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("desired-state", "running"))})
		if err != nil {
			return false, nil
		}
		waiting = waiting[:0]
		for _, t := range ts {
			if t.Status.State != dswarm.TaskStateRunning {
				waiting = append(waiting, t.ID+" ("+string(t.Status.State)+")")
			}
		}
		return len(waiting) == 0, nil
	})
	if err != nil && len(waiting) > 0 {
		e.note(machine, fmt.Sprintf("drained; %d tasks are not running elsewhere yet: %s", len(waiting), strings.Join(waiting, ", ")))
	}
}

// poll waits with the engine's cadence: 100 ms, doubling up to a second.
func poll(ctx context.Context, fn func() (bool, error)) error {
	return swarm.Poll(ctx, 100*time.Millisecond, time.Second, fn)
}

// Destroy removes every machine recorded in state and every stray the drivers
// find with the cluster's tag, then each driver's shared resources.
func (e *Engine) Destroy(ctx context.Context, p *plan.Plan) error {
	e.init()
	defer e.Close()
	if err := e.removeBalancers(ctx); err != nil { // lb.go
		return err
	}
	e.leaveSwarm(ctx, p)
	mu := &e.mu
	g := new(errgroup.Group)
	g.SetLimit(e.Parallelism)
	var errs []error
	for _, a := range p.Actions {
		m := a.Observed
		if a.Recorded != nil {
			m = &a.Recorded.Machine
		}
		if m == nil {
			continue
		}
		d, err := e.driver(m.Driver)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.Machine, err))
			continue
		}
		mach := e.owned(*m)
		g.Go(func() error {
			t0 := time.Now()
			err := d.Destroy(ctx, mach)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, &StepError{Host: mach.Name, Step: "machine.destroy", Err: err})
				e.Report.Event(Event{Time: time.Now(), Kind: StepFail, Host: mach.Name, Step: "machine.destroy", Err: err.Error()})
				return nil
			}
			e.State.Remove(mach.Name)
			e.Report.Event(Event{Time: time.Now(), Kind: StepChange, Host: mach.Name, Step: "machine.destroy", Took: time.Since(t0)})
			return nil
		})
	}
	_ = g.Wait()
	if err := e.save(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for name, d := range e.Drivers {
		if td, ok := d.(interface {
			Teardown(context.Context, string) error
		}); ok {
			if err := td.Teardown(ctx, e.State.ClusterID); err != nil {
				errs = append(errs, fmt.Errorf("driver %s: teardown: %w", name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// leaveSwarm makes every reachable engine leave the swarm before its machine
// is destroyed. Machines that outlive destroy (generic hosts) are then free to
// join another cluster; for the others it costs one short call. Best effort:
// an engine that does not answer is destroyed anyway.
func (e *Engine) leaveSwarm(ctx context.Context, p *plan.Plan) {
	cfg, err := e.clientTLS()
	if err != nil {
		return
	}
	g := new(errgroup.Group)
	g.SetLimit(e.Parallelism)
	for _, a := range p.Actions {
		if a.Recorded == nil || a.Recorded.NodeID == "" || a.Recorded.Address == "" {
			continue
		}
		m := a.Recorded.Machine
		g.Go(func() error {
			ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			en, err := e.ConnectEngine(ctx, m, cfg)
			if err != nil {
				return nil
			}
			defer en.Close()
			if err := en.SwarmLeave(ctx, true); err != nil {
				e.Log.Debug("swarm leave before destroy", "host", m.Name, "err", err)
			}
			return nil
		})
	}
	_ = g.Wait()
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}
