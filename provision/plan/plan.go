// Package plan compares a loaded spec with the recorded state and with what
// the drivers report, and says per machine and per cluster setting what
// apply will do. It does no I/O: the caller gathers Observed first.
package plan

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

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
	// Generation is the machine's generation after apply: the next one for
	// a replacement.
	Generation int `json:"generation,omitempty"`
	// InPlace says a replacement reuses the host (its driver cannot hold two
	// generations): the old machine leaves the swarm before the new one is
	// made. Otherwise the new machine joins before the old one leaves.
	InPlace bool `json:"in_place,omitempty"`
	// Labels are the node label changes: "+ k=v", "- k", "k: a -> b".
	Labels []string `json:"labels,omitempty"`
	// Made are the machine settings its driver uses (MachineSettings): what
	// apply records for the machine.
	Made map[string]string `json:"-"`
	// RetiringObserved maps an index of Recorded.Retiring to what the
	// driver still reports of that earlier generation.
	RetiringObserved map[int]*drivers.Machine `json:"-"`
	// Leftovers are other machines the driver reports under this name
	// (generations no record knows): apply destroys them.
	Leftovers []drivers.Machine `json:"-"`
	// Zone is the failure domain the machine is in or will get ("" when
	// its driver has none or could not say).
	Zone string `json:"zone,omitempty"`
	// Moved is set when the driver reports the recorded machine at other
	// addresses than state holds (stopped and started outside provision:
	// a cloud's dynamic public address): apply records the new ones.
	Moved *Moved `json:"moved,omitempty"`
}

// Moved is a machine's address change, as plan found it.
type Moved struct {
	From        string `json:"from"` // the address provision connects to
	To          string `json:"to"`
	PrivateFrom string `json:"private_from,omitempty"`
	PrivateTo   string `json:"private_to,omitempty"`
	// Swarm says the member's swarm (advertise) address moved: the swarm
	// still knows the old one, so apply stops on that host instead of
	// guessing (a manager's raft address cannot follow it).
	Swarm bool `json:"swarm,omitempty"`
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
	// DriverSettings are, per driver name, the settings of its block that
	// shape every machine (drivers.MachineSettings).
	DriverSettings map[string]map[string]string
	// Engines is what recorded machines' engines say of their swarm
	// membership, by machine name, for those that could be asked; Nodes
	// are the node IDs a manager of the recorded swarm lists.
	Engines map[string]EngineView
	Nodes   []string
	// Now is the time certificate expiry is measured against (zero: now).
	Now time.Time
	// Placement is, per driver name, where drivers that implement
	// drivers.Placer put the spec's machines (zones.go).
	Placement map[string]drivers.Placement
	// InPlace is, per driver name, why a driver whose type holds two
	// generations replaces its machines in place in this configuration
	// (drivers.InPlacer).
	InPlace map[string]string
}

// EngineBusy is an EngineView.State: the engine answers, but not about its
// swarm within the plan's wait (an election, or quorum lost).
const EngineBusy = "busy"

