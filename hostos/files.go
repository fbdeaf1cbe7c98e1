package hostos

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/templates"
)

// Paths of the files the steps manage.
const (
	PathTLSCA        = "/etc/docker/tls/ca.pem"
	PathTLSCert      = "/etc/docker/tls/cert.pem"
	PathTLSKey       = "/etc/docker/tls/key.pem"
	PathDaemonJSON   = "/etc/docker/daemon.json"
	PathDockerDropIn = "/etc/systemd/system/docker.service.d/provision.conf"
	PathJournald     = "/etc/systemd/journald.conf.d/provision.conf"
	PathPruneService = "/etc/systemd/system/provision-prune.service"
	PathPruneTimer   = "/etc/systemd/system/provision-prune.timer"
	PathSSHD         = "/etc/ssh/sshd_config.d/10-provision.conf"
	// PathSysctl sorts after every file systemd-sysctl reads on Debian and
	// Ubuntu (it orders all sysctl.d directories by file name, the last
	// value winning): as 90-provision.conf, Debian 12's own
	// /usr/lib/sysctl.d/99-protect-links.conf (fs.protected_fifos = 1)
	// undid the hardening at every boot while the file looked applied.
	PathSysctl = "/etc/sysctl.d/99-zz-provision.conf"
	// PathSysctlOld is where earlier versions wrote it: removed.
	PathSysctlOld      = "/etc/sysctl.d/90-provision.conf"
	PathFirewall       = "/etc/provision/firewall.nft"
	PathFirewallUnit   = "/etc/systemd/system/provision-firewall.service"
	PathAuditRules     = "/etc/audit/rules.d/provision.rules"
	PathAutoUpgrades   = "/etc/apt/apt.conf.d/21provision-auto-upgrades"
	PathUnattendedConf = "/etc/apt/apt.conf.d/52provision-unattended-upgrades"
	PathCoredump       = "/etc/systemd/coredump.conf.d/provision.conf"
	PathLimits         = "/etc/security/limits.d/90-provision.conf"
	PathModprobe       = "/etc/modprobe.d/provision.conf"
	PathIssue          = "/etc/issue"
	PathIssueNet       = "/etc/issue.net"
	PathProfile        = "/etc/profile.d/provision.sh"
	PathLoginPolicy    = "/etc/provision/login-policy.sh"
	PathSecuritySource = "/etc/provision/security-source.sh"

	unitPruneTimer   = "provision-prune.timer"
	unitPruneService = "provision-prune.service"
	unitFirewall     = "provision-firewall.service"

	// EnginePort is the engine's TLS port.
	EnginePort = 2376
)

// RegistryCAPath is where the engine finds a private registry's CA
// (certs.d, read at each pull).
func RegistryCAPath(host string) string { return "/etc/docker/certs.d/" + host + "/ca.crt" }

func registryCAPaths(cfg *Config) []string {
	var out []string
	for _, r := range cfg.Engine.Registries {
		out = append(out, RegistryCAPath(r.Host))
	}
	return out
}

// File is one file a step wants on the host.
type File struct {
	Path    string
	Mode    fs.FileMode
	Content []byte
}

// Sum is the sha256 hex of the content, as GatherFacts reports it.
func (f File) Sum() string { return sum(f.Content) }

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func render(path string, mode fs.FileMode, tmpl string, data any) (File, error) {
	b, err := templates.Render(tmpl, data)
	if err != nil {
		return File{}, err
	}
	return File{Path: path, Mode: mode, Content: b}, nil
}

// DaemonData is daemon.json's template data.
type DaemonData struct {
	Hosts                     []string
	CAFile, CertFile, KeyFile string
	LogDriver                 string
	LogOpts                   map[string]string
	Hardened                  bool // no-new-privileges, no userland proxy, no inter-container traffic on the default bridge
	UsernsRemap               bool
	MetricsAddr               string   // "" = no metrics endpoint
	RegistryMirrors           []string // none: no registry-mirrors key
}

