// Package drivers defines the one small interface through which provision makes
// and removes machines, and the registry of compiled-in drivers.
//
// A driver knows nothing of Docker, TLS, swarm or hardening: it creates a
// machine that runs sshd, says how to reach it (address, port, user, pinned host
// key) and finds the machines a cluster owns by the ownership tags it set inside
// the create call itself. Everything after that goes over SSH.
package drivers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"

	"github.com/hashicorp/hcl/v2"

	"github.com/provision/provision/provision/redact"
)

// Ownership tags. Every driver stores them on what it creates (Docker labels, EC2
// tags, libvirt metadata, /etc/provision/machine.json for generic) so that
// Machines can find them again after a crash.
const (
	TagCluster = "provision-cluster" // the cluster ID from state (random, stable)
	TagMachine = "provision-machine" // the machine name, unique in the cluster
	TagRole    = "provision-role"    // "manager" or "worker"
	TagPool    = "provision-pool"    // the pool name within the role
	// TagGeneration numbers the machines made under one name: a replaced
	// machine's successor is the next generation, and both exist while the
	// new one joins and the old one leaves (drivers that Coexist).
	TagGeneration = "provision-generation"
)

// ErrNotFound is returned (wrapped) when a machine or resource does not exist.
var ErrNotFound = errors.New("not found")

// Driver makes and removes machines. Implementations must be safe for
// concurrent use: the engine calls Create and Destroy for several machines at
// once (bounded by the parallelism setting).
type Driver interface {
	// Machines lists every machine tagged with the cluster ID, whatever its state.
	Machines(ctx context.Context, cluster string) ([]Machine, error)
	// Create makes one machine and returns how to reach it once sshd accepts
	// connections. It is idempotent by name: if a machine with this name and
	// cluster tag exists, it is returned (started if stopped), not duplicated.
	Create(ctx context.Context, cluster string, want MachineSpec) (Machine, error)
	// Destroy removes the machine and everything made for it alone (disks,
	// volumes, addresses). A machine that is already gone counts as success.
	Destroy(ctx context.Context, m Machine) error
}

// Teardown is implemented by drivers that create resources shared by all of a
// cluster's machines (a Docker network, a VPC, a security group, a key pair).
// The engine calls it after the cluster's last machine on this driver is gone.
type Teardown interface {
	Teardown(ctx context.Context, cluster string) error
}

// Preflighter is implemented by drivers that can check, before anything is
// created, that what the spec asks for can be made: credentials and region
// work, machine types are offered, images exist, named networks exist. The
// engine calls it once per driver with all the machines that driver will
// create, and stops before the first create when it fails. It may do network
// I/O (unlike a Factory) but must change nothing.
type Preflighter interface {
	Preflight(ctx context.Context, want []MachineSpec) error
}

// HostsChecker is implemented by drivers whose pools list existing hosts
// (generic). validate gives it every address the spec's pools on the
// driver list; it reports settings that name none of them, such as a host
// key pinned for a mistyped address, which leaves the real host unpinned.
// Like a Factory it does no I/O.
type HostsChecker interface {
	CheckHosts(hosts []string) hcl.Diagnostics
}

// Resourcer is implemented by drivers that make resources besides machines
// (networks, firewalls, key pairs, resource groups, load balancers), so that
// `plan` can list them. It changes nothing. want is every machine the spec
// asks of this driver (empty for destroy): the driver reports what exists for
// the cluster (Action "keep", or "remove" when want is empty) and what Create
// would add (Action "create"). When it cannot ask the platform (no
// credentials), it returns what it would create from the spec alone together
// with an error saying what it could not check.
type Resourcer interface {
	Resources(ctx context.Context, cluster string, want []MachineSpec) ([]Resource, error)
}

// InPlacer is implemented by drivers whose Info says Coexist but whose
// configuration cannot let two generations of a machine reach each other
// (libvirt's user-mode networking: every guest alone behind its own NAT at
// the same address). ReplaceInPlace says why, "" when generations coexist:
// plan and apply then replace that driver's machines in place, as for
// drivers that reuse the host.
type InPlacer interface {
	ReplaceInPlace() string
}

