//go:build acceptance

package acceptance

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	dswarm "github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
)

// TestAWSEndToEnd runs the real binary against real EC2: a 1-manager,
// 1-worker cluster on the smallest practical instance type, checked from
// outside (nodes Ready over mutual TLS, a certless client refused on 2376, an
// overlay service whose tasks answer across hosts), then destroyed, with
// nothing tagged with the cluster left in the account.
//
// It costs money and needs:
//
//	PROVISION_ACC=1
//	AWS credentials: AWS_ACCESS_KEY_ID (+ AWS_SECRET_ACCESS_KEY) or AWS_PROFILE
//	PROVISION_ACC_AWS_ALLOWED_CIDRS: comma-separated CIDRs that may reach SSH
//	    and 2376 (this machine's public address as a /32); the test never asks
//	    an outside service for it
//
// Optional: AWS_REGION (default us-east-1), PROVISION_ACC_AWS_INSTANCE_TYPE
// (default t3.micro).
func TestAWSEndToEnd(t *testing.T) {
	var missing []string
	if os.Getenv("PROVISION_ACC") != "1" {
		missing = append(missing, "PROVISION_ACC=1")
	}
	if os.Getenv("AWS_ACCESS_KEY_ID") == "" && os.Getenv("AWS_PROFILE") == "" {
		missing = append(missing, "AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")
	}
	cidrs := strings.TrimSpace(os.Getenv("PROVISION_ACC_AWS_ALLOWED_CIDRS"))
	if cidrs == "" {
		missing = append(missing, "PROVISION_ACC_AWS_ALLOWED_CIDRS (this machine's public address as a /32)")
	}
	if len(missing) > 0 {
		t.Skipf("real-AWS acceptance test (creates billable instances) skipped; missing: %s", strings.Join(missing, "; "))
	}
	region := os.Getenv("AWS_REGION")
	if region == "" {
		region = "us-east-1"
	}
	itype := os.Getenv("PROVISION_ACC_AWS_INSTANCE_TYPE")
	if itype == "" {
		itype = "t3.micro"
	}

	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	dir := t.TempDir()
	name := fmt.Sprintf("acc%d", time.Now().UnixNano()%1000000)
	var quoted []string
	for _, c := range strings.Split(cidrs, ",") {
		quoted = append(quoted, fmt.Sprintf("%q", strings.TrimSpace(c)))
	}
	specFile := filepath.Join(dir, name+".hcl")
	spec := fmt.Sprintf(`
name = %q
driver "aws" {
  region        = %q
  instance_type = %q
  allowed_cidrs = [%s]
}
managers { count = 1 }
workers  { count = 1 }
logging {
  driver         = "awslogs"
  options        = { awslogs-region = %q, awslogs-group = %q }
  retention_days = 1
}
`, name, region, itype, strings.Join(quoted, ", "), region, name+"-logs")
	if err := os.WriteFile(specFile, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}

	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Minute)
			defer ccancel()
			awsRun(t, cctx, dir, "destroy", specFile, "--auto-approve")
		}
	})

	awsMustRun(t, ctx, dir, "apply", specFile, "--auto-approve")

	// status --json: both nodes, and the cluster ID the resources are tagged with.
	status := parseStatus(t, awsMustRun(t, ctx, dir, "status", specFile, "--json").stdout)
	if len(status.Nodes) != 2 || status.ClusterID == "" {
		t.Fatalf("status: %+v", status)
	}

	// Every node's engine over mutual TLS, with the env the CLI prints.
	engines := map[string]*client.Client{}
	var mgrName string
	var tlsDir string
	for _, n := range status.Nodes {
		env := awsParseEnv(awsMustRun(t, ctx, dir, "env", specFile, n.Name).stdout)
		if env["DOCKER_TLS_VERIFY"] != "1" || env["DOCKER_HOST"] == "" || env["DOCKER_CERT_PATH"] == "" {
			t.Fatalf("env %s: %v", n.Name, env)
		}
		tlsDir = env["DOCKER_CERT_PATH"]
		c, err := client.NewClientWithOpts(client.WithHost(env["DOCKER_HOST"]),
			client.WithTLSClientConfig(filepath.Join(tlsDir, "ca.pem"), filepath.Join(tlsDir, "cert.pem"), filepath.Join(tlsDir, "key.pem")),
			client.WithAPIVersionNegotiation())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.ServerVersion(ctx); err != nil {
			t.Fatalf("%s: engine over TLS: %v", n.Name, err)
		}
		engines[n.Name] = c
		if n.Role == "manager" {
			mgrName = n.Name
		}
	}
	mgr := engines[mgrName]
	if mgr == nil {
		t.Fatalf("no manager in %+v", status.Nodes)
	}
	nodes, err := mgr.NodeList(ctx, dswarm.NodeListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 {
		t.Fatalf("swarm has %d nodes, want 2", len(nodes))
	}
	var hostnames []string
	for _, n := range nodes {
		if n.Status.State != dswarm.NodeStateReady {
			t.Errorf("node %s is %s", n.Description.Hostname, n.Status.State)
		}
		hostnames = append(hostnames, n.Description.Hostname)
	}

	// 2376 refuses a client without a certificate, and plain HTTP.
	for _, n := range status.Nodes {
		addr := net.JoinHostPort(n.Address, "2376")
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err == nil {
			// TLS 1.3 reports the missing client certificate on first read.
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err = conn.Write([]byte("GET /version HTTP/1.0\r\n\r\n")); err == nil {
				buf := make([]byte, 64)
				_, err = conn.Read(buf)
			}
			conn.Close()
		}
		if err == nil {
			t.Errorf("%s: a client without a certificate was served on 2376", n.Name)
		}
		if c, err := net.DialTimeout("tcp", addr, 10*time.Second); err == nil {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte("GET /version HTTP/1.0\r\n\r\n"))
			buf := make([]byte, 512)
			k, _ := c.Read(buf)
			c.Close()
			if strings.Contains(string(buf[:k]), "ApiVersion") {
				t.Errorf("%s: plain HTTP answered on 2376", n.Name)
			}
		}
	}

	awsOverlay(t, ctx, mgr, hostnames)
	cloudPublished(t, ctx, dir, specFile, mgr)
	awsLogsShipped(t, ctx, region, name+"-logs")

	awsMustRun(t, ctx, dir, "destroy", specFile, "--auto-approve")
	destroyed = true
	awsNothingTagged(t, ctx, region, status.ClusterID)
	awsNothingLeftBesidesEC2(t, ctx, region, status.ClusterID, name+"-logs")
}

