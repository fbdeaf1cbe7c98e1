package hostos_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/spec"
)

func baseConfig() *hostos.Config {
	return &hostos.Config{
		Cluster: "t", Node: "t-manager-1", AdminUser: "provision",
		Engine:        spec.DefaultEngine(),
		Logging:       spec.DefaultLogging(),
		Prune:         spec.DefaultPrune(),
		Hardening:     spec.Hardening{SSH: true, Kernel: true, Firewall: true, Daemon: true, Audit: true, Updates: true},
		TLS:           hostos.TLSFiles{CA: []byte("ca"), Cert: []byte("cert"), Key: []byte("key")},
		Peers:         []string{"10.0.0.2", "10.0.0.3"},
		OperatorCIDRs: []string{"203.0.113.0/24"},
	}
}

func debianFacts() *hostos.Facts {
	return &hostos.Facts{
		OS:   hostos.OSRelease{ID: "debian", VersionID: "12"},
		Arch: "amd64", Files: map[string]string{}, Packages: map[string]string{},
		Units: map[string]string{}, UnitFiles: map[string]string{}, Commands: map[string]string{},
	}
}

func TestUnsupportedDistro(t *testing.T) {
	for _, os := range []hostos.OSRelease{
		{ID: "centos", VersionID: "9", Pretty: "CentOS Stream 9"},
		{ID: "debian", VersionID: "11"},
		{ID: "ubuntu", VersionID: "20.04"},
		{},
	} {
		f := debianFacts()
		f.OS = os
		tgt := &hostos.Target{Facts: f, Config: baseConfig(), Log: slog.New(slog.DiscardHandler)}
		st := hostos.Steps()[0]
		if st.ID != "os.supported" {
			t.Fatalf("first step %s", st.ID)
		}
		done, err := st.Check(context.Background(), tgt)
		if err == nil || done || !strings.Contains(err.Error(), "unsupported distro") {
			t.Errorf("%+v: done=%v err=%v", os, done, err)
		}
		if os.ID != "" && !strings.Contains(err.Error(), os.ID+" "+os.VersionID) {
			t.Errorf("error does not name the distro: %v", err)
		}
	}
	for _, os := range []hostos.OSRelease{{ID: "debian", VersionID: "12"}, {ID: "ubuntu", VersionID: "22.04"}, {ID: "ubuntu", VersionID: "24.04"}} {
		f := debianFacts()
		f.OS = os
		done, err := hostos.Steps()[0].Check(context.Background(), &hostos.Target{Facts: f, Config: baseConfig()})
		if !done || err != nil {
			t.Errorf("%+v: done=%v err=%v", os, done, err)
		}
	}
}

func TestStepIDsStable(t *testing.T) {
	var ids []string
	for _, s := range hostos.Steps() {
		ids = append(ids, s.ID)
	}
	want := "os.supported os.ready host.hostname engine.disk engine.install engine.tls engine.config logging.journald prune.timer harden.ssh harden.login harden.kernel harden.firewall harden.audit harden.updates"
	if got := strings.Join(ids, " "); got != want {
		t.Errorf("step IDs:\n got %s\nwant %s", got, want)
	}
}

