package azure

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v6"

	"github.com/provision/provision/drivers"
)

// The load balancer (drivers.Balancer): a Standard public Load Balancer
// "provision-<cluster>-lb" in the cluster's resource group, its frontend a
// Standard static public IP "provision-<cluster>-lb-ip", one backend pool
// "nodes" holding every VM's NIC, and per published port a TCP probe and a
// load-balancing rule to the same port (outbound SNAT off: VMs keep their
// own addresses for outbound). A Standard balancer passes clients' addresses
// through, so the cluster's NSG is where published_cidrs apply: per port a
// rule "provision_lb-<port>" (priorities 300-3999, which the NSG leaves
// free) allows the port from the published CIDRs and from Azure's health
// probes (AzureLoadBalancer); nothing else is opened. With no port the
// balancer stays (and its address) without rules.

var _ drivers.Balancer = (*Driver)(nil)

const (
	lbPool        = "nodes"
	lbFrontend    = "public"
	lbRulePrefix  = "provision_lb-" // not rulePrefix: ensureNSG keeps these as they are
	prioLBFirst   = 300
	prioLBLast    = 3999
	lbProbeWindow = 5
)

func lbName(cluster string) string   { return "provision-" + cluster + "-lb" }
func lbIPName(cluster string) string { return "provision-" + cluster + "-lb-ip" }

func (d *Driver) lbClient(ctx context.Context) (*clients, *armnetwork.LoadBalancersClient, error) {
	cli, err := d.clients(ctx)
	if err != nil {
		return nil, nil, err
	}
	return cli, cli.lbs, nil
}

// getLB returns the cluster's balancer, or nil; one of that name without the
// cluster tag is refused.
func (d *Driver) getLB(ctx context.Context, cli *clients, cluster string) (*armnetwork.LoadBalancer, error) {
	got, err := cli.lbs.Get(ctx, d.resourceGroup(cluster), lbName(cluster), nil)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find load balancer %s: %w", lbName(cluster), d.explain(err))
	}
	if !ownedBy(got.Tags, cluster) {
		return nil, fmt.Errorf("load balancer %s exists without the tag %s=%s: provision did not make it; rename or delete it", lbName(cluster), drivers.TagCluster, cluster)
	}
	return &got.LoadBalancer, nil
}

func (d *Driver) lbStatus(ctx context.Context, cli *clients, cluster string, lb *armnetwork.LoadBalancer) drivers.LBStatus {
	if lb == nil {
		return drivers.LBStatus{}
	}
	st := drivers.LBStatus{Exists: true, Name: deref(lb.Name), ID: deref(lb.ID)}
	if lb.Properties == nil {
		return st
	}
	st.State = strings.ToLower(string(deref(lb.Properties.ProvisioningState)))
	if st.State == "succeeded" {
		st.State = "active"
	}
	for _, r := range lb.Properties.LoadBalancingRules {
		if r.Properties != nil {
			st.Ports = append(st.Ports, int(deref(r.Properties.FrontendPort)))
		}
	}
	sort.Ints(st.Ports)
	for _, p := range lb.Properties.BackendAddressPools {
		if p.Properties != nil {
			st.Targets += len(p.Properties.BackendIPConfigurations)
		}
	}
	if ip, err := cli.pips.Get(ctx, d.resourceGroup(cluster), lbIPName(cluster), nil); err == nil && ip.Properties != nil {
		st.Address = deref(ip.Properties.IPAddress)
	}
	return st
}

// Balancer reports the cluster's load balancer.
func (d *Driver) Balancer(ctx context.Context, cluster string) (drivers.LBStatus, error) {
	cli, _, err := d.lbClient(ctx)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	lb, err := d.getLB(ctx, cli, cluster)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	return d.lbStatus(ctx, cli, cluster, lb), nil
}

