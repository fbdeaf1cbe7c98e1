// Package swarmtest is an in-memory Docker swarm for unit tests: a World of
// engines, each implementing swarm.API, that init, join, leave, demote,
// drain and remove the way the Docker engine does for the calls provision
// makes (managers answer node and task calls only while the raft has a
// majority; a manager in the raft must be demoted before removal; a
// demotion that would lose quorum is refused). After every call that
// changes membership the World checks that a majority of the raft's
// managers is reachable and records each time it is not, so tests can
// prove a sequence of changes never lost quorum.
package swarmtest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/network"
	dswarm "github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/system"
	"github.com/docker/docker/errdefs"

	"github.com/provision/provision/provision/swarm"
)

// World holds engines and the swarms they form.
type World struct {
	mu      sync.Mutex
	engines []*Engine
	swarms  []*Swarm
	seq     int
	// Calls lists every call that changed something, in order
	// ("SwarmJoin m2", "NodeUpdate m1 role=worker", ...).
	Calls []string
	// Violations lists the calls after which the raft had no reachable
	// majority.
	Violations []string
	// MinReachable is, per swarm ID, the fewest reachable managers seen
	// after a call, and MinOf the raft size at that moment.
	MinReachable, MinOf map[string]int
	// MaxDrained is the most nodes of one swarm seen drained at once.
	MaxDrained int
	// MinRunning is, per service, the fewest of its tasks seen running
	// after a call.
	MinRunning map[string]int
	// UnknownAfterElection is how many node list or inspect answers,
	// after a restart moved the raft's leadership, give every other node's
	// state as "unknown": a new leader knows none until each reports in,
	// and neither places tasks there nor counts what runs there meanwhile.
	UnknownAfterElection int
	// ReplaceLag is how many task list answers, after a drain stops a
	// node's tasks, still find their replacements in the restart delay:
	// placed on a node (a scale-down ranks them there) but absent from
	// the tasks that should run, and not running.
	ReplaceLag int
	// Elections counts the restarts of a leader's engine that handed the
	// raft to another manager (each a moment without a leader).
	Elections int
	// Unsettled lists the nodes paused or drained while the swarm's
	// leader still had nodes in that unknown state.
	Unsettled []string
}

// New returns an empty world.
func New() *World {
	return &World{MinReachable: map[string]int{}, MinOf: map[string]int{}, MinRunning: map[string]int{}}
}

// Swarm is one swarm's store.
type Swarm struct {
	ID     string
	Labels map[string]string
	nodes  map[string]*node
	tokens dswarm.JoinTokens
	tasks  []*task
	// services are the replicated services by ID (their name).
	services map[string]*service
	nets     map[string]network.Inspect
	// spec is the swarm's settings (autolock, CA config) at version.
	spec    dswarm.Spec
	version uint64
	// unlockKey is the managers' unlock key while autolock is on.
	unlockKey string
	// RootCA counts the root CA rotations.
	RootCA int
	// unknown is how many answers still give the nodes' states as unknown
	// (World.UnknownAfterElection), but the leader's and restarted's (the
	// engine that just came back reports in at once).
	unknown   int
	restarted string
	// lag is how many task lists still go without the drained tasks'
	// replacements (World.ReplaceLag).
	lag int
}

type node struct {
	id, hostname string
	role         dswarm.NodeRole
	raft         bool // a raft member (a manager not yet demoted or removed)
	leader       bool
	avail        dswarm.NodeAvailability
	labels       map[string]string
	version      uint64
	engine       *Engine // nil once the engine left
}

type task struct {
	id, service, node string
	// delayed: a drained task's replacement, placed but not started yet
	// (Swarm.stop).
	delayed bool
}

// service is a replicated service: its spec and version.
type service struct {
	spec    dswarm.ServiceSpec
	version uint64
}

// Engine is one host's engine. Its exported fields are the test's levers.
type Engine struct {
	w    *World
	Name string
	Addr string
	// Down makes every call fail as if the engine (or its host) were gone.
	Down bool
	// BlockJoin leaves a join pending: the engine cannot reach a manager.
	BlockJoin bool
	// Full: the swarm places no new task on this engine's node (no room:
	// a host-mode port taken, not enough memory).
	Full bool
	// Version is the engine version Info reports ("20.10.24" when empty).
	Version string
	// Leaderless is how many node list calls after this engine forms or
	// re-forms a swarm answer that the swarm has no leader yet (its raft
	// still electing one, as on a loaded host).
	Leaderless int
	leaderless int
	sw         *Swarm
	nodeID     string
	pending    bool
	// unlockWait: unlocked, waiting for its swarm's quorum (dockerd says
	// pending and its SwarmUnlock call has not returned).
	unlockWait bool
	// pendingJoin is the join a blocked engine goes on trying.
	pendingJoin *dswarm.JoinRequest
	// locked: a manager of an autolocked swarm restarted and waits for its
	// unlock key.
	locked bool
}