// cloudPublished is the demo user's path: `docker service create -p 8080`
// then the port answers at the load balancer's DNS name once apply (or
// lb sync) has run; status names the balancer and the port.
func cloudPublished(t *testing.T, ctx context.Context, dir, specFile string, mgr *client.Client) {
	t.Helper()
	svc, err := mgr.ServiceCreate(ctx, dswarm.ServiceSpec{
		Annotations: dswarm.Annotations{Name: "acc-pub"},
		TaskTemplate: dswarm.TaskSpec{ContainerSpec: &dswarm.ContainerSpec{
			Image:   "busybox:1.36",
			Command: []string{"sh", "-c", "mkdir -p /www && echo published > /www/index.html && exec httpd -f -v -p 8080 -h /www"},
		}},
		EndpointSpec: &dswarm.EndpointSpec{Ports: []dswarm.PortConfig{{Protocol: dswarm.PortConfigProtocolTCP, TargetPort: 8080, PublishedPort: 8080, PublishMode: dswarm.PortConfigPublishModeIngress}}},
	}, dswarm.ServiceCreateOptions{})
	if err != nil {
		t.Fatalf("create published service: %v", err)
	}
	awsMustRun(t, ctx, dir, "lb", "sync", specFile)
	var doc struct {
		LB struct {
			Balancers []struct {
				Address string `json:"address"`
				Ports   []int  `json:"ports"`
			} `json:"balancers"`
		} `json:"load_balancer"`
	}
	out := awsMustRun(t, ctx, dir, "status", specFile, "--json").stdout
	if err := json.Unmarshal([]byte(out), &doc); err != nil || len(doc.LB.Balancers) != 1 || doc.LB.Balancers[0].Address == "" || !slices.Contains(doc.LB.Balancers[0].Ports, 8080) {
		t.Fatalf("status does not show the load balancer serving 8080: %v\n%s", err, out)
	}
	url := "http://" + net.JoinHostPort(doc.LB.Balancers[0].Address, "8080") + "/"
	hc := &http.Client{Timeout: 10 * time.Second}
	// A new NLB takes minutes to provision and its DNS name to resolve.
	awsEventually(t, ctx, 10*time.Minute, "published port 8080 answering at "+url, func() error {
		resp, err := hc.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(b), "published") {
			return fmt.Errorf("status %d: %q", resp.StatusCode, b)
		}
		return nil
	})
	t.Logf("published port answered at %s", url)
	mgr.ServiceRemove(ctx, svc.ID)
}

