package aws

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"

	"github.com/provision/provision/drivers"
)

func elbSDK(t *testing.T) *elbv2.Client {
	t.Helper()
	needMoto(t)
	return elbv2.New(elbv2.Options{
		Region:       "us-east-1",
		BaseEndpoint: awssdk.String(motoURL),
		Credentials: awssdk.CredentialsProviderFunc(func(context.Context) (awssdk.Credentials, error) {
			return awssdk.Credentials{AccessKeyID: "testing", SecretAccessKey: "testing"}, nil
		}),
	})
}

// sgOpenings lists a group's ingress for ports other than the driver's own
// (22, 2376, swarm) as "port<-source".
func sgOpenings(t *testing.T, cli *ec2.Client, id string) []string {
	t.Helper()
	out, err := cli.DescribeSecurityGroups(context.Background(), &ec2.DescribeSecurityGroupsInput{GroupIds: []string{id}})
	if err != nil || len(out.SecurityGroups) != 1 {
		t.Fatalf("describe %s: %v", id, err)
	}
	var got []string
	for _, p := range out.SecurityGroups[0].IpPermissions {
		port := awssdk.ToInt32(p.FromPort)
		switch port {
		case 22, 2376, 2377, 7946, 4789, -1:
			continue
		}
		for _, r := range p.IpRanges {
			got = append(got, fmt.Sprintf("%d<-%s", port, awssdk.ToString(r.CidrIp)))
		}
		for _, g := range p.UserIdGroupPairs {
			got = append(got, fmt.Sprintf("%d<-%s", port, awssdk.ToString(g.GroupId)))
		}
	}
	sort.Strings(got)
	return got
}

func published(sources []string, ports ...int) []drivers.PublishedPort {
	var out []drivers.PublishedPort
	for _, p := range ports {
		out = append(out, drivers.PublishedPort{Port: p, Protocol: "tcp", Sources: sources, Services: []string{"web"}})
	}
	return out
}

