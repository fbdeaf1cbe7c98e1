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
)

// Exit codes (documented in README.md and `provision --help`).
const (
	exitOK        = 0
	exitError     = 1 // a run failed (host errors, driver errors)
	exitUsage     = 2 // bad flags or an invalid spec (diagnostics printed)
	exitLocked    = 3 // another provision holds the state lock
	exitRefused   = 4 // refused: destructive change without approval, unreadable or newer state
	exitInterrupt = 130
)

// exitError carries an exit code through cobra.
type codeError struct {
	code int
	err  error
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

func run(ctx context.Context, args []string) int {
	root := newRoot()
	root.SetArgs(normalizeArgs(args))
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ce *codeError
	if errors.As(err, &ce) {
		if ce.err != errSilent {
			fmt.Fprintln(os.Stderr, "Error:", ce.err)
		}
		return ce.code
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "Interrupted:", err)
		fmt.Fprintln(os.Stderr, "State was saved; run the same command again to finish.")
		return exitInterrupt
	}
	fmt.Fprintln(os.Stderr, "Error:", err)
	return exitError
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
