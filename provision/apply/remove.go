package apply

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/swarm"
)

// remove drains and removes machines the spec no longer wants, then destroys
// their hosts: workers first, in waves of at most a quarter of the workers
// that stay (each wave's tasks Running elsewhere before the next goes),
// then managers one at a time in a quorum-safe order (demoted first, so
// quorum shrinks cleanly).
type remove struct{}

// removeWave is the most workers drained and removed at once.
const removeWave = 20

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
	// Workers in waves: each wave's drains reschedule its tasks onto the
	// workers that stay before the next wave stops serving. A wave is at
	// most a quarter of the workers that stay (so they keep at least four
	// fifths of the capacity they and the wave had), at least one, at most
	// removeWave and the parallelism: scaling 4 -> 1 goes one at a time,
	// 1200 -> 1000 twenty at a time.
	stay := 0
	for _, a := range r.plan.Actions {
		if a.Kind != plan.Remove && a.Role != spec.RoleManager {
			stay++
		}
	}
	wave := max(1, min(stay/4, removeWave))
	if p := r.parallelism(); p > 0 {
		wave = min(wave, p)
	}
	for len(workers) > 0 {
		if r.stopped() {
			return nil
		}
		n := min(wave, len(workers))
		batch := workers[:n]
		workers = workers[n:]
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, a := range batch {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.rep.Event(Event{Time: time.Now(), Kind: StepStart, Host: a.Machine, Step: "machine.remove"})
				if err := removeOne(ctx, r, a); err != nil {
					mu.Lock()
					errs = append(errs, &StepError{Host: a.Machine, Step: "machine.remove", Err: err})
					mu.Unlock()
					r.rep.Event(Event{Time: time.Now(), Kind: StepFail, Host: a.Machine, Step: "machine.remove", Err: err.Error()})
				}
			}()
		}
		wg.Wait()
	}
	if r.members != nil {
		swarm.SortLeaderLast(managers, r.members.Nodes(), func(a plan.Action) (string, string) {
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
