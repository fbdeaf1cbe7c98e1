//go:build cgo && libvirt_dlopen

package libvirt

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/retry"
)

// Driver makes libvirt domains. It is safe for concurrent use: one libvirt
// connection per hypervisor (thread-safe in libvirt) serves every call.
type Driver struct {
	cfg  Config
	name string
	log  *slog.Logger

	// hvs are the hypervisors of cfg.URIs, in order.
	hvs []*hypervisor

	// portMu is held from choosing user-mode ports until QEMU listens on
	// them, so that two machines made at once do not pick the same ones.
	portMu sync.Mutex
	netMu  sync.Mutex // serializes the cluster network's creation

	names drivers.NameLocks // serializes Create per cluster/machine

	// upload writes a seed image into its volume (a libvirt stream); scan
	// reads the SSH host key a machine presents. Tests against libvirt's
	// test driver, which has neither uploads nor guests, replace them.
	upload func(ctx context.Context, conn *lv.Connect, vol *lv.StorageVol, data []byte) error
	scan   func(ctx context.Context, address string, port int) (string, error)
	// pollMin is the first delay between polls of a booting or stopping domain.
	pollMin time.Duration
}

var (
	_ drivers.Driver      = (*Driver)(nil)
	_ drivers.Teardown    = (*Driver)(nil)
	_ drivers.Preflighter = (*Driver)(nil)
	_ drivers.Resourcer   = (*Driver)(nil)
)

func newDriver(cfg Config, opts drivers.Options) drivers.Driver { return NewDriver(cfg, opts) }

// NewDriver returns a driver for a decoded configuration. It does no I/O:
// libvirt is connected on first use.
func NewDriver(cfg Config, opts drivers.Options) *Driver {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	name := opts.Name
	if name == "" {
		name = "libvirt"
	}
	uris := cfg.URIs
	if len(uris) == 0 {
		uris = []string{cfg.URI}
	}
	var hvs []*hypervisor
	for _, u := range uris {
		hvs = append(hvs, &hypervisor{uri: u, zone: ZoneOf(u)})
	}
	return &Driver{
		cfg:     cfg,
		name:    name,
		log:     log,
		hvs:     hvs,
		upload:  uploadStream,
		scan:    comm.ScanHostKey,
		pollMin: time.Second,
	}
}

// Config returns the driver's decoded configuration.
func (d *Driver) Config() Config { return d.cfg }

// hypervisor is one libvirt connection URI: a failure domain.
type hypervisor struct {
	uri, zone string

	mu   sync.Mutex
	conn *lv.Connect
}

// connect opens the hypervisor's libvirt connection on first use. A
// failure is not cached: the next call tries again.
func (h *hypervisor) connect() (*lv.Connect, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conn != nil {
		if alive, err := h.conn.IsAlive(); err == nil && alive {
			return h.conn, nil
		}
		h.conn.Close()
		h.conn = nil
	}
	c, err := lv.NewConnect(h.uri)
	if err != nil {
		if strings.Contains(err.Error(), "libvirt.so") {
			return nil, fmt.Errorf("connect to libvirt at %s: the libvirt client library is not installed on this machine (apt-get install libvirt0): %s", h.uri, lvMessage(err))
		}
		return nil, fmt.Errorf("connect to libvirt at %s: %s", h.uri, lvMessage(err))
	}
	h.conn = c
	return c, nil
}

func (h *hypervisor) close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conn == nil {
		return nil
	}
	_, err := h.conn.Close()
	h.conn = nil
	return err
}

// connect connects the first hypervisor (the only one unless uris lists
// several).
func (d *Driver) connect() (*lv.Connect, error) { return d.hvs[0].connect() }

// Close releases the libvirt connections that were opened.
func (d *Driver) Close() error {
	var errs []error
	for _, h := range d.hvs {
		errs = append(errs, h.close())
	}
	return errors.Join(errs...)
}

// spread reports whether machines are spread over several hypervisors.
func (d *Driver) spread() bool { return len(d.hvs) > 1 }

// hvFor is the hypervisor a new machine goes to: machine N of its role
// (the number its name ends in) on hypervisor (N-1) mod len(uris), so that
// a role's machines, managers above all, land on different hypervisors.
func (d *Driver) hvFor(name string) *hypervisor {
	n := 0
	if i := strings.LastIndexByte(name, '-'); i >= 0 {
		if v, err := strconv.Atoi(name[i+1:]); err == nil && v > 0 {
			n = v - 1
		}
	}
	return d.hvs[n%len(d.hvs)]
}

// hvOrder is every hypervisor, the one of zone first.
func (d *Driver) hvOrder(zone string) []*hypervisor {
	out := slices.Clone(d.hvs)
	slices.SortStableFunc(out, func(a, b *hypervisor) int {
		switch {
		case a.zone == zone && b.zone != zone:
			return -1
		case b.zone == zone && a.zone != zone:
			return 1
		}
		return 0
	})
	return out
}

// lvMessage is libvirt's own message, without the Go binding's code dump.
func lvMessage(err error) string {
	var le lv.Error
	if errors.As(err, &le) && le.Message != "" {
		return le.Message
	}
	return err.Error()
}

