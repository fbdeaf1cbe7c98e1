package pki

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/go-connections/tlsconfig"
)

// dockerdServer serves TLS the way dockerd does with --tlsverify: the
// engine's own go-connections/tlsconfig.Server with the CA as the only
// trusted client CA and client certificates required. It answers "ok" to
// every client whose handshake completes.
func dockerdServer(t *testing.T, dir string, cert, key []byte) string {
	t.Helper()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg, err := tlsconfig.Server(tlsconfig.Options{
		CAFile:     filepath.Join(dir, CAFile),
		CertFile:   write("server-cert.pem", cert),
		KeyFile:    write("server-key.pem", key),
		ClientAuth: tls.RequireAndVerifyClientCert,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if err := c.(*tls.Conn).Handshake(); err == nil {
					io.WriteString(c, "ok")
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// dial connects as the holder of cert/key and reports whether the server
// accepted it.
func dial(t *testing.T, addr string, ca *CA, cert, key []byte) error {
	t.Helper()
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, ServerName: "127.0.0.1"})
	if err != nil {
		return err
	}
	defer c.Close()
	// With TLS 1.3 the server's verdict on the client certificate arrives
	// after the client's handshake returns: read the answer.
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(b) != "ok" {
		return io.ErrUnexpectedEOF
	}
	return nil
}

// TestNodeKeyRefusedByOtherEngine is issue 12's trust check: with a real TLS
// handshake against a server configured like dockerd --tlsverify, another
// node's certificate and key (what root on that node has in
// /etc/docker/tls) are refused, and the operator's client certificate is
// accepted. A node certificate issued the old way (server and client use)
// would be accepted: the test shows the handshake can tell them apart.
func TestNodeKeyRefusedByOtherEngine(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(dir, "demo")
	if err != nil {
		t.Fatal(err)
	}
	m1, err := ca.Server("demo-manager-1", []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	w1, err := ca.Server("demo-worker-1", []string{"127.0.0.2"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	op, err := EnsureClient(dir, ca, time.Hour, 0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	addr := dockerdServer(t, dir, m1.CertPEM, m1.KeyPEM)

	if err := dial(t, addr, ca, op.CertPEM, op.KeyPEM); err != nil {
		t.Fatalf("the operator's client certificate was refused: %v", err)
	}
	if err := dial(t, addr, ca, w1.CertPEM, w1.KeyPEM); err == nil {
		t.Fatal("demo-worker-1's server certificate authenticated to demo-manager-1's engine")
	} else {
		t.Logf("worker key refused: %v", err)
	}
	if err := dial(t, addr, ca, m1.CertPEM, m1.KeyPEM); err == nil {
		t.Fatal("a node's own server certificate authenticated as a client")
	}
	// The old issuance (server + client use) passes the same handshake.
	old, err := ca.issue(pkix.Name{CommonName: "demo-worker-1"}, nil, []net.IP{net.ParseIP("127.0.0.2")},
		[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := dial(t, addr, ca, old.CertPEM, old.KeyPEM); err != nil {
		t.Fatalf("control: a client-capable node certificate should pass (%v): the test would not notice the defect", err)
	}
}

// TestCheckServer: a stored node certificate is reused only when it chains
// to the current CA, is server-only, matches its key, is not near expiry and
// covers the node's names.
func TestCheckServer(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(dir, "demo")
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"demo-manager-1", "10.0.0.5", "swarm.example.com"}
	good, err := ca.Server("demo-manager-1", names[1:], 90*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := ca.CheckServer(good.CertPEM, good.KeyPEM, names, now, 0); err != nil {
		t.Fatalf("a good certificate is refused: %v", err)
	}
	other, _ := ca.Server("demo-manager-2", names[1:], 90*24*time.Hour)

	// A new CA (the old pki directory lost): the old certificate must go.
	dir2 := t.TempDir()
	ca2, err := LoadOrCreateCA(dir2, "demo")
	if err != nil {
		t.Fatal(err)
	}
	old, _ := ca.issue(pkix.Name{CommonName: "demo-manager-1"}, []string{"demo-manager-1", "swarm.example.com"}, []net.IP{net.ParseIP("10.0.0.5")},
		[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, 90*24*time.Hour)
	for _, c := range []struct {
		name      string
		ca        *CA
		cert, key []byte
		names     []string
		now       time.Time
		want      string
	}{
		{"new CA", ca2, good.CertPEM, good.KeyPEM, names, now, "does not verify against the cluster CA"},
		{"client use too", ca, old.CertPEM, old.KeyPEM, names, now, "not a server-only certificate"},
		{"wrong key", ca, good.CertPEM, other.KeyPEM, names, now, "does not match its key"},
		{"near expiry", ca, good.CertPEM, good.KeyPEM, names, now.Add(80 * 24 * time.Hour), "within the renewal window"},
		{"new address", ca, good.CertPEM, good.KeyPEM, append(names, "10.0.0.6"), now, "does not cover 10.0.0.6"},
		{"garbage", ca, []byte("x"), good.KeyPEM, names, now, "no PEM certificate"},
	} {
		err := c.ca.CheckServer(c.cert, c.key, c.names, c.now, 0)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	// The operator's client certificate is reissued under a new CA too.
	b1, err := EnsureClient(dir, ca, time.Hour, 0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	os.Rename(filepath.Join(dir, CertFile), filepath.Join(dir2, CertFile))
	os.Rename(filepath.Join(dir, KeyFile), filepath.Join(dir2, KeyFile))
	b2, err := EnsureClient(dir2, ca2, time.Hour, 0, time.Time{})
	if err != nil || b2.Serial == b1.Serial {
		t.Errorf("client certificate of the old CA kept: %v", err)
	}
}