var _ swarm.API = (*Engine)(nil)

// Engine adds an engine that is in no swarm.
func (w *World) Engine(name, addr string) *Engine {
	w.mu.Lock()
	defer w.mu.Unlock()
	e := &Engine{w: w, Name: name, Addr: addr}
	w.engines = append(w.engines, e)
	return e
}

// Host is the engine as swarm membership uses it.
func (e *Engine) Host() *swarm.Host { return &swarm.Host{Name: e.Name, Advertise: e.Addr, API: e} }

func (w *World) id(prefix string) string {
	w.seq++
	return fmt.Sprintf("%s%03d", prefix, w.seq)
}

// reachable reports whether a node's engine answers as a member.
func (n *node) reachable() bool {
	return n.engine != nil && !n.engine.Down && !n.engine.locked && n.engine.nodeID == n.id
}

func (s *Swarm) raft() (total, up int) {
	for _, n := range s.nodes {
		if n.raft {
			total++
			if n.reachable() {
				up++
			}
		}
	}
	return
}

func (s *Swarm) quorum() bool {
	total, up := s.raft()
	return total > 0 && up >= total/2+1
}

// electLeader moves leadership to a reachable raft member when the leader
// is gone and a majority is there.
func (s *Swarm) electLeader() {
	var ids []string
	for id, n := range s.nodes {
		if n.leader && n.raft && n.reachable() {
			return
		}
		n.leader = false
		if n.raft && n.reachable() {
			ids = append(ids, id)
		}
	}
	if !s.quorum() || len(ids) == 0 {
		return
	}
	sort.Strings(ids)
	s.nodes[ids[0]].leader = true
}

// handOver moves leadership from node id to another reachable raft member,
// if there is one.
func (s *Swarm) handOver(id string) bool {
	var ids []string
	for nid, n := range s.nodes {
		if nid != id && n.raft && n.reachable() {
			ids = append(ids, nid)
		}
	}
	if len(ids) == 0 {
		return false
	}
	sort.Strings(ids)
	s.nodes[id].leader = false
	s.nodes[ids[0]].leader = true
	return true
}

// after records a changing call and checks quorum in every swarm.
func (w *World) after(call string) {
	w.Calls = append(w.Calls, call)
	for _, s := range w.swarms {
		drained := 0
		for _, n := range s.nodes {
			if n.avail == dswarm.NodeAvailabilityDrain {
				drained++
			}
		}
		w.MaxDrained = max(w.MaxDrained, drained)
		for name := range s.services {
			if cur, ok := w.MinRunning[name]; !ok || s.Running(name) < cur {
				w.MinRunning[name] = s.Running(name)
			}
		}
		s.electLeader()
		total, up := s.raft()
		if total == 0 {
			continue
		}
		if cur, ok := w.MinReachable[s.ID]; !ok || up < cur {
			w.MinReachable[s.ID], w.MinOf[s.ID] = up, total
		}
		if up < total/2+1 {
			w.Violations = append(w.Violations, fmt.Sprintf("after %s: %d of %d managers reachable in %s", call, up, total, s.ID))
		}
	}
}

// ResetMin forgets the fewest reachable managers seen so far: the next
// calls start a new measurement.
func (w *World) ResetMin() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.MinReachable, w.MinOf = map[string]int{}, map[string]int{}
}

// Kill makes an engine stop answering (its host died), as a test event.
func (w *World) Kill(e *Engine) {
	w.mu.Lock()
	defer w.mu.Unlock()
	e.Down = true
	for _, s := range w.swarms {
		s.electLeader()
	}
}

// Restart stands for the engine restarting as version (an upgrade; ""
// keeps it): its tasks stop and, the node being active, start again
// elsewhere or on it, as the swarm places them. A manager of a swarm with
// autolock on comes back locked.
func (w *World) Restart(e *Engine, version string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if version != "" {
		e.Version = version
	}
	if e.sw != nil && e.sw.spec.EncryptionConfig.AutoLockManagers {
		if n := e.sw.nodes[e.nodeID]; n != nil && n.raft {
			e.locked = true
		}
	}
	if e.sw != nil {
		e.sw.reschedule(e.nodeID)
		if n := e.sw.nodes[e.nodeID]; n != nil && n.leader && e.sw.handOver(n.id) {
			// The leader's engine went away for a moment: another
			// member took over and has yet to hear from the nodes.
			e.sw.unknown, e.sw.restarted = w.UnknownAfterElection, n.id
			w.Elections++
		}
		e.sw.electLeader()
	}
	w.Calls = append(w.Calls, "restart "+e.Name)
}

