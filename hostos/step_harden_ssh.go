package hostos

import (
	"context"
	"fmt"

	"github.com/provision/provision/provision/comm"
)

// harden.ssh: the sshd drop-in (who may log in, how). sshd validates the
// whole configuration before it is reloaded, and a fresh login must work
// with it while our own session is still open; either failing puts the
// old file back.
func stepHardenSSH() *Step {
	return &Step{
		ID:      "harden.ssh",
		Files:   files(PathSSHD),
		Units:   []string{"ssh.service"},
		Enabled: func(c *Config) bool { return c.Hardening.SSH },
		Undo:    Undo{After: "if sshd -t 2>/dev/null || /usr/sbin/sshd -t; then systemctl reload ssh 2>/dev/null || systemctl reload sshd; fi"},
		render:  func(t *Target, _ Family) ([]File, error) { return SSHDFiles(t.Config) },
		put: func(ctx context.Context, t *Target, changed []File) error {
			// Keep the old file, install, validate the whole sshd config, and
			// put the old file back when sshd would not start with it. The
			// backup stays until a fresh login has worked (after).
			if _, err := t.sudoSh(ctx, "if [ -f "+PathSSHD+" ]; then cp -p "+PathSSHD+" "+sshdBackup+"; else rm -f "+sshdBackup+"; fi"); err != nil {
				return fmt.Errorf("back up %s: %w", PathSSHD, err)
			}
			if err := t.install(ctx, changed...); err != nil {
				return err
			}
			if _, err := t.sudoSh(ctx, "mkdir -p /run/sshd && sshd -t"); err != nil {
				if rerr := restoreSSHD(ctx, t); rerr != nil {
					return fmt.Errorf("sshd -t rejected %s: %w; rolling back failed too: %v", PathSSHD, err, rerr)
				}
				return fmt.Errorf("sshd -t rejected %s (rolled back): %w", PathSSHD, err)
			}
			return nil
		},
		after: func(ctx context.Context, t *Target, changed []File) error {
			if len(changed) == 0 {
				return nil
			}
			if err := reloadSSH(ctx, t); err != nil {
				return err
			}
			if t.Relogin != nil {
				// Our own connection is still open; a new one must work with
				// the new configuration before we go on.
				if err := t.Relogin(ctx); err != nil {
					t.Log.Error("a fresh SSH login failed after the sshd change: rolling back", "err", err)
					// Restore and reload in one command: our connection is the
					// only way in, so nothing may come between the two.
					fam, _ := t.family()
					if _, rerr := t.sudoSh(ctx, restoreScript+" && mkdir -p /run/sshd && sshd -t && systemctl try-reload-or-restart "+fam.SSHUnit+".service"); rerr != nil {
						return fmt.Errorf("a fresh login failed with the new %s (%v); rolling back failed too: %w", PathSSHD, err, rerr)
					}
					delete(t.Facts.Files, PathSSHD)
					return fmt.Errorf("a fresh login failed with the new %s, so the change was rolled back and sshd reloaded with the old configuration: %w", PathSSHD, err)
				}
			}
			_, err := t.sudo(ctx, comm.Quote("rm", "-f", sshdBackup))
			return err
		},
		offDone: func(ctx context.Context, t *Target) error { return reloadSSH(ctx, t) },
	}
}

const (
	sshdBackup    = PathSSHD + ".provision-bak"
	restoreScript = "if [ -f " + sshdBackup + " ]; then mv -f " + sshdBackup + " " + PathSSHD + "; else rm -f " + PathSSHD + "; fi"
)

// restoreSSHD puts the file saved before the change back (or removes ours
// when there was none) and forgets its hash: the next facts tell.
func restoreSSHD(ctx context.Context, t *Target) error {
	if _, err := t.sudoSh(ctx, restoreScript); err != nil {
		return err
	}
	delete(t.Facts.Files, PathSSHD)
	return nil
}

// reloadSSH makes a running sshd re-read its config; existing sessions (ours)
// stay. A socket-activated sshd that is not running reads it at next start.
func reloadSSH(ctx context.Context, t *Target) error {
	fam, _ := t.family()
	if _, err := t.sudoSh(ctx, "mkdir -p /run/sshd && sshd -t && systemctl try-reload-or-restart "+fam.SSHUnit+".service"); err != nil {
		return fmt.Errorf("reload sshd: %w", err)
	}
	return nil
}
