package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provision/provision/drivers"
)

func TestSaveLoadBackup(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	s, err := Open(dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.ClusterID) != 16 || st.Version != Version {
		t.Fatalf("new state %+v", st)
	}
	st.Name = "demo"
	st.Put(&Machine{Machine: drivers.Machine{Name: "demo-worker-1", ID: "abc", Driver: "local"}, Role: "worker", Status: StatusReady})
	st.Put(&Machine{Machine: drivers.Machine{Name: "demo-manager-1", ID: "def", Driver: "local"}, Role: "manager", Status: StatusReady})
	if err := s.Save(st); err != nil {
		t.Fatal(err)
	}
	st.Remove("demo-worker-1")
	if err := s.Save(st); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got.ClusterID != st.ClusterID || len(got.Machines) != 1 || got.Machines[0].Name != "demo-manager-1" {
		t.Fatalf("loaded %+v", got)
	}
	bak, err := os.ReadFile(filepath.Join(dir, backup))
	if err != nil || !strings.Contains(string(bak), "demo-worker-1") {
		t.Fatalf("backup does not hold the previous copy: %v", err)
	}
	for _, f := range []string{stateFile, backup} {
		fi, _ := os.Stat(filepath.Join(dir, f))
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v", f, fi.Mode())
		}
	}
	if tmp, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(tmp) > 0 {
		t.Errorf("temp files left: %v", tmp)
	}
}

func TestCorruptAndNewerRefused(t *testing.T) {
	for name, content := range map[string]string{
		"corrupt": `{"version": 1, "cluster_id": "x", "machines": [`,
		"newer":   `{"version": 99, "cluster_id": "x"}`,
		"garbage": "\x00\x01",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, stateFile)
			os.WriteFile(path, []byte(content), 0o600)
			s, err := Open(dir, "test")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			_, err = s.Load()
			if err == nil || !strings.Contains(err.Error(), "left untouched") {
				t.Fatalf("Load: %v", err)
			}
			if b, _ := os.ReadFile(path); string(b) != content {
				t.Fatal("state file changed")
			}
		})
	}
}

// TestLockHeldByAnotherProcess takes the lock in a child process (flock
// locks are per open file, so a second process is the honest test) and
// checks that Open fails at once naming it.
func TestLockHeldByAnotherProcess(t *testing.T) {
	if os.Getenv("STATE_LOCK_CHILD") != "" {
		s, err := Open(os.Getenv("STATE_LOCK_CHILD"), "provision apply child.hcl")
		if err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString("locked\n")
		os.Stdin.Read(make([]byte, 1)) // hold until the parent closes stdin
		s.Close()
		os.Exit(0)
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockHeldByAnotherProcess$")
	cmd.Env = append(os.Environ(), "STATE_LOCK_CHILD="+dir)
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	if _, err := out.Read(buf); err != nil || string(buf) != "locked\n" {
		t.Fatalf("child: %q %v", buf, err)
	}
	_, err := Open(dir, "second")
	var le *LockedError
	if !errors.As(err, &le) || le.Holder == nil || le.Holder.PID != cmd.Process.Pid || !strings.Contains(err.Error(), "child.hcl") {
		t.Fatalf("Open while locked: %v", err)
	}
	// Kill the holder: the kernel releases the lock, and the next Open
	// reports the dead holder as stale.
	cmd.Process.Kill()
	cmd.Wait()
	stdin.Close()
	s, err := Open(dir, "third")
	if err != nil {
		t.Fatalf("Open after the holder died: %v", err)
	}
	defer s.Close()
	if h, ok := s.Stale(); !ok || h.PID != cmd.Process.Pid {
		t.Errorf("stale holder not reported: %+v %v", h, ok)
	}
}

func TestClearRemovesEverything(t *testing.T) {
	root := t.TempDir()
	dir := DefaultDir(filepath.Join(root, "c.hcl"), "demo")
	s, err := Open(dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	st, _ := s.Load()
	s.Save(st)
	if _, _, err := EnsureSSHKey(dir); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "pki"), 0o700)
	if err := s.Clear(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := os.Stat(filepath.Join(root, ".provision")); !os.IsNotExist(err) {
		t.Errorf("state directory left behind: %v", err)
	}
}

func TestSSHKey(t *testing.T) {
	dir := t.TempDir()
	s1, pub1, err := EnsureSSHKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, pub2, err := EnsureSSHKey(dir)
	if err != nil || pub1 != pub2 || s1 == nil || !strings.HasPrefix(pub1, "ssh-ed25519 ") {
		t.Fatalf("key not stable: %v %q %q", err, pub1, pub2)
	}
	fi, _ := os.Stat(filepath.Join(dir, "ssh", "id_ed25519"))
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v", fi.Mode())
	}
	os.Chmod(filepath.Join(dir, "ssh", "id_ed25519"), 0o644)
	if _, _, err := EnsureSSHKey(dir); err == nil {
		t.Error("world-readable key accepted")
	}
}

// TestLockHolderGoneButHeld: the lock is held (here by this process's own
// descriptor) while the holder it names has exited: the error says so and
// how to find the process, instead of "wait for it to finish".
func TestLockHolderGoneButHeld(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, "first")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	b, _ := json.Marshal(Holder{PID: dead.Process.Pid, Host: host, Command: "provision apply x.hcl"})
	if err := os.WriteFile(filepath.Join(dir, lockFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Open(dir, "second")
	var le *LockedError
	if !errors.As(err, &le) || !le.HolderGone || !strings.Contains(err.Error(), "no longer running") || !strings.Contains(err.Error(), fmt.Sprint(dead.Process.Pid)) {
		t.Fatalf("Open: %v (%+v)", err, le)
	}
	// A live holder on this host is not "gone".
	b, _ = json.Marshal(Holder{PID: os.Getpid(), Host: host})
	os.WriteFile(filepath.Join(dir, lockFile), b, 0o600)
	if _, err = Open(dir, "third"); !errors.As(err, &le) || le.HolderGone {
		t.Fatalf("live holder: %v", err)
	}
}
