//go:build acceptance

package acceptance

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/cli/cli/context/docker"
	"github.com/docker/cli/cli/context/store"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	dswarm "github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"

	"github.com/provision/provision/provision/swarm"
)

func containerListAll(f filters.Args) container.ListOptions {
	return container.ListOptions{All: true, Filters: f}
}

// TestLocalEndToEnd is issue 4's first and fourth checks on examples/local.hcl:
// a 1-manager, 2-worker swarm over TLS with labels, a certless client
// refused on 2376, an overlay service spread over the nodes whose tasks reach
// each other across hosts, a no-op re-apply, and a destroy that leaves nothing.
func TestLocalEndToEnd(t *testing.T) {
	hostTest(t) // each local-host test has its own cluster, network and state; longest first, a few at a time (schedule_test.go)
	requireAcc(t)
	dc := dockerClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	spec := filepath.Join(repoRoot(t), "examples", "local.hcl")
	stateDir := t.TempDir()
	sd := "--state-dir=" + stateDir
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			provision(t, context.Background(), nil, "destroy", spec, sd, "--auto-approve")
		}
	})

	r := mustProvision(t, ctx, nil, "apply", spec, sd, "--auto-approve")
	t.Logf("fresh apply took %s", r.took)
	st := readState(t, stateDir)
	if len(st.Machines) != 3 {
		t.Fatalf("state has %d machines, want 3", len(st.Machines))
	}

	// Through the TLS API: 3 nodes Ready, one Leader, labels set.
	ens, tlsCfg := engines(t, stateDir)
	var mgr *swarm.Engine
	for _, m := range st.Machines {
		if m.Role == "manager" {
			mgr = ens[m.Name]
		}
	}
	nodes, err := mgr.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 3 {
		t.Fatalf("swarm has %d nodes, want 3", len(nodes))
	}
	leaders := 0
	for _, n := range nodes {
		if n.Status.State != dswarm.NodeStateReady {
			t.Errorf("node %s is %s", n.Description.Hostname, n.Status.State)
		}
		if n.ManagerStatus != nil && n.ManagerStatus.Leader {
			leaders++
		}
		if n.Spec.Labels[swarm.LabelRole] == "" || n.Spec.Labels[swarm.LabelPool] == "" {
			t.Errorf("node %s lacks provision labels: %v", n.Description.Hostname, n.Spec.Labels)
		}
	}
	if leaders != 1 {
		t.Errorf("%d leaders, want 1", leaders)
	}

	// A client without a certificate is refused on 2376; one with the cluster
	// CA's client cert gets through (proved above).
	for _, m := range st.Machines {
		addr := net.JoinHostPort(m.Address, "2376")
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{RootCAs: tlsCfg.RootCAs, ServerName: m.Name})
		if err == nil {
			// TLS 1.3 reports the missing client cert on first read.
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Write([]byte("GET /version HTTP/1.0\r\n\r\n"))
			if err == nil {
				buf := make([]byte, 64)
				_, err = conn.Read(buf)
			}
			conn.Close()
		}
		if err == nil {
			t.Errorf("%s: a client without a certificate was served on 2376", m.Name)
		}
		// Plain HTTP is not answered either.
		if c, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte("GET /version HTTP/1.0\r\n\r\n"))
			buf := make([]byte, 256)
			n, _ := c.Read(buf)
			c.Close()
			if strings.Contains(string(buf[:n]), "ApiVersion") {
				t.Errorf("%s: plain HTTP answered on 2376", m.Name)
			}
		}
	}

	// The cluster's own attachable overlay network, unencrypted by default.
	if n, err := mgr.NetworkInspect(ctx, "demo-overlay", network.InspectOptions{}); err != nil {
		t.Errorf("the cluster's overlay network: %v", err)
	} else if _, enc := n.Options["encrypted"]; enc || n.Driver != "overlay" || !n.Attachable {
		t.Errorf("demo-overlay: driver %s, attachable %v, options %v", n.Driver, n.Attachable, n.Options)
	}

	overlayService(t, ctx, ens, mgr, len(st.Machines))

	// A second apply with no change changes nothing and says so.
	r = mustProvision(t, ctx, nil, "apply", spec, sd, "--auto-approve")
	if !strings.Contains(r.stderr, "No changes") || !strings.Contains(r.stderr, "\n0 changed,") {
		t.Errorf("second apply was not a no-op:\n%s", r.stderr)
	}
	t.Logf("no-op apply took %s", r.took)

	// status lists the nodes with engine and swarm state.
	r = mustProvision(t, ctx, nil, "status", spec, sd)
	for _, m := range st.Machines {
		if !strings.Contains(r.stdout, m.Name) {
			t.Errorf("status lacks %s:\n%s", m.Name, r.stdout)
		}
	}
	if strings.Count(r.stdout, " ready ") < 3 {
		t.Errorf("status does not show 3 ready nodes:\n%s", r.stdout)
	}

	// env --context writes a docker CLI context that the CLI's own loader
	// turns into a working mutual-TLS client for the manager.
	cfgDir := t.TempDir()
	mustProvision(t, ctx, []string{"DOCKER_CONFIG=" + cfgDir}, "env", spec, sd, "--context", "--context-name=acc-demo")
	checkDockerContext(t, ctx, cfgDir, "acc-demo")

	// destroy leaves no container, volume or network behind.
	mustProvision(t, ctx, nil, "destroy", spec, sd, "--auto-approve")
	destroyed = true
	if left := leftovers(t, dc, st.ClusterID); len(left) > 0 {
		t.Errorf("destroy left: %v", left)
	}
}

