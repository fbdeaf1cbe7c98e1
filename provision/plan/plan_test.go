package plan

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
)

func cluster(t testing.TB, src string) *spec.Cluster {
	t.Helper()
	c, diags := spec.LoadBytes("t.hcl", []byte(src), spec.Vars{})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	return c
}

// converged records every machine of c as ready and observed.
func converged(c *spec.Cluster) (*state.State, Observed) {
	st := &state.State{Version: state.Version, ClusterID: "cid", Name: c.Name, Settings: Settings(c)}
	obs := Observed{Machines: map[string][]drivers.Machine{}}
	for _, p := range c.Pools() {
		for i := 1; i <= p.Count; i++ {
			name := spec.MachineName(c.Name, p.Name, i)
			m := drivers.Machine{Name: name, ID: "id-" + name, Driver: p.Driver, State: "running", Tags: map[string]string{drivers.TagMachine: name}}
			made := MachineSettings(c, p, i, nil)
			st.Put(&state.Machine{Machine: m, Role: p.Role, Pool: p.Name, Index: i, Status: state.StatusReady, SpecHash: HashSettings(made), MadeWith: made})
			obs.Machines[p.Driver] = append(obs.Machines[p.Driver], m)
		}
	}
	return st, obs
}

const base = `name = "demo"
managers { count = 1 }
workers { count = 2 }
`

func kinds(p *Plan) string {
	var out []string
	for _, a := range p.Actions {
		out = append(out, a.Machine+"="+string(a.Kind))
	}
	return strings.Join(out, " ")
}

func TestFreshPlanCreatesAll(t *testing.T) {
	c := cluster(t, base)
	p := Build(c, &state.State{ClusterID: "cid"}, Observed{})
	if got := kinds(p); got != "demo-manager-1=create demo-worker-1=create demo-worker-2=create" {
		t.Fatal(got)
	}
	if p.Summary.Create != 3 || p.Destructive() || p.Empty() {
		t.Fatalf("%+v", p.Summary)
	}
}

func TestConvergedIsEmpty(t *testing.T) {
	c := cluster(t, base)
	st, obs := converged(c)
	p := Build(c, st, obs)
	if !p.Empty() {
		t.Fatalf("converged plan not empty: %s", kinds(p))
	}
	var buf bytes.Buffer
	p.WriteText(&buf, false)
	if !strings.Contains(buf.String(), "No changes.") {
		t.Fatal(buf.String())
	}
}

func TestScaleAndSettings(t *testing.T) {
	c := cluster(t, base)
	st, obs := converged(c)
	c2 := cluster(t, `name = "demo"
managers { count = 3 }
workers { count = 1 }
logging { options = { max-size = "20m" } }
`)
	p := Build(c2, st, obs)
	want := "demo-manager-1=reconfigure demo-manager-2=create demo-manager-3=create demo-worker-1=reconfigure demo-worker-2=remove"
	if got := kinds(p); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	if !p.Destructive() || len(p.Settings) != 1 || p.Settings[0].Name != "logging" {
		t.Fatalf("settings %+v", p.Settings)
	}
	if ch := strings.Join(p.Settings[0].Changes, ","); !strings.Contains(ch, `options.max-size: "10m" -> "20m"`) {
		t.Fatalf("changes %s", ch)
	}
	var buf bytes.Buffer
	p.WriteText(&buf, false)
	for _, s := range []string{"Plan: 2 to create, 0 to adopt, 2 to reconfigure, 0 to replace, 1 to remove; 0 unchanged.", "managers 1 -> 3", "~ logging"} {
		if !strings.Contains(buf.String(), s) {
			t.Errorf("text lacks %q:\n%s", s, buf.String())
		}
	}
	buf.Reset()
	p.WriteJSON(&buf)
	var js struct {
		Machines []struct{ Machine, Action string }
		Summary  Summary
	}
	if err := json.Unmarshal(buf.Bytes(), &js); err != nil || js.Summary.Remove != 1 || len(js.Machines) != 5 {
		t.Fatalf("json %v %+v", err, js)
	}
}

func TestLostHostIsReplacedAndStrayAdopted(t *testing.T) {
	c := cluster(t, base)
	st, obs := converged(c)
	// worker-2 vanished behind our back; manager-1 was recreated by an
	// interrupted apply we have no record of.
	obs.Machines["local"] = obs.Machines["local"][:2]
	st.Remove("demo-manager-1")
	p := Build(c, st, obs)
	if got := kinds(p); got != "demo-manager-1=adopt demo-worker-1=none demo-worker-2=replace" {
		t.Fatal(got)
	}
	// A driver that cannot be asked never causes replacements.
	obs.Unknown = map[string]string{"local": "engine unreachable"}
	obs.Machines = nil
	st, _ = converged(c)
	p = Build(c, st, obs)
	if !p.Empty() || len(p.Notes) == 0 {
		t.Fatalf("unknown driver: %s %v", kinds(p), p.Notes)
	}
}

