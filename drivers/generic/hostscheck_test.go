package generic

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provision/provision/drivers"
	provspec "github.com/provision/provision/provision/spec"
)

// TestHostKeyForNoListedHost: validate warns, at host_keys, about a pinned
// key whose address no pool lists (a typo leaves the real host unpinned),
// and matches entries to hosts by address, not by spelling.
func TestHostKeyForNoListedHost(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "id")
	if err := os.WriteFile(key, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	const pin = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
	src := `name = "metal"
driver "generic" {
  user      = "admin"
  key_file  = "` + key + `"
  host_keys = {
    "9.9.9.9"          = "` + pin + `"
    "Node1.Example:22" = "` + pin + `"
    "[::1]"            = "` + pin + `"
    "10.0.0.7:2222"    = "` + pin + `"
  }
}
managers {
  hosts = ["node1.example", "0:0:0:0:0:0:0:1", "10.0.0.7"]
}
`
	c, diags := provspec.LoadBytes(filepath.Join(dir, "c.hcl"), []byte(src), provspec.Vars{})
	if c == nil || diags.HasErrors() {
		t.Fatalf("errors: %v", diags)
	}
	var got []string
	for _, d := range diags {
		if d.Summary == "Host key for no listed host" {
			if d.Subject == nil || d.Subject.Start.Line != 5 {
				t.Errorf("warning not at host_keys (line 5): %v", d.Subject)
			}
			got = append(got, d.Detail)
		}
	}
	if len(got) != 2 || !strings.Contains(got[0], `"10.0.0.7:2222"`) || !strings.Contains(got[1], `"9.9.9.9"`) {
		t.Errorf("want warnings for 10.0.0.7:2222 and 9.9.9.9 only, got %q", got)
	}
	d, diags := New(c.Drivers[0].Body, drivers.Options{StateDir: dir, Eval: c.Drivers[0].Eval})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if k := d.(*Driver).pinned("node1.example", "node1.example", 22); k != pin {
		t.Errorf("node1.example is not pinned by Node1.Example:22: %q", k)
	}
}
