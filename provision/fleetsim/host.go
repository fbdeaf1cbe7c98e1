package fleetsim

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/provision/apply"
	"github.com/provision/provision/provision/comm"
)

// Host is one simulated machine as SSH sees it: a small model of a Debian
// host (files by hash, packages, units, hostname) that answers the facts
// script and the commands the host steps run, after the configured round
// trip. It knows the command shapes hostos uses (comm.Install's mktemp,
// SFTP upload and `install -D`, apt-get, systemctl, the hostname script);
// every other command succeeds and prints nothing.
type Host struct {
	Name    string
	Address string
	f       *Fleet

	mu       sync.Mutex
	hostname string
	files    map[string]string // path -> sha256 hex
	tmp      map[string][]byte // uploads not yet installed
	pkgs     map[string]string // package -> version
	units    map[string]string // unit -> ActiveState
	unitFile map[string]string // unit -> UnitFileState
	seq      int
	// failAt, when set, makes the first command containing it fail (exit
	// 100) until the fleet heals; failDial makes connecting fail.
	failAt   string
	failDial bool
	// key is the host key sshd serves ("type base64"), next the one a
	// rotation made beside it.
	key, next string

	// Sessions counts SSH sessions (one per command), Writes SFTP writes,
	// Dials connections opened.
	Sessions, Writes, Dials atomic.Int64
}

func newHost(f *Fleet, name, addr, key string) *Host {
	return &Host{
		Name: name, Address: addr, f: f, hostname: "localhost", key: key,
		files: map[string]string{}, tmp: map[string][]byte{}, pkgs: map[string]string{"openssh-server": "1:9.2p1-2+deb12u3", "systemd": "252.33-1~deb12u1"},
		units:    map[string]string{"ssh.service": "active", "systemd-journald.service": "active"},
		unitFile: map[string]string{"ssh.service": "enabled", "systemd-journald.service": "static"},
	}
}

// conn is one open SSH connection to a Host.
type conn struct {
	h      *Host
	user   string
	key    string
	closed atomic.Bool
}

var _ apply.Conn = (*conn)(nil)

func (c *conn) Sudo(cmd string) string {
	if c.user == "root" {
		return cmd
	}
	return "sudo -n " + cmd
}

func (c *conn) PresentedHostKey() string { return c.key }

func (c *conn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.h.f.open.Add(-1)
	}
	return nil
}

func (c *conn) Run(ctx context.Context, cmd string, stdin io.Reader) ([]byte, error) {
	var out bytes.Buffer
	code, err := c.Stream(ctx, cmd, stdin, &out, io.Discard)
	if err != nil {
		return nil, err
	}
	if code != 0 {
		return out.Bytes(), &comm.ExitError{Host: c.h.Name, Cmd: shorten(cmd), Code: code, Stderr: "simulated failure"}
	}
	return out.Bytes(), nil
}

func shorten(cmd string) string {
	if len(cmd) > 60 {
		return cmd[:60] + "..."
	}
	return cmd
}

func (c *conn) Stream(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if c.closed.Load() {
		return -1, fmt.Errorf("%s: ssh connection closed", c.h.Name)
	}
	c.h.Sessions.Add(1)
	c.h.f.sessions.Add(1)
	var in []byte
	if stdin != nil {
		b, err := io.ReadAll(stdin)
		if err != nil {
			return -1, err
		}
		in = b
	}
	if err := c.h.f.wait(ctx, c.h.f.Latency.SSHRTT); err != nil {
		return -1, fmt.Errorf("%s: %w", c.h.Name, err)
	}
	out, code, extra := c.h.exec(cmd, in)
	if extra > 0 {
		if err := c.h.f.wait(ctx, extra); err != nil {
			return -1, fmt.Errorf("%s: %w", c.h.Name, err)
		}
	}
	stdout.Write(out)
	return code, nil
}

func (c *conn) Upload(ctx context.Context, path string, content io.Reader, mode fs.FileMode) error {
	if c.closed.Load() {
		return fmt.Errorf("%s: ssh connection closed", c.h.Name)
	}
	b, err := io.ReadAll(content)
	if err != nil {
		return err
	}
	c.h.Writes.Add(1)
	c.h.f.writes.Add(1)
	if err := c.h.f.wait(ctx, c.h.f.Latency.SSHRTT); err != nil {
		return fmt.Errorf("%s: upload %s: %w", c.h.Name, path, err)
	}
	c.h.mu.Lock()
	c.h.tmp[path] = b
	c.h.mu.Unlock()
	return nil
}

func (c *conn) Download(ctx context.Context, path string) ([]byte, error) {
	if err := c.h.f.wait(ctx, c.h.f.Latency.SSHRTT); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%s: download %s: %w", c.h.Name, path, fs.ErrNotExist)
}

