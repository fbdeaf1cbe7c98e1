package azure

import (
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v6"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/drivers/azure/azuretest"
	"github.com/provision/provision/drivers/drivertest"
)

func published(sources []string, ps ...int) []drivers.PublishedPort {
	var out []drivers.PublishedPort
	for _, p := range ps {
		out = append(out, drivers.PublishedPort{Port: p, Protocol: "tcp", Sources: sources, Services: []string{"web"}})
	}
	return out
}

// lbNSGRules lists the NSG's load balancer rules as "name port source".
func lbNSGRules(g *armnetwork.SecurityGroup) []string {
	var out []string
	for _, r := range g.Properties.SecurityRules {
		if !strings.HasPrefix(deref(r.Name), lbRulePrefix) {
			continue
		}
		p := r.Properties
		srcs := []string{deref(p.SourceAddressPrefix)}
		if len(p.SourceAddressPrefixes) > 0 {
			srcs = nil
			for _, s := range p.SourceAddressPrefixes {
				srcs = append(srcs, deref(s))
			}
		}
		if prio := deref(p.Priority); prio < prioLBFirst || prio > prioLBLast {
			out = append(out, "BAD PRIORITY")
		}
		out = append(out, deref(r.Name)+" "+deref(p.DestinationPortRange)+" "+strings.Join(srcs, ","))
	}
	sort.Strings(out)
	return out
}

