package hostos

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/provision/provision/provision/comm"
)

// bundleLocks serialises operator-side apt runs per bundle directory (apt
// locks its archive directory; parallel hosts share one).
var bundleLocks sync.Map // dir -> *sync.Mutex

// BundleName is the bundle directory for a host: "debian-12-amd64".
func BundleName(fam Family, arch string) string { return fam.Name + "-" + arch }

// operatorPlatform is the operator machine's distro family and dpkg arch.
func operatorPlatform(ctx context.Context) (Family, string, error) {
	b, err := os.ReadFile("/etc/os-release")
	if err != nil {
		return Family{}, "", fmt.Errorf("this machine's os-release: %w", err)
	}
	var out bytes.Buffer
	for _, l := range strings.Split(string(b), "\n") {
		fmt.Fprintf(&out, "os\t%s\n", l)
	}
	out.WriteString("end\n")
	f, err := ParseFacts(out.Bytes())
	if err != nil {
		return Family{}, "", err
	}
	fam, err := FamilyOf(f.OS)
	if err != nil {
		return Family{}, "", fmt.Errorf("this machine cannot prepare offline bundles: %w", err)
	}
	arch, err := exec.CommandContext(ctx, "dpkg", "--print-architecture").Output()
	if err != nil {
		return Family{}, "", fmt.Errorf("this machine's dpkg architecture: %w", err)
	}
	return fam, strings.TrimSpace(string(arch)), nil
}

// installBundle installs the engine without network on the host: this
// machine downloads exactly the packages the host lacks (apt resolving
// against the host's own dpkg status) into the bundle directory, uploads
// them, and the host installs them with apt from local files.
func installBundle(ctx context.Context, t *Target, fam Family) error {
	if t.Config.BundleDir == "" {
		return fmt.Errorf("engine method bundle: no bundle directory")
	}
	opFam, opArch, err := operatorPlatform(ctx)
	if err != nil {
		return err
	}
	name := BundleName(fam, t.Facts.Arch)
	if opFam.Name != fam.Name || opArch != t.Facts.Arch {
		return fmt.Errorf("offline bundle %s must be prepared on a %s machine; this one is %s: prepare it there, or use engine method \"package\"",
			name, name, BundleName(opFam, opArch))
	}
	dir := filepath.Join(t.Config.BundleDir, name)
	if err := os.MkdirAll(filepath.Join(dir, "partial"), 0o755); err != nil {
		return fmt.Errorf("bundle dir: %w", err)
	}
	status, err := t.Comm.Download(ctx, "/var/lib/dpkg/status")
	if err != nil {
		return fmt.Errorf("download the host's dpkg status: %w", err)
	}
	debs, err := prepareBundle(ctx, t, fam, dir, status)
	if err != nil {
		return err
	}
	if len(debs) == 0 {
		t.Log.Info("offline bundle: the host has every package already")
		return nil
	}
	return uploadAndInstall(ctx, t, debs)
}

