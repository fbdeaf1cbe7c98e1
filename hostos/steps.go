package hostos

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/provision/provision/provision/comm"
)

// Steps returns the host steps in order. Every step is always listed; a
// hardening step whose switch is off makes sure its files are gone.
func Steps(cfg *Config) []Step {
	return []Step{
		osSupported{},
		osReady{},
		hostname{},
		engineInstall{},
		engineTLS(),
		engineConfig(),
		journald(),
		prune(),
		hardenSSH(),
		hardenLogin(),
		hardenKernel(),
		hardenFirewall(),
		hardenAudit(),
		hardenUpdates(),
	}
}

// ---- os.supported

type osSupported struct{}

func (osSupported) ID() string { return "os.supported" }
func (osSupported) Check(ctx context.Context, t *Target) (bool, error) {
	if _, err := t.family(); err != nil {
		return false, err
	}
	if t.Facts.Arch == "" {
		return false, fmt.Errorf("no dpkg architecture reported")
	}
	return true, nil
}
func (osSupported) Apply(ctx context.Context, t *Target) error {
	_, err := t.family()
	return err
}

// ---- os.ready: cloud-init finished, no package manager running.

type osReady struct{}

func (osReady) ID() string { return "os.ready" }
func (osReady) Check(ctx context.Context, t *Target) (bool, error) {
	return !cloudInitBusy(t.Facts.CloudInit) && len(t.Facts.Busy) == 0, nil
}

func cloudInitBusy(status string) bool {
	switch status {
	case "", "done", "disabled", "error", "degraded", "not run", "not started":
		// "not started"/"not run": cloud-init will not run this boot (or is off).
		return false
	}
	return true
}

func (osReady) Apply(ctx context.Context, t *Target) error {
	if t.Facts.CloudInit != "" {
		t.Log.Info("waiting for cloud-init", "status", t.Facts.CloudInit)
		_, err := t.sudo(ctx, "cloud-init status --wait")
		switch code := exitCode(err); {
		case err == nil:
		case code == 1 || code == 2:
			t.Log.Warn("cloud-init finished with errors; going on", "exit", code)
		default:
			return fmt.Errorf("wait for cloud-init: %w", err)
		}
		t.Facts.CloudInit = "done"
	}
	err := poll(ctx, 30*time.Minute, "package manager to finish", func() (bool, error) {
		out, err := t.sudoSh(ctx, busyScript+"; true")
		if err != nil {
			return false, err
		}
		if strings.TrimSpace(string(out)) == "" {
			return true, nil
		}
		t.Log.Debug("package manager busy", "procs", strings.TrimSpace(string(out)))
		return false, nil
	})
	if err != nil {
		return err
	}
	t.Facts.Busy = nil
	return nil
}

// ---- host.hostname

type hostname struct{}

var hostnameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

func (hostname) ID() string { return "host.hostname" }
func (hostname) Check(ctx context.Context, t *Target) (bool, error) {
	name := t.Config.Node
	if name == "" {
		return true, nil
	}
	if !hostnameRE.MatchString(name) || len(name) > 253 {
		return false, fmt.Errorf("node name %q is not a valid hostname", name)
	}
	return t.Facts.Hostname == name, nil
}
func (hostname) Apply(ctx context.Context, t *Target) error {
	name := comm.Quote(t.Config.Node)
	// hostnamectl replaces /etc/hostname by rename, which fails where it is a
	// bind mount (containers): then write it in place.
	script := `if ! { command -v hostnamectl >/dev/null 2>&1 && timeout 30 hostnamectl set-hostname ` + name + ` 2>/dev/null; }; then
	printf '%s\n' ` + name + ` >/etc/hostname && hostname ` + name + `
fi
grep -Eq "[[:space:]]` + regexp.QuoteMeta(t.Config.Node) + `([[:space:]]|\$)" /etc/hosts || printf '127.0.1.1\t%s\n' ` + name + ` >>/etc/hosts`
	if _, err := t.sudoSh(ctx, script); err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	t.Facts.Hostname = t.Config.Node
	return nil
}

// ---- file steps

// fileStep is a step that keeps a set of rendered files on the host, plus
// what has to happen when they change. With its switch off it removes them.
type fileStep struct {
	id      string
	paths   []string                                     // every path the step owns
	enabled func(*Config) bool                           // nil: always on
	render  func(*Target, Family) ([]File, error)        // wanted files
	ready   func(*Target) bool                           // extra done condition (unit states); nil: none
	put     func(context.Context, *Target, []File) error // install changed files; nil: t.install
	after   func(context.Context, *Target, []File) error // after installing (changed may be empty)
	off     func(context.Context, *Target) error         // before removing the files when switched off
	offDone func(context.Context, *Target) error         // after removing them
}

func (s *fileStep) ID() string { return s.id }

func (s *fileStep) on(cfg *Config) bool { return s.enabled == nil || s.enabled(cfg) }