// TestBalancer drives the Standard Load Balancer through the track-2 SDK
// against azuretest: nothing without ports; with the first port a static
// Standard public IP, the balancer (frontend, pool, a TCP probe and rule per
// port), every NIC of the cluster in the pool, and NSG rules opening exactly
// those ports from the published CIDRs and the health probes (the driver's
// own rules untouched); ports follow; a new machine joins the pool; with no
// port the balancer keeps its address and serves nothing; RemoveBalancer
// and Teardown leave nothing.
func TestBalancer(t *testing.T) {
	b := azuretest.New()
	d := testDriver(t, b, allowed)
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	rg := d.resourceGroup(cluster)

	if st, err := d.SyncPorts(ctx, cluster, nil); err != nil || st.Exists {
		t.Fatalf("SyncPorts(nil) before anything: %+v %v", st, err)
	}
	for i := 1; i <= 2; i++ {
		if _, err := d.Create(ctx, cluster, spec(t, cluster, "worker", i)); err != nil {
			t.Fatal(err)
		}
	}
	before := b.NSG(rg, nsgName(cluster))
	var driverRules []string
	for _, r := range before.Properties.SecurityRules {
		driverRules = append(driverRules, ruleKey(r))
	}

	st, err := d.SyncPorts(ctx, cluster, published([]string{"0.0.0.0/0"}, 80))
	if err != nil {
		t.Fatalf("SyncPorts(80): %v", err)
	}
	if !st.Exists || st.Address == "" || !slices.Equal(st.Ports, []int{80}) || st.Targets != 2 || len(st.Changes) == 0 {
		t.Fatalf("status: %+v", st)
	}
	lb := b.LoadBalancer(rg, lbName(cluster))
	if lb == nil || deref(lb.SKU.Name) != armnetwork.LoadBalancerSKUNameStandard || len(lb.Properties.Probes) != 1 || len(lb.Properties.LoadBalancingRules) != 1 {
		t.Fatalf("load balancer: %+v", lb)
	}
	rule := lb.Properties.LoadBalancingRules[0].Properties
	if deref(rule.FrontendPort) != 80 || deref(rule.BackendPort) != 80 || !deref(rule.DisableOutboundSnat) || deref(rule.Protocol) != armnetwork.TransportProtocolTCP {
		t.Errorf("rule: %+v", rule)
	}
	if p := lb.Properties.Probes[0].Properties; deref(p.Protocol) != armnetwork.ProbeProtocolTCP || deref(p.Port) != 80 {
		t.Errorf("probe: %+v", p)
	}
	nsg := b.NSG(rg, nsgName(cluster))
	if got := lbNSGRules(nsg); !slices.Equal(got, []string{"provision_lb-80 80 Internet", "provision_lb-80-probe 80 AzureLoadBalancer"}) {
		t.Errorf("nsg rules: %v", got)
	}
	if again, err := d.SyncPorts(ctx, cluster, published([]string{"0.0.0.0/0"}, 80)); err != nil || len(again.Changes) != 0 {
		t.Errorf("second sync changed %v (%v)", again.Changes, err)
	}

	// 80 and 443 from two blocks; a third machine joins the pool.
	src := []string{"203.0.113.0/24", "198.51.100.0/24"}
	if _, err := d.Create(ctx, cluster, spec(t, cluster, "worker", 3)); err != nil {
		t.Fatal(err)
	}
	st, err = d.SyncPorts(ctx, cluster, published(src, 443, 80))
	if err != nil || !slices.Equal(st.Ports, []int{80, 443}) || st.Targets != 3 {
		t.Fatalf("SyncPorts(80, 443): %+v %v", st, err)
	}
	nsg = b.NSG(rg, nsgName(cluster))
	want := []string{"provision_lb-443 443 198.51.100.0/24,203.0.113.0/24", "provision_lb-443-probe 443 AzureLoadBalancer",
		"provision_lb-80 80 198.51.100.0/24,203.0.113.0/24", "provision_lb-80-probe 80 AzureLoadBalancer"}
	if got := lbNSGRules(nsg); !slices.Equal(got, want) {
		t.Errorf("nsg rules: %v", got)
	}
	// The driver's own rules are untouched, and ensureNSG keeps ours.
	var now []string
	for _, r := range nsg.Properties.SecurityRules {
		if !strings.HasPrefix(deref(r.Name), lbRulePrefix) {
			now = append(now, ruleKey(r))
		}
	}
	if !slices.Equal(now, driverRules) {
		t.Errorf("driver rules changed:\n%v\n%v", now, driverRules)
	}
	if _, err := d.ensureNSG(ctx, mustClients(t, d), cluster, []string{"198.51.100.9/32"}, nil); err != nil {
		t.Fatal(err)
	}
	if got := lbNSGRules(b.NSG(rg, nsgName(cluster))); !slices.Equal(got, want) {
		t.Errorf("ensureNSG dropped the load balancer's rules: %v", got)
	}

	st, err = d.SyncPorts(ctx, cluster, published(src, 443))
	if err != nil || !slices.Equal(st.Ports, []int{443}) || !strings.Contains(strings.Join(st.Changes, ";"), "rule and probe 80 removed") {
		t.Fatalf("SyncPorts(443): %+v %v", st, err)
	}
	// No port: the balancer and its address stay; no rule, no NSG opening.
	addr := st.Address
	st, err = d.SyncPorts(ctx, cluster, nil)
	if err != nil || !st.Exists || len(st.Ports) != 0 || st.Address != addr {
		t.Fatalf("SyncPorts(nil): %+v %v", st, err)
	}
	if got := lbNSGRules(b.NSG(rg, nsgName(cluster))); len(got) != 0 {
		t.Errorf("nsg still opens %v", got)
	}
	rs, err := d.Resources(ctx, cluster, nil)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range rs {
		found = found || (r.Kind == "load-balancer" && r.Name == lbName(cluster))
	}
	if !found {
		t.Errorf("resources do not list the load balancer: %+v", rs)
	}

	if err := d.RemoveBalancer(ctx, cluster); err != nil {
		t.Fatalf("RemoveBalancer: %v", err)
	}
	if err := d.RemoveBalancer(ctx, cluster); err != nil {
		t.Fatalf("RemoveBalancer again: %v", err)
	}
	if b.LoadBalancer(rg, lbName(cluster)) != nil {
		t.Fatal("balancer left")
	}
	all, _ := d.Machines(ctx, cluster)
	for _, m := range all {
		if err := d.Destroy(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if left := b.Owned(cluster); len(left) > 0 {
		t.Errorf("left: %v", left)
	}
	if n := b.Count(); n != 0 {
		t.Errorf("%d resources left in the backend", n)
	}
}

// TestBalancerInUse: the backend refuses to delete a balancer whose pool a
// NIC names, and a teardown of the whole group with a balancer in it works
// (the group goes with it).
func TestBalancerInUse(t *testing.T) {
	b := azuretest.New()
	d := testDriver(t, b, allowed)
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	if _, err := d.Create(ctx, cluster, spec(t, cluster, "worker", 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SyncPorts(ctx, cluster, published(nil, 8080)); err != nil {
		t.Fatal(err)
	}
	cli := mustClients(t, d)
	if _, err := cli.lbs.BeginDelete(ctx, d.resourceGroup(cluster), lbName(cluster), nil); err == nil {
		t.Error("the backend deleted a balancer in use")
	}
	if err := d.RemoveBalancer(ctx, cluster); err != nil {
		t.Fatal(err)
	}
}

func mustClients(t *testing.T, d *Driver) *clients {
	t.Helper()
	c, err := d.clients(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return c
}
