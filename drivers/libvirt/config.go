package libvirt

import (
	"fmt"
	"maps"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/provision/provision/drivers"
)

// Defaults for the driver block.
const (
	DefaultURI             = "qemu:///system"
	DefaultDomainType      = "kvm"
	DefaultPool            = "default"
	DefaultMachineType     = "q35"
	DefaultSize            = "2cpu-2g"
	DefaultBootTimeout     = 10 * time.Minute
	DefaultShutdownTimeout = 90 * time.Second
)

// Network modes: how a machine is attached and how it is reached.
const (
	ModeNetwork = "network" // an existing libvirt network; addresses from its DHCP leases
	ModeBridge  = "bridge"  // an existing host bridge; addresses from the guest agent or ARP
	ModeCreate  = "create"  // a NAT network the driver creates per cluster on network_cidr
	ModeUser    = "user"    // QEMU user-mode networking; SSH and the engine port forwarded on 127.0.0.1
)

// defaultNATRange is libvirt's own default network: never used by provision.
var defaultNATRange = netip.MustParsePrefix("192.168.122.0/24")

// Config is the decoded driver block, defaults applied.
type Config struct {
	URI string // libvirt connection URI (the first of URIs)
	// URIs are the hypervisors machines are spread over, one failure domain
	// (zone) each, named by ZoneOf: machine N of a role goes to URIs[(N-1) %
	// len], so managers land on different hypervisors. One entry when the
	// block sets uri.
	URIs            []string
	DomainType      string        // "kvm" or "qemu" (software emulation, TCG)
	Pool            string        // storage pool of the machines' disks and seeds
	Image           string        // base image: a volume name in ImagePool, or a volume's absolute path on the hypervisor
	ImagePool       string        // pool holding Image when it is a name (default Pool)
	Mode            string        // ModeNetwork, ModeBridge, ModeCreate or ModeUser
	Network         string        // ModeNetwork: the libvirt network
	Bridge          string        // ModeBridge: the host bridge
	NetworkCIDR     netip.Prefix  // ModeCreate: the created network's IPv4 block
	MachineType     string        // QEMU machine type ("q35", "pc")
	BootTimeout     time.Duration // start to sshd answering with the pinned key
	ShutdownTimeout time.Duration // ACPI shutdown before the domain is forced off
	SerialLogDir    string        // a directory on the hypervisor for each machine's serial console log ("" = none)
}

