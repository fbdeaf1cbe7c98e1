package state

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/provision/provision/provision/atomicfile"
	"golang.org/x/crypto/ssh"
)

// File names inside a state directory.
const (
	stateFile = "state.json"
	backup    = "state.json.bak"
	lockFile  = "state.lock"
)

// Holder says who holds (or held) the state lock.
type Holder struct {
	PID     int       `json:"pid"`
	Host    string    `json:"host"`
	Command string    `json:"command"`
	Since   time.Time `json:"since"`
}

func (h Holder) String() string {
	return fmt.Sprintf("%q (pid %d on %s, since %s)", h.Command, h.PID, h.Host, h.Since.Local().Format(time.RFC3339))
}

// LockedError is returned by Open when another command holds the lock.
type LockedError struct {
	Dir    string
	Holder *Holder // nil when the holder could not be read
	// HolderGone says the recorded holder ran on this host and is no longer
	// running, yet the lock is held: another process has its descriptor.
	HolderGone bool
}

func (e *LockedError) Error() string {
	who := "another provision command"
	if e.Holder != nil {
		who = e.Holder.String()
	}
	lock := filepath.Join(e.Dir, lockFile)
	if e.HolderGone {
		return fmt.Sprintf("state %s is locked, but its recorded holder %s is no longer running: another process holds the lock's descriptor; find it with `fuser -v %s` and end it", e.Dir, who, lock)
	}
	return fmt.Sprintf("state %s is locked by %s: wait for it to finish (a lock held by a process that died is released by the kernel, so this one is alive)", e.Dir, who)
}

// gone reports whether h ran on this host and its process no longer exists.
func (h *Holder) gone() bool {
	if h == nil || h.PID <= 0 {
		return false
	}
	if host, _ := os.Hostname(); host != h.Host {
		return false // another machine (shared directory): cannot tell
	}
	return errors.Is(syscall.Kill(h.PID, 0), syscall.ESRCH)
}

// Store is one cluster's state directory: locked for the life of a command
// that changes the cluster (Open), or read as it is (OpenReadOnly).
type Store struct {
	dir      string
	lock     *os.File
	stale    *Holder
	readOnly bool
	// created are the directories Open made (outermost first): Close
	// removes those, and only those, when they are left empty.
	created []string
}

// DefaultDir is where a spec's state lives unless --state-dir says otherwise:
// .provision/<cluster> next to the spec file.
func DefaultDir(specFile, cluster string) string {
	return filepath.Join(filepath.Dir(specFile), ".provision", cluster)
}

// Open creates the directory if needed (0700) and takes its lock without
// waiting: a second apply or destroy on the same cluster fails at once with a
// *LockedError naming the holder. The lock is a flock, so the kernel releases
// it when its process dies, on every exit path.
//
// Close may remove the lock file (when destroy emptied the directory) while
// it holds the lock, so a lock taken here counts only if the file locked is
// still the one at the path: otherwise Open tries again. Two processes can
// never both hold "the" lock.
func Open(dir, command string) (*Store, error) {
	created, err := mkdirAll(dir, 0o700)
	if err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	path := filepath.Join(dir, lockFile)
	for attempt := 0; ; attempt++ {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("state lock: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			defer f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				h := readHolder(f)
				return nil, &LockedError{Dir: dir, Holder: h, HolderGone: h.gone()}
			}
			return nil, fmt.Errorf("state lock: %w", err)
		}
		if !samePath(f, path) {
			// Locked a file its holder unlinked on the way out: not the lock.
			f.Close()
			if attempt > 100 {
				return nil, fmt.Errorf("state lock %s keeps being replaced", path)
			}
			more, err := mkdirAll(dir, 0o700)
			if err != nil {
				return nil, fmt.Errorf("state directory: %w", err)
			}
			created = append(created, more...)
			continue
		}
		s := &Store{dir: dir, lock: f, created: created}
		// A holder recorded in a lock we could take died without cleaning up.
		s.stale = readHolder(f)
		sweepTemps(dir)
		tightenDirs(dir)
		host, _ := os.Hostname()
		b, _ := json.Marshal(Holder{PID: os.Getpid(), Host: host, Command: command, Since: time.Now().UTC()})
		if err := f.Truncate(0); err == nil {
			f.WriteAt(append(b, '\n'), 0)
			f.Sync()
		}
		return s, nil
	}
}

