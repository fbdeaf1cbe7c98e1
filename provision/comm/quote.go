package comm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Quote quotes each argument for a POSIX shell and joins them with spaces.
func Quote(args ...string) string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = quote1(a)
	}
	return strings.Join(out, " ")
}

func quote1(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("@%+=:,./-_", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// sudoer is what can say how to run a command as root.
type sudoer interface{ Sudo(string) string }

// Sudo prefixes cmd with `sudo -n` unless c says the login user is root.
func Sudo(c Comm, cmd string) string {
	if s, ok := c.(sudoer); ok {
		return s.Sudo(cmd)
	}
	return "sudo -n " + cmd
}

// InstallFile is one file for InstallAll.
type InstallFile struct {
	Dst     string
	Content []byte
	Mode    fs.FileMode
}

// InstallAll places files as root (or owner "user[:group]") in one batch:
// one temp dir, every file uploaded over the host's one SFTP client, then
// one command that installs them all. Three round trips for any number of
// files instead of three per file. A failure may leave the files before
// the failing one installed (each install is atomic); the caller installs
// the batch again.
func InstallAll(ctx context.Context, c Comm, files []InstallFile, owner string) error {
	switch len(files) {
	case 0:
		return nil
	case 1:
		return Install(ctx, c, files[0].Dst, files[0].Content, files[0].Mode, owner)
	}
	dsts := make([]string, len(files))
	for i, f := range files {
		dsts[i] = f.Dst
	}
	what := strings.Join(dsts, ", ")
	out, err := c.Run(ctx, "mktemp -d /tmp/provision.XXXXXXXX", nil)
	if err != nil {
		return fmt.Errorf("install %s: temp dir: %w", what, err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" || !strings.HasPrefix(dir, "/tmp/provision.") {
		return fmt.Errorf("install %s: mktemp gave %q", what, dir)
	}
	user, group := owners(owner)
	var script []string
	for i, f := range files {
		tmp := fmt.Sprintf("%s/%d", dir, i)
		if err := c.Upload(ctx, tmp, bytes.NewReader(f.Content), 0o600); err != nil {
			c.Run(ctx, Quote("rm", "-rf", dir), nil)
			return fmt.Errorf("install %s: %w", f.Dst, err)
		}
		script = append(script, Quote("install", "-D", "-m", fmt.Sprintf("%04o", f.Mode.Perm()), "-o", user, "-g", group, tmp, f.Dst))
	}
	cmd := Sudo(c, "sh -c "+Quote(strings.Join(script, " && "))) + "; rc=$?; rm -rf " + Quote(dir) + "; exit $rc"
	if _, err := c.Run(ctx, cmd, nil); err != nil {
		return fmt.Errorf("install %s: %w", what, err)
	}
	return nil
}

func owners(owner string) (user, group string) {
	user, group = "root", "root"
	if owner != "" {
		user, group, _ = strings.Cut(owner, ":")
		if group == "" {
			group = user
		}
	}
	return user, group
}

// Install places content at dst as root (or owner "user[:group]") with mode:
// uploaded over SFTP into a private temp dir, then moved with `install`. The
// content never appears in a command line.
func Install(ctx context.Context, c Comm, dst string, content []byte, mode fs.FileMode, owner string) error {
	out, err := c.Run(ctx, "mktemp -d /tmp/provision.XXXXXXXX", nil)
	if err != nil {
		return fmt.Errorf("install %s: temp dir: %w", dst, err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" || !strings.HasPrefix(dir, "/tmp/provision.") {
		return fmt.Errorf("install %s: mktemp gave %q", dst, dir)
	}
	tmp := dir + "/f"
	if err := c.Upload(ctx, tmp, bytes.NewReader(content), 0o600); err != nil {
		c.Run(ctx, Quote("rm", "-rf", dir), nil)
		return fmt.Errorf("install %s: %w", dst, err)
	}
	user, group := owners(owner)
	cmd := Sudo(c, Quote("install", "-D", "-m", fmt.Sprintf("%04o", mode.Perm()), "-o", user, "-g", group, tmp, dst)) + "; rc=$?; rm -rf " + Quote(dir) + "; exit $rc"
	if _, err := c.Run(ctx, cmd, nil); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	return nil
}

var errScanned = errors.New("host key scanned")

// ScanHostKey connects only far enough to see the host key and returns it in
// authorized_keys form. For trust on first use: the caller records it and
// pins it from then on.
func ScanHostKey(ctx context.Context, address string, port int) (string, error) {
	if port == 0 {
		port = 22
	}
	addr := net.JoinHostPort(address, strconv.Itoa(port))
	var key ssh.PublicKey
	cfg := &ssh.ClientConfig{
		User: "provision-scan",
		HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error {
			key = k
			return errScanned
		},
		HostKeyAlgorithms: []string{ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256},
		Timeout:           10 * time.Second,
	}
	conn, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("scan host key of %s: %w", addr, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	_, _, _, err = ssh.NewClientConn(conn, addr, cfg)
	if key == nil {
		return "", fmt.Errorf("scan host key of %s: %w", addr, err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))), nil
}
