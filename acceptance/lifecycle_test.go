//go:build acceptance

package acceptance

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	dswarm "github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/swarm"
)

// lifeSpec has the pool sizes as variables so every step is one -var away.
const lifeSpec = `
variable "managers" {
  type    = number
  default = 1
}
variable "workers" {
  type    = number
  default = 2
}
name = "life"
driver "local" { image = "provision/host:bookworm-engine" }
managers {
  count = var.managers
}
workers {
  count = var.workers
}
`

const (
	lifeService  = "life-svc"
	lifeReplicas = 4
)

// life is one cluster shared by TestLifecycle's subtests.
type life struct {
	dc        *client.Client
	spec      string
	stateDir  string
	clusterID string
	managers  int
	workers   int
}

// TestLifecycle is issue 6 on real hosts (system containers): with a
// replicated service running, scale workers 2 -> 4 -> 1 and managers 1 -> 3
// -> 1 without losing quorum or the service; replace a worker and a manager
// deleted behind the tool's back; kill -9 apply during machine.create, a host
// step and swarm.join and converge without duplicates; interrupt an apply
// with SIGINT; every step ends with status matching the spec, and destroy
// leaves no container, volume or network.
func TestLifecycle(t *testing.T) {
	hostTest(t) // each local-host test has its own cluster, network and state; longest first, a few at a time (schedule_test.go)
	requireAcc(t)
	dc := dockerClient(t)
	requireImage(t, dc, engineImage, "drivers/local/image/engine.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	dir := t.TempDir()
	c := &life{dc: dc, spec: filepath.Join(dir, "life.hcl"), stateDir: filepath.Join(dir, "state")}
	if err := os.WriteFile(c.spec, []byte(lifeSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			provision(t, context.Background(), nil, "destroy", c.spec, c.sd(), "--auto-approve")
		}
	})

	// 1 manager + 2 workers, then the service every later step must keep.
	c.apply(t, ctx, 1, 2)
	c.clusterID = readState(t, c.stateDir).ClusterID
	c.converged(t, ctx)
	c.startService(t, ctx)

	t.Run("ScaleWorkers", func(t *testing.T) {
		// Removing machines needs approval: without a terminal and without
		// --auto-approve the plan is refused and nothing changes.
		r := provision(t, ctx, nil, append([]string{"apply", c.spec, c.sd()}, c.vars(1, 1)...)...)
		if r.code != 4 || !strings.Contains(r.stderr, "--auto-approve") {
			t.Errorf("destructive apply without a terminal: exit %d\n%s", r.code, r.stderr)
		}
		if n := len(readState(t, c.stateDir).Machines); n != 3 {
			t.Fatalf("refused apply changed state: %d machines", n)
		}
		for _, w := range []int{4, 1} {
			c.applyWatched(t, ctx, c.managers, w)
			c.converged(t, ctx)
		}
	})
	t.Run("ScaleManagers", func(t *testing.T) {
		c.applyWatched(t, ctx, 3, c.workers)
		c.converged(t, ctx)
		c.replaceDeleted(t, ctx)
		c.applyWatched(t, ctx, 1, c.workers)
		c.converged(t, ctx)
	})
	t.Run("KillDuringApply", func(t *testing.T) { c.killAndResume(t, ctx) })
	t.Run("Interrupt", func(t *testing.T) { c.interrupt(t, ctx) })

	mustProvision(t, ctx, nil, "destroy", c.spec, c.sd(), "--auto-approve")
	destroyed = true
	if left := leftovers(t, dc, c.clusterID); len(left) > 0 {
		t.Errorf("destroy left: %v", left)
	}
	if _, err := os.Stat(filepath.Join(c.stateDir, "state.json")); err == nil {
		t.Errorf("destroy left the state file")
	}
}

func (c *life) sd() string { return "--state-dir=" + c.stateDir }

func (c *life) vars(m, w int) []string {
	return []string{"-var", "managers=" + strconv.Itoa(m), "-var", "workers=" + strconv.Itoa(w)}
}

