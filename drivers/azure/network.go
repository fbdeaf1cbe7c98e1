package azure

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

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v6"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/resources/armresources"

	"github.com/provision/provision/drivers"
)

// Swarm and engine ports.
const (
	portSSH       = 22
	portEngineTLS = 2376
)

// clusterShared is what all of a cluster's VMs share: the resource group,
// the subnet and the network security group. It is made once per cluster
// and process (under mu) and found again by name in the next process.
type clusterShared struct {
	mu       sync.Mutex
	ready    bool
	subnetID string
	nsgID    string
}

// ensureShared makes (or finds and converges) the cluster's resource group,
// NSG and VNet. Nothing is created before the allowed CIDRs are known.
func (d *Driver) ensureShared(ctx context.Context, cli *clients, cluster string, metrics *drivers.MetricsAccess) (*clusterShared, error) {
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
	if err := d.ensureGroup(ctx, cli, cluster); err != nil {
		return nil, err
	}
	if s.nsgID, err = d.ensureNSG(ctx, cli, cluster, allowed, metrics); err != nil {
		return nil, err
	}
	if s.subnetID, err = d.ensureVNet(ctx, cli, cluster); err != nil {
		return nil, err
	}
	s.ready = true
	return s, nil
}

// ensureGroup makes the cluster's resource group, or checks that the one the
// block names exists.
func (d *Driver) ensureGroup(ctx context.Context, cli *clients, cluster string) error {
	rg := d.resourceGroup(cluster)
	got, err := cli.groups.Get(ctx, rg, nil)
	switch {
	case err == nil && d.ownsGroup() && !ownedBy(got.Tags, cluster):
		return fmt.Errorf("resource group %q exists without the tag %s=%s: remove it, or name it with resource_group to use it as it is", rg, drivers.TagCluster, cluster)
	case err == nil:
		return nil
	case !isNotFound(err):
		return fmt.Errorf("find resource group %q: %w", rg, d.explain(err))
	case !d.ownsGroup():
		return fmt.Errorf("resource group %q (resource_group in the driver block) does not exist: create it, or leave resource_group unset to let the driver make one: %w", rg, err)
	}
	if _, err := cli.groups.CreateOrUpdate(ctx, rg, armresources.ResourceGroup{
		Location: ptr(d.cfg.Location),
		Tags:     clusterTags(cluster),
	}, nil); err != nil {
		return fmt.Errorf("create resource group %q in %s: %w", rg, d.cfg.Location, d.explain(err))
	}
	d.log.InfoContext(ctx, "created resource group", "cluster", cluster, "resource_group", rg, "location", d.cfg.Location)
	return nil
}

// NSG rule priorities. 300-3999 are free for rules other features add
// (load balancer listeners); 4000 denies the rest of the virtual network.
const (
	prioOperator = 100 // SSH and 2376 from allowed_cidrs (IPv4), 101 for IPv6
	prioSwarm    = 200 // 200 tcp, 201 udp, 202 esp
	prioMetrics  = 210 // 210 from the subnet, 211 from metrics_cidrs (IPv4), 212 (IPv6)
	prioDenyVNet = 4000
)

// rulePrefix marks the rules the driver owns; other rules in the group are
// kept as they are.
const rulePrefix = "provision-"

