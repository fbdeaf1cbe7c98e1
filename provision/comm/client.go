package comm

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/provision/retry"
)

// Config says how to reach one host.
type Config struct {
	Host    string // name for errors and logs
	Address string
	Port    int
	User    string
	Signer  ssh.Signer
	HostKey string // authorized_keys form; required: the key is pinned
	// NextHostKey, when set, is accepted too: the key a host key rotation
	// pinned before the host switched to it (see apply's rotation).
	NextHostKey string
	Bastion     *Config
	Timeout     time.Duration // connect deadline including retries; default 3m
	Log         *slog.Logger
}

// Stats counts what a Client did, so tests and benchmarks can prove that one
// connection serves every command.
type Stats struct {
	Dials, Sessions, SFTPOpens int64
}

// Client is one SSH connection to a host, reused for every command and file.
type Client struct {
	cfg Config

	mu      sync.Mutex
	ssh     *ssh.Client
	bastion *ssh.Client
	sftp    *sftp.Client
	root    *bool
	stop    chan struct{}
	closed  bool
	// presented is the host key the host showed on the current connection.
	presented string

	dials, sessions, sftpOpens atomic.Int64
}

// Dial connects, retrying with backoff until cfg.Timeout or ctx ends. Auth
// failures and host key mismatches are returned at once.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 3 * time.Minute
	}
	if cfg.Port == 0 {
		cfg.Port = 22
	}
	c := &Client{cfg: cfg, stop: make(chan struct{})}
	if err := c.connect(ctx); err != nil {
		return nil, err
	}
	go c.keepalive()
	return c, nil
}

func (c *Client) connect(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	next := retry.Backoff{First: 250 * time.Millisecond, Max: 5 * time.Second, Jitter: true}.Delays()
	for attempt := 1; ; attempt++ {
		var presented string
		cl, bastion, err := dialOnce(ctx, c.cfg, &presented)
		c.dials.Add(1)
		if err == nil {
			c.mu.Lock()
			c.ssh, c.bastion, c.sftp, c.presented = cl, bastion, nil, presented
			c.mu.Unlock()
			return nil
		}
		if permanent(err) {
			return fmt.Errorf("%s: ssh %s: %w", c.cfg.Host, target(c.cfg), err)
		}
		c.cfg.Log.Debug("ssh connect failed, retrying", "host", c.cfg.Host, "attempt", attempt, "err", err)
		if retry.Sleep(ctx, next()) != nil {
			return fmt.Errorf("%s: ssh %s: gave up after %d attempts: %w", c.cfg.Host, target(c.cfg), attempt, err)
		}
	}
}

func target(cfg Config) string {
	return cfg.User + "@" + net.JoinHostPort(cfg.Address, strconv.Itoa(cfg.Port))
}

// permanent errors are not retried: retrying cannot fix them.
func permanent(err error) bool {
	return errors.Is(err, ErrHostKeyMismatch) || errors.Is(err, errNoHostKey) ||
		strings.Contains(err.Error(), "unable to authenticate")
}

var errNoHostKey = errors.New("no pinned host key: refusing to connect to an unverified host")

// hostKeyCallback accepts only the pinned key (or, during a rotation, the
// next one too) and records which one the host presented.
func hostKeyCallback(host, pinned, next string, presented *string) (ssh.HostKeyCallback, []string, error) {
	if strings.TrimSpace(pinned) == "" {
		return nil, nil, errNoHostKey
	}
	var wants []ssh.PublicKey
	for _, k := range []string{pinned, next} {
		if strings.TrimSpace(k) == "" {
			continue
		}
		want, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k))
		if err != nil {
			return nil, nil, fmt.Errorf("pinned host key for %s: %w", host, err)
		}
		wants = append(wants, want)
	}
	cb := func(_ string, _ net.Addr, got ssh.PublicKey) error {
		for _, want := range wants {
			if subtle.ConstantTimeCompare(got.Marshal(), want.Marshal()) == 1 {
				if presented != nil {
					*presented = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(got)))
				}
				return nil
			}
		}
		return &HostKeyMismatchError{Host: host, Presented: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(got))),
			presentedFP: ssh.FingerprintSHA256(got), expectedFP: ssh.FingerprintSHA256(wants[0])}
	}
	var algos []string
	for _, want := range wants {
		if want.Type() == ssh.KeyAlgoRSA {
			algos = append(algos, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		} else if !slices.Contains(algos, want.Type()) {
			algos = append(algos, want.Type())
		}
	}
	return cb, algos, nil
}

