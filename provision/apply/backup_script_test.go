package apply

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHotBackupOfAWritingRaft: the hot copy of a raft that keeps writing
// (a manager without quorum appends a vote to its log every few seconds;
// here, much faster) succeeds and is a readable archive with the raft in
// it. tar straight over the directory failed in CI with "file changed as
// we read it" and stopped --force-new-cluster.
func TestHotBackupOfAWritingRaft(t *testing.T) {
	for _, tool := range []string{"sh", "cp", "diff", "tar", "mktemp"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s: %v", tool, err)
		}
	}
	root := t.TempDir()
	wal := filepath.Join(root, "swarm", "raft", "wal-v3-encrypted", "0000000000000000-0000000000000000.wal")
	if err := os.MkdirAll(filepath.Dir(wal), 0o700); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("entry "), 1<<16)
	if err := os.WriteFile(wal, big, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { // the raft, appending and syncing as fast as it can for a while, then holding still
		defer close(done)
		f, err := os.OpenFile(wal, os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return
		}
		defer f.Close()
		end := time.Now().Add(1500 * time.Millisecond)
		for ctx.Err() == nil && time.Now().Before(end) {
			f.Write([]byte("vote\n"))
		}
	}()
	defer func() { cancel(); <-done }()
	archive := filepath.Join(t.TempDir(), "raft.tar.gz")
	out, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command("sh", "-s", "--", "hot", root)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(backupScript), out, &stderr
	err = cmd.Run()
	out.Close()
	if err != nil {
		t.Fatalf("hot backup of a writing raft: %v: %s", err, stderr.String())
	}
	t.Logf("stderr: %q", stderr.String())
	if err := checkRaftArchive(archive); err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(root, ".provision-backup.*"))
	if len(left) > 0 {
		t.Errorf("the copy aside was left behind: %v", left)
	}
}
