package aws

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/provision/provision/drivers"
)

// Swarm and engine ports.
const (
	portSSH       = 22
	portEngineTLS = 2376
)

// clusterShared is what all of a cluster's instances share: the network, the
// security group and the key pair. It is made once per cluster and process
// (under mu) and found again by tags in the next process.
type clusterShared struct {
	mu      sync.Mutex
	ready   bool
	vpcID   string
	subnets []types.Subnet // sorted by availability zone
	sgID    string
	keyName string
}

func keyPairName(cluster string) string { return "provision-" + cluster }

func tagSpec(rt types.ResourceType, tags map[string]string) types.TagSpecification {
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	ts := types.TagSpecification{ResourceType: rt}
	for _, k := range keys {
		ts.Tags = append(ts.Tags, types.Tag{Key: awssdk.String(k), Value: awssdk.String(tags[k])})
	}
	return ts
}

func filter(name string, values ...string) types.Filter {
	return types.Filter{Name: awssdk.String(name), Values: values}
}

func clusterFilter(cluster string) types.Filter { return filter("tag:"+drivers.TagCluster, cluster) }

// ensureShared makes (or finds) the cluster's network, security group and key
// pair. Nothing is created before the allowed CIDRs are known.
func (d *Driver) ensureShared(ctx context.Context, cli *ec2.Client, cluster, publicKey string, metrics *drivers.MetricsAccess) (*clusterShared, error) {
	d.sharedMu.Lock()
	s, ok := d.shared[cluster]
	if !ok {
		s = &clusterShared{}
		d.shared[cluster] = s
	}
	d.sharedMu.Unlock()

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ready {
		return s, nil
	}
	allowed, err := d.allowedCIDRs(ctx)
	if err != nil {
		return nil, err
	}
	if d.cfg.CreateVPC {
		err = d.ensureVPC(ctx, cli, cluster, s)
	} else {
		err = d.findSubnets(ctx, cli, s)
	}
	if err != nil {
		return nil, err
	}
	if s.sgID, err = d.ensureSecurityGroup(ctx, cli, cluster, s.vpcID, allowed, metrics); err != nil {
		return nil, err
	}
	if s.keyName, err = d.ensureKeyPair(ctx, cli, cluster, publicKey); err != nil {
		return nil, err
	}
	s.ready = true
	return s, nil
}

// allowedCIDRs returns the block's allowed_cidrs or, only when
// detect_operator_ip is set, the operator's public address as a /32 (/128).
func (d *Driver) allowedCIDRs(ctx context.Context) ([]string, error) {
	if len(d.cfg.AllowedCIDRs) > 0 {
		return d.cfg.AllowedCIDRs, nil
	}
	if !d.cfg.DetectOperatorIP {
		return nil, errors.New("no allowed_cidrs in the aws driver block: set allowed_cidrs to the addresses that may reach SSH and the Docker TLS port, or detect_operator_ip = true")
	}
	p, err := d.lookupOperatorIP(ctx)
	if err != nil {
		return nil, fmt.Errorf("find the operator's public address (set allowed_cidrs instead): %w", err)
	}
	d.log.InfoContext(ctx, "allowing the operator's public address", "cidr", p)
	return []string{p}, nil
}

func (d *Driver) lookupOperatorIP(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.cfg.OperatorIPURL, nil)
	if err != nil {
		return "", err
	}
	resp, err := d.httpClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", d.cfg.OperatorIPURL, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 128))
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", d.cfg.OperatorIPURL, err)
	}
	a, err := netip.ParseAddr(strings.TrimSpace(string(b)))
	if err != nil {
		return "", fmt.Errorf("GET %s: answer is not an IP address: %w", d.cfg.OperatorIPURL, err)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()).String(), nil
}

// subnetCIDR returns the i-th subnet of the VPC block: four bits longer than
// the VPC's prefix, at most /28.
func subnetCIDR(vpc string, i int) (string, error) {
	p, err := netip.ParsePrefix(vpc)
	if err != nil {
		return "", err
	}
	bits := min(p.Bits()+4, 28)
	if i >= 1<<(bits-p.Bits()) {
		return "", fmt.Errorf("vpc %s has no room for subnet %d", vpc, i)
	}
	base := p.Masked().Addr().As4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += uint32(i) << (32 - bits)
	a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	return netip.PrefixFrom(a, bits).String(), nil
}

const maxAZs = 3

