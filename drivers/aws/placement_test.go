package aws

import (
	"context"
	"fmt"
	"strings"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/provision/provision/drivers"
)

func TestPickSubnetSpreadsZones(t *testing.T) {
	sn := func(id, z string) types.Subnet {
		return types.Subnet{SubnetId: awssdk.String(id), AvailabilityZone: awssdk.String(z)}
	}
	zoneOf := func(subnets []types.Subnet, n int) string {
		return awssdk.ToString(subnets[pickSubnet(subnets, fmt.Sprintf("c-manager-%d", n))].SubnetId)
	}
	// Two subnets in zone a: managers 1-3 still go to a, b and c.
	subnets := []types.Subnet{sn("a1", "a"), sn("a2", "a"), sn("b1", "b"), sn("c1", "c")}
	var got []string
	for n := 1; n <= 6; n++ {
		got = append(got, zoneOf(subnets, n))
	}
	if strings.Join(got, " ") != "a1 b1 c1 a2 b1 c1" {
		t.Errorf("placement %v, want a1 b1 c1 a2 b1 c1", got)
	}
	if i := pickSubnet([]types.Subnet{sn("x", "x")}, "no-index"); i != 0 {
		t.Errorf("one subnet: %d", i)
	}
}

// TestPlacementMoto: before anything exists, the zones Create will use and
// each machine's predicted zone (three managers in three zones); after a
// create, the instance's own zone, which Machines reports too.
func TestPlacementMoto(t *testing.T) {
	sdk(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	d := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", testAMI(t)))
	want := []drivers.MachineSpec{spec(cluster, "manager", 1), spec(cluster, "manager", 2), spec(cluster, "manager", 3), spec(cluster, "worker", 1)}
	p, err := d.Placement(ctx, cluster, want)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Zones) != 3 {
		t.Fatalf("zones %v: want the 3 ensureVPC uses", p.Zones)
	}
	seen := map[string]bool{}
	for _, w := range want[:3] {
		seen[p.Machines[w.Name]] = true
	}
	if len(seen) != 3 || seen[""] {
		t.Errorf("managers not spread over 3 zones: %v", p.Machines)
	}
	predicted := p.Machines[want[1].Name]

	m, err := d.Create(ctx, cluster, want[1])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Destroy(context.Background(), m)
		d.Teardown(context.Background(), cluster)
	})
	if m.Zone != predicted {
		t.Errorf("created in zone %q, predicted %q", m.Zone, predicted)
	}
	ms, err := d.Machines(ctx, cluster)
	if err != nil || len(ms) != 1 || ms[0].Zone != predicted {
		t.Errorf("Machines: %v %+v", err, ms)
	}
	p2, err := d.Placement(ctx, cluster, want)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(p2) != fmt.Sprint(p) {
		t.Errorf("placement after create %v, before %v", p2, p)
	}
}
