//go:build !(cgo && libvirt_dlopen)

package libvirt

import (
	"context"
	"errors"

	"github.com/provision/provision/drivers"
)

// ErrNotBuilt is what every call that needs a hypervisor returns in a
// binary built without libvirt.
var ErrNotBuilt = errors.New("this provision was built without libvirt support: build it with CGO_ENABLED=1 and -tags libvirt_dlopen (make build does)")

// Driver is the libvirt driver of a binary built without libvirt: specs
// validate and plan, and everything that needs a hypervisor says why it
// cannot.
type Driver struct{ cfg Config }

var (
	_ drivers.Driver      = (*Driver)(nil)
	_ drivers.Teardown    = (*Driver)(nil)
	_ drivers.Preflighter = (*Driver)(nil)
	_ drivers.Resourcer   = (*Driver)(nil)
)

func newDriver(cfg Config, _ drivers.Options) drivers.Driver { return &Driver{cfg: cfg} }

// Config returns the driver's decoded configuration.
func (d *Driver) Config() Config { return d.cfg }

func (d *Driver) Machines(context.Context, string) ([]drivers.Machine, error) {
	return nil, ErrNotBuilt
}

func (d *Driver) Create(context.Context, string, drivers.MachineSpec) (drivers.Machine, error) {
	return drivers.Machine{}, ErrNotBuilt
}

func (d *Driver) Destroy(context.Context, drivers.Machine) error         { return ErrNotBuilt }
func (d *Driver) Teardown(context.Context, string) error                 { return ErrNotBuilt }
func (d *Driver) Preflight(context.Context, []drivers.MachineSpec) error { return ErrNotBuilt }

// Resources lists what Create would make, from the spec alone.
func (d *Driver) Resources(_ context.Context, cluster string, want []drivers.MachineSpec) ([]drivers.Resource, error) {
	return d.cfg.wouldCreate(cluster, want), ErrNotBuilt
}
