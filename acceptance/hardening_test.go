//go:build acceptance

package acceptance

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	dswarm "github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers/local"
	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/swarm"
)

// hardSpec is the hardening test's cluster: one manager, one worker, tiny
// log files and a prune filter of one second so the tests see them act.
const hardSpec = `name = "hardacc"

driver "local" {}

managers {
  count = 1
}

workers {
  count = 1
}

logging {
  driver  = %q
  options = %s
}

prune {
  schedule = "daily"
  until    = "1s"
}

hardening {
  overlay_encryption = true
}
`

// hardMachine is the part of state.json the hardening test reads.
type hardMachine struct {
	Name    string `json:"name"`
	ID      string `json:"id"`
	Address string `json:"address"`
	Role    string `json:"role"`
	SSH     struct {
		User    string `json:"user"`
		HostKey string `json:"host_key"`
	} `json:"ssh"`
}

// TestHardening proves issue 5's six checks on hosts made by `provision
// apply` with the local driver: SSH, sysctls, firewall against a non-member,
// log rotation and journald, the prune service, an SSH change rolled back,
// and the Lynis index of a provisioned host against a plain one.
func TestHardening(t *testing.T) {
	hostTest(t) // each local-host test has its own cluster, network and state; longest first, a few at a time (schedule_test.go)
	requireAcc(t)
	dc := dockerClient(t)
	requireImage(t, dc, local.DefaultImage, "drivers/local/image/build.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()

	// The plain host (same image, docker.io from apt, no hardening) is
	// measured while the cluster is built.
	plainName := fmt.Sprintf("hardacc-plain-%d", time.Now().UnixNano()%1e6)
	t.Cleanup(func() {
		dc.ContainerRemove(context.Background(), plainName, container.RemoveOptions{Force: true, RemoveVolumes: true})
		dc.NetworkRemove(context.Background(), plainName)
	})
	plain := make(chan plainResult, 1)
	go func() { plain <- plainHostLynis(ctx, dc, plainName) }()

	dir := t.TempDir()
	specPath := filepath.Join(dir, "hardacc.hcl")
	writeHardSpec(t, specPath, "json-file", `{ max-size = "1k", max-file = "3" }`)
	stateDir := filepath.Join(dir, "state")
	sd := "--state-dir=" + stateDir
	clusterID := ""
	t.Cleanup(func() {
		provision(t, context.Background(), nil, "destroy", specPath, sd, "--auto-approve")
		if clusterID == "" {
			return
		}
		if left := leftovers(t, dc, clusterID); len(left) > 0 {
			t.Errorf("destroy left: %v", left)
		}
	})
	r := mustProvision(t, ctx, nil, "apply", specPath, sd, "--auto-approve")
	t.Logf("apply took %s", r.took)
	clusterID = readState(t, stateDir).ClusterID

	ms := hardMachines(t, stateDir)
	var mgr, wrk hardMachine
	for _, m := range ms {
		if m.Role == "manager" {
			mgr = m
		} else {
			wrk = m
		}
	}
	if mgr.Name == "" || wrk.Name == "" {
		t.Fatalf("want a manager and a worker in state, have %+v", ms)
	}
	signer := adminSigner(t, stateDir)
	ens, _ := engines(t, stateDir)

	t.Run("ssh_and_sysctl", func(t *testing.T) { checkSSHHardening(t, ctx, dc, wrk, signer) })
	t.Run("firewall", func(t *testing.T) { checkFirewall(t, ctx, dc, ens, mgr, wrk) })
	t.Run("overlay_encryption", func(t *testing.T) {
		n, err := ens[mgr.Name].NetworkInspect(ctx, "hardacc-overlay", network.InspectOptions{})
		if err != nil {
			t.Fatalf("the cluster's overlay network: %v", err)
		}
		if n.Driver != "overlay" || !n.Attachable {
			t.Errorf("hardacc-overlay: driver %s, attachable %v; want an attachable overlay", n.Driver, n.Attachable)
		}
		// Encrypted where every member's kernel has the IPsec ESP data
		// path; otherwise unencrypted, and apply says which kernel lacks it
		// (an encrypted overlay there would drop traffic between nodes).
		_, enc := n.Options["encrypted"]
		noESP := strings.Contains(r.stdout+r.stderr, "overlay network not encrypted: the kernel of")
		switch {
		case !enc && !noESP:
			t.Errorf("hardacc-overlay is not encrypted and apply said nothing about ESP: options %v", n.Options)
		case enc && noESP:
			t.Errorf("hardacc-overlay is encrypted although apply said a kernel lacks ESP: options %v", n.Options)
		case !enc:
			t.Logf("overlay left unencrypted: a member's kernel has no ESP data path (apply said so)")
		}
	})
	t.Run("log_rotation", func(t *testing.T) { checkLogRotation(t, ctx, dc, ens[wrk.Name], wrk) })

	// Switch the engine's log driver to journald: engine.config rewrites
	// daemon.json and restarts the engines.
	writeHardSpec(t, specPath, "journald", `{}`)
	mustProvision(t, ctx, nil, "apply", specPath, sd, "--auto-approve")
	t.Run("journald", func(t *testing.T) { checkJournald(t, ctx, dc, ens[wrk.Name], wrk) })
	t.Run("prune", func(t *testing.T) { checkPrune(t, ctx, dc, ens[wrk.Name], wrk) })
	t.Run("status_prune", func(t *testing.T) {
		r := mustProvision(t, ctx, nil, "status", specPath, sd, "--json")
		for _, n := range parseStatus(t, r.stdout).Nodes {
			if n.Name != wrk.Name {
				continue
			}
			if n.PruneLastRun == "" || n.PruneReclaimed == "" {
				t.Errorf("status does not show the prune run on %s: %+v", n.Name, n)
			}
			return
		}
		t.Errorf("status lacks %s:\n%s", wrk.Name, r.stdout)
	})
	t.Run("ssh_rollback", func(t *testing.T) { checkSSHRollback(t, ctx, dc, specPath, sd, wrk, signer) })

	t.Run("audit", func(t *testing.T) {
		// One provisioned host against the plain one: the manager, which the
		// SSH rollback above left alone (three Lynis runs at once were a
		// third of this test's time on a loaded CI machine).
		r := mustProvision(t, ctx, nil, "audit", specPath, sd, mgr.Name, "--json")
		var out struct {
			Hosts []struct {
				Name     string   `json:"name"`
				Index    int      `json:"hardening_index"`
				Warnings []string `json:"warnings"`
				Error    string   `json:"error"`
			} `json:"hosts"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
			t.Fatalf("audit --json: %v\n%s", err, r.stdout)
		}
		for _, h := range out.Hosts {
			t.Logf("Lynis hardening index: provisioned %s %d (warnings %v)", h.Name, h.Index, h.Warnings)
		}
		p := <-plain
		if p.err != nil {
			t.Fatalf("plain host: %v", p.err)
		}
		t.Logf("Lynis hardening index: plain host %d (%d tests, %d warnings, %d suggestions)", p.rep.Index, p.rep.Tests, len(p.rep.Warnings), len(p.rep.Suggestions))
		if len(out.Hosts) != 1 || out.Hosts[0].Name != mgr.Name {
			t.Fatalf("audit reported %d hosts, want %s alone:\n%s", len(out.Hosts), mgr.Name, r.stdout)
		}
		for _, h := range out.Hosts {
			if h.Error != "" || h.Index < 80 || h.Index <= p.rep.Index {
				t.Errorf("%s: index %d (error %q); want at least 80 and above the plain host's %d", h.Name, h.Index, h.Error, p.rep.Index)
			}
		}
	})
}

func writeHardSpec(t *testing.T, path, driver, options string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(fmt.Sprintf(hardSpec, driver, options)), 0o644); err != nil {
		t.Fatal(err)
	}
}

func hardMachines(t *testing.T, stateDir string) []hardMachine {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stateDir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s struct {
		Machines []hardMachine `json:"machines"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s.Machines
}

func adminSigner(t *testing.T, stateDir string) ssh.Signer {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stateDir, "ssh", "id_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sshDial logs in to a node with its pinned host key.
func sshDial(m hardMachine, user string, auth ...ssh.AuthMethod) (*ssh.Client, error) {
	hk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(m.SSH.HostKey))
	if err != nil {
		return nil, fmt.Errorf("host key of %s in state: %w", m.Name, err)
	}
	return ssh.Dial("tcp", net.JoinHostPort(m.Address, "22"), &ssh.ClientConfig{
		User: user, Auth: auth, HostKeyCallback: ssh.FixedHostKey(hk), Timeout: 10 * time.Second,
	})
}

func sshRun(c *ssh.Client, cmd string) (string, error) {
	s, err := c.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	out, err := s.CombinedOutput(cmd)
	return string(out), err
}

// rootRun runs a shell script as root on a node through the machine's
// engine (docker exec), independent of SSH.
func rootRun(ctx context.Context, dc *client.Client, m hardMachine, script string) (string, error) {
	return runIn(ctx, dc, m.ID, []string{"sh", "-c", script})
}

// checkSSHHardening is issue 5's test 1.
func checkSSHHardening(t *testing.T, ctx context.Context, dc *client.Client, m hardMachine, signer ssh.Signer) {
	// Key login as the admin user works.
	c, err := sshDial(m, m.SSH.User, ssh.PublicKeys(signer))
	if err != nil {
		t.Fatalf("key login as %s: %v", m.SSH.User, err)
	}
	defer c.Close()

	// Password and keyboard-interactive are not even offered: the client
	// only calls these back when the server lists the method.
	asked := ""
	pw := ssh.PasswordCallback(func() (string, error) { asked += "password "; return "not-the-password", nil })
	kbd := ssh.KeyboardInteractive(func(string, string, []string, []bool) ([]string, error) {
		asked += "keyboard-interactive "
		return nil, fmt.Errorf("no answers")
	})
	for _, user := range []string{m.SSH.User, "root"} {
		if pc, err := sshDial(m, user, pw, kbd); err == nil {
			pc.Close()
			t.Errorf("password login as %s succeeded", user)
		}
	}
	if asked != "" {
		t.Errorf("sshd offered %s", asked)
	}

	// Root is refused even with an authorized key.
	if out, err := sshRun(c, "sudo -n install -d -m 700 /root/.ssh && sudo -n cp ~/.ssh/authorized_keys /root/.ssh/authorized_keys"); err != nil {
		t.Fatalf("give root the admin key: %v %s", err, out)
	}
	defer sshRun(c, "sudo -n rm -f /root/.ssh/authorized_keys")
	if rc, err := sshDial(m, "root", ssh.PublicKeys(signer)); err == nil {
		rc.Close()
		t.Error("root login with an authorized key succeeded")
	} else if !strings.Contains(err.Error(), "unable to authenticate") {
		t.Errorf("root login failed for another reason than authentication: %v", err)
	}

	// sshd -T: the effective settings.
	out, err := sshRun(c, "sudo -n sshd -T")
	if err != nil {
		t.Fatalf("sshd -T: %v %s", err, out)
	}
	eff := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(l), " ")
		eff[k] = v
	}
	for k, want := range map[string]string{
		"permitrootlogin": "no", "passwordauthentication": "no", "kbdinteractiveauthentication": "no",
		"pubkeyauthentication": "yes", "permitemptypasswords": "no", "allowusers": m.SSH.User,
		"x11forwarding": "no", "allowtcpforwarding": "no", "allowagentforwarding": "no", "permittunnel": "no",
		"maxauthtries": "3", "logingracetime": "30",
	} {
		if eff[k] != want {
			t.Errorf("sshd -T: %s is %q, want %q", k, eff[k], want)
		}
	}
	for _, weak := range []string{"cbc", "hmac-sha1", "diffie-hellman-group1-", "diffie-hellman-group14-sha1"} {
		for _, k := range []string{"ciphers", "macs", "kexalgorithms"} {
			if strings.Contains(eff[k], weak) {
				t.Errorf("sshd -T: %s allows %s: %s", k, weak, eff[k])
			}
		}
	}

	// Sysctls in force. In a container only the network namespace's keys are
	// the host's own; kernel.* and fs.* are the machine's kernel and are
	// written to the drop-in for when it runs on its own kernel.
	want := map[string]string{
		"net.ipv4.conf.all.accept_redirects": "0", "net.ipv4.conf.all.send_redirects": "0",
		"net.ipv4.conf.all.secure_redirects": "0", "net.ipv4.conf.all.accept_source_route": "0",
		"net.ipv4.conf.all.rp_filter": "2", "net.ipv4.conf.all.log_martians": "1",
		"net.ipv4.tcp_syncookies": "1", "net.ipv4.icmp_echo_ignore_broadcasts": "1",
		"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.accept_redirects": "0",
	}
	for k, v := range want {
		got, err := sshRun(c, "cat /proc/sys/"+strings.ReplaceAll(k, ".", "/"))
		if err != nil || strings.TrimSpace(got) != v {
			t.Errorf("sysctl %s = %q (%v), want %s", k, strings.TrimSpace(got), err, v)
		}
	}
	dropin, err := sshRun(c, "cat "+hostos.PathSysctl)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"kernel.kptr_restrict = 2", "kernel.dmesg_restrict = 1", "fs.protected_symlinks = 1", "fs.suid_dumpable = 0"} {
		if !strings.Contains(dropin, l) {
			t.Errorf("%s lacks %q", hostos.PathSysctl, l)
		}
	}
}

// checkFirewall is issue 5's test 2. The non-member is a container the test
// starts on the cluster's network: on a different Docker network it could not
// route to the nodes at all (Docker isolates bridge networks from each other),
// so nothing would be proven about the hosts' firewall. Here it can reach the
// nodes (SSH answers), but it is not in the peer sets.
func checkFirewall(t *testing.T, ctx context.Context, dc *client.Client, ens map[string]*swarm.Engine, mgr, wrk hardMachine) {
	ci, err := dc.ContainerInspect(ctx, mgr.ID)
	if err != nil {
		t.Fatal(err)
	}
	netName := ci.Config.Labels[local.TagNetwork]
	if netName == "" {
		t.Fatalf("manager container has no %s label", local.TagNetwork)
	}
	outsider := startContainer(t, ctx, dc, "hardacc-outsider", netName, &container.Config{Image: local.DefaultImage, Cmd: []string{"sleep", "infinity"}}, &container.HostConfig{})

	tcp := func(from execer, id, ip string, port int) error {
		_, err := runIn(ctx, from, id, []string{"timeout", "4", "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d", ip, port)})
		return err
	}
	// Controls: the outsider routes to the nodes, and members reach the
	// swarm ports (they listen).
	for _, m := range []hardMachine{mgr, wrk} {
		if err := tcp(dc, outsider, m.Address, 22); err != nil {
			t.Fatalf("outsider cannot reach %s:22, so it proves nothing: %v", m.Name, err)
		}
	}
	if err := tcp(dc, wrk.ID, mgr.Address, 2377); err != nil {
		t.Errorf("member %s cannot reach the manager's 2377: %v", wrk.Name, err)
	}
	if err := tcp(dc, mgr.ID, wrk.Address, 7946); err != nil {
		t.Errorf("member %s cannot reach %s:7946: %v", mgr.Name, wrk.Name, err)
	}
	// The non-member does not.
	for _, c := range []struct {
		m    hardMachine
		port int
	}{{mgr, 2377}, {mgr, 7946}, {wrk, 7946}, {mgr, hostos.EnginePort}, {wrk, hostos.EnginePort}} {
		if err := tcp(dc, outsider, c.m.Address, c.port); err == nil {
			t.Errorf("non-member reached %s:%d", c.m.Name, c.port)
		}
	}

	// A published service port stays reachable through the engine's own
	// NAT. The routing mesh (ingress) needs IPVS in the kernel; where the
	// machine's kernel has none, publish in host mode on every node instead.
	for _, e := range ens {
		busyboxImage(t, ctx, e)
	}
	mode := dswarm.PortConfigPublishModeIngress
	svcMode := dswarm.ServiceMode{Replicated: &dswarm.ReplicatedService{Replicas: ptrU64(1)}}
	if _, err := rootRun(ctx, dc, mgr, "test -e /proc/net/ip_vs"); err != nil {
		t.Logf("this kernel has no IPVS (/proc/net/ip_vs missing): the routing mesh cannot run here; publishing in host mode on every node")
		mode = dswarm.PortConfigPublishModeHost
		svcMode = dswarm.ServiceMode{Global: &dswarm.GlobalService{}}
	}
	me := ens[mgr.Name]
	svc, err := me.ServiceCreate(ctx, dswarm.ServiceSpec{
		Annotations: dswarm.Annotations{Name: "hardacc-web"},
		TaskTemplate: dswarm.TaskSpec{
			ContainerSpec: &dswarm.ContainerSpec{Image: testImage, Command: []string{"/bin/httpd", "-f", "-p", "8080", "-h", "/www"}},
		},
		Mode: svcMode,
		EndpointSpec: &dswarm.EndpointSpec{Ports: []dswarm.PortConfig{
			{Protocol: dswarm.PortConfigProtocolTCP, TargetPort: 8080, PublishedPort: 30080, PublishMode: mode},
		}},
	}, dswarm.ServiceCreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	defer me.ServiceRemove(context.Background(), svc.ID)
	for _, m := range []hardMachine{mgr, wrk} {
		eventually(t, ctx, 90*time.Second, "published port on "+m.Name+" reachable from the non-member", func() error {
			out, err := runIn(ctx, dc, outsider, []string{"timeout", "5", "bash", "-c",
				fmt.Sprintf(`exec 3<>/dev/tcp/%s/30080 && printf 'GET /index.html HTTP/1.0\r\n\r\n' >&3 && cat <&3`, m.Address)})
			if err != nil {
				return err
			}
			if !strings.Contains(out, "provision-acceptance") {
				return fmt.Errorf("unexpected answer %q", out)
			}
			return nil
		})
	}
}

func ptrU64(v uint64) *uint64 { return &v }

// startContainer creates and starts a container on the machine's engine and
// removes it (with its anonymous volumes) when the test ends.
func startContainer(t *testing.T, ctx context.Context, dc *client.Client, name, netName string, cfg *container.Config, hc *container.HostConfig) string {
	t.Helper()
	name = fmt.Sprintf("%s-%d", name, time.Now().UnixNano()%1e6)
	var nc *network.NetworkingConfig
	if netName != "" {
		hc.NetworkMode = container.NetworkMode(netName)
		nc = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{netName: {}}}
	}
	resp, err := dc.ContainerCreate(ctx, cfg, hc, nc, nil, name)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	t.Cleanup(func() {
		dc.ContainerRemove(context.Background(), resp.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
	})
	if err := dc.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	return resp.ID
}

// runOnNode runs a busybox container on a node's engine, waiting for it to
// exit when wait is set; it is removed when the test ends.
func runOnNode(t *testing.T, ctx context.Context, e *swarm.Engine, name string, cmd []string, wait bool) string {
	t.Helper()
	resp, err := e.ContainerCreate(ctx, &container.Config{Image: testImage, Cmd: cmd}, &container.HostConfig{}, nil, nil, name)
	if err != nil {
		t.Fatalf("%s: create %s: %v", e.Name, name, err)
	}
	t.Cleanup(func() {
		e.ContainerRemove(context.Background(), resp.ID, container.RemoveOptions{Force: true})
	})
	if err := e.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		t.Fatalf("%s: start %s: %v", e.Name, name, err)
	}
	if wait {
		okc, errc := e.ContainerWait(ctx, resp.ID, container.WaitConditionNotRunning)
		select {
		case <-okc:
		case err := <-errc:
			t.Fatalf("%s: wait %s: %v", e.Name, name, err)
		}
	}
	return resp.ID
}

