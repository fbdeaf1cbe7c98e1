package hostos_test

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/provision/provision/hostos"
)

// lockComm answers apt's lock probe as held for the first held calls.
type lockComm struct {
	*fakeComm
	held, probes int
}

const lockHeld = "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 91 (unattended-upgr)\nE: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is another process using it?\n"

func (l *lockComm) Run(ctx context.Context, cmd string, stdin io.Reader) ([]byte, error) {
	if strings.Contains(cmd, "DPkg::Lock::Timeout=0 check") {
		l.probes++
		l.fakeComm.cmds = append(l.fakeComm.cmds, cmd)
		if l.held < 0 || l.probes <= l.held {
			return []byte(lockHeld), nil
		}
		return nil, nil
	}
	return l.fakeComm.Run(ctx, cmd, stdin)
}

func (l *lockComm) Upload(ctx context.Context, path string, content io.Reader, mode fs.FileMode) error {
	return l.fakeComm.Upload(ctx, path, content, mode)
}

// A dpkg lock another process holds (unattended-upgrades at boot, taken
// with fcntl, which os.ready's pgrep may not see) is waited for with a
// message naming the holder, and apt runs only once it is free.
func TestEngineInstallWaitsForDpkgLock(t *testing.T) {
	lc := &lockComm{fakeComm: &fakeComm{}, held: 2}
	var logs bytes.Buffer
	tgt := &hostos.Target{Comm: lc, Facts: debianFacts(), Config: baseConfig(), Log: slog.New(slog.NewTextHandler(&logs, nil))}
	st := stepByID(t, tgt.Config, "engine.install")
	_ = st.Apply(context.Background(), tgt)
	if lc.probes < 3 {
		t.Fatalf("lock probed %d times, want until free (3)", lc.probes)
	}
	upd := indexOf(lc.fakeComm, "apt-get -q update")
	if upd < 0 || upd < lastIndexOfBefore(lc.fakeComm, "DPkg::Lock::Timeout=0 check", upd) {
		t.Errorf("apt ran before the lock was free; ran:\n%s", strings.Join(lc.fakeComm.cmds, "\n"))
	}
	if !strings.Contains(logs.String(), "waiting for the dpkg lock") || !strings.Contains(logs.String(), "unattended-upgr") {
		t.Errorf("no message naming the holder:\n%s", logs.String())
	}
}

// A lock never released ends the wait at its bound, naming the holder.
func TestEngineInstallDpkgLockBounded(t *testing.T) {
	defer hostos.SetLockWait(1500 * time.Millisecond)()
	lc := &lockComm{fakeComm: &fakeComm{}, held: -1}
	tgt := &hostos.Target{Comm: lc, Facts: debianFacts(), Config: baseConfig(), Log: slog.New(slog.DiscardHandler)}
	st := stepByID(t, tgt.Config, "engine.install")
	start := time.Now()
	err := st.Apply(context.Background(), tgt)
	if err == nil || !strings.Contains(err.Error(), "dpkg lock") || !strings.Contains(err.Error(), "held by process 91") {
		t.Fatalf("apply: %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("wait not bounded: %s", time.Since(start))
	}
	if lc.fakeComm.ran("apt-get -q update") || lc.fakeComm.ran("apt-get install") {
		t.Errorf("apt ran while the lock was held; ran:\n%s", strings.Join(lc.fakeComm.cmds, "\n"))
	}
}

func lastIndexOfBefore(f *fakeComm, sub string, before int) int {
	n := -1
	for i, c := range f.cmds[:before] {
		if strings.Contains(c, sub) {
			n = i
		}
	}
	return n
}
