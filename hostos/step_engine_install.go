package hostos

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/provision/provision/provision/comm"
)

// engine.install: the engine package (pinned, from the host's package
// sources or the offline bundle) and every package the enabled steps need.
// A new engine version restarts the engine (the package's own scripts do)
// and stops its tasks meanwhile: swarm members are drained first. Wipe
// stops the engine and keeps the packages and /var/lib/docker.
func stepEngineInstall() *Step {
	return &Step{
		ID:             "engine.install",
		Units:          []string{"docker.service", "containerd.service"},
		Packages:       func(cfg *Config, _ Family) []string { return []string{enginePackage(cfg)} },
		RestartsEngine: true,
		Drain:          EngineChanging, // not when it only adds packages another step needs
		DrainReason:    "engine upgrade",
		Undo:           Undo{Stop: "systemctl disable --now docker.service docker.socket containerd.service >/dev/null 2>&1"},
		check:          engineInstalled,
		apply:          installEngine,
	}
}

// enginePackage is the engine package name (spec default docker.io).
func enginePackage(cfg *Config) string { return cfg.Engine.Package }

// VersionMatches reports whether an installed or candidate version satisfies
// the pin: "" accepts any, a pin ending in '*' ("20.10.24*") is a prefix,
// anything else must be equal.
func VersionMatches(have, pin string) bool {
	if have == "" {
		return false
	}
	if pin == "" || have == pin {
		return true
	}
	// A pin is exact unless it ends in '*': "20.10.2" is not 20.10.24.
	prefix, ok := strings.CutSuffix(pin, "*")
	return ok && strings.HasPrefix(have, prefix)
}

func engineInstalled(ctx context.Context, t *Target) (bool, error) {
	fam, err := t.family()
	if err != nil {
		return false, err
	}
	if enginePackage(t.Config) == "" {
		return false, fmt.Errorf("no engine package named")
	}
	switch m := t.Config.Engine.Method; m {
	case "", "package", "bundle":
	default:
		return false, fmt.Errorf("engine method %q: want package or bundle", m)
	}
	// A downgrade is refused before anything changes on the host.
	if err := checkDowngrade(t.Config, t.Facts.Packages[enginePackage(t.Config)], t.Config.Engine.Version); err != nil {
		return false, err
	}
	for _, p := range wantPackages(t.Config, fam) {
		if _, ok := t.Facts.Packages[p]; !ok {
			return false, nil
		}
	}
	have := t.Facts.Packages[enginePackage(t.Config)]
	return VersionMatches(have, t.Config.Engine.Version) && t.Facts.Engine != "", nil
}

func installEngine(ctx context.Context, t *Target) error {
	fam, err := t.family()
	if err != nil {
		return err
	}
	// A first install: the engine's certificates and settings go on the
	// host before the package, whose own start then uses them; no restart
	// follows (engine.tls and engine.config find their files in place).
	fresh := t.Facts.Packages[enginePackage(t.Config)] == "" && t.Facts.Engine == ""
	if fresh {
		ids, err := prestage(ctx, t, fam)
		if err != nil {
			return fmt.Errorf("before the engine's first start: %w", err)
		}
		if len(ids) > 0 {
			t.Log.Info("engine settings written before its first start", "steps", ids)
		}
	}
	if t.Config.Engine.Method == "bundle" {
		err = installBundle(ctx, t, fam)
	} else {
		err = installPackage(ctx, t, fam)
	}
	if err != nil {
		return err
	}
	before := t.Facts.Packages[enginePackage(t.Config)]
	if err := verifyEngine(ctx, t, fam); err != nil {
		return err
	}
	if fresh {
		// The package started the engine with the settings written above
		// (a start failing does not fail the install, and a policy-rc.d may
		// forbid it): record how the engine is once it settled. When it is
		// not running, engine.config starts it (and reports its journal).
		state := ""
		err := poll(ctx, 2*time.Minute, "docker.service to settle after its install", func() (bool, error) {
			out, err := t.sudo(ctx, comm.Quote("systemctl", "show", "-p", "ActiveState", "--value", "docker.service"))
			if err != nil {
				return false, err
			}
			state = strings.TrimSpace(string(out))
			return state != "activating" && state != "deactivating" && state != "reloading", nil
		})
		if err != nil {
			return err
		}
		t.setUnit("docker.service", state, "")
		if state != "active" {
			t.Log.Info("the engine is not running after its install; engine.config starts it", "state", state)
		}
	}
	if after := t.Facts.Packages[enginePackage(t.Config)]; before != "" && after != before {
		// A new engine version: whatever the package's own scripts did
		// (a policy-rc.d may keep them from restarting it), the running
		// daemon must be the new one. The end of the engine steps
		// restarts it once.
		t.restartPending = true
		t.Log.Info("engine package changed: the engine restarts", "from", before, "to", after)
	}
	return nil
}

