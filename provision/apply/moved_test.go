package apply

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/state"
)

// TestHostKeyOfAnotherMachine: a host that presents another recorded
// machine's pinned key is reported as addresses that moved, never as a
// host to re-pin; a key nobody records keeps the usual mismatch message.
func TestHostKeyOfAnotherMachine(t *testing.T) {
	const keyA = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
	const keyB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB3LurDrTXJ943hneHdwUV3blSlZRzZGCXD7dnkXskCz"
	st := &state.State{}
	st.Put(&state.Machine{Machine: drivers.Machine{Name: "w1", Address: "10.0.0.2", SSH: drivers.SSHEndpoint{HostKey: keyA}}, Role: "worker"})
	st.Put(&state.Machine{Machine: drivers.Machine{Name: "w2", Address: "10.0.0.3", SSH: drivers.SSHEndpoint{HostKey: keyB}}, Role: "worker"})
	for _, tc := range []struct {
		presented, want string
	}{
		{keyB, "presented w2's pinned host key: the machines' addresses have moved"},
		{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJmNzWzQnQd/z0GNygTdlLNS/qhRE3A0IFypUdO8yTPk", "update the pinned key"},
	} {
		e := &Runner{State: st, DialSSH: func(ctx context.Context, cfg comm.Config) (Conn, error) {
			return nil, &comm.HostKeyMismatchError{Host: cfg.Host, Presented: tc.presented}
		}}
		_, err := e.dialSSH(context.Background(), comm.Config{Host: "w1", Address: "10.0.0.2", Port: 22})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, comm.ErrHostKeyMismatch) {
			t.Errorf("presented %.30s: %v, want %q (and still a host key mismatch)", tc.presented, err, tc.want)
		}
	}
}
