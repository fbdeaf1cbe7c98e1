//go:build acceptance

package acceptance

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
	_ "github.com/provision/provision/drivers/aws" // motoLoadBalancer builds the driver
	"github.com/provision/provision/drivers/aws/awstest"
)

// Set in the re-executed test binary that runs inside the network namespace.
const (
	motoNetnsEnv  = "PROVISION_ACC_MOTO_NETNS"     // "1": this process is the namespaced child
	motoParentNS  = "PROVISION_ACC_MOTO_PARENT_NS" // the parent's /proc/self/ns/net, to prove we left it
	motoBinaryEnv = "PROVISION_ACC_MOTO_BIN"       // the provision binary built outside the namespace
)

// TestAWSMotoEndToEnd drives the real provision binary (plan, apply,
// re-apply, adoption of an interrupted create, destroy) with the aws driver
// against moto_server, EC2's emulator. moto hands out addresses (54.x public,
// 10.x private) that are not hosts, so the whole run happens in a fresh
// network namespace where only loopback is up: the test binary re-executes
// itself under `unshare -n`, starts its own moto_server on 127.0.0.1 there,
// and nothing it does can leave the machine. SSH to the emulator's addresses
// must then fail fast (ssh.connect_timeout) with a per-host error naming the
// host, the step and the address, after every machine was created and
// recorded.
//
// Needs PROVISION_ACC=1, moto_server in PATH and permission to unshare the
// network namespace (root here); it skips otherwise, and fails instead when
// PROVISION_REQUIRE_MOTO=1.
func TestAWSMotoEndToEnd(t *testing.T) {
	if os.Getenv(motoNetnsEnv) == "1" {
		motoInNamespace(t)
		return
	}
	requireAcc(t)
	require := os.Getenv("PROVISION_REQUIRE_MOTO") == "1"
	skipOrFail := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if require {
			t.Fatalf("%s (PROVISION_REQUIRE_MOTO=1)", msg)
		}
		t.Skipf("%s (PROVISION_REQUIRE_MOTO=1 turns this skip into a failure)", msg)
	}
	if _, err := exec.LookPath("moto_server"); err != nil {
		skipOrFail("moto_server not in PATH: install moto[server]")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		skipOrFail("unshare (util-linux) not in PATH: the moto end-to-end test runs only in its own network namespace")
	}
	if out, err := exec.Command("unshare", "-n", "--", "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		skipOrFail("cannot make a network namespace with loopback up (unshare -n needs CAP_SYS_ADMIN): %v: %s", err, strings.TrimSpace(string(out)))
	}
	bin := binary(t) // built here: the namespace has no module proxy
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	parentNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "-n", "--", exe,
		"-test.run=^TestAWSMotoEndToEnd$", "-test.v", "-test.count=1", "-test.timeout=9m")
	cmd.Env = append(os.Environ(), motoNetnsEnv+"=1", motoParentNS+"="+parentNS, motoBinaryEnv+"="+bin)
	out, err := cmd.CombinedOutput()
	t.Logf("namespaced run:\n%s", out)
	if err != nil {
		t.Fatalf("namespaced run failed: %v", err)
	}
	// The child must have run the test, not skipped it.
	if !strings.Contains(string(out), "--- PASS: TestAWSMotoEndToEnd") || strings.Contains(string(out), "--- SKIP") {
		t.Fatal("the namespaced run did not pass the test")
	}
}

