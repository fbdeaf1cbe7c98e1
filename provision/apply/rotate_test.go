package apply

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/state"
)

func pemCount(b []byte) int {
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return n
		}
		n++
	}
}

func firstCert(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("no PEM")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestCARotationPhases runs the credentials phase and a node's server
// certificate through each phase of a CA rotation, twice per phase (an
// interrupted phase run again changes nothing more), and checks what the
// engines and the operator are given: trust in both CAs before any
// certificate changes, certificates from the new CA (with the cross-signed
// CA) while both are trusted, then the new CA alone.
func TestCARotationPhases(t *testing.T) {
	ctx := context.Background()
	r := fakeRun(t, newFakeSwarm(), 1, 0)
	h := r.hosts["t-manager-1"]
	dir := r.Store.PKIDir()
	clientSerial := func() string {
		b, err := os.ReadFile(filepath.Join(dir, pki.CertFile))
		if err != nil {
			t.Fatal(err)
		}
		return firstCert(t, b).SerialNumber.Text(16)
	}
	step := func(phase string) (trust []byte, cert []byte) {
		t.Helper()
		r.State.PKI.Rotation = phase
		var last []byte
		for i := 0; i < 2; i++ {
			if err := (credentials{}).Run(ctx, r); err != nil {
				t.Fatalf("phase %q: %v", phase, err)
			}
			f, err := serverCert(r, h)
			if err != nil {
				t.Fatalf("phase %q: server cert: %v", phase, err)
			}
			if i == 1 && !bytes.Equal(f.Cert, last) {
				t.Fatalf("phase %q run again reissued the node certificate", phase)
			}
			last = f.Cert
			trust = f.CA
		}
		ca, _ := os.ReadFile(filepath.Join(dir, pki.CAFile))
		if !bytes.Equal(ca, trust) {
			t.Fatalf("phase %q: pki/ca.pem is not what the engines trust", phase)
		}
		return trust, last
	}
	trust0, cert0 := step("")
	client0 := clientSerial()
	oldCA := firstCert(t, trust0)
	if pemCount(trust0) != 1 {
		t.Fatal("no rotation: trust is not the one CA")
	}

	trust1, cert1 := step(state.RotationTrust)
	if pemCount(trust1) != 2 || !firstCert(t, trust1).Equal(oldCA) || !bytes.Equal(cert1, cert0) || clientSerial() != client0 {
		t.Fatalf("trust phase: %d CAs trusted, certificate changed %v, client changed %v", pemCount(trust1), !bytes.Equal(cert1, cert0), clientSerial() != client0)
	}
	nextSerial := r.State.PKI.NextCASerial
	r.rotationDone()
	if r.State.PKI.Rotation != state.RotationReissue {
		t.Fatalf("after trust: phase %q", r.State.PKI.Rotation)
	}

	trust2, cert2 := step(state.RotationReissue)
	leaf := firstCert(t, cert2)
	if !bytes.Equal(trust2, trust1) || pemCount(cert2) != 2 || leaf.Issuer.CommonName == oldCA.Subject.CommonName {
		t.Fatalf("reissue phase: trust changed %v, chain of %d, issuer %q", !bytes.Equal(trust2, trust1), pemCount(cert2), leaf.Issuer.CommonName)
	}
	if clientSerial() == client0 || r.State.PKI.CASerial != nextSerial {
		t.Fatalf("reissue phase: client certificate kept, or signing CA %s is not the new %s", r.State.PKI.CASerial, nextSerial)
	}
	client2 := clientSerial()
	r.rotationDone()

	trust3, cert3 := step(state.RotationDrop)
	if pemCount(trust3) != 1 || firstCert(t, trust3).SerialNumber.Text(16) != nextSerial {
		t.Fatal("drop phase: the engines do not trust the new CA alone")
	}
	if pemCount(cert3) != 1 || !firstCert(t, cert3).Equal(leaf) || clientSerial() != client2 {
		t.Fatal("drop phase: the node certificate changed or kept the cross-signed CA, or the client was reissued")
	}
	r.rotationDone()
	if r.State.PKI.Rotation != "" || r.State.PKI.Rotated["ca"].IsZero() || pki.HasNext(dir) {
		t.Fatalf("rotation not finished: %+v", r.State.PKI)
	}
	// A later apply keeps everything.
	if trust4, cert4 := step(""); !bytes.Equal(trust4, trust3) || !bytes.Equal(cert4, cert3) {
		t.Fatal("the apply after the rotation changed certificates")
	}
}

// TestRotateCertsResumes: `rotate certs` reissues each certificate once,
// however often the apply runs before every host converged, and is
// cleared when they have.
func TestRotateCertsResumes(t *testing.T) {
	ctx := context.Background()
	r := fakeRun(t, newFakeSwarm(), 1, 1)
	h1, h2 := r.hosts["t-manager-1"], r.hosts["t-worker-1"]
	if err := (credentials{}).Run(ctx, r); err != nil {
		t.Fatal(err)
	}
	a1, _ := serverCert(r, h1)
	b1, _ := serverCert(r, h2)
	client1 := r.State.PKI.ClientSerial
	r.State.PKI.ReissueBefore = time.Now().Add(time.Second)
	time.Sleep(1100 * time.Millisecond) // certificates issued after the mark
	for i := 0; i < 2; i++ {
		if err := (credentials{}).Run(ctx, r); err != nil {
			t.Fatal(err)
		}
		a2, _ := serverCert(r, h1)
		switch {
		case i == 0 && bytes.Equal(a2.Cert, a1.Cert):
			t.Fatal("not reissued")
		case i == 1 && !bytes.Equal(a2.Cert, a1.Cert):
			t.Fatal("reissued twice")
		}
		a1 = a2
	}
	if r.State.PKI.ClientSerial == client1 {
		t.Fatal("client certificate kept")
	}
	b2, err := serverCert(r, h2)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(b2.Cert, b1.Cert) {
		t.Fatal("second host not reissued")
	}
	r.rotationDone()
	if !r.State.PKI.ReissueBefore.IsZero() || r.State.PKI.Rotated["certs"].IsZero() {
		t.Fatalf("rotate certs not cleared: %+v", r.State.PKI)
	}
	if h1.rec.CertSerial == "" || h1.rec.CertNotAfter.IsZero() {
		t.Fatal("certificate not recorded")
	}
}