// sweepTemps removes the temp files a killed process left in the state
// directory (atomicfile's ".NAME.tmpN": a raft backup cut short, a state
// save interrupted). Only the lock holder writes there, so any that
// exists when the lock is taken is a leftover.
func sweepTemps(dir string) {
	walkOwn(dir, func(path string, d fs.DirEntry) {
		n := d.Name()
		if filepath.Dir(path) == filepath.Clean(dir) && !strings.HasPrefix(n, "."+stateFile) {
			return // beside the state, only its own temp files
		}
		if d.Type().IsRegular() && strings.HasPrefix(n, ".") && strings.Contains(n, ".tmp") {
			os.Remove(path)
		}
	})
}

// ownDirs are the directories provision makes in a state directory. Only
// the state directory's own files and these are swept or tightened: the
// state directory may be one the operator named (--state-dir .) that holds
// other things.
var ownDirs = []string{"pki", "ssh", "swarm", "backups", "local", "generic", "bundles"}

// walkOwn calls fn for the state directory's files and for everything in
// the directories provision makes there (those directories included).
func walkOwn(dir string, fn func(path string, d fs.DirEntry)) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !e.IsDir() {
			fn(filepath.Join(dir, e.Name()), e)
		}
	}
	for _, sub := range ownDirs {
		filepath.WalkDir(filepath.Join(dir, sub), func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.Type()&fs.ModeSymlink == 0 {
				fn(path, d)
			}
			return nil
		})
	}
}

// tightenDirs takes group and other permissions off the directories
// provision makes in the state directory (keys, certificates, backups):
// files are made 0600 and keys refused when readable by others, but a
// directory left 0755 by hand lists them to everyone.
func tightenDirs(dir string) {
	walkOwn(dir, func(path string, d fs.DirEntry) {
		if !d.IsDir() {
			return
		}
		if fi, err := d.Info(); err == nil && fi.Mode().Perm()&0o077 != 0 {
			os.Chmod(path, fi.Mode().Perm()&0o700)
		}
	})
}

// samePath reports whether the open file f is the file at path.
func samePath(f *os.File, path string) bool {
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	pi, err := os.Stat(path)
	return err == nil && os.SameFile(fi, pi)
}

// OpenReadOnly opens a state directory without taking its lock, for
// commands that only read (plan, status, env, ssh, audit): they work while
// an apply runs and never hold it up. Each Load reads one consistent
// snapshot (state.json is replaced atomically); Save refuses. A directory
// that does not exist reads as a new cluster and is not created.
func OpenReadOnly(dir string) (*Store, error) {
	fi, err := os.Stat(dir)
	switch {
	case err == nil && !fi.IsDir():
		return nil, fmt.Errorf("state directory %s is not a directory", dir)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("state directory: %w", err)
	}
	s := &Store{dir: dir, readOnly: true}
	// A holder recorded in the lock file (a clean Close empties it) whose
	// process is gone died holding it: Stale reports it. Nothing is locked
	// to find out.
	if f, err := os.Open(filepath.Join(dir, lockFile)); err == nil {
		if h := readHolder(f); h.gone() {
			s.stale = h
		}
		f.Close()
	}
	return s, nil
}

// ReadOnly reports whether the store was opened without the lock.
func (s *Store) ReadOnly() bool { return s.readOnly }

func readHolder(f *os.File) *Holder {
	b := make([]byte, 4096)
	n, _ := f.ReadAt(b, 0)
	if n == 0 {
		return nil
	}
	var h Holder
	if json.Unmarshal(bytes.TrimSpace(b[:n]), &h) != nil || h.PID == 0 {
		return nil
	}
	return &h
}

