package apply

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
	"github.com/provision/provision/provision/swarm"
)

// swarmPhase forms or completes the swarm: the first manager inits it
// (unless a recorded manager already runs one), further managers join one
// at a time, then workers join in parallel. Nodes of replaced or lost
// machines are removed from the node list.
type swarmPhase struct{}

func (swarmPhase) Name() string { return "swarm" }

// membership returns the run's swarm.Membership, made on first use.
func (r *run) membership() *swarm.Membership {
	if r.members == nil {
		r.members = &swarm.Membership{ClusterID: r.State.Swarm.ID, Timeouts: r.Timeouts, Notify: r.note}
	}
	return r.members
}

func (swarmPhase) Run(ctx context.Context, r *run) error {
	hosts := r.live()
	if err := r.engines(hosts); err != nil {
		return err
	}
	var managers, workers []*host
	byMember := map[*swarm.Host]*host{}
	var mh []*swarm.Host
	for _, h := range hosts {
		byMember[h.member] = h
		if h.rec.Role == spec.RoleManager {
			managers = append(managers, h)
			mh = append(mh, h.member)
		} else {
			workers = append(workers, h)
		}
	}
	if len(managers) == 0 {
		return errors.New("no manager host is available: cannot form or reach the swarm")
	}
	m := r.membership()
	f, err := m.Bootstrap(ctx, mh, swarm.Form{
		ClusterID:       r.State.Swarm.ID,
		Recorded:        r.anyManagerRecorded(),
		ForceNewCluster: r.ForceNewCluster,
		Label:           r.State.ClusterID,
	})
	for sh, ferr := range f.Failed {
		r.fail(byMember[sh], "swarm.inspect", ferr)
	}
	if err != nil {
		return err
	}
	leader := byMember[f.Via]
	if f.Inited {
		leader.changed = true
		r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: leader.rec.Name, Step: "swarm.init"})
	}
	r.mu.Lock()
	r.State.Swarm.ID = f.Local.ClusterID
	leader.rec.NodeID = f.Local.NodeID
	leader.rec.Status = state.StatusReady
	r.mu.Unlock()
	if err := r.save(); err != nil {
		return err
	}
	// Managers one at a time, each Ready and Reachable before the next
	// joins, so quorum is never at risk.
	for _, h := range managers {
		if h == leader || h.err != nil {
			continue
		}
		if r.stopped() {
			break
		}
		if m.Member(h.rec.NodeID, true) {
			m.AddManager(h.member)
			continue
		}
		if err := join(ctx, r, h, true); err != nil {
			r.fail(h, "swarm.join", err)
		}
	}
	// Workers in parallel.
	var pending []*host
	for _, h := range workers {
		if !m.Member(h.rec.NodeID, false) {
			pending = append(pending, h)
		}
	}
	if err := r.each(ctx, pending, "swarm.join", func(ctx context.Context, h *host) error {
		return join(ctx, r, h, false)
	}); err != nil {
		return err
	}
	// Nodes of replaced machines, and dead nodes with one of our names.
	keep := map[string]bool{}
	stale := map[string]bool{}
	r.mu.Lock()
	for _, rec := range r.State.Machines {
		if rec.NodeID != "" {
			keep[rec.NodeID] = true
		}
	}
	for _, id := range r.staleNodes {
		stale[id] = true
	}
	r.mu.Unlock()
	removed, err := m.RemoveDead(ctx, keep, stale, func(hostname string) bool { return strings.HasPrefix(hostname, r.Spec.Name+"-") })
	for _, n := range removed {
		r.note(n.Description.Hostname, "removed dead swarm node "+n.ID)
	}
	if err != nil {
		return err
	}
	return r.save()
}

// join makes h a member and records its node ID.
func join(ctx context.Context, r *run, h *host, manager bool) error {
	r.rep.Event(Event{Time: time.Now(), Kind: StepStart, Host: h.rec.Name, Step: "swarm.join"})
	id, changed, err := r.members.Join(ctx, h.member, manager)
	if changed {
		h.changed = true
		r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: h.rec.Name, Step: "swarm.join"})
	}
	if err != nil {
		return err
	}
	r.mu.Lock()
	h.rec.NodeID = id
	h.rec.Status = state.StatusReady
	r.mu.Unlock()
	return r.save()
}

// anyManagerRecorded says state records a manager that was in the swarm.
func (r *run) anyManagerRecorded() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.State.Machines {
		if m.Role == spec.RoleManager && m.NodeID != "" {
			return true
		}
	}
	return false
}