// lvErr wraps a libvirt error with what was being done, keeping libvirt's
// message readable.
func lvErr(what string, err error) error {
	return fmt.Errorf("%s: %w", what, lvError{err})
}

// lvError shows libvirt's message but still unwraps to lv.Error.
type lvError struct{ err error }

func (e lvError) Error() string { return lvMessage(e.err) }
func (e lvError) Unwrap() error { return e.err }

func isCode(err error, code lv.ErrorNumber) bool {
	var le lv.Error
	return errors.As(err, &le) && le.Code == code
}

func (d *Driver) lockName(cluster, name string) func() { return d.names.Lock(cluster, name) }

// owned is one domain that carries provision metadata.
type owned struct {
	dom  *lv.Domain
	meta meta
}

// readMeta returns the domain's provision metadata; ok is false for
// domains provision did not define.
func readMeta(dom *lv.Domain) (meta, bool, error) {
	s, err := dom.GetMetadata(lv.DOMAIN_METADATA_ELEMENT, MetadataNS, lv.DOMAIN_AFFECT_CURRENT)
	if err != nil {
		if isCode(err, lv.ERR_NO_DOMAIN_METADATA) {
			return meta{}, false, nil
		}
		return meta{}, false, lvErr("read domain metadata", err)
	}
	m, err := parseMeta(s)
	if err != nil {
		return meta{}, false, err
	}
	return m, true, nil
}

// clusterDomains lists the domains tagged with the cluster ID. The caller
// frees them.
func (d *Driver) clusterDomains(conn *lv.Connect, cluster string) ([]owned, error) {
	doms, err := conn.ListAllDomains(0)
	if err != nil {
		return nil, lvErr("list domains", err)
	}
	var out []owned
	var errs []error
	for i := range doms {
		dom := &doms[i]
		m, ok, err := readMeta(dom)
		if err != nil {
			if isCode(err, lv.ERR_NO_DOMAIN) { // gone meanwhile
				dom.Free()
				continue
			}
			name, _ := dom.GetName()
			errs = append(errs, fmt.Errorf("domain %s: %w", name, err))
		}
		if !ok || m.tags()[drivers.TagCluster] != cluster {
			dom.Free()
			continue
		}
		out = append(out, owned{dom: dom, meta: m})
	}
	if err := errors.Join(errs...); err != nil {
		for _, o := range out {
			o.dom.Free()
		}
		return nil, err
	}
	return out, nil
}

// Machines lists every domain whose metadata names the cluster, running or
// not: every generation of a machine, each under the machine's name with
// its generation in Tags (past the first). Addresses of running machines
// on a network come from its DHCP leases (or the guest agent, or ARP on a
// bridge); stopped ones have none.
//
// With several hypervisors (uris) every one is asked, and each machine's
// Zone names the hypervisor it is on. One that does not answer fails the
// listing: its machines would otherwise look gone.
func (d *Driver) Machines(ctx context.Context, cluster string) ([]drivers.Machine, error) {
	var out []drivers.Machine
	var errs []error
	for _, h := range d.hvs {
		conn, err := h.connect()
		if err != nil {
			return nil, err
		}
		doms, err := d.clusterDomains(conn, cluster)
		if err != nil {
			return nil, fmt.Errorf("machines of cluster %s on %s: %w", cluster, h.uri, err)
		}
		for _, o := range doms {
			m, err := d.machine(o.dom, o.meta)
			o.dom.Free()
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if d.spread() {
				m.Zone = h.zone
			}
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b drivers.Machine) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return drivers.GenerationOf(a.Tags) - drivers.GenerationOf(b.Tags)
	})
	return out, errors.Join(errs...)
}

// machine describes a domain as the engine sees it. It does not wait: a
// running machine on a network whose address is not known yet has none.
func (d *Driver) machine(dom *lv.Domain, mt meta) (drivers.Machine, error) {
	tags := mt.tags()
	name := tags[drivers.TagMachine]
	uuid, err := dom.GetUUIDString()
	if err != nil {
		return drivers.Machine{}, lvErr("domain of "+name, err)
	}
	st, _, err := dom.GetState()
	if err != nil {
		return drivers.Machine{}, lvErr("state of domain of "+name, err)
	}
	m := drivers.Machine{
		Name:   name,
		ID:     uuid,
		Driver: d.name,
		SSH:    drivers.SSHEndpoint{User: mt.User, Port: guestSSHPort, HostKey: mt.HostKey},
		Tags:   tags,
		State:  stateWord(st),
	}
	x, err := domainDesc(dom)
	if err != nil {
		return drivers.Machine{}, err
	}
	// From the definition, not the spec: a machine adopted after a crash
	// has the disk it was defined with.
	m.DockerDisk = dockerDiskOf(x)
	if mt.Mode == ModeUser {
		// The forwards QEMU was started with are the truth; the
		// metadata records the same ports.
		ssh, engine := userPorts(x)
		if ssh == 0 {
			ssh, engine = mt.SSHPort, mt.EnginePort
		}
		m.Address, m.PrivateAddress = "127.0.0.1", userGuestAddr
		m.SSH.Port, m.EnginePort = ssh, engine
		return m, nil
	}
	if st == lv.DOMAIN_RUNNING {
		m.Address = d.address(dom, mt.Mode, x)
	}
	return m, nil
}