// Locked reports whether the engine waits for its unlock key.
func (e *Engine) Locked() bool {
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	return e.locked
}

// TasksOn is the number of the swarm's tasks placed on the engine's node.
func (s *Swarm) TasksOn(e *Engine) int {
	n := 0
	for _, t := range s.tasks {
		if t.node != "" && t.node == e.nodeID {
			n++
		}
	}
	return n
}

// Swarm returns the swarm the engine is in, or nil.
func (e *Engine) Swarm() *Swarm {
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	return e.sw
}

// Managers lists the hostnames of the swarm's raft members, sorted.
func (s *Swarm) Managers() []string {
	var out []string
	for _, n := range s.nodes {
		if n.raft {
			out = append(out, n.hostname+"/"+n.id)
		}
	}
	sort.Strings(out)
	return out
}

// NodeCount is the number of nodes in the list.
func (s *Swarm) NodeCount() int { return len(s.nodes) }

// AddService starts a replicated service (ID and name: name) of replicas
// tasks spread over active nodes.
func (w *World) AddService(s *Swarm, name string, replicas int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if s.services == nil {
		s.services = map[string]*service{}
	}
	n := uint64(replicas)
	s.services[name] = &service{version: 1, spec: dswarm.ServiceSpec{
		Annotations: dswarm.Annotations{Name: name},
		Mode:        dswarm.ServiceMode{Replicated: &dswarm.ReplicatedService{Replicas: &n}},
	}}
	for i := 0; i < replicas; i++ {
		t := &task{id: w.id("t"), service: name}
		s.place(t)
		s.tasks = append(s.tasks, t)
	}
}

// StartFirst sets a service's update order to start-first: it may run an
// old and a new task at once (AddService makes it stop-first, Docker's
// default).
func (s *Swarm) StartFirst(name string) {
	s.services[name].spec.UpdateConfig = &dswarm.UpdateConfig{Order: dswarm.UpdateOrderStartFirst}
}

// Replicas is a service's replica count in its spec, and whether its spec
// carries labels (the surge label while provision has scaled it up).
func (s *Swarm) Replicas(name string) (uint64, map[string]string) {
	svc := s.services[name]
	if svc == nil {
		return 0, nil
	}
	return *svc.spec.Mode.Replicated.Replicas, svc.spec.Labels
}

// scale adds or removes tasks until the service has want of them: new ones
// go to active nodes; removals take unplaced tasks first, then those on the
// node with the most of the service's tasks.
func (s *Swarm) scale(w *World, name string, want int) {
	var mine []*task
	for _, t := range s.tasks {
		if t.service == name {
			mine = append(mine, t)
		}
	}
	for i := len(mine); i < want; i++ {
		t := &task{id: w.id("t"), service: name}
		s.place(t)
		s.tasks = append(s.tasks, t)
	}
	for n := len(mine); n > want; n-- {
		v := s.victim(name)
		s.tasks = slices.Delete(s.tasks, v, v+1)
	}
}

// victim picks the task a scale-down removes, as swarmkit does: a task on
// no node first; else the one that is the highest copy of the service on
// its node (balance first, even over a running task), a task not running
// before a running one of the same rank.
func (s *Swarm) victim(service string) int {
	copies := map[string]int{}
	rank := map[int]int{}
	for pass := 0; pass < 2; pass++ { // running tasks count first on their node
		for i, t := range s.tasks {
			if t.service != service || t.node == "" || t.delayed == (pass == 0) {
				continue
			}
			copies[t.node]++
			rank[i] = copies[t.node]
		}
	}
	victim := -1
	for i, t := range s.tasks {
		if t.service != service {
			continue
		}
		if t.node == "" {
			return i
		}
		if victim < 0 || rank[i] > rank[victim] || rank[i] == rank[victim] && t.delayed && !s.tasks[victim].delayed {
			victim = i
		}
	}
	return victim
}

// Running is the number of tasks of the service running on a Ready node.
func (s *Swarm) Running(service string) int {
	n := 0
	for _, t := range s.tasks {
		if t.service == service && t.node != "" && !t.delayed && s.nodes[t.node] != nil && s.nodes[t.node].reachable() {
			n++
		}
	}
	return n
}

