package aws

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strconv"
	"strings"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/provision/provision/drivers"
)

const (
	waitRunning    = 10 * time.Minute
	waitTerminated = 10 * time.Minute
)

// liveStates are the instance states Machines reports; Create adopts all of
// them except shutting-down.
var liveStates = []string{"pending", "running", "stopping", "stopped", "shutting-down"}

// Create makes one instance, or returns the one already tagged with this
// cluster and machine name (starting it when stopped).
func (d *Driver) Create(ctx context.Context, cluster string, want drivers.MachineSpec) (drivers.Machine, error) {
	if cluster == "" || want.Name == "" {
		return drivers.Machine{}, errors.New("create instance: cluster and machine name are required")
	}
	gen := max(1, want.Generation)
	defer d.lockName(cluster, drivers.InstanceName(want.Name, gen))()
	cli, err := d.ec2Client(ctx)
	if err != nil {
		return drivers.Machine{}, err
	}

	inst, err := d.findInstance(ctx, cli, cluster, want.Name, gen)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("find instance %q: %w", want.Name, err)
	}
	if inst != nil && inst.State.Name != types.InstanceStateNameShuttingDown {
		d.log.InfoContext(ctx, "adopting existing instance", "cluster", cluster, "host", want.Name, "instance", awssdk.ToString(inst.InstanceId), "state", inst.State.Name)
		return d.startAndWait(ctx, cli, *inst)
	}

	// Everything that can fail without AWS fails here, before anything exists.
	userData, err := drivers.UserData(want)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create instance %q: %w", want.Name, err)
	}
	itype := want.Size
	if itype == "" {
		itype = d.cfg.InstanceType
	}
	arch, err := d.instanceArch(ctx, cli, itype)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create instance %q: %w", want.Name, err)
	}
	img, err := d.image(ctx, cli, arch)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create instance %q: %w", want.Name, err)
	}
	disk := want.DiskGiB
	if disk == 0 {
		info, _ := drivers.Lookup("aws")
		disk = info.DefaultGiB
	}
	if disk < img.minGiB {
		return drivers.Machine{}, fmt.Errorf("create instance %q: disk of %d GiB is smaller than image %s's %d GiB snapshot", want.Name, disk, img.id, img.minGiB)
	}
	shared, err := d.ensureShared(ctx, cli, cluster, want.SSH.PublicKey, want.Metrics)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create instance %q: %w", want.Name, err)
	}
	first := pickSubnet(shared.subnets, want.Name)

	tags := maps.Clone(want.Tags)
	if tags == nil {
		tags = map[string]string{}
	}
	tags[drivers.TagCluster] = cluster
	tags[drivers.TagMachine] = want.Name
	if want.Role != "" {
		tags[drivers.TagRole] = want.Role
	}
	if want.Pool != "" {
		tags[drivers.TagPool] = want.Pool
	}
	tags[drivers.TagGeneration] = strconv.Itoa(gen)
	// The Name tag tells generations apart in the console; the host name
	// stays the machine name.
	tags[tagName] = drivers.InstanceName(want.Name, gen)
	tags[TagHostKey] = strings.TrimSpace(want.HostKey.Public)
	tags[TagUser] = want.SSH.User
	small := map[string]string{drivers.TagCluster: cluster, drivers.TagMachine: want.Name, drivers.TagGeneration: strconv.Itoa(gen), tagName: tags[tagName]}

	in := &ec2.RunInstancesInput{
		ImageId:      awssdk.String(img.id),
		InstanceType: types.InstanceType(itype),
		MinCount:     awssdk.Int32(1),
		MaxCount:     awssdk.Int32(1),
		KeyName:      awssdk.String(shared.keyName),
		UserData:     awssdk.String(base64.StdEncoding.EncodeToString(userData)),
		MetadataOptions: &types.InstanceMetadataOptionsRequest{
			HttpTokens:              types.HttpTokensStateRequired,
			HttpEndpoint:            types.InstanceMetadataEndpointStateEnabled,
			HttpPutResponseHopLimit: awssdk.Int32(1), // containers on the host do not reach IMDS
		},
		BlockDeviceMappings: []types.BlockDeviceMapping{{
			DeviceName: awssdk.String(img.rootDevice),
			Ebs: &types.EbsBlockDevice{
				VolumeSize:          awssdk.Int32(int32(disk)),
				VolumeType:          types.VolumeType(d.cfg.RootVolumeType),
				Encrypted:           awssdk.Bool(true),
				DeleteOnTermination: awssdk.Bool(true),
			},
		}},
		NetworkInterfaces: []types.InstanceNetworkInterfaceSpecification{{
			DeviceIndex:              awssdk.Int32(0),
			Groups:                   []string{shared.sgID},
			AssociatePublicIpAddress: awssdk.Bool(d.cfg.AssociatePublicIP),
			DeleteOnTermination:      awssdk.Bool(true),
		}},
		TagSpecifications: []types.TagSpecification{
			tagSpec(types.ResourceTypeInstance, tags),
			tagSpec(types.ResourceTypeVolume, small),
			tagSpec(types.ResourceTypeNetworkInterface, small),
		},
	}
	if want.DockerDiskGiB > 0 {
		// The engine's data disk (CIS Docker 1.1.1): blank, encrypted and
		// deleted with the instance; engine.disk formats and mounts it.
		in.BlockDeviceMappings = append(in.BlockDeviceMappings, types.BlockDeviceMapping{
			DeviceName: awssdk.String(dockerDiskDevice),
			Ebs: &types.EbsBlockDevice{
				VolumeSize:          awssdk.Int32(int32(want.DockerDiskGiB)),
				VolumeType:          types.VolumeType(d.cfg.RootVolumeType),
				Encrypted:           awssdk.Bool(true),
				DeleteOnTermination: awssdk.Bool(true),
			},
		})
	}
	// The machine's own subnet first; when its zone has no capacity for the
	// type (or does not offer it), the next zones. A refused RunInstances
	// made nothing, so trying again cannot duplicate.
	var (
		out    *ec2.RunInstancesOutput
		subnet types.Subnet
	)
	if want.Logs != nil {
		profile, err := d.ensureLogs(ctx, cluster, want.Logs)
		if err != nil {
			return drivers.Machine{}, fmt.Errorf("create instance %q: awslogs: %w", want.Name, err)
		}
		in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Name: awssdk.String(profile)}
	}
	if d.cfg.LaunchBatch > 1 {
		// Launched together with the pool's other new machines when they
		// can share the call (batch.go); alone otherwise.
		in.NetworkInterfaces[0].SubnetId = shared.subnets[first].SubnetId
		inst, err := d.launchBatched(cli, &launchReq{ctx: ctx, want: want, gen: gen, in: in, tags: tags})
		switch {
		case err == nil:
			d.log.InfoContext(ctx, "created instance", "cluster", cluster, "host", want.Name, "instance", awssdk.ToString(inst.InstanceId),
				"type", itype, "ami", img.id, "subnet", awssdk.ToString(in.NetworkInterfaces[0].SubnetId), "batched", true)
			return d.startAndWait(ctx, cli, inst)
		case !errors.Is(err, errNotBatched):
			return drivers.Machine{}, fmt.Errorf("create instance %q (%s, %s): %w", want.Name, itype, img.id, err)
		}
	}
	for k := range shared.subnets {
		subnet = shared.subnets[(first+k)%len(shared.subnets)]
		in.NetworkInterfaces[0].SubnetId = subnet.SubnetId
		err = runWithProfileRetry(ctx, func() (err error) {
			out, err = cli.RunInstances(ctx, in)
			return err
		})
		d.instancesChanged()
		if err == nil || !isCode(err, "InsufficientInstanceCapacity", "Unsupported") {
			break
		}
		d.log.WarnContext(ctx, "zone refused the instance, trying the next", "host", want.Name,
			"zone", awssdk.ToString(subnet.AvailabilityZone), "code", apiCode(err))
	}
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create instance %q (%s, %s): %w", want.Name, itype, img.id, d.explain(err))
	}
	if len(out.Instances) != 1 {
		return drivers.Machine{}, fmt.Errorf("create instance %q: RunInstances returned %d instances", want.Name, len(out.Instances))
	}
	id := awssdk.ToString(out.Instances[0].InstanceId)
	d.log.InfoContext(ctx, "created instance", "cluster", cluster, "host", want.Name, "instance", id,
		"type", itype, "ami", img.id, "subnet", awssdk.ToString(subnet.SubnetId))
	return d.startAndWait(ctx, cli, out.Instances[0])
}