// EngineView is one engine's word on its swarm membership.
type EngineView struct {
	State     string   `json:"state"` // inactive, pending, active, error, locked; "unreachable": not answering (Error says why)
	Error     string   `json:"error,omitempty"`
	NodeID    string   `json:"node_id,omitempty"`
	ClusterID string   `json:"cluster_id,omitempty"` // managers only
	Manager   bool     `json:"manager,omitempty"`
	Managers  []string `json:"managers,omitempty"` // the manager addresses it knows
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

// Missing is the plan's warning that machines state records all appear
// gone at once: more likely a mistaken view (another engine, credentials,
// account or region) than a real loss. apply refuses to create replacements
// for them unless told (--replace-missing).
type Missing struct {
	Managers bool     `json:"managers"` // every manager (not every machine) is gone
	Machines []string `json:"machines"`
	Message  string   `json:"message"`
}

// Plan is the whole comparison.
type Plan struct {
	Cluster   string            `json:"cluster"`
	Actions   []Action          `json:"machines"`
	Settings  []SettingChange   `json:"settings,omitempty"`
	Unknown   map[string]string `json:"unchecked_drivers,omitempty"`
	Resources []Resource        `json:"resources,omitempty"`
	// Missing is set when every recorded machine, or every manager,
	// appears gone.
	Missing *Missing `json:"missing,omitempty"`
	// Backup says why apply backs up the swarm's raft first ("" when it
	// touches no manager).
	Backup string `json:"raft_backup,omitempty"`
	// Engine is the rolling engine upgrade (or downgrade) of the swarm's
	// members, when the spec changes their engine package.
	Engine *EngineChange `json:"engine_change,omitempty"`
	Notes  []string      `json:"notes,omitempty"`
	// Certs are the recorded machines' engine TLS certificate expiries.
	Certs   []CertExpiry `json:"certificates,omitempty"`
	Summary Summary      `json:"summary"`
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

// MachineHash fingerprints what machine index of pool p is made with, as
// far as its driver uses it (MachineSettings without driver block
// settings). Apply records the hash of the plan's Made settings instead.
func MachineHash(c *spec.Cluster, p spec.Pool, index int) string {
	return HashSettings(MachineSettings(c, p, index, nil))
}

// Settings renders the cluster-wide settings as canonical JSON per name, as
// recorded in state after a successful apply. Plan diffs them field by field.
func Settings(c *spec.Cluster) map[string]string {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	}
	return map[string]string{
		"engine":    enc(engineSettings(c.Engine)),
		"logging":   enc(map[string]any{"driver": c.Logging.Driver, "options": c.Logging.Options, "journald_max_use": c.Logging.JournaldMaxUse}),
		"prune":     enc(map[string]any{"enabled": c.Prune.Enabled, "schedule": c.Prune.Schedule, "until": c.Prune.Until, "volumes": c.Prune.Volumes, "randomized_delay": c.Prune.RandomizedDelay}),
		"tls":       enc(map[string]any{"validity_hours": c.TLS.ValidityHours, "extra_names": c.TLS.ExtraNames, "allowed_cidrs": c.TLS.AllowedCIDRs}),
		"hardening": enc(c.Hardening),
		"ssh":       enc(map[string]any{"user": c.SSH.User}),
	}
}

// engineSettings are the engine block's settings as plan shows them; the
// metrics and registry settings only when set, so that a state recorded
// before they existed differs only in what really changes daemon.json (the
// metrics endpoint, on by default).
func engineSettings(e spec.Engine) map[string]any {
	m := map[string]any{"version": e.Version, "method": e.Method, "package": e.Package}
	if e.MetricsAddr != "" {
		m["metrics_addr"] = e.MetricsAddr
	}
	if len(e.MetricsCIDRs) > 0 {
		m["metrics_cidrs"] = e.MetricsCIDRs
	}
	if len(e.RegistryMirrors) > 0 {
		m["registry_mirrors"] = e.RegistryMirrors
	}
	for _, r := range e.Registries {
		m["registry."+r.Host+".ca_sha256"] = fmt.Sprintf("%x", sha256.Sum256([]byte(r.CA)))
	}
	return m
}

// restartSettings are the cluster settings whose change may restart every
// engine (package, certificates, daemon settings).
var restartSettings = map[string]bool{"engine": true, "logging": true, "tls": true, "hardening": true}

// Build compares spec, state and observation.
func Build(c *spec.Cluster, st *state.State, obs Observed) *Plan {
	p := &Plan{Cluster: c.Name, Unknown: obs.Unknown}
	// Observed machines by name (every generation), per driver.
	seen := map[string]map[string][]*drivers.Machine{}
	for dname, ms := range obs.Machines {
		seen[dname] = map[string][]*drivers.Machine{}
		for i := range ms {
			m := &ms[i]
			name := m.Name
			if t := m.Tags[drivers.TagMachine]; t != "" {
				name = t
			}
			m.Driver = dname
			seen[dname][name] = append(seen[dname][name], m)
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
	legacy := legacyIndex{}
	recs := make(map[string]*state.Machine, len(st.Machines))
	for _, m := range st.Machines {
		recs[m.Name] = m
	}
	for _, pool := range c.Pools() {
		var info drivers.Info
		if d, ok := c.Driver(pool.Driver); ok {
			info, _ = drivers.Lookup(d.Type)
		}
		for i := 1; i <= pool.Count; i++ {
			name := spec.MachineName(c.Name, pool.Name, i)
			wanted[name] = true
			a := Action{Machine: name, Role: pool.Role, Pool: pool.Name, Driver: pool.Driver, Index: i, Generation: 1}
			if i <= len(pool.Hosts) {
				a.Address = pool.Hosts[i-1]
			}
			rec := recs[name]
			_, unknown := obs.Unknown[pool.Driver]
			observed, retiring, leftovers := observedFor(rec, seen[pool.Driver][name])
			a.Observed, a.Recorded, a.RetiringObserved = observed, rec, retiring
			for _, m := range leftovers {
				a.Leftovers = append(a.Leftovers, *m)
			}
			a.Made = MachineSettings(c, pool, i, obs.DriverSettings[pool.Driver])
			var changes []string
			legacyChanged := false
			if rec != nil {
				a.Generation = rec.Gen()
				if rec.MadeWith != nil {
					changes = diffSettingsMap(rec.MadeWith, a.Made)
				} else if rec.SpecHash != "" && !legacy.match(rec.SpecHash, c, pool, i) {
					legacyChanged = true
				}
				if rec.Labels != nil && rec.NodeID != "" {
					a.Labels = labelChanges(rec.Labels, NodeLabels(pool, name))
				}
			}
			var moved *Moved
			if rec != nil && observed != nil && !info.NeedsHosts {
				moved = addressMoved(rec, observed)
			}
			switch {
			case rec == nil && observed != nil:
				a.Kind = Adopt
				a.Reasons = []string{"found " + observed.ID + " by its cluster tags (an earlier apply was interrupted)"}
			case rec == nil:
				a.Kind = Create
			case rec.Driver != pool.Driver:
				a.Kind = Replace
				a.Reasons = []string{fmt.Sprintf("driver changes from %s to %s", rec.Driver, pool.Driver)}
			case len(changes) > 0:
				a.Kind = Replace
				a.Reasons = []string{"machine settings changed: " + strings.Join(changes, ", ")}
			case legacyChanged:
				a.Kind = Replace
				a.Reasons = []string{"machine settings changed (disk, size or host address, as an earlier provision recorded them)"}
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
			case moved != nil:
				a.Kind, a.Moved = Reconfigure, moved
				a.Reasons = []string{moved.reason(rec)}
			case len(rec.Retiring) > 0:
				a.Kind = Reconfigure
				a.Reasons = []string{fmt.Sprintf("finishing a replacement: generation %d leaves the swarm and is destroyed once generation %d is Ready", max(1, rec.Retiring[0].Generation), rec.Gen())}
			case rec.Status != state.StatusReady:
				a.Kind = Reconfigure
				a.Reasons = []string{"the last apply did not finish (status " + rec.Status + ")"}
			case len(a.Labels) > 0:
				a.Kind = Reconfigure
				a.Reasons = []string{"node labels change in place"}
			case len(settingNames) > 0:
				a.Kind = Reconfigure
				a.Reasons = []string{"settings changed: " + strings.Join(settingNames, ", ")}
			default:
				a.Kind = None
			}
			if a.Kind == Replace {
				a.Generation = rec.Gen() + 1
				switch {
				case observed == nil:
				case (info.Coexist && obs.InPlace[pool.Driver] == "") || rec.Driver != pool.Driver:
					a.Reasons = append(a.Reasons, fmt.Sprintf("generation %d joins the swarm before generation %d leaves", a.Generation, rec.Gen()))
				case info.Coexist:
					a.InPlace = true
					a.Reasons = append(a.Reasons, fmt.Sprintf("replaced in place (%s): it leaves the swarm first, then is made again and joins", obs.InPlace[pool.Driver]))
				default:
					a.InPlace = true
					a.Reasons = append(a.Reasons, fmt.Sprintf("the %s driver reuses the host: it leaves the swarm first, then is made again and joins", info.Type))
				}
			}
			if len(a.Labels) > 0 && a.Kind != Replace {
				a.Reasons = append(a.Reasons, "labels: "+strings.Join(a.Labels, ", "))
			}
			if len(a.Leftovers) > 0 {
				var ids []string
				for _, m := range a.Leftovers {
					ids = append(ids, shortID(m.ID))
				}
				a.Reasons = append(a.Reasons, "leftover machines under this name are destroyed: "+strings.Join(ids, ", "))
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
		a := Action{Machine: rec.Name, Role: rec.Role, Pool: rec.Pool, Driver: rec.Driver, Index: rec.Index, Kind: Remove, Recorded: rec, Generation: rec.Gen()}
		cur, retiring, leftovers := observedFor(rec, seen[rec.Driver][rec.Name])
		a.Observed, a.RetiringObserved = cur, retiring
		for _, m := range leftovers {
			a.Leftovers = append(a.Leftovers, *m)
		}
		a.Reasons = []string{"not in the spec"}
		if rec.Role == spec.RoleManager {
			a.Reasons = append(a.Reasons, "demoted and drained first")
		} else {
			a.Reasons = append(a.Reasons, "drained first")
		}
		removes = append(removes, a)
	}
	for dname, byName := range seen {
		for name, ms := range byName {
			if wanted[name] || recs[name] != nil {
				continue
			}
			m := ms[0]
			a := Action{Machine: name, Role: m.Tags[drivers.TagRole], Pool: m.Tags[drivers.TagPool], Driver: dname, Kind: Remove, Observed: m,
				Reasons: []string{"stray: tagged with this cluster but neither in the spec nor in state"}}
			for _, x := range ms[1:] {
				a.Leftovers = append(a.Leftovers, *x)
			}
			removes = append(removes, a)
		}
	}
	sort.Slice(removes, func(i, j int) bool { return removes[i].Machine < removes[j].Machine })
	p.Actions = append(p.Actions, removes...)
	p.resources(obs, false)
	p.missing(st, obs, seen)
	p.engineChange(c, slices.Contains(settingNames, "engine"))
	p.notes(c, st, obs)
	now := obs.Now
	if now.IsZero() {
		now = time.Now()
	}
	p.certs(c, st, now)
	p.zones(obs)
	p.count()
	return p
}

// missing warns when every recorded machine, or every manager, appears gone
// at once.
func (p *Plan) missing(st *state.State, obs Observed, seen map[string]map[string][]*drivers.Machine) {
	var all, gone, managers, goneManagers []string
	for _, rec := range st.Machines {
		if rec.ID == "" || rec.Status == state.StatusCreating {
			continue
		}
		if _, unknown := obs.Unknown[rec.Driver]; unknown {
			continue
		}
		all = append(all, rec.Name)
		isGone := len(seen[rec.Driver][rec.Name]) == 0
		if isGone {
			gone = append(gone, rec.Name)
		}
		if rec.Role == spec.RoleManager {
			managers = append(managers, rec.Name)
			if isGone {
				goneManagers = append(goneManagers, rec.Name)
			}
		}
	}
	var m *Missing
	switch {
	case len(all) > 0 && len(gone) == len(all):
		m = &Missing{Machines: gone, Message: fmt.Sprintf("every machine of cluster %q appears gone (%d of %d recorded machines are not found by their drivers)", p.Cluster, len(gone), len(all))}
	case len(managers) > 0 && len(goneManagers) == len(managers):
		m = &Missing{Managers: true, Machines: goneManagers, Message: fmt.Sprintf("every manager of cluster %q appears gone (%s)", p.Cluster, strings.Join(goneManagers, ", "))}
	default:
		return
	}
	m.Message += ". " + mistakenView + ". Check that first. apply refuses to create replacements unless run with --replace-missing; if the managers really are gone, so is the swarm's raft (services, secrets, configs): a new swarm is formed, and `provision restore` brings back a raft backup"
	p.Missing = m
}

// notes explains quorum effects of manager changes, the order of
// replacements, the raft backup and what engines say of their swarm.
func (p *Plan) notes(c *spec.Cluster, st *state.State, obs Observed) {
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
	var rollM, inPlaceM, rollW []string
	managersTouched := false
	goneM := 0 // managers replaced because their machine is gone
	for _, a := range p.Actions {
		switch {
		case a.Kind == Replace && a.Role == spec.RoleManager && a.InPlace:
			inPlaceM = append(inPlaceM, a.Machine)
		case a.Kind == Replace && a.Role == spec.RoleManager:
			rollM = append(rollM, a.Machine)
			if a.Observed == nil && a.Recorded != nil && a.Recorded.NodeID != "" {
				goneM++
			}
		case a.Kind == Replace:
			rollW = append(rollW, a.Machine)
		}
		if a.Role == spec.RoleManager && a.Recorded != nil && a.Recorded.NodeID != "" && (a.Kind == Replace || a.Kind == Remove) {
			managersTouched = true
		}
	}
	switch {
	case len(rollM) > 0 && goneM > 0 && goneM >= before:
		p.Notes = append(p.Notes, fmt.Sprintf("managers are replaced (%s), but every recorded manager appears gone: no raft is left to keep a majority of; with --replace-missing the new managers form a new swarm (`provision restore` brings back a raft backup)", strings.Join(rollM, ", ")))
	case len(rollM) > 0 && goneM > 0 && before-goneM < before/2+1:
		p.Notes = append(p.Notes, fmt.Sprintf("managers are replaced one at a time (%s), but %d of %d managers appear gone, so the raft has no majority now and new managers cannot join through it: apply stops when it finds the quorum lost (bring the gone managers back, or see --force-new-cluster)", strings.Join(rollM, ", "), goneM, before))
	case len(rollM) > 0 && goneM > 0:
		p.Notes = append(p.Notes, fmt.Sprintf("managers are replaced one at a time (%s), followers first and the current leader last; %d of %d appear gone, the raft's majority is kept by the %d that answer, and each gone one is removed once its replacement is Reachable", strings.Join(rollM, ", "), goneM, before, before-goneM))
	case len(rollM) > 0:
		p.Notes = append(p.Notes, fmt.Sprintf("managers are replaced one at a time (%s), followers first and the current leader last, so leadership moves once; each new manager joins and is Reachable before the old one is demoted, drained and removed, so the raft keeps its majority (%d of %d managers reachable at the least)", strings.Join(rollM, ", "), before, before+1))
	}
	if len(inPlaceM) > 0 {
		note := fmt.Sprintf("managers replaced in place, one at a time: %s; each leaves the swarm before it is made again (%d of %d managers meanwhile)", strings.Join(inPlaceM, ", "), before-1, before)
		if before < 3 {
			note += "; with fewer than 3 managers that would lose the swarm, so apply refuses: add managers first"
		}
		p.Notes = append(p.Notes, note)
	}
	if len(rollW) > 0 {
		p.Notes = append(p.Notes, fmt.Sprintf("workers are replaced in batches of %d (%s): the new ones join, then each batch of old ones is drained, its tasks Running elsewhere, before it is removed", max(1, len(rollW)/4), strings.Join(rollW, ", ")))
	}
	restart := false
	for _, s := range p.Settings {
		restart = restart || restartSettings[s.Name]
	}
	switch {
	case managersTouched:
		p.Backup = "managers are replaced or removed"
	case restart && before > 0:
		p.Backup = "settings that may restart the managers' engines changed"
	}
	if p.Backup != "" {
		p.Notes = append(p.Notes, "before "+p.Backup+", apply saves a backup of the swarm's raft (from a manager that is not the leader, its engine stopped for a few seconds) into the state directory's backups/; `provision restore` brings it back")
	}
	p.swarmNotes(st, obs)
	sort.Strings(p.Notes)
}

// swarmNotes reports recorded machines whose engines are not where state
// says: out of the swarm, or in another one.
func (p *Plan) swarmNotes(st *state.State, obs Observed) {
	if len(obs.Engines) == 0 || st.Swarm.ID == "" {
		return
	}
	listed := map[string]bool{}
	for _, id := range obs.Nodes {
		listed[id] = true
	}
	actions := map[string]*Action{}
	for i := range p.Actions {
		actions[p.Actions[i].Machine] = &p.Actions[i]
	}
	for _, rec := range st.Machines {
		v, ok := obs.Engines[rec.Name]
		if !ok || rec.NodeID == "" {
			continue
		}
		a := actions[rec.Name]
		if a != nil && (a.Kind == Remove || a.Kind == Replace) {
			continue // what its engine says changes nothing: it goes
		}
		switch {
		case v.State == "unreachable":
			// The machine runs (the driver says so) but its engine does not
			// answer: stopped, failed, or its TLS port closed. apply's host
			// steps start it again.
			if a != nil && a.Kind == None {
				a.Kind = Reconfigure
				a.Reasons = []string{"its engine does not answer (" + v.Error + "): apply checks the host and starts the engine"}
			} else {
				p.Notes = append(p.Notes, fmt.Sprintf("%s: its engine does not answer (%s)", rec.Name, v.Error))
			}
		case v.State == EngineBusy:
			p.Notes = append(p.Notes, fmt.Sprintf("%s: its engine answers but said nothing of its swarm in time (%s): the managers may be electing a leader, or the swarm lost quorum; apply waits for it", rec.Name, v.Error))
		case v.State == "inactive":
			p.Notes = append(p.Notes, fmt.Sprintf("%s: its engine is in no swarm (state records node %s): apply joins it again", rec.Name, shortID(rec.NodeID)))
		case v.State == "pending":
			p.Notes = append(p.Notes, fmt.Sprintf("%s: its engine is still trying to join a swarm: apply waits for it, then checks which swarm", rec.Name))
		case v.State == "locked":
			p.Notes = append(p.Notes, fmt.Sprintf("%s: its engine restarted and is locked (autolock): apply unlocks it with the key kept in the state directory (or `provision unlock`)", rec.Name))
		case v.ClusterID != "" && v.ClusterID != st.Swarm.ID && slices.Contains(st.Swarm.Retired, v.ClusterID):
			p.Notes = append(p.Notes, fmt.Sprintf("%s: its engine is in swarm %s, an earlier swarm of this cluster: apply makes it leave and join swarm %s", rec.Name, shortID(v.ClusterID), shortID(st.Swarm.ID)))
		case v.ClusterID != "" && v.ClusterID != st.Swarm.ID:
			p.Notes = append(p.Notes, fmt.Sprintf("%s: its engine is a manager of another swarm (%s, not %s): apply leaves it alone and stops on it unless run with --leave-other-swarm", rec.Name, shortID(v.ClusterID), shortID(st.Swarm.ID)))
		case v.State == "active" && len(obs.Nodes) > 0 && !listed[v.NodeID]:
			p.Notes = append(p.Notes, fmt.Sprintf("%s: its engine is node %s of a swarm whose managers (%s) do not list it: another swarm, or an earlier one of this cluster; apply makes it leave only if that swarm was this cluster's, or with --leave-other-swarm", rec.Name, shortID(v.NodeID), strings.Join(v.Managers, ", ")))
		}
	}
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
				Name: name, Role: pool.Role, Pool: pool.Name, DiskGiB: pool.DiskGiB, DockerDiskGiB: DockerDisk(c, pool), Size: pool.Size, Labels: pool.Labels,
				Tags:    map[string]string{drivers.TagCluster: clusterID, drivers.TagMachine: name, drivers.TagRole: pool.Role, drivers.TagPool: pool.Name},
				SSH:     drivers.SSHAccess{User: c.SSH.User},
				Logs:    c.Logging.Cloud(),
				Metrics: c.Engine.Metrics(),
			}
			if i <= len(pool.Hosts) {
				m.Address = pool.Hosts[i-1]
			}
			out[pool.Driver] = append(out[pool.Driver], m)
		}
	}
	return out
}

// Destroy plans removing every recorded machine (with the earlier
// generations of it still around) and every stray.
func Destroy(st *state.State, obs Observed) *Plan {
	p := &Plan{Cluster: st.Name, Unknown: obs.Unknown}
	byName := map[string][]*drivers.Machine{}
	for d := range obs.Machines {
		for i := range obs.Machines[d] {
			m := &obs.Machines[d][i]
			m.Driver = d
			name := m.Name
			if t := m.Tags[drivers.TagMachine]; t != "" {
				name = t
			}
			byName[d+"/"+name] = append(byName[d+"/"+name], m)
		}
	}
	covered := map[*drivers.Machine]bool{}
	p.missingForDestroy(st, obs, byName)
	for _, rec := range st.Machines {
		ms := byName[rec.Driver+"/"+rec.Name]
		cur, retiring, leftovers := observedFor(rec, ms)
		a := Action{Machine: rec.Name, Role: rec.Role, Pool: rec.Pool, Driver: rec.Driver, Index: rec.Index, Kind: Remove, Recorded: rec, Observed: cur, Generation: rec.Gen()}
		p.Actions = append(p.Actions, a)
		for _, m := range ms {
			covered[m] = true
		}
		for i, old := range rec.Retiring {
			m := retiring[i]
			if m == nil {
				if old.Destroyed {
					continue
				}
				om := old.Machine
				m = &om
			}
			p.Actions = append(p.Actions, Action{Machine: rec.Name, Role: rec.Role, Pool: rec.Pool, Driver: m.Driver, Kind: Remove, Observed: m, Generation: max(1, old.Generation),
				Reasons: []string{fmt.Sprintf("generation %d, replaced", max(1, old.Generation))}})
		}
		for _, m := range leftovers {
			p.Actions = append(p.Actions, Action{Machine: rec.Name, Role: rec.Role, Pool: rec.Pool, Driver: m.Driver, Kind: Remove, Observed: m, Generation: drivers.GenerationOf(m.Tags),
				Reasons: []string{"leftover generation"}})
		}
	}
	keys := make([]string, 0, len(byName))
	for k := range byName {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, m := range byName[k] {
			if covered[m] {
				continue
			}
			_, name, _ := strings.Cut(k, "/")
			p.Actions = append(p.Actions, Action{Machine: name, Role: m.Tags[drivers.TagRole], Pool: m.Tags[drivers.TagPool], Driver: m.Driver, Kind: Remove, Observed: m, Generation: drivers.GenerationOf(m.Tags), Reasons: []string{"stray: tagged with this cluster"}})
		}
	}
	for d, why := range p.Unknown {
		p.Notes = append(p.Notes, fmt.Sprintf("driver %s could not be asked what exists (%s): only machines recorded in state are destroyed", d, why))
	}
	p.resources(obs, true)
	p.count()
	return p
}

// mistakenView is why every machine appearing gone at once is doubted.
const mistakenView = "That is more often a mistaken view than a real loss: provision may be asking a different Docker engine (DOCKER_HOST, a docker context), other cloud credentials, another account, subscription or project, or another region than the one the cluster was made with"

// missingForDestroy warns when every machine state records on a driver
// appears gone at once while that driver answered: destroy would then drop
// them from state (and state itself, with the cluster's keys) while they may
// still run, and bill, where the cluster was made (another region, account,
// subscription, project or Docker engine than the one asked now).
func (p *Plan) missingForDestroy(st *state.State, obs Observed, byName map[string][]*drivers.Machine) {
	recorded, gone := map[string]int{}, map[string][]string{}
	for _, rec := range st.Machines {
		if rec.ID == "" || rec.Status == state.StatusCreating {
			continue
		}
		if _, unknown := obs.Unknown[rec.Driver]; unknown {
			continue
		}
		recorded[rec.Driver]++
		if len(byName[rec.Driver+"/"+rec.Name]) == 0 {
			gone[rec.Driver] = append(gone[rec.Driver], rec.Name)
		}
	}
	var names, drvs []string
	for d, n := range recorded {
		if len(gone[d]) == n {
			drvs = append(drvs, d)
		}
	}
	if len(drvs) == 0 {
		return
	}
	sort.Strings(drvs)
	for _, d := range drvs {
		names = append(names, gone[d]...)
	}
	p.Missing = &Missing{Machines: names, Message: fmt.Sprintf("every machine of cluster %q on driver %s appears gone (%s are not found by the driver). "+
		mistakenView+", and destroy would then forget machines that still run (and bill) there. Check that first. destroy refuses unless run with --forget-missing",
		p.Cluster, strings.Join(drvs, ", "), strings.Join(names, ", "))}
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

// WorkerBatch is how many workers change at once in a rolling change that
// restarts their engines (apply's batches, plan's order): a quarter of
// them, at least one, at most parallelism (when > 0).
func WorkerBatch(workers, parallelism int) int {
	size := max(1, workers/4)
	if parallelism > 0 {
		size = min(size, parallelism)
	}
	return size
}

// DockerDisk is the docker_disk a pool's machines are made with: 0 when
// its driver attaches no such disk (validate warned that it is ignored).
func DockerDisk(c *spec.Cluster, p spec.Pool) int {
	if d, ok := c.Driver(p.Driver); ok {
		if info, _ := drivers.Lookup(d.Type); info.Uses("docker_disk") {
			return p.DockerDiskGiB
		}
	}
	return 0
}
