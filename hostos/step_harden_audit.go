package hostos

import (
	"context"
	"fmt"
)

// harden.audit: audit rules watching the engine's files and binaries, loaded
// by auditd (not in a container: the kernel's audit interface is not its own).
func stepHardenAudit() *Step {
	return &Step{
		ID:       "harden.audit",
		Files:    files(PathAuditRules),
		Units:    []string{"auditd.service"},
		Packages: func(_ *Config, fam Family) []string { return []string{fam.Audit} },
		Enabled:  func(c *Config) bool { return c.Hardening.Audit },
		Undo:     Undo{After: "if command -v augenrules >/dev/null 2>&1 && [ \"$(systemd-detect-virt -c 2>/dev/null)\" = none ]; then augenrules --load >/dev/null 2>&1; fi"},
		render:   func(t *Target, fam Family) ([]File, error) { return AuditFiles(fam) },
		ready: func(t *Target) bool {
			return t.Facts.Container() || t.unitActive("auditd.service")
		},
		after: func(ctx context.Context, t *Target, changed []File) error {
			if t.Facts.Container() {
				t.Log.Warn("auditd cannot run in a container (the kernel's audit interface belongs to the initial namespaces): rules written, not loaded", "rules", PathAuditRules, "virt", t.Facts.Virt)
				return nil
			}
			if _, err := t.sudoSh(ctx, "systemctl enable --now auditd.service && augenrules --load"); err != nil {
				return fmt.Errorf("load audit rules: %w", err)
			}
			t.setUnit("auditd.service", "active", "enabled")
			return nil
		},
		offDone: func(ctx context.Context, t *Target) error {
			if t.Facts.Container() || t.Facts.Commands["augenrules"] == "" {
				return nil
			}
			if _, err := t.sudo(ctx, "augenrules --load"); err != nil {
				return fmt.Errorf("reload audit rules: %w", err)
			}
			return nil
		},
	}
}
