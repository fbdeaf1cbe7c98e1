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
)

// TestClosedStdoutDoesNotKill: a command whose stdout reader went away
// (`provision apply --json | head -1`) was killed by SIGPIPE at its next
// write, mid-change. With ignoreSIGPIPE the write fails and the process
// lives on to its end.
func TestClosedStdoutDoesNotKill(t *testing.T) {
	if os.Getenv("PROVISION_SIGPIPE_CHILD") == "1" {
		// `go test` may start this binary with SIGPIPE ignored; the child
		// starts from Go's default, as provision run from a shell does.
		signal.Reset(syscall.SIGPIPE)
		ignoreSIGPIPE()
		time.Sleep(200 * time.Millisecond) // the parent closes its end
		for i := 0; i < 100; i++ {
			fmt.Println("event")
		}
		os.Exit(7) // lived through the writes
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestClosedStdoutDoesNotKill$")
	cmd.Env = append(os.Environ(), "PROVISION_SIGPIPE_CHILD=1")
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
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("the child did not outlive its closed stdout: %v", err)
	}
}
