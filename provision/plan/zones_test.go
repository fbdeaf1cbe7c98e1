package plan

import (
	"bytes"
	"strings"
	"testing"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/state"
)

func TestZoneWarning(t *testing.T) {
	for _, c := range []struct {
		managers map[string]string
		zones    []string
		want     string
	}{
		{map[string]string{"m1": "a", "m2": "b", "m3": "c"}, []string{"a", "b", "c"}, ""},
		{map[string]string{"m1": "a", "m2": "b", "m3": "a"}, []string{"a", "b"}, ""}, // 3 over 2 zones: the best there is
		{map[string]string{"m1": "a", "m2": "b", "m3": "a"}, []string{"a", "b", "c"}, "m1, m3 share zone a while zone c has none"},
		{map[string]string{"m1": "a", "m2": "a", "m3": "b"}, nil, ""}, // no other zone known
		{map[string]string{"m1": "a", "m2": "a", "m3": "b", "w": ""}, []string{"d"}, "m1, m2 share zone a while zone d has none"},
		{map[string]string{"m1": "", "m2": ""}, []string{"a", "b"}, ""}, // unknown zones say nothing
		{map[string]string{"m1": "a"}, []string{"a", "b"}, ""},
	} {
		got := ZoneWarning(c.managers, c.zones)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%v over %v: %q, want %q", c.managers, c.zones, got, c.want)
		}
	}
}

// TestPlanZones: each machine's zone comes from what the driver reports,
// then state, then where it will be placed; plan prints them and warns
// about crowded managers.
func TestPlanZones(t *testing.T) {
	c := cluster(t, `name = "demo"
managers { count = 3 }
workers { count = 1 }
`)
	st, obs := converged(c)
	// manager-1 and -2 exist in zone a (one reported, one only recorded);
	// manager-3 is new and will be placed in a too; zone b is free.
	st.Machines = slicesDelete(st.Machines, "demo-manager-3")
	var keep []drivers.Machine
	for _, m := range obs.Machines["local"] {
		switch m.Name {
		case "demo-manager-1":
			m.Zone = "a"
		case "demo-manager-3":
			continue
		}
		keep = append(keep, m)
	}
	obs.Machines["local"] = keep
	st.Machine("demo-manager-2").Zone = "a"
	obs.Placement = map[string]drivers.Placement{"local": {Zones: []string{"a", "b"}, Machines: map[string]string{
		"demo-manager-1": "a", "demo-manager-2": "b", "demo-manager-3": "a", "demo-worker-1": "b"}}}
	p := Build(c, st, obs)
	zones := map[string]string{}
	for _, a := range p.Actions {
		zones[a.Machine] = a.Zone
	}
	if zones["demo-manager-1"] != "a" || zones["demo-manager-2"] != "a" || zones["demo-manager-3"] != "a" || zones["demo-worker-1"] != "b" {
		t.Errorf("zones %v", zones)
	}
	var buf bytes.Buffer
	p.WriteText(&buf, false)
	out := buf.String()
	for _, want := range []string{"Zones:\n  a: demo-manager-1, demo-manager-2, demo-manager-3\n  b: demo-worker-1\n",
		"WARNING: managers demo-manager-1, demo-manager-2, demo-manager-3 share zone a while zone b has none"} {
		if !strings.Contains(out, want) {
			t.Errorf("plan text lacks %q:\n%s", want, out)
		}
	}
	// Spread: no warning.
	st.Machine("demo-manager-2").Zone = "b"
	p = Build(c, st, obs)
	buf.Reset()
	p.WriteText(&buf, false)
	if strings.Contains(buf.String(), "WARNING") {
		t.Errorf("spread managers warned:\n%s", buf.String())
	}
}

func slicesDelete(ms []*state.Machine, name string) []*state.Machine {
	var out []*state.Machine
	for _, m := range ms {
		if m.Name != name {
			out = append(out, m)
		}
	}
	return out
}