func stateWord(s lv.DomainState) string {
	switch s {
	case lv.DOMAIN_RUNNING:
		return "running"
	case lv.DOMAIN_SHUTOFF, lv.DOMAIN_CRASHED:
		return "stopped"
	case lv.DOMAIN_PAUSED, lv.DOMAIN_PMSUSPENDED:
		return "paused"
	case lv.DOMAIN_SHUTDOWN:
		return "stopping"
	}
	return "unknown"
}

func domainDesc(dom *lv.Domain) (*libvirtxml.Domain, error) {
	s, err := dom.GetXMLDesc(0)
	if err != nil {
		return nil, lvErr("domain XML", err)
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(s); err != nil {
		return nil, fmt.Errorf("domain XML: %w", err)
	}
	return &x, nil
}

// address is the domain's first IPv4 address on its interface: from the
// network's DHCP leases, else the guest agent, else the host's ARP table
// (a bridge's DHCP server is not libvirt's). "" when none is known yet.
func (d *Driver) address(dom *lv.Domain, mode string, x *libvirtxml.Domain) string {
	mac := ""
	if x.Devices != nil && len(x.Devices.Interfaces) > 0 && x.Devices.Interfaces[0].MAC != nil {
		mac = strings.ToLower(x.Devices.Interfaces[0].MAC.Address)
	}
	sources := []lv.DomainInterfaceAddressesSource{lv.DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, lv.DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT}
	if mode == ModeBridge {
		sources = []lv.DomainInterfaceAddressesSource{lv.DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, lv.DOMAIN_INTERFACE_ADDRESSES_SRC_ARP}
	}
	for _, src := range sources {
		ifs, err := dom.ListAllInterfaceAddresses(src)
		if err != nil {
			d.log.Debug("interface addresses", "source", src, "err", lvMessage(err))
			continue
		}
		for _, i := range ifs {
			if mac != "" && strings.ToLower(i.Hwaddr) != mac {
				continue
			}
			for _, a := range i.Addrs {
				if a.Type == lv.IP_ADDR_TYPE_IPV4 && a.Addr != "" {
					return a.Addr
				}
			}
		}
	}
	return ""
}

// Create makes one generation of a machine (want.Generation, 0 meaning
// 1), or returns (starting it when stopped) the domain already defined for
// this cluster, name and generation. Each generation is a domain of its
// own with its own disk and seed (and docker disk when want.DockerDiskGiB
// asks for one), named after drivers.InstanceName, so the
// next generation boots while the previous one still runs; the guest's
// host name is the machine name in every generation. A machine's
// generations go to the same hypervisor (hvFor chooses by machine name).
func (d *Driver) Create(ctx context.Context, cluster string, want drivers.MachineSpec) (drivers.Machine, error) {
	m, err := d.create(ctx, cluster, want)
	if err != nil {
		if d.spread() {
			return drivers.Machine{}, fmt.Errorf("machine %q%s on %s: %w", want.Name, genNote(want.Generation), d.hvFor(want.Name).uri, err)
		}
		return drivers.Machine{}, fmt.Errorf("machine %q%s: %w", want.Name, genNote(want.Generation), err)
	}
	if d.spread() {
		m.Zone = d.hvFor(want.Name).zone
	}
	return m, nil
}

func (d *Driver) create(ctx context.Context, cluster string, want drivers.MachineSpec) (drivers.Machine, error) {
	if cluster == "" || want.Name == "" {
		return drivers.Machine{}, errors.New("cluster ID and machine name are required")
	}
	in := instanceOf(cluster, want.Name, want.Generation)
	defer d.lockName(cluster, drivers.InstanceName(want.Name, in.gen))()
	hv := d.hvFor(want.Name)
	conn, err := hv.connect()
	if err != nil {
		return drivers.Machine{}, err
	}
	name := in.domain
	dom, err := conn.LookupDomainByName(name)
	switch {
	case err == nil:
		defer dom.Free()
		mt, ok, err := readMeta(dom)
		if err != nil {
			return drivers.Machine{}, fmt.Errorf("domain %s: %w", name, err)
		}
		if !ok || !mt.owns(cluster, want.Name, in.gen) {
			return drivers.Machine{}, fmt.Errorf("domain %s exists but is not this cluster's machine %s%s (its provision metadata does not say so): rename or remove it", name, want.Name, genNote(in.gen))
		}
		d.log.InfoContext(ctx, "adopting existing domain", "host", want.Name, "generation", in.gen, "domain", name)
		return d.run(ctx, conn, dom, mt)
	case !isCode(err, lv.ERR_NO_DOMAIN):
		return drivers.Machine{}, lvErr("look up domain "+name, err)
	}

	// Everything that can fail without touching libvirt fails here.
	res, err := resources(want.Size)
	if err != nil {
		return drivers.Machine{}, err
	}
	if len(want.HostKey.PrivatePEM) == 0 || want.HostKey.Public == "" {
		return drivers.Machine{}, errors.New("no host key to install: the libvirt driver pins the key the engine generates")
	}
	iid := make([]byte, 6)
	rand.Read(iid)
	seed, err := seedISO(ctx, want, name+"-"+hex.EncodeToString(iid))
	if err != nil {
		return drivers.Machine{}, err
	}
	diskGiB := want.DiskGiB
	if diskGiB == 0 {
		info, _ := drivers.Lookup("libvirt")
		diskGiB = info.DefaultGiB
	}

	pool, err := d.pool(conn, d.cfg.Pool)
	if err != nil {
		return drivers.Machine{}, err
	}
	defer pool.Free()
	base, err := d.baseImage(conn)
	if err != nil {
		return drivers.Machine{}, err
	}
	if capacity := uint64(diskGiB) << 30; capacity < base.capacity {
		return drivers.Machine{}, fmt.Errorf("disk of %d GiB is smaller than base image %s (%d GiB)", diskGiB, d.cfg.Image, (base.capacity+(1<<30)-1)>>30)
	}
	netName := d.cfg.Network
	if d.cfg.Mode == ModeCreate {
		if netName, err = d.ensureNetwork(ctx, conn, cluster); err != nil {
			return drivers.Machine{}, err
		}
	}

	// Volumes first: a crash before the domain is defined leaves volumes
	// no domain uses, which the next Create replaces and Teardown removes.
	// A docker volume left so goes even when the spec no longer asks for
	// one: no domain uses it.
	diskName, seedName := in.disk, in.seed
	for _, v := range []string{diskName, seedName, in.docker} {
		if err := deleteVolume(pool, v); err != nil {
			return drivers.Machine{}, err
		}
	}
	vx, err := overlayXML(diskName, uint64(diskGiB)<<30, base.path, base.format)
	if err != nil {
		return drivers.Machine{}, err
	}
	d.log.InfoContext(ctx, "creating disk", "host", want.Name, "generation", in.gen, "volume", diskName, "gib", diskGiB, "backing", base.path)
	disk, err := pool.StorageVolCreateXML(vx, 0)
	if err != nil {
		return drivers.Machine{}, lvErr("create volume "+diskName, err)
	}
	disk.Free()
	dockerName, err := d.createDockerDisk(ctx, pool, in, want.DockerDiskGiB)
	if err != nil {
		return drivers.Machine{}, err
	}
	sx, err := rawVolumeXML(seedName, uint64(len(seed)))
	if err != nil {
		return drivers.Machine{}, err
	}
	sv, err := pool.StorageVolCreateXML(sx, 0)
	if err != nil {
		return drivers.Machine{}, lvErr("create volume "+seedName, err)
	}
	err = d.upload(ctx, conn, sv, seed)
	sv.Free()
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("write seed %s: %w", seedName, err)
	}

	ds := domainSpec{
		Name: name, Type: d.cfg.DomainType, Machine: d.cfg.MachineType, Res: res,
		Pool: d.cfg.Pool, Disk: diskName, Seed: seedName, Docker: dockerName,
		Mode: d.cfg.Mode, Network: netName, Bridge: d.cfg.Bridge,
	}
	if d.cfg.SerialLogDir != "" {
		ds.SerialLog = strings.TrimSuffix(d.cfg.SerialLogDir, "/") + "/" + name + "-serial.log"
	}
	if d.cfg.Mode != ModeUser {
		mt := newMeta(cluster, want, d.cfg.Mode, 0, 0)
		dom, err := d.define(ctx, conn, ds, mt)
		if err != nil {
			return drivers.Machine{}, err
		}
		defer dom.Free()
		return d.run(ctx, conn, dom, mt)
	}

	// User-mode networking: choose the forwarded ports, record them in
	// the definition and start, holding portMu until QEMU listens. A port
	// taken in between (by anything else on the machine) makes QEMU fail
	// to start: choose again. Ports another domain was defined with are
	// not chosen even when nothing listens on them (a stopped domain, such
	// as the other generation of this machine, keeps its ports).
	d.portMu.Lock()
	locked := true
	defer func() {
		if locked {
			d.portMu.Unlock()
		}
	}()
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(2, definedPorts(conn))
		if err != nil {
			return drivers.Machine{}, err
		}
		ds.SSHPort, ds.EnginePort = ports[0], ports[1]
		mt := newMeta(cluster, want, ModeUser, ds.SSHPort, ds.EnginePort)
		dom, err := d.define(ctx, conn, ds, mt)
		if err != nil {
			return drivers.Machine{}, err
		}
		err = d.start(ctx, dom, want.Name)
		if err != nil && attempt < 3 && strings.Contains(err.Error(), "host forwarding") {
			d.log.WarnContext(ctx, "forwarded port taken meanwhile; choosing others", "host", want.Name, "err", err)
			dom.Free()
			continue
		}
		if err != nil {
			dom.Free()
			return drivers.Machine{}, err
		}
		d.portMu.Unlock()
		locked = false
		defer dom.Free()
		return d.run(ctx, conn, dom, mt)
	}
}

