package azure

import (
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/provision/provision/drivers"
)

// Defaults for the driver block.
const (
	DefaultVMSize     = "Standard_B2s"
	DefaultImage      = "Debian:debian-12:12-gen2:latest"
	DefaultOSDiskType = "StandardSSD_LRS"
	DefaultVNetCIDR   = "10.42.0.0/16"
	// DefaultOperatorIPURL answers with the caller's public IPv4 address as
	// plain text. It is contacted only when detect_operator_ip = true.
	DefaultOperatorIPURL = "https://checkip.amazonaws.com/"
)

// Clouds the block's cloud attribute names.
const (
	CloudPublic     = "public"
	CloudGovernment = "government"
	CloudChina      = "china"
	CloudCustom     = "custom" // Azure Stack Hub or another Resource Manager endpoint
)

// Config is the decoded driver block, defaults applied.
type Config struct {
	SubscriptionID string // "" = AZURE_SUBSCRIPTION_ID, read on first use
	TenantID       string // "" = the credential's own (AZURE_TENANT_ID, the CLI's)
	Location       string // the region: "westeurope", "eastus2"

	Cloud string // CloudPublic, CloudGovernment, CloudChina or CloudCustom
	// For CloudCustom: the Resource Manager endpoint, the token audience
	// (default the endpoint) and the Entra ID (or ADFS) authority host.
	ResourceManagerEndpoint string
	ResourceManagerAudience string
	AuthorityHost           string

	ResourceGroup  string            // an existing group to use; "" = the driver makes provision-<cluster>
	VMSize         string            // for pools without a size
	Image          ImageRef          // marketplace image; Version "latest" resolves at create
	OSDiskType     string            // managed disk SKU of the OS disk
	PoolOSDiskType map[string]string // per pool name, overrides OSDiskType
	VNetCIDR       string            // the cluster's virtual network
	SubnetCIDR     string            // its one subnet (default: the first /24 of the VNet)
	Zones          []string          // nil = every zone the region offers for the size; empty = no zones
	AllowedCIDRs   []string          // who may reach SSH (22) and the engine's TLS port (2376)
	// When AllowedCIDRs is empty: ask OperatorIPURL for the operator's public address.
	DetectOperatorIP bool
	OperatorIPURL    string
	PublicIP         bool // a Standard static public IP per VM (the operator's way in)
	Bastion          *drivers.Bastion
}

// ImageRef is a marketplace image URN: publisher:offer:sku:version.
type ImageRef struct {
	Publisher, Offer, SKU, Version string
}

func (i ImageRef) String() string {
	return i.Publisher + ":" + i.Offer + ":" + i.SKU + ":" + i.Version
}

func parseImage(s string) (ImageRef, bool) {
	p := strings.Split(s, ":")
	if len(p) != 4 {
		return ImageRef{}, false
	}
	for _, f := range p {
		if f == "" || strings.ContainsAny(f, "/?#% ") {
			return ImageRef{}, false
		}
	}
	return ImageRef{Publisher: p[0], Offer: p[1], SKU: p[2], Version: p[3]}, true
}

type rawConfig struct {
	SubscriptionID          *string           `hcl:"subscription_id,optional"`
	TenantID                *string           `hcl:"tenant_id,optional"`
	Location                *string           `hcl:"location,optional"`
	Cloud                   *string           `hcl:"cloud,optional"`
	ResourceManagerEndpoint *string           `hcl:"resource_manager_endpoint,optional"`
	ResourceManagerAudience *string           `hcl:"resource_manager_audience,optional"`
	AuthorityHost           *string           `hcl:"authority_host,optional"`
	ResourceGroup           *string           `hcl:"resource_group,optional"`
	VMSize                  *string           `hcl:"vm_size,optional"`
	Image                   *string           `hcl:"image,optional"`
	OSDiskType              *string           `hcl:"os_disk_type,optional"`
	PoolOSDiskType          map[string]string `hcl:"pool_os_disk_type,optional"`
	VNetCIDR                *string           `hcl:"vnet_cidr,optional"`
	SubnetCIDR              *string           `hcl:"subnet_cidr,optional"`
	Zones                   *[]string         `hcl:"zones,optional"`
	AllowedCIDRs            []string          `hcl:"allowed_cidrs,optional"`
	DetectOperatorIP        *bool             `hcl:"detect_operator_ip,optional"`
	OperatorIPURL           *string           `hcl:"operator_ip_url,optional"`
	PublicIP                *bool             `hcl:"public_ip,optional"`
	Bastion                 *rawBastion       `hcl:"bastion,block"`
}

