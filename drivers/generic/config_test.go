package generic

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
)

// keyPair returns an ed25519 private key (OpenSSH PEM) and its public half in
// authorized_keys form.
func keyPair(t testing.TB) ([]byte, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(blk), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))
}

func writeKey(t testing.TB, dir string, mode os.FileMode) string {
	t.Helper()
	priv, _ := keyPair(t)
	p := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(p, priv, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func parseBody(t *testing.T, src string) hcl.Body {
	t.Helper()
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "test.hcl")
	if diags.HasErrors() {
		t.Fatalf("parse: %v", diags)
	}
	return f.Body
}

func TestRegistered(t *testing.T) {
	info, ok := drivers.Lookup("generic")
	if !ok || info.New == nil || !info.NeedsHosts {
		t.Fatalf("generic not registered: %+v", info)
	}
}

func TestConfigDefaults(t *testing.T) {
	dir := t.TempDir()
	key := writeKey(t, dir, 0o600)
	_, hk := keyPair(t)
	body := parseBody(t, `
user     = "admin"
key_file = "`+key+`"
host_keys = {
  "10.0.0.5"      = "`+hk+`"
  "10.0.0.6:2222" = "`+hk+` comment"
}
`)
	c, diags := decodeConfig(body, nil)
	if len(diags) != 0 {
		t.Fatalf("diagnostics: %v", diags)
	}
	if c.User != "admin" || c.Port != 22 || c.KeyFile != key || !c.TrustOnFirstUse || c.Wipe || c.Bastion != nil {
		t.Errorf("config %+v", c)
	}
	d := newDriver(c, drivers.Options{StateDir: dir})
	for _, tc := range []struct {
		written, host string
		port          int
		want          bool
	}{
		{"10.0.0.5", "10.0.0.5", 22, true},
		{"10.0.0.5:22", "10.0.0.5", 22, true},
		{"10.0.0.5:2200", "10.0.0.5", 2200, false}, // a bare entry means the block's port
		{"10.0.0.6:2222", "10.0.0.6", 2222, true},
		{"10.0.0.6", "10.0.0.6", 22, false},
	} {
		if got := d.pinned(tc.written, tc.host, tc.port) != ""; got != tc.want {
			t.Errorf("pinned(%q) = %v, want %v", tc.written, got, tc.want)
		}
	}
}

func TestConfigDiagnostics(t *testing.T) {
	dir := t.TempDir()
	key := writeKey(t, dir, 0o600)
	loose := writeKey(t, t.TempDir(), 0o644)
	_, hk := keyPair(t)
	for _, tc := range []struct {
		name, src string
		err       bool   // an error (else only warnings)
		want      string // in a summary or detail
		line      int    // of the diagnostic's subject, 0: not checked
	}{
		{"missing user", `key_file = "` + key + `"`, true, `"user" is required`, 0},
		{"missing key_file", `user = "admin"`, true, `"key_file" is required`, 0},
		{"unknown attribute", "user = \"admin\"\nkey_file = \"" + key + "\"\nregion = \"x\"\n", true, `"region" is not expected`, 3},
		{"unknown bastion attribute", "user = \"admin\"\nkey_file = \"" + key + "\"\nbastion {\n  address = \"b\"\n  zone = 1\n}\n", true, `"zone" is not expected`, 5},
		{"bad map value", "user = \"admin\"\nkey_file = \"" + key + "\"\nhost_keys = { \"10.0.0.5\" = \"not a key\" }\n", true, "Invalid host key", 3},
		{"bad map address", "user = \"admin\"\nkey_file = \"" + key + "\"\nhost_keys = { \"10.0.0.5:99999\" = \"" + hk + "\" }\n", true, "Invalid host_keys address", 3},
		{"map not a map", "user = \"admin\"\nkey_file = \"" + key + "\"\nhost_keys = [\"x\"]\n", true, "Unsuitable value", 3},
		{"bad port", "user = \"admin\"\nkey_file = \"" + key + "\"\nport = 0\n", true, "Invalid port", 3},
		{"empty user", "user = \"\"\nkey_file = \"" + key + "\"\n", true, "Invalid user", 1},
		{"user with a comma", "user = \"a,b\"\nkey_file = \"" + key + "\"\n", true, "Invalid user", 1},
		{"user with CR", "user = \"a\\rb\"\nkey_file = \"" + key + "\"\n", true, "Invalid user", 1},
		{"key_file missing on disk", "user = \"admin\"\nkey_file = \"" + filepath.Join(dir, "nope") + "\"\n", false, "does not exist", 2},
		{"key_file readable by others", "user = \"admin\"\nkey_file = \"" + loose + "\"\n", false, "chmod 600", 2},
		{"key_file a directory", "user = \"admin\"\nkey_file = \"" + dir + "\"\n", true, "is a directory", 2},
		{"no tofu no keys", "user = \"admin\"\nkey_file = \"" + key + "\"\ntrust_on_first_use = false\n", false, "No host keys to trust", 3},
		{"bastion bad port", "user = \"admin\"\nkey_file = \"" + key + "\"\nbastion {\n  address = \"b\"\n  port = 70000\n}\n", true, "Invalid bastion port", 5},
		{"bastion bad key", "user = \"admin\"\nkey_file = \"" + key + "\"\nbastion {\n  address = \"b\"\n  host_key = \"ssh-ed25519 nope\"\n}\n", true, "Invalid bastion host key", 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, diags := New(parseBody(t, tc.src), drivers.Options{Name: "metal", StateDir: dir})
			if diags.HasErrors() != tc.err {
				t.Fatalf("HasErrors = %v, want %v: %v", diags.HasErrors(), tc.err, diags)
			}
			var found *hcl.Diagnostic
			for _, d := range diags {
				if strings.Contains(d.Summary+" "+d.Detail, tc.want) {
					found = d
				}
			}
			if found == nil {
				t.Fatalf("no diagnostic mentions %q: %v", tc.want, diags)
			}
			if tc.line != 0 && (found.Subject == nil || found.Subject.Start.Line != tc.line) {
				t.Errorf("diagnostic %q at %v, want line %d", found.Summary, found.Subject, tc.line)
			}
			if strings.Contains(found.Detail, "PRIVATE KEY") {
				t.Errorf("diagnostic leaks key material: %s", found.Detail)
			}
		})
	}
}

