package state

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const goodKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJHZv6U96VThcn+hOTRycucI2ed+gkpLaTEZa5/V43JH"

// TestInvalidRecordsRefused is issue 12's state class: every kind of record
// a hand-edited or damaged state.json can hold that later code would crash
// on or misread is refused by Load as corrupt, naming the record, and the
// file is left byte for byte as it was.
func TestInvalidRecordsRefused(t *testing.T) {
	m := func(fields string) string {
		return `{"version": 1, "cluster_id": "0123456789abcdef", "name": "demo", "machines": [` + fields + `]}`
	}
	good := `{"name": "demo-manager-1", "driver": "local", "role": "manager", "pool": "manager", "index": 1, "status": "ready", "ssh": {"user": "p", "port": 22, "host_key": "` + goodKey + `"}}`
	for name, c := range map[string]struct{ content, want string }{
		"null machine":        {m(`null`), "machines[0] is null"},
		"empty record":        {m(`{}`), "machines[0]: no name"},
		"no name":             {m(`{"driver": "local", "role": "manager", "status": "ready"}`), "no name"},
		"bad name":            {m(`{"name": "../../etc", "driver": "local", "role": "manager", "status": "ready"}`), "not a machine name"},
		"duplicate":           {m(good + "," + good), "also machines[0]"},
		"bad role":            {m(`{"name": "a", "driver": "local", "role": "king", "status": "ready"}`), "role \"king\""},
		"bad status":          {m(`{"name": "a", "driver": "local", "role": "worker", "status": "dancing"}`), "status \"dancing\""},
		"no driver":           {m(`{"name": "a", "role": "worker", "status": "ready"}`), "no driver"},
		"bad port":            {m(`{"name": "a", "driver": "d", "role": "worker", "status": "ready", "ssh": {"port": 70000}}`), "ssh port"},
		"bad address":         {m(`{"name": "a", "driver": "d", "role": "worker", "status": "ready", "address": "a b; rm -rf /"}`), "not a host address"},
		"bad host key":        {m(`{"name": "a", "driver": "d", "role": "worker", "status": "ready", "ssh": {"host_key": "ssh-ed25519 notbase64"}}`), "ssh.host_key"},
		"two host keys":       {m(`{"name": "a", "driver": "d", "role": "worker", "status": "ready", "ssh": {"host_key": "` + goodKey + `\n` + goodKey + `"}}`), "ssh.host_key"},
		"bad next key":        {m(`{"name": "a", "driver": "d", "role": "worker", "status": "ready", "ssh": {"host_key": "` + goodKey + `"}, "host_key_next": "x"}`), "host_key_next"},
		"next without key":    {m(`{"name": "a", "driver": "d", "role": "worker", "status": "ready", "host_key_next": "` + goodKey + `"}`), "without a current host key"},
		"bad key source":      {m(`{"name": "a", "driver": "d", "role": "worker", "status": "ready", "host_key_source": "tag"}`), "host_key_source"},
		"bastion no address":  {m(`{"name": "a", "driver": "d", "role": "worker", "status": "ready", "ssh": {"bastion": {"user": "u"}}}`), "bastion"},
		"negative index":      {m(`{"name": "a", "driver": "d", "role": "worker", "status": "ready", "index": -1}`), "negative index"},
		"machines not a list": {`{"version": 1, "cluster_id": "0123456789abcdef", "machines": {"a": 1}}`, "corrupt"},
		"bad cluster id":      {`{"version": 1, "cluster_id": "a b"}`, "cluster_id"},
		"bad cluster name":    {`{"version": 1, "cluster_id": "ab", "name": "Demo!"}`, "not a cluster name"},
		"version string":      {`{"version": "1", "cluster_id": "ab"}`, "corrupt"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, stateFile)
			if err := os.WriteFile(path, []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := Open(dir, "test")
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.Load()
			s.Close()
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "left untouched") {
				t.Fatalf("Load: %v, want %q", err, c.want)
			}
			if b, _ := os.ReadFile(path); !bytes.Equal(b, []byte(c.content)) {
				t.Errorf("state file changed")
			}
		})
	}
	// The good record loads.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, stateFile), []byte(m(good)), 0o600)
	s, _ := Open(dir, "test")
	defer s.Close()
	if st, err := s.Load(); err != nil || len(st.Machines) != 1 {
		t.Fatalf("good state: %v", err)
	}
}