// createDockerDisk makes the instance's blank docker volume of gib GiB and
// returns its name; with gib 0 it makes none and returns "". Like the
// other volumes it is made before the domain is defined.
func (d *Driver) createDockerDisk(ctx context.Context, pool *lv.StoragePool, in instance, gib int) (string, error) {
	if gib <= 0 {
		return "", nil
	}
	x, err := blankVolumeXML(in.docker, uint64(gib)<<30)
	if err != nil {
		return "", err
	}
	d.log.InfoContext(ctx, "creating docker disk", "host", in.machine, "generation", in.gen, "volume", in.docker, "gib", gib)
	v, err := pool.StorageVolCreateXML(x, 0)
	if err != nil {
		return "", lvErr("create volume "+in.docker, err)
	}
	v.Free()
	return in.docker, nil
}

// define defines (or redefines) the domain with its metadata.
func (d *Driver) define(ctx context.Context, conn *lv.Connect, ds domainSpec, mt meta) (*lv.Domain, error) {
	ms, err := mt.marshal()
	if err != nil {
		return nil, err
	}
	ds.Meta = ms
	x, err := domainXML(ds)
	if err != nil {
		return nil, err
	}
	d.log.InfoContext(ctx, "defining domain", "host", mt.tags()[drivers.TagMachine], "domain", ds.Name, "type", ds.Type,
		"vcpus", ds.Res.CPUs, "memory_mib", ds.Res.MemoryMiB, "network", ds.Mode)
	dom, err := conn.DomainDefineXML(x)
	if err != nil {
		return nil, lvErr("define domain "+ds.Name, err)
	}
	return dom, nil
}