// ensureVPC makes the dedicated VPC, one subnet in each of up to three
// availability zones, an internet gateway and a route table with the default
// route. Each part is looked up by tags first, so a crash half way through is
// resumed, not duplicated.
func (d *Driver) ensureVPC(ctx context.Context, cli *ec2.Client, cluster string, s *clusterShared) error {
	name := "provision-" + cluster
	vpcs, err := describeVPCs(ctx, cli, clusterFilter(cluster))
	if err != nil {
		return fmt.Errorf("find vpc: %w", d.explain(err))
	}
	if len(vpcs) > 0 {
		s.vpcID = awssdk.ToString(vpcs[0].VpcId)
	} else {
		out, err := cli.CreateVpc(ctx, &ec2.CreateVpcInput{
			CidrBlock:         awssdk.String(d.cfg.VPCCIDR),
			TagSpecifications: []types.TagSpecification{tagSpec(types.ResourceTypeVpc, clusterTags(cluster, name))},
		})
		if err != nil {
			return fmt.Errorf("create vpc %s: %w", d.cfg.VPCCIDR, d.explain(err))
		}
		s.vpcID = awssdk.ToString(out.Vpc.VpcId)
		d.log.InfoContext(ctx, "created vpc", "cluster", cluster, "vpc", s.vpcID, "cidr", d.cfg.VPCCIDR)
		if err := ec2.NewVpcAvailableWaiter(cli, func(o *ec2.VpcAvailableWaiterOptions) { o.MinDelay = d.waitMin }).
			Wait(ctx, &ec2.DescribeVpcsInput{VpcIds: []string{s.vpcID}}, 5*time.Minute); err != nil {
			return fmt.Errorf("wait for vpc %s: %w", s.vpcID, err)
		}
	}
	// Idempotent, and done every time: a crash may have come before it.
	if _, err := cli.ModifyVpcAttribute(ctx, &ec2.ModifyVpcAttributeInput{
		VpcId: awssdk.String(s.vpcID), EnableDnsHostnames: &types.AttributeBooleanValue{Value: awssdk.Bool(true)},
	}); err != nil {
		return fmt.Errorf("enable dns hostnames on vpc %s: %w", s.vpcID, d.explain(err))
	}

	// Subnets, one per availability zone.
	azOut, err := cli.DescribeAvailabilityZones(ctx, &ec2.DescribeAvailabilityZonesInput{Filters: []types.Filter{
		filter("state", "available"), filter("zone-type", "availability-zone"),
	}})
	if err != nil {
		return fmt.Errorf("list availability zones: %w", d.explain(err))
	}
	var zones []string
	for _, z := range azOut.AvailabilityZones {
		zones = append(zones, awssdk.ToString(z.ZoneName))
	}
	sort.Strings(zones)
	if len(zones) == 0 {
		return fmt.Errorf("region %s lists no available availability zones", d.region)
	}
	zones = zones[:min(len(zones), maxAZs)]
	subnets, err := describeSubnets(ctx, cli, clusterFilter(cluster), filter("vpc-id", s.vpcID))
	if err != nil {
		return fmt.Errorf("find subnets: %w", d.explain(err))
	}
	used := map[string]bool{}
	haveAZ := map[string]bool{}
	for _, sn := range subnets {
		used[awssdk.ToString(sn.CidrBlock)] = true
		haveAZ[awssdk.ToString(sn.AvailabilityZone)] = true
	}
	next := 0
	for _, z := range zones {
		if haveAZ[z] {
			continue
		}
		var cidr string
		for ; ; next++ {
			if cidr, err = subnetCIDR(d.cfg.VPCCIDR, next); err != nil {
				return err
			}
			if !used[cidr] {
				break
			}
		}
		used[cidr] = true
		out, err := cli.CreateSubnet(ctx, &ec2.CreateSubnetInput{
			VpcId:             awssdk.String(s.vpcID),
			CidrBlock:         awssdk.String(cidr),
			AvailabilityZone:  awssdk.String(z),
			TagSpecifications: []types.TagSpecification{tagSpec(types.ResourceTypeSubnet, clusterTags(cluster, name+"-"+z))},
		})
		if err != nil {
			return fmt.Errorf("create subnet %s in %s: %w", cidr, z, d.explain(err))
		}
		d.log.InfoContext(ctx, "created subnet", "cluster", cluster, "subnet", awssdk.ToString(out.Subnet.SubnetId), "zone", z, "cidr", cidr)
		subnets = append(subnets, *out.Subnet)
	}
	sortSubnets(subnets)
	s.subnets = subnets

	// Internet gateway, attached.
	igws, err := describeIGWs(ctx, cli, clusterFilter(cluster))
	if err != nil {
		return fmt.Errorf("find internet gateway: %w", d.explain(err))
	}
	var igw types.InternetGateway
	if len(igws) > 0 {
		igw = igws[0]
	} else {
		out, err := cli.CreateInternetGateway(ctx, &ec2.CreateInternetGatewayInput{
			TagSpecifications: []types.TagSpecification{tagSpec(types.ResourceTypeInternetGateway, clusterTags(cluster, name))},
		})
		if err != nil {
			return fmt.Errorf("create internet gateway: %w", d.explain(err))
		}
		igw = *out.InternetGateway
		d.log.InfoContext(ctx, "created internet gateway", "cluster", cluster, "igw", awssdk.ToString(igw.InternetGatewayId))
	}
	igwID := awssdk.ToString(igw.InternetGatewayId)
	if !slices.ContainsFunc(igw.Attachments, func(a types.InternetGatewayAttachment) bool { return awssdk.ToString(a.VpcId) == s.vpcID }) {
		if _, err := cli.AttachInternetGateway(ctx, &ec2.AttachInternetGatewayInput{
			InternetGatewayId: awssdk.String(igwID), VpcId: awssdk.String(s.vpcID),
		}); err != nil {
			return fmt.Errorf("attach internet gateway %s to vpc %s: %w", igwID, s.vpcID, d.explain(err))
		}
	}

	// Route table with the default route, associated with every subnet.
	rts, err := describeRouteTables(ctx, cli, clusterFilter(cluster), filter("vpc-id", s.vpcID))
	if err != nil {
		return fmt.Errorf("find route table: %w", d.explain(err))
	}
	var rt types.RouteTable
	if len(rts) > 0 {
		rt = rts[0]
	} else {
		out, err := cli.CreateRouteTable(ctx, &ec2.CreateRouteTableInput{
			VpcId:             awssdk.String(s.vpcID),
			TagSpecifications: []types.TagSpecification{tagSpec(types.ResourceTypeRouteTable, clusterTags(cluster, name))},
		})
		if err != nil {
			return fmt.Errorf("create route table in vpc %s: %w", s.vpcID, d.explain(err))
		}
		rt = *out.RouteTable
	}
	rtID := awssdk.ToString(rt.RouteTableId)
	if !slices.ContainsFunc(rt.Routes, func(r types.Route) bool { return awssdk.ToString(r.DestinationCidrBlock) == "0.0.0.0/0" }) {
		if _, err := cli.CreateRoute(ctx, &ec2.CreateRouteInput{
			RouteTableId: awssdk.String(rtID), DestinationCidrBlock: awssdk.String("0.0.0.0/0"), GatewayId: awssdk.String(igwID),
		}); err != nil && !isCode(err, "RouteAlreadyExists") {
			return fmt.Errorf("add default route to %s: %w", rtID, d.explain(err))
		}
	}
	for _, sn := range s.subnets {
		id := awssdk.ToString(sn.SubnetId)
		if slices.ContainsFunc(rt.Associations, func(a types.RouteTableAssociation) bool { return awssdk.ToString(a.SubnetId) == id }) {
			continue
		}
		if _, err := cli.AssociateRouteTable(ctx, &ec2.AssociateRouteTableInput{
			RouteTableId: awssdk.String(rtID), SubnetId: awssdk.String(id),
		}); err != nil && !isCode(err, "Resource.AlreadyAssociated") {
			return fmt.Errorf("associate route table %s with subnet %s: %w", rtID, id, d.explain(err))
		}
	}
	return nil
}

