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

	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/provision/provision/drivers"
)

// denyLogsAndIAM serves the AWS APIs through moto but answers every
// CloudWatch Logs and IAM call with access denied, as an EC2-only IAM
// policy does. It counts the calls it denied.
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
		case strings.Contains(r.Header.Get("Authorization"), "/iam/aws4_request"):
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
// no IAM) make, plan and destroy a cluster that ships no logs: neither the
// plan's resource listing nor Teardown fails on the awslogs lookups those
// credentials may not make (destroy used to stop at "list log groups:
// AccessDenied" every time, after the instances were gone).
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
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if denied.Load() == 0 {
		t.Error("no CloudWatch Logs or IAM call was denied: the test proves nothing")
	}
	assertNothingLeft(t, cli, cluster)
}
