package aws

import (
	"context"
	"fmt"
	"sort"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/provision/provision/drivers"
)

var _ drivers.Placer = (*Driver)(nil)

// Placement says which availability zone each machine is in or will get:
// an existing instance's own zone; for a new one, the zone of the subnet
// Create picks (pickSubnet) among the subnets it would use: the cluster's
// own VPC's (made per zone, up to three, when create_vpc), the named
// subnets, the named VPC's or the default VPC's. It changes nothing.
func (d *Driver) Placement(ctx context.Context, cluster string, want []drivers.MachineSpec) (drivers.Placement, error) {
	cli, err := d.ec2Client(ctx)
	if err != nil {
		return drivers.Placement{}, err
	}
	var subnets []types.Subnet
	if d.cfg.CreateVPC {
		if subnets, err = describeSubnets(ctx, cli, clusterFilter(cluster)); err != nil {
			return drivers.Placement{}, fmt.Errorf("list subnets: %w", d.explain(err))
		}
		if len(subnets) == 0 {
			zones, err := d.subnetZones(ctx, cli)
			if err != nil {
				return drivers.Placement{}, err
			}
			for _, z := range zones { // what ensureVPC will make: one subnet per zone
				subnets = append(subnets, types.Subnet{AvailabilityZone: awssdk.String(z)})
			}
		}
	} else {
		var s clusterShared
		if err := d.findSubnets(ctx, cli, &s); err != nil {
			return drivers.Placement{}, err
		}
		subnets = s.subnets
	}
	sortSubnets(subnets)
	p := drivers.Placement{Machines: map[string]string{}}
	seen := map[string]bool{}
	for _, sn := range subnets {
		if z := awssdk.ToString(sn.AvailabilityZone); !seen[z] {
			seen[z] = true
			p.Zones = append(p.Zones, z)
		}
	}
	sort.Strings(p.Zones)
	insts, err := d.describeInstances(ctx, cli, clusterFilter(cluster))
	if err != nil {
		return drivers.Placement{}, fmt.Errorf("list instances: %w", d.explain(err))
	}
	for _, i := range insts {
		if m := d.machine(i); m.Name != "" && m.Zone != "" && m.State != string(types.InstanceStateNameTerminated) {
			p.Machines[m.Name] = m.Zone
		}
	}
	for _, w := range want {
		if _, ok := p.Machines[w.Name]; !ok && len(subnets) > 0 {
			p.Machines[w.Name] = awssdk.ToString(subnets[pickSubnet(subnets, w.Name)].AvailabilityZone)
		}
	}
	return p, nil
}
