package libvirt

import (
	"encoding/xml"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"libvirt.org/go/libvirtxml"

	"github.com/provision/provision/drivers"
)

// MetadataNS is the XML namespace of the <provision:machine> element every
// domain the driver defines carries: the ownership tags, the admin user, the
// pinned host key and how the machine is reached.
const (
	MetadataNS     = "urn:provision:libvirt:machine:1"
	metadataPrefix = "provision"
)

// Guest ports forwarded in user-mode networking, and the address QEMU's
// user-mode DHCP gives the guest's first interface.
const (
	guestSSHPort    = 22
	guestEnginePort = 2376
	userGuestAddr   = "10.0.2.15"
)

var unsafeName = regexp.MustCompile(`[^a-zA-Z0-9_.-]`)

// ClusterShort is the cluster ID part of resource names: its first 12
// characters, made safe for libvirt names.
func ClusterShort(cluster string) string {
	s := unsafeName.ReplaceAllString(cluster, "-")
	if len(s) > 12 {
		s = s[:12]
	}
	return s
}

// prefix is the start of every domain and volume name of the cluster.
func prefix(cluster string) string { return "provision-" + ClusterShort(cluster) + "-" }

// DomainName is the libvirt domain of a machine.
func DomainName(cluster, machine string) string {
	return prefix(cluster) + unsafeName.ReplaceAllString(machine, "-")
}

// DiskName is the machine's copy-on-write disk volume.
func DiskName(cluster, machine string) string { return DomainName(cluster, machine) + ".qcow2" }

// SeedName is the machine's NoCloud seed volume.
func SeedName(cluster, machine string) string { return DomainName(cluster, machine) + "-seed.iso" }

// dockerSuffix ends the name of a machine's docker disk. It ends in
// ".qcow2" too, so whatever tells volumes apart by suffix checks it first.
const dockerSuffix = "-docker.qcow2"

// DockerDiskName is the machine's blank volume for /var/lib/docker
// (MachineSpec.DockerDiskGiB): CIS Docker Benchmark 1.1.1 wants the
// engine's data on a partition of its own.
func DockerDiskName(cluster, machine string) string {
	return DomainName(cluster, machine) + dockerSuffix
}

// The docker disk's serial number, and the path the guest's udev gives it
// from that serial (virtio-blk serials are cut at 20 characters: this one
// is 16). The path is stable whatever order the kernel names the disks in.
const (
	dockerSerial   = "provision-docker"
	dockerDiskPath = "/dev/disk/by-id/virtio-" + dockerSerial
)

// instance names what generation gen of a machine is made of: the domain
// and its volumes are named after drivers.InstanceName, so the first
// generation keeps the names machines had before generations existed
// (provision-<cluster>-<machine>) and the next ones add "-g<gen>".
type instance struct {
	machine    string // the machine name (the guest's host name)
	gen        int    // 1, 2, ...
	domain     string
	disk, seed string
	docker     string // made only when the spec asks for a docker disk
}

func instanceOf(cluster, machine string, gen int) instance {
	gen = max(1, gen)
	n := drivers.InstanceName(machine, gen)
	return instance{machine: machine, gen: gen, domain: DomainName(cluster, n), disk: DiskName(cluster, n), seed: SeedName(cluster, n),
		docker: DockerDiskName(cluster, n)}
}

// volumeOf reports whether vol is the disk, seed or docker volume of some
// generation of machine.
func volumeOf(cluster, machine, vol string) bool {
	base := DomainName(cluster, machine)
	rest, ok := strings.CutPrefix(vol, base)
	if !ok {
		return false
	}
	if r, ok := strings.CutSuffix(rest, dockerSuffix); ok {
		rest = r
	} else if r, ok := strings.CutSuffix(rest, ".qcow2"); ok {
		rest = r
	} else if r, ok := strings.CutSuffix(rest, "-seed.iso"); ok {
		rest = r
	} else {
		return false
	}
	if rest == "" {
		return true
	}
	g, ok := strings.CutPrefix(rest, "-g")
	n, err := strconv.Atoi(g)
	return ok && err == nil && n > 1 && strconv.Itoa(n) == g
}

// NetworkName is the network the driver creates for a cluster (network_cidr).
func NetworkName(cluster string) string { return "provision-" + ClusterShort(cluster) }

// bridgeName is the created network's bridge (15 characters at most).
func bridgeName(cluster string) string { return "pv-" + ClusterShort(cluster) }

