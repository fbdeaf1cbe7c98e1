package atomicfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(p, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil || string(b) != "new" {
		t.Fatalf("content %q, %v", b, err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	if es, _ := os.ReadDir(dir); len(es) != 1 {
		t.Errorf("temp files left: %v", es)
	}
	if err := Write(filepath.Join(dir, "missing", "x"), nil, 0o600); err == nil {
		t.Error("no error for a missing directory")
	}
}

// TestStream: a failed fill or check leaves the old file and no temp file;
// a good one replaces it with the mode from the first byte.
func TestStream(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "backup.tar.gz")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := errors.New("stream broke")
	fill := func(w io.Writer) error { _, err := io.WriteString(w, "partial"); return err }
	if err := Stream(p, 0o600, func(w io.Writer) error { fill(w); return bad }, nil); !errors.Is(err, bad) {
		t.Fatalf("failed fill: %v", err)
	}
	if err := Stream(p, 0o600, fill, func(tmp string) error {
		if b, _ := os.ReadFile(tmp); string(b) != "partial" {
			t.Errorf("check reads %q", b)
		}
		return bad
	}); !errors.Is(err, bad) {
		t.Fatalf("failed check: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatalf("the old file changed: %q", b)
	}
	if es, _ := os.ReadDir(dir); len(es) != 1 {
		t.Fatalf("temp files left: %v", es)
	}
	if err := Stream(p, 0o600, fill, func(string) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	if b, _ := os.ReadFile(p); string(b) != "partial" {
		t.Errorf("content %q", b)
	}
}
