package comm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func setup(t *testing.T) (*testServer, Config) {
	t.Helper()
	userKey := newSigner(t)
	s := startServer(t, userKey.PublicKey())
	return s, Config{Host: "node-1", Address: "127.0.0.1", Port: s.Port(), User: "tester", Signer: userKey, HostKey: authorized(s.HostKey()), Timeout: 10 * time.Second}
}

func TestRunOneConnection(t *testing.T) {
	s, cfg := setup(t)
	ctx := context.Background()
	c, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 5; i++ {
		out, err := c.Run(ctx, "echo hello", nil)
		if err != nil || strings.TrimSpace(string(out)) != "hello" {
			t.Fatalf("run: %q %v", out, err)
		}
	}
	out, err := c.Run(ctx, "cat", strings.NewReader("from stdin"))
	if err != nil || string(out) != "from stdin" {
		t.Fatalf("stdin: %q %v", out, err)
	}
	_, err = c.Run(ctx, "echo oops >&2; exit 3", nil)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 3 || ee.Stderr != "oops" || ee.Host != "node-1" {
		t.Fatalf("exit error: %#v", err)
	}
	st := c.Stats()
	if st.Dials != 1 || st.Sessions != 7 || s.Accepts.Load() != 1 {
		t.Fatalf("stats %+v, server accepts %d: want 1 dial for 7 sessions", st, s.Accepts.Load())
	}
}

func TestUploadDownloadInstall(t *testing.T) {
	_, cfg := setup(t)
	ctx := context.Background()
	c, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dir := t.TempDir()
	p := filepath.Join(dir, "f.txt")
	if err := c.Upload(ctx, p, strings.NewReader("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v %v", fi.Mode(), err)
	}
	b, err := c.Download(ctx, p)
	if err != nil || string(b) != "secret" {
		t.Fatalf("download %q %v", b, err)
	}
	if c.Stats().SFTPOpens != 1 {
		t.Fatalf("sftp opened %d times", c.Stats().SFTPOpens)
	}
	// Install through a sudo that is the identity here (the test runs as the
	// owner already): a fake Comm wrapper whose Sudo returns the command.
	dst := filepath.Join(dir, "sub", "conf")
	me := os.Getenv("USER")
	if me == "" {
		me = "root"
	}
	if err := Install(ctx, asRoot{c}, dst, []byte("content"), 0o640, me); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(dst)
	fi, _ = os.Stat(dst)
	if string(got) != "content" || fi.Mode().Perm() != 0o640 {
		t.Fatalf("installed %q mode %v", got, fi.Mode())
	}
	left, _ := filepath.Glob("/tmp/provision.*/f")
	for _, l := range left {
		if b, _ := os.ReadFile(l); string(b) == "content" {
			t.Errorf("temp file left: %s", l)
		}
	}
}

// TestInstallAll: several files in one batch, each with its mode, in three
// commands (temp dir, install, and nothing per file but its upload); no
// temp file left.
func TestInstallAll(t *testing.T) {
	_, cfg := setup(t)
	ctx := context.Background()
	c, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	me := os.Getenv("USER")
	if me == "" {
		me = "root"
	}
	dir := t.TempDir()
	files := []InstallFile{
		{Dst: filepath.Join(dir, "a", "one"), Content: []byte("1"), Mode: 0o644},
		{Dst: filepath.Join(dir, "b", "two"), Content: []byte("it's 2"), Mode: 0o600},
		{Dst: filepath.Join(dir, "three"), Content: []byte("3"), Mode: 0o755},
	}
	before := c.Stats()
	if err := InstallAll(ctx, asRoot{c}, files, me); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		got, err := os.ReadFile(f.Dst)
		fi, _ := os.Stat(f.Dst)
		if err != nil || string(got) != string(f.Content) || fi.Mode().Perm() != f.Mode {
			t.Errorf("%s: %q mode %v %v", f.Dst, got, fi.Mode(), err)
		}
	}
	if n := c.Stats().Sessions - before.Sessions; n != 2 {
		t.Errorf("%d command sessions for 3 files, want 2 (temp dir, install)", n)
	}
	left, _ := filepath.Glob("/tmp/provision.*/[0-9]")
	for _, l := range left {
		if b, _ := os.ReadFile(l); string(b) == "it's 2" {
			t.Errorf("temp file left: %s", l)
		}
	}
	// A failing install reports every file of the batch.
	bad := []InstallFile{{Dst: filepath.Join(dir, "ok"), Content: []byte("x"), Mode: 0o644}, {Dst: "/proc/provision-no/x", Content: []byte("y"), Mode: 0o644}}
	if err := InstallAll(ctx, asRoot{c}, bad, me); err == nil || !strings.Contains(err.Error(), "/proc/provision-no/x") {
		t.Errorf("failing batch: %v", err)
	}
}

// asRoot runs "sudo" commands directly (the test process is the owner).
type asRoot struct{ *Client }

func (asRoot) Sudo(cmd string) string { return cmd }

