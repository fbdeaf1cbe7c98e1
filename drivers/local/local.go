// Package local is the driver whose hosts are systemd system containers on a
// Docker engine (the operator's own machine, or DOCKER_HOST): each host is a
// container of the host image (drivers/local/image/build.sh) running
// /sbin/init with sshd, on a per-cluster bridge network that the operator's
// machine reaches directly by container address.
//
// The SSH host key the engine generated is copied into the container before
// it starts, so the first connection is already strictly checked; the admin
// user, its authorized key and a passwordless sudoers entry are set up by
// `docker exec` once systemd runs.
//
// The block (every attribute optional):
//
//	driver "local" {
//	  image       = "provision/host:bookworm" # built by `make host-image`
//	  network     = "my-net"                  # use this existing network instead of creating one
//	  internal    = false                     # true: create the cluster network with --internal (air-gapped hosts)
//	  subnet      = "172.30.0.0/24"           # CIDR of the created network (default: the engine picks)
//	  docker_host = "unix:///var/run/docker.sock" # else DOCKER_HOST
//	  memory      = "2GiB"                    # per-host memory limit (default: none)
//	  cpus        = 1.5                       # per-host CPU limit (default: none)
//	}
//
// Pools' disk sizes are ignored (validate warns): containers share the
// engine's disk. A pool's size ("2cpu-2g", drivers.ParseSize) sets the
// host's CPU and memory limits and overrides the block's cpus and memory.
// image, memory and cpus shape every machine (MachineSettings): changing one
// replaces the machines, rolling. Nothing is contacted in New: the Docker
// client is made on first use.
//
// Which engine: the block's docker_host; else the engine the cluster was
// created on, recorded in <state dir>/local/<alias>.json with that engine's
// ID when the first machine is made; else DOCKER_HOST (with
// DOCKER_TLS_VERIFY and DOCKER_CERT_PATH) or the local socket. Once
// recorded, DOCKER_HOST is not followed (after ` + "`eval \"$(provision env ...)\"`" + ` it
// points at a swarm manager), and an engine that answers with another ID
// than the recorded one is refused, naming both. Docker CLI contexts are
// not read (the SDK does not). Before anything is recorded, a DOCKER_HOST
// whose DOCKER_CERT_PATH is a provision state directory's pki (it holds the
// CA key: provision env set it) is refused: that engine is a cluster node.
//
// Generations: a replaced machine's successor is a second container of the
// same machine name (label provision-generation, container and volume
// named after drivers.InstanceName), so the old one keeps serving while the
// new one joins. The host name stays the machine name.
//
// Flags: the engine here refuses --privileged (CAP_SYS_RESOURCE is not in the
// bounding set), so hosts run with every capability but SYS_RESOURCE,
// unconfined seccomp and AppArmor, unmasked /proc and /sys paths (what the
// CLI's --security-opt systempaths=unconfined does, so per-host net.* sysctls
// can be set), the host's cgroup tree read-only (cgroup v1, host cgroup
// namespace: verified here with Docker 20.10), tmpfs /run and /run/lock,
// SIGRTMIN+3 as stop signal, and a named volume on /var/lib/docker (the nested
// engine needs a non-overlay filesystem there). On cgroup v2 engines the
// cgroup tree is bound read-write with the host cgroup namespace, the usual
// recipe for systemd in Docker; that variant is not verified on this machine.
package local

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/hashicorp/hcl/v2"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/atomicfile"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/retry"
)

func init() {
	drivers.Register("local", New)
}

// Labels the driver sets besides the drivers.Tag* ownership tags.
const (
	TagHostKey = "provision-hostkey" // the pinned SSH host key (public half, authorized_keys form)
	TagUser    = "provision-user"    // the admin user
	TagNetwork = "provision-network" // the network the host's address is on
)

// internalLabels are labels the driver sets for itself; Machines does not
// report them as tags.
var internalLabels = []string{TagHostKey, TagUser, TagNetwork}

// Driver makes system containers. It is safe for concurrent use.
type Driver struct {
	cfg  Config
	name string
	log  *slog.Logger

	// bootTimeout bounds the wait for systemd and sshd after a start.
	bootTimeout time.Duration

	clientMu sync.Mutex
	client   *client.Client
	cgroupV2 bool
	engine   engineInfo // the engine the client talks to
	// bindPath is where the engine binding is recorded ("" without a
	// state directory: tests).
	bindPath string

	netMu sync.Mutex // serializes network creation and address picks within the process
	// reserved are the addresses this process gave containers, by network:
	// a container made but not started yet may not show its address.
	reserved map[string]map[netip.Addr]bool
	// noSubnet are the networks that take no fixed address (see noSubnet).
	noSubnet map[string]bool

	names drivers.NameLocks // serializes Create per cluster/machine
}

var (
	_ drivers.Driver          = (*Driver)(nil)
	_ drivers.Teardown        = (*Driver)(nil)
	_ drivers.Preflighter     = (*Driver)(nil)
	_ drivers.MachineSettings = (*Driver)(nil)
)

// New decodes a `driver "local" { ... }` block. It does no I/O.
func New(body hcl.Body, opts drivers.Options) (drivers.Driver, hcl.Diagnostics) {
	cfg, diags := decodeConfig(body, opts.Eval)
	if diags.HasErrors() {
		return nil, diags
	}
	return NewDriver(cfg, opts), diags
}

// NewDriver returns a driver for an already decoded configuration. It does no I/O.
func NewDriver(cfg Config, opts drivers.Options) *Driver {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	name := opts.Name
	if name == "" {
		name = "local"
	}
	if cfg.Image == "" {
		cfg.Image = DefaultImage
	}
	d := &Driver{
		cfg:         cfg,
		name:        name,
		log:         log.With("driver", name),
		bootTimeout: 3 * time.Minute,
		noSubnet:    map[string]bool{},
	}
	if opts.StateDir != "" {
		d.bindPath = filepath.Join(opts.StateDir, "local", name+".json")
	}
	return d
}

