package hostos

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// os.ready: cloud-init finished, no package manager running.
func stepOSReady() *Step {
	return &Step{
		ID: "os.ready",
		check: func(ctx context.Context, t *Target) (bool, error) {
			return !cloudInitBusy(t.Facts.CloudInit) && len(t.Facts.Busy) == 0, nil
		},
		apply: osReady,
	}
}

func cloudInitBusy(status string) bool {
	switch status {
	case "", "done", "disabled", "error", "degraded", "not run", "not started":
		// "not started"/"not run": cloud-init will not run this boot (or is off).
		return false
	}
	return true
}

func osReady(ctx context.Context, t *Target) error {
	if t.Facts.CloudInit != "" {
		t.Log.Info("waiting for cloud-init", "status", t.Facts.CloudInit)
		_, err := t.sudo(ctx, "cloud-init status --wait")
		switch code := exitCode(err); {
		case err == nil:
		case code == 1 || code == 2:
			t.Log.Warn("cloud-init finished with errors; going on", "exit", code)
		default:
			return fmt.Errorf("wait for cloud-init: %w", err)
		}
		t.Facts.CloudInit = "done"
	}
	err := poll(ctx, 30*time.Minute, "package manager to finish", func() (bool, error) {
		out, err := t.sudoSh(ctx, busyScript+"; true")
		if err != nil {
			return false, err
		}
		if strings.TrimSpace(string(out)) == "" {
			return true, nil
		}
		t.Log.Debug("package manager busy", "procs", strings.TrimSpace(string(out)))
		return false, nil
	})
	if err != nil {
		return err
	}
	t.Facts.Busy = nil
	return nil
}
