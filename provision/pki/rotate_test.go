package pki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/provision/provision/provision/atomicfile"
)

func poolOf(t *testing.T, pems ...[]byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	for _, b := range pems {
		if !p.AppendCertsFromPEM(b) {
			t.Fatal("no certificate in PEM")
		}
	}
	return p
}

// verifyChain verifies a server certificate file (leaf, then any
// intermediates) the way a TLS client does.
func verifyChain(chainPEM []byte, roots *x509.CertPool, name string) error {
	var certs []*x509.Certificate
	for rest := chainPEM; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return err
		}
		certs = append(certs, c)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err
}

// TestRotationCrossSigned walks a CA rotation's phases: a server
// certificate from the new CA with the cross-signed CA appended verifies
// for a client that trusts only the old CA, only the new one, or both;
// without the cross-signed CA an old-only client refuses it; the trust
// bundle lets engines accept client certificates of either CA.
func TestRotationCrossSigned(t *testing.T) {
	dir := t.TempDir()
	old, err := LoadOrCreateCA(dir, "demo")
	if err != nil {
		t.Fatal(err)
	}
	next, err := LoadOrCreateNextCA(dir, "demo")
	if err != nil {
		t.Fatal(err)
	}
	if next.Cert.Subject.CommonName == old.Cert.Subject.CommonName {
		t.Fatalf("old and new CA share the subject %q", old.Cert.Subject.CommonName)
	}
	again, err := LoadOrCreateNextCA(dir, "demo")
	if err != nil || !again.Cert.Equal(next.Cert) {
		t.Fatalf("the next CA is not stable: %v", err)
	}
	// Phase trust: ca.pem holds both, the key's CA first; LoadOrCreateCA
	// still loads the old one.
	bundle := TrustBundle(old, next)
	if err := WriteTrust(dir, next, bundle); err == nil {
		t.Fatal("WriteTrust accepted a bundle that does not start with the signing CA")
	}
	if err := WriteTrust(dir, old, bundle); err != nil {
		t.Fatal(err)
	}
	if ca, err := LoadOrCreateCA(dir, "demo"); err != nil || !ca.Cert.Equal(old.Cert) {
		t.Fatalf("load with a bundle in ca.pem: %v", err)
	}
	// Phase reissue.
	cross, err := old.CrossSign(next)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := next.Server("node-1", []string{"10.0.0.5"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	chain := append(append([]byte(nil), srv.CertPEM...), cross...)
	for name, roots := range map[string]*x509.CertPool{"old only": poolOf(t, old.CertPEM), "new only": poolOf(t, next.CertPEM), "bundle": poolOf(t, bundle)} {
		if err := verifyChain(chain, roots, "node-1"); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := verifyChain(srv.CertPEM, poolOf(t, old.CertPEM), "node-1"); err == nil {
		t.Error("a new-CA certificate without the cross-signed CA verified against the old CA alone")
	}
	if err := next.CheckServer(chain, srv.KeyPEM, []string{"node-1", "10.0.0.5"}, time.Now(), 0); err != nil {
		t.Errorf("CheckServer of the chain: %v", err)
	}
	if err := old.CheckServer(chain, srv.KeyPEM, []string{"node-1"}, time.Now(), 0); err == nil {
		t.Error("the old CA accepted a new-CA certificate as its own")
	}
	if string(Leaf(chain)) != string(srv.CertPEM) {
		t.Error("Leaf is not the server certificate")
	}
	// Engines trust the bundle: client certificates of both CAs pass.
	for _, ca := range []*CA{old, next} {
		cl, err := ca.Client("op", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := parseCert(cl.CertPEM)
		if _, err := c.Verify(x509.VerifyOptions{Roots: poolOf(t, bundle), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("client of %s refused by the bundle: %v", ca.Cert.Subject.CommonName, err)
		}
	}
	// A TLS handshake: server with the chain, client trusting the old CA.
	pair, err := tls.X509KeyPair(chain, srv.KeyPEM)
	if err != nil || len(pair.Certificate) != 2 {
		t.Fatalf("key pair from the chain: %v", err)
	}
}

// TestPromoteNextResumes: the drop phase's promotion ends with ca.pem the
// new CA alone, its key in ca-key.pem and no next files, from an
// interruption at any of its steps.
func TestPromoteNextResumes(t *testing.T) {
	for _, stop := range []string{"none", "after-ca", "after-key", "done"} {
		t.Run(stop, func(t *testing.T) {
			dir := t.TempDir()
			old, _ := LoadOrCreateCA(dir, "demo")
			next, _ := LoadOrCreateNextCA(dir, "demo")
			if err := WriteTrust(dir, old, TrustBundle(old, next)); err != nil {
				t.Fatal(err)
			}
			// Simulate the interruption by doing the first steps by hand.
			switch stop {
			case "after-ca", "after-key":
				if err := atomicfile.Write(filepath.Join(dir, CAFile), next.CertPEM, 0o644); err != nil {
					t.Fatal(err)
				}
				if stop == "after-key" {
					if err := os.Rename(filepath.Join(dir, NextCAKeyFile), filepath.Join(dir, CAKeyFile)); err != nil {
						t.Fatal(err)
					}
				}
			case "done":
				if err := PromoteNext(dir); err != nil {
					t.Fatal(err)
				}
			}
			if err := PromoteNext(dir); err != nil {
				t.Fatal(err)
			}
			ca, err := LoadOrCreateCA(dir, "demo")
			if err != nil || !ca.Cert.Equal(next.Cert) {
				t.Fatalf("after promotion: %v", err)
			}
			b, _ := os.ReadFile(filepath.Join(dir, CAFile))
			if string(b) != string(next.CertPEM) {
				t.Fatal("ca.pem is not the new CA alone")
			}
			if HasNext(dir) {
				t.Fatal("next CA files left")
			}
			if fi, _ := os.Stat(filepath.Join(dir, CAKeyFile)); fi.Mode().Perm() != 0o600 {
				t.Fatalf("key mode %o", fi.Mode().Perm())
			}
		})
	}
}

// TestRenewalWindow: a certificate is renewed inside the window, or once a
// `rotate certs` began after it was issued.
func TestRenewalWindow(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir(), "demo")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := ca.Server("n", nil, 100*24*time.Hour)
	now := time.Now()
	names := []string{"n"}
	if err := ca.CheckServer(b.CertPEM, b.KeyPEM, names, now, 30*24*time.Hour); err != nil {
		t.Errorf("fresh certificate refused: %v", err)
	}
	if err := ca.CheckServer(b.CertPEM, b.KeyPEM, names, now.Add(71*24*time.Hour), 30*24*time.Hour); err == nil {
		t.Error("29 days left, window 30 days: not renewed")
	}
	if err := ca.CheckServer(b.CertPEM, b.KeyPEM, names, now.Add(60*24*time.Hour), 0); err != nil {
		t.Errorf("no window given, 40 of 100 days left: %v", err)
	}
	if ExpiresWithin(b.CertPEM, now.Add(69*24*time.Hour), 0) == false {
		t.Error("no window given, 31 of 100 days left: not renewed (a third)")
	}
	if IssuedBefore(b.CertPEM, time.Time{}) || IssuedBefore(b.CertPEM, now.Add(-time.Hour)) || !IssuedBefore(b.CertPEM, now.Add(time.Minute)) {
		t.Error("IssuedBefore")
	}
	dir := t.TempDir()
	c1, _ := EnsureClient(dir, ca, time.Hour, 0, time.Time{})
	c2, _ := EnsureClient(dir, ca, time.Hour, 0, time.Time{})
	c3, _ := EnsureClient(dir, ca, time.Hour, 0, time.Now().Add(time.Minute))
	if c1.Serial != c2.Serial || c3.Serial == c2.Serial {
		t.Errorf("client reissue: %s %s %s", c1.Serial, c2.Serial, c3.Serial)
	}
	c4, _ := EnsureClient(dir, ca, 2*time.Hour, 3*time.Hour, time.Time{})
	if c4.Serial == c3.Serial {
		t.Error("a client certificate inside the window was kept")
	}
}
