package aws

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	elbtypes "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/retry"
)

// The load balancer (drivers.Balancer): an internet-facing Network Load
// Balancer "provision-<cluster>" in the cluster's subnets (one per zone), with
// a security group of its own. Per published port: a TCP listener, a target
// group "p-<cluster>-<port>" (TCP health check on the port, every instance of
// the cluster registered), an ingress rule on the balancer's group from each
// published CIDR, and one on the cluster's group from the balancer's group
// only. Nothing else is opened.

// TagLB marks the load balancer's own resources (besides the cluster tag).
const TagLB = "provision-lb"

var _ drivers.Balancer = (*Driver)(nil)

func lbName(cluster string) string           { return "provision-" + cluster }
func lbSGName(cluster string) string         { return "provision-" + cluster + "-lb" }
func tgName(cluster string, port int) string { return "p-" + cluster + "-" + strconv.Itoa(port) }
func tgPrefix(cluster string) string         { return "p-" + cluster + "-" }

// elbClient returns the ELBv2 client, made from the same SDK configuration.
func (d *Driver) elbClient(ctx context.Context) (*elbv2.Client, *ec2.Client, error) {
	cli, err := d.ec2Client(ctx)
	if err != nil {
		return nil, nil, err
	}
	d.clientMu.Lock()
	defer d.clientMu.Unlock()
	if d.elb == nil {
		d.elb = elbv2.NewFromConfig(d.awsCfg, func(o *elbv2.Options) {
			if d.cfg.ELBEndpoint != "" {
				o.BaseEndpoint = awssdk.String(d.cfg.ELBEndpoint)
			}
		})
	}
	return d.elb, cli, nil
}

func elbTags(cluster, name string) []elbtypes.Tag {
	return []elbtypes.Tag{
		{Key: awssdk.String(drivers.TagCluster), Value: awssdk.String(cluster)},
		{Key: awssdk.String(TagLB), Value: awssdk.String("true")},
		{Key: awssdk.String(tagName), Value: awssdk.String(name)},
	}
}

// lbState is what exists of a cluster's balancer.
type lbState struct {
	lb        *elbtypes.LoadBalancer
	listeners map[int]elbtypes.Listener    // by port
	groups    map[int]elbtypes.TargetGroup // by port, also those no listener uses
	sg        *types.SecurityGroup         // the balancer's group
}

// findLB reads what exists, by name, checking the cluster tag.
func (d *Driver) findLB(ctx context.Context, elb *elbv2.Client, cli *ec2.Client, cluster string) (*lbState, error) {
	st := &lbState{listeners: map[int]elbtypes.Listener{}, groups: map[int]elbtypes.TargetGroup{}}
	out, err := elb.DescribeLoadBalancers(ctx, &elbv2.DescribeLoadBalancersInput{Names: []string{lbName(cluster)}})
	if err != nil && isAccessDenied(err) {
		// Credentials allowed EC2 only. The balancer's security group
		// is made first, through EC2: without one, provision made no
		// balancer for the cluster, and destroy (which asks every
		// driver) need not stop here.
		sgs, serr := describeSGs(ctx, cli, clusterFilter(cluster), filter("tag:"+TagLB, "true"))
		if serr == nil && len(sgs) == 0 {
			return st, nil
		}
		return nil, fmt.Errorf("find load balancer %s: the AWS credentials may not read Elastic Load Balancing (elasticloadbalancing:Describe*), and the cluster has a load balancer security group (%s=true), so it may have a balancer: use credentials that may: %w",
			lbName(cluster), TagLB, err)
	}
	switch {
	case err != nil && !isCode(err, "LoadBalancerNotFound"):
		return nil, fmt.Errorf("find load balancer %s: %w", lbName(cluster), d.explain(err))
	case err == nil && len(out.LoadBalancers) > 0:
		lb := out.LoadBalancers[0]
		tags, err := elb.DescribeTags(ctx, &elbv2.DescribeTagsInput{ResourceArns: []string{awssdk.ToString(lb.LoadBalancerArn)}})
		if err != nil {
			return nil, fmt.Errorf("tags of load balancer %s: %w", lbName(cluster), d.explain(err))
		}
		if !hasELBTag(tags.TagDescriptions, drivers.TagCluster, cluster) {
			return nil, fmt.Errorf("a load balancer named %s exists without the %s=%s tag: provision did not make it; rename or delete it", lbName(cluster), drivers.TagCluster, cluster)
		}
		st.lb = &lb
		p := elbv2.NewDescribeListenersPaginator(elb, &elbv2.DescribeListenersInput{LoadBalancerArn: lb.LoadBalancerArn})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return nil, fmt.Errorf("list listeners: %w", d.explain(err))
			}
			for _, l := range page.Listeners {
				st.listeners[int(awssdk.ToInt32(l.Port))] = l
			}
		}
	}
	// Target groups by name prefix: also those a crash left without a listener.
	p := elbv2.NewDescribeTargetGroupsPaginator(elb, &elbv2.DescribeTargetGroupsInput{})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list target groups: %w", d.explain(err))
		}
		for _, g := range page.TargetGroups {
			name := awssdk.ToString(g.TargetGroupName)
			if n, err := strconv.Atoi(strings.TrimPrefix(name, tgPrefix(cluster))); err == nil && strings.HasPrefix(name, tgPrefix(cluster)) {
				st.groups[n] = g
			}
		}
	}
	sgs, err := describeSGs(ctx, cli, clusterFilter(cluster), filter("tag:"+TagLB, "true"))
	if err != nil {
		return nil, fmt.Errorf("find the load balancer's security group: %w", d.explain(err))
	}
	if len(sgs) > 0 {
		st.sg = &sgs[0]
	}
	return st, nil
}