// apply converges to m managers and w workers.
func (c *life) apply(t *testing.T, ctx context.Context, m, w int) result {
	t.Helper()
	args := append([]string{"apply", c.spec, c.sd(), "--auto-approve"}, c.vars(m, w)...)
	r := mustProvision(t, ctx, nil, args...)
	c.managers, c.workers = m, w
	return r
}

// applyWatched applies while a watcher samples, through the first manager
// (never removed), the service's running tasks and the swarm's leader. The
// swarm must answer with a leader at every sample (quorum is never lost)
// and the service must keep running. Removing a node restarts its tasks on
// other nodes, so a sample can see those tasks between stop and start; it
// must never see fewer than half the replicas.
func (c *life) applyWatched(t *testing.T, ctx context.Context, m, w int) {
	t.Helper()
	mgr := c.engine(t, "life-manager-1")
	svc, _, err := mgr.ServiceInspectWithRaw(ctx, lifeService, dswarm.ServiceInspectOptions{})
	if err != nil {
		t.Fatalf("service: %v", err)
	}
	wctx, stop := context.WithCancel(ctx)
	var (
		wg                  sync.WaitGroup
		samples, noLeader   int
		minRunning          = lifeReplicas
		firstErr            error
		noLeaderWhen, lowAt string
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for wctx.Err() == nil {
			samples++
			nodes, err := mgr.Nodes(wctx)
			if wctx.Err() != nil {
				return
			}
			leader := false
			for _, n := range nodes {
				if n.ManagerStatus != nil && n.ManagerStatus.Leader && n.Status.State == dswarm.NodeStateReady {
					leader = true
				}
			}
			if err != nil || !leader {
				noLeader++
				if firstErr == nil {
					firstErr = err
					noLeaderWhen = time.Now().Format(time.TimeOnly)
				}
			}
			if n, err := runningTasks(wctx, mgr, svc.ID); err == nil && n < minRunning {
				minRunning, lowAt = n, time.Now().Format(time.TimeOnly)
			}
			select {
			case <-wctx.Done():
			case <-time.After(250 * time.Millisecond):
			}
		}
	}()
	c.apply(t, ctx, m, w)
	stop()
	wg.Wait()
	t.Logf("managers=%d workers=%d: %d samples, fewest running tasks %d (at %s)", m, w, samples, minRunning, lowAt)
	if noLeader > 0 {
		t.Errorf("managers=%d workers=%d: %d of %d samples found no swarm leader (first at %s: %v)", m, w, noLeader, samples, noLeaderWhen, firstErr)
	}
	if minRunning < lifeReplicas/2 {
		t.Errorf("managers=%d workers=%d: only %d of %d tasks were running at %s", m, w, minRunning, lifeReplicas, lowAt)
	}
}

func runningTasks(ctx context.Context, mgr *swarm.Engine, serviceID string) (int, error) {
	ts, err := mgr.TaskList(ctx, dswarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", serviceID), filters.Arg("desired-state", "running"))})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, tk := range ts {
		if tk.Status.State == dswarm.TaskStateRunning {
			n++
		}
	}
	return n, nil
}

// engine returns a TLS engine client for one machine in state.
func (c *life) engine(t *testing.T, name string) *swarm.Engine {
	t.Helper()
	ens, _ := engines(t, c.stateDir)
	e := ens[name]
	if e == nil {
		t.Fatalf("%s is not in state", name)
	}
	return e
}

// want lists the machine names the spec asks for, by role.
func (c *life) want() map[string]string {
	out := map[string]string{}
	for i := 1; i <= c.managers; i++ {
		out[fmt.Sprintf("life-manager-%d", i)] = "manager"
	}
	for i := 1; i <= c.workers; i++ {
		out[fmt.Sprintf("life-worker-%d", i)] = "worker"
	}
	return out
}

