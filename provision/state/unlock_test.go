package state

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provision/provision/provision/redact"
)

func TestUnlockKeys(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ks, err := s.UnlockKeys(); err != nil || len(ks) != 0 {
		t.Fatalf("fresh: %v %v", ks, err)
	}
	for i, k := range []string{"SWMKEY-1-a", "SWMKEY-1-a", "SWMKEY-1-b", "SWMKEY-1-a"} {
		saved, err := s.SaveUnlockKey(redact.Secret(k))
		if err != nil {
			t.Fatal(err)
		}
		if want := i != 1; saved != want {
			t.Fatalf("save %d (%s): saved=%v", i, k, saved)
		}
	}
	ks, _ := s.UnlockKeys()
	if len(ks) != 2 || string(ks[0]) != "SWMKEY-1-a" || string(ks[1]) != "SWMKEY-1-b" {
		t.Fatalf("keys %q", ks)
	}
	path := filepath.Join(dir, unlockFile)
	fi, _ := os.Stat(path)
	di, _ := os.Stat(filepath.Dir(path))
	if fi.Mode().Perm() != 0o600 || di.Mode().Perm() != 0o700 {
		t.Fatalf("modes %o %o", fi.Mode().Perm(), di.Mode().Perm())
	}
	if _, err := s.SaveUnlockKey(redact.Secret("a\nb")); err == nil {
		t.Fatal("a key of two lines was saved")
	}
	for i := 0; i < 15; i++ {
		s.SaveUnlockKey(redact.Secret("SWMKEY-1-" + strings.Repeat("x", i+1)))
	}
	if ks, _ := s.UnlockKeys(); len(ks) != keepUnlockKeys {
		t.Fatalf("kept %d keys", len(ks))
	}
	os.Chmod(path, 0o644)
	if _, err := s.UnlockKeys(); err == nil {
		t.Fatal("a key file others can read was used")
	}
}
