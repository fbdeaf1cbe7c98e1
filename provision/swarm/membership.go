package swarm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/filters"
	dswarm "github.com/docker/docker/api/types/swarm"

	"github.com/provision/provision/provision/redact"
)

// Timeouts bound every wait membership makes. Zero fields take the defaults.
type Timeouts struct {
	Join       time.Duration // a join, including one the engine goes on with in the background (2m)
	Ready      time.Duration // a joined node Ready, and Reachable for a manager (2m)
	Demote     time.Duration // a demoted manager out of the raft (2m)
	Drain      time.Duration // a drained node's tasks stopped on it (2m)
	Reschedule time.Duration // the drained tasks Running elsewhere (1m; then a note, not an error)
	Leave      time.Duration // a retired host's engine leaving (30s; best effort)
	Member     time.Duration // a restarted engine back in the swarm (3m)
}

func (t Timeouts) withDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Join, 2*time.Minute)
	def(&t.Ready, 2*time.Minute)
	def(&t.Demote, 2*time.Minute)
	def(&t.Drain, 2*time.Minute)
	def(&t.Reschedule, time.Minute)
	def(&t.Leave, 30*time.Second)
	def(&t.Member, 3*time.Minute)
	return t
}

// Membership changes one swarm's members through the managers it knows.
// Manager changes (join, demote, removal) happen one at a time and each
// demotion is checked against the raft's majority first, so no sequence of
// calls can take a majority of managers away at once. It is safe for
// concurrent use: workers join and leave in parallel.
type Membership struct {
	// ClusterID is the swarm's ID once known (after Bootstrap).
	ClusterID string
	Timeouts  Timeouts
	// Notify receives progress lines of long waits (host, message).
	Notify func(host, msg string)
	// UnlockKeys, when set, returns the unlock keys provision holds
	// (newest first): a manager found locked (autolock, after a restart)
	// is unlocked with them.
	UnlockKeys func() []redact.Secret

	mu       sync.Mutex
	via      *Host   // the manager calls go through
	managers []*Host // managers known to be in the swarm, for when via leaves
	addrs    []string
	nodes    map[string]dswarm.Node
	tokens   *Tokens
	// change serializes manager changes.
	change sync.Mutex
}

func (m *Membership) timeouts() Timeouts { return m.Timeouts.withDefaults() }

func (m *Membership) wait(host, what string, timeout time.Duration) Wait {
	return Wait{Host: host, What: what, Timeout: timeout, Progress: m.Notify}
}

func (m *Membership) note(host, msg string) {
	if m.Notify != nil {
		m.Notify(host, msg)
	}
}

// Via is the manager calls go through (nil before Bootstrap).
func (m *Membership) Via() *Host {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.via
}

// AddManager records h as a manager of the swarm that calls may go through.
func (m *Membership) AddManager(h *Host) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.addManager(h)
}

func (m *Membership) addManager(h *Host) {
	if !slices.Contains(m.managers, h) {
		m.managers = append(m.managers, h)
	}
	if h.Advertise != "" && !slices.Contains(m.addrs, h.Advertise) {
		m.addrs = append(m.addrs, h.Advertise)
	}
	if m.via == nil {
		m.via = h
	}
}

// dropManager forgets the managers with node nodeID (or host h): they are
// leaving. Calls move to another manager. It returns what it dropped, for
// putting back when the change is refused.
func (m *Membership) dropManager(nodeID string, h *Host) []*Host {
	m.mu.Lock()
	defer m.mu.Unlock()
	gone := func(x *Host) bool { return x == h || (nodeID != "" && x.NodeID == nodeID) }
	var dropped []*Host
	for _, x := range m.managers {
		if gone(x) {
			dropped = append(dropped, x)
		}
	}
	m.managers = slices.DeleteFunc(m.managers, gone)
	for _, x := range dropped {
		m.addrs = slices.DeleteFunc(m.addrs, func(a string) bool { return a == x.Advertise })
	}
	if m.via != nil && gone(m.via) {
		m.via = nil
		if len(m.managers) > 0 {
			m.via = m.managers[0]
		}
	}
	return dropped
}

func (m *Membership) restore(hs []*Host) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, h := range hs {
		m.addManager(h)
	}
}