// converged checks that status, the swarm and the machine's containers all
// match the spec, then loads the test image on every node (no registry: a
// node that joined has no image until it is given one) and waits until the
// service runs all its replicas.
func (c *life) converged(t *testing.T, ctx context.Context) {
	t.Helper()
	want := c.want()
	// status: exactly the wanted machines, all ready, in the swarm, one leader.
	st := parseStatus(t, mustProvision(t, ctx, nil, "status", c.spec, c.sd(), "--json").stdout)
	got := map[string]string{}
	leaders := 0
	for _, n := range st.Nodes {
		got[n.Name] = n.Role
		if n.Status != "ready" || n.Swarm != "ready" || n.Error != "" {
			t.Errorf("status: %s is %s, swarm %q, error %q", n.Name, n.Status, n.Swarm, n.Error)
		}
		if n.Role == "manager" && n.Manager != "reachable" {
			t.Errorf("status: manager %s is %q", n.Name, n.Manager)
		}
		if n.Leader {
			leaders++
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("status lists %v, the spec wants %v", got, want)
	}
	if leaders != 1 {
		t.Errorf("status shows %d leaders", leaders)
	}
	// The swarm's own node list: no dead or extra nodes, roles as wanted.
	ens, _ := engines(t, c.stateDir)
	nodes, err := ens["life-manager-1"].Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hosts := map[string]string{}
	for _, n := range nodes {
		if n.Status.State != dswarm.NodeStateReady {
			t.Errorf("swarm node %s (%s) is %s", n.Description.Hostname, n.ID, n.Status.State)
		}
		if _, dup := hosts[n.Description.Hostname]; dup {
			t.Errorf("swarm lists %s twice", n.Description.Hostname)
		}
		hosts[n.Description.Hostname] = string(n.Spec.Role)
	}
	if fmt.Sprint(hosts) != fmt.Sprint(want) {
		t.Errorf("swarm nodes %v, want %v", hosts, want)
	}
	// One container per machine: nothing duplicated, nothing left over.
	cs, err := c.dc.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", drivers.TagCluster+"="+c.clusterID))})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ct := range cs {
		names = append(names, ct.Labels[drivers.TagMachine])
	}
	sort.Strings(names)
	var wantNames []string
	for n := range want {
		wantNames = append(wantNames, n)
	}
	sort.Strings(wantNames)
	if strings.Join(names, " ") != strings.Join(wantNames, " ") {
		t.Errorf("containers %v, want one each of %v", names, wantNames)
	}
	for name, e := range ens {
		if e != nil && want[name] != "" {
			busyboxImage(t, ctx, e)
		}
	}
	if svc := c.serviceID(t, ctx, ens["life-manager-1"]); svc != "" {
		eventually(t, ctx, 2*time.Minute, "service back to all replicas", func() error {
			n, err := runningTasks(ctx, ens["life-manager-1"], svc)
			if err == nil && n != lifeReplicas {
				err = fmt.Errorf("%d of %d tasks running", n, lifeReplicas)
			}
			return err
		})
	}
}

func (c *life) serviceID(t *testing.T, ctx context.Context, mgr *swarm.Engine) string {
	s, _, err := mgr.ServiceInspectWithRaw(ctx, lifeService, dswarm.ServiceInspectOptions{})
	if err != nil {
		return ""
	}
	return s.ID
}

// startService runs lifeReplicas tasks of a tiny HTTP server.
func (c *life) startService(t *testing.T, ctx context.Context) {
	t.Helper()
	mgr := c.engine(t, "life-manager-1")
	replicas := uint64(lifeReplicas)
	grace := time.Second
	_, err := mgr.ServiceCreate(ctx, dswarm.ServiceSpec{
		Annotations: dswarm.Annotations{Name: lifeService},
		TaskTemplate: dswarm.TaskSpec{
			ContainerSpec: &dswarm.ContainerSpec{Image: testImage, Command: []string{"/bin/httpd", "-f", "-p", "8080", "-h", "/www"}, StopGracePeriod: &grace},
		},
		Mode: dswarm.ServiceMode{Replicated: &dswarm.ReplicatedService{Replicas: &replicas}},
	}, dswarm.ServiceCreateOptions{QueryRegistry: false})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	svc := c.serviceID(t, ctx, mgr)
	eventually(t, ctx, 2*time.Minute, "service running", func() error {
		n, err := runningTasks(ctx, mgr, svc)
		if err == nil && n != lifeReplicas {
			err = fmt.Errorf("%d of %d tasks running", n, lifeReplicas)
		}
		return err
	})
}

