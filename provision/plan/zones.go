package plan

import (
	"fmt"
	"sort"
	"strings"

	"github.com/provision/provision/provision/spec"
)

// zones fills each action's zone (what the driver reports of the machine,
// else what state recorded, else where the driver's Placement says Create
// will put it) and warns when managers crowd one zone while another is free.
func (p *Plan) zones(obs Observed) {
	managers := map[string]string{}
	var known []string
	for i := range p.Actions {
		a := &p.Actions[i]
		switch {
		case a.Observed != nil && a.Observed.Zone != "" && a.Kind != Create:
			a.Zone = a.Observed.Zone
		case a.Recorded != nil && a.Recorded.Zone != "" && a.Kind != Create:
			a.Zone = a.Recorded.Zone
		default:
			a.Zone = obs.Placement[a.Driver].Machines[a.Machine]
		}
		if a.Role == spec.RoleManager && a.Kind != Remove {
			managers[a.Machine] = a.Zone
			known = append(known, obs.Placement[a.Driver].Zones...)
		}
	}
	if w := ZoneWarning(managers, known); w != "" {
		p.Notes = append(p.Notes, "WARNING: "+w)
	}
}

// ZoneWarning says which managers share a zone while another zone the
// drivers offer (or that holds another manager's machine) has no manager,
// "" when the managers are spread as well as the zones allow. managers maps
// manager names to their zones ("" = unknown, ignored).
func ZoneWarning(managers map[string]string, zones []string) string {
	by := map[string][]string{}
	all := map[string]bool{}
	for _, z := range zones {
		if z != "" {
			all[z] = true
		}
	}
	for name, z := range managers {
		if z != "" {
			by[z] = append(by[z], name)
			all[z] = true
		}
	}
	var free []string
	for z := range all {
		if len(by[z]) == 0 {
			free = append(free, z)
		}
	}
	if len(free) == 0 {
		return ""
	}
	sort.Strings(free)
	var crowded []string
	for z, names := range by {
		if len(names) > 1 {
			sort.Strings(names)
			crowded = append(crowded, fmt.Sprintf("%s share zone %s", strings.Join(names, ", "), z))
		}
	}
	if len(crowded) == 0 {
		return ""
	}
	sort.Strings(crowded)
	return fmt.Sprintf("managers %s while zone %s has none: losing that one zone loses more managers than it needs to (replace a crowded manager to move it, or check the driver's subnets or zones)",
		strings.Join(crowded, "; "), strings.Join(free, ", "))
}

// zoneLines lists, per zone, the spec's machines in it (none when the
// drivers report no zones), for plan's text.
func (p *Plan) zoneLines() []string {
	by := map[string][]string{}
	for _, a := range p.Actions {
		if a.Zone != "" && a.Kind != Remove {
			by[a.Zone] = append(by[a.Zone], a.Machine)
		}
	}
	var out []string
	for z, ms := range by {
		sort.Strings(ms)
		out = append(out, fmt.Sprintf("%s: %s", z, strings.Join(ms, ", ")))
	}
	sort.Strings(out)
	return out
}