// Form says how Bootstrap may form the swarm when no manager runs it.
type Form struct {
	ClusterID string // the recorded swarm ID ("" before the first init)
	// Recorded says state records nodes of that swarm: when none of the
	// managers answers as its manager, quorum is lost, not a new cluster.
	Recorded bool
	// ForceNewCluster re-forms the swarm on the first manager that is still
	// in it (its raft, services, secrets and configs kept).
	ForceNewCluster bool
	// Label is written on a new swarm (LabelCluster) so that provision can
	// tell its own swarm from another one.
	Label string
	// Stale are earlier swarms of this cluster: a manager still in one
	// leaves it (its swarm was lost and replaced).
	Stale []string
	// LeaveOther lets a manager that runs another swarm leave it; without
	// it such a manager is refused (Failed, ErrOtherSwarm).
	LeaveOther bool
	// Before, when set, is called with the manager a swarm is about to be
	// re-formed on (--force-new-cluster): the raft backup.
	Before func(ctx context.Context, h *Host) error
	// Unseal, when set, writes an autolocked manager's node key in the
	// clear and restarts its engine (see nodekey.go): called when Docker
	// refuses to re-form the swarm on it because its raft is encrypted.
	Unseal func(ctx context.Context, h *Host) error
}

// theirs says whether an active manager runs another swarm than the
// recorded one (or, with none recorded, than one labelled for this
// cluster). A manager without quorum cannot read its cluster: not another.
func (f Form) theirs(ctx context.Context, h *Host, l Local) bool {
	if !l.Active() || !l.Manager || l.ClusterID == "" {
		return false
	}
	if f.ClusterID != "" {
		return l.ClusterID != f.ClusterID
	}
	sw, err := h.API.SwarmInspect(ctx)
	return err == nil && f.Label != "" && sw.Spec.Annotations.Labels[LabelCluster] != f.Label
}

// ErrQuorumLost means no recorded manager answers as a manager.
var ErrQuorumLost = errors.New("swarm quorum lost")

// Formed is what Bootstrap did.
type Formed struct {
	Via    *Host // the manager calls go through
	Local  Local // its view of itself
	Inited bool  // a new swarm was made on Via
	Forced bool  // the swarm was re-formed on Via with --force-new-cluster
	// Failed are the managers whose engine did not answer.
	Failed map[*Host]error
}

// Bootstrap finds a manager of the recorded swarm (any swarm when none is
// recorded) among managers, in order, or forms the swarm on the first one
// that answers: a new swarm, or with f.ForceNewCluster a re-formed one.
func (m *Membership) Bootstrap(ctx context.Context, managers []*Host, f Form) (Formed, error) {
	out := Formed{Failed: map[*Host]error{}}
	var first *Host
	var firstLocal Local
	// Autolock: every locked manager gets its key first. A manager is
	// ready only when its swarm has quorum, so after a restart of all of
	// them none can be unlocked alone; then the swarm is waited for,
	// bounded, before one is looked for.
	unlockErr := map[*Host]error{}
	unlocked := 0
	for _, h := range managers {
		if l, err := h.Inspect(ctx); err == nil && l.State == dswarm.LocalNodeStateLocked {
			if _, err := m.unlock(ctx, h); err != nil {
				if ctx.Err() != nil {
					return out, ctx.Err()
				}
				unlockErr[h] = err
				continue
			}
			unlocked++
		}
	}
	if unlocked > 0 {
		w := Wait{Host: managers[0].Name, What: "the unlocked managers to regain their swarm's quorum", Timeout: unlockQuorumTimeout, Progress: m.note}
		if err := w.Until(ctx, func(ctx context.Context) (bool, string, error) {
			var states []string
			for _, h := range managers {
				l, err := h.Inspect(ctx)
				if err != nil {
					states = append(states, h.Name+": "+err.Error())
					continue
				}
				if l.Active() && l.Manager && l.ClusterID != "" {
					return true, "", nil
				}
				states = append(states, h.Name+" "+string(l.State))
			}
			return false, strings.Join(states, ", "), nil
		}); err != nil && ctx.Err() != nil {
			return out, ctx.Err()
		}
	}
	for _, h := range managers {
		if err := unlockErr[h]; err != nil {
			out.Failed[h] = err
			continue
		}
		l, err := h.Inspect(ctx)
		if err == nil && l.State == dswarm.LocalNodeStateLocked {
			l, err = m.unlock(ctx, h)
		}
		if err != nil {
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			out.Failed[h] = err
			continue
		}
		if f.theirs(ctx, h, l) {
			stale := slices.Contains(f.Stale, l.ClusterID)
			if !stale && !f.LeaveOther {
				out.Failed[h] = fmt.Errorf("%s: %w (%s): provision makes it leave only when told: run apply with --leave-other-swarm once nothing else needs that swarm", h.Name, ErrOtherSwarm, l.ClusterID)
				continue
			}
			m.note(h.Name, fmt.Sprintf("leaving swarm %s (%s)", short(l.ClusterID), map[bool]string{true: "an earlier swarm of this cluster", false: "--leave-other-swarm"}[stale]))
			if err := m.leaveNow(ctx, h); err != nil {
				out.Failed[h] = err
				continue
			}
			if l, err = h.Inspect(ctx); err != nil {
				out.Failed[h] = err
				continue
			}
		}
		if first == nil {
			first, firstLocal = h, l
		}
		if l.Active() && l.Manager && (f.ClusterID == "" || l.ClusterID == f.ClusterID) {
			out.Via, out.Local = h, l
			break
		}
	}
	if out.Via == nil {
		if first == nil {
			return out, errors.New("no manager's engine answers: cannot form or reach the swarm")
		}
		if f.ClusterID != "" && f.Recorded && !f.ForceNewCluster {
			return out, fmt.Errorf("%w: no recorded manager answers as a manager of swarm %s; if the surviving managers cannot regain quorum, re-run apply with --force-new-cluster to re-form the swarm on one of them (services are kept)", ErrQuorumLost, f.ClusterID)
		}
		var err error
		if f.ClusterID != "" && f.ForceNewCluster && firstLocal.Active() {
			if f.Before != nil {
				if err := f.Before(ctx, first); err != nil {
					return out, err
				}
			}
			m.note(first.Name, "re-forming the swarm on this manager (--force-new-cluster)")
			out.Local, err = first.forceNewCluster(ctx)
			if err != nil && Sealed(err) && f.Unseal != nil {
				out.Local, err = ReformSealed(ctx, first, f.Unseal, m.note)
			}
			out.Forced = err == nil
		} else {
			out.Local, out.Inited, err = first.init(ctx, f.Label)
		}
		if err != nil {
			return out, err
		}
		out.Via = first
	}
	out.Via.NodeID = out.Local.NodeID
	m.mu.Lock()
	m.ClusterID = out.Local.ClusterID
	m.addManager(out.Via)
	m.via = out.Via
	m.mu.Unlock()
	if !out.Inited && !out.Forced {
		_, err := m.Refresh(ctx)
		return out, err
	}
	// A swarm just formed or re-formed answers node calls only once its
	// raft has elected the one manager leader: on a loaded host that can
	// take seconds after SwarmInit returns ("the swarm does not have a
	// leader"). Wait for it, bounded, naming the host.
	err := Wait{Host: out.Via.Name, What: "the new swarm to elect its leader and list its nodes", Timeout: formTimeout, Progress: m.note}.Until(ctx, func(ctx context.Context) (bool, string, error) {
		if _, err := m.Refresh(ctx); err != nil {
			return false, err.Error(), nil
		}
		return true, "", nil
	})
	return out, err
}

