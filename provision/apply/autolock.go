package apply

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/redact"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/swarm"
)

// unlockKeys are the swarm unlock keys kept in the state directory, newest
// first (autolock).
func (r *run) unlockKeys() []redact.Secret {
	keys, err := r.Store.UnlockKeys()
	if err != nil {
		r.note("", "unlock keys: "+err.Error())
	}
	return keys
}

// keepUnlockKey reads the swarm's unlock key through via and keeps it in
// the state directory when it is new. It is best effort (a note) where a
// later call can do it again.
func (r *run) keepUnlockKey(ctx context.Context, via *swarm.Host) {
	if err := r.saveUnlockKey(ctx, via); err != nil {
		r.note("", err.Error())
	}
}

func (r *run) saveUnlockKey(ctx context.Context, via *swarm.Host) error {
	if via == nil {
		return nil
	}
	key, err := via.UnlockKey(ctx)
	if err != nil {
		return err
	}
	if len(key) == 0 {
		return nil
	}
	saved, err := r.Store.SaveUnlockKey(key)
	if err != nil {
		return err
	}
	if saved {
		r.note("", "swarm unlock key kept in "+filepath.Join(r.Store.Dir(), "swarm", "unlock-keys")+" (0600; `provision unlock --show-key` prints it)")
	}
	return nil
}

// swarmSecurity makes the swarm's autolock and node certificate expiry
// what the spec says, and keeps the unlock key (labels phase).
func (r *run) swarmSecurity(ctx context.Context, via *swarm.Host) error {
	what, err := via.EnsureSecurity(ctx, swarm.Security{Autolock: r.Spec.Swarm.Autolock, NodeCertExpiry: r.Spec.Swarm.NodeCertExpiry})
	if err != nil {
		return err
	}
	if len(what) > 0 {
		r.note(via.Name, "swarm settings: "+strings.Join(what, ", "))
	}
	// Saved before anything can restart a manager: a failure here is the
	// apply's failure, and the next apply reads the key again.
	if err := r.saveUnlockKey(ctx, via); err != nil {
		return fmt.Errorf("keep the swarm unlock key: %w", err)
	}
	return nil
}

// Unlocked is what Unlock did per manager.
type Unlocked struct {
	Host   string
	Locked bool // it was locked
	Err    error
}

// Unlock unlocks every recorded manager that is locked (autolock, after a
// restart) with the keys kept in the state directory (`provision unlock`).
func (e *Runner) Unlock(ctx context.Context) ([]Unlocked, error) {
	r := newRun(e, &plan.Plan{})
	defer r.closeAll()
	if err := e.adminKey(); err != nil {
		return nil, err
	}
	for _, rec := range r.State.Machines {
		if rec.Role == spec.RoleManager && rec.NodeID != "" && rec.Address != "" {
			p, _ := r.pool(rec.Role, rec.Pool)
			r.hosts[rec.Name] = &host{rec: rec, pool: p}
		}
	}
	if len(r.hosts) == 0 {
		return nil, errors.New("state records no manager in a swarm: nothing to unlock")
	}
	if err := r.engines(ctx, r.live()); err != nil {
		return nil, err
	}
	m := r.membership()
	var out []Unlocked
	for _, h := range r.live() {
		locked, err := m.Unlock(ctx, h.member)
		out = append(out, Unlocked{Host: h.rec.Name, Locked: locked, Err: err})
	}
	return out, nil
}

// RotateUnlockKey makes the swarm replace its unlock key and keeps the new
// one (the old ones stay in the file for raft backups taken under them).
// Interrupted before the new key was kept, it is read again by the next
// apply or rotation from any unlocked manager.
func (e *Runner) RotateUnlockKey(ctx context.Context) error {
	return e.onSwarm(ctx, func(ctx context.Context, r *run, via *swarm.Host) error {
		if !r.Spec.Swarm.Autolock {
			return errors.New("swarm.autolock is off in the spec: there is no unlock key to rotate")
		}
		if err := r.saveUnlockKey(ctx, via); err != nil { // the current one, first
			return err
		}
		if err := via.RotateUnlockKey(ctx); err != nil {
			return err
		}
		if err := r.saveUnlockKey(ctx, via); err != nil {
			return fmt.Errorf("the unlock key was rotated but could not be kept (run `provision rotate unlock-key` again, or `provision apply`, to read it): %w", err)
		}
		r.markRotated("unlock-key")
		return nil
	})
}

