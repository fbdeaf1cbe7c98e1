package plan

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
	"github.com/provision/provision/provision/swarm"
)

// MachineSettings are the settings machine index of pool p is made with
// that its driver uses: the driver block, its type, the pool settings the
// driver honours (drivers.Info.Honours), the existing host's address for
// drivers that use existing hosts, and the driver block's own settings that
// shape machines (drivers.MachineSettings, prefixed "driver."). A change of
// any of them means a new machine; nothing else does.
func MachineSettings(c *spec.Cluster, p spec.Pool, index int, driverSettings map[string]string) map[string]string {
	out := map[string]string{"driver": p.Driver}
	var info drivers.Info
	if d, ok := c.Driver(p.Driver); ok {
		out["type"] = d.Type
		info, _ = drivers.Lookup(d.Type)
	}
	if info.Uses("disk") {
		out["disk"] = strconv.Itoa(p.DiskGiB) + "GiB"
	}
	if info.Uses("size") {
		out["size"] = p.Size
	}
	if info.Uses("docker_disk") && p.DockerDiskGiB > 0 {
		// Only when set: machines made before the setting existed keep
		// their fingerprint.
		out["docker_disk"] = strconv.Itoa(p.DockerDiskGiB) + "GiB"
	}
	if info.NeedsHosts && index >= 1 && index <= len(p.Hosts) {
		out["address"] = p.Hosts[index-1]
	}
	for k, v := range driverSettings {
		out["driver."+k] = v
	}
	return out
}

