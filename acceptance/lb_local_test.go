//go:build acceptance

package acceptance

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	dswarm "github.com/docker/docker/api/types/swarm"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/lb"
	"github.com/provision/provision/provision/swarm"
)

// lbWithin is how soon a published or removed port must reach the load
// balancer (issue 15: "within seconds").
const lbWithin = 20 * time.Second

// lbCall is one request the recording webhook received.
type lbCall struct {
	at     time.Time
	method string
	from   string // the caller's address (the operator's machine, or the in-cluster task's node)
	auth   string
	body   lb.WebhookRequest
}

// lbRecorder is a load balancer backend for the test: the webhook the spec
// names, recording every call, answering with the address it "serves".
type lbRecorder struct {
	mu    sync.Mutex
	calls []lbCall
	srv   *http.Server
	url   string
}

func startRecorder(t *testing.T, host string) *lbRecorder {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("listen on %s: %v", host, err)
	}
	r := &lbRecorder{url: "http://" + l.Addr().String() + "/lb"}
	r.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		c := lbCall{at: time.Now(), method: req.Method, auth: req.Header.Get("Authorization")}
		c.from, _, _ = net.SplitHostPort(req.RemoteAddr)
		if req.Method == http.MethodPost {
			if err := json.NewDecoder(req.Body).Decode(&c.body); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		}
		r.mu.Lock()
		r.calls = append(r.calls, c)
		r.mu.Unlock()
		switch req.Method {
		case http.MethodPost:
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"address": "lb.acceptance.test", "ports": %s}`, mustJSON(drivers.Ports(c.body.Ports)))
		case http.MethodGet:
			last, ok := r.lastPost("")
			if !ok {
				http.NotFound(w, req)
				return
			}
			fmt.Fprintf(w, `{"address": "lb.acceptance.test", "ports": %s, "targets": %d}`, mustJSON(drivers.Ports(last.body.Ports)), len(last.body.Nodes))
		case http.MethodDelete:
			w.WriteHeader(http.StatusNoContent)
		}
	})}
	go r.srv.Serve(l)
	t.Cleanup(func() { r.srv.Close() })
	return r
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// lastPost is the latest POST (from the address from, or any when "").
func (r *lbRecorder) lastPost(from string) (lbCall, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.calls) - 1; i >= 0; i-- {
		if c := r.calls[i]; c.method == http.MethodPost && (from == "" || c.from == from) {
			return c, true
		}
	}
	return lbCall{}, false
}

func (r *lbRecorder) all() []lbCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// waitPorts waits until a POST after since, from from ("" any, "!x" any
// address but x), carries exactly ports; it returns how long that took.
func (r *lbRecorder) waitPorts(t *testing.T, since time.Time, from string, ports []int, what string) time.Duration {
	t.Helper()
	deadline := time.Now().Add(lbWithin)
	for {
		for _, c := range r.all() {
			if c.method != http.MethodPost || c.at.Before(since) {
				continue
			}
			if from != "" && (strings.HasPrefix(from, "!") && c.from == from[1:] || !strings.HasPrefix(from, "!") && c.from != from) {
				continue
			}
			if slices.Equal(drivers.Ports(c.body.Ports), ports) {
				return c.at.Sub(since)
			}
		}
		if time.Now().After(deadline) {
			var seen []string
			for _, c := range r.all() {
				seen = append(seen, fmt.Sprintf("%s %s from %s ports %v", c.at.Format("15:04:05.000"), c.method, c.from, drivers.Ports(c.body.Ports)))
			}
			t.Fatalf("%s: the load balancer was not told ports %v within %s; calls:\n%s", what, ports, lbWithin, strings.Join(seen, "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// publish creates a service on the manager publishing ports (ingress, TCP
// unless given), from the busybox image, and returns its ID.
func publish(t *testing.T, ctx context.Context, mgr *swarm.Engine, name string, labels map[string]string, ports ...dswarm.PortConfig) string {
	t.Helper()
	one := uint64(1)
	svc, err := mgr.ServiceCreate(ctx, dswarm.ServiceSpec{
		Annotations:  dswarm.Annotations{Name: name, Labels: labels},
		TaskTemplate: dswarm.TaskSpec{ContainerSpec: &dswarm.ContainerSpec{Image: testImage, Command: []string{"/bin/httpd", "-f", "-p", "80", "-h", "/www"}}},
		Mode:         dswarm.ServiceMode{Replicated: &dswarm.ReplicatedService{Replicas: &one}},
		EndpointSpec: &dswarm.EndpointSpec{Ports: ports},
	}, dswarm.ServiceCreateOptions{QueryRegistry: false})
	if err != nil {
		t.Fatalf("create service %s: %v", name, err)
	}
	return svc.ID
}

func ingress(port uint32) dswarm.PortConfig {
	return dswarm.PortConfig{Protocol: dswarm.PortConfigProtocolTCP, TargetPort: 80, PublishedPort: port, PublishMode: dswarm.PortConfigPublishModeIngress}
}

// TestLoadBalancerLocal is issue 15's acceptance test for the watch logic
// and the in-cluster reconciler, on a real local cluster with a recording
// webhook as the load balancer backend (the local driver has none):
//
//   - apply without a balancer notes that published ports are reachable on
//     every node directly;
//   - `provision lb sync --watch` (operator mode, TLS Engine API) tells the
//     backend a port within lbWithin of `service create`, and that it is gone
//     within lbWithin of `service rm`; UDP, host-mode and provision.lb=off
//     ports are left out;
//   - status and plan show the balancer and its ports;
//   - `provision lb deploy` builds the image from the (static) binary, loads
//     it onto the manager without a registry, and runs the reconciler as a
//     service there: its requests come from the manager's address, not the
//     operator's, and it follows service create and rm by itself;
//   - destroy stops the in-cluster reconciler and removes the balancer
//     before the machines.
func TestLoadBalancerLocal(t *testing.T) {
	hostTest(t) // each local-host test has its own cluster, network and state; longest first, a few at a time (schedule_test.go)
	requireAcc(t)
	dc := dockerClient(t)
	requireImage(t, dc, engineImage, "drivers/local/image/engine.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	sd := "--state-dir=" + stateDir
	file := filepath.Join(dir, "lb.hcl")
	base := `variable "lb_token" {
  type      = string
  sensitive = true
}
name = "lbacc"
driver "local" { image = "provision/host:bookworm-engine" }
managers { count = 1 }
`
	if err := os.WriteFile(file, []byte(base), 0o600); err != nil {
		t.Fatal(err)
	}
	const token = "lb-acceptance-token-5f1c"
	env := []string{"PROVISION_VAR_lb_token=" + token}
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			// The webhook is gone by now (cleanups run last first): destroy
			// without it, or it would refuse to remove the machines.
			os.WriteFile(file, []byte(base), 0o600)
			provision(t, context.Background(), env, "destroy", file, sd, "--auto-approve")
		}
	})
	mustProvision(t, ctx, env, "apply", file, sd, "--auto-approve")
	st := readState(t, stateDir)
	ens, _ := engines(t, stateDir)
	mgr := ens[st.Machines[0].Name]
	busyboxImage(t, ctx, mgr)

	// Without a balancer: a published port is named as reachable on every node.
	id := publish(t, ctx, mgr, "lbacc-early", nil, ingress(8088))
	r := mustProvision(t, ctx, env, "apply", file, sd, "--auto-approve")
	if !strings.Contains(r.stderr, "8088") || !strings.Contains(r.stderr, "reachable on every node directly") {
		t.Errorf("apply does not say that 8088 is reachable on every node:\n%s", r.stderr)
	}
	if err := mgr.ServiceRemove(ctx, id); err != nil {
		t.Fatal(err)
	}

	// The backend listens on the cluster network's gateway: this machine's
	// address that the operator and the manager (the in-cluster task) reach.
	nets, err := dc.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("label", drivers.TagCluster+"="+st.ClusterID))})
	if err != nil || len(nets) != 1 || len(nets[0].IPAM.Config) == 0 || nets[0].IPAM.Config[0].Gateway == "" {
		t.Fatalf("the cluster's network: %v %+v", err, nets)
	}
	gw := nets[0].IPAM.Config[0].Gateway
	rec := startRecorder(t, gw)
	// The in-cluster reconciler's requests come from the manager's address;
	// the operator's from this machine (whichever source address it picks).
	mgrAddr := st.Machines[0].Address
	operator, inCluster := "!"+mgrAddr, mgrAddr
	spec := base + fmt.Sprintf(`load_balancer {
  published_cidrs = ["198.51.100.0/24"]
  webhook {
    url   = %q
    token = var.lb_token
  }
}
`, rec.url)
	if err := os.WriteFile(file, []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}

	// One-shot sync: nothing published yet.
	r = mustProvision(t, ctx, env, "lb", "sync", file, sd)
	if !strings.Contains(r.stdout, "webhook: lb.acceptance.test: ports none") {
		t.Errorf("lb sync:\n%s", r.stdout)
	}

	// Operator mode: lb sync --watch follows the events.
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watch := exec.CommandContext(watchCtx, binary(t), "lb", "sync", file, sd, "--watch")
	watch.Env = append(os.Environ(), env...)
	watch.Cancel = func() error { return watch.Process.Signal(syscall.SIGINT) }
	var watchOut strings.Builder
	watch.Stdout, watch.Stderr = &watchOut, &watchOut
	before := len(rec.all())
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, lbWithin, "the watch's first sync", func() error {
		if len(rec.all()) == before {
			return fmt.Errorf("no call yet")
		}
		return nil
	})

	t0 := time.Now()
	web := publish(t, ctx, mgr, "lbacc-web", nil, ingress(8080))
	took := rec.waitPorts(t, t0, operator, []int{8080}, "service create")
	t.Logf("operator mode: port 8080 reached the load balancer %s after service create", took.Round(time.Millisecond))
	last, _ := rec.lastPost("")
	if last.auth != "Bearer "+token || last.body.Cluster != st.ClusterID || len(last.body.Nodes) != 1 || !last.body.Nodes[0].Ready ||
		!slices.Equal(last.body.Ports[0].Sources, []string{"198.51.100.0/24"}) || !slices.Equal(last.body.Ports[0].Services, []string{"lbacc-web"}) {
		t.Errorf("request: auth %q body %+v", last.auth, last.body)
	}
	// Ports the balancer does not serve: UDP, host mode, labelled off.
	udp := ingress(5353)
	udp.Protocol = dswarm.PortConfigProtocolUDP
	host := ingress(9100)
	host.PublishMode = dswarm.PortConfigPublishModeHost
	others := []string{
		publish(t, ctx, mgr, "lbacc-udp", nil, udp),
		publish(t, ctx, mgr, "lbacc-host", nil, host),
		publish(t, ctx, mgr, "lbacc-admin", map[string]string{lb.LabelBalance: "off"}, ingress(9000)),
	}
	t0 = time.Now()
	api := publish(t, ctx, mgr, "lbacc-api", nil, ingress(8443))
	rec.waitPorts(t, t0, operator, []int{8080, 8443}, "second service")

	// status and plan show it.
	r = mustProvision(t, ctx, env, "status", file, sd, "--json")
	var doc struct {
		LB struct {
			Balancers []struct {
				Balancer string `json:"balancer"`
				Exists   bool   `json:"exists"`
				Address  string `json:"address"`
				Ports    []int  `json:"ports"`
			} `json:"balancers"`
			Published []int        `json:"published_ports"`
			Skipped   []lb.Skipped `json:"not_balanced"`
		} `json:"load_balancer"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	if len(doc.LB.Balancers) != 1 || doc.LB.Balancers[0].Address != "lb.acceptance.test" || !slices.Equal(doc.LB.Balancers[0].Ports, []int{8080, 8443}) ||
		!slices.Equal(doc.LB.Published, []int{8080, 8443}) || len(doc.LB.Skipped) != 3 {
		t.Errorf("status: %+v", doc.LB)
	}
	r = mustProvision(t, ctx, env, "plan", file, sd)
	if !strings.Contains(r.stdout, "load balancer webhook: lb.acceptance.test: ports 8080, 8443") || !strings.Contains(r.stdout, "lbacc-udp 5353") {
		t.Errorf("plan:\n%s", r.stdout)
	}

	t0 = time.Now()
	if err := mgr.ServiceRemove(ctx, web); err != nil {
		t.Fatal(err)
	}
	took = rec.waitPorts(t, t0, operator, []int{8443}, "service rm")
	t.Logf("operator mode: port 8080 left the load balancer %s after service rm", took.Round(time.Millisecond))
	if err := mgr.ServiceRemove(ctx, api); err != nil {
		t.Fatal(err)
	}
	rec.waitPorts(t, t0, operator, []int{}, "second service rm")
	stopWatch()
	// Wait reports the cancelled context even after a clean exit: the exit
	// code is what tells.
	watch.Wait()
	if code := watch.ProcessState.ExitCode(); code != 0 {
		t.Errorf("lb sync --watch did not stop cleanly on SIGINT: exit %d\n%s", code, watchOut.String())
	}
	if strings.Contains(watchOut.String(), token) {
		t.Error("the token appears in lb sync's output")
	}

	// In-cluster mode: the reconciler runs as a service on the manager.
	r = mustProvision(t, ctx, env, "lb", "deploy", file, sd)
	if !strings.Contains(r.stderr, "image provision/lb:") || !strings.Contains(r.stderr, "loaded") {
		t.Errorf("lb deploy:\n%s", r.stderr)
	}
	svc, _, err := mgr.ServiceInspectWithRaw(ctx, lb.ServiceName, dswarm.ServiceInspectOptions{})
	if err != nil {
		t.Fatalf("the reconciler service: %v", err)
	}
	if _, err := mgr.ImageInspect(ctx, svc.Spec.TaskTemplate.ContainerSpec.Image); err != nil {
		t.Errorf("the image is not on the manager: %v", err)
	}
	if c := svc.Spec.TaskTemplate.Placement; c == nil || !slices.Contains(c.Constraints, "node.role==manager") {
		t.Errorf("placement: %+v", c)
	}
	eventually(t, ctx, 2*time.Minute, "the reconciler's task running", func() error {
		ts, err := mgr.TaskList(ctx, dswarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", svc.ID))})
		if err != nil {
			return err
		}
		for _, tk := range ts {
			if tk.Status.State == dswarm.TaskStateRunning {
				return nil
			}
			if tk.Status.Err != "" {
				return fmt.Errorf("task: %s", tk.Status.Err)
			}
		}
		return fmt.Errorf("%d tasks, none running", len(ts))
	})
	rec.waitPorts(t, time.Now().Add(-2*time.Minute), inCluster, []int{}, "the in-cluster reconciler's first sync")
	first, _ := rec.lastPost(mgrAddr)
	if first.auth != "Bearer "+token || first.body.Cluster != st.ClusterID {
		t.Errorf("in-cluster request: auth %q, cluster %q", first.auth, first.body.Cluster)
	}
	t.Logf("in-cluster reconciler calls from %s", first.from)
	t0 = time.Now()
	web = publish(t, ctx, mgr, "lbacc-web2", nil, ingress(8081))
	took = rec.waitPorts(t, t0, inCluster, []int{8081}, "in-cluster: service create")
	t.Logf("in-cluster: port 8081 reached the load balancer %s after service create", took.Round(time.Millisecond))
	t0 = time.Now()
	if err := mgr.ServiceRemove(ctx, web); err != nil {
		t.Fatal(err)
	}
	took = rec.waitPorts(t, t0, inCluster, []int{}, "in-cluster: service rm")
	t.Logf("in-cluster: port 8081 left the load balancer %s after service rm", took.Round(time.Millisecond))
	// Deploying again with nothing changed changes nothing.
	r = mustProvision(t, ctx, env, "lb", "deploy", file, sd)
	if !strings.Contains(r.stderr, "already runs") {
		t.Errorf("second lb deploy:\n%s", r.stderr)
	}
	r = mustProvision(t, ctx, env, "status", file, sd)
	if !strings.Contains(r.stdout, "in-cluster reconciler provision-lb: deployed") {
		t.Errorf("status does not show the in-cluster reconciler:\n%s", r.stdout)
	}
	for _, id := range others {
		mgr.ServiceRemove(ctx, id)
	}

	// destroy: the reconciler stops, the balancer goes, then the machines.
	t0 = time.Now()
	r = mustProvision(t, ctx, env, "destroy", file, sd, "--auto-approve")
	destroyed = true
	var deleted bool
	for _, c := range rec.all() {
		if c.at.After(t0) && c.method == http.MethodDelete {
			deleted = true
		}
		if c.at.After(t0) && c.method == http.MethodPost && c.from == mgrAddr {
			t.Errorf("the in-cluster reconciler was still syncing during destroy: %+v", c)
		}
	}
	if !deleted {
		t.Errorf("destroy did not remove the load balancer; stderr:\n%s", r.stderr)
	}
	if i, j := strings.Index(r.stderr, "lb.remove"), strings.Index(r.stderr, "machine.destroy"); i < 0 || j < 0 || i > j {
		t.Errorf("destroy did not remove the load balancer before the machines:\n%s", r.stderr)
	}
	if left := leftovers(t, dc, st.ClusterID); len(left) > 0 {
		t.Errorf("left after destroy: %v", left)
	}
}
