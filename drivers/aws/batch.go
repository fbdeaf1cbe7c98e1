package aws

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/provision/provision/drivers"
)

// Batched launches.
//
// The engine creates a pool's machines in parallel, one Create each. Each
// Create that would launch an instance hands its request to the batcher,
// which gathers the requests that can share one RunInstances call (same
// instance type, image, disk, subnet, role, pool, admin user, instance
// profile and extra user-data) for batchWindow, or until launch_batch of
// them or the launch tag's 256 characters are reached, and launches them
// with MinCount = MaxCount = n: a 1000-machine pool costs n times fewer
// launch calls, the call EC2 rate-limits hardest.
//
// One call takes one user-data, so it carries every machine's hostname and
// install host key, and cloud-init's Jinja templating picks the instance's
// own by its launch index (templates.BatchUserData). Any process on those
// instances can read the others' install keys through the metadata
// service, as it can read its own today: the engine replaces every key on
// its first connection (hostkey.go), so none of them stays in use.
//
// The call's tags are what the machines share, plus tagLaunch, the machine
// names in launch-index order; each instance's own tags (machine,
// generation, Name, host key) follow in one CreateTags per instance. Until
// they do (or if the process stops in between), effectiveTags reads the
// machine's name and generation from tagLaunch and the instance's launch
// index, so Machines lists it and the next Create adopts it.
//
// A batch the platform refuses (no capacity in the zone, a user-data it
// does not take) is not retried as a batch: each of its machines is then
// launched on its own, the zone fallback included.

// tagLaunch lists, on instances launched together, each one's "name/generation"
// in launch-index order.
const tagLaunch = "provision-launch"

// batchWindow is how long the first request of a batch waits for others.
var batchWindow = 250 * time.Millisecond

// maxUserData is EC2's limit on user-data (before base64), less a margin.
const maxUserData = 16000

type launchReq struct {
	ctx  context.Context
	want drivers.MachineSpec
	gen  int
	in   *ec2.RunInstancesInput // the request as a single launch would send it
	tags map[string]string      // this instance's full tag set
	out  chan launchResult
}

type launchResult struct {
	inst types.Instance
	err  error // errNotBatched: launch this machine on its own
}

var errNotBatched = errors.New("not launched in a batch")

type pendingBatch struct {
	reqs    []*launchReq
	tagLen  int
	flushed bool
}

type batcher struct {
	mu      sync.Mutex
	pending map[string]*pendingBatch
}

// batchKey is what machines launched together must share.
func batchKey(r *launchReq) string {
	in := r.in
	prof := ""
	if in.IamInstanceProfile != nil {
		prof = awssdk.ToString(in.IamInstanceProfile.Name)
	}
	var disks []string
	for _, b := range in.BlockDeviceMappings {
		if b.Ebs != nil {
			disks = append(disks, awssdk.ToString(b.DeviceName)+"="+strconv.Itoa(int(awssdk.ToInt32(b.Ebs.VolumeSize))))
		}
	}
	return strings.Join([]string{
		r.tags[drivers.TagCluster], awssdk.ToString(in.ImageId), string(in.InstanceType), strings.Join(disks, ","),
		awssdk.ToString(in.NetworkInterfaces[0].SubnetId), prof, r.tags[drivers.TagRole], r.tags[drivers.TagPool],
		r.want.SSH.User, r.want.SSH.PublicKey, r.want.UserData,
	}, "\x00")
}

func launchEntry(r *launchReq) string { return r.want.Name + "/" + strconv.Itoa(r.gen) }