// unlockQuorumTimeout bounds the wait for managers unlocked together to
// elect a leader again.
var unlockQuorumTimeout = 2 * time.Minute

// formTimeout bounds the wait for a swarm just formed on one manager to
// answer node calls.
var formTimeout = 2 * time.Minute

// Refresh reads the node list again through the manager calls go through.
func (m *Membership) Refresh(ctx context.Context) (map[string]dswarm.Node, error) {
	via := m.Via()
	if via == nil {
		return nil, errors.New("no manager to ask")
	}
	ns, err := via.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	nodes := make(map[string]dswarm.Node, len(ns))
	for _, n := range ns {
		nodes[n.ID] = n
	}
	m.mu.Lock()
	m.nodes = nodes
	m.mu.Unlock()
	return nodes, nil
}

// Nodes is the node list as last read.
func (m *Membership) Nodes() map[string]dswarm.Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.nodes
}

// Member reports whether nodeID is a Ready node of the role in the node
// list last read.
func (m *Membership) Member(nodeID string, manager bool) bool {
	if nodeID == "" {
		return false
	}
	m.mu.Lock()
	n, ok := m.nodes[nodeID]
	m.mu.Unlock()
	role := dswarm.NodeRoleWorker
	if manager {
		role = dswarm.NodeRoleManager
	}
	return ok && n.Status.State == dswarm.NodeStateReady && n.Spec.Role == role
}

func (m *Membership) joinTokens(ctx context.Context) (Tokens, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tokens != nil {
		return *m.tokens, nil
	}
	if m.via == nil {
		return Tokens{}, errors.New("no manager to ask for join tokens")
	}
	t, err := m.via.tokens(ctx)
	if err != nil {
		return Tokens{}, err
	}
	m.tokens = &t
	return t, nil
}