// motoInNamespace is the test proper, in the child inside the namespace.
func motoInNamespace(t *testing.T) {
	motoIsolated(t)
	bin := os.Getenv(motoBinaryEnv)
	if bin == "" {
		t.Fatal(motoBinaryEnv + " not set by the parent")
	}
	buildOnce.Do(func() { binPath = bin })

	dir := t.TempDir()
	// Fake credentials in this process only; the operator's AWS setup is
	// kept out entirely, and the SDK never asks the instance metadata service.
	t.Cleanup(awstest.Isolate(dir))
	moto, err := awstest.StartMoto(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(moto.Stop)
	endpoint := moto.URL
	cli := ec2.New(ec2.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(endpoint),
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "testing", SecretAccessKey: "testing"}, nil
		}),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	before := motoAccount(t, ctx, cli)
	ami := motoAMI(t, ctx, cli)

	b := make([]byte, 4)
	rand.Read(b)
	name := "moto" + hex.EncodeToString(b)
	stateDir := filepath.Join(dir, "state")
	specFile := filepath.Join(dir, name+".hcl")
	spec := fmt.Sprintf(`
name = %q

driver "aws" {
  region        = "us-east-1"
  endpoint      = %q
  ami           = %q
  instance_type = "t3.micro"
  create_vpc    = true
  allowed_cidrs = ["198.51.100.7/32"]
}

managers {
  count = 1
}

workers {
  count = 2
  disk  = 30
}

# moto's addresses are not hosts: give up on SSH after a few seconds.
ssh {
  connect_timeout = "3s"
}
`, name, endpoint, ami)
	if err := os.WriteFile(specFile, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(env []string, args ...string) result {
		t.Helper()
		return provision(t, ctx, env, append(args[:1:1], append([]string{specFile, "--state-dir", stateDir}, args[1:]...)...)...)
	}
	machines := []string{name + "-manager-1", name + "-worker-1", name + "-worker-2"}
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer ccancel()
			provision(t, cctx, nil, "destroy", specFile, "--state-dir", stateDir, "--auto-approve")
		}
	})

	// plan without credentials (nothing else is reachable here either) still
	// lists what would be made and says what it could not check.
	r := run([]string{"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_SESSION_TOKEN="}, "plan")
	all := r.stdout + r.stderr
	if r.code != 0 || !strings.Contains(all, "3 to create") || !strings.Contains(all, "no usable AWS credentials") ||
		!strings.Contains(all, "not checked") {
		t.Fatalf("plan without credentials: exit %d\n%s", r.code, all)
	}

	// plan with credentials: three machines to create.
	r = run(nil, "plan")
	if all := r.stdout + r.stderr; r.code != 0 || !strings.Contains(all, "Plan: 3 to create, 0 to adopt") {
		t.Fatalf("plan: exit %d\n%s", r.code, all)
	}

	// apply: every machine is created and recorded, then SSH fails per host.
	r = run(nil, "apply", "--auto-approve")
	all = r.stdout + r.stderr
	if r.code != 1 {
		t.Fatalf("apply against moto should fail at ssh.connect with exit 1, got %d\n%s", r.code, all)
	}
	st := readState(t, stateDir)
	if len(st.Machines) != 3 || st.ClusterID == "" {
		t.Fatalf("state after apply: %+v", st)
	}
	ids := map[string]string{}
	for _, m := range st.Machines {
		if !strings.HasPrefix(m.ID, "i-") || m.Address == "" || m.Status != "created" {
			t.Errorf("state of %s: %+v", m.Name, m)
		}
		ids[m.Name] = m.ID
		if !strings.Contains(all, m.Name+": machine.create changed: "+m.Address) {
			t.Errorf("apply output lacks the create of %s at %s", m.Name, m.Address)
		}
		// The final error names the host, the step and where it tried.
		line := motoLine(all, m.Name+": ssh.connect: ")
		// (The deadline may cut the last dial short: "i/o timeout".)
		if !strings.Contains(line, m.Address+":22") || !strings.Contains(line, "gave up after") ||
			!strings.Contains(line, "network is unreachable") && !strings.Contains(line, "i/o timeout") {
			t.Errorf("ssh.connect error of %s: %q", m.Name, line)
		}
	}
	if len(ids) != 3 {
		t.Fatalf("machines in state: %v", ids)
	}
	for _, n := range machines {
		if ids[n] == "" {
			t.Errorf("%s not in state", n)
		}
	}
	t.Logf("apply: %s (ssh.connect_timeout 3s)", r.took.Round(100*time.Millisecond))
	motoCheckInstances(t, ctx, cli, stateDir, st.ClusterID, ids)

	// Re-apply: the same instances, nothing created.
	r = run(nil, "apply", "--auto-approve")
	if all := r.stdout + r.stderr; r.code != 1 || !strings.Contains(all, "(0 created, 0 removed)") || strings.Contains(all, "machine.create") {
		t.Fatalf("re-apply: exit %d\n%s", r.code, all)
	}
	motoCheckInstances(t, ctx, cli, stateDir, st.ClusterID, ids)

	// An interrupted create: state holds only the intent for worker-2 (what
	// the engine writes before calling the driver), the instance exists.
	interrupted := name + "-worker-2"
	motoForget(t, stateDir, interrupted)
	r = run(nil, "plan")
	if line := motoLine(r.stdout+r.stderr, interrupted); r.code != 0 || !strings.Contains(line, "adopt") || !strings.Contains(line, ids[interrupted]) {
		t.Fatalf("plan after an interrupted create: exit %d, line %q\n%s", r.code, line, r.stdout+r.stderr)
	}
	r = run(nil, "apply", "--auto-approve")
	if all := r.stdout + r.stderr; r.code != 1 || !strings.Contains(all, "(0 created, 0 removed)") {
		t.Fatalf("apply after an interrupted create: exit %d\n%s", r.code, all)
	}
	for _, m := range readState(t, stateDir).Machines {
		if m.Name == interrupted && (m.ID != ids[interrupted] || m.Address == "") {
			t.Errorf("adopted %s: %+v, want %s", m.Name, m, ids[interrupted])
		}
	}
	motoCheckInstances(t, ctx, cli, stateDir, st.ClusterID, ids)

	// Issue 12: the provision-hostkey tag is not a source of trust. Someone
	// who may write tags replaces a machine's tag and stops it: apply
	// starts it again (the path that used to take the key from the tag),
	// reports the disagreement and keeps the key state pins.
	victim := name + "-worker-1"
	pinned := motoPinned(t, stateDir)[victim]
	forged := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJHZv6U96VThcn+hOTRycucI2ed+gkpLaTEZa5/V43JH"
	if _, err := cli.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{ids[victim]},
		Tags: []ec2types.Tag{{Key: aws.String("provision-hostkey"), Value: aws.String(forged)}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: []string{ids[victim]}}); err != nil {
		t.Fatal(err)
	}
	r = run(nil, "apply", "--auto-approve")
	if all := r.stdout + r.stderr; r.code != 1 || !strings.Contains(motoLine(all, "driver reports host key"), victim) || !strings.Contains(all, "is ignored") {
		t.Fatalf("apply after the tag was rewritten: exit %d, want the disagreement reported\n%s", r.code, all)
	}
	if got := motoPinned(t, stateDir)[victim]; got != pinned {
		t.Fatalf("the pinned host key followed the tag: %q, was %q", got, pinned)
	}

	// The load balancer, as apply's phase makes it once a port is published
	// (moto's instances have no swarm to publish one): plan lists it,
	// destroy removes it before the instances.
	elb := motoLoadBalancer(t, ctx, endpoint, st.ClusterID)
	r = run(nil, "plan")
	if all := r.stdout + r.stderr; r.code != 0 || !strings.Contains(all, "load-balancer provision-"+st.ClusterID) || !strings.Contains(all, "ports 80, 443") {
		t.Errorf("plan does not list the load balancer: exit %d\n%s", r.code, all)
	}

	// destroy: the load balancer first, then everything else; the account
	// is as it was.
	r = run(nil, "destroy", "--auto-approve")
	if all := r.stdout + r.stderr; r.code != 0 || !strings.Contains(all, fmt.Sprintf("Destroyed cluster %q", name)) {
		t.Fatalf("destroy: exit %d\n%s", r.code, all)
	}
	if all := r.stdout + r.stderr; !strings.Contains(all, "lb.remove") || strings.Index(all, "lb.remove") > strings.Index(all, "machine.destroy") {
		t.Errorf("destroy did not remove the load balancer before the instances:\n%s", all)
	}
	if lbs, err := elb.DescribeLoadBalancers(ctx, &elbv2.DescribeLoadBalancersInput{}); err != nil || len(lbs.LoadBalancers) != 0 {
		t.Errorf("load balancers left: %v %v", lbs, err)
	}
	if tgs, err := elb.DescribeTargetGroups(ctx, &elbv2.DescribeTargetGroupsInput{}); err != nil || len(tgs.TargetGroups) != 0 {
		t.Errorf("target groups left: %v %v", tgs, err)
	}
	destroyed = true
	for n, id := range ids {
		out, err := cli.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
		if err != nil || len(out.Reservations) != 1 || out.Reservations[0].Instances[0].State.Name != ec2types.InstanceStateNameTerminated {
			t.Errorf("%s (%s) not terminated: %v %+v", n, id, err, out)
		}
	}
	tagged := ec2types.Filter{Name: aws.String("tag:" + drivers.TagCluster), Values: []string{st.ClusterID}}
	if left := motoAccount(t, ctx, cli, tagged); len(left) > 0 {
		t.Errorf("left tagged with cluster %s: %v", st.ClusterID, left)
	}
	if after := motoAccount(t, ctx, cli); !slices.Equal(before, after) {
		t.Errorf("account not as before:\n before %v\n after  %v", before, after)
	}
	// A second destroy finds nothing and succeeds.
	if r := run(nil, "destroy", "--auto-approve"); r.code != 0 {
		t.Errorf("second destroy: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// motoIsolated fails unless this process is in a network namespace of its
// own with nothing but loopback: nothing the test does may leave the machine.
func motoIsolated(t *testing.T) {
	t.Helper()
	ns, err := os.Readlink("/proc/self/ns/net")
	if err != nil || ns == os.Getenv(motoParentNS) {
		t.Fatalf("not in a network namespace of its own (%s, parent %s): %v", ns, os.Getenv(motoParentNS), err)
	}
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v: %s", err, out)
	}
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback == 0 && i.Flags&net.FlagUp != 0 {
			t.Fatalf("interface %s is up in the namespace", i.Name)
		}
		addrs, _ := i.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() {
				t.Fatalf("non-loopback address %s on %s", a, i.Name)
			}
		}
	}
	// A public address must be unreachable at once.
	if c, err := net.DialTimeout("tcp", "192.0.2.1:22", time.Second); err == nil {
		c.Close()
		t.Fatal("reached 192.0.2.1 from inside the namespace")
	}
}

