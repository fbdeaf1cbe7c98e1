package apply

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/state"
)

// machines makes every machine the plan wants exist: adopts tagged strays,
// creates what is missing and the next generation of what is replaced (the
// old one stays until its successor joined, see the swarm phase). State is
// saved before and after each create so that a crash leaves a trace the
// next plan adopts.
type machines struct{}

func (machines) Name() string { return "machines" }

func (machines) Run(ctx context.Context, r *run) error {
	var work []*host
	actions := map[string]plan.Action{}
	for _, a := range r.plan.Actions {
		if a.Kind == plan.Remove {
			continue
		}
		actions[a.Machine] = a
		p, ok := r.pool(a.Role, a.Pool)
		if !ok {
			return fmt.Errorf("plan names pool %s/%s that the spec does not have", a.Role, a.Pool)
		}
		r.mu.Lock()
		rec := r.State.Machine(a.Machine)
		if rec != nil && rec.MadeWith == nil && a.Kind != plan.Replace && a.Made != nil {
			// A record from state version 1 that plan found made with the
			// spec's settings: record them (made_with) from now on.
			rec.MadeWith, rec.SpecHash = a.Made, plan.HashSettings(a.Made)
		}
		r.mu.Unlock()
		if rec == nil {
			rec = &state.Machine{Role: a.Role, Pool: a.Pool, Index: a.Index}
			rec.Name = a.Machine
			rec.Driver = a.Driver
		}
		h := &host{rec: rec, pool: p, action: a}
		r.hosts[a.Machine] = h
		switch {
		case a.Kind == plan.Replace && a.InPlace:
			// The host is reused: it stays a member until the reinstall
			// phase takes it out and makes it again.
			h.inPlace = true
		case needsMachineWork(a):
			work = append(work, h)
		}
	}
	if err := preflight(ctx, r, work); err != nil {
		return err
	}
	return r.each(ctx, work, "machine.create", func(ctx context.Context, h *host) error {
		return makeMachine(ctx, r, h, h.action)
	})
}

// makeMachine creates, adopts or starts one machine; for a replacement, the
// next generation, keeping the old one as retiring.
func makeMachine(ctx context.Context, r *run, h *host, a plan.Action) error {
	d, err := r.driver(a.Driver)
	if err != nil {
		return err
	}
	if a.Moved != nil {
		return followAddress(r, h, a)
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
		if a.Kind == plan.Adopt && a.Observed != nil && hk.Public == "" {
			hk.Public = a.Observed.SSH.HostKey
		}
		// A create interrupted before its machine was recorded: the key it
		// installs is still kept, and the driver may need it to finish
		// (the local driver copies it into a container never started).
		// It is then an installed key like any other: rotated on the
		// first connection.
		var installed *drivers.HostKey
		if kept, ok := r.keptInstallKey(h.rec.Name, hk.Public); ok && h.rec.Status == state.StatusCreating {
			hk, installed = kept, &kept
		}
		m, err := d.Create(ctx, r.State.ClusterID, machineSpec(r, h, a, hk))
		if err != nil {
			return fmt.Errorf("start: %w", err)
		}
		m.Driver = a.Driver
		if m, err = r.pinnedKey(h, m, installed); err != nil {
			return err
		}
		record(r, h, m, state.StatusCreated, a)
		h.changed = true
		r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: h.rec.Name, Step: "machine.create", Msg: m.Address})
		if err := r.save(); err != nil {
			return err
		}
		if installed != nil {
			r.forgetInstallKey(h.rec.Name)
		}
		return nil
	}
	if a.Kind == plan.Replace && a.Recorded != nil {
		if err := retireLater(ctx, r, h, a); err != nil {
			return err
		}
	}
	hk, err := r.installKey(h.rec.Name)
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
	if m, err = r.pinnedKey(h, m, &hk); err != nil {
		return err
	}
	record(r, h, m, state.StatusCreated, a)
	h.changed = true
	r.mu.Lock()
	r.stats.Created++
	r.mu.Unlock()
	r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: h.rec.Name, Step: "machine.create", Msg: m.Address, Took: time.Since(t0)})
	r.log.Info("machine created", "host", h.rec.Name, "driver", a.Driver, "generation", a.Generation, "id", m.ID, "address", m.Address)
	if err := r.save(); err != nil {
		return err
	}
	r.forgetInstallKey(h.rec.Name)
	return nil
}

// retireLater moves the machine's current generation to its retiring list
// before the next one is made: the swarm phase takes it out of the swarm
// once its successor joined, then destroys it. A machine that is already
// gone, on a driver that cannot hold two generations, is destroyed now
// (freeing what the new one needs); only its node is left to remove.
func retireLater(ctx context.Context, r *run, h *host, a plan.Action) error {
	old := a.Recorded
	r.mu.Lock()
	already := false
	for _, x := range old.Retiring {
		already = already || max(1, x.Generation) == old.Gen()
	}
	r.mu.Unlock()
	if already || (old.ID == "" && old.NodeID == "" && a.Observed == nil) {
		return nil // retiring since an interrupted run, or never made
	}
	ret := state.Retiring{Machine: old.Machine, Generation: old.Gen(), NodeID: old.NodeID}
	var info drivers.Info
	if db, ok := r.Spec.Driver(old.Driver); ok {
		info, _ = drivers.Lookup(db.Type)
	}
	if a.Observed == nil && !drivers.Coexists(info, r.Drivers[old.Driver]) {
		r.note(h.rec.Name, "replacing: destroying the old machine (gone already)")
		if err := r.destroyMachine(ctx, old.Machine, old.Gen()); err != nil {
			return fmt.Errorf("destroy old machine: %w", err)
		}
		ret.Destroyed = true
	}
	r.mu.Lock()
	old.Retiring = append(old.Retiring, ret)
	r.mu.Unlock()
	return nil
}