// Coexists reports whether two generations of one of d's machines can be
// members at once: its type says Coexist and, when d is known, it does not
// ask for in-place replacement.
func Coexists(info Info, d Driver) bool {
	if !info.Coexist {
		return false
	}
	if ip, ok := d.(InPlacer); ok && ip.ReplaceInPlace() != "" {
		return false
	}
	return true
}

// DataPath is implemented by drivers whose network between machines cannot
// carry all of the swarm's traffic. NoESP says why IPsec ESP (IP protocol
// 50, the data path of an encrypted overlay network) between the driver's
// machines is dropped, "" when it is carried: apply then leaves the overlay
// network unencrypted and says so, rather than make one that drops traffic.
type DataPath interface {
	NoESP() string
}

// Placer is implemented by drivers that place machines in failure domains
// (availability zones), so that plan and status can show where each machine
// is or will be and warn when managers share one while another is free. It
// changes nothing; want is every machine the spec asks of this driver.
type Placer interface {
	Placement(ctx context.Context, cluster string, want []MachineSpec) (Placement, error)
}

// Placement is where a driver puts a cluster's machines.
type Placement struct {
	Zones    []string          `json:"zones"`    // the zones the driver spreads machines over, sorted
	Machines map[string]string `json:"machines"` // machine name -> the zone it is in (existing) or will get (new)
}

// Resource actions in a plan.
const (
	ResourceCreate = "create"
	ResourceKeep   = "keep"
	ResourceRemove = "remove"
)

// Resource is one shared cloud resource in a plan.
type Resource struct {
	Kind   string `json:"kind"`           // "vpc", "security-group", "resource-group", "firewall", "load-balancer", ...
	Name   string `json:"name"`           // its name (or the name it will get)
	ID     string `json:"id,omitempty"`   // the platform's ID when it exists
	Action string `json:"action"`         // ResourceCreate, ResourceKeep or ResourceRemove
	Note   string `json:"note,omitempty"` // e.g. "ports 80, 443 from the load balancer"
}

// MachineSpec is what the engine asks a driver to create.
type MachineSpec struct {
	Name    string // unique in the cluster, a valid hostname
	Role    string // "manager" or "worker"
	Pool    string // pool name within the role
	DiskGiB int    // root or data disk size; 0 means the driver's default
	// DockerDiskGiB, when > 0, asks for a second, blank disk of that size
	// for the engine's data (/var/lib/docker: CIS Docker Benchmark 1.1.1)
	// from drivers whose Info honours "docker_disk"; the driver reports
	// where the guest sees it in Machine.DockerDisk, and the host steps
	// format and mount it before the engine is installed.
	DockerDiskGiB int
	Size          string            // machine type (instance type, droplet size, "2cpu-2g"); "" means default
	Address       string            // generic only: the existing host's address ("host" or "host:port")
	Labels        map[string]string // node labels from the spec (drivers may copy them into tags)
	Tags          map[string]string // ownership tags (TagCluster, TagMachine, TagRole, TagPool); set them all
	SSH           SSHAccess         // the admin user and key the machine must accept
	HostKey       HostKey           // the SSH host key the machine must present (drivers that can inject one)
	UserData      string            // optional cloud-init user-data the driver may pass through
	// Logs, when set, says the engine ships container logs to the
	// platform's log service (logging driver awslogs): a driver that can
	// give the machine an identity allowed to write there (AWS: an instance
	// profile) does so and makes the log group; others ignore it.
	Logs *CloudLogs
	// Metrics, when set, says the engines serve Prometheus metrics on a
	// port: a driver that keeps a cloud firewall (security group, NSG)
	// opens it to the cluster's machines and the given CIDRs, nothing else.
	Metrics *MetricsAccess
	// Generation tells machines of one Name apart (1, 2, ...; 0 means 1):
	// drivers whose Info says Coexist key their own resources (container,
	// instance Name tag, domain) by InstanceName(Name, Generation) and
	// Create/Destroy by name and generation. The host name stays Name.
	Generation int
}

// CloudLogs is where a machine's engine ships container logs.
type CloudLogs struct {
	Group         string // log group (awslogs-group)
	Region        string // awslogs-region
	RetentionDays int    // how long the group keeps events; 0: forever
}

// MetricsAccess is who reaches the engines' metrics endpoint besides the
// cluster's own machines.
type MetricsAccess struct {
	Port  int      // TCP port (engine.metrics_addr)
	CIDRs []string // engine.metrics_cidrs
}

