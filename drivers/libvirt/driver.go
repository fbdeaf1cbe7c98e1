// Package libvirt is the driver whose machines are libvirt domains (KVM, or
// QEMU's software emulation where KVM cannot work), local or on a remote
// hypervisor (qemu+ssh://).
//
// Per machine it makes a copy-on-write qcow2 volume in the storage pool,
// backed by the spec's base image (a cloud image with cloud-init) and grown
// to the pool's disk size; a NoCloud seed volume (an ISO written with
// genisoimage, uploaded through libvirt) carrying the hostname, the admin
// user and key, and the SSH host key provision generated, so the first
// connection is already strictly checked; and the domain, sized by the
// pool's size ("2cpu-2g"), whose <metadata> names the cluster and machine.
// When the pool sets docker_disk, a blank qcow2 volume of that size
// (-docker.qcow2) is the domain's second virtio disk, whose serial makes it
// /dev/disk/by-id/virtio-provision-docker in the guest: the host steps put
// /var/lib/docker there (CIS Docker Benchmark 1.1.1).
// Machines lists domains by that metadata; volumes are found by their names
// (provision-<cluster>-<machine>.qcow2, -docker.qcow2 and -seed.iso).
//
// A replaced machine's next generation (MachineSpec.Generation) is a second
// domain with volumes of its own, named after drivers.InstanceName
// (provision-<cluster>-<machine>-g2, -g2.qcow2, -g2-seed.iso), on the same
// hypervisor, so it joins the swarm before the previous one leaves. Its
// guest's host name and the machine in its metadata stay the machine name;
// the metadata records the generation (the first generation's records
// none, and its names are those machines had before generations existed).
// Create, Machines and Destroy key domains by (machine, generation).
//
// The block:
//
//	driver "libvirt" {
//	  uri          = "qemu:///system"     # or "qemu+ssh://user@host/system"
//	  uris         = ["qemu+ssh://kvm1/system", "qemu+ssh://kvm2/system"] # instead of uri: spread over these
//	  domain_type  = "kvm"                # "qemu": software emulation (TCG) where KVM does not work
//	  pool         = "default"            # storage pool of the disks and seeds
//	  image        = "debian-12-genericcloud-amd64.qcow2" # volume in image_pool, or a volume's absolute path
//	  image_pool   = "images"             # default: pool
//	  # exactly one network mode:
//	  network      = "lab"                # an existing libvirt network (addresses from its DHCP leases)
//	  bridge       = "br0"                # an existing host bridge (addresses from the guest agent or ARP)
//	  network_cidr = "10.213.0.0/24"      # a NAT network the driver creates for the cluster (removed on destroy)
//	  user_network = true                 # QEMU user-mode networking, SSH and 2376 forwarded on 127.0.0.1 (one machine)
//	  machine_type     = "q35"
//	  boot_timeout     = "10m"            # start to sshd presenting the pinned key
//	  shutdown_timeout = "90s"            # ACPI shutdown before forcing off
//	  serial_log_dir   = "/var/log/libvirt/qemu" # each machine's serial console in a file there
//	}
//
// The driver needs cgo and is built with -tags libvirt_dlopen (as the
// Makefile does): libvirt's client library (libvirt0) is then loaded at run
// time, so machines that never use this driver do not need it. A binary
// built without the tag (or with CGO_ENABLED=0) still validates and plans
// libvirt specs and says it was built without libvirt when asked to reach
// a hypervisor.
package libvirt

import (
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/provision/provision/drivers"
)

func init() {
	drivers.Register("libvirt", New)
}

// New decodes a `driver "libvirt" { ... }` block. It does no I/O.
func New(body hcl.Body, opts drivers.Options) (drivers.Driver, hcl.Diagnostics) {
	cfg, diags := decodeConfig(body, opts.Eval)
	if diags.HasErrors() {
		return nil, diags
	}
	return newDriver(cfg, opts), diags
}

// wouldCreate is what Create would add for want, from the spec alone.
func (c Config) wouldCreate(cluster string, want []drivers.MachineSpec) []drivers.Resource {
	var out []drivers.Resource
	if c.Mode == ModeCreate && len(want) > 0 {
		out = append(out, drivers.Resource{Kind: "network", Name: NetworkName(cluster), Action: drivers.ResourceCreate, Note: "NAT, " + c.NetworkCIDR.String()})
	}
	for _, s := range want {
		for _, v := range instanceOf(cluster, s.Name, s.Generation).volumes(s) {
			out = append(out, volumeToCreate(c, v))
		}
	}
	return out
}

// volumes are the names of the volumes Create makes for want: the disk,
// the seed, and the docker disk when want asks for one.
func (in instance) volumes(want drivers.MachineSpec) []string {
	if want.DockerDiskGiB > 0 {
		return []string{in.disk, in.seed, in.docker}
	}
	return []string{in.disk, in.seed}
}

func volumeToCreate(c Config, name string) drivers.Resource {
	note := "NoCloud seed, pool " + c.Pool
	switch {
	case strings.HasSuffix(name, dockerSuffix): // before ".qcow2", which it ends in too
		note = "blank, for /var/lib/docker, pool " + c.Pool
	case strings.HasSuffix(name, ".qcow2"):
		note = "backed by " + c.Image + ", pool " + c.Pool
	}
	return drivers.Resource{Kind: "volume", Name: name, Action: drivers.ResourceCreate, Note: note}
}

// ReplaceInPlace implements drivers.InPlacer: in user-mode networking every
// guest sits alone behind its own NAT at the same address, so a machine's
// next generation could not reach the swarm it is to join; it is replaced in
// place instead.
func (d *Driver) ReplaceInPlace() string {
	if d.cfg.Mode == ModeUser {
		return "libvirt user-mode networking: each guest is alone behind its own NAT"
	}
	return ""
}
