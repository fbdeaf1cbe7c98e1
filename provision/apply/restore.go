package apply

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	dswarm "github.com/docker/docker/api/types/swarm"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
	"github.com/provision/provision/provision/swarm"
)

// recordedSwarm opens the engine APIs of the recorded managers and finds
// one that runs the recorded swarm, for commands that work on a swarm
// without changing its membership (backup). It never forms a swarm.
func (r *run) recordedSwarm(ctx context.Context) error {
	for _, rec := range r.State.Machines {
		if rec.Role != spec.RoleManager || rec.NodeID == "" || rec.Address == "" {
			continue
		}
		p, _ := r.pool(rec.Role, rec.Pool)
		r.hosts[rec.Name] = &host{rec: rec, pool: p}
	}
	if err := r.engines(ctx, r.live()); err != nil {
		return err
	}
	m := r.membership()
	var errs []error
	for _, h := range r.live() {
		if _, err := m.Unlock(ctx, h.member); err != nil {
			errs = append(errs, err)
			continue
		}
		l, err := h.member.Inspect(ctx)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if l.Active() && l.Manager && l.ClusterID == r.State.Swarm.ID {
			m.AddManager(h.member)
		}
	}
	if m.Via() == nil {
		return fmt.Errorf("no recorded manager answers as a manager of swarm %s: %w", r.State.Swarm.ID, errors.Join(errs...))
	}
	_, err := m.Refresh(ctx)
	return err
}

// BackupNow takes a raft backup of the recorded swarm (`provision backup`)
// and returns its path.
func (e *Runner) BackupNow(ctx context.Context) (string, error) {
	if e.State.Swarm.ID == "" {
		return "", errors.New("the cluster has no swarm yet: run apply first")
	}
	r := newRun(e, &plan.Plan{})
	defer r.closeAll()
	if err := e.adminKey(); err != nil {
		return "", err
	}
	if err := r.recordedSwarm(ctx); err != nil {
		return "", err
	}
	if err := r.backup(ctx, "`provision backup`", ""); err != nil {
		return "", err
	}
	if r.backedUp == "" || r.backedUp == "-" {
		return "", errors.New("no manager could be reached over SSH to copy the raft from")
	}
	return r.backedUp, nil
}

// restoreScript replaces the engine's swarm state with the archive on
// stdin; the engine is started again however the script ends.
const restoreScript = `set -eu
trap 'systemctl start docker.service' EXIT HUP INT TERM
systemctl stop docker.socket 2>/dev/null || true
systemctl stop docker.service
rm -rf /var/lib/docker/swarm
tar -C /var/lib/docker -xzf -
test -d /var/lib/docker/swarm/raft
`

