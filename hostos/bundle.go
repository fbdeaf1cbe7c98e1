package hostos

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/provision/provision/provision/atomicfile"
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

// prepareBundle downloads what the host lacks and returns those .deb files,
// pinned (PinBundle).
func prepareBundle(ctx context.Context, t *Target, fam Family, dir string, status []byte) ([]BundleFile, error) {
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
		if err := checkDowngrade(t.Config, t.Facts.Packages[pkg], v); err != nil {
			return nil, err
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
	records, err := aptRecords(ctx, inst)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", filepath.Base(dir), err)
	}
	debs, err := PinBundle(dir, inst, records)
	if err != nil {
		return nil, err
	}
	t.Log.Info("offline bundle prepared", "dir", dir, "packages", len(debs))
	return debs, nil
}

// BundleManifestFile pins an offline bundle's files: their exact names and
// SHA-256, written when the bundle is made. Only files it lists are ever
// uploaded, and only with those contents.
const BundleManifestFile = "manifest.json"

// BundleManifest is the manifest's content.
type BundleManifest struct {
	Files map[string]string `json:"files"` // file name -> sha256 hex
}

// AptRecord is what this machine's package index says of one package
// version: its architecture and the SHA-256 of its .deb (the index is
// signed; apt verified it).
type AptRecord struct{ Arch, SHA256 string }

// BundleFile is one pinned file of a bundle.
type BundleFile struct {
	Path, SHA256 string
}

