package apply

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/atomicfile"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/redact"
	"github.com/provision/provision/provision/retry"
	"github.com/provision/provision/provision/state"
)

// Host keys.
//
// A machine a driver creates gets an ed25519 host key that provision made
// (so the very first connection is strictly checked), and the driver places
// it on the machine: copied into a container, or carried by cloud-init
// user-data, where any process on a cloud instance can read it through the
// metadata service and anyone allowed to describe the instance can read it
// from the API. That key must not stay in use. On the first trusted
// connection, the engine has the host make a new key itself (ssh-keygen on
// the host: the private half never leaves it), reads the public half over
// the pinned session, pins it in state and switches sshd to it, so the key
// that travelled is dead. Every driver that installs a provision-made key
// gets this without doing anything: the engine sees the driver return the
// key it was given (state.HostKeyInstalled).
//
// Interruptions never lock provision out: the new key is made beside the
// old one, pinned in state next to it (HostKeyNext) before sshd serves it,
// and every connection accepts either key until the rotation is recorded as
// done. Running it again picks up wherever it stopped.
//
// State is the authority on which key a machine has. A driver that reports
// another one (an EC2 tag someone rewrote) is reported and ignored.

// hostKeyFile is where the host keeps its ed25519 key; sshd reads it (the
// distro default, and the HostKey line the local driver installs).
const hostKeyFile = "/etc/ssh/ssh_host_ed25519_key"

// prepareKeyScript makes the next key beside the current one, once (an
// interrupted run finds it), and prints its public half as derived from the
// private key. When the host's key file already holds the key state pinned
// as next ($1: a switch stopped before sshd was reloaded), that is the next
// key: no other is made.
const prepareKeyScript = `set -eu
k=` + hostKeyFile + `
n=$k.provision-next
umask 077
if [ -n "${1:-}" ] && [ "$(ssh-keygen -y -f "$k" 2>/dev/null | cut -d' ' -f1,2)" = "$1" ]; then
  echo "$1"
  exit 0
fi
if ! { [ -s "$n" ] && ssh-keygen -y -f "$n" >/dev/null 2>&1; }; then
  rm -f "$n" "$n.pub"
  ssh-keygen -q -t ed25519 -N '' -C '' -f "$n" >/dev/null
fi
ssh-keygen -y -f "$n"
`

// switchKeyScript makes the pinned next key ($1, "type base64") the host's
// key and has sshd serve it to new connections. It is idempotent: a key
// already switched is only reloaded.
const switchKeyScript = `set -eu
` + hostos.SSHDLiveFunc + `k=` + hostKeyFile + `
n=$k.provision-next
want="$1"
cur=$(ssh-keygen -y -f "$k" 2>/dev/null | cut -d' ' -f1,2 || true)
if [ "$cur" != "$want" ]; then
  [ -s "$n" ] || { echo "the next host key $n is gone" >&2; exit 3; }
  [ "$(ssh-keygen -y -f "$n" | cut -d' ' -f1,2)" = "$want" ] || { echo "$n is not the key provision pinned" >&2; exit 3; }
  chmod 600 "$n"
  mv -f "$n" "$k"
  ssh-keygen -y -f "$k" > "$k.pub.tmp" && chmod 644 "$k.pub.tmp" && mv -f "$k.pub.tmp" "$k.pub"
fi
rm -f "$n" "$n.pub"
for u in ssh sshd; do
  if systemctl cat "$u.service" >/dev/null 2>&1; then
    sshd_live "$u.service"
    exit 0
  fi
done
echo "no ssh or sshd service to reload" >&2
exit 4
`

// needsKeyRotation says whether the machine's pinned key travelled.
func (e *Runner) needsKeyRotation(rec *state.Machine) bool {
	switch rec.HostKeySource {
	case state.HostKeyInstalled:
		return true
	case state.HostKeyHost, state.HostKeyOwn:
		return false
	}
	// Recorded before rotation existed: machines a driver made got an
	// installed key; existing hosts (generic) have their own.
	db, ok := e.Spec.Driver(rec.Driver)
	if !ok {
		return false
	}
	info, _ := drivers.Lookup(db.Type)
	return !info.NeedsHosts
}