func clientConfig(cfg Config, presented *string) (*ssh.ClientConfig, error) {
	cb, algos, err := hostKeyCallback(cfg.Host, cfg.HostKey, cfg.NextHostKey, presented)
	if err != nil {
		return nil, err
	}
	if cfg.Signer == nil {
		return nil, fmt.Errorf("no private key to log in to %s", cfg.Host)
	}
	return &ssh.ClientConfig{
		User:              cfg.User,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(cfg.Signer)},
		HostKeyCallback:   cb,
		HostKeyAlgorithms: algos,
		Timeout:           15 * time.Second,
	}, nil
}

// dialOnce makes one attempt, through the bastion when there is one.
func dialOnce(ctx context.Context, cfg Config, presented *string) (*ssh.Client, *ssh.Client, error) {
	cc, err := clientConfig(cfg, presented)
	if err != nil {
		return nil, nil, err
	}
	addr := net.JoinHostPort(cfg.Address, strconv.Itoa(cfg.Port))
	var conn net.Conn
	var bastion *ssh.Client
	if cfg.Bastion != nil {
		b := *cfg.Bastion
		if b.Port == 0 {
			b.Port = 22
		}
		bastion, _, err = dialOnce(ctx, b, nil)
		if err != nil {
			return nil, nil, fmt.Errorf("bastion %s: %w", b.Address, err)
		}
		conn, err = bastion.DialContext(ctx, "tcp", addr)
	} else {
		conn, err = (&net.Dialer{Timeout: 15 * time.Second}).DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		if bastion != nil {
			bastion.Close()
		}
		return nil, nil, err
	}
	// Bound the handshake by ctx.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	sc, chans, reqs, err := ssh.NewClientConn(conn, addr, cc)
	stop()
	if err != nil {
		conn.Close()
		if bastion != nil {
			bastion.Close()
		}
		return nil, nil, err
	}
	conn.SetDeadline(time.Time{})
	return ssh.NewClient(sc, chans, reqs), bastion, nil
}

func (c *Client) keepalive() {
	t := time.NewTicker(15 * time.Second)
	defer t.Stop()
	fails := 0
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		c.mu.Lock()
		cl := c.ssh
		c.mu.Unlock()
		if cl == nil {
			continue
		}
		if _, _, err := cl.SendRequest("keepalive@openssh.com", true, nil); err != nil {
			fails++
			if fails >= 3 {
				cl.Close()
				fails = 0
			}
			continue
		}
		fails = 0
	}
}

// Close ends the connection (and the bastion's).
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	close(c.stop)
	if c.sftp != nil {
		c.sftp.Close()
	}
	var err error
	if c.ssh != nil {
		err = c.ssh.Close()
	}
	if c.bastion != nil {
		c.bastion.Close()
	}
	return err
}

// PresentedHostKey is the host key (authorized_keys form) the host showed
// on the current connection: the pinned one, or the next one during a
// rotation.
func (c *Client) PresentedHostKey() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.presented
}

// DialContext opens a TCP connection from the far end of this SSH
// connection (direct-tcpip), for tunnelling another protocol along the
// same pinned path. The server must allow TCP forwarding.
func (c *Client) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c.mu.Lock()
	cl := c.ssh
	c.mu.Unlock()
	if cl == nil {
		return nil, fmt.Errorf("%s: ssh connection closed", c.cfg.Host)
	}
	conn, err := cl.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("%s: tunnel to %s: %w", c.cfg.Host, addr, err)
	}
	return conn, nil
}

// Stats returns the counters.
func (c *Client) Stats() Stats {
	return Stats{Dials: c.dials.Load(), Sessions: c.sessions.Load(), SFTPOpens: c.sftpOpens.Load()}
}

