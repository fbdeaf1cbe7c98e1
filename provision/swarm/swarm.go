// Package swarm bootstraps and maintains Docker Swarm through the Docker Engine
// Go SDK, talking to each engine over mutual TLS on 2376. It never shells out
// and never writes join tokens anywhere: they live in memory for one call.
package swarm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
)

// Port is where every engine listens with TLS.
const Port = 2376

// Label keys set on every node (and LabelCluster on the cluster's network).
const (
	LabelCluster = "provision.cluster"
	LabelRole    = "provision.role"
	LabelPool    = "provision.pool"
	LabelName    = "provision.machine"
)

// Engine is one host's engine API.
type Engine struct {
	Name string
	*client.Client
}

// Connect returns an SDK client for address:2376 over mutual TLS. It does no
// I/O; the first call negotiates the API version.
func Connect(name, address string, tlsConfig *tls.Config) (*Engine, error) {
	return ConnectVia(name, address, tlsConfig, nil)
}

// Dialer opens the TCP connection under the TLS session (nil: directly).
type Dialer func(ctx context.Context, network, addr string) (net.Conn, error)

// ConnectVia is Connect with the TCP connection made by dial: through an
// SSH tunnel when the engine is reached through a bastion. TLS runs end to
// end over it, verified against the node's name and address as always.
func ConnectVia(name, address string, tlsConfig *tls.Config, dial Dialer) (*Engine, error) {
	return ConnectAt(name, address, Port, tlsConfig, dial)
}