// prepareBundle downloads what the host lacks and returns those .deb files.
func prepareBundle(ctx context.Context, t *Target, fam Family, dir string, status []byte) ([]string, error) {
	mu, _ := bundleLocks.LoadOrStore(dir, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()

	sf, err := os.CreateTemp(dir, "status-*")
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	defer os.Remove(sf.Name())
	if _, err := sf.Write(status); err != nil {
		sf.Close()
		return nil, fmt.Errorf("bundle: %w", err)
	}
	if err := sf.Close(); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	pkg := enginePackage(t.Config)
	spec := pkg
	if pin := t.Config.Engine.Version; pin != "" {
		out, err := exec.CommandContext(ctx, "apt-cache", "madison", pkg).Output()
		if err != nil {
			return nil, fmt.Errorf("apt-cache madison %s on this machine: %w", pkg, err)
		}
		v, err := ResolveVersion(pkg, pin, ParseMadison(out, pkg))
		if err != nil {
			return nil, fmt.Errorf("%w (this machine's package lists; run apt-get update here?)", err)
		}
		spec = pkg + "=" + v
	}
	pkgs := append([]string{spec}, wantPackages(t.Config, fam)[1:]...)
	base := []string{"-o", "Dir::State::status=" + sf.Name(), "-o", "Dir::Cache::archives=" + dir + "/",
		"-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root", "-y", "-q", "--no-install-recommends"}
	sim := exec.CommandContext(ctx, "apt-get", append(append([]string{"install", "-s"}, base...), pkgs...)...)
	sim.Env = append(os.Environ(), "LC_ALL=C")
	out, err := sim.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("resolve bundle %s: apt-get install -s: %w: %s", filepath.Base(dir), err, tailOf(out))
	}
	inst := ParseSimulate(out)
	if len(inst) == 0 {
		return nil, nil
	}
	dl := exec.CommandContext(ctx, "apt-get", append(append([]string{"install", "--download-only"}, base...), pkgs...)...)
	dl.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	if out, err := dl.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("download bundle %s: %w: %s", filepath.Base(dir), err, tailOf(out))
	}
	var debs []string
	for _, p := range inst {
		m, _ := filepath.Glob(filepath.Join(dir, DebFileGlob(p.Name, p.Version)))
		if len(m) == 0 {
			return nil, fmt.Errorf("bundle %s: %s %s was not downloaded", filepath.Base(dir), p.Name, p.Version)
		}
		debs = append(debs, m[0])
	}
	t.Log.Info("offline bundle prepared", "dir", dir, "packages", len(debs))
	return debs, nil
}

// SimPackage is one "Inst" line of `apt-get install -s`.
type SimPackage struct{ Name, Version string }

// ParseSimulate reads `apt-get install -s` output:
// "Inst docker.io (20.10.24+dfsg1-1+deb12u1+b6 Debian:12.12/oldstable [amd64])"
// or "Inst pkg [old] (new ...)".
func ParseSimulate(out []byte) []SimPackage {
	var ps []SimPackage
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 || f[0] != "Inst" {
			continue
		}
		for _, x := range f[2:] {
			if strings.HasPrefix(x, "(") {
				ps = append(ps, SimPackage{Name: f[1], Version: strings.TrimPrefix(x, "(")})
				break
			}
		}
	}
	return ps
}

// DebFileGlob is the archive file name apt gives a package version:
// name_version_arch.deb with the epoch colon escaped.
func DebFileGlob(name, version string) string {
	v := strings.ReplaceAll(url.PathEscape(version), ":", "%3a")
	v = strings.ReplaceAll(v, "%3A", "%3a")
	return name + "_" + v + "_*.deb"
}

func uploadAndInstall(ctx context.Context, t *Target, debs []string) error {
	out, err := t.Comm.Run(ctx, "mktemp -d /tmp/provision-bundle.XXXXXXXX", nil)
	if err != nil {
		return fmt.Errorf("bundle temp dir: %w", err)
	}
	tmp := strings.TrimSpace(string(out))
	if !strings.HasPrefix(tmp, "/tmp/provision-bundle.") {
		return fmt.Errorf("bundle temp dir: mktemp gave %q", tmp)
	}
	defer t.Comm.Run(context.WithoutCancel(ctx), comm.Quote("rm", "-rf", tmp), nil)
	for _, d := range debs {
		f, err := os.Open(d)
		if err != nil {
			return fmt.Errorf("bundle: %w", err)
		}
		err = t.Comm.Upload(ctx, tmp+"/"+filepath.Base(d), f, 0o644)
		f.Close()
		if err != nil {
			return fmt.Errorf("upload %s: %w", filepath.Base(d), err)
		}
	}
	t.Log.Info("installing offline bundle", "packages", len(debs))
	// apt orders the local packages and their dependencies itself; dpkg -i
	// of everything at once does not.
	if _, err := t.sudoSh(ctx, aptEnv+"apt-get install -y -q --no-install-recommends --allow-downgrades"+aptOpts+comm.Quote(tmp)+"/*.deb"); err != nil {
		return fmt.Errorf("install offline bundle: %w", err)
	}
	return nil
}

func tailOf(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 2000 {
		s = "..." + s[len(s)-2000:]
	}
	return s
}
