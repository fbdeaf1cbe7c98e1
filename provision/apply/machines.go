package apply

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
)

// pool returns the spec pool a machine belongs to.
func (e *Engine) pool(role, name string) (spec.Pool, bool) {
	for _, p := range e.Spec.Pools() {
		if p.Role == role && p.Name == name {
			return p, true
		}
	}
	return spec.Pool{}, false
}

func (e *Engine) driver(name string) (drivers.Driver, error) {
	d, ok := e.Drivers[name]
	if !ok {
		return nil, fmt.Errorf("driver %q is not configured", name)
	}
	return d, nil
}

// machines makes every machine the plan wants exist: adopts tagged strays,
// destroys what is replaced, creates what is missing. State is saved before
// and after each create so that a crash leaves a trace the next plan adopts.
func (e *Engine) machines(ctx context.Context) error {
	var work []*host
	for _, a := range e.plan.Actions {
		if a.Kind == plan.Remove {
			continue
		}
		p, ok := e.pool(a.Role, a.Pool)
		if !ok {
			return fmt.Errorf("plan names pool %s/%s that the spec does not have", a.Role, a.Pool)
		}
		e.mu.Lock()
		rec := e.State.Machine(a.Machine)
		e.mu.Unlock()
		if rec == nil {
			rec = &state.Machine{Role: a.Role, Pool: a.Pool, Index: a.Index}
			rec.Name = a.Machine
			rec.Driver = a.Driver
		}
		h := &host{rec: rec, pool: p}
		e.hosts[a.Machine] = h
		if needsMachineWork(a) {
			work = append(work, h)
		}
	}
	actions := map[string]plan.Action{}
	for _, a := range e.plan.Actions {
		actions[a.Machine] = a
	}
	if err := e.preflight(ctx, work, actions); err != nil {
		return err
	}
	return e.each(ctx, work, "machine.create", func(ctx context.Context, h *host) error {
		a := actions[h.rec.Name]
		d, err := e.driver(a.Driver)
		if err != nil {
			return err
		}
		if a.Kind == plan.Replace && a.Recorded != nil && a.Recorded.ID != "" {
			old := a.Recorded.Machine
			if od, err := e.driver(old.Driver); err == nil {
				e.note(h.rec.Name, "replacing: destroying the old machine")
				if err := od.Destroy(ctx, e.owned(old)); err != nil && !errors.Is(err, drivers.ErrNotFound) {
					return fmt.Errorf("destroy old machine: %w", err)
				}
			}
			// The old swarm node is removed by the swarm phase.
			e.mu.Lock()
			e.staleNodes = append(e.staleNodes, a.Recorded.NodeID)
			e.mu.Unlock()
		}
		if a.Kind == plan.Reconfigure || a.Kind == plan.Adopt {
			// A machine an interrupted create left (maybe never started, or
			// started before its admin user was set up), or one that is
			// stopped: Create is idempotent by name and finishes and starts
			// the existing machine, never a second one. Its host key stays.
			if a.Kind == plan.Adopt {
				e.note(h.rec.Name, "adopting "+a.Observed.ID+" (found by its cluster tags)")
			} else {
				e.note(h.rec.Name, "starting the existing machine")
			}
			e.Report.Event(Event{Time: time.Now(), Kind: StepStart, Host: h.rec.Name, Step: "machine.create"})
			hk := drivers.HostKey{Public: h.rec.SSH.HostKey}
			m, err := d.Create(ctx, e.State.ClusterID, e.machineSpec(h, a, hk))
			if err != nil {
				return fmt.Errorf("start: %w", err)
			}
			m.Driver = a.Driver
			if m, err = e.pinnedKey(h, m, nil); err != nil {
				return err
			}
			e.record(h, m, state.StatusCreated, a)
			h.changed = true
			return e.save()
		}
		hk, err := e.installKey(h.rec.Name)
		if err != nil {
			return err
		}
		want := e.machineSpec(h, a, hk)
		// Record the intent first: a crash during Create leaves a machine the
		// next plan finds by its tags and adopts.
		e.record(h, drivers.Machine{Name: h.rec.Name, Driver: a.Driver, SSH: drivers.SSHEndpoint{HostKey: hk.Public}}, state.StatusCreating, a)
		if err := e.save(); err != nil {
			return err
		}
		t0 := time.Now()
		e.Report.Event(Event{Time: t0, Kind: StepStart, Host: h.rec.Name, Step: "machine.create"})
		m, err := d.Create(ctx, e.State.ClusterID, want)
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		m.Driver = a.Driver
		if m, err = e.pinnedKey(h, m, &hk); err != nil {
			return err
		}
		e.record(h, m, state.StatusCreated, a)
		h.changed = true
		e.mu.Lock()
		e.stats.Created++
		e.mu.Unlock()
		e.Report.Event(Event{Time: time.Now(), Kind: StepChange, Host: h.rec.Name, Step: "machine.create", Msg: m.Address, Took: time.Since(t0)})
		e.Log.Info("machine created", "host", h.rec.Name, "driver", a.Driver, "id", m.ID, "address", m.Address)
		if err := e.save(); err != nil {
			return err
		}
		e.forgetInstallKey(h.rec.Name)
		return nil
	})
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

func (e *Engine) note(hostName, msg string) {
	e.Report.Event(Event{Time: time.Now(), Kind: Note, Host: hostName, Msg: msg})
}

// record stores the machine in state under the engine's lock.
func (e *Engine) record(h *host, m drivers.Machine, status string, a plan.Action) {
	e.mu.Lock()
	defer e.mu.Unlock()
	keepSteps := h.rec.Steps
	if a.Kind == plan.Replace || a.Kind == plan.Create {
		keepSteps = nil // a new machine has nothing applied
	}
	m.Name = h.rec.Name
	h.rec.Machine = m
	h.rec.Status = status
	h.rec.SpecHash = plan.MachineHash(e.Spec, h.pool, h.rec.Index)
	h.rec.Steps = keepSteps
	if a.Kind == plan.Replace || a.Kind == plan.Create {
		h.rec.NodeID = ""
	}
	e.State.Put(h.rec)
}

// preflight asks each driver that will create machines whether it can make
// them all (credentials, machine types, images, networks), once, before the
// first create: a spec the platform cannot satisfy stops here with nothing made.
func (e *Engine) preflight(ctx context.Context, work []*host, actions map[string]plan.Action) error {
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
			byDriver[a.Driver] = append(byDriver[a.Driver], e.machineSpec(h, a, hk))
		}
	}
	names := make([]string, 0, len(byDriver))
	for name := range byDriver {
		names = append(names, name)
	}
	sort.Strings(names)
	var errs []error
	for _, name := range names {
		d, err := e.driver(name)
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
		e.Log.Debug("driver preflight passed", "driver", name, "machines", len(byDriver[name]), "took", time.Since(t0))
	}
	return errors.Join(errs...)
}