// HashSettings fingerprints MachineSettings (recorded as the spec hash).
func HashSettings(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%s\x00", k, m[k])
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// legacyHash is state version 1's machine fingerprint: driver, type, disk,
// size and address, whether the driver used them or not.
func legacyHash(driver, typ string, disk int, size, addr string) string {
	sum := sha256.Sum256([]byte(strings.Join([]string{driver, typ, strconv.Itoa(disk), size, addr}, "\x00")))
	return hex.EncodeToString(sum[:8])
}

// legacyIndex checks version 1 fingerprints against the spec. The old
// fingerprint also covered disk and size, which some drivers ignore: for
// those, any disk (0-65535 GiB: the spec's default changed too) and the
// spec's or no size are accepted, so a change of an ignored setting since
// the last apply does not replace the machine. The candidate hashes are
// made once per combination of the other inputs.
type legacyIndex map[string]map[string]bool

func (x legacyIndex) match(recorded string, c *spec.Cluster, p spec.Pool, index int) bool {
	addr := ""
	if index >= 1 && index <= len(p.Hosts) {
		addr = p.Hosts[index-1]
	}
	typ := ""
	var info drivers.Info
	if d, ok := c.Driver(p.Driver); ok {
		typ = d.Type
		info, _ = drivers.Lookup(typ)
	}
	if legacyHash(p.Driver, typ, p.DiskGiB, p.Size, addr) == recorded {
		return true
	}
	key := strings.Join([]string{p.Driver, typ, strconv.Itoa(p.DiskGiB), p.Size, addr}, "\x00")
	set, ok := x[key]
	if !ok {
		set = map[string]bool{}
		sizes := []string{p.Size}
		if !info.Uses("size") && p.Size != "" {
			sizes = append(sizes, "")
		}
		disks := []int{p.DiskGiB}
		if !info.Uses("disk") {
			disks = disks[:0]
			for d := range 1 << 16 {
				disks = append(disks, d)
			}
		}
		if len(sizes) > 1 || len(disks) > 1 {
			for _, size := range sizes {
				for _, disk := range disks {
					set[legacyHash(p.Driver, typ, disk, size, addr)] = true
				}
			}
		}
		x[key] = set
	}
	return set[recorded]
}

// diffSettingsMap lists the changes from a to b as "key: old -> new".
func diffSettingsMap(a, b map[string]string) []string {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	var ks []string
	for k := range keys {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var out []string
	for _, k := range ks {
		va, oka := a[k]
		vb, okb := b[k]
		switch {
		case !oka:
			out = append(out, fmt.Sprintf("%s: + %q", k, vb))
		case !okb:
			out = append(out, fmt.Sprintf("%s: - %q", k, va))
		case va != vb:
			out = append(out, fmt.Sprintf("%s: %q -> %q", k, va, vb))
		}
	}
	return out
}

// NodeLabels are the labels provision sets on a machine's node: its
// provision.* labels and the pool's.
func NodeLabels(p spec.Pool, machine string) map[string]string {
	out := map[string]string{
		swarm.LabelRole: p.Role,
		swarm.LabelPool: p.Name,
		swarm.LabelName: machine,
	}
	for k, v := range p.Labels {
		out[k] = v
	}
	return out
}

// labelChanges lists label changes from what provision set (have) to what
// the spec wants: "+ k=v", "- k", "~ k: a -> b".
func labelChanges(have, want map[string]string) []string {
	var out []string
	for _, d := range diffSettingsMap(have, want) {
		out = append(out, d)
	}
	return out
}

// observedFor picks, among the machines a driver reports under one name,
// the one that is the recorded machine (by ID, else by generation; without
// a record, the newest), and the ones that are its retiring generations;
// the rest are leftovers.
func observedFor(rec *state.Machine, ms []*drivers.Machine) (current *drivers.Machine, retiring map[int]*drivers.Machine, leftovers []*drivers.Machine) {
	retiring = map[int]*drivers.Machine{}
	taken := map[*drivers.Machine]bool{}
	if rec == nil {
		for _, m := range ms {
			if current == nil || drivers.GenerationOf(m.Tags) > drivers.GenerationOf(current.Tags) {
				current = m
			}
		}
	} else {
		for _, m := range ms {
			if rec.ID != "" && m.ID == rec.ID {
				current = m
			}
		}
		if current == nil {
			for _, m := range ms {
				if drivers.GenerationOf(m.Tags) == rec.Gen() {
					current = m
					break
				}
			}
		}
		for i, old := range rec.Retiring {
			for _, m := range ms {
				if m == current || taken[m] {
					continue
				}
				if (old.ID != "" && old.ID == m.ID) || (old.ID == "" && max(1, old.Generation) == drivers.GenerationOf(m.Tags)) {
					retiring[i] = m
					taken[m] = true
					break
				}
			}
		}
	}
	for _, m := range ms {
		if m != current && !taken[m] {
			leftovers = append(leftovers, m)
		}
	}
	return current, retiring, leftovers
}

// addressMoved compares the addresses the driver reports for a running
// recorded machine with state's (only those both sides know: a driver that
// cannot tell an address says nothing about it). nil when they agree.
func addressMoved(rec *state.Machine, obs *drivers.Machine) *Moved {
	pub := obs.Address != "" && rec.Address != "" && obs.Address != rec.Address
	priv := obs.PrivateAddress != "" && rec.PrivateAddress != "" && obs.PrivateAddress != rec.PrivateAddress
	if !pub && !priv {
		return nil
	}
	m := &Moved{From: rec.Address, To: rec.Address}
	if pub {
		m.To = obs.Address
	}
	if priv {
		m.PrivateFrom, m.PrivateTo = rec.PrivateAddress, obs.PrivateAddress
	}
	to := *obs
	if to.Address == "" {
		to.Address = rec.Address
	}
	if to.PrivateAddress == "" {
		to.PrivateAddress = rec.PrivateAddress
	}
	m.Swarm = rec.NodeID != "" && rec.Advertise() != to.Advertise()
	return m
}

func (m *Moved) reason(rec *state.Machine) string {
	var ch []string
	if m.From != m.To {
		ch = append(ch, fmt.Sprintf("address %s -> %s", m.From, m.To))
	}
	if m.PrivateFrom != "" {
		ch = append(ch, fmt.Sprintf("private address %s -> %s", m.PrivateFrom, m.PrivateTo))
	}
	moved := "the driver reports it at another address than state (" + strings.Join(ch, ", ") + ": stopped and started outside provision?)"
	if m.Swarm {
		return fmt.Sprintf("%s; its swarm address moved from %s, which the swarm still knows: apply stops on this host (give the machine its old address back, or remove it so that apply replaces it)", moved, rec.Advertise())
	}
	return moved + ": apply records the new address and reissues its certificate"
}
