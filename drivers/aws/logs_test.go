package aws

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	iamsdk "github.com/aws/aws-sdk-go-v2/service/iam"

	"github.com/provision/provision/drivers"
)

// TestAWSLogsRoleMoto: a machine whose engine ships logs with awslogs gets
// an instance profile whose role may only create streams and put events in
// the log group, the group is made with the retention, a second machine
// reuses them, and Teardown removes all three.
func TestAWSLogsRoleMoto(t *testing.T) {
	cli := sdk(t)
	ctx := testCtx(t)
	cluster := newCluster(t)
	d := driverFromHCL(t, fmt.Sprintf("ami = %q\nallowed_cidrs = [\"198.51.100.7/32\"]\n", testAMI(t)))
	logs := &drivers.CloudLogs{Group: "demo-" + cluster, Region: "us-east-1", RetentionDays: 14}
	want := []drivers.MachineSpec{spec(cluster, "manager", 1)}
	want[0].Logs = logs
	planned := func(w []drivers.MachineSpec) string {
		rs, err := d.Resources(ctx, cluster, w)
		if err != nil {
			t.Fatalf("Resources: %v", err)
		}
		var b strings.Builder
		for _, r := range rs {
			if r.Kind == "log-group" || r.Kind == "iam-role" || r.Kind == "instance-profile" {
				fmt.Fprintf(&b, "%s %s %s; ", r.Action, r.Kind, r.Name)
			}
		}
		return b.String()
	}
	name := logsName(cluster)
	if got, w := planned(want), fmt.Sprintf("create log-group %s; create iam-role %s; create instance-profile %s; ", logs.Group, name, name); got != w {
		t.Errorf("plan before: %q, want %q", got, w)
	}
	var ms []drivers.Machine
	for i := 1; i <= 2; i++ {
		w := spec(cluster, "manager", i)
		w.Logs = logs
		m, err := d.Create(ctx, cluster, w)
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	t.Cleanup(func() {
		for _, m := range ms {
			d.Destroy(context.Background(), m)
		}
		d.Teardown(context.Background(), cluster)
	})
	iamc, logc, err := d.logsClients(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, w := planned(want), fmt.Sprintf("keep log-group %s; keep iam-role %s; keep instance-profile %s; ", logs.Group, name, name); got != w {
		t.Errorf("plan after: %q, want %q", got, w)
	}
	if got, w := planned(nil), fmt.Sprintf("remove log-group %s; remove iam-role %s; remove instance-profile %s; ", logs.Group, name, name); got != w {
		t.Errorf("destroy plan: %q, want %q", got, w)
	}
	for _, m := range ms {
		out, err := cli.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{m.ID}})
		if err != nil {
			t.Fatal(err)
		}
		p := out.Reservations[0].Instances[0].IamInstanceProfile
		if p == nil || !strings.HasSuffix(awssdk.ToString(p.Arn), "/"+name) {
			t.Errorf("%s: instance profile %+v, want %s", m.Name, p, name)
		}
	}
	ip, err := iamc.GetInstanceProfile(ctx, &iamsdk.GetInstanceProfileInput{InstanceProfileName: awssdk.String(name)})
	if err != nil || len(ip.InstanceProfile.Roles) != 1 || awssdk.ToString(ip.InstanceProfile.Roles[0].RoleName) != name {
		t.Fatalf("instance profile: %v %+v", err, ip)
	}
	pol, err := iamc.GetRolePolicy(ctx, &iamsdk.GetRolePolicyInput{RoleName: awssdk.String(name), PolicyName: awssdk.String(logsPolicyName)})
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := url.QueryUnescape(awssdk.ToString(pol.PolicyDocument))
	if doc != logsPolicy("us-east-1", logs.Group) || !strings.Contains(doc, `"Action":["logs:CreateLogStream","logs:PutLogEvents"]`) {
		t.Errorf("policy %s", doc)
	}
	roles, _ := iamc.ListAttachedRolePolicies(ctx, &iamsdk.ListAttachedRolePoliciesInput{RoleName: awssdk.String(name)})
	if roles != nil && len(roles.AttachedPolicies) != 0 {
		t.Errorf("managed policies attached: %+v", roles.AttachedPolicies)
	}
	gs, err := logc.DescribeLogGroups(ctx, &cloudwatchlogs.DescribeLogGroupsInput{LogGroupNamePrefix: awssdk.String(logs.Group)})
	if err != nil || len(gs.LogGroups) != 1 || awssdk.ToInt32(gs.LogGroups[0].RetentionInDays) != 14 {
		t.Fatalf("log group: %v %+v", err, gs)
	}

	// Teardown removes them (after the instances).
	for _, m := range ms {
		if err := d.Destroy(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if _, err := iamc.GetRole(ctx, &iamsdk.GetRoleInput{RoleName: awssdk.String(name)}); err == nil || !isCode(err, "NoSuchEntity") {
		t.Errorf("role left: %v", err)
	}
	if _, err := iamc.GetInstanceProfile(ctx, &iamsdk.GetInstanceProfileInput{InstanceProfileName: awssdk.String(name)}); err == nil {
		t.Error("instance profile left")
	}
	if gs, err := logc.DescribeLogGroups(ctx, &cloudwatchlogs.DescribeLogGroupsInput{LogGroupNamePrefix: awssdk.String(logs.Group)}); err != nil || len(gs.LogGroups) != 0 {
		t.Errorf("log group left: %v %+v", err, gs)
	}
}
