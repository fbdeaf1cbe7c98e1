package digitalocean

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"

	"github.com/provision/provision/provision/redact"

	"github.com/provision/provision/drivers"
)

// Defaults for the driver block.
const (
	DefaultAPIURL = "https://api.digitalocean.com/"
	DefaultSize   = "s-2vcpu-2gb"
	DefaultImage  = "debian-12-x64"
	// DefaultOperatorIPURL answers with the caller's public IPv4 address as
	// plain text. It is contacted only when detect_operator_ip = true.
	DefaultOperatorIPURL = "https://checkip.amazonaws.com/"
	// TokenEnv is read when the block sets no token (and no api_url).
	TokenEnv = "DIGITALOCEAN_TOKEN"
)

// Config is the decoded driver block, defaults applied.
type Config struct {
	Token            redact.Secret // from the block; empty means TokenEnv (only with the default API URL)
	Region           string        // required: "ams3", "nyc3", ...
	Size             string        // droplet size slug for pools without a size
	Image            string        // image slug ("debian-12-x64") or numeric ID
	VPCUUID          string        // an existing VPC to use (never removed); "" makes one per cluster
	VPCIPRange       string        // the made VPC's range; "" lets DigitalOcean pick a free one
	AllowedCIDRs     []string      // who may reach SSH (22) and the engine's TLS port (2376)
	DetectOperatorIP bool          // when AllowedCIDRs is empty: ask OperatorIPURL
	OperatorIPURL    string        //
	CloudFirewall    bool          // make the cluster's cloud firewall (default true)
	IPv6             bool          // give droplets an IPv6 address too
	Monitoring       bool          // install DigitalOcean's metrics agent
	APIURL           *url.URL      // the API's base URL; the token is sent there and nowhere else
	CustomAPI        bool          // api_url was set in the block
}

type rawConfig struct {
	Token            hcl.Expression `hcl:"token,optional"`
	Region           *string        `hcl:"region,optional"`
	Size             *string        `hcl:"size,optional"`
	Image            *string        `hcl:"image,optional"`
	VPCUUID          *string        `hcl:"vpc_uuid,optional"`
	VPCIPRange       *string        `hcl:"vpc_ip_range,optional"`
	AllowedCIDRs     []string       `hcl:"allowed_cidrs,optional"`
	DetectOperatorIP *bool          `hcl:"detect_operator_ip,optional"`
	OperatorIPURL    *string        `hcl:"operator_ip_url,optional"`
	CloudFirewall    *bool          `hcl:"cloud_firewall,optional"`
	IPv6             *bool          `hcl:"ipv6,optional"`
	Monitoring       *bool          `hcl:"monitoring,optional"`
	APIURL           *string        `hcl:"api_url,optional"`
}

var (
	slugRe   = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	regionRe = regexp.MustCompile(`^[a-z]{3}[0-9]$`)
	uuidRe   = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
)

var str = drivers.Str

