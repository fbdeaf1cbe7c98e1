package spec

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
)

var update = flag.Bool("update", false, "rewrite golden files")

func load(t *testing.T, src string, vars Vars) (*Cluster, hcl.Diagnostics) {
	t.Helper()
	return LoadBytes("test.hcl", []byte(src), vars)
}

func mustLoad(t *testing.T, src string, vars Vars) *Cluster {
	t.Helper()
	c, diags := load(t, src, vars)
	if diags.HasErrors() {
		t.Fatalf("unexpected errors: %s", diags.Error())
	}
	return c
}

func TestDefaults(t *testing.T) {
	c := mustLoad(t, `name = "demo"
managers { count = 1 }
workers { count = 2 }
`, Vars{})
	if len(c.Drivers) != 1 || c.Drivers[0].Type != "local" || c.Drivers[0].Name != "local" {
		t.Errorf("implicit driver: %+v", c.Drivers)
	}
	if c.Managers.Driver != "local" || c.Workers[0].Driver != "local" || c.Workers[0].Name != "worker" {
		t.Errorf("pools: %+v %+v", c.Managers, c.Workers)
	}
	if c.Managers.DiskGiB != 0 {
		t.Errorf("default disk %d: the local driver makes no disks", c.Managers.DiskGiB)
	}
	if c.Engine.Method != "package" || c.Engine.Package != "docker.io" {
		t.Errorf("engine %+v", c.Engine)
	}
	if !c.Prune.Enabled || c.Prune.Schedule != "daily" || c.Prune.Until != "24h" || c.Prune.Volumes {
		t.Errorf("prune %+v", c.Prune)
	}
	if c.Logging.Driver != "json-file" || c.Logging.Options["max-size"] != "10m" || c.Logging.Options["max-file"] != "3" {
		t.Errorf("logging %+v", c.Logging)
	}
	h := c.Hardening
	if !h.SSH || !h.Kernel || !h.Firewall || !h.Daemon || !h.Audit || !h.Updates || h.AutoReboot || h.UserNamespaces || !h.OverlayEncryption {
		t.Errorf("hardening %+v", h)
	}
	if !c.Swarm.Autolock || c.Swarm.NodeCertExpiry != DefaultNodeCertExpiry {
		t.Errorf("swarm %+v: autolock is on by default", c.Swarm)
	}
	if c.Engine.MetricsAddr != DefaultMetricsAddr || c.Engine.Metrics() == nil || c.Engine.Metrics().Port != 9323 {
		t.Errorf("metrics %q %+v: on by default, port 9323", c.Engine.MetricsAddr, c.Engine.Metrics())
	}
	if c.TLS.ValidityHours != 8760 || c.SSH.User != "provision" || c.SSH.ConnectTimeout != 0 || c.Parallelism != c.Managers.Count+c.Workers[0].Count {
		t.Errorf("tls/ssh/parallelism %+v %+v %d", c.TLS, c.SSH, c.Parallelism)
	}
	if got := c.Workers[0].MachineNames(c.Name); strings.Join(got, ",") != "demo-worker-1,demo-worker-2" {
		t.Errorf("names %v", got)
	}
}

func TestFullSpec(t *testing.T) {
	c := mustLoad(t, `
name        = "prod"
parallelism = 4
driver "generic" {
  alias    = "metal"
  user     = "admin"
  key_file = "/dev/null"
}
driver "aws" { region = "eu-west-1" }
managers {
  driver = "metal"
  hosts  = ["10.0.0.1", "10.0.0.2:2222", "metal-3.example"]
}
workers {
  pool   = "cloud"
  driver = "aws"
  count  = 4
  disk   = "40GiB"
  size   = "t3.small"
  labels = { zone = "eu" }
}
engine {
  version = "20.10.*"
  method  = "bundle"
}
prune {
  schedule         = "Sun *-*-* 03:00"
  until            = "168h"
  volumes          = true
  randomized_delay = "30m"
}
logging {
  driver  = "journald"
  options = { tag = "{{.Name}}" }
  journald_max_use = "1G"
}
tls {
  validity      = "720h"
  extra_names   = ["swarm.example", "203.0.113.7"]
  allowed_cidrs = ["203.0.113.0/24"]
}
hardening {
  profile         = "off"
  firewall        = true
  user_namespaces = true
}
ssh {
  user            = "ops"
  connect_timeout = "45s"
}
`, Vars{})
	if c.Managers.Count != 3 || c.Managers.Driver != "metal" || len(c.Managers.Hosts) != 3 {
		t.Errorf("managers %+v", c.Managers)
	}
	w := c.Workers[0]
	if w.Name != "cloud" || w.Count != 4 || w.DiskGiB != 40 || w.Size != "t3.small" || w.Labels["zone"] != "eu" {
		t.Errorf("workers %+v", w)
	}
	if c.Engine.Method != "bundle" || c.Engine.Version != "20.10.*" {
		t.Errorf("engine %+v", c.Engine)
	}
	if c.Logging.Options["max-size"] != "" || c.Logging.JournaldMaxUse != "1G" {
		t.Errorf("journald gets no rotation options: %+v", c.Logging)
	}
	h := c.Hardening
	if h.SSH || h.Kernel || !h.Firewall || !h.UserNamespaces || h.Audit {
		t.Errorf("profile off with firewall on: %+v", h)
	}
	if c.TLS.ValidityHours != 720 || len(c.TLS.ExtraNames) != 2 || c.SSH.User != "ops" || c.SSH.ConnectTimeout != 45*time.Second || c.Parallelism != 4 {
		t.Errorf("tls %+v ssh %+v", c.TLS, c.SSH)
	}
	if r, ok := c.Ranges["workers.cloud.disk"]; !ok || r.Start.Line != 18 {
		t.Errorf("range of workers.cloud.disk: %+v", r)
	}
}

