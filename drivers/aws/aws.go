// Package aws is the EC2 driver: it creates instances (and, on request, a
// dedicated VPC) through the official SDK, tags everything it makes with the
// cluster ID inside the create call itself, and pins the SSH host key it hands
// to cloud-init.
//
// Credentials and region come from the SDK's default chain (environment,
// shared config and credentials files, SSO, IMDS), with `region` and `profile`
// settable in the driver block. Nothing is loaded and nothing is contacted in
// New: the SDK configuration is built on first use.
//
// The block (all attributes optional except that SSH needs allowed_cidrs or
// detect_operator_ip):
//
//	driver "aws" {
//	  region              = "eu-west-3"          # else AWS_REGION / the profile's
//	  profile             = "ops"                # else AWS_PROFILE / default
//	  instance_type       = "t3.small"           # pools' size overrides it
//	  ami                 = "ami-..."            # else the newest Debian 12, then Ubuntu 24.04, for the type's arch
//	  create_vpc          = true                 # default when neither vpc_id nor subnet_ids is set
//	  vpc_cidr            = "10.42.0.0/16"       # the dedicated VPC; one subnet per zone (up to 3)
//	  vpc_id              = "vpc-..."            # or an existing VPC (all its subnets) ...
//	  subnet_ids          = ["subnet-..."]       # ... or existing subnets; create_vpc = false alone uses the default VPC
//	  allowed_cidrs       = ["203.0.113.7/32"]   # who reaches 22 and 2376
//	  detect_operator_ip  = false                # true: ask operator_ip_url for this machine's public address
//	  associate_public_ip = true                 # false: private addresses only (add a bastion block)
//	  root_volume_type    = "gp3"                # always encrypted
//	  endpoint            = "http://127.0.0.1:5000" # tests and EC2-compatible clouds; AWS_ENDPOINT_URL works too
//	  bastion { address = "..." user = "..." host_key = "ssh-ed25519 ..." }
//	}
//
// The cloud-init template (cloud-init.yaml.tmpl) is embedded here until the
// shared templates package takes it over.
package aws

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	awsretry "github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/smithy-go/logging"
	"github.com/hashicorp/hcl/v2"

	"github.com/provision/provision/drivers"
)

func init() {
	drivers.Register("aws", New)
}

// Tags the driver adds besides the drivers.Tag* ownership tags.
const (
	TagHostKey = "provision-hostkey" // the pinned SSH host key (public half, authorized_keys form)
	TagUser    = "provision-user"    // the admin user cloud-init created
	tagName    = "Name"
)

// Driver makes EC2 instances. It is safe for concurrent use.
type Driver struct {
	cfg  Config
	name string
	log  *slog.Logger

	// waitMin is the shortest delay between polls of the SDK waiters and of
	// the DependencyViolation retry; tests shorten it.
	waitMin time.Duration
	// depTimeout bounds the DependencyViolation retries of Teardown.
	depTimeout time.Duration
	// httpClient is used for the operator address lookup only.
	httpClient *http.Client

	clientMu sync.Mutex
	client   *ec2.Client
	region   string
	awsCfg   awssdk.Config // the loaded SDK configuration, for the ELBv2 client (balancer.go)
	logs     logsState     // awslogs role and instance profile per cluster (logs.go)
	elb      *elbv2.Client

	sharedMu sync.Mutex
	shared   map[string]*clusterShared // by cluster ID

	names drivers.NameLocks // serializes Create per cluster/machine

	images imageCache

	batches batcher // launches gathered into one RunInstances (batch.go)
	insts   instCache
}

var (
	_ drivers.Driver      = (*Driver)(nil)
	_ drivers.Teardown    = (*Driver)(nil)
	_ drivers.Preflighter = (*Driver)(nil)
)

// New decodes an `driver "aws" { ... }` block. It does no I/O.
func New(body hcl.Body, opts drivers.Options) (drivers.Driver, hcl.Diagnostics) {
	cfg, diags := decodeConfig(body, opts.Eval)
	if diags.HasErrors() {
		return nil, diags
	}
	return newDriver(cfg, opts), diags
}

func newDriver(cfg Config, opts drivers.Options) *Driver {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	name := opts.Name
	if name == "" {
		name = "aws"
	}
	return &Driver{
		cfg:        cfg,
		name:       name,
		log:        log.With("driver", name),
		waitMin:    5 * time.Second,
		depTimeout: defaultDependencyTimeout,
		httpClient: &http.Client{Timeout: 10 * time.Second},
		shared:     map[string]*clusterShared{},
		images:     imageCache{arch: map[string]string{}, images: map[string]imageInfo{}},
	}
}

