// Package hostos turns a freshly reachable Linux machine into a host running
// the pinned container engine behind TLS: distro detection, engine install
// (distro package or offline bundle), daemon configuration, logging, pruning
// and (issue 5) hardening.
//
// It is mostly data: each step is one record (step.go) in its own file
// (step_<id>.go), with an ID stored in state, the files, units and packages
// it owns, whether a change restarts the engine or needs a drain, how it is
// undone and the certificates it needs; Steps() is the one table. A Check
// reads the facts gathered once per host, an Apply changes the host over
// the Comm. Distros differ in data (the Family table), not in flow.
//
// Adding a step: write hostos/step_<area>_<name>.go with
// `func stepX() *Step { return &Step{ID: "area.name", Files: ..., Units: ..., ...} }` (a file
// step gives render and, if needed, ready/after/off; any other step gives
// check and apply), add stepX to Steps() where it runs, and add its ID to
// TestStepIDsStable. TestStepRecords checks the record: a unique dotted ID,
// every file and unit it touches declared, an undo for what it leaves.
package hostos

import (
	"context"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"

	"github.com/provision/provision/provision/redact"
	"github.com/provision/provision/provision/spec"
)

// Comm is what hostos needs from the transport; *comm.Client satisfies it and
// tests use a recording fake.
type Comm interface {
	Run(ctx context.Context, cmd string, stdin io.Reader) ([]byte, error)
	Upload(ctx context.Context, path string, content io.Reader, mode fs.FileMode) error
	Download(ctx context.Context, path string) ([]byte, error)
}

// Config is everything a host needs to know, derived from the spec and the
// cluster's PKI by the engine. It is read-only during an apply.
type Config struct {
	Cluster   string // cluster name
	ClusterID string
	Node      string // machine name; becomes the hostname
	Role      string // spec.RoleManager or spec.RoleWorker
	Index     int    // the machine's index in its pool (1-based): staggers auto reboots
	AdminUser string
	Engine    spec.Engine
	Logging   spec.Logging
	Prune     spec.Prune
	Hardening spec.Hardening
	TLS       TLSFiles
	// Peers are the advertise addresses of every cluster member (for the firewall).
	Peers []string
	// OperatorCIDRs may reach 2376 (spec tls.allowed_cidrs, or the operator's address as seen by the host).
	OperatorCIDRs []string
	// DockerDisk is the blank disk the machine's driver attached for
	// /var/lib/docker (drivers.Machine.DockerDisk), "" when none: engine.disk
	// formats and mounts it before the engine is installed.
	DockerDisk string
	// BundleDir is the operator-side cache of offline engine bundles.
	BundleDir string
	// AllowDowngrade lets engine.install install an engine package older
	// than the host's (apply --allow-engine-downgrade); without it a pin
	// below the installed version is refused before anything changes.
	AllowDowngrade bool
	// MetricsAddr is the engine's metrics-addr on this host (the spec's
	// engine.metrics_addr with the host's private address filled in), ""
	// when metrics are off. The firewall opens its port to Peers and
	// Engine.MetricsCIDRs.
	MetricsAddr string
}

// TLSFiles are the PEM files the engine's daemon gets. Key is secret.
type TLSFiles struct {
	CA   []byte
	Cert []byte
	Key  redact.Secret
}

// Target is one host during an apply.
type Target struct {
	Name   string
	Comm   Comm
	Facts  *Facts // gathered once by GatherFacts; steps update it after changing the host
	Config *Config
	Log    *slog.Logger
	// Relogin, when set, opens a second, fresh connection to the host (same
	// address, user, key and pinned host key as Comm), runs a trivial
	// command and closes it. harden.ssh calls it after reloading sshd with
	// the new configuration, while Comm's connection is still open: when it
	// fails, the old configuration is put back and sshd reloaded again, so
	// the operator is never locked out.
	Relogin func(ctx context.Context) error

	// restartPending: a step that restarts the engine changed something;
	// the last of the engine steps restarts it once (reloadPending: after
	// a systemd daemon-reload, a unit drop-in changed).
	restartPending, reloadPending bool
}

