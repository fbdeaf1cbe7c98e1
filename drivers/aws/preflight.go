package aws

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/provision/provision/drivers"
)

// Preflight checks, without creating anything, what Create would need:
// credentials and region (DescribeAvailabilityZones), the allowed CIDRs, each
// instance type (exists, offered in the region), the image for each
// architecture, the named subnets or VPC, and the SSH keys of every machine.
// All problems are reported together.
func (d *Driver) Preflight(ctx context.Context, want []drivers.MachineSpec) error {
	cli, err := d.ec2Client(ctx)
	if err != nil {
		return fmt.Errorf("aws preflight: %w; %s", err, d.notChecked())
	}
	if _, err := cli.DescribeAvailabilityZones(ctx, &ec2.DescribeAvailabilityZonesInput{}); err != nil {
		// Nothing else can work: stop here.
		return fmt.Errorf("aws preflight: %w", d.explain(err))
	}
	var errs []error
	if _, err := d.allowedCIDRs(ctx); err != nil {
		errs = append(errs, err)
	}
	seen := map[string]bool{}
	for _, m := range want {
		if _, err := drivers.UserData(m); err != nil {
			errs = append(errs, fmt.Errorf("machine %q: %w", m.Name, err))
		}
		itype := m.Size
		if itype == "" {
			itype = d.cfg.InstanceType
		}
		if seen[itype] {
			continue
		}
		seen[itype] = true
		arch, err := d.instanceArch(ctx, cli, itype)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := d.offered(ctx, cli, itype); err != nil {
			errs = append(errs, err)
			continue
		}
		if _, err := d.image(ctx, cli, arch); err != nil {
			errs = append(errs, err)
		}
	}
	if !d.cfg.CreateVPC {
		if err := d.findSubnets(ctx, cli, &clusterShared{}); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("aws preflight: %w", errors.Join(errs...))
	}
	return nil
}

// offered checks that the region offers the instance type.
func (d *Driver) offered(ctx context.Context, cli *ec2.Client, itype string) error {
	p := ec2.NewDescribeInstanceTypeOfferingsPaginator(cli, &ec2.DescribeInstanceTypeOfferingsInput{
		LocationType: types.LocationTypeRegion,
		Filters:      []types.Filter{filter("instance-type", itype)},
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("instance type %q offerings: %w", itype, d.explain(err))
		}
		if len(page.InstanceTypeOfferings) > 0 {
			return nil
		}
	}
	return fmt.Errorf("instance type %q is not offered in region %s", itype, d.region)
}
