package hostos

import "time"

// SetLockWait shortens waitPackageLock's bound for a test; the returned
// func puts it back.
func SetLockWait(d time.Duration) func() {
	old := lockWait
	lockWait = d
	return func() { lockWait = old }
}

// InputDropScript is the facts script's part that finds other input filters.
const InputDropScript = inputDropScript
