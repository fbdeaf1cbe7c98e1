package plan

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

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
			st.Put(&state.Machine{Machine: m, Role: p.Role, Pool: p.Name, Index: i, Status: state.StatusReady, SpecHash: MachineHash(c, p, i)})
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
  disk  = 20
}`)
	if got := kinds(Build(c2, st, obs)); got != "demo-manager-1=none demo-worker-1=replace demo-worker-2=replace" {
		t.Fatal(got)
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
