package aws

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"

	"github.com/provision/provision/drivers"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// describeOne returns the instance with that ID as moto reports it.
func describeOne(t *testing.T, cli *ec2.Client, id string) types.Instance {
	t.Helper()
	out, err := cli.DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil || len(out.Reservations) != 1 || len(out.Reservations[0].Instances) != 1 {
		t.Fatalf("describe %s: %v", id, err)
	}
	return out.Reservations[0].Instances[0]
}

func tagMap(tags []types.Tag) map[string]string {
	m := map[string]string{}
	for _, t := range tags {
		m[awssdk.ToString(t.Key)] = awssdk.ToString(t.Value)
	}
	return m
}

// assertNothingLeft checks through the SDK that no resource tagged with the
// cluster remains (terminated instances excepted).
func assertNothingLeft(t *testing.T, cli *ec2.Client, cluster string) {
	t.Helper()
	ctx := context.Background()
	fs := []types.Filter{clusterFilter(cluster)}
	insts, err := cli.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: fs})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range insts.Reservations {
		for _, i := range r.Instances {
			if i.State.Name != types.InstanceStateNameTerminated {
				t.Errorf("instance %s left in state %s", awssdk.ToString(i.InstanceId), i.State.Name)
			}
		}
	}
	vpcs, err := cli.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{Filters: fs})
	if err != nil || len(vpcs.Vpcs) > 0 {
		t.Errorf("vpcs left: %d (%v)", len(vpcs.Vpcs), err)
	}
	sgs, err := cli.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: fs})
	if err != nil || len(sgs.SecurityGroups) > 0 {
		t.Errorf("security groups left: %d (%v)", len(sgs.SecurityGroups), err)
	}
	kps, err := cli.DescribeKeyPairs(ctx, &ec2.DescribeKeyPairsInput{Filters: fs})
	if err != nil || len(kps.KeyPairs) > 0 {
		t.Errorf("key pairs left: %d (%v)", len(kps.KeyPairs), err)
	}
	// Also by name: the tag filter must not be the only thing that is right.
	if _, err := cli.DescribeKeyPairs(ctx, &ec2.DescribeKeyPairsInput{KeyNames: []string{keyPairName(cluster)}}); !isNotFound(err) {
		t.Errorf("key pair %s still found by name: %v", keyPairName(cluster), err)
	}
	sns, err := cli.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{Filters: fs})
	if err != nil || len(sns.Subnets) > 0 {
		t.Errorf("subnets left: %d (%v)", len(sns.Subnets), err)
	}
	igws, err := cli.DescribeInternetGateways(ctx, &ec2.DescribeInternetGatewaysInput{Filters: fs})
	if err != nil || len(igws.InternetGateways) > 0 {
		t.Errorf("internet gateways left: %d (%v)", len(igws.InternetGateways), err)
	}
	rts, err := cli.DescribeRouteTables(ctx, &ec2.DescribeRouteTablesInput{Filters: fs})
	if err != nil || len(rts.RouteTables) > 0 {
		t.Errorf("route tables left: %d (%v)", len(rts.RouteTables), err)
	}
	vols, err := cli.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: fs})
	if err != nil || len(vols.Volumes) > 0 {
		t.Errorf("volumes left: %d (%v)", len(vols.Volumes), err)
	}
	enis, err := cli.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: fs})
	if err != nil || len(enis.NetworkInterfaces) > 0 {
		t.Errorf("network interfaces left: %d (%v)", len(enis.NetworkInterfaces), err)
	}
}