// Join makes h a member in the given role and waits until the swarm lists
// it Ready (and, for a manager, Reachable). It returns h's node ID and
// whether anything changed. A join an earlier run left in progress is
// waited for rather than started again; an engine that is already active
// in another swarm is refused with ErrOtherSwarm, unless leave says it may
// leave that swarm (an earlier one of this cluster, or the operator said so).
func (m *Membership) Join(ctx context.Context, h *Host, manager bool, leave ...func(Local) bool) (nodeID string, changed bool, err error) {
	to := m.timeouts()
	if manager {
		m.change.Lock()
		defer m.change.Unlock()
	}
	l, err := h.Inspect(ctx)
	if err != nil {
		return "", false, err
	}
	if l.State == dswarm.LocalNodeStatePending {
		m.note(h.Name, "a join started earlier is in progress: waiting for it")
		if l, err = m.settle(ctx, h, to.Join); err != nil {
			return "", false, err
		}
	}
	if l.Active() {
		if err := m.inThisSwarm(ctx, h, l); err != nil {
			if !errors.Is(err, ErrOtherSwarm) || len(leave) == 0 || !leave[0](l) {
				return "", false, err
			}
			m.note(h.Name, "leaving the other swarm it is in, to join this one")
			if err := m.leaveNow(ctx, h); err != nil {
				return "", false, err
			}
			changed = true
			if l, err = h.Inspect(ctx); err != nil {
				return "", false, err
			}
		}
	}
	if !l.Active() {
		t, err := m.joinTokens(ctx)
		if err != nil {
			return "", false, err
		}
		m.mu.Lock()
		addrs := slices.Clone(m.addrs)
		m.mu.Unlock()
		jctx, cancel := context.WithTimeout(ctx, to.Join)
		err = h.join(jctx, addrs, t, manager)
		cancel()
		if err != nil && !strings.Contains(err.Error(), errBackground) {
			if ctx.Err() != nil {
				return "", false, &WaitError{Host: h.Name, What: "the swarm join", Err: ctx.Err()}
			}
			return "", false, err
		}
		// The engine's own wait may end before the join does: wait on.
		if l, err = m.settle(ctx, h, to.Join); err != nil {
			return "", false, err
		}
		if !l.Active() {
			return "", false, fmt.Errorf("%s: swarm join ended in state %q", h.Name, l.State)
		}
		changed = true
	}
	if err := m.waitReady(ctx, h.Name, l.NodeID, to.Ready); err != nil {
		return l.NodeID, changed, err
	}
	h.NodeID = l.NodeID
	if manager {
		m.AddManager(h)
	}
	return l.NodeID, changed, nil
}

