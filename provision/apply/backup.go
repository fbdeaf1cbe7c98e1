package apply

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	dswarm "github.com/docker/docker/api/types/swarm"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/atomicfile"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
	"github.com/provision/provision/provision/swarm"
)

// BackupTarget is one raft backup to take: the manager it is copied from,
// reached over SSH, and where the file goes.
type BackupTarget struct {
	Host string // machine name
	Comm Conn
	// Stop says the manager's engine is stopped for the copy (the raft is
	// then consistent on disk). false: the swarm cannot spare the manager
	// (stopping it would lose quorum), so the copy is taken hot.
	Stop bool
	Dir  string // the state directory's backups/
}

// BackupDir is where raft backups are kept in a state directory.
func BackupDir(stateDir string) string { return filepath.Join(stateDir, "backups") }

// backup takes a raft backup once per run, before the first change that
// touches a manager (why says which). It copies /var/lib/docker/swarm from
// a manager that is not the leader (the leader when it is the only one),
// with its engine stopped for the few seconds the copy takes when the raft
// keeps its majority without it, and waits until it is back.
//
// prefer names the node about to change (the manager that leaves or
// restarts next): copied from when it is a Reachable follower, so that no
// other manager is disturbed.
func (r *run) backup(ctx context.Context, why, prefer string) error {
	r.backupMu.Lock()
	defer r.backupMu.Unlock()
	if r.backedUp != "" || r.members == nil || r.members.Via() == nil {
		return nil
	}
	nodes, err := r.members.Refresh(ctx)
	if err != nil {
		// The engine API cannot be asked (its certificates are about to
		// change, say): which manager leads and whether one can stop is
		// unknown, so the copy is taken hot, over SSH, from a manager state
		// records, the one about to change first.
		src := r.recordedManager(prefer)
		if src == nil {
			return fmt.Errorf("raft backup: %w", err)
		}
		r.note(src.name, "the engine API does not answer ("+err.Error()+"): the raft is copied hot")
		return r.backupFrom(ctx, src, false, why)
	}
	src, stop := r.backupSource(nodes, prefer)
	if src == nil {
		r.note("", "raft backup skipped: no manager of the swarm can be reached over SSH ("+why+")")
		r.backedUp = "-"
		return nil
	}
	return r.backupFrom(ctx, src, stop, why)
}