// InstanceName is the driver-level name of generation gen of machine name:
// the machine name for the first generation, "<name>-g<gen>" after.
// Machine names end in a number, so no machine name looks like one.
func InstanceName(name string, gen int) string {
	if gen <= 1 {
		return name
	}
	return fmt.Sprintf("%s-g%d", name, gen)
}

// GenerationOf reads the generation from ownership tags (1 when absent:
// machines made before generations existed).
func GenerationOf(tags map[string]string) int {
	if n, err := strconv.Atoi(tags[TagGeneration]); err == nil && n > 1 {
		return n
	}
	return 1
}

// MachineSettings is implemented by drivers whose own block has settings
// that shape every machine they make (the local driver's image and limits).
// A change of one means new machines: plan replaces them (rolling), as it
// does for a changed pool setting the driver honours. It does no I/O.
type MachineSettings interface {
	MachineSettings() map[string]string
}

// SSHAccess is the login the engine will use.
type SSHAccess struct {
	User      string // admin user to create (drivers that make the OS) or to use (generic)
	PublicKey string // authorized_keys line for that user
}

// HostKey is an SSH host key generated by the engine before the machine
// exists, so that the first connection is already strictly checked. Drivers
// that can place files on the new machine (local, libvirt, clouds through
// cloud-init) install PrivatePEM as the ed25519 host key. Public is the
// authorized_keys form of the public half.
type HostKey struct {
	PrivatePEM redact.Secret
	Public     string
}

// Machine is plain data: what exists and how to reach it.
type Machine struct {
	Name           string            `json:"name"`
	ID             string            `json:"id"`                        // the driver's own ID (container ID, instance ID, domain UUID, address for generic)
	Driver         string            `json:"driver"`                    // the driver block's name in the spec
	Address        string            `json:"address"`                   // where the operator reaches SSH and the engine's TLS port
	PrivateAddress string            `json:"private_address,omitempty"` // where other members reach it (swarm advertise); empty means Address
	SSH            SSHEndpoint       `json:"ssh"`
	EnginePort     int               `json:"engine_port,omitempty"` // the engine's TLS port at Address when the driver forwards it elsewhere (libvirt user-mode networking); 0 means the standard 2376
	Tags           map[string]string `json:"tags,omitempty"`
	State          string            `json:"state,omitempty"` // driver's word for it: "running", "stopped", ...
	// DockerDisk is where the guest sees the blank disk the driver attached
	// for /var/lib/docker (MachineSpec.DockerDiskGiB): a stable path such as
	// /dev/disk/by-id/virtio-provision-docker, "" when it has none.
	DockerDisk string `json:"docker_disk,omitempty"`
	// Zone is the failure domain the machine is in (AWS availability zone,
	// Azure zone, DigitalOcean region); "" when the driver has none.
	Zone string `json:"zone,omitempty"`
}

// SSHEndpoint says how to log in. HostKey, when set, is pinned: a different key
// from the host is fatal.
type SSHEndpoint struct {
	User    string   `json:"user"`
	Port    int      `json:"port"`
	HostKey string   `json:"host_key,omitempty"` // authorized_keys form
	Bastion *Bastion `json:"bastion,omitempty"`
	KeyFile string   `json:"key_file,omitempty"` // private key to use instead of the cluster's admin key (generic)
}

// Bastion is a jump host reached first; its host key is pinned the same way.
type Bastion struct {
	Address string `json:"address"`
	Port    int    `json:"port"`
	User    string `json:"user"`
	HostKey string `json:"host_key,omitempty"`
	KeyFile string `json:"key_file,omitempty"`
}

// Advertise returns the address other cluster members should use.
func (m Machine) Advertise() string {
	if m.PrivateAddress != "" {
		return m.PrivateAddress
	}
	return m.Address
}

// Options is what every driver constructor receives besides its own block.
type Options struct {
	Name     string           // the driver block's name (its alias, or its type)
	StateDir string           // the cluster's state directory, for drivers that keep files (generic's TOFU keys, libvirt disks)
	Log      *slog.Logger     // never nil
	Eval     *hcl.EvalContext // variables and functions for the block's expressions
}