// session opens a new session, reconnecting once if the connection broke.
func (c *Client) session(ctx context.Context) (*ssh.Session, error) {
	c.mu.Lock()
	cl := c.ssh
	c.mu.Unlock()
	if cl != nil {
		if s, err := cl.NewSession(); err == nil {
			c.sessions.Add(1)
			return s, nil
		}
	}
	c.cfg.Log.Debug("ssh session failed to open, reconnecting", "host", c.cfg.Host)
	if err := c.connect(ctx); err != nil {
		return nil, err
	}
	c.mu.Lock()
	cl = c.ssh
	c.mu.Unlock()
	s, err := cl.NewSession()
	if err != nil {
		return nil, fmt.Errorf("%s: ssh session: %w", c.cfg.Host, err)
	}
	c.sessions.Add(1)
	return s, nil
}

// tail keeps the last n bytes written.
type tail struct {
	n   int
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.n {
		t.buf = t.buf[len(t.buf)-t.n:]
	}
	return len(p), nil
}

// Run runs cmd and returns its stdout; see Comm.
func (c *Client) Run(ctx context.Context, cmd string, stdin io.Reader) ([]byte, error) {
	var out bytes.Buffer
	errTail := &tail{n: 4096}
	code, err := c.exec(ctx, cmd, stdin, &out, errTail, nil)
	if err != nil {
		return out.Bytes(), err
	}
	if code != 0 {
		return out.Bytes(), &ExitError{Host: c.cfg.Host, Cmd: shorten(cmd), Code: code, Stderr: strings.TrimSpace(string(errTail.buf))}
	}
	return out.Bytes(), nil
}

// Stream runs cmd with the given streams and returns its exit code.
func (c *Client) Stream(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return c.exec(ctx, cmd, stdin, stdout, stderr, nil)
}

// pty asks for a terminal.
type pty struct {
	term string
	w, h int
}

// Shell runs an interactive login shell. With term set, a PTY of w x h is
// requested.
func (c *Client) Shell(ctx context.Context, term string, w, h int, in io.Reader, out, errw io.Writer) error {
	var p *pty
	if term != "" {
		p = &pty{term, w, h}
	}
	code, err := c.exec(ctx, "", in, out, errw, p)
	if err != nil {
		return err
	}
	if code != 0 {
		return &ExitError{Host: c.cfg.Host, Cmd: "shell", Code: code}
	}
	return nil
}