// place puts a task on an active, reachable node that has room, as
// swarm's spread does: the one with the fewest tasks of its service (the
// first by ID of those).
func (s *Swarm) place(t *task) {
	var ids []string
	for id, n := range s.nodes {
		if n.avail == dswarm.NodeAvailabilityActive && n.reachable() && (n.engine == nil || !n.engine.Full) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	count := map[string]int{}
	for _, o := range s.tasks {
		if o != t && o.service == t.service {
			count[o.node]++
		}
	}
	t.node = ""
	for _, id := range ids {
		if t.node == "" || count[id] < count[t.node] {
			t.node = id
		}
	}
}

// reschedule moves a node's tasks elsewhere at once (the node is gone).
func (s *Swarm) reschedule(nodeID string) {
	for _, t := range s.tasks {
		if t.node == nodeID {
			s.place(t)
		}
	}
}

// stop stops a drained node's tasks. As in Docker, each replacement is
// placed at once but held back by the restart delay (desired state Ready:
// absent from lists of the tasks that should run) until the next task list
// after World.ReplaceLag answers (settle); a task with no room stays on no
// node.
func (s *Swarm) stop(nodeID string) {
	for _, t := range s.tasks {
		if t.node == nodeID {
			s.place(t)
			t.delayed = t.node != ""
		}
	}
}

// settle starts the replacements a drain held back and places the tasks
// that had no room.
func (s *Swarm) settle() {
	for _, t := range s.tasks {
		t.delayed = false
		if t.node == "" {
			s.place(t)
		}
	}
}

var errDown = errors.New("error during connect: connection refused")

// manager returns the engine's swarm when it is a reachable manager of a
// swarm with quorum: what node, task and swarm calls need.
func (e *Engine) manager() (*Swarm, error) {
	if e.Down {
		return nil, errDown
	}
	if e.sw == nil {
		return nil, errdefs.Unavailable(errors.New("This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again."))
	}
	if e.locked {
		return nil, errdefs.Unavailable(errors.New("Swarm is encrypted and locked. Please run `docker swarm unlock` to unlock it."))
	}
	n := e.sw.nodes[e.nodeID]
	if n == nil || !n.raft {
		return nil, errdefs.Unavailable(errors.New("This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state."))
	}
	if !e.sw.quorum() {
		return nil, errdefs.Unavailable(errors.New("rpc error: code = Unknown desc = The swarm does not have a leader. It's possible that too few managers are online."))
	}
	return e.sw, nil
}

// Info is the engine's view of itself.
func (e *Engine) Info(ctx context.Context) (system.Info, error) {
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return system.Info{}, err
	}
	if e.Down {
		return system.Info{}, errDown
	}
	info := system.Info{ServerVersion: cmp.Or(e.Version, "20.10.24"), Name: e.Name}
	if e.unlockWait && e.sw != nil && e.sw.quorum() {
		e.unlockWait = false
	}
	switch {
	case e.pending, e.unlockWait:
		info.Swarm.LocalNodeState = dswarm.LocalNodeStatePending
	case e.sw == nil:
		info.Swarm.LocalNodeState = dswarm.LocalNodeStateInactive
	case e.locked:
		info.Swarm.LocalNodeState = dswarm.LocalNodeStateLocked
	default:
		info.Swarm.LocalNodeState = dswarm.LocalNodeStateActive
		info.Swarm.NodeID = e.nodeID
		n := e.sw.nodes[e.nodeID]
		if n != nil && n.raft {
			info.Swarm.ControlAvailable = true
			if e.sw.quorum() {
				info.Swarm.Cluster = &dswarm.ClusterInfo{ID: e.sw.ID}
			}
		}
		for _, m := range e.sw.nodes {
			if m.raft && m.engine != nil {
				info.Swarm.RemoteManagers = append(info.Swarm.RemoteManagers, dswarm.Peer{NodeID: m.id, Addr: m.engine.Addr + ":2377"})
			}
		}
	}
	return info, nil
}

// SwarmInit makes a new swarm, or re-forms this manager's with ForceNewCluster.
func (e *Engine) SwarmInit(ctx context.Context, req dswarm.InitRequest) (string, error) {
	w := e.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if e.Down {
		return "", errDown
	}
	if req.ForceNewCluster {
		if e.sw == nil || !e.sw.nodes[e.nodeID].raft {
			return "", errors.New("force-new-cluster needs a manager's raft")
		}
		for _, n := range e.sw.nodes {
			if n.id != e.nodeID {
				n.raft, n.leader = false, false
			}
		}
		e.sw.nodes[e.nodeID].leader = true
		e.leaderless = e.Leaderless
		w.after("SwarmInit --force-new-cluster " + e.Name)
		return e.nodeID, nil
	}
	if e.sw != nil || e.pending {
		return "", errors.New("This node is already part of a swarm. Use \"docker swarm leave\" to leave this swarm and join another one.")
	}
	s := &Swarm{ID: w.id("cluster"), Labels: req.Spec.Annotations.Labels, nodes: map[string]*node{}, nets: map[string]network.Inspect{}, spec: req.Spec, version: 1}
	if req.AutoLockManagers {
		s.spec.EncryptionConfig.AutoLockManagers = true
		s.unlockKey = w.id("SWMKEY-1-")
	}
	s.tokens = dswarm.JoinTokens{Worker: "SWMTKN-worker-" + s.ID, Manager: "SWMTKN-manager-" + s.ID}
	n := &node{id: w.id("node"), hostname: e.Name, role: dswarm.NodeRoleManager, raft: true, leader: true, avail: dswarm.NodeAvailabilityActive, engine: e, version: 1}
	s.nodes[n.id] = n
	e.sw, e.nodeID = s, n.id
	e.leaderless = e.Leaderless
	w.swarms = append(w.swarms, s)
	w.after("SwarmInit " + e.Name)
	return n.id, nil
}

