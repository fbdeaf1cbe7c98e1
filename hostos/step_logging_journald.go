package hostos

import (
	"context"
	"fmt"
)

// logging.journald: the journal's size cap; journald restarts on a change.
func stepJournald() *Step {
	return &Step{
		ID: "logging.journald",
		Files: []FileRule{{Path: PathJournald, OnChange: func(ctx context.Context, t *Target, _ File) error {
			if _, err := t.sudo(ctx, "systemctl restart systemd-journald.service"); err != nil {
				return fmt.Errorf("restart journald: %w", err)
			}
			return nil
		}}},
		Units:  []string{"systemd-journald.service"},
		Undo:   Undo{After: "systemctl try-restart systemd-journald >/dev/null 2>&1"},
		render: func(t *Target, _ Family) ([]File, error) { return JournaldFiles(t.Config) },
	}
}