// start boots a defined domain (a running one is left alone).
func (d *Driver) start(ctx context.Context, dom *lv.Domain, host string) error {
	active, err := dom.IsActive()
	if err != nil {
		return lvErr("domain state", err)
	}
	if active {
		return nil
	}
	d.log.InfoContext(ctx, "starting domain", "host", host)
	if err := dom.Create(); err != nil {
		return lvErr("start domain", err)
	}
	return nil
}

// run starts the domain if needed and waits until sshd answers at the
// machine's address with the pinned host key.
func (d *Driver) run(ctx context.Context, conn *lv.Connect, dom *lv.Domain, mt meta) (drivers.Machine, error) {
	host := mt.tags()[drivers.TagMachine]
	st, _, err := dom.GetState()
	if err != nil {
		return drivers.Machine{}, lvErr("domain state", err)
	}
	switch st {
	case lv.DOMAIN_PAUSED:
		d.log.InfoContext(ctx, "resuming paused domain", "host", host)
		if err := dom.Resume(); err != nil {
			return drivers.Machine{}, lvErr("resume domain", err)
		}
	case lv.DOMAIN_PMSUSPENDED:
		if err := dom.PMWakeup(0); err != nil {
			return drivers.Machine{}, lvErr("wake domain", err)
		}
	case lv.DOMAIN_RUNNING:
	default:
		if err := d.start(ctx, dom, host); err != nil {
			return drivers.Machine{}, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.BootTimeout)
	defer cancel()
	delay := d.pollMin
	var last string
	for {
		m, err := d.machine(dom, mt)
		if err != nil {
			return drivers.Machine{}, err
		}
		if m.State != "running" {
			return drivers.Machine{}, fmt.Errorf("domain stopped while booting (state %s)%s", m.State, d.serialHint(dom))
		}
		if m.Address == "" {
			last = "no address yet"
		} else {
			sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
			got, err := d.scan(sctx, m.Address, m.SSH.Port)
			scancel()
			switch {
			case err == nil && sameKey(got, mt.HostKey):
				d.log.InfoContext(ctx, "machine ready", "host", host, "address", m.Address, "ssh_port", m.SSH.Port)
				return m, nil
			case err == nil:
				return drivers.Machine{}, fmt.Errorf("sshd at %s port %d presents %q, not the pinned host key %q: %w", m.Address, m.SSH.Port, got, mt.HostKey, comm.ErrHostKeyMismatch)
			default:
				last = err.Error()
			}
		}
		d.log.DebugContext(ctx, "waiting for the machine", "host", host, "last", last)
		if err := retry.Sleep(ctx, delay); err != nil {
			return drivers.Machine{}, fmt.Errorf("wait for sshd with the pinned host key (boot_timeout %s): %w (last: %s)%s", d.cfg.BootTimeout, err, last, d.serialHint(dom))
		}
		delay = min(delay*2, 5*time.Second)
	}
}

func (d *Driver) serialHint(dom *lv.Domain) string {
	if d.cfg.SerialLogDir == "" {
		return ""
	}
	name, _ := dom.GetName()
	return fmt.Sprintf("; the boot log is %s/%s-serial.log on the hypervisor", strings.TrimSuffix(d.cfg.SerialLogDir, "/"), name)
}

// freePorts returns n distinct TCP ports free on 127.0.0.1 now and not in
// avoid. The listeners stay open until it returns, so the kernel does not
// offer a port twice.
func freePorts(n int, avoid map[int]bool) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for len(ports) < n {
		if len(ls) >= n+256 {
			return nil, fmt.Errorf("choose a forwarded port on 127.0.0.1: every free port offered is one a domain was defined with")
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("choose a forwarded port on 127.0.0.1: %w", err)
		}
		ls = append(ls, l)
		if p := l.Addr().(*net.TCPAddr).Port; !avoid[p] {
			ports = append(ports, p)
		}
	}
	return ports, nil
}