// SwarmJoin joins the swarm whose token it is, through the remote addresses.
func (e *Engine) SwarmJoin(ctx context.Context, req dswarm.JoinRequest) error {
	w := e.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if e.Down {
		return errDown
	}
	if e.sw != nil || e.pending {
		return errors.New("This node is already part of a swarm. Use \"docker swarm leave\" to leave this swarm and join another one.")
	}
	var s *Swarm
	manager := false
	for _, c := range w.swarms {
		switch req.JoinToken {
		case c.tokens.Worker:
			s = c
		case c.tokens.Manager:
			s, manager = c, true
		}
	}
	if s == nil {
		return errors.New("rpc error: code = InvalidArgument desc = A valid join token is necessary to join this cluster")
	}
	if e.BlockJoin {
		e.pending = true
		e.pendingJoin = &req
		w.after("SwarmJoin (pending) " + e.Name)
		return errors.New("Timeout was reached before node joined. The attempt to join the swarm will continue in the background. Use the \"docker info\" command to see the current swarm status of your node.")
	}
	return e.join(s, req, manager)
}

// join adds the engine to s when a reachable manager of it is among the
// request's remote addresses and the raft has a majority.
func (e *Engine) join(s *Swarm, req dswarm.JoinRequest, manager bool) error {
	w := e.w
	reached := false
	for _, n := range s.nodes {
		if n.raft && n.reachable() && slices.Contains(req.RemoteAddrs, n.engine.Addr+":2377") {
			reached = true
		}
	}
	if !reached || !s.quorum() {
		return fmt.Errorf("could not join: no manager of the swarm answers at %s", strings.Join(req.RemoteAddrs, ", "))
	}
	n := &node{id: w.id("node"), hostname: e.Name, role: dswarm.NodeRoleWorker, avail: dswarm.NodeAvailabilityActive, engine: e, version: 1}
	if manager {
		n.role, n.raft = dswarm.NodeRoleManager, true
	}
	s.nodes[n.id] = n
	e.sw, e.nodeID = s, n.id
	w.after("SwarmJoin " + e.Name + " as " + string(n.role))
	return nil
}

// Unblock lets a pending join go through, as the token said.
func (w *World) Unblock(e *Engine) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	e.BlockJoin = false
	req := e.pendingJoin
	if !e.pending || req == nil {
		return nil
	}
	e.pending, e.pendingJoin = false, nil
	for _, c := range w.swarms {
		switch req.JoinToken {
		case c.tokens.Worker:
			return e.join(c, *req, false)
		case c.tokens.Manager:
			return e.join(c, *req, true)
		}
	}
	return errors.New("no swarm for the pending join's token")
}

// SwarmLeave leaves the swarm; a manager only with force.
func (e *Engine) SwarmLeave(ctx context.Context, force bool) error {
	w := e.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if e.Down {
		return errDown
	}
	if e.pending {
		e.pending, e.pendingJoin = false, nil
		w.after("SwarmLeave (pending) " + e.Name)
		return nil
	}
	if e.sw == nil {
		return errors.New("This node is not part of a swarm")
	}
	if n := e.sw.nodes[e.nodeID]; n != nil && n.raft && !force {
		return errors.New("You are attempting to leave the swarm on a node that is participating as a manager.")
	}
	s := e.sw
	if n := s.nodes[e.nodeID]; n != nil {
		n.engine = nil
		s.reschedule(n.id)
	}
	e.sw, e.nodeID = nil, ""
	w.after("SwarmLeave " + e.Name)
	return nil
}

// SwarmInspect returns the swarm with its join tokens.
func (e *Engine) SwarmInspect(ctx context.Context) (dswarm.Swarm, error) {
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	s, err := e.manager()
	if err != nil {
		return dswarm.Swarm{}, err
	}
	out := dswarm.Swarm{JoinTokens: s.tokens}
	out.ID = s.ID
	out.Spec = s.spec
	out.Spec.Annotations.Labels = s.Labels
	out.Version.Index = s.version
	return out, nil
}

