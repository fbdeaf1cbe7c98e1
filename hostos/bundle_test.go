package hostos

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func shaOf(b string) string {
	h := sha256.Sum256([]byte(b))
	return hex.EncodeToString(h[:])
}

// TestPinBundle is issue 12's bundle class: only the exact files of the
// packages are taken, each must match the package index's SHA-256 and the
// manifest written when the bundle was made; anything else in the
// directory is never looked at, and a file changed later is refused.
func TestPinBundle(t *testing.T) {
	dir := t.TempDir()
	pkgs := []SimPackage{{Name: "docker.io", Version: "20.10.24+dfsg1-1+deb12u1+b6"}, {Name: "runc", Version: "1:1.1.5+ds1-1"}}
	files := map[string]string{
		"docker.io_20.10.24+dfsg1-1+deb12u1+b6_amd64.deb": "engine",
		"runc_1%3a1.1.5+ds1-1_amd64.deb":                  "runc",
		// Things a shared or tampered bundle directory may hold: a file
		// the old glob (docker.io_20.10.24+dfsg1-1+deb12u1+b6_*.deb) took
		// first, and a stray package.
		"docker.io_20.10.24+dfsg1-1+deb12u1+b6_aaa.deb": "evil",
		"evil_1_amd64.deb": "evil",
	}
	for n, c := range files {
		os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644)
	}
	recs := map[string]AptRecord{
		"docker.io=20.10.24+dfsg1-1+deb12u1+b6": {Arch: "amd64", SHA256: shaOf("engine")},
		"runc=1:1.1.5+ds1-1":                    {Arch: "amd64", SHA256: shaOf("runc")},
	}
	got, err := PinBundle(dir, pkgs, recs)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || filepath.Base(got[0].Path) != "docker.io_20.10.24+dfsg1-1+deb12u1+b6_amd64.deb" || got[1].SHA256 != shaOf("runc") {
		t.Fatalf("pinned %+v", got)
	}
	var man BundleManifest
	b, _ := os.ReadFile(filepath.Join(dir, BundleManifestFile))
	if err := json.Unmarshal(b, &man); err != nil || len(man.Files) != 2 || man.Files["runc_1%3a1.1.5+ds1-1_amd64.deb"] != shaOf("runc") {
		t.Fatalf("manifest %s: %v", b, err)
	}

	// The file changes after the bundle was made: refused by the manifest
	// even if the index were changed to match.
	os.WriteFile(filepath.Join(dir, "runc_1%3a1.1.5+ds1-1_amd64.deb"), []byte("trojan"), 0o644)
	recs2 := map[string]AptRecord{"docker.io=20.10.24+dfsg1-1+deb12u1+b6": recs["docker.io=20.10.24+dfsg1-1+deb12u1+b6"], "runc=1:1.1.5+ds1-1": {Arch: "amd64", SHA256: shaOf("trojan")}}
	if _, err := PinBundle(dir, pkgs, recs2); err == nil || !strings.Contains(err.Error(), "its manifest pins") {
		t.Fatalf("a changed file: %v", err)
	}
	// A file that never matched the index.
	dir2 := t.TempDir()
	os.WriteFile(filepath.Join(dir2, "docker.io_20.10.24+dfsg1-1+deb12u1+b6_amd64.deb"), []byte("not the engine"), 0o644)
	if _, err := PinBundle(dir2, pkgs[:1], recs); err == nil || !strings.Contains(err.Error(), "the package index says") {
		t.Fatalf("a file the index disagrees with: %v", err)
	}
	// Missing file, missing record.
	if _, err := PinBundle(t.TempDir(), pkgs[:1], recs); err == nil {
		t.Fatal("a missing file was accepted")
	}
	if _, err := PinBundle(dir, pkgs[:1], map[string]AptRecord{}); err == nil {
		t.Fatal("a package without an index record was accepted")
	}

	// apt-cache show records.
	out := "Package: docker.io\nVersion: 20.10.24+dfsg1-1+deb12u1+b6\nArchitecture: amd64\nSHA256: " + strings.ToUpper(shaOf("engine")) + "\n\nPackage: runc\nVersion: 1:1.1.5+ds1-1\nArchitecture: amd64\nSHA256: " + shaOf("runc") + "\n"
	rs, err := ParseAptRecords([]byte(out))
	if err != nil || rs["docker.io=20.10.24+dfsg1-1+deb12u1+b6"] != recs["docker.io=20.10.24+dfsg1-1+deb12u1+b6"] || rs["runc=1:1.1.5+ds1-1"].Arch != "amd64" {
		t.Fatalf("records %+v %v", rs, err)
	}
	if _, err := ParseAptRecords([]byte(out + "\nPackage: runc\nVersion: 1:1.1.5+ds1-1\nArchitecture: amd64\nSHA256: " + shaOf("x") + "\n")); err == nil {
		t.Fatal("two different records of one version were accepted")
	}
}

