package fleetsim

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/provision/provision/provision/apply"
)

// BenchmarkFleet runs apply, a no-op apply, scale N -> 1.2N -> N and
// destroy on a simulated fleet and prints, per operation, the wall time,
// the peak heap, goroutines and open file descriptors, the SSH
// connections open at once, and per-host SSH sessions, SFTP writes and
// Engine API calls (the busiest host's). Settings from the environment:
// FLEET_HOSTS (1000), FLEET_MANAGERS (3), FLEET_LATENCY (zero or
// realistic), FLEET_SCALE (divides every latency: 10 runs the realistic
// shape ten times faster), FLEET_PARALLELISM (0: the engine's default).
// make bench-fleet runs it.
func BenchmarkFleet(b *testing.B) {
	hosts := envInt("FLEET_HOSTS", 1000)
	managers := envInt("FLEET_MANAGERS", 3)
	lat := Latency{}
	if os.Getenv("FLEET_LATENCY") == "realistic" {
		lat = Realistic
	}
	scale, _ := strconv.ParseFloat(os.Getenv("FLEET_SCALE"), 64)
	for i := 0; i < b.N; i++ {
		c := &Cluster{Fleet: New(lat), Dir: b.TempDir(), Name: "sim", Managers: managers, Workers: hosts - managers, Parallelism: envInt("FLEET_PARALLELISM", 0)}
		c.Fleet.Scale = scale
		if os.Getenv("FLEET_REPORT") != "" {
			c.Report = &apply.Lines{W: os.Stdout}
		}
		ctx := context.Background()
		fmt.Printf("\nfleet: %d hosts (%d managers), latency %s, scale %v, parallelism %d\n", hosts, managers, map[bool]string{true: "realistic", false: "zero"}[lat != Latency{}], max(scale, 1), parallelismOf(c))
		fmt.Printf("%-22s %9s %9s %6s %5s %6s %9s %9s %9s %8s  %s\n", "operation", "wall", "peak MB", "gor", "fds", "ssh", "sess/host", "sftp/host", "api/host", "joins", "cloud calls")
		step := func(name string, fn func() error) {
			m := startMeter()
			t0 := time.Now()
			err := fn()
			took := time.Since(t0)
			peak := m.stop()
			n := c.Fleet.Take()
			if scale > 1 {
				took = time.Duration(float64(took) * scale)
			}
			fmt.Printf("%-22s %9s %9.0f %6d %5d %6d %9d %9d %9d %8d  %s\n", name, took.Round(10*time.Millisecond), peak.heapMB, peak.goroutines, peak.fds, n.PeakOpen, n.MaxSessions, n.MaxWrites, n.MaxAPI, n.PeakJoins, n.Cloud)
			if err != nil {
				b.Fatalf("%s: %v", name, err)
			}
		}
		applyStep := func() error { _, _, err := c.Apply(ctx); return err }
		if pct := envInt("FLEET_FAIL_PERCENT", 0); pct > 0 {
			// pct% of the hosts fail at random steps: the apply finishes
			// the others and reports each; the re-apply converges them.
			c.JoinBackoff = time.Millisecond
			var workers []string
			for _, n := range c.Names() {
				if strings.Contains(n, "-worker-") {
					workers = append(workers, n)
				}
			}
			failed := c.Fleet.FailRandom(workers, hosts*pct/100)
			step(fmt.Sprintf("apply, %d failing", len(failed)), func() error {
				stats, _, err := c.Apply(ctx)
				if len(stats.Failed) != len(failed) {
					return fmt.Errorf("%d hosts failed, %d injected: %v", len(stats.Failed), len(failed), err)
				}
				return nil
			})
			c.Fleet.Heal()
			step("re-apply", func() error {
				stats, _, err := c.Apply(ctx)
				if err == nil && len(stats.Changed) != len(failed) {
					err = fmt.Errorf("re-apply changed %d hosts, want the %d that failed", len(stats.Changed), len(failed))
				}
				return err
			})
		} else {
			step("apply", applyStep)
		}
		if os.Getenv("FLEET_APPLY_ONLY") != "" {
			continue
		}
		step("no-op apply", func() error {
			stats, _, err := c.Apply(ctx)
			if err == nil && len(stats.Changed) > 0 {
				err = fmt.Errorf("no-op apply changed %d hosts", len(stats.Changed))
			}
			return err
		})
		up := hosts + hosts/5
		c.Workers = up - managers
		step(fmt.Sprintf("scale %d->%d", hosts, up), applyStep)
		c.Workers = hosts - managers
		step(fmt.Sprintf("scale %d->%d", up, hosts), applyStep)
		step("destroy", func() error { return c.Destroy(ctx) })
	}
}

func parallelismOf(c *Cluster) int {
	if c.Parallelism > 0 {
		return c.Parallelism
	}
	return apply.DefaultParallelism(c.Managers+c.Workers, 0)
}

func envInt(k string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(k)); err == nil && n > 0 {
		return n
	}
	return def
}

// meter samples the process while an operation runs.
type meter struct {
	stopc chan struct{}
	wg    sync.WaitGroup
	peak  peaks
}

type peaks struct {
	heapMB     float64
	goroutines int
	fds        int
}

func startMeter() *meter {
	runtime.GC()
	m := &meter{stopc: make(chan struct{})}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			m.sample()
			select {
			case <-m.stopc:
				return
			case <-t.C:
			}
		}
	}()
	return m
}

func (m *meter) sample() {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m.peak.heapMB = max(m.peak.heapMB, float64(ms.HeapInuse+ms.StackInuse)/(1<<20))
	m.peak.goroutines = max(m.peak.goroutines, runtime.NumGoroutine())
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		m.peak.fds = max(m.peak.fds, len(ents))
	}
}

func (m *meter) stop() peaks {
	close(m.stopc)
	m.wg.Wait()
	m.sample()
	return m.peak
}