// MachineSettings are the block's settings every machine is made with:
// changing one replaces the machines (rolling).
func (d *Driver) MachineSettings() map[string]string {
	out := map[string]string{"image": d.cfg.Image}
	if d.cfg.Memory > 0 {
		out["memory"] = strconv.FormatInt(d.cfg.Memory, 10)
	}
	if d.cfg.CPUs > 0 {
		out["cpus"] = strconv.FormatFloat(d.cfg.CPUs, 'g', -1, 64)
	}
	return out
}

// Config returns the driver's decoded configuration.
func (d *Driver) Config() Config { return d.cfg }

// docker returns the engine client, made on first use (see the package
// comment for which engine). A failure is not cached: the next call tries
// again.
func (d *Driver) docker(ctx context.Context) (*client.Client, error) {
	d.clientMu.Lock()
	defer d.clientMu.Unlock()
	if d.client != nil {
		return d.client, nil
	}
	bound, err := readBinding(d.bindPath)
	if err != nil {
		return nil, err
	}
	opts, where, err := d.endpoint(bound)
	if err != nil {
		return nil, err
	}
	cli, err := client.NewClientWithOpts(append(opts, client.WithAPIVersionNegotiation())...)
	if err != nil {
		return nil, fmt.Errorf("docker client (%s): %w", where, err)
	}
	info, err := cli.Info(ctx)
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("docker engine at %s (%s): %w", cli.DaemonHost(), where, err)
	}
	if bound != nil && bound.EngineID != "" && info.ID != bound.EngineID {
		cli.Close()
		return nil, fmt.Errorf("the engine at %s is %s (%s), but this cluster was created on engine %s (%s) at %s: provision will not look for or make its hosts on another engine. Point docker_host (or DOCKER_HOST) at the engine the cluster lives on; if the cluster really moved, remove %s",
			cli.DaemonHost(), info.ID, info.Name, bound.EngineID, bound.EngineName, bound.Endpoint, d.bindPath)
	}
	d.cgroupV2 = info.CgroupVersion == "2"
	d.engine = engineInfo{ID: info.ID, Name: info.Name, NCPU: info.NCPU, MemTotal: info.MemTotal}
	d.client = cli
	return cli, nil
}

// endpoint chooses the engine: docker_host; else the binding; else the
// environment, unless it points at a provision cluster's node.
func (d *Driver) endpoint(b *binding) ([]client.Opt, string, error) {
	switch {
	case d.cfg.DockerHost != "" && strings.HasPrefix(d.cfg.DockerHost, "unix://"):
		// The environment's TLS settings are for its DOCKER_HOST, not this.
		return []client.Opt{client.WithHost(d.cfg.DockerHost)}, "docker_host in the driver block", nil
	case d.cfg.DockerHost != "":
		return []client.Opt{client.FromEnv, client.WithHost(d.cfg.DockerHost)}, "docker_host in the driver block", nil
	case b != nil:
		if env := os.Getenv("DOCKER_HOST"); env != "" && env != b.Endpoint {
			d.log.Info("DOCKER_HOST is not followed: the cluster lives on the engine it was created on", "docker_host", env, "engine", b.Endpoint)
		}
		opts := []client.Opt{client.WithHost(b.Endpoint)}
		if b.CertPath != "" {
			opts = append(opts, client.WithTLSClientConfig(filepath.Join(b.CertPath, "ca.pem"), filepath.Join(b.CertPath, "cert.pem"), filepath.Join(b.CertPath, "key.pem")))
		}
		return opts, "the engine the cluster was created on, " + d.bindPath, nil
	}
	host, certs := os.Getenv("DOCKER_HOST"), os.Getenv("DOCKER_CERT_PATH")
	if host != "" && certs != "" {
		if _, err := os.Stat(filepath.Join(certs, "ca-key.pem")); err == nil {
			return nil, "", fmt.Errorf("DOCKER_HOST=%s with DOCKER_CERT_PATH=%s points at a node of a provision cluster (that directory holds a cluster CA's key: `provision env` set it), not at an engine to make hosts on: unset DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, or set docker_host in the driver block", host, certs)
		}
	}
	where := "the local socket"
	if host != "" {
		where = "DOCKER_HOST"
	}
	return []client.Opt{client.FromEnv}, where, nil
}

// engineInfo is what the driver knows of its engine.
type engineInfo struct {
	ID, Name string
	NCPU     int
	MemTotal int64
}

// binding records the engine a cluster's hosts live on.
type binding struct {
	Endpoint   string    `json:"endpoint"`            // DOCKER_HOST form
	CertPath   string    `json:"cert_path,omitempty"` // TLS client files, for tcp endpoints
	EngineID   string    `json:"engine_id"`
	EngineName string    `json:"engine_name"`
	Since      time.Time `json:"since"`
}

func readBinding(path string) (*binding, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("local driver: %w", err)
	}
	var bd binding
	if err := json.Unmarshal(b, &bd); err != nil || bd.Endpoint == "" {
		return nil, fmt.Errorf("local driver: %s is corrupt: remove it to use DOCKER_HOST again", path)
	}
	return &bd, nil
}

// bind records the engine the client talks to as the cluster's, once.
func (d *Driver) bind(cli *client.Client) error {
	if d.bindPath == "" {
		return nil
	}
	if b, err := readBinding(d.bindPath); err != nil || b != nil {
		return err
	}
	bd := binding{Endpoint: cli.DaemonHost(), EngineID: d.engine.ID, EngineName: d.engine.Name, Since: time.Now().UTC()}
	if strings.HasPrefix(bd.Endpoint, "tcp://") && d.cfg.DockerHost == "" {
		bd.CertPath = os.Getenv("DOCKER_CERT_PATH")
	}
	b, _ := json.MarshalIndent(bd, "", "  ")
	if err := os.MkdirAll(filepath.Dir(d.bindPath), 0o700); err != nil {
		return err
	}
	if err := atomicfile.Write(d.bindPath, append(b, '\n'), 0o600); err != nil {
		return err
	}
	d.log.Info("cluster bound to engine", "engine", bd.EngineID, "endpoint", bd.Endpoint)
	return nil
}

// Close releases the Docker client, if one was made.
func (d *Driver) Close() error {
	d.clientMu.Lock()
	defer d.clientMu.Unlock()
	if d.client == nil {
		return nil
	}
	err := d.client.Close()
	d.client = nil
	return err
}