func (s *fileStep) Check(ctx context.Context, t *Target) (bool, error) {
	fam, err := t.family()
	if err != nil {
		return false, err
	}
	if !s.on(t.Config) {
		return len(t.present(s.paths)) == 0, nil
	}
	files, err := s.render(t, fam)
	if err != nil {
		return false, err
	}
	if len(t.changed(files)) > 0 {
		return false, nil
	}
	return s.ready == nil || s.ready(t), nil
}

func (s *fileStep) Apply(ctx context.Context, t *Target) error {
	fam, err := t.family()
	if err != nil {
		return err
	}
	if !s.on(t.Config) {
		if s.off != nil {
			if err := s.off(ctx, t); err != nil {
				return err
			}
		}
		if err := t.remove(ctx, t.present(s.paths)...); err != nil {
			return err
		}
		if s.offDone != nil {
			return s.offDone(ctx, t)
		}
		return nil
	}
	files, err := s.render(t, fam)
	if err != nil {
		return err
	}
	changed := t.changed(files)
	put := s.put
	if put == nil {
		put = func(ctx context.Context, t *Target, fs []File) error { return t.install(ctx, fs...) }
	}
	if len(changed) > 0 {
		if err := put(ctx, t, changed); err != nil {
			return err
		}
		t.Log.Info("files written", "step", s.id, "files", paths(changed))
	}
	if s.after != nil {
		return s.after(ctx, t, changed)
	}
	return nil
}

func paths(fs []File) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = f.Path
	}
	return out
}

// daemonReload reloads systemd when a unit file is among changed.
func daemonReload(ctx context.Context, t *Target, changed []File) error {
	for _, f := range changed {
		if strings.HasPrefix(f.Path, "/etc/systemd/system/") {
			if _, err := t.sudo(ctx, "systemctl daemon-reload"); err != nil {
				return fmt.Errorf("systemctl daemon-reload: %w", err)
			}
			return nil
		}
	}
	return nil
}

// ---- engine.tls

func engineTLS() Step {
	return &fileStep{
		id:    "engine.tls",
		paths: []string{PathTLSCA, PathTLSCert, PathTLSKey},
		render: func(t *Target, _ Family) ([]File, error) {
			return TLSFilesOf(t.Config)
		},
		after: func(ctx context.Context, t *Target, changed []File) error {
			if len(changed) == 0 {
				return nil
			}
			// dockerd reads its certificates only at start. When engine.config
			// has nothing to do, it will not restart the engine: do it here.
			fam, _ := t.family()
			files, err := DaemonFiles(t.Config, fam)
			if err != nil {
				return err
			}
			if len(t.changed(files)) > 0 || !t.unitActive("docker.service") {
				return nil
			}
			return restartDocker(ctx, t, false)
		},
	}
}

// ---- engine.config

func engineConfig() Step {
	return &fileStep{
		id:    "engine.config",
		paths: []string{PathDaemonJSON, PathDockerDropIn},
		render: func(t *Target, fam Family) ([]File, error) {
			return DaemonFiles(t.Config, fam)
		},
		ready: func(t *Target) bool { return t.unitActive("docker.service") },
		after: func(ctx context.Context, t *Target, changed []File) error {
			if len(changed) == 0 && t.unitActive("docker.service") {
				return nil
			}
			return restartDocker(ctx, t, len(changed) > 0)
		},
	}
}

// restartDocker restarts the engine and waits until systemd says it is up.
func restartDocker(ctx context.Context, t *Target, reload bool) error {
	script := "systemctl reset-failed docker.service docker.socket >/dev/null 2>&1; systemctl restart docker.service"
	if reload {
		script = "systemctl daemon-reload && " + script
	}
	t.Log.Info("restarting the engine")
	if _, err := t.sudoSh(ctx, script); err != nil {
		log, _ := t.sudo(ctx, comm.Quote("journalctl", "-u", "docker.service", "-n", "15", "--no-pager", "-o", "cat"))
		t.setUnit("docker.service", "failed", "")
		return fmt.Errorf("restart docker: %w; journal:\n%s", err, strings.TrimSpace(string(log)))
	}
	return t.waitActive(ctx, "docker.service", 2*time.Minute)
}

// ---- logging.journald

func journald() Step {
	return &fileStep{
		id:     "logging.journald",
		paths:  []string{PathJournald},
		render: func(t *Target, _ Family) ([]File, error) { return JournaldFiles(t.Config) },
		after: func(ctx context.Context, t *Target, changed []File) error {
			if len(changed) == 0 {
				return nil
			}
			if _, err := t.sudo(ctx, "systemctl restart systemd-journald.service"); err != nil {
				return fmt.Errorf("restart journald: %w", err)
			}
			return nil
		},
	}
}

// ---- prune.timer

func prune() Step {
	return &fileStep{
		id:      "prune.timer",
		paths:   []string{PathPruneService, PathPruneTimer},
		enabled: func(c *Config) bool { return c.Prune.Enabled },
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