// lbDefinition is the whole balancer for ports (the API takes it in one PUT).
func (d *Driver) lbDefinition(cli *clients, cluster, ipID string, ports []drivers.PublishedPort) armnetwork.LoadBalancer {
	id := fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Network/loadBalancers/%s", cli.sub, d.resourceGroup(cluster), lbName(cluster))
	ref := func(kind, name string) *armnetwork.SubResource {
		return &armnetwork.SubResource{ID: ptr(id + "/" + kind + "/" + name)}
	}
	props := &armnetwork.LoadBalancerPropertiesFormat{
		FrontendIPConfigurations: []*armnetwork.FrontendIPConfiguration{{Name: ptr(lbFrontend), Properties: &armnetwork.FrontendIPConfigurationPropertiesFormat{
			PublicIPAddress: &armnetwork.PublicIPAddress{ID: ptr(ipID)}}}},
		BackendAddressPools: []*armnetwork.BackendAddressPool{{Name: ptr(lbPool)}},
	}
	for _, p := range ports {
		name := "tcp-" + strconv.Itoa(p.Port)
		props.Probes = append(props.Probes, &armnetwork.Probe{Name: ptr(name), Properties: &armnetwork.ProbePropertiesFormat{
			Protocol: ptr(armnetwork.ProbeProtocolTCP), Port: ptr(int32(p.Port)), IntervalInSeconds: ptr(int32(lbProbeWindow)), NumberOfProbes: ptr(int32(2)), ProbeThreshold: ptr(int32(2)),
		}})
		props.LoadBalancingRules = append(props.LoadBalancingRules, &armnetwork.LoadBalancingRule{Name: ptr(name), Properties: &armnetwork.LoadBalancingRulePropertiesFormat{
			FrontendIPConfiguration: ref("frontendIPConfigurations", lbFrontend),
			BackendAddressPool:      ref("backendAddressPools", lbPool),
			Probe:                   ref("probes", name),
			Protocol:                ptr(armnetwork.TransportProtocolTCP),
			FrontendPort:            ptr(int32(p.Port)),
			BackendPort:             ptr(int32(p.Port)),
			DisableOutboundSnat:     ptr(true),
			EnableFloatingIP:        ptr(false),
			EnableTCPReset:          ptr(true),
			IdleTimeoutInMinutes:    ptr(int32(4)),
		}})
	}
	return armnetwork.LoadBalancer{
		Location:   ptr(d.cfg.Location),
		Tags:       clusterTags(cluster),
		SKU:        &armnetwork.LoadBalancerSKU{Name: ptr(armnetwork.LoadBalancerSKUNameStandard), Tier: ptr(armnetwork.LoadBalancerSKUTierRegional)},
		Properties: props,
	}
}

