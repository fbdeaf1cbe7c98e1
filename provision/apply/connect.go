package apply

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/swarm"
)

// conn makes sure h has its SSH connection, dialling it on first use (and
// finishing a host key rotation the machine needs). Connections live only
// while a host works: release closes them, so open connections (file
// descriptors, keepalive goroutines) follow the parallelism, not the size
// of the fleet.
func (r *run) conn(ctx context.Context, h *host) error {
	if h.comm != nil {
		return nil
	}
	r.mu.Lock()
	m := h.rec.Machine
	status := h.rec.Status
	r.mu.Unlock()
	if m.Address == "" {
		return &StepError{Host: h.rec.Name, Step: "ssh.connect", Err: fmt.Errorf("machine has no address (status %s): re-run apply to finish creating it", status)}
	}
	cfg, err := r.commConfig(h.rec.Name, m)
	if err != nil {
		return &StepError{Host: h.rec.Name, Step: "ssh.connect", Err: err}
	}
	c, err := r.dialSSH(ctx, cfg)
	if err != nil {
		return &StepError{Host: h.rec.Name, Step: "ssh.connect", Err: err}
	}
	h.comm = c
	if h.target != nil {
		h.target.Comm = c
	}
	if err := r.rotateHostKey(ctx, h); err != nil {
		return &StepError{Host: h.rec.Name, Step: "ssh.connect", Err: err}
	}
	return nil
}

// release closes h's SSH connection; the next conn dials again.
func (r *run) release(h *host) {
	if h.comm != nil {
		h.comm.Close()
		h.comm = nil
	}
}

// Conn is one host's SSH connection as apply uses it: *comm.Client, or
// what Runner.DialSSH gives.
type Conn interface {
	Run(ctx context.Context, cmd string, stdin io.Reader) ([]byte, error)
	Stream(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error)
	Upload(ctx context.Context, path string, content io.Reader, mode fs.FileMode) error
	Download(ctx context.Context, path string) ([]byte, error)
	Sudo(cmd string) string
	PresentedHostKey() string
	Close() error
}

var _ Conn = (*comm.Client)(nil)