func hasELBTag(ds []elbtypes.TagDescription, k, v string) bool {
	for _, d := range ds {
		for _, t := range d.Tags {
			if awssdk.ToString(t.Key) == k && awssdk.ToString(t.Value) == v {
				return true
			}
		}
	}
	return false
}

// status renders what exists.
func (d *Driver) lbStatus(ctx context.Context, elb *elbv2.Client, st *lbState) drivers.LBStatus {
	if st.lb == nil {
		return drivers.LBStatus{}
	}
	out := drivers.LBStatus{Exists: true, Name: awssdk.ToString(st.lb.LoadBalancerName), ID: awssdk.ToString(st.lb.LoadBalancerArn),
		Address: awssdk.ToString(st.lb.DNSName)}
	if st.lb.State != nil {
		out.State = string(st.lb.State.Code)
	}
	for p := range st.listeners {
		out.Ports = append(out.Ports, p)
	}
	sort.Ints(out.Ports)
	if len(out.Ports) > 0 {
		if g, ok := st.groups[out.Ports[0]]; ok {
			if h, err := elb.DescribeTargetHealth(ctx, &elbv2.DescribeTargetHealthInput{TargetGroupArn: g.TargetGroupArn}); err == nil {
				out.Targets = len(h.TargetHealthDescriptions)
			}
		}
	}
	return out
}

// Balancer reports the cluster's load balancer.
func (d *Driver) Balancer(ctx context.Context, cluster string) (drivers.LBStatus, error) {
	elb, cli, err := d.elbClient(ctx)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	st, err := d.findLB(ctx, elb, cli, cluster)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	return d.lbStatus(ctx, elb, st), nil
}