// definedPorts are the host ports forwarded by the user-mode domains
// provision defined on the connection, running or not: those QEMU was told
// to listen on and those the metadata records. A domain that cannot be
// read is skipped (its ports, if taken, fail the start, which chooses
// again).
func definedPorts(conn *lv.Connect) map[int]bool {
	out := map[int]bool{}
	doms, err := conn.ListAllDomains(0)
	if err != nil {
		return out
	}
	for i := range doms {
		dom := &doms[i]
		if mt, ok, err := readMeta(dom); err == nil && ok && mt.Mode == ModeUser {
			out[mt.SSHPort], out[mt.EnginePort] = true, true
			if x, err := domainDesc(dom); err == nil {
				ssh, engine := userPorts(x)
				out[ssh], out[engine] = true, true
			}
		}
		dom.Free()
	}
	delete(out, 0)
	return out
}

// genNote names a generation past the first in messages.
func genNote(gen int) string {
	if gen > 1 {
		return fmt.Sprintf(" (generation %d)", gen)
	}
	return ""
}

func (d *Driver) pool(conn *lv.Connect, name string) (*lv.StoragePool, error) {
	p, err := conn.LookupStoragePoolByName(name)
	if err != nil {
		return nil, lvErr("storage pool "+name, err)
	}
	active, err := p.IsActive()
	if err != nil {
		p.Free()
		return nil, lvErr("storage pool "+name, err)
	}
	if !active {
		p.Free()
		return nil, fmt.Errorf("storage pool %s is not active (virsh pool-start %s)", name, name)
	}
	return p, nil
}

type baseImage struct {
	path, format string
	capacity     uint64
}

// baseImage finds the spec's image volume: by name in image_pool, or by
// its path on the hypervisor.
func (d *Driver) baseImage(conn *lv.Connect) (baseImage, error) {
	var vol *lv.StorageVol
	var err error
	if strings.HasPrefix(d.cfg.Image, "/") {
		vol, err = conn.LookupStorageVolByPath(d.cfg.Image)
		if err != nil {
			return baseImage{}, lvErr("base image "+d.cfg.Image+" (it must be a volume of a storage pool)", err)
		}
	} else {
		p, perr := d.pool(conn, d.cfg.ImagePool)
		if perr != nil {
			return baseImage{}, perr
		}
		vol, err = p.LookupStorageVolByName(d.cfg.Image)
		p.Free()
		if err != nil {
			return baseImage{}, lvErr(fmt.Sprintf("base image %s in pool %s", d.cfg.Image, d.cfg.ImagePool), err)
		}
	}
	defer vol.Free()
	s, err := vol.GetXMLDesc(0)
	if err != nil {
		return baseImage{}, lvErr("base image "+d.cfg.Image, err)
	}
	var v libvirtxml.StorageVolume
	if err := v.Unmarshal(s); err != nil {
		return baseImage{}, fmt.Errorf("base image %s: %w", d.cfg.Image, err)
	}
	b := baseImage{format: "qcow2"}
	if v.Target != nil {
		b.path = v.Target.Path
		if v.Target.Format != nil && v.Target.Format.Type != "" {
			b.format = v.Target.Format.Type
		}
	}
	if v.Capacity != nil {
		b.capacity = v.Capacity.Value * unitBytes(v.Capacity.Unit)
	}
	if b.path == "" {
		return baseImage{}, fmt.Errorf("base image %s has no path", d.cfg.Image)
	}
	if b.format != "qcow2" && b.format != "raw" {
		return baseImage{}, fmt.Errorf("base image %s is %s: use a qcow2 (or raw) cloud image", d.cfg.Image, b.format)
	}
	return b, nil
}

func unitBytes(u string) uint64 {
	switch u {
	case "", "bytes", "B":
		return 1
	case "KiB", "K":
		return 1 << 10
	case "MiB", "M":
		return 1 << 20
	case "GiB", "G":
		return 1 << 30
	case "TiB", "T":
		return 1 << 40
	}
	return 1
}

// deleteVolume removes a volume of the pool by name; missing is fine.
func deleteVolume(pool *lv.StoragePool, name string) error {
	v, err := pool.LookupStorageVolByName(name)
	if err != nil {
		if isCode(err, lv.ERR_NO_STORAGE_VOL) {
			return nil
		}
		return lvErr("look up volume "+name, err)
	}
	defer v.Free()
	if err := v.Delete(0); err != nil && !isCode(err, lv.ERR_NO_STORAGE_VOL) {
		return lvErr("delete volume "+name, err)
	}
	return nil
}

// uploadStream writes data into the volume through a libvirt stream, so it
// works on remote hypervisors as well.
func uploadStream(ctx context.Context, conn *lv.Connect, vol *lv.StorageVol, data []byte) error {
	st, err := conn.NewStream(0)
	if err != nil {
		return lvErr("open stream", err)
	}
	defer st.Free()
	if err := vol.Upload(st, 0, uint64(len(data)), 0); err != nil {
		return lvErr("upload", err)
	}
	for off := 0; off < len(data); {
		if err := ctx.Err(); err != nil {
			st.Abort()
			return err
		}
		n, err := st.Send(data[off:min(off+1<<20, len(data))])
		if err != nil {
			st.Abort()
			return lvErr("upload", err)
		}
		off += n
	}
	if err := st.Finish(); err != nil {
		return lvErr("finish upload", err)
	}
	return nil
}