// lbKey is what decides whether the balancer must be written again.
func lbKey(lb *armnetwork.LoadBalancer) string {
	if lb == nil || lb.Properties == nil {
		return ""
	}
	var parts []string
	for _, r := range lb.Properties.LoadBalancingRules {
		if p := r.Properties; p != nil {
			parts = append(parts, fmt.Sprintf("rule %s %d>%d %s", deref(r.Name), deref(p.FrontendPort), deref(p.BackendPort), deref(p.Protocol)))
		}
	}
	for _, pr := range lb.Properties.Probes {
		if p := pr.Properties; p != nil {
			parts = append(parts, fmt.Sprintf("probe %s %d %s", deref(pr.Name), deref(p.Port), deref(p.Protocol)))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ";")
}

// SyncPorts converges the balancer, its backend pool and the NSG to ports.
func (d *Driver) SyncPorts(ctx context.Context, cluster string, ports []drivers.PublishedPort) (drivers.LBStatus, error) {
	cli, _, err := d.lbClient(ctx)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	rg := d.resourceGroup(cluster)
	lb, err := d.getLB(ctx, cli, cluster)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	if lb == nil && len(ports) == 0 {
		return drivers.LBStatus{}, nil
	}
	if room := (prioLBLast - prioLBFirst + 1) / 2; len(ports) > room {
		return drivers.LBStatus{}, fmt.Errorf("%d published ports: the NSG has room for %d", len(ports), room)
	}
	ports = slices.Clone(ports)
	sort.Slice(ports, func(i, j int) bool { return ports[i].Port < ports[j].Port })
	var changes []string
	before := d.lbStatus(ctx, cli, cluster, lb)
	// The NSG first: a new rule on the balancer forwards only what the NSG lets in.
	c, err := d.syncLBNSG(ctx, cli, cluster, ports)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	changes = append(changes, c...)
	if lb == nil {
		_, err := wait(ctx, d, waitResource, "public ip "+lbIPName(cluster), func(ctx context.Context) (*runtime.Poller[armnetwork.PublicIPAddressesClientCreateOrUpdateResponse], error) {
			return cli.pips.BeginCreateOrUpdate(ctx, rg, lbIPName(cluster), armnetwork.PublicIPAddress{
				Location: ptr(d.cfg.Location),
				Tags:     clusterTags(cluster),
				SKU:      &armnetwork.PublicIPAddressSKU{Name: ptr(armnetwork.PublicIPAddressSKUNameStandard), Tier: ptr(armnetwork.PublicIPAddressSKUTierRegional)},
				Properties: &armnetwork.PublicIPAddressPropertiesFormat{
					PublicIPAllocationMethod: ptr(armnetwork.IPAllocationMethodStatic),
					PublicIPAddressVersion:   ptr(armnetwork.IPVersionIPv4),
				},
			}, nil)
		})
		if err != nil {
			return drivers.LBStatus{}, fmt.Errorf("create public ip %s: %w", lbIPName(cluster), d.explain(err))
		}
	}
	ip, err := cli.pips.Get(ctx, rg, lbIPName(cluster), nil)
	if err != nil {
		return drivers.LBStatus{}, fmt.Errorf("find public ip %s: %w", lbIPName(cluster), d.explain(err))
	}
	want := d.lbDefinition(cli, cluster, deref(ip.ID), ports)
	if lb == nil || lbKey(lb) != lbKey(&want) {
		out, err := wait(ctx, d, waitResource, "load balancer "+lbName(cluster), func(ctx context.Context) (*runtime.Poller[armnetwork.LoadBalancersClientCreateOrUpdateResponse], error) {
			return cli.lbs.BeginCreateOrUpdate(ctx, rg, lbName(cluster), want, nil)
		})
		if err != nil {
			return drivers.LBStatus{}, fmt.Errorf("write load balancer %s: %w", lbName(cluster), d.explain(err))
		}
		if lb == nil {
			changes = append(changes, "standard load balancer "+lbName(cluster)+" created")
		}
		lb = &out.LoadBalancer
		for _, p := range ports {
			if !slices.Contains(before.Ports, p.Port) {
				changes = append(changes, fmt.Sprintf("rule and probe %d added (%s)", p.Port, strings.Join(p.Services, ", ")))
			}
		}
		for _, p := range before.Ports {
			if !slices.Contains(drivers.Ports(ports), p) {
				changes = append(changes, fmt.Sprintf("rule and probe %d removed", p))
			}
		}
	}
	// Every NIC of the cluster in the backend pool.
	n, err := d.syncPool(ctx, cli, cluster, deref(lb.ID)+"/backendAddressPools/"+lbPool, true)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	if n > 0 {
		changes = append(changes, fmt.Sprintf("%d network interfaces added to the backend pool", n))
	}
	lb, err = d.getLB(ctx, cli, cluster)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	st := d.lbStatus(ctx, cli, cluster, lb)
	st.Changes = changes
	return st, nil
}

// syncPool puts every NIC of the cluster in the pool (join) or takes every
// one out of it; it returns how many it changed.
func (d *Driver) syncPool(ctx context.Context, cli *clients, cluster, poolID string, join bool) (int, error) {
	rg := d.resourceGroup(cluster)
	var nics []*armnetwork.Interface
	pager := cli.nics.NewListPager(rg, nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			if isNotFound(err) {
				return 0, nil
			}
			return 0, fmt.Errorf("list network interfaces: %w", d.explain(err))
		}
		nics = append(nics, page.Value...)
	}
	changed := 0
	for _, n := range nics {
		if !ownedBy(n.Tags, cluster) || n.Properties == nil || len(n.Properties.IPConfigurations) == 0 {
			continue
		}
		c := n.Properties.IPConfigurations[0]
		if c.Properties == nil {
			continue
		}
		in := slices.ContainsFunc(c.Properties.LoadBalancerBackendAddressPools, func(p *armnetwork.BackendAddressPool) bool {
			return strings.EqualFold(deref(p.ID), poolID)
		})
		if in == join {
			continue
		}
		if join {
			c.Properties.LoadBalancerBackendAddressPools = append(c.Properties.LoadBalancerBackendAddressPools, &armnetwork.BackendAddressPool{ID: ptr(poolID)})
		} else {
			c.Properties.LoadBalancerBackendAddressPools = slices.DeleteFunc(c.Properties.LoadBalancerBackendAddressPools, func(p *armnetwork.BackendAddressPool) bool {
				return strings.EqualFold(deref(p.ID), poolID)
			})
		}
		name := deref(n.Name)
		_, err := wait(ctx, d, waitResource, "network interface "+name, func(ctx context.Context) (*runtime.Poller[armnetwork.InterfacesClientCreateOrUpdateResponse], error) {
			return cli.nics.BeginCreateOrUpdate(ctx, rg, name, *n, nil)
		})
		if err != nil {
			return changed, fmt.Errorf("update network interface %s: %w", name, d.explain(err))
		}
		changed++
	}
	return changed, nil
}

