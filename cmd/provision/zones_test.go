package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
)

// placer is a driver that places machines in zones (or cannot be asked).
type placer struct {
	drivers.Driver
	p   drivers.Placement
	err error
}

func (p placer) Placement(context.Context, string, []drivers.MachineSpec) (drivers.Placement, error) {
	return p.p, p.err
}

// TestStatusZones: status fills the ZONE column the state does not record
// from the managers' driver, and warns when managers share a zone while
// another is free; without an answer from the driver only recorded zones
// count.
func TestStatusZones(t *testing.T) {
	c, diags := spec.LoadBytes("z.hcl", []byte("name = \"z\"\nmanagers { count = 3 }\n"), spec.Vars{})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	rows := func() []NodeStatus {
		return []NodeStatus{
			{Name: "z-manager-1", Role: spec.RoleManager, Driver: "local", Zone: "a"},
			{Name: "z-manager-2", Role: spec.RoleManager, Driver: "local"},
			{Name: "z-manager-3", Role: spec.RoleManager, Driver: "local", Zone: "c"},
		}
	}
	l := &loaded{spec: c, state: &state.State{ClusterID: "cid"}}

	// The driver places manager 2 in zone a too, and offers b.
	l.drivers = map[string]drivers.Driver{"local": placer{p: drivers.Placement{
		Zones: []string{"a", "b", "c"}, Machines: map[string]string{"z-manager-2": "a", "z-manager-1": "x"},
	}}}
	rs := rows()
	w := zoneWarning(context.Background(), l, rs)
	if rs[1].Zone != "a" || rs[0].Zone != "a" {
		t.Errorf("zones %q %q: want the unrecorded one filled, the recorded one kept", rs[0].Zone, rs[1].Zone)
	}
	if !strings.Contains(w, "z-manager-1") || !strings.Contains(w, "z-manager-2") || !strings.Contains(w, "b") {
		t.Errorf("warning %q: want the two managers in a and the free zone b named", w)
	}

	// Spread over every zone the driver offers: no warning.
	l.drivers["local"] = placer{p: drivers.Placement{Zones: []string{"a", "b", "c"}, Machines: map[string]string{"z-manager-2": "b"}}}
	if w := zoneWarning(context.Background(), l, rows()); w != "" {
		t.Errorf("managers in a, b, c: warning %q", w)
	}

	// The driver cannot be asked: recorded zones only, no guess.
	l.drivers["local"] = placer{err: errors.New("no credentials")}
	rs = rows()
	if w := zoneWarning(context.Background(), l, rs); w != "" || rs[1].Zone != "" {
		t.Errorf("without the driver: warning %q, zone %q", w, rs[1].Zone)
	}
}
