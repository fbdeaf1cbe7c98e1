package drivers

import (
	"strings"
	"sync"
)

// NameLocks serializes work on one machine within a process: a driver's
// Create calls for one cluster and machine name take the same lock, so two
// at once cannot both find nothing and both make it. The zero value is
// ready to use.
type NameLocks struct {
	mu sync.Mutex
	m  map[string]*sync.Mutex
}

// Lock locks cluster/name and returns the unlock.
func (l *NameLocks) Lock(cluster, name string) (unlock func()) {
	key := cluster + "/" + name
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*sync.Mutex{}
	}
	m, ok := l.m[key]
	if !ok {
		m = &sync.Mutex{}
		l.m[key] = m
	}
	l.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// SameKey compares two authorized_keys lines by type and key, ignoring
// comments.
func SameKey(a, b string) bool {
	fa, fb := strings.Fields(a), strings.Fields(b)
	return len(fa) >= 2 && len(fb) >= 2 && fa[0] == fb[0] && fa[1] == fb[1]
}
