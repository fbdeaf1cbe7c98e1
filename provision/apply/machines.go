package apply

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/state"
)

// machines makes every machine the plan wants exist: adopts tagged strays,
// destroys what is replaced, creates what is missing. State is saved before
// and after each create so that a crash leaves a trace the next plan adopts.
type machines struct{}

func (machines) Name() string { return "machines" }

func (machines) Run(ctx context.Context, r *run) error {
	var work []*host
	actions := map[string]plan.Action{}
	for _, a := range r.plan.Actions {
		actions[a.Machine] = a
		if a.Kind == plan.Remove {
			continue
		}
		p, ok := r.pool(a.Role, a.Pool)
		if !ok {
			return fmt.Errorf("plan names pool %s/%s that the spec does not have", a.Role, a.Pool)
		}
		r.mu.Lock()
		rec := r.State.Machine(a.Machine)
		r.mu.Unlock()
		if rec == nil {
			rec = &state.Machine{Role: a.Role, Pool: a.Pool, Index: a.Index}
			rec.Name = a.Machine
			rec.Driver = a.Driver
		}
		h := &host{rec: rec, pool: p}
		r.hosts[a.Machine] = h
		if needsMachineWork(a) {
			work = append(work, h)
		}
	}
	if err := preflight(ctx, r, work, actions); err != nil {
		return err
	}
	return r.each(ctx, work, "machine.create", func(ctx context.Context, h *host) error {
		return makeMachine(ctx, r, h, actions[h.rec.Name])
	})
}

// makeMachine creates, adopts or starts one machine.
func makeMachine(ctx context.Context, r *run, h *host, a plan.Action) error {
	d, err := r.driver(a.Driver)
	if err != nil {
		return err
	}
	if a.Kind == plan.Replace && a.Recorded != nil && a.Recorded.ID != "" {
		old := a.Recorded.Machine
		if od, err := r.driver(old.Driver); err == nil {
			r.note(h.rec.Name, "replacing: destroying the old machine")
			if err := od.Destroy(ctx, owned(r.State.ClusterID, old)); err != nil && !errors.Is(err, drivers.ErrNotFound) {
				return fmt.Errorf("destroy old machine: %w", err)
			}
		}
		// The old swarm node is removed by the swarm phase.
		r.mu.Lock()
		r.staleNodes = append(r.staleNodes, a.Recorded.NodeID)
		r.mu.Unlock()
	}
	if a.Kind == plan.Reconfigure || a.Kind == plan.Adopt {
		// A machine an interrupted create left (maybe never started, or
		// started before its admin user was set up), or one that is
		// stopped: Create is idempotent by name and finishes and starts
		// the existing machine, never a second one. Its host key stays.
		if a.Kind == plan.Adopt {
			r.note(h.rec.Name, "adopting "+a.Observed.ID+" (found by its cluster tags)")
		} else {
			r.note(h.rec.Name, "starting the existing machine")
		}
		r.rep.Event(Event{Time: time.Now(), Kind: StepStart, Host: h.rec.Name, Step: "machine.create"})
		hk := drivers.HostKey{Public: h.rec.SSH.HostKey}
		m, err := d.Create(ctx, r.State.ClusterID, machineSpec(r, h, a, hk))
		if err != nil {
			return fmt.Errorf("start: %w", err)
		}
		m.Driver = a.Driver
		record(r, h, m, state.StatusCreated, a)
		h.changed = true
		return r.save()
	}
	hk, err := newHostKey()
	if err != nil {
		return err
	}
	want := machineSpec(r, h, a, hk)
	// Record the intent first: a crash during Create leaves a machine the
	// next plan finds by its tags and adopts.
	record(r, h, drivers.Machine{Name: h.rec.Name, Driver: a.Driver, SSH: drivers.SSHEndpoint{HostKey: hk.Public}}, state.StatusCreating, a)
	if err := r.save(); err != nil {
		return err
	}
	t0 := time.Now()
	r.rep.Event(Event{Time: t0, Kind: StepStart, Host: h.rec.Name, Step: "machine.create"})
	m, err := d.Create(ctx, r.State.ClusterID, want)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	m.Driver = a.Driver
	record(r, h, m, state.StatusCreated, a)
	h.changed = true
	r.mu.Lock()
	r.stats.Created++
	r.mu.Unlock()
	r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: h.rec.Name, Step: "machine.create", Msg: m.Address, Took: time.Since(t0)})
	r.log.Info("machine created", "host", h.rec.Name, "driver", a.Driver, "id", m.ID, "address", m.Address)
	return r.save()
}

