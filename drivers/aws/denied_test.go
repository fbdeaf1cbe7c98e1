package aws

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/provision/provision/drivers"
)

// denyLogsAndIAM serves the AWS APIs through moto but answers every
// CloudWatch Logs, IAM and Elastic Load Balancing call with access denied,
// as an EC2-only IAM policy does. It counts the calls it denied.
func denyLogsAndIAM(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	needMoto(t)
	target, err := url.Parse(motoURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	var denied atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		switch {
		case strings.HasPrefix(r.Header.Get("X-Amz-Target"), "Logs_"):
			denied.Add(1)
			w.Header().Set("Content-Type", "application/x-amz-json-1.1")
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"__type":"AccessDeniedException","message":"User is not authorized to perform: logs:DescribeLogGroups"}`)
		case strings.Contains(r.Header.Get("Authorization"), "/iam/aws4_request"),
			strings.Contains(r.Header.Get("Authorization"), "/elasticloadbalancing/aws4_request"):
			denied.Add(1)
			w.Header().Set("Content-Type", "text/xml")
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprint(w, `<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User is not authorized to perform: iam:GetRole</Message></Error><RequestId>1</RequestId></ErrorResponse>`)
		default:
			proxy.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &denied
}

// TestEC2OnlyCredentials: credentials allowed EC2 only (no CloudWatch Logs,
// no IAM, no load balancing) make, plan and destroy a cluster that ships no
// logs and has no load balancer: neither the plan's resource listing, nor
// destroy's load balancer step, nor Teardown fails on the lookups those
// credentials may not make (destroy used to stop at "find load balancer:
// AccessDenied" before any machine, and at "list log groups: AccessDenied"
// after them, every time).
func TestEC2OnlyCredentials(t *testing.T) {
	cli := sdk(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	endpoint, denied := denyLogsAndIAM(t)
	src := fmt.Sprintf("endpoint = %q\nami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", endpoint, testAMI(t))
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "aws.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	dr, diags := New(f.Body, drivers.Options{Name: "aws"})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	d := dr.(*Driver)
	d.waitMin = 20 * time.Millisecond
	want := spec(cluster, "manager", 1)
	if _, err := d.Resources(ctx, cluster, []drivers.MachineSpec{want}); err != nil {
		t.Errorf("Resources before: %v", err)
	}
	m, err := d.Create(ctx, cluster, want)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Destroy(context.Background(), m)
		d.Teardown(context.Background(), cluster)
	})
	if _, err := d.Resources(ctx, cluster, nil); err != nil {
		t.Errorf("Resources for destroy: %v", err)
	}
	// destroy asks every driver for its load balancer first.
	if st, err := d.Balancer(ctx, cluster); err != nil || st.Exists {
		t.Fatalf("Balancer: %+v %v", st, err)
	}
	if err := d.RemoveBalancer(ctx, cluster); err != nil {
		t.Fatalf("RemoveBalancer: %v", err)
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	// With a load balancer security group of the cluster, a balancer may
	// exist: destroy must stop, saying which permission it lacks.
	sg, err := cli.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{GroupName: awssdk.String("lb-" + cluster), Description: awssdk.String("test"),
		TagSpecifications: []types.TagSpecification{tagSpec(types.ResourceTypeSecurityGroup, map[string]string{drivers.TagCluster: cluster, TagLB: "true"})}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Balancer(ctx, cluster); err == nil || !strings.Contains(err.Error(), "may not read Elastic Load Balancing") {
		t.Errorf("Balancer with a load balancer security group: %v", err)
	}
	if _, err := cli.DeleteSecurityGroup(ctx, &ec2.DeleteSecurityGroupInput{GroupId: sg.GroupId}); err != nil {
		t.Fatal(err)
	}
	if denied.Load() == 0 {
		t.Error("no CloudWatch Logs or IAM call was denied: the test proves nothing")
	}
	assertNothingLeft(t, cli, cluster)
}