func TestVPCModeLifecycle(t *testing.T) {
	cli := sdk(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	ami := testAMI(t)
	d := driverFromHCL(t, fmt.Sprintf(`
ami           = %q
allowed_cidrs = ["198.51.100.7/32", "2001:db8::/64"]
`, ami))
	if !d.cfg.CreateVPC {
		t.Fatal("create_vpc should default to true without subnet_ids")
	}
	if err := d.Preflight(ctx, []drivers.MachineSpec{spec(cluster, "manager", 1), spec(cluster, "worker", 1)}); err != nil {
		t.Fatalf("Preflight: %v", err)
	}

	// Two machines at once: the shared network is made once.
	wants := []drivers.MachineSpec{spec(cluster, "manager", 1), spec(cluster, "manager", 2)}
	wants[1].DiskGiB = 30
	wants[1].Size = "t3.medium"
	metrics := &drivers.MetricsAccess{Port: 9323, CIDRs: []string{"192.0.2.0/24"}}
	for i := range wants {
		wants[i].Metrics = metrics
	}
	got := make([]drivers.Machine, len(wants))
	errs := make([]error, len(wants))
	var wg sync.WaitGroup
	for i := range wants {
		wg.Go(func() { got[i], errs[i] = d.Create(ctx, cluster, wants[i]) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("Create: %v", err)
	}
	vpcCIDR := netip.MustParsePrefix(DefaultVPCCIDR)
	for i, m := range got {
		if m.ID == "" || m.Name != wants[i].Name || m.Driver != "aws" || m.State != "running" {
			t.Errorf("machine %d: %+v", i, m)
		}
		if m.SSH.HostKey != testHostKey.Public || m.SSH.User != "provision" || m.SSH.Port != 22 {
			t.Errorf("machine %d ssh: %+v", i, m.SSH)
		}
		if a, err := netip.ParseAddr(m.PrivateAddress); err != nil || !vpcCIDR.Contains(a) {
			t.Errorf("machine %d private address %q not in %s", i, m.PrivateAddress, vpcCIDR)
		}
		if m.Address == "" || m.Address == m.PrivateAddress {
			t.Errorf("machine %d: public address %q (private %q)", i, m.Address, m.PrivateAddress)
		}
	}
	if got[0].ID == got[1].ID {
		t.Fatal("both creates returned the same instance")
	}

	// What AWS holds.
	vpcs, err := cli.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{Filters: []types.Filter{clusterFilter(cluster)}})
	if err != nil || len(vpcs.Vpcs) != 1 {
		t.Fatalf("vpcs tagged with the cluster: %v %v", vpcs, err)
	}
	vpcID := awssdk.ToString(vpcs.Vpcs[0].VpcId)
	if c := awssdk.ToString(vpcs.Vpcs[0].CidrBlock); c != DefaultVPCCIDR {
		t.Errorf("vpc cidr %s", c)
	}
	sns, _ := cli.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{Filters: []types.Filter{clusterFilter(cluster)}})
	zones := map[string]bool{}
	for _, s := range sns.Subnets {
		zones[awssdk.ToString(s.AvailabilityZone)] = true
		if awssdk.ToString(s.VpcId) != vpcID {
			t.Errorf("subnet %s in vpc %s", awssdk.ToString(s.SubnetId), awssdk.ToString(s.VpcId))
		}
	}
	if len(sns.Subnets) < 2 || len(zones) != len(sns.Subnets) {
		t.Errorf("want one subnet per zone across several zones, got %d subnets in %d zones", len(sns.Subnets), len(zones))
	}
	igws, _ := cli.DescribeInternetGateways(ctx, &ec2.DescribeInternetGatewaysInput{Filters: []types.Filter{clusterFilter(cluster)}})
	if len(igws.InternetGateways) != 1 || len(igws.InternetGateways[0].Attachments) != 1 || awssdk.ToString(igws.InternetGateways[0].Attachments[0].VpcId) != vpcID {
		t.Errorf("internet gateway: %+v", igws.InternetGateways)
	}
	rts, _ := cli.DescribeRouteTables(ctx, &ec2.DescribeRouteTablesInput{Filters: []types.Filter{clusterFilter(cluster)}})
	if len(rts.RouteTables) != 1 {
		t.Fatalf("route tables: %d", len(rts.RouteTables))
	}
	if !slices.ContainsFunc(rts.RouteTables[0].Routes, func(r types.Route) bool {
		return awssdk.ToString(r.DestinationCidrBlock) == "0.0.0.0/0" && awssdk.ToString(r.GatewayId) == awssdk.ToString(igws.InternetGateways[0].InternetGatewayId)
	}) {
		t.Errorf("no default route through the gateway: %+v", rts.RouteTables[0].Routes)
	}
	if n := len(rts.RouteTables[0].Associations); n != len(sns.Subnets) {
		t.Errorf("route table associated with %d subnets, want %d", n, len(sns.Subnets))
	}

	// The security group: operator ports from the allowed CIDRs only, swarm
	// ports from the group only.
	sgs, _ := cli.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: []types.Filter{clusterFilter(cluster)}})
	if len(sgs.SecurityGroups) != 1 {
		t.Fatalf("security groups: %d", len(sgs.SecurityGroups))
	}
	sg := sgs.SecurityGroups[0]
	have := haveRules(sg)
	want := wantRules([]string{"198.51.100.7/32", "2001:db8::/64"}, metrics)
	// The engines' metrics port: from the group and metrics_cidrs.
	for _, r := range []sgRule{{"tcp", 9323, 9323, ""}, {"tcp", 9323, 9323, "192.0.2.0/24"}} {
		if !slices.Contains(have, r) {
			t.Errorf("security group lacks %+v (metrics): %+v", r, have)
		}
	}
	slices.SortFunc(have, cmpRule)
	slices.SortFunc(want, cmpRule)
	if !slices.Equal(have, want) {
		t.Errorf("ingress rules:\n have %v\n want %v", have, want)
	}

	// Each instance: tags, IMDSv2, key pair, encrypted gp3 root, user-data,
	// its own zone.
	seenSubnets := map[string]bool{}
	for i, m := range got {
		inst := describeOne(t, cli, m.ID)
		tags := tagMap(inst.Tags)
		for k, v := range map[string]string{
			drivers.TagCluster: cluster, drivers.TagMachine: wants[i].Name, drivers.TagRole: "manager", drivers.TagPool: "manager",
			"Name": wants[i].Name, TagHostKey: testHostKey.Public, TagUser: "provision",
		} {
			if tags[k] != v {
				t.Errorf("%s: tag %s = %q, want %q", m.Name, k, tags[k], v)
			}
		}
		if inst.MetadataOptions == nil || inst.MetadataOptions.HttpTokens != types.HttpTokensStateRequired {
			t.Errorf("%s: IMDSv2 not required: %+v", m.Name, inst.MetadataOptions)
		}
		if awssdk.ToString(inst.KeyName) != keyPairName(cluster) {
			t.Errorf("%s: key %q", m.Name, awssdk.ToString(inst.KeyName))
		}
		if awssdk.ToString(inst.ImageId) != ami {
			t.Errorf("%s: image %s", m.Name, awssdk.ToString(inst.ImageId))
		}
		if wantType := []string{"t3.small", "t3.medium"}[i]; string(inst.InstanceType) != wantType {
			t.Errorf("%s: type %s, want %s", m.Name, inst.InstanceType, wantType)
		}
		if len(inst.NetworkInterfaces) != 1 || !slices.ContainsFunc(inst.NetworkInterfaces[0].Groups, func(g types.GroupIdentifier) bool {
			return awssdk.ToString(g.GroupId) == awssdk.ToString(sg.GroupId)
		}) {
			t.Errorf("%s: interfaces %+v", m.Name, inst.NetworkInterfaces)
		}
		seenSubnets[awssdk.ToString(inst.SubnetId)] = true
		var volID string
		for _, b := range inst.BlockDeviceMappings {
			if awssdk.ToString(b.DeviceName) == awssdk.ToString(inst.RootDeviceName) && b.Ebs != nil {
				volID = awssdk.ToString(b.Ebs.VolumeId)
			}
		}
		vols, err := cli.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{volID}})
		if err != nil || len(vols.Volumes) != 1 {
			t.Fatalf("%s: root volume %q: %v", m.Name, volID, err)
		}
		v := vols.Volumes[0]
		wantGiB := []int32{20, 30}[i]
		if !awssdk.ToBool(v.Encrypted) || v.VolumeType != types.VolumeTypeGp3 || awssdk.ToInt32(v.Size) != wantGiB {
			t.Errorf("%s: root volume encrypted=%v type=%s size=%d, want encrypted gp3 %d GiB", m.Name, awssdk.ToBool(v.Encrypted), v.VolumeType, awssdk.ToInt32(v.Size), wantGiB)
		}
		if vt := tagMap(v.Tags); vt[drivers.TagCluster] != cluster {
			t.Errorf("%s: root volume tags %v", m.Name, vt)
		}
		attr, err := cli.DescribeInstanceAttribute(ctx, &ec2.DescribeInstanceAttributeInput{InstanceId: inst.InstanceId, Attribute: types.InstanceAttributeNameUserData})
		if err != nil || attr.UserData == nil {
			t.Fatalf("%s: user data: %v", m.Name, err)
		}
		ud, err := base64.StdEncoding.DecodeString(awssdk.ToString(attr.UserData.Value))
		if err != nil {
			t.Fatalf("%s: user data not base64: %v", m.Name, err)
		}
		for _, s := range []string{"#cloud-config", "ssh_deletekeys: true", "ed25519_public: \"" + testHostKey.Public + "\"",
			"BEGIN OPENSSH PRIVATE KEY", `- name: "provision"`, testUserKey, "NOPASSWD:ALL"} {
			if !strings.Contains(string(ud), s) {
				t.Errorf("%s: user data lacks %q", m.Name, s)
			}
		}
	}
	if len(seenSubnets) != 2 {
		t.Errorf("two managers should land in two subnets, got %v", seenSubnets)
	}

	// Listing by tags.
	ms, err := d.Machines(ctx, cluster)
	if err != nil || len(ms) != 2 || ms[0].ID != got[0].ID || ms[1].ID != got[1].ID {
		t.Fatalf("Machines: %v %+v", err, ms)
	}
	if ms[0].SSH.HostKey != testHostKey.Public || ms[0].Address != got[0].Address {
		t.Errorf("Machines lost the pinned key or address: %+v", ms[0])
	}
	if other, err := d.Machines(ctx, newCluster(t)); err != nil || len(other) != 0 {
		t.Errorf("Machines of another cluster: %v %+v", err, other)
	}

	// A fresh driver (a new process after a crash) adopts, never duplicates;
	// a stopped instance is started again.
	if _, err := cli.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: []string{got[0].ID}}); err != nil {
		t.Fatal(err)
	}
	d2 := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\", \"2001:db8::/64\"]\n", ami))
	// The engine makes a fresh host key for its retry; the instance still
	// presents the first one, and that is what must be pinned.
	retry := wants[0]
	retry.HostKey = genHostKey()
	again, err := d2.Create(ctx, cluster, retry)
	if err != nil {
		t.Fatalf("Create again: %v", err)
	}
	if again.ID != got[0].ID || again.State != "running" || again.SSH.HostKey != testHostKey.Public {
		t.Errorf("adopted %+v, want %s running", again, got[0].ID)
	}
	if ms, _ := d2.Machines(ctx, cluster); len(ms) != 2 {
		t.Errorf("after re-create: %d machines", len(ms))
	}

	// A third machine through the fresh driver reuses the shared resources.
	third, err := d2.Create(ctx, cluster, spec(cluster, "worker", 1))
	if err != nil {
		t.Fatalf("Create worker: %v", err)
	}
	for _, check := range []struct {
		what string
		n    func() int
	}{
		{"vpcs", func() int {
			o, _ := cli.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{Filters: []types.Filter{clusterFilter(cluster)}})
			return len(o.Vpcs)
		}},
		{"security groups", func() int {
			o, _ := cli.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: []types.Filter{clusterFilter(cluster)}})
			return len(o.SecurityGroups)
		}},
		{"internet gateways", func() int {
			o, _ := cli.DescribeInternetGateways(ctx, &ec2.DescribeInternetGatewaysInput{Filters: []types.Filter{clusterFilter(cluster)}})
			return len(o.InternetGateways)
		}},
	} {
		if n := check.n(); n != 1 {
			t.Errorf("%s after a second driver: %d, want 1", check.what, n)
		}
	}

	// Teardown refuses while instances live.
	if err := d2.Teardown(ctx, cluster); err == nil || !strings.Contains(err.Error(), "instances still exist") {
		t.Errorf("Teardown with live instances: %v", err)
	}

	// Destroy, twice; then Machines is empty and Teardown leaves nothing.
	for _, m := range append(got, third) {
		if err := d.Destroy(ctx, m); err != nil {
			t.Fatalf("Destroy %s: %v", m.Name, err)
		}
		if err := d.Destroy(ctx, m); err != nil {
			t.Errorf("Destroy %s again: %v", m.Name, err)
		}
		if s := describeOne(t, cli, m.ID).State.Name; s != types.InstanceStateNameTerminated {
			t.Errorf("%s: state %s after Destroy", m.Name, s)
		}
	}
	if ms, err := d.Machines(ctx, cluster); err != nil || len(ms) != 0 {
		t.Fatalf("Machines after Destroy: %v %+v", err, ms)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Errorf("Teardown again: %v", err)
	}
	assertNothingLeft(t, cli, cluster)
}

