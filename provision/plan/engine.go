package plan

import (
	"fmt"
	"strings"

	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/spec"
)

// EngineChange is a rolling change of the swarm members' engine package
// (the spec's engine.version, method or bundle): apply takes the members
// through it node by node, each drained first (its tasks Running
// elsewhere), upgraded, checked (engine version, Ready, Reachable for a
// manager) and made active again; managers one at a time (the swarm's
// leader last), then workers in batches. A failed node stops the rollout
// there.
type EngineChange struct {
	Package string `json:"package"`
	To      string `json:"to"` // the spec's pin ("" = the distro's candidate)
	Method  string `json:"method"`
	// From maps each changing machine to the package version it has ("" =
	// not recorded by the provision that installed it).
	From map[string]string `json:"from"`
	// Downgrade lists machines the pin takes to a lower version: apply
	// refuses them unless run with --allow-engine-downgrade.
	Downgrade []string `json:"downgrade,omitempty"`
	// Order is the batches: managers one at a time (by name here; apply
	// takes the one leading the swarm last, as only it knows which), then
	// the workers in batches.
	Order [][]string `json:"order"`
}

// engineChange finds the swarm members whose engine package the spec
// changes and marks their actions.
func (p *Plan) engineChange(c *spec.Cluster, engineSettingChanged bool) {
	pin := c.Engine.Version
	ch := &EngineChange{Package: c.Engine.Package, To: pin, Method: c.Engine.Method, From: map[string]string{}}
	var managers, workers []string
	for i := range p.Actions {
		a := &p.Actions[i]
		rec := a.Recorded
		if rec == nil || rec.NodeID == "" || (a.Kind != Reconfigure && a.Kind != None) {
			continue
		}
		have := rec.EnginePackage
		var change bool
		switch {
		case have != "" && pin != "":
			change = !hostos.VersionMatches(have, pin)
		case have == "":
			// Recorded before provision kept the package version: only
			// the spec's change tells.
			change = engineSettingChanged && pin != ""
		}
		if !change {
			continue
		}
		ch.From[a.Machine] = have
		from := have
		if from == "" {
			from = "(not recorded)"
		}
		what := "engine upgrade"
		if hostos.Downgrade(have, pin) {
			what = "engine DOWNGRADE (refused unless apply --allow-engine-downgrade)"
			ch.Downgrade = append(ch.Downgrade, a.Machine)
		}
		if a.Kind == None {
			a.Kind = Reconfigure
		}
		a.Reasons = append(a.Reasons, fmt.Sprintf("%s %s %s -> %s: drained first, upgraded, checked, made active again", what, c.Engine.Package, from, pin))
		if a.Role == spec.RoleManager {
			managers = append(managers, a.Machine)
		} else {
			workers = append(workers, a.Machine)
		}
	}
	if len(ch.From) == 0 {
		return
	}
	for _, m := range managers {
		ch.Order = append(ch.Order, []string{m})
	}
	size := WorkerBatch(len(workers), c.Parallelism)
	for len(workers) > 0 {
		n := min(size, len(workers))
		ch.Order = append(ch.Order, workers[:n])
		workers = workers[n:]
	}
	p.Engine = ch
	var order []string
	for _, b := range ch.Order {
		order = append(order, strings.Join(b, "+"))
	}
	note := fmt.Sprintf("engine %s rolls to %s node by node: %s; managers one at a time, the swarm's leader last (one election); each node is drained first (its tasks Running elsewhere), upgraded, checked (engine version, Ready, Reachable for managers) and made active again; a failed node stops the rollout and the nodes after it keep their engine", c.Engine.Package, pin, strings.Join(order, " -> "))
	if len(ch.Downgrade) > 0 {
		note += fmt.Sprintf("; %s would be DOWNGRADED: apply refuses that unless run with --allow-engine-downgrade", strings.Join(ch.Downgrade, ", "))
	}
	p.Notes = append(p.Notes, note)
}
