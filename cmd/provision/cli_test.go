package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/provision/provision/provision/apply"
	"github.com/provision/provision/provision/apply/eventtest"
	"github.com/provision/provision/provision/state"
)

// runCLI runs the command tree in-process.
func runCLI(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := newRoot()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(normalizeArgs(args))
	err = root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

func code(err error) int {
	var ce *codeError
	if errors.As(err, &ce) {
		return ce.code
	}
	if err != nil {
		return exitError
	}
	return exitOK
}

// noCloud makes sure no SDK reaches for credentials or instance metadata:
// plan must work with none.
func noCloud(t *testing.T) {
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "DIGITALOCEAN_TOKEN", "AZURE_SUBSCRIPTION_ID"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
}

// TestPlanEveryExample is issue 3's "plan on every file in examples/ works
// with no credentials".
func TestPlanEveryExample(t *testing.T) {
	noCloud(t)
	files, _ := filepath.Glob("../../examples/*.hcl")
	if len(files) < 3 {
		t.Fatalf("examples: %v", files)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			sd := filepath.Join(t.TempDir(), "state")
			out, errs, err := runCLI(t, "plan", f, "--state-dir", sd, "--no-color")
			if err != nil {
				t.Fatalf("plan %s: %v\n%s\n%s", f, err, out, errs)
			}
			if !strings.Contains(out, "to create") {
				t.Errorf("plan output:\n%s", out)
			}
			jout, _, err := runCLI(t, "plan", f, "--state-dir", sd, "--json")
			if err != nil {
				t.Fatal(err)
			}
			evs := checkEvents(t, jout, "plan")
			var p struct {
				Plan struct {
					Summary struct{ Create int }
				}
			}
			if err := json.Unmarshal(evs[0], &p); err != nil || p.Plan.Summary.Create == 0 {
				t.Errorf("json plan: %v %s", err, jout)
			}
			if _, err := os.Stat(filepath.Join(sd, "state.json")); err == nil {
				t.Errorf("plan wrote state")
			}
		})
	}
}

func TestValidateExitCodes(t *testing.T) {
	out, _, err := runCLI(t, "validate", "../../examples/local.hcl")
	if err != nil || !strings.Contains(out, "valid (cluster \"demo\", 3 machines)") {
		t.Fatalf("%v %s", err, out)
	}
	_, errs, err := runCLI(t, "validate", "../../provision/spec/testdata/invalid/zero-managers.hcl", "--no-color")
	if code(err) != exitUsage || !strings.Contains(errs, "zero-managers.hcl:2:20") {
		t.Fatalf("code %d, stderr:\n%s", code(err), errs)
	}
	_, errs, err = runCLI(t, "validate", "../../examples/local.hcl", "-var", "workers=-1")
	if code(err) != exitUsage || !strings.Contains(errs, "Negative count") {
		t.Fatalf("code %d, stderr:\n%s", code(err), errs)
	}
}

func TestStateLockedExitCode(t *testing.T) {
	sd := t.TempDir()
	os.WriteFile(filepath.Join(sd, "state.json"), []byte(`{"version": 7`), 0o600)
	_, _, err := runCLI(t, "plan", "../../examples/local.hcl", "--state-dir", sd)
	if code(err) != exitRefused || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt state: code %d: %v", code(err), err)
	}
}