// lockName serializes Create calls for one machine name within this process;
// across processes the label lookup and the engine's unique container names
// keep Create idempotent.
func (d *Driver) lockName(cluster, name string) func() { return d.names.Lock(cluster, name) }

var unsafeName = regexp.MustCompile(`[^a-zA-Z0-9_.-]`)

// ClusterShort is the cluster ID part of resource names: its first 12
// characters, made safe for Docker names.
func ClusterShort(cluster string) string {
	s := unsafeName.ReplaceAllString(cluster, "-")
	if len(s) > 12 {
		s = s[:12]
	}
	return s
}

// NetworkName is the name of the network the driver creates for a cluster.
func NetworkName(cluster string) string { return "provision-" + ClusterShort(cluster) }

// ContainerName is the name of a machine's container (for a later
// generation, pass drivers.InstanceName(machine, gen)).
func ContainerName(cluster, machine string) string {
	return "provision-" + ClusterShort(cluster) + "-" + unsafeName.ReplaceAllString(machine, "-")
}

// VolumeName is the name of the volume on a machine's /var/lib/docker.
func VolumeName(cluster, machine string) string { return ContainerName(cluster, machine) + "-docker" }

func clusterFilter(cluster string) filters.Args {
	return filters.NewArgs(filters.Arg("label", drivers.TagCluster+"="+cluster))
}

// Machines lists every container labelled with the cluster ID, running or not.
func (d *Driver) Machines(ctx context.Context, cluster string) ([]drivers.Machine, error) {
	cli, err := d.docker(ctx)
	if err != nil {
		return nil, err
	}
	cs, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: clusterFilter(cluster)})
	if err != nil {
		return nil, fmt.Errorf("list containers of cluster %s: %w", cluster, err)
	}
	if len(cs) > 0 {
		// This engine holds the cluster's hosts: record it (clusters made
		// before the binding existed).
		if err := d.bind(cli); err != nil {
			d.log.Warn("cannot record the cluster's engine", "err", err)
		}
	}
	out := make([]drivers.Machine, 0, len(cs))
	for _, c := range cs {
		addr := ""
		if c.NetworkSettings != nil {
			if ep := c.NetworkSettings.Networks[c.Labels[TagNetwork]]; ep != nil {
				addr = ep.IPAddress
			}
		}
		out = append(out, d.machine(c.ID, c.Labels, c.State, addr))
	}
	slices.SortFunc(out, func(a, b drivers.Machine) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func (d *Driver) machine(id string, labels map[string]string, state, addr string) drivers.Machine {
	tags := map[string]string{}
	for k, v := range labels {
		if !slices.Contains(internalLabels, k) {
			tags[k] = v
		}
	}
	switch state {
	case "exited", "created", "dead":
		state = "stopped"
	}
	return drivers.Machine{
		Name:    labels[drivers.TagMachine],
		ID:      id,
		Driver:  d.name,
		Address: addr,
		SSH:     drivers.SSHEndpoint{User: labels[TagUser], Port: 22, HostKey: labels[TagHostKey]},
		Tags:    tags,
		State:   state,
	}
}

var validUser = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// Create makes the machine's container, or returns (and starts) the one
// already labelled with this cluster and name.
func (d *Driver) Create(ctx context.Context, cluster string, spec drivers.MachineSpec) (drivers.Machine, error) {
	m, err := d.create(ctx, cluster, spec)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("machine %q: %w", spec.Name, err)
	}
	return m, nil
}