// Stale reports the previous holder when the lock was left behind by a
// process that died (killed, crashed): the lock itself was free.
func (s *Store) Stale() (Holder, bool) {
	if s.stale == nil {
		return Holder{}, false
	}
	return *s.stale, true
}

// Dir is the state directory.
func (s *Store) Dir() string { return s.dir }

// PKIDir holds the CA, the operator's client cert and node certs.
func (s *Store) PKIDir() string { return filepath.Join(s.dir, "pki") }

// SSHDir holds the cluster's admin key.
func (s *Store) SSHDir() string { return filepath.Join(s.dir, "ssh") }

// Load reads the state, or returns a new one with a fresh cluster ID when
// there is none. A corrupt file, or one written by a newer provision, is
// refused and left untouched.
func (s *Store) Load() (*State, error) {
	path := filepath.Join(s.dir, stateFile)
	b, err := readLimited(path, maxStateBytes)
	if errors.Is(err, fs.ErrNotExist) {
		// No state, but its backup: a cluster was recorded here and the
		// file was lost or moved away. A new cluster would be made beside
		// the one the backup records, and the backup, the last record of
		// that one, overwritten by the first save.
		if _, berr := os.Stat(filepath.Join(s.dir, backup)); berr == nil {
			return nil, fmt.Errorf("state file %s is missing, but %s is there: it records a cluster that may still be running. To manage that cluster, restore it (cp %s %s). To start a new cluster here instead, first destroy that one (restore, then provision destroy), or move the backup away if it is gone", path, backup, filepath.Join(s.dir, backup), path)
		}
		id := make([]byte, 8)
		if _, err := rand.Read(id); err != nil {
			return nil, err
		}
		return &State{Version: Version, ClusterID: hex.EncodeToString(id)}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state file %s: %w; it was left untouched", path, err)
	}
	var head struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, fmt.Errorf("state file %s is corrupt (%v); it was left untouched: restore it from %s (the state before the last save)", path, err, backup)
	}
	if head.Version > Version {
		return nil, fmt.Errorf("state file %s has version %d, newer than this provision understands (%d): use a newer provision; the file was left untouched", path, head.Version, Version)
	}
	if head.Version < 1 {
		return nil, fmt.Errorf("state file %s has no valid version; it was left untouched: restore it from %s (the state before the last save)", path, backup)
	}
	st := &State{}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(st); err != nil {
		return nil, fmt.Errorf("state file %s is corrupt (%v); it was left untouched: restore it from %s (the state before the last save)", path, err, backup)
	}
	if st.ClusterID == "" {
		return nil, fmt.Errorf("state file %s has no cluster ID; it was left untouched", path)
	}
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("state file %s is corrupt (%v); it was left untouched: restore it from %s (the state before the last save)", path, err, backup)
	}
	if err := migrate(st, head.Version); err != nil {
		return nil, fmt.Errorf("state file %s: %w; it was left untouched", path, err)
	}
	return st, nil
}

// Save writes the state atomically: a temp file in the same directory,
// fsync, the current file kept as the backup, rename, fsync of the directory.
func (s *Store) Save(st *State) error {
	b, err := s.Encode(st)
	if err != nil {
		return err
	}
	return s.Write(b)
}

// Encode stamps st (version, time) and encodes it for Write. Callers that
// share st with other goroutines hold their lock for Encode only: the
// slow part, Write's fsyncs, needs none.
func (s *Store) Encode(st *State) ([]byte, error) {
	if s.readOnly {
		return nil, errors.New("save state: opened read-only (without the lock)")
	}
	st.Version = Version
	st.Updated = time.Now().UTC()
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode state: %w", err)
	}
	return b, nil
}

