package hostos

import (
	"context"
	"io"
	"io/fs"
	"log/slog"
	"os/exec"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/provision/provision/provision/spec"
)

// TestStepRecords checks every step's record against what the step does:
// a new step whose record is incomplete fails here.
func TestStepRecords(t *testing.T) {
	cfg := &Config{
		Cluster: "t", Node: "t-manager-1", Role: spec.RoleManager, Index: 1, AdminUser: "provision",
		Engine: spec.DefaultEngine(), Logging: spec.DefaultLogging(), Prune: spec.DefaultPrune(),
		Hardening: spec.Hardening{SSH: true, Kernel: true, Firewall: true, Daemon: true, Audit: true, Updates: true, AutoReboot: true},
		TLS:       TLSFiles{CA: []byte("ca"), Cert: []byte("cert"), Key: []byte("key")},
		Peers:     []string{"10.0.0.2"}, OperatorCIDRs: []string{"203.0.113.0/24"},
	}
	facts := &Facts{OS: OSRelease{ID: "debian", VersionID: "12"}, Arch: "amd64", Files: map[string]string{},
		Packages: map[string]string{}, Units: map[string]string{}, UnitFiles: map[string]string{}, Commands: map[string]string{}}
	fam, err := FamilyOf(facts.OS)
	if err != nil {
		t.Fatal(err)
	}
	tgt := &Target{Config: cfg, Facts: facts}
	idRE := regexp.MustCompile(`^[a-z]+\.[a-z_]+$`)
	owner := map[string]string{}
	var restartRun []int
	steps := Steps()
	for i, s := range steps {
		if !idRE.MatchString(s.ID) {
			t.Errorf("step %q: ID not dotted lower case", s.ID)
		}
		if (s.render == nil) == (s.check == nil || s.apply == nil) || (s.check == nil) != (s.apply == nil) {
			t.Errorf("%s: a step renders files or has its own check and apply, not both or neither", s.ID)
		}
		if s.render == nil && (len(s.Files) > 0 || s.ready != nil || s.after != nil || s.put != nil) {
			t.Errorf("%s: files and their actions need a file step (render)", s.ID)
		}
		if s.render != nil && len(s.Files) == 0 {
			t.Errorf("%s: renders files but declares none", s.ID)
		}
		for _, f := range s.Files {
			if !path.IsAbs(f.Path) || strings.ContainsAny(f.Path, " \t\n*?[") {
				t.Errorf("%s: path %q", s.ID, f.Path)
			}
			if o, ok := owner[f.Path]; ok {
				t.Errorf("%s and %s both own %s", o, s.ID, f.Path)
			}
			owner[f.Path] = s.ID
			if f.Validate != "" && strings.Count(f.Validate, "%s") != 1 {
				t.Errorf("%s: %s: Validate %q must name the file once (%%s)", s.ID, f.Path, f.Validate)
			}
			// A unit file the step installs is one whose state it reads,
			// and one wipe stops.
			if strings.HasPrefix(f.Path, "/etc/systemd/system/") && !strings.Contains(f.Path, ".d/") {
				u := path.Base(f.Path)
				if !slices.Contains(s.Units, u) {
					t.Errorf("%s: installs unit %s but does not list it in Units", s.ID, u)
				}
				if !strings.Contains(s.Undo.Stop, u) {
					t.Errorf("%s: installs unit %s but its Undo.Stop does not stop it", s.ID, u)
				}
			}
		}
		if (s.Drain != nil) != (s.DrainReason != "") {
			t.Errorf("%s: a drain needs its reason and a reason its drain", s.ID)
		}
		if s.Drain != nil && !s.RestartsEngine {
			t.Errorf("%s: a drain is for a step that restarts the engine", s.ID)
		}
		if s.BeforeEngine && (!s.RestartsEngine || s.check != nil || s.ID == "engine.install") {
			t.Errorf("%s: only the engine's own file steps are written before its first install", s.ID)
		}
		if s.RestartsEngine {
			restartRun = append(restartRun, i)
		}
		if s.render != nil && s.On(cfg) {
			got, err := s.render(tgt, fam)
			if err != nil {
				t.Errorf("%s: render: %v", s.ID, err)
			}
			var rendered []string
			for _, f := range got {
				rendered = append(rendered, f.Path)
				if owner[f.Path] != s.ID {
					t.Errorf("%s: renders %s, which its record does not list", s.ID, f.Path)
				}
			}
			for _, f := range s.Files {
				if !f.Old && !slices.Contains(rendered, f.Path) {
					t.Errorf("%s: lists %s but never renders it", s.ID, f.Path)
				}
			}
		}
		if s.Packages != nil {
			for _, p := range s.Packages(cfg, fam) {
				if p == "" {
					t.Errorf("%s: empty package name", s.ID)
				}
			}
		}
	}
	// The engine steps are one run, restarted once at its end.
	for j := 1; j < len(restartRun); j++ {
		if restartRun[j] != restartRun[j-1]+1 {
			t.Errorf("steps that restart the engine are not consecutive: %v", restartRun)
		}
	}
	if last := steps[restartRun[len(restartRun)-1]]; !last.flushRestart || last.ID != "engine.config" {
		t.Errorf("the engine restarts at %s (flush %v), want engine.config", last.ID, last.flushRestart)
	}
	if !NeedsCert(CertServer) {
		t.Error("no step needs the server certificate")
	}
	if pk := wantPackages(cfg, fam); len(pk) == 0 || pk[0] != spec.DefaultPackage || !slices.Contains(pk, fam.Firewall) || !slices.Contains(pk, fam.Audit) || !slices.Contains(pk, fam.Updates) {
		t.Errorf("packages %v", pk)
	}
	// Facts hash every owned file and report every unit.
	for p := range owner {
		if !slices.Contains(ManagedPaths(nil), p) {
			t.Errorf("facts do not hash %s", p)
		}
	}
	for _, u := range []string{"docker.service", unitFirewall, unitPruneTimer, "ssh.service"} {
		if !slices.Contains(ManagedUnits(), u) {
			t.Errorf("facts do not report %s", u)
		}
	}
	// Wipe removes every file but the distro's own, and is valid sh.
	w := WipeScript()
	for p, id := range owner {
		r, _ := StepByID(id)
		if want := !r.rule(p).Distro; strings.Contains(w, p) != want {
			t.Errorf("wipe removes %s: %v, want %v", p, !want, want)
		}
	}
	if out, err := exec.Command("sh", "-n", "-c", w).CombinedOutput(); err != nil {
		t.Errorf("wipe script: %v: %s\n%s", err, out, w)
	}
}