// SwarmUpdate changes the swarm's settings: autolock (a new unlock key
// when turned on), the CA config (a changed ForceRotate rotates the root
// CA), and rotates the unlock key when the flags say so.
func (e *Engine) SwarmUpdate(ctx context.Context, version dswarm.Version, spec dswarm.Spec, flags dswarm.UpdateFlags) error {
	w := e.w
	w.mu.Lock()
	defer w.mu.Unlock()
	s, err := e.manager()
	if err != nil {
		return err
	}
	if version.Index != s.version {
		return errors.New("rpc error: code = Unknown desc = update out of sequence")
	}
	if spec.CAConfig.SigningCACert != "" && spec.CAConfig.SigningCAKey == "" {
		return errors.New("rpc error: code = InvalidArgument desc = a signing CA certificate without its key")
	}
	var what []string
	if on := spec.EncryptionConfig.AutoLockManagers; on != s.spec.EncryptionConfig.AutoLockManagers {
		what = append(what, fmt.Sprintf("autolock=%v", on))
		s.unlockKey = ""
		if on {
			s.unlockKey = w.id("SWMKEY-1-")
		}
	}
	if flags.RotateManagerUnlockKey && s.unlockKey != "" {
		s.unlockKey = w.id("SWMKEY-1-")
		what = append(what, "unlock-key")
	}
	if spec.CAConfig.ForceRotate != s.spec.CAConfig.ForceRotate {
		s.RootCA++
		what = append(what, "root-ca")
	}
	if spec.CAConfig.NodeCertExpiry != s.spec.CAConfig.NodeCertExpiry {
		what = append(what, "cert-expiry="+spec.CAConfig.NodeCertExpiry.String())
	}
	spec.Annotations.Labels = s.Labels
	s.spec = spec
	s.version++
	w.after("SwarmUpdate " + strings.Join(what, ","))
	return nil
}

// SwarmGetUnlockKey returns the unlock key ("" with autolock off).
func (e *Engine) SwarmGetUnlockKey(ctx context.Context) (dswarm.UnlockKeyResponse, error) {
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	s, err := e.manager()
	if err != nil {
		return dswarm.UnlockKeyResponse{}, err
	}
	return dswarm.UnlockKeyResponse{UnlockKey: s.unlockKey}, nil
}

// SwarmUnlock unlocks a locked manager given the swarm's key.
func (e *Engine) SwarmUnlock(ctx context.Context, req dswarm.UnlockRequest) error {
	w := e.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if e.Down {
		return errDown
	}
	if !e.locked {
		return errors.New("swarm is not locked")
	}
	if req.UnlockKey == "" || req.UnlockKey != e.sw.unlockKey {
		return errors.New("rpc error: code = InvalidArgument desc = swarm could not be unlocked: invalid key supplied")
	}
	e.locked = false
	w.after("SwarmUnlock " + e.Name)
	// Like dockerd, the call returns only once the node is ready: a
	// manager whose swarm has no quorum (its fellow managers still
	// locked, say) waits for it, reported as pending meanwhile, and the
	// engine goes on waiting when the caller gives up.
	e.sw.electLeader()
	if e.sw.quorum() {
		return nil
	}
	e.unlockWait = true
	for {
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			w.mu.Lock()
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		w.mu.Lock()
		if e.sw == nil || e.sw.quorum() {
			e.unlockWait = false
			return nil
		}
	}
}

// UnlockKey is the swarm's current unlock key, for tests.
func (s *Swarm) UnlockKey() string { return s.unlockKey }

func (s *Swarm) view(n *node) dswarm.Node {
	out := dswarm.Node{ID: n.id}
	out.Version.Index = n.version
	out.Spec.Role = n.role
	out.Spec.Availability = n.avail
	out.Spec.Labels = map[string]string{}
	for k, v := range n.labels {
		out.Spec.Labels[k] = v
	}
	out.Description.Hostname = n.hostname
	out.Status.State = dswarm.NodeStateDown
	if n.reachable() {
		out.Status.State = dswarm.NodeStateReady
		if s.unknown > 0 && !n.leader && n.id != s.restarted {
			out.Status.State = dswarm.NodeStateUnknown
		}
	}
	if n.raft {
		r := dswarm.ReachabilityUnreachable
		if n.reachable() {
			r = dswarm.ReachabilityReachable
		}
		out.ManagerStatus = &dswarm.ManagerStatus{Leader: n.leader, Reachability: r}
	}
	return out
}