// checkLogRotation is issue 5's test 3, json-file half: max-size is 1k.
func checkLogRotation(t *testing.T, ctx context.Context, dc *client.Client, e *swarm.Engine, m hardMachine) {
	id := runOnNode(t, ctx, e, "hardacc-chatty", []string{"/bin/sh", "-c",
		`for i in $(/bin/busybox seq 1 400); do echo "hardacc log line $i: some padding to fill the log file quickly"; done; sleep 3600`}, false)
	dir := "/var/lib/docker/containers/" + id
	eventually(t, ctx, 30*time.Second, "rotated log files on "+m.Name, func() error {
		out, err := rootRun(ctx, dc, m, "ls -l "+dir+" | grep -- '-json.log'")
		if err != nil {
			return err
		}
		if !strings.Contains(out, id+"-json.log.1") || !strings.Contains(out, id+"-json.log.2") {
			return fmt.Errorf("no rotated files:\n%s", out)
		}
		if strings.Contains(out, id+"-json.log.3") {
			return fmt.Errorf("more files than max-file=3:\n%s", out)
		}
		return nil
	})
	// No file grew much past max-size (1k; one line may overshoot it).
	out, err := rootRun(ctx, dc, m, "find "+dir+" -name '*-json.log*' -size +4k")
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("log files over max-size: %q %v", out, err)
	}
}