func cmpRule(a, b sgRule) int {
	return strings.Compare(fmt.Sprint(a), fmt.Sprint(b))
}

func TestExistingSubnetMode(t *testing.T) {
	cli := sdk(t)
	ctx := testCtx(t)
	cluster := newCluster(t)

	// The operator's own network, untagged by provision.
	vpc, err := cli.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: awssdk.String("10.77.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	vpcID := awssdk.ToString(vpc.Vpc.VpcId)
	sn, err := cli.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: vpc.Vpc.VpcId, CidrBlock: awssdk.String("10.77.1.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	snID := awssdk.ToString(sn.Subnet.SubnetId)
	t.Cleanup(func() {
		cli.DeleteSubnet(context.Background(), &ec2.DeleteSubnetInput{SubnetId: sn.Subnet.SubnetId})
		cli.DeleteVpc(context.Background(), &ec2.DeleteVpcInput{VpcId: vpc.Vpc.VpcId})
	})

	d := driverFromHCL(t, fmt.Sprintf(`
ami                 = %q
subnet_ids          = [%q]
allowed_cidrs       = ["192.0.2.0/24"]
associate_public_ip = false
bastion {
  address  = "192.0.2.10"
  user     = "jump"
  host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJHZv6U96VThcn+hOTRycucI2ed+gkpLaTEZa5/V43JH"
}
`, testAMI(t), snID))
	if d.cfg.CreateVPC {
		t.Fatal("create_vpc must default to false with subnet_ids")
	}
	if err := d.Preflight(ctx, []drivers.MachineSpec{spec(cluster, "manager", 1)}); err != nil {
		t.Fatalf("Preflight: %v", err)
	}
	m, err := d.Create(ctx, cluster, spec(cluster, "manager", 1))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	inst := describeOne(t, cli, m.ID)
	if awssdk.ToString(inst.SubnetId) != snID || awssdk.ToString(inst.VpcId) != vpcID {
		t.Errorf("instance in %s/%s, want %s/%s", awssdk.ToString(inst.VpcId), awssdk.ToString(inst.SubnetId), vpcID, snID)
	}
	if m.Address != m.PrivateAddress || !strings.HasPrefix(m.Address, "10.77.1.") {
		t.Errorf("private-only machine: address %q private %q", m.Address, m.PrivateAddress)
	}
	if m.SSH.Bastion == nil || m.SSH.Bastion.Address != "192.0.2.10" || m.SSH.Bastion.Port != 22 || m.SSH.Bastion.User != "jump" {
		t.Errorf("bastion: %+v", m.SSH.Bastion)
	}
	sgs, _ := cli.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: []types.Filter{clusterFilter(cluster)}})
	if len(sgs.SecurityGroups) != 1 || awssdk.ToString(sgs.SecurityGroups[0].VpcId) != vpcID {
		t.Fatalf("security group not in the operator's vpc: %+v", sgs.SecurityGroups)
	}
	if vpcs, _ := cli.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{Filters: []types.Filter{clusterFilter(cluster)}}); len(vpcs.Vpcs) != 0 {
		t.Errorf("driver made a vpc in subnet mode: %+v", vpcs.Vpcs)
	}

	// The allowed CIDRs change: the rule set converges.
	d3 := driverFromHCL(t, fmt.Sprintf("ami = %q\nsubnet_ids = [%q]\nallowed_cidrs = [\"203.0.113.0/24\"]\n", testAMI(t), snID))
	if _, err := d3.Create(ctx, cluster, spec(cluster, "manager", 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := d3.Create(ctx, cluster, spec(cluster, "worker", 1)); err != nil {
		t.Fatal(err)
	}
	sgs, _ = cli.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: []types.Filter{clusterFilter(cluster)}})
	have := haveRules(sgs.SecurityGroups[0])
	want := wantRules([]string{"203.0.113.0/24"}, nil)
	slices.SortFunc(have, cmpRule)
	slices.SortFunc(want, cmpRule)
	if !slices.Equal(have, want) {
		t.Errorf("rules after the CIDR change:\n have %v\n want %v", have, want)
	}

	ms, err := d.Machines(ctx, cluster)
	if err != nil || len(ms) != 2 {
		t.Fatalf("Machines: %v %d", err, len(ms))
	}
	for _, m := range ms {
		if err := d.Destroy(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	assertNothingLeft(t, cli, cluster)
	// The operator's network is untouched.
	if _, err := cli.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{snID}}); err != nil {
		t.Errorf("teardown removed the operator's subnet: %v", err)
	}
	if _, err := cli.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{VpcIds: []string{vpcID}}); err != nil {
		t.Errorf("teardown removed the operator's vpc: %v", err)
	}
}

