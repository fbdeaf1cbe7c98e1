// Package fleetsim simulates a fleet for the real apply engine: a cloud
// driver whose machines appear after a boot delay, an SSH layer where each
// host is a small model of a Debian machine answering the facts script and
// the host steps' commands, and the Docker Engine API of every host served
// by provision/swarm/swarmtest, each with the latencies you set. Plan,
// state, apply and hostos run unchanged: only those three edges are fake.
// It proves orchestration at fleet size (1000 hosts) on one machine; the
// benchmarks print what it costs (make bench-fleet).
package fleetsim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/provision/provision/drivers"
	_ "github.com/provision/provision/drivers/local" // the spec's driver block type
	"github.com/provision/provision/provision/apply"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
	"github.com/provision/provision/provision/swarm"
	"github.com/provision/provision/provision/swarm/swarmtest"
)

// Latency is how long the simulated edges take. Zero values cost nothing.
type Latency struct {
	SSHRTT         time.Duration // every SSH command, upload and the connect
	ConnectRTTs    int           // round trips an SSH connect takes (default 3: TCP, key exchange, auth)
	AptUpdate      time.Duration // apt-get update on a host
	PackageInstall time.Duration // apt-get install on a host
	CloudAPI       time.Duration // every driver API call
	CloudRate      float64       // driver API calls a second (0: no limit)
	CloudBurst     int           // the rate limit's burst
	Boot           time.Duration // a created machine answers SSH after this
	EngineAPI      time.Duration // every Engine API call
	SwarmJoin      time.Duration // a join's extra work (certificate, raft)
}

// Realistic are the latencies of the goal: SSH round trip 50 ms,
// package install 20 s, cloud API 200 ms at 20 calls/s with bursts of 100,
// boot 30 s, Engine API 50 ms and 1 s to join.
var Realistic = Latency{SSHRTT: 50 * time.Millisecond, AptUpdate: 3 * time.Second, PackageInstall: 20 * time.Second,
	CloudAPI: 200 * time.Millisecond, CloudRate: 20, CloudBurst: 100, Boot: 30 * time.Second,
	EngineAPI: 50 * time.Millisecond, SwarmJoin: time.Second}

// Fleet is one simulated fleet: the driver, the hosts it made, their
// engines.
type Fleet struct {
	Latency Latency
	Driver  *Driver
	World   *swarmtest.World
	// Scale divides every latency (a 10x faster run of the same shape).
	Scale float64

	limit *limiter

	mu      sync.Mutex
	hosts   map[string]*Host // by address
	engines map[string]*engineAPI
	fail    map[string]string // machine name -> where it fails
	// failTimes bounds a failure to so many tries (absent: until Heal).
	failTimes map[string]int
	rng       *rand.Rand

	open, peakOpen     atomic.Int64 // SSH connections open now, most at once
	sessions, writes   atomic.Int64
	apiCalls, joins    atomic.Int64
	joinsNow, peakJoin atomic.Int64
}

// New returns an empty fleet.
func New(l Latency) *Fleet {
	f := &Fleet{Latency: l, World: swarmtest.New(), hosts: map[string]*Host{}, engines: map[string]*engineAPI{}, fail: map[string]string{}, failTimes: map[string]int{}, rng: rand.New(rand.NewPCG(1, 2))}
	f.Driver = &Driver{f: f, machines: map[string]drivers.Machine{}, calls: map[string]int{}}
	if l.CloudRate > 0 {
		f.limit = &limiter{rate: l.CloudRate, burst: float64(max(1, l.CloudBurst))}
	}
	return f
}

// wait sleeps d (scaled), or until ctx ends.
func (f *Fleet) wait(ctx context.Context, d time.Duration) error {
	if f.Scale > 0 {
		d = time.Duration(float64(d) / f.Scale)
	}
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (f *Fleet) addHost(name, addr, key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h := newHost(f, name, addr, key)
	switch where := f.fail[name]; where {
	case "", "create", "join":
	case "connect":
		h.failDial = true
	default:
		h.failAt = where
	}
	f.hosts[addr] = h
}

func (f *Fleet) removeHost(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.hosts, addr)
	if e := f.engines[addr]; e != nil {
		f.World.Kill(e.Engine)
		delete(f.engines, addr)
	}
}

// FailPoints are where an injected failure can hit a host, with the step
// it shows up in: the machine's create, the SSH connect, the facts, the
// hostname, the engine package install, the daemon configuration and the
// swarm join. On a fresh host engine.install writes the daemon's settings
// before the package first starts the engine, so a failure writing
// daemon.json shows up there.
var FailPoints = []struct{ Where, Step string }{
	{"create", "machine.create"},
	{"connect", "ssh.connect"},
	{"SSH_CONNECTION", "host.check"}, // the facts command line
	{"hostnamectl", "host.hostname"},
	{"apt-get install", "engine.install"},
	{"/etc/docker/daemon.json", "engine.install"},
	{"join", "swarm.join"},
}

