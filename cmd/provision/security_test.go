package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/comm/commtest"
	"github.com/provision/provision/provision/state"
)

// TestMain lets the tests run this test binary as the provision binary:
// with PROVISION_TEST_MAIN=1 it is main() itself (flags, exit codes,
// stderr and all).
func TestMain(m *testing.M) {
	if os.Getenv("PROVISION_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// bin runs the provision binary (this test binary as main) and returns its
// exit code and output.
func bin(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), "PROVISION_TEST_MAIN=1"), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String(), errb.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, out.String(), errb.String()
}

// TestSensitiveThroughCLI is issue 12's secrets class through the binary:
// a variable declared sensitive, from a -var, a var-file or the
// environment, does not appear in diagnostics, plans (text and JSON),
// progress, the final error or the debug log, even where only a value
// derived from it would be printed.
func TestSensitiveThroughCLI(t *testing.T) {
	noCloud(t)
	dir := t.TempDir()
	const secret = "Sock-Secret-7f3a9"
	sock := "/nonexistent/" + secret + ".sock"
	spec := filepath.Join(dir, "s.hcl")
	os.WriteFile(spec, []byte(`variable "sock" {
  sensitive = true
}
name = "sens"
driver "local" {
  docker_host = "unix://${var.sock}"
}
managers { count = 1 }
logging {
  driver  = "journald"
  options = { tag = "t-${upper(var.sock)}" }
}
`), 0o644)
	bad := filepath.Join(dir, "bad.hcl")
	os.WriteFile(bad, []byte("variable \"sock\" {\n  sensitive = true\n}\nname = \"sens\"\nmanagers { count = 1 }\nprune { schedule = \"${var.sock} 03:00\" }\n"), 0o644)
	varFile := filepath.Join(dir, "s.tfvars")
	os.WriteFile(varFile, []byte("sock = \""+sock+"\"\n"), 0o644)

	// A state that recorded an apply with another tag: plan shows the
	// setting's change.
	sd := filepath.Join(dir, "state")
	os.MkdirAll(sd, 0o700)
	st := state.State{Version: state.Version, ClusterID: "0123456789abcdef", Name: "sens",
		Settings: map[string]string{"logging": `{"driver":"journald","journald_max_use":"500M","options":{"tag":"t-OLD-` + strings.ToUpper(secret) + `"}}`}}
	m := &state.Machine{Role: "manager", Pool: "manager", Index: 1, Status: state.StatusReady}
	m.Machine = drivers.Machine{Name: "sens-manager-1", ID: "c1", Driver: "local", Address: "192.0.2.1"}
	st.Machines = []*state.Machine{m}
	b, _ := json.Marshal(st)
	os.WriteFile(filepath.Join(sd, "state.json"), b, 0o600)

	logFile := filepath.Join(dir, "debug.log")
	runs := []struct {
		env  []string
		args []string
		want int
	}{
		{nil, []string{"validate", bad, "-var", "sock=" + sock}, exitUsage},
		{nil, []string{"validate", bad, "-var-file", varFile}, exitUsage},
		{[]string{"PROVISION_VAR_sock=" + sock}, []string{"validate", bad}, exitUsage},
		{nil, []string{"plan", spec, "--state-dir", sd, "-var", "sock=" + sock, "--log-level", "debug", "--log-file", logFile}, exitOK},
		{nil, []string{"plan", spec, "--state-dir", sd, "-var-file", varFile, "--json"}, exitOK},
		{nil, []string{"apply", spec, "--state-dir", sd, "-var", "sock=" + sock, "--auto-approve", "--log-level", "debug", "--log-file", logFile}, exitError},
	}
	var all strings.Builder
	for _, r := range runs {
		code, out, errs := bin(t, r.env, r.args...)
		if code != r.want {
			t.Errorf("%v: exit %d, want %d\n%s%s", r.args[:2], code, r.want, out, errs)
		}
		all.WriteString(out + errs)
		for _, s := range []string{secret, strings.ToUpper(secret), strings.ToLower(secret)} {
			if strings.Contains(out+errs, s) {
				t.Errorf("%v shows the secret:\n%s%s", r.args[:2], out, errs)
			}
		}
	}
	logb, err := os.ReadFile(logFile)
	if err != nil || len(logb) == 0 {
		t.Fatalf("debug log: %v", err)
	}
	if strings.Contains(strings.ToLower(string(logb)), strings.ToLower(secret)) {
		t.Errorf("the debug log shows the secret:\n%s", logb)
	}
	// The places the secret would have been say so instead.
	for _, want := range []string{"options.tag: (sensitive)", "(sensitive)", "uses a sensitive variable"} {
		if !strings.Contains(all.String(), want) {
			t.Errorf("no %q in the output:\n%s", want, all.String())
		}
	}
	if !strings.Contains(string(logb), "(sensitive)") {
		t.Errorf("the debug log never mentions the redacted value: is the test exercising it?\n%s", logb)
	}
}

