// Package awstest runs the aws driver's tests against moto_server, an EC2 API
// emulator, on 127.0.0.1, with the AWS SDK cut off from the operator's own
// AWS setup. The driver's unit tests and the acceptance suite share it; the
// provision binary does not import it.
package awstest

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Region is the region Isolate sets.
const Region = "us-east-1"

// Isolate sets this process's environment so that the SDK's default chain
// finds only fake static credentials and Region, config files under dir
// (which need not exist), no profile, no endpoint override, and never asks
// the instance metadata service. It returns a function that puts the
// previous environment back.
func Isolate(dir string) (restore func()) {
	set := map[string]string{
		"AWS_ACCESS_KEY_ID":           "testing",
		"AWS_SECRET_ACCESS_KEY":       "testing",
		"AWS_SESSION_TOKEN":           "testing",
		"AWS_REGION":                  Region,
		"AWS_EC2_METADATA_DISABLED":   "true",
		"AWS_CONFIG_FILE":             filepath.Join(dir, "aws-config"),
		"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "aws-credentials"),
	}
	unset := []string{"AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2"}
	type prev struct {
		v  string
		ok bool
	}
	saved := map[string]prev{}
	for k, v := range set {
		old, ok := os.LookupEnv(k)
		saved[k] = prev{old, ok}
		os.Setenv(k, v)
	}
	for _, k := range unset {
		old, ok := os.LookupEnv(k)
		saved[k] = prev{old, ok}
		os.Unsetenv(k)
	}
	return func() {
		for k, p := range saved {
			if p.ok {
				os.Setenv(k, p.v)
			} else {
				os.Unsetenv(k)
			}
		}
	}
}

// Moto is a running moto_server.
type Moto struct {
	URL string // http://127.0.0.1:PORT
	cmd *exec.Cmd
	log *os.File
}

// ErrNoMoto means moto_server is not in PATH.
var ErrNoMoto = errors.New("moto_server not found in PATH (install moto[server])")

// StartMoto starts moto_server on a free 127.0.0.1 port, in its own process
// group, logging to dir/moto.log, and waits up to a minute until it answers.
func StartMoto(dir string) (*Moto, error) {
	bin, err := exec.LookPath("moto_server")
	if err != nil {
		return nil, ErrNoMoto
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	logf, err := os.Create(filepath.Join(dir, "moto.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-H", "127.0.0.1", "-p", port)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start moto_server: %w", err)
	}
	m := &Moto{URL: "http://127.0.0.1:" + port, cmd: cmd, log: logf}
	deadline := time.Now().Add(time.Minute)
	for delay := 50 * time.Millisecond; ; delay = min(delay*2, time.Second) {
		resp, err := http.Get(m.URL + "/moto-api/")
		if err == nil {
			resp.Body.Close()
			return m, nil
		}
		if time.Now().After(deadline) {
			m.Stop()
			b, _ := os.ReadFile(logf.Name())
			return nil, fmt.Errorf("moto_server did not come up: %v\n%s", err, b)
		}
		time.Sleep(delay)
	}
}

// Stop kills moto_server and its children.
func (m *Moto) Stop() {
	syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
	m.cmd.Wait()
	m.log.Close()
}
