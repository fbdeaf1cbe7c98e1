// Package lb keeps load balancers in front of the swarm's routing mesh in
// step with the TCP ports services publish. It reads services from a manager
// through the Docker Engine API and hands the ports to drivers.Balancer
// implementations; it knows nothing of clouds.
//
// The same Reconciler runs in three places: once per `provision apply` (a
// phase after the swarm is formed), in `provision lb sync FILE [--watch]` on
// the operator's machine (over the engine's TLS port), and as a swarm service
// on the managers (`provision lb sync --in-cluster`, over the local socket).
package lb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"

	"github.com/provision/provision/drivers"
)

// Engine is the part of the Docker Engine API the reconciler uses; the SDK's
// *client.Client has it.
type Engine interface {
	ServiceList(ctx context.Context, options swarm.ServiceListOptions) ([]swarm.Service, error)
	NodeList(ctx context.Context, options swarm.NodeListOptions) ([]swarm.Node, error)
	Events(ctx context.Context, options events.ListOptions) (<-chan events.Message, <-chan error)
}

// LabelBalance is the service label that keeps a service's ports off the
// load balancer: provision.lb=off (or false, no, 0).
const LabelBalance = "provision.lb"

// Target is one load balancer the reconciler drives, by the name of the
// driver block (or "webhook").
type Target struct {
	Name string
	drivers.Balancer
}

// Skipped is a published port the load balancer does not serve, and why.
type Skipped struct {
	Service string `json:"service"`
	Port    int    `json:"port"`
	Reason  string `json:"reason"`
}

func (s Skipped) String() string { return fmt.Sprintf("%s %d (%s)", s.Service, s.Port, s.Reason) }

// Published lists the TCP ports services publish through the routing mesh
// (PublishMode ingress), each with the services that publish it and sources
// as the allowed client CIDRs, sorted by port; and the published ports it
// leaves out (UDP/SCTP, host mode, services labelled provision.lb=off).
func Published(ctx context.Context, en Engine, sources []string) ([]drivers.PublishedPort, []Skipped, error) {
	svcs, err := en.ServiceList(ctx, swarm.ServiceListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("list services: %w", err)
	}
	byPort := map[int]*drivers.PublishedPort{}
	var skipped []Skipped
	for _, s := range svcs {
		name := s.Spec.Name
		ports := s.Endpoint.Ports
		if len(ports) == 0 && s.Spec.EndpointSpec != nil {
			// Not allocated yet: what the spec asks for, when it names a port.
			ports = s.Spec.EndpointSpec.Ports
		}
		off := labelOff(s.Spec.Labels[LabelBalance])
		for _, p := range ports {
			n := int(p.PublishedPort)
			if n == 0 {
				continue
			}
			mode := p.PublishMode
			if mode == "" {
				mode = swarm.PortConfigPublishModeIngress
			}
			proto := p.Protocol
			if proto == "" {
				proto = swarm.PortConfigProtocolTCP
			}
			switch {
			case mode != swarm.PortConfigPublishModeIngress:
				skipped = append(skipped, Skipped{name, n, "host mode: only on the nodes running a task, not through the routing mesh"})
			case proto != swarm.PortConfigProtocolTCP:
				skipped = append(skipped, Skipped{name, n, string(proto) + ": only TCP is balanced"})
			case off:
				skipped = append(skipped, Skipped{name, n, "label " + LabelBalance + "=" + s.Spec.Labels[LabelBalance]})
			default:
				pp, ok := byPort[n]
				if !ok {
					pp = &drivers.PublishedPort{Port: n, Protocol: "tcp", Sources: slices.Clone(sources)}
					byPort[n] = pp
				}
				if !slices.Contains(pp.Services, name) {
					pp.Services = append(pp.Services, name)
					sort.Strings(pp.Services)
				}
			}
		}
	}
	out := make([]drivers.PublishedPort, 0, len(byPort))
	for _, p := range byPort {
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Port < out[j].Port })
	sort.Slice(skipped, func(i, j int) bool {
		if skipped[i].Port != skipped[j].Port {
			return skipped[i].Port < skipped[j].Port
		}
		return skipped[i].Service < skipped[j].Service
	})
	return out, skipped, nil
}

func labelOff(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "off", "false", "no", "0":
		return true
	}
	return false
}

// Result is one load balancer's answer to a sync.
type Result struct {
	Balancer string           `json:"balancer"`
	Status   drivers.LBStatus `json:"status"`
	Err      error            `json:"-"`
}

// Reconciler converges Balancers to the ports the swarm publishes.
type Reconciler struct {
	Cluster   string // the cluster ID the balancers' resources are tagged with
	Engine    Engine // a manager's engine
	Balancers []Target
	Sources   []string // allowed client CIDRs (the spec's published_cidrs)
	Log       *slog.Logger
	// Resync is the period of full syncs while watching (default 5m).
	Resync time.Duration
	// Debounce gathers a burst of events into one sync (default 500ms).
	Debounce time.Duration
	// OnSync, when set, is called after every sync the watch makes.
	OnSync func([]Result, error)
	// last is the port set of the last sync that succeeded everywhere.
	last []int
}

func (r *Reconciler) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

