// Package atomicfile replaces files on the operator's machine so that a
// crash leaves either the old content or the new, never a mix: a temp file
// in the same directory with its mode set before any content, written,
// fsynced, renamed over the target, and the directory fsynced.
package atomicfile

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Write replaces path with b, mode applying from the first byte.
func Write(path string, b []byte, mode fs.FileMode) error {
	return Stream(path, mode, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	}, nil)
}

// Stream replaces path with what fill writes (a download, an archive
// streamed over SSH), mode applying from the first byte. check, when set,
// reads the complete temp file (by its path) before it replaces anything:
// an error from fill or check leaves path as it was and no temp file.
func Stream(path string, mode fs.FileMode, fill func(w io.Writer) error, check func(tmp string) error) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing left to remove
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := fill(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if check != nil {
		if err := check(tmp); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	// The rename itself survives a crash only once the directory is synced.
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
