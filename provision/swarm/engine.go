// Package swarm bootstraps and maintains Docker Swarm through the Docker Engine
// Go SDK, talking to each engine over mutual TLS on 2376. It never shells out
// and never writes join tokens anywhere: they live in memory for one call.
//
// The membership logic (init, join, demote, drain, leave, node removal,
// quorum checks, removal order and every wait) works on the API interface, a
// small subset of the SDK client: *Engine implements it over TLS, and
// swarmtest.Cluster implements it in memory for unit tests.
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

	"github.com/docker/docker/api/types/network"
	dswarm "github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/system"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
)

// Port is where every engine listens with TLS.
const Port = 2376

// Label keys set on every node (and LabelCluster on the cluster's network and
// on the swarm itself).
const (
	LabelCluster = "provision.cluster"
	LabelRole    = "provision.role"
	LabelPool    = "provision.pool"
	LabelName    = "provision.machine"
)

// API is the part of the Docker Engine API that swarm membership uses.
// *client.Client implements it (and so does *Engine, which embeds one);
// swarmtest.Cluster's engines implement it in memory.
type API interface {
	Info(ctx context.Context) (system.Info, error)
	SwarmInit(ctx context.Context, req dswarm.InitRequest) (string, error)
	SwarmJoin(ctx context.Context, req dswarm.JoinRequest) error
	SwarmLeave(ctx context.Context, force bool) error
	SwarmInspect(ctx context.Context) (dswarm.Swarm, error)
	NodeList(ctx context.Context, options dswarm.NodeListOptions) ([]dswarm.Node, error)
	NodeInspectWithRaw(ctx context.Context, nodeID string) (dswarm.Node, []byte, error)
	NodeUpdate(ctx context.Context, nodeID string, version dswarm.Version, node dswarm.NodeSpec) error
	NodeRemove(ctx context.Context, nodeID string, options dswarm.NodeRemoveOptions) error
	TaskList(ctx context.Context, options dswarm.TaskListOptions) ([]dswarm.Task, error)
	// Replicated services are scaled up around a drain (surge.go).
	ServiceList(ctx context.Context, options dswarm.ServiceListOptions) ([]dswarm.Service, error)
	ServiceInspectWithRaw(ctx context.Context, serviceID string, options dswarm.ServiceInspectOptions) (dswarm.Service, []byte, error)
	ServiceUpdate(ctx context.Context, serviceID string, version dswarm.Version, service dswarm.ServiceSpec, options dswarm.ServiceUpdateOptions) (dswarm.ServiceUpdateResponse, error)
	NetworkInspect(ctx context.Context, networkID string, options network.InspectOptions) (network.Inspect, error)
	NetworkCreate(ctx context.Context, name string, options network.CreateOptions) (network.CreateResponse, error)
	NetworkRemove(ctx context.Context, networkID string) error
	// The swarm's own security (security.go): autolock, its CA.
	SwarmUpdate(ctx context.Context, version dswarm.Version, spec dswarm.Spec, flags dswarm.UpdateFlags) error
	SwarmGetUnlockKey(ctx context.Context) (dswarm.UnlockKeyResponse, error)
	SwarmUnlock(ctx context.Context, req dswarm.UnlockRequest) error
}

var _ API = (*client.Client)(nil)

// Engine is one host's engine: the whole SDK client over mutual TLS, for
// callers that need more than membership (status, tests).
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

// Host is this engine as swarm membership sees it.
func (e *Engine) Host(advertise string) *Host {
	return &Host{Name: e.Name, Advertise: advertise, API: e.Client}
}

// Inspect reads the engine's view of itself.
func (e *Engine) Inspect(ctx context.Context) (Local, error) { return e.Host("").Inspect(ctx) }

// Nodes lists the swarm's nodes as a manager sees them.
func (e *Engine) Nodes(ctx context.Context) ([]dswarm.Node, error) { return e.Host("").Nodes(ctx) }