// checkDowngrade refuses to take the engine package from have to a lower
// version (want: a pin or a resolved version) unless the operator allowed it.
func checkDowngrade(cfg *Config, have, want string) error {
	if cfg.AllowDowngrade || !Downgrade(have, want) {
		return nil
	}
	return fmt.Errorf("engine package %s %s is installed and the spec pins %s: a downgrade, refused (an engine downgrade can leave containers and the swarm's raft in a format the older engine cannot read); run apply with --allow-engine-downgrade to make it", enginePackage(cfg), have, want)
}

// aptEnv runs apt non-interactively, keeping changed config files
// (--force-confold) and waiting for a held dpkg lock instead of failing.
const aptEnv = "env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l "
const aptOpts = " -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef -o DPkg::Lock::Timeout=600 "

// aptUpdateOpts: the package lists the install needs and no more. Without
// Acquire::Languages=none apt also fetches and unpacks the description
// translations (Translation-en, 33 MB unpacked on Debian 12), which no
// install reads: 1.6 s of a 4.3 s update on one host here, and CPU the
// hosts of a fresh cluster share. apt's own timers fetch them again with
// the distro's settings.
const aptUpdateOpts = " -o Acquire::Languages=none "

// lockWait bounds waitPackageLock.
var lockWait = 10 * time.Minute

// waitPackageLock returns once no other process holds dpkg's lock, saying
// every 10 s who holds it, and fails after lockWait naming the holder.
// apt's locks are fcntl locks that pgrep (os.ready) does not see when the
// holder is not apt itself, and apt's own DPkg::Lock::Timeout waits without
// a word, so apt is asked without waiting (`apt-get check` takes the dpkg
// frontend lock). apt-daily and unattended-upgrades at boot are the usual
// holders.
func waitPackageLock(ctx context.Context, t *Target) error {
	start, said, last := time.Now(), time.Time{}, ""
	err := poll(ctx, lockWait, "the dpkg lock", func() (bool, error) {
		out, err := t.sudoSh(ctx, "apt-get -qq -o DPkg::Lock::Timeout=0 check 2>&1; true")
		if err != nil {
			return false, err
		}
		held := ""
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "Could not get lock") || strings.Contains(l, "Unable to acquire the dpkg") || strings.Contains(l, "Unable to lock") {
				held = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "E:"))
				break
			}
		}
		if held == "" {
			return true, nil
		}
		last = held
		if time.Since(said) >= 10*time.Second {
			said = time.Now()
			t.Log.Warn(fmt.Sprintf("waiting for the dpkg lock (%s of %s)", time.Since(start).Round(time.Second), lockWait), "holder", held)
		}
		return false, nil
	})
	if err != nil && last != "" {
		return fmt.Errorf("%w: %s (apt-daily or unattended-upgrades at boot are the usual holders; apply again once it is done)", err, last)
	}
	return err
}

func installPackage(ctx context.Context, t *Target, fam Family) error {
	if err := waitPackageLock(ctx, t); err != nil {
		return err
	}
	if _, err := t.sudo(ctx, aptEnv+"apt-get -q update"+aptUpdateOpts+aptOpts); err != nil {
		return fmt.Errorf("apt-get update: %w", err)
	}
	pkg := enginePackage(t.Config)
	args := []string{"apt-get", "install", "-y", "-q", "--no-install-recommends"}
	spec := pkg
	if pin := t.Config.Engine.Version; pin != "" {
		out, err := t.sudo(ctx, comm.Quote("apt-cache", "madison", pkg))
		if err != nil {
			return fmt.Errorf("apt-cache madison %s: %w", pkg, err)
		}
		v, err := ResolveVersion(pkg, pin, ParseMadison(out, pkg))
		if err != nil {
			return err
		}
		if err := checkDowngrade(t.Config, t.Facts.Packages[pkg], v); err != nil {
			return err
		}
		spec = pkg + "=" + v
		if t.Config.AllowDowngrade {
			args = append(args, "--allow-downgrades")
		}
	}
	want := wantPackages(t.Config, fam)
	args = append(args, spec)
	args = append(args, want[1:]...)
	// One transaction for everything the profile installs: the required
	// packages and the steps' extras (a second apt run costs as much again
	// in dependency resolution and dpkg triggers).
	extras := extraPackages(t.Config, fam, want)
	t.Log.Info("installing packages", "packages", append(slices.Clone(want), extras...))
	if len(extras) > 0 {
		err := aptInstall(ctx, t, aptEnv+comm.Quote(append(slices.Clone(args), extras...)...)+aptOpts)
		if err == nil {
			return nil
		}
		t.Log.Info("installing without the optional packages: the transaction with them failed", "packages", extras, "err", err)
	}
	if err := aptInstall(ctx, t, aptEnv+comm.Quote(args...)+aptOpts); err != nil {
		return fmt.Errorf("apt-get install: %w", err)
	}
	return nil
}