// Restore puts a raft backup back on one manager (node, or the first
// recorded one) and re-forms the swarm from it there (--force-new-cluster:
// it is then the only manager; its services, secrets and configs are the
// backup's). Workers reconnect by themselves; the other managers leave the
// swarm they were in and join again at the next apply. State records the
// restored swarm.
func (e *Runner) Restore(ctx context.Context, archive, node string) (string, error) {
	if err := checkRaftArchive(archive); err != nil {
		return "", err
	}
	r := newRun(e, &plan.Plan{})
	defer r.closeAll()
	if err := e.adminKey(); err != nil {
		return "", err
	}
	var target *state.Machine
	for _, m := range e.State.Machines {
		if m.Role == spec.RoleManager && m.Address != "" && (node == "" || m.Name == node) {
			target = m
			break
		}
	}
	if target == nil {
		if node != "" {
			return "", fmt.Errorf("%s is not a recorded manager with an address", node)
		}
		return "", errors.New("no recorded manager with an address to restore on")
	}
	f, err := os.Open(archive)
	if err != nil {
		return "", err
	}
	defer f.Close()
	// The archive goes with the engine's own address record set to this
	// manager's (the backup's are the manager it was copied from); made
	// before the host is touched, so a bad archive changes nothing.
	var archiveData bytes.Buffer
	if err := retargetRaftArchive(f, &archiveData, target.Advertise()); err != nil {
		return "", fmt.Errorf("backup %s: %w", archive, err)
	}
	c, err := e.Dial(ctx, target.Machine)
	if err != nil {
		return "", err
	}
	defer c.Close()
	r.note(target.Name, "restoring the raft from "+archive+" (engine stopped meanwhile)")
	var stderr strings.Builder
	code, err := c.Stream(ctx, c.Sudo("sh -c "+comm.Quote(restoreScript)), bytes.NewReader(archiveData.Bytes()), nil, &stderr)
	if err == nil && code != 0 {
		err = fmt.Errorf("exit %d: %s", code, strings.TrimSpace(stderr.String()))
	}
	if err != nil {
		return "", fmt.Errorf("%s: restore the swarm directory: %w", target.Name, err)
	}
	api, closer, err := r.openEngineAPI(ctx, target.Machine)
	if err != nil {
		return "", err
	}
	defer closer()
	h := &swarm.Host{Name: target.Name, Advertise: target.Advertise(), API: api}
	var l swarm.Local
	err = swarm.Wait{Host: target.Name, What: "its engine to answer after the restore", Timeout: 2 * time.Minute, Progress: r.note}.Until(ctx, func(ctx context.Context) (bool, string, error) {
		got, err := h.Inspect(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		l = got
		return true, "", nil
	})
	if err != nil {
		return "", err
	}
	// A raft taken under autolock is encrypted with the key of its time:
	// the engine starts locked (the keys kept go back ten rotations). It
	// is not unlocked through the API: dockerd answers an unlock only once
	// the restored raft has quorum, which the raft of several managers
	// never regains on one of them, and holds its control lock meanwhile,
	// so --force-new-cluster then waited forever. Its node key is written
	// in the clear instead (ReformSealed), as for a refused re-form.
	sealed := l.State == dswarm.LocalNodeStateLocked
	if !sealed {
		l, err = h.ForceNewCluster(ctx)
		sealed = swarm.Sealed(err)
	}
	if sealed {
		// A raft taken under autolock is encrypted, and Docker cannot
		// re-form a swarm from an encrypted raft (moby/moby#36852): its
		// node key is written in the clear first.
		l, err = swarm.ReformSealed(ctx, h, func(ctx context.Context, _ *swarm.Host) error {
			return r.unseal(ctx, target.Name, target.Machine)
		}, r.note)
		if errors.Is(err, swarm.ErrWrongUnlockKey) {
			err = fmt.Errorf("%w: the backup was taken under autolock with an unlock key the state directory no longer keeps; the engine runs with the restored files, nothing else changed", err)
		}
	}
	if err != nil {
		return "", err
	}
	m := &swarm.Membership{Timeouts: e.Timeouts, Notify: r.note, UnlockKeys: r.unlockKeys}
	m.AddManager(h)
	if err := m.WaitMember(ctx, h, l.NodeID, true); err != nil {
		return "", err
	}
	// The other managers are not in the restored raft any more: they leave
	// their swarm and join the restored one at the next apply.
	for _, rec := range e.State.Machines {
		if rec == target || rec.Role != spec.RoleManager || rec.Address == "" {
			continue
		}
		if api, closer, err := r.openEngineAPI(ctx, rec.Machine); err == nil {
			lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			if err := (&swarm.Host{Name: rec.Name, API: api}).Leave(lctx); err != nil {
				r.note(rec.Name, "did not leave its swarm ("+err.Error()+"): apply makes it")
			}
			cancel()
			closer()
		}
		rec.NodeID = ""
		rec.Status = state.StatusCreated
	}
	l, _ = h.Inspect(ctx)
	if l.ClusterID != "" && e.State.Swarm.ID != "" && l.ClusterID != e.State.Swarm.ID {
		e.State.Swarm.Retired = append(e.State.Swarm.Retired, e.State.Swarm.ID)
	}
	if l.ClusterID != "" {
		e.State.Swarm.ID = l.ClusterID
	}
	target.NodeID = l.NodeID
	target.Status = state.StatusReady
	if err := e.Store.Save(e.State); err != nil {
		return "", err
	}
	return target.Name, nil
}
