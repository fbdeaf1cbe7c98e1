package local

import (
	"fmt"
	"math"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/provision/provision/drivers"
)

// DefaultImage is the host image built by drivers/local/image/build.sh.
const DefaultImage = "provision/host:bookworm"

// Config is the decoded driver block, defaults applied.
type Config struct {
	Image      string  // host image (a systemd + sshd root filesystem)
	Network    string  // an existing network to use instead of creating one per cluster
	Internal   bool    // create the cluster network with Internal=true (no outside access)
	Subnet     string  // CIDR of the created network ("" = the engine picks one)
	DockerHost string  // overrides DOCKER_HOST ("" = the environment's)
	Memory     int64   // per-host memory limit in bytes (0 = none)
	CPUs       float64 // per-host CPU limit (0 = none)
}

type rawConfig struct {
	Image      *string  `hcl:"image,optional"`
	Network    *string  `hcl:"network,optional"`
	Internal   *bool    `hcl:"internal,optional"`
	Subnet     *string  `hcl:"subnet,optional"`
	DockerHost *string  `hcl:"docker_host,optional"`
	Memory     *string  `hcl:"memory,optional"`
	CPUs       *float64 `hcl:"cpus,optional"`
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
		Image:      str(raw.Image, DefaultImage),
		Network:    str(raw.Network, ""),
		Internal:   raw.Internal != nil && *raw.Internal,
		Subnet:     str(raw.Subnet, ""),
		DockerHost: str(raw.DockerHost, ""),
	}
	if strings.TrimSpace(c.Image) == "" {
		bad("image", "Empty image", "image must name a host image such as \""+DefaultImage+"\" (built by `make host-image`).")
	}
	if c.Network != "" && (c.Internal || c.Subnet != "") {
		attr := "internal"
		if c.Subnet != "" {
			attr = "subnet"
		}
		bad(attr, "Conflicting network settings",
			fmt.Sprintf("network = %q uses an existing network as it is; internal and subnet apply only to the network the driver creates.", c.Network))
	}
	if c.Subnet != "" {
		p, err := netip.ParsePrefix(c.Subnet)
		if err != nil || !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 29 {
			bad("subnet", "Invalid subnet", fmt.Sprintf("subnet %q must be an IPv4 CIDR block between /8 and /29, such as \"172.30.0.0/24\".", c.Subnet))
		} else {
			c.Subnet = p.Masked().String()
		}
	}
	if c.DockerHost != "" {
		switch u, err := url.Parse(c.DockerHost); {
		case err != nil || u.Scheme == "":
			bad("docker_host", "Invalid docker_host", fmt.Sprintf("docker_host %q must be a URL such as \"unix:///var/run/docker.sock\" or \"tcp://127.0.0.1:2376\".", c.DockerHost))
		case u.Scheme != "unix" && u.Scheme != "tcp":
			// The Engine SDK speaks to a socket or TCP (TLS from DOCKER_CERT_PATH);
			// ssh:// needs the docker CLI's helper, which the tool does not run.
			bad("docker_host", "Unsupported docker_host", fmt.Sprintf("docker_host %q: use a unix:// socket or a tcp:// address (for an engine reached over SSH, forward its socket with `ssh -L` and name the local end).", c.DockerHost))
		case u.Scheme == "unix" && u.Path == "":
			bad("docker_host", "Invalid docker_host", fmt.Sprintf("docker_host %q names no socket path (\"unix:///var/run/docker.sock\").", c.DockerHost))
		case u.Scheme == "tcp" && u.Host == "":
			bad("docker_host", "Invalid docker_host", fmt.Sprintf("docker_host %q names no host (\"tcp://127.0.0.1:2376\").", c.DockerHost))
		}
	}
	if raw.Memory != nil {
		n, err := ParseSize(*raw.Memory)
		switch {
		case err != nil:
			bad("memory", "Invalid memory size", fmt.Sprintf("memory %q: %v. Use a size such as \"512MiB\" or \"2GiB\".", *raw.Memory, err))
		case n < 64<<20:
			bad("memory", "Memory limit too small", fmt.Sprintf("memory %q is below 64MiB: systemd, sshd and a Docker engine will not run in it.", *raw.Memory))
		default:
			c.Memory = n
		}
	}
	if raw.CPUs != nil {
		if *raw.CPUs <= 0 || *raw.CPUs > 1024 || math.IsNaN(*raw.CPUs) {
			bad("cpus", "Invalid CPU limit", fmt.Sprintf("cpus = %v must be a positive number of CPUs, such as 1 or 1.5.", *raw.CPUs))
		} else {
			c.CPUs = *raw.CPUs
		}
	}
	return c, blk.Diags
}

var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

// ParseSize reads a memory size such as "2GiB", "512M" or "1073741824".
// Units are binary (like Docker's --memory): "G", "GB" and "GiB" all mean 2^30.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("no number")
	}
	v, err := strconv.ParseFloat(t[:i], 64)
	if err != nil {
		return 0, fmt.Errorf("bad number %q", t[:i])
	}
	unit, ok := sizeUnits[strings.ToLower(strings.TrimSpace(t[i:]))]
	if !ok {
		return 0, fmt.Errorf("unknown unit %q", strings.TrimSpace(t[i:]))
	}
	n := v * float64(unit)
	if n < 1 || n > math.MaxInt64/2 {
		return 0, fmt.Errorf("out of range")
	}
	return int64(n), nil
}