// SyncPorts converges the balancer to ports (see the comment at the top).
// With no ports and no balancer, nothing is made; an existing balancer
// without ports keeps its DNS name and serves nothing.
func (d *Driver) SyncPorts(ctx context.Context, cluster string, ports []drivers.PublishedPort) (drivers.LBStatus, error) {
	elb, cli, err := d.elbClient(ctx)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	st, err := d.findLB(ctx, elb, cli, cluster)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	if len(ports) == 0 && st.lb == nil && len(st.groups) == 0 {
		return drivers.LBStatus{}, nil
	}
	var changes []string
	// The instances: targets, and where the balancer must be.
	insts, err := d.describeInstances(ctx, cli, clusterFilter(cluster), filter("instance-state-name", "pending", "running"))
	if err != nil {
		return drivers.LBStatus{}, fmt.Errorf("list instances: %w", err)
	}
	if len(insts) == 0 && st.lb == nil {
		return drivers.LBStatus{Note: "no instance of the cluster is running: nothing to balance yet"}, nil
	}
	vpcID, subnets, err := d.lbSubnets(ctx, cli, cluster, insts, st)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	clusterSG, err := d.clusterSG(ctx, cli, cluster, vpcID)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	// The balancer's security group.
	if st.sg == nil {
		out, err := cli.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{
			GroupName:   awssdk.String(lbSGName(cluster)),
			Description: awssdk.String("provision cluster " + cluster + ": published ports from published_cidrs to the load balancer"),
			VpcId:       awssdk.String(vpcID),
			TagSpecifications: []types.TagSpecification{tagSpec(types.ResourceTypeSecurityGroup, map[string]string{
				drivers.TagCluster: cluster, TagLB: "true", tagName: lbSGName(cluster)})},
		})
		if err != nil {
			return drivers.LBStatus{}, fmt.Errorf("create security group %s: %w", lbSGName(cluster), d.explain(err))
		}
		st.sg = &types.SecurityGroup{GroupId: out.GroupId, GroupName: awssdk.String(lbSGName(cluster))}
		changes = append(changes, "security group "+lbSGName(cluster)+" created")
	}
	lbSG := awssdk.ToString(st.sg.GroupId)
	// The balancer itself.
	if st.lb == nil {
		out, err := elb.CreateLoadBalancer(ctx, &elbv2.CreateLoadBalancerInput{
			Name:           awssdk.String(lbName(cluster)),
			Type:           elbtypes.LoadBalancerTypeEnumNetwork,
			Scheme:         elbtypes.LoadBalancerSchemeEnumInternetFacing,
			IpAddressType:  elbtypes.IpAddressTypeIpv4,
			Subnets:        subnets,
			SecurityGroups: []string{lbSG},
			Tags:           elbTags(cluster, lbName(cluster)),
		})
		if err != nil {
			return drivers.LBStatus{}, fmt.Errorf("create load balancer %s: %w", lbName(cluster), d.explain(err))
		}
		st.lb = &out.LoadBalancers[0]
		changes = append(changes, "network load balancer "+lbName(cluster)+" created")
		d.log.InfoContext(ctx, "created load balancer", "cluster", cluster, "dns", awssdk.ToString(st.lb.DNSName))
	}
	lbARN := st.lb.LoadBalancerArn
	want := map[int]drivers.PublishedPort{}
	for _, p := range ports {
		want[p.Port] = p
	}
	// Ports no longer published: listener, then target group.
	for port, l := range st.listeners {
		if _, ok := want[port]; ok {
			continue
		}
		if _, err := elb.DeleteListener(ctx, &elbv2.DeleteListenerInput{ListenerArn: l.ListenerArn}); err != nil && !isCode(err, "ListenerNotFound") {
			return drivers.LBStatus{}, fmt.Errorf("delete listener %d: %w", port, d.explain(err))
		}
		delete(st.listeners, port)
		changes = append(changes, fmt.Sprintf("listener %d removed", port))
	}
	for port, g := range st.groups {
		if _, ok := want[port]; ok {
			continue
		}
		if _, err := elb.DeleteTargetGroup(ctx, &elbv2.DeleteTargetGroupInput{TargetGroupArn: g.TargetGroupArn}); err != nil && !isCode(err, "TargetGroupNotFound") {
			return drivers.LBStatus{}, fmt.Errorf("delete target group %s: %w", awssdk.ToString(g.TargetGroupName), d.explain(err))
		}
		delete(st.groups, port)
	}
	// Published ports: target group (health check on the port), targets, listener.
	var targets []elbtypes.TargetDescription
	for _, i := range insts {
		if awssdk.ToString(i.VpcId) == vpcID {
			targets = append(targets, elbtypes.TargetDescription{Id: i.InstanceId})
		}
	}
	for _, port := range sortedPorts(want) {
		g, ok := st.groups[port]
		if !ok {
			out, err := elb.CreateTargetGroup(ctx, &elbv2.CreateTargetGroupInput{
				Name:                       awssdk.String(tgName(cluster, port)),
				Protocol:                   elbtypes.ProtocolEnumTcp,
				Port:                       awssdk.Int32(int32(port)),
				VpcId:                      awssdk.String(vpcID),
				TargetType:                 elbtypes.TargetTypeEnumInstance,
				HealthCheckEnabled:         awssdk.Bool(true),
				HealthCheckProtocol:        elbtypes.ProtocolEnumTcp,
				HealthCheckPort:            awssdk.String("traffic-port"),
				HealthCheckIntervalSeconds: awssdk.Int32(10),
				HealthyThresholdCount:      awssdk.Int32(3),
				UnhealthyThresholdCount:    awssdk.Int32(3),
				Tags:                       elbTags(cluster, tgName(cluster, port)),
			})
			if err != nil {
				return drivers.LBStatus{}, fmt.Errorf("create target group %s: %w", tgName(cluster, port), d.explain(err))
			}
			g = out.TargetGroups[0]
			st.groups[port] = g
		}
		added, removed, err := d.syncTargets(ctx, elb, g.TargetGroupArn, targets)
		if err != nil {
			return drivers.LBStatus{}, fmt.Errorf("targets of %s: %w", tgName(cluster, port), err)
		}
		if added+removed > 0 && len(st.listeners) > 0 {
			if _, ok := st.listeners[port]; ok {
				changes = append(changes, fmt.Sprintf("port %d: %d targets added, %d removed", port, added, removed))
			}
		}
		if _, ok := st.listeners[port]; !ok {
			out, err := elb.CreateListener(ctx, &elbv2.CreateListenerInput{
				LoadBalancerArn: lbARN,
				Protocol:        elbtypes.ProtocolEnumTcp,
				Port:            awssdk.Int32(int32(port)),
				DefaultActions:  []elbtypes.Action{{Type: elbtypes.ActionTypeEnumForward, TargetGroupArn: g.TargetGroupArn}},
				Tags:            elbTags(cluster, fmt.Sprintf("%s-%d", lbName(cluster), port)),
			})
			if err != nil {
				return drivers.LBStatus{}, fmt.Errorf("create listener %d: %w", port, d.explain(err))
			}
			st.listeners[port] = out.Listeners[0]
			changes = append(changes, fmt.Sprintf("listener %d added (%s)", port, strings.Join(want[port].Services, ", ")))
		}
	}
	// Firewalls: the balancer's group from the published CIDRs, the
	// cluster's group from the balancer's group; exactly the published ports.
	c, err := d.syncLBRules(ctx, cli, cluster, lbSG, clusterSG, want)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	changes = append(changes, c...)
	out := d.lbStatus(ctx, elb, st)
	out.Changes = changes
	return out, nil
}

