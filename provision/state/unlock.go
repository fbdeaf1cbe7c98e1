package state

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/provision/provision/provision/atomicfile"
	"github.com/provision/provision/provision/redact"
)

// unlockFile holds the swarm's unlock keys (autolock), newest first, one a
// line; older ones are kept for raft backups taken under them.
const unlockFile = "swarm/unlock-keys"

// keepUnlockKeys is how many unlock keys are kept.
const keepUnlockKeys = 10

// UnlockKeys returns the swarm unlock keys kept, newest first (none when
// autolock was never on).
func (s *Store) UnlockKeys() ([]redact.Secret, error) {
	path := filepath.Join(s.dir, unlockFile)
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %04o): run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := readLimited(path, 1<<20)
	if err != nil {
		return nil, fmt.Errorf("read unlock keys: %w", err)
	}
	var out []redact.Secret
	for _, l := range bytes.Split(b, []byte("\n")) {
		if l = bytes.TrimSpace(l); len(l) > 0 {
			out = append(out, redact.Secret(l))
		}
	}
	return out, nil
}

// SaveUnlockKey records key as the newest unlock key (0600, written
// atomically); it reports whether it was new.
func (s *Store) SaveUnlockKey(key redact.Secret) (bool, error) {
	if len(key) == 0 || strings.ContainsAny(string(key), "\n\r") {
		return false, errors.New("save unlock key: empty or not one line")
	}
	keys, err := s.UnlockKeys()
	if err != nil {
		return false, err
	}
	if len(keys) > 0 && bytes.Equal(keys[0], key) {
		return false, nil
	}
	out := []redact.Secret{key}
	for _, k := range keys {
		if !bytes.Equal(k, key) && len(out) < keepUnlockKeys {
			out = append(out, k)
		}
	}
	dir := filepath.Join(s.dir, filepath.Dir(unlockFile))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return false, err
	}
	var b []byte
	for _, k := range out {
		b = append(append(b, k...), '\n')
	}
	if err := atomicfile.Write(filepath.Join(dir, filepath.Base(unlockFile)), b, 0o600); err != nil {
		return false, fmt.Errorf("save unlock key: %w", err)
	}
	return true, nil
}