// FailRandom makes n random machines among names fail at a random fail
// point until Heal; it returns machine name -> the step expected to fail.
func (f *Fleet) FailRandom(names []string, n int) map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	names = slices.Clone(names)
	f.rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	out := map[string]string{}
	for _, name := range names[:min(n, len(names))] {
		p := FailPoints[f.rng.IntN(len(FailPoints))]
		f.fail[name] = p.Where
		out[name] = p.Step
	}
	return out
}

// Fail makes machine name fail at where (a FailPoints entry) until Heal.
func (f *Fleet) Fail(name, where string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[name] = where
}

// Heal ends every injected failure.
func (f *Fleet) Heal() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail, f.failTimes = map[string]string{}, map[string]int{}
	for _, h := range f.hosts {
		h.mu.Lock()
		h.failAt, h.failDial = "", false
		h.mu.Unlock()
	}
}

func (f *Fleet) failing(where, name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail[name] != where {
		return false
	}
	if n, ok := f.failTimes[name]; ok {
		if n <= 1 {
			delete(f.fail, name)
			delete(f.failTimes, name)
		} else {
			f.failTimes[name] = n - 1
		}
	}
	return true
}

// FailTimes makes machine name fail at where (create or join) n times.
func (f *Fleet) FailTimes(name, where string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[name] = where
	f.failTimes[name] = n
}

// Dial is apply.Runner.DialSSH for the fleet: it checks the pinned host
// key like comm.Dial does.
func (f *Fleet) Dial(ctx context.Context, cfg comm.Config) (apply.Conn, error) {
	f.mu.Lock()
	h := f.hosts[cfg.Address]
	f.mu.Unlock()
	if h == nil {
		return nil, fmt.Errorf("%s: dial %s:%d: %w", cfg.Host, cfg.Address, cfg.Port, errRefused)
	}
	rtts := f.Latency.ConnectRTTs
	if rtts == 0 {
		rtts = 3
	}
	if err := f.wait(ctx, time.Duration(rtts)*f.Latency.SSHRTT); err != nil {
		return nil, fmt.Errorf("%s: connect: %w", cfg.Host, err)
	}
	h.mu.Lock()
	failDial, key := h.failDial, h.key
	h.mu.Unlock()
	if failDial {
		return nil, fmt.Errorf("%s: dial %s:22: %w", cfg.Host, cfg.Address, errRefused)
	}
	if !sameKey(key, cfg.HostKey) && !sameKey(key, cfg.NextHostKey) {
		return nil, fmt.Errorf("%s: %w: the host presents %s", cfg.Host, comm.ErrHostKeyMismatch, key)
	}
	h.Dials.Add(1)
	n := f.open.Add(1)
	for {
		p := f.peakOpen.Load()
		if n <= p || f.peakOpen.CompareAndSwap(p, n) {
			break
		}
	}
	return &conn{h: h, user: cfg.User, key: key}, nil
}

// EngineAPI is apply.Runner.EngineAPI for the fleet.
func (f *Fleet) EngineAPI(name, address string) (swarm.API, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.hosts[address] == nil {
		return nil, fmt.Errorf("%s: engine API at %s: %w", name, address, errRefused)
	}
	e := f.engines[address]
	if e == nil {
		e = &engineAPI{Engine: f.World.Engine(name, address), f: f, name: name}
		e.Engine.Version = upstream(engineVersion)
		f.engines[address] = e
	}
	return e, nil
}

