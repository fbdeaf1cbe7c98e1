package apply

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/provision/provision/provision/comm"
)

// TestBastionDialsBounded: however many hosts connect at once, at most
// bastionDials logins are in progress through one bastion (sshd drops
// unauthenticated logins beyond MaxStartups); hosts without one are not held.
func TestBastionDialsBounded(t *testing.T) {
	var now, peak atomic.Int64
	e := &Runner{DialSSH: func(ctx context.Context, cfg comm.Config) (Conn, error) {
		n := now.Add(1)
		defer now.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(5 * time.Millisecond)
		return nil, nil
	}}
	dial := func(cfg comm.Config) int64 {
		now.Store(0)
		peak.Store(0)
		var wg sync.WaitGroup
		for range 40 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				e.dialSSH(context.Background(), cfg)
			}()
		}
		wg.Wait()
		return peak.Load()
	}
	if p := dial(comm.Config{Bastion: &comm.Config{Address: "203.0.113.7", Port: 22}}); p > bastionDials {
		t.Fatalf("%d logins at once through one bastion, want at most %d", p, bastionDials)
	}
	if p := dial(comm.Config{}); p <= bastionDials {
		t.Fatalf("direct connections held to %d at once", p)
	}
}