// startAndWait starts a stopped instance, waits until it runs and returns it
// with its addresses.
func (d *Driver) startAndWait(ctx context.Context, cli *ec2.Client, inst types.Instance) (drivers.Machine, error) {
	id := awssdk.ToString(inst.InstanceId)
	name := tagValue(inst.Tags, drivers.TagMachine)
	if inst.State != nil && (inst.State.Name == types.InstanceStateNameStopped || inst.State.Name == types.InstanceStateNameStopping) {
		if inst.State.Name == types.InstanceStateNameStopping {
			if err := ec2.NewInstanceStoppedWaiter(cli, func(o *ec2.InstanceStoppedWaiterOptions) { o.MinDelay = d.waitMin }).
				Wait(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}}, waitRunning); err != nil {
				return drivers.Machine{}, fmt.Errorf("wait for instance %q (%s) to stop: %w", name, id, err)
			}
		}
		d.instancesChanged()
		if _, err := cli.StartInstances(ctx, &ec2.StartInstancesInput{InstanceIds: []string{id}}); err != nil {
			return drivers.Machine{}, fmt.Errorf("start instance %q (%s): %w", name, id, d.explain(err))
		}
		d.log.InfoContext(ctx, "started stopped instance", "host", name, "instance", id)
	}
	out, err := ec2.NewInstanceRunningWaiter(cli, func(o *ec2.InstanceRunningWaiterOptions) { o.MinDelay = d.waitMin }).
		WaitForOutput(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}}, waitRunning)
	if err != nil {
		// The waiter gives up at once when the instance ends instead
		// (a volume or key it could not use, capacity lost at launch):
		// say what EC2 gives as the reason.
		if got, derr := cli.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}}); derr == nil {
			for _, r := range got.Reservations {
				for _, i := range r.Instances {
					if i.State != nil && (i.State.Name == types.InstanceStateNameTerminated || i.State.Name == types.InstanceStateNameShuttingDown) {
						why := "no reason given"
						if i.StateReason != nil {
							why = awssdk.ToString(i.StateReason.Code) + ": " + awssdk.ToString(i.StateReason.Message)
						}
						return drivers.Machine{}, fmt.Errorf("instance %q (%s) is %s instead of running (%s); apply again to make it anew", name, id, i.State.Name, why)
					}
				}
			}
		}
		return drivers.Machine{}, fmt.Errorf("wait for instance %q (%s) to run: %w", name, id, d.explain(err))
	}
	for _, r := range out.Reservations {
		for _, i := range r.Instances {
			if awssdk.ToString(i.InstanceId) == id {
				// The type's hypervisor says where its data disk shows.
				if _, err := d.instanceArch(ctx, cli, string(i.InstanceType)); err != nil {
					return drivers.Machine{}, fmt.Errorf("instance %q (%s): %w", name, id, err)
				}
				m := d.machine(i)
				if m.Address == "" {
					return m, fmt.Errorf("instance %q (%s) runs but has no address", name, id)
				}
				return m, nil
			}
		}
	}
	return drivers.Machine{}, fmt.Errorf("wait for instance %q (%s): not in the answer", name, id)
}