func TestMachineChangeReplaces(t *testing.T) {
	c := cluster(t, base)
	st, obs := converged(c)
	c2 := cluster(t, `name = "demo"
managers { count = 1 }
workers {
  count = 2
  size  = "1cpu-1g"
}`)
	p := Build(c2, st, obs)
	if got := kinds(p); got != "demo-manager-1=none demo-worker-1=replace demo-worker-2=replace" {
		t.Fatal(got)
	}
	if r := strings.Join(p.Actions[1].Reasons, "; "); !strings.Contains(r, `size: "" -> "1cpu-1g"`) || !strings.Contains(r, "generation 2 joins the swarm before generation 1 leaves") || p.Actions[1].Generation != 2 {
		t.Errorf("replace reasons %q gen %d", r, p.Actions[1].Generation)
	}
	var buf bytes.Buffer
	p.WriteText(&buf, false)
	if !strings.Contains(buf.String(), "workers are replaced in batches of 1 (demo-worker-1, demo-worker-2)") {
		t.Errorf("plan does not say how workers are replaced:\n%s", buf.String())
	}
	// A setting the local driver does not use (disk) never replaces.
	c3 := cluster(t, `name = "demo"
managers { count = 1 }
workers {
  count = 2
  disk  = 20
}`)
	if got := kinds(Build(c3, st, obs)); got != "demo-manager-1=none demo-worker-1=none demo-worker-2=none" {
		t.Fatalf("ignored disk: %s", got)
	}
	// Nor does docker_disk on local (each container has its own volume).
	c4 := cluster(t, `name = "demo"
managers { count = 1 }
workers {
  count       = 2
  docker_disk = 20
}`)
	if got := kinds(Build(c4, st, obs)); got != "demo-manager-1=none demo-worker-1=none demo-worker-2=none" {
		t.Fatalf("ignored docker_disk: %s", got)
	}
}

// TestDockerDiskSettings: docker_disk counts in the fingerprint of a
// driver that attaches the disk, only when set (machines made before the
// setting keep theirs), and reaches the machine spec only there.
func TestDockerDiskSettings(t *testing.T) {
	src := func(disk string) string {
		return `name = "demo"
driver "libvirt" { image = "debian-12.qcow2" }
driver "local" {}
managers {
  driver = "libvirt"
  count  = 1
` + disk + `
}
workers {
  driver = "local"
  count  = 1
` + disk + `
}`
	}
	plain, with := cluster(t, src("")), cluster(t, src("docker_disk = 20"))
	for i, c := range []*spec.Cluster{plain, with} {
		m, w := c.Pools()[0], c.Pools()[1]
		got := MachineSettings(c, m, 1, nil)["docker_disk"]
		if want := []string{"", "20GiB"}[i]; got != want {
			t.Errorf("libvirt docker_disk setting %q, want %q", got, want)
		}
		if _, ok := MachineSettings(c, w, 1, nil)["docker_disk"]; ok {
			t.Error("local machines fingerprint docker_disk")
		}
		if got, want := DockerDisk(c, m), []int{0, 20}[i]; got != want {
			t.Errorf("libvirt machine spec docker disk %d, want %d", got, want)
		}
		if got := DockerDisk(c, w); got != 0 {
			t.Errorf("local machine spec docker disk %d", got)
		}
	}
	if HashSettings(MachineSettings(plain, plain.Pools()[0], 1, nil)) == HashSettings(MachineSettings(with, with.Pools()[0], 1, nil)) {
		t.Error("adding docker_disk does not change the libvirt machine's fingerprint")
	}
}

func TestUnfinishedApplyResumes(t *testing.T) {
	c := cluster(t, base)
	st, obs := converged(c)
	st.Machine("demo-worker-1").Status = state.StatusCreated
	st.Machine("demo-worker-2").Status = state.StatusCreating
	obs.Machines["local"] = obs.Machines["local"][:2]
	if got := kinds(Build(c, st, obs)); got != "demo-manager-1=none demo-worker-1=reconfigure demo-worker-2=create" {
		t.Fatal(got)
	}
}