// nsgRules is the NSG's rule set: SSH and the engine's TLS port from the
// allowed CIDRs, the swarm ports (2377/tcp, 7946/tcp+udp, 4789/udp, ESP for
// encrypted overlays) from the subnet only, and everything else from the
// virtual network denied (Azure's default rules would allow it). Inbound
// traffic from the internet not allowed here meets Azure's DenyAllInBound.
func nsgRules(allowed []string, subnet string, metrics *drivers.MetricsAccess) []*armnetwork.SecurityRule {
	var v4, v6 []*string
	for _, c := range allowed {
		if strings.Contains(c, ":") {
			v6 = append(v6, ptr(c))
		} else {
			v4 = append(v4, ptr(c))
		}
	}
	ports := []*string{ptr(fmt.Sprint(portSSH)), ptr(fmt.Sprint(portEngineTLS))}
	rule := func(name string, prio int32, proto armnetwork.SecurityRuleProtocol, src []*string, dst string, dstPorts []*string, access armnetwork.SecurityRuleAccess, desc string) *armnetwork.SecurityRule {
		p := &armnetwork.SecurityRulePropertiesFormat{
			Description:              ptr(desc),
			Priority:                 ptr(prio),
			Direction:                ptr(armnetwork.SecurityRuleDirectionInbound),
			Access:                   ptr(access),
			Protocol:                 ptr(proto),
			SourcePortRange:          ptr("*"),
			DestinationAddressPrefix: ptr(dst),
		}
		if len(src) == 1 {
			p.SourceAddressPrefix = src[0]
		} else {
			p.SourceAddressPrefixes = src
		}
		if len(dstPorts) == 1 {
			p.DestinationPortRange = dstPorts[0]
		} else {
			p.DestinationPortRanges = dstPorts
		}
		return &armnetwork.SecurityRule{Name: ptr(rulePrefix + name), Properties: p}
	}
	var rs []*armnetwork.SecurityRule
	if len(v4) > 0 {
		rs = append(rs, rule("operator", prioOperator, armnetwork.SecurityRuleProtocolTCP, v4, "*", ports, armnetwork.SecurityRuleAccessAllow, "SSH and Docker TLS from allowed_cidrs"))
	}
	if len(v6) > 0 {
		rs = append(rs, rule("operator-v6", prioOperator+1, armnetwork.SecurityRuleProtocolTCP, v6, "*", ports, armnetwork.SecurityRuleAccessAllow, "SSH and Docker TLS from allowed_cidrs (IPv6)"))
	}
	sub := []*string{ptr(subnet)}
	if metrics != nil && metrics.Port > 0 {
		mp := []*string{ptr(fmt.Sprint(metrics.Port))}
		rs = append(rs, rule("metrics", prioMetrics, armnetwork.SecurityRuleProtocolTCP, sub, subnet, mp, armnetwork.SecurityRuleAccessAllow, "engine metrics within the subnet"))
		var m4, m6 []*string
		for _, c := range metrics.CIDRs {
			if strings.Contains(c, ":") {
				m6 = append(m6, ptr(c))
			} else {
				m4 = append(m4, ptr(c))
			}
		}
		if len(m4) > 0 {
			rs = append(rs, rule("metrics-cidrs", prioMetrics+1, armnetwork.SecurityRuleProtocolTCP, m4, "*", mp, armnetwork.SecurityRuleAccessAllow, "engine metrics from metrics_cidrs"))
		}
		if len(m6) > 0 {
			rs = append(rs, rule("metrics-cidrs-v6", prioMetrics+2, armnetwork.SecurityRuleProtocolTCP, m6, "*", mp, armnetwork.SecurityRuleAccessAllow, "engine metrics from metrics_cidrs (IPv6)"))
		}
	}
	return append(rs,
		rule("swarm-tcp", prioSwarm, armnetwork.SecurityRuleProtocolTCP, sub, subnet, []*string{ptr("2377"), ptr("7946")}, armnetwork.SecurityRuleAccessAllow, "swarm management and gossip within the subnet"),
		rule("swarm-udp", prioSwarm+1, armnetwork.SecurityRuleProtocolUDP, sub, subnet, []*string{ptr("7946"), ptr("4789")}, armnetwork.SecurityRuleAccessAllow, "swarm gossip and VXLAN within the subnet"),
		rule("swarm-esp", prioSwarm+2, armnetwork.SecurityRuleProtocolEsp, sub, subnet, []*string{ptr("*")}, armnetwork.SecurityRuleAccessAllow, "encrypted overlay (IPsec ESP) within the subnet"),
		rule("deny-vnet", prioDenyVNet, armnetwork.SecurityRuleProtocolAsterisk, []*string{ptr("VirtualNetwork")}, "*", []*string{ptr("*")}, armnetwork.SecurityRuleAccessDeny, "nothing else from the virtual network"),
	)
}