func TestParseFacts(t *testing.T) {
	out := "ssh_client\t198.51.100.7\n" +
		"os\tPRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\nos\tID=ubuntu\nos\tID_LIKE=debian\nos\tVERSION_ID=\"24.04\"\nos\tVERSION_CODENAME=noble\nos\t# comment\n" +
		"arch\tarm64\nhostname\tn1\ncmd\tsshd\t/usr/sbin/sshd\n" +
		"file\t/etc/docker/daemon.json\t" + strings.Repeat("a", 64) + "\nfile\t/bad\tshort\n" +
		"pkg\tii \tdocker.io\t24.0.7-0ubuntu4\npkg\trc \told\t1.0\npkg\thi \theld\t2.0\n" +
		"unit\tdocker.service\tactive\tenabled\nunit\tprovision-prune.timer\tinactive\t\n" +
		"engine\tDocker version 24.0.7, build 24.0.7-0ubuntu4\nvirt\tnone\ncloudinit\trunning\nbusy\t42 apt-get install x\nend\n"
	f, err := hostos.ParseFacts([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if f.OS.ID != "ubuntu" || f.OS.VersionID != "24.04" || f.OS.Codename != "noble" || f.OS.Pretty != "Ubuntu 24.04.1 LTS" || len(f.OS.IDLike) != 1 {
		t.Errorf("os %+v", f.OS)
	}
	if f.SSHClient != "198.51.100.7" || f.Arch != "arm64" || f.Hostname != "n1" || f.Commands["sshd"] != "/usr/sbin/sshd" {
		t.Errorf("facts %+v", f)
	}
	if len(f.Files) != 1 || f.Files["/etc/docker/daemon.json"] == "" {
		t.Errorf("files %v", f.Files)
	}
	if f.Packages["docker.io"] != "24.0.7-0ubuntu4" || f.Packages["held"] != "2.0" || f.Packages["old"] != "" {
		t.Errorf("packages %v (removed-but-configured must not count)", f.Packages)
	}
	if f.Units["docker.service"] != "active" || f.UnitFiles["docker.service"] != "enabled" || f.Units["provision-prune.timer"] != "inactive" {
		t.Errorf("units %v %v", f.Units, f.UnitFiles)
	}
	if f.Engine != "24.0.7" || f.Container() || f.CloudInit != "running" || len(f.Busy) != 1 {
		t.Errorf("engine %q virt %q cloudinit %q busy %v", f.Engine, f.Virt, f.CloudInit, f.Busy)
	}
	if _, err := hostos.ParseFacts([]byte("os\tID=debian\n")); err == nil {
		t.Error("truncated output (no end marker) parsed without error")
	}
}

func TestVersionPins(t *testing.T) {
	madison := []byte(` docker.io | 20.10.24+dfsg1-1+deb12u1+b6 | http://mirror/debian bookworm/main amd64 Packages
 docker.io | 20.10.24+dfsg1-1+deb12u1+b6 | http://mirror/debian-security bookworm-security/main amd64 Packages
 docker.io | 20.10.5+dfsg1-1+deb11u2 | http://mirror/debian bullseye/main amd64 Packages
other | 1 | x
`)
	avail := hostos.ParseMadison(madison, "docker.io")
	if len(avail) != 2 {
		t.Fatalf("madison: %v", avail)
	}
	for pin, want := range map[string]string{
		"20.10.24*":                   "20.10.24+dfsg1-1+deb12u1+b6",
		"20.10.5+dfsg1-1+deb11u2":     "20.10.5+dfsg1-1+deb11u2",
		"20.10.24+dfsg1-1+deb12u1+b6": "20.10.24+dfsg1-1+deb12u1+b6",
	} {
		got, err := hostos.ResolveVersion("docker.io", pin, avail)
		if err != nil || got != want {
			t.Errorf("pin %q: %q %v", pin, got, err)
		}
	}
	if _, err := hostos.ResolveVersion("docker.io", "26.1*", avail); err == nil || !strings.Contains(err.Error(), "20.10.5+dfsg1-1+deb11u2") {
		t.Errorf("missing pin: %v (should list what is available)", err)
	}
	if hostos.VersionMatches("", "") || !hostos.VersionMatches("1.2", "") || hostos.VersionMatches("20.10.5", "20.10.24*") {
		t.Error("VersionMatches")
	}
	// Issue 12: pins are exact unless they end in '*'.
	for _, c := range []struct {
		have, pin string
		want      bool
	}{
		{"20.10.24+dfsg1-1+deb12u1", "20.10.2", false},
		{"20.10.24+dfsg1-1+deb12u1", "20.10.24", false},
		{"20.10.24+dfsg1-1+deb12u1", "20.10.2*", true},
		{"20.10.24+dfsg1-1+deb12u1", "20.10.24+dfsg1-1+deb12u1", true},
		{"20.10.24+dfsg1-1+deb12u1", "20.10.24+dfsg1-1+deb12u", false},
	} {
		if got := hostos.VersionMatches(c.have, c.pin); got != c.want {
			t.Errorf("VersionMatches(%q, %q) = %v, want %v", c.have, c.pin, got, c.want)
		}
	}
	if _, err := hostos.ResolveVersion("docker.io", "20.10.24", avail); err == nil {
		t.Error("ResolveVersion took the inexact pin 20.10.24 as a prefix")
	}
}

func TestBundleParsing(t *testing.T) {
	out := []byte(`NOTE: This is only a simulation!
Inst runc (1.1.5+ds1-1+deb12u1 Debian:12.12/oldstable [amd64])
Inst libx [1.0] (1:2.3~rc1-4 Debian:12.12/oldstable [amd64]) []
Conf runc (1.1.5+ds1-1+deb12u1 Debian:12.12/oldstable [amd64])
`)
	ps := hostos.ParseSimulate(out)
	if len(ps) != 2 || ps[0] != (hostos.SimPackage{Name: "runc", Version: "1.1.5+ds1-1+deb12u1"}) || ps[1].Version != "1:2.3~rc1-4" {
		t.Fatalf("simulate: %+v", ps)
	}
	if g := hostos.DebFileGlob("libx", "1:2.3~rc1-4"); g != "libx_1%3a2.3~rc1-4_*.deb" {
		t.Errorf("deb glob %q", g)
	}
}

func TestDaemonJSON(t *testing.T) {
	cfg := baseConfig()
	files, err := hostos.DaemonFiles(cfg, mustFamily(t))
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(files[0].Content, &d); err != nil {
		t.Fatalf("daemon.json is not JSON: %v\n%s", err, files[0].Content)
	}
	want := map[string]any{
		"hosts": []any{"unix:///var/run/docker.sock", "tcp://0.0.0.0:2376"},
		"tls":   true, "tlsverify": true,
		"tlscacert": "/etc/docker/tls/ca.pem", "tlscert": "/etc/docker/tls/cert.pem", "tlskey": "/etc/docker/tls/key.pem",
		"log-driver": "json-file", "log-opts": map[string]any{"max-size": "10m", "max-file": "3"},
		"no-new-privileges": true, "userland-proxy": false, "icc": false,
	}
	if fmt.Sprint(d) != fmt.Sprint(want) {
		t.Errorf("daemon.json:\n got %v\nwant %v", d, want)
	}
	if _, ok := d["live-restore"]; ok {
		t.Error("live-restore set: swarm rejects it")
	}
	cfg.Hardening.UserNamespaces = true
	cfg.Logging = spec.Logging{Driver: "json-file", JournaldMaxUse: "500M"} // no options
	files, _ = hostos.DaemonFiles(cfg, mustFamily(t))
	d = nil
	if err := json.Unmarshal(files[0].Content, &d); err != nil {
		t.Fatal(err)
	}
	if d["userns-remap"] != "default" || d["log-driver"] != "json-file" || fmt.Sprint(d["log-opts"]) != "map[]" {
		t.Errorf("userns/defaults: %v", d)
	}
	drop := string(files[1].Content)
	if !strings.Contains(drop, "ExecStart=\nExecStart=/usr/sbin/dockerd --containerd=/run/containerd/containerd.sock\n") || strings.Contains(drop, "ExecStart=/usr/sbin/dockerd -H") {
		t.Errorf("drop-in:\n%s", drop)
	}
}

func TestFirewallRuleset(t *testing.T) {
	cfg := baseConfig()
	cfg.Peers = []string{"10.0.0.3", "10.0.0.2", "10.0.0.2", "fd00::2"}
	cfg.Hardening.OverlayEncryption = true
	files, err := hostos.FirewallFiles(cfg, mustFamily(t), debianFacts())
	if err != nil {
		t.Fatal(err)
	}
	rs := string(files[0].Content)
	for _, want := range []string{
		"table inet provision\ndelete table inet provision\n",
		"type filter hook input priority filter; policy drop;",
		"ct state established,related accept",
		"iif \"lo\" accept",
		"tcp dport 22 accept",
		"elements = { 203.0.113.0/24 }",
		"elements = { 10.0.0.2, 10.0.0.3 }",
		"elements = { fd00::2 }",
		"ip saddr @operators4 tcp dport 2376 accept",
		"ip saddr @peers4 tcp dport { 2377, 7946 } accept",
		"ip saddr @peers4 udp dport { 4789, 7946 } accept",
		"ip saddr @peers4 meta l4proto esp accept",
	} {
		if !strings.Contains(rs, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, rs)
		}
	}
	if strings.Contains(rs, "flush ruleset") || strings.Contains(rs, "chain forward") {
		t.Errorf("ruleset must not flush or filter forwarding:\n%s", rs)
	}
	// Without OperatorCIDRs the SSH client address is the operator.
	cfg.OperatorCIDRs = nil
	cfg.Hardening.OverlayEncryption = false
	f := debianFacts()
	f.SSHClient = "198.51.100.7"
	files, err = hostos.FirewallFiles(cfg, mustFamily(t), f)
	if err != nil {
		t.Fatal(err)
	}
	if rs := string(files[0].Content); !strings.Contains(rs, "elements = { 198.51.100.7 }") || strings.Contains(rs, "esp") {
		t.Errorf("ruleset:\n%s", rs)
	}
	if _, err := hostos.FirewallFiles(cfg, mustFamily(t), debianFacts()); err == nil {
		t.Error("no operator address at all: want an error")
	}
	cfg.OperatorCIDRs = []string{"not-an-ip"}
	if _, err := hostos.FirewallFiles(cfg, mustFamily(t), f); err == nil {
		t.Error("bad CIDR accepted")
	}
	if unit := string(files[1].Content); !strings.Contains(unit, "ExecStart=/usr/sbin/nft -f /etc/provision/firewall.nft") {
		t.Errorf("unit:\n%s", unit)
	}
}

func TestSSHDAndOtherFiles(t *testing.T) {
	cfg := baseConfig()
	files, err := hostos.SSHDFiles(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := string(files[0].Content)
	for _, want := range []string{"PermitRootLogin no\n", "PasswordAuthentication no\n", "KbdInteractiveAuthentication no\n", "AllowUsers provision\n",
		"X11Forwarding no\n", "AllowTcpForwarding no\n", "AllowAgentForwarding no\n", "LoginGraceTime 30\n", "MaxAuthTries 3\n", "\nCiphers chacha20-poly1305@openssh.com,", "\nKexAlgorithms sntrup761x25519-sha512@openssh.com,curve25519-sha256,"} {
		if !strings.Contains(s, want) {
			t.Errorf("sshd drop-in lacks %q", want)
		}
	}
	cfg.AdminUser = "root"
	files, _ = hostos.SSHDFiles(cfg)
	if !strings.Contains(string(files[0].Content), "PermitRootLogin prohibit-password\n") {
		t.Error("admin user root must keep key logins for root")
	}
	cfg.AdminUser = "a b"
	if _, err := hostos.SSHDFiles(cfg); err == nil {
		t.Error("admin user with a space accepted")
	}

	sys, _ := hostos.SysctlFiles()
	kv := map[string]hostos.Sysctl{}
	for _, s := range hostos.ParseSysctl(sys[0].Content) {
		kv[s.Key] = s
	}
	for k, v := range map[string]string{"kernel.kptr_restrict": "2", "kernel.dmesg_restrict": "1", "fs.suid_dumpable": "0", "fs.protected_symlinks": "1",
		"net.ipv4.conf.all.accept_source_route": "0", "net.ipv4.conf.all.accept_redirects": "0", "net.ipv4.conf.all.send_redirects": "0",
		"net.ipv4.conf.all.rp_filter": "2", "net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"} {
		if kv[k].Value != v {
			t.Errorf("sysctl %s = %q, want %q", k, kv[k].Value, v)
		}
	}
	if !kv["net.bridge.bridge-nf-call-iptables"].Optional || kv["net.ipv4.ip_forward"].Optional {
		t.Error("only net.bridge.* is optional")
	}
	if kv["kernel.kptr_restrict"].Namespaced() || !kv["net.ipv4.ip_forward"].Namespaced() {
		t.Error("namespaced")
	}

	pr, err := hostos.PruneFiles(&hostos.Config{Prune: spec.Prune{Enabled: true, Schedule: "Sun *-*-* 03:00", Until: "48h", Volumes: true, RandomizedDelay: "30m"}}, mustFamily(t))
	if err != nil {
		t.Fatal(err)
	}
	svc, tim := string(pr[0].Content), string(pr[1].Content)
	if !strings.Contains(svc, "ExecStart=/usr/bin/docker system prune --all --force --filter until=48h\n") || !strings.Contains(svc, "ExecStart=/usr/bin/docker volume prune --force") {
		t.Errorf("prune service:\n%s", svc)
	}
	if !strings.Contains(tim, "OnCalendar=Sun *-*-* 03:00\n") || !strings.Contains(tim, "RandomizedDelaySec=30m\n") {
		t.Errorf("prune timer:\n%s", tim)
	}
	pr, _ = hostos.PruneFiles(&hostos.Config{Prune: spec.DefaultPrune()}, mustFamily(t))
	if s := string(pr[0].Content); strings.Contains(s, "volume prune") || !strings.Contains(s, "until=24h") {
		t.Errorf("prune defaults:\n%s", s)
	}

	up, _ := hostos.UpdatesFiles(&hostos.Config{Engine: spec.DefaultEngine(), Hardening: spec.Hardening{AutoReboot: true}})
	if s := string(up[1].Content); !strings.Contains(s, `Automatic-Reboot "true";`) || !strings.Contains(s, `"docker.io";`) {
		t.Errorf("unattended-upgrades:\n%s", s)
	}
	au, _ := hostos.AuditFiles(mustFamily(t))
	if s := string(au[0].Content); !strings.Contains(s, "-w /usr/sbin/dockerd -p wa -k docker\n") || !strings.Contains(s, "-w /var/lib/docker -p wa -k docker\n") {
		t.Errorf("audit rules:\n%s", s)
	}
	j, _ := hostos.JournaldFiles(&hostos.Config{Logging: spec.DefaultLogging()})
	if s := string(j[0].Content); !strings.Contains(s, "Storage=persistent\nSystemMaxUse=500M\n") {
		t.Errorf("journald:\n%s", s)
	}
}

func mustFamily(t *testing.T) hostos.Family {
	f, err := hostos.FamilyOf(hostos.OSRelease{ID: "debian", VersionID: "12"})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// fakeComm records commands and answers from a table (first substring match).
type fakeComm struct {
	answers []answer
	cmds    []string
	uploads map[string][]byte
}

type answer struct {
	match string
	out   string
	code  int
}

func (f *fakeComm) Run(ctx context.Context, cmd string, stdin io.Reader) ([]byte, error) {
	f.cmds = append(f.cmds, cmd)
	for _, a := range f.answers {
		if strings.Contains(cmd, a.match) {
			if a.code != 0 {
				return []byte(a.out), &comm.ExitError{Host: "fake", Cmd: cmd, Code: a.code, Stderr: a.out}
			}
			return []byte(a.out), nil
		}
	}
	if strings.HasPrefix(cmd, "mktemp -d") {
		return []byte("/tmp/provision.abc\n"), nil
	}
	return nil, nil
}

func (f *fakeComm) Upload(ctx context.Context, path string, content io.Reader, mode fs.FileMode) error {
	b, _ := io.ReadAll(content)
	if f.uploads == nil {
		f.uploads = map[string][]byte{}
	}
	f.uploads[path] = b
	return nil
}

func (f *fakeComm) Download(ctx context.Context, path string) ([]byte, error) {
	return nil, fmt.Errorf("no download in fake")
}

func (f *fakeComm) ran(sub string) bool {
	for _, c := range f.cmds {
		if strings.Contains(c, sub) {
			return true
		}
	}
	return false
}

func stepByID(t *testing.T, cfg *hostos.Config, id string) *hostos.Step {
	s, ok := hostos.StepByID(id)
	if !ok {
		t.Fatalf("no step %s", id)
	}
	return s
}

func TestSSHRollbackWhenSshdRejects(t *testing.T) {
	fc := &fakeComm{answers: []answer{{match: "sshd -t", out: "/etc/ssh/sshd_config.d/10-provision.conf line 3: Bad configuration option", code: 255}}}
	tgt := &hostos.Target{Comm: fc, Facts: debianFacts(), Config: baseConfig(), Log: slog.New(slog.DiscardHandler)}
	st := stepByID(t, tgt.Config, "harden.ssh")
	err := st.Apply(context.Background(), tgt)
	if err == nil || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("apply: %v", err)
	}
	if !fc.ran(".provision-bak") || fc.ran(sshdLive) {
		t.Errorf("want backup and restore, no reload; ran:\n%s", strings.Join(fc.cmds, "\n"))
	}
	if done, _ := st.Check(context.Background(), tgt); done {
		t.Error("after a rollback the step must not count as done")
	}
}

func TestSwitchedOffStepRemovesItsFiles(t *testing.T) {
	cfg := baseConfig()
	cfg.Hardening.Firewall = false
	f := debianFacts()
	f.Files[hostos.PathFirewall] = strings.Repeat("0", 64)
	f.Files[hostos.PathFirewallUnit] = strings.Repeat("1", 64)
	fc := &fakeComm{}
	tgt := &hostos.Target{Comm: fc, Facts: f, Config: cfg, Log: slog.New(slog.DiscardHandler)}
	st := stepByID(t, cfg, "harden.firewall")
	if done, err := st.Check(context.Background(), tgt); done || err != nil {
		t.Fatalf("check with leftover files: %v %v", done, err)
	}
	if err := st.Apply(context.Background(), tgt); err != nil {
		t.Fatal(err)
	}
	if !fc.ran("disable --now provision-firewall.service") || !fc.ran("rm -f -- /etc/provision/firewall.nft /etc/systemd/system/provision-firewall.service") {
		t.Errorf("ran:\n%s", strings.Join(fc.cmds, "\n"))
	}
	if done, _ := st.Check(context.Background(), tgt); !done {
		t.Error("not done after removal")
	}
	// A fresh host with the switch off costs nothing.
	tgt2 := &hostos.Target{Comm: &fakeComm{}, Facts: debianFacts(), Config: cfg}
	if done, _ := st.Check(context.Background(), tgt2); !done {
		t.Error("switched-off step on a clean host not done")
	}
}

func TestEngineInstallPinned(t *testing.T) {
	cfg := baseConfig()
	cfg.Engine.Version = "20.10.24*"
	cfg.Hardening.Audit = false
	fc := &fakeComm{answers: []answer{
		{match: "apt-cache madison", out: " docker.io | 20.10.24+dfsg1-1+deb12u1+b6 | http://m bookworm/main amd64 Packages\n"},
		{match: "dpkg-query", out: "pkg\tii \tdocker.io\t20.10.24+dfsg1-1+deb12u1+b6\npkg\tii \tnftables\t1.0.6\npkg\tii \tunattended-upgrades\t2.9\nengine\tDocker version 20.10.24+dfsg1, build 297e128\nend\n"},
		{match: "ActiveState", out: "active\n"},
	}}
	tgt := &hostos.Target{Comm: fc, Facts: debianFacts(), Config: cfg, Log: slog.New(slog.DiscardHandler)}
	st := stepByID(t, cfg, "engine.install")
	if done, _ := st.Check(context.Background(), tgt); done {
		t.Fatal("done with nothing installed")
	}
	if err := st.Apply(context.Background(), tgt); err != nil {
		t.Fatal(err)
	}
	var updates, installs int
	for _, c := range fc.cmds {
		if strings.Contains(c, "apt-get -q update") {
			updates++
			if !strings.Contains(c, "Acquire::Languages=none") {
				t.Errorf("apt-get update fetches the description translations too: %s", c)
			}
		}
		if strings.Contains(c, "apt-get install") {
			installs++
			for _, want := range []string{"DEBIAN_FRONTEND=noninteractive", "--no-install-recommends", "--force-confold", "docker.io=20.10.24+dfsg1-1+deb12u1+b6", "nftables", "unattended-upgrades"} {
				if !strings.Contains(c, want) {
					t.Errorf("install command lacks %q: %s", want, c)
				}
			}
			if strings.Contains(c, "auditd") {
				t.Errorf("auditd installed with audit off: %s", c)
			}
		}
	}
	if updates != 1 || installs != 1 {
		t.Errorf("%d updates, %d installs; want one each:\n%s", updates, installs, strings.Join(fc.cmds, "\n"))
	}
	if tgt.Facts.Engine != "20.10.24+dfsg1" {
		t.Errorf("facts engine %q", tgt.Facts.Engine)
	}
	if done, err := st.Check(context.Background(), tgt); !done || err != nil {
		t.Errorf("after apply: %v %v", done, err)
	}
	// The login policy's packages went into the same transaction.
	for _, c := range fc.cmds {
		if strings.Contains(c, "apt-get install") && !strings.Contains(c, "libpam-pwquality") {
			t.Errorf("install without the login packages: %s", c)
		}
	}
	// A first install: the engine's certificates and settings were on the
	// host before the package; the engine steps then have nothing to do, so
	// the engine is not restarted after its first start.
	if _, ok := fc.uploads["/tmp/provision.abc/0"]; !ok || tgt.Facts.Files[hostos.PathDaemonJSON] == "" || tgt.Facts.Files[hostos.PathTLSKey] == "" {
		t.Errorf("not written before the install: uploads %d, facts files %v", len(fc.uploads), tgt.Facts.Files)
	}
	for _, id := range []string{"engine.tls", "engine.config"} {
		if done, err := stepByID(t, cfg, id).Check(context.Background(), tgt); !done || err != nil {
			t.Errorf("%s after a first install: done %v %v", id, done, err)
		}
	}
	if fc.ran("systemctl restart docker") {
		t.Errorf("the engine was restarted after its first start:\n%s", strings.Join(fc.cmds, "\n"))
	}
	// Without a source for the optional packages, the install goes on without them.
	fc2 := &fakeComm{answers: append([]answer{{match: "libpam-pwquality", code: 100, out: "E: Unable to locate package libpam-pwquality"}}, fc.answers...)}
	tgt2 := &hostos.Target{Comm: fc2, Facts: debianFacts(), Config: cfg, Log: slog.New(slog.DiscardHandler)}
	if err := st.Apply(context.Background(), tgt2); err != nil {
		t.Fatalf("without the optional packages: %v", err)
	}
	if n := strings.Count(strings.Join(fc2.cmds, "\n"), "apt-get install"); n != 2 {
		t.Errorf("%d installs, want the full one then the required one:\n%s", n, strings.Join(fc2.cmds, "\n"))
	} // engine.install on its own, without certificates: nothing is written
	// before the package (all or nothing), the install goes on.
	cfg3 := *cfg
	cfg3.TLS = hostos.TLSFiles{}
	fc3 := &fakeComm{answers: fc.answers}
	tgt3 := &hostos.Target{Comm: fc3, Facts: debianFacts(), Config: &cfg3, Log: slog.New(slog.DiscardHandler)}
	if err := stepByID(t, &cfg3, "engine.install").Apply(context.Background(), tgt3); err != nil || len(fc3.uploads) != 0 {
		t.Errorf("without certificates: %v, %d files written", err, len(fc3.uploads))
	}
}

func TestBundleRefusesOtherPlatform(t *testing.T) {
	cfg := baseConfig()
	cfg.Engine.Method = "bundle"
	cfg.BundleDir = t.TempDir()
	f := debianFacts()
	f.OS = hostos.OSRelease{ID: "ubuntu", VersionID: "22.04"}
	tgt := &hostos.Target{Comm: &fakeComm{}, Facts: f, Config: cfg, Log: slog.New(slog.DiscardHandler)}
	err := stepByID(t, cfg, "engine.install").Apply(context.Background(), tgt)
	if err == nil || !strings.Contains(err.Error(), "ubuntu-22.04-amd64") {
		t.Errorf("bundle for another distro: %v", err)
	}
}

func TestKernelSysctlsInContainerAndVM(t *testing.T) {
	for _, virt := range []string{"docker", "none"} {
		f := debianFacts()
		f.Virt = virt
		fc := &fakeComm{}
		tgt := &hostos.Target{Comm: fc, Facts: f, Config: baseConfig(), Log: slog.New(slog.DiscardHandler)}
		if err := stepByID(t, tgt.Config, "harden.kernel").Apply(context.Background(), tgt); err != nil {
			t.Fatalf("%s: %v", virt, err)
		}
		all := strings.Join(fc.cmds, "\n")
		if !strings.Contains(all, "net.ipv4.conf.all.rp_filter=2") {
			t.Errorf("%s: namespaced key not set:\n%s", virt, all)
		}
		// The machine's kernel is shared by every container: not ours to change.
		if got := strings.Contains(all, "kernel.kptr_restrict=2"); got != (virt == "none") {
			t.Errorf("%s: kernel.kptr_restrict set=%v", virt, got)
		}
	}
	// A namespaced key that fails is an error, and the file goes so the next
	// apply tries again.
	fc := &fakeComm{answers: []answer{{match: "sysctl -q -w", out: "fail\tnet.ipv4.ip_forward\n"}}}
	f := debianFacts()
	f.Virt = "docker"
	tgt := &hostos.Target{Comm: fc, Facts: f, Config: baseConfig(), Log: slog.New(slog.DiscardHandler)}
	err := stepByID(t, tgt.Config, "harden.kernel").Apply(context.Background(), tgt)
	if err == nil || !strings.Contains(err.Error(), "net.ipv4.ip_forward") {
		t.Errorf("failed key: %v", err)
	}
	if _, ok := f.Files[hostos.PathSysctl]; ok || !fc.ran("rm -f -- "+hostos.PathSysctl) {
		t.Error("sysctl file kept after a failure")
	}
}

func TestSSHRollbackWhenFreshLoginFails(t *testing.T) {
	fc := &fakeComm{}
	tgt := &hostos.Target{Comm: fc, Facts: debianFacts(), Config: baseConfig(), Log: slog.New(slog.DiscardHandler)}
	reloadsBefore := -1
	tgt.Relogin = func(ctx context.Context) error {
		reloadsBefore = countRuns(fc, sshdLive)
		return fmt.Errorf("ssh: handshake failed: ssh: unable to authenticate")
	}
	st := stepByID(t, tgt.Config, "harden.ssh")
	err := st.Apply(context.Background(), tgt)
	if err == nil || !strings.Contains(err.Error(), "rolled back") || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Fatalf("apply: %v", err)
	}
	if reloadsBefore != 1 {
		t.Errorf("relogin ran after %d sshd reloads, want 1 (the new config must be live)", reloadsBefore)
	}
	if n := countRuns(fc, sshdLive); n != 2 {
		t.Errorf("sshd reloaded %d times, want 2 (new config, then the restored one); ran:\n%s", n, strings.Join(fc.cmds, "\n"))
	}
	// Restore and reload are one command: nothing may come between them.
	last := fc.cmds[lastIndexOf(fc, sshdLive)]
	if !strings.Contains(last, "mv -f "+hostos.PathSSHD+".provision-bak") {
		t.Errorf("backup not restored with the second reload; ran:\n%s", strings.Join(fc.cmds, "\n"))
	}
	if done, _ := st.Check(context.Background(), tgt); done {
		t.Error("after a rollback the step must not count as done")
	}
}

func TestSSHFreshLoginKeepsChange(t *testing.T) {
	fc := &fakeComm{}
	tgt := &hostos.Target{Comm: fc, Facts: debianFacts(), Config: baseConfig(), Log: slog.New(slog.DiscardHandler)}
	calls := 0
	tgt.Relogin = func(ctx context.Context) error { calls++; return nil }
	st := stepByID(t, tgt.Config, "harden.ssh")
	if err := st.Apply(context.Background(), tgt); err != nil {
		t.Fatal(err)
	}
	if calls != 1 || countRuns(fc, sshdLive) != 1 || fc.ran("mv -f") {
		t.Errorf("relogin calls %d; ran:\n%s", calls, strings.Join(fc.cmds, "\n"))
	}
	if lastIndexOf(fc, "rm -f "+hostos.PathSSHD+".provision-bak") < lastIndexOf(fc, sshdLive) {
		t.Errorf("backup must be dropped only after the fresh login; ran:\n%s", strings.Join(fc.cmds, "\n"))
	}
	if done, _ := st.Check(context.Background(), tgt); !done {
		t.Error("step not done after a successful change")
	}
}

func countRuns(f *fakeComm, sub string) int {
	n := 0
	for _, c := range f.cmds {
		if strings.Contains(c, sub) {
			n++
		}
	}
	return n
}

func indexOf(f *fakeComm, sub string) int {
	for i, c := range f.cmds {
		if strings.Contains(c, sub) {
			return i
		}
	}
	return -1
}

func lastIndexOf(f *fakeComm, sub string) int {
	for i := len(f.cmds) - 1; i >= 0; i-- {
		if strings.Contains(f.cmds[i], sub) {
			return i
		}
	}
	return -1
}

func TestLoginPolicyRunsWhenItChanges(t *testing.T) {
	fc := &fakeComm{answers: []answer{{match: "login-policy.sh", out: "packages-missing libpam-pwquality\n"}}}
	tgt := &hostos.Target{Comm: fc, Facts: debianFacts(), Config: baseConfig(), Log: slog.New(slog.DiscardHandler)}
	st := stepByID(t, tgt.Config, "harden.login")
	// Missing packages (no package source) are a warning, not a failure.
	if err := st.Apply(context.Background(), tgt); err != nil {
		t.Fatal(err)
	}
	if countRuns(fc, "sh /etc/provision/login-policy.sh") != 1 {
		t.Errorf("policy script not run once; ran:\n%s", strings.Join(fc.cmds, "\n"))
	}
	for _, p := range []string{hostos.PathIssue, hostos.PathIssueNet, hostos.PathProfile, hostos.PathLoginPolicy} {
		if !fc.ran("install -D -m") || !fc.ran(p) {
			t.Errorf("%s not installed", p)
		}
	}
	if done, _ := st.Check(context.Background(), tgt); !done {
		t.Error("not done after apply")
	}
	// Only the banner changes: the script does not run again.
	fc.cmds = nil
	tgt.Facts.Files[hostos.PathIssue] = strings.Repeat("0", 64)
	if err := st.Apply(context.Background(), tgt); err != nil {
		t.Fatal(err)
	}
	if fc.ran("login-policy.sh") {
		t.Errorf("policy script ran although it did not change:\n%s", strings.Join(fc.cmds, "\n"))
	}
	// A failing script is an error, and the script goes so the next apply runs it.
	fc = &fakeComm{answers: []answer{{match: "sh /etc/provision/login-policy.sh", out: "sed: cannot rename", code: 4}}}
	tgt = &hostos.Target{Comm: fc, Facts: debianFacts(), Config: baseConfig(), Log: slog.New(slog.DiscardHandler)}
	if err := st.Apply(context.Background(), tgt); err == nil || !strings.Contains(err.Error(), "login policy") {
		t.Errorf("failing policy: %v", err)
	}
	if _, ok := tgt.Facts.Files[hostos.PathLoginPolicy]; ok {
		t.Error("policy script kept after a failure")
	}
}

func TestKernelFiles(t *testing.T) {
	files, err := hostos.KernelFiles()
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]string{}
	for _, f := range files {
		byPath[f.Path] = string(f.Content)
	}
	if !strings.Contains(byPath[hostos.PathModprobe], "install usb-storage /bin/false") || strings.Contains(byPath[hostos.PathModprobe], "sctp") {
		t.Errorf("modprobe blocklist:\n%s", byPath[hostos.PathModprobe])
	}
	if !strings.Contains(byPath[hostos.PathLimits], "hard    core    0") || !strings.Contains(byPath[hostos.PathCoredump], "Storage=none") {
		t.Errorf("core dumps not off:\n%s\n%s", byPath[hostos.PathLimits], byPath[hostos.PathCoredump])
	}
	// Only a changed sysctl file is applied again.
	f := debianFacts()
	f.Virt = "docker"
	for _, kf := range files {
		if kf.Path == hostos.PathSysctl {
			f.Files[kf.Path] = kf.Sum()
		}
	}
	fc := &fakeComm{}
	tgt := &hostos.Target{Comm: fc, Facts: f, Config: baseConfig(), Log: slog.New(slog.DiscardHandler)}
	if err := stepByID(t, tgt.Config, "harden.kernel").Apply(context.Background(), tgt); err != nil {
		t.Fatal(err)
	}
	if fc.ran("sysctl -q -w") {
		t.Errorf("unchanged sysctl file applied again:\n%s", strings.Join(fc.cmds, "\n"))
	}
}