// Sync reads the published ports once and hands them to every balancer.
// Every balancer is tried; their errors come back joined, each named.
func (r *Reconciler) Sync(ctx context.Context) ([]Result, []Skipped, error) {
	ports, skipped, err := Published(ctx, r.Engine, r.Sources)
	if err != nil {
		return nil, nil, err
	}
	rs := r.sync(ctx, ports)
	return rs, skipped, joinResults(rs)
}

// sync hands ports to every balancer.
func (r *Reconciler) sync(ctx context.Context, ports []drivers.PublishedPort) []Result {
	out := make([]Result, 0, len(r.Balancers))
	for _, b := range r.Balancers {
		st, err := b.SyncPorts(ctx, r.Cluster, ports)
		if err != nil {
			err = fmt.Errorf("load balancer %s: %w", b.Name, err)
		}
		out = append(out, Result{Balancer: b.Name, Status: st, Err: err})
	}
	return out
}

func joinResults(rs []Result) error {
	var errs []error
	for _, r := range rs {
		if r.Err != nil {
			errs = append(errs, r.Err)
		}
	}
	return errors.Join(errs...)
}

// Watch follows the swarm's service and node events and syncs within
// Debounce of a change, plus a full sync every Resync as a safety net (an
// event lost while the stream reconnected, a listener removed by hand). A
// failed sync is retried with backoff (1s doubling to a minute). The event
// stream is re-opened, with backoff, when it breaks (the manager restarted,
// leadership moved). Watch returns when ctx ends, with nil.
func (r *Reconciler) Watch(ctx context.Context) error {
	resync := r.Resync
	if resync <= 0 {
		resync = 5 * time.Minute
	}
	debounce := r.Debounce
	if debounce <= 0 {
		debounce = 500 * time.Millisecond
	}
	log := r.log()
	var (
		pending    = time.NewTimer(0) // the first sync right away
		full       = true             // the next sync calls the balancers even when the ports did not change
		retry      = time.Second
		reconnect  = time.Second
		streamDown <-chan time.Time
	)
	defer pending.Stop()
	ticker := time.NewTicker(resync)
	defer ticker.Stop()
	msgs, errs := r.subscribe(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-msgs:
			if !ok {
				msgs = nil
				continue
			}
			log.Debug("swarm event", "type", m.Type, "action", m.Action, "name", m.Actor.Attributes["name"])
			if m.Type == events.NodeEventType {
				full = true // targets may have changed
			}
			pending.Reset(debounce)
		case err := <-errs:
			if ctx.Err() != nil {
				return nil
			}
			log.Warn("swarm event stream broke; reconnecting", "err", err, "in", reconnect)
			msgs, errs = nil, nil
			streamDown = time.After(reconnect)
			reconnect = min(2*reconnect, time.Minute)
		case <-streamDown:
			streamDown = nil
			msgs, errs = r.subscribe(ctx)
			// Events may have been missed while the stream was down.
			full = true
			pending.Reset(debounce)
		case <-ticker.C:
			full = true
			pending.Reset(0)
		case <-pending.C:
			rs, err := r.watchSync(ctx, full)
			if r.OnSync != nil && (rs != nil || err != nil) {
				r.OnSync(rs, err)
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				log.Warn("load balancer sync failed; retrying", "err", err, "in", retry)
				pending.Reset(retry)
				retry = min(2*retry, time.Minute)
				full = true
				continue
			}
			retry = time.Second
			reconnect = time.Second
			full = false
		}
	}
}

// subscribe opens the event stream for services and nodes.
func (r *Reconciler) subscribe(ctx context.Context) (<-chan events.Message, <-chan error) {
	return r.Engine.Events(ctx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.ServiceEventType)),
		filters.Arg("type", string(events.NodeEventType)),
	)})
}

// watchSync syncs when the port set changed since the last good sync, or
// always when full. It returns nil results when nothing was called.
func (r *Reconciler) watchSync(ctx context.Context, full bool) ([]Result, error) {
	ports, skipped, err := Published(ctx, r.Engine, r.Sources)
	if err != nil {
		return nil, err
	}
	now := drivers.Ports(ports)
	if !full && r.last != nil && slices.Equal(now, r.last) {
		return nil, nil
	}
	for _, s := range skipped {
		r.log().Debug("published port not balanced", "service", s.Service, "port", s.Port, "reason", s.Reason)
	}
	rs := r.sync(ctx, ports)
	if err := joinResults(rs); err != nil {
		r.last = nil
		return rs, err
	}
	for _, res := range rs {
		if len(res.Status.Changes) > 0 {
			r.log().Info("load balancer changed", "balancer", res.Balancer, "changes", strings.Join(res.Status.Changes, "; "), "ports", drivers.PortList(res.Status.Ports))
		}
	}
	r.last = now
	if r.last == nil {
		r.last = []int{}
	}
	return rs, nil
}

// Summary renders a status in one line: "dns-name: ports 80, 443 -> 3 machines".
func Summary(st drivers.LBStatus) string {
	if !st.Exists {
		if st.Note != "" {
			return "none (" + st.Note + ")"
		}
		return "none"
	}
	addr := st.Address
	if addr == "" {
		addr = st.Name
	}
	s := addr + ": ports " + drivers.PortList(st.Ports) + " -> " + strconv.Itoa(st.Targets) + " machines"
	if st.State != "" && st.State != "active" {
		s += " (" + st.State + ")"
	}
	return s
}
