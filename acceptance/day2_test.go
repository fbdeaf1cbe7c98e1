//go:build acceptance

package acceptance

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/filters"
	dswarm "github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/swarm"
)

// day2Spec has every setting the day-2 checks change as a variable: the
// managers' and workers' size (the local driver's CPU and memory limits:
// a change needs new machines), the worker count and the workers' labels.
const day2Spec = `
variable "msize" {
  type    = string
  default = ""
}
variable "wsize" {
  type    = string
  default = ""
}
variable "workers" {
  type    = number
  default = 2
}
variable "labels" {
  type    = map(string)
  default = { zone = "a" }
}
name = "day2"
driver "local" { image = "provision/host:bookworm-engine" }
managers {
  count = 3
  size  = var.msize
}
workers {
  count  = var.workers
  size   = var.wsize
  labels = var.labels
}
`

const (
	day2Service  = "day2-web"
	day2Config   = "day2-config"
	day2Secret   = "day2-secret"
	day2Replicas = 4
	day2Port     = 30080
)

// day2 is the cluster TestDay2's checks share.
type day2 struct {
	dc        *client.Client
	spec      string
	stateDir  string
	clusterID string
	vars      map[string]string
	// svc and replicas are the service watch samples (day2Service,
	// day2Replicas when empty).
	svc      string
	replicas int
}

func (d *day2) service() (string, int) {
	if d.svc != "" {
		return d.svc, d.replicas
	}
	return day2Service, day2Replicas
}

// day2State is the part of state.json these checks read, retiring
// generations included.
type day2State struct {
	ClusterID string `json:"cluster_id"`
	Swarm     struct {
		ID      string   `json:"id"`
		Retired []string `json:"retired"`
	} `json:"swarm"`
	Machines []struct {
		Name       string `json:"name"`
		ID         string `json:"id"`
		Address    string `json:"address"`
		Role       string `json:"role"`
		Status     string `json:"status"`
		NodeID     string `json:"node_id"`
		Generation int    `json:"generation"`
		Retiring   []struct {
			ID      string `json:"id"`
			Address string `json:"address"`
		} `json:"retiring"`
	} `json:"machines"`
}

func (d *day2) state(t *testing.T) day2State {
	t.Helper()
	var s day2State
	b, err := os.ReadFile(filepath.Join(d.stateDir, "state.json"))
	if err == nil {
		err = json.Unmarshal(b, &s)
	}
	if err != nil {
		t.Fatalf("state: %v", err)
	}
	return s
}

// addresses lists every machine address state records, old generations too.
func (d *day2) addresses() map[string]string {
	out := map[string]string{}
	b, err := os.ReadFile(filepath.Join(d.stateDir, "state.json"))
	if err != nil {
		return out
	}
	var s day2State
	if json.Unmarshal(b, &s) != nil {
		return out
	}
	for _, m := range s.Machines {
		if m.Address != "" {
			out[m.Address] = m.Name
		}
		for _, r := range m.Retiring {
			if r.Address != "" {
				out[r.Address] = m.Name + " (old)"
			}
		}
	}
	return out
}

func (d *day2) sd() string { return "--state-dir=" + d.stateDir }

// args is the command line for the spec with the current variables.
func (d *day2) args(cmd string, extra ...string) []string {
	out := []string{cmd, d.spec, d.sd()}
	keys := make([]string, 0, len(d.vars))
	for k := range d.vars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, "-var", k+"="+d.vars[k])
	}
	return append(out, extra...)
}

