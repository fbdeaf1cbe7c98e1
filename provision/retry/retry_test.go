package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestBackoffDoublesToMax(t *testing.T) {
	next := Backoff{First: 10 * time.Millisecond, Max: 35 * time.Millisecond}.Delays()
	var got []time.Duration
	for range 5 {
		got = append(got, next())
	}
	want := []time.Duration{10, 20, 35, 35, 35}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("delays %v, want %v ms", got, want)
		}
	}
	j := Backoff{First: 100 * time.Millisecond, Max: 100 * time.Millisecond, Jitter: true}.Delays()
	for range 50 {
		if d := j(); d < 50*time.Millisecond || d > 100*time.Millisecond {
			t.Fatalf("jittered delay %s outside [50ms, 100ms]", d)
		}
	}
}

func TestPoll(t *testing.T) {
	n := 0
	err := Backoff{First: time.Millisecond}.Poll(context.Background(), func() (bool, error) { n++; return n == 3, nil })
	if err != nil || n != 3 {
		t.Fatalf("poll: %v after %d calls", err, n)
	}
	boom := errors.New("boom")
	if err := (Backoff{First: time.Millisecond}).Poll(context.Background(), func() (bool, error) { return false, boom }); err != boom {
		t.Fatalf("poll error: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	err = Backoff{First: time.Millisecond, Max: 5 * time.Millisecond}.Poll(ctx, func() (bool, error) { return false, nil })
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(t0) > time.Second {
		t.Fatalf("poll past its context: %v after %s", err, time.Since(t0))
	}
}

func TestWhile(t *testing.T) {
	busy := errors.New("in use")
	fatal := errors.New("denied")
	retryable := func(err error) bool { return errors.Is(err, busy) }
	n := 0
	err := Backoff{First: time.Millisecond}.While(context.Background(), time.Second, retryable, func() error {
		if n++; n < 3 {
			return busy
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("while: %v after %d calls", err, n)
	}
	n = 0
	if err := (Backoff{First: time.Millisecond}).While(context.Background(), time.Second, retryable, func() error { n++; return fatal }); err != fatal || n != 1 {
		t.Fatalf("a fatal error is retried: %v after %d calls", err, n)
	}
	// The limit: the last error comes back, without sleeping past it.
	t0 := time.Now()
	err = Backoff{First: 10 * time.Millisecond, Max: 10 * time.Millisecond}.While(context.Background(), 50*time.Millisecond, retryable, func() error { return busy })
	if err != busy || time.Since(t0) > 200*time.Millisecond {
		t.Fatalf("while past its limit: %v after %s", err, time.Since(t0))
	}
	// The context: the last error joined with the context's.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = Backoff{First: time.Second}.While(ctx, 0, retryable, func() error { return busy })
	if !errors.Is(err, busy) || !errors.Is(err, context.Canceled) {
		t.Fatalf("while with its context ended: %v", err)
	}
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("sleep with its context ended: %v", err)
	}
}