// dialSSH opens one SSH connection: through Runner.DialSSH when set.
// Connections through a bastion are made at most bastionDials at a time
// per bastion: each is a new login to the bastion, and sshd drops logins
// beyond MaxStartups (10 by default) that are still unauthenticated.
func (e *Runner) dialSSH(ctx context.Context, cfg comm.Config) (Conn, error) {
	if b := cfg.Bastion; b != nil {
		gate := e.bastionGate(fmt.Sprintf("%s:%d", b.Address, b.Port))
		select {
		case gate <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		defer func() { <-gate }()
	}
	var c Conn
	var err error
	if e.DialSSH != nil {
		c, err = e.DialSSH(ctx, cfg)
	} else {
		c, err = comm.Dial(ctx, cfg)
	}
	return c, e.movedAddress(cfg, err)
}

// movedAddress turns a host key mismatch in which the host presented
// another recorded machine's key into what it means: the address now
// reaches that other machine (a driver's addresses moved between hosts),
// and re-pinning the key would be wrong.
func (e *Runner) movedAddress(cfg comm.Config, err error) error {
	var hm *comm.HostKeyMismatchError
	if err == nil || e.State == nil || !errors.As(err, &hm) {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, m := range e.State.Machines {
		if m.Name != cfg.Host && drivers.SameKey(m.SSH.HostKey, hm.Presented) {
			return &movedError{err: err, msg: fmt.Sprintf("%s: the host at %s presented %s's pinned host key: the machines' addresses have moved (%s is recorded at %s), so this is not a rebuilt host and its pinned key must not be changed. Check the driver's addresses (a restart of the machines in another order gives dynamic addresses out again); replace the machines whose address changed",
				cfg.Host, cfg.Address, m.Name, m.Name, m.Address)}
		}
	}
	return err
}

type movedError struct {
	err error
	msg string
}

func (e *movedError) Error() string { return e.msg }
func (e *movedError) Unwrap() error { return e.err }

// bastionDials bounds logins in progress through one bastion (below
// sshd's default MaxStartups of 10).
const bastionDials = 8

func (e *Runner) bastionGate(addr string) chan struct{} {
	e.gateMu.Lock()
	defer e.gateMu.Unlock()
	if e.gates == nil {
		e.gates = map[string]chan struct{}{}
	}
	g := e.gates[addr]
	if g == nil {
		g = make(chan struct{}, bastionDials)
		e.gates[addr] = g
	}
	return g
}

// login is Dial through dialSSH: a short-lived connection to a recorded
// machine (a fresh login's proof).
func (e *Runner) login(ctx context.Context, m drivers.Machine) (Conn, error) {
	if e.DialSSH == nil {
		return e.Dial(ctx, m)
	}
	cfg, err := e.commConfig(m.Name, m)
	if err != nil {
		return nil, err
	}
	return e.DialSSH(ctx, cfg)
}

func (e *Runner) commConfig(name string, m drivers.Machine) (comm.Config, error) {
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
func (e *Runner) nextHostKey(name string) string {
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
func (e *Runner) Dial(ctx context.Context, m drivers.Machine) (*comm.Client, error) {
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
	if b := cfg.Bastion; b != nil {
		gate := e.bastionGate(fmt.Sprintf("%s:%d", b.Address, b.Port))
		select {
		case gate <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		defer func() { <-gate }()
	}
	c, err := comm.Dial(ctx, cfg)
	if err != nil {
		return nil, e.movedAddress(cfg, err)
	}
	return c, nil
}

// loadSigner reads a private key file for hosts that use their own login key.
func loadSigner(path string) (ssh.Signer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("ssh key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("ssh key %s is readable by others (mode %o): chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ssh key: %w", err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("ssh key %s: %w", path, err)
	}
	return s, nil
}

// openEngineAPI opens a machine's engine API: the Docker Engine SDK over
// mutual TLS on 2376 with the operator's client certificate (through the
// bastion's tunnel for machines behind one), or what Runner.EngineAPI
// gives. Only a tunnel does I/O.
func (r *run) openEngineAPI(ctx context.Context, m drivers.Machine) (swarm.API, func() error, error) {
	if r.EngineAPI != nil {
		api, err := r.EngineAPI(m.Name, m.Address)
		return api, func() error { return nil }, err
	}
	r.tlsMu.Lock()
	if r.clientTLS == nil {
		cfg, err := pki.ClientTLS(r.Store.PKIDir())
		if err != nil {
			r.tlsMu.Unlock()
			return nil, nil, err
		}
		r.clientTLS = cfg
	}
	cfg := r.clientTLS
	r.tlsMu.Unlock()
	en, err := r.ConnectEngine(ctx, m, cfg)
	if err != nil {
		return nil, nil, err
	}
	return en.Client, en.Close, nil
}

// engines opens the engine API of every given host that has none yet.
func (r *run) engines(ctx context.Context, hosts []*host) error {
	for _, h := range hosts {
		r.mu.Lock()
		has, m := h.api != nil, h.rec.Machine
		r.mu.Unlock()
		if has {
			continue
		}
		api, closer, err := r.openEngineAPI(ctx, m)
		if err != nil {
			return err
		}
		r.mu.Lock()
		h.api, h.closer = api, closer
		h.member = &swarm.Host{Name: h.rec.Name, Advertise: h.rec.Advertise(), API: api, NodeID: h.rec.NodeID}
		// The control port on the private interface when the advertise
		// address is the host's own (not a NAT address).
		if t := h.target; t != nil && t.Facts != nil && slices.Contains(t.Facts.Addrs, h.member.Advertise) {
			h.member.Bind = h.member.Advertise
		}
		r.mu.Unlock()
	}
	return nil
}