// TestInterruptedCreateAdopts: state recorded only the intent (status
// creating, no ID or address) but the driver finds the machine by its tags:
// it is adopted, not left without an address and not created twice.
func TestInterruptedCreateAdopts(t *testing.T) {
	c := cluster(t, base)
	st, obs := converged(c)
	rec := st.Machine("demo-worker-2")
	rec.Status = state.StatusCreating
	rec.ID, rec.Address, rec.PrivateAddress = "", "", ""
	p := Build(c, st, obs)
	if got := kinds(p); got != "demo-manager-1=none demo-worker-1=none demo-worker-2=adopt" {
		t.Fatal(got)
	}
	if a := p.Actions[2]; a.Observed == nil || a.Observed.ID == "" || !strings.Contains(strings.Join(a.Reasons, " "), a.Observed.ID) {
		t.Fatalf("adopt action %+v", a)
	}
}

func TestDestroyPlan(t *testing.T) {
	c := cluster(t, base)
	st, obs := converged(c)
	obs.Machines["local"] = append(obs.Machines["local"], drivers.Machine{Name: "x", ID: "stray", Tags: map[string]string{drivers.TagMachine: "demo-worker-9"}})
	p := Destroy(st, obs)
	if p.Summary.Remove != 4 || !p.Destructive() {
		t.Fatalf("%s", kinds(p))
	}
}

// TestDestroyPlanEveryMachineGone: when the driver answers but finds none
// of the machines state records (another region, account or credentials),
// the destroy plan says so (destroy refuses on it); one machine gone, or a
// driver that could not be asked, is not that.
func TestDestroyPlanEveryMachineGone(t *testing.T) {
	c := cluster(t, base)
	st, obs := converged(c)
	if p := Destroy(st, obs); p.Missing != nil {
		t.Fatalf("all found: %+v", p.Missing)
	}
	one := Observed{Machines: map[string][]drivers.Machine{"local": obs.Machines["local"][1:]}}
	if p := Destroy(st, one); p.Missing != nil {
		t.Fatalf("one gone: %+v", p.Missing)
	}
	unknown := Observed{Machines: map[string][]drivers.Machine{}, Unknown: map[string]string{"local": "no credentials"}}
	if p := Destroy(st, unknown); p.Missing != nil {
		t.Fatalf("driver not asked: %+v", p.Missing)
	}
	none := Observed{Machines: map[string][]drivers.Machine{}}
	p := Destroy(st, none)
	if p.Missing == nil || len(p.Missing.Machines) != 3 || !strings.Contains(p.Missing.Message, "--forget-missing") || !strings.Contains(p.Missing.Message, "driver local") {
		t.Fatalf("every machine gone: %+v", p.Missing)
	}
	var buf strings.Builder
	if err := p.WriteText(&buf, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "WARNING: every machine of cluster") {
		t.Errorf("plan text lacks the warning:\n%s", buf.String())
	}
}

func BenchmarkPlan1000(b *testing.B) {
	src := `name = "big"
managers { count = 5 }
workers {
  pool  = "a"
  count = 500
}
workers {
  pool  = "b"
  count = 495
}
`
	c := cluster(b, src)
	st, obs := converged(c)
	b.ResetTimer()
	for range b.N {
		p := Build(c, st, obs)
		if p.Summary.Unchanged != 1000 {
			b.Fatal(p.Summary)
		}
	}
}

func BenchmarkLoadAndPlan1000(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("name = \"big\"\nmanagers { count = 5 }\n")
	for i := range 9 {
		fmt.Fprintf(&sb, "workers {\n  pool = \"p%d\"\n  count = 110\n  labels = { zone = \"z%d\" }\n}\n", i, i)
	}
	src := []byte(sb.String())
	c := cluster(b, string(src))
	st, obs := converged(c)
	b.ResetTimer()
	for range b.N {
		c, diags := spec.LoadBytes("big.hcl", src, spec.Vars{})
		if diags.HasErrors() {
			b.Fatal(diags)
		}
		Build(c, st, obs)
	}
}

