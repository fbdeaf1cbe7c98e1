// Package plan compares a loaded spec with the recorded state and with what
// the drivers report, and says per machine and per cluster setting what
// apply will do. It does no I/O: the caller gathers Observed first.
package plan

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
)

// Kind is what apply does to one machine.
type Kind string

// Kinds, in the order a plan lists them.
const (
	Create      Kind = "create"      // no machine yet
	Adopt       Kind = "adopt"       // a machine with the cluster's tags exists but state does not know it (interrupted apply)
	Replace     Kind = "replace"     // destroy and create again (machine settings changed, or the host is gone)
	Reconfigure Kind = "reconfigure" // host settings changed or the last apply did not finish: host steps run again
	Remove      Kind = "remove"      // the spec no longer wants it: drain, leave the swarm, destroy
	None        Kind = "none"        // nothing to do
)

// Action is one machine's line in the plan.
type Action struct {
	Machine  string           `json:"machine"`
	Role     string           `json:"role"`
	Pool     string           `json:"pool"`
	Driver   string           `json:"driver"`
	Index    int              `json:"index"`
	Kind     Kind             `json:"action"`
	Reasons  []string         `json:"reasons,omitempty"`
	Address  string           `json:"address,omitempty"` // the existing host, for drivers that need one (generic)
	Observed *drivers.Machine `json:"-"`                 // what the driver reports, if anything
	Recorded *state.Machine   `json:"-"`                 // what state holds, if anything
}

// Observed is what the drivers reported: machines per driver name, and the
// drivers that could not be asked (name -> why).
type Observed struct {
	Machines map[string][]drivers.Machine
	Unknown  map[string]string
	// Resources are the shared resources drivers that implement
	// drivers.Resourcer reported, and ResourceErrs what they could not check.
	Resources    map[string][]drivers.Resource
	ResourceErrs map[string]string
}

// Resource is a driver's shared resource in the plan.
type Resource struct {
	Driver string `json:"driver"`
	drivers.Resource
}

// SettingChange is a cluster-wide setting that differs from the last apply.
type SettingChange struct {
	Name    string   `json:"name"`
	Changes []string `json:"changes"` // "options.max-size: \"10m\" -> \"20m\""
}

// Plan is the whole comparison.
type Plan struct {
	Cluster   string            `json:"cluster"`
	Actions   []Action          `json:"machines"`
	Settings  []SettingChange   `json:"settings,omitempty"`
	Unknown   map[string]string `json:"unchecked_drivers,omitempty"`
	Resources []Resource        `json:"resources,omitempty"`
	Notes     []string          `json:"notes,omitempty"`
	Summary   Summary           `json:"summary"`
}

// Summary counts actions by kind.
type Summary struct {
	Create      int `json:"create"`
	Adopt       int `json:"adopt"`
	Replace     int `json:"replace"`
	Reconfigure int `json:"reconfigure"`
	Remove      int `json:"remove"`
	Unchanged   int `json:"unchanged"`
}

// Changes is the number of machines apply will touch.
func (s Summary) Changes() int {
	return s.Create + s.Adopt + s.Replace + s.Reconfigure + s.Remove
}

// Empty reports whether apply has nothing to do.
func (p *Plan) Empty() bool { return p.Summary.Changes() == 0 && len(p.Settings) == 0 }

// Destructive reports whether the plan replaces or removes machines.
func (p *Plan) Destructive() bool { return p.Summary.Replace+p.Summary.Remove > 0 }

// MachineHash fingerprints what a machine is made with: driver, disk, size
// and (for existing hosts) address. A different hash means replacement.
func MachineHash(c *spec.Cluster, p spec.Pool, index int) string {
	addr := ""
	if index >= 1 && index <= len(p.Hosts) {
		addr = p.Hosts[index-1]
	}
	typ := ""
	if d, ok := c.Driver(p.Driver); ok {
		typ = d.Type
	}
	sum := sha256.Sum256([]byte(strings.Join([]string{p.Driver, typ, strconv.Itoa(p.DiskGiB), p.Size, addr}, "\x00")))
	return hex.EncodeToString(sum[:8])
}

