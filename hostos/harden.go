package hostos

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/provision/provision/provision/comm"
)

// ---- harden.ssh

func hardenSSH() Step {
	return &fileStep{
		id:      "harden.ssh",
		paths:   []string{PathSSHD},
		enabled: func(c *Config) bool { return c.Hardening.SSH },
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

// onChange runs do when the file at path is among changed. When do fails, the
// file is removed again, so the next apply installs it and retries instead of
// counting the step as done.
func onChange(ctx context.Context, t *Target, changed []File, path string, do func(File) error) error {
	for _, f := range changed {
		if f.Path != path {
			continue
		}
		if err := do(f); err != nil {
			if rerr := t.remove(ctx, path); rerr != nil {
				return fmt.Errorf("%w (and removing %s: %v)", err, path, rerr)
			}
			return err
		}
	}
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

// ---- harden.kernel

func hardenKernel() Step {
	return &fileStep{
		id:      "harden.kernel",
		paths:   []string{PathSysctl, PathCoredump, PathLimits, PathModprobe},
		enabled: func(c *Config) bool { return c.Hardening.Kernel },
		render:  func(*Target, Family) ([]File, error) { return KernelFiles() },
		after: func(ctx context.Context, t *Target, changed []File) error {
			return onChange(ctx, t, changed, PathSysctl, func(f File) error {
				return applySysctl(ctx, t, f.Content)
			})
		},
	}
}

// ---- harden.login

// hardenLogin is the local login policy that goes with SSH hardening: a
// banner, no core dumps and an idle timeout for login shells, password
// rules in login.defs and PAM. The policy script runs when it changes.
func hardenLogin() Step {
	return &fileStep{
		id:      "harden.login",
		paths:   []string{PathIssue, PathIssueNet, PathProfile, PathLoginPolicy},
		enabled: func(c *Config) bool { return c.Hardening.SSH },
		render:  func(*Target, Family) ([]File, error) { return LoginFiles() },
		after: func(ctx context.Context, t *Target, changed []File) error {
			return onChange(ctx, t, changed, PathLoginPolicy, func(File) error {
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
			})
		},
	}
}

// Sysctl is one key = value line of a sysctl.d file.
type Sysctl struct {
	Key, Value string
	Optional   bool // "-key": a missing key is not an error
}

// Namespaced reports whether the key belongs to the network (or IPC)
// namespace, so a container host sets its own. kernel.* and fs.* are the
// whole machine's.
func (s Sysctl) Namespaced() bool {
	return strings.HasPrefix(s.Key, "net.") || strings.HasPrefix(s.Key, "fs.mqueue.") ||
		strings.HasPrefix(s.Key, "kernel.shm") || strings.HasPrefix(s.Key, "kernel.msg") || s.Key == "kernel.sem"
}

// ParseSysctl reads a sysctl.d file.
func ParseSysctl(b []byte) []Sysctl {
	var out []Sysctl
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || l[0] == '#' || l[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			continue
		}
		s := Sysctl{Key: strings.TrimSpace(k), Value: strings.TrimSpace(v)}
		if strings.HasPrefix(s.Key, "-") {
			s.Key, s.Optional = strings.TrimPrefix(s.Key, "-"), true
		}
		out = append(out, s)
	}
	return out
}

// applySysctl sets each key now (the file covers the next boot). In a
// container only namespaced keys are set: the others are the machine's
// kernel, shared with every other container, and not this host's to change.
func applySysctl(ctx context.Context, t *Target, content []byte) error {
	var script strings.Builder
	var skipped []string
	for _, s := range ParseSysctl(content) {
		if t.Facts.Container() && !s.Namespaced() {
			skipped = append(skipped, s.Key)
			continue
		}
		proc := "/proc/sys/" + strings.ReplaceAll(s.Key, ".", "/")
		set := fmt.Sprintf("sysctl -q -w %s >/dev/null 2>&1 || printf 'fail\\t%%s\\n' %s\n", comm.Quote(s.Key+"="+s.Value), comm.Quote(s.Key))
		if s.Optional {
			set = fmt.Sprintf("if [ -e %s ]; then %s; else printf 'missing\\t%%s\\n' %s; fi\n", comm.Quote(proc), strings.TrimSuffix(set, "\n"), comm.Quote(s.Key))
		}
		script.WriteString(set)
	}
	if len(skipped) > 0 {
		t.Log.Info("kernel-wide sysctls not set in a container (written for when this runs on its own kernel)", "keys", skipped)
	}
	out, err := t.sudoSh(ctx, script.String())
	if err != nil {
		return fmt.Errorf("apply sysctls: %w", err)
	}
	var failed, missing []string
	for _, l := range strings.Split(string(out), "\n") {
		kind, key, _ := strings.Cut(l, "\t")
		switch kind {
		case "fail":
			failed = append(failed, key)
		case "missing":
			missing = append(missing, key)
		}
	}
	if len(missing) > 0 {
		t.Log.Info("optional sysctls not present in this kernel (yet)", "keys", missing)
	}
	if len(failed) > 0 {
		return fmt.Errorf("could not set sysctls: %s", strings.Join(failed, ", "))
	}
	return nil
}

// ---- harden.firewall

func hardenFirewall() Step {
	return &fileStep{
		id:      "harden.firewall",
		paths:   []string{PathFirewall, PathFirewallUnit},
		enabled: func(c *Config) bool { return c.Hardening.Firewall },
		render:  func(t *Target, fam Family) ([]File, error) { return FirewallFiles(t.Config, fam, t.Facts) },
		ready: func(t *Target) bool {
			return t.unitActive(unitFirewall) && t.Facts.UnitFiles[unitFirewall] == "enabled"
		},
		put: func(ctx context.Context, t *Target, changed []File) error {
			if err := t.install(ctx, changed...); err != nil {
				return err
			}
			// A ruleset nft would reject must not stay in place for the next boot.
			if _, err := t.sudo(ctx, comm.Quote("nft", "-c", "-f", PathFirewall)); err != nil {
				t.remove(ctx, PathFirewall)
				return fmt.Errorf("nft rejected the ruleset: %w", err)
			}
			return nil
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

// ---- harden.audit

func hardenAudit() Step {
	return &fileStep{
		id:      "harden.audit",
		paths:   []string{PathAuditRules},
		enabled: func(c *Config) bool { return c.Hardening.Audit },
		render:  func(t *Target, fam Family) ([]File, error) { return AuditFiles(fam) },
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

// ---- harden.updates

func hardenUpdates() Step {
	return &fileStep{
		id:      "harden.updates",
		paths:   []string{PathAutoUpgrades, PathUnattendedConf, PathSecuritySource},
		enabled: func(c *Config) bool { return c.Hardening.Updates },
		render:  func(t *Target, _ Family) ([]File, error) { return UpdatesFiles(t.Config) },
		after: func(ctx context.Context, t *Target, changed []File) error {
			return onChange(ctx, t, changed, PathSecuritySource, func(File) error {
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
			})
		},
	}
}
