package hostos

import (
	"context"
	"fmt"
	"strings"

	"github.com/provision/provision/provision/comm"
)

// harden.login is the local login policy that goes with SSH hardening: a
// banner, no core dumps and an idle timeout for login shells, password
// rules in login.defs and PAM (the policy script, run when it changes).
func stepHardenLogin() *Step {
	return &Step{
		ID: "harden.login",
		Files: []FileRule{
			{Path: PathIssue, Distro: true}, {Path: PathIssueNet, Distro: true}, {Path: PathProfile},
			{Path: PathLoginPolicy, OnChange: runLoginPolicy},
		},
		Enabled: func(c *Config) bool { return c.Hardening.SSH },
		// Installed with the engine, in its one package transaction; the
		// policy script then finds them (and still installs them when a
		// host got its engine another way).
		Extras: func(*Config, Family) []string { return LoginPackages },
		render: func(*Target, Family) ([]File, error) { return LoginFiles() },
	}
}

func runLoginPolicy(ctx context.Context, t *Target, _ File) error {
	out, err := t.sudo(ctx, comm.Quote("sh", PathLoginPolicy))
	if err != nil {
		return fmt.Errorf("login policy: %w", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if pkgs, ok := strings.CutPrefix(l, "packages-missing "); ok {
			t.Log.Warn("login policy applied without its packages (no package source reachable): install them to complete it", "packages", pkgs)
		}
	}
	return nil
}