// assertNothingCreated: a failed Create made no shared resource either.
func assertNothingCreated(t *testing.T, cli *ec2.Client, cluster string) {
	t.Helper()
	assertNothingLeft(t, cli, cluster)
	insts, _ := cli.DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{Filters: []types.Filter{clusterFilter(cluster)}})
	if len(insts.Reservations) != 0 {
		t.Errorf("instances were created: %+v", insts.Reservations)
	}
}

func TestCreateErrors(t *testing.T) {
	cli := sdk(t)
	ctx := testCtx(t)
	ami := testAMI(t)

	t.Run("unknown AMI", func(t *testing.T) {
		cluster := newCluster(t)
		d := driverFromHCL(t, `ami = "ami-00000000000dead01"
allowed_cidrs = ["198.51.100.7/32"]`)
		_, err := d.Create(ctx, cluster, spec(cluster, "manager", 1))
		var ae smithy.APIError
		if err == nil || !errors.As(err, &ae) || !strings.HasPrefix(ae.ErrorCode(), "InvalidAMIID.") || !strings.Contains(err.Error(), "AMI not found") {
			t.Fatalf("err = %v", err)
		}
		if !strings.Contains(err.Error(), cluster+"-manager-1") {
			t.Errorf("error does not name the machine: %v", err)
		}
		perr := d.Preflight(ctx, []drivers.MachineSpec{spec(cluster, "manager", 1)})
		if perr == nil || !strings.Contains(perr.Error(), "ami-00000000000dead01") {
			t.Errorf("Preflight: %v", perr)
		}
		assertNothingCreated(t, cli, cluster)
	})

	t.Run("unknown instance type", func(t *testing.T) {
		cluster := newCluster(t)
		d := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", ami))
		want := spec(cluster, "manager", 1)
		want.Size = "t9.enormous"
		_, err := d.Create(ctx, cluster, want)
		if err == nil || apiCode(err) != "InvalidInstanceType" || !strings.Contains(err.Error(), `instance type "t9.enormous"`) ||
			!strings.Contains(err.Error(), "not available in region us-east-1") {
			t.Fatalf("err = %v", err)
		}
		// Preflight reports every problem at once.
		bad := spec(cluster, "worker", 1)
		bad.SSH.User = "Not A User"
		perr := d.Preflight(ctx, []drivers.MachineSpec{want, bad})
		if perr == nil || !strings.Contains(perr.Error(), "t9.enormous") || !strings.Contains(perr.Error(), "Not A User") {
			t.Errorf("Preflight: %v", perr)
		}
		assertNothingCreated(t, cli, cluster)
	})

	t.Run("no allowed CIDRs", func(t *testing.T) {
		// The factory refuses the block (see TestDecodeConfig); a driver
		// built around that check still refuses before creating anything,
		// and never looks the address up on its own.
		cluster := newCluster(t)
		d := newDriver(Config{InstanceType: DefaultInstanceType, AMI: ami, CreateVPC: true, VPCCIDR: DefaultVPCCIDR,
			AssociatePublicIP: true, RootVolumeType: "gp3", Endpoint: motoURL, OperatorIPURL: "http://127.0.0.1:1/"}, drivers.Options{})
		d.waitMin = 20 * time.Millisecond
		_, err := d.Create(ctx, cluster, spec(cluster, "manager", 1))
		if err == nil || !strings.Contains(err.Error(), "no allowed_cidrs") {
			t.Fatalf("err = %v", err)
		}
		if err := d.Preflight(ctx, nil); err == nil || !strings.Contains(err.Error(), "no allowed_cidrs") {
			t.Errorf("Preflight: %v", err)
		}
		assertNothingCreated(t, cli, cluster)
	})

	t.Run("missing host key", func(t *testing.T) {
		cluster := newCluster(t)
		d := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", ami))
		want := spec(cluster, "manager", 1)
		want.HostKey = drivers.HostKey{}
		if _, err := d.Create(ctx, cluster, want); err == nil || !strings.Contains(err.Error(), "no SSH host key") {
			t.Fatalf("err = %v", err)
		}
		assertNothingCreated(t, cli, cluster)
	})

	t.Run("unknown subnet", func(t *testing.T) {
		cluster := newCluster(t)
		d := driverFromHCL(t, fmt.Sprintf("ami = %q\nsubnet_ids = [\"subnet-0000dead\"]\nallowed_cidrs = [\"198.51.100.7/32\"]\n", ami))
		_, err := d.Create(ctx, cluster, spec(cluster, "manager", 1))
		if err == nil || !strings.Contains(err.Error(), "subnet-0000dead") {
			t.Fatalf("err = %v", err)
		}
		if perr := d.Preflight(ctx, nil); perr == nil || !strings.Contains(perr.Error(), "subnet-0000dead") {
			t.Errorf("Preflight: %v", perr)
		}
		assertNothingCreated(t, cli, cluster)
	})
}