// ruleKey is a rule in a comparable form.
func ruleKey(r *armnetwork.SecurityRule) string {
	p := r.Properties
	if p == nil {
		return deref(r.Name)
	}
	list := func(one *string, many []*string) string {
		var v []string
		if one != nil && *one != "" {
			v = append(v, *one)
		}
		for _, s := range many {
			v = append(v, deref(s))
		}
		sort.Strings(v)
		return strings.Join(v, ",")
	}
	return fmt.Sprintf("%s|%d|%s|%s|%s|%s|%s|%s|%s", deref(r.Name), deref(p.Priority), deref(p.Direction), deref(p.Access), deref(p.Protocol),
		list(p.SourceAddressPrefix, p.SourceAddressPrefixes), list(p.SourcePortRange, p.SourcePortRanges),
		list(p.DestinationAddressPrefix, p.DestinationAddressPrefixes), list(p.DestinationPortRange, p.DestinationPortRanges))
}

// ensureNSG makes the cluster's network security group and converges the
// driver's rules (addresses no longer allowed lose access); rules without
// the driver's prefix are kept.
func (d *Driver) ensureNSG(ctx context.Context, cli *clients, cluster string, allowed []string, metrics *drivers.MetricsAccess) (string, error) {
	rg, name := d.resourceGroup(cluster), nsgName(cluster)
	want := nsgRules(allowed, d.cfg.SubnetCIDR, metrics)
	got, err := cli.nsgs.Get(ctx, rg, name, nil)
	if err != nil && !isNotFound(err) {
		return "", fmt.Errorf("find network security group %q: %w", name, d.explain(err))
	}
	if err == nil {
		if !ownedBy(got.Tags, cluster) {
			return "", fmt.Errorf("network security group %q in %q exists without the tag %s=%s; remove or rename it", name, rg, drivers.TagCluster, cluster)
		}
		if err := d.sameLocation("network security group", name, deref(got.Location)); err != nil {
			return "", err
		}
		var have, wantKeys, keep []string
		var foreign []*armnetwork.SecurityRule
		if got.Properties != nil {
			for _, r := range got.Properties.SecurityRules {
				if strings.HasPrefix(deref(r.Name), rulePrefix) {
					have = append(have, ruleKey(r))
				} else {
					foreign = append(foreign, r)
					keep = append(keep, deref(r.Name))
				}
			}
		}
		for _, r := range want {
			wantKeys = append(wantKeys, ruleKey(r))
		}
		sort.Strings(have)
		sort.Strings(wantKeys)
		if slices.Equal(have, wantKeys) {
			return deref(got.ID), nil
		}
		want = append(want, foreign...)
		d.log.InfoContext(ctx, "updating network security group rules", "cluster", cluster, "nsg", name, "kept", keep)
	}
	out, err := wait(ctx, d, waitResource, "network security group "+name, func(ctx context.Context) (*runtime.Poller[armnetwork.SecurityGroupsClientCreateOrUpdateResponse], error) {
		return cli.nsgs.BeginCreateOrUpdate(ctx, rg, name, armnetwork.SecurityGroup{
			Location:   ptr(d.cfg.Location),
			Tags:       clusterTags(cluster),
			Properties: &armnetwork.SecurityGroupPropertiesFormat{SecurityRules: want},
		}, nil)
	})
	if err != nil {
		return "", fmt.Errorf("create network security group %q: %w", name, d.explain(err))
	}
	d.log.InfoContext(ctx, "network security group ready", "cluster", cluster, "nsg", name, "allowed", allowed)
	return deref(out.ID), nil
}

// sameLocation refuses a shared resource of the cluster that is in another
// location than the driver block's: every VM's NIC must be in the location
// of the virtual network and security group, which are one per cluster (a
// second azure block of the cluster in another location, or a location
// changed after the first apply).
func (d *Driver) sameLocation(kind, name, loc string) error {
	norm := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, " ", "")) }
	if loc == "" || norm(loc) == norm(d.cfg.Location) {
		return nil
	}
	return fmt.Errorf("%s %q of the cluster is in %s, this driver block's location is %s: a cluster's azure machines share one virtual network and security group, so all its azure blocks need the location the cluster was made in", kind, name, loc, d.cfg.Location)
}

