package azure

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v6"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v6"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/retry"
)

// maxCustomData is Azure's limit on a VM's custom data, base64 encoded.
const maxCustomData = 87380

// Create makes one VM with its public IP and NIC, or returns the one
// already in the cluster's resource group for this machine name and
// generation (started when stopped). A VM whose creation failed in Azure
// (provisioning state Failed) is deleted and made again.
//
// Generation gen of machine name is the VM drivers.InstanceName(name, gen)
// with its NIC, public IP and OS disk named after it ("<name>-g2-nic", ...):
// the first generation keeps the plain names, and a replaced machine's
// successor exists beside it. The guest's host name and the machine tag
// stay the machine name; the VM (and its NIC, IP and disk) carry the
// generation tag past the first.
func (d *Driver) Create(ctx context.Context, cluster string, want drivers.MachineSpec) (drivers.Machine, error) {
	if cluster == "" || want.Name == "" {
		return drivers.Machine{}, errors.New("create vm: cluster and machine name are required")
	}
	if err := checkVMName(want); err != nil {
		return drivers.Machine{}, fmt.Errorf("create vm: %w", err)
	}
	if err := checkAdminUser(want.SSH.User); err != nil {
		return drivers.Machine{}, fmt.Errorf("create vm %q: %w", want.Name, err)
	}
	gen := max(1, want.Generation)
	vmName := drivers.InstanceName(want.Name, gen)
	defer d.lockName(cluster, vmName)()
	cli, err := d.clients(ctx)
	if err != nil {
		return drivers.Machine{}, err
	}
	rg := d.resourceGroup(cluster)

	vm, err := d.getVM(ctx, cli, rg, vmName)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("find vm %q: %w", vmName, err)
	}
	if vm != nil {
		if !ownedBy(vm.Tags, cluster) {
			return drivers.Machine{}, fmt.Errorf("vm %q exists in resource group %q without the tag %s=%s; remove or rename it", vmName, rg, drivers.TagCluster, cluster)
		}
		if have := drivers.GenerationOf(tagMap(vm.Tags)); have != gen {
			return drivers.Machine{}, fmt.Errorf("vm %q exists in resource group %q as generation %d of machine %q, not generation %d; remove or rename it", vmName, rg, have, deref(vm.Tags[drivers.TagMachine]), gen)
		}
		if vm, err = d.settled(ctx, cli, rg, vm); err != nil {
			return drivers.Machine{}, err
		}
		if provisioningState(vm) == "failed" {
			d.log.WarnContext(ctx, "vm failed to provision earlier; deleting it to create it again", "cluster", cluster, "host", want.Name, "generation", gen)
			if err := d.destroyVM(ctx, cli, rg, vmName, cluster); err != nil {
				return drivers.Machine{}, fmt.Errorf("replace failed vm %q: %w", vmName, err)
			}
		} else {
			d.log.InfoContext(ctx, "adopting existing vm", "cluster", cluster, "host", want.Name, "generation", gen, "vm", deref(vm.ID), "state", powerState(vm))
			return d.startAndDescribe(ctx, cli, rg, vm)
		}
	}

	// Everything that can fail without Azure fails here, before anything exists.
	userData, err := drivers.UserData(want)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create vm %q: %w", want.Name, err)
	}
	customData := base64.StdEncoding.EncodeToString(userData)
	if len(customData) > maxCustomData {
		return drivers.Machine{}, fmt.Errorf("create vm %q: cloud-init user-data is %d bytes base64, Azure accepts at most %d", want.Name, len(customData), maxCustomData)
	}
	if want.SSH.User == "" || want.SSH.PublicKey == "" {
		return drivers.Machine{}, fmt.Errorf("create vm %q: the machine spec has no admin user or SSH public key", want.Name)
	}
	size := d.size(want)
	zones, err := d.zones(ctx, cli, size)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create vm %q: %w", want.Name, err)
	}
	// By the machine name: every generation of a machine goes to the same zone.
	zone := pickZone(zones, want.Name)
	disk := want.DiskGiB
	if disk == 0 {
		info, _ := drivers.Lookup("azure")
		disk = info.DefaultGiB
	}
	// The public IP and NIC are PUT by name, which would take over (retag,
	// reconfigure, and later delete with the machine) a namesake someone
	// else made in the group: only the machine's own are reused.
	if err := d.checkNamesakes(ctx, cli, rg, cluster, want.Name, vmName); err != nil {
		return drivers.Machine{}, fmt.Errorf("create vm %q: %w", vmName, err)
	}
	shared, err := d.ensureShared(ctx, cli, cluster, want.Metrics)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create vm %q: %w", want.Name, err)
	}

	small := map[string]*string{drivers.TagCluster: ptr(cluster), drivers.TagMachine: ptr(want.Name)}
	if gen > 1 {
		small[drivers.TagGeneration] = ptr(strconv.Itoa(gen))
	}
	var zoneList []*string
	if zone != "" {
		zoneList = []*string{ptr(zone)}
	}

	// Public IP and NIC: PUTs by name are idempotent, so a crash between
	// them and the VM is resumed by the next Create.
	var pip *armnetwork.PublicIPAddress
	if d.cfg.PublicIP {
		out, err := wait(ctx, d, waitResource, "public ip "+pipName(vmName), func(ctx context.Context) (*runtime.Poller[armnetwork.PublicIPAddressesClientCreateOrUpdateResponse], error) {
			return cli.pips.BeginCreateOrUpdate(ctx, rg, pipName(vmName), armnetwork.PublicIPAddress{
				Location: ptr(d.cfg.Location),
				Tags:     small,
				Zones:    zoneList,
				SKU:      &armnetwork.PublicIPAddressSKU{Name: ptr(armnetwork.PublicIPAddressSKUNameStandard), Tier: ptr(armnetwork.PublicIPAddressSKUTierRegional)},
				Properties: &armnetwork.PublicIPAddressPropertiesFormat{
					PublicIPAllocationMethod: ptr(armnetwork.IPAllocationMethodStatic),
					PublicIPAddressVersion:   ptr(armnetwork.IPVersionIPv4),
				},
			}, nil)
		})
		if err != nil {
			return drivers.Machine{}, fmt.Errorf("create public ip for %q: %w", want.Name, d.explain(err))
		}
		pip = &out.PublicIPAddress
	}
	ipcfg := &armnetwork.InterfaceIPConfigurationPropertiesFormat{
		Subnet:                    &armnetwork.Subnet{ID: ptr(shared.subnetID)},
		PrivateIPAllocationMethod: ptr(armnetwork.IPAllocationMethodDynamic),
		Primary:                   ptr(true),
	}
	if pip != nil {
		ipcfg.PublicIPAddress = &armnetwork.PublicIPAddress{ID: pip.ID}
	}
	nicOut, err := wait(ctx, d, waitResource, "network interface "+nicName(vmName), func(ctx context.Context) (*runtime.Poller[armnetwork.InterfacesClientCreateOrUpdateResponse], error) {
		return cli.nics.BeginCreateOrUpdate(ctx, rg, nicName(vmName), armnetwork.Interface{
			Location: ptr(d.cfg.Location),
			Tags:     small,
			Properties: &armnetwork.InterfacePropertiesFormat{
				NetworkSecurityGroup: &armnetwork.SecurityGroup{ID: ptr(shared.nsgID)},
				IPConfigurations:     []*armnetwork.InterfaceIPConfiguration{{Name: ptr("primary"), Properties: ipcfg}},
			},
		}, nil)
	})
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create network interface for %q: %w", want.Name, d.explain(err))
	}
	nic := &nicOut.Interface

	tags := map[string]*string{}
	for k, v := range want.Tags {
		tags[k] = ptr(v)
	}
	tags[drivers.TagCluster] = ptr(cluster)
	tags[drivers.TagMachine] = ptr(want.Name)
	if want.Role != "" {
		tags[drivers.TagRole] = ptr(want.Role)
	}
	if want.Pool != "" {
		tags[drivers.TagPool] = ptr(want.Pool)
	}
	// The first generation's tags stay as they were before generations
	// (no generation tag: GenerationOf reads its absence as 1).
	delete(tags, drivers.TagGeneration)
	if gen > 1 {
		tags[drivers.TagGeneration] = ptr(strconv.Itoa(gen))
	}
	tags[TagHostKey] = ptr(strings.TrimSpace(want.HostKey.Public))
	tags[TagUser] = ptr(want.SSH.User)
	tags[TagZone] = ptr(zone)

	img := d.cfg.Image
	params := armcompute.VirtualMachine{
		Location: ptr(d.cfg.Location),
		Tags:     tags,
		Zones:    zoneList,
		Properties: &armcompute.VirtualMachineProperties{
			HardwareProfile: &armcompute.HardwareProfile{VMSize: ptr(armcompute.VirtualMachineSizeTypes(size))},
			StorageProfile: &armcompute.StorageProfile{
				ImageReference: &armcompute.ImageReference{Publisher: ptr(img.Publisher), Offer: ptr(img.Offer), SKU: ptr(img.SKU), Version: ptr(img.Version)},
				OSDisk: &armcompute.OSDisk{
					Name:         ptr(diskName(vmName)),
					CreateOption: ptr(armcompute.DiskCreateOptionTypesFromImage),
					DiskSizeGB:   ptr(int32(disk)),
					Caching:      ptr(armcompute.CachingTypesReadWrite),
					DeleteOption: ptr(armcompute.DiskDeleteOptionTypesDelete),
					ManagedDisk:  &armcompute.ManagedDiskParameters{StorageAccountType: ptr(armcompute.StorageAccountTypes(d.cfg.osDiskType(want.Pool)))},
				},
			},
			OSProfile: &armcompute.OSProfile{
				ComputerName:  ptr(want.Name),
				AdminUsername: ptr(want.SSH.User),
				CustomData:    ptr(customData),
				LinuxConfiguration: &armcompute.LinuxConfiguration{
					DisablePasswordAuthentication: ptr(true),
					ProvisionVMAgent:              ptr(true),
					SSH: &armcompute.SSHConfiguration{PublicKeys: []*armcompute.SSHPublicKey{{
						Path:    ptr("/home/" + want.SSH.User + "/.ssh/authorized_keys"),
						KeyData: ptr(strings.TrimSpace(want.SSH.PublicKey)),
					}}},
				},
			},
			NetworkProfile: &armcompute.NetworkProfile{NetworkInterfaces: []*armcompute.NetworkInterfaceReference{{
				ID:         nic.ID,
				Properties: &armcompute.NetworkInterfaceReferenceProperties{Primary: ptr(true), DeleteOption: ptr(armcompute.DeleteOptionsDelete)},
			}}},
			DiagnosticsProfile: &armcompute.DiagnosticsProfile{BootDiagnostics: &armcompute.BootDiagnostics{Enabled: ptr(true)}},
		},
	}
	if want.DockerDiskGiB > 0 {
		// The engine's data disk (CIS Docker 1.1.1): an empty managed disk
		// at LUN 0, deleted with the VM; engine.disk formats and mounts it.
		params.Properties.StorageProfile.DataDisks = []*armcompute.DataDisk{{
			Lun:          ptr(int32(dockerDiskLUN)),
			Name:         ptr(dataDiskName(vmName)),
			CreateOption: ptr(armcompute.DiskCreateOptionTypesEmpty),
			DiskSizeGB:   ptr(int32(want.DockerDiskGiB)),
			Caching:      ptr(armcompute.CachingTypesNone),
			DeleteOption: ptr(armcompute.DiskDeleteOptionTypesDelete),
			ManagedDisk:  &armcompute.ManagedDiskParameters{StorageAccountType: ptr(armcompute.StorageAccountTypes(d.cfg.osDiskType(want.Pool)))},
		}}
	}
	out, err := wait(ctx, d, waitVM, "vm "+vmName, func(ctx context.Context) (*runtime.Poller[armcompute.VirtualMachinesClientCreateOrUpdateResponse], error) {
		return cli.vms.BeginCreateOrUpdate(ctx, rg, vmName, params, nil)
	})
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create vm %q (%s, %s, zone %q): %w", vmName, size, img, zone, d.explain(err))
	}
	d.log.InfoContext(ctx, "created vm", "cluster", cluster, "host", want.Name, "generation", gen, "vm", deref(out.ID), "size", size, "image", img.String(), "zone", zone)

	// The disks the VM create makes (the OS disk, the data disk) cannot be
	// tagged by it: they are tagged now so that everything of the cluster
	// carries its tag. They go with the VM (delete option), so a failure
	// here is only logged.
	disks := []string{diskName(vmName)}
	if want.DockerDiskGiB > 0 {
		disks = append(disks, dataDiskName(vmName))
	}
	for _, dk := range disks {
		if _, err := wait(ctx, d, waitResource, "disk "+dk, func(ctx context.Context) (*runtime.Poller[armcompute.DisksClientUpdateResponse], error) {
			return cli.disks.BeginUpdate(ctx, rg, dk, armcompute.DiskUpdate{Tags: maps.Clone(small)}, nil)
		}); err != nil {
			d.log.WarnContext(ctx, "could not tag a disk the vm create made", "host", want.Name, "disk", dk, "err", d.explain(err))
		}
	}
	return d.describe(ctx, cli, &out.VirtualMachine, nic, pip, "running")
}