func TestResourcesListedAndDestroyed(t *testing.T) {
	c := cluster(t, base)
	obs := Observed{
		Resources: map[string][]drivers.Resource{"local": {
			{Kind: "security-group", Name: "sg", Action: drivers.ResourceCreate},
			{Kind: "network", Name: "net", ID: "n-1", Action: drivers.ResourceKeep},
		}},
		ResourceErrs: map[string]string{"local": "no credentials"},
	}
	p := Build(c, &state.State{ClusterID: "cid"}, obs)
	if len(p.Resources) != 2 || p.Resources[0].Kind != "network" || p.Resources[1].Action != drivers.ResourceCreate {
		t.Fatalf("resources: %+v", p.Resources)
	}
	var buf strings.Builder
	if err := p.WriteText(&buf, false); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Shared resources:", "security-group sg (driver local): create", "could not check its shared resources (no credentials)"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("plan text lacks %q:\n%s", want, buf.String())
		}
	}
	d := Destroy(&state.State{ClusterID: "cid"}, obs)
	if len(d.Resources) != 1 || d.Resources[0].Name != "net" || d.Resources[0].Action != drivers.ResourceRemove {
		t.Errorf("destroy resources: %+v", d.Resources)
	}
	w := Wanted(c, "cid")
	total := 0
	for _, ms := range w {
		for _, m := range ms {
			if m.Tags[drivers.TagCluster] != "cid" || m.Name == "" {
				t.Errorf("wanted machine %+v", m)
			}
			total++
		}
	}
	if total == 0 {
		t.Error("Wanted lists no machines")
	}
}

// TestLegacyRecordsDoNotReplace: state version 1 fingerprinted disk and size
// whatever the driver did with them (and the local driver's default disk
// was 10 GiB). Those records, checked against the spec, plan nothing for an
// unchanged spec or a changed setting the driver ignores, and a replace for
// a changed setting it uses.
func TestLegacyRecordsDoNotReplace(t *testing.T) {
	c := cluster(t, base)
	st, obs := converged(c)
	for _, m := range st.Machines {
		m.MadeWith = nil
		m.SpecHash = legacyHash("local", "local", 10, "", "")
	}
	if p := Build(c, st, obs); !p.Empty() {
		t.Fatalf("unchanged spec on legacy records: %s", kinds(p))
	}
	disk := cluster(t, "name = \"demo\"\nmanagers {\n  count = 1\n  disk = 50\n}\nworkers { count = 2 }\n")
	if p := Build(disk, st, obs); !p.Empty() {
		t.Fatalf("ignored disk change on legacy records: %s", kinds(p))
	}
	size := cluster(t, "name = \"demo\"\nmanagers {\n  count = 1\n  size = \"2cpu-2g\"\n}\nworkers { count = 2 }\n")
	if got := kinds(Build(size, st, obs)); got != "demo-manager-1=replace demo-worker-1=none demo-worker-2=none" {
		t.Fatalf("size change on legacy records: %s", got)
	}
}

// TestManagerReplacementNotes: replacing managers says the order, the
// quorum it keeps and that a raft backup is taken first.
func TestManagerReplacementNotes(t *testing.T) {
	c := cluster(t, "name = \"demo\"\nmanagers { count = 3 }\nworkers { count = 2 }\n")
	st, obs := converged(c)
	for _, m := range st.Machines {
		m.NodeID = "n-" + m.Name
	}
	c2 := cluster(t, "name = \"demo\"\nmanagers {\n  count = 3\n  size = \"2cpu-2g\"\n}\nworkers { count = 2 }\n")
	p := Build(c2, st, obs)
	if got := kinds(p); got != "demo-manager-1=replace demo-manager-2=replace demo-manager-3=replace demo-worker-1=none demo-worker-2=none" {
		t.Fatal(got)
	}
	var buf bytes.Buffer
	p.WriteText(&buf, false)
	for _, want := range []string{
		"managers are replaced one at a time (demo-manager-1, demo-manager-2, demo-manager-3), followers first and the current leader last, so leadership moves once; each new manager joins and is Reachable before the old one is demoted, drained and removed, so the raft keeps its majority (3 of 4 managers reachable at the least)",
		"apply saves a backup of the swarm's raft",
	} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("plan lacks %q:\n%s", want, buf.String())
		}
	}
	if p.Backup == "" {
		t.Error("no raft backup planned")
	}
}

// TestAllGoneIsLoud: every recorded machine gone at once (or every
// manager) is a warning with likely causes, and sets Missing.
func TestAllGoneIsLoud(t *testing.T) {
	c := cluster(t, base)
	st, _ := converged(c)
	p := Build(c, st, Observed{Machines: map[string][]drivers.Machine{"local": nil}})
	if p.Missing == nil || p.Missing.Managers || len(p.Missing.Machines) != 3 {
		t.Fatalf("missing %+v", p.Missing)
	}
	var buf bytes.Buffer
	p.WriteText(&buf, false)
	for _, want := range []string{"WARNING: every machine of cluster \"demo\" appears gone (3 of 3", "DOCKER_HOST", "credentials", "region", "--replace-missing"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("plan lacks %q:\n%s", want, buf.String())
		}
	}
	st, obs := converged(c)
	obs.Machines["local"] = obs.Machines["local"][1:] // the manager
	if p := Build(c, st, obs); p.Missing == nil || !p.Missing.Managers {
		t.Fatalf("every manager gone: %+v", p.Missing)
	}
	obs.Machines["local"] = obs.Machines["local"][1:] // and a worker
	st, obs = converged(c)
	obs.Machines["local"] = obs.Machines["local"][:2]
	if p := Build(c, st, obs); p.Missing != nil {
		t.Fatalf("one worker gone is not a mistaken view: %+v", p.Missing)
	}
	// A driver that cannot be asked says nothing of what is gone.
	st, _ = converged(c)
	if p := Build(c, st, Observed{Unknown: map[string]string{"local": "no engine"}}); p.Missing != nil {
		t.Fatalf("unknown driver: %+v", p.Missing)
	}
}

