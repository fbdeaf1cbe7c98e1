package digitalocean

import (
	"slices"
	"strings"
	"testing"

	"github.com/digitalocean/godo"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/drivers/drivertest"
)

func ports(sources []string, ps ...int) []drivers.PublishedPort {
	var out []drivers.PublishedPort
	for _, p := range ps {
		out = append(out, drivers.PublishedPort{Port: p, Protocol: "tcp", Sources: sources, Services: []string{"web"}})
	}
	return out
}

func lbFirewall(s interface{ Firewalls() []godo.Firewall }, name string) *godo.Firewall {
	for _, f := range s.Firewalls() {
		if f.Name == name {
			return &f
		}
	}
	return nil
}

// TestBalancer drives the load balancer through godo against dotest: made
// with the first published port, in the cluster's VPC, targeting the
// cluster tag (every droplet, also later ones); forwarding rules follow the
// ports, one TCP health check, clients limited to the published CIDRs; a
// second firewall on the cluster tag opens exactly those ports from the
// balancer, the cluster firewall untouched; with no port the balancer goes
// (DigitalOcean needs a rule); RemoveBalancer and Teardown leave nothing.
func TestBalancer(t *testing.T) {
	s := startServer(t)
	before := s.Inventory()
	d := driverFor(t, s, block, nil)
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	_, adminLine := drivertest.AdminKey(t)

	if st, err := d.SyncPorts(ctx, cluster, nil); err != nil || st.Exists {
		t.Fatalf("SyncPorts(nil) before anything: %+v %v", st, err)
	}
	for i := 1; i <= 2; i++ {
		if _, err := d.Create(ctx, cluster, spec(t, cluster, "worker", i, adminLine)); err != nil {
			t.Fatal(err)
		}
	}
	mainFW := lbFirewall(s, d.baseName(cluster))
	if mainFW == nil {
		t.Fatal("no cluster firewall")
	}

	st, err := d.SyncPorts(ctx, cluster, ports([]string{"0.0.0.0/0"}, 80))
	if err != nil {
		t.Fatalf("SyncPorts(80): %v", err)
	}
	if !st.Exists || st.Address == "" || !slices.Equal(st.Ports, []int{80}) || st.Targets != 2 || len(st.Changes) < 2 {
		t.Fatalf("status: %+v", st)
	}
	lbs := s.LoadBalancers()
	if len(lbs) != 1 {
		t.Fatalf("%d load balancers", len(lbs))
	}
	lb := lbs[0]
	vpc, _ := d.findVPC(ctx, mustAPI(t, d), cluster)
	if lb.Tag != clusterTag(cluster) || lb.VPCUUID != vpc.ID || lb.Region.Slug != "ams3" || lb.HealthCheck == nil || lb.HealthCheck.Protocol != "tcp" || lb.HealthCheck.Port != 80 || lb.Firewall != nil {
		t.Errorf("load balancer: %+v", lb)
	}
	fw := lbFirewall(s, d.lbFWName(cluster))
	if fw == nil || len(fw.InboundRules) != 1 || fw.InboundRules[0].PortRange != "80" || !slices.Equal(fw.InboundRules[0].Sources.LoadBalancerUIDs, []string{lb.ID}) ||
		len(fw.InboundRules[0].Sources.Addresses) != 0 || !slices.Equal(fw.Tags, []string{clusterTag(cluster)}) {
		t.Fatalf("balancer firewall: %+v", fw)
	}
	if again, err := d.SyncPorts(ctx, cluster, ports([]string{"0.0.0.0/0"}, 80)); err != nil || len(again.Changes) != 0 {
		t.Errorf("second sync changed %v (%v)", again.Changes, err)
	}

	// 443 added from a narrower block; a droplet joins by its tag.
	src := []string{"203.0.113.0/24"}
	if _, err := d.Create(ctx, cluster, spec(t, cluster, "worker", 3, adminLine)); err != nil {
		t.Fatal(err)
	}
	st, err = d.SyncPorts(ctx, cluster, ports(src, 443, 80))
	if err != nil || !slices.Equal(st.Ports, []int{80, 443}) || st.Targets != 3 {
		t.Fatalf("SyncPorts(80, 443): %+v %v", st, err)
	}
	lb = s.LoadBalancers()[0]
	if lb.Firewall == nil || !slices.Equal(lb.Firewall.Allow, []string{"cidr:203.0.113.0/24"}) {
		t.Errorf("balancer's client filter: %+v", lb.Firewall)
	}
	fw = lbFirewall(s, d.lbFWName(cluster))
	var open []string
	for _, r := range fw.InboundRules {
		open = append(open, r.PortRange)
	}
	if slices.Sort(open); !slices.Equal(open, []string{"443", "80"}) {
		t.Errorf("balancer firewall opens %v", open)
	}
	// The cluster firewall keeps its own rules.
	if now := lbFirewall(s, d.baseName(cluster)); !sameRules(haveFirewall(now), haveFirewall(mainFW)) {
		t.Errorf("cluster firewall changed")
	}
	// 80 goes.
	st, err = d.SyncPorts(ctx, cluster, ports(src, 443))
	if err != nil || !slices.Equal(st.Ports, []int{443}) || !strings.Contains(strings.Join(st.Changes, ";"), "forwarding rule 80 removed") {
		t.Fatalf("SyncPorts(443): %+v %v", st, err)
	}
	if lb = s.LoadBalancers()[0]; lb.HealthCheck.Port != 443 {
		t.Errorf("health check on %d", lb.HealthCheck.Port)
	}
	if got, err := d.Balancer(ctx, cluster); err != nil || !got.Exists || got.Address != st.Address {
		t.Errorf("Balancer: %+v %v", got, err)
	}
	rs, err := d.Resources(ctx, cluster, nil)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, r := range rs {
		kinds = append(kinds, r.Kind+" "+r.Name)
	}
	if k := strings.Join(kinds, "\n"); !strings.Contains(k, "load-balancer "+d.lbName(cluster)) || !strings.Contains(k, "firewall "+d.lbFWName(cluster)) {
		t.Errorf("resources:\n%s", k)
	}

	// No port: the balancer and its firewall go.
	st, err = d.SyncPorts(ctx, cluster, nil)
	if err != nil || st.Exists || st.Note == "" {
		t.Fatalf("SyncPorts(nil): %+v %v", st, err)
	}
	if len(s.LoadBalancers()) != 0 || lbFirewall(s, d.lbFWName(cluster)) != nil {
		t.Fatal("balancer or its firewall left with no published port")
	}
	// Made again, then removed before the machines.
	if _, err := d.SyncPorts(ctx, cluster, ports(nil, 8080)); err != nil {
		t.Fatal(err)
	}
	if err := d.RemoveBalancer(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if err := d.RemoveBalancer(ctx, cluster); err != nil {
		t.Fatalf("RemoveBalancer again: %v", err)
	}
	ms2, _ := d.Machines(ctx, cluster)
	for _, m := range ms2 {
		if err := d.Destroy(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if left := clusterTraces(s, cluster); len(left) > 0 {
		t.Errorf("left: %v", left)
	}
	for _, line := range s.Inventory() {
		if !slices.Contains(before, line) && (strings.HasPrefix(line, "load-balancer") || strings.HasPrefix(line, "firewall")) {
			t.Errorf("left in the account: %s", line)
		}
	}
}

// TestBalancerForeignName: a balancer of the cluster's name that targets
// something else is refused, not taken over or deleted.
func TestBalancerForeignName(t *testing.T) {
	s := startServer(t)
	d := driverFor(t, s, block, nil)
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	_, adminLine := drivertest.AdminKey(t)
	if _, err := d.Create(ctx, cluster, spec(t, cluster, "worker", 1, adminLine)); err != nil {
		t.Fatal(err)
	}
	cli := mustAPI(t, d)
	if _, _, err := cli.LoadBalancers.Create(ctx, &godo.LoadBalancerRequest{Name: d.lbName(cluster), Region: "ams3",
		ForwardingRules: []godo.ForwardingRule{{EntryProtocol: "tcp", EntryPort: 1, TargetProtocol: "tcp", TargetPort: 1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SyncPorts(ctx, cluster, ports(nil, 80)); err == nil || !strings.Contains(err.Error(), "provision did not make it") {
		t.Errorf("SyncPorts: %v", err)
	}
	if err := d.RemoveBalancer(ctx, cluster); err == nil {
		t.Error("RemoveBalancer took a foreign balancer")
	}
	if len(s.LoadBalancers()) != 1 {
		t.Error("the foreign balancer is gone")
	}
}

func mustAPI(t *testing.T, d *Driver) *godo.Client {
	t.Helper()
	c, err := d.api()
	if err != nil {
		t.Fatal(err)
	}
	return c
}