// TestSwarmCertFact: the facts read a host's swarm membership from its
// swarm node certificate (CN node, OU role, O cluster), before any engine
// API is reachable: a host of another swarm is known before it is changed.
func TestSwarmCertFact(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "node123", OrganizationalUnit: []string{"swarm-worker"}, Organization: []string{"cluster456"}},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	f, err := hostos.ParseFacts([]byte("swarmcert\t" + b64 + "\nend\n"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Swarm == nil || f.Swarm.NodeID != "node123" || f.Swarm.ClusterID != "cluster456" || f.Swarm.Role != "worker" {
		t.Fatalf("swarm fact %+v", f.Swarm)
	}
	f, _ = hostos.ParseFacts([]byte("swarmcert\tnot-base64!\nend\n"))
	if f.Swarm != nil {
		t.Fatalf("garbage read as %+v", f.Swarm)
	}
}

// TestBareMetalKnobs is issue 12's spec settings for hosts that other people
// use too: extra SSH users and groups, extra firewall openings, and reboot
// times staggered so that managers never reboot together.
func TestBareMetalKnobs(t *testing.T) {
	cfg := baseConfig()
	base, _ := hostos.SSHDFiles(cfg)
	if strings.Contains(string(base[0].Content), "Match") || !strings.HasSuffix(string(base[0].Content), "diffie-hellman-group18-sha512\n") {
		t.Errorf("without groups the drop-in must stay as it was:\n%s", base[0].Content)
	}
	cfg.Hardening.SSHUsers = []string{"backup", "provision"}
	cfg.Hardening.SSHGroups = []string{"ops", "dba"}
	files, err := hostos.SSHDFiles(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := string(files[0].Content)
	if !strings.Contains(s, "\nAllowUsers provision backup\n") || !strings.HasSuffix(s, "\nMatch Group ops,dba\n\tAllowUsers *\n") {
		t.Errorf("sshd drop-in:\n%s", s)
	}
	if strings.Index(s, "Match Group") < strings.Index(s, "KexAlgorithms") {
		t.Error("the Match block must be last: everything after it applies only to the group")
	}
	cfg.Hardening.SSHGroups = []string{"ops,root"}
	if _, err := hostos.SSHDFiles(cfg); err == nil {
		t.Error("a group name with a comma was accepted")
	}

	cfg = baseConfig()
	cfg.Hardening.FirewallAllow = []spec.FirewallRule{
		{Protocol: "tcp", Ports: []string{"80", "443"}, From: []string{"0.0.0.0/0", "::/0"}},
		{Protocol: "udp", Ports: []string{"9100-9110"}, From: []string{"10.1.2.3"}},
	}
	fw, err := hostos.FirewallFiles(cfg, mustFamily(t), debianFacts())
	if err != nil {
		t.Fatal(err)
	}
	rs := string(fw[0].Content)
	for _, want := range []string{
		`ip saddr { 0.0.0.0/0 } tcp dport { 80, 443 } accept comment "firewall_allow"`,
		`ip6 saddr { ::/0 } tcp dport { 80, 443 } accept comment "firewall_allow"`,
		`ip saddr { 10.1.2.3 } udp dport { 9100-9110 } accept comment "firewall_allow"`,
	} {
		if !strings.Contains(rs, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, rs)
		}
	}
	if strings.Contains(rs, "ip6 saddr { } ") {
		t.Errorf("empty source set rendered:\n%s", rs)
	}
	cfg.Hardening.FirewallAllow = []spec.FirewallRule{{Protocol: "tcp", Ports: []string{"80; flush ruleset"}, From: []string{"0.0.0.0/0"}}}
	if _, err := hostos.FirewallFiles(cfg, mustFamily(t), debianFacts()); err == nil {
		t.Error("a port with nft syntax in it was accepted")
	}

	// Reboots: managers never at the same time, the same node always at
	// the same time, workers spread.
	seen := map[string]int{}
	for i := 1; i <= 9; i++ {
		tm := hostos.RebootTime(spec.RoleManager, i)
		if prev, ok := seen[tm]; ok {
			t.Errorf("managers %d and %d both reboot at %s", prev, i, tm)
		}
		seen[tm] = i
		if hostos.RebootTime(spec.RoleManager, i) != tm {
			t.Error("not deterministic")
		}
	}
	if got := hostos.RebootTime(spec.RoleManager, 1); got != "02:00" {
		t.Errorf("manager 1 reboots at %s", got)
	}
	workers := map[string]bool{}
	for i := 1; i <= 48; i++ {
		tm := hostos.RebootTime(spec.RoleWorker, i)
		if _, ok := seen[tm]; ok {
			t.Errorf("worker %d reboots with a manager at %s", i, tm)
		}
		workers[tm] = true
	}
	if len(workers) != 12 {
		t.Errorf("workers reboot in %d waves, want 12", len(workers))
	}
	cfg = baseConfig()
	cfg.Role, cfg.Index = spec.RoleManager, 3
	cfg.Hardening.AutoReboot = true
	up, _ := hostos.UpdatesFiles(cfg)
	if s := string(up[1].Content); !strings.Contains(s, `Automatic-Reboot-Time "02:40";`) {
		t.Errorf("manager 3's reboot time:\n%s", s)
	}
	cfg.Hardening.AutoReboot = false
	up, _ = hostos.UpdatesFiles(cfg)
	if s := string(up[1].Content); !strings.Contains(s, `Automatic-Reboot-Time "03:30";`) {
		t.Errorf("auto_reboot off keeps the file as it was:\n%s", s)
	}
}

// TestParseFactsSections: the facts script's command sections (one
// sha256sum, one systemctl show, the swarm certificate) are read back per
// file and per unit; a unit whose block carries another Id (an alias) is
// named by its position.
func TestParseFactsSections(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "node9", OrganizationalUnit: []string{"swarm-manager"}, Organization: []string{"cl9"}},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	a, b := strings.Repeat("a", 64), strings.Repeat("b", 64)
	out := "files\n" + a + "  /etc/docker/daemon.json\n" + b + "  /etc/ssh/sshd_config.d/provision.conf\nshort  /x\nfiles-end\n" +
		"units\tdocker.service sshd.service auditd.service\n" +
		"Id=docker.service\nActiveState=active\nUnitFileState=enabled\n\n" +
		"UnitFileState=enabled\nId=ssh.service\nActiveState=active\n\n" +
		"Id=auditd.service\nActiveState=inactive\nUnitFileState=\n\nunits-end\n" +
		"swarmpem\n" + strings.TrimSpace(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))) + "\nswarmpem-end\n" +
		"engine\tDocker version 20.10.24+dfsg1, build 297e128\nend\n"
	f, err := hostos.ParseFacts([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Files) != 2 || f.Files["/etc/docker/daemon.json"] != a || f.Files["/etc/ssh/sshd_config.d/provision.conf"] != b {
		t.Errorf("files %v", f.Files)
	}
	if f.Units["docker.service"] != "active" || f.UnitFiles["docker.service"] != "enabled" ||
		f.Units["sshd.service"] != "active" || f.UnitFiles["sshd.service"] != "enabled" ||
		f.Units["auditd.service"] != "inactive" || f.UnitFiles["auditd.service"] != "" || len(f.Units) != 3 {
		t.Errorf("units %v unit files %v", f.Units, f.UnitFiles)
	}
	if f.Swarm == nil || f.Swarm.NodeID != "node9" || f.Swarm.Role != "manager" || f.Swarm.ClusterID != "cl9" {
		t.Errorf("swarm %+v", f.Swarm)
	}
	if f.Engine != "20.10.24+dfsg1" {
		t.Errorf("engine %q", f.Engine)
	}
	// systemctl skipped a name: the Ids realign the rest.
	out = "units\ta.service b.service c.service\nId=a.service\nActiveState=active\n\nId=c.service\nActiveState=failed\n\nunits-end\nend\n"
	if f, err = hostos.ParseFacts([]byte(out)); err != nil || f.Units["a.service"] != "active" || f.Units["c.service"] != "failed" || f.Units["b.service"] != "" {
		t.Errorf("realign: %v %v", err, f.Units)
	}
}