// recordingComm records uploads and commands, and can have the host's
// checksum check fail.
type recordingComm struct {
	uploads  map[string][]byte
	cmds     []string
	badCheck bool
	mutate   func() // runs during the first upload
}

func (c *recordingComm) Run(_ context.Context, cmd string, stdin io.Reader) ([]byte, error) {
	c.cmds = append(c.cmds, cmd)
	if strings.HasPrefix(cmd, "mktemp") {
		return []byte("/tmp/provision-bundle.abc\n"), nil
	}
	if strings.Contains(cmd, "sha256sum --check") {
		b, _ := io.ReadAll(stdin)
		c.cmds = append(c.cmds, "sums:"+string(b))
		if c.badCheck {
			return nil, errors.New("sha256sum: WARNING: 1 computed checksum did NOT match")
		}
	}
	return nil, nil
}

func (c *recordingComm) Upload(_ context.Context, path string, content io.Reader, _ fs.FileMode) error {
	if c.mutate != nil {
		c.mutate()
		c.mutate = nil
	}
	b, _ := io.ReadAll(content)
	if c.uploads == nil {
		c.uploads = map[string][]byte{}
	}
	c.uploads[path] = b
	return nil
}

func (c *recordingComm) Download(context.Context, string) ([]byte, error) { return nil, nil }

// TestBundleUploadsOnlyPinnedFiles: exactly the pinned files go up, the host
// checks their SHA-256 before anything is installed, apt installs them by
// name (no glob), and a file that changes during the upload or arrives
// different is not installed.
func TestBundleUploadsOnlyPinnedFiles(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a_1_amd64.deb")
	os.WriteFile(a, []byte("A"), 0o644)
	os.WriteFile(filepath.Join(dir, "stray_1_amd64.deb"), []byte("S"), 0o644)
	debs := []BundleFile{{Path: a, SHA256: shaOf("A")}}
	c := &recordingComm{}
	tgt := &Target{Name: "h", Comm: c, Facts: &Facts{}, Config: &Config{}, Log: slog.New(slog.DiscardHandler)}
	if err := uploadAndInstall(context.Background(), tgt, debs); err != nil {
		t.Fatal(err)
	}
	if len(c.uploads) != 1 || string(c.uploads["/tmp/provision-bundle.abc/a_1_amd64.deb"]) != "A" {
		t.Fatalf("uploads %v", c.uploads)
	}
	all := strings.Join(c.cmds, "\n")
	if !strings.Contains(all, "sums:"+shaOf("A")+"  a_1_amd64.deb\n") {
		t.Errorf("the host did not check the pins:\n%s", all)
	}
	install := ""
	for _, cmd := range c.cmds {
		if strings.Contains(cmd, "apt-get install") {
			install = cmd
		}
	}
	if !strings.Contains(install, "/tmp/provision-bundle.abc/a_1_amd64.deb") || strings.Contains(install, "*.deb") {
		t.Errorf("install command: %q", install)
	}

	// The host reports a mismatch: nothing is installed.
	c = &recordingComm{badCheck: true}
	tgt.Comm = c
	if err := uploadAndInstall(context.Background(), tgt, debs); err == nil || strings.Contains(strings.Join(c.cmds, "\n"), "apt-get install") {
		t.Fatalf("a mismatch on the host: %v\n%s", err, strings.Join(c.cmds, "\n"))
	}
	// The file changes while it is read: refused before install.
	c = &recordingComm{mutate: func() { os.WriteFile(a, []byte("B"), 0o644) }}
	tgt.Comm = c
	if err := uploadAndInstall(context.Background(), tgt, debs); err == nil || !strings.Contains(err.Error(), "changed while it was uploaded") {
		t.Fatalf("a file changed during upload: %v", err)
	}
}
