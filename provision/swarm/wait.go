package swarm

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/provision/provision/provision/retry"
)

// Poll calls fn with backoff (first, doubling up to max) until it reports
// done, fails, or ctx ends.
func Poll(ctx context.Context, first, max time.Duration, fn func() (bool, error)) error {
	return retry.Backoff{First: first, Max: max}.Poll(ctx, fn)
}

// Wait is one named wait: which host waits for what, for how long, and
// where its progress goes. Every wait in membership is one of these.
type Wait struct {
	Host    string        // the host that waits (or is waited for)
	What    string        // what for: "the join to complete", "node Ready and Reachable"
	Timeout time.Duration // 0: until ctx ends
	// Progress, when set, is called every Every (default 10s) with a line
	// saying how long the wait has taken and the last status.
	Progress func(host, msg string)
	Every    time.Duration
	// First and Max bound the polling backoff (default 200ms doubling to 2s).
	First, Max time.Duration
}

// WaitError is a wait that ended without its condition: the deadline passed
// (Err is context.DeadlineExceeded) or the caller stopped it (Err is ctx's).
type WaitError struct {
	Host, What string
	Waited     time.Duration
	Last       string // the last status the check reported
	Err        error
}

func (e *WaitError) Error() string {
	how := fmt.Sprintf("gave up after %s", e.Waited.Round(time.Second))
	if !errors.Is(e.Err, context.DeadlineExceeded) {
		how = fmt.Sprintf("stopped after %s (%v)", e.Waited.Round(100*time.Millisecond), e.Err)
	}
	s := fmt.Sprintf("%s: waiting for %s: %s", e.Host, e.What, how)
	if e.Last != "" {
		s += " (last: " + e.Last + ")"
	}
	return s
}

func (e *WaitError) Unwrap() error { return e.Err }

// Until polls check until it reports done. check returns a short status for
// progress lines and the error message, and an error only when waiting on
// is pointless. A caller's cancellation ends the wait at once.
func (w Wait) Until(ctx context.Context, check func(ctx context.Context) (done bool, status string, err error)) error {
	start := time.Now()
	wctx := ctx
	if w.Timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, w.Timeout)
		defer cancel()
	}
	every := w.Every
	if every <= 0 {
		every = 10 * time.Second
	}
	first, mx := w.First, w.Max
	if first <= 0 {
		first = 200 * time.Millisecond
	}
	if mx <= 0 {
		mx = 2 * time.Second
	}
	last, said := "", start
	err := Poll(wctx, first, mx, func() (bool, error) {
		done, status, err := check(wctx)
		if status != "" {
			last = status
		}
		if err != nil || done {
			return done, err
		}
		if w.Progress != nil && time.Since(said) >= every {
			said = time.Now()
			msg := fmt.Sprintf("waiting for %s (%s", w.What, time.Since(start).Round(time.Second))
			if w.Timeout > 0 {
				msg += " of " + w.Timeout.String()
			}
			msg += ")"
			if last != "" {
				msg += ": " + last
			}
			w.Progress(w.Host, msg)
		}
		return false, nil
	})
	if err == nil {
		return nil
	}
	if wctx.Err() != nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
		cause := ctx.Err()
		if cause == nil {
			cause = context.DeadlineExceeded // our own deadline, not the caller's
		}
		return &WaitError{Host: w.Host, What: w.What, Waited: time.Since(start), Last: last, Err: cause}
	}
	return err
}
