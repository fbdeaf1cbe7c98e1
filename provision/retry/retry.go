// Package retry is the one place provision waits between attempts: a
// doubling backoff with a cap, a sleep that ends with its context, and the
// two loops built from them (poll until done, retry while an error says
// trying again can help). Drivers, the SSH communicator, host steps and the
// apply engine all use it, so every wait ends when its context does.
package retry

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// Sleep waits d, or until ctx ends (then it returns ctx's error).
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Backoff is a delay that starts at First and doubles after every attempt
// up to Max (First when Max is smaller). With Jitter each pause is drawn
// from [d/2, d], so that many hosts retrying at once spread out.
type Backoff struct {
	First, Max time.Duration
	Jitter     bool
}

// Delays returns the pause before the next attempt, doubling each call.
func (b Backoff) Delays() func() time.Duration {
	d := b.First
	if d <= 0 {
		d = 100 * time.Millisecond
	}
	mx := max(b.Max, d)
	return func() time.Duration {
		cur := d
		d = min(2*d, mx)
		if b.Jitter && cur > 1 {
			return cur/2 + rand.N(cur/2+1)
		}
		return cur
	}
}

// Poll calls fn until it reports done or an error, pausing between calls.
// When ctx ends first it returns ctx's error.
func (b Backoff) Poll(ctx context.Context, fn func() (done bool, err error)) error {
	next := b.Delays()
	for {
		done, err := fn()
		if err != nil || done {
			return err
		}
		if err := Sleep(ctx, next()); err != nil {
			return err
		}
	}
}

// While calls fn until it succeeds or fails with an error retryable does
// not accept, pausing between calls, for at most limit (0: no limit of its
// own): the last error is returned once the next pause would pass limit,
// joined with ctx's error when ctx ends first.
func (b Backoff) While(ctx context.Context, limit time.Duration, retryable func(error) bool, fn func() error) error {
	next := b.Delays()
	var deadline time.Time
	if limit > 0 {
		deadline = time.Now().Add(limit)
	}
	for {
		err := fn()
		if err == nil || !retryable(err) {
			return err
		}
		d := next()
		if !deadline.IsZero() && time.Now().Add(d).After(deadline) {
			return err
		}
		if cerr := Sleep(ctx, d); cerr != nil {
			return errors.Join(err, cerr)
		}
	}
}