// findSubnets resolves the subnets to use when the driver makes no VPC: the
// named subnets, or all subnets of the named VPC, or the default VPC's.
func (d *Driver) findSubnets(ctx context.Context, cli *ec2.Client, s *clusterShared) error {
	var (
		subnets []types.Subnet
		err     error
		what    string
	)
	switch {
	case len(d.cfg.SubnetIDs) > 0:
		what = "subnets " + strings.Join(d.cfg.SubnetIDs, ", ")
		subnets, err = describeSubnetsByID(ctx, cli, d.cfg.SubnetIDs)
	case d.cfg.VPCID != "":
		what = "subnets of vpc " + d.cfg.VPCID
		subnets, err = describeSubnets(ctx, cli, filter("vpc-id", d.cfg.VPCID))
	default:
		what = "the default vpc's subnets"
		subnets, err = describeSubnets(ctx, cli, filter("default-for-az", "true"))
	}
	if err != nil {
		return fmt.Errorf("find %s: %w", what, d.explain(err))
	}
	if len(subnets) == 0 {
		return fmt.Errorf("find %s: none found in region %s (set subnet_ids, or create_vpc = true)", what, d.region)
	}
	s.vpcID = awssdk.ToString(subnets[0].VpcId)
	for _, sn := range subnets {
		if v := awssdk.ToString(sn.VpcId); v != s.vpcID {
			return fmt.Errorf("%s: subnets are in different VPCs (%s, %s)", what, s.vpcID, v)
		}
	}
	if d.cfg.VPCID != "" && s.vpcID != d.cfg.VPCID {
		return fmt.Errorf("%s: they are in vpc %s, not in vpc_id %s", what, s.vpcID, d.cfg.VPCID)
	}
	sortSubnets(subnets)
	s.subnets = subnets
	return nil
}