// rotateHostKey is the connect phase's hook: on a host whose pinned key
// travelled, replace it by one the host makes (see the package comment on
// host keys). h.comm is connected with the pinned key (or the next one).
func (e *run) rotateHostKey(ctx context.Context, h *host) error {
	e.mu.Lock()
	need := e.needsKeyRotation(h.rec)
	next := h.rec.HostKeyNext
	e.mu.Unlock()
	if !need {
		return nil
	}
	c := h.comm
	if next == "" || !sameKey(c.PresentedHostKey(), next) {
		// Make (or find) the next key on the host and pin it beside the
		// current one before sshd serves it.
		out, err := c.Run(ctx, c.Sudo("sh -s -- "+comm.Quote(keyTypeAndData(next))), strings.NewReader(prepareKeyScript))
		if err != nil {
			return fmt.Errorf("host key rotation: make a key on the host: %w", err)
		}
		k, err := parseHostKey(out)
		if err != nil {
			return fmt.Errorf("host key rotation: %w", err)
		}
		if !sameKey(k, next) {
			e.mu.Lock()
			h.rec.HostKeyNext = k
			e.mu.Unlock()
			if err := e.save(); err != nil {
				return err
			}
		}
		next = k
	}
	if _, err := c.Run(ctx, c.Sudo("sh -s -- "+comm.Quote(keyTypeAndData(next))), strings.NewReader(switchKeyScript)); err != nil {
		return fmt.Errorf("host key rotation: switch sshd to the new key: %w", err)
	}
	// A fresh connection that accepts only the new key must work before
	// the old one is forgotten.
	if err := e.loginWithKey(ctx, h.rec.Machine, next); err != nil {
		return fmt.Errorf("host key rotation: %w (the new key stays pinned beside the old one: run apply again)", err)
	}
	e.mu.Lock()
	old := h.rec.SSH.HostKey
	if h.rec.HostKeyInstalled == "" {
		h.rec.HostKeyInstalled = old
	}
	h.rec.SSH.HostKey, h.rec.HostKeyNext, h.rec.HostKeySource = next, "", state.HostKeyHost
	e.mu.Unlock()
	if err := e.save(); err != nil {
		return err
	}
	e.note(h.rec.Name, "host key replaced by one made on the host ("+fingerprint(next)+"); the key it was created with is no longer served")
	e.log.Info("host key rotated", "host", h.rec.Name, "old", fingerprint(old), "new", fingerprint(next))
	return nil
}

// loginWithKey opens a new connection that accepts only key and runs a
// trivial command. sshd may still be re-executing after the reload: a
// refused connection or the old key is retried for a few seconds.
func (e *Runner) loginWithKey(ctx context.Context, m drivers.Machine, key string) error {
	cfg, err := e.commConfig(m.Name, m)
	if err != nil {
		return err
	}
	wait := e.loginWait
	if wait == 0 {
		wait = 20 * time.Second
	}
	cfg.HostKey, cfg.NextHostKey, cfg.Timeout = key, "", wait
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var last error
	for {
		c, err := e.dialSSH(ctx, cfg)
		if err == nil {
			_, err = c.Run(ctx, "true", nil)
			c.Close()
			if err == nil {
				return nil
			}
		}
		last = err
		if retry.Sleep(ctx, 300*time.Millisecond) != nil {
			return fmt.Errorf("a fresh login with the new host key failed: %w", last)
		}
	}
}

// pinnedKey decides which host key state pins for a machine the driver
// just returned. For a machine provision asked to create (installed is the
// key it gave the driver), the driver must return that key (then it is
// rotated on the first connection) or, for drivers that use existing hosts,
// the host's own; anything else is refused. For a machine state already
// knows (started again, adopted), the recorded key stays: a driver that
// reports another one is reported and ignored.
func (e *run) pinnedKey(h *host, m drivers.Machine, installed *drivers.HostKey) (drivers.Machine, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	reported := strings.TrimSpace(m.SSH.HostKey)
	if installed != nil {
		switch {
		case sameKey(reported, installed.Public):
			h.rec.HostKeySource = state.HostKeyInstalled
		case e.ownKeys(h):
			h.rec.HostKeySource = state.HostKeyOwn
		default:
			return m, fmt.Errorf("the driver reports host key %s for a machine provision created with key %s: refusing to trust it (was its tag changed?)", fingerprint(reported), fingerprint(installed.Public))
		}
		h.rec.HostKeyNext, h.rec.HostKeyInstalled = "", ""
		return m, nil
	}
	pinned := h.rec.SSH.HostKey
	if pinned == "" {
		return m, nil // nothing recorded: what the driver says is all there is
	}
	if reported != "" && !sameKey(reported, pinned) && !sameKey(reported, h.rec.HostKeyNext) && !sameKey(reported, h.rec.HostKeyInstalled) {
		msg := fmt.Sprintf("the driver reports host key %s, state pins %s: the driver's is ignored (state is the authority; if the host was rebuilt on purpose, let plan replace it)", fingerprint(reported), fingerprint(pinned))
		e.rep.Event(Event{Time: time.Now(), Kind: Note, Host: h.rec.Name, Msg: msg})
		e.log.Warn("host key reported by the driver disagrees with state", "host", h.rec.Name, "reported", fingerprint(reported), "pinned", fingerprint(pinned))
	}
	m.SSH.HostKey = pinned
	return m, nil
}