// Facts are what one remote call (GatherFacts) learns about a host; every
// Check reads them instead of asking the host again.
type Facts struct {
	OS       OSRelease         `json:"os"`
	Arch     string            `json:"arch"`     // dpkg architecture: amd64, arm64
	Hostname string            `json:"hostname"` //
	Files    map[string]string `json:"files"`    // path -> sha256 hex of the files steps manage; absent = no file
	Packages map[string]string `json:"packages"` // package -> installed version
	Units    map[string]string `json:"units"`    // systemd unit -> ActiveState
	Engine   string            `json:"engine"`   // `dockerd --version` number, "" if none

	// UnitFiles is each managed unit's UnitFileState ("enabled", "disabled", "" when there is no such unit).
	UnitFiles map[string]string `json:"unit_files,omitempty"`
	// Virt is `systemd-detect-virt -c`: "none" on a VM or bare metal, else the container type ("docker").
	Virt string `json:"virt,omitempty"`
	// SSHClient is the operator's address as the host sees it ($SSH_CONNECTION's first field), "" when unknown.
	SSHClient string `json:"ssh_client,omitempty"`
	// CloudInit is `cloud-init status` ("done", "running", ...), "" when cloud-init is not installed.
	CloudInit string `json:"cloud_init,omitempty"`
	// Busy lists package-manager processes that were running ("1234 apt-get").
	Busy []string `json:"busy,omitempty"`
	// Commands maps the commands steps use (sshd, nft, hostnamectl, ...) to their path when present.
	Commands map[string]string `json:"commands,omitempty"`
	// Addrs are the host's own addresses (`hostname -I`): where a daemon
	// may bind (the metrics endpoint).
	Addrs []string `json:"addrs,omitempty"`
	// Swarm is the swarm the host's engine is a member of, read from its
	// swarm node certificate; nil when it is in none.
	Swarm *SwarmMember `json:"swarm,omitempty"`
	// Modes are the permission bits of the managed files (absent: unknown).
	Modes map[string]fs.FileMode `json:"modes,omitempty"`
	// ESP says whether the kernel has the IPsec ESP data path encrypted
	// overlay networks need: "yes", "no", "" (not probed).
	ESP string `json:"esp,omitempty"`
	// SSHD is sshd's effective value of each SSHDEnforced setting for a
	// login of the admin user from the operator's address (sshd -T -C:
	// every Include and Match block counted); nil when not read.
	SSHD map[string]string `json:"sshd,omitempty"`
	// SSHPorts are the ports sshd listens on (sshd -T) and the one the
	// facts' own connection came in on; nil when not read.
	SSHPorts []int `json:"ssh_ports,omitempty"`
	// InputDrop lists input base chains outside provision's table whose
	// policy is drop ("ip filter INPUT": ufw, the operator's own rules).
	InputDrop []string `json:"input_drop,omitempty"`
}

// SwarmMember is an engine's swarm membership as its node certificate says.
type SwarmMember struct {
	NodeID    string `json:"node_id"`
	ClusterID string `json:"cluster_id"`
	Role      string `json:"role"` // "manager" or "worker"
}

// MetricsBindable reports whether the engine can listen on addr
// ("host:port") here: an unspecified address, or one the host has. An
// address the host does not have (behind NAT, a name) would stop the engine
// from starting.
func (f *Facts) MetricsBindable(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	if a.IsUnspecified() || a.IsLoopback() {
		return true
	}
	for _, h := range f.Addrs {
		if b, err := netip.ParseAddr(h); err == nil && b.WithZone("") == a.WithZone("") {
			return true
		}
	}
	return false
}

// Container reports whether the host is a container (its kernel is not its own).
func (f *Facts) Container() bool {
	return f.Virt != "" && f.Virt != "none"
}

// OSRelease is the part of /etc/os-release we use.
type OSRelease struct {
	ID        string   `json:"id"`
	IDLike    []string `json:"id_like"`
	VersionID string   `json:"version_id"`
	Codename  string   `json:"codename"`
	Pretty    string   `json:"pretty"`
}
