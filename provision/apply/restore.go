package apply

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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
	f, err := os.Open(archive)
	if err != nil {
		return "", err
	}
	defer f.Close()
	from, err := raftArchiveAddress(f)
	if err != nil {
		return "", fmt.Errorf("backup %s: %w", archive, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	target, err := restoreTarget(e.State, node, from)
	if err != nil {
		return "", err
	}
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
	// The other managers' engines are stopped until the restored raft is
	// re-formed: the restored files still name them as members, and an
	// engine that reached a live member first joined that raft again
	// before --force-new-cluster (dockerd then crash-looped on a commit
	// index out of range). They start again whatever happens, and leave
	// their swarm below once the restored one is formed.
	restart, err := r.stopOtherManagers(ctx, target)
	defer restart()
	if err != nil {
		return "", err
	}
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
	restart()
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

// ErrNotAManager: restore --node names no recorded manager with an address.
var ErrNotAManager = errors.New("not a recorded manager with an address")

// restoreTarget is the recorded manager a backup goes back on: the one
// named, or the one at the address the backup's manager advertised (the
// first recorded manager when the archive does not say). The raft keeps its
// own member's address through --force-new-cluster, so a backup restored
// at another address forms a swarm that tells every manager joining it,
// and every worker, to reach it at the old address: refused, saying so.
func restoreTarget(st *state.State, node, from string) (*state.Machine, error) {
	var managers []*state.Machine
	for _, m := range st.Machines {
		if m.Role == spec.RoleManager && m.Address != "" {
			managers = append(managers, m)
		}
	}
	if len(managers) == 0 {
		return nil, errors.New("no recorded manager with an address to restore on")
	}
	var target *state.Machine
	for _, m := range managers {
		if (node != "" && m.Name == node) || (node == "" && from != "" && m.Advertise() == from) {
			target = m
			break
		}
	}
	switch {
	case target == nil && node != "":
		return nil, fmt.Errorf("%w: %s", ErrNotAManager, node)
	case target == nil && from == "":
		return managers[0], nil
	case target == nil:
		return nil, fmt.Errorf("the backup was taken on the manager at %s, and no recorded manager is at that address now: its raft keeps that address for itself, so restored elsewhere, joining managers and workers would look for it there. Restore it on a manager that has the address %s again, or use a backup taken since the address changed", from, from)
	case from != "" && target.Advertise() != from:
		var at string
		for _, m := range managers {
			if m.Advertise() == from {
				at = " (" + m.Name + " has it: restore on it, or leave --node out)"
			}
		}
		return nil, fmt.Errorf("the backup was taken on the manager at %s, and %s is at %s: the raft keeps its own member's address, so restored on %s the swarm would tell joining managers and workers to reach it at %s%s", from, target.Name, target.Advertise(), target.Name, from, at)
	}
	return target, nil
}

// stopOtherManagers stops the engines of the recorded managers other than
// target (those that can be reached: a gone machine needs nothing) and
// returns a function that starts them again, once.
func (r *run) stopOtherManagers(ctx context.Context, target *state.Machine) (func(), error) {
	var stopped []*state.Machine
	var once bool
	restart := func() {
		if once {
			return
		}
		once = true
		for _, m := range stopped {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			c, err := r.Dial(sctx, m.Machine)
			if err == nil {
				_, err = c.Run(sctx, c.Sudo("systemctl start docker.service"), nil)
				c.Close()
			}
			cancel()
			if err != nil {
				r.note(m.Name, "could not start its engine again after the restore ("+err.Error()+"): apply starts it")
			}
		}
	}
	for _, m := range r.State.Machines {
		if m == target || m.Role != spec.RoleManager || m.Address == "" {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		c, err := r.Dial(sctx, m.Machine)
		if err != nil {
			cancel()
			r.note(m.Name, "not reachable ("+err.Error()+"): its engine is not stopped for the restore")
			continue
		}
		_, err = c.Run(sctx, c.Sudo("sh -c 'systemctl stop docker.socket 2>/dev/null || true; systemctl stop docker.service'"), nil)
		c.Close()
		cancel()
		if err != nil {
			return restart, fmt.Errorf("%s: stop its engine for the restore (the restored raft still names it as a member): %w", m.Name, err)
		}
		stopped = append(stopped, m)
		r.note(m.Name, "engine stopped until the restored swarm is formed")
	}
	return restart, nil
}