// exec runs one command line against the model: its output, exit code and
// how long the host works on it beyond the round trip.
func (h *Host) exec(cmd string, stdin []byte) ([]byte, int, time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failAt != "" && strings.Contains(cmd, h.failAt) {
		return nil, 100, 0
	}
	line := strings.TrimPrefix(cmd, "sudo -n ")
	if rest, ok := strings.CutPrefix(line, "sh -c "); ok {
		line = unquote(rest)
	}
	switch {
	case strings.HasPrefix(line, "sh -s -- ") && bytes.Contains(stdin, []byte("ssh-keygen -q -t ed25519")):
		// The host key rotation's first half: make the next key, once.
		if h.next == "" {
			h.next = newKey()
		}
		return []byte(h.next + "\n"), 0, 0
	case strings.HasPrefix(line, "sh -s -- ") && bytes.Contains(stdin, []byte(`mv -f "$n" "$k"`)):
		// The second half: serve the pinned next key.
		want := unquote(strings.TrimPrefix(line, "sh -s -- "))
		if !sameKey(h.key, want) {
			if !sameKey(h.next, want) {
				return nil, 3, 0
			}
			h.key, h.next = h.next, ""
		}
		return nil, 0, 0
	case strings.HasPrefix(line, "sh -s -- ") && bytes.Contains(stdin, []byte("printf 'ssh_client")):
		return h.facts(stdin), 0, 0
	case strings.HasPrefix(line, "mktemp -d "):
		h.seq++
		return fmt.Appendf(nil, "/tmp/provision.sim%06d\n", h.seq), 0, 0
	case strings.HasPrefix(line, "install -D "):
		// One file, or a batch (comm.InstallAll: installs joined by &&).
		for _, one := range strings.Split(strings.SplitN(line, ";", 2)[0], " && ") {
			args := fields(one)
			if len(args) < 2 || args[0] != "install" {
				return nil, 1, 0
			}
			src, dst := args[len(args)-2], args[len(args)-1]
			b, ok := h.tmp[src]
			if !ok {
				return nil, 1, 0
			}
			sum := sha256.Sum256(b)
			h.files[dst] = hex.EncodeToString(sum[:])
			delete(h.tmp, src)
		}
		return nil, 0, 0
	case strings.HasPrefix(line, "rm -f -- "):
		for _, p := range fields(line)[3:] {
			delete(h.files, p)
		}
		return nil, 0, 0
	case strings.Contains(line, "apt-get -q update"):
		return nil, 0, h.f.Latency.AptUpdate
	case strings.Contains(line, "apt-get install"):
		for _, a := range fields(line) {
			name, ver, pinned := strings.Cut(a, "=")
			switch {
			case pinned && !strings.Contains(name, ":") && !strings.HasPrefix(name, "-") && !strings.Contains(name, "Dpkg") && name != "DEBIAN_FRONTEND" && name != "NEEDRESTART_MODE":
				h.pkgs[name] = ver
			case !pinned && knownPackage[a] != "":
				h.pkgs[a] = knownPackage[a]
			}
		}
		if _, ok := h.pkgs["docker.io"]; ok {
			h.units["docker.service"], h.unitFile["docker.service"] = "active", "enabled"
			h.units["containerd.service"], h.unitFile["containerd.service"] = "active", "enabled"
		}
		return nil, 0, h.f.Latency.PackageInstall
	case strings.HasPrefix(line, "apt-cache madison "):
		var b bytes.Buffer
		for _, v := range []string{engineVersion} {
			fmt.Fprintf(&b, "%10s | %s | mirror bookworm/main amd64 Packages\n", "docker.io", v)
		}
		return b.Bytes(), 0, 0
	case strings.Contains(line, "dpkg-query -W"):
		var b bytes.Buffer
		h.pkgLines(&b)
		if _, ok := h.pkgs["docker.io"]; ok {
			fmt.Fprintf(&b, "engine\tDocker version %s, build sim\n", upstream(h.pkgs["docker.io"]))
		}
		b.WriteString("end\n")
		return b.Bytes(), 0, 0
	case strings.Contains(line, "hostnamectl set-hostname "):
		f := fields(line[strings.Index(line, "set-hostname ")+len("set-hostname "):])
		if len(f) > 0 {
			h.hostname = f[0]
		}
		return nil, 0, 0
	case strings.HasPrefix(line, "systemctl show -p ActiveState --value "):
		u := fields(line)[5]
		st := h.units[u]
		if st == "" {
			st = "inactive"
		}
		return []byte(st + "\n"), 0, 0
	case strings.Contains(line, "systemctl"):
		h.systemctl(line)
		return nil, 0, 0
	}
	return nil, 0, 0
}

// knownPackage are the versions apt installs without a pin.
var knownPackage = map[string]string{"docker.io": engineVersion, "nftables": "1.0.6-2+deb12u2", "unattended-upgrades": "2.9.1+nmu3", "auditd": "1:3.0.9-1"}

const engineVersion = "20.10.24+dfsg1-1+deb12u1"