// lbRules are the NSG rules for ports: per port one rule for the clients
// (the published CIDRs; "Internet" for anywhere) and one for Azure's health
// probes (a service tag cannot share a rule with addresses).
func lbRules(ports []drivers.PublishedPort) []*armnetwork.SecurityRule {
	var out []*armnetwork.SecurityRule
	rule := func(name string, prio int, port int, one *string, many []*string, desc string) *armnetwork.SecurityRule {
		return &armnetwork.SecurityRule{Name: ptr(name), Properties: &armnetwork.SecurityRulePropertiesFormat{
			Description:              ptr(desc),
			Priority:                 ptr(int32(prio)),
			Direction:                ptr(armnetwork.SecurityRuleDirectionInbound),
			Access:                   ptr(armnetwork.SecurityRuleAccessAllow),
			Protocol:                 ptr(armnetwork.SecurityRuleProtocolTCP),
			SourcePortRange:          ptr("*"),
			SourceAddressPrefix:      one,
			SourceAddressPrefixes:    many,
			DestinationAddressPrefix: ptr("*"),
			DestinationPortRange:     ptr(strconv.Itoa(port)),
		}}
	}
	for i, p := range ports {
		var srcs []*string
		anywhere := len(p.Sources) == 0
		for _, s := range slices.Sorted(slices.Values(p.Sources)) {
			if s == drivers.Anywhere {
				anywhere = true
			}
			srcs = append(srcs, ptr(s))
		}
		name := lbRulePrefix + strconv.Itoa(p.Port)
		prio := prioLBFirst + 2*i
		switch {
		case anywhere:
			out = append(out, rule(name, prio, p.Port, ptr("Internet"), nil, fmt.Sprintf("published port %d from anywhere (provision load balancer)", p.Port)))
		case len(srcs) == 1:
			out = append(out, rule(name, prio, p.Port, srcs[0], nil, fmt.Sprintf("published port %d from published_cidrs (provision load balancer)", p.Port)))
		default:
			out = append(out, rule(name, prio, p.Port, nil, srcs, fmt.Sprintf("published port %d from published_cidrs (provision load balancer)", p.Port)))
		}
		out = append(out, rule(name+"-probe", prio+1, p.Port, ptr("AzureLoadBalancer"), nil, fmt.Sprintf("health probe of published port %d", p.Port)))
	}
	return out
}

