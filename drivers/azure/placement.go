package azure

import (
	"context"
	"slices"
	"sort"

	"github.com/provision/provision/drivers"
)

var _ drivers.Placer = (*Driver)(nil)

// Placement says which availability zone each VM is in (its zone tag) or
// will get: pickZone over the zones the location offers for its size (or
// the block's zones). A location or size without zones gives none. It
// changes nothing. While two generations of a machine exist, the newest
// one's zone is shown (pickZone gives both the same one unless the zones
// changed between them).
func (d *Driver) Placement(ctx context.Context, cluster string, want []drivers.MachineSpec) (drivers.Placement, error) {
	cli, err := d.clients(ctx)
	if err != nil {
		return drivers.Placement{}, err
	}
	p := drivers.Placement{Machines: map[string]string{}}
	have, err := d.Machines(ctx, cluster)
	if err != nil {
		return drivers.Placement{}, err
	}
	// Machines lists generations oldest first: the newest one's zone stays.
	for _, m := range have {
		if m.Zone != "" {
			p.Machines[m.Name] = m.Zone
		}
	}
	for _, w := range want {
		zones, err := d.zones(ctx, cli, d.size(w))
		if err != nil {
			return drivers.Placement{}, err
		}
		for _, z := range zones {
			if !slices.Contains(p.Zones, z) {
				p.Zones = append(p.Zones, z)
			}
		}
		if _, ok := p.Machines[w.Name]; !ok {
			if z := pickZone(zones, w.Name); z != "" {
				p.Machines[w.Name] = z
			}
		}
	}
	sort.Strings(p.Zones)
	return p, nil
}