// checkJournald is issue 5's test 3, journald half (after the second apply).
func checkJournald(t *testing.T, ctx context.Context, dc *client.Client, e *swarm.Engine, m hardMachine) {
	info, err := e.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.LoggingDriver != "journald" {
		t.Fatalf("%s: engine log driver is %q after the apply, want journald", m.Name, info.LoggingDriver)
	}
	marker := fmt.Sprintf("hardacc-journald-%d", time.Now().UnixNano())
	runOnNode(t, ctx, e, "hardacc-journal", []string{"/bin/echo", marker}, true)
	eventually(t, ctx, 30*time.Second, "container line in the journal on "+m.Name, func() error {
		out, err := rootRun(ctx, dc, m, "journalctl --no-pager -o cat CONTAINER_NAME=hardacc-journal")
		if err != nil {
			return err
		}
		if !strings.Contains(out, marker) {
			return fmt.Errorf("journal has no %q:\n%s", marker, out)
		}
		return nil
	})
}

// checkPrune is issue 5's test 4 (prune until=1s, volumes off by default).
func checkPrune(t *testing.T, ctx context.Context, dc *client.Client, e *swarm.Engine, m hardMachine) {
	stopped := runOnNode(t, ctx, e, "hardacc-stopped", []string{"/bin/sh", "-c", "exit 0"}, true)
	running := runOnNode(t, ctx, e, "hardacc-running", []string{"/bin/sleep", "3600"}, false)
	vol, err := e.VolumeCreate(ctx, volume.CreateOptions{Name: "hardacc-keep"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.VolumeRemove(context.Background(), vol.Name, true) })
	// A dangling image: imported without a name.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	body := []byte(fmt.Sprintf("dangling %d\n", time.Now().UnixNano()))
	tw.WriteHeader(&tar.Header{Name: "dangling.txt", Mode: 0o644, Size: int64(len(body))})
	tw.Write(body)
	tw.Close()
	rc, err := e.ImageImport(ctx, image.ImportSource{Source: &buf, SourceName: "-"}, "", image.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var imp struct {
		Status string `json:"status"`
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	json.Unmarshal(bytes.TrimSpace(b), &imp)
	dangling := strings.TrimSpace(imp.Status)
	if _, err := e.ImageInspect(ctx, dangling); err != nil {
		t.Fatalf("dangling image %q: %v (import said %s)", dangling, err, b)
	}
	// Older than the filter (1s), then the service by hand.
	time.Sleep(2 * time.Second)
	if out, err := rootRun(ctx, dc, m, "systemctl start provision-prune.service"); err != nil {
		log, _ := rootRun(ctx, dc, m, "journalctl --no-pager -o cat -u provision-prune.service -n 20")
		t.Fatalf("prune service: %v %s\n%s", err, out, log)
	}
	if _, err := e.ContainerInspect(ctx, stopped); !errdefs.IsNotFound(err) {
		t.Errorf("stopped container survived the prune (%v)", err)
	}
	if _, err := e.ImageInspect(ctx, dangling); !errdefs.IsNotFound(err) {
		t.Errorf("dangling image survived the prune (%v)", err)
	}
	if c, err := e.ContainerInspect(ctx, running); err != nil || !c.State.Running {
		t.Errorf("running container was touched by the prune: %v", err)
	}
	if _, err := e.VolumeInspect(ctx, vol.Name); err != nil {
		t.Errorf("volume removed by the prune: %v", err)
	}
	log, _ := rootRun(ctx, dc, m, "journalctl --no-pager -o cat -u provision-prune.service")
	if !strings.Contains(log, "Total reclaimed space") {
		t.Errorf("prune journal does not say what it freed:\n%s", log)
	}
}

// checkSSHRollback is issue 5's test 5. The host's sshd drop-in has been
// hand-edited to read keys from /etc/ssh/authorized_keys/%u, where the admin
// key now lives: provision's own drop-in (which does not set
// AuthorizedKeysFile) would lock the admin out. apply must notice with a
// fresh login, put the edited file back and stop; the host stays reachable.
func checkSSHRollback(t *testing.T, ctx context.Context, dc *client.Client, specPath, sd string, m hardMachine, signer ssh.Signer) {
	home := "/home/" + m.SSH.User
	setup := fmt.Sprintf(`set -e
{ cat %[1]s; echo 'AuthorizedKeysFile /etc/ssh/authorized_keys/%%u'; } > %[1]s.new
mv %[1]s.new %[1]s
install -d -m 755 /etc/ssh/authorized_keys
mv %[2]s/.ssh/authorized_keys /etc/ssh/authorized_keys/%[3]s
chmod 644 /etc/ssh/authorized_keys/%[3]s
sshd -t
systemctl reload ssh.service
`, hostos.PathSSHD, home, m.SSH.User)
	if out, err := rootRun(ctx, dc, m, setup); err != nil {
		t.Fatalf("set up the hand edit: %v %s", err, out)
	}
	login := func() error {
		var err error
		for i := 0; i < 10; i++ { // sshd re-executes on reload
			var c *ssh.Client
			if c, err = sshDial(m, m.SSH.User, ssh.PublicKeys(signer)); err == nil {
				_, err = sshRun(c, "true")
				c.Close()
				return err
			}
			time.Sleep(300 * time.Millisecond)
		}
		return err
	}
	if err := login(); err != nil {
		t.Fatalf("key login with the hand-edited config: %v", err)
	}
	edited, _ := rootRun(ctx, dc, m, "cat "+hostos.PathSSHD)

	r := provision(t, ctx, nil, "apply", specPath, sd, "--auto-approve")
	if r.code == 0 {
		t.Fatalf("apply succeeded although its sshd change locks the admin out:\n%s", r.stderr)
	}
	for _, l := range strings.Split(r.stderr, "\n") {
		if strings.Contains(l, "rolled back") {
			t.Logf("apply said: %s", strings.TrimSpace(l))
		}
	}
	if !strings.Contains(r.stderr, "rolled back") || !strings.Contains(r.stderr, "harden.ssh") {
		t.Errorf("apply does not say the sshd change was rolled back:\n%s", r.stderr)
	}
	if err := login(); err != nil {
		t.Errorf("host unreachable after the rollback: %v", err)
	}
	now, _ := rootRun(ctx, dc, m, "cat "+hostos.PathSSHD+"; ls "+hostos.PathSSHD+".provision-bak 2>&1 || true")
	if !strings.HasPrefix(now, edited) || !strings.Contains(now, "No such file") {
		t.Errorf("the hand-edited drop-in was not restored (or the backup left behind):\nbefore:\n%s\nafter:\n%s", edited, now)
	}

	// With the key also back in its usual place, provision's drop-in no
	// longer locks anyone out and apply converges.
	if out, err := rootRun(ctx, dc, m, fmt.Sprintf("install -m 600 -o %[1]s -g %[1]s /etc/ssh/authorized_keys/%[1]s %[2]s/.ssh/authorized_keys", m.SSH.User, home)); err != nil {
		t.Fatalf("put the key back: %v %s", err, out)
	}
	mustProvision(t, ctx, nil, "apply", specPath, sd, "--auto-approve")
	if out, err := rootRun(ctx, dc, m, "rm -rf /etc/ssh/authorized_keys"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if out, _ := rootRun(ctx, dc, m, "sshd -T | grep -i '^authorizedkeysfile'"); strings.Contains(out, "/etc/ssh/authorized_keys") {
		t.Errorf("provision's drop-in not in force after the second apply: %s", out)
	}
	if err := login(); err != nil {
		t.Errorf("login after the converging apply: %v", err)
	}
}

// plainResult is the plain host's Lynis report.
type plainResult struct {
	rep hostos.LynisReport
	err error
}

// plainHostLynis starts the host image the way the local driver does, installs
// the engine with apt's defaults and nothing else, and runs the same Lynis
// script as `provision audit`.
// The caller removes the container and network named name.
func plainHostLynis(ctx context.Context, dc *client.Client, name string) plainResult {
	if _, err := dc.NetworkCreate(ctx, name, network.CreateOptions{Driver: "bridge"}); err != nil {
		return plainResult{err: err}
	}
	info, err := dc.Info(ctx)
	if err != nil {
		return plainResult{err: err}
	}
	cfg, hc, nc := local.SystemContainer(local.DefaultImage, "", name, "", info.CgroupVersion == "2")
	resp, err := dc.ContainerCreate(ctx, cfg, hc, nc, nil, name)
	if err != nil {
		return plainResult{err: err}
	}
	if err := dc.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		return plainResult{err: err}
	}
	setup := `set -e
for i in $(seq 1 60); do s=$(systemctl is-system-running 2>/dev/null || true); case "$s" in running|degraded) break;; esac; sleep 0.5; done
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq docker.io >/dev/null 2>&1
systemctl is-active docker.service
# The image has no host keys (drivers install their own): make the distro's.
ssh-keygen -A >/dev/null
mkdir -p /run/sshd
systemctl reset-failed ssh.service || true
systemctl restart ssh.service
systemctl is-active ssh.service
`
	if out, err := runIn(ctx, dc, resp.ID, []string{"sh", "-c", setup}); err != nil {
		return plainResult{err: fmt.Errorf("plain host setup: %v\n%s", err, out)}
	}
	out, err := runIn(ctx, dc, resp.ID, []string{"sh", "-c", hostos.LynisScript})
	if err != nil {
		return plainResult{err: fmt.Errorf("lynis on the plain host: %v", err)}
	}
	rep, err := hostos.ParseLynisReport([]byte(out))
	return plainResult{rep: rep, err: err}
}