// DaemonFiles renders /etc/docker/daemon.json and the docker.service drop-in.
func DaemonFiles(cfg *Config, fam Family) ([]File, error) {
	drv := cfg.Logging.Driver
	if drv == "" {
		return nil, fmt.Errorf("no log driver (spec.Load sets the default)")
	}
	opts := map[string]string{}
	for k, v := range cfg.Logging.Options {
		opts[k] = v
	}
	d := DaemonData{
		Hosts:           []string{"unix:///var/run/docker.sock", fmt.Sprintf("tcp://0.0.0.0:%d", EnginePort)},
		CAFile:          PathTLSCA,
		CertFile:        PathTLSCert,
		KeyFile:         PathTLSKey,
		LogDriver:       drv,
		LogOpts:         opts,
		Hardened:        cfg.Hardening.Daemon,
		UsernsRemap:     cfg.Hardening.UserNamespaces,
		MetricsAddr:     cfg.MetricsAddr,
		RegistryMirrors: cfg.Engine.RegistryMirrors,
	}
	dj, err := render(PathDaemonJSON, 0o644, "daemon.json.tmpl", d)
	if err != nil {
		return nil, err
	}
	di, err := render(PathDockerDropIn, 0o644, "docker-dropin.conf.tmpl", struct{ Dockerd string }{fam.Dockerd})
	if err != nil {
		return nil, err
	}
	out := []File{dj, di}
	// Private registries' CAs: beside daemon.json in engine.config, so a
	// registry and the mirrors change together.
	for _, r := range cfg.Engine.Registries {
		if strings.ContainsAny(r.Host, "/\x00") || r.Host == "" || r.Host == "." || r.Host == ".." {
			return nil, fmt.Errorf("registry host %q", r.Host)
		}
		out = append(out, File{Path: RegistryCAPath(r.Host), Mode: 0o644, Content: []byte(r.CA)})
	}
	return out, nil
}

// TLSFilesOf are the engine's TLS files: CA and certificate read-only for
// everyone (0444), the key read-only for root (0400), as CIS Docker 3.10,
// 3.12 and 3.14 ask.
func TLSFilesOf(cfg *Config) ([]File, error) {
	if len(cfg.TLS.CA) == 0 || len(cfg.TLS.Cert) == 0 || len(cfg.TLS.Key) == 0 {
		return nil, fmt.Errorf("no TLS certificate for the engine")
	}
	return []File{
		{Path: PathTLSCA, Mode: 0o444, Content: cfg.TLS.CA},
		{Path: PathTLSCert, Mode: 0o444, Content: cfg.TLS.Cert},
		{Path: PathTLSKey, Mode: 0o400, Content: cfg.TLS.Key},
	}, nil
}

// JournaldFiles renders the journald drop-in.
func JournaldFiles(cfg *Config) ([]File, error) {
	if cfg.Logging.JournaldMaxUse == "" {
		return nil, fmt.Errorf("no journald size cap (spec.Load sets the default)")
	}
	f, err := render(PathJournald, 0o644, "journald.conf.tmpl", struct{ MaxUse string }{cfg.Logging.JournaldMaxUse})
	if err != nil {
		return nil, err
	}
	return []File{f}, nil
}

// PruneFiles renders the prune service and timer.
func PruneFiles(cfg *Config, fam Family) ([]File, error) {
	p := cfg.Prune
	d := struct {
		Docker, Until, Schedule, RandomizedDelay string
		Volumes                                  bool
	}{fam.Docker, p.Until, p.Schedule, p.RandomizedDelay, p.Volumes}
	if d.Until == "" || d.Schedule == "" {
		return nil, fmt.Errorf("prune: no schedule or age (spec.Load sets the defaults)")
	}
	for _, v := range []string{d.Until, d.Schedule, d.RandomizedDelay} {
		if strings.ContainsAny(v, "\n\r") {
			return nil, fmt.Errorf("prune setting %q: newline", v)
		}
	}
	if strings.ContainsAny(d.Until, " \t") {
		return nil, fmt.Errorf("prune until %q: spaces", d.Until)
	}
	svc, err := render(PathPruneService, 0o644, "prune.service.tmpl", d)
	if err != nil {
		return nil, err
	}
	tim, err := render(PathPruneTimer, 0o644, "prune.timer.tmpl", d)
	if err != nil {
		return nil, err
	}
	return []File{svc, tim}, nil
}

