package apply

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
)

// reinstall replaces machines in place on drivers that reuse the host
// (generic): one at a time for managers, a quarter of the workers at a
// time, each machine leaves the swarm (a manager only while the raft keeps
// its majority without it; never the last one), is made again, gets its
// host steps and joins. The swarm never loses more than that one member.
type reinstall struct{}

func (reinstall) Name() string { return "reinstall" }

func (reinstall) Run(ctx context.Context, r *run) error {
	var managers, workers []*host
	for _, h := range r.live() {
		if !h.inPlace {
			continue
		}
		if h.rec.Role == spec.RoleManager {
			managers = append(managers, h)
		} else {
			workers = append(workers, h)
		}
	}
	if len(managers)+len(workers) == 0 {
		return nil
	}
	if r.members == nil || r.members.Via() == nil {
		for _, h := range append(managers, workers...) {
			r.fail(h, "machine.reinstall", errors.New("no manager of the swarm answers: it cannot leave first"))
		}
		return nil
	}
	for _, h := range managers {
		if r.stopped() {
			return nil
		}
		if err := reinstallOne(ctx, r, h); err != nil {
			r.fail(h, "machine.reinstall", err)
			return nil // never change another manager after a failed one
		}
	}
	for _, b := range workerBatches(workers, r.parallelism()) {
		if r.stopped() {
			return nil
		}
		if err := r.each(ctx, b, "machine.reinstall", func(ctx context.Context, h *host) error {
			return reinstallOne(ctx, r, h)
		}); err != nil {
			return err
		}
	}
	return nil
}

// reinstallOne takes one machine out of the swarm, destroys it through its
// driver, makes it again (the next generation), connects, runs its host
// steps and joins it.
func reinstallOne(ctx context.Context, r *run, h *host) error {
	a := h.action
	manager := h.rec.Role == spec.RoleManager
	if manager && h.rec.NodeID != "" {
		if err := r.members.CanRetire(ctx, h.rec.NodeID); err != nil {
			return fmt.Errorf("cannot leave the swarm to be made again: %w", err)
		}
		if err := r.backup(ctx, "manager "+h.rec.Name+" is replaced in place", h.rec.NodeID); err != nil {
			return err
		}
	}
	old := h.rec.Machine
	oldGen := h.rec.Gen()
	r.note(h.rec.Name, fmt.Sprintf("replacing in place: generation %d leaves the swarm first", oldGen))
	if h.rec.NodeID != "" {
		if err := r.members.Retire(ctx, h.rec.Name, h.rec.NodeID, h.member); err != nil {
			return err
		}
	}
	if h.comm != nil {
		h.comm.Close()
		h.comm = nil
	}
	if h.closer != nil {
		h.closer()
		h.api, h.closer, h.member = nil, nil, nil
	}
	if err := r.destroyMachine(ctx, old, oldGen); err != nil {
		return err
	}
	a.Kind = plan.Create
	if err := makeMachine(ctx, r, h, a); err != nil {
		return err
	}
	cfg, err := r.commConfig(h.rec.Name, h.rec.Machine)
	if err != nil {
		return err
	}
	if h.comm, err = r.dialSSH(ctx, cfg); err != nil {
		return err
	}
	if err := prepareHost(ctx, r, h, r.peers()); err != nil {
		return err
	}
	if err := runSteps(ctx, r, h); err != nil {
		return err
	}
	if err := hostDone(r, h); err != nil {
		return err
	}
	if err := r.engines(ctx, []*host{h}); err != nil {
		return err
	}
	if err := join(ctx, r, h, manager); err != nil {
		return err
	}
	r.mu.Lock()
	h.rec.Status = state.StatusReady
	r.mu.Unlock()
	r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: h.rec.Name, Step: "machine.reinstall", Msg: fmt.Sprintf("generation %d", h.rec.Gen())})
	return r.save()
}