// TestEngineDowngradeRefused: a pin below the installed engine package is
// refused by the check, before anything runs on the host; with the
// operator's permission apt is told to downgrade.
func TestEngineDowngradeRefused(t *testing.T) {
	cfg := baseConfig()
	cfg.Engine.Version = "20.10.24+dfsg1-1+deb12u1+b6"
	f := debianFacts()
	f.Packages["docker.io"] = "20.10.24+dfsg1-1+deb12u1+b6+up1"
	f.Engine = "20.10.24+dfsg1"
	fc := &fakeComm{answers: []answer{
		{match: "apt-cache madison", out: " docker.io | 20.10.24+dfsg1-1+deb12u1+b6+up1 | http://r ./ Packages\n docker.io | 20.10.24+dfsg1-1+deb12u1+b6 | http://m bookworm/main amd64 Packages\n"},
		{match: "dpkg-query", out: "pkg\tii \tdocker.io\t20.10.24+dfsg1-1+deb12u1+b6\npkg\tii \tnftables\t1.0.6\npkg\tii \tunattended-upgrades\t2.9\npkg\tii \tauditd\t1\nengine\tDocker version 20.10.24+dfsg1, build 297e128\nend\n"},
	}}
	tgt := &hostos.Target{Comm: fc, Facts: f, Config: cfg, Log: slog.New(slog.DiscardHandler)}
	st := stepByID(t, cfg, "engine.install")
	if _, err := st.Check(context.Background(), tgt); err == nil || !strings.Contains(err.Error(), "--allow-engine-downgrade") || !strings.Contains(err.Error(), "+up1") {
		t.Fatalf("check: %v", err)
	}
	if len(fc.cmds) != 0 {
		t.Fatalf("the check ran commands: %v", fc.cmds)
	}
	cfg.AllowDowngrade = true
	if done, err := st.Check(context.Background(), tgt); done || err != nil {
		t.Fatalf("allowed: %v %v", done, err)
	}
	if err := st.Apply(context.Background(), tgt); err != nil {
		t.Fatal(err)
	}
	if !fc.ran("--allow-downgrades") || !fc.ran("docker.io=20.10.24+dfsg1-1+deb12u1+b6 ") {
		t.Errorf("ran:\n%s", strings.Join(fc.cmds, "\n"))
	}
}