// owned returns m with the cluster's ownership tags filled in, so that a
// driver can find a machine whose create was interrupted before its ID was
// recorded (the tags are derived from state, never from the driver).
func (e *Engine) owned(m drivers.Machine) drivers.Machine {
	tags := make(map[string]string, len(m.Tags)+2)
	for k, v := range m.Tags {
		tags[k] = v
	}
	if tags[drivers.TagCluster] == "" {
		tags[drivers.TagCluster] = e.State.ClusterID
	}
	if tags[drivers.TagMachine] == "" {
		tags[drivers.TagMachine] = m.Name
	}
	m.Tags = tags
	return m
}

// machineSpec is what the driver is asked for.
func (e *Engine) machineSpec(h *host, a plan.Action, hk drivers.HostKey) drivers.MachineSpec {
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
			drivers.TagCluster: e.State.ClusterID,
			drivers.TagMachine: h.rec.Name,
			drivers.TagRole:    p.Role,
			drivers.TagPool:    p.Name,
		},
		SSH:     drivers.SSHAccess{User: e.Spec.SSH.User, PublicKey: e.adminPub},
		HostKey: hk,
	}
}

// connect dials every live host once; the connection is reused by every later
// phase.
func (e *Engine) connect(ctx context.Context) error {
	return e.each(ctx, e.live(), "ssh.connect", func(ctx context.Context, h *host) error {
		m := h.rec.Machine
		if m.Address == "" {
			return fmt.Errorf("machine has no address (status %s): re-run apply to finish creating it", h.rec.Status)
		}
		cfg, err := e.commConfig(h.rec.Name, m)
		if err != nil {
			return err
		}
		c, err := comm.Dial(ctx, cfg)
		if err != nil {
			return err
		}
		h.comm = c
		return e.rotateHostKey(ctx, h)
	})
}

func (e *Engine) commConfig(name string, m drivers.Machine) (comm.Config, error) {
	signer := e.admin
	if m.SSH.KeyFile != "" {
		s, err := loadSigner(m.SSH.KeyFile)
		if err != nil {
			return comm.Config{}, err
		}
		signer = s
	}
	port := m.SSH.Port
	if port == 0 {
		port = 22
	}
	cfg := comm.Config{
		Host:        name,
		Address:     m.Address,
		Port:        port,
		User:        m.SSH.User,
		Signer:      signer,
		HostKey:     m.SSH.HostKey,
		NextHostKey: e.nextHostKey(name),
		Timeout:     e.connectTimeout(),
		Log:         e.logger().With("host", name),
	}
	if b := m.SSH.Bastion; b != nil {
		bs := signer
		if b.KeyFile != "" {
			s, err := loadSigner(b.KeyFile)
			if err != nil {
				return comm.Config{}, err
			}
			bs = s
		}
		bport := b.Port
		if bport == 0 {
			bport = 22
		}
		cfg.Bastion = &comm.Config{Host: name + "/bastion", Address: b.Address, Port: bport, User: b.User, Signer: bs, HostKey: b.HostKey, Timeout: e.connectTimeout(), Log: cfg.Log}
	}
	return cfg, nil
}

// nextHostKey is the key a host key rotation pinned for the machine, if one
// is under way: connections accept it beside the current one.
func (e *Engine) nextHostKey(name string) string {
	if e.State == nil {
		return ""
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if rec := e.State.Machine(name); rec != nil {
		return rec.HostKeyNext
	}
	return ""
}

// Dial connects to one recorded machine with the cluster's admin key and its
// pinned host key (for `provision ssh`, `status`, `audit`, and harden.ssh's
// fresh login). It changes nothing on e: one engine serves concurrent Dials.
func (e *Engine) Dial(ctx context.Context, m drivers.Machine) (*comm.Client, error) {
	if err := e.adminKey(); err != nil {
		return nil, err
	}
	cfg, err := e.commConfig(m.Name, m)
	if err != nil {
		return nil, err
	}
	cfg.Timeout = 30 * time.Second
	if t := e.Spec.SSH.ConnectTimeout; t > 0 && t < cfg.Timeout {
		cfg.Timeout = t
	}
	return comm.Dial(ctx, cfg)
}
