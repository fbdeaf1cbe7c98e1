//go:build cgo && libvirt_dlopen

package libvirt

import (
	"context"

	"github.com/provision/provision/drivers"
)

var _ drivers.Placer = (*Driver)(nil)

// Placement says which hypervisor (zone) each machine is on or will get
// when the block spreads machines over several (uris): an existing domain's
// own, hvFor's for a new one. With one hypervisor there is nothing to
// place. It changes nothing.
func (d *Driver) Placement(ctx context.Context, cluster string, want []drivers.MachineSpec) (drivers.Placement, error) {
	p := drivers.Placement{Machines: map[string]string{}}
	if !d.spread() {
		return p, nil
	}
	for _, h := range d.hvs {
		p.Zones = append(p.Zones, h.zone)
	}
	have, err := d.Machines(ctx, cluster)
	if err != nil {
		return p, err
	}
	for _, m := range have {
		p.Machines[m.Name] = m.Zone
	}
	for _, w := range want {
		if _, ok := p.Machines[w.Name]; !ok {
			p.Machines[w.Name] = d.hvFor(w.Name).zone
		}
	}
	return p, nil
}
