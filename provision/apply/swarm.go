package apply

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	dswarm "github.com/docker/docker/api/types/swarm"

	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/retry"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
	"github.com/provision/provision/provision/swarm"
)

// swarmPhase forms or completes the swarm: the first manager inits it
// (unless a recorded manager already runs one), further managers join one
// at a time, then workers join in parallel. A replaced machine's old
// generation leaves only once its successor is in: for a manager, right
// after its successor is Reachable and before the next manager changes;
// for workers, in batches of a quarter once the new ones joined. Nodes of
// lost machines are removed from the node list.
type swarmPhase struct{}

func (swarmPhase) Name() string { return "swarm" }

// membership returns the run's swarm.Membership, made on first use.
func (r *run) membership() *swarm.Membership {
	if r.members == nil {
		r.members = &swarm.Membership{ClusterID: r.State.Swarm.ID, Timeouts: r.Timeouts, Notify: r.note, UnlockKeys: r.unlockKeys}
	}
	return r.members
}

func (swarmPhase) Run(ctx context.Context, r *run) error {
	hosts := r.live()
	if err := r.engines(ctx, hosts); err != nil {
		return err
	}
	r.openRetiring(ctx)
	var managers, workers []*host
	byMember := map[*swarm.Host]*host{}
	var members, fresh []*swarm.Host
	for _, h := range hosts {
		byMember[h.member] = h
		if h.rec.Role != spec.RoleManager {
			workers = append(workers, h)
			continue
		}
		managers = append(managers, h)
		if h.rec.NodeID != "" {
			members = append(members, h.member)
		} else {
			fresh = append(fresh, h.member)
		}
	}
	// Recorded members first, then the old generations of replaced
	// managers (the swarm may live only on them), then new machines.
	candidates := members
	for _, o := range r.retiring {
		if o.member != nil && o.owner.rec.Role == spec.RoleManager {
			candidates = append(candidates, o.member)
		}
	}
	candidates = append(candidates, fresh...)
	if len(candidates) == 0 {
		return errors.New("no manager host is available: cannot form or reach the swarm")
	}
	m := r.membership()
	f, err := m.Bootstrap(ctx, candidates, swarm.Form{
		ClusterID:       r.State.Swarm.ID,
		Recorded:        r.anyManagerRecorded(),
		ForceNewCluster: r.ForceNewCluster,
		Label:           r.State.ClusterID,
		Stale:           r.State.Swarm.Retired,
		LeaveOther:      r.LeaveOtherSwarm,
		Before: func(ctx context.Context, sh *swarm.Host) error {
			if h := byMember[sh]; h != nil {
				return r.backupSurvivor(ctx, h, "the swarm is re-formed on "+sh.Name)
			}
			return nil
		},
		Unseal: func(ctx context.Context, sh *swarm.Host) error {
			if h := byMember[sh]; h != nil {
				return r.unseal(ctx, h.rec.Name, h.rec.Machine)
			}
			for _, o := range r.retiring {
				if o.member == sh {
					return r.unseal(ctx, sh.Name, o.rec.Machine)
				}
			}
			return fmt.Errorf("%s: no machine to reach over SSH", sh.Name)
		},
	})
	for sh, ferr := range f.Failed {
		if h := byMember[sh]; h != nil {
			r.fail(h, "swarm.inspect", ferr)
		} else {
			r.note(sh.Name, "old generation: "+ferr.Error())
		}
	}
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.State.Swarm.ID = f.Local.ClusterID
	r.mu.Unlock()
	if leader := byMember[f.Via]; leader != nil {
		if f.Inited {
			leader.changed = true
			r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: leader.rec.Name, Step: "swarm.init"})
		}
		r.mu.Lock()
		leader.rec.NodeID = f.Local.NodeID
		leader.rec.Status = state.StatusReady
		r.mu.Unlock()
	}
	if err := r.save(); err != nil {
		return err
	}
	// Every manager that is a Ready member can serve the calls.
	for _, h := range managers {
		if h.err == nil && m.Member(h.rec.NodeID, true) {
			m.AddManager(h.member)
		}
	}
	for _, o := range r.retiring {
		if o.member != nil && m.Member(o.rec.NodeID, true) {
			o.member.NodeID = o.rec.NodeID
			m.AddManager(o.member)
		}
	}
	// Managers one at a time, each Ready and Reachable before the next
	// changes, its old generation retired right after it: quorum is never
	// at risk. Replacements of followers go first and the leader's last, so
	// that leadership moves once.
	nodes := m.Nodes()
	slices.SortStableFunc(managers, func(a, b *host) int { return replaceRank(a, nodes) - replaceRank(b, nodes) })
	for _, h := range managers {
		if h.err != nil || h.inPlace {
			continue
		}
		if r.stopped() {
			return nil
		}
		if !m.Member(h.rec.NodeID, true) {
			if err := join(ctx, r, h, true); err != nil {
				r.fail(h, "swarm.join", err)
				break // never change another manager after a failed one
			}
		} else {
			r.memberReady(h)
		}
		if err := retireOld(ctx, r, h); err != nil {
			r.fail(h, "swarm.replace", err)
			break
		}
	}
	// Workers in parallel, then their old generations in batches.
	var pending []*host
	for _, h := range workers {
		switch {
		case h.inPlace:
		case !m.Member(h.rec.NodeID, false):
			pending = append(pending, h)
		case h.err == nil:
			r.memberReady(h)
		}
	}
	pace := make(chan struct{}, joinPace)
	if err := r.each(ctx, pending, "swarm.join", func(ctx context.Context, h *host) error {
		err := joinPaced(ctx, r, h, pace)
		// The worker's engine connection goes idle now: drop it, so open
		// connections follow the joins in flight, not the fleet (the
		// client dials again if a later phase asks this engine).
		if h.closer != nil {
			h.closer()
		}
		return err
	}); err != nil {
		return err
	}
	var replaced []*host
	for _, h := range workers {
		if h.err == nil && len(h.rec.Retiring) > 0 {
			replaced = append(replaced, h)
		}
	}
	for i, b := range workerBatches(replaced, r.parallelism()) {
		if r.stopped() {
			return nil
		}
		if len(b) < len(replaced) {
			r.note("", fmt.Sprintf("replacing workers, batch %d: %s", i+1, names(b)))
		}
		if err := r.each(ctx, b, "swarm.replace", func(ctx context.Context, h *host) error {
			return retireOld(ctx, r, h)
		}); err != nil {
			return err
		}
	}
	// Dead nodes with one of our names (lost machines) leave the list.
	keep := map[string]bool{}
	r.mu.Lock()
	for _, rec := range r.State.Machines {
		if rec.NodeID != "" {
			keep[rec.NodeID] = true
		}
		for _, old := range rec.Retiring {
			if old.NodeID != "" && !old.Destroyed {
				keep[old.NodeID] = true // retired with its machine, in order
			}
		}
	}
	r.mu.Unlock()
	removed, err := m.RemoveDead(ctx, keep, nil, func(hostname string) bool { return strings.HasPrefix(hostname, r.Spec.Name+"-") })
	for _, n := range removed {
		r.note(n.Description.Hostname, "removed dead swarm node "+n.ID)
	}
	if err != nil {
		return err
	}
	return r.save()
}

