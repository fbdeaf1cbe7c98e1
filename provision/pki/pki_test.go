package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestChainAndModes(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(dir, "demo")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, CAKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca key mode %v %v", fi.Mode(), err)
	}
	// Reload returns the same CA.
	again, err := LoadOrCreateCA(dir, "demo")
	if err != nil || again.Cert.SerialNumber.Cmp(ca.Cert.SerialNumber) != 0 {
		t.Fatalf("reload: %v", err)
	}
	srv, err := ca.Server("demo-manager-1", []string{"172.18.0.2", "swarm.example.com"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := parseCert(srv.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	for _, name := range []string{"demo-manager-1", "swarm.example.com", "localhost", "172.18.0.2", "127.0.0.1"} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("verify %s: %v", name, err)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "other.example.com"}); err == nil {
		t.Error("verified a name not in the certificate")
	}
	if _, err := EnsureClient(dir, ca, time.Hour, 0, time.Time{}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{CertFile, KeyFile} {
		fi, _ := os.Stat(filepath.Join(dir, f))
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v", f, fi.Mode())
		}
	}
}

func TestKeyPermsRefused(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadOrCreateCA(dir, "demo"); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(dir, CAKeyFile), 0o644)
	_, err := LoadOrCreateCA(dir, "demo")
	if err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("group-readable CA key accepted: %v", err)
	}
}

// handshake runs a TLS server with ServerTLS and a client with cfg.
func handshake(t *testing.T, server *tls.Config, client *tls.Config) error {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		err = c.(*tls.Conn).Handshake()
		if err == nil {
			_, err = c.Write([]byte("ok"))
		}
		done <- err
	}()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), client)
	if err == nil {
		buf := make([]byte, 2)
		_, err = c.Read(buf)
		c.Close()
	}
	serr := <-done
	if err == nil {
		err = serr
	}
	return err
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, _ := LoadOrCreateCA(dir, "demo")
	srv, _ := ca.Server("node", nil, time.Hour)
	if _, err := EnsureClient(dir, ca, time.Hour, 0, time.Time{}); err != nil {
		t.Fatal(err)
	}
	scfg, err := ServerTLS(ca.CertPEM, srv.CertPEM, srv.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := ClientTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	ccfg.ServerName = "node"
	if err := handshake(t, scfg, ccfg); err != nil {
		t.Fatalf("client with cert refused: %v", err)
	}
	// No client certificate: refused.
	nocert := &tls.Config{RootCAs: ccfg.RootCAs, ServerName: "node"}
	if err := handshake(t, scfg, nocert); err == nil {
		t.Fatal("client without certificate accepted")
	}
	// A certificate from another CA: refused.
	other, _ := LoadOrCreateCA(t.TempDir(), "other")
	ob, _ := other.Client("intruder", time.Hour)
	pair, _ := tls.X509KeyPair(ob.CertPEM, ob.KeyPEM)
	foreign := &tls.Config{RootCAs: ccfg.RootCAs, ServerName: "node", Certificates: []tls.Certificate{pair}}
	if err := handshake(t, scfg, foreign); err == nil {
		t.Fatal("client with a foreign CA's certificate accepted")
	}
}

func TestRenewal(t *testing.T) {
	dir := t.TempDir()
	ca, _ := LoadOrCreateCA(dir, "demo")
	b, _ := ca.Server("n", nil, 90*time.Hour)
	if NeedsRenewal(b.CertPEM, time.Now()) {
		t.Error("fresh cert needs renewal")
	}
	if !NeedsRenewal(b.CertPEM, time.Now().Add(70*time.Hour)) {
		t.Error("cert with a fifth of its life left does not need renewal")
	}
	first, _ := EnsureClient(dir, ca, time.Hour, 0, time.Time{})
	second, _ := EnsureClient(dir, ca, time.Hour, 0, time.Time{})
	if first.Serial != second.Serial {
		t.Error("valid client cert was reissued")
	}
	// A new CA invalidates the old client cert.
	os.Remove(filepath.Join(dir, CAFile))
	os.Remove(filepath.Join(dir, CAKeyFile))
	ca2, _ := LoadOrCreateCA(dir, "demo")
	third, _ := EnsureClient(dir, ca2, time.Hour, 0, time.Time{})
	if third.Serial == first.Serial {
		t.Error("client cert of the old CA kept")
	}
}
