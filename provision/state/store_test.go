package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
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

// TestMissingStateWithBackupRefused: a state file lost or moved away while
// its backup stays is refused, not read as a new cluster (which would run
// beside the recorded one and overwrite the backup, the last record of it).
func TestMissingStateWithBackupRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	s, err := Open(dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, _ := s.Load()
	st.Name = "demo"
	for i := 0; i < 2; i++ {
		if err := s.Save(st); err != nil {
			t.Fatal(err)
		}
	}
	bak, _ := os.ReadFile(filepath.Join(dir, backup))
	if err := os.Remove(filepath.Join(dir, stateFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(); err == nil || !strings.Contains(err.Error(), "is missing, but state.json.bak is there") {
		t.Fatalf("want a refusal naming the backup, got %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, backup)); string(after) != string(bak) {
		t.Errorf("the backup changed")
	}
	// Clear removes the backup before the state: cut short, it leaves the
	// state (destroy runs again), never a lone backup.
	if err := os.WriteFile(filepath.Join(dir, stateFile), bak, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Clear(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(); err != nil {
		t.Errorf("after Clear: %v", err)
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

// TestMigrateV1: a version 1 state loads as version 2 with everything kept;
// its records have no made_with, generation or labels (plan upgrades them),
// and once saved an older provision refuses the file.
func TestMigrateV1(t *testing.T) {
	dir := t.TempDir()
	b, err := os.ReadFile("testdata/v1.json")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, stateFile), b, 0o600)
	s, err := Open(dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	m := st.Machine("demo-manager-1")
	if st.Version != 2 || m == nil || m.SpecHash != "5d1b3f1c2e0a9b77" || m.NodeID == "" || m.MadeWith != nil || m.Gen() != 1 || m.Labels != nil || st.Swarm.ID == "" {
		t.Fatalf("migrated %+v %+v", st, m)
	}
	if err := s.Save(st); err != nil {
		t.Fatal(err)
	}
	saved, _ := os.ReadFile(filepath.Join(dir, stateFile))
	if !strings.Contains(string(saved), `"version": 2`) {
		t.Fatalf("saved version:\n%s", saved)
	}
}

// TestReadOnlyTakesNoLock: readers work while the lock is held, see the
// saved state, never write, and create nothing.
func TestReadOnlyTakesNoLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	w, err := Open(dir, "provision apply")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	st, _ := w.Load()
	st.Name = "demo"
	if err := w.Save(st); err != nil {
		t.Fatal(err)
	}
	r, err := OpenReadOnly(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.Load()
	if err != nil || got.ClusterID != st.ClusterID {
		t.Fatalf("read-only load while locked: %v %+v", err, got)
	}
	if err := r.Save(got); err == nil {
		t.Fatal("a read-only store saved")
	}
	r.Close()
	if _, err := Open(dir, "second"); err == nil {
		t.Fatal("the lock was released by a reader")
	}
	none := filepath.Join(t.TempDir(), "none")
	r2, err := OpenReadOnly(none)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Load(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(none); err == nil {
		t.Fatal("a read-only open created the state directory")
	}
}

// TestLockFileUnlinkedWhileHeld: destroy's Close removes the lock file
// while holding it; a process that opened the old file before can lock it,
// but Open does not count that as the lock (it is no longer at the path),
// so two processes never both hold the lock.
func TestLockFileUnlinkedWhileHeld(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	a, err := Open(dir, "provision destroy")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, lockFile)
	early, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()
	if err := a.Clear(); err != nil {
		t.Fatal(err)
	}
	a.Close() // removes the lock file and the directory
	if err := syscall.Flock(int(early.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("the old file is free: %v", err)
	}
	if samePath(early, path) {
		t.Fatal("a lock on an unlinked file passes for the lock")
	}
	b, err := Open(dir, "provision apply")
	if err != nil {
		t.Fatalf("Open after the holder left: %v", err)
	}
	defer b.Close()
	if _, err := Open(dir, "provision apply"); err == nil {
		t.Fatal("two holders")
	}
}

// TestOpenSweepsTempFiles: temp files a killed process left (a raft backup
// or a save cut short) are removed when the lock is taken next.
func TestOpenSweepsTempFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	os.MkdirAll(filepath.Join(dir, "backups"), 0o700)
	left := filepath.Join(dir, "backups", ".raft-20261203T025816Z-m2.tar.gz.tmp2009367246")
	keep := filepath.Join(dir, "backups", "raft-20261203T025816Z-m2.tar.gz")
	for _, f := range []string{left, keep, filepath.Join(dir, ".state.json.tmp123")} {
		os.WriteFile(f, nil, 0o600)
	}
	s, err := Open(dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(left); err == nil {
		t.Error("a backup's temp file is left")
	}
	if _, err := os.Stat(filepath.Join(dir, ".state.json.tmp123")); err == nil {
		t.Error("a state temp file is left")
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("a backup was removed: %v", err)
	}
}

// TestOpenTightensDirectories: directories of the state opened with group
// or other permissions (chmod by hand, a restore from a backup tool) are
// made owner-only when the lock is taken.
func TestOpenTightensDirectories(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	for _, d := range []string{dir, filepath.Join(dir, "pki"), filepath.Join(dir, "pki", "nodes", "m1")} {
		os.MkdirAll(d, 0o755)
		os.Chmod(d, 0o755)
	}
	s, err := Open(dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, d := range []string{filepath.Join(dir, "pki"), filepath.Join(dir, "pki", "nodes", "m1")} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v", d, fi.Mode(), err)
		}
	}
	// The state directory itself, and what provision did not make in it,
	// are the operator's (--state-dir . is allowed).
	other := filepath.Join(dir, "notes")
	os.MkdirAll(other, 0o755)
	os.Chmod(other, 0o755)
	os.WriteFile(filepath.Join(other, ".draft.tmp1"), nil, 0o644)
	s.Close()
	s, err = Open(dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if fi, _ := os.Stat(other); fi.Mode().Perm() != 0o755 {
		t.Errorf("a directory provision did not make was changed: %v", fi.Mode())
	}
	if _, err := os.Stat(filepath.Join(other, ".draft.tmp1")); err != nil {
		t.Errorf("a file provision did not make was removed: %v", err)
	}
}