// findInstance returns the cluster's instance with that machine name and
// generation (no generation tag: the first), or nil. When several exist
// (two processes raced), the oldest wins.
func (d *Driver) findInstance(ctx context.Context, cli *ec2.Client, cluster, name string, gen int) (*types.Instance, error) {
	all, err := d.clusterInstances(ctx, cli, cluster)
	if err != nil || len(all) == 0 {
		return nil, err
	}
	var insts []types.Instance
	for _, i := range all {
		tags := effectiveTags(i)
		if tags[drivers.TagMachine] == name && drivers.GenerationOf(tags) == gen {
			insts = append(insts, i)
		}
	}
	if len(insts) == 0 {
		return nil, nil
	}
	sort.Slice(insts, func(i, j int) bool {
		a, b := awssdk.ToTime(insts[i].LaunchTime), awssdk.ToTime(insts[j].LaunchTime)
		if !a.Equal(b) {
			return a.Before(b)
		}
		return awssdk.ToString(insts[i].InstanceId) < awssdk.ToString(insts[j].InstanceId)
	})
	for i := range insts {
		if insts[i].State.Name != types.InstanceStateNameShuttingDown {
			if len(insts) > 1 {
				d.log.WarnContext(ctx, "several instances carry the same machine name; adopting the oldest", "cluster", cluster, "host", name, "instance", awssdk.ToString(insts[i].InstanceId))
			}
			return &insts[i], nil
		}
	}
	return &insts[0], nil
}