// decodeConfig decodes and checks the block; every problem is reported with
// the range of the attribute at fault. The token's value never appears in a
// diagnostic (the snippet printer shows source lines, so a token written
// literally is only warned about without a location).
func decodeConfig(body hcl.Body, ctx *hcl.EvalContext) (Config, hcl.Diagnostics) {
	var raw rawConfig
	blk, ok := drivers.DecodeBlock(body, ctx, &raw)
	if !ok {
		return Config{}, blk.Diags
	}
	rng, bad := blk.Range, blk.Bad

	c := Config{
		Region:        str(raw.Region, ""),
		Size:          str(raw.Size, DefaultSize),
		Image:         str(raw.Image, DefaultImage),
		VPCUUID:       str(raw.VPCUUID, ""),
		VPCIPRange:    str(raw.VPCIPRange, ""),
		AllowedCIDRs:  raw.AllowedCIDRs,
		OperatorIPURL: str(raw.OperatorIPURL, DefaultOperatorIPURL),
	}
	c.DetectOperatorIP = raw.DetectOperatorIP != nil && *raw.DetectOperatorIP
	c.CloudFirewall = raw.CloudFirewall == nil || *raw.CloudFirewall
	c.IPv6 = raw.IPv6 != nil && *raw.IPv6
	c.Monitoring = raw.Monitoring != nil && *raw.Monitoring

	// The token: any string expression, evaluated here. Its value is kept
	// as a redact.Secret and never printed.
	if a, ok := blk.Content().Attributes["token"]; ok {
		v, d := a.Expr.Value(ctx)
		switch {
		case d.HasErrors():
			// Diagnostics from evaluation describe the expression, not the value.
			blk.Diags = append(blk.Diags, d...)
		case v.IsNull():
		case !v.IsKnown() || !v.Type().Equals(cty.String):
			bad("token", "Invalid token", "token must be a string (a DigitalOcean API token); pass it through a variable with sensitive = true.")
		default:
			c.Token = redact.Secret(strings.TrimSpace(v.AsString()))
			if len(a.Expr.Variables()) == 0 && len(c.Token) > 0 {
				// No Subject: the snippet would print the token.
				blk.Diags = append(blk.Diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "DigitalOcean token written in the file",
					Detail: "The digitalocean driver block holds a literal token. Anyone who can read the file can use the account: " +
						"declare `variable \"do_token\" { sensitive = true }`, set token = var.do_token, and pass it with PROVISION_VAR_do_token or -var-file, or set " + TokenEnv + " instead."})
			}
		}
	}

	if c.Region == "" {
		bad("region", "Missing region", "Set region to a DigitalOcean region slug such as \"ams3\", \"fra1\" or \"nyc3\".")
	} else if !regionRe.MatchString(c.Region) {
		bad("region", "Invalid region", fmt.Sprintf("%q is not a DigitalOcean region slug such as \"ams3\" or \"nyc3\".", c.Region))
	}
	if !slugRe.MatchString(c.Size) {
		bad("size", "Invalid size", fmt.Sprintf("%q is not a droplet size slug such as %q.", c.Size, DefaultSize))
	}
	if _, err := strconv.Atoi(c.Image); err != nil && !slugRe.MatchString(c.Image) {
		bad("image", "Invalid image", fmt.Sprintf("%q is neither an image slug such as %q nor a numeric image ID.", c.Image, DefaultImage))
	}
	if c.VPCUUID != "" && !uuidRe.MatchString(c.VPCUUID) {
		bad("vpc_uuid", "Invalid VPC ID", fmt.Sprintf("%q is not a VPC UUID (as shown by the API or `doctl vpcs list`).", c.VPCUUID))
	}
	if c.VPCIPRange != "" {
		p, err := netip.ParsePrefix(c.VPCIPRange)
		switch {
		case c.VPCUUID != "":
			bad("vpc_ip_range", "Conflicting network settings", "vpc_ip_range sizes the VPC the driver makes; it cannot be combined with vpc_uuid.")
		case err != nil || !p.Addr().Is4() || !p.Addr().IsPrivate() || p.Bits() < 16 || p.Bits() > 24:
			bad("vpc_ip_range", "Invalid VPC range", fmt.Sprintf("vpc_ip_range %q must be a private IPv4 block between /16 and /24, such as \"10.42.0.0/20\".", c.VPCIPRange))
		default:
			c.VPCIPRange = p.Masked().String()
		}
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
	if c.CloudFirewall && len(c.AllowedCIDRs) == 0 && !c.DetectOperatorIP {
		bad("allowed_cidrs", "No allowed CIDRs",
			"The cloud firewall opens SSH (22) and the Docker TLS port (2376) only to allowed_cidrs. Set allowed_cidrs = [\"<your public address>/32\"], "+
				"or detect_operator_ip = true to ask "+DefaultOperatorIPURL+" for it when creating.")
	}
	if !c.CloudFirewall && (len(c.AllowedCIDRs) > 0 || c.DetectOperatorIP) {
		blk.Diags = append(blk.Diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "allowed_cidrs without a cloud firewall",
			Detail: "cloud_firewall = false: no cloud firewall is made, so allowed_cidrs and detect_operator_ip have no effect here " +
				"(the hosts' own nftables firewall still limits 2376 to tls.allowed_cidrs).", Subject: rng("cloud_firewall")})
	}
	if c.DetectOperatorIP {
		if u, err := url.Parse(c.OperatorIPURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad("operator_ip_url", "Invalid URL", fmt.Sprintf("operator_ip_url %q must be an http(s) URL.", c.OperatorIPURL))
		}
	}

	// The API's base URL. The token goes to this host and to no other: only
	// https, or plain http to this machine's loopback (tests, a local
	// emulator); no path; and a custom URL never picks up the ambient
	// DIGITALOCEAN_TOKEN, so a spec cannot send the operator's token
	// elsewhere by naming a host.
	c.APIURL, _ = url.Parse(DefaultAPIURL)
	if raw.APIURL != nil && *raw.APIURL != "" {
		c.CustomAPI = true
		u, err := checkAPIURL(*raw.APIURL)
		if err != nil {
			bad("api_url", "Invalid API URL", err.Error())
		} else {
			c.APIURL = u
			if u.String() != DefaultAPIURL && len(c.Token) == 0 {
				bad("api_url", "api_url needs the token in the block",
					"With api_url set, the token is not taken from "+TokenEnv+" (so that a spec cannot send the operator's token to another host): "+
						"set token = var.<a sensitive variable> in this block as well.")
			}
		}
	}
	return c, blk.Diags
}

// checkAPIURL accepts https URLs, and http URLs whose host is a loopback
// address, with no path beyond "/", no query and no credentials.
func checkAPIURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("api_url %q is not an absolute URL such as %q", s, DefaultAPIURL)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("api_url %q must be a scheme and host only (no path, query or credentials), such as %q", s, DefaultAPIURL)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !isLoopback(u.Hostname()) {
			return nil, fmt.Errorf("api_url %q: plain http is allowed only to this machine's loopback address (127.0.0.1, ::1, localhost); "+
				"the token would cross the network unencrypted", s)
		}
	default:
		return nil, fmt.Errorf("api_url %q must use https (or http to a loopback address)", s)
	}
	u.Path = "/"
	return u, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
