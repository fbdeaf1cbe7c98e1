package main

import (
	"context"
	"time"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/spec"
)

// zoneWarning fills rows' zones the state does not record (machines made
// before zones were recorded) from the managers' driver, when it places
// machines (drivers.Placer), and says whether managers share a zone while
// another is free. The driver is asked for a few seconds at most; without an
// answer only recorded zones count.
func zoneWarning(ctx context.Context, l *loaded, rows []NodeStatus) string {
	var zones []string
	if d, ok := l.drivers[l.spec.Managers.Driver]; ok {
		if pl, ok := d.(drivers.Placer); ok {
			ctx, cancel := context.WithTimeout(ctx, 8*time.Second)
			defer cancel()
			if p, err := pl.Placement(ctx, l.state.ClusterID, plan.Wanted(l.spec, l.state.ClusterID)[l.spec.Managers.Driver]); err == nil {
				zones = p.Zones
				for i := range rows {
					if rows[i].Zone == "" && rows[i].Driver == l.spec.Managers.Driver {
						rows[i].Zone = p.Machines[rows[i].Name]
					}
				}
			}
		}
	}
	managers := map[string]string{}
	for _, r := range rows {
		if r.Role == spec.RoleManager {
			managers[r.Name] = r.Zone
		}
	}
	return plan.ZoneWarning(managers, zones)
}
