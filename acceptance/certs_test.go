//go:build acceptance

package acceptance

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	dswarm "github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"

	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/swarm"
)

// certsState is what TestCertsLocal reads of state.json.
type certsState struct {
	PKI struct {
		CASerial     string               `json:"ca_serial"`
		ClientSerial string               `json:"client_serial"`
		Rotation     string               `json:"rotation"`
		Rotated      map[string]time.Time `json:"rotated"`
	} `json:"pki"`
	Machines []struct {
		Name       string `json:"name"`
		ID         string `json:"id"`
		Address    string `json:"address"`
		Role       string `json:"role"`
		CertSerial string `json:"cert_serial"`
		Drained    bool   `json:"drained"`
	} `json:"machines"`
}

func readCertsState(t *testing.T, dir string) certsState {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s certsState
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// pinger is a client that uses the state directory's pki/ the way the
// docker CLI does with DOCKER_CERT_PATH (the files read again for every
// call) and asks the manager's engine for its info every 300 ms. A
// refused connection while the engine restarts is expected; a TLS failure
// (a certificate not trusted either way) is what a rotation must never
// cause.
type pinger struct {
	mu                sync.Mutex
	ok, down, tlsFail int
	fails             []string
	stop              chan struct{}
	done              chan struct{}
}

func startPinger(pkiDir, name, addr string) *pinger {
	p := &pinger{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			select {
			case <-p.stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
			err := func() error {
				cfg, err := pki.ClientTLS(pkiDir)
				if err != nil {
					return err
				}
				e, err := swarm.Connect(name, addr, cfg)
				if err != nil {
					return err
				}
				defer e.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_, err = e.Info(ctx)
				return err
			}()
			p.mu.Lock()
			switch {
			case err == nil:
				p.ok++
			case regexp.MustCompile(`x509|certificate|tls: |private key does not match`).MatchString(err.Error()):
				p.tlsFail++
				if len(p.fails) < 5 {
					p.fails = append(p.fails, err.Error())
				}
			default:
				p.down++
			}
			p.mu.Unlock()
		}
	}()
	return p
}

// check stops nothing: it reports and resets the counts so far.
func (p *pinger) check(t *testing.T, what string) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	t.Logf("client during %s: %d answers, %d refused while an engine restarted, %d TLS failures", what, p.ok, p.down, p.tlsFail)
	if p.tlsFail > 0 || p.ok == 0 {
		t.Errorf("client during %s: %d TLS failures (%v), %d answers", what, p.tlsFail, p.fails, p.ok)
	}
	p.ok, p.down, p.tlsFail, p.fails = 0, 0, 0, nil
}

func (p *pinger) close() { close(p.stop); <-p.done }

