package aws

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	awsretry "github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"

	"github.com/provision/provision/drivers"
)

// countCalls makes d's EC2 client count the operations it sends.
func countCalls(t *testing.T, d *Driver) func(op string) int {
	t.Helper()
	c, err := d.ec2Client(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	calls := map[string]int{}
	d.client = ec2.New(c.Options(), func(o *ec2.Options) {
		o.APIOptions = append(o.APIOptions, func(s *middleware.Stack) error {
			return s.Initialize.Add(middleware.InitializeMiddlewareFunc("countCalls",
				func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
					mu.Lock()
					calls[middleware.GetOperationName(ctx)]++
					mu.Unlock()
					return next.HandleInitialize(ctx, in)
				}), middleware.Before)
		})
	})
	return func(op string) int {
		mu.Lock()
		defer mu.Unlock()
		return calls[op]
	}
}

// TestBatchedLaunch: machines of one pool created at once go out in one
// RunInstances per subnet (create_vpc spreads them over the zones), each
// instance with its own tags and one user-data naming every machine of its
// call; their lookups share describes; a later Create adopts, never
// relaunches.
func TestBatchedLaunch(t *testing.T) {
	cli := sdk(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	d := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\nlaunch_batch = 4\n", testAMI(t)))
	calls := countCalls(t, d)
	var wants []drivers.MachineSpec
	for i := 1; i <= 9; i++ {
		wants = append(wants, spec(cluster, "worker", i))
	}
	ms := make([]drivers.Machine, len(wants))
	var wg sync.WaitGroup
	errs := make([]error, len(wants))
	for i, w := range wants {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ms[i], errs[i] = d.Create(ctx, cluster, w)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("create %s: %v", wants[i].Name, err)
		}
	}
	// 9 workers over 3 zones: 3 per subnet, each subnet's in one call.
	runs := calls("RunInstances")
	out, err := cli.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []types.Filter{clusterFilter(cluster)}})
	if err != nil {
		t.Fatal(err)
	}
	subnets := map[string]bool{}
	n := 0
	for _, r := range out.Reservations {
		var names []string
		for _, i := range r.Instances {
			n++
			subnets[awssdk.ToString(i.SubnetId)] = true
			names = append(names, tagValue(i.Tags, drivers.TagMachine))
			if tagValue(i.Tags, TagHostKey) != testHostKey.Public || tagValue(i.Tags, drivers.TagGeneration) != "1" ||
				tagValue(i.Tags, tagName) != tagValue(i.Tags, drivers.TagMachine) || tagValue(i.Tags, drivers.TagPool) != "worker" {
				t.Errorf("instance %s tags %v", awssdk.ToString(i.InstanceId), i.Tags)
			}
		}
		if len(r.Instances) > 1 {
			launch := tagValue(r.Instances[0].Tags, tagLaunch)
			for _, nm := range names {
				if !strings.Contains(" "+launch+" ", " "+nm+"/1 ") {
					t.Errorf("launch tag %q lacks %s", launch, nm)
				}
			}
			ua, err := cli.DescribeInstanceAttribute(ctx, &ec2.DescribeInstanceAttributeInput{InstanceId: r.Instances[0].InstanceId, Attribute: types.InstanceAttributeNameUserData})
			if err != nil {
				t.Fatal(err)
			}
			ud, _ := base64.StdEncoding.DecodeString(awssdk.ToString(ua.UserData.Value))
			if !strings.HasPrefix(string(ud), "## template: jinja\n") {
				t.Errorf("batch user-data:\n%.200s", ud)
			}
			for _, nm := range names {
				if !strings.Contains(string(ud), `hostname: "`+nm+`"`) {
					t.Errorf("batch user-data lacks %s", nm)
				}
			}
		}
	}
	if n != 9 || runs != len(subnets) || len(out.Reservations) != len(subnets) {
		t.Errorf("%d instances in %d reservations over %d subnets with %d RunInstances calls; want 9 in one call per subnet", n, len(out.Reservations), len(subnets), runs)
	}
	// One running-waiter describe per machine; the nine lookups share the
	// cluster's list (a describe each would make 18).
	if describes := calls("DescribeInstances"); describes > 9+3 {
		t.Errorf("DescribeInstances: %d for 9 machines; want the lookups shared", describes)
	}
	t.Logf("9 machines: %d RunInstances, %d DescribeInstances, %d CreateTags", runs, calls("DescribeInstances"), calls("CreateTags"))
	for i, m := range ms {
		if m.Name != wants[i].Name || m.SSH.HostKey != testHostKey.Public || m.Address == "" {
			t.Errorf("created %+v", m)
		}
	}
	// Create again: every machine adopted, nothing launched.
	for _, w := range wants {
		m, err := d.Create(ctx, cluster, w)
		if err != nil || m.Name != w.Name {
			t.Errorf("create %s again: %v %+v", w.Name, err, m)
		}
	}
	if calls("RunInstances") != runs {
		t.Errorf("a second Create launched: %d RunInstances", calls("RunInstances"))
	}
	for _, m := range ms {
		if err := d.Destroy(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, cli, cluster)
}

