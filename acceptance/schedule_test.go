//go:build acceptance

package acceptance

import (
	"os"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"
)

// The local-host tests each build their own cluster on this machine's one
// Docker engine; a few run at once (PROVISION_ACC_PARALLEL, 2 by default:
// the machine has 2 cores). go test would start them in whatever order its
// goroutines wake, and a long test started last runs alone at the end (a
// CI run spent its last 7 minutes on one test). hostTest starts them
// longest first instead (LPT scheduling), from the durations measured in
// CI; `go test -parallel` must be at least as large (make test passes 32).

// expected is each test's duration in a fresh-clone CI run (2026-12-02,
// load 3-12, the tests about changing a cluster on the golden image), in
// seconds.
var expected = map[string]int{
	// One VM under QEMU's software emulation, libvirtd's install and the
	// base image's build included (4.5 min on a clean machine), without its
	// Lynis audit (make test skips TestLibvirtVM/measure/lynis).
	"TestLibvirtVM": 1410,
	"TestHardening": 236, "TestEngineUpgrade": 212, "TestLifecycle": 136, "TestOfflineBundle": 136,
	"TestQuorumLoss": 115, "TestCertsLocal": 106, "TestDay2": 101, "TestRaftRestoreAndMissing": 71,
	"TestLocalEndToEnd": 65, "TestGenericEndToEnd": 52, "TestMixedDrivers": 37,
	"TestSecurityLocal": 34, "TestEngineExtrasLocal": 34, "TestLoadBalancerLocal": 32,
	"TestBastionEngineTunnel": 25, "TestJSONEvents": 23,
}

// settle is how long the first test to arrive waits for the others: go
// test releases every parallel test at once when the sequential ones end.
const settle = 2 * time.Second

type slotWaiter struct {
	name   string
	weight int
	start  chan struct{}
}

var slots struct {
	mu      sync.Mutex
	running int
	waiting []*slotWaiter
	armed   bool // the first test has arrived
	open    bool // settle has passed: slots are handed out
}

func slotLimit() int {
	if n, err := strconv.Atoi(os.Getenv("PROVISION_ACC_PARALLEL")); err == nil && n > 0 {
		return n
	}
	return 2
}

// hostTest marks a local-host test parallel and waits for its slot; the
// slot is given back after the test's own cleanups (its destroy) ran.
func hostTest(t *testing.T) {
	t.Parallel()
	w := &slotWaiter{name: t.Name(), weight: expected[t.Name()], start: make(chan struct{})}
	if w.weight == 0 {
		w.weight = 60
	}
	slots.mu.Lock()
	slots.waiting = append(slots.waiting, w)
	if !slots.armed {
		slots.armed = true
		time.AfterFunc(settle, func() {
			slots.mu.Lock()
			slots.open = true
			grantSlots()
			slots.mu.Unlock()
		})
	}
	grantSlots()
	slots.mu.Unlock()
	<-w.start
	t.Cleanup(func() {
		slots.mu.Lock()
		slots.running--
		grantSlots()
		slots.mu.Unlock()
	})
}

// grantSlots starts the longest waiting tests while slots are free; the
// caller holds slots.mu.
func grantSlots() {
	if !slots.open {
		return
	}
	sort.SliceStable(slots.waiting, func(i, j int) bool {
		a, b := slots.waiting[i], slots.waiting[j]
		if a.weight != b.weight {
			return a.weight > b.weight
		}
		return a.name < b.name
	})
	for slots.running < slotLimit() && len(slots.waiting) > 0 {
		w := slots.waiting[0]
		slots.waiting = slots.waiting[1:]
		slots.running++
		close(w.start)
	}
}