func TestSSHConnectTimeoutRefused(t *testing.T) {
	for in, want := range map[string]string{"soon": "Invalid connect timeout", "10ms": "out of range", "2h": "out of range"} {
		_, diags := load(t, "name = \"demo\"\nmanagers { count = 1 }\nssh { connect_timeout = \""+in+"\" }\n", Vars{})
		if !diags.HasErrors() || !strings.Contains(diags.Error(), want) {
			t.Errorf("connect_timeout %q: %v, want %q", in, diags, want)
		}
	}
}

func TestSizes(t *testing.T) {
	for in, want := range map[string]int{"20": 20, "20G": 20, "20GiB": 20, "20 GiB": 20, "512MiB": 1, "1536M": 2, "1TiB": 1024, "30GB": 28, "1.5GiB": 2} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "20 parsecs", "-5G", "1e400"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}

func TestVariables(t *testing.T) {
	src := `
variable "workers" {
  type    = number
  default = 2
}
variable "zone" { default = "a" }
variable "extra" {
  type    = list(string)
  default = []
}
name = "vars"
managers { count = 1 }
workers {
  count  = var.workers
  labels = { zone = upper(var.zone) }
}
tls { extra_names = var.extra }
`
	dir := t.TempDir()
	vf := filepath.Join(dir, "prod.tfvars")
	os.WriteFile(vf, []byte("workers = 5\nzone = \"file\"\n"), 0o644)
	vj := filepath.Join(dir, "prod.tfvars.json")
	os.WriteFile(vj, []byte(`{"workers": 4, "zone": "${json}", "extra": ["j.example"]}`), 0o644)

	cases := []struct {
		name    string
		vars    Vars
		workers int
		zone    string
		extra   int
	}{
		{"defaults", Vars{}, 2, "A", 0},
		{"env", Vars{Env: []string{"PROVISION_VAR_workers=3", "PROVISION_VAR_undeclared=1", "HOME=/root"}}, 3, "A", 0},
		{"file over env", Vars{Env: []string{"PROVISION_VAR_workers=3"}, Files: []string{vf}}, 5, "FILE", 0},
		{"arg over file", Vars{Files: []string{vf}, Args: []string{"workers=7", "zone=arg", `extra=["x.example"]`}}, 7, "ARG", 1},
		{"json file, strings literal", Vars{Files: []string{vj}}, 4, "${JSON}", 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := mustLoad(t, src, tc.vars)
			if c.Workers[0].Count != tc.workers || c.Workers[0].Labels["zone"] != tc.zone || len(c.TLS.ExtraNames) != tc.extra {
				t.Errorf("got workers=%d zone=%q extra=%v", c.Workers[0].Count, c.Workers[0].Labels["zone"], c.TLS.ExtraNames)
			}
		})
	}
	_, diags := load(t, src, Vars{Args: []string{"workers=many"}})
	if !diags.HasErrors() || !strings.Contains(diags.Error(), "does not match its type") {
		t.Errorf("bad -var type: %v", diags)
	}
	_, diags = load(t, src, Vars{Args: []string{"nope=1"}})
	if !diags.HasErrors() || !strings.Contains(diags.Error(), "declares no variable") {
		t.Errorf("undeclared -var: %v", diags)
	}
	_, diags = load(t, `variable "x" {}
name = "v"
managers { count = 1 }`, Vars{})
	if !diags.HasErrors() || !strings.Contains(diags.Error(), "PROVISION_VAR_x") {
		t.Errorf("missing value: %v", diags)
	}
}

