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
	start, said := time.Now(), time.Time{}
	err := poll(ctx, 30*time.Minute, "package manager to finish", func() (bool, error) {
		out, err := t.sudoSh(ctx, busyScript+"; true")
		if err != nil {
			return false, err
		}
		if strings.TrimSpace(string(out)) == "" {
			return true, nil
		}
		// A wait of up to half an hour is said, every 10 s, with who runs.
		if time.Since(said) >= 10*time.Second {
			said = time.Now()
			t.Log.Warn(fmt.Sprintf("waiting for the package manager to finish (%s of 30m0s)", time.Since(start).Round(time.Second)),
				"procs", strings.Join(strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(out)), "\n", "; ")), " "))
		}
		return false, nil
	})
	if err != nil {
		return err
	}
	t.Facts.Busy = nil
	return nil
}
