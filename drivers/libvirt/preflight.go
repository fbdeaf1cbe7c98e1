//go:build cgo && libvirt_dlopen

package libvirt

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/provision/provision/drivers"
)

// Preflight checks, before anything is created and without booting
// anything, that the machines can be made: libvirt answers, KVM can run
// guests when domain_type is kvm, the pool is active, the base image is a
// volume no larger than the disks, the network exists (or the one to
// create does not collide), sizes parse, and genisoimage is here.
//
// With several hypervisors (uris) each is checked for the machines that go
// to it.
func (d *Driver) Preflight(ctx context.Context, want []drivers.MachineSpec) error {
	var errs []error
	for _, s := range want {
		if _, err := resources(s.Size); err != nil {
			errs = append(errs, fmt.Errorf("machine %q: %w", s.Name, err))
		}
	}
	if _, err := exec.LookPath(isoTool); err != nil {
		errs = append(errs, fmt.Errorf("the NoCloud seeds need %s on this machine (apt-get install genisoimage)", isoTool))
	}
	if !d.spread() {
		return errors.Join(append(errs, d.preflight(d.hvs[0], want))...)
	}
	on := map[*hypervisor][]drivers.MachineSpec{}
	for _, s := range want {
		h := d.hvFor(s.Name)
		on[h] = append(on[h], s)
	}
	for _, h := range d.hvs {
		if len(on[h]) == 0 {
			continue
		}
		if err := d.preflight(h, on[h]); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", h.uri, err))
		}
	}
	return errors.Join(errs...)
}

