package apply

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/lb"
	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/spec"
)

// loadBalancer is the phase after the swarm: every load balancer the spec
// asks for (lb.Targets) serves exactly the TCP ports services publish through
// the routing mesh, with the cluster's machines as its targets. On drivers
// without one, published ports are named in a note: they are reachable on
// every node directly. One service list on a manager when nothing changed.
type loadBalancer struct{}

func (loadBalancer) Name() string { return "load-balancer" }

func (loadBalancer) Run(ctx context.Context, r *run) error {
	if r.members == nil || r.members.Via() == nil {
		return nil // no manager in the swarm: the swarm phase said why
	}
	en, ok := r.members.Via().API.(lb.Engine)
	if !ok {
		return nil // an engine API without services and events (tests)
	}
	rc := &lb.Reconciler{
		Cluster:   r.State.ClusterID,
		Engine:    en,
		Balancers: lb.Targets(r.Spec, r.Drivers, en),
		Sources:   r.Spec.LoadBalancer.PublishedCIDRs,
		Log:       r.log,
	}
	if len(rc.Balancers) == 0 {
		if off := lb.Unbalanced(r.Spec, r.Drivers); len(off) > 0 {
			ports, _, err := lb.Published(ctx, en, nil)
			if err == nil && len(ports) > 0 {
				r.note("", fmt.Sprintf("services publish ports %s; driver %s has no load balancer: they are reachable on every node directly", drivers.PortList(drivers.Ports(ports)), strings.Join(off, ", ")))
			}
		}
		return nil
	}
	results, skipped, err := rc.Sync(ctx)
	for _, s := range skipped {
		r.log.Debug("published port not balanced", "service", s.Service, "port", s.Port, "reason", s.Reason)
	}
	for _, res := range results {
		if res.Err != nil {
			r.rep.Event(Event{Time: time.Now(), Kind: StepFail, Host: res.Balancer, Step: "lb.sync", Err: res.Err.Error()})
			continue
		}
		if len(res.Status.Changes) > 0 {
			r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: res.Balancer, Step: "lb.sync", Msg: strings.Join(res.Status.Changes, "; ")})
		}
		if res.Status.Note != "" {
			r.note(res.Balancer, res.Status.Note)
		}
	}
	return err
}

// removeBalancers deletes every load balancer of the cluster before its
// machines go: the drivers that have one (whatever the spec now says of it)
// and the webhook. A failure stops destroy before any machine is touched.
func (e *run) removeBalancers(ctx context.Context) error {
	if e.State.ClusterID == "" {
		return nil
	}
	e.stopReconciler(ctx)
	var names []string
	for name := range e.Drivers {
		names = append(names, name)
	}
	sort.Strings(names)
	var targets []lb.Target
	for _, name := range names {
		if b, ok := e.Drivers[name].(drivers.Balancer); ok {
			targets = append(targets, lb.Target{Name: name, Balancer: b})
		}
	}
	for _, t := range lb.Targets(e.Spec, nil, nil) {
		targets = append(targets, t) // the webhook
	}
	var errs []error
	for _, t := range targets {
		t0 := time.Now()
		st, err := t.Balancer.Balancer(ctx, e.State.ClusterID)
		if err == nil && !st.Exists {
			continue
		}
		if err := t.RemoveBalancer(ctx, e.State.ClusterID); err != nil {
			errs = append(errs, &StepError{Host: t.Name, Step: "lb.remove", Err: err})
			e.rep.Event(Event{Time: time.Now(), Kind: StepFail, Host: t.Name, Step: "lb.remove", Err: err.Error()})
			continue
		}
		e.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: t.Name, Step: "lb.remove", Msg: st.Name, Took: time.Since(t0)})
	}
	if len(errs) > 0 {
		return fmt.Errorf("the load balancers must go before the machines: %w", errors.Join(errs...))
	}
	return nil
}

// stopReconciler removes the in-cluster reconciler service (lb deploy), and
// waits for its task to stop, so that it cannot make the load balancer again
// while destroy removes it. Best effort: managers that do not answer cannot
// be asked, and destroy goes on.
func (e *run) stopReconciler(ctx context.Context) {
	cfg, err := pki.ClientTLS(e.Store.PKIDir())
	if err != nil {
		return
	}
	for _, m := range e.State.Machines {
		if m.Role != spec.RoleManager || m.Address == "" || m.NodeID == "" {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		en, err := e.ConnectEngine(cctx, m.Machine, cfg) // through the bastion's tunnel when there is one
		if err != nil {
			cancel()
			continue
		}
		removed, err := lb.Undeploy(cctx, en.Client, e.State.ClusterID)
		cancel()
		en.Close()
		if err != nil {
			e.log.Debug("remove the in-cluster reconciler", "host", m.Name, "err", err)
			continue
		}
		if removed {
			e.note(m.Name, "removed the in-cluster load balancer reconciler ("+lb.ServiceName+")")
		}
		return
	}
}
