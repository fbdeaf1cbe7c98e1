package hostos_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"log/slog"
	"strings"
	"testing"

	"github.com/provision/provision/hostos"
)

// A host whose engine was installed another way has a daemon.json of its
// own: engine.config keeps it (once) before writing provision's, and warns
// with the settings it drops or changes (names only) and the containers
// the restart stops.
func TestEngineConfigKeepsForeignDaemonJSON(t *testing.T) {
	old := `{"hosts": ["unix:///var/run/docker.sock", "tcp://127.0.0.1:2375"], "log-driver": "journald", "live-restore": true,
 "proxies": {"http-proxy": "http://u:secret@proxy:3128"}}`
	fc := &fakeComm{answers: []answer{
		{match: "pre-provision", out: "kept\n" + base64.StdEncoding.EncodeToString([]byte(old)) + "\nrunning\t2\n"},
		{match: "ActiveState", out: "active\n"},
	}}
	var logs bytes.Buffer
	tgt := &hostos.Target{Comm: fc, Facts: debianFacts(), Config: baseConfig(), Log: slog.New(slog.NewTextHandler(&logs, nil))}
	st := stepByID(t, tgt.Config, "engine.config")
	if err := st.Apply(context.Background(), tgt); err != nil {
		t.Fatal(err)
	}
	keep := indexOf(fc, hostos.PathDaemonJSONOrig)
	if keep < 0 {
		t.Fatalf("the host's daemon.json was not kept; ran:\n%s", strings.Join(fc.cmds, "\n"))
	}
	if inst := indexOf(fc, "install"); inst >= 0 && inst < keep {
		t.Errorf("daemon.json installed before the old one was kept; ran:\n%s", strings.Join(fc.cmds, "\n"))
	}
	l := logs.String()
	for _, want := range []string{"hosts (changed)", "log-driver (changed)", "live-restore (dropped)", "proxies (dropped)", "running=2", hostos.PathDaemonJSONOrig} {
		if !strings.Contains(l, want) {
			t.Errorf("warning lacks %q:\n%s", want, l)
		}
	}
	if strings.Contains(l, "secret") {
		t.Errorf("a value of the old daemon.json was logged:\n%s", l)
	}
	// The keep command copies only a file provision did not write, and
	// never over an earlier copy.
	cmd := fc.cmds[keep]
	if !strings.Contains(cmd, "! -e") || !strings.Contains(cmd, "/etc/docker/tls/") {
		t.Errorf("keep command %q", cmd)
	}
}

// Wipe puts the host's own daemon.json back.
func TestWipeRestoresForeignDaemonJSON(t *testing.T) {
	w := hostos.WipeScript()
	if !strings.Contains(w, "mv $o "+hostos.PathDaemonJSON) || !strings.Contains(w, hostos.PathDaemonJSONOrig) {
		t.Errorf("wipe does not restore the kept daemon.json:\n%s", w)
	}
}
