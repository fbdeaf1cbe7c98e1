package comm

import (
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/provision/comm/commtest"
)

// The package's tests use commtest's real SSH server.
type testServer = commtest.Server

func newSigner(t *testing.T) ssh.Signer { return commtest.NewSigner(t) }

func authorized(s ssh.Signer) string { return commtest.Authorized(s) }

func startServer(t *testing.T, user ssh.PublicKey) *testServer { return commtest.Start(t, user) }
