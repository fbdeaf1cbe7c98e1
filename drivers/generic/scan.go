package generic

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/comm"
)

var errScanned = errors.New("host key scanned")

// scanVia reads the host key of host:port through the bastion (whose own key
// is pinned), for trust on first use of hosts reached only through it.
func scanVia(ctx context.Context, b *drivers.Bastion, signer ssh.Signer, host string, port int) (string, error) {
	addr := joinHostPort(host, port)
	baddr := joinHostPort(b.Address, b.Port)
	want, _, _, _, err := ssh.ParseAuthorizedKey([]byte(b.HostKey))
	if err != nil {
		return "", fmt.Errorf("scan host key of %s: bastion %s host key: %w", addr, baddr, err)
	}
	bcfg := &ssh.ClientConfig{
		User: b.User,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: func(_ string, _ net.Addr, got ssh.PublicKey) error {
			if subtle.ConstantTimeCompare(got.Marshal(), want.Marshal()) == 1 {
				return nil
			}
			return fmt.Errorf("%w: bastion %s presented %s, expected %s", comm.ErrHostKeyMismatch, baddr, ssh.FingerprintSHA256(got), ssh.FingerprintSHA256(want))
		},
		HostKeyAlgorithms: hostKeyAlgos(want),
		Timeout:           15 * time.Second,
	}
	conn, err := (&net.Dialer{Timeout: 15 * time.Second}).DialContext(ctx, "tcp", baddr)
	if err != nil {
		return "", fmt.Errorf("scan host key of %s: bastion %s: %w", addr, baddr, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	sc, chans, reqs, err := ssh.NewClientConn(conn, baddr, bcfg)
	if err != nil {
		conn.Close()
		return "", fmt.Errorf("scan host key of %s: bastion %s: %w", addr, baddr, err)
	}
	bc := ssh.NewClient(sc, chans, reqs)
	defer bc.Close()
	tconn, err := bc.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("scan host key of %s through bastion %s: %w", addr, baddr, err)
	}
	defer tconn.Close()
	var key ssh.PublicKey
	_, _, _, err = ssh.NewClientConn(tconn, addr, &ssh.ClientConfig{
		User: "provision-scan",
		HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error {
			key = k
			return errScanned
		},
		HostKeyAlgorithms: []string{ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256},
		Timeout:           15 * time.Second,
	})
	if key == nil {
		return "", fmt.Errorf("scan host key of %s through bastion %s: %w", addr, baddr, err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))), nil
}

func hostKeyAlgos(k ssh.PublicKey) []string {
	if k.Type() == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{k.Type()}
}