// TestLogFileMode: --log-file is created 0600, and an existing file
// others could read is tightened to 0600 before anything is written.
func TestLogFileMode(t *testing.T) {
	dir := t.TempDir()
	fresh := filepath.Join(dir, "fresh.log")
	old := filepath.Join(dir, "old.log")
	os.WriteFile(old, []byte("previous run\n"), 0o644)
	os.Chmod(old, 0o644)
	for _, f := range []string{fresh, old} {
		if code, _, errs := bin(t, nil, "validate", "../../examples/local.hcl", "--log-file", f); code != 0 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		fi, err := os.Stat(f)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v (%v), want 0600", f, fi.Mode(), err)
		}
	}
	if b, _ := os.ReadFile(old); !strings.HasPrefix(string(b), "previous run\n") {
		t.Error("the existing log was not appended to")
	}
}

// TestExitCodes: bad flags, bad arguments and an unusable --state-dir are
// usage errors (2); a corrupt state is refused (4) and left as it was.
func TestExitCodes(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	corrupt := t.TempDir()
	content := `{"version": 1, "cluster_id": "0123456789abcdef", "machines": [null]}`
	os.WriteFile(filepath.Join(corrupt, "state.json"), []byte(content), 0o600)
	empty := t.TempDir()
	os.WriteFile(filepath.Join(empty, "state.json"), []byte(`{"version": 1, "cluster_id": "0123456789abcdef", "machines": [{}]}`), 0o600)
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"plan", "--no-such-flag"}, exitUsage, "unknown flag"},
		{[]string{"plan"}, exitUsage, "arg"},
		{[]string{"validate", "a", "b"}, exitUsage, "arg"},
		{[]string{"frobnicate"}, exitUsage, "unknown command"},
		{[]string{"help", "nosuch"}, exitUsage, "unknown help topic"},
		{[]string{"help", "rotate", "nosuch"}, exitUsage, "unknown help topic"},
		{[]string{"env", "../../examples/local.hcl", "--shell", "tcsh"}, exitUsage, "--shell"},
		{[]string{"plan", "../../examples/local.hcl", "--state-dir", file}, exitUsage, "--state-dir"},
		{[]string{"plan", "../../examples/local.hcl", "--state-dir", filepath.Join(file, "sub")}, exitUsage, "--state-dir"},
		{[]string{"plan", "../../examples/local.hcl", "--state-dir", corrupt}, exitRefused, "machines[0] is null"},
		{[]string{"plan", "../../examples/local.hcl", "--state-dir", empty}, exitRefused, "machines[0]: no name"},
	} {
		code, out, errs := bin(t, nil, c.args...)
		if code != c.code || !strings.Contains(out+errs, c.want) {
			t.Errorf("%v: exit %d, want %d with %q\n%s%s", c.args, code, c.code, c.want, out, errs)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(corrupt, "state.json")); string(b) != content {
		t.Error("the corrupt state file was changed")
	}
}

