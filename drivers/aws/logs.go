package aws

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	iamsdk "github.com/aws/aws-sdk-go-v2/service/iam"
	iamtypes "github.com/aws/aws-sdk-go-v2/service/iam/types"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/retry"
)

// logsPolicyName is the role's one inline policy.
const logsPolicyName = "provision-cloudwatch-logs"

// logsName is the role and instance profile the driver makes for a
// cluster's awslogs engines.
func logsName(cluster string) string { return "provision-" + cluster + "-logs" }

// logsState remembers, per cluster, the instance profile ensureLogs set up.
type logsState struct {
	mu      sync.Mutex
	profile map[string]string
}

// logsClients returns IAM and CloudWatch Logs clients on the driver's SDK
// configuration (and endpoint override: moto serves both).
func (d *Driver) logsClients(ctx context.Context) (*iamsdk.Client, *cloudwatchlogs.Client, error) {
	if _, err := d.ec2Client(ctx); err != nil {
		return nil, nil, err
	}
	ep := func(b **string) {
		if d.cfg.Endpoint != "" {
			*b = awssdk.String(d.cfg.Endpoint)
		}
	}
	return iamsdk.NewFromConfig(d.awsCfg, func(o *iamsdk.Options) { ep(&o.BaseEndpoint) }),
		cloudwatchlogs.NewFromConfig(d.awsCfg, func(o *cloudwatchlogs.Options) { ep(&o.BaseEndpoint) }), nil
}

// logsPolicy allows exactly what the engine's awslogs driver does with a
// group that exists: make streams and put events in that group.
func logsPolicy(region, group string) string {
	b, _ := json.Marshal(map[string]any{
		"Version": "2012-10-17",
		"Statement": []map[string]any{{
			"Effect":   "Allow",
			"Action":   []string{"logs:CreateLogStream", "logs:PutLogEvents"},
			"Resource": []string{fmt.Sprintf("arn:aws:logs:%s:*:log-group:%s:*", region, group)},
		}},
	})
	return string(b)
}

