package apply

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	dswarm "github.com/docker/docker/api/types/swarm"

	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/redact"
	"github.com/provision/provision/provision/spec"
)

// hostSteps gathers each host's facts in one remote call on every host at
// once and checks every step against them (a no-op re-apply is one round trip
// per host). Hosts with work to do then run their steps: new hosts and
// changes that leave the engine running all at once; swarm members whose
// engine restarts in rolling batches (managers one at a time, workers a
// quarter at a time), each batch back in the swarm before the next starts.
func (e *Engine) hostSteps(ctx context.Context) error {
	peers := e.peers()
	if err := e.each(ctx, e.live(), "host.check", func(ctx context.Context, h *host) error {
		return e.prepareHost(ctx, h, peers)
	}); err != nil {
		return err
	}
	var todo []*host
	for _, h := range e.live() {
		if len(h.pending) > 0 {
			todo = append(todo, h)
		} else if err := e.hostDone(h); err != nil {
			e.fail(h, "host", err)
		}
	}
	batches := rollout(todo, e.Parallelism)
	if slices.ContainsFunc(batches, func(b batch) bool { return b.rolling }) {
		// waitMember asks engines; their clients are opened here, before
		// the batches run their hosts in parallel.
		if err := e.engines(ctx, e.live()); err != nil {
			return err
		}
	}
	for i, b := range batches {
		if e.stopped() {
			return nil
		}
		if b.rolling {
			names := make([]string, len(b.hosts))
			for j, h := range b.hosts {
				names[j] = h.rec.Name
			}
			e.note("", fmt.Sprintf("rolling batch %d/%d: %s (engine restart)", i+1, len(batches), strings.Join(names, ", ")))
		}
		if err := e.each(ctx, b.hosts, "host", func(ctx context.Context, h *host) error {
			if err := e.runSteps(ctx, h); err != nil {
				return err
			}
			if b.rolling && h.restarted {
				if err := e.waitMember(ctx, h); err != nil {
					return fmt.Errorf("back in the swarm after the engine restart: %w", err)
				}
			}
			return e.hostDone(h)
		}); err != nil {
			return err
		}
		if b.rolling && e.batchFailed(b.hosts) {
			// A member that did not come back stops the rollout: the next
			// manager could take quorum with it.
			for _, later := range batches[i+1:] {
				for _, h := range later.hosts {
					e.fail(h, "host", errors.New("not reconfigured: an earlier rolling batch failed"))
				}
			}
			return nil
		}
	}
	return nil
}

// restartSteps are the host steps whose change restarts the engine (a new
// package, certificates or daemon settings): on a swarm member they run in
// rolling batches.
var restartSteps = map[string]bool{"engine.install": true, "engine.tls": true, "engine.config": true}

// batch is hosts whose steps run at once.
type batch struct {
	hosts   []*host
	rolling bool // members whose engine restarts: wait until they are back
}

// rollout splits hosts with pending steps into batches: first every host
// that is not yet a swarm member or keeps its engine running, together;
// then members whose engine restarts: managers one per batch, then workers
// in batches of a quarter of them (at least one, at most parallelism).
func rollout(hosts []*host, parallelism int) []batch {
	var free, managers, workers []*host
	for _, h := range hosts {
		restarts := false
		for _, id := range h.pending {
			restarts = restarts || restartSteps[id]
		}
		switch {
		case h.rec.NodeID == "" || !restarts:
			free = append(free, h)
		case h.rec.Role == spec.RoleManager:
			managers = append(managers, h)
		default:
			workers = append(workers, h)
		}
	}
	var out []batch
	if len(free) > 0 {
		out = append(out, batch{hosts: free})
	}
	for _, h := range managers {
		out = append(out, batch{hosts: []*host{h}, rolling: true})
	}
	size := max(1, len(workers)/4)
	if parallelism > 0 {
		size = min(size, parallelism)
	}
	for len(workers) > 0 {
		n := min(size, len(workers))
		out = append(out, batch{hosts: workers[:n], rolling: true})
		workers = workers[n:]
	}
	return out
}

func (e *Engine) batchFailed(hs []*host) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, h := range hs {
		if h.err != nil {
			return true
		}
	}
	return false
}