// replaceDeleted removes a worker's and a (non-leading) manager's container
// behind the tool's back; plan must see both gone, and apply must remove
// their dead nodes and join replacements in the same roles.
func (c *life) replaceDeleted(t *testing.T, ctx context.Context) {
	t.Helper()
	st := readState(t, c.stateDir)
	ens, _ := engines(t, c.stateDir)
	nodes, err := ens["life-manager-1"].Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var victimMgr string
	for _, n := range nodes {
		if n.ManagerStatus != nil && !n.ManagerStatus.Leader && victimMgr == "" {
			victimMgr = n.Description.Hostname
		}
	}
	victims := []string{"life-worker-1", victimMgr}
	oldNodes := map[string]string{}
	for _, m := range st.Machines {
		for _, v := range victims {
			if m.Name == v {
				oldNodes[v] = m.NodeID
				if err := c.dc.ContainerRemove(ctx, m.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
					t.Fatalf("remove %s behind the tool's back: %v", v, err)
				}
			}
		}
	}
	if len(oldNodes) != 2 {
		t.Fatalf("victims %v not all in state", victims)
	}
	r := mustProvision(t, ctx, nil, append([]string{"plan", c.spec, c.sd()}, c.vars(c.managers, c.workers)...)...)
	for _, v := range victims {
		if !strings.Contains(r.stdout, v) || !strings.Contains(r.stdout, "is gone") {
			t.Errorf("plan does not say %s is gone:\n%s", v, r.stdout)
		}
	}
	c.apply(t, ctx, c.managers, c.workers)
	nodes, err = ens["life-manager-1"].Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		for v, id := range oldNodes {
			if n.ID == id {
				t.Errorf("dead node %s of %s is still in the swarm (%s)", id, v, n.Status.State)
			}
		}
	}
	c.converged(t, ctx)
}

// event is the part of a --json progress event the kill tests read.
type event struct {
	Kind string `json:"kind"`
	Host string `json:"host"`
	Step string `json:"step"`
}

// applyUntil runs apply with --json progress and sends sig once an event
// matching at appears; it returns the result and whether the signal was sent.
func (c *life) applyUntil(t *testing.T, ctx context.Context, m, w int, sig syscall.Signal, at func(event) bool) (result, bool) {
	t.Helper()
	args := append([]string{"apply", c.spec, c.sd(), "--auto-approve", "--json"}, c.vars(m, w)...)
	cmd := exec.CommandContext(ctx, binary(t), args...)
	var out, errb bytes.Buffer
	pr, pw := io.Pipe()
	// The events (stdout) and the human text (stderr) in one stream, in order.
	cmd.Stdout = pw
	cmd.Stderr = pw
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sent := make(chan bool, 1)
	go func() {
		fired := false
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Bytes()
			errb.Write(line)
			errb.WriteByte('\n')
			var ev event
			if !fired && json.Unmarshal(line, &ev) == nil && at(ev) {
				fired = true
				cmd.Process.Signal(sig)
			}
		}
		io.Copy(io.Discard, pr)
		sent <- fired
	}()
	err := cmd.Wait()
	pw.Close()
	fired := <-sent
	r := result{stdout: out.String(), stderr: errb.String(), took: time.Since(t0)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			r.code = 128 + int(ws.Signal())
		}
	} else if err != nil {
		t.Fatal(err)
	}
	t.Logf("apply %v (%s at the chosen step: %v): exit %d in %s", c.vars(m, w), sig, fired, r.code, r.took.Round(time.Millisecond))
	return r, fired
}