// ensureVNet makes the cluster's virtual network with its subnet and
// returns the subnet's ID.
func (d *Driver) ensureVNet(ctx context.Context, cli *clients, cluster string) (string, error) {
	rg, name := d.resourceGroup(cluster), vnetName(cluster)
	got, err := cli.vnets.Get(ctx, rg, name, nil)
	if err != nil && !isNotFound(err) {
		return "", fmt.Errorf("find virtual network %q: %w", name, d.explain(err))
	}
	if err == nil {
		if !ownedBy(got.Tags, cluster) {
			return "", fmt.Errorf("virtual network %q in %q exists without the tag %s=%s; remove or rename it", name, rg, drivers.TagCluster, cluster)
		}
		if err := d.sameLocation("virtual network", name, deref(got.Location)); err != nil {
			return "", err
		}
		if got.Properties != nil {
			for _, sn := range got.Properties.Subnets {
				if deref(sn.Name) == subnetName && sn.ID != nil {
					return *sn.ID, nil
				}
			}
		}
	}
	out, err := wait(ctx, d, waitResource, "virtual network "+name, func(ctx context.Context) (*runtime.Poller[armnetwork.VirtualNetworksClientCreateOrUpdateResponse], error) {
		return cli.vnets.BeginCreateOrUpdate(ctx, rg, name, armnetwork.VirtualNetwork{
			Location: ptr(d.cfg.Location),
			Tags:     clusterTags(cluster),
			Properties: &armnetwork.VirtualNetworkPropertiesFormat{
				AddressSpace: &armnetwork.AddressSpace{AddressPrefixes: []*string{ptr(d.cfg.VNetCIDR)}},
				Subnets: []*armnetwork.Subnet{{
					Name:       ptr(subnetName),
					Properties: &armnetwork.SubnetPropertiesFormat{AddressPrefix: ptr(d.cfg.SubnetCIDR)},
				}},
			},
		}, nil)
	})
	if err != nil {
		return "", fmt.Errorf("create virtual network %q (%s): %w", name, d.cfg.VNetCIDR, d.explain(err))
	}
	d.log.InfoContext(ctx, "created virtual network", "cluster", cluster, "vnet", name, "cidr", d.cfg.VNetCIDR, "subnet", d.cfg.SubnetCIDR)
	if out.Properties != nil {
		for _, sn := range out.Properties.Subnets {
			if deref(sn.Name) == subnetName && sn.ID != nil {
				return *sn.ID, nil
			}
		}
	}
	return "", fmt.Errorf("virtual network %q was created without its subnet %q", name, subnetName)
}

// allowedCIDRs returns the block's allowed_cidrs or, only when
// detect_operator_ip is set, the operator's public address as a /32 (/128).
func (d *Driver) allowedCIDRs(ctx context.Context) ([]string, error) {
	if len(d.cfg.AllowedCIDRs) > 0 {
		return d.cfg.AllowedCIDRs, nil
	}
	if !d.cfg.DetectOperatorIP {
		return nil, errors.New("no allowed_cidrs in the azure driver block: set allowed_cidrs to the addresses that may reach SSH and the Docker TLS port, or detect_operator_ip = true")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.cfg.OperatorIPURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := d.httpClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("find the operator's public address (set allowed_cidrs instead): %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("find the operator's public address (set allowed_cidrs instead): GET %s: %s", d.cfg.OperatorIPURL, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 128))
	if err != nil {
		return nil, fmt.Errorf("find the operator's public address: GET %s: %w", d.cfg.OperatorIPURL, err)
	}
	a, err := netip.ParseAddr(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("find the operator's public address: GET %s: answer is not an IP address: %w", d.cfg.OperatorIPURL, err)
	}
	p := netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()).String()
	d.log.InfoContext(ctx, "allowing the operator's public address", "cidr", p)
	return []string{p}, nil
}
