package azure

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v6"

	"github.com/provision/provision/drivers"
)

// Resources lists, for plan, the cluster's shared resources (resource
// group, virtual network and subnet, network security group), one public
// IP per machine, and where the machines go (availability zones). It
// changes nothing. Without credentials it returns what Create would make,
// with an error saying what it could not check.
func (d *Driver) Resources(ctx context.Context, cluster string, want []drivers.MachineSpec) ([]drivers.Resource, error) {
	rg := d.resourceGroup(cluster)
	wanted := d.plannedResources(cluster, want)
	cli, err := d.clients(ctx)
	if err != nil {
		if len(want) == 0 {
			return nil, fmt.Errorf("%w; %s", err, d.notChecked())
		}
		return d.notes(wanted, want, nil), fmt.Errorf("%w; %s", err, d.notChecked())
	}

	var out []drivers.Resource
	add := func(r drivers.Resource, exists bool, id string) {
		switch {
		case exists:
			r.Action, r.ID = drivers.ResourceKeep, id
			out = append(out, r)
		case len(want) > 0:
			r.Action = drivers.ResourceCreate
			out = append(out, r)
		}
	}
	group, err := cli.groups.Get(ctx, rg, nil)
	if err != nil && !isNotFound(err) {
		return wanted, fmt.Errorf("read resource group %q: %w", rg, d.explain(err))
	}
	groupExists := err == nil
	if d.ownsGroup() {
		add(wanted[0], groupExists && ownedBy(group.Tags, cluster), deref(group.ID))
	} else if len(want) > 0 {
		r := wanted[0]
		r.Action, r.ID = drivers.ResourceKeep, deref(group.ID)
		if !groupExists {
			r.Note = "named in the spec, NOT FOUND: create it first"
		}
		out = append(out, r)
	}
	if groupExists {
		vnet, err := cli.vnets.Get(ctx, rg, vnetName(cluster), nil)
		if err != nil && !isNotFound(err) {
			return wanted, fmt.Errorf("read virtual network: %w", d.explain(err))
		}
		add(wanted[1], err == nil && ownedBy(vnet.Tags, cluster), deref(vnet.ID))
		nsg, err := cli.nsgs.Get(ctx, rg, nsgName(cluster), nil)
		if err != nil && !isNotFound(err) {
			return wanted, fmt.Errorf("read network security group: %w", d.explain(err))
		}
		add(wanted[2], err == nil && ownedBy(nsg.Tags, cluster), deref(nsg.ID))
		pips, err := collect(ctx, cli.pips.NewListPager(rg, nil), func(p armnetwork.PublicIPAddressesClientListResponse) []*armnetwork.PublicIPAddress { return p.Value })
		if err != nil && !isNotFound(err) {
			return wanted, fmt.Errorf("list public ips: %w", d.explain(err))
		}
		have := map[string]bool{}
		for _, p := range pips {
			if !ownedBy(p.Tags, cluster) {
				continue
			}
			have[deref(p.Name)] = true
			// Any generation's address counts for the machine's: a
			// replaced machine's successor has "<name>-g<gen>-ip".
			if m := deref(p.Tags[drivers.TagMachine]); m != "" {
				have[pipName(m)] = true
			}
			r := drivers.Resource{Kind: "public-ip", Name: deref(p.Name), ID: deref(p.ID), Action: drivers.ResourceKeep}
			if p.Properties != nil && p.Properties.IPAddress != nil {
				r.Note = *p.Properties.IPAddress
			}
			out = append(out, r)
		}
		for _, r := range wanted[3:] {
			if r.Kind == "public-ip" && !have[r.Name] {
				out = append(out, r)
			}
		}
		lbs, err := d.balancerResources(ctx, cli, cluster, drivers.ResourceKeep)
		if err != nil {
			return wanted, err
		}
		out = append(out, lbs...)
	} else if len(want) > 0 {
		out = append(out, wanted[1:]...)
	}
	if len(want) > 0 {
		out = d.notes(out, want, func(size string) ([]string, error) { return d.zones(ctx, cli, size) })
	}
	return out, nil
}

// plannedResources is everything Create would make for the machines: the
// group, the VNet, the NSG (in that order) and one public IP per machine.
func (d *Driver) plannedResources(cluster string, want []drivers.MachineSpec) []drivers.Resource {
	rgNote := "made for the cluster; destroy removes it with all it holds"
	if !d.ownsGroup() {
		rgNote = "named in the spec; never removed"
	}
	rs := []drivers.Resource{
		{Kind: "resource-group", Name: d.resourceGroup(cluster), Action: drivers.ResourceCreate, Note: rgNote + "; location " + d.cfg.Location},
		{Kind: "virtual-network", Name: vnetName(cluster), Action: drivers.ResourceCreate, Note: fmt.Sprintf("%s, subnet %s %s", d.cfg.VNetCIDR, subnetName, d.cfg.SubnetCIDR)},
		{Kind: "network-security-group", Name: nsgName(cluster), Action: drivers.ResourceCreate, Note: d.ruleNote()},
	}
	if d.cfg.PublicIP {
		for _, m := range want {
			rs = append(rs, drivers.Resource{Kind: "public-ip", Name: pipName(m.Name), Action: drivers.ResourceCreate, Note: "Standard, static"})
		}
	}
	return rs
}

func (d *Driver) ruleNote() string {
	from := strings.Join(d.cfg.AllowedCIDRs, ", ")
	if from == "" {
		from = "the operator's address (detected at apply)"
	}
	return fmt.Sprintf("22 and 2376 from %s; swarm ports from %s only", from, d.cfg.SubnetCIDR)
}

// notes adds each machine's availability zone to its public IP's line and
// a line of its own saying how the managers are spread. zonesFor is nil
// when Azure cannot be asked.
func (d *Driver) notes(rs []drivers.Resource, want []drivers.MachineSpec, zonesFor func(size string) ([]string, error)) []drivers.Resource {
	zoneOf := map[string]string{}
	var managers []string
	unknown := ""
	for _, m := range want {
		var zones []string
		switch {
		case d.cfg.Zones != nil:
			zones = d.cfg.Zones
		case zonesFor == nil:
			unknown = "the zones " + d.cfg.Location + " offers for each size (not checked without credentials)"
		default:
			z, err := zonesFor(d.size(m))
			if err != nil {
				unknown = "unknown: " + err.Error()
			}
			zones = z
		}
		z := pickZone(zones, m.Name)
		zoneOf[m.Name] = z
		if m.Role == "manager" {
			if z == "" {
				z = "-"
			}
			managers = append(managers, m.Name+" zone "+z)
		}
	}
	for i := range rs {
		if rs[i].Kind != "public-ip" || rs[i].Action != drivers.ResourceCreate {
			continue
		}
		m := strings.TrimSuffix(rs[i].Name, "-ip")
		if z := zoneOf[m]; z != "" {
			rs[i].Note += ", zone " + z
		}
	}
	sort.Strings(managers)
	note := "managers: " + strings.Join(managers, ", ")
	switch {
	case unknown != "":
		note = "managers and workers spread over " + unknown
	case len(managers) > 0 && strings.HasSuffix(managers[0], "zone -"):
		note = "no availability zones for this size in " + d.cfg.Location + ": machines are not spread"
	}
	return append(rs, drivers.Resource{Kind: "availability-zones", Name: d.cfg.Location, Action: drivers.ResourceKeep, Note: note})
}
