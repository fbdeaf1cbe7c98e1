package aws

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/provision/provision/drivers"
)

func resourceLines(rs []drivers.Resource) []string {
	var out []string
	for _, r := range rs {
		line := r.Action + " " + r.Kind + " " + r.Name
		if r.ID != "" {
			line += " id"
		}
		out = append(out, line)
	}
	sort.Strings(out)
	return out
}

// TestResources: what plan lists for an AWS cluster before it exists, while
// it runs and for destroy, against moto; and without credentials.
func TestResources(t *testing.T) {
	cli := sdk(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	body := fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", testAMI(t))
	d := driverFromHCL(t, body)
	want := []drivers.MachineSpec{spec(cluster, "manager", 1), spec(cluster, "worker", 1)}
	name := "provision-" + cluster

	zones, err := d.subnetZones(ctx, mustClient(t, d))
	if err != nil || len(zones) == 0 {
		t.Fatalf("zones: %v %v", zones, err)
	}
	rs, err := d.Resources(ctx, cluster, want)
	if err != nil {
		t.Fatal(err)
	}
	expect := []string{"create internet-gateway " + name, "create key-pair " + name, "create route-table " + name,
		"create security-group " + name, "create vpc " + name}
	for _, z := range zones {
		expect = append(expect, "create subnet "+name+"-"+z)
	}
	sort.Strings(expect)
	if got := resourceLines(rs); strings.Join(got, "\n") != strings.Join(expect, "\n") {
		t.Errorf("before:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(expect, "\n"))
	}
	for _, r := range rs {
		if r.Kind == "security-group" && !strings.Contains(r.Note, "198.51.100.7/32") {
			t.Errorf("security group note %q", r.Note)
		}
	}
	if vpcs, _ := describeVPCs(ctx, cli, clusterFilter(cluster)); len(vpcs) != 0 {
		t.Fatal("Resources made a vpc")
	}

	m, err := d.Create(ctx, cluster, want[0])
	if err != nil {
		t.Fatal(err)
	}
	rs, err = d.Resources(ctx, cluster, want)
	if err != nil {
		t.Fatal(err)
	}
	got := resourceLines(rs)
	if len(got) != len(expect) {
		t.Errorf("while it runs: %v", got)
	}
	for _, l := range got {
		if !strings.HasPrefix(l, "keep ") || !strings.HasSuffix(l, " id") {
			t.Errorf("while it runs: %q", l)
		}
	}
	rs, _ = d.Resources(ctx, cluster, nil)
	for _, r := range rs {
		if r.Action != drivers.ResourceRemove {
			t.Errorf("for destroy: %+v", r)
		}
	}
	if len(rs) != len(expect) {
		t.Errorf("for destroy: %v", resourceLines(rs))
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if rs, err := d.Resources(ctx, cluster, nil); err != nil || len(rs) != 0 {
		t.Errorf("after teardown: %v %v", err, resourceLines(rs))
	}
	assertNothingLeft(t, cli, cluster)

	// Existing subnets (the operator's) are never listed: only the group and key.
	d2 := driverFromHCL(t, body+"subnet_ids = [\"subnet-0123456789\"]\n")
	rs, err = d2.Resources(ctx, cluster, want)
	if err != nil {
		t.Fatal(err)
	}
	if got := resourceLines(rs); strings.Join(got, ",") != "create key-pair "+name+",create security-group "+name {
		t.Errorf("subnet mode: %v", got)
	}

	// Without credentials: the spec's view and what could not be checked.
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_SESSION_TOKEN", "")
	d3 := driverFromHCL(t, body)
	rs, err = d3.Resources(ctx, cluster, want)
	if err == nil || !strings.Contains(err.Error(), "no usable AWS credentials") || !strings.Contains(err.Error(), "not checked") {
		t.Errorf("no credentials: %v", err)
	}
	if got := resourceLines(rs); len(got) != 6 || !strings.Contains(strings.Join(got, ","), "create subnet "+name+"-<zone>") {
		t.Errorf("no credentials: %v", got)
	}
}

func mustClient(t *testing.T, d *Driver) *ec2.Client {
	t.Helper()
	c, err := d.ec2Client(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return c
}