// Settings renders the cluster-wide settings as canonical JSON per name, as
// recorded in state after a successful apply. Plan diffs them field by field.
func Settings(c *spec.Cluster) map[string]string {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	}
	return map[string]string{
		"engine":    enc(map[string]any{"version": c.Engine.Version, "method": c.Engine.Method, "package": c.Engine.Package}),
		"logging":   enc(map[string]any{"driver": c.Logging.Driver, "options": c.Logging.Options, "journald_max_use": c.Logging.JournaldMaxUse}),
		"prune":     enc(map[string]any{"enabled": c.Prune.Enabled, "schedule": c.Prune.Schedule, "until": c.Prune.Until, "volumes": c.Prune.Volumes, "randomized_delay": c.Prune.RandomizedDelay}),
		"tls":       enc(map[string]any{"validity_hours": c.TLS.ValidityHours, "extra_names": c.TLS.ExtraNames, "allowed_cidrs": c.TLS.AllowedCIDRs}),
		"hardening": enc(c.Hardening),
		"ssh":       enc(map[string]any{"user": c.SSH.User}),
	}
}

// Build compares spec, state and observation.
func Build(c *spec.Cluster, st *state.State, obs Observed) *Plan {
	p := &Plan{Cluster: c.Name, Unknown: obs.Unknown}
	// Observed machines by name, per driver.
	seen := map[string]map[string]*drivers.Machine{}
	for dname, ms := range obs.Machines {
		seen[dname] = map[string]*drivers.Machine{}
		for i := range ms {
			m := &ms[i]
			name := m.Name
			if t := m.Tags[drivers.TagMachine]; t != "" {
				name = t
			}
			m.Driver = dname
			seen[dname][name] = m
		}
	}
	wanted := map[string]bool{}
	settingChanges := diffSettings(st.Settings, Settings(c))
	if len(st.Machines) > 0 {
		p.Settings = settingChanges
	}
	var settingNames []string
	for _, s := range p.Settings {
		settingNames = append(settingNames, s.Name)
	}

	for _, pool := range c.Pools() {
		for i := 1; i <= pool.Count; i++ {
			name := spec.MachineName(c.Name, pool.Name, i)
			wanted[name] = true
			a := Action{Machine: name, Role: pool.Role, Pool: pool.Name, Driver: pool.Driver, Index: i}
			if i <= len(pool.Hosts) {
				a.Address = pool.Hosts[i-1]
			}
			rec := st.Machine(name)
			_, unknown := obs.Unknown[pool.Driver]
			var observed *drivers.Machine
			if m := seen[pool.Driver][name]; m != nil {
				observed = m
			}
			a.Observed = observed
			a.Recorded = rec
			hash := MachineHash(c, pool, i)
			switch {
			case rec == nil && observed != nil:
				a.Kind = Adopt
				a.Reasons = []string{"found " + observed.ID + " by its cluster tags (an earlier apply was interrupted)"}
			case rec == nil:
				a.Kind = Create
			case rec.Driver != pool.Driver:
				a.Kind = Replace
				a.Reasons = []string{fmt.Sprintf("driver changes from %s to %s", rec.Driver, pool.Driver)}
			case rec.SpecHash != "" && rec.SpecHash != hash:
				a.Kind = Replace
				a.Reasons = []string{"machine settings changed (disk, size or host address)"}
			case rec.ID == "" && observed != nil:
				// The create was interrupted after the machine was made but
				// before its ID was recorded: take it over, never make a second.
				a.Kind = Adopt
				a.Reasons = []string{"found " + observed.ID + " by its cluster tags (an earlier create was interrupted before its ID was recorded)"}
			case rec.Status == state.StatusCreating:
				// The create call was started and never returned: the
				// driver's Create is idempotent by name and finishes or
				// adopts whatever the crashed run left.
				a.Kind = Create
				a.Reasons = []string{"an earlier create did not finish"}
				if observed != nil {
					a.Reasons = []string{"an earlier create did not finish: " + shortID(observed.ID) + " is found by its cluster tags and finished"}
				}
			case observed == nil && !unknown:
				a.Kind = Replace
				a.Reasons = []string{"host " + shortID(rec.ID) + " is gone (removed outside provision): its node leaves the swarm and a new host joins"}
			case observed != nil && rec.ID != "" && observed.ID != rec.ID:
				a.Kind = Adopt
				a.Reasons = []string{fmt.Sprintf("the driver reports %s, state recorded %s", shortID(observed.ID), shortID(rec.ID))}
			case observed != nil && observed.State != "" && observed.State != "running":
				a.Kind = Reconfigure
				a.Reasons = []string{"host is " + observed.State + ": it is started and checked"}
			case rec.Status != state.StatusReady:
				a.Kind = Reconfigure
				a.Reasons = []string{"the last apply did not finish (status " + rec.Status + ")"}
			case len(settingNames) > 0:
				a.Kind = Reconfigure
				a.Reasons = []string{"settings changed: " + strings.Join(settingNames, ", ")}
			default:
				a.Kind = None
			}
			p.Actions = append(p.Actions, a)
		}
	}
	// Recorded machines the spec no longer wants, then strays only the
	// drivers know about.
	var removes []Action
	for _, rec := range st.Machines {
		if wanted[rec.Name] {
			continue
		}
		a := Action{Machine: rec.Name, Role: rec.Role, Pool: rec.Pool, Driver: rec.Driver, Index: rec.Index, Kind: Remove, Recorded: rec}
		a.Observed = seen[rec.Driver][rec.Name]
		a.Reasons = []string{"not in the spec"}
		if rec.Role == spec.RoleManager {
			a.Reasons = append(a.Reasons, "demoted and drained first")
		} else {
			a.Reasons = append(a.Reasons, "drained first")
		}
		removes = append(removes, a)
	}
	for dname, byName := range seen {
		for name, m := range byName {
			if wanted[name] || st.Machine(name) != nil {
				continue
			}
			removes = append(removes, Action{Machine: name, Role: m.Tags[drivers.TagRole], Pool: m.Tags[drivers.TagPool], Driver: dname, Kind: Remove, Observed: m,
				Reasons: []string{"stray: tagged with this cluster but neither in the spec nor in state"}})
		}
	}
	sort.Slice(removes, func(i, j int) bool { return removes[i].Machine < removes[j].Machine })
	p.Actions = append(p.Actions, removes...)
	p.resources(obs, false)
	p.notes(c, st)
	p.count()
	return p
}

