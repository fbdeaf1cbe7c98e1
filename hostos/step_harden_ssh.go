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
				// sshd may be down now, with our session the only way in:
				// put the old file back and start it with that.
				if rerr := rollBackSSHD(ctx, t); rerr != nil {
					return fmt.Errorf("%w; rolling back failed too: %v", err, rerr)
				}
				return fmt.Errorf("%w (the old %s is back)", err, PathSSHD)
			}
			if t.Relogin != nil {
				// Our own connection is still open; a new one must work with
				// the new configuration before we go on.
				if err := t.Relogin(ctx); err != nil {
					t.Log.Error("a fresh SSH login failed after the sshd change: rolling back", "err", err)
					if rerr := rollBackSSHD(ctx, t); rerr != nil {
						return fmt.Errorf("a fresh login failed with the new %s (%v); rolling back failed too: %w", PathSSHD, err, rerr)
					}
					return fmt.Errorf("a fresh login failed with the new %s, so the change was rolled back and sshd serves the old configuration again: %w", PathSSHD, err)
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

// rollBackSSHD puts the file saved before the change back and makes it the
// one sshd serves, in one command: our connection may be the only way in,
// so nothing may come between the two.
func rollBackSSHD(ctx context.Context, t *Target) error {
	if _, err := t.sudoSh(ctx, restoreScript+" && "+sshdLiveScript(t)); err != nil {
		return err
	}
	delete(t.Facts.Files, PathSSHD)
	return nil
}

// reloadSSH makes sshd serve new connections with the configuration on
// disk, and returns only once it does; existing sessions (ours) stay.
func reloadSSH(ctx context.Context, t *Target) error {
	if _, err := t.sudoSh(ctx, sshdLiveScript(t)); err != nil {
		return fmt.Errorf("reload sshd: %w", err)
	}
	return nil
}

// sshdLiveScript validates the configuration and makes it the one that
// answers the next connection (SSHDLiveFunc).
func sshdLiveScript(t *Target) string {
	fam, _ := t.family()
	return SSHDLiveFunc + "sshd_live " + comm.Quote(fam.SSHUnit+".service")
}

// SSHDLiveFunc defines the shell function sshd_live UNIT: validate sshd's
// configuration and return only once it is the one that answers the next
// connection; sessions already open stay. A reload (SIGHUP) is not enough:
// systemd returns as soon as the signal is sent, and a listener that gets
// the CPU only after a new connection has queued accepts that connection
// with the configuration (and host key) it had, so a fresh login could pass
// on the old file. A restart is a job systemd finishes only when the old
// listener has exited and the new one is ready; with KillMode=process
// (Debian's and Ubuntu's ssh.service) it leaves the sessions alone. Where a
// unit would kill the sessions, sshd_live reloads and waits until the
// listener's sockets are new ones (sshd re-executes and binds again only
// after reading its configuration). An sshd that is not running (socket
// activation per connection) reads the files at the next login.
const SSHDLiveFunc = `sshd_live() {
  u=$1
  mkdir -p /run/sshd && sshd -t || return
  systemctl is-active -q "$u" || return 0
  if [ "$(systemctl show -p KillMode --value "$u")" = process ]; then systemctl restart "$u"; return; fi
  p=$(systemctl show -p MainPID --value "$u")
  old=" $(ls -l /proc/"$p"/fd 2>/dev/null | grep -o 'socket:\[[0-9]*\]' | tr '\n' ' ')"
  systemctl reload "$u" || return
  i=0
  while [ $i -lt 600 ]; do
    new=$(ls -l /proc/"$p"/fd 2>/dev/null | grep -o 'socket:\[[0-9]*\]' || true)
    fresh=1
    [ -n "$new" ] || fresh=0
    for s in $new; do case "$old" in *" $s "*) fresh=0 ;; esac; done
    [ $fresh = 1 ] && return 0
    sleep 0.2; i=$((i+1))
  done
  echo "$u: sshd did not take the new configuration within 120 s (its listener kept the old sockets)" >&2
  return 1
}
`