func TestCalendar(t *testing.T) {
	for _, ok := range []string{"daily", "Weekly", "Sun *-*-* 03:00", "Mon..Fri 02:30", "*-*-* 02,14:30:00", "Sat,Sun 04:00 UTC",
		"*-*-01 00:00:00", "2026-12-24 18:00", "*:0/15", "12-25 10:00 Europe/Berlin", "Mon *-*~1 03:00"} {
		if err := CheckCalendar(ok); err != nil {
			t.Errorf("CheckCalendar(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "sometimes", "every tuesday", "25:00", "*-13-01 00:00", "Funday 03:00", "*:0/0", "03:00 04:00",
		"Mon *-*-~1 03:00", "daily\n", "daily ", "Sun\t03:00", "03:00 Mars/Base"} {
		if err := CheckCalendar(bad); err == nil {
			t.Errorf("CheckCalendar(%q) accepted", bad)
		}
	}
}

func TestMultipleDriversNeedExplicitPools(t *testing.T) {
	_, diags := load(t, `name = "x"
driver "local" {}
driver "local" { alias = "other" }
managers { count = 1 }
`, Vars{})
	if !diags.HasErrors() || !strings.Contains(diags.Error(), "must say which one") {
		t.Errorf("diags: %v", diags)
	}
	_, diags = load(t, `name = "x"
driver "local" {}
driver "local" {}
managers { count = 1 }
`, Vars{})
	if !diags.HasErrors() || !strings.Contains(diags.Error(), "Duplicate driver") {
		t.Errorf("diags: %v", diags)
	}
}

// TestGoldenDiagnostics pins the exact text users see for bad files: file,
// line, column, the source line and the explanation.
func TestGoldenDiagnostics(t *testing.T) {
	files, _ := filepath.Glob("testdata/invalid/*.hcl")
	if len(files) < 10 {
		t.Fatalf("only %d invalid files", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			c, diags := LoadBytes(f, src, Vars{})
			if len(diags) == 0 {
				t.Fatalf("no diagnostics")
			}
			if !strings.HasPrefix(filepath.Base(f), "even-") && !diags.HasErrors() {
				t.Fatalf("no errors: %v", diags)
			}
			if diags.HasErrors() && c != nil {
				t.Errorf("errors but a cluster was returned")
			}
			var buf bytes.Buffer
			WriteDiagnosticsWith(&buf, diags, map[string]*hcl.File{f: {Bytes: src}}, false)
			golden := strings.TrimSuffix(f, ".hcl") + ".golden"
			if *update {
				os.WriteFile(golden, buf.Bytes(), 0o644)
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./provision/spec -run Golden -update)", err)
			}
			if buf.String() != string(want) {
				t.Errorf("diagnostics differ from %s:\n--- got\n%s\n--- want\n%s", golden, buf.String(), want)
			}
			if !strings.Contains(buf.String(), "--> "+f+":") {
				t.Errorf("diagnostics do not name file and line:\n%s", buf.String())
			}
		})
	}
}

func TestExamplesLoad(t *testing.T) {
	files, _ := filepath.Glob("../../examples/*.hcl")
	if len(files) == 0 {
		t.Fatal("no examples")
	}
	for _, f := range files {
		c, diags := Load([]string{f}, Vars{})
		if diags.HasErrors() {
			var buf bytes.Buffer
			WriteDiagnostics(&buf, diags, false)
			t.Errorf("%s:\n%s", f, buf.String())
			continue
		}
		if c.Managers.Count < 1 {
			t.Errorf("%s: no managers", f)
		}
	}
}