// checkNamesakes refuses when the group holds a public IP or network
// interface under the names Create gives vmName's that is not this
// machine's: without the cluster's tag, or another machine's.
func (d *Driver) checkNamesakes(ctx context.Context, cli *clients, rg, cluster, machine, vmName string) error {
	mine := func(kind, name string, tags map[string]*string) error {
		if !ownedBy(tags, cluster) || deref(tags[drivers.TagMachine]) != machine {
			return fmt.Errorf("a %s %q exists in resource group %q that provision did not make for machine %q (it lacks the tags %s=%s, %s=%s); rename or remove it, it is left as it is",
				kind, name, rg, machine, drivers.TagCluster, cluster, drivers.TagMachine, machine)
		}
		return nil
	}
	if d.cfg.PublicIP {
		got, err := cli.pips.Get(ctx, rg, pipName(vmName), nil)
		switch {
		case isNotFound(err):
		case err != nil:
			return fmt.Errorf("find public ip %q: %w", pipName(vmName), d.explain(err))
		default:
			if err := mine("public ip", pipName(vmName), got.Tags); err != nil {
				return err
			}
		}
	}
	got, err := cli.nics.Get(ctx, rg, nicName(vmName), nil)
	switch {
	case isNotFound(err):
	case err != nil:
		return fmt.Errorf("find network interface %q: %w", nicName(vmName), d.explain(err))
	default:
		if err := mine("network interface", nicName(vmName), got.Tags); err != nil {
			return err
		}
	}
	return nil
}