func (d *Driver) create(ctx context.Context, cluster string, spec drivers.MachineSpec) (drivers.Machine, error) {
	if cluster == "" || spec.Name == "" {
		return drivers.Machine{}, errors.New("cluster ID and machine name are required")
	}
	if !validUser.MatchString(spec.SSH.User) {
		return drivers.Machine{}, fmt.Errorf("admin user %q is not a valid user name", spec.SSH.User)
	}
	if strings.TrimSpace(spec.SSH.PublicKey) == "" {
		return drivers.Machine{}, errors.New("no admin public key")
	}
	gen := max(1, spec.Generation)
	unlock := d.lockName(cluster, drivers.InstanceName(spec.Name, gen))
	defer unlock()
	cli, err := d.docker(ctx)
	if err != nil {
		return drivers.Machine{}, err
	}
	if err := d.bind(cli); err != nil {
		return drivers.Machine{}, fmt.Errorf("record the cluster's engine: %w", err)
	}
	if spec.DiskGiB != 0 {
		d.log.Debug("disk size ignored: containers share the engine's disk", "machine", spec.Name, "disk_gib", spec.DiskGiB)
	}

	id, err := d.find(ctx, cli, cluster, spec.Name, gen)
	if err != nil {
		return drivers.Machine{}, err
	}
	// The host key this call can vouch for: the one it installs in a
	// container it starts for the first time. A container that ran before
	// may serve a key its host made since (the engine replaces the
	// installed one): the engine's connection, pinned to what state
	// records, checks that one.
	vouch := ""
	if id == "" {
		id, err = d.createContainer(ctx, cli, cluster, spec)
		if err != nil {
			return drivers.Machine{}, err
		}
	} else {
		d.log.Info("container exists", "machine", spec.Name, "container", short(id))
	}

	info, err := cli.ContainerInspect(ctx, id)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("inspect container %s: %w", short(id), err)
	}
	if info.State.Status == "created" && sameKey(info.Config.Labels[TagHostKey], spec.HostKey.Public) && len(spec.HostKey.PrivatePEM) > 0 {
		// Never started: just made, or made by a Create that stopped
		// before starting it (or a concurrent one that has not started it
		// yet). Copying the boot files again is harmless and guarantees
		// the host key is in place before the first start.
		files, err := bootFiles(spec)
		if err == nil {
			err = cli.CopyToContainer(ctx, id, "/", bytes.NewReader(files), container.CopyToContainerOptions{})
		}
		if err != nil {
			return drivers.Machine{}, fmt.Errorf("copy host key and admin files into %s: %w", short(id), err)
		}
		vouch = info.Config.Labels[TagHostKey]
	}
	if !info.State.Running {
		d.log.Info("starting container", "machine", spec.Name, "container", short(id))
		err := cli.ContainerStart(ctx, id, container.StartOptions{})
		if err != nil && info.State.Status == "created" && vouch != "" && (strings.Contains(err.Error(), "ddress already in use") || noSubnet(err)) {
			// Never started, so nothing on it: its fixed address was taken
			// meanwhile, or its network has no subnet of its own to fix one
			// in (the engine says so only at start). Made again, it gets a
			// free address, or one the engine picks.
			if noSubnet(err) {
				d.markNoSubnet(info.Config.Labels[TagNetwork])
			}
			d.log.Warn("container cannot start at its fixed address: making it again", "machine", spec.Name, "container", short(id), "err", err)
			if rerr := cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true}); rerr != nil {
				return drivers.Machine{}, fmt.Errorf("start container %s: %w (and remove it: %v)", short(id), err, rerr)
			}
			if id, err = d.createContainer(ctx, cli, cluster, spec); err == nil {
				var files []byte
				if files, err = bootFiles(spec); err == nil {
					err = cli.CopyToContainer(ctx, id, "/", bytes.NewReader(files), container.CopyToContainerOptions{})
				}
				if err == nil {
					err = cli.ContainerStart(ctx, id, container.StartOptions{})
				}
			}
		}
		if err != nil {
			return drivers.Machine{}, fmt.Errorf("start container %s: %w", short(id), err)
		}
		if info, err = cli.ContainerInspect(ctx, id); err != nil {
			return drivers.Machine{}, fmt.Errorf("inspect container %s: %w", short(id), err)
		}
	}
	labels := info.Config.Labels
	netName := labels[TagNetwork]
	addr := ""
	if info.NetworkSettings != nil {
		if ep := info.NetworkSettings.Networks[netName]; ep != nil {
			addr = ep.IPAddress
		}
	}
	if addr == "" {
		return drivers.Machine{}, fmt.Errorf("container %s has no address on network %q", short(id), netName)
	}

	ctx, cancel := context.WithTimeout(ctx, d.bootTimeout)
	defer cancel()
	if err := d.waitSystemd(ctx, cli, id); err != nil {
		return drivers.Machine{}, err
	}
	if err := d.setupUser(ctx, cli, id, labels[TagUser]); err != nil {
		return drivers.Machine{}, err
	}
	if err := d.waitSSH(ctx, cli, id, addr, vouch); err != nil {
		return drivers.Machine{}, err
	}
	m := d.machine(id, labels, "running", addr)
	d.log.Info("machine ready", "machine", spec.Name, "address", addr)
	return m, nil
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// find returns the ID of the container labelled with cluster, name and
// generation (no generation label: the first), or "".
func (d *Driver) find(ctx context.Context, cli *client.Client, cluster, name string, gen int) (string, error) {
	f := clusterFilter(cluster)
	f.Add("label", drivers.TagMachine+"="+name)
	all, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return "", fmt.Errorf("list containers: %w", err)
	}
	var cs []container.Summary
	for _, c := range all {
		if drivers.GenerationOf(c.Labels) == gen {
			cs = append(cs, c)
		}
	}
	switch len(cs) {
	case 0:
		return "", nil
	case 1:
		return cs[0].ID, nil
	default:
		ids := make([]string, len(cs))
		for i, c := range cs {
			ids[i] = short(c.ID)
		}
		return "", fmt.Errorf("%d containers carry this machine's labels (%s): remove all but one", len(cs), strings.Join(ids, ", "))
	}
}

func (d *Driver) createContainer(ctx context.Context, cli *client.Client, cluster string, spec drivers.MachineSpec) (string, error) {
	if len(spec.HostKey.PrivatePEM) == 0 || spec.HostKey.Public == "" {
		return "", errors.New("no host key to install: the local driver pins the key the engine generates")
	}
	netName, err := d.ensureNetwork(ctx, cli, cluster)
	if err != nil {
		return "", err
	}
	gen := max(1, spec.Generation)
	instance := drivers.InstanceName(spec.Name, gen)
	name := ContainerName(cluster, instance)
	volName := VolumeName(cluster, instance)
	res, err := d.resources(spec)
	if err != nil {
		return "", err
	}
	if _, err := cli.VolumeCreate(ctx, volume.CreateOptions{
		Name:   volName,
		Labels: map[string]string{drivers.TagCluster: cluster, drivers.TagMachine: spec.Name, drivers.TagGeneration: strconv.Itoa(gen)},
	}); err != nil {
		return "", fmt.Errorf("create volume %s: %w", volName, err)
	}

	labels := map[string]string{}
	for k, v := range spec.Tags {
		labels[k] = v
	}
	labels[drivers.TagCluster] = cluster
	labels[drivers.TagMachine] = spec.Name
	labels[drivers.TagGeneration] = strconv.Itoa(gen)
	labels[TagHostKey] = strings.TrimSpace(spec.HostKey.Public)
	labels[TagUser] = spec.SSH.User
	labels[TagNetwork] = netName

	cfg, hc, nc := SystemContainer(d.cfg.Image, spec.Name, netName, volName, d.cgroupV2)
	cfg.Labels = labels
	hc.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyUnlessStopped}
	hc.Resources = res
	// A fixed address: the engine restarts these containers (a reboot of
	// this machine, `docker restart`) in any order, and a dynamic address
	// can then move to another host, while the swarm, the firewall peers
	// and daemon.json name the old one.
	d.netMu.Lock()
	defer d.netMu.Unlock()
	if d.noSubnet == nil {
		d.noSubnet = map[string]bool{}
	}
	var ip netip.Addr
	if !d.noSubnet[netName] {
		if ip, err = d.freeAddress(ctx, cli, netName); err != nil {
			return "", err
		}
	}
	if ip.IsValid() {
		nc.EndpointsConfig[netName].IPAMConfig = &network.EndpointIPAMConfig{IPv4Address: ip.String()}
	}
	d.log.Info("creating container", "machine", spec.Name, "container", name, "network", netName, "image", d.cfg.Image, "address", ip)
	resp, err := cli.ContainerCreate(ctx, cfg, hc, nc, nil, name)
	if err != nil && ip.IsValid() && noSubnet(err) {
		d.noSubnet[netName] = true
		nc.EndpointsConfig[netName].IPAMConfig = nil
		resp, err = cli.ContainerCreate(ctx, cfg, hc, nc, nil, name)
	}
	if err != nil {
		if errdefs.IsConflict(err) {
			// Another process made it between our lookup and now.
			if id, ferr := d.find(ctx, cli, cluster, spec.Name, gen); ferr == nil && id != "" {
				return id, nil
			}
		}
		if errdefs.IsNotFound(err) {
			return "", fmt.Errorf("create container %s: %w (host image %q: run `make host-image`)", name, err, d.cfg.Image)
		}
		return "", fmt.Errorf("create container %s: %w", name, err)
	}
	// The boot files are copied by create, before the first start.
	return resp.ID, nil
}