func TestConfigBastionDefaults(t *testing.T) {
	dir := t.TempDir()
	key := writeKey(t, dir, 0o600)
	c, diags := decodeConfig(parseBody(t, `
user     = "admin"
key_file = "`+key+`"
port     = 2222
bastion {
  address = "jump.example:2200"
}
`), nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	b := c.Bastion
	if b == nil || b.Address != "jump.example" || b.Port != 2200 || b.User != "admin" || b.KeyFile != "" || c.Port != 2222 {
		t.Fatalf("bastion %+v", b)
	}
}

func TestKeyFileTilde(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeKey(t, filepath.Join(home, ".ssh"), 0o600)
	c, diags := decodeConfig(parseBody(t, `
user = "admin"
key_file = "~/.ssh/id_ed25519"
`), nil)
	if len(diags) != 0 {
		t.Fatal(diags)
	}
	if c.KeyFile != filepath.Join(home, ".ssh", "id_ed25519") {
		t.Errorf("key file %q", c.KeyFile)
	}
}

func TestSplitAddress(t *testing.T) {
	for _, tc := range []struct {
		in   string
		host string
		port int
		err  bool
	}{
		{"10.0.0.5", "10.0.0.5", 22, false},
		{"10.0.0.5:2222", "10.0.0.5", 2222, false},
		{"host.example", "host.example", 22, false},
		{"[fd00::1]:2222", "fd00::1", 2222, false},
		{"fd00::1", "fd00::1", 22, false},
		{"[fd00::1]", "fd00::1", 22, false},
		{"10.0.0.5:x", "", 0, true},
		{"10.0.0.5:0", "", 0, true},
		{"", "", 0, true},
		{"a b", "", 0, true},
	} {
		h, p, err := splitAddress(tc.in, 22)
		if (err != nil) != tc.err || h != tc.host || p != tc.port {
			t.Errorf("splitAddress(%q) = %q %d %v", tc.in, h, p, err)
		}
	}
}

func TestKnownHostsStore(t *testing.T) {
	s := store{dir: filepath.Join(t.TempDir(), "generic")}
	_, k1 := keyPair(t)
	_, k2 := keyPair(t)
	if k, err := s.knownKey("10.0.0.5", 22); err != nil || k != "" {
		t.Fatalf("empty store: %q %v", k, err)
	}
	if err := s.recordKey("10.0.0.5", 22, k1); err != nil {
		t.Fatal(err)
	}
	if err := s.recordKey("10.0.0.5", 2222, k2); err != nil {
		t.Fatal(err)
	}
	if k, _ := s.knownKey("10.0.0.5", 22); k != k1 {
		t.Errorf("port 22 key %q", k)
	}
	if k, _ := s.knownKey("10.0.0.5", 2222); k != k2 {
		t.Errorf("port 2222 key %q", k)
	}
	if k, _ := s.knownKey("10.0.0.6", 22); k != "" {
		t.Errorf("unknown host key %q", k)
	}
	fi, err := os.Stat(s.path(knownHostsFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("known_hosts mode: %v %v", fi, err)
	}
	data, _ := os.ReadFile(s.path(knownHostsFile))
	if !strings.Contains(string(data), "[10.0.0.5]:2222 ssh-ed25519 ") || !strings.Contains(string(data), "\n10.0.0.5 ssh-ed25519 ") {
		t.Errorf("not OpenSSH known_hosts form:\n%s", data)
	}
	// A bad line does not hide the ones after it.
	f, _ := os.OpenFile(s.path(knownHostsFile), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("garbage line\n")
	f.Close()
	if err := s.recordKey("10.0.0.7", 22, k2); err != nil {
		t.Fatal(err)
	}
	if k, _ := s.knownKey("10.0.0.7", 22); k != k2 {
		t.Errorf("key after a bad line: %q", k)
	}
}

func TestClaimsStore(t *testing.T) {
	s := store{dir: filepath.Join(t.TempDir(), "generic")}
	c, err := s.claims()
	if err != nil || len(c) != 0 {
		t.Fatalf("empty: %v %v", c, err)
	}
	c["10.0.0.5:22"] = Claim{Name: "m1", Cluster: "c1", Host: "10.0.0.5", Port: 22}
	if err := s.saveClaims(c); err != nil {
		t.Fatal(err)
	}
	c2, err := s.claims()
	if err != nil || c2["10.0.0.5:22"].Name != "m1" {
		t.Fatalf("reloaded %v %v", c2, err)
	}
	os.WriteFile(s.path(claimsFile), []byte("{"), 0o600)
	if _, err := s.claims(); err == nil || !strings.Contains(err.Error(), claimsFile) {
		t.Errorf("corrupt claims: %v", err)
	}
}

func TestLoadSigner(t *testing.T) {
	dir := t.TempDir()
	if _, err := loadSigner(writeKey(t, dir, 0o600)); err != nil {
		t.Fatal(err)
	}
	loose := writeKey(t, t.TempDir(), 0o640)
	if _, err := loadSigner(loose); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("loose key: %v", err)
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	blk, _ := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("secret"))
	enc := filepath.Join(dir, "enc")
	os.WriteFile(enc, pem.EncodeToMemory(blk), 0o600)
	if _, err := loadSigner(enc); err == nil || !strings.Contains(err.Error(), "passphrase") {
		t.Errorf("encrypted key: %v", err)
	}
	if _, err := loadSigner(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing key accepted")
	}
}

// Machines without a cluster ID or without claims does no I/O.
func TestMachinesNoClaims(t *testing.T) {
	dir := t.TempDir()
	c, diags := decodeConfig(parseBody(t, "user = \"admin\"\nkey_file = \""+filepath.Join(dir, "absent")+"\"\n"), nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	d := newDriver(c, drivers.Options{StateDir: dir})
	for _, cluster := range []string{"", "c1"} {
		ms, err := d.Machines(t.Context(), cluster)
		if err != nil || len(ms) != 0 {
			t.Errorf("Machines(%q) = %v, %v", cluster, ms, err)
		}
	}
	// Destroy of a host never claimed and not reachable is a success.
	err := d.Destroy(t.Context(), drivers.Machine{Name: "m1", Address: "127.0.0.1", SSH: drivers.SSHEndpoint{Port: 1}})
	if err != nil {
		t.Errorf("destroy of an unclaimed host: %v", err)
	}
}
