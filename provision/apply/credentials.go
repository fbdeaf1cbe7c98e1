package apply

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/state"
)

// credentials loads or creates the cluster's admin SSH key, CA and the
// operator's client certificate. During a CA rotation (state's
// PKI.Rotation) it sets up the phase's signing CA and trust bundle
// (pki/rotate.go describes the phases).
type credentials struct{}

func (credentials) Name() string { return "credentials" }

func (credentials) Run(ctx context.Context, r *run) error {
	if err := r.adminKey(); err != nil {
		return err
	}
	dir := r.Store.PKIDir()
	r.mu.Lock()
	phase, nextSerial, reissue := r.State.PKI.Rotation, r.State.PKI.NextCASerial, r.State.PKI.ReissueBefore
	r.mu.Unlock()
	var signing *pki.CA
	r.cross = nil
	switch phase {
	case "":
		ca, err := pki.LoadOrCreateCA(dir, r.Spec.Name)
		if err != nil {
			return err
		}
		signing, r.trust = ca, ca.CertPEM
	case state.RotationTrust, state.RotationReissue:
		old, err := pki.LoadOrCreateCA(dir, r.Spec.Name)
		if err != nil {
			return err
		}
		if phase == state.RotationReissue && !pki.HasNext(dir) {
			return fmt.Errorf("CA rotation in phase %s, but the new CA (%s/%s) is missing: restore it from a backup of the state directory", phase, dir, pki.NextCAFile)
		}
		next, err := pki.LoadOrCreateNextCA(dir, r.Spec.Name)
		if err != nil {
			return err
		}
		serial := next.Cert.SerialNumber.Text(16)
		if nextSerial != "" && serial != nextSerial {
			return fmt.Errorf("CA rotation: the new CA in %s has serial %s, state recorded %s: restore the state directory's pki/ from a backup", dir, serial, nextSerial)
		}
		r.trust = pki.TrustBundle(old, next)
		// ca.pem is what the operator's clients trust: both, the CA whose
		// key is ca-key.pem first.
		if err := pki.WriteTrust(dir, old, r.trust); err != nil {
			return err
		}
		signing = old
		if phase == state.RotationReissue {
			signing = next
			switch r.cross, err = old.CrossSign(next); {
			case errors.Is(err, pki.ErrNoCrossSign):
				r.log.Info("server certificates carry no cross-signed CA", "reason", err.Error())
			case err != nil:
				return err
			}
		}
		r.mu.Lock()
		r.State.PKI.NextCASerial = serial
		r.mu.Unlock()
	case state.RotationDrop:
		if err := pki.PromoteNext(dir); err != nil {
			return err
		}
		ca, err := pki.LoadOrCreateCA(dir, r.Spec.Name)
		if err != nil {
			return err
		}
		if nextSerial != "" && ca.Cert.SerialNumber.Text(16) != nextSerial {
			return fmt.Errorf("CA rotation: the CA in %s has serial %s, the rotation brought in %s: restore the state directory's pki/ from a backup", dir, ca.Cert.SerialNumber.Text(16), nextSerial)
		}
		signing, r.trust = ca, ca.CertPEM
	default:
		return fmt.Errorf("state records an unknown CA rotation phase %q", phase)
	}
	r.ca = signing
	validity := time.Duration(r.Spec.TLS.ValidityHours) * time.Hour
	client, err := pki.EnsureClient(dir, signing, validity, r.renewBefore(), reissue)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.State.PKI.CASerial = signing.Cert.SerialNumber.Text(16)
	r.State.PKI.CANotAfter = signing.Cert.NotAfter
	r.State.PKI.ClientSerial = client.Serial
	r.State.PKI.ClientNotAfter = client.NotAfter
	r.mu.Unlock()
	return nil
}

// renewBefore is the spec's renewal window (0: a third of a certificate's life).
func (r *run) renewBefore() time.Duration {
	return time.Duration(r.Spec.TLS.RenewBeforeHours) * time.Hour
}

// rotationDone moves a CA rotation to its next phase and clears a finished
// `rotate certs`, after an apply in which every host converged.
func (r *run) rotationDone() {
	p := &r.State.PKI
	now := time.Now().UTC()
	mark := func(what string) {
		if p.Rotated == nil {
			p.Rotated = map[string]time.Time{}
		}
		p.Rotated[what] = now
	}
	if !p.ReissueBefore.IsZero() {
		p.ReissueBefore = time.Time{}
		mark("certs")
	}
	switch p.Rotation {
	case state.RotationTrust:
		p.Rotation = state.RotationReissue
	case state.RotationReissue:
		p.Rotation = state.RotationDrop
	case state.RotationDrop:
		p.Rotation, p.NextCASerial = "", ""
		mark("ca")
	}
}