// joinPace bounds the worker joins in flight. Each join has a manager sign
// a node certificate and add the node to the raft store; a herd of
// hundreds at once is what managers take worst (slow raft writes, missed
// heartbeats, leader elections), so joins go at a steady pace instead.
const joinPace = 20

// memberReady records a host the swarm already counts as a Ready member
// as ready: a machine restarted or adopted by this apply (status created)
// that was never out of the swarm has no join to do, and would otherwise
// stay "created", planned for reconfiguration at every apply.
func (r *run) memberReady(h *host) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if h.rec.Status != state.StatusReady {
		h.rec.Status = state.StatusReady
	}
}

// joinPaced joins a worker within the pace, trying again with a growing
// pause (Engine.JoinAttempts, JoinBackoff) before the host is reported
// failed: a join that times out under load usually works the next time.
// Other workers go on meanwhile.
func joinPaced(ctx context.Context, r *run, h *host, pace chan struct{}) error {
	attempts, wait := r.JoinAttempts, r.JoinBackoff
	if attempts <= 0 {
		attempts = 3
	}
	if wait <= 0 {
		wait = 2 * time.Second
	}
	var err error
	for i := 1; ; i++ {
		select {
		case pace <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		err = join(ctx, r, h, false)
		<-pace
		if err == nil || i >= attempts || errors.Is(err, swarm.ErrOtherSwarm) || ctx.Err() != nil {
			break
		}
		r.note(h.rec.Name, fmt.Sprintf("join attempt %d of %d failed (%v): trying again in %s", i, attempts, err, wait))
		if err := retry.Sleep(ctx, wait); err != nil {
			return err
		}
		wait *= 2
	}
	if err != nil && attempts > 1 {
		return fmt.Errorf("after %d attempts: %w", attempts, err)
	}
	return err
}

// join makes h a member and records its node ID. A host in an earlier
// swarm of this cluster leaves it first; one in another swarm only with
// --leave-other-swarm.
func join(ctx context.Context, r *run, h *host, manager bool) error {
	r.rep.Event(Event{Time: time.Now(), Kind: StepStart, Host: h.rec.Name, Step: "swarm.join"})
	leave := func(l swarm.Local) bool {
		if r.LeaveOtherSwarm {
			return true
		}
		id := l.ClusterID
		if id == "" && h.target != nil && h.target.Facts != nil && h.target.Facts.Swarm != nil {
			id = h.target.Facts.Swarm.ClusterID // a worker's engine does not say; its certificate does
		}
		return id != "" && slices.Contains(r.State.Swarm.Retired, id)
	}
	id, changed, err := r.members.Join(ctx, h.member, manager, leave)
	if changed {
		h.changed, h.joinedNow = true, true
		r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: h.rec.Name, Step: "swarm.join"})
	} else if err == nil {
		r.rep.Event(Event{Time: time.Now(), Kind: StepDone, Host: h.rec.Name, Step: "swarm.join"})
	}
	if errors.Is(err, swarm.ErrOtherSwarm) && !r.LeaveOtherSwarm {
		err = fmt.Errorf("%w; provision makes it leave only when told: run apply with --leave-other-swarm once nothing else needs that swarm", err)
	}
	if err != nil {
		return err
	}
	r.mu.Lock()
	h.rec.NodeID = id
	h.rec.Status = state.StatusReady
	r.mu.Unlock()
	if !manager {
		// Saved with the phase: a worker's node ID that a crash loses is
		// found again by the next join (its engine says it is a member),
		// and a thousand joins need not wait for a thousand writes.
		return nil
	}
	return r.save()
}