type rawConfig struct {
	URI             *string  `hcl:"uri,optional"`
	URIs            []string `hcl:"uris,optional"`
	DomainType      *string  `hcl:"domain_type,optional"`
	Pool            *string  `hcl:"pool,optional"`
	Image           *string  `hcl:"image,optional"`
	ImagePool       *string  `hcl:"image_pool,optional"`
	Network         *string  `hcl:"network,optional"`
	Bridge          *string  `hcl:"bridge,optional"`
	NetworkCIDR     *string  `hcl:"network_cidr,optional"`
	UserNetwork     *bool    `hcl:"user_network,optional"`
	MachineType     *string  `hcl:"machine_type,optional"`
	BootTimeout     *string  `hcl:"boot_timeout,optional"`
	ShutdownTimeout *string  `hcl:"shutdown_timeout,optional"`
	SerialLogDir    *string  `hcl:"serial_log_dir,optional"`
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
	bad := blk.Bad

	c := Config{
		URI:          str(raw.URI, DefaultURI),
		DomainType:   str(raw.DomainType, DefaultDomainType),
		Pool:         str(raw.Pool, DefaultPool),
		Image:        str(raw.Image, ""),
		Network:      str(raw.Network, ""),
		Bridge:       str(raw.Bridge, ""),
		MachineType:  str(raw.MachineType, DefaultMachineType),
		SerialLogDir: str(raw.SerialLogDir, ""),
	}
	c.ImagePool = str(raw.ImagePool, c.Pool)

	c.URIs = []string{c.URI}
	uriAttr := "uri"
	if raw.URIs != nil {
		uriAttr = "uris"
		switch {
		case raw.URI != nil:
			bad("uris", "Both uri and uris", "Set uri (one hypervisor) or uris (machines spread over several hypervisors), not both.")
		case len(raw.URIs) == 0:
			bad("uris", "No hypervisors", "uris must list at least one libvirt connection URI.")
		default:
			c.URIs, c.URI = raw.URIs, raw.URIs[0]
		}
	}
	zones := map[string]string{}
	for _, one := range c.URIs {
		u, err := url.Parse(one)
		if err != nil || u.Scheme == "" {
			bad(uriAttr, "Invalid libvirt URI", fmt.Sprintf("%s %q is not a libvirt connection URI such as %q or \"qemu+ssh://user@host/system\".", uriAttr, one, DefaultURI))
			continue
		}
		if why := checkURI(u); why != "" {
			bad(uriAttr, "Libvirt URI refused", fmt.Sprintf("%s %q: %s", uriAttr, one, why))
			continue
		}
		z := ZoneOf(one)
		if prev, dup := zones[z]; dup {
			bad(uriAttr, "One hypervisor named twice", fmt.Sprintf("uris %q and %q reach the same hypervisor (%s): each entry must be a different host, a failure domain of its own.", prev, one, z))
		}
		zones[z] = one
	}
	u, err := url.Parse(c.URI)
	if err != nil {
		u = &url.URL{}
	}
	switch c.DomainType {
	case "kvm", "qemu":
	default:
		bad("domain_type", "Invalid domain type", fmt.Sprintf("domain_type %q: use \"kvm\" (hardware virtualization) or \"qemu\" (software emulation, where KVM does not work).", c.DomainType))
	}
	for _, a := range []struct{ attr, v string }{{"pool", c.Pool}, {"image_pool", c.ImagePool}, {"network", c.Network}, {"bridge", c.Bridge}, {"machine_type", c.MachineType}} {
		if strings.ContainsAny(a.v, "/\x00\n'\"<>&") {
			bad(a.attr, "Invalid name", fmt.Sprintf("%s %q contains a character libvirt names cannot hold.", a.attr, a.v))
		}
	}
	if raw.Pool != nil && c.Pool == "" {
		bad("pool", "Empty storage pool", "pool must name a libvirt storage pool.")
	}
	switch {
	case c.Image == "":
		bad("image", "No base image", "image must name the qcow2 base image (a cloud image with cloud-init): a volume in the storage pool (image_pool, default pool) or the absolute path of a volume on the hypervisor.")
	case strings.ContainsAny(c.Image, "\x00\n"):
		bad("image", "Invalid image", "image contains a control character.")
	}

	// Exactly one network mode.
	var modes []string
	if raw.Network != nil {
		modes = append(modes, "network")
		c.Mode = ModeNetwork
		if c.Network == "" {
			bad("network", "Empty network", "network must name an existing libvirt network.")
		}
	}
	if raw.Bridge != nil {
		modes = append(modes, "bridge")
		c.Mode = ModeBridge
		if c.Bridge == "" || len(c.Bridge) > 15 {
			bad("bridge", "Invalid bridge", fmt.Sprintf("bridge %q must name an existing host bridge (at most 15 characters).", c.Bridge))
		}
	}
	if raw.NetworkCIDR != nil {
		modes = append(modes, "network_cidr")
		c.Mode = ModeCreate
		p, err := netip.ParsePrefix(*raw.NetworkCIDR)
		switch {
		case err != nil || !p.Addr().Is4() || p.Bits() < 16 || p.Bits() > 28:
			bad("network_cidr", "Invalid network CIDR", fmt.Sprintf("network_cidr %q must be an IPv4 block between /16 and /28, such as \"10.213.0.0/24\".", *raw.NetworkCIDR))
		case !p.Addr().IsPrivate():
			bad("network_cidr", "Public network CIDR", fmt.Sprintf("network_cidr %q is not a private range (10/8, 172.16/12, 192.168/16).", *raw.NetworkCIDR))
		case p.Overlaps(defaultNATRange):
			bad("network_cidr", "Network CIDR overlaps libvirt's default network",
				fmt.Sprintf("network_cidr %q overlaps %s, the range of libvirt's own default network: choose another private block.", *raw.NetworkCIDR, defaultNATRange))
		default:
			c.NetworkCIDR = p.Masked()
		}
	}
	if raw.UserNetwork != nil && *raw.UserNetwork {
		modes = append(modes, "user_network")
		c.Mode = ModeUser
		if u.Host != "" {
			bad("user_network", "User-mode networking on a remote hypervisor",
				fmt.Sprintf("user_network forwards SSH and the engine port on the hypervisor's 127.0.0.1, which this machine cannot reach through %q: use network, bridge or network_cidr.", c.URI))
		}
	}
	if len(c.URIs) > 1 && (c.Mode == ModeCreate || c.Mode == ModeUser) {
		attr := map[string]string{ModeCreate: "network_cidr", ModeUser: "user_network"}[c.Mode]
		bad(attr, "A private network cannot span hypervisors",
			fmt.Sprintf("%s gives each hypervisor its own private network, so machines on different hypervisors of uris could not reach each other: "+
				"with several hypervisors use bridge (a host bridge on a network they share) or network (a libvirt network routed between them).", attr))
	}
	switch len(modes) {
	case 0:
		blk.Diags = append(blk.Diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "No network for the machines",
			Detail: "Set one of: network = \"<libvirt network>\", bridge = \"<host bridge>\", network_cidr = \"10.213.0.0/24\" " +
				"(a NAT network the driver creates for the cluster), or user_network = true (one machine, ports forwarded on 127.0.0.1).",
			Subject: rangePtr(body.MissingItemRange())})
	case 1:
	default:
		bad(modes[1], "Several network modes", fmt.Sprintf("Only one of network, bridge, network_cidr and user_network may be set (found %s).", strings.Join(modes, ", ")))
	}

	dur := func(attr string, p *string, def time.Duration) time.Duration {
		if p == nil {
			return def
		}
		d, err := time.ParseDuration(*p)
		if err != nil || d <= 0 {
			bad(attr, "Invalid duration", fmt.Sprintf("%s %q must be a positive duration such as \"10m\" or \"90s\".", attr, *p))
			return def
		}
		return d
	}
	c.BootTimeout = dur("boot_timeout", raw.BootTimeout, DefaultBootTimeout)
	c.ShutdownTimeout = dur("shutdown_timeout", raw.ShutdownTimeout, DefaultShutdownTimeout)
	if c.SerialLogDir != "" && !strings.HasPrefix(c.SerialLogDir, "/") {
		bad("serial_log_dir", "Relative path", "serial_log_dir must be an absolute directory on the hypervisor.")
	}
	return c, blk.Diags
}