// overlayService runs a replicated service on an overlay network, one task
// per node, and proves a task on one host reaches tasks on the others.
func overlayService(t *testing.T, ctx context.Context, ens map[string]*swarm.Engine, mgr *swarm.Engine, want int) {
	t.Helper()
	for _, e := range ens {
		busyboxImage(t, ctx, e)
	}
	nw, err := mgr.NetworkCreate(ctx, "acc-overlay", network.CreateOptions{Driver: "overlay", Attachable: true})
	if err != nil {
		t.Fatalf("create overlay network: %v", err)
	}
	replicas := uint64(want)
	maxPer := uint64(1)
	svc, err := mgr.ServiceCreate(ctx, dswarm.ServiceSpec{
		Annotations: dswarm.Annotations{Name: "acc-web"},
		TaskTemplate: dswarm.TaskSpec{
			ContainerSpec: &dswarm.ContainerSpec{Image: testImage, Command: []string{"/bin/httpd", "-f", "-p", "8080", "-h", "/www"}},
			Networks:      []dswarm.NetworkAttachmentConfig{{Target: nw.ID}},
			Placement:     &dswarm.Placement{MaxReplicas: maxPer},
		},
		Mode: dswarm.ServiceMode{Replicated: &dswarm.ReplicatedService{Replicas: &replicas}},
	}, dswarm.ServiceCreateOptions{QueryRegistry: false})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	// Every task Running, one per node.
	var tasks []dswarm.Task
	eventually(t, ctx, 3*time.Minute, "service tasks running on every node", func() error {
		ts, err := mgr.TaskList(ctx, dswarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", svc.ID), filters.Arg("desired-state", "running"))})
		if err != nil {
			return err
		}
		nodes := map[string]bool{}
		running := 0
		for _, tk := range ts {
			if tk.Status.State == dswarm.TaskStateRunning {
				running++
				nodes[tk.NodeID] = true
			} else if tk.Status.Err != "" {
				return fmt.Errorf("task %s: %s", tk.ID, tk.Status.Err)
			}
		}
		if running != want || len(nodes) != want {
			return fmt.Errorf("%d running tasks on %d nodes, want %d", running, len(nodes), want)
		}
		tasks = ts
		return nil
	})
	// Task addresses on the overlay, and which engine runs each task.
	nodes, _ := mgr.Nodes(ctx)
	host := map[string]string{}
	for _, n := range nodes {
		host[n.ID] = n.Description.Hostname
	}
	type where struct{ engine, container, ip string }
	var ws []where
	for _, tk := range tasks {
		var ip string
		for _, a := range tk.NetworksAttachments {
			if a.Network.ID == nw.ID && len(a.Addresses) > 0 {
				ip = strings.Split(a.Addresses[0], "/")[0]
			}
		}
		ws = append(ws, where{engine: host[tk.NodeID], container: tk.Status.ContainerStatus.ContainerID, ip: ip})
	}
	// From each task, fetch the page from the task on the next host.
	for i, from := range ws {
		to := ws[(i+1)%len(ws)]
		e := ens[from.engine]
		if e == nil {
			t.Fatalf("no engine for node %q", from.engine)
		}
		out, err := runIn(ctx, e, from.container, []string{"/bin/sh", "-c", "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 " + to.ip + " 8080"})
		if err != nil || !strings.Contains(out, "provision-acceptance") {
			t.Errorf("task on %s could not reach the task on %s (%s): %v %q", from.engine, to.engine, to.ip, err, out)
		}
	}
	if err := mgr.ServiceRemove(ctx, svc.ID); err != nil {
		t.Errorf("remove service: %v", err)
	}
}

// checkDockerContext loads a docker CLI context the way `docker --context`
// does and asks the engine behind it for its swarm state.
func checkDockerContext(t *testing.T, ctx context.Context, cfgDir, name string) {
	t.Helper()
	cfg := store.NewConfig(func() any { return &map[string]any{} },
		store.EndpointTypeGetter(docker.DockerEndpoint, func() any { return &docker.EndpointMeta{} }))
	s := store.New(filepath.Join(cfgDir, "contexts"), cfg)
	meta, err := s.GetMetadata(name)
	if err != nil {
		t.Fatalf("docker context %s: %v", name, err)
	}
	ep, err := docker.WithTLSData(s, name, mustEndpoint(t, meta))
	if err != nil {
		t.Fatal(err)
	}
	opts, err := ep.ClientOpts()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.NewClientWithOpts(append(opts, client.WithAPIVersionNegotiation())...)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatalf("engine through docker context %s: %v", name, err)
	}
	if info.Swarm.LocalNodeState != dswarm.LocalNodeStateActive || !info.Swarm.ControlAvailable {
		t.Errorf("docker context %s reaches a node in swarm state %q (manager: %v)", name, info.Swarm.LocalNodeState, info.Swarm.ControlAvailable)
	}
}

func mustEndpoint(t *testing.T, meta store.Metadata) docker.EndpointMeta {
	t.Helper()
	ep, err := docker.EndpointFromContext(meta)
	if err != nil {
		t.Fatal(err)
	}
	return ep
}
