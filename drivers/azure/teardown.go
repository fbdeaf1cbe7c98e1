package azure

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v6"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v6"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/resources/armresources"

	"github.com/provision/provision/drivers"
)

// Teardown removes what the driver made for the cluster once its VMs are
// gone. When the driver made the resource group, the whole group goes, but
// only if everything in it carries the cluster's tag (a resource someone
// else put there stops the teardown, named). In a group the spec names,
// the driver's leftovers (NICs, public IPs, disks) then the NSG and the VNet
// are deleted, each checked to carry the tag; the group stays.
func (d *Driver) Teardown(ctx context.Context, cluster string) error {
	cli, err := d.clients(ctx)
	if err != nil {
		return err
	}
	rg := d.resourceGroup(cluster)
	vms, err := d.listVMs(ctx, cli, rg, cluster)
	if err != nil {
		return fmt.Errorf("teardown %s: list vms: %w", cluster, err)
	}
	if len(vms) > 0 {
		var names []string
		for _, vm := range vms {
			names = append(names, deref(vm.Name))
		}
		return fmt.Errorf("teardown %s: vms still exist: %v", cluster, names)
	}
	// Forget the shared resources: a later Create makes them again.
	d.sharedMu.Lock()
	delete(d.shared, cluster)
	d.sharedMu.Unlock()

	if d.ownsGroup() {
		return d.deleteGroup(ctx, cli, rg, cluster)
	}

	var errs []error
	keep := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	nics, err := collect(ctx, cli.nics.NewListPager(rg, nil), func(p armnetwork.InterfacesClientListResponse) []*armnetwork.Interface { return p.Value })
	keep(listErr("network interfaces", err))
	for _, n := range nics {
		if ownedBy(n.Tags, cluster) {
			keep(d.deleteNIC(ctx, cli, rg, deref(n.Name), cluster))
		}
	}
	pips, err := collect(ctx, cli.pips.NewListPager(rg, nil), func(p armnetwork.PublicIPAddressesClientListResponse) []*armnetwork.PublicIPAddress { return p.Value })
	keep(listErr("public ips", err))
	for _, p := range pips {
		if ownedBy(p.Tags, cluster) {
			keep(d.deletePIP(ctx, cli, rg, deref(p.Name), cluster))
		}
	}
	disks, err := collect(ctx, cli.disks.NewListByResourceGroupPager(rg, nil), func(p armcompute.DisksClientListByResourceGroupResponse) []*armcompute.Disk { return p.Value })
	keep(listErr("disks", err))
	for _, dk := range disks {
		if ownedBy(dk.Tags, cluster) {
			keep(d.deleteDisk(ctx, cli, rg, deref(dk.Name), cluster))
		}
	}
	if len(errs) == 0 {
		keep(d.deleteNSG(ctx, cli, rg, cluster))
		keep(d.deleteVNet(ctx, cli, rg, cluster))
	}
	if len(errs) > 0 {
		return fmt.Errorf("teardown %s: resources left in %s: %w", cluster, rg, errors.Join(errs...))
	}
	return nil
}

func listErr(what string, err error) error {
	if err == nil || isNotFound(err) {
		return nil
	}
	return fmt.Errorf("list %s: %w", what, err)
}

// deleteGroup deletes the group the driver made, after checking that all it
// holds is the cluster's.
func (d *Driver) deleteGroup(ctx context.Context, cli *clients, rg, cluster string) error {
	got, err := cli.groups.Get(ctx, rg, nil)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("teardown %s: find resource group %q: %w", cluster, rg, d.explain(err))
	}
	if !ownedBy(got.Tags, cluster) {
		return fmt.Errorf("teardown %s: resource group %q does not carry the tag %s=%s; not deleting it", cluster, rg, drivers.TagCluster, cluster)
	}
	held, err := collect(ctx, cli.res.NewListByResourceGroupPager(rg, nil), func(p armresources.ClientListByResourceGroupResponse) []*armresources.GenericResourceExpanded {
		return p.Value
	})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("teardown %s: list what resource group %q holds: %w", cluster, rg, d.explain(err))
	}
	var foreign []string
	for _, r := range held {
		if !ownedBy(r.Tags, cluster) {
			foreign = append(foreign, deref(r.Type)+" "+deref(r.Name))
		}
	}
	if len(foreign) > 0 {
		sort.Strings(foreign)
		return fmt.Errorf("teardown %s: resource group %q holds resources without the tag %s=%s: %s; move or delete them, then run destroy again",
			cluster, rg, drivers.TagCluster, cluster, strings.Join(foreign, ", "))
	}
	if _, err := wait(ctx, d, waitGroup, "delete resource group "+rg, func(ctx context.Context) (*runtime.Poller[armresources.ResourceGroupsClientDeleteResponse], error) {
		return cli.groups.BeginDelete(ctx, rg, nil)
	}); err != nil && !isNotFound(err) {
		return fmt.Errorf("teardown %s: delete resource group %q: %w", cluster, rg, d.explain(err))
	}
	d.log.InfoContext(ctx, "deleted resource group", "cluster", cluster, "resource_group", rg, "resources", len(held))
	return nil
}

func (d *Driver) deleteNSG(ctx context.Context, cli *clients, rg, cluster string) error {
	name := nsgName(cluster)
	got, err := cli.nsgs.Get(ctx, rg, name, nil)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find network security group %q: %w", name, d.explain(err))
	}
	if !ownedBy(got.Tags, cluster) {
		return fmt.Errorf("network security group %q does not carry the tag %s=%s; not deleting it", name, drivers.TagCluster, cluster)
	}
	if _, err := wait(ctx, d, waitResource, "delete network security group "+name, func(ctx context.Context) (*runtime.Poller[armnetwork.SecurityGroupsClientDeleteResponse], error) {
		return cli.nsgs.BeginDelete(ctx, rg, name, nil)
	}); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete network security group %q: %w", name, d.explain(err))
	}
	d.log.InfoContext(ctx, "deleted network security group", "cluster", cluster, "nsg", name)
	return nil
}

func (d *Driver) deleteVNet(ctx context.Context, cli *clients, rg, cluster string) error {
	name := vnetName(cluster)
	got, err := cli.vnets.Get(ctx, rg, name, nil)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find virtual network %q: %w", name, d.explain(err))
	}
	if !ownedBy(got.Tags, cluster) {
		return fmt.Errorf("virtual network %q does not carry the tag %s=%s; not deleting it", name, drivers.TagCluster, cluster)
	}
	if _, err := wait(ctx, d, waitResource, "delete virtual network "+name, func(ctx context.Context) (*runtime.Poller[armnetwork.VirtualNetworksClientDeleteResponse], error) {
		return cli.vnets.BeginDelete(ctx, rg, name, nil)
	}); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete virtual network %q: %w", name, d.explain(err))
	}
	d.log.InfoContext(ctx, "deleted virtual network", "cluster", cluster, "vnet", name)
	return nil
}
