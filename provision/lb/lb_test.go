package lb

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/swarm"
	"github.com/hashicorp/hcl/v2"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/spec"
)

// fakeEngine serves a service list that tests change, and event streams
// they feed or break.
type fakeEngine struct {
	mu       sync.Mutex
	services []swarm.Service
	nodes    []swarm.Node
	streams  []chan events.Message
	errChans []chan error
	opened   int
	listErr  error
}

func (f *fakeEngine) ServiceList(ctx context.Context, _ swarm.ServiceListOptions) ([]swarm.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.listErr != nil {
		return nil, f.listErr
	}
	return slices.Clone(f.services), nil
}

func (f *fakeEngine) NodeList(ctx context.Context, _ swarm.NodeListOptions) ([]swarm.Node, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.nodes), nil
}

func (f *fakeEngine) Events(ctx context.Context, o events.ListOptions) (<-chan events.Message, <-chan error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !o.Filters.ExactMatch("type", "service") || !o.Filters.ExactMatch("type", "node") {
		panic("events not filtered on service and node types")
	}
	m, e := make(chan events.Message, 16), make(chan error, 1)
	f.streams = append(f.streams, m)
	f.errChans = append(f.errChans, e)
	f.opened++
	return m, e
}

func (f *fakeEngine) set(svcs ...swarm.Service) {
	f.mu.Lock()
	f.services = svcs
	f.mu.Unlock()
}

func (f *fakeEngine) event(typ events.Type, action string) {
	f.mu.Lock()
	s := f.streams[len(f.streams)-1]
	f.mu.Unlock()
	s <- events.Message{Type: typ, Action: events.Action(action)}
}

func (f *fakeEngine) breakStream() {
	f.mu.Lock()
	e := f.errChans[len(f.errChans)-1]
	f.mu.Unlock()
	e <- errors.New("unexpected EOF")
}

func svc(name string, ports ...swarm.PortConfig) swarm.Service {
	s := swarm.Service{Spec: swarm.ServiceSpec{Annotations: swarm.Annotations{Name: name}}}
	s.Endpoint.Ports = ports
	return s
}

func tcp(n uint32) swarm.PortConfig {
	return swarm.PortConfig{Protocol: swarm.PortConfigProtocolTCP, TargetPort: 80, PublishedPort: n, PublishMode: swarm.PortConfigPublishModeIngress}
}

// recorder is a Balancer that remembers every port set it was given.
type recorder struct {
	mu    sync.Mutex
	calls [][]int
	fail  int // fail this many calls first
	ch    chan []int
}

func newRecorder() *recorder { return &recorder{ch: make(chan []int, 64)} }

func (r *recorder) SyncPorts(ctx context.Context, cluster string, ports []drivers.PublishedPort) (drivers.LBStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail > 0 {
		r.fail--
		return drivers.LBStatus{}, errors.New("api unavailable")
	}
	p := drivers.Ports(ports)
	r.calls = append(r.calls, p)
	r.ch <- p
	return drivers.LBStatus{Exists: true, Ports: p}, nil
}
func (r *recorder) Balancer(context.Context, string) (drivers.LBStatus, error) {
	return drivers.LBStatus{}, nil
}
func (r *recorder) RemoveBalancer(context.Context, string) error { return nil }

func (r *recorder) next(t *testing.T, want []int) {
	t.Helper()
	select {
	case got := <-r.ch:
		if !slices.Equal(got, want) {
			t.Fatalf("balancer got ports %v, want %v", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no sync within 5s (want ports %v)", want)
	}
}

func (r *recorder) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case got := <-r.ch:
		t.Fatalf("unexpected sync with ports %v", got)
	case <-time.After(d):
	}
}