// ec2Client loads the SDK configuration on first use and returns the client.
// A failure is not cached: the next call tries again.
func (d *Driver) ec2Client(ctx context.Context) (*ec2.Client, error) {
	d.clientMu.Lock()
	defer d.clientMu.Unlock()
	if d.client != nil {
		return d.client, nil
	}
	var loadOpts []func(*config.LoadOptions) error
	if d.cfg.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(d.cfg.Region))
	}
	if d.cfg.Profile != "" {
		loadOpts = append(loadOpts, config.WithSharedConfigProfile(d.cfg.Profile))
	}
	// The SDK's standard retryer backs off on throttling and transient
	// errors, for every client made from this configuration (EC2, ELBv2,
	// IAM, CloudWatch Logs); see newRetryer.
	loadOpts = append(loadOpts, config.WithRetryer(func() awssdk.Retryer { return newRetryer(awsretry.DefaultMaxBackoff) }))
	// The SDK's own warnings go to our log, not straight to stderr.
	loadOpts = append(loadOpts, config.WithLogger(logging.LoggerFunc(func(c logging.Classification, format string, v ...any) {
		d.log.Debug("aws sdk: "+fmt.Sprintf(format, v...), "class", string(c))
	})))
	awsCfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		return nil, errors.New("no AWS region: set region in the driver block, AWS_REGION, or a region in the AWS profile")
	}
	if !regionRe.MatchString(awsCfg.Region) {
		return nil, fmt.Errorf("%q is not an AWS region name (like eu-west-1): check region in the driver block, AWS_REGION and the AWS profile", awsCfg.Region)
	}
	if _, err := awsCfg.Credentials.Retrieve(ctx); err != nil {
		return nil, fmt.Errorf("no usable AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or profile in the driver block): %w", err)
	}
	d.client = ec2.NewFromConfig(awsCfg, func(o *ec2.Options) {
		if d.cfg.Endpoint != "" {
			o.BaseEndpoint = awssdk.String(d.cfg.Endpoint)
		}
	})
	d.region = awsCfg.Region
	d.awsCfg = awsCfg
	return d.client, nil
}

// notChecked lists, for plan and preflight output, what cannot be checked
// when the EC2 API cannot be asked (no credentials, no region, no network).
func (d *Driver) notChecked() string {
	region := d.cfg.Region
	if region == "" {
		region = "the default region"
	}
	checks := []string{
		"credentials and " + region,
		"instances the cluster already has (adoption, strays)",
		fmt.Sprintf("instance types offered in %s (default %s)", region, d.cfg.InstanceType),
	}
	if d.cfg.AMI != "" {
		checks = append(checks, "AMI "+d.cfg.AMI+" exists there")
	} else {
		checks = append(checks, "the latest Debian 12 / Ubuntu 24.04 image for each architecture")
	}
	switch {
	case len(d.cfg.SubnetIDs) > 0:
		checks = append(checks, "subnets "+strings.Join(d.cfg.SubnetIDs, ", ")+" exist")
	case d.cfg.VPCID != "":
		checks = append(checks, "vpc "+d.cfg.VPCID+" exists and has subnets")
	case !d.cfg.CreateVPC:
		checks = append(checks, "the default VPC has subnets")
	}
	if len(d.cfg.AllowedCIDRs) == 0 && d.cfg.DetectOperatorIP {
		checks = append(checks, "the operator's public address (detect_operator_ip, looked up at apply)")
	}
	checks = append(checks, "account quotas (instances, vCPUs, VPCs; only RunInstances tells)")
	return "not checked: " + strings.Join(checks, "; ")
}

// lockName serializes Create calls for one machine name within this process;
// across processes the tag lookup before RunInstances keeps Create idempotent.
func (d *Driver) lockName(cluster, name string) func() { return d.names.Lock(cluster, name) }

// clusterTags returns the base tag set for a shared resource of the cluster.
func clusterTags(cluster, name string) map[string]string {
	return map[string]string{drivers.TagCluster: cluster, tagName: name}
}

// retryAttempts is how many times one AWS call is tried under throttling or
// transient errors (the SDK's default is 3).
const retryAttempts = 12

// newRetryer is the SDK's standard retryer (exponential backoff with jitter,
// up to maxBackoff between attempts) with more attempts and without its
// client-side retry quota: the quota (a 500-token bucket, 5 a retry, shared
// by every call of a client) runs dry after about a hundred throttled calls,
// and then fails calls without trying them, which a fleet's creates under
// sustained throttling would meet. The backoff alone paces the retries.
func newRetryer(maxBackoff time.Duration) awssdk.Retryer {
	return awsretry.NewStandard(func(o *awsretry.StandardOptions) {
		o.MaxAttempts = retryAttempts
		o.MaxBackoff = maxBackoff
		o.RateLimiter = ratelimit.None
	})
}