// getVM returns the VM with its instance view, or nil when it (or its
// resource group) does not exist.
func (d *Driver) getVM(ctx context.Context, cli *clients, rg, name string) (*armcompute.VirtualMachine, error) {
	got, err := cli.vms.Get(ctx, rg, name, &armcompute.VirtualMachinesClientGetOptions{Expand: ptr(armcompute.InstanceViewTypesInstanceView)})
	if err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, d.explain(err)
	}
	return &got.VirtualMachine, nil
}

// settled waits, for at most waitVM, until a VM an earlier (interrupted)
// create or update left in progress has finished provisioning.
func (d *Driver) settled(ctx context.Context, cli *clients, rg string, vm *armcompute.VirtualMachine) (*armcompute.VirtualMachine, error) {
	name := deref(vm.Name)
	deadline := time.Now().Add(waitVM)
	for {
		switch provisioningState(vm) {
		case "creating", "updating", "migrating":
		default:
			return vm, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("vm %q is still %s after %s", name, provisioningState(vm), waitVM)
		}
		d.log.InfoContext(ctx, "waiting for an earlier create of the vm to finish", "host", name, "state", provisioningState(vm))
		if err := retry.Sleep(ctx, d.pollEvery); err != nil {
			return nil, fmt.Errorf("wait for vm %q to finish provisioning: %w", name, err)
		}
		got, err := d.getVM(ctx, cli, rg, name)
		if err != nil {
			return nil, fmt.Errorf("wait for vm %q to finish provisioning: %w", name, err)
		}
		if got == nil {
			return nil, fmt.Errorf("vm %q disappeared while it was provisioning", name)
		}
		vm = got
	}
}