func TestHostKeyMismatchNotRetried(t *testing.T) {
	s, cfg := setup(t)
	cfg.HostKey = authorized(newSigner(t))
	_, err := Dial(context.Background(), cfg)
	if !errors.Is(err, ErrHostKeyMismatch) {
		t.Fatalf("want host key mismatch, got %v", err)
	}
	if !strings.Contains(err.Error(), "SHA256:") || !strings.Contains(err.Error(), "node-1") {
		t.Errorf("error does not name host and fingerprints: %v", err)
	}
	if n := s.Accepts.Load(); n != 1 {
		t.Errorf("mismatch retried: %d connections", n)
	}
	cfg.HostKey = ""
	if _, err := Dial(context.Background(), cfg); err == nil {
		t.Fatal("dialed without a pinned host key")
	}
}

func TestAuthFailureNotRetried(t *testing.T) {
	s, cfg := setup(t)
	cfg.Signer = newSigner(t)
	_, err := Dial(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Fatalf("want auth failure, got %v", err)
	}
	if n := s.Accepts.Load(); n != 1 {
		t.Errorf("auth failure retried: %d connections", n)
	}
}

func TestRetryUntilUp(t *testing.T) {
	s, cfg := setup(t)
	s.Refuse.Store(3)
	c, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if n := s.Accepts.Load(); n != 4 {
		t.Errorf("%d connections, want 4", n)
	}
}

func TestCancelKillsCommand(t *testing.T) {
	_, cfg := setup(t)
	c, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err = c.Run(ctx, "sleep 30", nil)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(t0) > 10*time.Second {
		t.Fatalf("cancel: %v after %s", err, time.Since(t0))
	}
}

func TestReconnectAfterDrop(t *testing.T) {
	s, cfg := setup(t)
	c, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s.DropAll()
	time.Sleep(50 * time.Millisecond)
	out, err := c.Run(context.Background(), "echo back", nil)
	if err != nil || strings.TrimSpace(string(out)) != "back" {
		t.Fatalf("after drop: %q %v", out, err)
	}
	if c.Stats().Dials != 2 {
		t.Errorf("dials %d, want 2", c.Stats().Dials)
	}
}

func TestBastion(t *testing.T) {
	target, cfg := setup(t)
	_ = target
	bastionUser := newSigner(t)
	b := startServer(t, bastionUser.PublicKey())
	cfg.Bastion = &Config{Host: "bastion", Address: "127.0.0.1", Port: b.Port(), User: "jump", Signer: bastionUser, HostKey: authorized(b.HostKey())}
	c, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if out, err := c.Run(context.Background(), "echo via", nil); err != nil || strings.TrimSpace(string(out)) != "via" {
		t.Fatalf("through bastion: %q %v", out, err)
	}
	if b.Accepts.Load() != 1 {
		t.Errorf("bastion accepts %d", b.Accepts.Load())
	}
	// A wrong bastion key is fatal too.
	cfg.Bastion.HostKey = authorized(newSigner(t))
	if _, err := Dial(context.Background(), cfg); !errors.Is(err, ErrHostKeyMismatch) {
		t.Fatalf("bastion mismatch: %v", err)
	}
}

func TestScanHostKey(t *testing.T) {
	s, _ := setup(t)
	k, err := ScanHostKey(context.Background(), "127.0.0.1", s.Port())
	if err != nil || k != authorized(s.HostKey()) {
		t.Fatalf("scan: %q %v", k, err)
	}
}

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"":             "''",
		"plain":        "plain",
		"/etc/a.conf":  "/etc/a.conf",
		"a b":          "'a b'",
		"it's":         `'it'\''s'`,
		"$(rm -rf /)":  "'$(rm -rf /)'",
		"max-size=10m": "max-size=10m",
	} {
		if got := Quote(in); got != want {
			t.Errorf("Quote(%q) = %s, want %s", in, got, want)
		}
	}
}

// TestNextHostKey: during a host key rotation both the pinned key and the
// next one are accepted, and the client says which one the host showed;
// any other key is still refused.
func TestNextHostKey(t *testing.T) {
	userKey := newSigner(t)
	s := startServer(t, userKey.PublicKey())
	old := s.HostKey()
	next := newSigner(t)
	cfg := Config{Host: "node-1", Address: "127.0.0.1", Port: s.Port(), User: "tester", Signer: userKey,
		HostKey: authorized(old), NextHostKey: authorized(next), Timeout: 5 * time.Second}
	for _, k := range []ssh.Signer{old, next} {
		s.SetHostKey(k)
		c, err := Dial(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.PresentedHostKey(); got != authorized(k) {
			t.Errorf("presented %q, want %q", got, authorized(k))
		}
		c.Close()
	}
	s.SetHostKey(newSigner(t))
	if _, err := Dial(context.Background(), cfg); !errors.Is(err, ErrHostKeyMismatch) {
		t.Fatalf("a third key: %v", err)
	}
	cfg.NextHostKey = ""
	s.SetHostKey(next)
	if _, err := Dial(context.Background(), cfg); !errors.Is(err, ErrHostKeyMismatch) {
		t.Fatalf("the next key without the rotation pinned: %v", err)
	}
}