// ensureNetwork returns the cluster's NAT network, defining and starting it
// when missing (network_cidr).
func (d *Driver) ensureNetwork(ctx context.Context, conn *lv.Connect, cluster string) (string, error) {
	d.netMu.Lock()
	defer d.netMu.Unlock()
	name := NetworkName(cluster)
	n, err := conn.LookupNetworkByName(name)
	if err != nil && !isCode(err, lv.ERR_NO_NETWORK) {
		return "", lvErr("look up network "+name, err)
	}
	if err != nil {
		x, err := networkXML(cluster, d.cfg.NetworkCIDR)
		if err != nil {
			return "", err
		}
		d.log.InfoContext(ctx, "creating network", "network", name, "cidr", d.cfg.NetworkCIDR.String())
		if n, err = conn.NetworkDefineXML(x); err != nil {
			return "", lvErr("define network "+name, err)
		}
	}
	defer n.Free()
	active, err := n.IsActive()
	if err != nil {
		return "", lvErr("network "+name, err)
	}
	if !active {
		if err := n.Create(); err != nil {
			return "", lvErr("start network "+name, err)
		}
	}
	if err := n.SetAutostart(true); err != nil {
		d.log.WarnContext(ctx, "network autostart not set", "network", name, "err", lvMessage(err))
	}
	return name, nil
}