func TestDestroyUnknown(t *testing.T) {
	needMoto(t)
	ctx := testCtx(t)
	d := driverFromHCL(t, `allowed_cidrs = ["198.51.100.7/32"]`)
	if err := d.Destroy(ctx, drivers.Machine{Name: "gone", ID: "i-0123456789abcdef0"}); err != nil {
		t.Errorf("Destroy of an unknown instance: %v", err)
	}
	cluster := newCluster(t)
	if err := d.Destroy(ctx, drivers.Machine{Name: cluster + "-manager-1", Tags: map[string]string{drivers.TagCluster: cluster}}); err != nil {
		t.Errorf("Destroy by tags of nothing: %v", err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Errorf("Teardown of an empty cluster: %v", err)
	}
}

func TestImageLookup(t *testing.T) {
	cli := sdk(t)
	ctx := testCtx(t)
	src := testAMI(t)
	suffix := newCluster(t)
	// Images of a family, copied in moto from one of its own. They are owned
	// by moto's account, so the query uses owner "self" where production
	// names Debian's and Canonical's, and drops the root-device-type filter:
	// moto reports copies as "standard", which EC2 never does.
	var ids []string
	for _, date := range []string{"20240101", "20250301", "20241111"} {
		out, err := cli.CopyImage(ctx, &ec2.CopyImageInput{
			Name: awssdk.String("testos-12-amd64-" + date + "-" + suffix), SourceImageId: awssdk.String(src), SourceRegion: awssdk.String("us-east-1"),
		})
		if err != nil {
			t.Fatalf("copy image: %v", err)
		}
		ids = append(ids, awssdk.ToString(out.ImageId))
		time.Sleep(1100 * time.Millisecond) // moto stamps CreationDate with the wall clock, in seconds
	}
	d := driverFromHCL(t, `allowed_cidrs = ["198.51.100.7/32"]`)
	if _, err := d.ec2Client(ctx); err != nil {
		t.Fatal(err)
	}
	fams := []imageQuery{
		{Desc: "Missing OS", Owner: "self", Name: "nothing-here-%s-*"},
		{Desc: "Test OS", Owner: "self", Name: "testos-12-%s-*-" + suffix},
	}
	img, err := d.findImage(ctx, d.client, "x86_64", fams)
	if err != nil {
		t.Fatal(err)
	}
	// The newest by creation date is the last one copied.
	if img.id != ids[2] || img.rootDevice == "" {
		t.Errorf("found %+v, want %s", img, ids[2])
	}
	if _, err := d.findImage(ctx, d.client, "arm64", fams); err == nil || !strings.Contains(err.Error(), "set ami") {
		t.Errorf("no arm64 image: %v", err)
	}
	// An explicit AMI built for another architecture is refused.
	d2 := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]", src))
	cli2, _ := d2.ec2Client(ctx)
	if _, err := d2.image(ctx, cli2, "arm64"); err == nil || !strings.Contains(err.Error(), "built for x86_64") {
		t.Errorf("arch mismatch: %v", err)
	}
}