// ownKeys reports whether the machine's driver works on existing hosts,
// whose keys are their own (generic).
func (e *Runner) ownKeys(h *host) bool {
	db, ok := e.Spec.Driver(h.rec.Driver)
	if !ok {
		db, ok = e.Spec.Driver(h.pool.Driver)
	}
	if !ok {
		return false
	}
	info, _ := drivers.Lookup(db.Type)
	return info.NeedsHosts
}

// installKey returns the host key a machine about to be created gets,
// making it on first use and keeping it (0600, beside the admin key) until
// the machine is recorded: a create that crashed and is run again gives the
// driver the same key, so a machine the first run made is found with the
// key state recorded for it.
func (e *Runner) installKey(name string) (drivers.HostKey, error) {
	dir := filepath.Join(e.Store.SSHDir(), "install")
	path := filepath.Join(dir, name)
	if b, err := os.ReadFile(path); err == nil {
		if k, err := ssh.ParsePrivateKey(b); err == nil && k.PublicKey().Type() == ssh.KeyAlgoED25519 {
			return drivers.HostKey{PrivatePEM: redact.Secret(b), Public: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.PublicKey())))}, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return drivers.HostKey{}, fmt.Errorf("install key for %s: %w", name, err)
	}
	hk, err := newHostKey()
	if err != nil {
		return hk, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return hk, err
	}
	if err := atomicfile.Write(path, hk.PrivatePEM, 0o600); err != nil {
		return hk, fmt.Errorf("install key for %s: %w", name, err)
	}
	return hk, nil
}

// keptInstallKey returns the install key kept for a machine whose create
// was interrupted, when its public half is public (what state recorded as
// the intent): the driver can then finish that create (a container never
// started gets its host key and admin files).
func (e *Runner) keptInstallKey(name, public string) (drivers.HostKey, bool) {
	b, err := os.ReadFile(filepath.Join(e.Store.SSHDir(), "install", name))
	if err != nil {
		return drivers.HostKey{}, false
	}
	k, err := ssh.ParsePrivateKey(b)
	if err != nil || k.PublicKey().Type() != ssh.KeyAlgoED25519 {
		return drivers.HostKey{}, false
	}
	hk := drivers.HostKey{PrivatePEM: redact.Secret(b), Public: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.PublicKey())))}
	if public == "" || !sameKey(public, hk.Public) {
		return drivers.HostKey{}, false
	}
	return hk, true
}

// forgetInstallKey removes the kept install key once the machine that has
// it is recorded.
func (e *Runner) forgetInstallKey(name string) {
	os.Remove(filepath.Join(e.Store.SSHDir(), "install", name))
}

// newHostKey makes an ed25519 host key.
func newHostKey() (drivers.HostKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return drivers.HostKey{}, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return drivers.HostKey{}, err
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		return drivers.HostKey{}, err
	}
	return drivers.HostKey{
		PrivatePEM: redact.Secret(pem.EncodeToMemory(block)),
		Public:     strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))),
	}, nil
}

// parseHostKey reads the ed25519 public key `ssh-keygen -y` printed.
func parseHostKey(out []byte) (string, error) {
	line := strings.TrimSpace(string(out))
	if i := strings.IndexByte(line, '\n'); i >= 0 {
		line = line[:i]
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return "", fmt.Errorf("the host printed no public key (%q): %w", line, err)
	}
	if k.Type() != ssh.KeyAlgoED25519 {
		return "", fmt.Errorf("the host made a %s key, want ed25519", k.Type())
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))), nil
}

// keyTypeAndData is "type base64" of an authorized_keys line.
func keyTypeAndData(k string) string {
	f := strings.Fields(k)
	if len(f) < 2 {
		return k
	}
	return f[0] + " " + f[1]
}

// sameKey compares two authorized_keys lines by type and key, ignoring comments.
func sameKey(a, b string) bool {
	fa, fb := strings.Fields(a), strings.Fields(b)
	return len(fa) >= 2 && len(fb) >= 2 && fa[0] == fb[0] && fa[1] == fb[1]
}

func fingerprint(k string) string {
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k))
	if err != nil {
		return "(no key)"
	}
	return ssh.FingerprintSHA256(pk)
}