// needsMachineWork says whether the machines phase calls the driver for a:
// to create, adopt or replace it, or to start a machine the driver reports
// stopped.
func needsMachineWork(a plan.Action) bool {
	switch a.Kind {
	case plan.Create, plan.Adopt, plan.Replace:
		return true
	case plan.Reconfigure:
		return a.Observed != nil && a.Observed.State != "" && a.Observed.State != "running"
	}
	return false
}

// record stores the machine in state under the run's lock.
func record(r *run, h *host, m drivers.Machine, status string, a plan.Action) {
	r.mu.Lock()
	defer r.mu.Unlock()
	keepSteps := h.rec.Steps
	if a.Kind == plan.Replace || a.Kind == plan.Create {
		keepSteps = nil // a new machine has nothing applied
	}
	m.Name = h.rec.Name
	h.rec.Machine = m
	h.rec.Status = status
	h.rec.SpecHash = plan.MachineHash(r.Spec, h.pool, h.rec.Index)
	h.rec.Steps = keepSteps
	if a.Kind == plan.Replace || a.Kind == plan.Create {
		h.rec.NodeID = ""
	}
	r.State.Put(h.rec)
}

// preflight asks each driver that will create machines whether it can make
// them all (credentials, machine types, images, networks), once, before the
// first create: a spec the platform cannot satisfy stops here with nothing made.
func preflight(ctx context.Context, r *run, work []*host, actions map[string]plan.Action) error {
	byDriver := map[string][]drivers.MachineSpec{}
	for _, h := range work {
		a := actions[h.rec.Name]
		if a.Kind == plan.Create || a.Kind == plan.Replace {
			// The machine as Create will see it; its host key is made for
			// the check only (ed25519 is cheap), the real one at create.
			hk, err := newHostKey()
			if err != nil {
				return err
			}
			byDriver[a.Driver] = append(byDriver[a.Driver], machineSpec(r, h, a, hk))
		}
	}
	names := make([]string, 0, len(byDriver))
	for name := range byDriver {
		names = append(names, name)
	}
	sort.Strings(names)
	var errs []error
	for _, name := range names {
		d, err := r.driver(name)
		if err != nil {
			return err
		}
		pf, ok := d.(drivers.Preflighter)
		if !ok {
			continue
		}
		t0 := time.Now()
		if err := pf.Preflight(ctx, byDriver[name]); err != nil {
			errs = append(errs, fmt.Errorf("driver %s: preflight (nothing was created): %w", name, err))
			continue
		}
		r.log.Debug("driver preflight passed", "driver", name, "machines", len(byDriver[name]), "took", time.Since(t0))
	}
	return errors.Join(errs...)
}

// machineSpec is what the driver is asked for.
func machineSpec(r *run, h *host, a plan.Action, hk drivers.HostKey) drivers.MachineSpec {
	p := h.pool
	return drivers.MachineSpec{
		Name:    h.rec.Name,
		Role:    p.Role,
		Pool:    p.Name,
		DiskGiB: p.DiskGiB,
		Size:    p.Size,
		Address: a.Address,
		Labels:  p.Labels,
		Tags: map[string]string{
			drivers.TagCluster: r.State.ClusterID,
			drivers.TagMachine: h.rec.Name,
			drivers.TagRole:    p.Role,
			drivers.TagPool:    p.Name,
		},
		SSH:     drivers.SSHAccess{User: r.Spec.SSH.User, PublicKey: r.adminPub},
		HostKey: hk,
	}
}