// notes explains quorum effects of manager changes.
func (p *Plan) notes(c *spec.Cluster, st *state.State) {
	before := 0
	for _, m := range st.Machines {
		if m.Role == spec.RoleManager {
			before++
		}
	}
	after := c.Managers.Count
	if before > 0 && before != after {
		p.Notes = append(p.Notes, fmt.Sprintf("managers %d -> %d: changed one at a time; the swarm tolerates %d manager failure(s) after this", before, after, (after-1)/2))
	}
	if after%2 == 0 {
		p.Notes = append(p.Notes, fmt.Sprintf("%d managers tolerate as many failures as %d: an odd count is better", after, after-1))
	}
	for d, why := range p.Unknown {
		p.Notes = append(p.Notes, fmt.Sprintf("driver %s could not be asked what exists (%s): the plan assumes state is right for its machines", d, why))
	}
	sort.Strings(p.Notes)
}

func (p *Plan) count() {
	p.Summary = Summary{}
	for _, a := range p.Actions {
		switch a.Kind {
		case Create:
			p.Summary.Create++
		case Adopt:
			p.Summary.Adopt++
		case Replace:
			p.Summary.Replace++
		case Reconfigure:
			p.Summary.Reconfigure++
		case Remove:
			p.Summary.Remove++
		default:
			p.Summary.Unchanged++
		}
	}
}

// resources copies the drivers' shared resources into the plan, by driver
// then kind and name, and notes what a driver could not check. For destroy,
// what exists is removed and nothing is created.
func (p *Plan) resources(obs Observed, destroy bool) {
	for d, rs := range obs.Resources {
		for _, r := range rs {
			if destroy {
				if r.Action == drivers.ResourceCreate {
					continue
				}
				r.Action = drivers.ResourceRemove
			}
			p.Resources = append(p.Resources, Resource{Driver: d, Resource: r})
		}
	}
	sort.SliceStable(p.Resources, func(i, j int) bool {
		a, b := p.Resources[i], p.Resources[j]
		if a.Driver != b.Driver {
			return a.Driver < b.Driver
		}
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		return a.Name < b.Name
	})
	for d, why := range obs.ResourceErrs {
		p.Notes = append(p.Notes, fmt.Sprintf("driver %s could not check its shared resources (%s): those listed are what it would create", d, why))
	}
	sort.Strings(p.Notes)
}