// startAndDescribe starts a stopped or deallocated VM and returns it with
// its addresses.
func (d *Driver) startAndDescribe(ctx context.Context, cli *clients, rg string, vm *armcompute.VirtualMachine) (drivers.Machine, error) {
	name := deref(vm.Name)
	state := powerState(vm)
	switch state {
	case "stopped", "deallocated", "stopping", "deallocating":
		if _, err := wait(ctx, d, waitVM, "start vm "+name, func(ctx context.Context) (*runtime.Poller[armcompute.VirtualMachinesClientStartResponse], error) {
			return cli.vms.BeginStart(ctx, rg, name, nil)
		}); err != nil {
			return drivers.Machine{}, fmt.Errorf("start vm %q: %w", name, d.explain(err))
		}
		d.log.InfoContext(ctx, "started stopped vm", "host", name, "was", state)
		state = "running"
	}
	nic, pip, err := d.vmNetwork(ctx, cli, vm)
	if err != nil {
		return drivers.Machine{}, err
	}
	return d.describe(ctx, cli, vm, nic, pip, state)
}

// vmNetwork reads the VM's primary NIC and its public IP (nil when none).
func (d *Driver) vmNetwork(ctx context.Context, cli *clients, vm *armcompute.VirtualMachine) (*armnetwork.Interface, *armnetwork.PublicIPAddress, error) {
	name := deref(vm.Name)
	var nicID string
	if p := vm.Properties; p != nil && p.NetworkProfile != nil {
		for _, r := range p.NetworkProfile.NetworkInterfaces {
			if nicID == "" || (r.Properties != nil && deref(r.Properties.Primary)) {
				nicID = deref(r.ID)
			}
		}
	}
	if nicID == "" {
		return nil, nil, fmt.Errorf("vm %q has no network interface", name)
	}
	id, err := arm.ParseResourceID(nicID)
	if err != nil {
		return nil, nil, fmt.Errorf("vm %q: network interface id %q: %w", name, nicID, err)
	}
	got, err := cli.nics.Get(ctx, id.ResourceGroupName, id.Name, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("vm %q: read network interface %s: %w", name, id.Name, d.explain(err))
	}
	nic := &got.Interface
	pipID := ""
	if ip := primaryIPConfig(nic); ip != nil && ip.PublicIPAddress != nil {
		pipID = deref(ip.PublicIPAddress.ID)
	}
	if pipID == "" {
		return nic, nil, nil
	}
	pid, err := arm.ParseResourceID(pipID)
	if err != nil {
		return nil, nil, fmt.Errorf("vm %q: public ip id %q: %w", name, pipID, err)
	}
	pg, err := cli.pips.Get(ctx, pid.ResourceGroupName, pid.Name, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("vm %q: read public ip %s: %w", name, pid.Name, d.explain(err))
	}
	return nic, &pg.PublicIPAddress, nil
}

