package plan

import (
	"bytes"
	"strings"
	"testing"
)

// TestEngineUpgradePlan: a new engine.version shows as a rolling upgrade of
// the swarm's members in apply's order (managers one at a time, then the
// workers a quarter at a time); a pin below what a host has is named a
// downgrade.
func TestEngineUpgradePlan(t *testing.T) {
	old := cluster(t, "name = \"demo\"\nengine { version = \"20.10.24+dfsg1-1+deb12u1+b6\" }\nmanagers { count = 3 }\nworkers { count = 4 }\n")
	st, obs := converged(old)
	for i, m := range st.Machines {
		m.NodeID = "node" + string(rune('a'+i))
		m.EnginePackage = "20.10.24+dfsg1-1+deb12u1+b6"
	}
	if p := Build(old, st, obs); p.Engine != nil || !p.Empty() {
		t.Fatalf("unchanged pin: %+v %s", p.Engine, kinds(p))
	}
	up := cluster(t, "name = \"demo\"\nengine { version = \"20.10.24+dfsg1-1+deb12u1+b6+up1\" }\nmanagers { count = 3 }\nworkers { count = 4 }\n")
	p := Build(up, st, obs)
	if p.Engine == nil {
		t.Fatalf("no engine change: %s", kinds(p))
	}
	var order []string
	for _, b := range p.Engine.Order {
		order = append(order, strings.Join(b, ","))
	}
	want := "demo-manager-1 | demo-manager-2 | demo-manager-3 | demo-worker-1 | demo-worker-2 | demo-worker-3 | demo-worker-4"
	if got := strings.Join(order, " | "); got != want {
		t.Errorf("order %s, want %s", got, want)
	}
	if len(p.Engine.Downgrade) != 0 || p.Summary.Reconfigure != 7 {
		t.Errorf("downgrades %v, reconfigure %d", p.Engine.Downgrade, p.Summary.Reconfigure)
	}
	var text bytes.Buffer
	if err := p.WriteText(&text, false); err != nil {
		t.Fatal(err)
	}
	if s := text.String(); !strings.Contains(s, "Engine upgrade (docker.io to 20.10.24+dfsg1-1+deb12u1+b6+up1") || !strings.Contains(s, "  1. demo-manager-1 (20.10.24+dfsg1-1+deb12u1+b6)") || strings.Contains(s, "DOWNGRADE") {
		t.Errorf("plan text:\n%s", s)
	}

	// One host already has the newer engine: the old pin takes it down.
	st.Machines[0].EnginePackage = "20.10.24+dfsg1-1+deb12u1+b6+up1"
	p = Build(old, st, obs)
	if p.Engine == nil || len(p.Engine.Downgrade) != 1 || p.Engine.Downgrade[0] != st.Machines[0].Name {
		t.Fatalf("downgrade not named: %+v", p.Engine)
	}
	text.Reset()
	p.WriteText(&text, false)
	if s := text.String(); !strings.Contains(s, "DOWNGRADE") || !strings.Contains(s, "--allow-engine-downgrade") {
		t.Errorf("plan text does not state the downgrade:\n%s", s)
	}
}
