package swarm

import "time"

// SetFormTimeout shortens the wait for a newly formed swarm's leader in a
// test; the returned func restores it.
func SetFormTimeout(d time.Duration) func() {
	old := formTimeout
	formTimeout = d
	return func() { formTimeout = old }
}

// SetUnlockCallTimeout shortens how long one unlock call is waited for;
// the returned func restores it.
func SetUnlockCallTimeout(d time.Duration) func() {
	old := unlockCallTimeout
	unlockCallTimeout = d
	return func() { unlockCallTimeout = old }
}