// needsMachineWork says whether the machines phase calls the driver for a:
// to create, adopt or replace it, or to start a machine the driver reports
// stopped.
func needsMachineWork(a plan.Action) bool {
	switch a.Kind {
	case plan.Create, plan.Adopt, plan.Replace:
		return true
	case plan.Reconfigure:
		if a.Moved != nil {
			return true
		}
		return a.Observed != nil && a.Observed.State != "" && a.Observed.State != "running"
	}
	return false
}

// record stores the machine in state under the run's lock.
func record(r *run, h *host, m drivers.Machine, status string, a plan.Action) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fresh := a.Kind == plan.Replace || a.Kind == plan.Create
	m.Name = h.rec.Name
	h.rec.Machine = m
	h.rec.Status = status
	if a.Made != nil {
		h.rec.MadeWith = a.Made
		h.rec.SpecHash = plan.HashSettings(a.Made)
	}
	if a.Generation > 0 {
		h.rec.Generation = a.Generation
	}
	if fresh {
		h.rec.Steps = nil // a new machine has nothing applied
		h.rec.NodeID = ""
		h.rec.Labels = nil
		h.rec.Engine = ""
	}
	r.State.Put(h.rec)
}

// preflight asks each driver that will create machines whether it can make
// them all (credentials, machine types, images, networks), once, before the
// first create: a spec the platform cannot satisfy stops here with nothing made.
func preflight(ctx context.Context, r *run, work []*host) error {
	byDriver := map[string][]drivers.MachineSpec{}
	for _, h := range work {
		a := h.action
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
	gen := max(1, a.Generation)
	tags := map[string]string{
		drivers.TagCluster: r.State.ClusterID,
		drivers.TagMachine: h.rec.Name,
		drivers.TagRole:    p.Role,
		drivers.TagPool:    p.Name,
	}
	// Drivers that hold two generations at once tell them apart by this
	// tag; the others have no use for it (and some turn every tag into a
	// resource of its own).
	if db, ok := r.Spec.Driver(a.Driver); ok {
		if info, _ := drivers.Lookup(db.Type); drivers.Coexists(info, r.Drivers[a.Driver]) {
			tags[drivers.TagGeneration] = strconv.Itoa(gen)
		}
	}
	return drivers.MachineSpec{
		Name:          h.rec.Name,
		Role:          p.Role,
		Pool:          p.Name,
		DiskGiB:       p.DiskGiB,
		DockerDiskGiB: plan.DockerDisk(r.Spec, p),
		Size:          p.Size,
		Address:       a.Address,
		Labels:        p.Labels,
		Tags:          tags,
		SSH:           drivers.SSHAccess{User: r.Spec.SSH.User, PublicKey: r.adminPub},
		HostKey:       hk,
		Generation:    gen,
		Logs:          r.Spec.Logging.Cloud(),
		Metrics:       r.Spec.Engine.Metrics(),
	}
}

// followAddress records the addresses the driver reports for a running
// machine that moved (plan.Moved): the host steps then reach it there and
// reissue its certificate for them. A swarm member whose swarm address
// moved is refused: the other members and the managers' raft still know
// the old one, and provision does not guess how to move it.
func followAddress(r *run, h *host, a plan.Action) error {
	mv := a.Moved
	r.mu.Lock()
	adv := h.rec.Advertise()
	r.mu.Unlock()
	if mv.Swarm {
		return &StepError{Host: h.rec.Name, Step: "machine.address", Err: fmt.Errorf("the driver reports the machine at %s, state recorded %s: its swarm address %s moved outside provision, and the swarm still knows the old one, so nothing was changed on it. Give the machine its old address back (a reserved or static address), or remove the machine so that the next apply replaces it",
			addressPair(mv.To, mv.PrivateTo), addressPair(mv.From, mv.PrivateFrom), adv)}
	}
	r.mu.Lock()
	h.rec.Address = mv.To
	if mv.PrivateTo != "" {
		h.rec.PrivateAddress = mv.PrivateTo
	}
	r.mu.Unlock()
	h.changed = true
	r.note(h.rec.Name, fmt.Sprintf("the machine's address moved from %s to %s: recorded (docker contexts made for the old address need `provision env --context` again)", mv.From, mv.To))
	r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: h.rec.Name, Step: "machine.address", Msg: mv.To})
	return r.save()
}

func addressPair(addr, private string) string {
	if private != "" {
		return addr + " (private " + private + ")"
	}
	return addr
}
