package aws

import (
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
)

// Defaults for the driver block.
const (
	DefaultInstanceType   = "t3.small"
	DefaultVPCCIDR        = "10.42.0.0/16"
	DefaultRootVolumeType = "gp3"
	// DefaultLaunchBatch machines at most per RunInstances call; MaxLaunchBatch
	// is the most the block may ask (user-data holds each one's install key
	// within EC2's 16 KiB).
	DefaultLaunchBatch = 10
	MaxLaunchBatch     = 20
	// DefaultOperatorIPURL answers with the caller's public IPv4 address as
	// plain text. It is contacted only when detect_operator_ip = true.
	DefaultOperatorIPURL = "https://checkip.amazonaws.com/"
)

// Config is the decoded driver block, defaults applied.
type Config struct {
	Region            string   // "" = the SDK's default chain (AWS_REGION, profile)
	Profile           string   // "" = the SDK's default chain (AWS_PROFILE, "default")
	InstanceType      string   // for pools without a size
	AMI               string   // "" = the latest Debian 12, else Ubuntu 24.04, for the instance type's architecture
	VPCID             string   // an existing VPC (its subnets are used unless SubnetIDs is set)
	SubnetIDs         []string // existing subnets, machines spread across them
	CreateVPC         bool     // make a dedicated VPC, subnets, internet gateway and routes
	VPCCIDR           string   // the dedicated VPC's block
	AllowedCIDRs      []string // who may reach SSH (22) and the engine's TLS port (2376)
	DetectOperatorIP  bool     // when AllowedCIDRs is empty: ask OperatorIPURL for the operator's public address
	OperatorIPURL     string   //
	AssociatePublicIP bool     // give instances a public address (the operator's way in)
	RootVolumeType    string   // EBS type of the (always encrypted) root volume
	Endpoint          string   // EC2 endpoint override (tests, compatible clouds); AWS_ENDPOINT_URL also works
	ELBEndpoint       string   // ELBv2 endpoint override; default Endpoint (moto serves both at one address)
	// InstanceProfile is an existing instance profile for machines whose
	// engine ships logs with awslogs; "" = the driver makes a role and
	// profile allowed exactly that (logs.go).
	InstanceProfile string
	// LaunchBatch is how many machines of one kind (type, image, disk,
	// subnet, role, pool) one RunInstances call may launch together (1:
	// one call per machine). See batch.go.
	LaunchBatch int
	Bastion     *drivers.Bastion
}

type rawConfig struct {
	Region            *string     `hcl:"region,optional"`
	Profile           *string     `hcl:"profile,optional"`
	InstanceType      *string     `hcl:"instance_type,optional"`
	AMI               *string     `hcl:"ami,optional"`
	VPCID             *string     `hcl:"vpc_id,optional"`
	SubnetIDs         []string    `hcl:"subnet_ids,optional"`
	CreateVPC         *bool       `hcl:"create_vpc,optional"`
	VPCCIDR           *string     `hcl:"vpc_cidr,optional"`
	AllowedCIDRs      []string    `hcl:"allowed_cidrs,optional"`
	DetectOperatorIP  *bool       `hcl:"detect_operator_ip,optional"`
	OperatorIPURL     *string     `hcl:"operator_ip_url,optional"`
	AssociatePublicIP *bool       `hcl:"associate_public_ip,optional"`
	RootVolumeType    *string     `hcl:"root_volume_type,optional"`
	Endpoint          *string     `hcl:"endpoint,optional"`
	ELBEndpoint       *string     `hcl:"elb_endpoint,optional"`
	InstanceProfile   *string     `hcl:"instance_profile,optional"`
	LaunchBatch       *int        `hcl:"launch_batch,optional"`
	Bastion           *rawBastion `hcl:"bastion,block"`
}

type rawBastion struct {
	Address string  `hcl:"address"`
	Port    *int    `hcl:"port,optional"`
	User    string  `hcl:"user"`
	HostKey *string `hcl:"host_key,optional"`
	KeyFile *string `hcl:"key_file,optional"`
}

var rootVolumeTypes = []string{"gp3", "gp2", "io1", "io2", "standard"}

var (
	bastionUserRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9._-]{0,31}$`)
	hostnameRe    = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$`)
)

// validHost accepts an IP address or a DNS name.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	return hostnameRe.MatchString(h)
}

var str = drivers.Str

