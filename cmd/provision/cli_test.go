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
			var p struct {
				Summary struct{ Create int }
			}
			if err := json.Unmarshal([]byte(jout), &p); err != nil || p.Summary.Create == 0 {
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