// launchBatched queues r for a batched launch and waits for its instance.
// errNotBatched means the batch could not be made or was refused: launch
// this machine alone.
func (d *Driver) launchBatched(cli *ec2.Client, r *launchReq) (types.Instance, error) {
	r.out = make(chan launchResult, 1)
	key := batchKey(r)
	entry := len(launchEntry(r))
	b := &d.batches
	b.mu.Lock()
	if b.pending == nil {
		b.pending = map[string]*pendingBatch{}
	}
	p := b.pending[key]
	if p != nil && p.tagLen+1+entry > 256 {
		// The launch tag is full: launch what is gathered now.
		delete(b.pending, key)
		p.flushed = true
		go d.launchBatch(cli, p.reqs)
		p = nil
	}
	if p == nil {
		p = &pendingBatch{tagLen: -1}
		b.pending[key] = p
		time.AfterFunc(batchWindow, func() {
			b.mu.Lock()
			if p.flushed {
				b.mu.Unlock()
				return
			}
			p.flushed = true
			if b.pending[key] == p {
				delete(b.pending, key)
			}
			reqs := p.reqs
			b.mu.Unlock()
			d.launchBatch(cli, reqs)
		})
	}
	p.reqs = append(p.reqs, r)
	p.tagLen += 1 + entry
	if len(p.reqs) >= d.cfg.LaunchBatch {
		delete(b.pending, key)
		p.flushed = true
		go d.launchBatch(cli, p.reqs)
	}
	b.mu.Unlock()
	select {
	case res := <-r.out:
		return res.inst, res.err
	case <-r.ctx.Done():
		// The launch goes on for the others; an instance made for this
		// machine carries tagLaunch, and the next Create adopts it.
		return types.Instance{}, r.ctx.Err()
	}
}

// launchBatch launches reqs in one RunInstances call (a single machine goes
// back to the single path) and answers each request.
func (d *Driver) launchBatch(cli *ec2.Client, reqs []*launchReq) {
	if len(reqs) == 1 {
		reqs[0].out <- launchResult{err: errNotBatched}
		return
	}
	wants := make([]drivers.MachineSpec, len(reqs))
	for i, r := range reqs {
		wants[i] = r.want
	}
	ud, err := drivers.BatchUserData(wants)
	if err == nil && len(ud) > maxUserData {
		// Too many install keys for one user-data: two smaller batches.
		half := len(reqs) / 2
		go d.launchBatch(cli, reqs[:half])
		d.launchBatch(cli, reqs[half:])
		return
	}
	if err != nil {
		d.log.Warn("machines not launched together; one call each", "count", len(reqs), "reason", err)
		for _, r := range reqs {
			r.out <- launchResult{err: errNotBatched}
		}
		return
	}
	ctx := reqs[0].ctx
	in := *reqs[0].in
	n := int32(len(reqs))
	in.MinCount, in.MaxCount = awssdk.Int32(n), awssdk.Int32(n)
	in.UserData = awssdk.String(base64.StdEncoding.EncodeToString(ud))
	// The tags every machine of the batch shares, and the launch order.
	common := map[string]string{}
	for k, v := range reqs[0].tags {
		same := true
		for _, r := range reqs[1:] {
			if r.tags[k] != v {
				same = false
				break
			}
		}
		if same && k != TagHostKey {
			common[k] = v
		}
	}
	var entries []string
	for _, r := range reqs {
		entries = append(entries, launchEntry(r))
	}
	common[tagLaunch] = strings.Join(entries, " ")
	small := map[string]string{drivers.TagCluster: common[drivers.TagCluster], tagLaunch: common[tagLaunch]}
	in.TagSpecifications = []types.TagSpecification{
		tagSpec(types.ResourceTypeInstance, common),
		tagSpec(types.ResourceTypeVolume, small),
		tagSpec(types.ResourceTypeNetworkInterface, small),
	}
	var out *ec2.RunInstancesOutput
	err = runWithProfileRetry(ctx, func() (err error) {
		out, err = cli.RunInstances(ctx, &in)
		return err
	})
	d.instancesChanged()
	if err != nil || len(out.Instances) != len(reqs) {
		if err == nil {
			err = fmt.Errorf("RunInstances returned %d instances for %d", len(out.Instances), len(reqs))
		}
		d.log.Warn("batched launch refused; one call each", "count", len(reqs), "subnet", awssdk.ToString(in.NetworkInterfaces[0].SubnetId), "code", apiCode(err))
		for _, r := range reqs {
			r.out <- launchResult{err: errNotBatched}
		}
		return
	}
	insts := out.Instances
	sort.Slice(insts, func(i, j int) bool {
		return awssdk.ToInt32(insts[i].AmiLaunchIndex) < awssdk.ToInt32(insts[j].AmiLaunchIndex)
	})
	d.log.Info("launched machines together", "count", len(reqs), "subnet", awssdk.ToString(in.NetworkInterfaces[0].SubnetId), "first", reqs[0].want.Name)
	for k, r := range reqs {
		inst := insts[k]
		// Each instance's own tags (the SDK retries throttling).
		own := map[string]string{}
		for key, v := range r.tags {
			if common[key] != v {
				own[key] = v
			}
		}
		var tags []types.Tag
		for key, v := range own {
			tags = append(tags, types.Tag{Key: awssdk.String(key), Value: awssdk.String(v)})
		}
		sort.Slice(tags, func(i, j int) bool { return *tags[i].Key < *tags[j].Key })
		if _, err := cli.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{awssdk.ToString(inst.InstanceId)}, Tags: tags}); err != nil {
			r.out <- launchResult{err: fmt.Errorf("tag instance %s: %w", awssdk.ToString(inst.InstanceId), d.explain(err))}
			continue
		}
		inst.Tags = append(inst.Tags, tags...)
		r.out <- launchResult{inst: inst}
	}
}

