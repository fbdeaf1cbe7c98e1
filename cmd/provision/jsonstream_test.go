package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provision/provision/provision/apply/eventtest"
	"github.com/provision/provision/provision/state"
)

// failedStream checks that out is a valid --json stream of command that
// failed: every line an event, the summary last, carrying an error that
// contains want.
func failedStream(t *testing.T, out, command, want string) {
	t.Helper()
	_, evs, err := eventtest.Check([]byte(out), command)
	if err != nil {
		t.Fatalf("%s --json: %v\nstdout:\n%s", command, err, out)
	}
	sum := evs[len(evs)-1].Summary
	if sum.Error == "" || !strings.Contains(sum.Error, want) {
		t.Fatalf("%s --json: summary error %q, want it to name %q", command, sum.Error, want)
	}
}

// TestJSONFailuresAreEvents: with --json, a command that stops before it has
// a plan (an invalid spec, the state locked by another run, a corrupt state,
// a refusal) still writes NDJSON on stdout, ending with a summary that carries
// the error, and exits with the documented code. stdout was empty: a consumer
// reading the events saw nothing at all.
func TestJSONFailuresAreEvents(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.hcl")
	os.WriteFile(bad, []byte("name = \"BAD\"\nmanagers { count = 1 }\n"), 0o644)
	good := filepath.Join(dir, "good.hcl")
	os.WriteFile(good, []byte("name = \"js\"\nmanagers { count = 1 }\n"), 0o644)

	for _, c := range [][]string{{"plan", bad}, {"apply", bad, "--auto-approve"}, {"destroy", bad, "--auto-approve"}, {"rotate", "certs", bad}, {"rotate", "ca", bad}} {
		command := c[0]
		if command == "rotate" {
			command += " " + c[1]
		}
		out, _, err := runCLI(t, append(c, "--json", "--state-dir", t.TempDir())...)
		if code(err) != exitUsage {
			t.Errorf("%s: code %d, want %d", command, code(err), exitUsage)
		}
		failedStream(t, out, command, "bad.hcl:1:")
	}

	// Locked by another run: exit 3, the holder named in the summary.
	sd := t.TempDir()
	st, err := state.Open(sd, "provision apply other.hcl")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{{"apply", good, "--auto-approve"}, {"destroy", good, "--auto-approve"}, {"rotate", "certs", good}} {
		command := c[0]
		if command == "rotate" {
			command += " " + c[1]
		}
		out, _, err := runCLI(t, append(c, "--json", "--state-dir", sd)...)
		if code(err) != exitLocked {
			t.Errorf("%s: code %d, want %d", command, code(err), exitLocked)
		}
		failedStream(t, out, command, "other.hcl")
	}
	st.Close()

	// A stale lock taken over (a warning of the log, before any plan) and a
	// corrupt state refused: the warning is an event, then the summary.
	sd = t.TempDir()
	os.WriteFile(filepath.Join(sd, "state.lock"), []byte(`{"pid":2147483000,"host":"elsewhere","command":"provision apply dead.hcl","since":"2026-01-01T00:00:00Z"}`), 0o600)
	os.WriteFile(filepath.Join(sd, "state.json"), []byte(`{"version": 7`), 0o600)
	out, _, err := runCLI(t, "apply", good, "--json", "--auto-approve", "--state-dir", sd)
	if code(err) != exitRefused {
		t.Errorf("corrupt state: code %d, want %d", code(err), exitRefused)
	}
	failedStream(t, out, "apply", "corrupt")
	if !strings.Contains(out, `"kind":"warning"`) || !strings.Contains(out, "stale state lock") {
		t.Errorf("the stale lock taken over is no warning event:\n%s", out)
	}
}