// preflight checks one hypervisor for the machines that go to it.
func (d *Driver) preflight(h *hypervisor, want []drivers.MachineSpec) error {
	var errs []error
	conn, err := h.connect()
	if err != nil {
		return err
	}
	if d.cfg.DomainType == "kvm" {
		if err := d.checkKVM(conn, h.uri); err != nil {
			errs = append(errs, err)
		}
	}
	if p, err := d.pool(conn, d.cfg.Pool); err != nil {
		errs = append(errs, err)
	} else {
		p.Free()
	}
	if base, err := d.baseImage(conn); err != nil {
		errs = append(errs, err)
	} else {
		info, _ := drivers.Lookup("libvirt")
		for _, s := range want {
			gib := s.DiskGiB
			if gib == 0 {
				gib = info.DefaultGiB
			}
			if uint64(gib)<<30 < base.capacity {
				errs = append(errs, fmt.Errorf("machine %q: disk of %d GiB is smaller than base image %s (%d GiB)", s.Name, gib, d.cfg.Image, (base.capacity+(1<<30)-1)>>30))
			}
		}
	}
	switch d.cfg.Mode {
	case ModeNetwork:
		if err := checkNetwork(conn, d.cfg.Network); err != nil {
			errs = append(errs, err)
		}
	case ModeCreate:
		if err := d.checkCIDR(conn, want); err != nil {
			errs = append(errs, err)
		}
	case ModeUser:
		if err := d.checkUserMode(conn, want); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// checkKVM refuses domain_type kvm where KVM cannot run guests. Neither
// /dev/kvm nor libvirt's list of domain types proves it (both are there on
// machines whose CPU lacks virtualization extensions, and such a guest then
// never boots): the host CPU must show vmx or svm.
func (d *Driver) checkKVM(conn *lv.Connect, uri string) error {
	s, err := conn.GetCapabilities()
	if err != nil {
		return lvErr("hypervisor capabilities", err)
	}
	var caps libvirtxml.Caps
	if err := caps.Unmarshal(s); err != nil {
		return fmt.Errorf("hypervisor capabilities: %w", err)
	}
	cpuinfo := ""
	if u, err := url.Parse(uri); err == nil && u.Host == "" {
		// A local hypervisor: the kernel's own view of the CPU.
		if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
			cpuinfo = string(b)
		}
	}
	return kvmVerdict(caps, cpuinfo, uri)
}

// kvmVerdict decides from the hypervisor's capabilities and, for a local
// one, /proc/cpuinfo whether KVM can run guests: KVM domains offered and the
// CPU showing vmx or svm.
func kvmVerdict(caps libvirtxml.Caps, cpuinfo, uri string) error {
	offered := false
	for _, g := range caps.Guests {
		for _, dom := range g.Arch.Domains {
			if dom.Type == "kvm" {
				offered = true
			}
		}
	}
	if !offered {
		return fmt.Errorf("domain_type = \"kvm\": the hypervisor at %s offers no KVM domains; use domain_type = \"qemu\" (software emulation, much slower)", uri)
	}
	var flags []string
	if caps.Host.CPU != nil {
		for _, f := range caps.Host.CPU.FeatureFlags {
			flags = append(flags, f.Name)
		}
	}
	for _, l := range strings.Split(cpuinfo, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "flags" {
			flags = append(flags, strings.Fields(v)...)
		}
	}
	if !slices.Contains(flags, "vmx") && !slices.Contains(flags, "svm") {
		model := ""
		if caps.Host.CPU != nil {
			model = " (" + caps.Host.CPU.Model + ")"
		}
		return fmt.Errorf("domain_type = \"kvm\": the hypervisor's CPU%s shows no virtualization extension (vmx or svm), so KVM cannot run guests there "+
			"even if /dev/kvm exists; use domain_type = \"qemu\" (software emulation, much slower)", model)
	}
	return nil
}

func checkNetwork(conn *lv.Connect, name string) error {
	n, err := conn.LookupNetworkByName(name)
	if err != nil {
		return lvErr("network "+name, err)
	}
	defer n.Free()
	if active, err := n.IsActive(); err != nil || !active {
		return fmt.Errorf("network %s is not active (virsh net-start %s)", name, name)
	}
	return nil
}

// checkCIDR refuses a network_cidr that overlaps another libvirt network
// (the cluster's own, made by an earlier apply, is fine).
func (d *Driver) checkCIDR(conn *lv.Connect, want []drivers.MachineSpec) error {
	own := ""
	if len(want) > 0 {
		own = NetworkName(want[0].Tags[drivers.TagCluster])
	}
	nets, err := conn.ListAllNetworks(0)
	if err != nil {
		return lvErr("list networks", err)
	}
	var errs []error
	for i := range nets {
		s, err := nets[i].GetXMLDesc(0)
		nets[i].Free()
		if err != nil {
			continue
		}
		var n libvirtxml.Network
		if n.Unmarshal(s) != nil || n.Name == own {
			continue
		}
		for _, ip := range n.IPs {
			a, err := netip.ParseAddr(ip.Address)
			if err != nil || !a.Is4() {
				continue
			}
			bits := int(ip.Prefix)
			if bits == 0 && ip.Netmask != "" {
				if m, err := netip.ParseAddr(ip.Netmask); err == nil {
					b := m.As4()
					for _, x := range b {
						for ; x != 0; x <<= 1 {
							bits++
						}
					}
				}
			}
			if p := netip.PrefixFrom(a, bits).Masked(); p.Overlaps(d.cfg.NetworkCIDR) {
				errs = append(errs, fmt.Errorf("network_cidr %s overlaps libvirt network %s (%s): choose another block", d.cfg.NetworkCIDR, n.Name, p))
			}
		}
	}
	return errors.Join(errs...)
}

// checkUserMode refuses clusters of more than one machine on user-mode
// networking: each guest sits alone behind its own QEMU NAT, so swarm
// members could not reach each other.
func (d *Driver) checkUserMode(conn *lv.Connect, want []drivers.MachineSpec) error {
	if len(want) == 0 {
		return nil
	}
	cluster := want[0].Tags[drivers.TagCluster]
	names := map[string]bool{}
	for _, s := range want {
		names[s.Name] = true
	}
	if cluster != "" {
		doms, err := d.clusterDomains(conn, cluster)
		if err != nil {
			return err
		}
		for _, o := range doms {
			names[o.meta.tags()[drivers.TagMachine]] = true
			o.dom.Free()
		}
	}
	if len(names) > 1 {
		return fmt.Errorf("user_network = true gives each machine its own private network, so the %d machines of this cluster could not reach each other: "+
			"use one machine, or network, bridge or network_cidr", len(names))
	}
	return nil
}

// Resources lists what the cluster has on the hypervisor besides domains:
// the network the driver creates (network_cidr) and every machine's disk,
// seed and docker volume. It changes nothing.
//
// With several hypervisors each lists its own, the note naming it.
func (d *Driver) Resources(ctx context.Context, cluster string, want []drivers.MachineSpec) ([]drivers.Resource, error) {
	if !d.spread() {
		return d.resources(d.hvs[0], cluster, want)
	}
	on := map[*hypervisor][]drivers.MachineSpec{}
	for _, s := range want {
		h := d.hvFor(s.Name)
		on[h] = append(on[h], s)
	}
	var out []drivers.Resource
	var errs []error
	for _, h := range d.hvs {
		rs, err := d.resources(h, cluster, on[h])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", h.uri, err))
		}
		for _, r := range rs {
			r.Note = strings.TrimPrefix(r.Note+", on "+h.zone, ", ")
			out = append(out, r)
		}
	}
	return out, errors.Join(errs...)
}

