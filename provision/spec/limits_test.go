package spec

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode"

	"github.com/hashicorp/hcl/v2"
)

const minimal = "name = \"x\"\nmanagers { count = 1 }\n"

// render prints diagnostics the way the CLI does, with the files' sources.
func render(t *testing.T, diags hcl.Diagnostics) string {
	t.Helper()
	var buf bytes.Buffer
	WriteDiagnostics(&buf, diags, false)
	return buf.String()
}

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestInputBounds is issue 12's class of inputs that crashed or exhausted
// the machine: for each input (cluster file, JSON cluster file, var-file,
// -var value, environment value) and each bound (size, nesting, operator
// chain, evaluation cost, function results), the input is refused with the
// limit named and, where there is a place, file:line:col.
func TestInputBounds(t *testing.T) {
	dir := t.TempDir()
	deep := strings.Repeat("[", 5000) + "1" + strings.Repeat("]", 5000)
	chain := "1" + strings.Repeat("+1", 5000)
	forBomb := "[for a in range(1000): [for b in range(1000): [for c in range(1000): 1]]]"
	tupleBomb := strings.ReplaceAll(forBomb, "range(1000)", "["+strings.Repeat("0,", 999)+"0]")
	decl := "variable \"v\" {\n  type = list(any)\n  default = []\n}\n"
	big := strings.Repeat("# padding\n", MaxFileBytes/10+1)
	cases := []struct {
		name   string
		spec   string // file content ("" = minimal with decl)
		json   bool
		vars   func() Vars
		want   string // summary
		wantAt string // "file:line:col" fragment, "" = no place
	}{
		{name: "spec size", spec: minimal + big, want: "File too large", wantAt: "spec.hcl:1:1"},
		{name: "spec nesting", spec: "name = \"x\"\nmanagers { count = length(" + deep + ") }\n", want: "Nesting too deep", wantAt: "spec.hcl:2:"},
		{name: "spec chain", spec: "name = \"x\"\nmanagers { count = " + chain + " }\n", want: "Expression too long", wantAt: "spec.hcl:2:"},
		{name: "spec for bomb", spec: "name = \"x\"\nmanagers { count = length(" + forBomb + ") }\n", want: "Expression too costly", wantAt: "spec.hcl:2:"},
		{name: "default for bomb", spec: "variable \"d\" { default = " + tupleBomb + " }\n" + minimal, want: "Expression too costly", wantAt: "spec.hcl:1:"},
		{name: "driver block bomb", spec: "name = \"x\"\ndriver \"local\" { image = join(\"\", " + forBomb + ") }\nmanagers { count = 1 }\n", want: "Expression too costly", wantAt: "spec.hcl:2:"},
		{name: "template bomb", spec: "name = \"x\"\nmanagers {\n  labels = { a = \"${length(" + forBomb + ")}\" }\n}\n", want: "Expression too costly", wantAt: "spec.hcl:3:"},
		{name: "json nesting", json: true, spec: `{"name": "x", "managers": {"count": 1, "labels": ` + strings.Repeat(`{"a": `, 100) + `1` + strings.Repeat("}", 100) + `}}`, want: "Nesting too deep", wantAt: "spec.json:1:"},
		{name: "json template nesting", json: true, spec: `{"name": "x", "managers": {"count": "${` + strings.Repeat("(", 100) + "1" + strings.Repeat(")", 100) + `}"}}`, want: "Nesting too deep", wantAt: "spec.json:1:"},
		{name: "json template bomb", json: true, spec: `{"name": "x", "managers": {"count": "${length(` + forBomb + `)}"}}`, want: "Expression too costly", wantAt: "spec.json:1:"},
		{name: "var-file size", vars: func() Vars { return Vars{Files: []string{writeFile(t, dir, "big.tfvars", big)}} }, want: "File too large", wantAt: "big.tfvars:1:1"},
		{name: "var-file nesting", vars: func() Vars { return Vars{Files: []string{writeFile(t, dir, "deep.tfvars", "v = "+deep+"\n")}} }, want: "Nesting too deep", wantAt: "deep.tfvars:1:"},
		{name: "var-file chain", vars: func() Vars { return Vars{Files: []string{writeFile(t, dir, "chain.tfvars", "v = ["+chain+"]\n")}} }, want: "Expression too long", wantAt: "chain.tfvars:1:"},
		{name: "var-file for bomb", vars: func() Vars { return Vars{Files: []string{writeFile(t, dir, "bomb.tfvars", "v = "+tupleBomb+"\n")}} }, want: "Expression too costly", wantAt: "bomb.tfvars:1:"},
		{name: "-var size", vars: func() Vars { return Vars{Args: []string{"v=[\"" + strings.Repeat("a", MaxValueBytes) + "\"]"}} }, want: "Variable value too large"},
		{name: "-var nesting", vars: func() Vars { return Vars{Args: []string{"v=" + deep}} }, want: "Nesting too deep", wantAt: "<-var v>:1:"},
		{name: "-var chain", vars: func() Vars { return Vars{Args: []string{"v=[" + chain + "]"}} }, want: "Expression too long", wantAt: "<-var v>:1:"},
		{name: "env nesting", vars: func() Vars { return Vars{Env: []string{"PROVISION_VAR_v=" + deep}} }, want: "Nesting too deep", wantAt: "<environment variable PROVISION_VAR_v>:1:"},
		{name: "/dev/zero var-file", vars: func() Vars { return Vars{Files: []string{"/dev/zero"}} }, want: "File too large", wantAt: "/dev/zero:1:1"},
		{name: "format width", spec: "name = \"x\"\nmanagers {\n  labels = { a = format(\"%099999d\", 1) }\n}\n", want: "a width or precision of 99999", wantAt: "spec.hcl:3:"},
		{name: "join size", spec: "name = \"x\"\nmanagers {\n  labels = { a = join(\"\", [for i in range(1000) : join(\"\", [for j in range(900) : \"xx\"])]) }\n}\n", want: "Expression too costly", wantAt: "spec.hcl:3:"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			name, src := "spec.hcl", c.spec
			if c.json {
				name = "spec.json"
			}
			if src == "" {
				src = decl + minimal
			}
			path := writeFile(t, dir, name, src)
			vars := Vars{}
			if c.vars != nil {
				vars = c.vars()
			}
			cl, diags := Load([]string{path}, vars)
			if cl != nil || !diags.HasErrors() {
				t.Fatalf("accepted")
			}
			out := render(t, diags)
			if !strings.Contains(out, c.want) {
				t.Errorf("want %q in:\n%.2000s", c.want, out)
			}
			if c.wantAt != "" && !strings.Contains(out, c.wantAt) {
				t.Errorf("want the place %q in:\n%.2000s", c.wantAt, out)
			}
			if len(out) > 20000 {
				t.Errorf("diagnostics are %d bytes long", len(out))
			}
		})
	}
	// /dev/zero as the spec itself.
	_, diags := Load([]string{"/dev/zero"}, Vars{})
	if out := render(t, diags); !strings.Contains(out, "File too large") || !strings.Contains(out, "/dev/zero:1:1") {
		t.Errorf("/dev/zero as spec:\n%s", out)
	}
	// Legit use stays fine: a for over a long list, a large hosts list.
	hosts := make([]string, 2000)
	for i := range hosts {
		hosts[i] = `"10.0.` + string(rune('0'+i/1000)) + `.` + strings.Repeat("1", 1) + `"`
	}
	ok := "name = \"x\"\nmanagers { count = 1 }\nworkers {\n  count = length([for i in range(1000) : format(\"w-%d\", i)])\n  labels = { all = join(\",\", [for i in range(1000) : tostring(i)]) }\n}\n"
	if _, diags := LoadBytes("ok.hcl", []byte(ok), Vars{}); diags.HasErrors() {
		t.Errorf("legit spec refused: %s", diags.Error())
	}
}