// backupFrom copies the raft from src (stopping its engine for the copy
// when stop) and waits until it is back.
func (r *run) backupFrom(ctx context.Context, src *backupCandidate, stop bool, why string) error {
	do := r.TakeBackup
	if do == nil {
		do = backupRaft
	}
	if src.member == nil && stop && r.members != nil {
		if api, closer, err := r.openEngineAPI(ctx, src.machine); err == nil {
			defer closer()
			src.member = &swarm.Host{Name: src.name, Advertise: src.machine.Advertise(), API: api, NodeID: src.nodeID}
		}
	}
	if src.comm == nil && r.TakeBackup == nil {
		c, err := r.Dial(ctx, src.machine)
		if err != nil {
			return fmt.Errorf("raft backup from %s: %w", src.name, err)
		}
		defer c.Close()
		src.comm = c
	}
	how := "its engine stopped for the copy"
	if !stop {
		how = "hot: the swarm cannot spare it, or has no quorum to lose"
	}
	// Its tasks would stop with its engine: it is drained first, so that
	// start-first services run theirs elsewhere before (Membership.Drain),
	// and made active again after; the drain is recorded in state like an
	// engine restart's, so an interrupted run's next apply reactivates it.
	// A node an earlier, failed run left drained (state says so) stays
	// drained and recorded: the change that finishes it makes it active.
	reactivate, drainedHere := false, false
	if stop && src.member != nil && src.nodeID != "" && r.members != nil && r.members.Via() != nil {
		if n, ok := r.members.Nodes()[src.nodeID]; ok && n.Spec.Availability == dswarm.NodeAvailabilityActive {
			if err := r.setDrained(src.rec, true); err != nil {
				return err
			}
			drainedHere = true
			drained, err := r.members.Drain(ctx, src.name, src.nodeID)
			if err != nil {
				return fmt.Errorf("raft backup from %s: drain first: %w", src.name, err)
			}
			reactivate = drained
		}
	}
	r.note(src.name, "raft backup before "+why+" ("+how+")")
	t0 := time.Now()
	path, err := do(ctx, BackupTarget{Host: src.file, Comm: src.comm, Stop: stop, Dir: BackupDir(r.Store.Dir())})
	if err != nil {
		return fmt.Errorf("raft backup from %s: %w", src.name, err)
	}
	if stop && src.member != nil && r.members != nil && r.members.Via() != nil {
		if err := r.members.WaitMember(ctx, src.member, src.nodeID, true); err != nil {
			return fmt.Errorf("raft backup from %s: back in the swarm: %w", src.name, err)
		}
		// Its tasks stopped with its engine: they run again before the
		// change the backup was for takes another node's.
		if err := r.members.WaitTasks(ctx, src.name, "its tasks running again after the backup"); err != nil {
			return fmt.Errorf("raft backup from %s: %w", src.name, err)
		}
		if reactivate {
			if err := r.members.Activate(ctx, src.name, src.nodeID); err != nil {
				return fmt.Errorf("raft backup from %s: make it active again: %w", src.name, err)
			}
		}
		if drainedHere {
			if err := r.setDrained(src.rec, false); err != nil {
				return err
			}
		}
	} else if stop && src.member != nil {
		err := swarm.Wait{Host: src.name, What: "its engine back after the backup", Timeout: 2 * time.Minute, Progress: r.note}.Until(ctx, func(ctx context.Context) (bool, string, error) {
			l, err := src.member.Inspect(ctx)
			if err != nil {
				return false, err.Error(), nil
			}
			return l.Active(), "engine says " + string(l.State), nil
		})
		if err != nil {
			return fmt.Errorf("raft backup from %s: %w", src.name, err)
		}
	}
	r.backedUp = path
	r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: src.name, Step: "swarm.backup", Msg: path, Took: time.Since(t0)})
	if err := pruneBackups(BackupDir(r.Store.Dir()), r.backupsToKeep()); err != nil {
		r.log.Warn("prune raft backups", "err", err)
	}
	return nil
}

func (r *run) backupsToKeep() int {
	if r.KeepBackups > 0 {
		return r.KeepBackups
	}
	return 5
}

// backupCandidate is a manager a backup can be taken from.
type backupCandidate struct {
	name    string // for messages
	file    string // for the backup's file name
	nodeID  string
	leader  bool
	machine drivers.Machine
	comm    Conn
	member  *swarm.Host
	fresh   bool // joined in this run: prefer a manager that was there before
	// rec is its state record, where a drain for the copy is recorded
	// (nil for an earlier generation: its drain is not the machine's).
	rec *state.Machine
}

// recordedManager is a manager of this run that state records as a swarm
// member, the node prefer if it is one.
func (r *run) recordedManager(prefer string) *backupCandidate {
	r.mu.Lock()
	defer r.mu.Unlock()
	var best *backupCandidate
	for _, name := range r.hostNamesLocked() {
		h := r.hosts[name]
		if h.rec.Role != spec.RoleManager || h.rec.NodeID == "" || h.err != nil {
			continue
		}
		c := &backupCandidate{name: h.rec.Name, file: h.rec.Name, nodeID: h.rec.NodeID, machine: h.rec.Machine, comm: h.comm, member: h.member, rec: h.rec}
		if best == nil || h.rec.NodeID == prefer {
			best = c
		}
	}
	return best
}

// backupSurvivor copies the raft of the manager a swarm is about to be
// re-formed on (--force-new-cluster). The copy is taken hot: without quorum
// nothing can change the raft, and a stopped survivor comes back only
// half-way (pending), not where --force-new-cluster starts from.
func (r *run) backupSurvivor(ctx context.Context, h *host, why string) error {
	r.backupMu.Lock()
	defer r.backupMu.Unlock()
	if r.backedUp != "" {
		return nil
	}
	return r.backupFrom(ctx, &backupCandidate{name: h.rec.Name, file: h.rec.Name, nodeID: h.rec.NodeID, machine: h.rec.Machine, comm: h.comm, member: h.member, rec: h.rec}, false, why)
}