// waitMember waits until a member's restarted engine is back in the swarm:
// its engine answers as an active node (a manager with control), and a
// manager sees the node Ready (and, for a manager, reachable). hostSteps has
// opened the engine clients.
func (e *Engine) waitMember(ctx context.Context, h *host) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	var last error
	if err := poll(ctx, func() (bool, error) {
		l, err := h.engine.Inspect(ctx)
		if err != nil {
			last = err
			return false, nil
		}
		return l.State == dswarm.LocalNodeStateActive && (h.rec.Role != spec.RoleManager || l.Manager), nil
	}); err != nil {
		return fmt.Errorf("engine: %w (last: %v)", err, last)
	}
	mgr := h
	if h.rec.Role != spec.RoleManager {
		if mgr = e.leader(); mgr == nil {
			return errors.New("no manager to ask")
		}
	}
	return mgr.engine.WaitReady(ctx, []string{h.rec.NodeID})
}

// prepareHost gathers the facts, builds the host's target and lists the steps
// whose Check says there is work.
func (e *Engine) prepareHost(ctx context.Context, h *host, peers []string) error {
	tlsFiles, err := e.serverCert(h)
	if err != nil {
		return fmt.Errorf("server certificate: %w", err)
	}
	cfg := &hostos.Config{
		Cluster:       e.Spec.Name,
		ClusterID:     e.State.ClusterID,
		Node:          h.rec.Name,
		Role:          h.rec.Role,
		Index:         h.rec.Index,
		AdminUser:     h.rec.SSH.User,
		Engine:        e.Spec.Engine,
		Logging:       e.Spec.Logging,
		Prune:         e.Spec.Prune,
		Hardening:     e.Spec.Hardening,
		TLS:           tlsFiles,
		Peers:         peers,
		OperatorCIDRs: e.Spec.TLS.AllowedCIDRs,
		BundleDir:     e.bundleDir(),
	}
	t0 := time.Now()
	facts, err := hostos.GatherFacts(ctx, h.comm, hostos.ManagedPaths(cfg))
	if err != nil {
		return fmt.Errorf("facts: %w", err)
	}
	e.Log.Debug("facts gathered", "host", h.rec.Name, "took", time.Since(t0))
	t := &hostos.Target{Name: h.rec.Name, Comm: h.comm, Facts: facts, Config: cfg, Log: e.Log.With("host", h.rec.Name)}
	// A fresh login with the host's own connection settings (pinned key,
	// bastion): harden.ssh's proof that a changed sshd still lets us in.
	t.Relogin = func(ctx context.Context) error {
		c, err := e.Dial(ctx, h.rec.Machine)
		if err != nil {
			return fmt.Errorf("fresh ssh login: %w", err)
		}
		defer c.Close()
		if _, err := c.Run(ctx, "true", nil); err != nil {
			return fmt.Errorf("fresh ssh login: run true: %w", err)
		}
		return nil
	}
	h.target = t
	h.steps = hostos.Steps(cfg)
	h.pending = nil
	for _, st := range h.steps {
		done, err := st.Check(ctx, t)
		if err != nil {
			return &StepError{Host: h.rec.Name, Step: st.ID(), Err: err}
		}
		if !done {
			h.pending = append(h.pending, st.ID())
		}
	}
	return nil
}

// runSteps runs the host's steps in order, checking each again against the
// facts the earlier steps updated. An interrupt stops it between steps.
func (e *Engine) runSteps(ctx context.Context, h *host) error {
	t := h.target
	for _, st := range h.steps {
		if e.stopped() {
			return errStopped
		}
		done, err := st.Check(ctx, t)
		if err != nil {
			return &StepError{Host: h.rec.Name, Step: st.ID(), Err: err}
		}
		if done {
			e.markStep(h, st.ID())
			continue
		}
		s0 := time.Now()
		e.Report.Event(Event{Time: s0, Kind: StepStart, Host: h.rec.Name, Step: st.ID()})
		if err := st.Apply(ctx, t); err != nil {
			return &StepError{Host: h.rec.Name, Step: st.ID(), Err: err}
		}
		h.changed = true
		h.restarted = h.restarted || restartSteps[st.ID()]
		e.markStep(h, st.ID())
		e.Report.Event(Event{Time: time.Now(), Kind: StepChange, Host: h.rec.Name, Step: st.ID(), Took: time.Since(s0)})
		e.Log.Info("step applied", "host", h.rec.Name, "step", st.ID(), "took", time.Since(s0))
	}
	return nil
}