// syncLBNSG makes the cluster's NSG hold exactly the load balancer rules
// for ports; every other rule is kept as it is.
func (d *Driver) syncLBNSG(ctx context.Context, cli *clients, cluster string, ports []drivers.PublishedPort) ([]string, error) {
	rg, name := d.resourceGroup(cluster), nsgName(cluster)
	got, err := cli.nsgs.Get(ctx, rg, name, nil)
	if err != nil {
		return nil, fmt.Errorf("find network security group %s: %w", name, d.explain(err))
	}
	if !ownedBy(got.Tags, cluster) {
		return nil, fmt.Errorf("network security group %q exists without the tag %s=%s", name, drivers.TagCluster, cluster)
	}
	want := lbRules(ports)
	var keep []*armnetwork.SecurityRule
	var have []string
	if got.Properties != nil {
		for _, r := range got.Properties.SecurityRules {
			if strings.HasPrefix(deref(r.Name), lbRulePrefix) {
				have = append(have, ruleKey(r))
			} else {
				keep = append(keep, r)
			}
		}
	}
	var wantKeys []string
	for _, r := range want {
		wantKeys = append(wantKeys, ruleKey(r))
	}
	sort.Strings(have)
	sort.Strings(wantKeys)
	if slices.Equal(have, wantKeys) {
		return nil, nil
	}
	g := got.SecurityGroup
	props := armnetwork.SecurityGroupPropertiesFormat{SecurityRules: append(keep, want...)}
	_, err = wait(ctx, d, waitResource, "network security group "+name, func(ctx context.Context) (*runtime.Poller[armnetwork.SecurityGroupsClientCreateOrUpdateResponse], error) {
		return cli.nsgs.BeginCreateOrUpdate(ctx, rg, name, armnetwork.SecurityGroup{Location: g.Location, Tags: g.Tags, Properties: &props}, nil)
	})
	if err != nil {
		return nil, fmt.Errorf("update network security group %s: %w", name, d.explain(err))
	}
	if len(ports) == 0 {
		return []string{"network security group: load balancer ports closed"}, nil
	}
	return []string{fmt.Sprintf("network security group: exactly ports %s open from published_cidrs and the health probes", drivers.PortList(drivers.Ports(ports)))}, nil
}

// RemoveBalancer takes the NICs out of the pool, deletes the balancer and
// its public IP, and removes its NSG rules.
func (d *Driver) RemoveBalancer(ctx context.Context, cluster string) error {
	cli, _, err := d.lbClient(ctx)
	if err != nil {
		return err
	}
	rg := d.resourceGroup(cluster)
	lb, err := d.getLB(ctx, cli, cluster)
	if err != nil {
		if _, gerr := cli.groups.Get(ctx, rg, nil); isNotFound(gerr) {
			return nil // the whole group is gone
		}
		return err
	}
	if lb != nil {
		if _, err := d.syncPool(ctx, cli, cluster, deref(lb.ID)+"/backendAddressPools/"+lbPool, false); err != nil {
			return err
		}
		if _, err := wait(ctx, d, waitResource, "load balancer "+lbName(cluster), func(ctx context.Context) (*runtime.Poller[armnetwork.LoadBalancersClientDeleteResponse], error) {
			return cli.lbs.BeginDelete(ctx, rg, lbName(cluster), nil)
		}); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete load balancer %s: %w", lbName(cluster), d.explain(err))
		}
		d.log.InfoContext(ctx, "deleted load balancer", "cluster", cluster, "name", lbName(cluster))
	}
	if ip, err := cli.pips.Get(ctx, rg, lbIPName(cluster), nil); err == nil {
		if !ownedBy(ip.Tags, cluster) {
			return fmt.Errorf("public ip %s exists without the cluster tag: left as it is", lbIPName(cluster))
		}
		if _, err := wait(ctx, d, waitResource, "public ip "+lbIPName(cluster), func(ctx context.Context) (*runtime.Poller[armnetwork.PublicIPAddressesClientDeleteResponse], error) {
			return cli.pips.BeginDelete(ctx, rg, lbIPName(cluster), nil)
		}); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete public ip %s: %w", lbIPName(cluster), d.explain(err))
		}
	} else if !isNotFound(err) {
		return fmt.Errorf("find public ip %s: %w", lbIPName(cluster), d.explain(err))
	}
	if _, err := cli.nsgs.Get(ctx, rg, nsgName(cluster), nil); err == nil {
		if _, err := d.syncLBNSG(ctx, cli, cluster, nil); err != nil {
			return err
		}
	}
	return nil
}

// balancerResources lists the balancer and its address for plan.
func (d *Driver) balancerResources(ctx context.Context, cli *clients, cluster, action string) ([]drivers.Resource, error) {
	lb, err := d.getLB(ctx, cli, cluster)
	if err != nil || lb == nil {
		return nil, err
	}
	st := d.lbStatus(ctx, cli, cluster, lb)
	return []drivers.Resource{
		{Kind: "load-balancer", Name: st.Name, Action: action, Note: fmt.Sprintf("standard, %s (public ip %s); ports %s; %d network interfaces in the pool", st.Address, lbIPName(cluster), drivers.PortList(st.Ports), st.Targets)},
	}, nil
}