func rangePtr(r hcl.Range) *hcl.Range { return &r }

// uriTransports are the libvirt transports a connection URI may name
// (qemu+TRANSPORT://): the local socket, libvirt's SSH transports (the
// hypervisor's host key checked as ssh(1) does) and TLS. "ext" runs a
// program on this machine that the URI names, and "tcp" is unencrypted.
var uriTransports = map[string]bool{"": true, "unix": true, "ssh": true, "libssh": true, "libssh2": true, "tls": true}

// uriParams are the URI parameters a spec may set; the rest are refused:
// "command" names a program libvirt runs on this machine (so would plan,
// which must only read), and "no_verify" and "known_hosts_verify=ignore"
// turn off the check of the hypervisor's certificate or host key.
var uriParams = map[string]bool{"socket": true, "keyfile": true, "known_hosts": true, "known_hosts_verify": true, "pkipath": true, "sshauth": true, "mode": true, "proxy": true, "netcat": true, "name": true, "no_tty": true}

// checkURI says why a libvirt connection URI is refused, "" when it is not.
func checkURI(u *url.URL) string {
	drv, transport, _ := strings.Cut(u.Scheme, "+")
	if drv != "qemu" {
		return fmt.Sprintf("the driver makes QEMU/KVM domains: the URI must start with qemu:// or qemu+ssh:// (not %s://)", u.Scheme)
	}
	if !uriTransports[transport] {
		return fmt.Sprintf("transport %q is not allowed: use qemu:///system, qemu+ssh://user@host/system or qemu+tls://host/system (\"ext\" runs a program named in the URI on this machine, \"tcp\" is unencrypted)", transport)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return fmt.Sprintf("its parameters do not parse: %v", err)
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := q.Get(k)
		switch {
		case k == "known_hosts_verify" && v != "normal":
			return "known_hosts_verify must be \"normal\" when set: the hypervisor's host key is always checked"
		case !uriParams[k]:
			return fmt.Sprintf("parameter %q is not allowed (allowed: %s); \"command\" would run a program on this machine and \"no_verify\" skips the hypervisor's key or certificate check", k, strings.Join(slices.Sorted(maps.Keys(uriParams)), ", "))
		}
	}
	return ""
}

// ZoneOf names the failure domain of a hypervisor URI: its host
// ("kvm1.lab" for "qemu+ssh://ops@kvm1.lab/system"), or the whole URI for a
// local one ("qemu:///system").
func ZoneOf(uri string) string {
	if u, err := url.Parse(uri); err == nil && u.Hostname() != "" {
		return u.Hostname()
	}
	return uri
}

// resources returns a machine's vCPUs and memory from its pool's size.
func resources(size string) (drivers.Resources, error) {
	if size == "" {
		size = DefaultSize
	}
	return drivers.ParseSize(size)
}