// TestBatchTagsInterrupted: instances of a batched launch whose own tags
// were never written (the process stopped after RunInstances) are listed
// by the names their launch tag and launch index give, and Create adopts
// them instead of launching again.
func TestBatchTagsInterrupted(t *testing.T) {
	cli := sdk(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	d := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", testAMI(t)))
	calls := countCalls(t, d)
	a, b := spec(cluster, "worker", 7), spec(cluster, "worker", 8)
	// The shared resources (VPC, subnets, key pair) as a first Create makes them.
	shared, err := d.ensureShared(ctx, d.client, cluster, a.SSH.PublicKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	common := map[string]string{drivers.TagCluster: cluster, drivers.TagRole: "worker", drivers.TagPool: "worker", TagUser: "provision",
		tagLaunch: a.Name + "/1 " + b.Name + "/1"}
	_, err = cli.RunInstances(ctx, &ec2.RunInstancesInput{
		ImageId: awssdk.String(testAMI(t)), InstanceType: types.InstanceTypeT3Micro, MinCount: awssdk.Int32(2), MaxCount: awssdk.Int32(2),
		SubnetId: shared.subnets[0].SubnetId, TagSpecifications: []types.TagSpecification{tagSpec(types.ResourceTypeInstance, common)},
	})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := d.Machines(ctx, cluster)
	if err != nil || len(ms) != 2 || ms[0].Name != a.Name || ms[1].Name != b.Name {
		t.Fatalf("Machines: %v %+v", err, ms)
	}
	if ms[1].Tags[drivers.TagGeneration] != "1" || ms[1].Tags[tagName] != b.Name {
		t.Errorf("derived tags %v", ms[1].Tags)
	}
	m, err := d.Create(ctx, cluster, b)
	if err != nil || m.ID != ms[1].ID {
		t.Fatalf("Create adopts %s (%s): %v %+v", b.Name, ms[1].ID, err, m)
	}
	if calls("RunInstances") != 0 {
		t.Errorf("RunInstances sent %d times for machines that exist", calls("RunInstances"))
	}
	for _, m := range ms {
		if err := d.Destroy(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, cli, cluster)
}

// TestThrottledCallsRetried: EC2 answering RequestLimitExceeded (its
// throttling) to launches, describes and tags, twice each, slows
// Create down but does not fail it: the SDK's retryer backs off.
func TestThrottledCallsRetried(t *testing.T) {
	cli := sdk(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	d := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", testAMI(t)))
	c, err := d.ec2Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	throttled := map[string]int{} // under throttling's lock
	d.client = ec2.New(c.Options(), throttling(func(op string) bool {
		hit := (op == "RunInstances" || op == "DescribeInstances" || op == "CreateTags") && throttled[op] < 2
		if hit {
			throttled[op]++
		}
		return hit
	}))
	m, err := d.Create(ctx, cluster, spec(cluster, "worker", 1))
	if err != nil {
		t.Fatalf("Create under throttling: %v", err)
	}
	if throttled["RunInstances"] != 2 || throttled["DescribeInstances"] != 2 {
		t.Errorf("throttled answers given: %v", throttled)
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, cli, cluster)
}

// TestSustainedThrottlingHasNoQuota: under throttling longer than the SDK's
// client-side retry quota allows (about a hundred retries per client), the
// driver's retryer keeps backing off and every call succeeds; the SDK's
// default retryer, as a control, gives up on some with its quota exhausted.
func TestSustainedThrottlingHasNoQuota(t *testing.T) {
	_ = sdk(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	d := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", testAMI(t)))
	c, err := d.ec2Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const calls, throttles = 40, 160 // 4 throttled answers a call on average
	run := func(retryer func() awssdk.Retryer) (failed int, firstErr error) {
		var mu sync.Mutex
		left := throttles
		cli := ec2.New(c.Options(), func(o *ec2.Options) { o.Retryer = retryer() }, throttling(func(string) bool {
			left--
			return left >= 0
		}))
		var wg sync.WaitGroup
		for range calls {
			wg.Go(func() {
				_, err := cli.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []types.Filter{clusterFilter(cluster)}})
				if err != nil {
					mu.Lock()
					failed++
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		return failed, firstErr
	}
	fast := 20 * time.Millisecond
	if failed, err := run(func() awssdk.Retryer {
		return awsretry.NewStandard(func(o *awsretry.StandardOptions) { o.MaxAttempts = retryAttempts; o.MaxBackoff = fast })
	}); failed == 0 || !strings.Contains(err.Error(), "quota") {
		t.Fatalf("control: the SDK's quota never ran dry (%d failed, %v): the test proves nothing", failed, err)
	}
	if failed, err := run(func() awssdk.Retryer { return newRetryer(fast) }); failed > 0 {
		t.Errorf("%d of %d calls failed under sustained throttling: %v", failed, calls, err)
	}
}

// throttling makes an EC2 client answer RequestLimitExceeded (EC2's
// throttling) to every attempt hit says so of, by operation name; hit runs
// under a lock, one attempt at a time.
func throttling(hit func(op string) bool) func(*ec2.Options) {
	var mu sync.Mutex
	return func(o *ec2.Options) {
		o.APIOptions = append(o.APIOptions, func(s *middleware.Stack) error {
			return s.Deserialize.Add(middleware.DeserializeMiddlewareFunc("throttle",
				func(ctx context.Context, in middleware.DeserializeInput, next middleware.DeserializeHandler) (middleware.DeserializeOutput, middleware.Metadata, error) {
					mu.Lock()
					throttled := hit(middleware.GetOperationName(ctx))
					mu.Unlock()
					if throttled {
						return middleware.DeserializeOutput{}, middleware.Metadata{}, &smithy.GenericAPIError{Code: "RequestLimitExceeded", Message: "Request limit exceeded."}
					}
					return next.HandleDeserialize(ctx, in)
				}), middleware.After)
		})
	}
}
