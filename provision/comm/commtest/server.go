// Package commtest is a real SSH server for tests, in the test process:
// public key auth, `exec` requests run by /bin/sh, the sftp subsystem,
// keepalive replies and direct-tcpip forwarding (so it serves as a bastion
// and as a tunnel), with hooks to swap its host key and to answer chosen
// commands itself.
package commtest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// Server is one listening SSH server.
type Server struct {
	Addr     string
	Accepts  atomic.Int64 // connections accepted
	Refuse   atomic.Int64 // close this many connections before the handshake
	Forwards atomic.Int64 // direct-tcpip channels opened (tunnelled TCP connections)
	// Exec, when set, is asked first for every exec request (ch is the
	// session: stdin to read, stdout to write): handled commands return
	// their exit code without running /bin/sh.
	Exec func(cmd string, ch io.ReadWriter) (code int, handled bool)

	user  ssh.PublicKey
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	key   ssh.Signer
	conns []net.Conn
}

// NewSigner makes an ed25519 key.
func NewSigner(t testing.TB) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Authorized is a key's authorized_keys line.
func Authorized(s ssh.Signer) string {
	return string(bytes.TrimSpace(ssh.MarshalAuthorizedKey(s.PublicKey())))
}

// Start listens on 127.0.0.1 and accepts the user key.
func Start(t testing.TB, user ssh.PublicKey) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: ln.Addr().String(), key: NewSigner(t), ln: ln, user: user}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.Accepts.Add(1)
			if s.Refuse.Load() > 0 {
				s.Refuse.Add(-1)
				c.Close()
				continue
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			go s.serve(c)
		}
	}()
	t.Cleanup(s.Close)
	return s
}

// HostKey is the key the server presents to new connections.
func (s *Server) HostKey() ssh.Signer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.key
}

// SetHostKey changes the key new connections see (as sshd after a reload);
// connections already open keep theirs.
func (s *Server) SetHostKey(k ssh.Signer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.key = k
}

// Close stops the server and cuts every connection.
func (s *Server) Close() {
	s.ln.Close()
	s.DropAll()
	s.wg.Wait()
}

// DropAll cuts every open connection.
func (s *Server) DropAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

// Port is the listening port.
func (s *Server) Port() int {
	_, p, _ := net.SplitHostPort(s.Addr)
	n, _ := strconv.Atoi(p)
	return n
}

func (s *Server) serve(c net.Conn) {
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(k.Marshal(), s.user.Marshal()) {
				return nil, nil
			}
			return nil, io.EOF
		},
	}
	cfg.AddHostKey(s.HostKey())
	sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		c.Close()
		return
	}
	defer sc.Close()
	go func() {
		for r := range reqs {
			r.Reply(r.Type == "keepalive@openssh.com", nil)
		}
	}()
	for nc := range chans {
		switch nc.ChannelType() {
		case "session":
			ch, creqs, err := nc.Accept()
			if err != nil {
				continue
			}
			go s.session(ch, creqs)
		case "direct-tcpip":
			var p struct {
				Host     string
				Port     uint32
				OrigHost string
				OrigPort uint32
			}
			if err := ssh.Unmarshal(nc.ExtraData(), &p); err != nil {
				nc.Reject(ssh.ConnectionFailed, err.Error())
				continue
			}
			up, err := net.Dial("tcp", net.JoinHostPort(p.Host, strconv.Itoa(int(p.Port))))
			if err != nil {
				nc.Reject(ssh.ConnectionFailed, err.Error())
				continue
			}
			ch, creqs, err := nc.Accept()
			if err != nil {
				up.Close()
				continue
			}
			s.Forwards.Add(1)
			go ssh.DiscardRequests(creqs)
			go func() { io.Copy(ch, up); ch.CloseWrite() }()
			go func() { io.Copy(up, ch); up.Close() }()
		default:
			nc.Reject(ssh.UnknownChannelType, "no")
		}
	}
}

func exitStatus(ch ssh.Channel, code int) {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, uint32(code))
	ch.SendRequest("exit-status", false, b)
}

func (s *Server) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	for r := range reqs {
		switch r.Type {
		case "exec":
			var p struct{ Cmd string }
			ssh.Unmarshal(r.Payload, &p)
			r.Reply(true, nil)
			if s.Exec != nil {
				if code, ok := s.Exec(p.Cmd, ch); ok {
					exitStatus(ch, code)
					return
				}
			}
			cmd := exec.Command("/bin/sh", "-c", p.Cmd)
			cmd.Stdin, cmd.Stdout, cmd.Stderr = ch, ch, ch.Stderr()
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			go func() {
				for r := range reqs {
					if r.Type == "signal" && cmd.Process != nil {
						syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
					}
					if r.WantReply {
						r.Reply(false, nil)
					}
				}
			}()
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
				if code < 0 {
					code = 137
				}
			}
			exitStatus(ch, code)
			return
		case "subsystem":
			var p struct{ Name string }
			ssh.Unmarshal(r.Payload, &p)
			if p.Name != "sftp" {
				r.Reply(false, nil)
				continue
			}
			r.Reply(true, nil)
			srv, err := sftp.NewServer(ch)
			if err != nil {
				return
			}
			srv.Serve()
			return
		default:
			if r.WantReply {
				r.Reply(false, nil)
			}
		}
	}
}