// ConnectAt is ConnectVia for an engine whose TLS port is reached at another
// port of address (a driver's forward, such as libvirt's user-mode
// networking); port 0 means Port.
func ConnectAt(name, address string, port int, tlsConfig *tls.Config, dial Dialer) (*Engine, error) {
	if port == 0 {
		port = Port
	}
	if dial == nil {
		dial = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	tr := &http.Transport{
		TLSClientConfig:     tlsConfig.Clone(),
		DialContext:         dial,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 4,
	}
	c, err := client.NewClientWithOpts(
		client.WithHost("tcp://"+net.JoinHostPort(address, strconv.Itoa(port))),
		client.WithScheme("https"),
		client.WithHTTPClient(&http.Client{Transport: tr}),
		client.WithAPIVersionNegotiation(),
	)
	if err != nil {
		return nil, fmt.Errorf("engine client for %s: %w", name, err)
	}
	return &Engine{Name: name, Client: c}, nil
}

// Local is what an engine says of its own swarm membership.
type Local struct {
	State     swarm.LocalNodeState // inactive, pending, active, error, locked
	NodeID    string
	ClusterID string
	Manager   bool
	Engine    string // engine version
}

// Inspect reads the engine's view of itself.
func (e *Engine) Inspect(ctx context.Context) (Local, error) {
	info, err := e.Info(ctx)
	if err != nil {
		return Local{}, fmt.Errorf("%s: engine info: %w", e.Name, err)
	}
	l := Local{
		State:   info.Swarm.LocalNodeState,
		NodeID:  info.Swarm.NodeID,
		Manager: info.Swarm.ControlAvailable,
		Engine:  info.ServerVersion,
	}
	if info.Swarm.Cluster != nil {
		l.ClusterID = info.Swarm.Cluster.ID
	}
	return l, nil
}

// Init makes e the first manager of a new swarm, advertising on advertise.
// An engine that is already a manager of a swarm is left as it is.
func (e *Engine) Init(ctx context.Context, advertise string) (Local, error) {
	l, err := e.Inspect(ctx)
	if err != nil {
		return l, err
	}
	if l.State == swarm.LocalNodeStateActive && l.Manager {
		return l, nil
	}
	if l.State != swarm.LocalNodeStateInactive {
		return l, fmt.Errorf("%s: swarm state is %q, cannot init", e.Name, l.State)
	}
	_, err = e.SwarmInit(ctx, swarm.InitRequest{
		ListenAddr:      "0.0.0.0:2377",
		AdvertiseAddr:   net.JoinHostPort(advertise, "2377"),
		DataPathAddr:    advertise,
		ForceNewCluster: false,
		Spec: swarm.Spec{
			Orchestration: swarm.OrchestrationConfig{TaskHistoryRetentionLimit: ptr(int64(5))},
		},
	})
	if err != nil {
		return l, fmt.Errorf("%s: swarm init: %w", e.Name, err)
	}
	return e.Inspect(ctx)
}

// ForceNewCluster re-initialises a swarm from a surviving manager after
// quorum was lost. Its state (services, secrets) is kept.
func (e *Engine) ForceNewCluster(ctx context.Context, advertise string) (Local, error) {
	_, err := e.SwarmInit(ctx, swarm.InitRequest{
		ListenAddr:      "0.0.0.0:2377",
		AdvertiseAddr:   net.JoinHostPort(advertise, "2377"),
		ForceNewCluster: true,
	})
	if err != nil {
		return Local{}, fmt.Errorf("%s: swarm init --force-new-cluster: %w", e.Name, err)
	}
	return e.Inspect(ctx)
}

// Tokens returns the join tokens. They are secrets: keep them in memory only.
type Tokens struct{ Worker, Manager string }

func (Tokens) String() string { return "REDACTED" }

// Tokens reads the join tokens from a manager.
func (e *Engine) Tokens(ctx context.Context) (Tokens, error) {
	s, err := e.SwarmInspect(ctx)
	if err != nil {
		return Tokens{}, fmt.Errorf("%s: swarm inspect: %w", e.Name, err)
	}
	return Tokens{Worker: s.JoinTokens.Worker, Manager: s.JoinTokens.Manager}, nil
}

// ErrOtherSwarm means the engine is already in a different swarm.
var ErrOtherSwarm = errors.New("engine belongs to another swarm")

// Join makes e join the swarm whose managers listen at managers (advertise
// addresses, without port) as the given role. Already being an active member
// of clusterID is success; membership of another swarm is ErrOtherSwarm.
func (e *Engine) Join(ctx context.Context, clusterID, advertise string, managers []string, t Tokens, manager bool) (Local, error) {
	l, err := e.Inspect(ctx)
	if err != nil {
		return l, err
	}
	if l.State == swarm.LocalNodeStateActive {
		if clusterID != "" && l.ClusterID != "" && l.ClusterID != clusterID {
			return l, fmt.Errorf("%s: %w (%s)", e.Name, ErrOtherSwarm, l.ClusterID)
		}
		return l, nil
	}
	if l.State != swarm.LocalNodeStateInactive {
		// pending or error: leave and join again.
		if err := e.SwarmLeave(ctx, true); err != nil {
			return l, fmt.Errorf("%s: leave half-joined swarm: %w", e.Name, err)
		}
	}
	token := t.Worker
	if manager {
		token = t.Manager
	}
	remotes := make([]string, len(managers))
	for i, m := range managers {
		remotes[i] = net.JoinHostPort(m, "2377")
	}
	err = e.SwarmJoin(ctx, swarm.JoinRequest{
		ListenAddr:    "0.0.0.0:2377",
		AdvertiseAddr: net.JoinHostPort(advertise, "2377"),
		DataPathAddr:  advertise,
		RemoteAddrs:   remotes,
		JoinToken:     token,
	})
	if err != nil {
		return l, fmt.Errorf("%s: swarm join: %w", e.Name, err)
	}
	return e.Inspect(ctx)
}

// Nodes lists the swarm's nodes as a manager sees them.
func (e *Engine) Nodes(ctx context.Context) ([]swarm.Node, error) {
	ns, err := e.NodeList(ctx, swarm.NodeListOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: node list: %w", e.Name, err)
	}
	return ns, nil
}

// SetLabels merges labels into the node's spec labels; it writes only when
// something differs.
func (e *Engine) SetLabels(ctx context.Context, nodeID string, labels map[string]string) (changed bool, err error) {
	n, _, err := e.NodeInspectWithRaw(ctx, nodeID)
	if err != nil {
		return false, fmt.Errorf("%s: node inspect %s: %w", e.Name, nodeID, err)
	}
	spec := n.Spec
	if spec.Labels == nil {
		spec.Labels = map[string]string{}
	}
	for k, v := range labels {
		if spec.Labels[k] != v {
			spec.Labels[k] = v
			changed = true
		}
	}
	if !changed {
		return false, nil
	}
	if err := e.NodeUpdate(ctx, nodeID, n.Version, spec); err != nil {
		return false, fmt.Errorf("%s: node update %s: %w", e.Name, nodeID, err)
	}
	return true, nil
}

// update applies fn to the node's spec and writes it back.
func (e *Engine) update(ctx context.Context, nodeID string, fn func(*swarm.NodeSpec)) error {
	n, _, err := e.NodeInspectWithRaw(ctx, nodeID)
	if err != nil {
		return fmt.Errorf("%s: node inspect %s: %w", e.Name, nodeID, err)
	}
	spec := n.Spec
	fn(&spec)
	if err := e.NodeUpdate(ctx, nodeID, n.Version, spec); err != nil {
		return fmt.Errorf("%s: node update %s: %w", e.Name, nodeID, err)
	}
	return nil
}

// Drain sets the node's availability to drain and waits until no task of a
// service runs on it any more (its tasks are rescheduled elsewhere).
func (e *Engine) Drain(ctx context.Context, nodeID string) error {
	if err := e.update(ctx, nodeID, func(s *swarm.NodeSpec) { s.Availability = swarm.NodeAvailabilityDrain }); err != nil {
		return err
	}
	return poll(ctx, func() (bool, error) {
		ts, err := e.TaskList(ctx, swarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("node", nodeID), filters.Arg("desired-state", "running"))})
		if err != nil {
			return false, fmt.Errorf("%s: task list: %w", e.Name, err)
		}
		return len(ts) == 0, nil
	})
}