func primaryIPConfig(nic *armnetwork.Interface) *armnetwork.InterfaceIPConfigurationPropertiesFormat {
	if nic == nil || nic.Properties == nil {
		return nil
	}
	var first *armnetwork.InterfaceIPConfigurationPropertiesFormat
	for _, c := range nic.Properties.IPConfigurations {
		if c.Properties == nil {
			continue
		}
		if first == nil {
			first = c.Properties
		}
		if deref(c.Properties.Primary) {
			return c.Properties
		}
	}
	return first
}

// describe turns a VM and its network into the engine's plain data; it
// needs an address.
func (d *Driver) describe(ctx context.Context, cli *clients, vm *armcompute.VirtualMachine, nic *armnetwork.Interface, pip *armnetwork.PublicIPAddress, state string) (drivers.Machine, error) {
	m := d.machine(vm, nic, pip, state)
	if m.Address == "" {
		return m, fmt.Errorf("vm %q exists but has no address yet", m.Name)
	}
	return m, nil
}

func (d *Driver) machine(vm *armcompute.VirtualMachine, nic *armnetwork.Interface, pip *armnetwork.PublicIPAddress, state string) drivers.Machine {
	tags := tagMap(vm.Tags)
	var private, public string
	if ip := primaryIPConfig(nic); ip != nil {
		private = deref(ip.PrivateIPAddress)
	}
	if pip != nil && pip.Properties != nil {
		public = deref(pip.Properties.IPAddress)
	}
	m := drivers.Machine{
		Name:           tags[drivers.TagMachine],
		ID:             deref(vm.ID),
		Driver:         d.name,
		Address:        private,
		PrivateAddress: private,
		SSH: drivers.SSHEndpoint{
			User:    tags[TagUser],
			Port:    portSSH,
			HostKey: tags[TagHostKey],
			Bastion: d.cfg.Bastion,
		},
		Tags:  tags,
		State: state,
		Zone:  tags[TagZone], // the zone pickZone chose ("" = none)
	}
	if m.Zone == "" && len(vm.Zones) > 0 {
		m.Zone = deref(vm.Zones[0])
	}
	if m.Name == "" {
		// No machine tag: the VM's name less its generation suffix.
		m.Name = strings.TrimSuffix(deref(vm.Name), drivers.InstanceName("", drivers.GenerationOf(tags)))
	}
	if d.cfg.PublicIP && public != "" {
		m.Address = public
	}
	if p := vm.Properties; p != nil && p.StorageProfile != nil {
		for _, dd := range p.StorageProfile.DataDisks {
			if dd != nil && deref(dd.Lun) == dockerDiskLUN && deref(dd.Name) == dataDiskName(deref(vm.Name)) {
				m.DockerDisk = dockerDiskPath
			}
		}
	}
	return m
}

