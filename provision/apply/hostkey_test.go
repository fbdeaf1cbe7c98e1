package apply

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/comm/commtest"
	"github.com/provision/provision/provision/state"
)

// fakeHost plays a host for the rotation protocol: it keeps a key file, a
// next-key file and what sshd serves (the server's host key), and runs the
// two rotation scripts the way they read, with faults to inject between
// their steps.
type fakeHost struct {
	t       *testing.T
	srv     *commtest.Server
	mu      sync.Mutex
	disk    ssh.Signer // the host key file
	next    ssh.Signer // the .provision-next file
	made    int        // keys made on the host
	failAt  string     // "switch" (before anything), "reload" (after mv, before the reload), "login" (after the reload)
	scripts []string
}

func pub(k ssh.Signer) string { return commtest.Authorized(k) }

func (f *fakeHost) exec(cmd string, ch io.ReadWriter) (int, bool) {
	if !strings.HasPrefix(cmd, "sh -s") && !strings.HasPrefix(cmd, "sudo -n sh -s") {
		return 0, false
	}
	script, arg := "", ""
	if i := strings.Index(cmd, "-- "); i >= 0 {
		arg = strings.Trim(cmd[i+3:], "'")
	}
	b, _ := io.ReadAll(io.LimitReader(ch, 1<<16))
	script = string(b)
	f.mu.Lock()
	defer f.mu.Unlock()
	switch script {
	case prepareKeyScript:
		f.scripts = append(f.scripts, "prepare")
		if arg != "" && sameKey(pub(f.disk), arg) {
			fmt.Fprintln(ch, arg)
			return 0, true
		}
		if f.next == nil {
			f.next = commtest.NewSigner(f.t)
			f.made++
		}
		fmt.Fprintln(ch, keyTypeAndData(pub(f.next)))
		return 0, true
	case switchKeyScript:
		f.scripts = append(f.scripts, "switch")
		if f.failAt == "switch" {
			f.failAt = ""
			return 1, true
		}
		if !sameKey(pub(f.disk), arg) {
			if f.next == nil || !sameKey(pub(f.next), arg) {
				return 3, true
			}
			f.disk, f.next = f.next, nil
		}
		f.next = nil
		if f.failAt == "reload" {
			f.failAt = ""
			return 1, true
		}
		f.srv.SetHostKey(f.disk) // sshd reloaded
		if f.failAt == "login" {
			f.failAt = ""
			f.srv.Refuse.Store(1 << 20) // the fresh login cannot get in
		}
		return 0, true
	}
	return 0, false
}

// rotationEngine is an engine with one recorded machine on the fake host.
func rotationEngine(t *testing.T) (*Engine, *host, *fakeHost) {
	t.Helper()
	e, _ := newTestEngine(t, 0, &testDriver{})
	e.init()
	e.loginWait = 2 * time.Second
	if err := e.adminKey(); err != nil {
		t.Fatal(err)
	}
	srv := commtest.Start(t, e.admin.PublicKey())
	f := &fakeHost{t: t, srv: srv, disk: srv.HostKey()}
	srv.Exec = f.exec
	rec := &state.Machine{Role: "manager", Pool: "manager", Index: 1, Status: state.StatusCreated, HostKeySource: state.HostKeyInstalled}
	rec.Machine = drivers.Machine{Name: "t-manager-1", ID: "c1", Driver: "local", Address: "127.0.0.1",
		SSH: drivers.SSHEndpoint{User: "admin", Port: srv.Port(), HostKey: pub(srv.HostKey())}}
	e.State.Put(rec)
	h := &host{rec: rec}
	e.hosts[rec.Name] = h
	return e, h, f
}

// connectOnce is the connect phase for the one host: dial with what state
// pins, then the rotation hook.
func connectOnce(t *testing.T, e *Engine, h *host) error {
	t.Helper()
	cfg, err := e.commConfig(h.rec.Name, h.rec.Machine)
	if err != nil {
		t.Fatal(err)
	}
	c, err := comm.Dial(context.Background(), cfg)
	if err != nil {
		return fmt.Errorf("locked out: %w", err)
	}
	defer c.Close()
	h.comm = c
	return e.rotateHostKey(context.Background(), h)
}

// saved is what the state file on disk says of the machine.
func saved(t *testing.T, e *Engine) *state.Machine {
	t.Helper()
	st, err := e.Store.Load()
	if err != nil {
		t.Fatal(err)
	}
	return st.Machine("t-manager-1")
}

// TestHostKeyRotation: the installed key is replaced by one the host
// makes; afterwards only the new key is served and pinned, the old one is
// refused, and a second connect changes nothing.
func TestHostKeyRotation(t *testing.T) {
	e, h, f := rotationEngine(t)
	installed := h.rec.SSH.HostKey
	if err := connectOnce(t, e, h); err != nil {
		t.Fatal(err)
	}
	m := saved(t, e)
	if m.HostKeySource != state.HostKeyHost || m.HostKeyNext != "" || sameKey(m.SSH.HostKey, installed) || m.HostKeyInstalled != installed {
		t.Fatalf("state after rotation: source %q next %q key %q installed %q", m.HostKeySource, m.HostKeyNext, m.SSH.HostKey, m.HostKeyInstalled)
	}
	if !sameKey(pub(f.srv.HostKey()), m.SSH.HostKey) {
		t.Fatal("the host does not serve the pinned key")
	}
	// The installed key is dead: a client pinning it is refused.
	cfg, _ := e.commConfig(h.rec.Name, h.rec.Machine)
	cfg.HostKey, cfg.NextHostKey = installed, ""
	if _, err := comm.Dial(context.Background(), cfg); !errors.Is(err, comm.ErrHostKeyMismatch) {
		t.Fatalf("the installed key still works: %v", err)
	}
	f.scripts = nil
	if err := connectOnce(t, e, h); err != nil || len(f.scripts) != 0 {
		t.Fatalf("second connect: %v, ran %v", err, f.scripts)
	}
	if f.made != 1 {
		t.Errorf("%d keys made on the host", f.made)
	}
}