// Host returns the simulated host of a machine name (the current one).
func (f *Fleet) Host(name string) *Host {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, h := range f.hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// Counts are per-host figures of one run.
type Counts struct {
	Hosts                          int
	Sessions, Writes, APICalls     int64 // totals
	MaxSessions, MaxWrites, MaxAPI int64 // the busiest host's
	PeakOpen                       int64 // SSH connections open at once
	OpenAtEnd                      int64
	PeakJoins                      int64 // swarm joins in flight at once
	CloudPeak                      int64 // cloud API calls in flight at once
	Cloud                          string
}

// Take returns the counts since the last Take and resets them.
func (f *Fleet) Take() Counts {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := Counts{Hosts: len(f.hosts), PeakOpen: f.peakOpen.Swap(f.open.Load()), OpenAtEnd: f.open.Load(), PeakJoins: f.peakJoin.Swap(0),
		Sessions: f.sessions.Swap(0), Writes: f.writes.Swap(0), APICalls: f.apiCalls.Swap(0), CloudPeak: f.Driver.peak.Swap(0), Cloud: f.Driver.Calls()}
	for _, h := range f.hosts {
		c.MaxSessions = max(c.MaxSessions, h.Sessions.Swap(0))
		c.MaxWrites = max(c.MaxWrites, h.Writes.Swap(0))
		h.Dials.Store(0)
	}
	for _, e := range f.engines {
		c.MaxAPI = max(c.MaxAPI, e.calls.Swap(0))
	}
	f.Driver.mu.Lock()
	f.Driver.calls = map[string]int{}
	f.Driver.mu.Unlock()
	return c
}

// Cluster is one simulated cluster: its spec file's settings, its state
// directory, the fleet.
type Cluster struct {
	Fleet       *Fleet
	Dir         string
	Name        string
	Managers    int
	Workers     int
	Parallelism int // 0: the engine's default
	Report      apply.Reporter
	// JoinBackoff is the engine's first pause between join attempts
	// (0: the engine's default).
	JoinBackoff time.Duration
}

// Spec renders the cluster's spec: hardening off (the simulated host
// models the engine path, not the hardening files' commands).
func (c *Cluster) Spec() (*spec.Cluster, error) {
	src := fmt.Sprintf("name = %q\ndriver \"local\" {}\nmanagers {\n  count = %d\n}\nworkers {\n  count = %d\n}\nhardening {\n  profile = \"off\"\n}\n", c.Name, c.Managers, c.Workers)
	s, diags := spec.LoadBytes(filepath.Join(c.Dir, c.Name+".hcl"), []byte(src), spec.Vars{})
	if diags.HasErrors() {
		return nil, diags
	}
	return s, nil
}

// engine opens the store and makes an apply.Runner wired to the fleet.
func (c *Cluster) engine() (*apply.Runner, *state.Store, error) {
	sp, err := c.Spec()
	if err != nil {
		return nil, nil, err
	}
	store, err := state.Open(c.Dir, c.Name)
	if err != nil {
		return nil, nil, err
	}
	st, err := store.Load()
	if err != nil {
		store.Close()
		return nil, nil, err
	}
	rep := c.Report
	if rep == nil {
		rep = apply.Discard{}
	}
	e := &apply.Runner{Spec: sp, Store: store, State: st, Drivers: map[string]drivers.Driver{"local": c.Fleet.Driver},
		Report: rep, Parallelism: c.Parallelism, DialSSH: c.Fleet.Dial, EngineAPI: c.Fleet.EngineAPI,
		ConnectTimeout: 30 * time.Second, JoinBackoff: c.JoinBackoff,
		Timeouts: swarm.Timeouts{},
		TakeBackup: func(ctx context.Context, t apply.BackupTarget) (string, error) {
			if t.Comm != nil {
				if _, err := t.Comm.Run(ctx, "true", nil); err != nil {
					return "", err
				}
			}
			p := filepath.Join(t.Dir, t.Host+".tar.gz")
			if err := os.MkdirAll(t.Dir, 0o700); err != nil {
				return "", err
			}
			return p, os.WriteFile(p, []byte("simulated raft backup\n"), 0o600)
		},
	}
	return e, store, nil
}

// observe lists the driver's machines, as the CLI does before a plan.
func (c *Cluster) observe(ctx context.Context, st *state.State) plan.Observed {
	obs := plan.Observed{Machines: map[string][]drivers.Machine{}, Unknown: map[string]string{}}
	ms, err := c.Fleet.Driver.Machines(ctx, st.ClusterID)
	if err != nil {
		obs.Unknown["local"] = err.Error()
	} else {
		obs.Machines["local"] = ms
	}
	return obs
}

// Apply plans and applies the cluster, as `provision apply --auto-approve`.
func (c *Cluster) Apply(ctx context.Context) (apply.Stats, *plan.Plan, error) {
	e, store, err := c.engine()
	if err != nil {
		return apply.Stats{}, nil, err
	}
	defer store.Close()
	p := plan.Build(e.Spec, e.State, c.observe(ctx, e.State))
	stats, err := e.Apply(ctx, p)
	return stats, p, err
}

// Destroy removes the cluster, as `provision destroy --auto-approve`.
func (c *Cluster) Destroy(ctx context.Context) error {
	e, store, err := c.engine()
	if err != nil {
		return err
	}
	defer store.Close()
	p := plan.Destroy(e.State, c.observe(ctx, e.State))
	if err := e.Destroy(ctx, p); err != nil {
		return err
	}
	return store.Clear()
}

// Names lists the machine names of the cluster's spec.
func (c *Cluster) Names() []string {
	var out []string
	for i := 1; i <= c.Managers; i++ {
		out = append(out, fmt.Sprintf("%s-manager-%d", c.Name, i))
	}
	for i := 1; i <= c.Workers; i++ {
		out = append(out, fmt.Sprintf("%s-worker-%d", c.Name, i))
	}
	sort.Strings(out)
	return out
}