// meta is the <provision:machine> metadata element.
type meta struct {
	XMLName    xml.Name  `xml:"machine"`
	Tags       []metaTag `xml:"tag"`
	User       string    `xml:"user"`
	HostKey    string    `xml:"hostkey"`
	Mode       string    `xml:"network>mode"`
	SSHPort    int       `xml:"network>ssh-port,omitempty"`
	EnginePort int       `xml:"network>engine-port,omitempty"`
}

type metaTag struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

func (m meta) tags() map[string]string {
	out := make(map[string]string, len(m.Tags))
	for _, t := range m.Tags {
		out[t.Name] = t.Value
	}
	return out
}

// generation is the generation of the machine the domain holds (1 when the
// metadata records none: the first generation, and every domain defined
// before generations existed).
func (m meta) generation() int { return drivers.GenerationOf(m.tags()) }

// owns reports whether the metadata is that of generation gen of the
// cluster's machine name.
func (m meta) owns(cluster, name string, gen int) bool {
	t := m.tags()
	return t[drivers.TagCluster] == cluster && t[drivers.TagMachine] == name && m.generation() == max(1, gen)
}

// marshal renders the element with the provision namespace, as libvirt
// stores it inside <metadata>.
func (m meta) marshal() (string, error) {
	b, err := xml.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("domain metadata: %w", err)
	}
	s := string(b)
	// encoding/xml cannot write a prefixed element; the body has no other
	// namespace, so the prefix is added to every element name.
	s = strings.NewReplacer("</", "</"+metadataPrefix+":", "<", "<"+metadataPrefix+":").Replace(s)
	s = strings.Replace(s, "<"+metadataPrefix+":machine", "<"+metadataPrefix+":machine xmlns:"+metadataPrefix+"=\""+MetadataNS+"\"", 1)
	return s, nil
}

// parseMeta reads the element as GetMetadata returns it.
func parseMeta(s string) (meta, error) {
	var m meta
	if err := xml.Unmarshal([]byte(s), &m); err != nil {
		return meta{}, fmt.Errorf("domain metadata: %w", err)
	}
	return m, nil
}

// newMeta is the metadata of a machine about to be defined. It names the
// machine (not its generation's domain) and records the generation past
// the first; a first generation's metadata has no generation tag, as
// before generations existed.
func newMeta(cluster string, want drivers.MachineSpec, mode string, sshPort, enginePort int) meta {
	tags := maps.Clone(want.Tags)
	if tags == nil {
		tags = map[string]string{}
	}
	tags[drivers.TagCluster] = cluster
	tags[drivers.TagMachine] = want.Name
	if gen := max(1, want.Generation); gen > 1 {
		tags[drivers.TagGeneration] = strconv.Itoa(gen)
	} else {
		delete(tags, drivers.TagGeneration)
	}
	if want.Role != "" {
		tags[drivers.TagRole] = want.Role
	}
	if want.Pool != "" {
		tags[drivers.TagPool] = want.Pool
	}
	m := meta{User: want.SSH.User, HostKey: strings.TrimSpace(want.HostKey.Public), Mode: mode, SSHPort: sshPort, EnginePort: enginePort}
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		m.Tags = append(m.Tags, metaTag{Name: k, Value: tags[k]})
	}
	return m
}

// domainSpec is everything the domain XML is made from.
type domainSpec struct {
	Name       string
	Type       string // kvm | qemu
	Machine    string // q35 | pc | ...
	Res        drivers.Resources
	Pool       string // disk and seed volumes live here
	Disk, Seed string // volume names
	Docker     string // the docker disk's volume name; "" for none
	Meta       string // the marshalled metadata element
	Mode       string
	Network    string // ModeNetwork, ModeCreate: the libvirt network
	Bridge     string // ModeBridge
	SSHPort    int    // ModeUser: forwarded on 127.0.0.1
	EnginePort int    // ModeUser
	SerialLog  string // a file on the hypervisor, or ""
}