func (c *Client) exec(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer, p *pty) (int, error) {
	s, err := c.session(ctx)
	if err != nil {
		return -1, err
	}
	defer s.Close()
	s.Stdin, s.Stdout, s.Stderr = stdin, stdout, stderr
	if p != nil {
		if w, h := p.w, p.h; w == 0 || h == 0 {
			p.w, p.h = 80, 24
		}
		if err := s.RequestPty(p.term, p.h, p.w, ssh.TerminalModes{ssh.ECHO: 1}); err != nil {
			return -1, fmt.Errorf("%s: pty: %w", c.cfg.Host, err)
		}
	}
	if cmd == "" {
		err = s.Shell()
	} else {
		err = s.Start(cmd)
	}
	if err != nil {
		return -1, fmt.Errorf("%s: start %q: %w", c.cfg.Host, shorten(cmd), err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait() }()
	select {
	case <-ctx.Done():
		s.Signal(ssh.SIGKILL)
		s.Close()
		<-done
		return -1, ctx.Err()
	case err := <-done:
		var ee *ssh.ExitError
		if errors.As(err, &ee) {
			return ee.ExitStatus(), nil
		}
		var em *ssh.ExitMissingError
		if errors.As(err, &em) {
			return -1, fmt.Errorf("%s: %q: connection lost before the command exited", c.cfg.Host, shorten(cmd))
		}
		if err != nil {
			return -1, fmt.Errorf("%s: %q: %w", c.cfg.Host, shorten(cmd), err)
		}
		return 0, nil
	}
}

func shorten(cmd string) string {
	if len(cmd) > 200 {
		return cmd[:200] + "..."
	}
	return cmd
}

// sftpClient returns the connection's SFTP client, opening it on first use.
func (c *Client) sftpClient(ctx context.Context) (*sftp.Client, error) {
	c.mu.Lock()
	if c.sftp != nil {
		s := c.sftp
		c.mu.Unlock()
		return s, nil
	}
	cl := c.ssh
	c.mu.Unlock()
	s, err := sftp.NewClient(cl)
	if err != nil {
		// The connection may have broken: reconnect once.
		if cerr := c.connect(ctx); cerr != nil {
			return nil, cerr
		}
		c.mu.Lock()
		cl = c.ssh
		c.mu.Unlock()
		if s, err = sftp.NewClient(cl); err != nil {
			return nil, fmt.Errorf("%s: sftp: %w", c.cfg.Host, err)
		}
	}
	c.sftpOpens.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sftp != nil { // another goroutine won
		s.Close()
		return c.sftp, nil
	}
	c.sftp = s
	return s, nil
}

// Upload writes content to p (as the login user) through a temp file and a rename.
func (c *Client) Upload(ctx context.Context, p string, content io.Reader, mode fs.FileMode) error {
	s, err := c.sftpClient(ctx)
	if err != nil {
		return err
	}
	tmp := path.Join(path.Dir(p), ".provision-upload-"+strconv.FormatUint(rand.Uint64(), 36))
	f, err := s.OpenFile(tmp, 0x1|0x40|0x200) // O_WRONLY|O_CREATE|O_TRUNC
	if err != nil {
		return fmt.Errorf("%s: upload %s: %w", c.cfg.Host, p, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		s.Remove(tmp)
		return fmt.Errorf("%s: upload %s: chmod: %w", c.cfg.Host, p, err)
	}
	if _, err := f.ReadFrom(content); err != nil {
		f.Close()
		s.Remove(tmp)
		return fmt.Errorf("%s: upload %s: %w", c.cfg.Host, p, err)
	}
	if err := f.Close(); err != nil {
		s.Remove(tmp)
		return fmt.Errorf("%s: upload %s: %w", c.cfg.Host, p, err)
	}
	if err := s.PosixRename(tmp, p); err != nil {
		s.Remove(tmp)
		return fmt.Errorf("%s: upload %s: rename: %w", c.cfg.Host, p, err)
	}
	return nil
}

// Download reads a file readable by the login user.
func (c *Client) Download(ctx context.Context, p string) ([]byte, error) {
	s, err := c.sftpClient(ctx)
	if err != nil {
		return nil, err
	}
	f, err := s.Open(p)
	if err != nil {
		return nil, fmt.Errorf("%s: download %s: %w", c.cfg.Host, p, err)
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := f.WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("%s: download %s: %w", c.cfg.Host, p, err)
	}
	return buf.Bytes(), nil
}

// Sudo prefixes cmd with `sudo -n` unless the login user is root.
func (c *Client) Sudo(cmd string) string {
	c.mu.Lock()
	root := c.root
	c.mu.Unlock()
	if root == nil {
		r := c.cfg.User == "root"
		root = &r
		c.mu.Lock()
		c.root = root
		c.mu.Unlock()
	}
	if *root {
		return cmd
	}
	return "sudo -n " + cmd
}

// HostKeyMismatchError is ErrHostKeyMismatch with the key the host
// presented (authorized_keys form), so a caller that knows other hosts'
// keys can tell a rebuilt host from addresses that moved between hosts.
type HostKeyMismatchError struct {
	Host      string
	Presented string

	presentedFP, expectedFP string
}

func (e *HostKeyMismatchError) Error() string {
	return fmt.Sprintf("%v: %s presented %s, expected %s; if the host was legitimately rebuilt, update the pinned key (spec host_keys, known_hosts, or the machine's entry in state)",
		ErrHostKeyMismatch, e.Host, e.presentedFP, e.expectedFP)
}

func (e *HostKeyMismatchError) Unwrap() error { return ErrHostKeyMismatch }
