package apply

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"sync"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/swarm"
)

// tunnels are SSH connections to bastions that carry the engine API (TLS,
// 2376) of hosts reached through them, one per bastion, shared by every
// host behind it and opened on first use.
type tunnels struct {
	mu      sync.Mutex
	clients map[string]*comm.Client
}

// engineDialer says how to reach a machine's engine API: directly (nil)
// unless SSH reaches the machine through a bastion; then along the same
// path, through an SSH connection to the bastion (its host key pinned the
// same way) that opens the TCP connection from there.
func (e *Runner) engineDialer(ctx context.Context, m drivers.Machine) (swarm.Dialer, error) {
	if m.SSH.Bastion == nil {
		return nil, nil
	}
	if err := e.adminKey(); err != nil {
		return nil, err
	}
	cfg, err := e.commConfig(m.Name, m)
	if err != nil {
		return nil, err
	}
	b := *cfg.Bastion
	key := b.User + "@" + net.JoinHostPort(b.Address, strconv.Itoa(b.Port))
	e.tunnels.mu.Lock()
	defer e.tunnels.mu.Unlock()
	c := e.tunnels.clients[key]
	if c == nil {
		b.Host = "bastion " + key
		if c, err = comm.Dial(ctx, b); err != nil {
			return nil, fmt.Errorf("engine API tunnel: %w", err)
		}
		if e.tunnels.clients == nil {
			e.tunnels.clients = map[string]*comm.Client{}
		}
		e.tunnels.clients[key] = c
	}
	return c.DialContext, nil
}

// ConnectEngine returns a client for the machine's engine API over mutual
// TLS, through the bastion's SSH tunnel when the machine has one (status,
// destroy, and the swarm phase use it). The tunnel lives until Close.
func (e *Runner) ConnectEngine(ctx context.Context, m drivers.Machine, cfg *tls.Config) (*swarm.Engine, error) {
	dial, err := e.engineDialer(ctx, m)
	if err != nil {
		return nil, err
	}
	return swarm.ConnectAt(m.Name, m.Address, m.EnginePort, cfg, dial)
}

// Close releases the engine's tunnels (a caller that used ConnectEngine or
// Dial without Apply or Destroy).
func (e *Runner) Close() {
	e.tunnels.mu.Lock()
	defer e.tunnels.mu.Unlock()
	for k, c := range e.tunnels.clients {
		c.Close()
		delete(e.tunnels.clients, k)
	}
}