// Write stores an encoded state durably (temp file, fsync, rename, fsync
// the directory), keeping the previous one as state.json.bak. Writes must
// not overlap.
func (s *Store) Write(b []byte) error {
	if s.readOnly {
		return errors.New("save state: opened read-only (without the lock)")
	}
	path := filepath.Join(s.dir, stateFile)
	if cur, err := os.ReadFile(path); err == nil {
		if err := atomicfile.Write(filepath.Join(s.dir, backup), cur, 0o600); err != nil {
			return fmt.Errorf("state backup: %w", err)
		}
	}
	if err := atomicfile.Write(filepath.Join(s.dir, stateFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}

// maxStateBytes bounds what Load reads: a state of 10000 machines is about
// 20 MiB.
const maxStateBytes = 256 << 20

func readLimited(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("larger than %d MiB", max>>20)
	}
	return b, nil
}

// Clear removes everything the cluster kept (state, backup, certificates,
// keys, driver files) after a destroy. The lock stays until Close.
func (s *Store) Clear() error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	// The backup first and the state last: a Clear cut short leaves a
	// state that destroy can run from again, never a backup without it
	// (which Load refuses, see there).
	slices.SortStableFunc(entries, func(a, b os.DirEntry) int {
		rank := func(e os.DirEntry) int {
			switch e.Name() {
			case backup:
				return 0
			case stateFile:
				return 2
			}
			return 1
		}
		return rank(a) - rank(b)
	})
	var errs []error
	for _, e := range entries {
		if e.Name() == lockFile {
			continue
		}
		if err := os.RemoveAll(filepath.Join(s.dir, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close releases the lock. When the directory holds nothing else (after
// Clear), the lock file and the directory are removed first, while the lock
// is still held: a process that opened the old file meanwhile finds it is
// no longer the one at the path and takes the new one (see Open).
func (s *Store) Close() error {
	if s.lock == nil {
		return nil
	}
	s.lock.Truncate(0)
	entries, _ := os.ReadDir(s.dir)
	empty := len(entries) == 1 && entries[0].Name() == lockFile
	if empty {
		os.Remove(filepath.Join(s.dir, lockFile))
	}
	err := s.lock.Close() // closing the descriptor releases the flock
	s.lock = nil
	if empty {
		// Only directories this Open made, innermost first, and only when
		// empty: a directory the user made (or that holds anything else)
		// stays.
		for i := len(s.created) - 1; i >= 0; i-- {
			if os.Remove(s.created[i]) != nil {
				break
			}
		}
	}
	return err
}

// mkdirAll is os.MkdirAll that returns the directories it created,
// outermost first.
func mkdirAll(dir string, mode os.FileMode) ([]string, error) {
	dir = filepath.Clean(dir)
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err == nil {
			if !fi.IsDir() {
				return nil, fmt.Errorf("%s is not a directory", d)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	var created []string
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], mode); err != nil && !errors.Is(err, fs.ErrExist) {
			return created, err
		}
		created = append(created, missing[i])
	}
	return created, nil
}

// EnsureSSHKey returns the cluster's admin key from <dir>/ssh/id_ed25519,
// creating it (0600) on first use, with its authorized_keys line.
func EnsureSSHKey(dir string) (ssh.Signer, string, error) {
	kdir := filepath.Join(dir, "ssh")
	path := filepath.Join(kdir, "id_ed25519")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		_, priv, gerr := ed25519.GenerateKey(rand.Reader)
		if gerr != nil {
			return nil, "", gerr
		}
		blk, merr := ssh.MarshalPrivateKey(priv, "provision admin key")
		if merr != nil {
			return nil, "", merr
		}
		b = pem.EncodeToMemory(blk)
		if err := os.MkdirAll(kdir, 0o700); err != nil {
			return nil, "", err
		}
		if err := atomicfile.Write(filepath.Join(kdir, "id_ed25519"), b, 0o600); err != nil {
			return nil, "", fmt.Errorf("write admin key: %w", err)
		}
	} else if err != nil {
		return nil, "", fmt.Errorf("read admin key: %w", err)
	} else if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return nil, "", fmt.Errorf("admin key %s is readable by others (mode %04o): chmod 600 it", path, fi.Mode().Perm())
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, "", fmt.Errorf("admin key %s: %w", path, err)
	}
	pub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	if err := os.WriteFile(path+".pub", []byte(pub+"\n"), 0o644); err != nil {
		return nil, "", err
	}
	return signer, pub, nil
}