// domainXML renders the domain: the disk and seed as pool volumes (so remote
// hypervisors resolve their paths), the docker disk when there is one (see
// dockerDisk), ACPI so a shutdown is clean, a virtio RNG
// and the guest agent's channel, and the network as the mode says. User-mode
// networking is a QEMU -netdev through the qemu:commandline namespace (this
// libvirt refuses its own port forwarding), with an explicit PCI address:
// without one QEMU takes the slot libvirt gave a root port and will not start.
func domainXML(s domainSpec) (string, error) {
	d := &libvirtxml.Domain{
		Type:     s.Type,
		Name:     s.Name,
		Metadata: &libvirtxml.DomainMetadata{XML: s.Meta},
		Memory:   &libvirtxml.DomainMemory{Value: uint(s.Res.MemoryMiB), Unit: "MiB"},
		VCPU:     &libvirtxml.DomainVCPU{Placement: "static", Value: uint(s.Res.CPUs)},
		OS: &libvirtxml.DomainOS{
			Type:        &libvirtxml.DomainOSType{Arch: "x86_64", Machine: s.Machine, Type: "hvm"},
			BootDevices: []libvirtxml.DomainBootDevice{{Dev: "hd"}},
		},
		Features:   &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}, APIC: &libvirtxml.DomainFeatureAPIC{}},
		Clock:      &libvirtxml.DomainClock{Offset: "utc"},
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
		Devices: &libvirtxml.DomainDeviceList{
			Disks: []libvirtxml.DomainDisk{
				{
					Device: "disk",
					Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "qcow2", Discard: "unmap"},
					Source: &libvirtxml.DomainDiskSource{Volume: &libvirtxml.DomainDiskSourceVolume{Pool: s.Pool, Volume: s.Disk}},
					Target: &libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"},
				},
				{
					Device:   "cdrom",
					Driver:   &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw"},
					Source:   &libvirtxml.DomainDiskSource{Volume: &libvirtxml.DomainDiskSourceVolume{Pool: s.Pool, Volume: s.Seed}},
					Target:   &libvirtxml.DomainDiskTarget{Dev: "sda", Bus: "sata"},
					ReadOnly: &libvirtxml.DomainDiskReadOnly{},
				},
			},
			Channels: []libvirtxml.DomainChannel{{
				Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Mode: "bind"}},
				Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: "org.qemu.guest_agent.0"}},
			}},
			RNGs: []libvirtxml.DomainRNG{{
				Model:   "virtio",
				Backend: &libvirtxml.DomainRNGBackend{Random: &libvirtxml.DomainRNGBackendRandom{Device: "/dev/urandom"}},
			}},
			MemBalloon: &libvirtxml.DomainMemBalloon{Model: "none"},
		},
	}
	if s.Docker != "" {
		d.Devices.Disks = append(d.Devices.Disks, dockerDisk(s.Pool, s.Docker))
	}
	serial := libvirtxml.DomainSerial{Target: &libvirtxml.DomainSerialTarget{Port: ptr(uint(0))}}
	if s.SerialLog != "" {
		serial.Source = &libvirtxml.DomainChardevSource{File: &libvirtxml.DomainChardevSourceFile{Path: s.SerialLog}}
	} else {
		serial.Source = &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}}
	}
	d.Devices.Serials = []libvirtxml.DomainSerial{serial}

	virtio := &libvirtxml.DomainInterfaceModel{Type: "virtio"}
	switch s.Mode {
	case ModeNetwork, ModeCreate:
		d.Devices.Interfaces = []libvirtxml.DomainInterface{{
			Source: &libvirtxml.DomainInterfaceSource{Network: &libvirtxml.DomainInterfaceSourceNetwork{Network: s.Network}},
			Model:  virtio,
		}}
	case ModeBridge:
		d.Devices.Interfaces = []libvirtxml.DomainInterface{{
			Source: &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: s.Bridge}},
			Model:  virtio,
		}}
	case ModeUser:
		if s.SSHPort <= 0 || s.EnginePort <= 0 {
			return "", fmt.Errorf("domain %s: user-mode networking without forwarded ports", s.Name)
		}
		bus := "pci.0"
		if strings.Contains(s.Machine, "q35") {
			bus = "pcie.0"
		}
		netdev := fmt.Sprintf("user,id=provnet0,hostfwd=tcp:127.0.0.1:%d-:%d,hostfwd=tcp:127.0.0.1:%d-:%d",
			s.SSHPort, guestSSHPort, s.EnginePort, guestEnginePort)
		d.QEMUCommandline = &libvirtxml.DomainQEMUCommandline{Args: []libvirtxml.DomainQEMUCommandlineArg{
			{Value: "-netdev"}, {Value: netdev},
			{Value: "-device"}, {Value: "virtio-net-pci,netdev=provnet0,bus=" + bus + ",addr=0x10"},
		}}
	default:
		return "", fmt.Errorf("domain %s: unknown network mode %q", s.Name, s.Mode)
	}
	out, err := d.Marshal()
	if err != nil {
		return "", fmt.Errorf("domain %s XML: %w", s.Name, err)
	}
	return out, nil
}