// resources are the container's limits: the pool's size ("2cpu-2g") when
// set, else the block's cpus and memory.
func (d *Driver) resources(spec drivers.MachineSpec) (container.Resources, error) {
	if spec.Size != "" {
		r, err := drivers.ParseSize(spec.Size)
		if err != nil {
			return container.Resources{}, fmt.Errorf("machine %q: %w", spec.Name, err)
		}
		return container.Resources{Memory: int64(r.MemoryMiB) << 20, NanoCPUs: int64(r.CPUs) * 1e9}, nil
	}
	return container.Resources{Memory: d.cfg.Memory, NanoCPUs: int64(d.cfg.CPUs * 1e9)}, nil
}

// SystemContainer is the recipe of a system-container host, for the driver
// and for tests that start hosts of their own: systemd as PID 1 (stopped with
// SIGRTMIN+3) with every capability but SYS_RESOURCE (--privileged fails
// where that one is outside the bounding set), unconfined seccomp, AppArmor
// and system paths, the host's cgroup tree (read-write on cgroup v2), tmpfs
// /run, and a volume for /var/lib/docker (named dataVolume, or anonymous when
// it is "") so the nested engine has a real overlay2 backing. The container
// is attached to netName. Callers add labels, limits and restart policy.
func SystemContainer(image, hostname, netName, dataVolume string, cgroupV2 bool) (*container.Config, *container.HostConfig, *network.NetworkingConfig) {
	cgroupBind, cgroupns := "/sys/fs/cgroup:/sys/fs/cgroup:ro", container.CgroupnsModeHost
	if cgroupV2 {
		cgroupBind = "/sys/fs/cgroup:/sys/fs/cgroup:rw"
	}
	cfg := &container.Config{
		Hostname:   hostname,
		Image:      image,
		Cmd:        []string{"/sbin/init"},
		Env:        []string{"container=docker"},
		StopSignal: "SIGRTMIN+3",
	}
	hc := &container.HostConfig{
		NetworkMode: container.NetworkMode(netName),
		CapAdd:      []string{"ALL"},
		CapDrop:     []string{"SYS_RESOURCE"},
		SecurityOpt: []string{"seccomp=unconfined", "apparmor=unconfined"},
		// systempaths=unconfined: the CLI turns it into empty masked and
		// read-only path lists; the API takes the lists.
		MaskedPaths:   []string{},
		ReadonlyPaths: []string{},
		CgroupnsMode:  cgroupns,
		Binds:         []string{cgroupBind},
		Tmpfs:         map[string]string{"/run": "", "/run/lock": ""},
		Mounts:        []mount.Mount{{Type: mount.TypeVolume, Source: dataVolume, Target: "/var/lib/docker"}},
	}
	nc := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{netName: {}}}
	return cfg, hc, nc
}

