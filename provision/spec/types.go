// Package spec loads a cluster file into a checked, read-only Cluster value.
//
// Load parses HCL with hclparse, evaluates variables through an hcl.EvalContext,
// decodes into unexported raw structs, converts them into the exported types
// below with defaults applied, and validates the result. All problems come back
// at once as hcl.Diagnostics whose Subject is the offending range. Driver blocks
// stay hcl.Body until the driver's own Factory decodes them.
//
// A Cluster holds no facts and no clients and is never changed after Load.
package spec

import (
	"strconv"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// Roles.
const (
	RoleManager = "manager"
	RoleWorker  = "worker"
)

// Cluster is one cluster file, loaded and checked.
type Cluster struct {
	Name        string               // cluster name: lowercase letters, digits, '-'; used in machine names
	Files       []string             // the files it was loaded from
	Drivers     []DriverBlock        // in file order; at least one (an implicit local driver when none is written)
	Managers    Pool                 // exactly one manager pool
	Workers     []Pool               // zero or more worker pools, distinct pool names
	Engine      Engine               //
	Prune       Prune                //
	Logging     Logging              //
	TLS         TLS                  //
	Hardening   Hardening            //
	Swarm       Swarm                //
	SSH         SSH                  //
	Parallelism int                  // bound on concurrent host work; default every host, up to 256
	Ranges      map[string]hcl.Range // source ranges of settings by dotted path ("managers.count", "engine.version"), for later diagnostics
	// Secrets are the values of variables declared `sensitive = true` (each
	// string, number and bool in them, as text): whatever prints something
	// derived from the spec replaces them (redact.NewValues).
	Secrets []string
	// SensitivePaths are the settings (dotted paths as in Ranges) whose
	// expression uses a sensitive variable: their values, even when only
	// derived from the secret, are not shown.
	SensitivePaths map[string]bool

	// LoadBalancer is the load_balancer block (lb.go).
	LoadBalancer LoadBalancer

	// Images are image archives (`docker save` tarballs) loaded onto every
	// node through its engine API (images.go): absolute paths, resolved
	// against the first cluster file's directory.
	Images []string
}

// DriverBlock is a `driver "TYPE" { ... }` block. Name is its `alias`
// attribute or, without one, its type; pools refer to it by Name.
type DriverBlock struct {
	Type  string
	Name  string
	Body  hcl.Body  // the block's body minus the core's own attributes (alias), for the driver's Factory
	Range hcl.Range // the block's definition range
	Eval  *hcl.EvalContext
}

// Pool is the `managers { }` block or one `workers { }` block.
type Pool struct {
	Role    string // RoleManager or RoleWorker
	Name    string // "manager" for managers; the workers block's `pool` attribute, default "worker"
	Driver  string // DriverBlock.Name; defaults to the only driver when there is one
	Count   int    // number of machines; for drivers with NeedsHosts defaults to len(Hosts)
	DiskGiB int    // disk size in GiB (accepts 20 or "20GiB"/"20G"/"512MiB" rounded up); default from the driver
	// DockerDiskGiB is the size of a second disk the driver attaches for
	// the engine's data, formatted and mounted at /var/lib/docker before
	// the engine is installed (CIS Docker Benchmark 1.1.1); 0: none, the
	// engine's data stays on the root disk.
	DockerDiskGiB int
	Size          string            // machine type/size, driver-specific; "" is the driver's default
	Labels        map[string]string // swarm node labels (in addition to provision.role and provision.pool)
	Hosts         []string          // existing host addresses ("addr" or "addr:port") for drivers with NeedsHosts
	Range         hcl.Range
}

// MinDockerDiskGiB is the smallest docker_disk accepted.
const MinDockerDiskGiB = 4

// MachineNames returns the pool's machine names in index order:
// "<cluster>-<pool>-<n>" starting at 1.
func (p Pool) MachineNames(cluster string) []string {
	out := make([]string, p.Count)
	for i := range out {
		out[i] = MachineName(cluster, p.Name, i+1)
	}
	return out
}

// Engine is the `engine { }` block.
type Engine struct {
	Version string // pinned package version or prefix ("20.10.24*"); "" = the distro's candidate, recorded at first install
	Method  string // "package" (the distro's package from the host's mirror) or "bundle" (offline package bundle uploaded from the operator)
	Package string // package name; default "docker.io"
	// BundleDir is where the operator's machine caches downloaded bundles
	// (default: <state dir>/bundles).
	BundleDir string
	// MetricsAddr is where the engine serves its Prometheus metrics
	// (daemon.json metrics-addr): "host:port", or ":port" for the host's
	// private (swarm advertise) address. Default ":9323"; "" is off
	// (`metrics_addr = "off"`). See metrics.go.
	MetricsAddr string
	// MetricsCIDRs may reach the metrics port besides the cluster's
	// members (a Prometheus server elsewhere).
	MetricsCIDRs []string
	// RegistryMirrors are pull-through mirrors of Docker Hub (daemon.json
	// registry-mirrors), "https://mirror.internal:5000".
	RegistryMirrors []string
	// Registries are private registries whose CA the engines trust
	// (/etc/docker/certs.d/<host>/ca.crt): `registry "HOST[:PORT]" { ca_file = "..." }`.
	Registries []Registry
}

// Registry is one private registry the engines trust.
type Registry struct {
	Host string // "registry.internal:5000"
	CA   string // PEM certificates, read from ca_file at load
}

// Prune is the `prune { }` block: scheduled `docker system prune` per host.
type Prune struct {
	Enabled         bool   // default true
	Schedule        string // systemd OnCalendar expression; default "daily"
	Until           string // age filter as a Go duration ("24h"); default "24h"
	Volumes         bool   // also prune unused volumes; default false
	RandomizedDelay string // systemd RandomizedDelaySec; default "1h"
}

// Logging is the `logging { }` block: the engine's default log driver.
type Logging struct {
	Driver  string            // default "json-file"
	Options map[string]string // default for json-file/local: max-size=10m, max-file=3
	// JournaldMaxUse caps journald's persistent storage (SystemMaxUse); default "500M".
	JournaldMaxUse string
	// RetentionDays is how long the cloud's log group keeps events
	// (awslogs: the group the aws driver makes); default 30, 0 = forever.
	RetentionDays int
}

// TLS is the `tls { }` block.
type TLS struct {
	ValidityHours int      // server and client cert lifetime; default 8760 (one year). The CA lives 10 years.
	ExtraNames    []string // extra DNS names or IPs for every server cert
	AllowedCIDRs  []string // who may reach 2376; empty = the operator's address as seen by the host
	// RenewBeforeHours is the renewal window: apply reissues a server or
	// client certificate that expires within it (engines restart, drained,
	// in rolling batches). Default: a third of ValidityHours.
	RenewBeforeHours int
}

// Swarm is the `swarm { }` block: the swarm's own security settings.
type Swarm struct {
	// Autolock encrypts the managers' raft keys at rest: a restarted
	// manager stays locked until unlocked with the key provision keeps in
	// the state directory (apply and `provision unlock` do it). Default
	// true. Quorum recovery and restore write the node key in the clear
	// first (Docker cannot re-form a swarm from an encrypted raft,
	// moby/moby#36852; swarm/nodekey.go).
	Autolock bool
	// NodeCertExpiry is the lifetime of the swarm's own node certificates
	// (the swarm CA's NodeCertExpiry; the nodes renew them themselves).
	// Default 2160h (90 days, Docker's default).
	NodeCertExpiry time.Duration
}

// Hardening is the `hardening { }` block; every switch defaults to true except
// UserNamespaces and AutoReboot (OverlayEncryption is on by default and used
// where every member's kernel has the ESP data path). The lists (tagged, and
// left out when empty) are the bare-metal knobs: who else may log in over
// SSH, and what else the firewall lets in.
type Hardening struct {
	Profile           string // "default" or "off" (off turns every switch off unless set explicitly)
	SSH               bool
	Kernel            bool
	Firewall          bool
	Daemon            bool
	Audit             bool
	Updates           bool
	AutoReboot        bool // reboots when an update needs one, at a time staggered per node (managers never together)
	UserNamespaces    bool
	OverlayEncryption bool
	// SSHUsers may log in over SSH besides the admin user (sshd AllowUsers).
	SSHUsers []string `json:"ssh_users,omitempty"`
	// SSHGroups: members of these groups may log in over SSH too.
	SSHGroups []string `json:"ssh_groups,omitempty"`
	// FirewallAllow are inbound rules added to the firewall (firewall_allow blocks).
	FirewallAllow []FirewallRule `json:"firewall_allow,omitempty"`
}

// FirewallRule is one `firewall_allow { }` block: protocol, ports and the
// sources they are open to.
type FirewallRule struct {
	Protocol string   `json:"protocol"` // "tcp" (default) or "udp"
	Ports    []string `json:"ports"`    // "443" or a range "9100-9110"
	From     []string `json:"from"`     // CIDRs or addresses; required ("0.0.0.0/0" and "::/0" for anyone)
}

// SSH is the `ssh { }` block: the admin login provision creates or uses.
type SSH struct {
	User string // default "provision" (drivers that create the OS); generic uses its own driver setting
	// ConnectTimeout bounds the SSH connection retries per host during
	// apply (`connect_timeout = "30s"`); 0 means the engine's default (3m).
	ConnectTimeout time.Duration
}

// MachineName is the single place machine names are made.
func MachineName(cluster, pool string, index int) string {
	return cluster + "-" + pool + "-" + strconv.Itoa(index)
}

// Pools returns the manager pool followed by the worker pools.
func (c *Cluster) Pools() []Pool {
	return append([]Pool{c.Managers}, c.Workers...)
}

// Driver returns the driver block with that name.
func (c *Cluster) Driver(name string) (DriverBlock, bool) {
	for _, d := range c.Drivers {
		if d.Name == name {
			return d, true
		}
	}
	return DriverBlock{}, false
}