// engine returns a TLS engine client for the machine at address.
func (d *day2) engine(t *testing.T, name, address string) *swarm.Engine {
	t.Helper()
	cfg, err := pki.ClientTLS(filepath.Join(d.stateDir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := swarm.Connect(name, address, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// manager returns an engine client of a recorded manager that answers as a
// manager of the swarm.
func (d *day2) manager(t *testing.T, ctx context.Context) *swarm.Engine {
	t.Helper()
	for _, m := range d.state(t).Machines {
		if m.Role != "manager" || m.Address == "" {
			continue
		}
		e := d.engine(t, m.Name, m.Address)
		if l, err := e.Inspect(ctx); err == nil && l.Manager {
			return e
		}
	}
	t.Fatal("no recorded manager answers as a manager")
	return nil
}

// watch runs in the background during an apply: it gives every new engine
// the test image as soon as its TLS port answers (no registry: a node that
// joins has no image, and tasks moved to it must start), and samples, four
// times a second, the reachable managers and the service's running tasks
// as any manager sees them.
type watch struct {
	stop                     func()
	done                     chan struct{}
	mu                       sync.Mutex
	samples, minManagers     int
	minRunning               int
	lowManagersAt, lowTaskAt string
	lowTasks                 string // the service's tasks at the lowest sample
	lowManagers              string // how the lowest manager count was measured
	fed                      map[string]bool
	// A round in which no manager answered at all (every call timed out
	// or was refused: a loaded machine, or every manager down) is not a
	// sample; the longest run of such rounds is kept and judged apart.
	// A manager that answers that the swarm has no leader (an election
	// after the leader's engine restarted, or a lost majority) makes a
	// sample in which the managers whose engines answer as active swarm
	// managers are counted: two of three while an election runs, one
	// when the majority is gone.
	silentSince time.Time
	maxSilence  time.Duration
}

// checkManagers fails the test when the raft lost its majority during the
// watch: fewer than want reachable managers in a sample, or no manager
// answering at all for longer than a loaded machine explains.
func (w *watch) checkManagers(t *testing.T, want int) bool {
	t.Helper()
	ok := w.minManagers >= want && w.maxSilence <= time.Minute
	if w.minManagers < want {
		t.Errorf("only %d reachable managers at %s: %s", w.minManagers, w.lowManagersAt, w.lowManagers)
	}
	if w.maxSilence > time.Minute {
		t.Errorf("no manager answered for %s", w.maxSilence.Round(time.Second))
	}
	return ok
}

func (d *day2) watch(t *testing.T, ctx context.Context) *watch {
	var cfg *tls.Config // once the first apply made it
	wctx, stop := context.WithCancel(ctx)
	w := &watch{stop: stop, done: make(chan struct{}), minManagers: 1 << 30, minRunning: 1 << 30, fed: map[string]bool{}}
	engines := map[string]*swarm.Engine{}
	conn := func(addr, name string) *swarm.Engine {
		if e := engines[addr]; e != nil {
			return e
		}
		if cfg == nil {
			c, err := pki.ClientTLS(filepath.Join(d.stateDir, "pki"))
			if err != nil {
				return nil
			}
			cfg = c
		}
		e, err := swarm.Connect(name, addr, cfg)
		if err != nil {
			return nil
		}
		engines[addr] = e
		return e
	}
	go func() {
		defer close(w.done)
		defer func() {
			for _, e := range engines {
				e.Close()
			}
		}()
		for wctx.Err() == nil {
			addrs := d.addresses()
			// Feed the image to engines that answer and lack it.
			for addr, name := range addrs {
				if w.fed[addr] {
					continue
				}
				e := conn(addr, name)
				if e == nil {
					continue
				}
				c, cancel := context.WithTimeout(wctx, 3*time.Second)
				_, _, err := e.ImageInspectWithRaw(c, testImage)
				if err != nil && client.IsErrNotFound(err) {
					err = importBusybox(c, e)
				}
				cancel()
				if err == nil {
					w.fed[addr] = true
				}
			}
			// Sample through the first manager that answers.
			reach, running, asked, tasks := 0, 0, false, ""
			noLeader := false
			var how []string
			for addr, name := range addrs {
				e := conn(addr, name)
				if e == nil {
					continue
				}
				c, cancel := context.WithTimeout(wctx, 2*time.Second)
				nodes, err := e.Nodes(c)
				if err != nil && strings.Contains(err.Error(), "does not have a leader") {
					noLeader = true
					how = append(how, name+" says the swarm has no leader")
				}
				if err == nil {
					for _, n := range nodes {
						if n.ManagerStatus != nil && n.ManagerStatus.Reachability == dswarm.ReachabilityReachable {
							reach++
						}
						if n.ManagerStatus != nil {
							how = append(how, fmt.Sprintf("%s %s (asked %s)", n.Description.Hostname, n.ManagerStatus.Reachability, name))
						}
					}
					asked = true
					svc, replicas := d.service()
					if running, err = runningTasks(c, e, svc); err != nil {
						running = -1 // not known this time
					} else if running < replicas {
						tasks = describeTasks(c, e, nodes, svc)
					}
				}
				cancel()
				if asked {
					break
				}
			}
			if !asked && noLeader {
				// Raft members up, asked one by one. A round in which
				// none of them answers is a silent one, not a count of
				// zero (each answers within 2 s on a quiet machine,
				// election or not).
				answered := false
				for addr, name := range addrs {
					e := conn(addr, name)
					if e == nil {
						continue
					}
					c, cancel := context.WithTimeout(wctx, 2*time.Second)
					t0 := time.Now()
					info, err := e.Info(c)
					cancel()
					if err == nil && info.Swarm.ControlAvailable && info.Swarm.LocalNodeState == dswarm.LocalNodeStateActive {
						reach++
					}
					if err != nil {
						how = append(how, fmt.Sprintf("%s info after %s: %v", name, time.Since(t0).Round(time.Millisecond), err))
					} else {
						answered = true
						how = append(how, fmt.Sprintf("%s info after %s: manager %v, %s", name, time.Since(t0).Round(time.Millisecond), info.Swarm.ControlAvailable, info.Swarm.LocalNodeState))
					}
				}
				noLeader = answered
			}
			if wctx.Err() != nil {
				return
			}
			w.mu.Lock()
			if !asked && !noLeader {
				if w.silentSince.IsZero() {
					w.silentSince = time.Now()
				}
				w.maxSilence = max(w.maxSilence, time.Since(w.silentSince))
				w.mu.Unlock()
				select {
				case <-wctx.Done():
				case <-time.After(250 * time.Millisecond):
				}
				continue
			}
			w.silentSince = time.Time{}
			w.samples++
			now := time.Now().Format(time.TimeOnly)
			if reach < w.minManagers {
				w.minManagers, w.lowManagersAt, w.lowManagers = reach, now, strings.Join(how, "; ")
			}
			if asked && running >= 0 && running < w.minRunning {
				w.minRunning, w.lowTaskAt, w.lowTasks = running, now, tasks
			}
			w.mu.Unlock()
			select {
			case <-wctx.Done():
			case <-time.After(250 * time.Millisecond):
			}
		}
	}()
	return w
}

// describeTasks lists the service's tasks that should run: node and state.
func describeTasks(ctx context.Context, e *swarm.Engine, nodes []dswarm.Node, service string) string {
	host := map[string]string{}
	for _, n := range nodes {
		host[n.ID] = n.Description.Hostname + "/" + string(n.Status.State) + "/" + string(n.Spec.Availability)
	}
	ts, err := e.TaskList(ctx, dswarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", service), filters.Arg("desired-state", "running"))})
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, tk := range ts {
		out = append(out, fmt.Sprintf("%s@%s:%s(%s)", tk.ID[:6], host[tk.NodeID], tk.Status.State, tk.Status.Err))
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

func (w *watch) end() {
	w.stop()
	<-w.done
}

// TestDay2 is issue 11 on real hosts (system containers), on one cluster of
// 3 managers and 2 workers running a replicated service with a published
// port, a config and a secret: plan and apply with DOCKER_HOST pointing at
// a manager change nothing; an apply (a label change) runs while an ssh
// session is open and status loops; a setting that needs new manager
// machines rolls them one at a time (same swarm, never fewer than 2
// reachable managers, a raft backup first); the same for workers with no
// task lost; Ctrl-C during a join that cannot complete exits within 5 s
// with state saved, and the next apply converges.
func TestDay2(t *testing.T) {
	hostTest(t) // each local-host test has its own cluster, network and state; longest first, a few at a time (schedule_test.go)
	requireAcc(t)
	dc := dockerClient(t)
	requireImage(t, dc, engineImage, "drivers/local/image/engine.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	dir := t.TempDir()
	d := &day2{dc: dc, spec: filepath.Join(dir, "day2.hcl"), stateDir: filepath.Join(dir, "state"), vars: map[string]string{}}
	if err := os.WriteFile(d.spec, []byte(day2Spec), 0o644); err != nil {
		t.Fatal(err)
	}
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			provision(t, context.Background(), nil, d.args("destroy", "--auto-approve")...)
		}
	})
	w := d.watch(t, ctx) // feeds the image from the first engine on
	mustProvision(t, ctx, nil, d.args("apply", "--auto-approve")...)
	w.end()
	d.clusterID = d.state(t).ClusterID
	d.startService(t, ctx)

	t.Run("DockerHostIsAManager", func(t *testing.T) { d.dockerHostIsAManager(t, ctx) })
	t.Run("ApplyWhileSSHAndStatus", func(t *testing.T) { d.applyWhileReading(t, ctx) })
	t.Run("RollManagers", func(t *testing.T) { d.roll(t, ctx, "msize", "2cpu-2g", "manager") })
	t.Run("RollWorkers", func(t *testing.T) { d.roll(t, ctx, "wsize", "1cpu-1g", "worker") })
	t.Run("InterruptBlockedJoin", func(t *testing.T) { d.interruptBlockedJoin(t, ctx) })

	mustProvision(t, ctx, nil, d.args("destroy", "--auto-approve")...)
	destroyed = true
	if left := leftovers(t, dc, d.clusterID); len(left) > 0 {
		t.Errorf("destroy left: %v", left)
	}
}

// startService creates a config, a secret and a service using both, with a
// published port (the routing mesh where the kernel has IPVS, else host
// mode, one task per node), and waits until all its tasks run.
func (d *day2) startService(t *testing.T, ctx context.Context) {
	t.Helper()
	mgr := d.manager(t, ctx)
	cfg, err := mgr.ConfigCreate(ctx, dswarm.ConfigSpec{Annotations: dswarm.Annotations{Name: day2Config}, Data: []byte("day2 config\n")})
	if err != nil {
		t.Fatal(err)
	}
	sec, err := mgr.SecretCreate(ctx, dswarm.SecretSpec{Annotations: dswarm.Annotations{Name: day2Secret}, Data: []byte("day2 secret\n")})
	if err != nil {
		t.Fatal(err)
	}
	mode := dswarm.PortConfigPublishModeIngress
	if out, err := runIn(ctx, d.dc, d.containerOf(t, ctx, "day2-manager-1"), []string{"sh", "-c", "test -e /proc/net/ip_vs && echo ipvs || true"}); err != nil || !strings.Contains(out, "ipvs") {
		t.Logf("no IPVS in this kernel: the port is published in host mode (one task per node)")
		mode = dswarm.PortConfigPublishModeHost
	}
	replicas := uint64(day2Replicas)
	grace := time.Second
	_, err = mgr.ServiceCreate(ctx, dswarm.ServiceSpec{
		Annotations: dswarm.Annotations{Name: day2Service},
		TaskTemplate: dswarm.TaskSpec{
			ContainerSpec: &dswarm.ContainerSpec{
				Image: testImage, Command: []string{"/bin/httpd", "-f", "-p", "8080", "-h", "/www"}, StopGracePeriod: &grace,
				Configs: []*dswarm.ConfigReference{{ConfigID: cfg.ID, ConfigName: day2Config, File: &dswarm.ConfigReferenceFileTarget{Name: "/day2-config", UID: "0", GID: "0", Mode: 0o444}}},
				Secrets: []*dswarm.SecretReference{{SecretID: sec.ID, SecretName: day2Secret, File: &dswarm.SecretReferenceFileTarget{Name: "day2-secret", UID: "0", GID: "0", Mode: 0o400}}},
			},
		},
		Mode: dswarm.ServiceMode{Replicated: &dswarm.ReplicatedService{Replicas: &replicas}},
		EndpointSpec: &dswarm.EndpointSpec{Ports: []dswarm.PortConfig{
			{Protocol: dswarm.PortConfigProtocolTCP, TargetPort: 8080, PublishedPort: day2Port, PublishMode: mode},
		}},
	}, dswarm.ServiceCreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	d.fullReplicas(t, ctx)
}

func (d *day2) fullReplicas(t *testing.T, ctx context.Context) {
	t.Helper()
	eventually(t, ctx, 3*time.Minute, "service at full replicas", func() error {
		n, err := runningTasks(ctx, d.manager(t, ctx), day2Service)
		if err == nil && n != day2Replicas {
			err = fmt.Errorf("%d of %d tasks running", n, day2Replicas)
		}
		return err
	})
}

// containerOf returns the container ID of a machine's current generation.
func (d *day2) containerOf(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	for _, m := range d.state(t).Machines {
		if m.Name == name {
			return m.ID
		}
	}
	t.Fatalf("%s is not in state", name)
	return ""
}

// swarmObjects checks the swarm's ID, config and secret.
func (d *day2) swarmObjects(t *testing.T, ctx context.Context, wantID string) {
	t.Helper()
	mgr := d.manager(t, ctx)
	sw, err := mgr.SwarmInspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sw.ID != wantID || d.state(t).Swarm.ID != wantID {
		t.Errorf("swarm %s (state %s), want the same swarm %s", sw.ID, d.state(t).Swarm.ID, wantID)
	}
	cs, err := mgr.ConfigList(ctx, dswarm.ConfigListOptions{Filters: filters.NewArgs(filters.Arg("name", day2Config))})
	if err != nil || len(cs) != 1 {
		t.Errorf("config %s: %v %d", day2Config, err, len(cs))
	}
	ss, err := mgr.SecretList(ctx, dswarm.SecretListOptions{Filters: filters.NewArgs(filters.Arg("name", day2Secret))})
	if err != nil || len(ss) != 1 {
		t.Errorf("secret %s: %v %d", day2Secret, err, len(ss))
	}
}

// converged checks status: every machine ready, in the swarm, managers
// reachable, nothing unrecorded.
func (d *day2) converged(t *testing.T, ctx context.Context, managers, workers int) {
	t.Helper()
	st := parseStatus(t, mustProvision(t, ctx, nil, d.args("status", "--json")...).stdout)
	m, w := 0, 0
	for _, n := range st.Nodes {
		if n.Status != "ready" || n.Swarm != "ready" || n.Error != "" || (n.Role == "manager" && n.Manager != "reachable") {
			t.Errorf("status: %s is %s, swarm %q, manager %q, error %q", n.Name, n.Status, n.Swarm, n.Manager, n.Error)
		}
		if n.Role == "manager" {
			m++
		} else {
			w++
		}
	}
	if m != managers || w != workers || len(st.Unrecorded) > 0 {
		t.Errorf("status: %d managers, %d workers (want %d, %d), unrecorded %v", m, w, managers, workers, st.Unrecorded)
	}
}

// dockerHostIsAManager: after `eval "$(provision env ...)"` DOCKER_HOST and
// DOCKER_CERT_PATH name a manager's engine. plan and apply still see the
// machines where they are: nothing is replaced or created.
func (d *day2) dockerHostIsAManager(t *testing.T, ctx context.Context) {
	out := mustProvision(t, ctx, nil, d.args("env")...).stdout
	var env []string
	for _, l := range strings.Split(out, "\n") {
		if kv, ok := strings.CutPrefix(l, "export "); ok {
			env = append(env, strings.Trim(kv, "'"))
		}
	}
	if len(env) != 3 || !strings.Contains(strings.Join(env, " "), ":2376") {
		t.Fatalf("provision env: %q", out)
	}
	p := mustProvision(t, ctx, env, d.args("plan")...)
	if !strings.Contains(p.stdout, "No changes") || strings.Contains(p.stdout, "gone") || strings.Contains(p.stdout, "WARNING") {
		t.Errorf("plan with DOCKER_HOST at a manager:\n%s\n%s", p.stdout, p.stderr)
	}
	before := d.state(t)
	a := mustProvision(t, ctx, env, d.args("apply", "--auto-approve")...)
	if !strings.Contains(a.stderr, "0 created, 0 removed") {
		t.Errorf("apply with DOCKER_HOST at a manager:\n%s", a.stderr)
	}
	after := d.state(t)
	for i := range before.Machines {
		if before.Machines[i].ID != after.Machines[i].ID {
			t.Errorf("%s was replaced: %s -> %s", before.Machines[i].Name, before.Machines[i].ID, after.Machines[i].ID)
		}
	}
}

// applyWhileReading: an apply (a label change, shown by plan first) runs
// while `provision ssh` holds an interactive session open and `provision
// status` loops in other processes; none of them waits for another.
func (d *day2) applyWhileReading(t *testing.T, ctx context.Context) {
	// An interactive session, kept open on a pipe.
	sh := exec.CommandContext(ctx, binary(t), d.args("ssh", "day2-worker-1")...)
	stdin, _ := sh.StdinPipe()
	stdout, _ := sh.StdoutPipe()
	var sherr bytes.Buffer
	sh.Stderr = &sherr
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	say := func(word string) {
		t.Helper()
		fmt.Fprintf(stdin, "echo %s\n", word)
		for lines.Scan() {
			if strings.TrimSpace(lines.Text()) == word {
				return
			}
		}
		t.Fatalf("ssh session did not echo %s: %s", word, sherr.String())
	}
	say("open")
	// status in a loop.
	sctx, stopStatus := context.WithCancel(ctx)
	var ok, failed int
	var lastErr string
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for sctx.Err() == nil {
			cmd := exec.CommandContext(sctx, binary(t), d.args("status", "--json")...)
			out, err := cmd.CombinedOutput()
			if sctx.Err() != nil {
				return
			}
			if err != nil {
				failed++
				lastErr = string(out)
			} else {
				ok++
			}
		}
	}()
	d.vars["labels"] = `{tier="web"}`
	p := mustProvision(t, ctx, nil, d.args("plan")...)
	for _, want := range []string{`tier: + "web"`, `zone: - "a"`, "node labels change in place"} {
		if !strings.Contains(p.stdout, want) {
			t.Errorf("plan does not show %q:\n%s", want, p.stdout)
		}
	}
	t0 := time.Now()
	mustProvision(t, ctx, nil, d.args("apply", "--auto-approve")...)
	took := time.Since(t0)
	stopStatus()
	wg.Wait()
	say("still-open")
	fmt.Fprintln(stdin, "exit")
	stdin.Close()
	if err := sh.Wait(); err != nil {
		t.Errorf("ssh session: %v %s", err, sherr.String())
	}
	t.Logf("apply took %s with the ssh session open; status ran %d times meanwhile (%d failed)", took.Round(time.Millisecond), ok, failed)
	if ok == 0 || failed > 0 {
		t.Errorf("status during apply: %d ok, %d failed (last: %s)", ok, failed, lastErr)
	}
	mgr := d.manager(t, ctx)
	nodes, err := mgr.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Spec.Role != dswarm.NodeRoleWorker {
			continue
		}
		if _, zone := n.Spec.Labels["zone"]; zone || n.Spec.Labels["tier"] != "web" {
			t.Errorf("worker %s labels %v: want tier=web and no zone", n.Description.Hostname, n.Spec.Labels)
		}
	}
}

// roll changes a setting that needs new machines of one role and applies,
// watching: the swarm stays (ID, config, secret), at least 2 managers are
// reachable at every sample, the service keeps all but at most the one
// task that moves (host mode: one task per node; none lost at the end),
// the new machines are the next generation with the new limits, a raft
// backup precedes the first manager change, and a second apply changes
// nothing.
func (d *day2) roll(t *testing.T, ctx context.Context, variable, value, role string) {
	id := d.state(t).Swarm.ID
	before := map[string]string{}
	for _, m := range d.state(t).Machines {
		before[m.Name] = m.ID
	}
	d.vars[variable] = value
	p := mustProvision(t, ctx, nil, d.args("plan")...)
	t.Logf("plan:\n%s", p.stdout)
	want := "managers are replaced one at a time"
	if role == "worker" {
		want = "workers are replaced in batches of 1"
	}
	if !strings.Contains(p.stdout, want) || !strings.Contains(p.stdout, "generation 2 joins the swarm before generation 1 leaves") {
		t.Errorf("plan does not say how %ss are replaced:\n%s", role, p.stdout)
	}
	if role == "manager" && !strings.Contains(p.stdout, "backup of the swarm's raft") {
		t.Errorf("plan does not say it backs up the raft first:\n%s", p.stdout)
	}
	w := d.watch(t, ctx)
	r := mustProvision(t, ctx, nil, d.args("apply", "--auto-approve", "--json")...)
	w.end()
	t.Logf("%s roll: %d samples, fewest reachable managers %d (at %s), fewest running tasks %d (at %s), longest time no manager answered %s, apply %s",
		role, w.samples, w.minManagers, w.lowManagersAt, w.minRunning, w.lowTaskAt, w.maxSilence.Round(time.Millisecond), r.took.Round(time.Second))
	w.checkManagers(t, 2)
	// Workers: no task lost, only the one a drained node moves is away at
	// any time. Managers: their tasks move too, and the leader's demotion
	// (last) leaves nodes Unknown for a moment; the service never stops.
	low := day2Replicas - 1
	if role == "manager" {
		low = 1
	}
	if w.minRunning < low {
		t.Errorf("only %d of %d tasks running at %s: %s", w.minRunning, day2Replicas, w.lowTaskAt, w.lowTasks)
		t.Logf("apply events:\n%s", timeline(r.stdout))
	} else if w.minRunning < day2Replicas-1 {
		t.Logf("fewest running at %s: %s", w.lowTaskAt, w.lowTasks)
	}
	// The events: a backup before the first manager leaves, each old
	// generation gone after its successor joined.
	var steps []string
	for _, l := range strings.Split(r.stdout, "\n") {
		var ev struct{ Kind, Host, Step, Msg string }
		if json.Unmarshal([]byte(l), &ev) == nil && ev.Kind == "step_changed" && (ev.Step == "swarm.backup" || ev.Step == "swarm.replace" || ev.Step == "swarm.join") {
			steps = append(steps, ev.Step+" "+ev.Host)
		}
	}
	t.Logf("%s roll: %s", role, strings.Join(steps, ", "))
	if role == "manager" {
		if len(steps) == 0 || !strings.HasPrefix(steps[0], "swarm.join") || len(steps) < 2 || !strings.HasPrefix(steps[1], "swarm.backup") {
			t.Errorf("no raft backup before the first manager left: %v", steps)
		}
		bs, _ := filepath.Glob(filepath.Join(d.stateDir, "backups", "raft-*.tar.gz"))
		if len(bs) == 0 {
			t.Errorf("no backup file in %s", filepath.Join(d.stateDir, "backups"))
		}
		for _, b := range bs {
			if fi, err := os.Stat(b); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("backup %s: %v", b, err)
			}
		}
		// One manager at a time: join X, (backup,) old X leaves, join Y, ...
		var seq []string
		for _, s := range steps {
			if !strings.HasPrefix(s, "swarm.backup") {
				seq = append(seq, s)
			}
		}
		if len(seq) != 6 {
			t.Errorf("manager changes %v: want a join and a replacement for each of 3", seq)
		}
		for i := 0; i+1 < len(seq); i += 2 {
			host := strings.TrimPrefix(seq[i], "swarm.join ")
			if !strings.HasPrefix(seq[i], "swarm.join ") || seq[i+1] != "swarm.replace "+host {
				t.Errorf("manager changes %v: %s is not followed by its old generation leaving", seq, seq[i])
			}
		}
	}
	d.swarmObjects(t, ctx, id)
	d.fullReplicas(t, ctx)
	d.converged(t, ctx, 3, 2)
	for _, m := range d.state(t).Machines {
		if m.Role != role {
			continue
		}
		if m.ID == before[m.Name] || m.Generation < 2 || len(m.Retiring) > 0 {
			t.Errorf("%s: id %s (was %s), generation %d, retiring %v", m.Name, m.ID, before[m.Name], m.Generation, m.Retiring)
			continue
		}
		info, err := d.dc.ContainerInspect(ctx, m.ID)
		if err != nil {
			t.Fatal(err)
		}
		res, _ := drivers.ParseSize(value)
		if info.HostConfig.NanoCPUs != int64(res.CPUs)*1e9 || info.HostConfig.Memory != int64(res.MemoryMiB)<<20 || info.Config.Hostname != m.Name {
			t.Errorf("%s: cpus %d memory %d hostname %s", m.Name, info.HostConfig.NanoCPUs, info.HostConfig.Memory, info.Config.Hostname)
		}
		if _, err := d.dc.ContainerInspect(ctx, before[m.Name]); err == nil {
			t.Errorf("%s: the old container %s is still there", m.Name, before[m.Name])
		}
	}
	if r := mustProvision(t, ctx, nil, d.args("apply", "--auto-approve")...); !strings.Contains(r.stderr, "No changes") {
		t.Errorf("second apply after the %s roll is not a no-op:\n%s", role, r.stderr)
	}
}

// timeline is the apply's notes and changes, one per line with the time.
func timeline(ndjson string) string {
	var out []string
	for _, l := range strings.Split(ndjson, "\n") {
		var ev struct {
			Time                  time.Time
			Kind, Host, Step, Msg string
			Err                   string `json:"error"`
		}
		if json.Unmarshal([]byte(l), &ev) != nil || (ev.Kind != "note" && ev.Kind != "step_changed" && ev.Kind != "step_failed" && ev.Kind != "phase_start") {
			continue
		}
		out = append(out, fmt.Sprintf("%s %s %s %s %s%s", ev.Time.Format("15:04:05.000"), ev.Kind, ev.Host, ev.Step, ev.Msg, ev.Err))
	}
	return strings.Join(out, "\n")
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// interruptBlockedJoin: a worker's engine leaves the swarm and its host's
// firewall drops everything to 2377, so its join cannot complete; the first
// Ctrl-C during that join ends apply within 5 s, exit 130 with state saved;
// with the path open again the next apply converges.
func (d *day2) interruptBlockedJoin(t *testing.T, ctx context.Context) {
	const host = "day2-worker-1"
	var addr string
	for _, m := range d.state(t).Machines {
		if m.Name == host {
			addr = m.Address
		}
	}
	id := d.containerOf(t, ctx, host)
	block := "nft add table inet acc && nft 'add chain inet acc out { type filter hook output priority 0 ; }' && nft add rule inet acc out tcp dport 2377 drop"
	if out, err := runIn(ctx, d.dc, id, []string{"sh", "-c", block}); err != nil {
		t.Fatalf("block 2377: %v %s", err, out)
	}
	unblock := func() {
		runIn(context.Background(), d.dc, id, []string{"sh", "-c", "nft delete table inet acc || true"})
	}
	defer unblock()
	if err := d.engine(t, host, addr).SwarmLeave(ctx, true); err != nil {
		t.Fatalf("leave: %v", err)
	}
	// The managers see it Down after a heartbeat or two.
	eventually(t, ctx, time.Minute, host+" Down in the node list", func() error {
		nodes, err := d.manager(t, ctx).Nodes(ctx)
		if err != nil {
			return err
		}
		for _, n := range nodes {
			if n.Description.Hostname == host && n.Status.State != dswarm.NodeStateDown {
				return errorf("%s is %s", host, n.Status.State)
			}
		}
		return nil
	})
	args := d.args("apply", "--auto-approve", "--json")
	cmd := exec.CommandContext(ctx, binary(t), args...)
	pr, pw := io.Pipe()
	// The events (stdout) and the human text (stderr) in one stream, in order.
	cmd.Stdout = pw
	cmd.Stderr = pw
	var errb bytes.Buffer
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sent := make(chan time.Time, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		fired := false
		for sc.Scan() {
			errb.Write(sc.Bytes())
			errb.WriteByte('\n')
			var ev event
			if !fired && json.Unmarshal(sc.Bytes(), &ev) == nil && ev.Kind == "step_start" && ev.Step == "swarm.join" && ev.Host == host {
				fired = true
				go func() {
					time.Sleep(3 * time.Second) // well into the join the engine cannot finish
					now := time.Now()
					cmd.Process.Signal(syscall.SIGINT)
					sent <- now
				}()
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err := cmd.Wait()
	exited := time.Now()
	pw.Close()
	var at time.Time
	select {
	case at = <-sent:
	default:
		t.Fatalf("apply never started the join of %s (%v):\n%s", host, err, errb.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	took := exited.Sub(at)
	t.Logf("Ctrl-C during the blocked join: exit %d %s after the signal", code, took.Round(10*time.Millisecond))
	if code != 130 || took > 5*time.Second {
		t.Errorf("interrupted apply: exit %d after %s, want 130 within 5s\n%s", code, took, errb.String())
	}
	if !strings.Contains(errb.String(), "waiting for the swarm join") && !strings.Contains(errb.String(), "swarm join") {
		t.Logf("apply output:\n%s", errb.String())
	}
	// Saved on the way out: state's own timestamp is after the signal.
	var saved struct{ Updated time.Time }
	if b, err := os.ReadFile(filepath.Join(d.stateDir, "state.json")); err != nil || json.Unmarshal(b, &saved) != nil || saved.Updated.Before(at) {
		t.Errorf("state not saved on interrupt: updated %s, signal at %s (%v)", saved.Updated, at, err)
	}
	unblock()
	mustProvision(t, ctx, nil, d.args("apply", "--auto-approve")...)
	d.converged(t, ctx, 3, 2)
	d.fullReplicas(t, ctx)
}