// backupSource picks the manager to copy the raft from: a Reachable one
// that is not the leader, preferring one that was a manager before this run
// and one already connected, and says whether its engine may be stopped
// (the raft keeps a majority without it).
func (r *run) backupSource(nodes map[string]dswarm.Node, prefer string) (*backupCandidate, bool) {
	var cands []*backupCandidate
	gone := r.goneNodes()
	total, reachable := 0, 0
	for id, n := range nodes {
		if n.ManagerStatus == nil {
			continue
		}
		total++
		// A manager whose machine the driver reports gone is not counted
		// reachable, whatever the node list says in the seconds before the
		// raft notices: stopping another one's engine for the copy must
		// leave a majority that really answers.
		if n.ManagerStatus.Reachability == dswarm.ReachabilityReachable && !gone[id] {
			reachable++
		}
	}
	r.mu.Lock()
	for _, h := range r.hosts {
		n, ok := nodes[h.rec.NodeID]
		if h.rec.Role != spec.RoleManager || h.rec.NodeID == "" || !ok || n.ManagerStatus == nil || n.ManagerStatus.Reachability != dswarm.ReachabilityReachable {
			continue
		}
		cands = append(cands, &backupCandidate{name: h.rec.Name, file: h.rec.Name, nodeID: h.rec.NodeID, leader: n.ManagerStatus.Leader, machine: h.rec.Machine, comm: h.comm, member: h.member, fresh: h.joinedNow, rec: h.rec})
	}
	var retiring []*backupCandidate
	for _, o := range r.retiring {
		// A generation whose machine is gone is no source, whatever the
		// node list says for the seconds before the raft notices; its
		// address may already be another machine's.
		n, ok := nodes[o.rec.NodeID]
		if o.gone || !ok || n.ManagerStatus == nil || n.ManagerStatus.Reachability != dswarm.ReachabilityReachable || o.rec.Address == "" {
			continue
		}
		m := o.rec.Machine
		m.Name = o.owner.rec.Name
		gen := max(1, o.rec.Generation)
		retiring = append(retiring, &backupCandidate{name: fmt.Sprintf("%s (generation %d)", o.owner.rec.Name, gen), file: fmt.Sprintf("%s-g%d", o.owner.rec.Name, gen), nodeID: o.rec.NodeID, leader: n.ManagerStatus.Leader, machine: m, member: o.member})
	}
	// Managers about to be removed: the best source, they leave anyway.
	if r.plan != nil {
		for _, a := range r.plan.Actions {
			rec := a.Recorded
			if a.Kind != plan.Remove || rec == nil || rec.Role != spec.RoleManager || rec.Address == "" || a.Observed == nil {
				continue
			}
			n, ok := nodes[rec.NodeID]
			if !ok || n.ManagerStatus == nil || n.ManagerStatus.Reachability != dswarm.ReachabilityReachable {
				continue
			}
			retiring = append(retiring, &backupCandidate{name: rec.Name, file: rec.Name, nodeID: rec.NodeID, leader: n.ManagerStatus.Leader, machine: rec.Machine, rec: rec})
		}
	}
	r.mu.Unlock()
	rank := func(c *backupCandidate) int {
		n := 0
		if c.nodeID == prefer && !c.leader {
			return -1
		}
		if c.leader {
			n += 4
		}
		if c.fresh {
			n += 2
		}
		if c.comm == nil {
			n++
		}
		return n
	}
	all := append(cands, retiring...)
	sort.SliceStable(all, func(i, j int) bool { return rank(all[i]) < rank(all[j]) })
	if len(all) == 0 {
		return nil, false
	}
	best := all[0]
	// Stopping it must leave a majority of the raft reachable, and never
	// stops the leader of several managers (an election disturbs every
	// node); the only manager may stop (its control plane pauses for the
	// seconds of the copy).
	stop := total == 1 || (!best.leader && reachable-1 >= total/2+1)
	return best, stop
}