// TestLabelChanges: labels added, changed and removed in the spec are shown
// and applied in place; labels provision did not set are not its business.
func TestLabelChanges(t *testing.T) {
	c := cluster(t, "name = \"demo\"\nmanagers { count = 1 }\nworkers {\n  count = 1\n  labels = { zone = \"a\", tier = \"web\" }\n}\n")
	st, obs := converged(c)
	for _, m := range st.Machines {
		m.NodeID = "n"
		p, _ := c.Pools()[0], 0
		if m.Role == spec.RoleWorker {
			p = c.Workers[0]
		}
		m.Labels = NodeLabels(p, m.Name)
	}
	if p := Build(c, st, obs); !p.Empty() {
		t.Fatalf("recorded labels: %s", kinds(p))
	}
	c2 := cluster(t, "name = \"demo\"\nmanagers { count = 1 }\nworkers {\n  count = 1\n  labels = { zone = \"b\", rack = \"r1\" }\n}\n")
	p := Build(c2, st, obs)
	if got := kinds(p); got != "demo-manager-1=none demo-worker-1=reconfigure" {
		t.Fatal(got)
	}
	got := strings.Join(p.Actions[1].Labels, ", ")
	if got != `rack: + "r1", tier: - "web", zone: "a" -> "b"` {
		t.Fatalf("label changes %q", got)
	}
	// Records without labels (an earlier provision) show no label diff.
	st.Machine("demo-worker-1").Labels = nil
	if p := Build(c2, st, obs); !p.Empty() {
		t.Fatalf("unrecorded labels: %s", kinds(p))
	}
}

// TestReplacementInProgress: a replacement an apply left half done (the new
// generation recorded, the old one retiring, both reported by the driver)
// is finished, not started again; an unknown generation is a leftover.
func TestReplacementInProgress(t *testing.T) {
	c := cluster(t, base)
	st, obs := converged(c)
	rec := st.Machine("demo-worker-1")
	old := rec.Machine
	rec.Retiring = []state.Retiring{{Machine: old, Generation: 1, NodeID: "old-node"}}
	rec.Machine.ID = "id-new"
	rec.Generation = 2
	gen2 := drivers.Machine{Name: "demo-worker-1", ID: "id-new", State: "running", Tags: map[string]string{drivers.TagMachine: "demo-worker-1", drivers.TagGeneration: "2"}}
	gen3 := drivers.Machine{Name: "demo-worker-1", ID: "id-3", State: "running", Tags: map[string]string{drivers.TagMachine: "demo-worker-1", drivers.TagGeneration: "3"}}
	obs.Machines["local"] = append(obs.Machines["local"], gen2, gen3)
	p := Build(c, st, obs)
	if got := kinds(p); got != "demo-manager-1=none demo-worker-1=reconfigure demo-worker-2=none" {
		t.Fatal(got)
	}
	a := p.Actions[1]
	if a.Observed == nil || a.Observed.ID != "id-new" || a.RetiringObserved[0] == nil || a.RetiringObserved[0].ID != old.ID || len(a.Leftovers) != 1 || a.Leftovers[0].ID != "id-3" {
		t.Fatalf("action %+v", a)
	}
	if r := strings.Join(a.Reasons, "; "); !strings.Contains(r, "finishing a replacement: generation 1 leaves") || !strings.Contains(r, "leftover machines under this name are destroyed: id-3") {
		t.Fatalf("reasons %q", r)
	}
	d := Destroy(st, obs)
	ids := map[string]bool{}
	for _, a := range d.Actions {
		m := a.Observed
		if a.Recorded != nil {
			m = &a.Recorded.Machine
		}
		ids[m.ID] = true
	}
	for _, id := range []string{"id-new", old.ID, "id-3", "id-demo-manager-1", "id-demo-worker-2"} {
		if !ids[id] {
			t.Errorf("destroy misses %s: %v", id, ids)
		}
	}
}