// TestCertsLocal is issue 16's certificate lifecycle and swarm security on
// one manager and one worker (hardening off but for the daemon settings
// and overlay encryption, which docker-bench's sections 2, 3 and 7 look
// at): docker-bench-security's sections 2, 3 and 7 on the
// manager warn only where the README says why; `rotate certs` and `rotate
// ca` with a client that keeps working before, during and after, and a
// service that keeps its replicas; the swarm's CA and unlock key rotated;
// a manager restarted under autolock unlocked by apply, then by `provision
// unlock`.
func TestCertsLocal(t *testing.T) {
	hostTest(t) // each local-host test has its own cluster, network and state; longest first, a few at a time (schedule_test.go)
	requireAcc(t)
	dc := dockerClient(t)
	requireImage(t, dc, engineImage, "drivers/local/image/engine.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	t0 := time.Now()
	dir := t.TempDir()
	spec := filepath.Join(dir, "certs.hcl")
	if err := os.WriteFile(spec, []byte(`
name = "certs"
driver "local" { image = "provision/host:bookworm-engine" }
managers { count = 1 }
workers { count = 1 }
swarm {
  node_cert_expiry = "720h"
  autolock         = true
}
hardening {
  profile            = "off"
  daemon             = true   # docker-bench sections 2 and 3 look at the daemon's settings
  overlay_encryption = true
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(dir, "state")
	pkiDir := filepath.Join(stateDir, "pki")
	sd := "--state-dir=" + stateDir
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			provision(t, context.Background(), nil, "destroy", spec, sd, "--auto-approve")
		}
	})
	logFile := filepath.Join(dir, "apply.log")
	r := mustProvision(t, ctx, nil, "apply", spec, sd, "--auto-approve", "--log-file", logFile)
	applyOut := r.stdout + r.stderr
	st := readCertsState(t, stateDir)
	var mgr, wrk = st.Machines[0], st.Machines[1]
	if mgr.Role != "manager" {
		mgr, wrk = wrk, mgr
	}

	// Autolock is on, the key is kept 0600 and shown only when asked.
	keyFile := filepath.Join(stateDir, "swarm", "unlock-keys")
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("unlock key file: %v", err)
	}
	show := mustProvision(t, ctx, nil, "unlock", spec, sd, "--show-key")
	key := strings.TrimSpace(show.stdout)
	if !strings.HasPrefix(key, "SWMKEY-1-") {
		t.Fatalf("unlock --show-key printed %q", show.stdout)
	}
	logged, _ := os.ReadFile(logFile)
	if strings.Contains(applyOut, key) || strings.Contains(string(logged), key) {
		t.Error("the unlock key appears in apply's output or log")
	}
	ens, _ := engines(t, stateDir)
	me := ens[mgr.Name]
	sw, err := me.SwarmInspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !sw.Spec.EncryptionConfig.AutoLockManagers || sw.Spec.CAConfig.NodeCertExpiry != 720*time.Hour {
		t.Errorf("swarm spec: autolock %v, node cert expiry %s", sw.Spec.EncryptionConfig.AutoLockManagers, sw.Spec.CAConfig.NodeCertExpiry)
	}
	// This machine's kernel has no ESP (no esp4): apply says so and makes
	// the overlay network unencrypted.
	espOut := mustExec(t, ctx, dc, mgr.ID, "unshare -n ip xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1000 reqid 1 mode transport aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128 >/dev/null 2>&1 && echo esp || echo noesp")
	if strings.Contains(espOut, "noesp") != strings.Contains(applyOut, "overlay network not encrypted") {
		t.Errorf("ESP probe says %q; apply's note about it: %v", strings.TrimSpace(espOut), strings.Contains(applyOut, "overlay network not encrypted"))
	}
	ss := mustExec(t, ctx, dc, mgr.ID, "ss -lnt")
	if !strings.Contains(ss, mgr.Address+":2377") {
		t.Errorf("2377 not bound to %s:\n%s", mgr.Address, ss)
	}
	if out := mustExec(t, ctx, dc, mgr.ID, "stat -c '%a %n' /etc/docker/tls/*.pem"); !strings.Contains(out, "444 /etc/docker/tls/ca.pem") || !strings.Contains(out, "444 /etc/docker/tls/cert.pem") || !strings.Contains(out, "400 /etc/docker/tls/key.pem") {
		t.Errorf("TLS file modes:\n%s", out)
	}
	st0 := time.Now()
	dockerBenchLocal(t, ctx, dc, mgr.ID)
	t.Logf("docker-bench-security took %s", time.Since(st0).Round(time.Second))

	// A service whose replicas must stay through the rotations.
	for _, e := range ens {
		busyboxImage(t, ctx, e)
	}
	replicas := uint64(2)
	grace := time.Second
	svc, err := me.ServiceCreate(ctx, dswarm.ServiceSpec{
		Annotations: dswarm.Annotations{Name: "certs-web"},
		TaskTemplate: dswarm.TaskSpec{ContainerSpec: &dswarm.ContainerSpec{
			Image: testImage, Command: []string{"/bin/httpd", "-f", "-p", "8080"}, StopGracePeriod: &grace,
		}},
		Mode: dswarm.ServiceMode{Replicated: &dswarm.ReplicatedService{Replicas: &replicas}},
	}, dswarm.ServiceCreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	full := func(what string) {
		t.Helper()
		eventually(t, ctx, 2*time.Minute, "service at full replicas after "+what, func() error {
			ens, _ := engines(t, stateDir)
			n, err := runningTasks(ctx, ens[mgr.Name], svc.ID)
			if err == nil && n != int(replicas) {
				err = fmt.Errorf("%d of %d running", n, replicas)
			}
			return err
		})
	}
	full("create")

	p := startPinger(pkiDir, mgr.Name, mgr.Address)
	defer p.close()
	time.Sleep(time.Second)
	p.check(t, "the start")

	// rotate certs: every node certificate and the client's are new.
	rt := time.Now()
	r = mustProvision(t, ctx, nil, "rotate", "certs", spec, sd)
	t.Logf("rotate certs took %s", time.Since(rt).Round(time.Second))
	if !strings.Contains(r.stderr, "draining") {
		t.Errorf("rotate certs drained nothing:\n%s", r.stderr)
	}
	st1 := readCertsState(t, stateDir)
	for i, m := range st1.Machines {
		if m.CertSerial == st.Machines[i].CertSerial || m.Drained {
			t.Errorf("%s: certificate %s kept, or left drained (%v)", m.Name, m.CertSerial, m.Drained)
		}
	}
	if st1.PKI.ClientSerial == st.PKI.ClientSerial || st1.PKI.Rotated["certs"].IsZero() {
		t.Errorf("client certificate kept (%s), or rotation not recorded", st1.PKI.ClientSerial)
	}
	p.check(t, "rotate certs")
	full("rotate certs")

	// rotate ca: a new CA; the engines trust it alone at the end.
	rt = time.Now()
	r = mustProvision(t, ctx, nil, "rotate", "ca", spec, sd, "--json")
	t.Logf("rotate ca took %s", time.Since(rt).Round(time.Second))
	checkRotateEvents(t, r.stdout, st1)
	st2 := readCertsState(t, stateDir)
	if st2.PKI.CASerial == st1.PKI.CASerial || st2.PKI.Rotation != "" || st2.PKI.Rotated["ca"].IsZero() {
		t.Errorf("CA rotation: serial %s (was %s), phase %q", st2.PKI.CASerial, st1.PKI.CASerial, st2.PKI.Rotation)
	}
	caPEM, _ := os.ReadFile(filepath.Join(pkiDir, pki.CAFile))
	for _, m := range st2.Machines {
		onHost := mustExec(t, ctx, dc, m.ID, "cat /etc/docker/tls/ca.pem")
		if onHost != string(caPEM) || strings.Count(onHost, "BEGIN CERTIFICATE") != 1 {
			t.Errorf("%s trusts %d CAs, not the new one alone", m.Name, strings.Count(onHost, "BEGIN CERTIFICATE"))
		}
		verifyNodeCertPEM(t, mustExec(t, ctx, dc, m.ID, "cat /etc/docker/tls/cert.pem"), caPEM, m.Name)
	}
	p.check(t, "rotate ca")
	full("rotate ca")

	// The swarm's own CA and unlock key.
	mustProvision(t, ctx, nil, "rotate", "swarm-ca", spec, sd)
	mustProvision(t, ctx, nil, "rotate", "unlock-key", spec, sd)
	key2 := strings.TrimSpace(mustProvision(t, ctx, nil, "unlock", spec, sd, "--show-key").stdout)
	if key2 == key || !strings.HasPrefix(key2, "SWMKEY-1-") {
		t.Errorf("unlock key not rotated")
	}
	p.check(t, "the swarm CA and unlock key rotations")

	// A manager restarted under autolock stays locked until apply
	// unlocks it; then `provision unlock` does the same.
	for i, how := range [][]string{{"apply", spec, sd, "--auto-approve"}, {"unlock", spec, sd}} {
		mustExec(t, ctx, dc, mgr.ID, "systemctl restart docker")
		eventually(t, ctx, time.Minute, "the manager locked after its restart", func() error {
			ens, _ := engines(t, stateDir)
			info, err := ens[mgr.Name].Info(ctx)
			if err == nil && info.Swarm.LocalNodeState != dswarm.LocalNodeStateLocked {
				err = fmt.Errorf("swarm state %q", info.Swarm.LocalNodeState)
			}
			return err
		})
		r = mustProvision(t, ctx, nil, how...)
		if !strings.Contains(r.stdout+r.stderr, "unlocked") {
			t.Errorf("%s did not say it unlocked the manager:\n%s\n%s", how[0], r.stdout, r.stderr)
		}
		ens, _ := engines(t, stateDir)
		info, err := ens[mgr.Name].Info(ctx)
		if err != nil || info.Swarm.LocalNodeState != dswarm.LocalNodeStateActive || !info.Swarm.ControlAvailable {
			t.Errorf("after %s (%d): %v %+v", how[0], i, err, info.Swarm)
		}
	}
	p.check(t, "the locked manager")
	full("the manager restarts")

	r = mustProvision(t, ctx, nil, "apply", spec, sd, "--auto-approve")
	if !strings.Contains(r.stderr, "No changes") {
		t.Errorf("apply after the rotations changed something:\n%s", r.stderr)
	}
	mustProvision(t, ctx, nil, "destroy", spec, sd, "--auto-approve")
	destroyed = true
	t.Logf("TestCertsLocal took %s", time.Since(t0).Round(time.Second))
}

// verifyNodeCertPEM checks a node's certificate file against the CA alone.
func verifyNodeCertPEM(t *testing.T, certPEM string, caPEM []byte, name string) {
	t.Helper()
	blk, _ := pem.Decode([]byte(certPEM))
	if blk == nil {
		t.Fatalf("%s: no certificate", name)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool, DNSName: name}); err != nil {
		t.Errorf("%s's certificate does not verify against the new CA: %v", name, err)
	}
}

// benchJustified are the docker-bench-security warnings in sections 2, 3
// and 7 that the README's "docker-bench-security" list explains one by
// one; any other warning fails the test.
var benchJustified = map[string]string{
	"2.9":  "user namespaces: off by default (hardening.user_namespaces)",
	"2.12": "no authorization plugin",
	"2.13": "remote logging is a spec choice (logging.driver)",
	"7.3":  "the kernel has no ESP data path (this machine), or the ingress network",
}

// dockerBenchLocal copies docker-bench-security into a provisioned host
// (a container here) and runs sections 2, 3 and 7 there.
func dockerBenchLocal(t *testing.T, ctx context.Context, dc *client.Client, id string) {
	t.Helper()
	src := os.Getenv("PROVISION_DOCKER_BENCH")
	if src == "" {
		for _, p := range []string{filepath.Join(repoRoot(t), "..", "shared", "tools", "docker-bench-security"), "/work/shared/tools/docker-bench-security"} {
			if _, err := os.Stat(filepath.Join(p, "docker-bench-security.sh")); err == nil {
				src = p
				break
			}
		}
	}
	if src == "" {
		t.Log("docker-bench-security not found (set PROVISION_DOCKER_BENCH): not run")
		return
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".sh") {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if err := tw.WriteHeader(&tar.Header{Name: "provision-bench/" + rel, Mode: 0o755, Size: int64(len(b))}); err != nil {
			return err
		}
		_, err = tw.Write(b)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = dc.CopyToContainer(ctx, id, "/tmp", &buf, container.CopyToContainerOptions{})
	}
	if err != nil {
		t.Fatalf("copy docker-bench-security: %v", err)
	}
	defer execOut(context.WithoutCancel(ctx), dc, id, "rm -rf /tmp/provision-bench")
	out, err := execOut(ctx, dc, id, "cd /tmp/provision-bench && bash docker-bench-security.sh -b -c docker_daemon_configuration,docker_daemon_files,docker_swarm_configuration 2>&1")
	if err != nil {
		t.Fatalf("docker-bench-security: %v\n%s", err, out)
	}
	var warns []string
	for _, l := range strings.Split(out, "\n") {
		m := regexp.MustCompile(`^\[WARN\] (\d+\.\d+) `).FindStringSubmatch(l)
		if m == nil {
			continue
		}
		warns = append(warns, m[1])
		if why, ok := benchJustified[m[1]]; ok {
			t.Logf("  justified: %s (%s)", l, why)
		} else {
			t.Errorf("docker-bench-security warns, and the README does not say why: %s", l)
		}
	}
	slices.Sort(warns)
	score := regexp.MustCompile(`Score: (-?\d+)`).FindStringSubmatch(out)
	t.Logf("docker-bench-security sections 2, 3, 7 on the manager: warnings %v, score %v", warns, score)
	if score == nil {
		t.Fatalf("docker-bench-security printed no summary:\n%s", out)
	}
}

// checkRotateEvents reads `rotate ca --json`'s stdout: one JSON event a
// line, every node's engine certificate step changed (each node got the new
// CA's certificate), and a last summary event naming no failure.
func checkRotateEvents(t *testing.T, stdout string, st certsState) {
	t.Helper()
	type ev struct {
		Kind    string `json:"kind"`
		Host    string `json:"host"`
		Step    string `json:"step"`
		Summary *struct {
			Command string   `json:"command"`
			Failed  []string `json:"failed"`
		} `json:"summary"`
	}
	var evs []ev
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var e ev
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("rotate ca --json: not one event a line: %q: %v", line, err)
		}
		evs = append(evs, e)
	}
	changed := map[string]bool{}
	for _, e := range evs {
		if e.Kind == "step_changed" && e.Step == "engine.tls" {
			changed[e.Host] = true
		}
	}
	for _, m := range st.Machines {
		if !changed[m.Name] {
			t.Errorf("rotate ca --json: no engine.tls change event for %s", m.Name)
		}
	}
	if len(evs) == 0 || evs[len(evs)-1].Kind != "summary" || evs[len(evs)-1].Summary == nil || len(evs[len(evs)-1].Summary.Failed) > 0 {
		t.Errorf("rotate ca --json: the last event is not a clean summary: %+v", evs[len(evs)-1:])
	}
}