func sortedPorts(m map[int]drivers.PublishedPort) []int {
	out := make([]int, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}

// lbSubnets picks the VPC and one subnet per availability zone for the
// balancer: the existing balancer's, else the cluster's own subnets (a
// dedicated VPC) or those its instances run in.
func (d *Driver) lbSubnets(ctx context.Context, cli *ec2.Client, cluster string, insts []types.Instance, st *lbState) (string, []string, error) {
	if st.lb != nil {
		var ids []string
		for _, z := range st.lb.AvailabilityZones {
			ids = append(ids, awssdk.ToString(z.SubnetId))
		}
		return awssdk.ToString(st.lb.VpcId), ids, nil
	}
	var subnets []types.Subnet
	var err error
	if d.cfg.CreateVPC {
		subnets, err = describeSubnets(ctx, cli, clusterFilter(cluster))
	} else {
		var ids []string
		for _, i := range insts {
			if id := awssdk.ToString(i.SubnetId); id != "" && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
		if len(ids) > 0 {
			subnets, err = describeSubnetsByID(ctx, cli, ids)
		}
	}
	if err != nil {
		return "", nil, fmt.Errorf("find the cluster's subnets: %w", d.explain(err))
	}
	if len(subnets) == 0 {
		return "", nil, errors.New("the cluster has no subnets yet: run apply first")
	}
	sortSubnets(subnets)
	vpcID := awssdk.ToString(subnets[0].VpcId)
	var ids []string
	zones := map[string]bool{}
	for _, sn := range subnets {
		z := awssdk.ToString(sn.AvailabilityZone)
		if zones[z] || awssdk.ToString(sn.VpcId) != vpcID {
			continue
		}
		zones[z] = true
		ids = append(ids, awssdk.ToString(sn.SubnetId))
	}
	return vpcID, ids, nil
}

// clusterSG finds the cluster's own security group (the instances' one).
func (d *Driver) clusterSG(ctx context.Context, cli *ec2.Client, cluster, vpcID string) (string, error) {
	sgs, err := describeSGs(ctx, cli, clusterFilter(cluster), filter("vpc-id", vpcID))
	if err != nil {
		return "", fmt.Errorf("find the cluster's security group: %w", d.explain(err))
	}
	for _, g := range sgs {
		if tagValue(g.Tags, TagLB) == "" {
			return awssdk.ToString(g.GroupId), nil
		}
	}
	return "", fmt.Errorf("the cluster's security group (provision-%s) is missing in %s: run apply", cluster, vpcID)
}

// syncTargets registers targets and deregisters every other instance.
func (d *Driver) syncTargets(ctx context.Context, elb *elbv2.Client, arn *string, targets []elbtypes.TargetDescription) (added, removed int, err error) {
	h, err := elb.DescribeTargetHealth(ctx, &elbv2.DescribeTargetHealthInput{TargetGroupArn: arn})
	if err != nil {
		return 0, 0, d.explain(err)
	}
	have := map[string]bool{}
	for _, t := range h.TargetHealthDescriptions {
		if t.Target != nil && (t.TargetHealth == nil || t.TargetHealth.State != elbtypes.TargetHealthStateEnumDraining) {
			have[awssdk.ToString(t.Target.Id)] = true
		}
	}
	want := map[string]bool{}
	var add []elbtypes.TargetDescription
	for _, t := range targets {
		id := awssdk.ToString(t.Id)
		want[id] = true
		if !have[id] {
			add = append(add, t)
		}
	}
	var drop []elbtypes.TargetDescription
	for id := range have {
		if !want[id] {
			drop = append(drop, elbtypes.TargetDescription{Id: awssdk.String(id)})
		}
	}
	if len(add) > 0 {
		if _, err := elb.RegisterTargets(ctx, &elbv2.RegisterTargetsInput{TargetGroupArn: arn, Targets: add}); err != nil {
			return 0, 0, fmt.Errorf("register: %w", d.explain(err))
		}
	}
	if len(drop) > 0 {
		if _, err := elb.DeregisterTargets(ctx, &elbv2.DeregisterTargetsInput{TargetGroupArn: arn, Targets: drop}); err != nil {
			return 0, 0, fmt.Errorf("deregister: %w", d.explain(err))
		}
	}
	return len(add), len(drop), nil
}

// lbRule is one ingress opening for a published port.
type lbRule struct {
	port int32
	from string // a CIDR, or a security group ID
}

func (r lbRule) permission() types.IpPermission {
	p := types.IpPermission{IpProtocol: awssdk.String("tcp"), FromPort: awssdk.Int32(r.port), ToPort: awssdk.Int32(r.port)}
	desc := awssdk.String(fmt.Sprintf("provision lb: published port %d", r.port))
	switch {
	case strings.HasPrefix(r.from, "sg-"):
		p.UserIdGroupPairs = []types.UserIdGroupPair{{GroupId: awssdk.String(r.from), Description: desc}}
	case strings.Contains(r.from, ":"):
		p.Ipv6Ranges = []types.Ipv6Range{{CidrIpv6: awssdk.String(r.from), Description: desc}}
	default:
		p.IpRanges = []types.IpRange{{CidrIp: awssdk.String(r.from), Description: desc}}
	}
	return p
}

// syncLBRules makes the balancer's group allow exactly the published ports
// from their sources, and the cluster's group exactly those ports from the
// balancer's group. Other rules of the cluster's group are not touched.
func (d *Driver) syncLBRules(ctx context.Context, cli *ec2.Client, cluster, lbSG, clusterSG string, want map[int]drivers.PublishedPort) ([]string, error) {
	var changes []string
	sgs, err := describeSGsByID(ctx, cli, lbSG, clusterSG)
	if err != nil {
		return nil, fmt.Errorf("read security groups: %w", d.explain(err))
	}
	var wantLB, wantCluster []lbRule
	for _, port := range sortedPorts(want) {
		srcs := want[port].Sources
		if len(srcs) == 0 {
			srcs = []string{drivers.Anywhere}
		}
		for _, c := range srcs {
			wantLB = append(wantLB, lbRule{int32(port), c})
		}
		wantCluster = append(wantCluster, lbRule{int32(port), lbSG})
	}
	for _, g := range sgs {
		id := awssdk.ToString(g.GroupId)
		var have, wantHere []lbRule
		if id == lbSG {
			wantHere = wantLB
			for _, p := range g.IpPermissions {
				for _, r := range p.IpRanges {
					have = append(have, lbRule{awssdk.ToInt32(p.FromPort), awssdk.ToString(r.CidrIp)})
				}
				for _, r := range p.Ipv6Ranges {
					have = append(have, lbRule{awssdk.ToInt32(p.FromPort), awssdk.ToString(r.CidrIpv6)})
				}
			}
		} else {
			wantHere = wantCluster
			for _, p := range g.IpPermissions {
				for _, pair := range p.UserIdGroupPairs {
					if awssdk.ToString(pair.GroupId) == lbSG {
						have = append(have, lbRule{awssdk.ToInt32(p.FromPort), lbSG})
					}
				}
			}
		}
		what := "the cluster's security group"
		if id == lbSG {
			what = "the load balancer's security group"
		}
		for _, r := range wantHere {
			if slices.Contains(have, r) {
				continue
			}
			_, err := cli.AuthorizeSecurityGroupIngress(ctx, &ec2.AuthorizeSecurityGroupIngressInput{
				GroupId: awssdk.String(id), IpPermissions: []types.IpPermission{r.permission()},
				TagSpecifications: []types.TagSpecification{tagSpec(types.ResourceTypeSecurityGroupRule, map[string]string{
					drivers.TagCluster: cluster, TagLB: "true", tagName: lbName(cluster)})},
			})
			if err != nil && !isCode(err, "InvalidPermission.Duplicate") {
				return changes, fmt.Errorf("open port %d from %s in %s: %w", r.port, r.from, id, d.explain(err))
			}
			changes = append(changes, fmt.Sprintf("%s: port %d open from %s", what, r.port, r.from))
		}
		for _, r := range have {
			if slices.Contains(wantHere, r) {
				continue
			}
			if _, err := cli.RevokeSecurityGroupIngress(ctx, &ec2.RevokeSecurityGroupIngressInput{
				GroupId: awssdk.String(id), IpPermissions: []types.IpPermission{r.permission()},
			}); err != nil && !isCode(err, "InvalidPermission.NotFound") {
				return changes, fmt.Errorf("close port %d from %s in %s: %w", r.port, r.from, id, d.explain(err))
			}
			changes = append(changes, fmt.Sprintf("%s: port %d closed to %s", what, r.port, r.from))
		}
	}
	return changes, nil
}

func describeSGsByID(ctx context.Context, cli *ec2.Client, ids ...string) ([]types.SecurityGroup, error) {
	return collect(ctx, ec2.NewDescribeSecurityGroupsPaginator(cli, &ec2.DescribeSecurityGroupsInput{GroupIds: ids}),
		func(o *ec2.DescribeSecurityGroupsOutput) []types.SecurityGroup { return o.SecurityGroups },
		func(g types.SecurityGroup) *string { return g.GroupId })
}

// RemoveBalancer deletes the balancer, its target groups, the openings in
// the cluster's group and the balancer's group, in that order; already gone
// is success.
func (d *Driver) RemoveBalancer(ctx context.Context, cluster string) error {
	elb, cli, err := d.elbClient(ctx)
	if err != nil {
		return err
	}
	st, err := d.findLB(ctx, elb, cli, cluster)
	if err != nil {
		return err
	}
	if st.lb != nil {
		if _, err := elb.DeleteLoadBalancer(ctx, &elbv2.DeleteLoadBalancerInput{LoadBalancerArn: st.lb.LoadBalancerArn}); err != nil && !isCode(err, "LoadBalancerNotFound") {
			return fmt.Errorf("delete load balancer %s: %w", lbName(cluster), d.explain(err))
		}
		if err := elbv2.NewLoadBalancersDeletedWaiter(elb, func(o *elbv2.LoadBalancersDeletedWaiterOptions) { o.MinDelay = d.waitMin }).
			Wait(ctx, &elbv2.DescribeLoadBalancersInput{LoadBalancerArns: []string{awssdk.ToString(st.lb.LoadBalancerArn)}}, 10*time.Minute); err != nil {
			return fmt.Errorf("wait for load balancer %s to go: %w", lbName(cluster), err)
		}
		d.log.InfoContext(ctx, "deleted load balancer", "cluster", cluster, "name", lbName(cluster))
	}
	for _, g := range st.groups {
		err := d.retryResourceInUse(ctx, func() error {
			_, err := elb.DeleteTargetGroup(ctx, &elbv2.DeleteTargetGroupInput{TargetGroupArn: g.TargetGroupArn})
			return err
		})
		if err != nil && !isCode(err, "TargetGroupNotFound") {
			return fmt.Errorf("delete target group %s: %w", awssdk.ToString(g.TargetGroupName), d.explain(err))
		}
	}
	if st.sg == nil {
		return nil
	}
	lbSG := awssdk.ToString(st.sg.GroupId)
	// The openings that name the balancer's group, wherever they are.
	refs, err := describeSGs(ctx, cli, clusterFilter(cluster))
	if err != nil {
		return fmt.Errorf("list security groups: %w", d.explain(err))
	}
	for _, g := range refs {
		for _, p := range g.IpPermissions {
			for _, pair := range p.UserIdGroupPairs {
				if awssdk.ToString(pair.GroupId) != lbSG {
					continue
				}
				r := lbRule{awssdk.ToInt32(p.FromPort), lbSG}
				if _, err := cli.RevokeSecurityGroupIngress(ctx, &ec2.RevokeSecurityGroupIngressInput{
					GroupId: g.GroupId, IpPermissions: []types.IpPermission{r.permission()},
				}); err != nil && !isCode(err, "InvalidPermission.NotFound") {
					return fmt.Errorf("close port %d in %s: %w", r.port, awssdk.ToString(g.GroupId), d.explain(err))
				}
			}
		}
	}
	// The balancer's interfaces linger for a while after it is gone.
	err = d.retryDependency(ctx, func() error {
		_, err := cli.DeleteSecurityGroup(ctx, &ec2.DeleteSecurityGroupInput{GroupId: st.sg.GroupId})
		return err
	})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("delete security group %s: %w", lbSG, d.explain(err))
	}
	return nil
}

// retryResourceInUse retries fn while ELB says the resource is in use (a
// target group right after its balancer was deleted).
func (d *Driver) retryResourceInUse(ctx context.Context, fn func() error) error {
	return retry.Backoff{First: d.waitMin, Max: 30 * time.Second}.While(ctx, d.depTimeout,
		func(err error) bool { return isCode(err, "ResourceInUse") }, fn)
}

// balancerResources lists the load balancer's resources for plan.
func (d *Driver) balancerResources(ctx context.Context, cluster, action string) ([]drivers.Resource, error) {
	elb, cli, err := d.elbClient(ctx)
	if err != nil {
		return nil, err
	}
	st, err := d.findLB(ctx, elb, cli, cluster)
	if err != nil {
		return nil, err
	}
	var out []drivers.Resource
	if st.lb != nil {
		s := d.lbStatus(ctx, elb, st)
		out = append(out, drivers.Resource{Kind: "load-balancer", Name: s.Name, Action: action,
			Note: fmt.Sprintf("network load balancer %s; ports %s", s.Address, drivers.PortList(s.Ports))})
	}
	for _, port := range sortedPortsOf(st.groups) {
		g := st.groups[port]
		out = append(out, drivers.Resource{Kind: "target-group", Name: awssdk.ToString(g.TargetGroupName), Action: action, Note: fmt.Sprintf("TCP %d, health check on the port", port)})
	}
	if st.sg != nil {
		out = append(out, drivers.Resource{Kind: "security-group", Name: lbSGName(cluster), ID: awssdk.ToString(st.sg.GroupId), Action: action, Note: "the load balancer's: published ports from published_cidrs"})
	}
	return out, nil
}

func sortedPortsOf[V any](m map[int]V) []int {
	out := make([]int, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}