// SSHDFiles renders the sshd drop-in: the admin user and the spec's
// hardening.ssh_users may log in (AllowUsers), and members of
// hardening.ssh_groups through a Match block at the end (sshd confines a
// Match block in an included file to that file, so it does not capture the
// distro's own settings).
func SSHDFiles(cfg *Config) ([]File, error) {
	d := struct {
		PermitRootLogin string
		AllowUsers      []string
		AllowGroups     []string
	}{PermitRootLogin: "no"}
	plain := func(kind, n string) error {
		if n == "" || strings.ContainsAny(n, " \t\n\r*?,@!\"") {
			return fmt.Errorf("%s %q: not a plain name", kind, n)
		}
		return nil
	}
	if u := cfg.AdminUser; u != "" {
		if err := plain("admin user", u); err != nil {
			return nil, err
		}
		d.AllowUsers = []string{u}
		if u == "root" {
			// provision itself logs in as root here: keep keys working.
			d.PermitRootLogin = "prohibit-password"
		}
	}
	for _, u := range cfg.Hardening.SSHUsers {
		if err := plain("ssh user", u); err != nil {
			return nil, err
		}
		if !slices.Contains(d.AllowUsers, u) {
			d.AllowUsers = append(d.AllowUsers, u)
		}
	}
	for _, g := range cfg.Hardening.SSHGroups {
		if err := plain("ssh group", g); err != nil {
			return nil, err
		}
		d.AllowGroups = append(d.AllowGroups, g)
	}
	f, err := render(PathSSHD, 0o644, "sshd.conf.tmpl", d)
	if err != nil {
		return nil, err
	}
	return []File{f}, nil
}

// SysctlFiles renders the sysctl drop-in.
func SysctlFiles() ([]File, error) {
	f, err := render(PathSysctl, 0o644, "sysctl.conf.tmpl", struct{}{})
	if err != nil {
		return nil, err
	}
	return []File{f}, nil
}

// BlockedModules are kernel modules a container host does not need and that
// have had exploitable bugs or allow data theft: rare network protocols
// (SCTP stays: the engine can publish SCTP ports) and removable storage.
var BlockedModules = []string{"dccp", "rds", "tipc", "usb-storage", "firewire-core"}

// KernelFiles renders harden.kernel's files: the sysctl drop-in, no core
// dumps (systemd-coredump and PAM limits) and the module blocklist.
func KernelFiles() ([]File, error) {
	files, err := SysctlFiles()
	if err != nil {
		return nil, err
	}
	more, err := renderAll(
		tmplFile{PathCoredump, "coredump.conf.tmpl", 0o644, struct{}{}},
		tmplFile{PathLimits, "limits.conf.tmpl", 0o644, struct{}{}},
		tmplFile{PathModprobe, "modprobe.conf.tmpl", 0o644, struct{ Modules []string }{BlockedModules}},
	)
	if err != nil {
		return nil, err
	}
	return append(files, more...), nil
}

// LoginPackages are installed by the login policy: password quality rules,
// per-session private temp directories, package checksum verification and
// process accounting.
var LoginPackages = []string{"libpam-pwquality", "libpam-tmpdir", "debsums", "acct"}

// LoginFiles renders harden.login's files: the pre-login banner (console and
// SSH), the login-shell profile (no core dumps, idle timeout) and the
// account-policy script.
func LoginFiles() ([]File, error) {
	return renderAll(
		tmplFile{PathIssue, "issue.tmpl", 0o644, struct{}{}},
		tmplFile{PathIssueNet, "issue.tmpl", 0o644, struct{}{}},
		tmplFile{PathProfile, "profile.sh.tmpl", 0o644, struct{ Timeout int }{900}},
		tmplFile{PathLoginPolicy, "login-policy.sh.tmpl", 0o700, struct{ Packages []string }{LoginPackages}},
	)
}

// tmplFile is one file rendered from a template with its data.
type tmplFile struct {
	path, tmpl string
	mode       fs.FileMode
	data       any
}