// Wanted is, per driver name, every machine the spec asks of that driver as
// the driver would see it at create time, without keys: what a
// drivers.Resourcer needs to say what it would make.
func Wanted(c *spec.Cluster, clusterID string) map[string][]drivers.MachineSpec {
	out := map[string][]drivers.MachineSpec{}
	for _, pool := range c.Pools() {
		for i := 1; i <= pool.Count; i++ {
			name := spec.MachineName(c.Name, pool.Name, i)
			m := drivers.MachineSpec{
				Name: name, Role: pool.Role, Pool: pool.Name, DiskGiB: pool.DiskGiB, Size: pool.Size, Labels: pool.Labels,
				Tags: map[string]string{drivers.TagCluster: clusterID, drivers.TagMachine: name, drivers.TagRole: pool.Role, drivers.TagPool: pool.Name},
				SSH:  drivers.SSHAccess{User: c.SSH.User},
			}
			if i <= len(pool.Hosts) {
				m.Address = pool.Hosts[i-1]
			}
			out[pool.Driver] = append(out[pool.Driver], m)
		}
	}
	return out
}

// Destroy plans removing every recorded machine and every stray.
func Destroy(st *state.State, obs Observed) *Plan {
	p := &Plan{Cluster: st.Name, Unknown: obs.Unknown}
	done := map[string]bool{}
	for _, rec := range st.Machines {
		a := Action{Machine: rec.Name, Role: rec.Role, Pool: rec.Pool, Driver: rec.Driver, Index: rec.Index, Kind: Remove, Recorded: rec}
		for i := range obs.Machines[rec.Driver] {
			if m := &obs.Machines[rec.Driver][i]; m.Name == rec.Name || m.Tags[drivers.TagMachine] == rec.Name {
				a.Observed = m
			}
		}
		p.Actions = append(p.Actions, a)
		done[rec.Name] = true
	}
	var names []string
	for d := range obs.Machines {
		names = append(names, d)
	}
	sort.Strings(names)
	for _, d := range names {
		for i := range obs.Machines[d] {
			m := &obs.Machines[d][i]
			name := m.Name
			if t := m.Tags[drivers.TagMachine]; t != "" {
				name = t
			}
			if done[name] {
				continue
			}
			m.Driver = d
			p.Actions = append(p.Actions, Action{Machine: name, Role: m.Tags[drivers.TagRole], Pool: m.Tags[drivers.TagPool], Driver: d, Kind: Remove, Observed: m, Reasons: []string{"stray: tagged with this cluster"}})
			done[name] = true
		}
	}
	for d, why := range p.Unknown {
		p.Notes = append(p.Notes, fmt.Sprintf("driver %s could not be asked what exists (%s): only machines recorded in state are destroyed", d, why))
	}
	p.resources(obs, true)
	p.count()
	return p
}

func shortID(id string) string {
	if len(id) > 12 && !strings.Contains(id, ".") && !strings.Contains(id, ":") && !strings.Contains(id, "-") {
		return id[:12]
	}
	if id == "" {
		return "(unknown)"
	}
	return id
}

// diffSettings compares recorded and wanted settings field by field.
func diffSettings(old, now map[string]string) []SettingChange {
	if len(old) == 0 {
		return nil
	}
	var out []SettingChange
	names := make([]string, 0, len(now))
	for n := range now {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if old[n] == now[n] {
			continue
		}
		var a, b map[string]any
		json.Unmarshal([]byte(old[n]), &a)
		json.Unmarshal([]byte(now[n]), &b)
		fa, fb := map[string]string{}, map[string]string{}
		flatten("", a, fa)
		flatten("", b, fb)
		keys := map[string]bool{}
		for k := range fa {
			keys[k] = true
		}
		for k := range fb {
			keys[k] = true
		}
		var ks []string
		for k := range keys {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		sc := SettingChange{Name: n}
		for _, k := range ks {
			va, oka := fa[k]
			vb, okb := fb[k]
			switch {
			case !oka:
				sc.Changes = append(sc.Changes, fmt.Sprintf("%s: + %s", k, vb))
			case !okb:
				sc.Changes = append(sc.Changes, fmt.Sprintf("%s: - %s", k, va))
			case va != vb:
				sc.Changes = append(sc.Changes, fmt.Sprintf("%s: %s -> %s", k, va, vb))
			}
		}
		if len(sc.Changes) == 0 {
			sc.Changes = []string{"changed"}
		}
		out = append(out, sc)
	}
	return out
}

func flatten(prefix string, v any, out map[string]string) {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			key := k
			if prefix != "" {
				key = prefix + "." + k
			}
			flatten(key, e, out)
		}
	default:
		b, _ := json.Marshal(t)
		out[prefix] = string(b)
	}
}