// The engine's data disk is the VM's data disk at LUN 0; the guest sees
// it under the name the Azure udev rules (shipped with the Linux agent in
// Azure's Debian and Ubuntu images) give the LUN.
const (
	dockerDiskLUN  = 0
	dockerDiskPath = "/dev/disk/azure/scsi1/lun0"
)

// dataDiskName is the name of the VM's engine data disk.
func dataDiskName(vm string) string { return vm + "-docker" }

// provisioningState is the VM's provisioning state in lower case.
func provisioningState(vm *armcompute.VirtualMachine) string {
	if vm.Properties == nil {
		return ""
	}
	return strings.ToLower(deref(vm.Properties.ProvisioningState))
}

// powerState reads "PowerState/running" and the like from the VM's
// instance view: "running", "stopped", "deallocated", "starting", ... A VM
// whose provisioning failed is "failed"; "" when unknown.
func powerState(vm *armcompute.VirtualMachine) string {
	if provisioningState(vm) == "failed" {
		return "failed"
	}
	if vm.Properties == nil || vm.Properties.InstanceView == nil {
		return ""
	}
	return statusPower(vm.Properties.InstanceView.Statuses)
}

func statusPower(ss []*armcompute.InstanceViewStatus) string {
	for _, s := range ss {
		if c := deref(s.Code); strings.HasPrefix(c, "PowerState/") {
			return strings.TrimPrefix(c, "PowerState/")
		}
	}
	return ""
}

// Machines lists the cluster's VMs in its resource group, with addresses
// and power state: every generation of a machine, each under the machine
// name with its generation tag, ordered by name and then generation.
func (d *Driver) Machines(ctx context.Context, cluster string) ([]drivers.Machine, error) {
	cli, err := d.clients(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w; %s", err, d.notChecked())
	}
	rg := d.resourceGroup(cluster)
	vms, err := d.listVMs(ctx, cli, rg, cluster)
	if err != nil {
		return nil, fmt.Errorf("list vms of cluster %s: %w", cluster, err)
	}
	if len(vms) == 0 {
		return []drivers.Machine{}, nil
	}
	nics, err := collect(ctx, cli.nics.NewListPager(rg, nil), func(p armnetwork.InterfacesClientListResponse) []*armnetwork.Interface { return p.Value })
	if err != nil {
		return nil, fmt.Errorf("list network interfaces in %s: %w", rg, d.explain(err))
	}
	pips, err := collect(ctx, cli.pips.NewListPager(rg, nil), func(p armnetwork.PublicIPAddressesClientListResponse) []*armnetwork.PublicIPAddress { return p.Value })
	if err != nil {
		return nil, fmt.Errorf("list public ips in %s: %w", rg, d.explain(err))
	}
	nicByID := map[string]*armnetwork.Interface{}
	for _, n := range nics {
		nicByID[strings.ToLower(deref(n.ID))] = n
	}
	pipByID := map[string]*armnetwork.PublicIPAddress{}
	for _, p := range pips {
		pipByID[strings.ToLower(deref(p.ID))] = p
	}
	power := d.powerStates(ctx, cli)
	ms := make([]drivers.Machine, 0, len(vms))
	for _, vm := range vms {
		var nic *armnetwork.Interface
		var pip *armnetwork.PublicIPAddress
		if p := vm.Properties; p != nil && p.NetworkProfile != nil && len(p.NetworkProfile.NetworkInterfaces) > 0 {
			nic = nicByID[strings.ToLower(deref(p.NetworkProfile.NetworkInterfaces[0].ID))]
		}
		if ip := primaryIPConfig(nic); ip != nil && ip.PublicIPAddress != nil {
			pip = pipByID[strings.ToLower(deref(ip.PublicIPAddress.ID))]
		}
		state := power[strings.ToLower(deref(vm.ID))]
		if provisioningState(vm) == "failed" {
			state = "failed"
		}
		ms = append(ms, d.machine(vm, nic, pip, state))
	}
	sort.SliceStable(ms, func(i, j int) bool {
		if ms[i].Name != ms[j].Name {
			return ms[i].Name < ms[j].Name
		}
		return drivers.GenerationOf(ms[i].Tags) < drivers.GenerationOf(ms[j].Tags)
	})
	return ms, nil
}

