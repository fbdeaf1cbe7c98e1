package apply

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"testing"
)

// TestRetargetRaftArchive: a raft backup copied from one manager and
// restored on another (or on a later generation at another address) keeps
// the source's addresses in swarm/docker-state.json, and the engine then
// cannot bind them: restore failed with "cannot assign requested address"
// after the target's own swarm directory was replaced. The record is
// rewritten for the target; everything else in the archive is unchanged.
func TestRetargetRaftArchive(t *testing.T) {
	var in bytes.Buffer
	zw := gzip.NewWriter(&in)
	tw := tar.NewWriter(zw)
	files := map[string]string{
		"swarm/raft/wal-v3-encrypted/0.wal": "raft log",
		"swarm/docker-state.json":           `{"LocalAddr":"","RemoteAddr":"172.28.0.2:2377","ListenAddr":"172.28.0.4:2377","AdvertiseAddr":"172.28.0.4:2377","DataPathAddr":"172.28.0.4","DefaultAddressPool":["10.10.0.0/16"],"SubnetSize":24,"DataPathPort":4789,"JoinInProgress":false}`,
		"swarm/certificates/swarm-node.key": "key",
	}
	for _, name := range []string{"swarm/raft/wal-v3-encrypted/0.wal", "swarm/docker-state.json", "swarm/certificates/swarm-node.key"} {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(files[name]))})
		tw.Write([]byte(files[name]))
	}
	tw.Close()
	zw.Close()

	var out bytes.Buffer
	if err := retargetRaftArchive(&in, &out, "172.28.0.2"); err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(&out)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	seen := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		seen++
		if h.Name != "swarm/docker-state.json" {
			if string(data) != files[h.Name] {
				t.Fatalf("%s changed: %q", h.Name, data)
			}
			continue
		}
		var st map[string]any
		if err := json.Unmarshal(data, &st); err != nil {
			t.Fatal(err)
		}
		if st["ListenAddr"] != "0.0.0.0:2377" || st["AdvertiseAddr"] != "172.28.0.2:2377" || st["DataPathAddr"] != "172.28.0.2" {
			t.Fatalf("addresses not the target's: %s", data)
		}
		if st["SubnetSize"] != float64(24) || st["DataPathPort"] != float64(4789) || st["RemoteAddr"] != "172.28.0.2:2377" {
			t.Fatalf("other fields changed: %s", data)
		}
	}
	if seen != 3 {
		t.Fatalf("%d files, want 3", seen)
	}
	if err := retargetRaftArchive(bytes.NewReader([]byte("not gzip")), io.Discard, "10.0.0.1"); err == nil {
		t.Fatal("a file that is no gzip archive was taken")
	}
}