// TestBalancerLifecycle drives the NLB through the real SDK against moto:
// nothing made without ports, created with the first port, listeners and
// target groups follow the ports, every instance is a target, the security
// groups open exactly the published ports (from the CIDRs to the balancer,
// from the balancer to the instances), and RemoveBalancer plus Teardown leave
// nothing behind.
func TestBalancerLifecycle(t *testing.T) {
	cli := sdk(t)
	elb := elbSDK(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	d := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", testAMI(t)))

	// No ports, no instances: nothing is made, nothing exists.
	st, err := d.SyncPorts(ctx, cluster, nil)
	if err != nil || st.Exists {
		t.Fatalf("SyncPorts(nil) before anything: %+v, %v", st, err)
	}
	var ms []drivers.Machine
	for i := 1; i <= 2; i++ {
		m, err := d.Create(ctx, cluster, spec(cluster, "worker", i))
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	if st, err := d.SyncPorts(ctx, cluster, nil); err != nil || st.Exists {
		t.Fatalf("SyncPorts(nil): %+v, %v", st, err)
	}
	if _, err := elb.DescribeLoadBalancers(ctx, &elbv2.DescribeLoadBalancersInput{Names: []string{lbName(cluster)}}); err == nil {
		t.Fatal("a load balancer was made without a published port")
	}

	// First port: the balancer, its group, a listener, a target group.
	st, err = d.SyncPorts(ctx, cluster, published([]string{"0.0.0.0/0"}, 80))
	if err != nil {
		t.Fatalf("SyncPorts(80): %v", err)
	}
	if !st.Exists || st.Address == "" || !slices.Equal(st.Ports, []int{80}) || st.Targets != 2 || len(st.Changes) == 0 {
		t.Fatalf("status after 80: %+v", st)
	}
	lbs, err := elb.DescribeLoadBalancers(ctx, &elbv2.DescribeLoadBalancersInput{Names: []string{lbName(cluster)}})
	if err != nil || len(lbs.LoadBalancers) != 1 {
		t.Fatalf("describe: %v", err)
	}
	lb := lbs.LoadBalancers[0]
	if lb.Type != "network" || lb.Scheme != "internet-facing" || len(lb.SecurityGroups) != 1 || len(lb.AvailabilityZones) == 0 {
		t.Errorf("load balancer: type %s scheme %s groups %v zones %d", lb.Type, lb.Scheme, lb.SecurityGroups, len(lb.AvailabilityZones))
	}
	lbSG := lb.SecurityGroups[0]
	clusterSG, err := d.clusterSG(ctx, cli, cluster, awssdk.ToString(lb.VpcId))
	if err != nil {
		t.Fatal(err)
	}
	if got := sgOpenings(t, cli, lbSG); !slices.Equal(got, []string{"80<-0.0.0.0/0"}) {
		t.Errorf("balancer group opens %v", got)
	}
	if got := sgOpenings(t, cli, clusterSG); !slices.Equal(got, []string{"80<-" + lbSG}) {
		t.Errorf("cluster group opens %v", got)
	}
	tgs, err := elb.DescribeTargetGroups(ctx, &elbv2.DescribeTargetGroupsInput{Names: []string{tgName(cluster, 80)}})
	if err != nil || len(tgs.TargetGroups) != 1 {
		t.Fatalf("target group: %v", err)
	}
	tg := tgs.TargetGroups[0]
	if tg.Protocol != "TCP" || awssdk.ToInt32(tg.Port) != 80 || tg.HealthCheckProtocol != "TCP" || awssdk.ToString(tg.HealthCheckPort) != "traffic-port" {
		t.Errorf("target group: %+v", tg)
	}
	h, err := elb.DescribeTargetHealth(ctx, &elbv2.DescribeTargetHealthInput{TargetGroupArn: tg.TargetGroupArn})
	if err != nil || len(h.TargetHealthDescriptions) != 2 {
		t.Fatalf("targets: %d, %v", len(h.TargetHealthDescriptions), err)
	}

	// Same ports again: nothing changes.
	st, err = d.SyncPorts(ctx, cluster, published([]string{"0.0.0.0/0"}, 80))
	if err != nil || len(st.Changes) != 0 {
		t.Fatalf("second sync changed %v (%v)", st.Changes, err)
	}

	// 80 and 443 from a narrower block; then 80 goes; a third machine joins.
	src := []string{"203.0.113.0/24"}
	if st, err = d.SyncPorts(ctx, cluster, published(src, 80, 443)); err != nil || !slices.Equal(st.Ports, []int{80, 443}) {
		t.Fatalf("SyncPorts(80, 443): %+v %v", st, err)
	}
	if got := sgOpenings(t, cli, lbSG); !slices.Equal(got, []string{"443<-203.0.113.0/24", "80<-203.0.113.0/24"}) {
		t.Errorf("balancer group opens %v", got)
	}
	m3, err := d.Create(ctx, cluster, spec(cluster, "worker", 3))
	if err != nil {
		t.Fatal(err)
	}
	ms = append(ms, m3)
	st, err = d.SyncPorts(ctx, cluster, published(src, 443))
	if err != nil || !slices.Equal(st.Ports, []int{443}) || st.Targets != 3 {
		t.Fatalf("SyncPorts(443): %+v %v", st, err)
	}
	if !strings.Contains(strings.Join(st.Changes, "; "), "listener 80 removed") {
		t.Errorf("changes %v", st.Changes)
	}
	if _, err := elb.DescribeTargetGroups(ctx, &elbv2.DescribeTargetGroupsInput{Names: []string{tgName(cluster, 80)}}); err == nil {
		t.Error("target group for 80 left")
	}
	if got := sgOpenings(t, cli, clusterSG); !slices.Equal(got, []string{"443<-" + lbSG}) {
		t.Errorf("cluster group opens %v", got)
	}
	// A machine leaves: it is no longer a target.
	if err := d.Destroy(ctx, ms[0]); err != nil {
		t.Fatal(err)
	}
	if st, err = d.SyncPorts(ctx, cluster, published(src, 443)); err != nil || st.Targets != 2 {
		t.Fatalf("after a machine left: %+v %v", st, err)
	}

	// No port: the balancer stays (its DNS name with it) and serves nothing.
	st, err = d.SyncPorts(ctx, cluster, nil)
	if err != nil || !st.Exists || len(st.Ports) != 0 {
		t.Fatalf("SyncPorts(nil) with a balancer: %+v %v", st, err)
	}
	if got := sgOpenings(t, cli, clusterSG); len(got) != 0 {
		t.Errorf("cluster group still opens %v", got)
	}
	if got, err := d.Balancer(ctx, cluster); err != nil || !got.Exists || got.Address != st.Address {
		t.Errorf("Balancer: %+v %v", got, err)
	}
	rs, err := d.Resources(ctx, cluster, nil)
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Join(resourceLines(rs), "\n"); !strings.Contains(lines, "load-balancer "+lbName(cluster)) || !strings.Contains(lines, lbSGName(cluster)) {
		t.Errorf("resources:\n%s", lines)
	}

	// Remove: the balancer first, then machines and shared resources.
	if err := d.RemoveBalancer(ctx, cluster); err != nil {
		t.Fatalf("RemoveBalancer: %v", err)
	}
	if err := d.RemoveBalancer(ctx, cluster); err != nil {
		t.Fatalf("RemoveBalancer again: %v", err)
	}
	if got, err := d.Balancer(ctx, cluster); err != nil || got.Exists {
		t.Errorf("after remove: %+v %v", got, err)
	}
	for _, m := range ms[1:] {
		if err := d.Destroy(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	assertNothingLeft(t, cli, cluster)
	all, err := elb.DescribeTargetGroups(ctx, &elbv2.DescribeTargetGroupsInput{})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range all.TargetGroups {
		if strings.HasPrefix(awssdk.ToString(g.TargetGroupName), tgPrefix(cluster)) {
			t.Errorf("target group %s left", awssdk.ToString(g.TargetGroupName))
		}
	}
}

// TestBalancerRefusesForeign: a balancer of that name without the cluster
// tag is not taken over.
func TestBalancerRefusesForeign(t *testing.T) {
	cli := sdk(t)
	elb := elbSDK(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	vpc, err := cli.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: awssdk.String("10.9.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	sn, err := cli.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: vpc.Vpc.VpcId, CidrBlock: awssdk.String("10.9.0.0/24"), AvailabilityZone: awssdk.String("us-east-1a")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := elb.CreateLoadBalancer(ctx, &elbv2.CreateLoadBalancerInput{Name: awssdk.String(lbName(cluster)), Type: "network", Subnets: []string{awssdk.ToString(sn.Subnet.SubnetId)}}); err != nil {
		t.Fatal(err)
	}
	d := driverFromHCL(t, "allowed_cidrs = [\"198.51.100.7/32\"]\n")
	if _, err := d.SyncPorts(ctx, cluster, published(nil, 80)); err == nil || !strings.Contains(err.Error(), "provision did not make it") {
		t.Errorf("SyncPorts over a foreign balancer: %v", err)
	}
	if err := d.RemoveBalancer(ctx, cluster); err == nil {
		t.Error("RemoveBalancer removed a foreign balancer")
	}
}