// aptInstall runs an apt-get install command as root. A transaction that
// stopped half way (apply killed, the connection lost, the host rebooted
// during an earlier install) leaves dpkg interrupted, and apt then refuses
// every install until `dpkg --configure -a` has finished the packages it
// left: that is run once, saying so, and the install again.
func aptInstall(ctx context.Context, t *Target, cmd string) error {
	if err := waitPackageLock(ctx, t); err != nil {
		return err
	}
	_, err := t.sudoSh(ctx, cmd)
	if err == nil || !strings.Contains(err.Error(), "dpkg --configure -a") {
		return err
	}
	t.Log.Warn("dpkg was interrupted by an earlier run: finishing its packages with dpkg --configure -a", "err", err)
	if _, cerr := t.sudoSh(ctx, aptEnv+"dpkg --configure -a --force-confold --force-confdef"); cerr != nil {
		return fmt.Errorf("%w; then dpkg --configure -a: %v", err, cerr)
	}
	_, err = t.sudoSh(ctx, cmd)
	return err
}

// ParseMadison reads `apt-cache madison PKG` ("pkg | version | source")
// into versions in the order listed, without duplicates.
func ParseMadison(out []byte, pkg string) []string {
	var vs []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Split(l, "|")
		if len(f) < 3 || strings.TrimSpace(f[0]) != pkg {
			continue
		}
		v := strings.TrimSpace(f[1])
		if v != "" && !slices.Contains(vs, v) {
			vs = append(vs, v)
		}
	}
	return vs
}

// ResolveVersion picks the version for a pin among the available ones: an
// exact match, else the first (newest) with the pin as a prefix.
func ResolveVersion(pkg, pin string, avail []string) (string, error) {
	if slices.Contains(avail, pin) {
		return pin, nil
	}
	for _, v := range avail {
		if VersionMatches(v, pin) {
			return v, nil
		}
	}
	if len(avail) == 0 {
		return "", fmt.Errorf("engine package %s: no version available from the host's package sources", pkg)
	}
	return "", fmt.Errorf("engine package %s version %q not available; available: %s", pkg, pin, strings.Join(avail, ", "))
}

// verifyEngine re-reads the installed versions and `dockerd --version` and
// records them in the facts.
func verifyEngine(ctx context.Context, t *Target, fam Family) error {
	pkgs := wantPackages(t.Config, fam)
	script := "dpkg-query -W -f='pkg\\t${db:Status-Abbrev}\\t${Package}\\t${Version}\\n' " + comm.Quote(pkgs...) + " 2>/dev/null; " +
		"printf 'engine\\t%s\\n' \"$(dockerd --version 2>/dev/null)\"; printf 'end\\n'"
	out, err := t.sudoSh(ctx, script)
	if err != nil && exitCode(err) != 1 { // dpkg-query exits 1 when a package is missing
		return fmt.Errorf("check engine: %w", err)
	}
	got, perr := ParseFacts(out)
	if perr != nil {
		return fmt.Errorf("check engine: %w", perr)
	}
	var missing []string
	for _, p := range pkgs {
		v, ok := got.Packages[p]
		if !ok {
			missing = append(missing, p)
			continue
		}
		t.Facts.Packages[p] = v
	}
	if len(missing) > 0 {
		return fmt.Errorf("packages not installed after install: %s", strings.Join(missing, ", "))
	}
	pkg := enginePackage(t.Config)
	if have := got.Packages[pkg]; !VersionMatches(have, t.Config.Engine.Version) {
		return fmt.Errorf("engine package %s is %s after install, want %s", pkg, have, t.Config.Engine.Version)
	}
	if got.Engine == "" {
		return fmt.Errorf("dockerd --version gives nothing after installing %s", pkg)
	}
	t.Facts.Engine = got.Engine
	t.Log.Info("engine installed", "package", pkg, "version", got.Packages[pkg], "dockerd", got.Engine)
	return nil
}

// EngineChanging reports whether engine.install would change the engine
// itself on the host (not only add packages other steps need): the engine
// package is missing or not at the pin. Only then does a member need its
// drain.
func EngineChanging(t *Target) bool {
	if t == nil || t.Facts == nil || t.Config == nil {
		return true
	}
	have := t.Facts.Packages[enginePackage(t.Config)]
	return have == "" || t.Facts.Engine == "" || !VersionMatches(have, t.Config.Engine.Version)
}