// leaveNow makes h's engine leave its swarm and waits until it says so.
func (m *Membership) leaveNow(ctx context.Context, h *Host) error {
	if err := h.Leave(ctx); err != nil {
		return err
	}
	return m.wait(h.Name, "its engine to leave the swarm", m.timeouts().Leave).Until(ctx, func(ctx context.Context) (bool, string, error) {
		l, err := h.Inspect(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		return l.State == dswarm.LocalNodeStateInactive, "engine says " + string(l.State), nil
	})
}

// inThisSwarm checks that an active engine is a member of this swarm: a
// manager knows the cluster ID; a worker's node ID must be in the node list.
func (m *Membership) inThisSwarm(ctx context.Context, h *Host, l Local) error {
	if l.ClusterID != "" && m.ClusterID != "" && l.ClusterID != m.ClusterID {
		return fmt.Errorf("%s: %w (%s, not %s)", h.Name, ErrOtherSwarm, l.ClusterID, m.ClusterID)
	}
	nodes, err := m.Refresh(ctx)
	if err != nil {
		return err
	}
	if _, ok := nodes[l.NodeID]; !ok {
		return fmt.Errorf("%s: %w: its node %s is not in the swarm's node list (managers it knows: %s)", h.Name, ErrOtherSwarm, l.NodeID, strings.Join(l.Managers, ", "))
	}
	return nil
}

// settle waits while h's engine reports a join in progress, and returns its
// last view of itself.
func (m *Membership) settle(ctx context.Context, h *Host, timeout time.Duration) (Local, error) {
	var l Local
	err := m.wait(h.Name, "the swarm join to complete", timeout).Until(ctx, func(ctx context.Context) (bool, string, error) {
		got, err := h.Inspect(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		l = got
		return l.State != dswarm.LocalNodeStatePending, "engine says " + string(l.State), nil
	})
	return l, err
}

// waitReady waits until the node is Ready in the node list, and Reachable
// when it is a manager.
func (m *Membership) waitReady(ctx context.Context, name, nodeID string, timeout time.Duration) error {
	return m.wait(name, "node "+short(nodeID)+" Ready in the swarm", timeout).Until(ctx, func(ctx context.Context) (bool, string, error) {
		via := m.Via()
		if via == nil {
			return false, "", errors.New("no manager to ask")
		}
		n, _, err := via.API.NodeInspectWithRaw(ctx, nodeID)
		if err != nil {
			return false, err.Error(), nil
		}
		status := string(n.Status.State)
		ok := n.Status.State == dswarm.NodeStateReady
		if n.Spec.Role == dswarm.NodeRoleManager {
			if n.ManagerStatus == nil {
				return false, status + ", not yet in the raft", nil
			}
			status += ", " + string(n.ManagerStatus.Reachability)
			ok = ok && n.ManagerStatus.Reachability == dswarm.ReachabilityReachable
		}
		return ok, status, nil
	})
}

// WaitMember waits until a member's restarted engine is back: its engine
// answers as an active node (a manager with control), and the swarm lists
// it Ready (and Reachable).
func (m *Membership) WaitMember(ctx context.Context, h *Host, nodeID string, manager bool) error {
	to := m.timeouts()
	start := time.Now()
	err := m.wait(h.Name, "its engine back in the swarm", to.Member).Until(ctx, func(ctx context.Context) (bool, string, error) {
		l, err := h.Inspect(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		if l.State == dswarm.LocalNodeStateLocked {
			// Autolock: a restarted manager waits for its key.
			if l, err = m.unlock(ctx, h); err != nil {
				return false, "", err
			}
		}
		return l.Active() && (!manager || l.Manager), "engine says " + string(l.State), nil
	})
	if err != nil {
		return err
	}
	return m.waitReady(ctx, h.Name, nodeID, max(to.Member-time.Since(start), 10*time.Second))
}

// unlock gives a locked manager the keys provision holds and returns its
// view of itself afterwards.
func (m *Membership) unlock(ctx context.Context, h *Host) (Local, error) {
	var keys []redact.Secret
	if m.UnlockKeys != nil {
		keys = m.UnlockKeys()
	}
	if _, err := h.Unlock(ctx, keys); err != nil {
		return Local{}, err
	}
	m.note(h.Name, "unlocked (autolock)")
	return h.Inspect(ctx)
}

// Unlock unlocks h when it is a locked manager; it reports whether it was.
func (m *Membership) Unlock(ctx context.Context, h *Host) (bool, error) {
	l, err := h.Inspect(ctx)
	if err != nil || l.State != dswarm.LocalNodeStateLocked {
		return false, err
	}
	_, err = m.unlock(ctx, h)
	return true, err
}

// Drain takes a node's tasks away before its engine restarts: the node is
// set to drain, its tasks stop and run elsewhere (WaitTasks). When no other
// node is Ready and active to take them, nothing is drained (the restart
// stops them either way) and it reports false.
func (m *Membership) Drain(ctx context.Context, name, nodeID string) (bool, error) {
	nodes, err := m.Refresh(ctx)
	if err != nil {
		return false, err
	}
	others := 0
	for id, n := range nodes {
		if id != nodeID && n.Status.State == dswarm.NodeStateReady && n.Spec.Availability == dswarm.NodeAvailabilityActive {
			others++
		}
	}
	if others == 0 {
		m.note(name, "not drained: no other node is Ready and active to take its tasks")
		return false, nil
	}
	return true, m.drain(ctx, name, nodeID)
}

// Activate makes a drained node take tasks again.
func (m *Membership) Activate(ctx context.Context, name, nodeID string) error {
	via := m.Via()
	if via == nil {
		return errors.New("no manager to ask")
	}
	changed, err := via.update(ctx, nodeID, func(s *dswarm.NodeSpec) bool {
		if s.Availability == dswarm.NodeAvailabilityActive {
			return false
		}
		s.Availability = dswarm.NodeAvailabilityActive
		return true
	})
	if changed {
		m.note(name, "active again")
	}
	return err
}

// CanDemote refuses to demote a reachable manager when the managers left
// would not hold a majority of the raft: demoting would lose quorum. Dead
// managers must leave first.
func CanDemote(nodes []dswarm.Node, id string) error {
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
	if need := (total-1)/2 + 1; reachable-1 < need {
		return fmt.Errorf("demoting it would lose quorum: %d of %d managers reachable, %d needed after it leaves", reachable, total, need)
	}
	return nil
}

// LeaderLastRank orders changes that take managers out one at a time
// (removals, replacements, engine restarts) so that quorum is never at
// risk and leadership moves at most once: nodes already out of the raft
// (down, unreachable, or not in the swarm) rank 0, reachable followers 1,
// the leader 2.
func LeaderLastRank(nodes map[string]dswarm.Node, nodeID string) int {
	n, ok := nodes[nodeID]
	switch {
	case nodeID == "" || !ok || n.ManagerStatus == nil || n.ManagerStatus.Reachability != dswarm.ReachabilityReachable:
		return 0
	case n.ManagerStatus.Leader:
		return 2
	default:
		return 1
	}
}

// SortLeaderLast sorts items by LeaderLastRank of their node, then by name.
func SortLeaderLast[T any](items []T, nodes map[string]dswarm.Node, key func(T) (name, nodeID string)) {
	slices.SortStableFunc(items, func(a, b T) int {
		an, aid := key(a)
		bn, bid := key(b)
		if r := LeaderLastRank(nodes, aid) - LeaderLastRank(nodes, bid); r != 0 {
			return r
		}
		return cmp.Compare(an, bn)
	})
}

// CanRetire says whether the node may leave now: for a manager, whether
// the raft keeps its majority without it (from a fresh node list).
func (m *Membership) CanRetire(ctx context.Context, nodeID string) error {
	nodes, err := m.Refresh(ctx)
	if err != nil {
		return err
	}
	list := make([]dswarm.Node, 0, len(nodes))
	for _, n := range nodes {
		list = append(list, n)
	}
	return CanDemote(list, nodeID)
}

// Retire takes a node out of the swarm for good: a manager is demoted first
// (refused when that would lose quorum; one manager change at a time), the
// node is drained and its tasks Running elsewhere, the host's engine leaves
// (when h is given and answers) and the node is removed from the node list.
func (m *Membership) Retire(ctx context.Context, name, nodeID string, h *Host) error {
	nodes, err := m.Refresh(ctx)
	if err != nil {
		return err
	}
	n, inSwarm := nodes[nodeID]
	if nodeID == "" || !inSwarm {
		if h != nil {
			m.leave(ctx, name, h)
		}
		return nil
	}
	if n.ManagerStatus != nil {
		// Still in the raft: demoted first. A manager the raft no longer
		// has (after --force-new-cluster) cannot be demoted and is removed
		// as it is.
		m.change.Lock()
		defer m.change.Unlock()
		// Calls must not go through the manager that leaves.
		dropped := m.dropManager(nodeID, h)
		if m.Via() == nil {
			m.restore(dropped)
			return fmt.Errorf("%s: no other manager to go through", name)
		}
		if err := m.demote(ctx, name, nodeID); err != nil {
			m.restore(dropped)
			return err
		}
	}
	if n.Status.State == dswarm.NodeStateReady {
		if err := m.drain(ctx, name, nodeID); err != nil {
			return err
		}
	}
	if h != nil {
		m.leave(ctx, name, h)
	}
	via := m.Via()
	if err := via.remove(ctx, nodeID); err != nil {
		return err
	}
	_, err = m.Refresh(ctx)
	return err
}

// demote turns a manager node into a worker and waits until the swarm has
// taken it out of the raft: only then can it be removed. The quorum check
// reads a fresh node list. Errors while leadership moves are retried.
func (m *Membership) demote(ctx context.Context, name, nodeID string) error {
	nodes, err := m.Refresh(ctx)
	if err != nil {
		return err
	}
	list := make([]dswarm.Node, 0, len(nodes))
	for _, n := range nodes {
		list = append(list, n)
	}
	if err := CanDemote(list, nodeID); err != nil {
		return fmt.Errorf("%s: not demoted: %w", name, err)
	}
	if n := nodes[nodeID]; n.ManagerStatus == nil && n.Spec.Role == dswarm.NodeRoleWorker {
		return nil
	}
	m.note(name, "demoting")
	var last string
	err = m.wait(name, "demotion out of the raft", m.timeouts().Demote).Until(ctx, func(ctx context.Context) (bool, string, error) {
		via := m.Via()
		n, _, err := via.API.NodeInspectWithRaw(ctx, nodeID)
		if err != nil {
			last = err.Error()
			return false, last, nil
		}
		if n.ManagerStatus == nil && n.Spec.Role == dswarm.NodeRoleWorker {
			return true, "", nil
		}
		if n.Spec.Role != dswarm.NodeRoleWorker {
			if _, err := via.update(ctx, nodeID, func(s *dswarm.NodeSpec) bool { s.Role = dswarm.NodeRoleWorker; return true }); err != nil {
				last = err.Error()
				return false, last, nil
			}
		}
		return false, "still in the raft", nil
	})
	return err
}

// drain sets the node's availability to drain, waits until no task runs on
// it any more, then until each replicated service that ran there runs as
// many tasks as it did before (the drained tasks' replacements Running
// elsewhere) and every task the swarm wants running is Running (waitTasks), so that the next node to go does not take a service below its
// replicas. Only then does a surged service go back to its own count. A task
// that cannot start anywhere does not block the removal: after the
// reschedule timeout it is named in a note and the removal goes on.
func (m *Membership) drain(ctx context.Context, name, nodeID string) error {
	to := m.timeouts()
	m.nodesKnown(ctx, name)
	surged := m.surge(ctx, name, nodeID)
	defer m.unsurge(context.WithoutCancel(ctx), name, surged)
	before := m.runningHere(ctx, nodeID)
	via := m.Via()
	m.note(name, "draining")
	if _, err := via.update(ctx, nodeID, func(s *dswarm.NodeSpec) bool {
		if s.Availability == dswarm.NodeAvailabilityDrain {
			return false
		}
		s.Availability = dswarm.NodeAvailabilityDrain
		return true
	}); err != nil {
		return err
	}
	err := m.wait(name, "its tasks to stop (drain)", to.Drain).Until(ctx, func(ctx context.Context) (bool, string, error) {
		ts, err := m.Via().API.TaskList(ctx, dswarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("node", nodeID), filters.Arg("desired-state", "running"))})
		if err != nil {
			return false, err.Error(), nil
		}
		return len(ts) == 0, fmt.Sprintf("%d tasks on it", len(ts)), nil
	})
	if err != nil {
		return err
	}
	return m.waitTasks(ctx, name, "its tasks Running elsewhere", before)
}

// serviceCount is a replicated service's running tasks at one moment.
type serviceCount struct {
	name    string
	running uint64
}

// runningHere counts, for each replicated service with a task on the node,
// its tasks Running in the whole swarm: what it must run again after the
// node is drained. Global services and jobs are left out (a drained node's
// global task is not replaced). Best effort: on an error nothing is
// counted, and WaitTasks alone judges the drain.
func (m *Membership) runningHere(ctx context.Context, nodeID string) map[string]serviceCount {
	via := m.Via()
	if via == nil {
		return nil
	}
	ts, err := via.API.TaskList(ctx, dswarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("desired-state", "running"))})
	if err != nil {
		return nil
	}
	here := map[string]bool{}
	running := map[string]uint64{}
	for _, t := range ts {
		if t.NodeID == nodeID {
			here[t.ServiceID] = true
		}
		if t.Status.State == dswarm.TaskStateRunning {
			running[t.ServiceID]++
		}
	}
	if len(here) == 0 {
		return nil
	}
	svcs, err := via.API.ServiceList(ctx, dswarm.ServiceListOptions{})
	if err != nil {
		return nil
	}
	out := map[string]serviceCount{}
	for _, svc := range svcs {
		if here[svc.ID] && svc.Spec.Mode.Replicated != nil {
			out[svc.ID] = serviceCount{name: svc.Spec.Name, running: running[svc.ID]}
		}
	}
	return out
}

