package hostos

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/retry"
)

// sudo runs one command line as root.
func (t *Target) sudo(ctx context.Context, cmd string) ([]byte, error) {
	return t.Comm.Run(ctx, comm.Sudo(t.Comm, cmd), nil)
}

// sudoSh runs a shell script as root (sudo applies to the whole script).
func (t *Target) sudoSh(ctx context.Context, script string) ([]byte, error) {
	return t.sudo(ctx, "sh -c "+comm.Quote("export LC_ALL=C PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; "+script))
}

// install places files as root in one batch (comm.InstallAll: one upload
// each over the host's SFTP client, one command) and records their hashes
// in the facts.
func (t *Target) install(ctx context.Context, files ...File) error {
	batch := make([]comm.InstallFile, len(files))
	for i, f := range files {
		batch[i] = comm.InstallFile{Dst: f.Path, Content: f.Content, Mode: f.Mode}
	}
	if err := comm.InstallAll(ctx, t.Comm, batch, "root"); err != nil {
		return err
	}
	for _, f := range files {
		t.Facts.Files[f.Path] = f.Sum()
		if t.Facts.Modes != nil {
			t.Facts.Modes[f.Path] = f.Mode.Perm()
		}
	}
	return nil
}

// remove deletes files as root and forgets their hashes.
func (t *Target) remove(ctx context.Context, paths ...string) error {
	if len(paths) == 0 {
		return nil
	}
	if _, err := t.sudo(ctx, comm.Quote(append([]string{"rm", "-f", "--"}, paths...)...)); err != nil {
		return fmt.Errorf("remove %s: %w", strings.Join(paths, " "), err)
	}
	for _, p := range paths {
		delete(t.Facts.Files, p)
	}
	return nil
}

// changed returns the files whose content differs from the host's.
func (t *Target) changed(files []File) []File {
	var out []File
	for _, f := range files {
		m, known := t.Facts.Modes[f.Path]
		if t.Facts.Files[f.Path] != f.Sum() || (known && f.Mode != 0 && m != f.Mode.Perm()) {
			out = append(out, f)
		}
	}
	return out
}

// present returns the paths that exist on the host.
func (t *Target) present(paths []string) []string {
	var out []string
	for _, p := range paths {
		if _, ok := t.Facts.Files[p]; ok {
			out = append(out, p)
		}
	}
	return out
}

// unitActive reports whether the facts say unit is active.
func (t *Target) unitActive(unit string) bool { return t.Facts.Units[unit] == "active" }

// setUnit records a unit's new state in the facts.
func (t *Target) setUnit(unit, active, file string) {
	if active != "" {
		t.Facts.Units[unit] = active
	}
	if file != "" {
		t.Facts.UnitFiles[unit] = file
	}
}

// poll calls fn with growing pauses (250ms doubling up to 5s) until it
// reports done or an error, ctx ends, or limit passes.
func poll(ctx context.Context, limit time.Duration, what string, fn func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	err := retry.Backoff{First: 250 * time.Millisecond, Max: 5 * time.Second}.Poll(ctx, fn)
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return fmt.Errorf("wait for %s: %w", what, err)
	}
	return err
}

// exitCode returns the remote exit code of err, or -1.
func exitCode(err error) int {
	var ee *comm.ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return -1
}

// waitActive waits until unit is active; a failed unit ends the wait with
// its last journal lines.
func (t *Target) waitActive(ctx context.Context, unit string, limit time.Duration) error {
	state := ""
	err := poll(ctx, limit, unit, func() (bool, error) {
		out, err := t.sudo(ctx, comm.Quote("systemctl", "show", "-p", "ActiveState", "--value", unit))
		if err != nil {
			return false, err
		}
		state = strings.TrimSpace(string(out))
		switch state {
		case "active":
			return true, nil
		case "failed":
			return false, fmt.Errorf("%s failed", unit)
		}
		return false, nil
	})
	if state == "active" {
		t.setUnit(unit, "active", "")
		return nil
	}
	if err == nil {
		err = fmt.Errorf("%s is %s", unit, state)
	}
	log, _ := t.sudo(ctx, comm.Quote("journalctl", "-u", unit, "-n", "15", "--no-pager", "-o", "cat"))
	t.setUnit(unit, state, "")
	return fmt.Errorf("%w; journal:\n%s", err, strings.TrimSpace(string(log)))
}