// renderAll renders each file, in order.
func renderAll(files ...tmplFile) ([]File, error) {
	out := make([]File, 0, len(files))
	for _, f := range files {
		r, err := render(f.path, f.mode, f.tmpl, f.data)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// FirewallData is the nftables ruleset's template data: addresses and
// prefixes split by family, in canonical form.
type FirewallData struct {
	Operators4, Operators6 []string
	Peers4, Peers6         []string
	SSHPorts               string // "22", or "{ 22, 2222 }"
	EnginePort             int
	ESP                    bool
	Extra                  []FirewallRule // the spec's firewall_allow blocks
	// MetricsPort is the engine's metrics port (0: off), open to the peers
	// and to Metrics4/Metrics6 (the spec's engine.metrics_cidrs).
	MetricsPort        int
	Metrics4, Metrics6 []string
}

// FirewallRule is one of the spec's firewall_allow blocks in nft terms.
type FirewallRule struct {
	Proto        string // tcp, udp
	Ports        string // "80, 443, 9100-9110"
	From4, From6 []string
}

// FirewallFiles renders the ruleset and its boot unit. Operators are
// cfg.OperatorCIDRs or, when there are none, the SSH client address.
func FirewallFiles(cfg *Config, fam Family, facts *Facts) ([]File, error) {
	ops := cfg.OperatorCIDRs
	if len(ops) == 0 && facts != nil && facts.SSHClient != "" {
		ops = []string{facts.SSHClient}
	}
	if len(ops) == 0 {
		return nil, fmt.Errorf("firewall: no operator address: set tls.allowed_cidrs (the host did not report an SSH client address)")
	}
	d := FirewallData{SSHPorts: "22", EnginePort: EnginePort, ESP: cfg.Hardening.OverlayEncryption}
	if facts != nil && len(facts.SSHPorts) > 0 {
		// sshd's own ports and the one provision came in on: a host whose
		// sshd is on 2222 must not be locked out by a ruleset that opens 22.
		ports := slices.Clone(facts.SSHPorts)
		slices.Sort(ports)
		ps := make([]string, len(ports))
		for i, p := range ports {
			ps[i] = strconv.Itoa(p)
		}
		d.SSHPorts = strings.Join(ps, ", ")
		if len(ps) > 1 {
			d.SSHPorts = "{ " + d.SSHPorts + " }"
		}
	}
	var err error
	if d.Operators4, d.Operators6, err = splitPrefixes(ops); err != nil {
		return nil, fmt.Errorf("firewall operator addresses: %w", err)
	}
	if d.Peers4, d.Peers6, err = splitPrefixes(cfg.Peers); err != nil {
		return nil, fmt.Errorf("firewall peer addresses: %w", err)
	}
	if cfg.MetricsAddr != "" {
		d.MetricsPort = cfg.Engine.MetricsPort()
		if d.Metrics4, d.Metrics6, err = splitPrefixes(cfg.Engine.MetricsCIDRs); err != nil {
			return nil, fmt.Errorf("firewall metrics_cidrs: %w", err)
		}
	}
	for i, r := range cfg.Hardening.FirewallAllow {
		fr := FirewallRule{Proto: r.Protocol}
		if fr.Proto == "" {
			fr.Proto = "tcp"
		}
		if fr.Proto != "tcp" && fr.Proto != "udp" {
			return nil, fmt.Errorf("firewall_allow[%d]: protocol %q", i, r.Protocol)
		}
		for _, p := range r.Ports {
			if strings.Trim(p, "0123456789-") != "" || p == "" {
				return nil, fmt.Errorf("firewall_allow[%d]: port %q", i, p)
			}
		}
		fr.Ports = strings.Join(r.Ports, ", ")
		if fr.From4, fr.From6, err = splitPrefixes(r.From); err != nil {
			return nil, fmt.Errorf("firewall_allow[%d]: %w", i, err)
		}
		if len(r.Ports) == 0 || len(fr.From4)+len(fr.From6) == 0 {
			return nil, fmt.Errorf("firewall_allow[%d]: no ports or no sources", i)
		}
		d.Extra = append(d.Extra, fr)
	}
	rs, err := render(PathFirewall, 0o644, "firewall.nft.tmpl", d)
	if err != nil {
		return nil, err
	}
	unit, err := render(PathFirewallUnit, 0o644, "firewall.service.tmpl", struct{ Nft, Ruleset string }{fam.Nft, PathFirewall})
	if err != nil {
		return nil, err
	}
	return []File{rs, unit}, nil
}

// splitPrefixes parses addresses ("10.0.0.5") and prefixes ("10.0.0.0/24")
// into sorted, de-duplicated IPv4 and IPv6 lists in canonical form.
func splitPrefixes(in []string) (v4, v6 []string, err error) {
	for _, s := range in {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		var p netip.Prefix
		if strings.Contains(s, "/") {
			p, err = netip.ParsePrefix(s)
			if err != nil {
				return nil, nil, fmt.Errorf("%q: %w", s, err)
			}
			p = p.Masked()
		} else {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, nil, fmt.Errorf("%q: %w", s, err)
			}
			a = a.Unmap().WithZone("")
			p = netip.PrefixFrom(a, a.BitLen())
		}
		txt := p.String()
		if p.Bits() == p.Addr().BitLen() {
			txt = p.Addr().String()
		}
		if p.Addr().Is4() {
			v4 = append(v4, txt)
		} else {
			v6 = append(v6, txt)
		}
	}
	slices.Sort(v4)
	slices.Sort(v6)
	return slices.Compact(v4), slices.Compact(v6), nil
}

// auditWatches are the paths the audit rules watch (CIS Docker 1.1.3-1.1.18):
// the engine's binaries (also at the benchmark's /usr/bin paths, where a
// distro that keeps them in /usr/sbin has none: a binary put there is
// recorded), its configuration and the containerd socket and shims.
func auditWatches(fam Family) []string {
	ws := []string{
		fam.Dockerd, "/usr/bin/dockerd", "/usr/bin/containerd", "/usr/sbin/runc", "/usr/bin/runc",
		"/usr/bin/containerd-shim", "/usr/bin/containerd-shim-runc-v1", "/usr/bin/containerd-shim-runc-v2",
		"/etc/docker", "/etc/docker/daemon.json", "/var/lib/docker", "/etc/default/docker",
		"/etc/containerd", "/etc/containerd/config.toml",
		"/run/containerd", "/run/containerd/containerd.sock",
		"/lib/systemd/system/docker.service", "/lib/systemd/system/docker.socket",
		"/lib/systemd/system/containerd.service", "/etc/systemd/system/docker.service.d",
	}
	out := ws[:0]
	for _, w := range ws {
		if !slices.Contains(out, w) {
			out = append(out, w)
		}
	}
	return out
}

// AuditFiles renders the audit rules.
func AuditFiles(fam Family) ([]File, error) {
	f, err := render(PathAuditRules, 0o640, "audit.rules.tmpl", struct{ Watches []string }{auditWatches(fam)})
	if err != nil {
		return nil, err
	}
	return []File{f}, nil
}

// UpdatesFiles renders the unattended-upgrades configuration.
func UpdatesFiles(cfg *Config) ([]File, error) {
	pkg := enginePackage(cfg)
	bl := []string{pkg, "containerd", "runc"}
	if pkg == "docker-ce" {
		bl = []string{"docker-ce", "docker-ce-cli", "containerd.io"}
	}
	au, err := render(PathAutoUpgrades, 0o644, "auto-upgrades.conf.tmpl", struct{}{})
	if err != nil {
		return nil, err
	}
	uu, err := render(PathUnattendedConf, 0o644, "unattended-upgrades.conf.tmpl", struct {
		Blacklist  []string
		AutoReboot bool
		RebootTime string
	}{bl, cfg.Hardening.AutoReboot, rebootTime(cfg)})
	if err != nil {
		return nil, err
	}
	sec, err := render(PathSecuritySource, 0o700, "security-source.sh.tmpl", struct{}{})
	if err != nil {
		return nil, err
	}
	return []File{au, uu, sec}, nil
}

// RebootTime is when a node reboots after an update that needs it
// (hardening.auto_reboot), staggered so that no two managers (of up to 72)
// go down together and workers go in twelve waves after them: managers from
// 02:00 at 20-minute steps by index, workers from 06:00 at 10-minute steps
// by index modulo 12. The same node always gets the same time.
func RebootTime(role string, index int) string {
	i := max(index, 1) - 1
	var m int
	if role == spec.RoleManager {
		m = 2*60 + 20*i
	} else {
		m = 6*60 + 10*(i%12)
	}
	m %= 24 * 60
	return fmt.Sprintf("%02d:%02d", m/60, m%60)
}

// rebootTime is the node's staggered time when auto_reboot is on; off, the
// file keeps the time it always had.
func rebootTime(cfg *Config) string {
	if !cfg.Hardening.AutoReboot {
		return "03:30"
	}
	return RebootTime(cfg.Role, cfg.Index)
}
