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

// expected is each test's duration in a CI run at load 9-13, in seconds;
// the tests on the golden image (engineImage) from a quiet run of theirs,
// doubled.
var expected = map[string]int{
	"TestHardening": 840, "TestEngineUpgrade": 330, "TestQuorumLoss": 230, "TestLifecycle": 300,
	"TestDay2": 300, "TestLocalEndToEnd": 210, "TestRaftRestoreAndMissing": 200,
	"TestOfflineBundle": 180, "TestCertsLocal": 150, "TestGenericEndToEnd": 125,
	"TestSecurityLocal": 120, "TestBastionEngineTunnel": 110, "TestLoadBalancerLocal": 110,
	"TestMixedDrivers": 60, "TestEngineExtrasLocal": 65, "TestJSONEvents": 40,
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