func TestPublished(t *testing.T) {
	en := &fakeEngine{}
	udp := tcp(53)
	udp.Protocol = swarm.PortConfigProtocolUDP
	host := tcp(9100)
	host.PublishMode = swarm.PortConfigPublishModeHost
	off := svc("admin", tcp(9000))
	off.Spec.Labels = map[string]string{LabelBalance: "off"}
	pending := svc("new")
	pending.Spec.EndpointSpec = &swarm.EndpointSpec{Ports: []swarm.PortConfig{{TargetPort: 8080, PublishedPort: 8080}}}
	en.set(svc("web", tcp(443), tcp(80)), svc("api", tcp(80)), svc("dns", udp), svc("exporter", host), off, pending, svc("internal"))
	ports, skipped, err := Published(context.Background(), en, []string{"203.0.113.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	if got := drivers.Ports(ports); !slices.Equal(got, []int{80, 443, 8080}) {
		t.Fatalf("ports %v", got)
	}
	if !slices.Equal(ports[0].Services, []string{"api", "web"}) || ports[0].Protocol != "tcp" || !slices.Equal(ports[0].Sources, []string{"203.0.113.0/24"}) {
		t.Errorf("port 80: %+v", ports[0])
	}
	if len(skipped) != 3 || skipped[0].Port != 53 || skipped[1].Port != 9000 || skipped[2].Port != 9100 {
		t.Errorf("skipped: %v", skipped)
	}
	en.listErr = errors.New("this node is not a swarm manager")
	if _, _, err := Published(context.Background(), en, nil); err == nil {
		t.Error("no error from a failed service list")
	}
}

func TestWatchFollowsEvents(t *testing.T) {
	en := &fakeEngine{}
	en.set(svc("web", tcp(80)))
	rec := newRecorder()
	r := &Reconciler{Cluster: "c1", Engine: en, Balancers: []Target{{"rec", rec}}, Debounce: 20 * time.Millisecond, Resync: time.Hour}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Watch(ctx) }()
	rec.next(t, []int{80}) // the first sync, at once

	en.set(svc("web", tcp(80)), svc("api", tcp(8080)))
	en.event(events.ServiceEventType, "create")
	rec.next(t, []int{80, 8080})

	// A burst of updates that do not change ports: no balancer call.
	for range 5 {
		en.event(events.ServiceEventType, "update")
	}
	rec.quiet(t, 200*time.Millisecond)

	// A node joins: a full sync even though the ports are the same.
	en.event(events.NodeEventType, "create")
	rec.next(t, []int{80, 8080})

	en.set(svc("web", tcp(80)))
	en.event(events.ServiceEventType, "remove")
	rec.next(t, []int{80})

	// The stream breaks: it is re-opened and a full sync follows.
	en.breakStream()
	rec.next(t, []int{80})
	en.mu.Lock()
	opened := en.opened
	en.mu.Unlock()
	if opened != 2 {
		t.Errorf("event stream opened %d times, want 2", opened)
	}
	en.set()
	en.event(events.ServiceEventType, "remove")
	rec.next(t, []int{})

	cancel()
	if err := <-done; err != nil {
		t.Errorf("watch returned %v", err)
	}
}

func TestWatchRetriesAndResyncs(t *testing.T) {
	en := &fakeEngine{}
	en.set(svc("web", tcp(80)))
	rec := newRecorder()
	rec.fail = 1
	var mu sync.Mutex
	var errs int
	r := &Reconciler{Cluster: "c1", Engine: en, Balancers: []Target{{"rec", rec}}, Debounce: 10 * time.Millisecond, Resync: 300 * time.Millisecond,
		OnSync: func(_ []Result, err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs++
			}
		}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Watch(ctx)
	rec.next(t, []int{80}) // after one failure, retried in a second
	mu.Lock()
	if errs != 1 {
		t.Errorf("%d failed syncs reported, want 1", errs)
	}
	mu.Unlock()
	rec.next(t, []int{80}) // the periodic full resync, with no event
}

func TestSyncJoinsErrors(t *testing.T) {
	en := &fakeEngine{}
	en.set(svc("web", tcp(80)))
	good, bad := newRecorder(), newRecorder()
	bad.fail = 1
	r := &Reconciler{Cluster: "c1", Engine: en, Balancers: []Target{{"bad", bad}, {"good", good}}}
	rs, _, err := r.Sync(context.Background())
	if err == nil || len(rs) != 2 || rs[0].Err == nil || rs[1].Err != nil {
		t.Fatalf("results %+v, err %v", rs, err)
	}
	good.next(t, []int{80})
}

