package aws

import (
	"context"
	"errors"
	"fmt"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/provision/provision/provision/retry"
)

// defaultDependencyTimeout bounds the retries of a deletion that AWS refuses
// with DependencyViolation (network interfaces of terminated instances linger
// for a minute or two).
const defaultDependencyTimeout = 10 * time.Minute

// Teardown removes what the driver made for the cluster, found by the cluster
// tag, in dependency order: key pair, security groups, then the dedicated
// VPC's internet gateway, subnets, route tables and the VPC itself. It
// refuses while instances of the cluster still exist. Everything it could not
// delete is reported, with the IDs left.
func (d *Driver) Teardown(ctx context.Context, cluster string) error {
	cli, err := d.ec2Client(ctx)
	if err != nil {
		return err
	}
	insts, err := d.describeInstances(ctx, cli, clusterFilter(cluster), filter("instance-state-name", liveStates...))
	if err != nil {
		return fmt.Errorf("teardown %s: list instances: %w", cluster, err)
	}
	if len(insts) > 0 {
		var ids []string
		for _, i := range insts {
			if i.State.Name != types.InstanceStateNameShuttingDown {
				ids = append(ids, awssdk.ToString(i.InstanceId))
			}
		}
		if len(ids) > 0 {
			return fmt.Errorf("teardown %s: instances still exist: %v", cluster, ids)
		}
		// Shutting down: wait for them, their interfaces hold the group.
		for _, i := range insts {
			if err := d.Destroy(ctx, d.machine(i)); err != nil {
				return fmt.Errorf("teardown %s: %w", cluster, err)
			}
		}
	}

	// Forget the shared resources: a later Create makes them again.
	d.sharedMu.Lock()
	delete(d.shared, cluster)
	d.sharedMu.Unlock()

	var errs []error
	fail := func(what, id string, err error) {
		errs = append(errs, fmt.Errorf("delete %s %s: %w", what, id, d.explain(err)))
	}

	// Key pairs.
	kps, err := cli.DescribeKeyPairs(ctx, &ec2.DescribeKeyPairsInput{Filters: []types.Filter{clusterFilter(cluster)}})
	if err != nil {
		errs = append(errs, fmt.Errorf("list key pairs: %w", d.explain(err)))
	} else {
		for _, kp := range kps.KeyPairs {
			if _, err := cli.DeleteKeyPair(ctx, &ec2.DeleteKeyPairInput{KeyName: kp.KeyName}); err != nil && !isNotFound(err) {
				fail("key pair", awssdk.ToString(kp.KeyName), err)
			} else {
				d.log.InfoContext(ctx, "deleted key pair", "cluster", cluster, "key_pair", awssdk.ToString(kp.KeyName))
			}
		}
	}

	// Security groups (also those of a vpc we did not make).
	sgs, err := describeSGs(ctx, cli, clusterFilter(cluster))
	if err != nil {
		errs = append(errs, fmt.Errorf("list security groups: %w", d.explain(err)))
	}
	for _, sg := range sgs {
		id := awssdk.ToString(sg.GroupId)
		err := d.retryDependency(ctx, func() error {
			_, err := cli.DeleteSecurityGroup(ctx, &ec2.DeleteSecurityGroupInput{GroupId: sg.GroupId})
			return err
		})
		if err != nil && !isNotFound(err) {
			fail("security group", id, err)
			continue
		}
		d.log.InfoContext(ctx, "deleted security group", "cluster", cluster, "sg", id)
	}

	// Internet gateways: detach, delete.
	igws, err := describeIGWs(ctx, cli, clusterFilter(cluster))
	if err != nil {
		errs = append(errs, fmt.Errorf("list internet gateways: %w", d.explain(err)))
	}
	for _, igw := range igws {
		id := awssdk.ToString(igw.InternetGatewayId)
		var detachErr error
		for _, a := range igw.Attachments {
			detachErr = d.retryDependency(ctx, func() error {
				_, err := cli.DetachInternetGateway(ctx, &ec2.DetachInternetGatewayInput{InternetGatewayId: igw.InternetGatewayId, VpcId: a.VpcId})
				return err
			})
			if detachErr != nil && !isNotFound(detachErr) && !isCode(detachErr, "Gateway.NotAttached") {
				break
			}
			detachErr = nil
		}
		if detachErr != nil {
			fail("internet gateway (detach)", id, detachErr)
			continue
		}
		if _, err := cli.DeleteInternetGateway(ctx, &ec2.DeleteInternetGatewayInput{InternetGatewayId: igw.InternetGatewayId}); err != nil && !isNotFound(err) {
			fail("internet gateway", id, err)
			continue
		}
		d.log.InfoContext(ctx, "deleted internet gateway", "cluster", cluster, "igw", id)
	}

	// Subnets (their route table associations go with them).
	subnets, err := describeSubnets(ctx, cli, clusterFilter(cluster))
	if err != nil {
		errs = append(errs, fmt.Errorf("list subnets: %w", d.explain(err)))
	}
	for _, sn := range subnets {
		id := awssdk.ToString(sn.SubnetId)
		err := d.retryDependency(ctx, func() error {
			_, err := cli.DeleteSubnet(ctx, &ec2.DeleteSubnetInput{SubnetId: sn.SubnetId})
			return err
		})
		if err != nil && !isNotFound(err) {
			fail("subnet", id, err)
			continue
		}
		d.log.InfoContext(ctx, "deleted subnet", "cluster", cluster, "subnet", id)
	}

	// Route tables: remove what associations are left, then the table.
	rts, err := describeRouteTables(ctx, cli, clusterFilter(cluster))
	if err != nil {
		errs = append(errs, fmt.Errorf("list route tables: %w", d.explain(err)))
	}
	for _, rt := range rts {
		id := awssdk.ToString(rt.RouteTableId)
		var assocErr error
		for _, a := range rt.Associations {
			if awssdk.ToBool(a.Main) {
				continue
			}
			if _, err := cli.DisassociateRouteTable(ctx, &ec2.DisassociateRouteTableInput{AssociationId: a.RouteTableAssociationId}); err != nil && !isNotFound(err) {
				assocErr = err
				break
			}
		}
		if assocErr != nil {
			fail("route table (disassociate)", id, assocErr)
			continue
		}
		if _, err := cli.DeleteRouteTable(ctx, &ec2.DeleteRouteTableInput{RouteTableId: rt.RouteTableId}); err != nil && !isNotFound(err) {
			fail("route table", id, err)
			continue
		}
		d.log.InfoContext(ctx, "deleted route table", "cluster", cluster, "route_table", id)
	}

	// VPCs last; their main route table, default security group and network
	// ACL go with them.
	vpcs, err := describeVPCs(ctx, cli, clusterFilter(cluster))
	if err != nil {
		errs = append(errs, fmt.Errorf("list vpcs: %w", d.explain(err)))
	}
	for _, v := range vpcs {
		id := awssdk.ToString(v.VpcId)
		err := d.retryDependency(ctx, func() error {
			_, err := cli.DeleteVpc(ctx, &ec2.DeleteVpcInput{VpcId: v.VpcId})
			return err
		})
		if err != nil && !isNotFound(err) {
			fail("vpc", id, err)
			continue
		}
		d.log.InfoContext(ctx, "deleted vpc", "cluster", cluster, "vpc", id)
	}
	// The awslogs log groups, role and instance profile (logs.go).
	errs = append(errs, d.teardownLogs(ctx, cluster)...)
	if len(errs) > 0 {
		return fmt.Errorf("teardown %s: resources left: %w", cluster, errors.Join(errs...))
	}
	return nil
}

// retryDependency runs fn until it stops failing with DependencyViolation,
// backing off from waitMin up to 30s, for at most depTimeout or until ctx
// ends.
func (d *Driver) retryDependency(ctx context.Context, fn func() error) error {
	return retry.Backoff{First: d.waitMin, Max: 30 * time.Second}.While(ctx, d.depTimeout,
		func(err error) bool { return isCode(err, "DependencyViolation") }, fn)
}