type rawBastion struct {
	Address string  `hcl:"address"`
	Port    *int    `hcl:"port,optional"`
	User    string  `hcl:"user"`
	HostKey *string `hcl:"host_key,optional"`
	KeyFile *string `hcl:"key_file,optional"`
}

// OS disk SKUs Azure offers for OS disks (Ultra and Premium v2 cannot be
// OS disks).
var osDiskTypes = []string{"Standard_LRS", "StandardSSD_LRS", "StandardSSD_ZRS", "Premium_LRS", "Premium_ZRS"}

var (
	// locationRe matches Azure region names: westeurope, eastus2,
	// usgovvirginia, chinanorth3; Azure Stack Hub regions are named by
	// their operator ("local", "redmond").
	locationRe = regexp.MustCompile(`^[a-z][a-z0-9]{1,40}$`)
	// rgNameRe is Azure's rule for resource group names (no trailing period).
	rgNameRe = regexp.MustCompile(`^[-\w._()]{0,89}[-\w_()]$`)
	uuidRe   = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	sizeRe   = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{2,63}$`)
	zoneRe   = regexp.MustCompile(`^[1-9]$`)
)

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
		SubscriptionID:          str(raw.SubscriptionID, ""),
		TenantID:                str(raw.TenantID, ""),
		Location:                str(raw.Location, ""),
		Cloud:                   str(raw.Cloud, CloudPublic),
		ResourceManagerEndpoint: strings.TrimRight(str(raw.ResourceManagerEndpoint, ""), "/"),
		ResourceManagerAudience: str(raw.ResourceManagerAudience, ""),
		AuthorityHost:           str(raw.AuthorityHost, ""),
		ResourceGroup:           str(raw.ResourceGroup, ""),
		VMSize:                  str(raw.VMSize, DefaultVMSize),
		OSDiskType:              str(raw.OSDiskType, DefaultOSDiskType),
		PoolOSDiskType:          raw.PoolOSDiskType,
		VNetCIDR:                str(raw.VNetCIDR, DefaultVNetCIDR),
		AllowedCIDRs:            raw.AllowedCIDRs,
		OperatorIPURL:           str(raw.OperatorIPURL, DefaultOperatorIPURL),
	}
	c.DetectOperatorIP = raw.DetectOperatorIP != nil && *raw.DetectOperatorIP
	c.PublicIP = raw.PublicIP == nil || *raw.PublicIP
	if raw.Zones != nil {
		c.Zones = append([]string{}, (*raw.Zones)...)
	}

	if c.SubscriptionID != "" && !uuidRe.MatchString(c.SubscriptionID) {
		bad("subscription_id", "Invalid subscription ID", fmt.Sprintf("%q is not a subscription ID (a GUID such as \"00000000-0000-0000-0000-000000000000\").", c.SubscriptionID))
	}
	if c.TenantID != "" && !uuidRe.MatchString(c.TenantID) && !strings.Contains(c.TenantID, ".") && c.TenantID != "adfs" {
		bad("tenant_id", "Invalid tenant ID", fmt.Sprintf("%q is not a tenant ID (a GUID or a domain such as \"contoso.onmicrosoft.com\").", c.TenantID))
	}
	switch {
	case c.Location == "":
		bad("location", "No location", "Set location to the Azure region to create the cluster in, such as \"westeurope\" or \"eastus2\" (`az account list-locations -o table` lists them).")
	case !locationRe.MatchString(c.Location):
		bad("location", "Invalid location", fmt.Sprintf("%q is not an Azure region name: use the short lower-case form such as \"westeurope\", not \"West Europe\".", c.Location))
	}
	switch c.Cloud {
	case CloudPublic, CloudGovernment, CloudChina:
		for _, a := range []string{"resource_manager_endpoint", "resource_manager_audience", "authority_host"} {
			if _, ok := blk.Content().Attributes[a]; ok {
				bad(a, "Setting needs cloud = \"custom\"", fmt.Sprintf("%s applies only to cloud = \"custom\" (Azure Stack Hub or another Resource Manager endpoint); cloud %q has its own endpoints.", a, c.Cloud))
			}
		}
	case CloudCustom:
		if c.ResourceManagerEndpoint == "" {
			bad("resource_manager_endpoint", "No Resource Manager endpoint", "cloud = \"custom\" needs resource_manager_endpoint, such as \"https://management.local.azurestack.external\".")
		} else if !httpsURL(c.ResourceManagerEndpoint) {
			bad("resource_manager_endpoint", "Invalid endpoint", fmt.Sprintf("resource_manager_endpoint %q must be an https:// URL: credentials are sent to it.", c.ResourceManagerEndpoint))
		}
		if c.AuthorityHost == "" {
			bad("authority_host", "No authority host", "cloud = \"custom\" needs authority_host, the Entra ID or ADFS login endpoint of that cloud (Azure Stack Hub lists it under authentication.loginEndpoint in <resource_manager_endpoint>/metadata/endpoints?api-version=2015-01-01).")
		} else if !httpsURL(c.AuthorityHost) {
			bad("authority_host", "Invalid authority host", fmt.Sprintf("authority_host %q must be an https:// URL.", c.AuthorityHost))
		}
		if c.ResourceManagerAudience == "" {
			c.ResourceManagerAudience = c.ResourceManagerEndpoint
		} else if !httpsURL(c.ResourceManagerAudience) {
			bad("resource_manager_audience", "Invalid audience", fmt.Sprintf("resource_manager_audience %q must be an https:// URL.", c.ResourceManagerAudience))
		} else if publicARM(c.ResourceManagerAudience) && !publicARM(c.ResourceManagerEndpoint) {
			bad("resource_manager_audience", "Audience of a public Azure cloud", fmt.Sprintf("resource_manager_audience %q is the Resource Manager of a public Azure cloud, and its tokens would be sent to resource_manager_endpoint %q, which is not: a custom cloud has its own audience (Azure Stack Hub lists it under authentication.audiences in <resource_manager_endpoint>/metadata/endpoints?api-version=2015-01-01).", c.ResourceManagerAudience, c.ResourceManagerEndpoint))
		}
		if c.AuthorityHost != "" && !strings.HasSuffix(c.AuthorityHost, "/") {
			c.AuthorityHost += "/"
		}
	default:
		bad("cloud", "Unknown cloud", fmt.Sprintf("cloud %q: use \"public\", \"government\", \"china\" or \"custom\" (with resource_manager_endpoint and authority_host).", c.Cloud))
	}
	if c.ResourceGroup != "" && !rgNameRe.MatchString(c.ResourceGroup) {
		bad("resource_group", "Invalid resource group name", fmt.Sprintf("%q: resource group names are 1-90 letters, digits, '-', '_', '.', '(' and ')', not ending in '.'.", c.ResourceGroup))
	}
	if !sizeRe.MatchString(c.VMSize) {
		bad("vm_size", "Invalid VM size", fmt.Sprintf("vm_size %q is not an Azure VM size such as %q.", c.VMSize, DefaultVMSize))
	}
	img, ok := parseImage(str(raw.Image, DefaultImage))
	if !ok {
		bad("image", "Invalid image", fmt.Sprintf("image %q must be a marketplace URN publisher:offer:sku:version such as %q.", str(raw.Image, ""), DefaultImage))
	}
	c.Image = img
	if !slices.Contains(osDiskTypes, c.OSDiskType) {
		bad("os_disk_type", "Unsupported OS disk type", fmt.Sprintf("os_disk_type %q: use one of %s.", c.OSDiskType, strings.Join(osDiskTypes, ", ")))
	}
	pools := make([]string, 0, len(c.PoolOSDiskType))
	for p := range c.PoolOSDiskType {
		pools = append(pools, p)
	}
	sort.Strings(pools)
	for _, p := range pools {
		if t := c.PoolOSDiskType[p]; !slices.Contains(osDiskTypes, t) {
			bad("pool_os_disk_type", "Unsupported OS disk type", fmt.Sprintf("pool_os_disk_type[%q] = %q: use one of %s.", p, t, strings.Join(osDiskTypes, ", ")))
		}
	}
	vnet, err := netip.ParsePrefix(c.VNetCIDR)
	if err != nil || !vnet.Addr().Is4() || vnet.Bits() < 8 || vnet.Bits() > 28 {
		bad("vnet_cidr", "Invalid VNet CIDR", fmt.Sprintf("vnet_cidr %q must be an IPv4 block between /8 and /28, such as %q.", c.VNetCIDR, DefaultVNetCIDR))
	} else {
		vnet = vnet.Masked()
		c.VNetCIDR = vnet.String()
		sub := str(raw.SubnetCIDR, "")
		if sub == "" {
			c.SubnetCIDR = netip.PrefixFrom(vnet.Addr(), max(vnet.Bits(), 24)).String()
		} else if p, err := netip.ParsePrefix(sub); err != nil || !p.Addr().Is4() || p.Bits() > 29 || p.Bits() < vnet.Bits() || !vnet.Contains(p.Addr()) {
			bad("subnet_cidr", "Invalid subnet CIDR", fmt.Sprintf("subnet_cidr %q must be an IPv4 block of at most /29 inside vnet_cidr %s.", sub, c.VNetCIDR))
		} else {
			c.SubnetCIDR = p.Masked().String()
		}
	}
	for _, z := range c.Zones {
		if !zoneRe.MatchString(z) {
			bad("zones", "Invalid availability zone", fmt.Sprintf("zones: %q is not an availability zone number such as \"1\".", z))
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
	if raw.Bastion != nil {
		b := raw.Bastion
		c.Bastion = &drivers.Bastion{Address: b.Address, Port: 22, User: b.User, HostKey: str(b.HostKey, ""), KeyFile: str(b.KeyFile, "")}
		if b.Port != nil {
			c.Bastion.Port = *b.Port
		}
		if c.Bastion.Port < 1 || c.Bastion.Port > 65535 {
			r := blk.Content().Blocks.OfType("bastion")[0].DefRange
			blk.Diags = append(blk.Diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid bastion port",
				Detail: fmt.Sprintf("port %d is outside 1-65535.", c.Bastion.Port), Subject: &r})
		}
	}
	if !c.PublicIP && c.Bastion == nil {
		blk.Diags = append(blk.Diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "Private addresses only",
			Detail: "public_ip = false without a bastion block: provision will connect to the VMs' private addresses, " +
				"which works only from inside the virtual network (or over a VPN or peering).", Subject: rng("public_ip")})
	}
	return c, blk.Diags
}

// publicARM says whether u is the Resource Manager endpoint or audience of
// a public or sovereign Azure cloud.
func publicARM(u string) bool {
	p, err := url.Parse(u)
	if err != nil {
		return false
	}
	switch strings.ToLower(p.Hostname()) {
	case "management.azure.com", "management.core.windows.net",
		"management.usgovcloudapi.net", "management.core.usgovcloudapi.net",
		"management.chinacloudapi.cn", "management.core.chinacloudapi.cn":
		return true
	}
	return false
}

func httpsURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.Scheme == "https" && u.Host != ""
}

// osDiskType is the OS disk SKU for a pool.
func (c Config) osDiskType(pool string) string {
	if t, ok := c.PoolOSDiskType[pool]; ok {
		return t
	}
	return c.OSDiskType
}
