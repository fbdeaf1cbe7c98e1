package hostos

import "time"

// SetLockWait shortens waitPackageLock's bound for a test; the returned
// func puts it back.
func SetLockWait(d time.Duration) func() {
	old := lockWait
	lockWait = d
	return func() { lockWait = old }
}
