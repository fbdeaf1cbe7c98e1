package hostos_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/spec"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// converge runs the steps as the engine does and returns the IDs applied.
func converge(t *testing.T, ctx context.Context, tgt *hostos.Target) []string {
	t.Helper()
	var applied []string
	for _, st := range hostos.Steps() {
		done, err := st.Check(ctx, tgt)
		if err != nil {
			t.Fatalf("%s: check: %v", st.ID, err)
		}
		if done {
			continue
		}
		t0 := time.Now()
		if err := st.Apply(ctx, tgt); err != nil {
			t.Fatalf("%s: apply: %v", st.ID, err)
		}
		t.Logf("%s applied in %s", st.ID, time.Since(t0).Round(time.Millisecond))
		applied = append(applied, st.ID)
		// The facts the step updated must now say done.
		if done, err := st.Check(ctx, tgt); err != nil || !done {
			t.Errorf("%s: after apply, check says done=%v err=%v", st.ID, done, err)
		}
	}
	return applied
}

// notDone lists the steps whose Check is not done.
func notDone(t *testing.T, ctx context.Context, tgt *hostos.Target) []string {
	t.Helper()
	var out []string
	for _, st := range hostos.Steps() {
		done, err := st.Check(ctx, tgt)
		if err != nil {
			t.Fatalf("%s: check: %v", st.ID, err)
		}
		if !done {
			out = append(out, st.ID)
		}
	}
	return out
}