const assumeEC2 = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}`

// ensureLogs makes (once per cluster, each part found by name and tag
// first, so a crash half way is resumed) the log group with its retention,
// and the role allowed to write to it with an instance profile holding it;
// with instance_profile in the driver block, that profile is used and no
// IAM resource is made. It returns the instance profile's name.
func (d *Driver) ensureLogs(ctx context.Context, cluster string, l *drivers.CloudLogs) (string, error) {
	d.logs.mu.Lock()
	defer d.logs.mu.Unlock()
	if p, ok := d.logs.profile[cluster]; ok {
		return p, nil
	}
	iamc, logc, err := d.logsClients(ctx)
	if err != nil {
		return "", err
	}
	tags := map[string]string{drivers.TagCluster: cluster}
	if _, err := logc.CreateLogGroup(ctx, &cloudwatchlogs.CreateLogGroupInput{LogGroupName: awssdk.String(l.Group), Tags: tags}); err != nil {
		if !isCode(err, "ResourceAlreadyExistsException") {
			return "", fmt.Errorf("create log group %s: %w", l.Group, d.explain(err))
		}
	} else {
		d.log.InfoContext(ctx, "created log group", "cluster", cluster, "group", l.Group)
	}
	if ours, err := d.logGroupOurs(ctx, logc, cluster, l.Group); err != nil {
		return "", err
	} else if ours && l.RetentionDays > 0 {
		if _, err := logc.PutRetentionPolicy(ctx, &cloudwatchlogs.PutRetentionPolicyInput{LogGroupName: awssdk.String(l.Group), RetentionInDays: awssdk.Int32(int32(l.RetentionDays))}); err != nil {
			return "", fmt.Errorf("set retention of log group %s: %w", l.Group, d.explain(err))
		}
	}
	if d.cfg.InstanceProfile != "" {
		d.setLogsProfile(cluster, d.cfg.InstanceProfile)
		return d.cfg.InstanceProfile, nil
	}
	name := logsName(cluster)
	iamTags := []iamtypes.Tag{{Key: awssdk.String(drivers.TagCluster), Value: awssdk.String(cluster)}}
	if _, err := iamc.CreateRole(ctx, &iamsdk.CreateRoleInput{RoleName: awssdk.String(name), AssumeRolePolicyDocument: awssdk.String(assumeEC2),
		Description: awssdk.String("provision cluster " + cluster + ": engines ship container logs to CloudWatch Logs"), Tags: iamTags}); err != nil {
		if !isCode(err, "EntityAlreadyExists") {
			return "", fmt.Errorf("create role %s: %w", name, d.explain(err))
		}
		got, err := iamc.GetRole(ctx, &iamsdk.GetRoleInput{RoleName: awssdk.String(name)})
		if err != nil {
			return "", fmt.Errorf("read role %s: %w", name, d.explain(err))
		}
		if !iamTagged(got.Role.Tags, cluster) {
			return "", fmt.Errorf("role %s exists without the tag %s=%s: remove or rename it, or name an instance profile in the driver block", name, drivers.TagCluster, cluster)
		}
	} else {
		d.log.InfoContext(ctx, "created role", "cluster", cluster, "role", name)
	}
	if _, err := iamc.PutRolePolicy(ctx, &iamsdk.PutRolePolicyInput{RoleName: awssdk.String(name), PolicyName: awssdk.String(logsPolicyName),
		PolicyDocument: awssdk.String(logsPolicy(l.Region, l.Group))}); err != nil {
		return "", fmt.Errorf("put role policy on %s: %w", name, d.explain(err))
	}
	if _, err := iamc.CreateInstanceProfile(ctx, &iamsdk.CreateInstanceProfileInput{InstanceProfileName: awssdk.String(name), Tags: iamTags}); err != nil && !isCode(err, "EntityAlreadyExists") {
		return "", fmt.Errorf("create instance profile %s: %w", name, d.explain(err))
	}
	ip, err := iamc.GetInstanceProfile(ctx, &iamsdk.GetInstanceProfileInput{InstanceProfileName: awssdk.String(name)})
	if err != nil {
		return "", fmt.Errorf("read instance profile %s: %w", name, d.explain(err))
	}
	has := false
	for _, r := range ip.InstanceProfile.Roles {
		has = has || awssdk.ToString(r.RoleName) == name
	}
	if !has {
		if _, err := iamc.AddRoleToInstanceProfile(ctx, &iamsdk.AddRoleToInstanceProfileInput{InstanceProfileName: awssdk.String(name), RoleName: awssdk.String(name)}); err != nil {
			return "", fmt.Errorf("add role to instance profile %s: %w", name, d.explain(err))
		}
		d.log.InfoContext(ctx, "created instance profile", "cluster", cluster, "instance_profile", name)
	}
	d.setLogsProfile(cluster, name)
	return name, nil
}

func (d *Driver) setLogsProfile(cluster, p string) {
	if d.logs.profile == nil {
		d.logs.profile = map[string]string{}
	}
	d.logs.profile[cluster] = p
}

func iamTagged(tags []iamtypes.Tag, cluster string) bool {
	for _, t := range tags {
		if awssdk.ToString(t.Key) == drivers.TagCluster && awssdk.ToString(t.Value) == cluster {
			return true
		}
	}
	return false
}

// logGroupOurs reports whether the log group carries the cluster's tag.
func (d *Driver) logGroupOurs(ctx context.Context, logc *cloudwatchlogs.Client, cluster, group string) (bool, error) {
	out, err := logc.DescribeLogGroups(ctx, &cloudwatchlogs.DescribeLogGroupsInput{LogGroupNamePrefix: awssdk.String(group)})
	if err != nil {
		return false, fmt.Errorf("find log group %s: %w", group, d.explain(err))
	}
	for _, g := range out.LogGroups {
		if awssdk.ToString(g.LogGroupName) != group {
			continue
		}
		arn := strings.TrimSuffix(awssdk.ToString(g.Arn), ":*")
		tags, err := logc.ListTagsForResource(ctx, &cloudwatchlogs.ListTagsForResourceInput{ResourceArn: awssdk.String(arn)})
		if err != nil {
			return false, fmt.Errorf("read tags of log group %s: %w", group, d.explain(err))
		}
		return tags.Tags[drivers.TagCluster] == cluster, nil
	}
	return false, nil
}

// teardownLogs removes what ensureLogs made for the cluster: the log
// groups tagged with it, the instance profile and the role (only when they
// carry its tag). A profile named in the driver block is never touched.
func (d *Driver) teardownLogs(ctx context.Context, cluster string) []error {
	iamc, logc, err := d.logsClients(ctx)
	if err != nil {
		return []error{err}
	}
	d.logs.mu.Lock()
	delete(d.logs.profile, cluster)
	d.logs.mu.Unlock()
	var errs []error
	// Credentials without CloudWatch Logs or IAM permissions (an EC2-only
	// policy) could not have made these for the cluster: what they cannot
	// see is said, and does not fail the destroy of a cluster that never
	// shipped logs.
	denied := func(what string, err error) {
		d.log.WarnContext(ctx, "the AWS credentials may not list "+what+": any this cluster made for awslogs (tagged "+drivers.TagCluster+"="+cluster+") are left; remove them with credentials that may", "cluster", cluster, "err", err)
	}
	p := cloudwatchlogs.NewDescribeLogGroupsPaginator(logc, &cloudwatchlogs.DescribeLogGroupsInput{})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			if isAccessDenied(err) {
				denied("CloudWatch log groups", err)
				break
			}
			errs = append(errs, fmt.Errorf("list log groups: %w", d.explain(err)))
			break
		}
		for _, g := range page.LogGroups {
			name := awssdk.ToString(g.LogGroupName)
			if ours, err := d.logGroupOurs(ctx, logc, cluster, name); err != nil || !ours {
				continue
			}
			if _, err := logc.DeleteLogGroup(ctx, &cloudwatchlogs.DeleteLogGroupInput{LogGroupName: awssdk.String(name)}); err != nil && !isCode(err, "ResourceNotFoundException") {
				errs = append(errs, fmt.Errorf("delete log group %s: %w", name, d.explain(err)))
				continue
			}
			d.log.InfoContext(ctx, "deleted log group", "cluster", cluster, "group", name)
		}
	}
	name := logsName(cluster)
	role, err := iamc.GetRole(ctx, &iamsdk.GetRoleInput{RoleName: awssdk.String(name)})
	if err != nil {
		switch {
		case isAccessDenied(err):
			denied("the IAM role and instance profile "+name, err)
		case !isCode(err, "NoSuchEntity"):
			errs = append(errs, fmt.Errorf("read role %s: %w", name, d.explain(err)))
		}
		return errs
	}
	if !iamTagged(role.Role.Tags, cluster) {
		return errs
	}
	gone := func(err error) bool { return err == nil || isCode(err, "NoSuchEntity") }
	if _, err := iamc.RemoveRoleFromInstanceProfile(ctx, &iamsdk.RemoveRoleFromInstanceProfileInput{InstanceProfileName: awssdk.String(name), RoleName: awssdk.String(name)}); !gone(err) {
		errs = append(errs, fmt.Errorf("remove role from instance profile %s: %w", name, d.explain(err)))
	}
	if _, err := iamc.DeleteInstanceProfile(ctx, &iamsdk.DeleteInstanceProfileInput{InstanceProfileName: awssdk.String(name)}); !gone(err) {
		errs = append(errs, fmt.Errorf("delete instance profile %s: %w", name, d.explain(err)))
	}
	if _, err := iamc.DeleteRolePolicy(ctx, &iamsdk.DeleteRolePolicyInput{RoleName: awssdk.String(name), PolicyName: awssdk.String(logsPolicyName)}); !gone(err) {
		errs = append(errs, fmt.Errorf("delete role policy of %s: %w", name, d.explain(err)))
	}
	if _, err := iamc.DeleteRole(ctx, &iamsdk.DeleteRoleInput{RoleName: awssdk.String(name)}); !gone(err) {
		errs = append(errs, fmt.Errorf("delete role %s: %w", name, d.explain(err)))
	} else {
		d.log.InfoContext(ctx, "deleted role and instance profile", "cluster", cluster, "role", name)
	}
	return errs
}

// runWithProfileRetry retries RunInstances while a new instance profile
// has not reached EC2 yet (IAM is eventually consistent: seconds).
func runWithProfileRetry(ctx context.Context, fn func() error) error {
	return retry.Backoff{First: 2 * time.Second, Max: 10 * time.Second}.While(ctx, 90*time.Second, func(err error) bool {
		return isCode(err, "InvalidParameterValue") && strings.Contains(strings.ToLower(err.Error()), "iaminstanceprofile")
	}, fn)
}

// logsResources lists the awslogs log group, role and instance profile: the
// ones that exist for the cluster (keep, or remove when want is empty), and
// those Create will make when the spec ships logs (create).
func (d *Driver) logsResources(ctx context.Context, cluster string, want []drivers.MachineSpec, action string) ([]drivers.Resource, error) {
	var l *drivers.CloudLogs
	for _, w := range want {
		if w.Logs != nil {
			l = w.Logs
		}
	}
	iamc, logc, err := d.logsClients(ctx)
	if err != nil {
		return nil, err
	}
	var out []drivers.Resource
	if l != nil {
		ours, err := d.logGroupOurs(ctx, logc, cluster, l.Group)
		if err != nil {
			return nil, err
		}
		note := fmt.Sprintf("awslogs, events kept %d days", l.RetentionDays)
		if l.RetentionDays == 0 {
			note = "awslogs, events kept for ever"
		}
		act := drivers.ResourceCreate
		if ours {
			act = action
		}
		out = append(out, drivers.Resource{Kind: "log-group", Name: l.Group, Action: act, Note: note})
	} else if len(want) == 0 {
		p := cloudwatchlogs.NewDescribeLogGroupsPaginator(logc, &cloudwatchlogs.DescribeLogGroupsInput{})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil && isAccessDenied(err) {
				break // an EC2-only policy: see teardownLogs
			}
			if err != nil {
				return nil, fmt.Errorf("list log groups: %w", d.explain(err))
			}
			for _, g := range page.LogGroups {
				if ours, err := d.logGroupOurs(ctx, logc, cluster, awssdk.ToString(g.LogGroupName)); err == nil && ours {
					out = append(out, drivers.Resource{Kind: "log-group", Name: awssdk.ToString(g.LogGroupName), Action: action, Note: "its events go with it"})
				}
			}
		}
	}
	if d.cfg.InstanceProfile != "" {
		return out, nil
	}
	name := logsName(cluster)
	role, err := iamc.GetRole(ctx, &iamsdk.GetRoleInput{RoleName: awssdk.String(name)})
	switch {
	case err == nil && iamTagged(role.Role.Tags, cluster):
		out = append(out, drivers.Resource{Kind: "iam-role", Name: name, Action: action, Note: "logs:CreateLogStream and logs:PutLogEvents on the log group"},
			drivers.Resource{Kind: "instance-profile", Name: name, Action: action, Note: "on every instance"})
	case err != nil && l == nil && isAccessDenied(err):
		// The spec ships no logs and the credentials may not read IAM:
		// an EC2-only policy, which could not have made the role.
	case err != nil && !isCode(err, "NoSuchEntity"):
		return out, fmt.Errorf("read role %s: %w", name, d.explain(err))
	case l != nil:
		out = append(out, drivers.Resource{Kind: "iam-role", Name: name, Action: drivers.ResourceCreate, Note: "logs:CreateLogStream and logs:PutLogEvents on the log group"},
			drivers.Resource{Kind: "instance-profile", Name: name, Action: drivers.ResourceCreate, Note: "on every instance"})
	}
	return out, nil
}
