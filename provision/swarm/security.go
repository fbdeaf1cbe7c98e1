package swarm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	dswarm "github.com/docker/docker/api/types/swarm"

	"github.com/provision/provision/provision/redact"
)

// Security is the swarm's own security settings provision keeps.
type Security struct {
	// Autolock encrypts the managers' raft keys at rest with an unlock key:
	// a restarted manager stays locked until it is given the key.
	Autolock bool
	// NodeCertExpiry is the lifetime of the swarm's node certificates (0:
	// leave the swarm's).
	NodeCertExpiry time.Duration
}

// ErrLocked means a manager's engine is locked (autolock) and no key
// provision holds unlocks it.
var ErrLocked = errors.New("swarm manager is locked")

// updateSwarm reads the swarm's spec, lets fn change it and writes it back
// with flags, retrying when another writer came first. fn returning false
// (and no flags) writes nothing.
func (h *Host) updateSwarm(ctx context.Context, flags dswarm.UpdateFlags, fn func(*dswarm.Spec) bool) (bool, error) {
	var changed bool
	uctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last error
	err := Poll(uctx, 100*time.Millisecond, time.Second, func() (bool, error) {
		sw, err := h.API.SwarmInspect(ctx)
		if err != nil {
			return false, fmt.Errorf("%s: swarm inspect: %w", h.Name, err)
		}
		spec := sw.Spec
		changed = fn(&spec)
		if !changed && flags == (dswarm.UpdateFlags{}) {
			return true, nil
		}
		// The signing CA is the swarm's own unless a rotation says
		// otherwise: never send back what inspect shows of it.
		spec.CAConfig.SigningCACert, spec.CAConfig.SigningCAKey = "", ""
		err = h.API.SwarmUpdate(ctx, sw.Version, spec, flags)
		if err != nil && strings.Contains(err.Error(), "out of sequence") {
			last = err
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("%s: swarm update: %w", h.Name, err)
		}
		changed = true
		return true, nil
	})
	if err != nil && last != nil && uctx.Err() != nil && ctx.Err() == nil {
		return false, fmt.Errorf("%s: swarm update: %w", h.Name, last)
	}
	return changed, err
}

// EnsureSecurity makes the swarm's autolock and node certificate expiry
// what want says. It reports what it changed.
func (h *Host) EnsureSecurity(ctx context.Context, want Security) ([]string, error) {
	var what []string
	_, err := h.updateSwarm(ctx, dswarm.UpdateFlags{}, func(s *dswarm.Spec) bool {
		what = what[:0]
		if s.EncryptionConfig.AutoLockManagers != want.Autolock {
			s.EncryptionConfig.AutoLockManagers = want.Autolock
			what = append(what, fmt.Sprintf("autolock %v", want.Autolock))
		}
		if want.NodeCertExpiry > 0 && s.CAConfig.NodeCertExpiry != want.NodeCertExpiry {
			s.CAConfig.NodeCertExpiry = want.NodeCertExpiry
			what = append(what, "node certificate expiry "+want.NodeCertExpiry.String())
		}
		return len(what) > 0
	})
	if err != nil {
		return nil, err
	}
	return what, nil
}

// UnlockKey reads the managers' unlock key; empty when autolock is off.
func (h *Host) UnlockKey(ctx context.Context) (redact.Secret, error) {
	k, err := h.API.SwarmGetUnlockKey(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: swarm unlock key: %w", h.Name, err)
	}
	return redact.Secret(k.UnlockKey), nil
}

// RotateUnlockKey makes the swarm replace its unlock key (docker swarm
// unlock-key --rotate). The caller reads the new one with UnlockKey.
func (h *Host) RotateUnlockKey(ctx context.Context) error {
	_, err := h.updateSwarm(ctx, dswarm.UpdateFlags{RotateManagerUnlockKey: true}, func(*dswarm.Spec) bool { return false })
	return err
}

// unlockCallTimeout bounds one unlock call (see Unlock).
var unlockCallTimeout = 20 * time.Second

// Unlock unlocks a locked manager with the first of keys that works. It
// reports whether the engine was locked.
func (h *Host) Unlock(ctx context.Context, keys []redact.Secret) (bool, error) {
	l, err := h.Inspect(ctx)
	if err != nil {
		return false, err
	}
	if l.State != dswarm.LocalNodeStateLocked {
		return false, nil
	}
	if len(keys) == 0 {
		return true, fmt.Errorf("%s: %w and provision holds no unlock key for it (the key is in <state dir>/swarm/unlock-keys; `docker swarm unlock` on the host takes one from elsewhere)", h.Name, ErrLocked)
	}
	var last error
	for _, k := range keys {
		// dockerd answers an unlock only once the node is ready, and a
		// manager is ready only when its swarm has quorum: with its
		// fellow managers still locked (every manager restarted at
		// once) the call never returns. A wrong key is refused at once;
		// a call still open after unlockCallTimeout took the key when
		// the engine no longer says locked (it goes on waiting for its
		// managers, "pending").
		cctx, cancel := context.WithTimeout(ctx, unlockCallTimeout)
		err := h.API.SwarmUnlock(cctx, dswarm.UnlockRequest{UnlockKey: string(k)})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return true, ctx.Err()
			}
			if cctx.Err() != nil {
				if l, ierr := h.Inspect(ctx); ierr == nil && l.State != dswarm.LocalNodeStateLocked {
					return true, nil
				}
			}
			last = err
			continue
		}
		return true, nil
	}
	return true, fmt.Errorf("%s: %w: none of the %d unlock keys provision holds opens it (last answer: %v)", h.Name, ErrLocked, len(keys), last)
}

// RotateCA makes the swarm generate a new root CA and reissue every node's
// certificate under it (docker swarm ca --rotate), and waits until the
// rotation has finished: every node holds a certificate of the new root.
func (h *Host) RotateCA(ctx context.Context, timeout time.Duration, progress func(host, msg string)) error {
	if _, err := h.updateSwarm(ctx, dswarm.UpdateFlags{}, func(s *dswarm.Spec) bool {
		s.CAConfig.ForceRotate++
		return true
	}); err != nil {
		return err
	}
	w := Wait{Host: h.Name, What: "the swarm's root CA rotation to finish (every node reissued)", Timeout: timeout, Progress: progress}
	return w.Until(ctx, func(ctx context.Context) (bool, string, error) {
		sw, err := h.API.SwarmInspect(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		return !sw.RootRotationInProgress, "rotation in progress", nil
	})
}