// Factory decodes a driver block (its body without the core's own attributes)
// and returns a ready driver. It must not do network I/O: validate and plan run
// without credentials. Diagnostics carry the source ranges of the block.
type Factory func(body hcl.Body, opts Options) (Driver, hcl.Diagnostics)

// Info describes a driver type. The table of known types is static (see
// Known) so that validate and plan can check specs for every driver, built in
// or not; driver packages attach their Factory with Register.
type Info struct {
	Type       string  // "local", "generic", "libvirt", "aws", "azure", "digitalocean"
	New        Factory // nil while the driver package is not linked into this binary
	MinDiskGiB int     // smallest disk the platform accepts (0: the driver manages no disk)
	DefaultGiB int     // disk size when the spec gives none
	NeedsHosts bool    // pools on this driver list existing host addresses (generic)
	// Honours lists the pool settings ("disk", "size", "docker_disk") the driver uses to
	// make a machine. Only these (and the driver's MachineSettings) count in
	// the machine's fingerprint: changing another never rebuilds a machine,
	// and validate warns that it is ignored.
	Honours []string
	// CheckSize, when set, checks a pool's size for this driver at validate
	// time (drivers that size machines themselves: "2cpu-2g").
	CheckSize func(string) error
	// Coexist says two generations of one machine can exist at once (the
	// driver names its resources by InstanceName): a replaced machine's
	// successor joins before it leaves. Drivers that reuse the host
	// (generic) replace a live machine in place instead: it leaves the
	// swarm first (one manager at a time, quorum checked), then is made
	// again and joins.
	Coexist bool
	// Fenced says the driver's machines sit in a network it makes and
	// fences (a VPC or VNet with a security group, NSG or cloud firewall
	// that admits the swarm ports only from inside it): machines on
	// another driver block cannot join them without a joined network.
	Fenced bool
}

// Uses reports whether the driver honours a pool setting.
func (i Info) Uses(setting string) bool { return slices.Contains(i.Honours, setting) }

func checkSize(s string) error {
	_, err := ParseSize(s)
	return err
}

var (
	mu    sync.RWMutex
	known = []Info{
		// local: containers share the engine's disk; size is CPU and memory limits.
		{Type: "local", Honours: []string{"size"}, CheckSize: checkSize, Coexist: true},
		// generic: existing hosts; replacing a live one reinstalls it in place.
		{Type: "generic", NeedsHosts: true},
		// libvirt: each generation is a domain with its own volumes (in
		// user-mode networking, where two guests cannot reach each other,
		// the driver asks for in-place replacement: ReplaceInPlace).
		{Type: "libvirt", MinDiskGiB: 4, DefaultGiB: 20, Honours: []string{"disk", "size", "docker_disk"}, CheckSize: checkSize, Coexist: true},
		{Type: "aws", MinDiskGiB: 8, DefaultGiB: 20, Honours: []string{"disk", "size", "docker_disk"}, Coexist: true, Fenced: true},
		// azure: each generation a VM with its own NIC, public IP and disk.
		{Type: "azure", MinDiskGiB: 30, DefaultGiB: 30, Honours: []string{"disk", "size", "docker_disk"}, Coexist: true, Fenced: true},
		// digitalocean: each generation a droplet with its own volume.
		{Type: "digitalocean", MinDiskGiB: 25, DefaultGiB: 25, Honours: []string{"disk", "size", "docker_disk"}, Coexist: true, Fenced: true},
	}
)

// Register attaches a driver package's factory to its type. Driver packages
// call it from init; the CLI links them all through drivers/all.
func Register(typ string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	for i := range known {
		if known[i].Type == typ {
			if known[i].New != nil {
				panic(fmt.Sprintf("drivers: type %q registered twice", typ))
			}
			known[i].New = f
			return
		}
	}
	panic(fmt.Sprintf("drivers: unknown type %q (add it to the known table)", typ))
}

// Lookup returns the driver type's info.
func Lookup(typ string) (Info, bool) {
	mu.RLock()
	defer mu.RUnlock()
	for _, i := range known {
		if i.Type == typ {
			return i, true
		}
	}
	return Info{}, false
}

// Types lists the known driver types in the table's order.
func Types() []string {
	mu.RLock()
	defer mu.RUnlock()
	out := make([]string, len(known))
	for i, k := range known {
		out[i] = k.Type
	}
	return out
}