// PinBundle checks the downloaded files of the packages against the index
// records and the bundle's manifest, records them in the manifest, and
// returns exactly those files. A file whose content is not what the index
// says, or not what the manifest pinned when the bundle was made, is
// refused; files in the directory that the packages do not name are never
// looked at.
func PinBundle(dir string, pkgs []SimPackage, records map[string]AptRecord) ([]BundleFile, error) {
	mpath := filepath.Join(dir, BundleManifestFile)
	var man BundleManifest
	switch b, err := os.ReadFile(mpath); {
	case err == nil:
		if err := json.Unmarshal(b, &man); err != nil {
			return nil, fmt.Errorf("bundle manifest %s is corrupt (%v): remove the bundle directory to make it again", mpath, err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("bundle manifest: %w", err)
	}
	if man.Files == nil {
		man.Files = map[string]string{}
	}
	var out []BundleFile
	changed := false
	for _, p := range pkgs {
		rec, ok := records[p.Name+"="+p.Version]
		if !ok || rec.Arch == "" || len(rec.SHA256) != 64 {
			return nil, fmt.Errorf("bundle %s: the package index has no SHA-256 for %s %s", filepath.Base(dir), p.Name, p.Version)
		}
		name := DebFile(p.Name, p.Version, rec.Arch)
		path := filepath.Join(dir, name)
		sum, err := fileSHA256(path)
		if err != nil {
			return nil, fmt.Errorf("bundle %s: %s %s: %w", filepath.Base(dir), p.Name, p.Version, err)
		}
		if pinned, ok := man.Files[name]; ok && pinned != sum {
			return nil, fmt.Errorf("bundle file %s has SHA-256 %s, its manifest pins %s: refusing to upload it (remove it and the manifest entry to download it again)", path, sum, pinned)
		}
		if sum != rec.SHA256 {
			return nil, fmt.Errorf("bundle file %s has SHA-256 %s, the package index says %s: refusing to upload it (remove it to download it again)", path, sum, rec.SHA256)
		}
		if man.Files[name] != sum {
			man.Files[name] = sum
			changed = true
		}
		out = append(out, BundleFile{Path: path, SHA256: sum})
	}
	if changed {
		b, _ := json.MarshalIndent(man, "", "  ")
		if err := atomicfile.Write(mpath, append(b, '\n'), 0o644); err != nil {
			return nil, fmt.Errorf("bundle manifest: %w", err)
		}
	}
	return out, nil
}

// aptRecords asks this machine's package index (apt-cache show) for the
// architecture and SHA-256 of each package version.
func aptRecords(ctx context.Context, pkgs []SimPackage) (map[string]AptRecord, error) {
	args := []string{"show"}
	for _, p := range pkgs {
		args = append(args, p.Name+"="+p.Version)
	}
	cmd := exec.CommandContext(ctx, "apt-cache", args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("apt-cache show: %w", err)
	}
	return ParseAptRecords(out)
}

// ParseAptRecords reads `apt-cache show` records into "name=version" ->
// record. Two records of one version that disagree are an error.
func ParseAptRecords(out []byte) (map[string]AptRecord, error) {
	recs := map[string]AptRecord{}
	for _, para := range strings.Split(string(out), "\n\n") {
		var name, version string
		var r AptRecord
		for _, l := range strings.Split(para, "\n") {
			k, v, ok := strings.Cut(l, ": ")
			if !ok {
				continue
			}
			switch k {
			case "Package":
				name = v
			case "Version":
				version = v
			case "Architecture":
				r.Arch = v
			case "SHA256":
				r.SHA256 = strings.ToLower(strings.TrimSpace(v))
			}
		}
		if name == "" || version == "" {
			continue
		}
		key := name + "=" + version
		if prev, ok := recs[key]; ok && prev != r {
			return nil, fmt.Errorf("the package index has two different %s %s", name, version)
		}
		recs[key] = r
	}
	return recs, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
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

// DebFile is the exact archive file name of a package version and arch.
func DebFile(name, version, arch string) string {
	return strings.TrimSuffix(DebFileGlob(name, version), "*.deb") + arch + ".deb"
}

// uploadAndInstall uploads exactly the pinned files, checks each against
// its pin as it is sent and again on the host, and installs those files by
// name.
func uploadAndInstall(ctx context.Context, t *Target, debs []BundleFile) error {
	out, err := t.Comm.Run(ctx, "mktemp -d /tmp/provision-bundle.XXXXXXXX", nil)
	if err != nil {
		return fmt.Errorf("bundle temp dir: %w", err)
	}
	tmp := strings.TrimSpace(string(out))
	if !strings.HasPrefix(tmp, "/tmp/provision-bundle.") {
		return fmt.Errorf("bundle temp dir: mktemp gave %q", tmp)
	}
	defer t.Comm.Run(context.WithoutCancel(ctx), comm.Quote("rm", "-rf", tmp), nil)
	var sums strings.Builder
	var paths []string
	for _, d := range debs {
		name := filepath.Base(d.Path)
		f, err := os.Open(d.Path)
		if err != nil {
			return fmt.Errorf("bundle: %w", err)
		}
		h := sha256.New()
		err = t.Comm.Upload(ctx, tmp+"/"+name, io.TeeReader(f, h), 0o644)
		f.Close()
		if err != nil {
			return fmt.Errorf("upload %s: %w", name, err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != d.SHA256 {
			return fmt.Errorf("bundle file %s changed while it was uploaded (SHA-256 %s, pinned %s): not installed", d.Path, got, d.SHA256)
		}
		fmt.Fprintf(&sums, "%s  %s\n", d.SHA256, name)
		paths = append(paths, tmp+"/"+name)
	}
	// The host checks what it received before anything is installed.
	if _, err := t.Comm.Run(ctx, "cd "+comm.Quote(tmp)+" && sha256sum --check --strict --quiet -", strings.NewReader(sums.String())); err != nil {
		return fmt.Errorf("offline bundle: the host received files that do not match their pins: %w", err)
	}
	t.Log.Info("installing offline bundle", "packages", len(debs))
	// apt orders the local packages and their dependencies itself; dpkg -i
	// of everything at once does not.
	downgrades := ""
	if t.Config.AllowDowngrade {
		downgrades = " --allow-downgrades"
	}
	if err := aptInstall(ctx, t, aptEnv+"apt-get install -y -q --no-install-recommends"+downgrades+aptOpts+comm.Quote(paths...)); err != nil {
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