func sortSubnets(subnets []types.Subnet) {
	sort.Slice(subnets, func(i, j int) bool {
		a, b := subnets[i], subnets[j]
		if awssdk.ToString(a.AvailabilityZone) != awssdk.ToString(b.AvailabilityZone) {
			return awssdk.ToString(a.AvailabilityZone) < awssdk.ToString(b.AvailabilityZone)
		}
		return awssdk.ToString(a.SubnetId) < awssdk.ToString(b.SubnetId)
	})
}

// sgRule is one ingress permission in a comparable form.
type sgRule struct {
	proto    string
	from, to int32
	cidr     string // "" for the group itself
}

func (r sgRule) permission(sgID string) types.IpPermission {
	p := types.IpPermission{IpProtocol: awssdk.String(r.proto), FromPort: awssdk.Int32(r.from), ToPort: awssdk.Int32(r.to)}
	if r.proto == "50" {
		// Ports mean nothing to ESP; -1 is what EC2 reports for it.
		p.FromPort, p.ToPort = awssdk.Int32(-1), awssdk.Int32(-1)
	}
	switch {
	case r.cidr == "":
		p.UserIdGroupPairs = []types.UserIdGroupPair{{GroupId: awssdk.String(sgID), Description: awssdk.String("swarm members")}}
	case strings.Contains(r.cidr, ":"):
		p.Ipv6Ranges = []types.Ipv6Range{{CidrIpv6: awssdk.String(r.cidr), Description: awssdk.String("provision operator")}}
	default:
		p.IpRanges = []types.IpRange{{CidrIp: awssdk.String(r.cidr), Description: awssdk.String("provision operator")}}
	}
	return p
}

// wantRules: SSH and the engine's TLS port from the allowed CIDRs; the swarm
// ports (2377/tcp, 7946/tcp+udp, 4789/udp, ESP) only from the group itself;
// the engines' metrics port, when on, from the group and metrics_cidrs.
func wantRules(allowed []string, metrics *drivers.MetricsAccess) []sgRule {
	var rs []sgRule
	for _, c := range allowed {
		rs = append(rs, sgRule{"tcp", portSSH, portSSH, c}, sgRule{"tcp", portEngineTLS, portEngineTLS, c})
	}
	if metrics != nil && metrics.Port > 0 {
		port := int32(metrics.Port)
		rs = append(rs, sgRule{"tcp", port, port, ""})
		for _, c := range metrics.CIDRs {
			rs = append(rs, sgRule{"tcp", port, port, c})
		}
	}
	return append(rs,
		sgRule{"tcp", 2377, 2377, ""},
		sgRule{"tcp", 7946, 7946, ""},
		sgRule{"udp", 7946, 7946, ""},
		sgRule{"udp", 4789, 4789, ""},
		sgRule{"50", 0, 0, ""},
	)
}