// NodeList lists the nodes.
func (e *Engine) NodeList(ctx context.Context, _ dswarm.NodeListOptions) ([]dswarm.Node, error) {
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	s, err := e.manager()
	if err != nil {
		return nil, err
	}
	if e.leaderless > 0 {
		e.leaderless--
		return nil, errors.New("rpc error: code = Unknown desc = The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.")
	}
	var out []dswarm.Node
	for _, n := range s.nodes {
		out = append(out, s.view(n))
	}
	if s.unknown > 0 {
		s.unknown--
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// NodeInspectWithRaw returns one node.
func (e *Engine) NodeInspectWithRaw(ctx context.Context, id string) (dswarm.Node, []byte, error) {
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	s, err := e.manager()
	if err != nil {
		return dswarm.Node{}, nil, err
	}
	n := s.nodes[id]
	if n == nil {
		return dswarm.Node{}, nil, errdefs.NotFound(fmt.Errorf("node %s not found", id))
	}
	v := s.view(n)
	if s.unknown > 0 {
		s.unknown--
	}
	return v, nil, nil
}

// NodeUpdate changes a node's role, availability or labels; a demotion
// that would leave the raft without a reachable majority is refused.
func (e *Engine) NodeUpdate(ctx context.Context, id string, version dswarm.Version, spec dswarm.NodeSpec) error {
	w := e.w
	w.mu.Lock()
	defer w.mu.Unlock()
	s, err := e.manager()
	if err != nil {
		return err
	}
	n := s.nodes[id]
	if n == nil {
		return errdefs.NotFound(fmt.Errorf("node %s not found", id))
	}
	if version.Index != n.version {
		return errors.New("rpc error: update out of sequence")
	}
	var what []string
	if spec.Role == dswarm.NodeRoleWorker && n.raft {
		total, up := s.raft()
		if n.reachable() {
			up--
		}
		if total-1 == 0 || up < (total-1)/2+1 {
			return errors.New("rpc error: code = FailedPrecondition desc = can't remove member from the raft: this would result in a loss of quorum")
		}
		n.raft, n.leader = false, false
		what = append(what, "demote")
	}
	if spec.Role == dswarm.NodeRoleManager && !n.raft {
		if !n.reachable() {
			return errors.New("cannot promote a node that is down")
		}
		n.raft = true
		what = append(what, "promote")
	}
	n.role = spec.Role
	if spec.Availability != "" && spec.Availability != n.avail {
		if s.unknown > 0 && spec.Availability != dswarm.NodeAvailabilityActive {
			w.Unsettled = append(w.Unsettled, n.hostname+" "+string(spec.Availability))
		}
		n.avail = spec.Availability
		what = append(what, "availability="+string(spec.Availability))
		if n.avail == dswarm.NodeAvailabilityDrain {
			s.stop(n.id)
			s.lag = w.ReplaceLag
		}
	}
	if !maps(n.labels, spec.Labels) {
		n.labels = map[string]string{}
		for k, v := range spec.Labels {
			n.labels[k] = v
		}
		what = append(what, "labels")
	}
	n.version++
	w.after(fmt.Sprintf("NodeUpdate %s %s", n.hostname, strings.Join(what, ",")))
	return nil
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// NodeRemove removes a node from the list; a raft member is refused, and a
// Ready node without force.
func (e *Engine) NodeRemove(ctx context.Context, id string, opts dswarm.NodeRemoveOptions) error {
	w := e.w
	w.mu.Lock()
	defer w.mu.Unlock()
	s, err := e.manager()
	if err != nil {
		return err
	}
	n := s.nodes[id]
	if n == nil {
		return errdefs.NotFound(fmt.Errorf("node %s not found", id))
	}
	if n.raft {
		return errors.New("rpc error: code = FailedPrecondition desc = node " + id + " is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal")
	}
	if n.reachable() && !opts.Force {
		return errors.New("rpc error: node " + id + " is not down and can't be removed")
	}
	delete(s.nodes, id)
	s.reschedule(id)
	if n.engine != nil && n.engine.nodeID == id {
		// The engine finds out it was removed.
		n.engine.sw, n.engine.nodeID = nil, ""
	}
	w.after("NodeRemove " + n.hostname)
	return nil
}

// TaskList lists tasks, filtered by node, service and desired-state.
func (e *Engine) TaskList(ctx context.Context, opts dswarm.TaskListOptions) ([]dswarm.Task, error) {
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	s, err := e.manager()
	if err != nil {
		return nil, err
	}
	lagging := s.lag > 0
	if lagging {
		s.lag--
	} else {
		s.settle()
	}
	var out []dswarm.Task
	for _, t := range s.tasks {
		if t.delayed {
			continue // a replacement in its restart delay: desired state Ready
		}
		if v := opts.Filters.Get("node"); len(v) > 0 && !slices.Contains(v, t.node) {
			continue
		}
		if v := opts.Filters.Get("service"); len(v) > 0 && !slices.Contains(v, t.service) {
			continue
		}
		st, why := dswarm.TaskStatePending, ""
		if n := s.nodes[t.node]; n != nil && n.reachable() {
			st = dswarm.TaskStateRunning
		} else if t.node == "" {
			why = "no suitable node (no room on any active node)"
		}
		out = append(out, dswarm.Task{ID: t.id, ServiceID: t.service, NodeID: t.node, DesiredState: dswarm.TaskStateRunning, Status: dswarm.TaskStatus{State: st, Err: why, Timestamp: time.Now()}})
	}
	return out, nil
}

// ServiceList lists the services, filtered by label key.
func (e *Engine) ServiceList(ctx context.Context, opts dswarm.ServiceListOptions) ([]dswarm.Service, error) {
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	s, err := e.manager()
	if err != nil {
		return nil, err
	}
	var out []dswarm.Service
	for id, svc := range s.services {
		keep := true
		for _, l := range opts.Filters.Get("label") {
			k, v, withValue := strings.Cut(l, "=")
			got, ok := svc.spec.Labels[k]
			keep = keep && ok && (!withValue || got == v)
		}
		if keep {
			out = append(out, dswarm.Service{ID: id, Spec: svc.spec, Meta: dswarm.Meta{Version: dswarm.Version{Index: svc.version}}})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// ServiceInspectWithRaw returns a service by ID (its name).
func (e *Engine) ServiceInspectWithRaw(ctx context.Context, id string, _ dswarm.ServiceInspectOptions) (dswarm.Service, []byte, error) {
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	s, err := e.manager()
	if err != nil {
		return dswarm.Service{}, nil, err
	}
	svc := s.services[id]
	if svc == nil {
		return dswarm.Service{}, nil, errdefs.NotFound(fmt.Errorf("service %s not found", id))
	}
	return dswarm.Service{ID: id, Spec: svc.spec, Meta: dswarm.Meta{Version: dswarm.Version{Index: svc.version}}}, nil, nil
}

// ServiceUpdate replaces a service's spec at its version and scales its
// tasks to the new replica count.
func (e *Engine) ServiceUpdate(ctx context.Context, id string, version dswarm.Version, spec dswarm.ServiceSpec, _ dswarm.ServiceUpdateOptions) (dswarm.ServiceUpdateResponse, error) {
	w := e.w
	w.mu.Lock()
	defer w.mu.Unlock()
	s, err := e.manager()
	if err != nil {
		return dswarm.ServiceUpdateResponse{}, err
	}
	svc := s.services[id]
	if svc == nil {
		return dswarm.ServiceUpdateResponse{}, errdefs.NotFound(fmt.Errorf("service %s not found", id))
	}
	if version.Index != svc.version {
		return dswarm.ServiceUpdateResponse{}, errors.New("rpc error: update out of sequence")
	}
	if spec.Mode.Replicated == nil || spec.Mode.Replicated.Replicas == nil {
		return dswarm.ServiceUpdateResponse{}, errors.New("rpc error: service mode change not supported")
	}
	svc.spec = spec
	svc.version++
	s.scale(w, id, int(*spec.Mode.Replicated.Replicas))
	w.after(fmt.Sprintf("ServiceUpdate %s replicas=%d", id, *spec.Mode.Replicated.Replicas))
	return dswarm.ServiceUpdateResponse{}, nil
}

// NetworkInspect returns a swarm network by name.
func (e *Engine) NetworkInspect(ctx context.Context, name string, _ network.InspectOptions) (network.Inspect, error) {
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	s, err := e.manager()
	if err != nil {
		return network.Inspect{}, err
	}
	n, ok := s.nets[name]
	if !ok {
		return network.Inspect{}, errdefs.NotFound(fmt.Errorf("network %s not found", name))
	}
	return n, nil
}

// NetworkCreate makes a swarm network.
func (e *Engine) NetworkCreate(ctx context.Context, name string, opts network.CreateOptions) (network.CreateResponse, error) {
	w := e.w
	w.mu.Lock()
	defer w.mu.Unlock()
	s, err := e.manager()
	if err != nil {
		return network.CreateResponse{}, err
	}
	if _, ok := s.nets[name]; ok {
		return network.CreateResponse{}, errdefs.Conflict(fmt.Errorf("network %s exists", name))
	}
	id := w.id("net")
	s.nets[name] = network.Inspect{ID: id, Name: name, Driver: opts.Driver, Options: opts.Options, Labels: opts.Labels, Attachable: opts.Attachable}
	w.after("NetworkCreate " + name)
	return network.CreateResponse{ID: id}, nil
}

// NetworkRemove removes a swarm network by ID or name.
func (e *Engine) NetworkRemove(ctx context.Context, id string) error {
	w := e.w
	w.mu.Lock()
	defer w.mu.Unlock()
	s, err := e.manager()
	if err != nil {
		return err
	}
	for name, n := range s.nets {
		if n.ID == id || name == id {
			delete(s.nets, name)
			w.after("NetworkRemove " + name)
			return nil
		}
	}
	return errdefs.NotFound(fmt.Errorf("network %s not found", id))
}