func TestHostConverges(t *testing.T) {
	t.Parallel()
	dc := needDocker(t)
	h := startHost(t, dc, "fresh-host", false)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// PKI as the engine makes it.
	pkiDir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(pkiDir, "t")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Server("node-1", []string{h.IP, "localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.EnsureClient(pkiDir, ca, time.Hour, 0, time.Time{}); err != nil {
		t.Fatal(err)
	}
	clientTLS, err := pki.ClientTLS(pkiDir)
	if err != nil {
		t.Fatal(err)
	}

	cfg := &hostos.Config{
		Cluster: "t", ClusterID: "c-test", Node: "node-1", Role: spec.RoleManager, AdminUser: "provision",
		Engine:  spec.Engine{Method: "package", Package: "docker.io"},
		Logging: spec.Logging{Driver: "json-file", Options: map[string]string{"max-size": "10m", "max-file": "3"}, JournaldMaxUse: "200M"},
		Prune:   spec.Prune{Enabled: true, Schedule: "daily", Until: "24h", RandomizedDelay: "1h"},
		Hardening: spec.Hardening{Profile: "default", SSH: true, Kernel: true, Firewall: true, Daemon: true,
			Audit: true, Updates: true},
		TLS:           hostos.TLSFiles{CA: ca.CertPEM, Cert: srv.CertPEM, Key: srv.KeyPEM},
		Peers:         []string{h.IP},
		OperatorCIDRs: []string{h.Gateway + "/32"},
	}

	// Facts from the fresh host, in one remote call.
	runs := h.Comm.runs
	facts, err := hostos.GatherFacts(ctx, h.Comm, hostos.ManagedPaths(nil))
	if err != nil {
		t.Fatalf("gather facts: %v", err)
	}
	if n := h.Comm.runs - runs; n != 1 {
		t.Errorf("GatherFacts made %d remote calls, want 1", n)
	}
	if facts.OS.ID != "debian" || facts.OS.VersionID != "12" || facts.OS.Codename != "bookworm" {
		t.Errorf("os = %+v", facts.OS)
	}
	if facts.Arch == "" || facts.Hostname != "fresh-host" || facts.Virt != "docker" || !facts.Container() {
		t.Errorf("arch %q hostname %q virt %q", facts.Arch, facts.Hostname, facts.Virt)
	}
	if facts.SSHClient != h.Gateway {
		t.Errorf("ssh client = %q, want %q", facts.SSHClient, h.Gateway)
	}
	if facts.Packages["systemd"] == "" || facts.Packages["docker.io"] != "" || facts.Engine != "" {
		t.Errorf("packages: systemd %q docker.io %q engine %q", facts.Packages["systemd"], facts.Packages["docker.io"], facts.Engine)
	}
	// A fresh Debian host has only the distro's own banners among the files we manage.
	delete(facts.Files, hostos.PathIssue)
	delete(facts.Files, hostos.PathIssueNet)
	if facts.Commands["sshd"] == "" || len(facts.Files) != 0 {
		t.Errorf("commands %v files %v", facts.Commands, facts.Files)
	}
	if facts.Units["ssh.service"] != "active" || facts.Units["docker.service"] != "inactive" {
		t.Errorf("units %v", facts.Units)
	}

	tgt := &hostos.Target{Name: "node-1", Comm: h.Comm, Facts: facts, Config: cfg, Log: testLogger(t)}
	applied := converge(t, ctx, tgt)
	t.Logf("applied: %v", applied)
	for _, want := range []string{"host.hostname", "engine.install", "logging.journald", "prune.timer", "harden.ssh", "harden.login", "harden.kernel", "harden.firewall", "harden.audit", "harden.updates"} {
		if !contains(applied, want) {
			t.Errorf("step %s was not applied on a fresh host", want)
		}
	}
	// The engine's certificates and settings went on the host before its
	// package, whose own start used them: engine.tls and engine.config have
	// nothing left to do and the engine is not restarted (the TLS checks
	// below prove it serves with them).
	for _, id := range []string{"engine.tls", "engine.config"} {
		if contains(applied, id) {
			t.Errorf("%s applied after the first install: its files should have been in place", id)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// The engine answers on 2376 to the cluster's client certificate only.
	url := "https://" + net.JoinHostPort(h.IP, "2376") + "/_ping"
	if body, err := get(ctx, url, clientTLS); err != nil || body != "OK" {
		t.Errorf("ping with client cert: %q %v", body, err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM)
	if body, err := get(ctx, url, &tls.Config{RootCAs: pool}); err == nil {
		t.Errorf("ping without client cert succeeded: %q", body)
	} else {
		t.Logf("without client cert: %v", err)
	}

	// A second pass: facts again, and every step is done.
	facts2, err := hostos.GatherFacts(ctx, h.Comm, hostos.ManagedPaths(nil))
	if err != nil {
		t.Fatalf("gather facts again: %v", err)
	}
	if facts2.Hostname != "node-1" || facts2.Engine == "" || !strings.HasPrefix(facts2.Packages["docker.io"], facts2.Engine) {
		t.Errorf("after converge: hostname %q engine %q docker.io %q", facts2.Hostname, facts2.Engine, facts2.Packages["docker.io"])
	}
	tgt.Facts = facts2
	runs = h.Comm.runs
	if nd := notDone(t, ctx, tgt); len(nd) != 0 {
		t.Errorf("second pass: steps not done: %v", nd)
	}
	if n := h.Comm.runs - runs; n != 0 {
		t.Errorf("checks made %d remote calls, want 0", n)
	}

	// What the steps did, seen on the host.
	run := func(cmd string) string {
		t.Helper()
		out, err := h.Comm.Run(ctx, "sudo -n sh -c '"+cmd+"'", nil)
		if err != nil {
			t.Errorf("%s: %v", cmd, err)
		}
		return string(out)
	}
	ruleset := run("nft list ruleset")
	if !strings.Contains(ruleset, "table inet provision") || !strings.Contains(ruleset, "table ip nat") {
		t.Errorf("ruleset lacks our table or the engine's nat table:\n%s", ruleset)
	}
	if out := run("sshd -T | grep -E \"^(permitrootlogin|passwordauthentication|allowusers|maxauthtries)\""); !strings.Contains(out, "permitrootlogin no") || !strings.Contains(out, "allowusers provision") || !strings.Contains(out, "maxauthtries 3") {
		t.Errorf("sshd -T:\n%s", out)
	}
	if out := run("sysctl -n net.ipv4.conf.all.rp_filter net.ipv4.conf.all.accept_redirects net.ipv4.ip_forward"); strings.Fields(out)[0] != "2" || strings.Fields(out)[1] != "0" || strings.Fields(out)[2] != "1" {
		t.Errorf("sysctls: %q", out)
	}
	if out := run("systemctl start provision-prune.service && journalctl -u provision-prune.service -o cat --no-pager"); !strings.Contains(out, "Total reclaimed space") {
		t.Errorf("prune did not report what it reclaimed:\n%s", out)
	}
	if out := run("systemctl is-enabled provision-prune.timer provision-firewall.service"); out != "enabled\nenabled\n" {
		t.Errorf("units enabled: %q", out)
	}

	// The firewall: 2376 is open to the operator (shown above), 22 to all,
	// and swarm's 2377 dropped for a non-peer (a timeout, not a refusal:
	// nothing listens there yet, so an accepted SYN would be refused).
	if err := dial(ctx, h.IP, "22"); err != nil {
		t.Errorf("ssh port from the operator: %v", err)
	}
	err = dial(ctx, h.IP, "2377")
	var ne net.Error
	if err == nil || errors.Is(err, syscall.ECONNREFUSED) || !(errors.As(err, &ne) && ne.Timeout()) {
		t.Errorf("2377 from a non-peer: want a timeout (dropped), got %v", err)
	}
	// Made a peer, the operator's SYN to 2377 gets through (and is refused:
	// nothing listens). Only harden.firewall has work to do.
	peerCfg := *cfg
	peerCfg.Peers = []string{h.IP, h.Gateway}
	tgt.Config = &peerCfg
	if applied := converge(t, ctx, tgt); len(applied) != 1 || applied[0] != "harden.firewall" {
		t.Errorf("adding a peer applied %v, want only harden.firewall", applied)
	}
	if err := dial(ctx, h.IP, "2377"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("2377 from a peer: want connection refused (let through), got %v", err)
	}
	tgt.Config = cfg
	if applied := converge(t, ctx, tgt); len(applied) != 1 || applied[0] != "harden.firewall" {
		t.Errorf("removing the peer applied %v, want only harden.firewall", applied)
	}
	if err := dial(ctx, h.IP, "2377"); err == nil || errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("2377 after the peer left: want dropped, got %v", err)
	}

	// Changing the log options changes only the engine's config.
	cfg2 := *cfg
	cfg2.Logging.Options = map[string]string{"max-size": "20m", "max-file": "5"}
	tgt.Config = &cfg2
	if nd := notDone(t, ctx, tgt); len(nd) != 1 || nd[0] != "engine.config" {
		t.Errorf("after changing log options, not done: %v (want only engine.config)", nd)
	}
	if applied := converge(t, ctx, tgt); len(applied) != 1 || applied[0] != "engine.config" {
		t.Errorf("applied %v, want only engine.config", applied)
	}
	if out := run("docker info --format \"{{.LoggingDriver}}\" && cat /etc/docker/daemon.json"); !strings.Contains(out, `"max-size": "20m"`) {
		t.Errorf("daemon.json after change:\n%s", out)
	}
	if body, err := get(ctx, url, clientTLS); err != nil || body != "OK" {
		t.Errorf("ping after reconfigure: %q %v", body, err)
	}

	// A renewed server certificate: engine.tls has work; the engine restarts
	// once, at the end of the engine steps (engine.config, whose files are
	// unchanged, runs only for that restart).
	srv2, err := ca.Server("node-1", []string{h.IP, "localhost"}, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg3 := cfg2
	cfg3.TLS = hostos.TLSFiles{CA: ca.CertPEM, Cert: srv2.CertPEM, Key: srv2.KeyPEM}
	tgt.Config = &cfg3
	if nd := notDone(t, ctx, tgt); len(nd) != 1 || nd[0] != "engine.tls" {
		t.Errorf("after a renewal, not done: %v (want only engine.tls)", nd)
	}
	if applied := converge(t, ctx, tgt); strings.Join(applied, " ") != "engine.tls engine.config" {
		t.Errorf("cert renewal applied %v, want engine.tls, then engine.config's restart", applied)
	}
	if serial, err := servedSerial(ctx, net.JoinHostPort(h.IP, "2376"), clientTLS); err != nil || serial != srv2.Serial {
		t.Errorf("engine serves certificate %s (%v), want the renewed %s", serial, err, srv2.Serial)
	}
}

// servedSerial is the serial of the certificate the server at addr presents.
func servedSerial(ctx context.Context, addr string, tc *tls.Config) (string, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: tc}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber.Text(16), nil
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func get(ctx context.Context, url string, tc *tls.Config) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	cl := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	defer cl.CloseIdleConnections()
	resp, err := cl.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func dial(ctx context.Context, host, port string) error {
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, port))
	if err == nil {
		c.Close()
	}
	return err
}

// TestOfflineBundle installs the engine on an air-gapped host: this machine
// (Debian 12 like the host) downloads what the host's dpkg status lacks and
// uploads it; the host installs it with apt from local files.
func TestOfflineBundle(t *testing.T) {
	t.Parallel()
	dc := needDocker(t)
	h := startHost(t, dc, "airgap", true)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if out, err := h.Comm.Run(ctx, "sudo -n timeout 8 apt-get update -o Acquire::Retries=0 2>&1", nil); err == nil && !strings.Contains(string(out), "Err:") {
		t.Fatalf("the host reaches the mirror; the network is not internal:\n%s", out)
	}
	cfg := &hostos.Config{
		Node: "airgap", AdminUser: "provision",
		Engine:    spec.Engine{Method: "bundle", Package: spec.DefaultPackage, Version: "20.10.24*"},
		Hardening: spec.Hardening{Firewall: true}, // nftables is in the image already
		BundleDir: t.TempDir(),
	}
	facts, err := hostos.GatherFacts(ctx, h.Comm, hostos.ManagedPaths(nil))
	if err != nil {
		t.Fatal(err)
	}
	tgt := &hostos.Target{Name: "airgap", Comm: h.Comm, Facts: facts, Config: cfg, Log: testLogger(t)}
	var install *hostos.Step
	for _, st := range hostos.Steps() {
		if st.ID == "engine.install" {
			install = st
		}
	}
	if done, err := install.Check(ctx, tgt); done || err != nil {
		t.Fatalf("fresh host: done=%v err=%v", done, err)
	}
	t0 := time.Now()
	if err := install.Apply(ctx, tgt); err != nil {
		t.Fatalf("bundle install: %v", err)
	}
	t.Logf("bundle install took %s", time.Since(t0).Round(time.Millisecond))
	debs, _ := filepath.Glob(filepath.Join(cfg.BundleDir, "debian-12-*", "*.deb"))
	if len(debs) == 0 {
		t.Errorf("no .deb files in the bundle dir")
	}
	// The bundle's files are pinned by name and SHA-256 (issue 12).
	mb, err := os.ReadFile(filepath.Join(filepath.Dir(debs[0]), hostos.BundleManifestFile))
	var man hostos.BundleManifest
	if err != nil || json.Unmarshal(mb, &man) != nil || len(man.Files) != len(debs) {
		t.Errorf("bundle manifest %s (%v) does not pin the %d files", mb, err, len(debs))
	}
	facts2, err := hostos.GatherFacts(ctx, h.Comm, hostos.ManagedPaths(nil))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(facts2.Packages["docker.io"], "20.10.24") || facts2.Engine == "" {
		t.Errorf("after bundle: docker.io %q engine %q", facts2.Packages["docker.io"], facts2.Engine)
	}
	tgt.Facts = facts2
	if done, err := install.Check(ctx, tgt); !done || err != nil {
		t.Errorf("second check: done=%v err=%v", done, err)
	}
}