// bootFiles is the tar copied to / before the first start: the host key, the
// sshd drop-in that names it, the admin's sudoers entry and authorized key
// (installed into the home directory once the user exists).
func bootFiles(spec drivers.MachineSpec) ([]byte, error) {
	u := spec.SSH.User
	type file struct {
		name string
		mode int64
		body []byte
		dir  bool
	}
	files := []file{
		{name: "etc/ssh/ssh_host_ed25519_key", mode: 0o600, body: []byte(spec.HostKey.PrivatePEM)},
		{name: "etc/ssh/ssh_host_ed25519_key.pub", mode: 0o644, body: []byte(strings.TrimSpace(spec.HostKey.Public) + "\n")},
		{name: "etc/ssh/sshd_config.d/00-hostkey.conf", mode: 0o644, body: []byte("# provision: the pinned host key\nHostKey /etc/ssh/ssh_host_ed25519_key\n")},
		{name: "etc/provision", mode: 0o755, dir: true},
		{name: "etc/provision/authorized_keys", mode: 0o600, body: []byte(strings.TrimSpace(spec.SSH.PublicKey) + "\n")},
	}
	if u != "root" {
		files = append(files, file{name: "etc/sudoers.d/provision-" + u, mode: 0o440, body: []byte(u + " ALL=(ALL) NOPASSWD:ALL\n")})
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.body)), ModTime: now, Typeflag: tar.TypeReg}
		if f.dir {
			h.Typeflag, h.Name, h.Size = tar.TypeDir, f.name+"/", 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ensureNetwork returns the name of the network hosts attach to, creating
// the cluster's network if the block names none.
func (d *Driver) ensureNetwork(ctx context.Context, cli *client.Client, cluster string) (string, error) {
	if d.cfg.Network != "" {
		if _, err := cli.NetworkInspect(ctx, d.cfg.Network, network.InspectOptions{}); err != nil {
			return "", fmt.Errorf("network %q: %w", d.cfg.Network, err)
		}
		return d.cfg.Network, nil
	}
	d.netMu.Lock()
	defer d.netMu.Unlock()
	name := NetworkName(cluster)
	if ok, err := d.networkExists(ctx, cli, name); err != nil || ok {
		return name, err
	}
	opts := network.CreateOptions{
		Driver:   "bridge",
		Internal: d.cfg.Internal,
		Labels:   map[string]string{drivers.TagCluster: cluster},
	}
	for attempt := 1; ; attempt++ {
		subnet := d.cfg.Subnet
		if subnet == "" {
			// Fixed container addresses need a subnet the network was made
			// with: the engine picks a free one for a scratch network, which
			// is given back and named when the cluster's network is made.
			var err error
			if subnet, err = d.pickSubnet(ctx, cli, cluster, name); err != nil {
				return "", err
			}
		}
		// The gateway named too (the engine's default, the first address):
		// inspect then reports it, and nobody reads it as a host's address.
		ipam := network.IPAMConfig{Subnet: subnet}
		if p, err := netip.ParsePrefix(subnet); err == nil {
			ipam.Gateway = p.Masked().Addr().Next().String()
		}
		opts.IPAM = &network.IPAM{Config: []network.IPAMConfig{ipam}}
		d.log.Info("creating network", "network", name, "internal", d.cfg.Internal, "subnet", subnet)
		_, err := cli.NetworkCreate(ctx, name, opts)
		if err == nil {
			return name, nil
		}
		// Another process may have made it meanwhile.
		if ok, lerr := d.networkExists(ctx, cli, name); lerr == nil && ok {
			return name, nil
		}
		// Or taken the picked subnet between the scratch network and this
		// one (other clusters' networks are made at the same time): pick again.
		if d.cfg.Subnet == "" && attempt < 5 && strings.Contains(err.Error(), "overlaps") {
			d.log.Debug("picked subnet taken meanwhile: picking again", "network", name, "subnet", subnet, "err", err)
			continue
		}
		return "", fmt.Errorf("create network %s: %w", name, err)
	}
}

// noSubnet reports the engine's refusal of a fixed address on a network
// made without a subnet of its own (named in the block, or made by an
// older provision): there the engine picks the address.
func noSubnet(err error) bool {
	return err != nil && strings.Contains(err.Error(), "user configured subnets")
}

// markNoSubnet records that netName takes no fixed addresses, and says
// what that costs.
func (d *Driver) markNoSubnet(netName string) {
	d.netMu.Lock()
	defer d.netMu.Unlock()
	if d.noSubnet == nil {
		d.noSubnet = map[string]bool{}
	}
	if !d.noSubnet[netName] {
		d.log.Warn("network has no subnet of its own: its containers' addresses can change when they restart", "network", netName)
	}
	d.noSubnet[netName] = true
}

// pickSubnet asks the engine for a subnet no other network uses: it makes
// a scratch network, reads the subnet the engine gave it and removes it.
func (d *Driver) pickSubnet(ctx context.Context, cli *client.Client, cluster, name string) (string, error) {
	scratch := name + "-subnet-probe"
	// Labelled like the cluster's, so a teardown removes it if this
	// process dies before it does.
	opts := network.CreateOptions{Driver: "bridge", Internal: true, Labels: map[string]string{drivers.TagCluster: cluster}}
	resp, err := cli.NetworkCreate(ctx, scratch, opts)
	if err != nil && errdefs.IsConflict(err) {
		// Left by a run that died between making and removing it.
		if rerr := cli.NetworkRemove(ctx, scratch); rerr == nil {
			resp, err = cli.NetworkCreate(ctx, scratch, opts)
		}
	}
	if err != nil {
		return "", fmt.Errorf("find a free subnet for network %s: %w", name, err)
	}
	defer cli.NetworkRemove(context.WithoutCancel(ctx), resp.ID)
	info, err := cli.NetworkInspect(ctx, resp.ID, network.InspectOptions{})
	if err != nil {
		return "", fmt.Errorf("find a free subnet for network %s: %w", name, err)
	}
	for _, c := range info.IPAM.Config {
		if p, err := netip.ParsePrefix(c.Subnet); err == nil && p.Addr().Is4() {
			return p.Masked().String(), nil
		}
	}
	return "", fmt.Errorf("find a free subnet for network %s: the engine gave %s none", name, scratch)
}

// freeAddress picks the lowest IPv4 address of the network's subnet that no
// container on it has or is set to have (stopped ones keep theirs), past
// the gateway. It returns the zero Addr when the network has no subnet to
// pick from. The caller holds netMu until its container is made.
func (d *Driver) freeAddress(ctx context.Context, cli *client.Client, netName string) (netip.Addr, error) {
	info, err := cli.NetworkInspect(ctx, netName, network.InspectOptions{})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("network %s: %w", netName, err)
	}
	var subnet netip.Prefix
	used := map[netip.Addr]bool{}
	for _, c := range info.IPAM.Config {
		if p, err := netip.ParsePrefix(c.Subnet); err == nil && p.Addr().Is4() && !subnet.IsValid() {
			subnet = p.Masked()
			if g, err := netip.ParseAddr(c.Gateway); err == nil {
				used[g] = true
			}
		}
	}
	if !subnet.IsValid() {
		return netip.Addr{}, nil
	}
	cs, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("network", netName))})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list containers on %s: %w", netName, err)
	}
	for _, c := range cs {
		if c.NetworkSettings == nil {
			continue
		}
		if ep := c.NetworkSettings.Networks[netName]; ep != nil {
			if a, err := netip.ParseAddr(ep.IPAddress); err == nil {
				used[a] = true
			}
			if ep.IPAMConfig != nil {
				if a, err := netip.ParseAddr(ep.IPAMConfig.IPv4Address); err == nil {
					used[a] = true
				}
			}
		}
	}
	for _, ep := range info.Containers {
		if p, err := netip.ParsePrefix(ep.IPv4Address); err == nil {
			used[p.Addr()] = true
		}
	}
	for a := range d.reserved[netName] {
		used[a] = true
	}
	// The first address is the network's, the second the engine's default
	// gateway (when the network names none), the last the broadcast.
	b := subnet.Addr().As4()
	n := binary.BigEndian.Uint32(b[:]) | (1<<(32-subnet.Bits()) - 1)
	binary.BigEndian.PutUint32(b[:], n)
	last := netip.AddrFrom4(b)
	for a := subnet.Addr().Next().Next(); subnet.Contains(a) && a != last; a = a.Next() {
		if !used[a] {
			if d.reserved == nil {
				d.reserved = map[string]map[netip.Addr]bool{}
			}
			if d.reserved[netName] == nil {
				d.reserved[netName] = map[netip.Addr]bool{}
			}
			d.reserved[netName][a] = true
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("network %s (%s) has no free address left", netName, subnet)
}

func (d *Driver) networkExists(ctx context.Context, cli *client.Client, name string) (bool, error) {
	ns, err := cli.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("name", name))})
	if err != nil {
		return false, fmt.Errorf("list networks: %w", err)
	}
	for _, n := range ns {
		if n.Name == name { // the name filter matches substrings
			return true, nil
		}
	}
	return false, nil
}