// Demote turns a manager into a worker.
func (e *Engine) Demote(ctx context.Context, nodeID string) error {
	return e.update(ctx, nodeID, func(s *swarm.NodeSpec) { s.Role = swarm.NodeRoleWorker })
}

// Remove removes a node from the node list (force: it may be down).
func (e *Engine) Remove(ctx context.Context, nodeID string) error {
	err := e.NodeRemove(ctx, nodeID, swarm.NodeRemoveOptions{Force: true})
	if err != nil && !strings.Contains(strings.ToLower(err.Error()), "not found") {
		return fmt.Errorf("%s: node remove %s: %w", e.Name, nodeID, err)
	}
	return nil
}

// WaitReady polls until every node in ids is Ready (and, for managers,
// reachable).
func (e *Engine) WaitReady(ctx context.Context, ids []string) error {
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	var last string
	err := poll(ctx, func() (bool, error) {
		ns, err := e.Nodes(ctx)
		if err != nil {
			return false, err
		}
		ready := 0
		var waiting []string
		for _, n := range ns {
			if !want[n.ID] {
				continue
			}
			ok := n.Status.State == swarm.NodeStateReady
			if n.Spec.Role == swarm.NodeRoleManager && n.ManagerStatus != nil {
				ok = ok && n.ManagerStatus.Reachability == swarm.ReachabilityReachable
			}
			if ok {
				ready++
			} else {
				waiting = append(waiting, n.Description.Hostname+"="+string(n.Status.State))
			}
		}
		last = strings.Join(waiting, ", ")
		return ready == len(want), nil
	})
	if err != nil && last != "" {
		return fmt.Errorf("%s: nodes not ready (%s): %w", e.Name, last, err)
	}
	return err
}

// Poll calls fn with backoff (first, doubling up to max) until it reports
// done, fails, or ctx ends.
func Poll(ctx context.Context, first, max time.Duration, fn func() (bool, error)) error {
	d := first
	for {
		done, err := fn()
		if err != nil || done {
			return err
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		d = min(2*d, max)
	}
}

func poll(ctx context.Context, fn func() (bool, error)) error {
	return Poll(ctx, 200*time.Millisecond, 2*time.Second, fn)
}

func ptr[T any](v T) *T { return &v }

// EnsureOverlay makes sure the cluster's attachable overlay network exists,
// with IPsec encryption of its data path when encrypted is set (the "encrypted"
// driver option). A network of that name that provision did not make is left
// alone and reported; one it made with the other encryption setting is
// re-created, which the engine refuses while services or containers use it.
func (e *Engine) EnsureOverlay(ctx context.Context, name, clusterID string, encrypted bool) (changed bool, err error) {
	n, err := e.NetworkInspect(ctx, name, network.InspectOptions{Scope: "swarm"})
	switch {
	case err == nil:
		if n.Labels[LabelCluster] != clusterID {
			return false, fmt.Errorf("network %q exists but was not made by provision for this cluster (label %s=%q): rename or remove it", name, LabelCluster, n.Labels[LabelCluster])
		}
		if _, enc := n.Options["encrypted"]; enc == encrypted {
			return false, nil
		}
		if err := e.NetworkRemove(ctx, n.ID); err != nil {
			return false, fmt.Errorf("network %q: overlay encryption changed to %v, but the network cannot be re-created while in use: %w", name, encrypted, err)
		}
	case !errdefs.IsNotFound(err):
		return false, fmt.Errorf("inspect network %q: %w", name, err)
	}
	opts := map[string]string{}
	if encrypted {
		opts["encrypted"] = ""
	}
	_, err = e.NetworkCreate(ctx, name, network.CreateOptions{
		Driver:     "overlay",
		Scope:      "swarm",
		Attachable: true,
		Options:    opts,
		Labels:     map[string]string{LabelCluster: clusterID},
	})
	if err != nil {
		return false, fmt.Errorf("create network %q: %w", name, err)
	}
	return true, nil
}
