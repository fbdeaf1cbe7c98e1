package apply

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/swarm"
)

// remove drains and removes machines the spec no longer wants, then destroys
// their hosts: workers first, one at a time (each drained node's tasks
// Running elsewhere before the next goes), then managers one at a time in a
// quorum-safe order (demoted first, so quorum shrinks cleanly).
type remove struct{}

func (remove) Name() string { return "remove" }

func (remove) Run(ctx context.Context, r *run) error {
	var workers, managers []plan.Action
	for _, a := range r.plan.Actions {
		if a.Kind != plan.Remove {
			continue
		}
		if a.Role == spec.RoleManager {
			managers = append(managers, a)
		} else {
			workers = append(workers, a)
		}
	}
	var errs []error
	// Machines under a kept name that no record knows (leftover
	// generations) go first: they are in no swarm.
	for _, a := range r.plan.Actions {
		for _, m := range a.Leftovers {
			if err := r.destroyMachine(ctx, m, drivers.GenerationOf(m.Tags)); err != nil {
				errs = append(errs, &StepError{Host: a.Machine, Step: "machine.remove", Err: fmt.Errorf("leftover %s: %w", m.ID, err)})
				continue
			}
			r.note(a.Machine, "destroyed leftover machine "+m.ID)
		}
	}
	if len(workers)+len(managers) == 0 {
		return errors.Join(errs...)
	}
	// Workers one at a time: each drain reschedules its tasks onto nodes
	// that stay before the next node stops serving.
	for _, a := range workers {
		if r.stopped() {
			return nil
		}
		r.rep.Event(Event{Time: time.Now(), Kind: StepStart, Host: a.Machine, Step: "machine.remove"})
		if err := removeOne(ctx, r, a); err != nil {
			errs = append(errs, &StepError{Host: a.Machine, Step: "machine.remove", Err: err})
			r.rep.Event(Event{Time: time.Now(), Kind: StepFail, Host: a.Machine, Step: "machine.remove", Err: err.Error()})
		}
	}
	if r.members != nil {
		swarm.SortRemovals(managers, r.members.Nodes(), func(a plan.Action) (string, string) {
			if a.Recorded == nil {
				return a.Machine, ""
			}
			return a.Machine, a.Recorded.NodeID
		})
	}
	for _, a := range managers {
		if r.stopped() {
			return errors.Join(errs...)
		}
		if a.Recorded != nil && a.Recorded.NodeID != "" {
			if err := r.backup(ctx, "manager "+a.Machine+" is removed", a.Recorded.NodeID); err != nil {
				errs = append(errs, &StepError{Host: a.Machine, Step: "machine.remove", Err: err})
				break
			}
		}
		r.rep.Event(Event{Time: time.Now(), Kind: StepStart, Host: a.Machine, Step: "machine.remove"})
		if err := removeOne(ctx, r, a); err != nil {
			errs = append(errs, &StepError{Host: a.Machine, Step: "machine.remove", Err: err})
			r.rep.Event(Event{Time: time.Now(), Kind: StepFail, Host: a.Machine, Step: "machine.remove", Err: err.Error()})
			break // never remove a second manager after a failure
		}
	}
	return errors.Join(errs...)
}

// removeOne takes one machine (and any earlier generation of it still
// retiring) out of the swarm, quorum-safe for managers, and destroys it.
func removeOne(ctx context.Context, r *run, a plan.Action) error {
	rec := a.Recorded
	if rec != nil {
		for i, old := range rec.Retiring {
			if old.NodeID != "" && r.members != nil && r.members.Via() != nil {
				if err := r.members.Retire(ctx, a.Machine, old.NodeID, nil); err != nil {
					return err
				}
			}
			if !old.Destroyed && (a.RetiringObserved[i] != nil || old.ID != "") {
				if err := r.destroyMachine(ctx, old.Machine, max(1, old.Generation)); err != nil {
					return err
				}
			}
		}
	}
	if rec != nil && rec.NodeID != "" && r.members != nil && r.members.Via() != nil {
		var leaver *swarm.Host
		if a.Observed != nil && rec.Address != "" {
			// The host still exists: its engine leaves by itself.
			api, closer, err := r.openEngineAPI(ctx, rec.Machine)
			if err == nil {
				defer closer()
				leaver = &swarm.Host{Name: rec.Name, Advertise: rec.Advertise(), API: api, NodeID: rec.NodeID}
			}
		}
		if err := r.members.Retire(ctx, a.Machine, rec.NodeID, leaver); err != nil {
			return err
		}
	}
	m := a.Observed
	if rec != nil {
		m = &rec.Machine
	}
	if m != nil {
		if err := r.destroyMachine(ctx, *m, a.Generation); err != nil {
			return err
		}
	}
	r.mu.Lock()
	r.State.Remove(a.Machine)
	r.stats.Removed++
	r.mu.Unlock()
	r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: a.Machine, Step: "machine.remove"})
	return r.save()
}