func (d *Driver) resources(h *hypervisor, cluster string, want []drivers.MachineSpec) ([]drivers.Resource, error) {
	// The volumes of the wanted generation of each machine; those of its
	// other generations are kept as well (one is being replaced, or its
	// replacement runs while the spec asks the first).
	wanted := map[string]bool{}
	for _, s := range want {
		for _, v := range instanceOf(cluster, s.Name, s.Generation).volumes(s) {
			wanted[v] = true
		}
	}
	// made: machines with volumes of some generation. A spec that names no
	// generation (plan's) wants whichever the machine has.
	made := map[string]bool{}
	keep := func(v string) bool {
		k := wanted[v]
		for _, s := range want {
			if volumeOf(cluster, s.Name, v) {
				made[s.Name], k = true, true
			}
		}
		return k
	}
	conn, err := h.connect()
	if err != nil {
		return d.cfg.wouldCreate(cluster, want), err
	}
	var out []drivers.Resource
	if d.cfg.Mode == ModeCreate || len(want) == 0 {
		name := NetworkName(cluster)
		n, err := conn.LookupNetworkByName(name)
		switch {
		case err == nil:
			n.Free()
			out = append(out, drivers.Resource{Kind: "network", Name: name, Action: keepOrRemove(len(want) > 0)})
		case !isCode(err, lv.ERR_NO_NETWORK):
			return d.cfg.wouldCreate(cluster, want), lvErr("look up network "+name, err)
		case len(want) > 0:
			out = append(out, drivers.Resource{Kind: "network", Name: name, Action: drivers.ResourceCreate, Note: "NAT, " + d.cfg.NetworkCIDR.String()})
		}
	}
	have, err := d.strayVolumes(conn, cluster)
	if err != nil {
		return append(out, d.cfg.wouldCreate(cluster, want)...), err
	}
	for _, v := range have {
		out = append(out, drivers.Resource{Kind: "volume", Name: v, Action: keepOrRemove(keep(v))})
		delete(wanted, v)
	}
	for _, s := range want {
		if s.Generation == 0 && made[s.Name] {
			continue
		}
		for _, v := range instanceOf(cluster, s.Name, s.Generation).volumes(s) {
			if wanted[v] {
				out = append(out, volumeToCreate(d.cfg, v))
			}
		}
	}
	return out, nil
}

func keepOrRemove(keep bool) string {
	if keep {
		return drivers.ResourceKeep
	}
	return drivers.ResourceRemove
}