// sshdLive marks a command that makes sshd's configuration live
// (hostos.SSHDLiveFunc called).
const sshdLive = "}\nsshd_live "

// interruptedDpkg is a host whose last package transaction stopped half
// way: apt refuses to install until `dpkg --configure -a` has run.
type interruptedDpkg struct {
	*fakeComm
	configured bool
}

func (f *interruptedDpkg) Run(ctx context.Context, cmd string, stdin io.Reader) ([]byte, error) {
	switch {
	case strings.Contains(cmd, "dpkg --configure -a"):
		f.cmds = append(f.cmds, cmd)
		f.configured = true
		return nil, nil
	case strings.Contains(cmd, "apt-get install") && !f.configured:
		f.cmds = append(f.cmds, cmd)
		msg := "E: dpkg was interrupted, you must manually run 'dpkg --configure -a' to correct the problem."
		return []byte(msg), &comm.ExitError{Host: "fake", Cmd: cmd, Code: 100, Stderr: msg}
	}
	return f.fakeComm.Run(ctx, cmd, stdin)
}

// An install that an earlier run left half done is finished, then the
// install runs again; any other failure is not retried.
func TestEngineInstallAfterInterruptedDpkg(t *testing.T) {
	cfg := baseConfig()
	cfg.Hardening.Audit = false
	answers := []answer{
		{match: "dpkg-query", out: "pkg\tii \tdocker.io\t20.10.24+dfsg1-1+deb12u1+b6\npkg\tii \tnftables\t1.0.6\npkg\tii \tunattended-upgrades\t2.9\nengine\tDocker version 20.10.24+dfsg1, build 297e128\nend\n"},
		{match: "ActiveState", out: "active\n"},
	}
	fc := &interruptedDpkg{fakeComm: &fakeComm{answers: answers}}
	tgt := &hostos.Target{Comm: fc, Facts: debianFacts(), Config: cfg, Log: slog.New(slog.DiscardHandler)}
	if err := stepByID(t, cfg, "engine.install").Apply(context.Background(), tgt); err != nil {
		t.Fatalf("install after an interrupted dpkg: %v\n%s", err, strings.Join(fc.cmds, "\n"))
	}
	var seq []string
	for _, c := range fc.cmds {
		switch {
		case strings.Contains(c, "dpkg --configure -a"):
			seq = append(seq, "configure")
		case strings.Contains(c, "apt-get install"):
			seq = append(seq, "install")
		}
	}
	if got := strings.Join(seq, ","); got != "install,configure,install" {
		t.Errorf("commands %s, want install,configure,install:\n%s", got, strings.Join(fc.cmds, "\n"))
	}

	// Another failure (a package that does not exist) is not met with dpkg --configure -a.
	fc2 := &fakeComm{answers: append([]answer{{match: "apt-get install", code: 100, out: "E: Unable to locate package docker.io"}}, answers...)}
	tgt2 := &hostos.Target{Comm: fc2, Facts: debianFacts(), Config: cfg, Log: slog.New(slog.DiscardHandler)}
	if err := stepByID(t, cfg, "engine.install").Apply(context.Background(), tgt2); err == nil {
		t.Fatal("install of a missing package succeeded")
	}
	if fc2.ran("dpkg --configure -a") {
		t.Errorf("dpkg --configure -a after an unrelated failure:\n%s", strings.Join(fc2.cmds, "\n"))
	}
}