// haveRules flattens a group's ingress permissions.
func haveRules(sg types.SecurityGroup) []sgRule {
	var rs []sgRule
	for _, p := range sg.IpPermissions {
		proto := awssdk.ToString(p.IpProtocol)
		if proto == "esp" {
			proto = "50"
		}
		r := sgRule{proto: proto, from: awssdk.ToInt32(p.FromPort), to: awssdk.ToInt32(p.ToPort)}
		if proto == "50" {
			r.from, r.to = 0, 0
		}
		for _, ip := range p.IpRanges {
			r.cidr = awssdk.ToString(ip.CidrIp)
			rs = append(rs, r)
		}
		for _, ip := range p.Ipv6Ranges {
			r.cidr = awssdk.ToString(ip.CidrIpv6)
			rs = append(rs, r)
		}
		for _, g := range p.UserIdGroupPairs {
			if awssdk.ToString(g.GroupId) == awssdk.ToString(sg.GroupId) {
				r.cidr = ""
				rs = append(rs, r)
			}
		}
	}
	return rs
}

// ensureSecurityGroup makes the cluster's group and converges its ingress
// rules: missing rules are added, SSH/2376 rules for addresses no longer
// allowed are revoked.
func (d *Driver) ensureSecurityGroup(ctx context.Context, cli *ec2.Client, cluster, vpcID string, allowed []string, metrics *drivers.MetricsAccess) (string, error) {
	name := "provision-" + cluster
	sgs, err := describeSGs(ctx, cli, clusterFilter(cluster), filter("vpc-id", vpcID))
	if err != nil {
		return "", fmt.Errorf("find security group: %w", d.explain(err))
	}
	// The load balancer's own group carries the cluster tag too (balancer.go).
	sgs = slices.DeleteFunc(sgs, func(g types.SecurityGroup) bool { return tagValue(g.Tags, TagLB) != "" })
	var sg types.SecurityGroup
	if len(sgs) > 0 {
		sg = sgs[0]
	} else {
		out, err := cli.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{
			GroupName:         awssdk.String(name),
			Description:       awssdk.String("provision cluster " + cluster + ": SSH and Docker TLS from the operator, swarm within the group"),
			VpcId:             awssdk.String(vpcID),
			TagSpecifications: []types.TagSpecification{tagSpec(types.ResourceTypeSecurityGroup, clusterTags(cluster, name))},
		})
		if err != nil {
			if isCode(err, "InvalidGroup.Duplicate") {
				return "", fmt.Errorf("create security group %q in vpc %s: a group of that name exists without the %s=%s tag; remove or rename it: %w",
					name, vpcID, drivers.TagCluster, cluster, err)
			}
			return "", fmt.Errorf("create security group %q in vpc %s: %w", name, vpcID, d.explain(err))
		}
		sg = types.SecurityGroup{GroupId: out.GroupId}
		d.log.InfoContext(ctx, "created security group", "cluster", cluster, "sg", awssdk.ToString(out.GroupId))
	}
	sgID := awssdk.ToString(sg.GroupId)
	have := haveRules(sg)
	want := wantRules(allowed, metrics)
	for _, r := range want {
		if slices.Contains(have, r) {
			continue
		}
		_, err := cli.AuthorizeSecurityGroupIngress(ctx, &ec2.AuthorizeSecurityGroupIngressInput{
			GroupId:           awssdk.String(sgID),
			IpPermissions:     []types.IpPermission{r.permission(sgID)},
			TagSpecifications: []types.TagSpecification{tagSpec(types.ResourceTypeSecurityGroupRule, clusterTags(cluster, name))},
		})
		if err != nil && !isCode(err, "InvalidPermission.Duplicate") {
			return "", fmt.Errorf("allow %s %d-%d from %q in security group %s: %w", r.proto, r.from, r.to, r.cidr, sgID, d.explain(err))
		}
	}
	for _, r := range have {
		if r.cidr == "" || (r.from != portSSH && r.from != portEngineTLS) || slices.Contains(want, r) {
			continue
		}
		if _, err := cli.RevokeSecurityGroupIngress(ctx, &ec2.RevokeSecurityGroupIngressInput{
			GroupId: awssdk.String(sgID), IpPermissions: []types.IpPermission{r.permission(sgID)},
		}); err != nil && !isCode(err, "InvalidPermission.NotFound") {
			return "", fmt.Errorf("revoke port %d from %s in security group %s: %w", r.from, r.cidr, sgID, d.explain(err))
		}
		d.log.InfoContext(ctx, "revoked access no longer allowed", "cluster", cluster, "sg", sgID, "port", r.from, "cidr", r.cidr)
	}
	return sgID, nil
}