// Host is one host's engine for membership: the name used in messages, the
// address other members reach it on (swarm advertise and data path), and its
// engine API.
type Host struct {
	Name      string
	Advertise string
	API       API
	// NodeID is the host's swarm node ID once known (set by Bootstrap and
	// Join; callers may set the recorded one).
	NodeID string
	// Bind, when set, is the host's own address the swarm's control port
	// (2377) is bound to at init and join: the private interface (CIS
	// Docker 7.2). Empty: every interface (the advertise address may not
	// be one of the host's own, behind NAT).
	Bind string
}

// Local is what an engine says of its own swarm membership.
type Local struct {
	State     dswarm.LocalNodeState // inactive, pending, active, error, locked
	NodeID    string
	ClusterID string // only managers know it
	Manager   bool
	Engine    string   // engine version
	Managers  []string // the manager addresses (host:port) the node knows
}

// Active reports whether the engine is an active member of a swarm (which
// one a worker cannot tell: its node ID must be in a manager's node list).
func (l Local) Active() bool { return l.State == dswarm.LocalNodeStateActive }

// Inspect reads the engine's view of itself.
func (h *Host) Inspect(ctx context.Context) (Local, error) {
	info, err := h.API.Info(ctx)
	if err != nil {
		return Local{}, fmt.Errorf("%s: engine info: %w", h.Name, err)
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
	for _, p := range info.Swarm.RemoteManagers {
		l.Managers = append(l.Managers, p.Addr)
	}
	return l, nil
}

func (h *Host) listen() (listen, advertise string) {
	bind := "0.0.0.0"
	if h.Bind != "" {
		bind = h.Bind
	}
	return net.JoinHostPort(bind, "2377"), net.JoinHostPort(h.Advertise, "2377")
}

// init makes h the first manager of a new swarm labelled with the cluster's
// ID. An engine that is already a manager of a swarm is left as it is.
func (h *Host) init(ctx context.Context, clusterLabel string) (Local, bool, error) {
	l, err := h.Inspect(ctx)
	if err != nil {
		return l, false, err
	}
	if l.Active() && l.Manager {
		return l, false, nil
	}
	if l.State != dswarm.LocalNodeStateInactive {
		return l, false, fmt.Errorf("%s: swarm state is %q, cannot init", h.Name, l.State)
	}
	listen, adv := h.listen()
	req := dswarm.InitRequest{
		ListenAddr:    listen,
		AdvertiseAddr: adv,
		DataPathAddr:  h.Advertise,
		Spec: dswarm.Spec{
			Orchestration: dswarm.OrchestrationConfig{TaskHistoryRetentionLimit: ptr(int64(5))},
		},
	}
	if clusterLabel != "" {
		req.Spec.Annotations.Labels = map[string]string{LabelCluster: clusterLabel}
	}
	if _, err = h.API.SwarmInit(ctx, req); err != nil {
		return l, false, fmt.Errorf("%s: swarm init: %w", h.Name, err)
	}
	l, err = h.Inspect(ctx)
	return l, true, err
}

// ForceNewCluster re-initialises a swarm from a surviving manager after
// quorum was lost, or from a restored raft: its state (services, secrets,
// configs) is kept and it is the only manager.
func (h *Host) ForceNewCluster(ctx context.Context) (Local, error) {
	return h.forceNewCluster(ctx)
}

func (h *Host) forceNewCluster(ctx context.Context) (Local, error) {
	listen, adv := h.listen()
	_, err := h.API.SwarmInit(ctx, dswarm.InitRequest{ListenAddr: listen, AdvertiseAddr: adv, ForceNewCluster: true})
	if err != nil {
		return Local{}, fmt.Errorf("%s: swarm init --force-new-cluster: %w", h.Name, err)
	}
	return h.Inspect(ctx)
}

// Tokens are the join tokens. They are secrets: keep them in memory only.
type Tokens struct{ Worker, Manager string }

func (Tokens) String() string { return "REDACTED" }

// tokens reads the join tokens from a manager.
func (h *Host) tokens(ctx context.Context) (Tokens, error) {
	s, err := h.API.SwarmInspect(ctx)
	if err != nil {
		return Tokens{}, fmt.Errorf("%s: swarm inspect: %w", h.Name, err)
	}
	return Tokens{Worker: s.JoinTokens.Worker, Manager: s.JoinTokens.Manager}, nil
}

// ErrOtherSwarm means the engine is already in a different swarm.
var ErrOtherSwarm = errors.New("engine belongs to another swarm")

// errBackground is the engine's answer when its own wait for a join ended
// while the join goes on.
const errBackground = "will continue in the background"

// join asks h to join the swarm whose managers listen at managers (advertise
// addresses, without port) as the given role. It returns the engine's view
// before the call. A join still pending or failed is left first.
func (h *Host) join(ctx context.Context, managers []string, t Tokens, manager bool) error {
	l, err := h.Inspect(ctx)
	if err != nil {
		return err
	}
	if l.State != dswarm.LocalNodeStateInactive {
		// pending or error: leave and join again.
		if err := h.API.SwarmLeave(ctx, true); err != nil {
			return fmt.Errorf("%s: leave half-joined swarm: %w", h.Name, err)
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
	listen, adv := h.listen()
	err = h.API.SwarmJoin(ctx, dswarm.JoinRequest{
		ListenAddr:    listen,
		AdvertiseAddr: adv,
		DataPathAddr:  h.Advertise,
		RemoteAddrs:   remotes,
		JoinToken:     token,
	})
	if err != nil {
		return fmt.Errorf("%s: swarm join: %w", h.Name, err)
	}
	return nil
}

// Leave makes the engine leave whatever swarm it is in (force: also a
// manager, which must have been demoted or be dead weight already).
func (h *Host) Leave(ctx context.Context) error {
	if err := h.API.SwarmLeave(ctx, true); err != nil && !strings.Contains(err.Error(), "not part of a swarm") {
		return fmt.Errorf("%s: swarm leave: %w", h.Name, err)
	}
	return nil
}

// Nodes lists the swarm's nodes as a manager sees them.
func (h *Host) Nodes(ctx context.Context) ([]dswarm.Node, error) {
	ns, err := h.API.NodeList(ctx, dswarm.NodeListOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: node list: %w", h.Name, err)
	}
	return ns, nil
}

// update applies fn to the node's spec and writes it back when it changed
// (rewrite).
func (h *Host) update(ctx context.Context, nodeID string, fn func(*dswarm.NodeSpec) bool) (bool, error) {
	return rewrite(ctx, h.Name, "node", nodeID,
		func(ctx context.Context) (dswarm.NodeSpec, dswarm.Version, error) {
			n, _, err := h.API.NodeInspectWithRaw(ctx, nodeID)
			if n.Spec.Labels != nil {
				n.Spec.Labels = cloneMap(n.Spec.Labels)
			}
			return n.Spec, n.Version, err
		},
		func(ctx context.Context, v dswarm.Version, spec dswarm.NodeSpec) error {
			return h.API.NodeUpdate(ctx, nodeID, v, spec)
		}, fn)
}

// updateService applies fn to the service's spec and writes it back when
// it changed (rewrite); only what fn changes changes, so no task restarts
// unless fn touches the task template.
func (h *Host) updateService(ctx context.Context, serviceID string, fn func(*dswarm.ServiceSpec) bool) (bool, error) {
	return rewrite(ctx, h.Name, "service", serviceID,
		func(ctx context.Context) (dswarm.ServiceSpec, dswarm.Version, error) {
			s, _, err := h.API.ServiceInspectWithRaw(ctx, serviceID, dswarm.ServiceInspectOptions{})
			s.Spec.Labels = cloneMap(s.Spec.Labels)
			return s.Spec, s.Version, err
		},
		func(ctx context.Context, v dswarm.Version, spec dswarm.ServiceSpec) error {
			_, err := h.API.ServiceUpdate(ctx, serviceID, v, spec, dswarm.ServiceUpdateOptions{})
			return err
		}, fn)
}

// rewrite reads a swarm object's spec (read copies its labels), applies fn
// and writes it back at the version read when fn changed it.
// The swarm changes objects itself (a demotion going through, a status
// update, a scaling), so a write can find that version outdated ("update
// out of sequence"): it reads again and retries, for a few seconds.
func rewrite[S dswarm.NodeSpec | dswarm.ServiceSpec](ctx context.Context, host, kind, id string,
	read func(context.Context) (S, dswarm.Version, error),
	write func(context.Context, dswarm.Version, S) error,
	fn func(*S) bool) (bool, error) {
	var changed bool
	var lastErr error
	uctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	err := Poll(uctx, 100*time.Millisecond, time.Second, func() (bool, error) {
		spec, version, err := read(ctx)
		if err != nil {
			return false, fmt.Errorf("%s: %s inspect %s: %w", host, kind, id, err)
		}
		if changed = fn(&spec); !changed {
			return true, nil
		}
		err = write(ctx, version, spec)
		if err != nil && strings.Contains(err.Error(), "out of sequence") {
			lastErr = err
			return false, nil // someone else wrote first: read again
		}
		if err != nil {
			return false, fmt.Errorf("%s: %s update %s: %w", host, kind, id, err)
		}
		return true, nil
	})
	if err != nil && lastErr != nil && uctx.Err() != nil && ctx.Err() == nil {
		return false, fmt.Errorf("%s: %s update %s: %w", host, kind, id, lastErr)
	}
	return changed, err
}

// SetLabels sets labels on the node and deletes the keys in del; it writes
// only when something differs.
func (h *Host) SetLabels(ctx context.Context, nodeID string, set map[string]string, del []string) (changed bool, err error) {
	return h.update(ctx, nodeID, func(s *dswarm.NodeSpec) bool {
		if s.Labels == nil {
			s.Labels = map[string]string{}
		}
		for k, v := range set {
			if cur, ok := s.Labels[k]; !ok || cur != v {
				s.Labels[k] = v
				changed = true
			}
		}
		for _, k := range del {
			if _, ok := s.Labels[k]; ok {
				if _, keep := set[k]; !keep {
					delete(s.Labels, k)
					changed = true
				}
			}
		}
		return changed
	})
}

// remove removes a node from the node list (force: it may be down).
func (h *Host) remove(ctx context.Context, nodeID string) error {
	err := h.API.NodeRemove(ctx, nodeID, dswarm.NodeRemoveOptions{Force: true})
	if err != nil && !errdefs.IsNotFound(err) && !strings.Contains(strings.ToLower(err.Error()), "not found") {
		return fmt.Errorf("%s: node remove %s: %w", h.Name, nodeID, err)
	}
	return nil
}

// EnsureOverlay makes sure the cluster's attachable overlay network exists,
// with IPsec encryption of its data path when encrypted is set (the "encrypted"
// driver option). A network of that name that provision did not make is left
// alone and reported; one it made with the other encryption setting is
// re-created, which the engine refuses while services or containers use it.
func (h *Host) EnsureOverlay(ctx context.Context, name, clusterID string, encrypted bool) (changed bool, err error) {
	n, err := h.API.NetworkInspect(ctx, name, network.InspectOptions{Scope: "swarm"})
	switch {
	case err == nil:
		if n.Labels[LabelCluster] != clusterID {
			return false, fmt.Errorf("network %q exists but was not made by provision for this cluster (label %s=%q): rename or remove it", name, LabelCluster, n.Labels[LabelCluster])
		}
		if _, enc := n.Options["encrypted"]; enc == encrypted {
			return false, nil
		}
		if err := h.API.NetworkRemove(ctx, n.ID); err != nil {
			return false, fmt.Errorf("network %q: overlay encryption changed to %v, but the network cannot be re-created while in use: %w", name, encrypted, err)
		}
	case !errdefs.IsNotFound(err):
		return false, fmt.Errorf("inspect network %q: %w", name, err)
	}
	opts := map[string]string{}
	if encrypted {
		opts["encrypted"] = ""
	}
	_, err = h.API.NetworkCreate(ctx, name, network.CreateOptions{
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

func ptr[T any](v T) *T { return &v }

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
