package hostos

import (
	"context"
	"fmt"
)

// harden.firewall: an nftables ruleset (SSH and 2376 from the operators,
// swarm ports from the peers, the spec's firewall_allow) and its boot
// unit. nft checks the ruleset before it is loaded.
func stepHardenFirewall() *Step {
	return &Step{
		ID: "harden.firewall",
		Files: []FileRule{
			{Path: PathFirewall, Validate: "nft -c -f %s"},
			{Path: PathFirewallUnit},
		},
		Units:    []string{unitFirewall},
		Packages: func(_ *Config, fam Family) []string { return []string{fam.Firewall} },
		Enabled:  func(c *Config) bool { return c.Hardening.Firewall },
		Undo:     Undo{Stop: "systemctl disable --now " + unitFirewall + " >/dev/null 2>&1; nft delete table inet provision >/dev/null 2>&1"},
		render:   func(t *Target, fam Family) ([]File, error) { return FirewallFiles(t.Config, fam, t.Facts) },
		ready: func(t *Target) bool {
			return t.unitActive(unitFirewall) && t.Facts.UnitFiles[unitFirewall] == "enabled"
		},
		after: func(ctx context.Context, t *Target, changed []File) error {
			if err := daemonReload(ctx, t, changed); err != nil {
				return err
			}
			// reload-or-restart: a running unit re-reads the ruleset with
			// ExecReload (nft -f replaces only table inet provision, atomically).
			if _, err := t.sudoSh(ctx, "systemctl enable "+unitFirewall+" && systemctl reload-or-restart "+unitFirewall); err != nil {
				return fmt.Errorf("load firewall: %w", err)
			}
			t.setUnit(unitFirewall, "active", "enabled")
			return nil
		},
		off: func(ctx context.Context, t *Target) error {
			if _, err := t.sudoSh(ctx, "systemctl disable --now "+unitFirewall+" >/dev/null 2>&1; nft delete table inet provision >/dev/null 2>&1; true"); err != nil {
				return fmt.Errorf("unload firewall: %w", err)
			}
			t.setUnit(unitFirewall, "inactive", "disabled")
			return nil
		},
		offDone: func(ctx context.Context, t *Target) error {
			return daemonReload(ctx, t, []File{{Path: PathFirewallUnit}})
		},
	}
}