// decodeConfig decodes and checks the block; every problem is reported with
// the range of the attribute at fault.
func decodeConfig(body hcl.Body, ctx *hcl.EvalContext) (Config, hcl.Diagnostics) {
	var raw rawConfig
	blk, ok := drivers.DecodeBlock(body, ctx, &raw)
	if !ok {
		return Config{}, blk.Diags
	}
	rng, bad := blk.Range, blk.Bad

	c := Config{
		Region:          str(raw.Region, ""),
		Profile:         str(raw.Profile, ""),
		InstanceType:    str(raw.InstanceType, DefaultInstanceType),
		AMI:             str(raw.AMI, ""),
		VPCID:           str(raw.VPCID, ""),
		SubnetIDs:       raw.SubnetIDs,
		AllowedCIDRs:    raw.AllowedCIDRs,
		VPCCIDR:         str(raw.VPCCIDR, DefaultVPCCIDR),
		OperatorIPURL:   str(raw.OperatorIPURL, DefaultOperatorIPURL),
		RootVolumeType:  str(raw.RootVolumeType, DefaultRootVolumeType),
		Endpoint:        str(raw.Endpoint, ""),
		InstanceProfile: str(raw.InstanceProfile, ""),
	}
	c.ELBEndpoint = str(raw.ELBEndpoint, c.Endpoint)
	c.LaunchBatch = DefaultLaunchBatch
	if raw.LaunchBatch != nil {
		c.LaunchBatch = *raw.LaunchBatch
		if c.LaunchBatch < 1 || c.LaunchBatch > MaxLaunchBatch {
			bad("launch_batch", "Invalid launch batch", fmt.Sprintf("launch_batch %d: use 1 (one RunInstances call per machine) to %d.", c.LaunchBatch, MaxLaunchBatch))
		}
	}
	c.CreateVPC = raw.CreateVPC == nil && c.VPCID == "" && len(c.SubnetIDs) == 0
	if raw.CreateVPC != nil {
		c.CreateVPC = *raw.CreateVPC
	}
	c.DetectOperatorIP = raw.DetectOperatorIP != nil && *raw.DetectOperatorIP
	c.AssociatePublicIP = raw.AssociatePublicIP == nil || *raw.AssociatePublicIP

	if c.Region != "" && !regionRe.MatchString(c.Region) {
		bad("region", "Invalid region", fmt.Sprintf("%q is not an AWS region name such as \"eu-west-1\".", c.Region))
	}
	if c.InstanceType == "" {
		bad("instance_type", "Empty instance type", "instance_type must name an EC2 instance type such as \"t3.small\".")
	}
	if c.AMI != "" && !strings.HasPrefix(c.AMI, "ami-") {
		bad("ami", "Invalid AMI ID", fmt.Sprintf("%q is not an AMI ID (ami-...). Leave ami unset to use the latest Debian 12 image.", c.AMI))
	}
	if c.VPCID != "" && !strings.HasPrefix(c.VPCID, "vpc-") {
		bad("vpc_id", "Invalid VPC ID", fmt.Sprintf("%q is not a VPC ID (vpc-...).", c.VPCID))
	}
	for _, s := range c.SubnetIDs {
		if !strings.HasPrefix(s, "subnet-") {
			bad("subnet_ids", "Invalid subnet ID", fmt.Sprintf("%q is not a subnet ID (subnet-...).", s))
		}
	}
	if c.CreateVPC && (c.VPCID != "" || len(c.SubnetIDs) > 0) {
		bad("create_vpc", "Conflicting network settings", "create_vpc = true makes a dedicated VPC; it cannot be combined with vpc_id or subnet_ids.")
	}
	if p, err := netip.ParsePrefix(c.VPCCIDR); err != nil || !p.Addr().Is4() || p.Bits() < 16 || p.Bits() > 24 {
		bad("vpc_cidr", "Invalid VPC CIDR", fmt.Sprintf("vpc_cidr %q must be an IPv4 block between /16 and /24, such as %q.", c.VPCCIDR, DefaultVPCCIDR))
	} else {
		c.VPCCIDR = p.Masked().String()
	}
	for i, s := range c.AllowedCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			if a, aerr := netip.ParseAddr(s); aerr == nil {
				p = netip.PrefixFrom(a, a.BitLen())
			} else {
				bad("allowed_cidrs", "Invalid CIDR", fmt.Sprintf("allowed_cidrs[%d] = %q is not a CIDR block such as \"203.0.113.7/32\".", i, s))
				continue
			}
		}
		c.AllowedCIDRs[i] = p.Masked().String()
		if p.Bits() == 0 {
			blk.Diags = append(blk.Diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "SSH and the engine port open to everyone",
				Detail: fmt.Sprintf("allowed_cidrs contains %q: SSH and the Docker TLS port will accept connections from any address.", s), Subject: rng("allowed_cidrs")})
		}
	}
	if len(c.AllowedCIDRs) == 0 && !c.DetectOperatorIP {
		bad("allowed_cidrs", "No allowed CIDRs",
			"SSH (22) and the Docker TLS port (2376) are opened only to allowed_cidrs. Set allowed_cidrs = [\"<your public address>/32\"], "+
				"or detect_operator_ip = true to ask "+DefaultOperatorIPURL+" for it when creating.")
	}
	if c.DetectOperatorIP {
		if u, err := url.Parse(c.OperatorIPURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad("operator_ip_url", "Invalid URL", fmt.Sprintf("operator_ip_url %q must be an http(s) URL.", c.OperatorIPURL))
		}
	}
	if !slices.Contains(rootVolumeTypes, c.RootVolumeType) {
		bad("root_volume_type", "Unsupported root volume type", fmt.Sprintf("root_volume_type %q: use one of %s.", c.RootVolumeType, strings.Join(rootVolumeTypes, ", ")))
	}
	if c.Endpoint != "" {
		if u, err := url.Parse(c.Endpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad("endpoint", "Invalid endpoint", fmt.Sprintf("endpoint %q must be an http(s) URL.", c.Endpoint))
		}
	}
	if raw.ELBEndpoint != nil && c.ELBEndpoint != "" {
		if u, err := url.Parse(c.ELBEndpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad("elb_endpoint", "Invalid endpoint", fmt.Sprintf("elb_endpoint %q must be an http(s) URL.", c.ELBEndpoint))
		}
	}
	if raw.Bastion != nil {
		b := raw.Bastion
		c.Bastion = &drivers.Bastion{Address: strings.TrimSpace(b.Address), Port: 22, User: b.User, HostKey: strings.TrimSpace(str(b.HostKey, "")), KeyFile: str(b.KeyFile, "")}
		if b.Port != nil {
			c.Bastion.Port = *b.Port
		}
		bb := blk.Content().Blocks.OfType("bastion")[0]
		bschema, _ := gohcl.ImpliedBodySchema(b)
		bcontent, _, _ := bb.Body.PartialContent(bschema)
		brng := func(name string) *hcl.Range {
			if a, ok := bcontent.Attributes[name]; ok {
				r := a.Expr.Range()
				return &r
			}
			return bb.DefRange.Ptr()
		}
		bbad := func(attr, summary, detail string) {
			blk.Diags = append(blk.Diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: brng(attr)})
		}
		if c.Bastion.Port < 1 || c.Bastion.Port > 65535 {
			r := bb.DefRange
			blk.Diags = append(blk.Diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid bastion port",
				Detail: fmt.Sprintf("port %d is outside 1-65535.", c.Bastion.Port), Subject: &r})
		}
		if !validHost(c.Bastion.Address) {
			bbad("address", "Invalid bastion address", fmt.Sprintf("bastion.address %q must be the jump host's IP address or DNS name.", c.Bastion.Address))
		}
		if !bastionUserRe.MatchString(c.Bastion.User) {
			bbad("user", "Invalid bastion user", fmt.Sprintf("bastion.user %q must be the login user on the jump host.", c.Bastion.User))
		}
		switch k := c.Bastion.HostKey; {
		case k == "":
			bbad("host_key", "Missing bastion host key", "bastion.host_key must pin the jump host's key (authorized_keys form, as in /etc/ssh/ssh_host_ed25519_key.pub): provision never connects to a host it cannot verify.")
		default:
			if pk, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil || len(strings.TrimSpace(string(rest))) > 0 || strings.HasPrefix(pk.Type(), "ssh-dss") {
				bbad("host_key", "Invalid bastion host key", "bastion.host_key must be exactly one public key in authorized_keys form, such as \"ssh-ed25519 AAAA...\" (DSA keys are not accepted).")
			}
		}
		if b.KeyFile != nil && strings.TrimSpace(*b.KeyFile) == "" {
			bbad("key_file", "Invalid bastion key file", "bastion.key_file is empty: leave it out to use the cluster's admin key.")
		}
	}
	if !c.AssociatePublicIP && c.Bastion == nil {
		blk.Diags = append(blk.Diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "Private addresses only",
			Detail: "associate_public_ip = false without a bastion block: provision will connect to the instances' private addresses, " +
				"which works only from inside the VPC (or over a VPN).", Subject: rng("associate_public_ip")})
	}
	return c, blk.Diags
}
