package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/cli/cli/context/docker"
	"github.com/docker/cli/cli/context/store"
)

// The context written by `env --context` is read back through the docker
// CLI's own store the way `docker --context` loads it.
func TestWriteDockerContext(t *testing.T) {
	certDir := t.TempDir()
	files := map[string]string{"ca.pem": "CA", "cert.pem": "CERT", "key.pem": "KEY"}
	for f, c := range files {
		if err := os.WriteFile(filepath.Join(certDir, f), []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfgDir := t.TempDir()
	for _, host := range []string{"tcp://192.0.2.10:2376", "tcp://192.0.2.11:2376"} { // second call updates
		if err := writeDockerContext(cfgDir, "provision-demo-m1", host, certDir, "test"); err != nil {
			t.Fatal(err)
		}
	}
	cfg := store.NewConfig(func() any { return &contextMeta{} },
		store.EndpointTypeGetter(docker.DockerEndpoint, func() any { return &docker.EndpointMeta{} }))
	s := store.New(filepath.Join(cfgDir, "contexts"), cfg)
	list, err := s.List()
	if err != nil || len(list) != 1 {
		t.Fatalf("contexts: %v, %v", list, err)
	}
	ep, err := docker.EndpointFromContext(list[0])
	if err != nil {
		t.Fatal(err)
	}
	if ep.Host != "tcp://192.0.2.11:2376" || ep.SkipTLSVerify {
		t.Errorf("endpoint = %+v", ep)
	}
	tls, err := s.GetTLSData("provision-demo-m1", docker.DockerEndpoint, "key.pem")
	if err != nil || string(tls) != "KEY" {
		t.Errorf("key.pem = %q, %v", tls, err)
	}
	keyPath := filepath.Join(s.GetStorageInfo("provision-demo-m1").TLSPath, docker.DockerEndpoint, "key.pem")
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("key file %s: %v, mode %v", keyPath, err, fi.Mode())
	}

	if err := writeDockerContext(cfgDir, "bad name!", "tcp://x:2376", certDir, ""); err == nil {
		t.Error("an invalid context name was accepted")
	}
	if err := writeDockerContext(cfgDir, "nocerts", "tcp://x:2376", t.TempDir(), ""); err == nil {
		t.Error("missing certificates were accepted")
	}
}

// TestContextNameChecked: --context-name "" printed the variables (as if no
// context was asked for) and an invalid name was exit 1 after loading the
// spec; both are usage errors before anything is read.
func TestContextNameChecked(t *testing.T) {
	for _, name := range []string{"", "../../evil", "-x"} {
		out, _, err := runCLI(t, "env", "/nonexistent/c.hcl", "--context-name", name)
		if code(err) != exitUsage || out != "" || !strings.Contains(err.Error(), "--context-name") {
			t.Errorf("--context-name %q: code %d, stdout %q, err %v", name, code(err), out, err)
		}
	}
}
