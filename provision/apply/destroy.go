package apply

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/swarm"
)

// Destroy removes every machine recorded in state and every stray the drivers
// find with the cluster's tag, then each driver's shared resources.
func (e *Runner) Destroy(ctx context.Context, p *plan.Plan) error {
	r := newRun(e, p)
	defer r.Close() // the bastions' engine API tunnels
	t0 := time.Now()
	r.rep.Event(Event{Time: t0, Kind: PhaseStart, Phase: "destroy", Hosts: len(p.Actions)})
	err := r.destroy(ctx, p)
	end := Event{Time: time.Now(), Kind: PhaseEnd, Phase: "destroy", Took: time.Since(t0)}
	if err != nil {
		end.Err = err.Error()
	}
	r.rep.Event(end)
	return err
}

func (r *run) destroy(ctx context.Context, p *plan.Plan) error {
	if m := p.Missing; m != nil && !r.ForgetMissing {
		return fmt.Errorf("%w: %s. Nothing was changed", ErrMissingDestroy, m.Message)
	}
	if err := r.removeBalancers(ctx); err != nil { // lb.go: before any machine goes
		return err
	}
	leaveSwarm(ctx, r, p)
	g := new(errgroup.Group)
	g.SetLimit(r.parallelism())
	var errs []error
	for _, a := range p.Actions {
		m := a.Observed
		if a.Recorded != nil {
			m = &a.Recorded.Machine
		}
		if m == nil {
			continue
		}
		d, err := r.driver(m.Driver)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.Machine, err))
			continue
		}
		mach := owned(r.State.ClusterID, *m, a.Generation)
		g.Go(func() error {
			t0 := time.Now()
			r.rep.Event(Event{Time: t0, Kind: StepStart, Host: mach.Name, Step: "machine.destroy"})
			err := d.Destroy(ctx, mach)
			r.mu.Lock()
			defer r.mu.Unlock()
			if err != nil {
				errs = append(errs, &StepError{Host: mach.Name, Step: "machine.destroy", Err: err})
				r.rep.Event(Event{Time: time.Now(), Kind: StepFail, Host: mach.Name, Step: "machine.destroy", Err: err.Error()})
				return nil
			}
			r.State.Remove(mach.Name)
			r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: mach.Name, Step: "machine.destroy", Took: time.Since(t0)})
			return nil
		})
	}
	_ = g.Wait()
	if err := r.save(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for name, d := range r.Drivers {
		if td, ok := d.(drivers.Teardown); ok {
			if err := td.Teardown(ctx, r.State.ClusterID); err != nil {
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
func leaveSwarm(ctx context.Context, r *run, p *plan.Plan) {
	g := new(errgroup.Group)
	g.SetLimit(r.parallelism())
	for _, a := range p.Actions {
		if a.Recorded == nil || a.Recorded.NodeID == "" || a.Recorded.Address == "" {
			continue
		}
		m := a.Recorded.Machine
		api, closer, err := r.openEngineAPI(ctx, m)
		if err != nil {
			continue
		}
		g.Go(func() error {
			defer closer()
			ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			h := &swarm.Host{Name: m.Name, API: api}
			if err := h.Leave(ctx); err != nil {
				r.log.Debug("swarm leave before destroy", "host", m.Name, "err", err)
			}
			return nil
		})
	}
	_ = g.Wait()
}