// TestLocksFitCommands: while another process holds the state lock (an
// apply), plan, status, env and ssh still run; apply and destroy fail with
// exit 3 naming the holder, whose recorded command has no flag values.
func TestLocksFitCommands(t *testing.T) {
	sd := t.TempDir()
	spec := filepath.Join(t.TempDir(), "c.hcl")
	os.WriteFile(spec, []byte("name = \"lk\"\nmanagers { count = 1 }\n"), 0o644)
	root := newRoot()
	root.SetArgs(normalizeArgs([]string{"apply", spec, "--state-dir", sd, "-var", "secret=hunter2", "--auto-approve"}))
	var holderCmd string
	apply, _, err := root.Find([]string{"apply"})
	if err != nil {
		t.Fatal(err)
	}
	apply.RunE = func(cmd *cobra.Command, args []string) error {
		holderCmd = holder(cmd)
		return nil
	}
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(holderCmd, "hunter2") || !strings.Contains(holderCmd, "provision apply") || !strings.Contains(holderCmd, "--var") || !strings.Contains(holderCmd, "--auto-approve") {
		t.Fatalf("holder %q", holderCmd)
	}
	st, err := state.Open(sd, holderCmd)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, errs, err := runCLI(t, "plan", spec, "--state-dir", sd, "--no-color"); err != nil {
		t.Fatalf("plan while locked: %v\n%s", err, errs)
	}
	if _, errs, err := runCLI(t, "status", spec, "--state-dir", sd); code(err) == exitLocked {
		t.Fatalf("status while locked: %v\n%s", err, errs)
	}
	for _, c := range [][]string{{"apply", spec, "--auto-approve"}, {"destroy", spec, "--auto-approve"}, {"backup", spec}} {
		_, _, err := runCLI(t, append(c, "--state-dir", sd)...)
		if code(err) != exitLocked || !strings.Contains(err.Error(), "provision apply") || strings.Contains(err.Error(), "hunter2") {
			t.Fatalf("%s while locked: code %d: %v", c[0], code(err), err)
		}
	}
}

// checkEvents checks --json output with eventtest and returns its lines.
func checkEvents(t *testing.T, out, command string) []json.RawMessage {
	t.Helper()
	raws, _, err := eventtest.Check([]byte(out), command)
	if err != nil {
		t.Fatalf("%s --json: %v\n%s", command, err, out)
	}
	return raws
}

// TestSummaryHeldBack: hosts a rolling change did not reach because an
// earlier batch failed are named apart from the host that failed, and the
// next command is the apply that finishes them.
func TestSummaryHeldBack(t *testing.T) {
	var buf bytes.Buffer
	next := summary(&buf, apply.Stats{Changed: []string{"c-manager-1"}, Failed: []string{"c-manager-2"}, HeldBack: []string{"c-manager-3", "c-worker-1"}}, "c.hcl", errors.New("x"))
	out := buf.String()
	for _, want := range []string{"1 changed, 0 unchanged, 1 failed, 2 held back hosts", "Failed: c-manager-2.", "Held back, untouched, because a rolling batch before them failed: c-manager-3, c-worker-1.", "provision apply c.hcl"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if next != "provision apply c.hcl" {
		t.Errorf("next %q", next)
	}
}

// TestDestroyWithoutState: destroy where no state was ever written says
// there is nothing to destroy (it printed a plan of cluster "" and
// "Destroyed cluster"), changes nothing and leaves no directory behind.
func TestDestroyWithoutState(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "c.hcl")
	os.WriteFile(f, []byte("name = \"gone\"\nmanagers { count = 3 }\n"), 0o644)
	_, stderr, err := runCLI(t, "destroy", f, "--auto-approve")
	if err != nil || !strings.Contains(stderr, `Nothing to destroy: no state of cluster "gone"`) || strings.Contains(stderr, "Destroyed") {
		t.Fatalf("destroy: %v\n%s", err, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, ".provision", "gone")); err == nil {
		t.Errorf("destroy left a state directory")
	}
	// --json: a stream like every other, the (empty) plan first.
	out, _, err := runCLI(t, "destroy", f, "--auto-approve", "--json")
	if err != nil {
		t.Fatal(err)
	}
	checkEvents(t, out, "destroy")
}

