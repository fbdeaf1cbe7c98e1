package hostos

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/provision/provision/provision/comm"
)

// engine.config: daemon.json (TLS on 2376, logging, daemon hardening) and
// the docker.service drop-in; the engine must be running. A change
// restarts the engine. Wipe removes /etc/docker whole, but for the host's
// own daemon.json when there was one before provision (PathDaemonJSONOrig).
func stepEngineConfig() *Step {
	s := &Step{
		ID:             "engine.config",
		Files:          files(PathDaemonJSON, PathDockerDropIn),
		Units:          []string{"docker.service", "containerd.service"},
		RestartsEngine: true,
		BeforeEngine:   true,
		// The host's own daemon.json, kept before the first write, goes back.
		Undo: Undo{After: "b=" + PathDaemonJSONOrig + "; if [ -f $b ]; then o=$(mktemp) && cp -p $b $o && rm -rf /etc/docker && mkdir -p /etc/docker && mv $o " + PathDaemonJSON + "; else rm -rf /etc/docker; fi"},
		render: func(t *Target, fam Family) ([]File, error) {
			return DaemonFiles(t.Config, fam)
		},
		ready: func(t *Target) bool { return t.unitActive("docker.service") },
	}
	s.put = func(ctx context.Context, t *Target, changed []File) error {
		if err := keepForeignDaemonJSON(ctx, t, changed); err != nil {
			return err
		}
		return s.installValidated(ctx, t, changed)
	}
	return s
}

// PathDaemonJSONOrig is where engine.config keeps a daemon.json it did not
// write (an engine installed another way) before replacing it.
const PathDaemonJSONOrig = PathDaemonJSON + ".pre-provision"

// keepForeignDaemonJSON runs before daemon.json is replaced. A daemon.json
// provision did not write (it names no certificate under /etc/docker/tls)
// is kept once as PathDaemonJSONOrig, and apply warns with the settings of
// it that provision's file drops or changes, and with the containers the
// engine restart is about to stop: the operator learns what changed on a
// host whose engine was theirs, and can put any of it back (engine.extras,
// or by hand).
func keepForeignDaemonJSON(ctx context.Context, t *Target, changed []File) error {
	var next []byte
	for _, f := range changed {
		if f.Path == PathDaemonJSON {
			next = f.Content
		}
	}
	if next == nil {
		return nil
	}
	script := "f=" + PathDaemonJSON + " b=" + PathDaemonJSONOrig + "\n" +
		"if [ -f \"$f\" ] && [ ! -e \"$b\" ] && ! grep -q '/etc/docker/tls/' \"$f\"; then cp -p \"$f\" \"$b\" && printf 'kept\\n' && base64 -w0 \"$f\" && printf '\\n'; fi\n" +
		"if systemctl is-active -q docker.service 2>/dev/null && command -v docker >/dev/null 2>&1; then printf 'running\\t%s\\n' \"$(docker ps -q 2>/dev/null | wc -l)\"; fi\n"
	out, err := t.sudoSh(ctx, script)
	if err != nil {
		return fmt.Errorf("keep the host's own %s: %w", PathDaemonJSON, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	kept, running := false, 0
	for i, l := range lines {
		switch {
		case l == "kept":
			kept = true
			if i+1 < len(lines) {
				if old, err := base64.StdEncoding.DecodeString(strings.TrimSpace(lines[i+1])); err == nil {
					if diff := daemonJSONDropped(old, next); len(diff) > 0 {
						t.Log.Warn("the host's own daemon.json is replaced by provision's: these of its settings are dropped or changed (add back what you need in the engine block, or restart containers that relied on them)",
							"kept_as", PathDaemonJSONOrig, "settings", strings.Join(diff, ", "))
					} else {
						t.Log.Warn("the host's own daemon.json is replaced by provision's", "kept_as", PathDaemonJSONOrig)
					}
				}
			}
		case strings.HasPrefix(l, "running\t"):
			running, _ = strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(l, "running\t")))
		}
	}
	if kept && running > 0 {
		t.Log.Warn("the engine was installed before provision and runs containers: the restart for the new configuration stops them (only those with a restart policy start again)", "running", running)
	}
	return nil
}

// daemonJSONDropped lists the top-level keys of old whose value next drops
// or changes ("hosts (dropped)", "log-driver (changed)"); nil when old is
// not a JSON object. Values are not shown: a proxy URL may hold a password.
func daemonJSONDropped(old, next []byte) []string {
	var o, n map[string]json.RawMessage
	if json.Unmarshal(old, &o) != nil {
		return nil
	}
	_ = json.Unmarshal(next, &n)
	compact := func(r json.RawMessage) string {
		var b bytes.Buffer
		if json.Compact(&b, r) != nil {
			return string(r)
		}
		return b.String()
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(o)) {
		nv, ok := n[k]
		switch {
		case !ok:
			out = append(out, k+" (dropped)")
		case compact(nv) != compact(o[k]):
			out = append(out, k+" (changed)")
		}
	}
	return out
}

// restartDocker restarts the engine and waits until systemd says it is up.
func restartDocker(ctx context.Context, t *Target, reload bool) error {
	script := "systemctl reset-failed docker.service docker.socket >/dev/null 2>&1; systemctl restart docker.service"
	if reload {
		script = "systemctl daemon-reload && " + script
	}
	t.Log.Info("restarting the engine")
	if _, err := t.sudoSh(ctx, script); err != nil {
		log, _ := t.sudo(ctx, comm.Quote("journalctl", "-u", "docker.service", "-n", "15", "--no-pager", "-o", "cat"))
		t.setUnit("docker.service", "failed", "")
		return fmt.Errorf("restart docker: %w; journal:\n%s", err, strings.TrimSpace(string(log)))
	}
	return t.waitActive(ctx, "docker.service", 2*time.Minute)
}
