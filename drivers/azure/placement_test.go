package azure

import (
	"fmt"
	"testing"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/drivers/azure/azuretest"
	"github.com/provision/provision/drivers/drivertest"
)

// TestPlacement: the zones predicted before anything exists are those the
// VMs get, and stay so once they exist.
func TestPlacement(t *testing.T) {
	b := azuretest.New()
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	d := testDriver(t, b, `allowed_cidrs = ["198.51.100.7/32"]
vm_size = "Standard_D2s_v5"`)
	want := []drivers.MachineSpec{spec(t, cluster, "manager", 1), spec(t, cluster, "manager", 2), spec(t, cluster, "worker", 1)}
	before, err := d.Placement(ctx, cluster, want)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(before.Zones) != "[1 2 3]" || before.Machines[want[0].Name] != "1" || before.Machines[want[1].Name] != "2" {
		t.Fatalf("placement %+v", before)
	}
	for _, w := range want {
		m, err := d.Create(ctx, cluster, w)
		if err != nil {
			t.Fatal(err)
		}
		if m.Zone != before.Machines[w.Name] {
			t.Errorf("%s created in zone %q, predicted %q", w.Name, m.Zone, before.Machines[w.Name])
		}
	}
	after, err := d.Placement(ctx, cluster, want)
	if err != nil || fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("placement after create %+v (%v), before %+v", after, err, before)
	}
}
