package hostos

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/provision/provision/provision/comm"
)

// engine.config: daemon.json (TLS on 2376, logging, daemon hardening) and
// the docker.service drop-in; the engine must be running. A change
// restarts the engine. Wipe removes /etc/docker whole.
func stepEngineConfig() *Step {
	return &Step{
		ID:             "engine.config",
		Files:          files(PathDaemonJSON, PathDockerDropIn),
		Units:          []string{"docker.service", "containerd.service"},
		RestartsEngine: true,
		BeforeEngine:   true,
		Undo:           Undo{After: "rm -rf /etc/docker"},
		render: func(t *Target, fam Family) ([]File, error) {
			return DaemonFiles(t.Config, fam)
		},
		ready: func(t *Target) bool { return t.unitActive("docker.service") },
	}
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