func (d *Driver) describeInstances(ctx context.Context, cli *ec2.Client, fs ...types.Filter) ([]types.Instance, error) {
	out, err := collect(ctx, ec2.NewDescribeInstancesPaginator(cli, &ec2.DescribeInstancesInput{Filters: fs}),
		func(o *ec2.DescribeInstancesOutput) []types.Instance {
			var is []types.Instance
			for _, r := range o.Reservations {
				is = append(is, r.Instances...)
			}
			return is
		}, nil)
	if err != nil {
		return nil, d.explain(err)
	}
	return out, nil
}

// Machines lists the cluster's instances that are not terminated.
func (d *Driver) Machines(ctx context.Context, cluster string) ([]drivers.Machine, error) {
	cli, err := d.ec2Client(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w; %s", err, d.notChecked())
	}
	insts, err := d.describeInstances(ctx, cli, clusterFilter(cluster), filter("instance-state-name", liveStates...))
	if err != nil {
		return nil, fmt.Errorf("list instances of cluster %s: %w", cluster, err)
	}
	ms := make([]drivers.Machine, 0, len(insts))
	for _, i := range insts {
		ms = append(ms, d.machine(i))
	}
	sort.Slice(ms, func(i, j int) bool {
		if ms[i].Name != ms[j].Name {
			return ms[i].Name < ms[j].Name
		}
		return ms[i].ID < ms[j].ID
	})
	return ms, nil
}

// Destroy terminates the instance and waits until it is gone. Its root volume
// and network interface go with it (DeleteOnTermination).
func (d *Driver) Destroy(ctx context.Context, m drivers.Machine) error {
	cli, err := d.ec2Client(ctx)
	if err != nil {
		return err
	}
	id := m.ID
	if id == "" {
		cluster := m.Tags[drivers.TagCluster]
		if cluster == "" {
			return fmt.Errorf("destroy %q: no instance ID and no cluster tag", m.Name)
		}
		inst, err := d.findInstance(ctx, cli, cluster, m.Name, drivers.GenerationOf(m.Tags))
		if err != nil {
			return fmt.Errorf("destroy %q: %w", m.Name, err)
		}
		if inst == nil {
			return nil
		}
		id = awssdk.ToString(inst.InstanceId)
	} else if cluster := m.Tags[drivers.TagCluster]; cluster != "" {
		// An ID (state's) that names an instance provision did not make
		// for this cluster: it stays.
		out, err := cli.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
		if err != nil && !isNotFound(err) {
			return fmt.Errorf("destroy %q: find instance %s: %w", m.Name, id, d.explain(err))
		}
		if out != nil {
			for _, r := range out.Reservations {
				for _, i := range r.Instances {
					if c := tagValue(i.Tags, drivers.TagCluster); c != cluster {
						return fmt.Errorf("destroy %q: instance %s does not carry the tag %s=%s; not terminating it", m.Name, id, drivers.TagCluster, cluster)
					}
				}
			}
		}
	}
	defer d.instancesChanged()
	if _, err := cli.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id}}); err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("terminate instance %q (%s): %w", m.Name, id, d.explain(err))
	}
	d.log.InfoContext(ctx, "terminating instance", "host", m.Name, "instance", id)
	err = ec2.NewInstanceTerminatedWaiter(cli, func(o *ec2.InstanceTerminatedWaiterOptions) { o.MinDelay = d.waitMin }).
		Wait(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}}, waitTerminated)
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("wait for instance %q (%s) to terminate: %w", m.Name, id, err)
	}
	return nil
}

