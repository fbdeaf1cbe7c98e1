package swarm_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/provision/provision/provision/redact"
	"github.com/provision/provision/provision/swarm"
	"github.com/provision/provision/provision/swarm/swarmtest"
)

func engineOf(h *swarm.Host) *swarmtest.Engine { return h.API.(*swarmtest.Engine) }

func countCalls(w *swarmtest.World, prefix string) int {
	n := 0
	for _, c := range w.Calls {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

// TestAutolockRollingRestart: with autolock on, every node is drained,
// restarted and made active again one at a time, managers first: a
// restarted manager comes back locked and WaitMember unlocks it with the
// key kept; quorum and the service's replicas hold throughout.
func TestAutolockRollingRestart(t *testing.T) {
	ctx := context.Background()
	w := swarmtest.New()
	m, ms, ws := cluster(t, w, 3, 2)
	via := m.Via()
	what, err := via.EnsureSecurity(ctx, swarm.Security{Autolock: true, NodeCertExpiry: 720 * time.Hour})
	if err != nil || len(what) != 2 {
		t.Fatalf("EnsureSecurity: %v %v", what, err)
	}
	if again, err := via.EnsureSecurity(ctx, swarm.Security{Autolock: true, NodeCertExpiry: 720 * time.Hour}); err != nil || len(again) != 0 {
		t.Fatalf("second EnsureSecurity changed %v (%v)", again, err)
	}
	if n := countCalls(w, "SwarmUpdate"); n != 1 {
		t.Fatalf("%d swarm updates, want 1: %v", n, w.Calls)
	}
	key, err := via.UnlockKey(ctx)
	if err != nil || len(key) == 0 {
		t.Fatalf("unlock key %v", err)
	}
	m.UnlockKeys = func() []redact.Secret { return []redact.Secret{key} }
	sw := engineOf(ms[0]).Swarm()
	w.AddService(sw, "web", 5)
	w.ResetMin()
	for _, h := range append(append([]*swarm.Host{}, ms...), ws...) {
		manager := slices.Contains(ms, h)
		drained, err := m.Drain(ctx, h.Name, h.NodeID)
		if err != nil || !drained {
			t.Fatalf("drain %s: %v %v", h.Name, drained, err)
		}
		if got := sw.Running("web"); got != 5 {
			t.Fatalf("after draining %s: %d of 5 running", h.Name, got)
		}
		w.Restart(engineOf(h), "")
		if engineOf(h).Locked() != manager {
			t.Fatalf("%s locked=%v after restart, manager=%v", h.Name, engineOf(h).Locked(), manager)
		}
		if err := m.WaitMember(ctx, h, h.NodeID, manager); err != nil {
			t.Fatalf("%s back: %v", h.Name, err)
		}
		if err := m.Activate(ctx, h.Name, h.NodeID); err != nil {
			t.Fatal(err)
		}
		if got := sw.Running("web"); got != 5 {
			t.Fatalf("after %s: %d of 5 running", h.Name, got)
		}
	}
	if len(w.Violations) > 0 {
		t.Fatalf("quorum lost: %v", w.Violations)
	}
	if min := w.MinReachable[sw.ID]; min < 2 {
		t.Fatalf("only %d managers reachable at one point", min)
	}
	if n := countCalls(w, "SwarmUnlock"); n != 3 {
		t.Fatalf("%d unlocks, want one per manager: %v", n, w.Calls)
	}
	// Drain, restart, unlock, active: the order per node, one node at a time.
	var order []string
	for _, c := range w.Calls {
		if strings.HasPrefix(c, "restart ") {
			order = append(order, strings.TrimPrefix(c, "restart "))
		}
	}
	if strings.Join(order, " ") != "m1 m2 m3 w1 w2" {
		t.Fatalf("restart order %v", order)
	}
}

// TestUnlockKeys: a locked manager is refused without the key or with a
// stale one, and opened with the current one; rotating the key keeps the
// swarm running and needs the new key afterwards.
func TestUnlockKeys(t *testing.T) {
	ctx := context.Background()
	w := swarmtest.New()
	m, ms, _ := cluster(t, w, 3, 0)
	via := m.Via()
	if _, err := via.EnsureSecurity(ctx, swarm.Security{Autolock: true}); err != nil {
		t.Fatal(err)
	}
	old, _ := via.UnlockKey(ctx)
	if err := via.RotateUnlockKey(ctx); err != nil {
		t.Fatal(err)
	}
	cur, _ := via.UnlockKey(ctx)
	if string(cur) == string(old) || len(cur) == 0 {
		t.Fatalf("rotation kept the key")
	}
	h := ms[2]
	w.Restart(engineOf(h), "")
	if _, err := h.Unlock(ctx, nil); !errors.Is(err, swarm.ErrLocked) {
		t.Fatalf("no key: %v", err)
	}
	if _, err := h.Unlock(ctx, []redact.Secret{old}); !errors.Is(err, swarm.ErrLocked) {
		t.Fatalf("stale key: %v", err)
	}
	if locked, err := h.Unlock(ctx, []redact.Secret{old, cur}); err != nil || !locked {
		t.Fatalf("current key: %v %v", locked, err)
	}
	if locked, err := h.Unlock(ctx, []redact.Secret{cur}); err != nil || locked {
		t.Fatalf("an unlocked manager: %v %v", locked, err)
	}
	// Bootstrap finds a locked first manager and unlocks it.
	w.Restart(engineOf(ms[0]), "")
	m2 := &swarm.Membership{UnlockKeys: func() []redact.Secret { return []redact.Secret{cur} }}
	f, err := m2.Bootstrap(ctx, ms, swarm.Form{ClusterID: m.ClusterID, Recorded: true})
	if err != nil || f.Via != ms[0] || f.Inited || engineOf(ms[0]).Locked() {
		t.Fatalf("bootstrap over a locked manager: %+v %v", f, err)
	}
	// Autolock off: no key.
	if _, err := via.EnsureSecurity(ctx, swarm.Security{Autolock: false}); err != nil {
		t.Fatal(err)
	}
	if k, _ := via.UnlockKey(ctx); len(k) != 0 {
		t.Fatalf("autolock off still has a key")
	}
	if k := engineOf(ms[0]).Swarm().UnlockKey(); k != "" {
		t.Fatalf("swarm keeps key %q", k)
	}
}

// TestRotateSwarmCA: the rotation is one swarm update that changes
// ForceRotate, and it waits for the swarm to finish.
func TestRotateSwarmCA(t *testing.T) {
	ctx := context.Background()
	w := swarmtest.New()
	m, ms, _ := cluster(t, w, 1, 1)
	for i := 1; i <= 2; i++ {
		if err := m.Via().RotateCA(ctx, time.Minute, nil); err != nil {
			t.Fatal(err)
		}
		if got := engineOf(ms[0]).Swarm().RootCA; got != i {
			t.Fatalf("root CA rotations %d, want %d", got, i)
		}
	}
}

// TestDrainAlone: the only node is not drained (nowhere for its tasks).
func TestDrainAlone(t *testing.T) {
	ctx := context.Background()
	w := swarmtest.New()
	m, ms, _ := cluster(t, w, 1, 0)
	drained, err := m.Drain(ctx, ms[0].Name, ms[0].NodeID)
	if err != nil || drained {
		t.Fatalf("drained the only node: %v %v", drained, err)
	}
}

// TestUnlockAllManagersRestarted: every manager of an autolocked swarm
// restarted at once (a reboot of the machine) comes back locked. An
// engine's unlock call returns only once its swarm has quorum again, so
// unlocking the managers one after the other waited forever on the first;
// Bootstrap gives each its key, bounded, and waits for the swarm.
func TestUnlockAllManagersRestarted(t *testing.T) {
	defer swarm.SetUnlockCallTimeout(50 * time.Millisecond)()
	ctx := context.Background()
	w := swarmtest.New()
	m, ms, _ := cluster(t, w, 3, 0)
	if _, err := m.Via().EnsureSecurity(ctx, swarm.Security{Autolock: true}); err != nil {
		t.Fatal(err)
	}
	key, _ := m.Via().UnlockKey(ctx)
	clusterID := m.ClusterID
	for _, h := range ms {
		w.Restart(engineOf(h), "")
	}
	m2 := &swarm.Membership{UnlockKeys: func() []redact.Secret { return []redact.Secret{key} }}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	f, err := m2.Bootstrap(ctx, ms, swarm.Form{Label: "cid", ClusterID: clusterID, Recorded: true})
	if err != nil {
		t.Fatalf("bootstrap after every manager restarted: %v", err)
	}
	if f.Via == nil || f.Inited || f.Forced || f.Local.ClusterID != clusterID {
		t.Fatalf("bootstrap %+v", f)
	}
	for _, h := range ms {
		if engineOf(h).Locked() {
			t.Fatalf("%s still locked", h.Name)
		}
	}
	// Unlock (provision unlock) on managers that all restarted: each call
	// is bounded, so every one is given its key.
	for _, h := range ms {
		w.Restart(engineOf(h), "")
	}
	for _, h := range ms {
		if locked, err := m2.Unlock(ctx, h); err != nil || !locked {
			t.Fatalf("unlock %s: %v %v", h.Name, locked, err)
		}
	}
	if _, err := m2.Refresh(ctx); err != nil {
		t.Fatalf("swarm after unlock: %v", err)
	}
}
