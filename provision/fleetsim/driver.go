package fleetsim

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/provision/provision/drivers"
)

// Driver is a simulated cloud: every call waits for a token of the API's
// rate limit and then for its latency; a created machine answers SSH after
// the boot delay. Create fails for machines named in Fail until the fleet
// heals. It keeps what it made in memory.
type Driver struct {
	f *Fleet

	mu       sync.Mutex
	machines map[string]drivers.Machine // by instance name
	seq      int
	// Calls counts API calls by kind ("create", "list", "destroy").
	calls map[string]int
	// inflight and peak are concurrent API calls.
	inflight, peak atomic.Int64
}

var _ drivers.Driver = (*Driver)(nil)

// PageSize is how many machines one list call returns (EC2's
// DescribeInstances MaxResults is 1000).
const PageSize = 1000

func (d *Driver) call(ctx context.Context, kind string) error {
	n := d.inflight.Add(1)
	defer d.inflight.Add(-1)
	for {
		p := d.peak.Load()
		if n <= p || d.peak.CompareAndSwap(p, n) {
			break
		}
	}
	d.mu.Lock()
	d.calls[kind]++
	d.mu.Unlock()
	if err := d.f.limit.wait(ctx); err != nil {
		return err
	}
	return d.f.wait(ctx, d.f.Latency.CloudAPI)
}

// Machines lists the cluster's machines, one call per page.
func (d *Driver) Machines(ctx context.Context, cluster string) ([]drivers.Machine, error) {
	d.mu.Lock()
	var out []drivers.Machine
	for _, m := range d.machines {
		if m.Tags[drivers.TagCluster] == cluster {
			out = append(out, m)
		}
	}
	d.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	for pages := max(1, (len(out)+PageSize-1)/PageSize); pages > 0; pages-- {
		if err := d.call(ctx, "list"); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Create makes (or finds, by instance name) one machine.
func (d *Driver) Create(ctx context.Context, cluster string, want drivers.MachineSpec) (drivers.Machine, error) {
	inst := drivers.InstanceName(want.Name, want.Generation)
	d.mu.Lock()
	m, ok := d.machines[inst]
	d.mu.Unlock()
	if ok {
		return m, nil
	}
	if err := d.call(ctx, "create"); err != nil {
		return drivers.Machine{}, err
	}
	if d.f.failing("create", want.Name) {
		return drivers.Machine{}, fmt.Errorf("run instance %s: InsufficientInstanceCapacity (simulated)", want.Name)
	}
	d.mu.Lock()
	d.seq++
	addr := fmt.Sprintf("10.%d.%d.%d", 1+d.seq/65536, (d.seq/256)%256, d.seq%256)
	tags := map[string]string{}
	for k, v := range want.Tags {
		tags[k] = v
	}
	m = drivers.Machine{Name: want.Name, ID: fmt.Sprintf("i-%08x", d.seq), Address: addr, SSH: drivers.SSHEndpoint{User: want.SSH.User, Port: 22, HostKey: want.HostKey.Public}, Tags: tags, State: "running"}
	d.machines[inst] = m
	d.mu.Unlock()
	d.f.addHost(want.Name, addr, want.HostKey.Public)
	// The machine boots: its SSH answers after the boot delay.
	if err := d.f.wait(ctx, d.f.Latency.Boot); err != nil {
		return drivers.Machine{}, err
	}
	return m, nil
}

// Destroy removes a machine; one already gone counts as removed.
func (d *Driver) Destroy(ctx context.Context, m drivers.Machine) error {
	if err := d.call(ctx, "destroy"); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for inst, have := range d.machines {
		if (m.ID != "" && have.ID == m.ID) || (m.ID == "" && have.Tags[drivers.TagMachine] == m.Name && drivers.GenerationOf(have.Tags) == drivers.GenerationOf(m.Tags)) {
			delete(d.machines, inst)
			d.f.removeHost(have.Address)
		}
	}
	return nil
}

// Count is how many machines exist.
func (d *Driver) Count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.machines)
}

// Calls returns API calls by kind ("create 1000, list 1").
func (d *Driver) Calls() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var parts []string
	for k, n := range d.calls {
		parts = append(parts, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// limiter is a token bucket: rate tokens a second, burst at most.
type limiter struct {
	mu    sync.Mutex
	rate  float64
	burst float64
	have  float64
	last  time.Time
}

func (l *limiter) wait(ctx context.Context) error {
	if l == nil || l.rate <= 0 {
		return ctx.Err()
	}
	l.mu.Lock()
	now := time.Now()
	if l.last.IsZero() {
		l.have = l.burst
	} else {
		l.have = min(l.burst, l.have+now.Sub(l.last).Seconds()*l.rate)
	}
	l.last = now
	l.have-- // take a token now; a negative balance is the wait
	need := -l.have
	l.mu.Unlock()
	if need <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(time.Duration(need / l.rate * float64(time.Second)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