// TestNoStateIsNoAnswer: status of a cluster never applied from this state
// directory (a wrong --state-dir, the wrong spec) printed an empty table, or
// a JSON document with a cluster ID made up on the spot, and exited 0; unlock
// made the cluster's admin SSH key in a state directory it does not lock.
// Both now fail with exit 2 and leave nothing behind.
func TestNoStateIsNoAnswer(t *testing.T) {
	spec := filepath.Join(t.TempDir(), "c.hcl")
	os.WriteFile(spec, []byte("name = \"ns\"\nmanagers { count = 1 }\n"), 0o644)
	sd := filepath.Join(t.TempDir(), "state")
	for _, c := range [][]string{{"status"}, {"status", "--json"}, {"status", "--prometheus"}, {"unlock"}} {
		out, _, err := runCLI(t, append([]string{c[0], spec, "--state-dir", sd}, c[1:]...)...)
		if code(err) != exitUsage || out != "" {
			t.Errorf("%v without state: code %d, stdout %q", c, code(err), out)
		}
	}
	if _, err := os.Stat(sd); err == nil {
		t.Errorf("a state directory was left behind")
	}
}

// TestUnknownSubcommandIsUsageError: a misspelt subcommand of a command that
// groups others (`rotate cert`, `lb snyc`, `completion bsh`) printed help and
// exited 0, as if the rotation had run; it is a usage error now. Called
// alone, such a command still prints its help.
func TestUnknownSubcommandIsUsageError(t *testing.T) {
	for _, args := range [][]string{{"rotate", "cert", "c.hcl"}, {"lb", "snyc", "c.hcl"}, {"completion", "bsh"}, {"nosuch"}} {
		_, _, err := runCLI(t, args...)
		if code(err) != exitUsage || err == nil || !strings.Contains(err.Error(), "unknown command") {
			t.Errorf("%v: code %d, err %v", args, code(err), err)
		}
	}
	for _, args := range [][]string{{"rotate"}, {"lb"}, {"completion"}, {}} {
		out, _, err := runCLI(t, args...)
		if err != nil || !strings.Contains(out, "Usage:") {
			t.Errorf("%v: %v\n%s", args, err, out)
		}
	}
}

// TestApproveWithoutTerminal: the refusal reads as a sentence ("This plan
// replaces or removes machines needs confirmation" did not) and is exit 4.
func TestApproveWithoutTerminal(t *testing.T) {
	cmd := &cobra.Command{}
	cmd.SetIn(strings.NewReader("yes\n"))
	err := approve(cmd, false, "This plan replaces or removes machines")
	if code(err) != exitRefused || err.Error() != "This plan replaces or removes machines: that needs a confirmation, and there is no terminal to ask on; re-run with --auto-approve" {
		t.Fatalf("code %d: %v", code(err), err)
	}
	if err := approve(cmd, true, "x"); err != nil {
		t.Fatal(err)
	}
}

// TestParallelismFlagBounds: --parallelism outside 1-256 was taken (1000,
// past the descriptor cap) or ignored in silence (0, -5) and the apply ran;
// it is a usage error before anything is read.
func TestParallelismFlagBounds(t *testing.T) {
	for _, v := range []string{"-5", "0", "257", "1000"} {
		out, _, err := runCLI(t, "apply", "/nonexistent/c.hcl", "--parallelism", v, "--json")
		if code(err) != exitUsage || !strings.Contains(err.Error(), "--parallelism") {
			t.Errorf("--parallelism %s: code %d, err %v", v, code(err), err)
		}
		checkEvents(t, out, "apply") // with --json, the refusal is a summary
	}
}

// TestDurationFlagsPositive: --timeout 0 made rotate swarm-ca fail at once
// after starting the rotation; --resync -1s was ignored in silence. Both
// are usage errors before anything is read.
func TestDurationFlagsPositive(t *testing.T) {
	for _, args := range [][]string{{"rotate", "swarm-ca", "/nonexistent/c.hcl", "--timeout", "0s"}, {"rotate", "swarm-ca", "/nonexistent/c.hcl", "--timeout", "-1m"}, {"lb", "sync", "/nonexistent/c.hcl", "--resync", "-1s"}} {
		_, _, err := runCLI(t, args...)
		if code(err) != exitUsage || !strings.Contains(err.Error(), "above zero") {
			t.Errorf("%v: code %d, err %v", args, code(err), err)
		}
	}
}