// upstream is what dockerd --version and the Engine API report for a
// package version: the version without its Debian revision.
func upstream(pkg string) string {
	if i := strings.LastIndex(pkg, "-"); i > 0 {
		return pkg[:i]
	}
	return pkg
}

// systemctl applies the unit changes of a script's systemctl commands.
func (h *Host) systemctl(script string) {
	for _, part := range strings.FieldsFunc(script, func(r rune) bool { return r == ';' || r == '&' || r == '|' }) {
		f := fields(part)
		if len(f) < 2 || f[0] != "systemctl" {
			continue
		}
		verb, now := f[1], false
		var units []string
		for _, a := range f[2:] {
			switch {
			case a == "--now":
				now = true
			case strings.HasPrefix(a, "-") || strings.HasPrefix(a, ">"):
			default:
				units = append(units, a)
			}
		}
		for _, u := range units {
			switch verb {
			case "enable":
				h.unitFile[u] = "enabled"
				if now {
					h.units[u] = "active"
				}
			case "disable":
				h.unitFile[u] = "disabled"
				if now {
					h.units[u] = "inactive"
				}
			case "start", "restart", "reload-or-restart", "try-reload-or-restart":
				h.units[u] = "active"
			case "stop":
				h.units[u] = "inactive"
			}
		}
	}
}

func (h *Host) pkgLines(b *bytes.Buffer) {
	names := make([]string, 0, len(h.pkgs))
	for p := range h.pkgs {
		names = append(names, p)
	}
	sort.Strings(names)
	for _, p := range names {
		fmt.Fprintf(b, "pkg\tii \t%s\t%s\n", p, h.pkgs[p])
	}
}

// facts answers the facts script: the variables it is given (FILES,
// UNITS) on stdin decide what it reports.
func (h *Host) facts(script []byte) []byte {
	vars := map[string][]string{}
	for _, l := range strings.Split(string(script), "\n") {
		k, v, ok := strings.Cut(l, "=")
		if ok && (k == "FILES" || k == "UNITS" || k == "PROBE") {
			vars[k] = strings.Fields(unquote(v))
		}
	}
	var b bytes.Buffer
	b.WriteString("ssh_client\t10.255.255.1\n")
	b.WriteString("os\tPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nos\tID=debian\nos\tVERSION_ID=\"12\"\nos\tVERSION_CODENAME=bookworm\n")
	b.WriteString("arch\tamd64\n")
	fmt.Fprintf(&b, "hostname\t%s\n", h.hostname)
	for _, c := range vars["PROBE"] {
		if c == "dockerd" && h.pkgs["docker.io"] == "" {
			continue
		}
		if c == "auditctl" || c == "augenrules" || c == "cloud-init" {
			continue
		}
		fmt.Fprintf(&b, "cmd\t%s\t/usr/sbin/%s\n", c, c)
	}
	for _, p := range vars["FILES"] {
		if sum, ok := h.files[p]; ok {
			fmt.Fprintf(&b, "file\t%s\t%s\n", p, sum)
		}
	}
	h.pkgLines(&b)
	for _, u := range vars["UNITS"] {
		st := h.units[u]
		if st == "" {
			st = "inactive"
		}
		fmt.Fprintf(&b, "unit\t%s\t%s\t%s\n", u, st, h.unitFile[u])
	}
	if v := h.pkgs["docker.io"]; v != "" {
		fmt.Fprintf(&b, "engine\tDocker version %s, build sim\n", upstream(v))
	}
	b.WriteString("virt\tnone\nend\n")
	return b.Bytes()
}

// fields splits a command line the way a POSIX shell splits words quoted
// by comm.Quote (single quotes, '\” inside them).
func fields(s string) []string {
	var out []string
	var cur strings.Builder
	in, quoted := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case in && c == '\'':
			in = false
		case in:
			cur.WriteByte(c)
		case c == '\'':
			in, quoted = true, true
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case c == ' ' || c == '\t' || c == '\n':
			if cur.Len() > 0 || quoted {
				out = append(out, cur.String())
				cur.Reset()
				quoted = false
			}
		default:
			cur.WriteByte(c)
		}
	}
	if cur.Len() > 0 || quoted {
		out = append(out, cur.String())
	}
	return out
}

// unquote undoes comm.Quote for one word.
func unquote(s string) string {
	f := fields(s)
	if len(f) == 0 {
		return ""
	}
	return strings.Join(f, " ")
}

var errRefused = errors.New("connection refused (simulated)")

// newKey makes an ed25519 public key in authorized_keys form.
func newKey() string {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		panic(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

// sameKey compares two keys by type and data (comments aside).
func sameKey(a, b string) bool {
	fa, fb := strings.Fields(a), strings.Fields(b)
	return len(fa) >= 2 && len(fb) >= 2 && fa[0] == fb[0] && fa[1] == fb[1]
}
