package apply

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
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

func raftArchive(t *testing.T, state string) *bytes.Buffer {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: "swarm/raft/wal-v3-encrypted/0.wal", Mode: 0o600, Size: 3})
	tw.Write([]byte("log"))
	if state != "" {
		tw.WriteHeader(&tar.Header{Name: "swarm/docker-state.json", Mode: 0o600, Size: int64(len(state))})
		tw.Write([]byte(state))
	}
	tw.Close()
	zw.Close()
	return &b
}

// TestRestoreTarget: a raft keeps its own member's address through
// --force-new-cluster, so a backup goes back on the manager at the address
// its manager advertised: found by default, and a manager named at another
// address, or no manager at it, is refused naming the addresses. An archive
// that does not say (older engines) goes on the first manager, as before.
func TestRestoreTarget(t *testing.T) {
	st := &state.State{}
	for i, a := range []string{"172.28.0.2", "172.28.0.4", "172.28.0.6"} {
		st.Put(&state.Machine{Machine: drivers.Machine{Name: fmt.Sprintf("c-manager-%d", i+1), Address: a}, Role: spec.RoleManager})
	}
	st.Put(&state.Machine{Machine: drivers.Machine{Name: "c-worker-1", Address: "172.28.0.8"}, Role: spec.RoleWorker})
	from, err := raftArchiveAddress(raftArchive(t, `{"ListenAddr":"0.0.0.0:2377","AdvertiseAddr":"172.28.0.4:2377","DataPathAddr":"172.28.0.4"}`))
	if err != nil || from != "172.28.0.4" {
		t.Fatalf("archive address %q, %v", from, err)
	}
	if m, err := restoreTarget(st, "", from); err != nil || m.Name != "c-manager-2" {
		t.Fatalf("default target: %v %v", m, err)
	}
	if m, err := restoreTarget(st, "c-manager-2", from); err != nil || m.Name != "c-manager-2" {
		t.Fatalf("named target: %v %v", m, err)
	}
	if _, err := restoreTarget(st, "c-manager-1", from); err == nil || !strings.Contains(err.Error(), "172.28.0.4") || !strings.Contains(err.Error(), "c-manager-2 has it") {
		t.Fatalf("another manager named: %v", err)
	}
	if _, err := restoreTarget(st, "", "172.28.0.99"); err == nil || !strings.Contains(err.Error(), "no recorded manager is at that address") {
		t.Fatalf("no manager at the address: %v", err)
	}
	if _, err := restoreTarget(st, "c-worker-1", from); !errors.Is(err, ErrNotAManager) {
		t.Fatalf("a worker as target: %v", err)
	}
	if from, err := raftArchiveAddress(raftArchive(t, "")); err != nil || from != "" {
		t.Fatalf("archive without a state record: %q %v", from, err)
	}
	if m, err := restoreTarget(st, "", ""); err != nil || m.Name != "c-manager-1" {
		t.Fatalf("archive that does not say: %v %v", m, err)
	}
	if _, err := raftArchiveAddress(bytes.NewBufferString("not gzip")); err == nil {
		t.Fatal("not an archive accepted")
	}
}