// listVMs returns the VMs in the group carrying the cluster's tag (none
// when the group does not exist).
func (d *Driver) listVMs(ctx context.Context, cli *clients, rg, cluster string) ([]*armcompute.VirtualMachine, error) {
	all, err := collect(ctx, cli.vms.NewListPager(rg, nil), func(p armcompute.VirtualMachinesClientListResponse) []*armcompute.VirtualMachine { return p.Value })
	if err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, d.explain(err)
	}
	var out []*armcompute.VirtualMachine
	for _, vm := range all {
		if ownedBy(vm.Tags, cluster) {
			out = append(out, vm)
		}
	}
	return out, nil
}

// powerStates maps VM IDs (lower case) to their power state, in one listing
// of the subscription's VMs with their status. On failure the states are
// unknown ("") and the failure is logged: the listing still stands.
func (d *Driver) powerStates(ctx context.Context, cli *clients) map[string]string {
	out := map[string]string{}
	vms, err := collect(ctx, cli.vms.NewListAllPager(&armcompute.VirtualMachinesClientListAllOptions{StatusOnly: ptr("true")}),
		func(p armcompute.VirtualMachinesClientListAllResponse) []*armcompute.VirtualMachine { return p.Value })
	if err != nil {
		d.log.WarnContext(ctx, "cannot read the vms' power states", "err", d.explain(err))
		return out
	}
	for _, vm := range vms {
		if vm.Properties != nil && vm.Properties.InstanceView != nil {
			out[strings.ToLower(deref(vm.ID))] = statusPower(vm.Properties.InstanceView.Statuses)
		}
	}
	return out
}

// Destroy deletes the VM and then its NIC, public IP and OS disk (which
// normally go with it: their delete option is Delete; they are removed
// here too when a create stopped half way). Already gone counts as success.
// Without an ID the VM is generation GenerationOf(m.Tags) of the machine
// (m.Name, else its machine tag): the other generations stay.
func (d *Driver) Destroy(ctx context.Context, m drivers.Machine) error {
	cli, err := d.clients(ctx)
	if err != nil {
		return err
	}
	cluster := m.Tags[drivers.TagCluster]
	rg, name := "", ""
	if machine := cmp.Or(m.Name, m.Tags[drivers.TagMachine]); machine != "" {
		name = drivers.InstanceName(machine, drivers.GenerationOf(m.Tags))
	}
	if m.ID != "" {
		id, err := arm.ParseResourceID(m.ID)
		if err != nil {
			return fmt.Errorf("destroy %q: vm id %q: %w", m.Name, m.ID, err)
		}
		rg, name = id.ResourceGroupName, id.Name
	}
	if cluster == "" {
		return fmt.Errorf("destroy %q: no cluster tag", m.Name)
	}
	if rg == "" {
		rg = d.resourceGroup(cluster)
	}
	if name == "" {
		return fmt.Errorf("destroy: no vm name and no id")
	}
	return d.destroyVM(ctx, cli, rg, name, cluster)
}

// destroyVM removes the VM and what was made for it, each checked to carry
// the cluster's tag.
func (d *Driver) destroyVM(ctx context.Context, cli *clients, rg, name, cluster string) error {
	vm, err := d.getVM(ctx, cli, rg, name)
	if err != nil {
		return fmt.Errorf("destroy %q: %w", name, err)
	}
	if vm != nil {
		if !ownedBy(vm.Tags, cluster) {
			return fmt.Errorf("destroy %q: vm in %q does not carry the tag %s=%s; not deleting it", name, rg, drivers.TagCluster, cluster)
		}
		if _, err := wait(ctx, d, waitVM, "delete vm "+name, func(ctx context.Context) (*runtime.Poller[armcompute.VirtualMachinesClientDeleteResponse], error) {
			return cli.vms.BeginDelete(ctx, rg, name, nil)
		}); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete vm %q: %w", name, d.explain(err))
		}
		d.log.InfoContext(ctx, "deleted vm", "cluster", cluster, "host", name)
	}
	var errs []error
	// The NIC first: it holds the public IP.
	if err := d.deleteNIC(ctx, cli, rg, nicName(name), cluster); err != nil {
		errs = append(errs, err)
	} else {
		if err := d.deletePIP(ctx, cli, rg, pipName(name), cluster); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.deleteDisk(ctx, cli, rg, diskName(name), cluster); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("destroy %q: %w", name, errors.Join(errs...))
	}
	return nil
}

