package hostos

import (
	"context"
	"fmt"
)

// prune.timer: a systemd timer running `docker system prune` on the
// spec's schedule.
func stepPrune() *Step {
	return &Step{
		ID:      "prune.timer",
		Files:   files(PathPruneService, PathPruneTimer),
		Units:   []string{unitPruneTimer, unitPruneService},
		Enabled: func(c *Config) bool { return c.Prune.Enabled },
		Undo:    Undo{Stop: "systemctl disable --now " + unitPruneTimer + " " + unitPruneService + " >/dev/null 2>&1"},
		render:  func(t *Target, fam Family) ([]File, error) { return PruneFiles(t.Config, fam) },
		ready: func(t *Target) bool {
			return t.unitActive(unitPruneTimer) && t.Facts.UnitFiles[unitPruneTimer] == "enabled"
		},
		after: func(ctx context.Context, t *Target, changed []File) error {
			if err := daemonReload(ctx, t, changed); err != nil {
				return err
			}
			verb := "start"
			if len(changed) > 0 {
				verb = "restart" // a running timer keeps its old schedule until restarted
			}
			if _, err := t.sudoSh(ctx, "systemctl enable "+unitPruneTimer+" && systemctl "+verb+" "+unitPruneTimer); err != nil {
				return fmt.Errorf("enable %s: %w", unitPruneTimer, err)
			}
			t.setUnit(unitPruneTimer, "active", "enabled")
			return nil
		},
		off: func(ctx context.Context, t *Target) error {
			if _, err := t.sudoSh(ctx, "systemctl disable --now "+unitPruneTimer+" >/dev/null 2>&1 || true"); err != nil {
				return fmt.Errorf("disable %s: %w", unitPruneTimer, err)
			}
			t.setUnit(unitPruneTimer, "inactive", "disabled")
			return nil
		},
		offDone: func(ctx context.Context, t *Target) error {
			return daemonReload(ctx, t, []File{{Path: PathPruneTimer}})
		},
	}
}