// TestEngineRestartsOnce: the engine's certificates and its settings
// changing together restart it once, at the end of the engine steps; the
// certificates alone restart it too (without engine.tls knowing of
// engine.config's files).
func TestEngineRestartsOnce(t *testing.T) {
	for _, tc := range []struct {
		name     string
		settings bool // daemon.json changes too
	}{{"certificates", false}, {"certificates and settings", true}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &Config{Node: "n", Engine: spec.DefaultEngine(), Logging: spec.DefaultLogging(), Prune: spec.DefaultPrune(),
				TLS: TLSFiles{CA: []byte("ca2"), Cert: []byte("cert2"), Key: []byte("key2")}}
			facts := &Facts{OS: OSRelease{ID: "debian", VersionID: "12"}, Arch: "amd64", Files: map[string]string{},
				Packages: map[string]string{}, Units: map[string]string{"docker.service": "active"}, UnitFiles: map[string]string{}, Commands: map[string]string{}}
			fam, _ := FamilyOf(facts.OS)
			dfs, _ := DaemonFiles(cfg, fam)
			for _, f := range dfs {
				facts.Files[f.Path] = f.Sum()
			}
			if tc.settings {
				facts.Files[PathDaemonJSON] = strings.Repeat("0", 64)
			}
			rc := &recordComm{}
			tgt := &Target{Comm: rc, Facts: facts, Config: cfg, Log: discard}
			for _, id := range []string{"engine.tls", "engine.config"} {
				s, _ := StepByID(id)
				done, err := s.Check(context.Background(), tgt)
				if err != nil {
					t.Fatal(err)
				}
				if done {
					t.Fatalf("%s: done with a restart pending", id)
				}
				if err := s.Apply(context.Background(), tgt); err != nil {
					t.Fatalf("%s: %v", id, err)
				}
			}
			if n := rc.count("systemctl restart docker.service"); n != 1 {
				t.Errorf("engine restarted %d times, want once:\n%s", n, strings.Join(rc.cmds, "\n"))
			}
			s, _ := StepByID("engine.config")
			if done, _ := s.Check(context.Background(), tgt); !done {
				t.Error("engine.config not done after the restart")
			}
		})
	}
}

var discard = slog.New(slog.DiscardHandler)

// recordComm records commands; systemd says every unit is active.
type recordComm struct{ cmds []string }

func (c *recordComm) Run(ctx context.Context, cmd string, stdin io.Reader) ([]byte, error) {
	c.cmds = append(c.cmds, cmd)
	switch {
	case strings.HasPrefix(cmd, "mktemp -d"):
		return []byte("/tmp/provision.abc\n"), nil
	case strings.Contains(cmd, "ActiveState"):
		return []byte("active\n"), nil
	}
	return nil, nil
}

func (c *recordComm) Upload(ctx context.Context, path string, content io.Reader, mode fs.FileMode) error {
	return nil
}

func (c *recordComm) Download(ctx context.Context, path string) ([]byte, error) { return nil, nil }

func (c *recordComm) count(sub string) int {
	n := 0
	for _, cmd := range c.cmds {
		n += strings.Count(cmd, sub)
	}
	return n
}

// TestDrainReasons: the steps' records decide the drain. New certificates
// always drain; engine.install only when the engine package itself changes
// (not when it only adds another step's packages); other steps never.
func TestDrainReasons(t *testing.T) {
	cfg := &Config{Engine: spec.DefaultEngine()}
	installed := &Target{Config: cfg, Facts: &Facts{Engine: "20.10.24", Packages: map[string]string{enginePackage(cfg): "20.10.24+dfsg1-1+deb12u1"}}}
	fresh := &Target{Config: cfg, Facts: &Facts{Packages: map[string]string{}}}
	for _, c := range []struct {
		ids  []string
		t    *Target
		want []string
	}{
		{[]string{"engine.config", "harden.ssh"}, installed, nil},
		{[]string{"engine.tls"}, installed, []string{"engine restart for new certificates"}},
		{[]string{"engine.install"}, installed, nil},
		{[]string{"engine.install"}, fresh, []string{"engine upgrade"}},
		{[]string{"engine.install", "engine.tls", "no.such"}, fresh, []string{"engine upgrade", "engine restart for new certificates"}},
	} {
		if got := DrainReasons(c.ids, c.t); !slices.Equal(got, c.want) {
			t.Errorf("%v: %q, want %q", c.ids, got, c.want)
		}
	}
}