// execResult runs cmd in the container as root and returns its combined
// output and exit code.
func execResult(ctx context.Context, cli *client.Client, id string, cmd []string) (string, int, error) {
	ec, err := cli.ContainerExecCreate(ctx, id, container.ExecOptions{Cmd: cmd, User: "root", AttachStdout: true, AttachStderr: true})
	if err != nil {
		return "", -1, fmt.Errorf("exec %s: %w", cmd[0], err)
	}
	hj, err := cli.ContainerExecAttach(ctx, ec.ID, container.ExecAttachOptions{})
	if err != nil {
		return "", -1, fmt.Errorf("exec %s: %w", cmd[0], err)
	}
	defer hj.Close()
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(&out, &out, io.LimitReader(hj.Reader, 1<<20))
		done <- err
	}()
	select {
	case <-ctx.Done():
		hj.Close()
		<-done
		return out.String(), -1, fmt.Errorf("exec %s: %w", cmd[0], ctx.Err())
	case err := <-done:
		if err != nil {
			return out.String(), -1, fmt.Errorf("exec %s: read output: %w", cmd[0], err)
		}
	}
	// The stream ends just before the engine records the exit code.
	for delay := 10 * time.Millisecond; ; delay *= 2 {
		ins, err := cli.ContainerExecInspect(ctx, ec.ID)
		if err != nil {
			return out.String(), -1, fmt.Errorf("exec %s: %w", cmd[0], err)
		}
		if !ins.Running {
			return out.String(), ins.ExitCode, nil
		}
		if err := sleep(ctx, min(delay, time.Second)); err != nil {
			return out.String(), -1, fmt.Errorf("exec %s: %w", cmd[0], err)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error { return retry.Sleep(ctx, d) }

// waitSystemd waits until systemd has finished booting ("running", or
// "degraded" when some unit failed).
func (d *Driver) waitSystemd(ctx context.Context, cli *client.Client, id string) error {
	delay := 200 * time.Millisecond
	last := ""
	for {
		actx, cancel := context.WithTimeout(ctx, 60*time.Second)
		out, _, err := execResult(actx, cli, id, []string{"systemctl", "is-system-running", "--wait"})
		cancel()
		state := strings.TrimSpace(out)
		if i := strings.LastIndexByte(state, '\n'); i >= 0 {
			state = state[i+1:]
		}
		switch {
		case err == nil && state == "running":
			return nil
		case err == nil && state == "degraded":
			failed, _, _ := execResult(ctx, cli, id, []string{"systemctl", "--failed", "--no-legend", "--plain"})
			d.log.Warn("systemd degraded", "container", short(id), "failed", strings.TrimSpace(failed))
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = "systemd state " + state
		}
		if ctx.Err() != nil {
			return fmt.Errorf("wait for systemd in container %s: %w (last: %s)", short(id), ctx.Err(), last)
		}
		if err := sleep(ctx, delay); err != nil {
			return fmt.Errorf("wait for systemd in container %s: %w (last: %s)", short(id), err, last)
		}
		delay = min(delay*2, 3*time.Second)
	}
}

// userScript creates the admin user (if missing) and installs its
// authorized key from the staged copy. $1 is the user name.
const userScript = `set -eu
u="$1"
if [ "$u" = root ]; then
  h=/root
else
  id -u "$u" >/dev/null 2>&1 || useradd -m -s /bin/bash "$u"
  usermod -p '*' "$u"
  h=$(getent passwd "$u" | cut -d: -f6)
fi
g=$(id -gn "$u")
install -d -m 700 -o "$u" -g "$g" "$h/.ssh"
install -m 600 -o "$u" -g "$g" /etc/provision/authorized_keys "$h/.ssh/authorized_keys"
`

func (d *Driver) setupUser(ctx context.Context, cli *client.Client, id, user string) error {
	if !validUser.MatchString(user) {
		return fmt.Errorf("container %s: admin user label %q is not a valid user name", short(id), user)
	}
	out, code, err := execResult(ctx, cli, id, []string{"sh", "-c", userScript, "sh", user})
	if err != nil {
		return fmt.Errorf("set up admin user %q: %w", user, err)
	}
	if code != 0 {
		return fmt.Errorf("set up admin user %q: exit %d: %s", user, code, strings.TrimSpace(out))
	}
	return nil
}

// waitSSH waits until sshd answers at addr:22 and, when pinned is set,
// checks that it presents that key.
func (d *Driver) waitSSH(ctx context.Context, cli *client.Client, id, addr, pinned string) error {
	if _, err := netip.ParseAddr(addr); err != nil {
		return fmt.Errorf("container address %q: %w", addr, err)
	}
	delay := 200 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		got, err := comm.ScanHostKey(actx, addr, 22)
		cancel()
		if err == nil {
			if pinned == "" || sameKey(got, pinned) {
				return nil
			}
			return fmt.Errorf("sshd at %s presents %q, not the pinned host key %q: %w", addr, got, pinned, comm.ErrHostKeyMismatch)
		}
		d.log.Debug("waiting for sshd", "address", addr, "err", err)
		// sshd will not come if its unit failed: say why now rather than
		// at the deadline.
		if out, _, xerr := execResult(ctx, cli, id, []string{"systemctl", "is-failed", "ssh.service"}); xerr == nil && strings.TrimSpace(out) == "failed" {
			why, _, _ := execResult(ctx, cli, id, []string{"/usr/sbin/sshd", "-t"})
			if strings.TrimSpace(why) == "" {
				why, _, _ = execResult(ctx, cli, id, []string{"journalctl", "-u", "ssh.service", "-n", "5", "--no-pager", "-o", "cat"})
			}
			return fmt.Errorf("sshd failed to start in container %s: %s", short(id), strings.Join(strings.Fields(why), " "))
		}
		if serr := sleep(ctx, delay); serr != nil {
			return fmt.Errorf("wait for sshd at %s: %w (last: %v)", addr, serr, err)
		}
		delay = min(delay*2, 2*time.Second)
	}
}

var sameKey = drivers.SameKey

// Destroy removes the machine's container and its /var/lib/docker volume.
// Both already gone counts as success.
func (d *Driver) Destroy(ctx context.Context, m drivers.Machine) error {
	if err := d.destroy(ctx, m); err != nil {
		return fmt.Errorf("machine %q: %w", m.Name, err)
	}
	return nil
}

func (d *Driver) destroy(ctx context.Context, m drivers.Machine) error {
	cli, err := d.docker(ctx)
	if err != nil {
		return err
	}
	cluster := m.Tags[drivers.TagCluster]
	instance := drivers.InstanceName(m.Name, drivers.GenerationOf(m.Tags))
	ref := m.ID
	if ref == "" {
		if cluster == "" {
			return errors.New("neither a container ID nor a cluster tag: cannot find the container")
		}
		ref = ContainerName(cluster, instance)
	}
	var vols []string
	info, err := cli.ContainerInspect(ctx, ref)
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("inspect container %s: %w", short(ref), err)
	default:
		if cluster == "" {
			cluster = info.Config.Labels[drivers.TagCluster]
		}
		for _, mp := range info.Mounts {
			if mp.Type == mount.TypeVolume && mp.Name != "" {
				vols = append(vols, mp.Name)
			}
		}
		d.log.Info("removing container", "machine", m.Name, "container", short(info.ID))
		if err := cli.ContainerRemove(ctx, info.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("remove container %s: %w", short(info.ID), err)
		}
	}
	if cluster != "" {
		if v := VolumeName(cluster, instance); !slices.Contains(vols, v) {
			vols = append(vols, v)
		}
	}
	var errs []error
	for _, v := range vols {
		vi, err := cli.VolumeInspect(ctx, v)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("inspect volume %s: %w", v, err))
			continue
		}
		// Only volumes this driver made for the machine: named ones carry
		// the cluster label; anonymous ones went with RemoveVolumes.
		if vi.Labels[drivers.TagCluster] == "" {
			continue
		}
		if err := cli.VolumeRemove(ctx, v, true); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove volume %s: %w", v, err))
		}
	}
	return errors.Join(errs...)
}