// FuzzLoadState feeds arbitrary bytes as state.json: Load never panics, and
// what it accepts validates, survives a save and loads again the same.
// Seeds: testdata/fuzz/FuzzLoadState (nulls, empty records, wrong types,
// duplicates, huge numbers) plus the cases below.
func FuzzLoadState(f *testing.F) {
	f.Add([]byte(`{"version": 1, "cluster_id": "0123456789abcdef"}`))
	f.Add([]byte(`{"version": 1, "cluster_id": "0123456789abcdef", "name": "demo", "machines": [{"name": "demo-manager-1", "driver": "local", "role": "manager", "pool": "manager", "index": 1, "status": "ready", "ssh": {"user": "p", "port": 22, "host_key": "` + goodKey + `"}, "steps": {"engine.install": "x"}}], "swarm": {"id": "s"}, "settings": {"engine": "{}"}}`))
	f.Add([]byte(`{"version": 1, "cluster_id": "x", "machines": [null]}`))
	f.Add([]byte(`{"version": 1, "cluster_id": "x", "machines": [{}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, stateFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(dir, "fuzz")
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		st, err := s.Load()
		if err != nil {
			if b, _ := os.ReadFile(filepath.Join(dir, stateFile)); !bytes.Equal(b, data) {
				t.Fatal("a refused state file was changed")
			}
			return
		}
		if err := st.Validate(); err != nil {
			t.Fatalf("Load accepted an invalid state: %v", err)
		}
		for _, m := range st.Machines {
			_ = st.Machine(m.Name) // what plan and apply do first
		}
		if err := s.Save(st); err != nil {
			t.Fatal(err)
		}
		again, err := s.Load()
		if err != nil || len(again.Machines) != len(st.Machines) || again.ClusterID != st.ClusterID {
			t.Fatalf("saved state does not load again: %v", err)
		}
	})
}

// TestCloseRemovesOnlyWhatOpenMade is issue 12's "a user's empty parent
// dir vanished": after destroy (Clear) Close removes the directories Open
// created and no other, whatever the layout.
func TestCloseRemovesOnlyWhatOpenMade(t *testing.T) {
	for _, c := range []struct {
		name     string
		existing []string // made by the user before Open, relative
		dir      string   // the state dir, relative
		gone     []string // removed by Close
		kept     []string
	}{
		{"default layout in the user's empty dir", []string{"mine"}, "mine/.provision/demo", []string{"mine/.provision/demo", "mine/.provision"}, []string{"mine"}},
		{"--state-dir the user made", []string{"st"}, "st", nil, []string{"st"}},
		{"--state-dir in the user's empty dir", []string{"parent"}, "parent/st", []string{"parent/st"}, []string{"parent"}},
		{".provision the user made", []string{"p/.provision"}, "p/.provision/demo", []string{"p/.provision/demo"}, []string{"p/.provision", "p"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			for _, e := range c.existing {
				if err := os.MkdirAll(filepath.Join(root, e), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			s, err := Open(filepath.Join(root, c.dir), "test")
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Clear(); err != nil {
				t.Fatal(err)
			}
			s.Close()
			for _, g := range c.gone {
				if _, err := os.Stat(filepath.Join(root, g)); err == nil {
					t.Errorf("%s is still there", g)
				}
			}
			for _, k := range c.kept {
				if _, err := os.Stat(filepath.Join(root, k)); err != nil {
					t.Errorf("%s was removed: %v", k, err)
				}
			}
		})
	}
	// A state dir that is a file is an error, not a panic.
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o600)
	if _, err := Open(f, "test"); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("Open on a file: %v", err)
	}
}
