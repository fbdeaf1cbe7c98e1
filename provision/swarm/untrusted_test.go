package swarm

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"testing"
)

// TestUntrusted: an engine certificate the operator's CA does not verify is
// recognised however the SDK wraps it; other connection errors are not.
func TestUntrusted(t *testing.T) {
	ua := x509.UnknownAuthorityError{}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("error during connect: %w", &url.Error{Op: "Get", URL: "https://10.0.0.2:2376/v1.51/info", Err: ua}), true},
		{errors.New(`error during connect: Get "https://192.168.16.2:2376/v1.51/nodes/x": tls: failed to verify certificate: x509: certificate signed by unknown authority`), true},
		{errors.New(`error during connect: Get "https://10.0.0.2:2376/v1.51/info": dial tcp 10.0.0.2:2376: connect: connection refused`), false},
		{errors.New("Error response from daemon: node x not found"), false},
	} {
		if got := Untrusted(c.err); got != c.want {
			t.Errorf("Untrusted(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
