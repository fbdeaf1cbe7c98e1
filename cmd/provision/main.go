// Command provision turns one HCL file into a running, TLS-secured Docker
// Swarm cluster. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// Exit codes (documented in README.md and `provision --help`).
const (
	exitOK        = 0
	exitError     = 1 // a run failed (host errors, driver errors)
	exitUsage     = 2 // bad flags or an invalid spec (diagnostics printed)
	exitLocked    = 3 // another provision holds the state lock
	exitRefused   = 4 // refused: destructive change without approval, unreadable or newer state
	exitInterrupt = 130
	// exitSSH is what `provision ssh` exits with when provision itself
	// failed (bad flags or spec, locked state, unknown node, no
	// connection), as ssh(1) does: every other code is the remote command's.
	exitSSH = 255
)

// exitError carries an exit code through cobra.
type codeError struct {
	code int
	err  error
	// remote: the code is a remote command's exit status (provision ssh).
	remote bool
}

func (e *codeError) Error() string { return e.err.Error() }
func (e *codeError) Unwrap() error { return e.err }

func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &codeError{code: code, err: err}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// The first interrupt cancels ctx: waits and calls in flight stop
		// within moments, nothing new starts, and state is saved. Restoring
		// the default handler lets a second one end the process at once.
		<-ctx.Done()
		stop()
		fmt.Fprintln(os.Stderr, "\nInterrupted: stopping what runs and saving state (interrupt again to quit at once).")
	}()
	os.Exit(run(ctx, os.Args[1:]))
}

// sigpipeFor keeps a reader that went away from killing the command: by
// default Go dies of SIGPIPE at the first write to a closed stdout or stderr,
// so `provision apply --json | head -3` killed the apply after its third
// event, in the middle of whatever it was changing (a drain, a manager's
// demotion), with no state saved and no message. Ignored, such writes fail
// (EPIPE) and are dropped; the command goes on to its end and exits with its
// own code.
//
// provision ssh, which changes nothing on its own, keeps the default: like
// ssh(1) it dies when its reader does (exit 141), rather than keep a remote
// command (`journalctl -f | head`) running for nobody. (Go cannot give
// SIGPIPE its default back once ignored, so it is decided per command.)
func sigpipeFor(cmd *cobra.Command) {
	if cmd.Name() != "ssh" {
		signal.Ignore(syscall.SIGPIPE)
	}
}

func run(ctx context.Context, args []string) int {
	root, g := newRootWith()
	root.SetArgs(normalizeArgs(args))
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	code := exitCode(ctx, err)
	var ce *codeError
	switch {
	case errors.As(err, &ce) && ce.remote:
		return ce.code // the remote command said what it had to say
	case errors.As(err, &ce) && errors.Is(ce.err, errSilent):
	case code == exitInterrupt:
		fmt.Fprintln(os.Stderr, g.redact("Interrupted: "+err.Error()))
		fmt.Fprintln(os.Stderr, "State was saved; run the same command again to finish.")
	default:
		fmt.Fprintln(os.Stderr, g.redact("Error: "+unwrapCode(err).Error()))
	}
	if cmd != nil && cmd.Name() == "ssh" {
		return exitSSH
	}
	return code
}

// exitCode maps an error to the documented exit codes.
func exitCode(ctx context.Context, err error) int {
	var ce *codeError
	switch {
	case errors.As(err, &ce):
		return ce.code
	case ctx.Err() != nil:
		return exitInterrupt
	}
	return exitError
}

func unwrapCode(err error) error {
	var ce *codeError
	if errors.As(err, &ce) {
		return ce.err
	}
	return err
}

// errSilent marks an error whose message was already printed (diagnostics).
var errSilent = errors.New("already reported")

// normalizeArgs accepts Terraform's single-dash -var and -var-file (pflag
// would read them as shorthand flags -v -a -r).
func normalizeArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		switch {
		case a == "--":
			copy(out[i:], args[i:])
			return out
		case a == "-var" || a == "-var-file" || strings.HasPrefix(a, "-var=") || strings.HasPrefix(a, "-var-file="):
			out[i] = "-" + a
		default:
			out[i] = a
		}
	}
	return out
}