// TestSensitiveVariables is issue 12's secrets class in the loader: the
// value of a sensitive variable, from its default, a var-file, -var or the
// environment, appears in no diagnostic (text or source line), even where
// only part of it or something derived from it would be quoted, and comes
// back in Cluster.Secrets and SensitivePaths for the CLI's other outputs.
func TestSensitiveVariables(t *testing.T) {
	dir := t.TempDir()
	spec := writeFile(t, dir, "spec.hcl", `variable "token" {
  sensitive = true
  default   = "default-Secret-1"
}
variable "port" {
  sensitive = true
  type      = number
}
name = "sens"
managers {
  count  = 1
  labels = { tok = var.token }
}
logging {
  driver  = "journald"
  options = { tag = "app-${upper(var.token)}" }
}
prune { schedule = "${var.token} 03:00" }
`)
	secrets := []string{"default-Secret-1", "DEFAULT-SECRET-1", "VarFile-Secret-2", "Arg-Secret-3", "Env-Secret-4"}
	for _, c := range []struct {
		name string
		vars Vars
	}{
		{"default", Vars{Args: []string{"port=1"}}},
		{"var-file", Vars{Files: []string{writeFile(t, dir, "s.tfvars", "token = \"VarFile-Secret-2\"\nport = \"not-a-number-VarFile-Secret-2\"\n")}}},
		{"-var", Vars{Args: []string{"token=Arg-Secret-3", "port=Arg-Secret-3"}}},
		{"environment", Vars{Env: []string{"PROVISION_VAR_token=Env-Secret-4", "PROVISION_VAR_port=Env-Secret-4"}}},
		// Syntax errors come before any value is known: the source line
		// with the secret must not be shown either.
		{"var-file redefined", Vars{Files: []string{writeFile(t, dir, "r.tfvars", "token = \"VarFile-Secret-2\"\ntoken = \"VarFile-Secret-2\"\n")}}},
		{"var-file syntax", Vars{Files: []string{writeFile(t, dir, "x.tfvars", "token = \"VarFile-Secret-2\" +\n")}}},
		{"var-file bad expression", Vars{Files: []string{writeFile(t, dir, "e.tfvars", "token = \"VarFile-Secret-2\"[0]\n")}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, diags := Load([]string{spec}, c.vars)
			if !diags.HasErrors() {
				t.Fatal("no errors")
			}
			out := render(t, diags)
			for _, s := range secrets {
				if strings.Contains(out, s) || strings.Contains(out, strings.ToLower(s)) {
					t.Errorf("%q shows in:\n%s", s, out)
				}
			}
			if strings.Contains(out, "Secret") {
				t.Errorf("part of a secret shows in:\n%s", out)
			}
		})
	}
	c, diags := Load([]string{spec}, Vars{Args: []string{"port=2", "token=Arg-Secret-3"}})
	if c != nil || !diags.HasErrors() {
		t.Fatal("the schedule is invalid: want an error")
	}
	good := writeFile(t, dir, "good.hcl", `variable "token" {
  sensitive = true
}
name = "sens"
managers { count = 1 }
logging {
  driver  = "journald"
  options = { tag = "app-${upper(var.token)}" }
}
`)
	c, diags = Load([]string{good}, Vars{Args: []string{"token=Arg-Secret-3"}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	if strings.Join(c.Secrets, ",") != "Arg-Secret-3" || !c.SensitivePaths["logging.options"] || c.SensitivePaths["logging.driver"] {
		t.Errorf("secrets %v, paths %v", c.Secrets, c.SensitivePaths)
	}
}

// fuzzSpec declares a variable of each kind a -var-file or -var can set.
const fuzzSpec = `variable "n" {
  type    = number
  default = 1
}
variable "s" {
  sensitive = true
  default   = "x"
}
variable "l" {
  type    = list(string)
  default = []
}
variable "m" {
  type    = map(string)
  default = {}
}
variable "o" {
  type    = object({ a = number, b = list(string) })
  default = { a = 1, b = [] }
}
variable "any" {
  default = null
}
name = "fuzz"
managers {
  count  = var.n
  labels = merge(var.m, { s = var.s })
}
tls { extra_names = var.l }
`

// FuzzVarFile feeds arbitrary -var-file contents to Load: never a panic or
// a crash, errors exactly when no cluster comes back, diagnostics printable.
// Seeds: testdata/fuzz/FuzzVarFile (hostile nesting, chains, bombs, huge
// numbers, nulls) plus the cases below.
func FuzzVarFile(f *testing.F) {
	f.Add([]byte("n = 3\nl = [\"a.example\"]\nm = { zone = \"a\" }\n"))
	f.Add([]byte("o = { a = 1, b = [\"x\"] }\nany = [[[[1]]]]\n"))
	f.Add([]byte("n = 1e999\n"))
	f.Add([]byte("l = null\nm = { a = null }\n"))
	dir := f.TempDir()
	specPath := filepath.Join(dir, "spec.hcl")
	if err := os.WriteFile(specPath, []byte(fuzzSpec), 0o644); err != nil {
		f.Fatal(err)
	}
	n := 0
	f.Fuzz(func(t *testing.T, data []byte) {
		n++
		vf := filepath.Join(dir, "v"+strings.Repeat("x", n%3)+".tfvars")
		if err := os.WriteFile(vf, data, 0o644); err != nil {
			t.Fatal(err)
		}
		c, diags := Load([]string{specPath}, Vars{Files: []string{vf}})
		if diags.HasErrors() != (c == nil) {
			t.Fatalf("errors=%v but cluster=%v", diags.HasErrors(), c != nil)
		}
		var buf bytes.Buffer
		WriteDiagnostics(&buf, diags, false)
		if c != nil && c.Managers.Count < 1 {
			t.Fatal("accepted a cluster without managers")
		}
	})
}

// FuzzVarValue feeds arbitrary -var and PROVISION_VAR_ values to Load, for
// every kind of variable. Seeds: testdata/fuzz/FuzzVarValue plus below.
func FuzzVarValue(f *testing.F) {
	for _, s := range []string{"3", "[\"a.example\"]", "{ zone = \"a\" }", "{ a = 1, b = [] }", "[[[[[1]]]]]", "${1}", "1+1", "null", "1e999", "\"x\"", "[for x in [1,2]: x]"} {
		for _, name := range []string{"n", "s", "l", "m", "o", "any"} {
			f.Add(name, s)
		}
	}
	f.Fuzz(func(t *testing.T, name, value string) {
		for _, vars := range []Vars{{Args: []string{name + "=" + value}}, {Env: []string{EnvPrefix + name + "=" + value}}} {
			c, diags := LoadBytes("spec.hcl", []byte(fuzzSpec), vars)
			if diags.HasErrors() != (c == nil) {
				t.Fatalf("errors=%v but cluster=%v", diags.HasErrors(), c != nil)
			}
			var buf bytes.Buffer
			WriteDiagnosticsWith(&buf, diags, map[string]*hcl.File{"spec.hcl": {Bytes: []byte(fuzzSpec)}}, false)
		}
	})
}

// TestDiagnosticsListingBounded: a file that is not HCL at all (a binary)
// gives thousands of errors; the listing shows the first ones and says how
// many more there are, and no control character reaches the terminal.
func TestDiagnosticsListingBounded(t *testing.T) {
	src := make([]byte, 3000)
	for i := range src {
		src[i] = byte(i*7 + 1)
	}
	path := writeFile(t, t.TempDir(), "bin.hcl", string(src))
	_, diags := Load([]string{path}, Vars{})
	if len(diags) <= maxDiagnostics {
		t.Skipf("only %d diagnostics", len(diags))
	}
	out := render(t, diags)
	if !strings.Contains(out, fmt.Sprintf("... and %d more diagnostics", len(diags)-maxDiagnostics)) {
		t.Errorf("no bound on %d diagnostics:\n%.2000s", len(diags), out)
	}
	for _, r := range out {
		if r != '\n' && (unicode.IsControl(r) || unicode.Is(unicode.Cf, r)) {
			t.Fatalf("control character %U in the listing", r)
		}
	}
}