// nodesKnown waits, before a node is paused or drained, until the swarm's
// leader knows the state of every node. A manager's engine restart can hand
// the raft to another manager, which reports every node it has not yet
// heard from as "unknown" for a while: its scheduler places nothing there
// and the tasks there are not to be counted on, so a drain then can leave a
// service below its replicas (seen on real hosts right after a leader's
// upgrade). A node that stays unknown past the Ready timeout is noted and
// the drain goes on: a node really gone turns "down", not unknown, soon.
func (m *Membership) nodesKnown(ctx context.Context, name string) {
	err := m.wait(name, "every node's state known to the swarm's leader", m.timeouts().Ready).Until(ctx, func(ctx context.Context) (bool, string, error) {
		via := m.Via()
		if via == nil {
			return false, "no manager to ask", nil
		}
		nodes, err := via.API.NodeList(ctx, dswarm.NodeListOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		var unknown []string
		for _, n := range nodes {
			if n.Status.State == dswarm.NodeStateUnknown {
				unknown = append(unknown, n.Description.Hostname)
			}
		}
		sort.Strings(unknown)
		return len(unknown) == 0, "state unknown: " + strings.Join(unknown, ", "), nil
	})
	if err != nil && ctx.Err() == nil {
		m.note(name, fmt.Sprintf("draining although the swarm's leader does not know every node's state yet (%v)", err))
	}
}

// WaitTasks waits until every task the swarm wants running is Running (a
// drained node's tasks restarted elsewhere, a restarted engine's tasks back),
// so that the next change does not take a service further below its
// replicas. A task the swarm says it cannot place (pending with an error:
// no node may take it) is not waited for, and one that does not run by the
// reschedule timeout holds nothing up either: both are named in a note and
// the change goes on.
func (m *Membership) WaitTasks(ctx context.Context, name, what string) error {
	return m.waitTasks(ctx, name, what, nil)
}

// waitTasks is WaitTasks that also waits until each service in before runs
// as many tasks as it did before a drain. The replacement of a drained task
// is not listed among the tasks that should run for a moment (Docker's
// restart delay), so "every listed task Running" alone is true too early;
// and a surged service must not be scaled back before then: swarm's
// scale-down removes the highest copy on a node first, a running one before
// a replacement still waiting on a node of its own. A service with a task
// the swarm cannot place is not waited for.
func (m *Membership) waitTasks(ctx context.Context, name, what string, before map[string]serviceCount) error {
	ids := make([]string, 0, len(before))
	for id := range before {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var waiting, unplaced []string
	noRoom := map[string]string{}
	err := m.wait(name, what, m.timeouts().Reschedule).Until(ctx, func(ctx context.Context) (bool, string, error) {
		ts, err := m.Via().API.TaskList(ctx, dswarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("desired-state", "running"))})
		if err != nil {
			return false, err.Error(), nil
		}
		waiting, unplaced = waiting[:0], unplaced[:0]
		running := map[string]uint64{}
		for _, t := range ts {
			switch {
			case t.Status.State == dswarm.TaskStateRunning:
				running[t.ServiceID]++
			case t.Status.State == dswarm.TaskStatePending && t.Status.Err != "":
				unplaced = append(unplaced, short(t.ID)+" ("+t.Status.Err+")")
				noRoom[t.ServiceID] = t.Status.Err
			default:
				waiting = append(waiting, short(t.ID)+" ("+string(t.Status.State)+")")
			}
		}
		for _, id := range ids {
			if b := before[id]; running[id] < b.running && noRoom[id] == "" {
				waiting = append(waiting, fmt.Sprintf("service %s: %d of %d running", b.name, running[id], b.running))
			}
		}
		return len(waiting) == 0, fmt.Sprintf("%d tasks not running yet", len(waiting)), nil
	})
	for _, id := range ids {
		if noRoom[id] != "" {
			m.note(name, fmt.Sprintf("service %s: a drained task cannot run elsewhere (%s)", before[id].name, noRoom[id]))
		}
	}
	if len(unplaced) > 0 && err == nil {
		m.note(name, fmt.Sprintf("%d tasks the swarm cannot place anywhere: %s", len(unplaced), strings.Join(unplaced, ", ")))
	}
	var we *WaitError
	if errors.As(err, &we) && errors.Is(err, context.DeadlineExceeded) {
		m.note(name, fmt.Sprintf("%d tasks are not running yet: %s; going on", len(waiting)+len(unplaced), strings.Join(append(waiting, unplaced...), ", ")))
		return nil
	}
	return err
}