// ensureKeyPair imports the operator's public key as "provision-<cluster>".
func (d *Driver) ensureKeyPair(ctx context.Context, cli *ec2.Client, cluster, publicKey string) (string, error) {
	name := keyPairName(cluster)
	_, err := cli.DescribeKeyPairs(ctx, &ec2.DescribeKeyPairsInput{KeyNames: []string{name}})
	if err == nil {
		return name, nil
	}
	if !isNotFound(err) {
		return "", fmt.Errorf("find key pair %q: %w", name, d.explain(err))
	}
	if publicKey == "" {
		return "", fmt.Errorf("import key pair %q: the machine spec has no SSH public key", name)
	}
	_, err = cli.ImportKeyPair(ctx, &ec2.ImportKeyPairInput{
		KeyName:           awssdk.String(name),
		PublicKeyMaterial: []byte(publicKey),
		TagSpecifications: []types.TagSpecification{tagSpec(types.ResourceTypeKeyPair, clusterTags(cluster, name))},
	})
	if err != nil && !isCode(err, "InvalidKeyPair.Duplicate") {
		return "", fmt.Errorf("import key pair %q: %w", name, d.explain(err))
	}
	d.log.InfoContext(ctx, "imported key pair", "cluster", cluster, "key_pair", name)
	return name, nil
}

// Describe helpers: every list goes through the SDK's paginators.

// pager is what every ec2 paginator has.
type pager[O any] interface {
	HasMorePages() bool
	NextPage(ctx context.Context, optFns ...func(*ec2.Options)) (O, error)
}

// collect walks a paginator to its end, gathering each page's items, sorted
// by id when id is given (so callers see a stable order).
func collect[O, T any](ctx context.Context, p pager[O], items func(O) []T, id func(T) *string) ([]T, error) {
	var out []T
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		out = append(out, items(page)...)
	}
	if id != nil {
		sort.Slice(out, func(i, j int) bool { return awssdk.ToString(id(out[i])) < awssdk.ToString(id(out[j])) })
	}
	return out, nil
}

func describeVPCs(ctx context.Context, cli *ec2.Client, fs ...types.Filter) ([]types.Vpc, error) {
	return collect(ctx, ec2.NewDescribeVpcsPaginator(cli, &ec2.DescribeVpcsInput{Filters: fs}),
		func(o *ec2.DescribeVpcsOutput) []types.Vpc { return o.Vpcs },
		func(v types.Vpc) *string { return v.VpcId })
}

func describeSubnets(ctx context.Context, cli *ec2.Client, fs ...types.Filter) ([]types.Subnet, error) {
	return collect(ctx, ec2.NewDescribeSubnetsPaginator(cli, &ec2.DescribeSubnetsInput{Filters: fs}),
		func(o *ec2.DescribeSubnetsOutput) []types.Subnet { return o.Subnets }, nil)
}

func describeSubnetsByID(ctx context.Context, cli *ec2.Client, ids []string) ([]types.Subnet, error) {
	return collect(ctx, ec2.NewDescribeSubnetsPaginator(cli, &ec2.DescribeSubnetsInput{SubnetIds: ids}),
		func(o *ec2.DescribeSubnetsOutput) []types.Subnet { return o.Subnets }, nil)
}

func describeIGWs(ctx context.Context, cli *ec2.Client, fs ...types.Filter) ([]types.InternetGateway, error) {
	return collect(ctx, ec2.NewDescribeInternetGatewaysPaginator(cli, &ec2.DescribeInternetGatewaysInput{Filters: fs}),
		func(o *ec2.DescribeInternetGatewaysOutput) []types.InternetGateway { return o.InternetGateways },
		func(g types.InternetGateway) *string { return g.InternetGatewayId })
}

func describeRouteTables(ctx context.Context, cli *ec2.Client, fs ...types.Filter) ([]types.RouteTable, error) {
	return collect(ctx, ec2.NewDescribeRouteTablesPaginator(cli, &ec2.DescribeRouteTablesInput{Filters: fs}),
		func(o *ec2.DescribeRouteTablesOutput) []types.RouteTable { return o.RouteTables },
		func(r types.RouteTable) *string { return r.RouteTableId })
}

func describeSGs(ctx context.Context, cli *ec2.Client, fs ...types.Filter) ([]types.SecurityGroup, error) {
	return collect(ctx, ec2.NewDescribeSecurityGroupsPaginator(cli, &ec2.DescribeSecurityGroupsInput{Filters: fs}),
		func(o *ec2.DescribeSecurityGroupsOutput) []types.SecurityGroup { return o.SecurityGroups },
		func(g types.SecurityGroup) *string { return g.GroupId })
}