// machine turns an instance into the engine's plain data. SSH.HostKey is
// what the instance's TagHostKey says: observed data, as anyone allowed to
// write tags can change it. The engine pins the key state records (and
// reports a tag that disagrees); after its host key rotation the tag still
// shows the key the instance was created with, which the host no longer
// serves.
func (d *Driver) machine(i types.Instance) drivers.Machine {
	tags := effectiveTags(i)
	m := drivers.Machine{
		Name:           tags[drivers.TagMachine],
		ID:             awssdk.ToString(i.InstanceId),
		Driver:         d.name,
		Address:        awssdk.ToString(i.PrivateIpAddress),
		PrivateAddress: awssdk.ToString(i.PrivateIpAddress),
		SSH: drivers.SSHEndpoint{
			User:    tags[TagUser],
			Port:    portSSH,
			HostKey: tags[TagHostKey],
			Bastion: d.cfg.Bastion,
		},
		Tags: tags,
	}
	if d.cfg.AssociatePublicIP && awssdk.ToString(i.PublicIpAddress) != "" {
		m.Address = awssdk.ToString(i.PublicIpAddress)
	}
	if i.State != nil {
		m.State = string(i.State.Name)
	}
	if i.Placement != nil {
		m.Zone = awssdk.ToString(i.Placement.AvailabilityZone)
	}
	m.DockerDisk = d.dockerDiskPath(i)
	return m
}

// dockerDiskDevice is the block device mapping of a machine's engine data
// disk (MachineSpec.DockerDiskGiB).
const dockerDiskDevice = "/dev/sdf"

// dockerDiskPath is where the instance's guest sees its engine data disk
// ("" when it has none): on Nitro types an NVMe device whose by-id name
// carries the volume ID (the order of NVMe devices is not stable), on Xen
// types /dev/xvdf. The instance type's hypervisor is known from Create
// (instanceArch); without it, nothing is claimed.
func (d *Driver) dockerDiskPath(i types.Instance) string {
	for _, b := range i.BlockDeviceMappings {
		if awssdk.ToString(b.DeviceName) != dockerDiskDevice || b.Ebs == nil {
			continue
		}
		c := d.cache()
		c.mu.Lock()
		hv, ok := c.hypervisor[string(i.InstanceType)]
		c.mu.Unlock()
		switch {
		case !ok:
			return ""
		case hv == types.InstanceTypeHypervisorXen:
			return "/dev/xvdf"
		default:
			vol := awssdk.ToString(b.Ebs.VolumeId)
			if vol == "" {
				return ""
			}
			return "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_" + strings.ReplaceAll(vol, "-", "")
		}
	}
	return ""
}

func tagValue(tags []types.Tag, key string) string {
	for _, t := range tags {
		if awssdk.ToString(t.Key) == key {
			return awssdk.ToString(t.Value)
		}
	}
	return ""
}

// pickSubnet spreads a pool's machines across the availability zones by
// the index at the end of the machine name (machine 1 in the first zone, 2
// in the second, and around), then across the subnets within a zone: two
// subnets in one zone do not put two managers there while another zone has
// none. subnets are sorted by zone (sortSubnets). It returns an index into
// subnets.
func pickSubnet(subnets []types.Subnet, name string) int {
	n := 0
	if i := strings.LastIndexByte(name, '-'); i >= 0 {
		if v, err := strconv.Atoi(name[i+1:]); err == nil && v > 0 {
			n = v - 1
		}
	}
	var zones []string
	byZone := map[string][]int{}
	for i, sn := range subnets {
		z := awssdk.ToString(sn.AvailabilityZone)
		if _, ok := byZone[z]; !ok {
			zones = append(zones, z)
		}
		byZone[z] = append(byZone[z], i)
	}
	if len(zones) == 0 {
		return 0
	}
	in := byZone[zones[n%len(zones)]]
	return in[(n/len(zones))%len(in)]
}
