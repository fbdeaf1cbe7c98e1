package apply

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/redact"
)

// hostSteps gathers each host's facts in one remote call, then runs the host
// steps in order. A step whose Check reports done costs nothing more, so a
// no-op re-apply is one round trip per host.
func (e *Engine) hostSteps(ctx context.Context) error {
	peers := e.peers()
	return e.each(ctx, e.live(), "host", func(ctx context.Context, h *host) error {
		tlsFiles, err := e.serverCert(h)
		if err != nil {
			return fmt.Errorf("server certificate: %w", err)
		}
		cfg := &hostos.Config{
			Cluster:       e.Spec.Name,
			ClusterID:     e.State.ClusterID,
			Node:          h.rec.Name,
			Role:          h.rec.Role,
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
			ccfg, err := e.commConfig(h.rec.Name, h.rec.Machine)
			if err != nil {
				return err
			}
			ccfg.Timeout = 30 * time.Second
			c, err := comm.Dial(ctx, ccfg)
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
		for _, st := range hostos.Steps(cfg) {
			if ctx.Err() != nil {
				return ctx.Err()
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
			e.markStep(h, st.ID())
			e.Report.Event(Event{Time: time.Now(), Kind: StepChange, Host: h.rec.Name, Step: st.ID(), Took: time.Since(s0)})
			e.Log.Info("step applied", "host", h.rec.Name, "step", st.ID(), "took", time.Since(s0))
		}
		e.mu.Lock()
		if t.Facts != nil && t.Facts.Engine != "" {
			h.rec.Engine = t.Facts.Engine
		}
		e.mu.Unlock()
		return e.save()
	})
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
	var out []string
	for _, h := range e.live() {
		if a := h.rec.Advertise(); a != "" {
			out = append(out, a)
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// serverCert returns the node's TLS files, issuing a new certificate when
// there is none, it nears expiry, or its names no longer cover the node.
func (e *Engine) serverCert(h *host) (hostos.TLSFiles, error) {
	dir := e.nodeCertDir(h.rec.Name)
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	names := e.certNames(h)
	certPEM, cerr := os.ReadFile(certPath)
	keyPEM, kerr := os.ReadFile(keyPath)
	if cerr == nil && kerr == nil && !pki.NeedsRenewal(certPEM, time.Now()) {
		if _, _, have, err := pki.Inspect(certPEM); err == nil && covers(have, names) {
			return hostos.TLSFiles{CA: e.ca.CertPEM, Cert: certPEM, Key: redact.Secret(keyPEM)}, nil
		}
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

func covers(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
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