// effectiveTags are an instance's tags, with its machine name, generation
// and Name read from tagLaunch and its launch index when its own tags have
// not been written (a batched launch interrupted before CreateTags).
func effectiveTags(i types.Instance) map[string]string {
	tags := map[string]string{}
	for _, t := range i.Tags {
		tags[awssdk.ToString(t.Key)] = awssdk.ToString(t.Value)
	}
	if tags[drivers.TagMachine] != "" || tags[tagLaunch] == "" || i.AmiLaunchIndex == nil {
		return tags
	}
	entries := strings.Fields(tags[tagLaunch])
	k := int(awssdk.ToInt32(i.AmiLaunchIndex))
	if k < 0 || k >= len(entries) {
		return tags
	}
	name, gen, ok := strings.Cut(entries[k], "/")
	g, err := strconv.Atoi(gen)
	if !ok || err != nil || name == "" {
		return tags
	}
	tags[drivers.TagMachine] = name
	tags[drivers.TagGeneration] = strconv.Itoa(g)
	tags[tagName] = drivers.InstanceName(name, g)
	return tags
}

// instCache keeps the cluster's instance list for Creates that run at once:
// each Create looks up its machine (to adopt what an earlier run made), and
// a pool of hundreds would otherwise cost as many describes. A list is
// reused for instTTL, and never across a launch this driver made (epoch).
type instCache struct {
	mu    sync.Mutex
	epoch uint64
	lists map[string]*instList
}

type instList struct {
	mu    sync.Mutex
	at    time.Time
	epoch uint64
	insts []types.Instance
}

var instTTL = 3 * time.Second

// instancesChanged invalidates the instance lists: an instance was launched, started or terminated.
func (d *Driver) instancesChanged() {
	d.insts.mu.Lock()
	d.insts.epoch++
	d.insts.mu.Unlock()
}

// clusterInstances lists the cluster's live instances, shared by the
// Creates that ask within instTTL of one another.
func (d *Driver) clusterInstances(ctx context.Context, cli *ec2.Client, cluster string) ([]types.Instance, error) {
	c := &d.insts
	c.mu.Lock()
	if c.lists == nil {
		c.lists = map[string]*instList{}
	}
	l := c.lists[cluster]
	if l == nil {
		l = &instList{}
		c.lists[cluster] = l
	}
	c.mu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	c.mu.Lock()
	epoch := c.epoch
	c.mu.Unlock()
	if l.insts != nil && l.epoch == epoch && time.Since(l.at) < instTTL {
		return l.insts, nil
	}
	insts, err := d.describeInstances(ctx, cli, clusterFilter(cluster), filter("instance-state-name", liveStates...))
	if err != nil {
		return nil, err
	}
	if insts == nil {
		insts = []types.Instance{}
	}
	l.insts, l.at, l.epoch = insts, time.Now(), epoch
	return insts, nil
}