// Teardown removes the cluster's network (when the driver created it) and
// any volume still labelled with the cluster. It refuses while containers of
// the cluster remain.
func (d *Driver) Teardown(ctx context.Context, cluster string) error {
	cli, err := d.docker(ctx)
	if err != nil {
		return err
	}
	f := clusterFilter(cluster)
	cs, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return fmt.Errorf("teardown cluster %s: list containers: %w", cluster, err)
	}
	if len(cs) > 0 {
		names := make([]string, len(cs))
		for i, c := range cs {
			names[i] = strings.TrimPrefix(strings.Join(c.Names, ","), "/")
		}
		return fmt.Errorf("teardown cluster %s: %d containers remain (%s): destroy the machines first", cluster, len(cs), strings.Join(names, ", "))
	}
	var errs []error
	vs, err := cli.VolumeList(ctx, volume.ListOptions{Filters: f})
	if err != nil {
		errs = append(errs, fmt.Errorf("list volumes: %w", err))
	} else {
		for _, v := range vs.Volumes {
			d.log.Info("removing volume", "volume", v.Name)
			if err := cli.VolumeRemove(ctx, v.Name, true); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("remove volume %s: %w", v.Name, err))
			}
		}
	}
	ns, err := cli.NetworkList(ctx, network.ListOptions{Filters: f})
	if err != nil {
		errs = append(errs, fmt.Errorf("list networks: %w", err))
	} else {
		for _, n := range ns {
			d.log.Info("removing network", "network", n.Name)
			if err := cli.NetworkRemove(ctx, n.ID); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("remove network %s: %w", n.Name, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("teardown cluster %s: %w", cluster, err)
	}
	return nil
}

// Preflight checks that the engine answers, the host image is present and a
// named network exists. It changes nothing.
func (d *Driver) Preflight(ctx context.Context, want []drivers.MachineSpec) error {
	cli, err := d.docker(ctx)
	if err != nil {
		return err
	}
	if _, err := cli.ImageInspect(ctx, d.cfg.Image); err != nil {
		if errdefs.IsNotFound(err) {
			return fmt.Errorf("host image %s not found: run `make host-image` (drivers/local/image/build.sh)", d.cfg.Image)
		}
		return fmt.Errorf("inspect host image %s: %w", d.cfg.Image, err)
	}
	if d.cfg.Network != "" {
		if _, err := cli.NetworkInspect(ctx, d.cfg.Network, network.InspectOptions{}); err != nil {
			if errdefs.IsNotFound(err) {
				return fmt.Errorf("network %q not found: create it or remove network from the driver block", d.cfg.Network)
			}
			return fmt.Errorf("inspect network %q: %w", d.cfg.Network, err)
		}
	}
	for _, s := range want {
		if !validUser.MatchString(s.SSH.User) {
			return fmt.Errorf("machine %q: admin user %q is not a valid user name", s.Name, s.SSH.User)
		}
		res, err := d.resources(s)
		if err != nil {
			return err
		}
		if n := d.engine.NCPU; n > 0 && res.NanoCPUs > int64(n)*1e9 {
			return fmt.Errorf("machine %q: size %q asks for %d CPUs; the engine has %d", s.Name, s.Size, res.NanoCPUs/1e9, n)
		}
		if t := d.engine.MemTotal; t > 0 && res.Memory > t {
			return fmt.Errorf("machine %q: %d MiB of memory asked; the engine has %d MiB", s.Name, res.Memory>>20, t>>20)
		}
	}
	return nil
}