// retireOld takes the earlier generations of h out of the swarm (a manager
// only once the raft keeps its majority without it, after a raft backup)
// and destroys them. h must be a Ready member: the old one never leaves
// before its successor is in.
func retireOld(ctx context.Context, r *run, h *host) error {
	if len(h.rec.Retiring) == 0 {
		return nil
	}
	if !r.members.Member(h.rec.NodeID, h.rec.Role == spec.RoleManager) {
		if _, err := r.members.Refresh(ctx); err != nil {
			return err
		}
		if !r.members.Member(h.rec.NodeID, h.rec.Role == spec.RoleManager) {
			return errors.New("the new generation is not a Ready member: the old one stays")
		}
	}
	for _, o := range r.retiringOf(ctx, h) {
		if _, inSwarm := r.members.Nodes()[o.rec.NodeID]; inSwarm && o.rec.NodeID != "" && h.rec.Role == spec.RoleManager {
			if err := r.backup(ctx, "manager "+h.rec.Name+" is replaced", o.rec.NodeID); err != nil {
				return err
			}
		}
		gen := max(1, o.rec.Generation)
		r.note(h.rec.Name, fmt.Sprintf("generation %d is in the swarm: generation %d leaves", h.rec.Gen(), gen))
		if err := r.members.Retire(ctx, h.rec.Name, o.rec.NodeID, o.member); err != nil {
			return fmt.Errorf("generation %d: %w", gen, err)
		}
		if o.closer != nil {
			o.closer()
		}
		if !o.rec.Destroyed {
			if err := r.destroyMachine(ctx, o.rec.Machine, gen); err != nil {
				return fmt.Errorf("generation %d: %w", gen, err)
			}
		}
		r.mu.Lock()
		h.rec.Retiring = slices.DeleteFunc(h.rec.Retiring, func(x state.Retiring) bool { return max(1, x.Generation) == gen })
		r.mu.Unlock()
		h.changed = true
		r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: h.rec.Name, Step: "swarm.replace", Msg: fmt.Sprintf("generation %d left the swarm and was destroyed", gen)})
		if err := r.save(); err != nil {
			return err
		}
	}
	return nil
}