// awsLogsShipped: with logging awslogs, the containers' output reaches
// the CloudWatch log group provision made (through the instance profile
// it attached), with the spec's retention.
func awsLogsShipped(t *testing.T, ctx context.Context, region, group string) {
	t.Helper()
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(region))
	if err != nil {
		t.Fatal(err)
	}
	cw := cloudwatchlogs.NewFromConfig(cfg)
	awsEventually(t, ctx, 5*time.Minute, "container log events in group "+group, func() error {
		gs, err := cw.DescribeLogGroups(ctx, &cloudwatchlogs.DescribeLogGroupsInput{LogGroupNamePrefix: aws.String(group)})
		if err != nil {
			return err
		}
		if len(gs.LogGroups) == 0 {
			return fmt.Errorf("no log group %s", group)
		}
		if r := gs.LogGroups[0].RetentionInDays; r == nil || *r != 1 {
			t.Errorf("log group %s retention %v, want 1 day", group, r)
		}
		ev, err := cw.FilterLogEvents(ctx, &cloudwatchlogs.FilterLogEventsInput{LogGroupName: aws.String(group), Limit: aws.Int32(5)})
		if err != nil {
			return err
		}
		if len(ev.Events) == 0 {
			return errors.New("no events yet")
		}
		return nil
	})
}

// awsNothingLeftBesidesEC2: destroy also removed the load balancer, its
// target groups, the log group and the IAM role and instance profile it
// made for the logs.
func awsNothingLeftBesidesEC2(t *testing.T, ctx context.Context, region, clusterID, group string) {
	t.Helper()
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(region))
	if err != nil {
		t.Fatal(err)
	}
	lbs, err := elasticloadbalancingv2.NewFromConfig(cfg).DescribeLoadBalancers(ctx, &elasticloadbalancingv2.DescribeLoadBalancersInput{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lbs.LoadBalancers {
		if strings.Contains(aws.ToString(l.LoadBalancerName), clusterID) {
			t.Errorf("load balancer %s left", aws.ToString(l.LoadBalancerName))
		}
	}
	tgs, err := elasticloadbalancingv2.NewFromConfig(cfg).DescribeTargetGroups(ctx, &elasticloadbalancingv2.DescribeTargetGroupsInput{})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range tgs.TargetGroups {
		if strings.Contains(aws.ToString(g.TargetGroupName), clusterID) {
			t.Errorf("target group %s left", aws.ToString(g.TargetGroupName))
		}
	}
	gs, err := cloudwatchlogs.NewFromConfig(cfg).DescribeLogGroups(ctx, &cloudwatchlogs.DescribeLogGroupsInput{LogGroupNamePrefix: aws.String(group)})
	if err != nil || len(gs.LogGroups) > 0 {
		t.Errorf("log group %s left: %v", group, err)
	}
	roleName := "provision-" + clusterID + "-logs"
	if _, err := iam.NewFromConfig(cfg).GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(roleName)}); err == nil {
		t.Errorf("IAM role %s left", roleName)
	}
	if _, err := iam.NewFromConfig(cfg).GetInstanceProfile(ctx, &iam.GetInstanceProfileInput{InstanceProfileName: aws.String(roleName)}); err == nil {
		t.Errorf("instance profile %s left", roleName)
	}
}