// TestEnvOutput: DOCKER_HOST brackets an IPv6 address, and every value is
// quoted for the shell it is printed for: a shell evaluating the output
// gets the values back exactly, spaces, quotes and all.
func TestEnvOutput(t *testing.T) {
	if got := dockerHost("fd00::5"); got != "tcp://[fd00::5]:2376" {
		t.Errorf("IPv6 DOCKER_HOST %q", got)
	}
	if got := dockerHost("192.0.2.7"); got != "tcp://192.0.2.7:2376" {
		t.Errorf("IPv4 DOCKER_HOST %q", got)
	}
	certDir := `/home/op/my clusters/it's "prod" $HOME \n\`
	host := dockerHost("fd00::5")
	for shell, run := range map[string][]string{"sh": {"/bin/sh", "-c"}, "fish": {"fish", "-c"}} {
		if _, err := exec.LookPath(run[0]); err != nil {
			t.Logf("%s not installed: its output is checked by form only", run[0])
			if shell == "fish" && !strings.Contains(envScript("fish", host, certDir, "n", "c.hcl"), `'/home/op/my clusters/it\'s "prod" $HOME \\n\\'`) {
				t.Errorf("fish quoting:\n%s", envScript("fish", host, certDir, "n", "c.hcl"))
			}
			continue
		}
		script := envScript(shell, host, certDir, "demo-manager-1", "my spec.hcl") + `printf '%s|%s|%s' "$DOCKER_HOST" "$DOCKER_TLS_VERIFY" "$DOCKER_CERT_PATH"`
		out, err := exec.Command(run[0], append(run[1:], script)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s\n%s", shell, err, script, out)
		}
		if want := host + "|1|" + certDir; string(out) != want {
			t.Errorf("%s evaluated\n%s\nto %q, want %q", shell, script, out, want)
		}
	}
}

// TestSSHExitStatus: `provision ssh NODE -- CMD` exits with the remote
// command's status, whatever it is (2, 3 and 4 included), and with 255
// when provision itself fails: an unknown node, a locked or corrupt state,
// a bad spec, a host that cannot be reached.
func TestSSHExitStatus(t *testing.T) {
	dir := t.TempDir()
	sd := filepath.Join(dir, "state")
	signer, _, err := state.EnsureSSHKey(sd)
	if err != nil {
		t.Fatal(err)
	}
	srv := commtest.Start(t, signer.PublicKey())
	st := state.State{Version: state.Version, ClusterID: "0123456789abcdef", Name: "demo"}
	m := &state.Machine{Role: "manager", Pool: "manager", Index: 1, Status: state.StatusReady}
	m.Machine = drivers.Machine{Name: "demo-manager-1", ID: "c1", Driver: "local", Address: "127.0.0.1",
		SSH: drivers.SSHEndpoint{User: "admin", Port: srv.Port(), HostKey: commtest.Authorized(srv.HostKey())}}
	gone := &state.Machine{Role: "worker", Pool: "worker", Index: 1, Status: state.StatusReady}
	gone.Machine = drivers.Machine{Name: "demo-worker-1", ID: "c2", Driver: "local", Address: "127.0.0.1",
		SSH: drivers.SSHEndpoint{User: "admin", Port: 1, HostKey: commtest.Authorized(srv.HostKey())}}
	st.Machines = []*state.Machine{m, gone}
	b, _ := json.Marshal(st)
	os.WriteFile(filepath.Join(sd, "state.json"), b, 0o600)
	spec := filepath.Join(dir, "demo.hcl")
	os.WriteFile(spec, []byte("name = \"demo\"\nmanagers { count = 1 }\nworkers { count = 1 }\nssh { connect_timeout = \"2s\" }\n"), 0o644)
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"ssh", spec, "demo-manager-1", "--", "true"}, 0},
		{[]string{"ssh", spec, "demo-manager-1", "--", "exit", "2"}, 2},
		{[]string{"ssh", spec, "demo-manager-1", "--", "exit", "3"}, 3},
		{[]string{"ssh", spec, "demo-manager-1", "--", "exit", "4"}, 4},
		{[]string{"ssh", spec, "demo-manager-1", "--", "exit", "130"}, 130},
		{[]string{"ssh", spec, "demo-manager-1", "--", "kill", "-9", "$$"}, 137},
		{[]string{"ssh", spec, "no-such-node", "--", "true"}, exitSSH},
		{[]string{"ssh", spec}, exitSSH},
		{[]string{"ssh", spec, "demo-manager-1", "--no-such-flag"}, exitSSH},
		{[]string{"ssh", "../../provision/spec/testdata/invalid/zero-managers.hcl", "demo-manager-1", "--", "true"}, exitSSH},
	} {
		args := append([]string{c.args[0], "--state-dir", sd}, c.args[1:]...)
		code, out, errs := bin(t, nil, args...)
		if code != c.code {
			t.Errorf("%v: exit %d, want %d\n%s%s", c.args[2:], code, c.code, out, errs)
		}
	}
	// A host that does not answer: provision's failure, 255, quickly.
	code, _, errs := bin(t, nil, "ssh", "--state-dir", sd, spec, "demo-worker-1", "--", "true")
	if code != exitSSH || !strings.Contains(errs, "demo-worker-1") {
		t.Errorf("unreachable host: exit %d\n%s", code, errs)
	}
}