// Destroy shuts the machine down (ACPI, then forced off after
// shutdown_timeout), undefines it and deletes its disk, seed and docker
// disk. A machine already gone counts as success. Only one generation
// goes: the domain of m.ID, else the one of generation
// drivers.GenerationOf(m.Tags) (so a machine known by its tags alone can
// be destroyed); another generation of the machine and its volumes stay.
//
// With several hypervisors, the machine's own (its Zone) is asked first,
// then the others: the domain is removed where it is, and volumes of its
// name left on any of them by an interrupted Create go too.
func (d *Driver) Destroy(ctx context.Context, m drivers.Machine) error {
	var errs []error
	for i, h := range d.hvOrder(m.Zone) {
		if _, err := h.connect(); err != nil && i > 0 && m.Zone != "" {
			// The machine is on its zone's hypervisor, asked first; one
			// that does not answer only keeps its stray volumes.
			d.log.WarnContext(ctx, "hypervisor not reached: stray volumes of the machine there, if any, are left", "host", m.Name, "uri", h.uri, "err", err)
			continue
		}
		if err := d.destroy(ctx, h, m); err != nil {
			if d.spread() {
				err = fmt.Errorf("on %s: %w", h.uri, err)
			}
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("machine %q: %w", m.Name, err)
	}
	return nil
}

func (d *Driver) destroy(ctx context.Context, h *hypervisor, m drivers.Machine) error {
	conn, err := h.connect()
	if err != nil {
		return err
	}
	cluster := m.Tags[drivers.TagCluster]
	gen := drivers.GenerationOf(m.Tags)
	var dom *lv.Domain
	byID := false
	if m.ID != "" {
		dom, err = conn.LookupDomainByUUIDString(m.ID)
		byID = dom != nil
	}
	if dom == nil && cluster != "" {
		dom, err = conn.LookupDomainByName(instanceOf(cluster, m.Name, gen).domain)
	}
	if dom == nil && err != nil && !isCode(err, lv.ERR_NO_DOMAIN) {
		return lvErr("look up domain", err)
	}
	if dom == nil && cluster == "" {
		if m.ID == "" {
			return errors.New("neither a domain UUID nor a cluster tag: cannot find the machine")
		}
		return nil // gone, and its volumes cannot be named without the cluster
	}
	if dom != nil {
		defer dom.Free()
		mt, ok, err := readMeta(dom)
		if err != nil {
			return err
		}
		// Found by its UUID, the domain says which generation it is;
		// found by name, it must be the generation asked for.
		if !ok || (cluster != "" && mt.tags()[drivers.TagCluster] != cluster) || mt.tags()[drivers.TagMachine] != m.Name || (!byID && mt.generation() != gen) {
			name, _ := dom.GetName()
			return fmt.Errorf("domain %s is not this cluster's machine %s%s (its provision metadata does not say so): not removing it", name, m.Name, genNote(gen))
		}
		cluster = mt.tags()[drivers.TagCluster]
		gen = mt.generation()
		if err := d.stop(ctx, dom, m.Name); err != nil {
			return err
		}
		if err := dom.UndefineFlags(lv.DOMAIN_UNDEFINE_NVRAM | lv.DOMAIN_UNDEFINE_MANAGED_SAVE); err != nil {
			if isCode(err, lv.ERR_NO_SUPPORT) || isCode(err, lv.ERR_INVALID_ARG) {
				err = dom.Undefine()
			}
			if err != nil && !isCode(err, lv.ERR_NO_DOMAIN) {
				return lvErr("undefine domain", err)
			}
		}
		d.log.InfoContext(ctx, "domain removed", "host", m.Name, "generation", gen)
	}
	pool, err := d.pool(conn, d.cfg.Pool)
	if err != nil {
		return err
	}
	defer pool.Free()
	in := instanceOf(cluster, m.Name, gen)
	return errors.Join(deleteVolume(pool, in.disk), deleteVolume(pool, in.seed), deleteVolume(pool, in.docker))
}

// stop powers a running domain off: the ACPI power button first, so the
// guest shuts down cleanly, then destroy when shutdown_timeout passes.
func (d *Driver) stop(ctx context.Context, dom *lv.Domain, host string) error {
	active, err := dom.IsActive()
	if err != nil || !active {
		return nil
	}
	t0 := time.Now()
	if err := dom.ShutdownFlags(lv.DOMAIN_SHUTDOWN_ACPI_POWER_BTN); err != nil {
		d.log.DebugContext(ctx, "ACPI shutdown refused; forcing off", "host", host, "err", lvMessage(err))
	} else {
		sctx, cancel := context.WithTimeout(ctx, d.cfg.ShutdownTimeout)
		delay := min(d.pollMin, 500*time.Millisecond)
		_ = retry.Backoff{First: delay, Max: 2 * time.Second}.Poll(sctx, func() (bool, error) {
			active, _ = dom.IsActive()
			return !active, nil
		})
		cancel()
		if !active {
			d.log.InfoContext(ctx, "domain shut down", "host", host, "took", time.Since(t0).Round(100*time.Millisecond))
			return nil
		}
		d.log.WarnContext(ctx, "ACPI shutdown did not finish in time; forcing off", "host", host, "shutdown_timeout", d.cfg.ShutdownTimeout)
	}
	if err := dom.Destroy(); err != nil && !isCode(err, lv.ERR_OPERATION_INVALID) && !isCode(err, lv.ERR_NO_DOMAIN) {
		return lvErr("force off domain", err)
	}
	return nil
}

// Teardown removes what the cluster still has besides its domains: volumes
// left by an interrupted Create, and the network the driver created. It
// refuses while domains of the cluster remain.
func (d *Driver) Teardown(ctx context.Context, cluster string) error {
	var errs []error
	for _, h := range d.hvs {
		if err := d.teardown(ctx, h, cluster); err != nil {
			if d.spread() {
				err = fmt.Errorf("on %s: %w", h.uri, err)
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (d *Driver) teardown(ctx context.Context, h *hypervisor, cluster string) error {
	conn, err := h.connect()
	if err != nil {
		return err
	}
	doms, err := d.clusterDomains(conn, cluster)
	if err != nil {
		return fmt.Errorf("teardown cluster %s: %w", cluster, err)
	}
	if len(doms) > 0 {
		var names []string
		for _, o := range doms {
			n, _ := o.dom.GetName()
			names = append(names, n)
			o.dom.Free()
		}
		return fmt.Errorf("teardown cluster %s: %d domains remain (%s): destroy the machines first", cluster, len(names), strings.Join(names, ", "))
	}
	var errs []error
	vols, err := d.strayVolumes(conn, cluster)
	if err != nil {
		errs = append(errs, err)
	}
	if len(vols) > 0 {
		pool, err := d.pool(conn, d.cfg.Pool)
		if err != nil {
			errs = append(errs, err)
		} else {
			for _, v := range vols {
				d.log.InfoContext(ctx, "removing volume", "volume", v)
				errs = append(errs, deleteVolume(pool, v))
			}
			pool.Free()
		}
	}
	if err := d.removeNetwork(ctx, conn, cluster); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("teardown cluster %s: %w", cluster, err)
	}
	return nil
}

// strayVolumes lists the pool's volumes named for the cluster's machines:
// disks, docker disks (their names end in ".qcow2" too) and seeds.
func (d *Driver) strayVolumes(conn *lv.Connect, cluster string) ([]string, error) {
	pool, err := d.pool(conn, d.cfg.Pool)
	if err != nil {
		return nil, err
	}
	defer pool.Free()
	vols, err := pool.ListAllStorageVolumes(0)
	if err != nil {
		return nil, lvErr("list volumes of pool "+d.cfg.Pool, err)
	}
	var out []string
	for i := range vols {
		n, err := vols[i].GetName()
		vols[i].Free()
		if err == nil && strings.HasPrefix(n, prefix(cluster)) && (strings.HasSuffix(n, ".qcow2") || strings.HasSuffix(n, "-seed.iso")) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}

// removeNetwork stops and undefines the network the driver created for the
// cluster, if there is one.
func (d *Driver) removeNetwork(ctx context.Context, conn *lv.Connect, cluster string) error {
	name := NetworkName(cluster)
	n, err := conn.LookupNetworkByName(name)
	if err != nil {
		if isCode(err, lv.ERR_NO_NETWORK) {
			return nil
		}
		return lvErr("look up network "+name, err)
	}
	defer n.Free()
	if br, err := n.GetBridgeName(); err == nil && br != bridgeName(cluster) {
		return fmt.Errorf("network %s has bridge %s, not %s: not made by provision, not removing it", name, br, bridgeName(cluster))
	}
	d.log.InfoContext(ctx, "removing network", "network", name)
	if active, _ := n.IsActive(); active {
		if err := n.Destroy(); err != nil && !isCode(err, lv.ERR_OPERATION_INVALID) {
			return lvErr("stop network "+name, err)
		}
	}
	if err := n.Undefine(); err != nil && !isCode(err, lv.ERR_NO_NETWORK) {
		return lvErr("undefine network "+name, err)
	}
	return nil
}

var sameKey = drivers.SameKey
