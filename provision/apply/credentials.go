package apply

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/redact"
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

// newHostKey makes the ed25519 host key a new machine must present.
func newHostKey() (drivers.HostKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return drivers.HostKey{}, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return drivers.HostKey{}, err
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		return drivers.HostKey{}, err
	}
	line := ssh.MarshalAuthorizedKey(sp)
	return drivers.HostKey{
		PrivatePEM: redact.Secret(pem.EncodeToMemory(block)),
		Public:     string(line[:len(line)-1]),
	}, nil
}