// TestTeardownPartialFailure: a resource the driver cannot delete (its VPC
// holds a subnet someone else made) is reported with its ID, everything else
// is deleted, and a later Teardown finishes the job.
func TestTeardownPartialFailure(t *testing.T) {
	cli := sdk(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	d := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", testAMI(t)))
	d.depTimeout = 300 * time.Millisecond
	m, err := d.Create(ctx, cluster, spec(cluster, "manager", 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	vpcID := awssdk.ToString(describeOne(t, cli, m.ID).VpcId)
	foreign, err := cli.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: awssdk.String(vpcID), CidrBlock: awssdk.String("10.42.200.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	err = d.Teardown(ctx, cluster)
	if err == nil {
		t.Fatal("Teardown succeeded with a foreign subnet in the vpc")
	}
	if !strings.Contains(err.Error(), "resources left") || !strings.Contains(err.Error(), "delete vpc "+vpcID) || apiCode(err) != "DependencyViolation" {
		t.Errorf("err = %v", err)
	}
	// What could go, went.
	for what, n := range map[string]func() int{
		"key pairs": func() int {
			o, _ := cli.DescribeKeyPairs(ctx, &ec2.DescribeKeyPairsInput{Filters: []types.Filter{clusterFilter(cluster)}})
			return len(o.KeyPairs)
		},
		"security groups": func() int {
			o, _ := cli.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: []types.Filter{clusterFilter(cluster)}})
			return len(o.SecurityGroups)
		},
		"subnets": func() int {
			o, _ := cli.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{Filters: []types.Filter{clusterFilter(cluster)}})
			return len(o.Subnets)
		},
	} {
		if k := n(); k != 0 {
			t.Errorf("%s kept: %d", what, k)
		}
	}
	if _, err := cli.DeleteSubnet(ctx, &ec2.DeleteSubnetInput{SubnetId: foreign.Subnet.SubnetId}); err != nil {
		t.Fatal(err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatalf("second Teardown: %v", err)
	}
	assertNothingLeft(t, cli, cluster)
}

// TestInterruptedCreateIsAdopted: RunInstances goes through but its answer
// never reaches the driver (the process dies, the connection drops). The
// instance carries its tags from the create call itself, so listing by tags
// finds it, and Create with the same name, from this driver or a fresh one,
// returns it instead of making a second one.
func TestInterruptedCreateIsAdopted(t *testing.T) {
	cli := sdk(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	body := fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", testAMI(t))
	d := driverFromHCL(t, body)
	c, err := d.ec2Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lost := errors.New("connection lost after RunInstances was sent")
	runs := 0
	d.client = ec2.New(c.Options(), func(o *ec2.Options) {
		o.APIOptions = append(o.APIOptions, func(s *middleware.Stack) error {
			return s.Deserialize.Add(middleware.DeserializeMiddlewareFunc("loseRunInstancesAnswer",
				func(ctx context.Context, in middleware.DeserializeInput, next middleware.DeserializeHandler) (middleware.DeserializeOutput, middleware.Metadata, error) {
					out, md, err := next.HandleDeserialize(ctx, in)
					if err == nil && middleware.GetOperationName(ctx) == "RunInstances" {
						runs++
						return out, md, lost
					}
					return out, md, err
				}), middleware.Before)
		})
	})
	want := spec(cluster, "worker", 1)
	if _, err := d.Create(ctx, cluster, want); !errors.Is(err, lost) {
		t.Fatalf("Create with the answer lost: %v", err)
	}
	if runs != 1 {
		t.Fatalf("RunInstances sent %d times, want 1 (a lost answer must not be retried blindly)", runs)
	}
	count := func() []string {
		out, err := cli.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []types.Filter{
			clusterFilter(cluster), filter("tag:"+drivers.TagMachine, want.Name), filter("instance-state-name", "pending", "running"),
		}})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, r := range out.Reservations {
			for _, i := range r.Instances {
				ids = append(ids, awssdk.ToString(i.InstanceId))
			}
		}
		return ids
	}
	made := count()
	if len(made) != 1 {
		t.Fatalf("instances made by the interrupted create: %v", made)
	}

	// A new process: listing by tags finds it with everything needed to reach it.
	d2 := driverFromHCL(t, body)
	ms, err := d2.Machines(ctx, cluster)
	if err != nil || len(ms) != 1 {
		t.Fatalf("Machines: %v %+v", err, ms)
	}
	m := ms[0]
	if m.ID != made[0] || m.Name != want.Name || m.SSH.HostKey != testHostKey.Public || m.SSH.User != "provision" ||
		m.Address == "" || m.Tags[drivers.TagRole] != "worker" || m.Tags[drivers.TagPool] != "worker" {
		t.Errorf("listed %+v", m)
	}
	// Create with the same name, in the new process and in the old one.
	for i, drv := range []*Driver{d2, d} {
		got, err := drv.Create(ctx, cluster, want)
		if err != nil || got.ID != made[0] || got.SSH.HostKey != testHostKey.Public {
			t.Errorf("Create again (%d): %v %+v, want %s", i, err, got, made[0])
		}
	}
	if ids := count(); len(ids) != 1 || runs != 1 {
		t.Errorf("after re-create: instances %v, RunInstances sent %d times", ids, runs)
	}

	if err := d2.Destroy(ctx, drivers.Machine{Name: want.Name, Tags: map[string]string{drivers.TagCluster: cluster}}); err != nil {
		t.Fatalf("Destroy by tags: %v", err)
	}
	if err := d2.Teardown(ctx, cluster); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	assertNothingLeft(t, cli, cluster)
}

// TestGenerationsCoexist: a replaced machine's next generation is a second
// instance of the same machine name (Name tag "<name>-g2"), found, adopted
// and destroyed by name and generation without touching the first.
func TestGenerationsCoexist(t *testing.T) {
	_ = sdk(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	d := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", testAMI(t)))
	g1 := spec(cluster, "manager", 1)
	m1, err := d.Create(ctx, cluster, g1)
	if err != nil {
		t.Fatal(err)
	}
	g2 := g1
	g2.Generation = 2
	g2.Tags = maps.Clone(g1.Tags)
	g2.Tags[drivers.TagGeneration] = "2"
	m2, err := d.Create(ctx, cluster, g2)
	if err != nil {
		t.Fatal(err)
	}
	if m1.ID == m2.ID || m2.Name != g1.Name || drivers.GenerationOf(m2.Tags) != 2 {
		t.Fatalf("generation 2 %+v, generation 1 %s", m2, m1.ID)
	}
	again, err := d.Create(ctx, cluster, g2)
	if err != nil || again.ID != m2.ID {
		t.Fatalf("Create of generation 2 again: %v %s", err, again.ID)
	}
	ms, err := d.Machines(ctx, cluster)
	if err != nil || len(ms) != 2 {
		t.Fatalf("Machines: %v %+v", err, ms)
	}
	inst, err := d.findInstance(ctx, d.client, cluster, g1.Name, 2)
	if err != nil || inst == nil || tagValue(inst.Tags, "Name") != g1.Name+"-g2" {
		t.Fatalf("generation 2's Name tag: %v %+v", err, inst)
	}
	// Destroy generation 1 by tags alone (no ID): generation 2 stays.
	if err := d.Destroy(ctx, drivers.Machine{Name: g1.Name, Tags: map[string]string{drivers.TagCluster: cluster, drivers.TagGeneration: "1"}}); err != nil {
		t.Fatal(err)
	}
	ms, err = d.Machines(ctx, cluster)
	if err != nil {
		t.Fatal(err)
	}
	var live []string
	for _, m := range ms {
		if m.State != "terminated" && m.State != "shutting-down" {
			live = append(live, m.ID)
		}
	}
	if len(live) != 1 || live[0] != m2.ID {
		t.Fatalf("after destroying generation 1: %v (generation 2 is %s)", live, m2.ID)
	}
	if err := d.Destroy(ctx, m2); err != nil {
		t.Fatal(err)
	}
}

// TestStopStartNewPublicAddress: an instance stopped and started outside
// provision comes back with another public address and the same private
// one, and Machines reports the new one (plan then follows it: plan's
// TestAddressMoved).
func TestStopStartNewPublicAddress(t *testing.T) {
	cli := sdk(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	d := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", testAMI(t)))
	m, err := d.Create(ctx, cluster, spec(cluster, "worker", 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Teardown(context.Background(), cluster) })
	if _, err := cli.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: []string{m.ID}}); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.StartInstances(ctx, &ec2.StartInstancesInput{InstanceIds: []string{m.ID}}); err != nil {
		t.Fatal(err)
	}
	ms, err := d.Machines(ctx, cluster)
	if err != nil || len(ms) != 1 || ms[0].ID != m.ID {
		t.Fatalf("Machines: %v %+v", err, ms)
	}
	now := describeOne(t, cli, m.ID)
	if ms[0].Address != awssdk.ToString(now.PublicIpAddress) || ms[0].PrivateAddress != m.PrivateAddress || ms[0].Address == "" {
		t.Fatalf("after stop and start the driver reports %s (private %s); EC2 says %s, created at %s (private %s)",
			ms[0].Address, ms[0].PrivateAddress, awssdk.ToString(now.PublicIpAddress), m.Address, m.PrivateAddress)
	}
	t.Logf("public address %s -> %s, private %s kept", m.Address, ms[0].Address, ms[0].PrivateAddress)
}

// TestDockerDisk: a pool's docker_disk is a second, encrypted EBS volume of
// that size, deleted with the instance; the machine names the path its
// guest sees it at (Nitro: the NVMe by-id name carrying the volume ID), and
// an adopted instance names it too (a record without it would turn the
// data disk's mount off). Nothing is left after destroy.
func TestDockerDisk(t *testing.T) {
	cli := sdk(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	d := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", testAMI(t)))
	want := spec(cluster, "worker", 1)
	want.DockerDiskGiB = 12
	m, err := d.Create(ctx, cluster, want)
	if err != nil {
		t.Fatal(err)
	}
	inst := describeOne(t, cli, m.ID)
	var vol string
	for _, b := range inst.BlockDeviceMappings {
		if awssdk.ToString(b.DeviceName) == dockerDiskDevice && b.Ebs != nil {
			vol = awssdk.ToString(b.Ebs.VolumeId)
			if !awssdk.ToBool(b.Ebs.DeleteOnTermination) {
				t.Errorf("data disk not deleted on termination: %+v", b.Ebs)
			}
		}
	}
	if vol == "" {
		t.Fatalf("no %s mapping: %+v", dockerDiskDevice, inst.BlockDeviceMappings)
	}
	vs, err := cli.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{vol}})
	if err != nil || len(vs.Volumes) != 1 {
		t.Fatal(err)
	}
	v := vs.Volumes[0]
	if awssdk.ToInt32(v.Size) != 12 || !awssdk.ToBool(v.Encrypted) || len(v.Attachments) != 1 {
		t.Fatalf("volume %+v", v)
	}
	wantPath := "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_" + strings.ReplaceAll(vol, "-", "")
	if types, _ := cli.DescribeInstanceTypes(ctx, &ec2.DescribeInstanceTypesInput{InstanceTypes: []types.InstanceType{inst.InstanceType}}); len(types.InstanceTypes) == 1 && types.InstanceTypes[0].Hypervisor == "xen" {
		wantPath = "/dev/xvdf"
	}
	if m.DockerDisk != wantPath {
		t.Fatalf("docker disk path %q, want %q", m.DockerDisk, wantPath)
	}
	// A new driver (a later run, nothing cached) adopting the instance.
	d2 := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", testAMI(t)))
	again, err := d2.Create(ctx, cluster, want)
	if err != nil || again.ID != m.ID || again.DockerDisk != wantPath {
		t.Fatalf("adopted: %v %s %q", err, again.ID, again.DockerDisk)
	}
	// No docker_disk: no second volume, no path.
	plain := spec(cluster, "worker", 2)
	m2, err := d.Create(ctx, cluster, plain)
	if err != nil || m2.DockerDisk != "" || len(describeOne(t, cli, m2.ID).BlockDeviceMappings) != 1 {
		t.Fatalf("without docker_disk: %v %q", err, m2.DockerDisk)
	}
	for _, x := range []drivers.Machine{m, m2} {
		if err := d.Destroy(ctx, x); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, cli, cluster)
	if vs, err := cli.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: []types.Filter{filter("volume-id", vol)}}); err == nil && len(vs.Volumes) > 0 && vs.Volumes[0].State != types.VolumeStateDeleted {
		t.Fatalf("data volume %s left: %s", vol, vs.Volumes[0].State)
	}
}

