// Package pki is the cluster's certificate authority: one ECDSA P-256 CA per
// cluster whose key never leaves the operator's machine, a server certificate
// per node and a client certificate for the operator.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/provision/provision/provision/atomicfile"
	"github.com/provision/provision/provision/redact"
)

// File names in the PKI directory. They match what the docker CLI expects in
// DOCKER_CERT_PATH.
const (
	CAFile    = "ca.pem"
	CAKeyFile = "ca-key.pem"
	// NextCAFile and NextCAKeyFile hold the CA a rotation brings in, until
	// it replaces the old one (rotate.go).
	NextCAFile    = "ca-next.pem"
	NextCAKeyFile = "ca-key-next.pem"
	CertFile      = "cert.pem"
	KeyFile       = "key.pem"
	caLifetime    = 10 * 365 * 24 * time.Hour
	skew          = 5 * time.Minute
)

// Bundle is an issued certificate with its key.
type Bundle struct {
	CertPEM  []byte
	KeyPEM   redact.Secret
	Serial   string
	NotAfter time.Time
}

// CA signs the cluster's certificates.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     *ecdsa.PrivateKey
}

// LoadOrCreateCA loads dir/ca.pem and dir/ca-key.pem, creating them on first
// use. During a CA rotation ca.pem may hold the old and the new CA (the
// trust bundle): the CA is the first certificate, the one its key matches.
func LoadOrCreateCA(dir, cluster string) (*CA, error) {
	return loadOrCreate(dir, CAFile, CAKeyFile, "provision "+cluster+" CA")
}

// LoadOrCreateNextCA loads or creates the CA a rotation brings in
// (ca-next.pem, ca-key-next.pem). Its name carries its creation time, so
// that the old and the new CA never share a subject.
func LoadOrCreateNextCA(dir, cluster string) (*CA, error) {
	return loadOrCreate(dir, NextCAFile, NextCAKeyFile, "provision "+cluster+" CA "+time.Now().UTC().Format("20060102T150405Z"))
}

func loadOrCreate(dir, certFile, keyFile, commonName string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki dir: %w", err)
	}
	certPath, keyPath := filepath.Join(dir, certFile), filepath.Join(dir, keyFile)
	certPEM, cerr := os.ReadFile(certPath)
	_, kerr := os.Stat(keyPath)
	switch {
	case cerr == nil && kerr == nil:
		key, err := readKey(keyPath)
		if err != nil {
			return nil, err
		}
		cert, err := parseCert(certPEM)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", certPath, err)
		}
		pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
		if !ok || !pub.Equal(&key.PublicKey) {
			return nil, fmt.Errorf("%s does not match %s", keyPath, certPath)
		}
		return &CA{Cert: cert, CertPEM: firstPEM(certPEM), key: key}, nil
	case errors.Is(cerr, os.ErrNotExist) && errors.Is(kerr, os.ErrNotExist):
	default:
		return nil, fmt.Errorf("pki: one of %s and %s is missing; restore both or remove both to make a new CA (every node then needs new certificates)", certPath, keyPath)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"provision"}},
		NotBefore:             now.Add(-skew),
		NotAfter:              now.Add(caLifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// One intermediate below it: the next CA cross-signed by this one
		// when the CA is rotated (rotate.go); certificates it issues are
		// never CAs.
		MaxPathLen: 1,
		KeyUsage:   x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := writeKey(keyPath, key); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(certPath, certPEM, 0o644); err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{Cert: cert, CertPEM: certPEM, key: key}, nil
}

// Server issues a server certificate for a node. hosts mixes DNS names and
// IP addresses; the node name, localhost, 127.0.0.1 and ::1 are always added.
func (ca *CA) Server(name string, hosts []string, validity time.Duration) (Bundle, error) {
	var dns []string
	var ips []net.IP
	for _, h := range append([]string{name, "localhost", "127.0.0.1", "::1"}, hosts...) {
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(ips, ip.Equal) {
				ips = append(ips, ip)
			}
		} else if !slices.Contains(dns, h) {
			dns = append(dns, h)
		}
	}
	// Server only: engines accept any client certificate the cluster CA
	// signed for client use, so a node's certificate must not be one, or
	// root on one node could drive every other node's engine.
	return ca.issue(pkix.Name{CommonName: name}, dns, ips, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, validity)
}

// CheckServer reports why a node's stored server certificate cannot be used
// again, or nil when it can: it must chain to this CA (a new CA makes every
// old certificate useless), be for servers only, match its key, not expire
// within renewBefore (0: a third of its life) and cover every name in names.
func (ca *CA) CheckServer(certPEM, keyPEM []byte, names []string, now time.Time, renewBefore time.Duration) error {
	c, err := parseCert(certPEM)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("does not verify against the cluster CA: %w", err)
	}
	if len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || len(c.UnknownExtKeyUsage) > 0 {
		return errors.New("is not a server-only certificate (issued before server certificates stopped being client certificates)")
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return fmt.Errorf("does not match its key: %w", err)
	}
	if ExpiresWithin(certPEM, now, renewBefore) {
		return fmt.Errorf("expires %s, within the renewal window", c.NotAfter.UTC().Format(time.RFC3339))
	}
	have := append([]string(nil), c.DNSNames...)
	for _, ip := range c.IPAddresses {
		have = append(have, ip.String())
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			if !slices.ContainsFunc(c.IPAddresses, ip.Equal) {
				return fmt.Errorf("does not cover %s", n)
			}
		} else if !slices.Contains(have, n) {
			return fmt.Errorf("does not cover %s", n)
		}
	}
	return nil
}

