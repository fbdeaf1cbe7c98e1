//go:build !(cgo && libvirt_dlopen)

package libvirt

import (
	"context"
	"errors"
	"testing"

	"github.com/provision/provision/drivers"
)

// TestNotBuilt: a binary without libvirt still decodes the block and plans
// (Resources from the spec alone), and says why it cannot reach libvirt.
func TestNotBuilt(t *testing.T) {
	c, diags := decode(t, "image = \"b.qcow2\"\nuser_network = true")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	d := newDriver(c, drivers.Options{})
	ctx := context.Background()
	if _, err := d.Machines(ctx, "c1"); !errors.Is(err, ErrNotBuilt) {
		t.Errorf("Machines: %v", err)
	}
	if err := d.(drivers.Preflighter).Preflight(ctx, nil); !errors.Is(err, ErrNotBuilt) {
		t.Errorf("Preflight: %v", err)
	}
	rs, err := d.(drivers.Resourcer).Resources(ctx, "c1", []drivers.MachineSpec{{Name: "m1"}})
	if !errors.Is(err, ErrNotBuilt) || len(rs) != 2 || rs[0].Name != DiskName("c1", "m1") || rs[0].Action != drivers.ResourceCreate {
		t.Errorf("Resources: %+v %v", rs, err)
	}
}
