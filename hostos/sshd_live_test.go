package hostos_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/hostos"
)

// TestSSHChangeLiveBeforeFreshLogin: when harden.ssh has made its change
// live, the next connection must meet the new configuration. A reload
// (SIGHUP) only sends a signal: on a loaded CI machine the fresh login then
// passed on the old configuration while the new drop-in locked the admin
// out. Here sshd's listener is starved on purpose (idle scheduling beside a
// busy loop on its CPU), the fresh login is made once, without retries, as
// soon as the change is said to be live, and it must be refused by the new
// configuration (so the change is rolled back) rather than be served by the
// old listener, or find no listener at all.
func TestSSHChangeLiveBeforeFreshLogin(t *testing.T) {
	t.Parallel()
	dc := needDocker(t)
	h := startHost(t, dc, "sshd-live", false)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	root := &execComm{dc: dc, id: h.ID, user: "root"}
	run := func(cmd string) string {
		t.Helper()
		out, err := root.Run(ctx, cmd, nil)
		if err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
		return strings.TrimSpace(string(out))
	}

	// The admin key only in a place that a hand edit of our drop-in names:
	// provision's own drop-in (default AuthorizedKeysFile) locks the admin out.
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sshPub, _ := ssh.NewPublicKey(pub)
	signer, _ := ssh.NewSignerFromKey(priv)
	handEdit := "AuthorizedKeysFile /etc/ssh/ak/%u\n"
	run(fmt.Sprintf(`set -e
install -d -m 755 /etc/ssh/ak /etc/ssh/sshd_config.d
printf '%%s\n' %q > /etc/ssh/ak/provision
chmod 644 /etc/ssh/ak/provision
printf '%%s\n' %q > %s
systemctl restart ssh.service`, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))), strings.TrimSpace(handEdit), hostos.PathSSHD))
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(run("cat /etc/ssh/ssh_host_ed25519_key.pub")))
	if err != nil {
		t.Fatal(err)
	}
	login := func() error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(h.IP, "22"), 10*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		sc, chans, reqs, err := ssh.NewClientConn(c, h.IP, &ssh.ClientConfig{User: "provision", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)}, HostKeyCallback: ssh.FixedHostKey(hostKey), HostKeyAlgorithms: []string{ssh.KeyAlgoED25519}})
		if err != nil {
			return err
		}
		return ssh.NewClient(sc, chans, reqs).Close()
	}
	if err := login(); err != nil {
		t.Fatalf("login with the hand-edited drop-in: %v", err)
	}

	cfg := baseConfig()
	facts, err := hostos.GatherFacts(ctx, h.Comm, hostos.ManagedPaths(cfg))
	if err != nil {
		t.Fatal(err)
	}
	tgt := &hostos.Target{Name: "sshd-live", Comm: h.Comm, Facts: facts, Config: cfg, Log: testLogger(t)}
	// Starve the listener: idle scheduling on a CPU that a busy loop holds,
	// so a signal and a new connection both wait until it runs again.
	listener := run("systemctl show -p MainPID --value ssh.service")
	run("taskset -a -p -c 0 " + listener + " >/dev/null && chrt -i -p 0 " + listener)
	hog := run("setsid timeout 60 taskset -c 0 sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $!")
	defer root.Run(context.Background(), "kill "+hog+" 2>/dev/null; true", nil)
	tgt.Relogin = func(ctx context.Context) error { return login() }
	err = stepByID(t, cfg, "harden.ssh").Apply(ctx, tgt)
	if err == nil || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("harden.ssh with a drop-in that locks the admin out: %v; want a failed fresh login and a rollback (the login reached the listener that still had the old configuration)", err)
	}
	t.Logf("apply: %v", err)
	if got := run("cat " + hostos.PathSSHD); got != strings.TrimSpace(handEdit) {
		t.Errorf("drop-in after the rollback: %q, want the hand edit back", got)
	}
	if err := login(); err != nil {
		t.Errorf("login after the rollback: %v", err)
	}
}
