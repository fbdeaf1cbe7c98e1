package apply

import (
	"context"
	"time"

	"github.com/provision/provision/provision/pki"
)

// credentials loads or creates the cluster's admin SSH key, CA and the
// operator's client certificate.
type credentials struct{}

func (credentials) Name() string { return "credentials" }

func (credentials) Run(ctx context.Context, r *run) error {
	if err := r.adminKey(); err != nil {
		return err
	}
	ca, err := pki.LoadOrCreateCA(r.Store.PKIDir(), r.Spec.Name)
	if err != nil {
		return err
	}
	r.ca = ca
	validity := time.Duration(r.Spec.TLS.ValidityHours) * time.Hour
	client, err := pki.EnsureClient(r.Store.PKIDir(), ca, validity)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.State.PKI.CASerial = ca.Cert.SerialNumber.Text(16)
	r.State.PKI.CANotAfter = ca.Cert.NotAfter
	r.State.PKI.ClientSerial = client.Serial
	r.State.PKI.ClientNotAfter = client.NotAfter
	r.mu.Unlock()
	return nil
}