// TestHostKeyRotationResumes: an apply stopped at any point of the
// rotation leaves a state with which the next connect gets in and finishes
// the rotation, with no second key made where one was already pinned.
func TestHostKeyRotationResumes(t *testing.T) {
	for _, c := range []struct {
		name    string
		setup   func(f *fakeHost)
		restart bool // sshd restarts (reboot) between the two runs
	}{
		{"stopped before the switch", func(f *fakeHost) { f.failAt = "switch" }, false},
		{"stopped after the key file moved, before the reload", func(f *fakeHost) { f.failAt = "reload" }, false},
		{"stopped after the key file moved, then the host rebooted", func(f *fakeHost) { f.failAt = "reload" }, true},
		{"stopped after the reload, before state was saved", func(f *fakeHost) { f.failAt = "login" }, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, h, f := rotationEngine(t)
			installed := h.rec.SSH.HostKey
			c.setup(f)
			if err := connectOnce(t, e, h); err == nil {
				t.Fatal("the injected fault did not stop the rotation")
			}
			f.srv.Refuse.Store(0)
			m := saved(t, e)
			if m.HostKeyNext == "" || !sameKey(m.SSH.HostKey, installed) {
				t.Fatalf("interrupted: next %q, key %q: the new key must be pinned beside the old one before the host serves it", m.HostKeyNext, m.SSH.HostKey)
			}
			if !sameKey(pub(f.srv.HostKey()), m.SSH.HostKey) && !sameKey(pub(f.srv.HostKey()), m.HostKeyNext) {
				t.Fatal("the host serves a key state does not pin")
			}
			if c.restart {
				f.srv.SetHostKey(f.disk)
			}
			// The next apply, from what was saved.
			h.rec = m
			e.State.Put(m)
			if err := connectOnce(t, e, h); err != nil {
				t.Fatalf("the next apply: %v", err)
			}
			m = saved(t, e)
			if m.HostKeySource != state.HostKeyHost || m.HostKeyNext != "" || !sameKey(pub(f.srv.HostKey()), m.SSH.HostKey) || sameKey(m.SSH.HostKey, installed) {
				t.Fatalf("not finished: %+v", m)
			}
			if f.made != 1 {
				t.Errorf("%d keys made on the host, want 1", f.made)
			}
		})
	}
}

// TestHostKeyStateIsAuthority: a machine started again or adopted keeps the
// key state pins whatever the driver reports (an EC2 tag someone
// rewrote); the disagreement is reported. The key it was installed with is
// not reported (tags and labels keep showing it after a rotation). A new
// machine must come back with the key provision installed.
func TestHostKeyStateIsAuthority(t *testing.T) {
	e, h, _ := rotationEngine(t)
	var notes []string
	e.Report = reporterFunc(func(ev Event) {
		if ev.Kind == Note {
			notes = append(notes, ev.Msg)
		}
	})
	pinned, installed := commtest.Authorized(commtest.NewSigner(t)), h.rec.SSH.HostKey
	h.rec.SSH.HostKey, h.rec.HostKeyInstalled, h.rec.HostKeySource = pinned, installed, state.HostKeyHost
	attacker := commtest.Authorized(commtest.NewSigner(t))

	m, err := e.pinnedKey(h, drivers.Machine{Name: h.rec.Name, SSH: drivers.SSHEndpoint{HostKey: attacker}}, nil)
	if err != nil || m.SSH.HostKey != pinned {
		t.Fatalf("pinned %q (%v), want state's", m.SSH.HostKey, err)
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "ignored") {
		t.Fatalf("notes %v", notes)
	}
	notes = nil
	if m, _ := e.pinnedKey(h, drivers.Machine{SSH: drivers.SSHEndpoint{HostKey: installed}}, nil); m.SSH.HostKey != pinned || len(notes) != 0 {
		t.Fatalf("the installed key in a tag: %q, notes %v", m.SSH.HostKey, notes)
	}
	hk, err := e.installKey(h.rec.Name)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := e.installKey(h.rec.Name); again.Public != hk.Public {
		t.Fatal("the install key changed between two creates of the same machine")
	}
	if _, err := e.pinnedKey(h, drivers.Machine{SSH: drivers.SSHEndpoint{HostKey: attacker}}, &hk); err == nil {
		t.Fatal("a new machine reporting another key than the installed one was trusted")
	}
	if _, err := e.pinnedKey(h, drivers.Machine{SSH: drivers.SSHEndpoint{HostKey: hk.Public}}, &hk); err != nil || h.rec.HostKeySource != state.HostKeyInstalled {
		t.Fatalf("a new machine with its installed key: %v, source %q", err, h.rec.HostKeySource)
	}
	e.forgetInstallKey(h.rec.Name)
	if again, _ := e.installKey(h.rec.Name); again.Public == hk.Public {
		t.Fatal("the install key outlived its machine's record")
	}
}

type reporterFunc func(Event)

func (f reporterFunc) Event(ev Event) { f(ev) }
