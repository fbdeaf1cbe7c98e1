package aws

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/provision/provision/drivers"
)

var _ drivers.Resourcer = (*Driver)(nil)

// Resources lists what the driver makes for the cluster besides instances,
// found by the cluster tag: the dedicated VPC with its subnets, internet
// gateway and route table (create_vpc), the security group and the key pair.
// What exists is kept (removed when want is empty); what Create would add is
// listed as created. A VPC or subnets the spec names are the operator's and
// never listed. Without credentials it lists what it would create from the
// spec alone, with an error saying what it could not check.
func (d *Driver) Resources(ctx context.Context, cluster string, want []drivers.MachineSpec) ([]drivers.Resource, error) {
	cli, err := d.ec2Client(ctx)
	if err != nil {
		if len(want) == 0 {
			return nil, fmt.Errorf("%w; %s", err, d.notChecked())
		}
		return d.plannedResources(cluster, nil), fmt.Errorf("%w; %s", err, d.notChecked())
	}
	action := drivers.ResourceKeep
	if len(want) == 0 {
		action = drivers.ResourceRemove
	}
	var (
		out  []drivers.Resource
		errs []error
		have = map[string]bool{} // kind -> exists
	)
	keep := func(kind, name, id, note string) {
		have[kind] = true
		if name == "" {
			name = id
		}
		out = append(out, drivers.Resource{Kind: kind, Name: name, ID: id, Action: action, Note: note})
	}
	fs := []types.Filter{clusterFilter(cluster)}

	vpcs, err := describeVPCs(ctx, cli, fs...)
	if err != nil {
		errs = append(errs, fmt.Errorf("list vpcs: %w", d.explain(err)))
	}
	for _, v := range vpcs {
		keep("vpc", tagValue(v.Tags, tagName), awssdk.ToString(v.VpcId), awssdk.ToString(v.CidrBlock))
	}
	subnets, err := describeSubnets(ctx, cli, fs...)
	if err != nil {
		errs = append(errs, fmt.Errorf("list subnets: %w", d.explain(err)))
	}
	sortSubnets(subnets)
	zones := map[string]bool{}
	for _, sn := range subnets {
		zones[awssdk.ToString(sn.AvailabilityZone)] = true
		keep("subnet", tagValue(sn.Tags, tagName), awssdk.ToString(sn.SubnetId),
			awssdk.ToString(sn.CidrBlock)+" in "+awssdk.ToString(sn.AvailabilityZone))
	}
	igws, err := describeIGWs(ctx, cli, fs...)
	if err != nil {
		errs = append(errs, fmt.Errorf("list internet gateways: %w", d.explain(err)))
	}
	for _, g := range igws {
		keep("internet-gateway", tagValue(g.Tags, tagName), awssdk.ToString(g.InternetGatewayId), "")
	}
	rts, err := describeRouteTables(ctx, cli, fs...)
	if err != nil {
		errs = append(errs, fmt.Errorf("list route tables: %w", d.explain(err)))
	}
	for _, r := range rts {
		keep("route-table", tagValue(r.Tags, tagName), awssdk.ToString(r.RouteTableId), "")
	}
	sgs, err := describeSGs(ctx, cli, fs...)
	if err != nil {
		errs = append(errs, fmt.Errorf("list security groups: %w", d.explain(err)))
	}
	for _, g := range sgs {
		if tagValue(g.Tags, TagLB) == "" { // the load balancer's is listed below
			keep("security-group", awssdk.ToString(g.GroupName), awssdk.ToString(g.GroupId), d.sgNote())
		}
	}
	if rs, err := d.balancerResources(ctx, cluster, action); err != nil {
		errs = append(errs, err)
	} else {
		out = append(out, rs...)
	}
	kps, err := cli.DescribeKeyPairs(ctx, &ec2.DescribeKeyPairsInput{Filters: fs})
	if err != nil {
		errs = append(errs, fmt.Errorf("list key pairs: %w", d.explain(err)))
	} else {
		for _, k := range kps.KeyPairs {
			keep("key-pair", awssdk.ToString(k.KeyName), awssdk.ToString(k.KeyPairId), "")
		}
	}

	if rs, err := d.logsResources(ctx, cluster, want, action); err != nil {
		errs = append(errs, err)
	} else {
		out = append(out, rs...)
	}

	if len(want) > 0 && len(errs) == 0 {
		// The zones a dedicated VPC's subnets go to, as ensureVPC picks them.
		var azs []string
		if d.cfg.CreateVPC {
			if azs, err = d.subnetZones(ctx, cli); err != nil {
				errs = append(errs, err)
			}
		}
		for _, r := range d.plannedResources(cluster, azs) {
			if r.Kind == "subnet" {
				if z := strings.TrimPrefix(r.Name, d.resourceName(cluster)+"-"); azs != nil && zones[z] {
					continue
				}
				if azs == nil && have["subnet"] {
					continue
				}
			} else if have[r.Kind] {
				continue
			}
			out = append(out, r)
		}
	}
	return out, errors.Join(errs...)
}

func (d *Driver) resourceName(cluster string) string { return "provision-" + cluster }

// subnetZones returns the availability zones ensureVPC puts subnets in.
func (d *Driver) subnetZones(ctx context.Context, cli *ec2.Client) ([]string, error) {
	out, err := cli.DescribeAvailabilityZones(ctx, &ec2.DescribeAvailabilityZonesInput{Filters: []types.Filter{
		filter("state", "available"), filter("zone-type", "availability-zone"),
	}})
	if err != nil {
		return nil, fmt.Errorf("list availability zones: %w", d.explain(err))
	}
	var zones []string
	for _, z := range out.AvailabilityZones {
		zones = append(zones, awssdk.ToString(z.ZoneName))
	}
	sort.Strings(zones)
	return zones[:min(len(zones), maxAZs)], nil
}

// plannedResources is what Create makes for the cluster besides instances,
// from the spec alone: with zones, one subnet per zone by name; without,
// one line standing for them.
func (d *Driver) plannedResources(cluster string, zones []string) []drivers.Resource {
	name := d.resourceName(cluster)
	create := func(kind, name, note string) drivers.Resource {
		return drivers.Resource{Kind: kind, Name: name, Action: drivers.ResourceCreate, Note: note}
	}
	var out []drivers.Resource
	if d.cfg.CreateVPC {
		out = append(out, create("vpc", name, d.cfg.VPCCIDR))
		if zones == nil {
			out = append(out, create("subnet", name+"-<zone>", fmt.Sprintf("one per availability zone (up to %d), carved from %s", maxAZs, d.cfg.VPCCIDR)))
		}
		for _, z := range zones {
			out = append(out, create("subnet", name+"-"+z, "in "+z+", carved from "+d.cfg.VPCCIDR))
		}
		out = append(out,
			create("internet-gateway", name, "attached to the vpc"),
			create("route-table", name, "default route through the internet gateway, associated with every subnet"))
	}
	out = append(out,
		create("security-group", name, d.sgNote()),
		create("key-pair", keyPairName(cluster), "the cluster's admin key"))
	return out
}

func (d *Driver) sgNote() string {
	from := strings.Join(d.cfg.AllowedCIDRs, ", ")
	if from == "" {
		from = "the operator's address (looked up at apply)"
	}
	return "22 and 2376 from " + from + "; swarm ports within the group"
}