// replaceRank orders manager changes: machines with no old generation in
// the swarm first (new or finished), then replacements by the old node's
// swarm.LeaderLastRank (dead, followers, the leader last).
func replaceRank(h *host, nodes map[string]dswarm.Node) int {
	rank := -1
	for _, old := range h.rec.Retiring {
		if _, ok := nodes[old.NodeID]; ok {
			rank = max(rank, swarm.LeaderLastRank(nodes, old.NodeID))
		}
	}
	return rank
}

// openRetiring lists the earlier generations of the live hosts and opens
// the engine API of those that still exist.
func (r *run) openRetiring(ctx context.Context) {
	if r.retiring != nil {
		return
	}
	r.retiring = []*retiree{}
	for _, h := range r.live() {
		a := h.action
		// The last entry may be the generation this run replaced: the
		// plan saw it as the machine itself (a.Observed); earlier entries
		// by index (a.RetiringObserved).
		appended := a.Kind == plan.Replace && len(h.rec.Retiring) > 0 && max(1, h.rec.Retiring[len(h.rec.Retiring)-1].Generation) == a.Generation-1
		for i, old := range h.rec.Retiring {
			o := &retiree{owner: h, rec: old}
			alive := !old.Destroyed && old.Address != ""
			if _, unknown := r.plan.Unknown[old.Driver]; !unknown {
				if appended && i == len(h.rec.Retiring)-1 {
					alive = alive && a.Observed != nil
				} else {
					alive = alive && a.RetiringObserved[i] != nil
				}
			}
			o.gone = !alive
			if alive {
				m := old.Machine
				m.Name = h.rec.Name
				if api, closer, err := r.openEngineAPI(ctx, m); err == nil {
					o.member = &swarm.Host{Name: h.rec.Name + " (generation " + fmt.Sprint(max(1, old.Generation)) + ")", Advertise: old.Advertise(), API: api, NodeID: old.NodeID}
					o.closer = closer
				}
			}
			r.retiring = append(r.retiring, o)
		}
	}
}

func (r *run) retiringOf(ctx context.Context, h *host) []*retiree {
	r.openRetiring(ctx)
	var out []*retiree
	for _, o := range r.retiring {
		if o.owner != h {
			continue
		}
		still := slices.ContainsFunc(h.rec.Retiring, func(x state.Retiring) bool { return x.Generation == o.rec.Generation })
		if still {
			out = append(out, o)
		}
	}
	return out
}

// workerBatches splits workers into batches of a quarter of them (at least
// one, at most parallelism).
func workerBatches(hs []*host, parallelism int) [][]*host {
	size := max(1, len(hs)/4)
	if parallelism > 0 {
		size = min(size, parallelism)
	}
	var out [][]*host
	for len(hs) > 0 {
		n := min(size, len(hs))
		out = append(out, hs[:n])
		hs = hs[n:]
	}
	return out
}

func names(hs []*host) string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.rec.Name
	}
	return strings.Join(out, ", ")
}

// anyManagerRecorded says state records a manager that was in the swarm.
func (r *run) anyManagerRecorded() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.State.Machines {
		if m.Role == spec.RoleManager && m.NodeID != "" {
			return true
		}
		for _, old := range m.Retiring {
			if m.Role == spec.RoleManager && old.NodeID != "" {
				return true
			}
		}
	}
	return false
}