// motoAMI picks an x86_64 EBS image from moto's own catalogue (it ships no
// Debian images, so the spec names one).
func motoAMI(t *testing.T, ctx context.Context, cli *ec2.Client) string {
	t.Helper()
	out, err := cli.DescribeImages(ctx, &ec2.DescribeImagesInput{Filters: []ec2types.Filter{
		{Name: aws.String("architecture"), Values: []string{"x86_64"}},
		{Name: aws.String("root-device-type"), Values: []string{"ebs"}},
		{Name: aws.String("state"), Values: []string{"available"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range out.Images {
		if aws.ToString(im.RootDeviceName) != "" {
			return aws.ToString(im.ImageId)
		}
	}
	t.Fatal("moto lists no x86_64 EBS image")
	return ""
}

// motoCheckInstances asserts through the SDK that the cluster has exactly the
// recorded instances, running, with the host key pinned in state being the one
// provision generated and handed to cloud-init in the user-data.
func motoCheckInstances(t *testing.T, ctx context.Context, cli *ec2.Client, stateDir, cluster string, ids map[string]string) {
	t.Helper()
	pinned := motoPinned(t, stateDir)
	out, err := cli.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []ec2types.Filter{
		{Name: aws.String("tag:" + drivers.TagCluster), Values: []string{cluster}},
		{Name: aws.String("instance-state-name"), Values: []string{"pending", "running", "stopping", "stopped"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	n := 0
	for _, res := range out.Reservations {
		for _, i := range res.Instances {
			n++
			var machine, hostKey string
			for _, tag := range i.Tags {
				switch aws.ToString(tag.Key) {
				case drivers.TagMachine:
					machine = aws.ToString(tag.Value)
				case "provision-hostkey":
					hostKey = aws.ToString(tag.Value)
				}
			}
			got[machine] = aws.ToString(i.InstanceId)
			if i.MetadataOptions == nil || i.MetadataOptions.HttpTokens != ec2types.HttpTokensStateRequired {
				t.Errorf("%s: IMDSv2 not required", machine)
			}
			motoCheckHostKey(t, ctx, cli, machine, aws.ToString(i.InstanceId), hostKey, pinned[machine])
		}
	}
	if n != len(ids) || !maps.Equal(got, ids) {
		t.Fatalf("instances of the cluster: %v (%d), want %v", got, n, ids)
	}
}

// motoCheckHostKey: the key pinned in state for the machine equals the one
// on its tag and the public half of the private key in its user-data.
func motoCheckHostKey(t *testing.T, ctx context.Context, cli *ec2.Client, machine, id, tagKey, pinned string) {
	t.Helper()
	attr, err := cli.DescribeInstanceAttribute(ctx, &ec2.DescribeInstanceAttributeInput{InstanceId: aws.String(id), Attribute: ec2types.InstanceAttributeNameUserData})
	if err != nil || attr.UserData == nil {
		t.Fatalf("%s: user data: %v", machine, err)
	}
	ud, err := base64.StdEncoding.DecodeString(aws.ToString(attr.UserData.Value))
	if err != nil {
		t.Fatalf("%s: user data: %v", machine, err)
	}
	begin := strings.Index(string(ud), "-----BEGIN OPENSSH PRIVATE KEY-----")
	end := strings.Index(string(ud), "-----END OPENSSH PRIVATE KEY-----")
	if begin < 0 || end < begin {
		t.Fatalf("%s: no host key in the user data", machine)
	}
	var pem strings.Builder
	for _, l := range strings.Split(string(ud[begin:end+len("-----END OPENSSH PRIVATE KEY-----")]), "\n") {
		pem.WriteString(strings.TrimSpace(l) + "\n")
	}
	signer, err := ssh.ParsePrivateKey([]byte(pem.String()))
	if err != nil {
		t.Fatalf("%s: host key in the user data: %v", machine, err)
	}
	fromUserData := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	if tagKey != fromUserData {
		t.Errorf("%s: tagged host key %q is not the one handed to cloud-init %q", machine, tagKey, fromUserData)
	}
	if pinned != fromUserData {
		t.Errorf("%s: host key pinned in state %q is not the one handed to cloud-init %q", machine, pinned, fromUserData)
	}
}

// motoPinned returns the host keys pinned in state, by machine.
func motoPinned(t *testing.T, stateDir string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stateDir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Machines []struct {
			Name string `json:"name"`
			SSH  struct {
				HostKey string `json:"host_key"`
			} `json:"ssh"`
		} `json:"machines"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range st.Machines {
		out[m.Name] = m.SSH.HostKey
	}
	return out
}

// motoForget rewrites the machine's state entry into what the engine records
// before it asks the driver: status creating, the host key it generated, no
// ID and no address.
func motoForget(t *testing.T, stateDir, machine string) {
	t.Helper()
	p := filepath.Join(stateDir, "state.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, m := range st["machines"].([]any) {
		m := m.(map[string]any)
		if m["name"] != machine {
			continue
		}
		found = true
		hk := m["ssh"].(map[string]any)["host_key"]
		for _, k := range []string{"id", "address", "private_address", "tags", "state", "steps", "node_id"} {
			delete(m, k)
		}
		m["ssh"] = map[string]any{"host_key": hk}
		m["status"] = "creating"
	}
	if !found {
		t.Fatalf("%s not in state", machine)
	}
	if b, err = json.MarshalIndent(st, "", "  "); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// motoLine returns the first output line containing s.
func motoLine(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

// motoAccount lists every resource of the kinds the driver makes (instances
// that are not terminated, VPCs, subnets, gateways, route tables, security
// groups, key pairs, volumes, network interfaces), sorted.
//
// With filters (the cluster tag), only what matches them.
func motoAccount(t *testing.T, ctx context.Context, cli *ec2.Client, fs ...ec2types.Filter) []string {
	t.Helper()
	var out []string
	add := func(kind string, id *string) { out = append(out, kind+" "+aws.ToString(id)) }
	errs := []error{}
	insts, err := cli.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: fs})
	errs = append(errs, err)
	if err == nil {
		for _, r := range insts.Reservations {
			for _, i := range r.Instances {
				if i.State.Name != ec2types.InstanceStateNameTerminated {
					add("instance", i.InstanceId)
				}
			}
		}
	}
	vpcs, err := cli.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{Filters: fs})
	errs = append(errs, err)
	if err == nil {
		for _, v := range vpcs.Vpcs {
			add("vpc", v.VpcId)
		}
	}
	sns, err := cli.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{Filters: fs})
	errs = append(errs, err)
	if err == nil {
		for _, s := range sns.Subnets {
			add("subnet", s.SubnetId)
		}
	}
	igws, err := cli.DescribeInternetGateways(ctx, &ec2.DescribeInternetGatewaysInput{Filters: fs})
	errs = append(errs, err)
	if err == nil {
		for _, g := range igws.InternetGateways {
			add("igw", g.InternetGatewayId)
		}
	}
	rts, err := cli.DescribeRouteTables(ctx, &ec2.DescribeRouteTablesInput{Filters: fs})
	errs = append(errs, err)
	if err == nil {
		for _, r := range rts.RouteTables {
			add("route-table", r.RouteTableId)
		}
	}
	sgs, err := cli.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: fs})
	errs = append(errs, err)
	if err == nil {
		for _, g := range sgs.SecurityGroups {
			add("sg", g.GroupId)
		}
	}
	kps, err := cli.DescribeKeyPairs(ctx, &ec2.DescribeKeyPairsInput{Filters: fs})
	errs = append(errs, err)
	if err == nil {
		for _, k := range kps.KeyPairs {
			add("key-pair", k.KeyName)
		}
	}
	vols, err := cli.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: fs})
	errs = append(errs, err)
	if err == nil {
		for _, v := range vols.Volumes {
			add("volume", v.VolumeId)
		}
	}
	enis, err := cli.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: fs})
	errs = append(errs, err)
	if err == nil {
		for _, n := range enis.NetworkInterfaces {
			add("eni", n.NetworkInterfaceId)
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("list the account: %v", err)
	}
	sort.Strings(out)
	return out
}

// motoLoadBalancer makes the cluster's load balancer through the driver's
// own SyncPorts, in this process, against moto: what apply's load-balancer
// phase does when services publish 80 and 443. It returns an ELBv2 client.
func motoLoadBalancer(t *testing.T, ctx context.Context, endpoint, clusterID string) *elbv2.Client {
	t.Helper()
	src := fmt.Sprintf("region = \"us-east-1\"\nendpoint = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", endpoint)
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "aws.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	info, _ := drivers.Lookup("aws")
	d, diags := info.New(f.Body, drivers.Options{Name: "aws", Log: slog.New(slog.DiscardHandler)})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	st, err := d.(drivers.Balancer).SyncPorts(ctx, clusterID, []drivers.PublishedPort{{Port: 80, Protocol: "tcp", Sources: []string{"0.0.0.0/0"}}, {Port: 443, Protocol: "tcp", Sources: []string{"0.0.0.0/0"}}})
	if err != nil || !st.Exists || st.Targets != 3 {
		t.Fatalf("load balancer: %+v %v", st, err)
	}
	return elbv2.New(elbv2.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(endpoint),
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "testing", SecretAccessKey: "testing"}, nil
		}),
	})
}