// awsOverlay runs a global service (one task per node, over an overlay
// network) that answers with its node's hostname, then asks it from a
// container on the manager until both hostnames came back: traffic crossed
// hosts over VXLAN.
func awsOverlay(t *testing.T, ctx context.Context, mgr *client.Client, hostnames []string) {
	t.Helper()
	const img = "busybox:1.36"
	ovl, err := mgr.NetworkCreate(ctx, "acc-overlay", network.CreateOptions{Driver: "overlay", Attachable: true})
	if err != nil {
		t.Fatalf("create overlay network: %v", err)
	}
	svc, err := mgr.ServiceCreate(ctx, dswarm.ServiceSpec{
		Annotations: dswarm.Annotations{Name: "acc-web"},
		Mode:        dswarm.ServiceMode{Global: &dswarm.GlobalService{}},
		TaskTemplate: dswarm.TaskSpec{
			ContainerSpec: &dswarm.ContainerSpec{
				Image:    img,
				Hostname: "{{.Node.Hostname}}",
				Command:  []string{"sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"},
			},
			Networks: []dswarm.NetworkAttachmentConfig{{Target: ovl.ID}},
		},
	}, dswarm.ServiceCreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	awsEventually(t, ctx, 5*time.Minute, "service tasks running on both nodes", func() error {
		tasks, err := mgr.TaskList(ctx, dswarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", svc.ID), filters.Arg("desired-state", "running"))})
		if err != nil {
			return err
		}
		running := 0
		for _, tk := range tasks {
			if tk.Status.State == dswarm.TaskStateRunning {
				running++
			}
		}
		if running != len(hostnames) {
			return fmt.Errorf("%d of %d tasks running", running, len(hostnames))
		}
		return nil
	})
	probe, err := mgr.ContainerCreate(ctx, &container.Config{
		Image: img,
		Cmd:   []string{"sh", "-c", "for i in $(seq 1 40); do wget -qO- -T 3 http://acc-web:8080/; done"},
	}, nil, &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{"acc-overlay": {}}}, nil, "acc-probe")
	if err != nil {
		t.Fatalf("create probe: %v", err)
	}
	defer mgr.ContainerRemove(context.WithoutCancel(ctx), probe.ID, container.RemoveOptions{Force: true})
	if err := mgr.ContainerStart(ctx, probe.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	waitC, errC := mgr.ContainerWait(ctx, probe.ID, container.WaitConditionNotRunning)
	select {
	case <-waitC:
	case err := <-errC:
		t.Fatal(err)
	}
	logs, err := mgr.ContainerLogs(ctx, probe.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	stdcopy.StdCopy(&out, &errb, logs)
	logs.Close()
	for _, h := range hostnames {
		if !strings.Contains(out.String(), h) {
			t.Errorf("no answer from the task on %s over the overlay network:\n%s\n%s", h, out.String(), errb.String())
		}
	}
	mgr.ServiceRemove(ctx, svc.ID)
}

// awsNothingTagged checks, with the operator's credentials, that no live
// resource is tagged with the cluster ID.
func awsNothingTagged(t *testing.T, ctx context.Context, region, clusterID string) {
	t.Helper()
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(region))
	if err != nil {
		t.Fatal(err)
	}
	cli := ec2.NewFromConfig(cfg)
	f := []ec2types.Filter{{Name: aws.String("tag:provision-cluster"), Values: []string{clusterID}}}
	insts, err := cli.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: append(f,
		ec2types.Filter{Name: aws.String("instance-state-name"), Values: []string{"pending", "running", "stopping", "stopped", "shutting-down"}})})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range insts.Reservations {
		for _, i := range r.Instances {
			t.Errorf("instance %s left (%s)", aws.ToString(i.InstanceId), i.State.Name)
		}
	}
	if o, err := cli.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{Filters: f}); err != nil || len(o.Vpcs) > 0 {
		t.Errorf("vpcs left: %v %v", o, err)
	}
	if o, err := cli.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{Filters: f}); err != nil || len(o.Subnets) > 0 {
		t.Errorf("subnets left: %v %v", o, err)
	}
	if o, err := cli.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: f}); err != nil || len(o.SecurityGroups) > 0 {
		t.Errorf("security groups left: %v %v", o, err)
	}
	if o, err := cli.DescribeKeyPairs(ctx, &ec2.DescribeKeyPairsInput{Filters: f}); err != nil || len(o.KeyPairs) > 0 {
		t.Errorf("key pairs left: %v %v", o, err)
	}
	if o, err := cli.DescribeInternetGateways(ctx, &ec2.DescribeInternetGatewaysInput{Filters: f}); err != nil || len(o.InternetGateways) > 0 {
		t.Errorf("internet gateways left: %v %v", o, err)
	}
	if o, err := cli.DescribeRouteTables(ctx, &ec2.DescribeRouteTablesInput{Filters: f}); err != nil || len(o.RouteTables) > 0 {
		t.Errorf("route tables left: %v %v", o, err)
	}
}

// awsParseEnv reads `export K=V` lines as `provision env` prints them.
func awsParseEnv(s string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "export "))
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
			v = strings.ReplaceAll(v[1:len(v)-1], `'\''`, "'")
		}
		out[k] = v
	}
	return out
}

var (
	awsBuildOnce sync.Once
	awsBin       string
	awsBuildErr  error
)

type awsResult struct {
	code           int
	stdout, stderr string
}

// awsRun runs the provision binary (built once) in dir, so the state lands
// next to the spec.
func awsRun(t *testing.T, ctx context.Context, dir string, args ...string) awsResult {
	t.Helper()
	awsBuildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		bdir, err := os.MkdirTemp("", "provision-acc-aws")
		if err != nil {
			awsBuildErr = err
			return
		}
		awsBin = filepath.Join(bdir, "provision")
		cmd := exec.Command("go", "build", "-o", awsBin, "./cmd/provision")
		cmd.Dir = filepath.Dir(filepath.Dir(file))
		if out, err := cmd.CombinedOutput(); err != nil {
			awsBuildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if awsBuildErr != nil {
		t.Fatal(awsBuildErr)
	}
	cmd := exec.CommandContext(ctx, awsBin, args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, io.MultiWriter(&errb, awsLogWriter{t})
	err := cmd.Run()
	r := awsResult{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run provision %v: %v", args, err)
	}
	return r
}

func awsMustRun(t *testing.T, ctx context.Context, dir string, args ...string) awsResult {
	t.Helper()
	r := awsRun(t, ctx, dir, args...)
	if r.code != 0 {
		t.Fatalf("provision %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// awsLogWriter streams the binary's progress into the test log (-v), since
// a real-cloud apply takes minutes.
type awsLogWriter struct{ t *testing.T }

func (w awsLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func awsEventually(t *testing.T, ctx context.Context, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	delay := time.Second
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s: %v", what, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(delay*2, 10*time.Second)
	}
}
