// Package comm is the SSH communicator: one connection per host, reused for
// every command (a new session each) and every file transfer (one SFTP client,
// opened lazily). It knows nothing of what runs over it.
package comm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
)

// Comm is the transport to one host. Implementations are safe for concurrent use.
type Comm interface {
	// Run runs one shell command line on the host (the caller quotes it with
	// Quote) and returns its stdout. stdin may be nil. A non-zero exit returns
	// *ExitError carrying the code and stderr.
	Run(ctx context.Context, cmd string, stdin io.Reader) (stdout []byte, err error)
	// Upload writes content to path as the login user, creating or truncating
	// it with mode. Privileged placement is the caller's job
	// (`sudo -n install -m MODE -o OWNER tmp dest`).
	Upload(ctx context.Context, path string, content io.Reader, mode fs.FileMode) error
	// Download reads a file readable by the login user.
	Download(ctx context.Context, path string) ([]byte, error)
}

// ErrHostKeyMismatch is returned (wrapped) when a host presents a key other
// than the pinned one. It is never retried.
var ErrHostKeyMismatch = errors.New("ssh host key mismatch")

// ExitError is a command that ran and exited non-zero.
type ExitError struct {
	Host   string
	Cmd    string // redacted form of the command line
	Code   int
	Stderr string // last part of stderr
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("%s: command %q exited %d: %s", e.Host, e.Cmd, e.Code, e.Stderr)
}
