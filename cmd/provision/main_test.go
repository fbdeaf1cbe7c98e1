package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// TestClosedStdoutDoesNotKill: a command whose stdout reader went away
// (`provision apply --json | head -1`) was killed by SIGPIPE at its next
// write, mid-change. With sigpipeFor the write fails and the process
// lives on to its end.
func TestClosedStdoutDoesNotKill(t *testing.T) {
	if os.Getenv("PROVISION_SIGPIPE_CHILD") == "1" {
		// `go test` may start this binary with SIGPIPE ignored; the child
		// starts from Go's default, as provision run from a shell does.
		signal.Reset(syscall.SIGPIPE)
		sigpipeFor(&cobra.Command{Use: "apply FILE"})
		time.Sleep(200 * time.Millisecond) // the parent closes its end
		for i := 0; i < 100; i++ {
			fmt.Println("event")
		}
		os.Exit(7) // lived through the writes
	}
	if os.Getenv("PROVISION_SIGPIPE_CHILD") == "ssh" {
		signal.Reset(syscall.SIGPIPE)
		sigpipeFor(&cobra.Command{Use: "ssh FILE NODE"})
		time.Sleep(200 * time.Millisecond)
		for i := 0; i < 100; i++ {
			fmt.Println("output")
		}
		os.Exit(7)
	}
	if code := closedStdoutChild(t, "1"); code != 7 {
		t.Fatalf("the child did not outlive its closed stdout: exit %d", code)
	}
	// provision ssh dies with its reader, as ssh(1) does: 128+SIGPIPE.
	if code := closedStdoutChild(t, "ssh"); code != -1 {
		t.Fatalf("ssh's child outlived its closed stdout: exit %d", code)
	}
}

// closedStdoutChild runs this test as a child whose stdout is closed and
// returns its exit code (-1: killed by a signal).
func closedStdoutChild(t *testing.T, mode string) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestClosedStdoutDoesNotKill$")
	cmd.Env = append(os.Environ(), "PROVISION_SIGPIPE_CHILD="+mode)
	r, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("child: %v", err)
	}
	return ee.ExitCode()
}
