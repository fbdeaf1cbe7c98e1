//go:build acceptance

package acceptance

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers/local"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/swarm"
)

// secMachine is what the security test reads of a machine in state.json.
type secMachine struct {
	Name             string `json:"name"`
	ID               string `json:"id"`
	Role             string `json:"role"`
	Address          string `json:"address"`
	HostKeySource    string `json:"host_key_source"`
	HostKeyNext      string `json:"host_key_next"`
	HostKeyInstalled string `json:"host_key_installed"`
	SSH              struct {
		HostKey string `json:"host_key"`
	} `json:"ssh"`
}

func secMachines(t *testing.T, stateDir string) map[string]secMachine {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stateDir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Machines []secMachine `json:"machines"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	out := map[string]secMachine{}
	for _, m := range st.Machines {
		out[m.Name] = m
	}
	return out
}

// editState rewrites one machine's record in state.json.
func editState(t *testing.T, stateDir, machine string, edit func(m map[string]any)) {
	t.Helper()
	p := filepath.Join(stateDir, "state.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	for _, m := range st["machines"].([]any) {
		if m := m.(map[string]any); m["name"] == machine {
			edit(m)
		}
	}
	b, _ = json.MarshalIndent(st, "", "  ")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func sameKeyLine(a, b string) bool {
	fa, fb := strings.Fields(a), strings.Fields(b)
	return len(fa) >= 2 && len(fb) >= 2 && fa[0] == fb[0] && fa[1] == fb[1]
}

// TestSecurityLocal is issue 12 on real hosts (system containers, local
// driver): the host key the driver installed is replaced on the first
// connection by one the host made (and a rotation interrupted at either
// side of the switch is finished by the next apply); a node's own TLS key
// is refused by another node's engine while the operator's works; after the
// CA is lost and made anew every node certificate is reissued and the
// engines trust the new one; the bare-metal knobs (extra SSH users and
// groups, firewall openings, staggered reboots) are in force; `provision
// ssh` passes the remote exit status through.
func TestSecurityLocal(t *testing.T) {
	hostTest(t) // each local-host test has its own cluster, network and state; longest first, a few at a time (schedule_test.go)
	requireAcc(t)
	dc := dockerClient(t)
	requireImage(t, dc, engineImage, "drivers/local/image/engine.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	dir := t.TempDir()
	spec := filepath.Join(dir, "sec.hcl")
	if err := os.WriteFile(spec, []byte(`
name = "sec"
driver "local" { image = "provision/host:bookworm-engine" }
managers { count = 1 }
workers { count = 1 }
hardening {
  auto_reboot = true
  ssh_users   = ["backup"]
  ssh_groups  = ["ops"]
  firewall_allow {
    ports = [8080, "9100-9101"]
    from  = ["192.0.2.0/24"]
  }
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(dir, "state")
	sd := "--state-dir=" + stateDir
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			provision(t, context.Background(), nil, "destroy", spec, sd, "--auto-approve")
		}
	})
	r := mustProvision(t, ctx, nil, "apply", spec, sd, "--auto-approve")
	if !strings.Contains(r.stderr, "host key replaced by one made on the host") {
		t.Errorf("apply did not report the host key rotation:\n%s", r.stderr)
	}
	ms := secMachines(t, stateDir)
	mgr, wrk := ms["sec-manager-1"], ms["sec-worker-1"]

	// 1. Host keys: state pins a key the host made; the key the driver
	// installed (still on the container's label, as on an EC2 tag) is
	// no longer served, and its private half is gone from the host.
	for _, m := range []secMachine{mgr, wrk} {
		ins, err := dc.ContainerInspect(ctx, m.ID)
		if err != nil {
			t.Fatal(err)
		}
		label := ins.Config.Labels[local.TagHostKey]
		if m.HostKeySource != "host" || m.HostKeyNext != "" || sameKeyLine(m.SSH.HostKey, label) || !sameKeyLine(m.HostKeyInstalled, label) {
			t.Errorf("%s: source %q next %q pinned %q installed %q label %q", m.Name, m.HostKeySource, m.HostKeyNext, m.SSH.HostKey, m.HostKeyInstalled, label)
		}
		served, err := comm.ScanHostKey(ctx, m.Address, 22)
		if err != nil || !sameKeyLine(served, m.SSH.HostKey) {
			t.Errorf("%s serves %q (%v), state pins %q", m.Name, served, err, m.SSH.HostKey)
		}
		onDisk := mustExec(t, ctx, dc, m.ID, "ssh-keygen -y -f /etc/ssh/ssh_host_ed25519_key; ls /etc/ssh")
		if strings.Contains(onDisk, strings.Fields(label)[1]) || strings.Contains(onDisk, "provision-next") {
			t.Errorf("%s still has the installed key or a leftover:\n%s", m.Name, onDisk)
		}
	}

	// 2. A node's own TLS key does not open another node's engine; the
	// operator's does.
	certPEM := mustExec(t, ctx, dc, wrk.ID, "cat /etc/docker/tls/cert.pem")
	keyPEM := mustExec(t, ctx, dc, wrk.ID, "cat /etc/docker/tls/key.pem")
	pair, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(stateDir, "pki", pki.CAFile))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	nodeTLS := &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}
	stolen, err := swarm.Connect("with "+wrk.Name+"'s key", mgr.Address, nodeTLS)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stolen.Inspect(ctx); err == nil {
		t.Errorf("%s's engine accepted %s's server certificate as a client", mgr.Name, wrk.Name)
	} else {
		t.Logf("node key refused: %v", err)
	}
	stolen.Close()
	ens, _ := engines(t, stateDir)
	if _, err := ens[mgr.Name].Inspect(ctx); err != nil {
		t.Fatalf("the operator's certificate: %v", err)
	}

	// 3. Bare-metal knobs.
	sshdT := mustExec(t, ctx, dc, mgr.ID, "sshd -T -C user=backup,host=h,addr=192.0.2.1 | grep -i '^allowusers'; sshd -T -C user=carol,host=h,addr=192.0.2.1 | grep -i '^allowusers'")
	if !strings.Contains(sshdT, "allowusers backup") || !strings.Contains(sshdT, "allowusers provision") {
		t.Errorf("sshd AllowUsers:\n%s", sshdT)
	}
	// A member of ops gets in over SSH, a user outside it does not.
	userPriv, userPub := newKeyPair(t)
	mustExec(t, ctx, dc, mgr.ID, fmt.Sprintf(`groupadd -f ops
for u in carol dave; do id -u $u >/dev/null 2>&1 || useradd -m -s /bin/sh $u; install -d -m 700 -o $u -g $u /home/$u/.ssh; echo %q > /home/$u/.ssh/authorized_keys; chown $u:$u /home/$u/.ssh/authorized_keys; chmod 600 /home/$u/.ssh/authorized_keys; usermod -p '*' $u; done
usermod -aG ops carol`, userPub))
	signer, err := ssh.ParsePrivateKey(userPriv)
	if err != nil {
		t.Fatal(err)
	}
	for user, want := range map[string]bool{"carol": true, "dave": false} {
		c, err := comm.Dial(ctx, comm.Config{Host: mgr.Name, Address: mgr.Address, Port: 22, User: user, Signer: signer, HostKey: mgr.SSH.HostKey, Timeout: 10 * time.Second})
		if (err == nil) != want {
			t.Errorf("ssh as %s: %v, want allowed=%v", user, err, want)
		}
		if c != nil {
			c.Close()
		}
	}
	ruleset := mustExec(t, ctx, dc, mgr.ID, "nft list table inet provision")
	if !strings.Contains(ruleset, "ip saddr 192.0.2.0/24 tcp dport { 8080, 9100-9101 } accept") {
		t.Errorf("firewall_allow rule missing:\n%s", ruleset)
	}
	for _, m := range []struct {
		id, want string
	}{{mgr.ID, "02:00"}, {wrk.ID, "06:00"}} {
		if out := mustExec(t, ctx, dc, m.id, "grep -h Automatic-Reboot-Time /etc/apt/apt.conf.d/52provision-unattended-upgrades || true"); !strings.Contains(out, `"`+m.want+`"`) {
			t.Errorf("reboot time: %q, want %s", out, m.want)
		}
	}

	// 4. provision ssh: the remote status, whatever it is.
	for _, code := range []int{0, 2, 3, 4} {
		r := provision(t, ctx, nil, "ssh", sd, spec, mgr.Name, "--", "exit", fmt.Sprint(code))
		if r.code != code {
			t.Errorf("provision ssh -- exit %d: exit %d\n%s", code, r.code, r.stderr)
		}
	}
	if r := provision(t, ctx, nil, "ssh", sd, spec, "sec-nope-1", "--", "true"); r.code != 255 {
		t.Errorf("unknown node: exit %d", r.code)
	}

	// 5. Interrupted rotations, from state as an apply stopped at either
	// side of the switch would leave it.
	// (a) The new key pinned, the host not switched: state pins the
	// worker's current key as installed again with no next key: apply
	// makes a new key on the host, pins it, switches.
	before := secMachines(t, stateDir)[wrk.Name].SSH.HostKey
	editState(t, stateDir, wrk.Name, func(m map[string]any) { m["host_key_source"] = "installed" })
	mustProvision(t, ctx, nil, "apply", spec, sd, "--auto-approve")
	after := secMachines(t, stateDir)[wrk.Name]
	if after.HostKeySource != "host" || sameKeyLine(after.SSH.HostKey, before) {
		t.Fatalf("rotation of an installed key: %+v", after)
	}
	// (b) The host switched, state not saved: state still pins the old
	// key with the served one as next. The old key is dead, so only the
	// next one lets apply in; it finishes the record.
	served := after.SSH.HostKey
	editState(t, stateDir, wrk.Name, func(m map[string]any) {
		m["ssh"].(map[string]any)["host_key"] = before
		m["host_key_next"] = served
		m["host_key_source"] = "installed"
	})
	mustProvision(t, ctx, nil, "apply", spec, sd, "--auto-approve")
	if m := secMachines(t, stateDir)[wrk.Name]; m.HostKeySource != "host" || m.HostKeyNext != "" || !sameKeyLine(m.SSH.HostKey, served) {
		t.Fatalf("finishing a switched rotation: %+v", m)
	}
	r = mustProvision(t, ctx, nil, "apply", spec, sd, "--auto-approve")
	if !strings.Contains(r.stderr, "No changes") {
		t.Errorf("apply after the rotations was not a no-op:\n%s", r.stderr)
	}

	// 6. A new CA (the old one lost): every node certificate is reissued
	// under it and the engines trust only the new one.
	for _, f := range []string{"ca.pem", "ca-key.pem", "cert.pem", "key.pem"} {
		os.Remove(filepath.Join(stateDir, "pki", f))
	}
	mustProvision(t, ctx, nil, "apply", spec, sd, "--auto-approve")
	ens2, _ := engines(t, stateDir)
	for name, en := range ens2 {
		if _, err := en.Inspect(ctx); err != nil {
			t.Errorf("%s with the new CA: %v", name, err)
		}
	}
	newCA, _ := os.ReadFile(filepath.Join(stateDir, "pki", pki.CAFile))
	for _, m := range []secMachine{mgr, wrk} {
		if got := mustExec(t, ctx, dc, m.ID, "cat /etc/docker/tls/ca.pem"); got != string(newCA) {
			t.Errorf("%s has another CA than the operator's", m.Name)
		}
		verifyNodeCert(t, ctx, dc, m.ID, newCA)
	}

	mustProvision(t, ctx, nil, "destroy", spec, sd, "--auto-approve")
	destroyed = true
}

// verifyNodeCert checks the node's server certificate chains to ca and is
// for servers only.
func verifyNodeCert(t *testing.T, ctx context.Context, dc *client.Client, id string, caPEM []byte) {
	t.Helper()
	certPEM := mustExec(t, ctx, dc, id, "cat /etc/docker/tls/cert.pem")
	keyPEM := mustExec(t, ctx, dc, id, "cat /etc/docker/tls/key.pem")
	ca, err := x509Pool(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM))
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: ca, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("node certificate does not chain to the new CA: %v", err)
	}
	for _, u := range c.ExtKeyUsage {
		if u == x509.ExtKeyUsageClientAuth {
			t.Errorf("node certificate %s can authenticate as a client", c.Subject.CommonName)
		}
	}
}

func x509Pool(caPEM []byte) (*x509.CertPool, error) {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("no CA")
	}
	return p, nil
}

// TestBastionEngineTunnel is issue 12's bastion check on real hosts: two
// plain sshd hosts on a second container network that this machine cannot
// reach (their firewall drops everything from this machine), and a
// bastion on both networks. provision installs the engine, forms the
// swarm and reports status through the bastion alone: SSH and the engine
// API (2376) both go through it.
func TestBastionEngineTunnel(t *testing.T) {
	hostTest(t) // each local-host test has its own cluster, network and state; longest first, a few at a time (schedule_test.go)
	requireAcc(t)
	dc := dockerClient(t)
	requireImage(t, dc, engineImage, "drivers/local/image/engine.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	dir := t.TempDir()
	userPriv, userPub := newKeyPair(t)
	keyFile := filepath.Join(dir, "admin_ed25519")
	if err := os.WriteFile(keyFile, userPriv, 0o600); err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("acc-bastion-%d", time.Now().UnixNano()%100000)
	jump := startPlainHosts(t, ctx, dc, prefix+"-jump", 1, userPub)[0]
	inner := startHostsFrom(t, ctx, dc, engineImage, prefix+"-in", 2, userPub)
	innerNet := prefix + "-in-net"
	// The bastion joins the inner network.
	if err := dc.NetworkConnect(ctx, innerNet, jump.ID, nil); err != nil {
		t.Fatal(err)
	}
	// The inner hosts drop everything this machine sends them (it is the
	// network's gateway); replies to their own connections still pass.
	t.Cleanup(func() { dc.NetworkDisconnect(context.Background(), innerNet, jump.ID, true) })
	nw, err := dc.NetworkInspect(ctx, innerNet, network.InspectOptions{})
	if err != nil || len(nw.IPAM.Config) == 0 {
		t.Fatalf("inner network: %v", err)
	}
	gw := nw.IPAM.Config[0].Gateway
	for _, h := range inner {
		mustExec(t, ctx, dc, h.ID, fmt.Sprintf(`nft -f - <<'EOF'
table inet acc_isolate {
	chain input {
		type filter hook input priority -10; policy accept;
		ct state established,related accept
		ip saddr %s drop
	}
}
EOF`, gw))
	}
	for _, h := range inner {
		for _, port := range []string{"22", "2376"} {
			if c, err := net.DialTimeout("tcp", net.JoinHostPort(h.Address, port), 2*time.Second); err == nil {
				c.Close()
				t.Fatalf("%s:%s is reachable from this machine: the test would not prove anything", h.Address, port)
			}
		}
	}
	spec := fmt.Sprintf(`
name = "tunnel"
driver "generic" {
  user      = "admin"
  key_file  = %q
  host_keys = { %q = %q, %q = %q }
  bastion {
    address  = %q
    user     = "admin"
    host_key = %q
  }
}
managers {
  count = 1
  hosts = [%q]
}
workers {
  count = 1
  hosts = [%q]
}
`, keyFile, inner[0].Address, inner[0].HostKey, inner[1].Address, inner[1].HostKey, jump.Address, jump.HostKey, inner[0].Address, inner[1].Address)
	specFile := filepath.Join(dir, "tunnel.hcl")
	if err := os.WriteFile(specFile, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	sd := "--state-dir=" + filepath.Join(dir, "state")
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			provision(t, context.Background(), nil, "destroy", specFile, sd, "--auto-approve")
		}
	})
	mustProvision(t, ctx, nil, "apply", specFile, sd, "--auto-approve")
	r := mustProvision(t, ctx, nil, "status", specFile, sd, "--json")
	st := parseStatus(t, r.stdout)
	if len(st.Nodes) != 2 {
		t.Fatalf("status: %+v", st)
	}
	for _, n := range st.Nodes {
		if n.Swarm != "ready" || n.Error != "" {
			t.Errorf("status of %s through the bastion: swarm %q error %q", n.Name, n.Swarm, n.Error)
		}
	}
	r = mustProvision(t, ctx, nil, "apply", specFile, sd, "--auto-approve")
	if !strings.Contains(r.stderr, "No changes") {
		t.Errorf("second apply through the bastion was not a no-op:\n%s", r.stderr)
	}
	mustProvision(t, ctx, nil, "destroy", specFile, sd, "--auto-approve")
	destroyed = true
}