// dockerDisk is the blank docker volume as the guest's second virtio disk.
// Its serial, not its target, is what the guest finds it by
// (dockerDiskPath): vdb is only libvirt's hint, and the kernel names disks
// in the order it probes them. The serial is also how Machines knows a
// domain has one, whatever the spec says now.
func dockerDisk(pool, volume string) libvirtxml.DomainDisk {
	return libvirtxml.DomainDisk{
		Device: "disk",
		Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "qcow2", Discard: "unmap"},
		Source: &libvirtxml.DomainDiskSource{Volume: &libvirtxml.DomainDiskSourceVolume{Pool: pool, Volume: volume}},
		Target: &libvirtxml.DomainDiskTarget{Dev: "vdb", Bus: "virtio"},
		Serial: dockerSerial,
	}
}

// dockerDiskOf is where the domain's guest sees its docker disk: the path
// of the disk with the docker serial, "" when the domain has none.
func dockerDiskOf(x *libvirtxml.Domain) string {
	if x.Devices == nil {
		return ""
	}
	for _, disk := range x.Devices.Disks {
		if disk.Serial == dockerSerial {
			return dockerDiskPath
		}
	}
	return ""
}

// userPorts reads the forwarded ports back from a domain's qemu:commandline
// (what QEMU really listens on, whatever the metadata says).
func userPorts(d *libvirtxml.Domain) (ssh, engine int) {
	if d.QEMUCommandline == nil {
		return 0, 0
	}
	for _, a := range d.QEMUCommandline.Args {
		for _, f := range strings.Split(a.Value, ",") {
			rule, ok := strings.CutPrefix(f, "hostfwd=tcp:127.0.0.1:")
			if !ok {
				continue
			}
			host, guest, ok := strings.Cut(rule, "-:")
			if !ok {
				continue
			}
			hp, _ := strconv.Atoi(host)
			switch guest {
			case strconv.Itoa(guestSSHPort):
				ssh = hp
			case strconv.Itoa(guestEnginePort):
				engine = hp
			}
		}
	}
	return ssh, engine
}

// overlayXML is a qcow2 volume of capacity bytes backed by the base image.
func overlayXML(name string, capacity uint64, basePath, baseFormat string) (string, error) {
	v := &libvirtxml.StorageVolume{
		Name:     name,
		Capacity: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: capacity},
		Target:   &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"}},
		BackingStore: &libvirtxml.StorageVolumeBackingStore{
			Path:   basePath,
			Format: &libvirtxml.StorageVolumeTargetFormat{Type: baseFormat},
		},
	}
	return v.Marshal()
}

// blankVolumeXML is an empty qcow2 volume of capacity bytes (the docker
// disk: the host steps make its file system). qcow2 allocates as the guest
// writes, so the pool pays for what the engine stores, not the capacity.
func blankVolumeXML(name string, capacity uint64) (string, error) {
	v := &libvirtxml.StorageVolume{
		Name:     name,
		Capacity: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: capacity},
		Target:   &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"}},
	}
	return v.Marshal()
}

// rawVolumeXML is a raw volume of exactly size bytes (the seed ISO).
func rawVolumeXML(name string, size uint64) (string, error) {
	v := &libvirtxml.StorageVolume{
		Name:       name,
		Capacity:   &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: size},
		Allocation: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: size},
		Target:     &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "raw"}},
	}
	return v.Marshal()
}

// networkXML is the NAT network created for a cluster: the gateway is the
// block's first address, DHCP hands out the rest.
func networkXML(cluster string, cidr netip.Prefix) (string, error) {
	gw := cidr.Addr().Next()
	first := gw.Next()
	last := lastAddr(cidr).Prev() // the broadcast address is not handed out
	if !first.IsValid() || !cidr.Contains(first) || !last.IsValid() || last.Less(first) {
		return "", fmt.Errorf("network_cidr %s is too small", cidr)
	}
	n := &libvirtxml.Network{
		Name:    NetworkName(cluster),
		Forward: &libvirtxml.NetworkForward{Mode: "nat"},
		Bridge:  &libvirtxml.NetworkBridge{Name: bridgeName(cluster), STP: "on", Delay: "0"},
		IPs: []libvirtxml.NetworkIP{{
			Address: gw.String(),
			Prefix:  uint(cidr.Bits()),
			DHCP:    &libvirtxml.NetworkDHCP{Ranges: []libvirtxml.NetworkDHCPRange{{Start: first.String(), End: last.String()}}},
		}},
	}
	return n.Marshal()
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func ptr[T any](v T) *T { return &v }