func TestWebhook(t *testing.T) {
	var mu sync.Mutex
	var got []WebhookRequest
	var auth []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		auth = append(auth, r.Header.Get("Authorization"))
		switch r.Method {
		case http.MethodPost:
			var req WebhookRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			got = append(got, req)
			if len(req.Ports) == 2 {
				w.Write([]byte(`{"address":"lb.example","ports":[80,443],"changes":["listener 443 added"]}`))
			}
		case http.MethodGet:
			if len(got) == 0 {
				http.NotFound(w, r)
				return
			}
			w.Write([]byte(`{"address":"lb.example","ports":[80,443],"targets":2}`))
		case http.MethodDelete:
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	defer srv.Close()
	en := &fakeEngine{nodes: []swarm.Node{
		{Description: swarm.NodeDescription{Hostname: "b"}, Status: swarm.NodeStatus{State: swarm.NodeStateReady, Addr: "10.0.0.2"}, Spec: swarm.NodeSpec{Role: swarm.NodeRoleWorker, Availability: swarm.NodeAvailabilityActive}},
		{Description: swarm.NodeDescription{Hostname: "a"}, Status: swarm.NodeStatus{State: swarm.NodeStateReady, Addr: "10.0.0.1"}, Spec: swarm.NodeSpec{Role: swarm.NodeRoleManager, Availability: swarm.NodeAvailabilityActive}},
	}}
	w := &Webhook{URL: srv.URL, Token: []byte("s3cret"), Engine: en}
	ctx := context.Background()
	if st, err := w.Balancer(ctx, "c1"); err != nil || st.Exists {
		t.Fatalf("before: %+v %v", st, err)
	}
	st, err := w.SyncPorts(ctx, "c1", []drivers.PublishedPort{{Port: 80, Protocol: "tcp"}})
	if err != nil || !st.Exists || !slices.Equal(st.Ports, []int{80}) || st.Targets != 2 {
		t.Fatalf("sync: %+v %v", st, err)
	}
	st, err = w.SyncPorts(ctx, "c1", []drivers.PublishedPort{{Port: 80}, {Port: 443}})
	if err != nil || st.Address != "lb.example" || len(st.Changes) != 1 {
		t.Fatalf("sync 2: %+v %v", st, err)
	}
	if st, err := w.Balancer(ctx, "c1"); err != nil || !st.Exists || st.Targets != 2 {
		t.Fatalf("after: %+v %v", st, err)
	}
	if err := w.RemoveBalancer(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if got[0].Cluster != "c1" || len(got[0].Nodes) != 2 || got[0].Nodes[0].Name != "a" || got[0].Nodes[0].Address != "10.0.0.1" || !got[0].Nodes[0].Ready {
		t.Errorf("request: %+v", got[0])
	}
	for _, a := range auth {
		if a != "Bearer s3cret" {
			t.Errorf("authorization %q", a)
		}
	}
	// A failure names the status and never the token.
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "token s3cret refused", http.StatusForbidden)
	}))
	defer bad.Close()
	w.URL = bad.URL
	_, err = w.SyncPorts(ctx, "c1", nil)
	if err == nil || !contains(err.Error(), "403") || contains(err.Error(), "s3cret") {
		t.Errorf("error %v", err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// balancingDriver is a driver with a load balancer; plainDriver has none.
type balancingDriver struct {
	drivers.Driver
	*recorder
}
type plainDriver struct{ drivers.Driver }

func TestTargets(t *testing.T) {
	load := func(src string) *spec.Cluster {
		t.Helper()
		c, diags := spec.LoadBytes("c.hcl", []byte(src), spec.Vars{})
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		return c
	}
	two := `name = "t"
driver "aws" { alias = "cloud" }
driver "local" {}
managers {
  driver = "cloud"
}
workers {
  driver = "local"
}
`
	ds := map[string]drivers.Driver{"cloud": balancingDriver{recorder: newRecorder()}, "local": plainDriver{}}
	c := load(two)
	if ts := Targets(c, ds, nil); len(ts) != 1 || ts[0].Name != "cloud" {
		t.Errorf("targets %+v", ts)
	}
	if un := Unbalanced(c, ds); !slices.Equal(un, []string{"local"}) {
		t.Errorf("unbalanced %v", un)
	}
	if !slices.Equal(c.LoadBalancer.PublishedCIDRs, []string{"0.0.0.0/0"}) || c.LoadBalancer.Resync != spec.DefaultResync {
		t.Errorf("defaults: %+v", c.LoadBalancer)
	}
	c = load(two + "load_balancer {\n  enabled = false\n}\n")
	if len(Targets(c, ds, nil))+len(Unbalanced(c, ds)) != 0 {
		t.Error("a disabled load balancer has targets or notes")
	}
	c = load(two + "load_balancer {\n  published_cidrs = [\"203.0.113.7/24\"]\n  webhook {\n    url = \"https://lb.example/hook\"\n    token = \"t\"\n  }\n}\n")
	if ts := Targets(c, ds, nil); len(ts) != 2 || ts[1].Name != "webhook" || len(Unbalanced(c, ds)) != 0 {
		t.Errorf("with a webhook: %+v", ts)
	}
	if !slices.Equal(c.LoadBalancer.PublishedCIDRs, []string{"203.0.113.0/24"}) {
		t.Errorf("published_cidrs %v", c.LoadBalancer.PublishedCIDRs)
	}
	for _, bad := range []string{
		"load_balancer {\n  published_cidrs = [\"nope\"]\n}\n",
		"load_balancer {\n  published_cidrs = []\n}\n",
		"load_balancer {\n  resync = \"1s\"\n}\n",
		"load_balancer {\n  webhook {\n    url = \"ftp://x\"\n  }\n}\n",
		"load_balancer {\n  webhook {\n    url = \"https://user:pw@x/\"\n  }\n}\n",
	} {
		if _, diags := spec.LoadBytes("c.hcl", []byte(two+bad), spec.Vars{}); !diags.HasErrors() {
			t.Errorf("accepted:\n%s", bad)
		} else if d := diags.Errs()[0].(*hcl.Diagnostic); d.Subject == nil || d.Subject.Start.Line < 10 {
			t.Errorf("diagnostic without the attribute's position: %v", diags)
		}
	}
}