func (d *Driver) deleteNIC(ctx context.Context, cli *clients, rg, name, cluster string) error {
	got, err := cli.nics.Get(ctx, rg, name, nil)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find network interface %q: %w", name, d.explain(err))
	}
	if !ownedBy(got.Tags, cluster) {
		return fmt.Errorf("network interface %q does not carry the tag %s=%s; not deleting it", name, drivers.TagCluster, cluster)
	}
	if _, err := wait(ctx, d, waitResource, "delete network interface "+name, func(ctx context.Context) (*runtime.Poller[armnetwork.InterfacesClientDeleteResponse], error) {
		return cli.nics.BeginDelete(ctx, rg, name, nil)
	}); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete network interface %q: %w", name, d.explain(err))
	}
	d.log.InfoContext(ctx, "deleted network interface", "nic", name)
	return nil
}

func (d *Driver) deletePIP(ctx context.Context, cli *clients, rg, name, cluster string) error {
	got, err := cli.pips.Get(ctx, rg, name, nil)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find public ip %q: %w", name, d.explain(err))
	}
	if !ownedBy(got.Tags, cluster) {
		return fmt.Errorf("public ip %q does not carry the tag %s=%s; not deleting it", name, drivers.TagCluster, cluster)
	}
	if _, err := wait(ctx, d, waitResource, "delete public ip "+name, func(ctx context.Context) (*runtime.Poller[armnetwork.PublicIPAddressesClientDeleteResponse], error) {
		return cli.pips.BeginDelete(ctx, rg, name, nil)
	}); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete public ip %q: %w", name, d.explain(err))
	}
	d.log.InfoContext(ctx, "deleted public ip", "pip", name)
	return nil
}

// deleteDisk removes a leftover OS disk: one tagged with the cluster, or
// one with the machine's disk name that no VM uses and that carries no tags
// at all (the VM made it and the driver stopped before tagging it).
func (d *Driver) deleteDisk(ctx context.Context, cli *clients, rg, name, cluster string) error {
	got, err := cli.disks.Get(ctx, rg, name, nil)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find disk %q: %w", name, d.explain(err))
	}
	if got.ManagedBy != nil && *got.ManagedBy != "" {
		return fmt.Errorf("disk %q is still attached to %s; not deleting it", name, *got.ManagedBy)
	}
	if !ownedBy(got.Tags, cluster) && len(got.Tags) > 0 {
		return fmt.Errorf("disk %q does not carry the tag %s=%s; not deleting it", name, drivers.TagCluster, cluster)
	}
	if len(got.Tags) == 0 && !madeFromImage(got.Disk) {
		// An untagged disk a VM create did not make from its image (an
		// empty disk, a copy): someone's namesake, not a leftover.
		return fmt.Errorf("disk %q carries no tags and was not made from an image by a vm create; provision did not make it, not deleting it", name)
	}
	if _, err := wait(ctx, d, waitResource, "delete disk "+name, func(ctx context.Context) (*runtime.Poller[armcompute.DisksClientDeleteResponse], error) {
		return cli.disks.BeginDelete(ctx, rg, name, nil)
	}); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete disk %q: %w", name, d.explain(err))
	}
	d.log.InfoContext(ctx, "deleted disk", "disk", name)
	return nil
}

// madeFromImage says whether a disk was created from an image, as a VM
// create makes its OS disk.
func madeFromImage(dk armcompute.Disk) bool {
	return dk.Properties != nil && dk.Properties.CreationData != nil && dk.Properties.CreationData.CreateOption != nil &&
		*dk.Properties.CreationData.CreateOption == armcompute.DiskCreateOptionFromImage
}

// pager is what every SDK pager has.
type pager[T any] interface {
	More() bool
	NextPage(ctx context.Context) (T, error)
}

// collect walks a pager to its end, gathering each page's items.
func collect[P, T any](ctx context.Context, p pager[P], items func(P) []T) ([]T, error) {
	var out []T
	for p.More() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		out = append(out, items(page)...)
	}
	return out, nil
}

// size is the VM size for a machine.
func (d *Driver) size(want drivers.MachineSpec) string {
	if want.Size != "" {
		return want.Size
	}
	return d.cfg.VMSize
}

// pickZone spreads a pool's machines across the zones by the index at the
// end of the machine name: <name>-<pool>-1 in the first zone, -2 in the
// second, and so on around. "" when there are no zones.
func pickZone(zones []string, name string) string {
	if len(zones) == 0 {
		return ""
	}
	n := 0
	if i := strings.LastIndexByte(name, '-'); i >= 0 {
		if v, err := strconv.Atoi(name[i+1:]); err == nil && v > 0 {
			n = v - 1
		}
	}
	return zones[n%len(zones)]
}
