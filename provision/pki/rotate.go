package pki

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/provision/provision/provision/atomicfile"
)

// A CA rotation without downtime goes through three phases, each one
// rolled out to every node before the next starts (provision/apply and
// state record the phase, so an interrupted rotation resumes where it was):
//
//  1. trust: a new CA is made (NextCAFile); every engine and the operator
//     trust both CAs (TrustBundle); certificates stay as they are.
//  2. reissue: every node's server certificate and the operator's client
//     certificate are issued by the new CA. A server certificate carries
//     the new CA cross-signed by the old one (CrossSign), so a client that
//     still trusts only the old CA verifies it too.
//  3. drop: the new CA replaces the old one (PromoteNext); engines and the
//     operator trust it alone.

// TrustBundle is the PEM of every given CA, in order: what engines and
// clients trust while a rotation is under way.
func TrustBundle(cas ...*CA) []byte {
	var out []byte
	for _, ca := range cas {
		out = append(out, firstPEM(ca.CertPEM)...)
	}
	return out
}

// ErrNoCrossSign means the old CA cannot sign an intermediate: it was made
// by an earlier provision with a path length of 0. The rotation goes on
// without one (clients that use the state directory's ca.pem trust both
// CAs anyway).
var ErrNoCrossSign = errors.New("the old CA allows no intermediate CA (path length 0): no cross-signed CA")

// CrossSign returns next's CA certificate signed by ca (same subject, key
// and key identifier as next's own, valid no longer than either): appended
// to a certificate next issued, it lets a client that trusts only ca verify
// it.
func (ca *CA) CrossSign(next *CA) ([]byte, error) {
	if ca.Cert.MaxPathLenZero || (ca.Cert.MaxPathLen == 0 && ca.Cert.BasicConstraintsValid) {
		return nil, ErrNoCrossSign
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	n := next.Cert
	notAfter := n.NotAfter
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               n.Subject,
		SubjectKeyId:          n.SubjectKeyId,
		NotBefore:             n.NotBefore,
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, n.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("cross-sign the new CA: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// Leaf is the first certificate of a PEM chain (what a server certificate
// file holds without its cross-signed intermediate).
func Leaf(chainPEM []byte) []byte { return firstPEM(chainPEM) }

// HasNext reports whether dir holds a CA a rotation brings in.
func HasNext(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, NextCAKeyFile))
	_, cerr := os.Stat(filepath.Join(dir, NextCAFile))
	return err == nil || cerr == nil
}

// PromoteNext makes the CA a rotation brought in the cluster's CA: ca.pem
// becomes the new CA alone, its key replaces ca-key.pem, the next files
// go. Every step is a rename or an atomic write, and it can be run again
// after an interruption at any point: ca.pem first (the new CA),
// then the key, then ca-next.pem is removed.
func PromoteNext(dir string) error {
	nextCert, nextKey := filepath.Join(dir, NextCAFile), filepath.Join(dir, NextCAKeyFile)
	certPEM, err := os.ReadFile(nextCert)
	if errors.Is(err, os.ErrNotExist) {
		if _, kerr := os.Stat(nextKey); kerr == nil {
			return fmt.Errorf("pki: %s without %s: restore it from a backup of the state directory", nextKey, nextCert)
		}
		return nil // done already
	}
	if err != nil {
		return err
	}
	if _, err := parseCert(certPEM); err != nil {
		return fmt.Errorf("%s: %w", nextCert, err)
	}
	if err := atomicfile.Write(filepath.Join(dir, CAFile), firstPEM(certPEM), 0o644); err != nil {
		return err
	}
	if _, err := os.Stat(nextKey); err == nil {
		if _, err := readKey(nextKey); err != nil {
			return err
		}
		if err := os.Rename(nextKey, filepath.Join(dir, CAKeyFile)); err != nil {
			return err
		}
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	return os.Remove(nextCert)
}

// WriteTrust writes the trust bundle the operator's clients read (ca.pem:
// the docker CLI's DOCKER_CERT_PATH) while the key file stays the
// signing CA's: the signing CA must be the bundle's first certificate.
func WriteTrust(dir string, signing *CA, bundle []byte) error {
	first, err := parseCert(bundle)
	if err != nil || !first.Equal(signing.Cert) {
		return errors.New("pki: the trust bundle must start with the CA whose key is ca-key.pem")
	}
	path := filepath.Join(dir, CAFile)
	if cur, err := os.ReadFile(path); err == nil && string(cur) == string(bundle) {
		return nil
	}
	return atomicfile.Write(path, bundle, 0o644)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