// leave makes a retired host's engine leave, best effort: a host that is
// gone or does not answer is removed from the node list anyway.
func (m *Membership) leave(ctx context.Context, name string, h *Host) {
	lctx, cancel := context.WithTimeout(ctx, m.timeouts().Leave)
	defer cancel()
	if err := h.Leave(lctx); err != nil && ctx.Err() == nil {
		m.note(name, "its engine did not leave the swarm itself ("+err.Error()+"); its node is removed anyway")
	}
}

// RemoveDead removes nodes that belong to no kept machine: those listed in
// stale, and dead ones (Down, or Unknown after leadership moved) whose
// hostname ours says is one of the cluster's. A manager still in the raft
// is demoted first; one the raft no longer has (after --force-new-cluster)
// is removed as it is. It returns the nodes removed.
func (m *Membership) RemoveDead(ctx context.Context, keep, stale map[string]bool, ours func(hostname string) bool) ([]dswarm.Node, error) {
	nodes, err := m.Refresh(ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(nodes))
	for id := range nodes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var removed []dswarm.Node
	for _, id := range ids {
		n := nodes[id]
		if keep[id] {
			continue
		}
		dead := n.Status.State == dswarm.NodeStateDown || n.Status.State == dswarm.NodeStateUnknown
		if !stale[id] && !(dead && ours(n.Description.Hostname)) {
			continue
		}
		if n.Spec.Role == dswarm.NodeRoleManager && n.ManagerStatus != nil {
			m.change.Lock()
			err := m.demote(ctx, n.Description.Hostname, id)
			m.change.Unlock()
			if err != nil {
				return removed, err
			}
		}
		if err := m.Via().remove(ctx, id); err != nil {
			return removed, err
		}
		removed = append(removed, n)
	}
	if len(removed) > 0 {
		_, err = m.Refresh(ctx)
	}
	return removed, err
}

// SetLabels sets and deletes node labels through the manager.
func (m *Membership) SetLabels(ctx context.Context, nodeID string, set map[string]string, del []string) (bool, error) {
	via := m.Via()
	if via == nil {
		return false, errors.New("no manager to ask")
	}
	return via.SetLabels(ctx, nodeID, set, del)
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