// backupScript copies the swarm directory under the engine's root ($2) to
// stdout as a gzipped tar. With "stop", the engine is stopped first and
// started again however the script ends (also when the connection drops).
// A hot copy ("hot") is of a raft that may be writing: a manager without
// quorum holds an election every few seconds and appends each vote to its
// log, and tar fails on a file that changes while it reads it. So the
// directory is first copied aside (root-only, on the same file system)
// until a copy matches the directory it was taken from, up to ten times;
// when the raft never held still, the last copy is kept and said so (raft
// drops a torn last log record when it is restored).
const backupScript = `set -eu
root=${2:-/var/lib/docker}
test -d "$root/swarm"
if [ "${1:-}" = stop ]; then
	trap 'systemctl start docker.service' EXIT HUP INT TERM
	systemctl stop docker.socket 2>/dev/null || true
	systemctl stop docker.service
	tar -C "$root" -czf - swarm
	exit 0
fi
tmp=$(mktemp -d "$root/.provision-backup.XXXXXX")
trap 'rm -rf "$tmp"' EXIT HUP INT TERM
i=0
while :; do
	rm -rf "$tmp/swarm"
	cp -a "$root/swarm" "$tmp/swarm"
	if diff -rq "$root/swarm" "$tmp/swarm" >/dev/null 2>&1; then
		break
	fi
	i=$((i+1))
	if [ "$i" -ge 10 ]; then
		echo "the raft changed during each of 10 copies: the last one is kept" >&2
		break
	fi
	sleep 0.3
done
tar -C "$tmp" -czf - swarm
`

// backupRaft streams the manager's /var/lib/docker/swarm over its SSH
// connection into <dir>/raft-<time>-<host>.tar.gz (0600, the directory
// 0700): it holds the swarm's keys. The file is checked (a readable
// archive with the raft in it) before it replaces nothing.
func backupRaft(ctx context.Context, t BackupTarget) (string, error) {
	if err := os.MkdirAll(t.Dir, 0o700); err != nil {
		return "", err
	}
	if err := os.Chmod(t.Dir, 0o700); err != nil {
		return "", err
	}
	name := fmt.Sprintf("raft-%s-%s.tar.gz", time.Now().UTC().Format("20060102T150405Z"), t.Host)
	path := filepath.Join(t.Dir, name)
	arg := "hot"
	if t.Stop {
		arg = "stop"
	}
	// Written to a temp file, fsynced, checked, then renamed: a crash or
	// a broken stream never leaves a partial archive under a backup's name.
	err := atomicfile.Stream(path, 0o600, func(w io.Writer) error {
		var stderr bytes.Buffer
		code, err := t.Comm.Stream(ctx, t.Comm.Sudo("sh -s -- "+arg+" /var/lib/docker"), strings.NewReader(backupScript), w, &stderr)
		if err == nil && code != 0 {
			err = fmt.Errorf("exit %d: %s", code, strings.TrimSpace(stderr.String()))
		}
		return err
	}, checkRaftArchive)
	if err != nil {
		return "", err
	}
	return path, nil
}

// checkRaftArchive reads a backup through and requires the raft in it.
func checkRaftArchive(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("backup %s is not a gzip archive: %w", path, err)
	}
	tr := tar.NewReader(zr)
	raft := false
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("backup %s: %w", path, err)
		}
		raft = raft || strings.HasPrefix(h.Name, "swarm/raft/")
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return fmt.Errorf("backup %s: %w", path, err)
		}
	}
	if !raft {
		return fmt.Errorf("backup %s holds no swarm/raft/", path)
	}
	return nil
}

// Backups lists the raft backups in a state directory, newest first.
func Backups(stateDir string) ([]string, error) {
	m, err := filepath.Glob(filepath.Join(BackupDir(stateDir), "raft-*.tar.gz"))
	if err != nil {
		return nil, err
	}
	sort.Sort(sort.Reverse(sort.StringSlice(m)))
	return m, nil
}

// pruneBackups keeps the newest keep backups.
func pruneBackups(dir string, keep int) error {
	all, err := Backups(filepath.Dir(dir))
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range all[min(keep, len(all)):] {
		if err := os.Remove(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// goneNodes are the swarm node IDs of machines the driver reports gone:
// earlier generations found gone, and recorded machines the plan replaces
// or removes because they are gone.
func (r *run) goneNodes() map[string]bool {
	out := map[string]bool{}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, o := range r.retiring {
		if o.gone && o.rec.NodeID != "" {
			out[o.rec.NodeID] = true
		}
	}
	if r.plan != nil {
		for _, a := range r.plan.Actions {
			if rec := a.Recorded; rec != nil && rec.NodeID != "" && a.Observed == nil && (a.Kind == plan.Replace || a.Kind == plan.Remove) {
				out[rec.NodeID] = true
			}
		}
	}
	return out
}
