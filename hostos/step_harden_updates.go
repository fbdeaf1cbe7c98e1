package hostos

import (
	"context"
	"fmt"
	"strings"

	"github.com/provision/provision/provision/comm"
)

// harden.updates: unattended security upgrades (the engine's packages held
// back: engine.install owns their version) and a security suite among the
// package sources.
func stepHardenUpdates() *Step {
	return &Step{
		ID: "harden.updates",
		Files: []FileRule{
			{Path: PathAutoUpgrades}, {Path: PathUnattendedConf},
			{Path: PathSecuritySource, OnChange: addSecuritySource},
		},
		Units:    []string{"unattended-upgrades.service"},
		Packages: func(_ *Config, fam Family) []string { return []string{fam.Updates} },
		Enabled:  func(c *Config) bool { return c.Hardening.Updates },
		render:   func(t *Target, _ Family) ([]File, error) { return UpdatesFiles(t.Config) },
	}
}

func addSecuritySource(ctx context.Context, t *Target, _ File) error {
	out, err := t.sudo(ctx, comm.Quote("sh", PathSecuritySource))
	if err != nil {
		return fmt.Errorf("security source: %w", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "security-source-") {
			t.Log.Warn("no security suite among the package sources, and none could be added: unattended upgrades will not see security fixes", "detail", l)
		}
	}
	return nil
}