// TestHashCoversOnlyHonouredSettings: changing a setting the driver does not
// use (generic: disk and size; local: disk) leaves the machine's
// fingerprint alone, so it never plans a rebuild; one it uses changes it.
func TestHashCoversOnlyHonouredSettings(t *testing.T) {
	load := func(src string) *spec.Cluster {
		c, diags := spec.LoadBytes("h.hcl", []byte(src), spec.Vars{})
		if diags.HasErrors() {
			t.Fatal(diags.Error())
		}
		return c
	}
	const generic = "name = \"h\"\ndriver \"generic\" {\n  user = \"admin\"\n  key_file = \"/dev/null\"\n}\nmanagers {\n  hosts = [\"10.0.0.1\"]\n%s}\n"
	hash := func(c *spec.Cluster) string { return MachineHash(c, c.Managers, 1) }
	base := hash(load(fmt.Sprintf(generic, "")))
	if h := hash(load(fmt.Sprintf(generic, "  disk = 100\n  size = \"big\"\n"))); h != base {
		t.Error("generic: disk and size change the fingerprint")
	}
	if h := hash(load(strings.Replace(fmt.Sprintf(generic, ""), "10.0.0.1", "10.0.0.2", 1))); h == base {
		t.Error("generic: another host address keeps the fingerprint")
	}
	const local = "name = \"h\"\nmanagers {\n%s}\n"
	lbase := hash(load(fmt.Sprintf(local, "")))
	if h := hash(load(fmt.Sprintf(local, "  disk = 100\n"))); h != lbase {
		t.Error("local: disk changes the fingerprint")
	}
	if h := hash(load(fmt.Sprintf(local, "  size = \"2cpu-2g\"\n"))); h == lbase {
		t.Error("local: size keeps the fingerprint")
	}
}