// killAndResume grows the cluster by one worker and kills apply with
// SIGKILL three times on that worker: while its machine is created, while
// its first host step runs (the hosts boot from the golden image, so that
// is the engine's TLS or settings, not its install), while it joins the
// swarm. Every re-run picks up what the last one left; the last converges
// with no duplicate.
func (c *life) killAndResume(t *testing.T, ctx context.Context) {
	w := c.workers + 1
	host := fmt.Sprintf("life-worker-%d", w)
	for _, step := range []string{"machine.create", hostStep, "swarm.join"} {
		r, fired := c.applyUntil(t, ctx, c.managers, w, syscall.SIGKILL, func(ev event) bool {
			if ev.Kind != "step_start" || ev.Host != host || !(ev.Step == step || step == hostStep && isHostStep(ev.Step)) {
				return false
			}
			if step == "machine.create" {
				// Kill inside the create: once the container exists, before
				// the driver has returned it.
				c.waitContainer(t, ctx, host)
			}
			return true
		})
		if !fired {
			t.Fatalf("apply never started %s on %s (exit %d):\n%s", step, host, r.code, r.stderr)
		}
		if r.code != 128+int(syscall.SIGKILL) {
			t.Fatalf("apply was not killed at %s (exit %d)", step, r.code)
		}
		// The killed process's flock is gone with it; the next command takes
		// the lock and names the dead holder.
		p := provision(t, ctx, nil, append([]string{"plan", c.spec, c.sd()}, c.vars(c.managers, w)...)...)
		if p.code != 0 {
			t.Fatalf("plan after kill at %s: exit %d\n%s", step, p.code, p.stderr)
		}
		if !strings.Contains(p.stderr, "stale state lock") {
			t.Errorf("plan after a kill does not report the dead holder of the lock:\n%s", p.stderr)
		}
		t.Logf("plan after kill at %s:\n%s", step, p.stdout)
		if step == "machine.create" && !strings.Contains(p.stdout, "by its cluster tags") {
			t.Errorf("plan after a kill inside the create does not adopt the machine by its tags:\n%s", p.stdout)
		}
	}
	c.apply(t, ctx, c.managers, w)
	c.converged(t, ctx)
}

// hostStep stands for whichever host step runs first on a new machine.
const hostStep = "a host step"

// isHostStep reports whether a step is one of the host phase's (hostos)
// steps: not the machine's creation, the facts or the swarm's.
func isHostStep(id string) bool {
	return id != "machine.create" && id != "host.facts" && !strings.HasPrefix(id, "swarm.")
}

// interrupt sends SIGINT while a new worker's machine is created: apply
// finishes or abandons running steps, saves state, exits 130 saying to re-run,
// and the re-run converges.
func (c *life) interrupt(t *testing.T, ctx context.Context) {
	w := c.workers + 1
	host := fmt.Sprintf("life-worker-%d", w)
	r, fired := c.applyUntil(t, ctx, c.managers, w, syscall.SIGINT, func(ev event) bool {
		return ev.Kind == "step_start" && ev.Host == host && ev.Step == "machine.create"
	})
	if !fired {
		t.Fatalf("apply never created %s:\n%s", host, r.stderr)
	}
	if r.code != 130 {
		t.Errorf("interrupted apply exited %d, want 130\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "again") {
		t.Errorf("interrupted apply does not say to re-run:\n%s", r.stderr)
	}
	if strings.Contains(r.stderr, `"step":"swarm.join"`) {
		t.Errorf("interrupted apply went on to join the swarm:\n%s", r.stderr)
	}
	found := false
	for _, m := range readState(t, c.stateDir).Machines {
		found = found || m.Name == host
	}
	if !found {
		t.Errorf("interrupted apply did not save %s in state", host)
	}
	c.apply(t, ctx, c.managers, w)
	c.converged(t, ctx)
}

// waitContainer waits until the machine's container exists on the engine.
func (c *life) waitContainer(t *testing.T, ctx context.Context, machine string) {
	f := filters.NewArgs(filters.Arg("label", drivers.TagCluster+"="+c.clusterID), filters.Arg("label", drivers.TagMachine+"="+machine))
	for i := 0; i < 300 && ctx.Err() == nil; i++ {
		if cs, err := c.dc.ContainerList(ctx, container.ListOptions{All: true, Filters: f}); err == nil && len(cs) > 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("no container for %s appeared", machine)
}
