package apply

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/comm/commtest"
	"github.com/provision/provision/provision/pki"
)

// TestEngineAPIThroughBastion: for a machine reached through a bastion,
// the engine API goes through an SSH tunnel from the bastion, with TLS end
// to end (the engine's certificate verified, the operator's presented), and
// one tunnel connection serves every host behind the bastion.
func TestEngineAPIThroughBastion(t *testing.T) {
	e, _ := newTestEngine(t, 0, &testDriver{})
	e.init()
	if err := e.credentials(context.Background()); err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadOrCreateCA(e.Store.PKIDir(), "t")
	if err != nil {
		t.Fatal(err)
	}
	// The fake engine listens on a loopback address of its own at the
	// engine port, so the client's URL is the real one: tcp://ADDR:2376.
	const addr = "127.77.12.1"
	srvCert, err := ca.Server("t-manager-1", []string{addr}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(e.Store.PKIDir(), pki.CAFile))
	tlsCfg, err := pki.ServerTLS(caPEM, srvCert.CertPEM, srvCert.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, "2376"))
	if err != nil {
		t.Skipf("cannot listen on %s:2376: %v", addr, err)
	}
	var mu sync.Mutex
	var clients []string
	api := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		clients = append(clients, r.TLS.PeerCertificates[0].Subject.CommonName)
		mu.Unlock()
		w.Header().Set("Api-Version", "1.41")
		w.Header().Set("Content-Type", "application/json")
		if strings.HasSuffix(r.URL.Path, "/_ping") {
			w.Write([]byte("OK"))
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"ServerVersion": "20.10.24-tunnelled", "Swarm": map[string]any{"LocalNodeState": "inactive"}})
	}))
	api.Listener.Close()
	api.Listener = ln
	api.TLS = tlsCfg
	api.StartTLS()
	defer api.Close()

	bastion := commtest.Start(t, e.admin.PublicKey())
	m := func(name string) drivers.Machine {
		return drivers.Machine{Name: name, Driver: "local", Address: addr, SSH: drivers.SSHEndpoint{User: "admin", Port: 22, HostKey: "unused",
			Bastion: &drivers.Bastion{Address: "127.0.0.1", Port: bastion.Port(), User: "jump", HostKey: commtest.Authorized(bastion.HostKey())}}}
	}
	cfg, err := e.clientTLS()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, name := range []string{"t-manager-1", "t-worker-1"} {
		en, err := e.ConnectEngine(ctx, m(name), cfg)
		if err != nil {
			t.Fatal(err)
		}
		l, err := en.Inspect(ctx)
		en.Close()
		if err != nil || l.Engine != "20.10.24-tunnelled" {
			t.Fatalf("%s: engine through the tunnel: %+v, %v", name, l, err)
		}
	}
	if bastion.Accepts.Load() != 1 || bastion.Forwards.Load() < 2 {
		t.Fatalf("bastion: %d connections, %d forwards; want one connection carrying both hosts' engine API", bastion.Accepts.Load(), bastion.Forwards.Load())
	}
	mu.Lock()
	for _, c := range clients {
		if c != "provision-operator" {
			t.Errorf("the engine saw client %q", c)
		}
	}
	mu.Unlock()
	e.Close()
	// Without a bastion there is no tunnel.
	if dial, err := e.engineDialer(ctx, drivers.Machine{Name: "x", Address: addr}); dial != nil || err != nil {
		t.Errorf("a machine without a bastion got a tunnel: %v", err)
	}
}