func FuzzLoad(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/invalid/*.hcl")
	ex, _ := filepath.Glob("../../examples/*.hcl")
	for _, s := range append(seeds, ex...) {
		if b, err := os.ReadFile(s); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("name = \"x\"\nmanagers { count = 1e999 }\n"))
	f.Add([]byte("name = \"x\"\nmanagers { disk = \"9999999999999TiB\" }\n"))
	f.Add([]byte("variable \"a\" { type = list(number) }\nname = \"x\"\nmanagers { count = var.a[0] }\n"))
	f.Add([]byte("name = null\nmanagers { count = null labels = null }\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		c, diags := LoadBytes("fuzz.hcl", src, Vars{Args: []string{"a=[1]"}})
		if diags.HasErrors() != (c == nil) {
			t.Fatalf("errors=%v but cluster=%v", diags.HasErrors(), c != nil)
		}
		var buf bytes.Buffer
		WriteDiagnosticsWith(&buf, diags, map[string]*hcl.File{"fuzz.hcl": {Bytes: src}}, false)
		if c != nil && c.Managers.Count < 1 {
			t.Fatalf("accepted a cluster without managers")
		}
	})
}

// TestIgnoredSettings: a pool setting the driver does not use is a warning
// at the attribute (it never rebuilds a machine); a size the driver cannot
// read is an error there.
func TestIgnoredSettings(t *testing.T) {
	c, diags := load(t, `name = "demo"
managers {
  count = 1
  disk  = "20GiB"
  size  = "2cpu-2g"
}
workers {
  count = 1
  size  = "large"
}
`, Vars{})
	if c != nil || !diags.HasErrors() {
		t.Fatalf("an unreadable local size is accepted: %v", diags)
	}
	var got []string
	for _, d := range diags {
		got = append(got, fmt.Sprintf("%d:%d %s: %s", d.Subject.Start.Line, d.Subject.Start.Column, d.Summary, d.Detail))
	}
	s := strings.Join(got, "\n")
	for _, want := range []string{
		`4:11 Setting ignored by the driver: The local driver does not use disk (containers share the engine's disk): managers.disk is ignored`,
		`9:11 Invalid size: workers.worker.size for the local driver: size "large": want <cpus>cpu-<memory>`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("diagnostics lack %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "5:11") {
		t.Errorf("a valid local size is reported:\n%s", s)
	}
}

// TestMixedNetworksWarn: machines spread over a cloud driver and another
// block draw a warning at the second block's pool (the swarm ports are
// fenced inside each cloud network); local, generic and libvirt together
// on one LAN, or one cloud alone, do not.
func TestMixedNetworksWarn(t *testing.T) {
	const generic = `driver "generic" {
  user     = "admin"
  key_file = "/dev/null"
}
`
	for _, c := range []struct {
		name, src string
		warn      bool
	}{
		{"cloud and metal", generic + `driver "aws" { region = "eu-west-1" }
managers {
  driver = "generic"
  hosts  = ["10.0.0.1"]
}
workers {
  driver = "aws"
  count  = 2
}`, true},
		{"two clouds", `driver "aws" { region = "eu-west-1" }
driver "digitalocean" { region = "ams3" }
managers { driver = "aws" }
workers {
  driver = "digitalocean"
  count  = 1
}`, true},
		{"an empty cloud pool", generic + `driver "aws" { region = "eu-west-1" }
managers {
  driver = "generic"
  hosts  = ["10.0.0.1"]
}
workers {
  driver = "aws"
  count  = 0
}`, false},
		{"local and metal", generic + `driver "local" {}
managers { driver = "local" }
workers {
  driver = "generic"
  hosts  = ["10.0.0.1"]
}`, false},
		{"one cloud", `driver "aws" { region = "eu-west-1" }
managers { count = 3 }
workers { count = 2 }`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, diags := LoadBytes("m.hcl", []byte("name = \"m\"\n"+c.src), Vars{})
			if diags.HasErrors() {
				t.Fatalf("errors: %v", diags)
			}
			var got []*hcl.Diagnostic
			for _, d := range diags {
				if d.Summary == "Machines on several networks" {
					got = append(got, d)
				}
			}
			if c.warn != (len(got) == 1) || len(got) > 1 {
				t.Fatalf("warnings %v, want one: %v", got, c.warn)
			}
			if c.warn && (got[0].Subject == nil || got[0].Subject.Start.Line < 2 || !strings.Contains(got[0].Detail, "(aws)")) {
				t.Errorf("warning not located or not naming the drivers: %+v %s", got[0].Subject, got[0].Detail)
			}
		})
	}
}

// TestIgnoredSettingsGeneric: the generic driver makes no machine, so disk
// and size on its pools are warned about at the attribute, not errors.
func TestIgnoredSettingsGeneric(t *testing.T) {
	c, diags := load(t, `name = "metal"
driver "generic" {
  user     = "admin"
  key_file = "/dev/null"
}
managers {
  hosts = ["10.0.0.1"]
  disk  = 100
  size  = "c5.large"
}
`, Vars{})
	if c == nil || diags.HasErrors() {
		t.Fatalf("errors: %v", diags)
	}
	var lines []int
	for _, d := range diags {
		if d.Summary == "Setting ignored by the driver" && strings.Contains(d.Detail, "The generic driver does not use") {
			lines = append(lines, d.Subject.Start.Line)
		}
	}
	if !slices.Equal(lines, []int{8, 9}) {
		t.Errorf("warnings at lines %v, want 8 (disk) and 9 (size): %v", lines, diags)
	}
}