// RotateSwarmCA makes the swarm generate a new root CA for its own node
// certificates (docker swarm ca --rotate) and waits until every node holds
// one from it.
func (e *Runner) RotateSwarmCA(ctx context.Context, timeout time.Duration) error {
	return e.onSwarm(ctx, func(ctx context.Context, r *run, via *swarm.Host) error {
		if err := via.RotateCA(ctx, timeout, r.note); err != nil {
			return err
		}
		r.markRotated("swarm-ca")
		return nil
	})
}

// onSwarm runs fn through a manager of the recorded swarm (locked managers
// unlocked first) and saves state afterwards.
func (e *Runner) onSwarm(ctx context.Context, fn func(ctx context.Context, r *run, via *swarm.Host) error) error {
	if e.State.Swarm.ID == "" {
		return errors.New("the cluster has no swarm yet: run apply first")
	}
	r := newRun(e, &plan.Plan{})
	defer r.closeAll()
	if err := e.adminKey(); err != nil {
		return err
	}
	if err := r.recordedSwarm(ctx); err != nil {
		return err
	}
	err := fn(ctx, r, r.members.Via())
	return errors.Join(err, r.save())
}

func (r *run) markRotated(what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.State.PKI.Rotated == nil {
		r.State.PKI.Rotated = map[string]time.Time{}
	}
	r.State.PKI.Rotated[what] = time.Now().UTC()
}

// unsealScript stops the engine and prints the swarm node key.
const unsealReadScript = `set -eu
systemctl stop docker.socket 2>/dev/null || true
systemctl stop docker.service
cat ` + swarm.NodeKeyPath + `
`

// unsealWriteScript writes stdin as the node key (0600, atomically) and
// starts the engine again, whatever happens.
const unsealWriteScript = `set -eu
trap 'systemctl reset-failed docker.service 2>/dev/null || true; systemctl start docker.service' EXIT HUP INT TERM
k=` + swarm.NodeKeyPath + `
umask 077
cat > "$k.provision-new"
chmod 600 "$k.provision-new"
mv -f "$k.provision-new" "$k"
`

// unseal writes an autolocked manager's swarm node key in the clear (with
// the unlock keys the state directory keeps) and restarts its engine, so
// that Docker can re-form the swarm on it (swarm.ReformSealed). The key
// passes through this process's memory only, over the SSH session.
func (r *run) unseal(ctx context.Context, name string, m drivers.Machine) error {
	c, err := r.login(ctx, m)
	if err != nil {
		return err
	}
	defer c.Close()
	var key, stderr bytes.Buffer
	defer func() { clear(key.Bytes()) }()
	code, err := c.Stream(ctx, c.Sudo("sh -c "+comm.Quote(unsealReadScript)), nil, &key, &stderr)
	if err == nil && code != 0 {
		err = fmt.Errorf("exit %d: %s", code, strings.TrimSpace(stderr.String()))
	}
	if err == nil {
		var plain []byte
		if plain, err = swarm.DecryptNodeKey(key.Bytes(), r.unlockKeys()); err == nil {
			defer clear(plain)
			stderr.Reset()
			code, err = c.Stream(ctx, c.Sudo("sh -c "+comm.Quote(unsealWriteScript)), bytes.NewReader(plain), nil, &stderr)
			if err == nil && code != 0 {
				err = fmt.Errorf("exit %d: %s", code, strings.TrimSpace(stderr.String()))
			}
			if err == nil {
				r.note(name, "node key written in the clear; engine restarted")
				return nil
			}
		}
	}
	// The engine is started again however the rewrite failed.
	c.Run(context.WithoutCancel(ctx), c.Sudo("sh -c 'systemctl reset-failed docker.service 2>/dev/null; systemctl start docker.service'"), nil)
	return err
}