// TestInstanceEndsWhileStarting: an instance that ends instead of running
// (EC2 terminates it at launch: a volume or key it could not use) is
// reported with its state and EC2's reason, naming the machine, not as the
// waiter's bare "waiter state transitioned to Failure".
func TestInstanceEndsWhileStarting(t *testing.T) {
	cli := sdk(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	d := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", testAMI(t)))
	m, err := d.Create(ctx, cluster, spec(cluster, "manager", 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Teardown(context.Background(), cluster) })
	inst := describeOne(t, cli, m.ID)
	if _, err := cli.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{m.ID}}); err != nil {
		t.Fatal(err)
	}
	_, err = d.startAndWait(ctx, cli, inst)
	if err == nil || !strings.Contains(err.Error(), m.Name) || !strings.Contains(err.Error(), "instead of running") || strings.Contains(err.Error(), "waiter state transitioned") {
		t.Fatalf("startAndWait of an ending instance: %v", err)
	}
	t.Log(err)
}

// TestDestroyByIDChecksOwnership: Destroy given an instance ID (from state)
// terminates it only when it carries the cluster's tag.
func TestDestroyByIDChecksOwnership(t *testing.T) {
	cli := sdk(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	d := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", testAMI(t)))
	m, err := d.Create(ctx, cluster, spec(cluster, "manager", 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Destroy(context.Background(), m)
		d.Teardown(context.Background(), cluster)
	})
	err = d.Destroy(ctx, drivers.Machine{Name: "x-manager-1", ID: m.ID, Tags: map[string]string{drivers.TagCluster: newCluster(t)}})
	if err == nil || !strings.Contains(err.Error(), "not terminating it") {
		t.Fatalf("Destroy of another cluster's instance: %v", err)
	}
	if st := describeOne(t, cli, m.ID).State.Name; st != types.InstanceStateNameRunning {
		t.Fatalf("instance is %s", st)
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
}
