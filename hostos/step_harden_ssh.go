package hostos

import (
	"context"
	"fmt"
	"strings"

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
		// The drop-in is only as good as what sshd makes of it: an earlier
		// drop-in of the operator's or a Match block in sshd_config wins
		// over it. The step is done only when sshd's effective settings
		// for the admin's login are the drop-in's.
		ready: func(t *Target) bool { return len(sshdOverridden(t, t.Facts.SSHD)) == 0 },
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
				return checkSSHDEffective(ctx, t)
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
			if _, err := t.sudo(ctx, comm.Quote("rm", "-f", sshdBackup)); err != nil {
				return err
			}
			return checkSSHDEffective(ctx, t)
		},
		offDone: func(ctx context.Context, t *Target) error { return reloadSSH(ctx, t) },
	}
}

// SSHDEnforced are the sshd settings (as `sshd -T` names them) whose
// effective value harden.ssh checks against its drop-in: who may log in
// and how, and what a session may open.
var SSHDEnforced = []string{
	"permitrootlogin", "passwordauthentication", "kbdinteractiveauthentication",
	"pubkeyauthentication", "permitemptypasswords", "x11forwarding",
	"allowtcpforwarding", "allowagentforwarding", "permittunnel", "maxauthtries",
}

// sshdOverridden compares sshd's effective settings (eff, from sshd -T -C)
// with the drop-in's and lists each that differs as "key value (want
// value)". Nothing when eff is nil (not read: no sshd, unknown user).
func sshdOverridden(t *Target, eff map[string]string) []string {
	if eff == nil {
		return nil
	}
	files, err := SSHDFiles(t.Config)
	if err != nil || len(files) == 0 {
		return nil
	}
	want := map[string]string{}
	for _, l := range strings.Split(string(files[0].Content), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if strings.EqualFold(f[0], "Match") {
			break // what follows applies to some logins only
		}
		want[strings.ToLower(f[0])] = strings.ToLower(strings.Join(f[1:], " "))
	}
	norm := func(v string) string {
		v = strings.ToLower(strings.TrimSpace(v))
		if v == "without-password" { // sshd -T's name for prohibit-password
			v = "prohibit-password"
		}
		return v
	}
	var out []string
	for _, k := range SSHDEnforced {
		w, ok := want[k]
		v, have := eff[k]
		if !ok || !have || norm(v) == norm(w) {
			continue
		}
		out = append(out, fmt.Sprintf("%s %s (want %s)", k, v, w))
	}
	return out
}

// checkSSHDEffective reads sshd's effective settings for this login again
// and fails, naming the settings and the files that set them, when the
// operator's configuration overrides the drop-in: the host would be
// reported hardened while it is not.
func checkSSHDEffective(ctx context.Context, t *Target) error {
	script := "export LC_ALL=C PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nset -f\nSSHD_KEYS=" +
		comm.Quote(strings.Join(SSHDEnforced, " ")) + "\n" + sshdEffectiveScript + "\n" +
		"set +f\nfor f in /etc/ssh/sshd_config /etc/ssh/sshd_config.d/*.conf; do\n" +
		"\t[ -f \"$f\" ] && [ \"$f\" != " + PathSSHD + " ] && grep -qiE '^[[:space:]]*(" + strings.Join(SSHDEnforced, "|") + "|match)([[:space:]]|=)' \"$f\" && printf 'src\\t%s\\n' \"$f\"\n" +
		"done\ntrue\n"
	out, err := t.Comm.Run(ctx, comm.Sudo(t.Comm, loginArgsShell), strings.NewReader(script))
	if err != nil {
		return fmt.Errorf("read sshd's effective configuration: %w", err)
	}
	var eff map[string]string
	var srcs []string
	for _, l := range strings.Split(string(out), "\n") {
		kind, rest, _ := strings.Cut(l, "\t")
		switch kind {
		case "sshd":
			if k, v, ok := strings.Cut(rest, "\t"); ok {
				if eff == nil {
					eff = map[string]string{}
				}
				eff[k] = strings.TrimSpace(v)
			}
		case "src":
			srcs = append(srcs, strings.TrimSpace(rest))
		}
	}
	t.Facts.SSHD = eff
	bad := sshdOverridden(t, eff)
	if len(bad) == 0 {
		return nil
	}
	where := "sshd's own configuration"
	if len(srcs) > 0 {
		where = strings.Join(srcs, ", ")
	}
	return fmt.Errorf("sshd does not apply provision's %s to %s's logins: %s; set by %s (sshd keeps the first value it reads, and a Match block overrides): change or remove those lines, or set hardening.ssh = false",
		PathSSHD, t.Config.AdminUser, strings.Join(bad, ", "), where)
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