// TestSwarmNotes: plan reports each recorded machine whose engine is not in
// the recorded swarm, and says what apply will do: join again, unlock, leave
// an earlier swarm of this cluster, or stop on another swarm unless told.
func TestSwarmNotes(t *testing.T) {
	c := cluster(t, `name = "demo"
managers { count = 1 }
workers { count = 5 }
`)
	st, obs := converged(c)
	st.Swarm.ID = "swarm-now-0123456789"
	st.Swarm.Retired = []string{"swarm-old-0123456789"}
	for _, m := range st.Machines {
		m.NodeID = "node-" + m.Name
	}
	obs.Nodes = []string{"node-demo-manager-1", "node-demo-worker-1"}
	obs.Engines = map[string]EngineView{
		"demo-manager-1": {State: "active", NodeID: "node-demo-manager-1", ClusterID: st.Swarm.ID, Manager: true},
		"demo-worker-1":  {State: "inactive"},
		"demo-worker-2":  {State: "locked"},
		"demo-worker3":   {State: "inactive"}, // not a recorded machine: ignored
		"demo-worker-3":  {State: "active", NodeID: "m3", ClusterID: "swarm-old-0123456789", Manager: true},
		"demo-worker-4":  {State: "active", NodeID: "m4", ClusterID: "swarm-else-0123456789", Manager: true},
		"demo-worker-5":  {State: "active", NodeID: "stranger", Managers: []string{"192.0.2.9:2377"}},
	}
	p := Build(c, st, obs)
	notes := strings.Join(p.Notes, "\n")
	for _, want := range []string{
		"demo-worker-1: its engine is in no swarm",
		"demo-worker-2: its engine restarted and is locked",
		"demo-worker-3: its engine is in swarm " + shortID("swarm-old-0123456789") + ", an earlier swarm of this cluster: apply makes it leave",
		"demo-worker-4: its engine is a manager of another swarm",
		"--leave-other-swarm",
		"demo-worker-5: its engine is node " + shortID("stranger") + " of a swarm whose managers (192.0.2.9:2377) do not list it",
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
	if strings.Contains(notes, "demo-manager-1:") {
		t.Errorf("a member in the recorded swarm is reported:\n%s", notes)
	}
	// An engine that does not answer on a running machine: apply will
	// start it, so the machine is to reconfigure, not unchanged. A machine
	// the plan removes gets no note about its engine.
	obs.Engines["demo-worker-1"] = EngineView{State: "unreachable", Error: "connection refused"}
	c4 := cluster(t, "name = \"demo\"\nmanagers { count = 1 }\nworkers { count = 4 }\n")
	p = Build(c4, st, obs)
	for _, a := range p.Actions {
		switch a.Machine {
		case "demo-worker-1":
			if a.Kind != Reconfigure || !strings.Contains(strings.Join(a.Reasons, " "), "its engine does not answer (connection refused)") {
				t.Errorf("unreachable engine: %s %v", a.Kind, a.Reasons)
			}
		case "demo-worker-5":
			if a.Kind != Remove {
				t.Errorf("demo-worker-5: %s", a.Kind)
			}
		}
	}
	if strings.Contains(strings.Join(p.Notes, "\n"), "demo-worker-5:") {
		t.Errorf("a note about the engine of a machine the plan removes: %q", p.Notes)
	}
	// An engine that answers but not about its swarm in time (an
	// election): nothing to start, so no reconfigure; a note says why.
	obs.Engines["demo-worker-1"] = EngineView{State: EngineBusy, Error: "context deadline exceeded"}
	p = Build(c4, st, obs)
	for _, a := range p.Actions {
		if a.Machine == "demo-worker-1" && a.Kind != None {
			t.Errorf("busy engine: %s %v", a.Kind, a.Reasons)
		}
	}
	if !strings.Contains(strings.Join(p.Notes, "\n"), "demo-worker-1: its engine answers but said nothing of its swarm in time") {
		t.Errorf("busy engine notes: %q", p.Notes)
	}
	// Engines that could not be asked, or a cluster with no swarm yet: no notes.
	st.Swarm.ID = ""
	if p := Build(c, st, obs); strings.Contains(strings.Join(p.Notes, "\n"), "its engine") {
		t.Errorf("notes without a recorded swarm: %q", p.Notes)
	}
}

// TestReplaceInPlaceWhenDriverSaysSo: a driver type that holds two
// generations (libvirt) replaces in place when its configuration says the
// generations could not reach each other (drivers.InPlacer via Observed).
func TestReplaceInPlaceWhenDriverSaysSo(t *testing.T) {
	src := func(size string) string {
		return fmt.Sprintf("name = \"v\"\ndriver \"libvirt\" {\n  image = \"debian.qcow2\"\n  user_network = true\n}\nmanagers {\n  count = 1\n  size = %q\n}\n", size)
	}
	c := cluster(t, src("2cpu-2g"))
	st, obs := converged(c)
	c2 := cluster(t, src("2cpu-4g"))
	for _, c := range []struct {
		inPlace string
		want    bool
		reason  string
	}{
		{"", false, "generation 2 joins the swarm before generation 1 leaves"},
		{"user-mode networking", true, "replaced in place (user-mode networking)"},
	} {
		obs.InPlace = map[string]string{}
		if c.inPlace != "" {
			obs.InPlace["libvirt"] = c.inPlace
		}
		p := Build(c2, st, obs)
		if len(p.Actions) != 1 || p.Actions[0].Kind != Replace {
			t.Fatalf("actions %s", kinds(p))
		}
		a := p.Actions[0]
		if a.InPlace != c.want || !strings.Contains(strings.Join(a.Reasons, "; "), c.reason) {
			t.Errorf("in place %v (reasons %q), want %v with %q", a.InPlace, a.Reasons, c.want, c.reason)
		}
	}
}

// TestCertRenewalPlanned: a converged machine whose engine certificate is
// inside the renewal window becomes a reconfigure (reissued, engine
// restarted drained); one outside it stays as it is; every expiry is listed;
// the operator's client certificate in the window is noted; a rotation under
// way renews every node.
func TestCertRenewalPlanned(t *testing.T) {
	c := cluster(t, base)
	st, obs := converged(c)
	now := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	obs.Now = now
	window := time.Duration(c.TLS.RenewBeforeHours) * time.Hour
	if window <= 0 {
		t.Fatalf("renewal window %s", window)
	}
	for _, m := range st.Machines {
		m.CertNotAfter = now.Add(window + 24*time.Hour)
	}
	st.Machines[1].CertNotAfter = now.Add(window / 2)
	st.PKI.ClientNotAfter = now.Add(window / 3)
	p := Build(c, st, obs)
	if got := kinds(p); got != "demo-manager-1=none demo-worker-1=reconfigure demo-worker-2=none" {
		t.Fatalf("actions %s", got)
	}
	if r := strings.Join(p.Actions[1].Reasons, "; "); !strings.Contains(r, "inside the renewal window") || !strings.Contains(r, "drained first") {
		t.Errorf("reasons %q", r)
	}
	if len(p.Certs) != 3 || p.Certs[1].Machine != "demo-worker-1" || !p.Certs[1].Renews || p.Certs[0].Renews || p.Certs[2].Renews {
		t.Errorf("certificates %+v", p.Certs)
	}
	if !strings.Contains(strings.Join(p.Notes, "\n"), "client certificate expires") {
		t.Errorf("notes %q", p.Notes)
	}
	st.Machines[1].CertNotAfter = now.Add(window + time.Hour)
	st.PKI.Rotation = "trust"
	p = Build(c, st, obs)
	if got := kinds(p); got != "demo-manager-1=reconfigure demo-worker-1=reconfigure demo-worker-2=reconfigure" {
		t.Errorf("during a CA rotation: %s", got)
	}
}

// A running machine the driver reports at other addresses than state
// (stopped and started outside provision) is reconfigured with the new
// address; a member whose swarm address moved is marked for apply to stop
// on; an address the driver does not report, or an existing host's, is not
// a move.
func TestAddressMoved(t *testing.T) {
	c := cluster(t, base)
	setup := func() (*state.State, Observed) {
		st, obs := converged(c)
		for i := range obs.Machines["local"] {
			m := &obs.Machines["local"][i]
			rec := st.Machine(m.Name)
			m.Address, m.PrivateAddress = fmt.Sprintf("203.0.113.%d", i+1), fmt.Sprintf("10.0.0.%d", i+1)
			rec.Address, rec.PrivateAddress, rec.NodeID = m.Address, m.PrivateAddress, "node"+m.Name
		}
		return st, obs
	}
	st, obs := setup()
	if p := Build(c, st, obs); !p.Empty() {
		t.Fatalf("same addresses: %s", kinds(p))
	}

	st, obs = setup()
	obs.Machines["local"][1].Address = "198.51.100.7"
	p := Build(c, st, obs)
	a := p.Actions[1]
	if got := kinds(p); got != "demo-manager-1=none demo-worker-1=reconfigure demo-worker-2=none" {
		t.Fatal(got)
	}
	if a.Moved == nil || a.Moved.From != "203.0.113.2" || a.Moved.To != "198.51.100.7" || a.Moved.Swarm || a.Moved.PrivateFrom != "" {
		t.Fatalf("%+v", a.Moved)
	}
	if !strings.Contains(a.Reasons[0], "203.0.113.2 -> 198.51.100.7") || !strings.Contains(a.Reasons[0], "reissues its certificate") {
		t.Fatal(a.Reasons)
	}

	st, obs = setup()
	obs.Machines["local"][0].PrivateAddress = "10.0.0.99"
	p = Build(c, st, obs)
	a = p.Actions[0]
	if a.Kind != Reconfigure || a.Moved == nil || !a.Moved.Swarm || a.Moved.PrivateTo != "10.0.0.99" || a.Moved.To != a.Moved.From {
		t.Fatalf("%s %+v", a.Kind, a.Moved)
	}
	if !strings.Contains(a.Reasons[0], "apply stops on this host") {
		t.Fatal(a.Reasons)
	}

	// Not yet a swarm member: its new private address is simply recorded.
	st, obs = setup()
	st.Machine("demo-worker-2").NodeID = ""
	obs.Machines["local"][2].PrivateAddress = "10.0.0.98"
	if a := Build(c, st, obs).Actions[2]; a.Moved == nil || a.Moved.Swarm {
		t.Fatalf("%+v", a.Moved)
	}

	// A driver that does not say an address says nothing about it.
	st, obs = setup()
	obs.Machines["local"][1].Address, obs.Machines["local"][1].PrivateAddress = "", ""
	if p := Build(c, st, obs); !p.Empty() {
		t.Fatalf("unreported addresses: %s", kinds(p))
	}
}

// TestManagerNotesWithGoneManagers: the replacement note tells the truth
// about the raft when managers are gone: kept by those that answer, no
// majority left, or no raft at all.
func TestManagerNotesWithGoneManagers(t *testing.T) {
	c := cluster(t, "name = \"demo\"\nmanagers { count = 3 }\n")
	note := func(gone int) string {
		st, obs := converged(c)
		for _, m := range st.Machines {
			m.NodeID = "n-" + m.Name
		}
		obs.Machines["local"] = obs.Machines["local"][gone:]
		p := Build(c, st, obs)
		for _, n := range p.Notes {
			if strings.HasPrefix(n, "managers are replaced") {
				return n
			}
		}
		t.Fatalf("%d gone: no replacement note in %q", gone, p.Notes)
		return ""
	}
	if n := note(1); !strings.Contains(n, "1 of 3 appear gone, the raft's majority is kept by the 2 that answer") {
		t.Error(n)
	}
	if n := note(2); !strings.Contains(n, "2 of 3 managers appear gone, so the raft has no majority now") {
		t.Error(n)
	}
	if n := note(3); !strings.Contains(n, "every recorded manager appears gone") || strings.Contains(n, "keeps its majority") {
		t.Error(n)
	}
}