// hostDone records a host whose steps all hold.
func (e *Engine) hostDone(h *host) error {
	e.mu.Lock()
	for _, st := range h.steps {
		if h.rec.Steps[st.ID()] == "" {
			if h.rec.Steps == nil {
				h.rec.Steps = map[string]string{}
			}
			h.rec.Steps[st.ID()] = time.Now().UTC().Format(time.RFC3339)
		}
	}
	if t := h.target; t != nil && t.Facts != nil && t.Facts.Engine != "" {
		h.rec.Engine = t.Facts.Engine
	}
	e.mu.Unlock()
	return e.save()
}

func (e *Engine) markStep(h *host, id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if h.rec.Steps == nil {
		h.rec.Steps = map[string]string{}
	}
	h.rec.Steps[id] = time.Now().UTC().Format(time.RFC3339)
}

func (e *Engine) bundleDir() string {
	if e.Spec.Engine.BundleDir != "" {
		return e.Spec.Engine.BundleDir
	}
	return filepath.Join(e.Store.Dir(), "bundles")
}

// peers lists every member's advertise address, sorted.
func (e *Engine) peers() []string {
	// Every member the spec keeps, including hosts that failed in this run:
	// a host whose SSH connect failed is still a swarm member, and dropping
	// it from the others' firewalls would cut it off until an apply succeeds.
	e.mu.Lock()
	var out []string
	for _, h := range e.hosts {
		if a := h.rec.Advertise(); a != "" {
			out = append(out, a)
		}
	}
	e.mu.Unlock()
	sort.Strings(out)
	return slices.Compact(out)
}

// serverCert returns the node's TLS files, issuing a new certificate when
// there is none or the stored one fails pki's CheckServer (another CA, not
// server-only, near expiry, names no longer covering the node).
func (e *Engine) serverCert(h *host) (hostos.TLSFiles, error) {
	dir := e.nodeCertDir(h.rec.Name)
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	names := e.certNames(h)
	certPEM, cerr := os.ReadFile(certPath)
	keyPEM, kerr := os.ReadFile(keyPath)
	if cerr == nil && kerr == nil {
		err := e.ca.CheckServer(certPEM, keyPEM, names, time.Now())
		if err == nil {
			return hostos.TLSFiles{CA: e.ca.CertPEM, Cert: certPEM, Key: redact.Secret(keyPEM)}, nil
		}
		e.Log.Info("issuing a new server certificate", "host", h.rec.Name, "reason", "the stored one "+err.Error())
	}
	b, err := e.ca.Server(h.rec.Name, names, time.Duration(e.Spec.TLS.ValidityHours)*time.Hour)
	if err != nil {
		return hostos.TLSFiles{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return hostos.TLSFiles{}, err
	}
	if err := writeFile(keyPath, b.KeyPEM, 0o600); err != nil {
		return hostos.TLSFiles{}, err
	}
	if err := writeFile(certPath, b.CertPEM, 0o600); err != nil {
		return hostos.TLSFiles{}, err
	}
	e.mu.Lock()
	h.rec.CertSerial, h.rec.CertNotAfter = b.Serial, b.NotAfter
	e.mu.Unlock()
	return hostos.TLSFiles{CA: e.ca.CertPEM, Cert: b.CertPEM, Key: b.KeyPEM}, nil
}

func (e *Engine) certNames(h *host) []string {
	names := []string{h.rec.Name}
	if h.rec.Address != "" {
		names = append(names, h.rec.Address)
	}
	if h.rec.PrivateAddress != "" {
		names = append(names, h.rec.PrivateAddress)
	}
	names = append(names, e.Spec.TLS.ExtraNames...)
	return names
}

func writeFile(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