// Client issues a client certificate.
func (ca *CA) Client(name string, validity time.Duration) (Bundle, error) {
	return ca.issue(pkix.Name{CommonName: name}, nil, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, validity)
}

func (ca *CA) issue(subject pkix.Name, dns []string, ips []net.IP, usage []x509.ExtKeyUsage, validity time.Duration) (Bundle, error) {
	if validity <= 0 {
		validity = 365 * 24 * time.Hour
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Bundle{}, err
	}
	serial, err := newSerial()
	if err != nil {
		return Bundle{}, err
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      subject,
		NotBefore:    now.Add(-skew),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return Bundle{}, fmt.Errorf("sign certificate for %s: %w", subject.CommonName, err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Bundle{}, err
	}
	return Bundle{
		CertPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:   redact.Secret(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})),
		Serial:   serial.Text(16),
		NotAfter: notAfter,
	}, nil
}

// EnsureClient returns the operator's client certificate in dir (cert.pem,
// key.pem, 0600), issuing a new one when it is missing, not signed by ca,
// expires within renewBefore (0: a third of its life), or was issued before
// reissueBefore (a `provision rotate certs` under way).
func EnsureClient(dir string, ca *CA, validity, renewBefore time.Duration, reissueBefore time.Time) (Bundle, error) {
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	if certPEM, err := os.ReadFile(certPath); err == nil {
		if keyPEM, err := readFileChecked(keyPath); err == nil {
			if cert, err := parseCert(certPEM); err == nil && verifies(cert, ca, x509.ExtKeyUsageClientAuth) &&
				!ExpiresWithin(certPEM, time.Now(), renewBefore) && !IssuedBefore(certPEM, reissueBefore) {
				if _, err := tls.X509KeyPair(certPEM, keyPEM); err == nil {
					return Bundle{CertPEM: certPEM, KeyPEM: keyPEM, Serial: cert.SerialNumber.Text(16), NotAfter: cert.NotAfter}, nil
				}
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return Bundle{}, err
		}
	}
	b, err := ca.Client("provision-operator", validity)
	if err != nil {
		return Bundle{}, err
	}
	if err := atomicfile.Write(keyPath, b.KeyPEM, 0o600); err != nil {
		return Bundle{}, err
	}
	if err := atomicfile.Write(certPath, b.CertPEM, 0o600); err != nil {
		return Bundle{}, err
	}
	return b, nil
}

// verifies reports whether c chains to ca for the given use, now.
func verifies(c *x509.Certificate, ca *CA, use x509.ExtKeyUsage) bool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	_, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{use}})
	return err == nil
}

// ClientTLS is the operator's mutual-TLS client configuration from dir.
func ClientTLS(dir string) (*tls.Config, error) {
	caPEM, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("cluster CA %s: no certificate", filepath.Join(dir, CAFile))
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	keyPEM, err := readFileChecked(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// ServerTLS is a server configuration that requires client certificates
// signed by caPEM (for tests and for anything provision serves itself).
func ServerTLS(caPEM, certPEM, keyPEM []byte) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("server TLS: no CA certificate")
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("server TLS: %w", err)
	}
	return &tls.Config{ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// NeedsRenewal reports whether less than a third of the certificate's life is
// left (or it cannot be read).
func NeedsRenewal(certPEM []byte, now time.Time) bool { return ExpiresWithin(certPEM, now, 0) }

// ExpiresWithin reports whether the certificate expires within window of now
// (window 0: less than a third of its life is left), or cannot be read.
func ExpiresWithin(certPEM []byte, now time.Time, window time.Duration) bool {
	c, err := parseCert(certPEM)
	if err != nil {
		return true
	}
	if window <= 0 {
		window = c.NotAfter.Sub(c.NotBefore) / 3
	}
	return c.NotAfter.Sub(now) < window
}

// IssuedBefore reports whether the certificate was issued before t (its
// NotBefore, which issue backdates by a few minutes for clock skew). A zero
// t is never after anything.
func IssuedBefore(certPEM []byte, t time.Time) bool {
	if t.IsZero() {
		return false
	}
	c, err := parseCert(certPEM)
	if err != nil {
		return true
	}
	// Certificates carry whole seconds.
	return c.NotBefore.Add(skew).Before(t.Truncate(time.Second))
}

// Inspect returns a certificate's serial, expiry and names (DNS and IPs).
func Inspect(certPEM []byte) (serial string, notAfter time.Time, names []string, err error) {
	c, err := parseCert(certPEM)
	if err != nil {
		return "", time.Time{}, nil, err
	}
	names = append(names, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	return c.SerialNumber.Text(16), c.NotAfter, names, nil
}

// firstPEM is the first PEM block of b, re-encoded.
func firstPEM(b []byte) []byte {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return b
	}
	return pem.EncodeToMemory(blk)
}

func parseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

// ReadPrivate reads a private key file, refusing one that others can read
// (the node keys the apply keeps beside the CA).
func ReadPrivate(path string) ([]byte, error) { return readFileChecked(path) }

// readFileChecked reads a private key file, refusing one that others can read.
func readFileChecked(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %04o): run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	return os.ReadFile(path)
}

func readKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := readFileChecked(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an ECDSA key", path)
	}
	return ek, nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600)
}