// The sysctl drop-in sorts after Debian's own /usr/lib/sysctl.d files
// (99-protect-links.conf sets fs.protected_fifos = 1, systemd-sysctl keeps
// the last value by file name) and after /etc/sysctl.conf (99-sysctl.conf);
// the file earlier versions wrote (90-provision.conf) is removed when the
// new one goes in.
func TestSysctlDropInSortsLast(t *testing.T) {
	base := filepath.Base(hostos.PathSysctl)
	for _, other := range []string{"99-protect-links.conf", "99-sysctl.conf", "50-pid-max.conf", "99-cloudimg-ipv6.conf"} {
		if base <= other {
			t.Errorf("%s sorts before %s: its values would be undone at boot", base, other)
		}
	}
	fc := &fakeComm{}
	f := debianFacts()
	f.Virt = "docker"
	f.Files[hostos.PathSysctlOld] = strings.Repeat("a", 64)
	tgt := &hostos.Target{Comm: fc, Facts: f, Config: baseConfig(), Log: slog.New(slog.DiscardHandler)}
	if err := stepByID(t, tgt.Config, "harden.kernel").Apply(context.Background(), tgt); err != nil {
		t.Fatal(err)
	}
	if !fc.ran("rm -f -- "+hostos.PathSysctlOld) || func() bool { _, ok := f.Files[hostos.PathSysctlOld]; return ok }() {
		t.Errorf("old drop-in not removed; ran:\n%s", strings.Join(fc.cmds, "\n"))
	}
}
