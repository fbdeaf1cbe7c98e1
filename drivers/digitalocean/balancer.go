package digitalocean

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/digitalocean/godo"

	"github.com/provision/provision/drivers"
)

// The load balancer (drivers.Balancer): a regional DigitalOcean load
// balancer named like the VPC and firewall, in the cluster's VPC, whose
// targets are the droplets carrying the cluster tag (so new droplets join by
// themselves). Per published port a TCP forwarding rule to the same port; one
// TCP health check (DigitalOcean has one per balancer) on the lowest port:
// the routing mesh answers on every port of a healthy node alike. Clients are
// limited to the published CIDRs by the balancer's own firewall. A second
// cloud firewall "<name>-lb" on the cluster tag opens exactly the published
// ports, from the balancer only (DigitalOcean applies the union of the
// firewalls a droplet is in; the cluster firewall is not touched).
//
// A DigitalOcean balancer cannot exist without a forwarding rule: when no
// port is published any more it is deleted, and the next published port
// makes a new one, with a new address.

var _ drivers.Balancer = (*Driver)(nil)

func (d *Driver) lbName(cluster string) string   { return d.baseName(cluster) }
func (d *Driver) lbFWName(cluster string) string { return d.baseName(cluster) + "-lb" }

// findLB returns the cluster's balancer (by name, targeting the cluster
// tag), or nil; one of that name that targets something else is refused.
func (d *Driver) findLB(ctx context.Context, cli *godo.Client, cluster string) (*godo.LoadBalancer, error) {
	lbs, err := listAll(ctx, func(o *godo.ListOptions) ([]godo.LoadBalancer, *godo.Response, error) {
		return cli.LoadBalancers.List(ctx, o)
	})
	if err != nil {
		return nil, fmt.Errorf("list load balancers: %w", d.explain(err))
	}
	for i := range lbs {
		if lbs[i].Name != d.lbName(cluster) {
			continue
		}
		if lbs[i].Tag != clusterTag(cluster) {
			return nil, fmt.Errorf("a load balancer named %s (%s) exists that targets %q, not the cluster tag: provision did not make it; rename or delete it", lbs[i].Name, lbs[i].ID, lbs[i].Tag)
		}
		return &lbs[i], nil
	}
	return nil, nil
}

// findLBFirewall returns the balancer's droplet firewall, or nil.
func (d *Driver) findLBFirewall(ctx context.Context, cli *godo.Client, cluster string) (*godo.Firewall, error) {
	fws, err := listAll(ctx, func(o *godo.ListOptions) ([]godo.Firewall, *godo.Response, error) { return cli.Firewalls.List(ctx, o) })
	if err != nil {
		return nil, fmt.Errorf("list firewalls: %w", d.explain(err))
	}
	for i := range fws {
		if fws[i].Name == d.lbFWName(cluster) && slices.Contains(fws[i].Tags, clusterTag(cluster)) {
			return &fws[i], nil
		}
	}
	return nil, nil
}

func lbStatus(lb *godo.LoadBalancer) drivers.LBStatus {
	if lb == nil {
		return drivers.LBStatus{}
	}
	st := drivers.LBStatus{Exists: true, Name: lb.Name, ID: lb.ID, Address: lb.IP, State: lb.Status, Targets: len(lb.DropletIDs)}
	for _, f := range lb.ForwardingRules {
		st.Ports = append(st.Ports, f.EntryPort)
	}
	sort.Ints(st.Ports)
	return st
}

// Balancer reports the cluster's load balancer.
func (d *Driver) Balancer(ctx context.Context, cluster string) (drivers.LBStatus, error) {
	cli, err := d.api()
	if err != nil {
		return drivers.LBStatus{}, err
	}
	lb, err := d.findLB(ctx, cli, cluster)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	return lbStatus(lb), nil
}

// lbRequest is the balancer as ports want it.
func (d *Driver) lbRequest(cluster, vpc string, ports []drivers.PublishedPort) *godo.LoadBalancerRequest {
	req := &godo.LoadBalancerRequest{
		Name: d.lbName(cluster), Region: d.cfg.Region, SizeUnit: 1, Tag: clusterTag(cluster), VPCUUID: vpc,
		HealthCheck: &godo.HealthCheck{Protocol: "tcp", Port: ports[0].Port, CheckIntervalSeconds: 10, ResponseTimeoutSeconds: 5, HealthyThreshold: 3, UnhealthyThreshold: 3},
	}
	var allow []string
	for _, p := range ports {
		req.ForwardingRules = append(req.ForwardingRules, godo.ForwardingRule{EntryProtocol: "tcp", EntryPort: p.Port, TargetProtocol: "tcp", TargetPort: p.Port})
		for _, s := range p.Sources {
			if a := "cidr:" + s; !slices.Contains(allow, a) {
				allow = append(allow, a)
			}
		}
	}
	// Anywhere is the balancer's default: no allow list at all.
	if len(allow) > 0 && !slices.Contains(allow, "cidr:"+drivers.Anywhere) {
		sort.Strings(allow)
		req.Firewall = &godo.LBFirewall{Allow: allow}
	}
	return req
}

func sameLB(lb *godo.LoadBalancer, req *godo.LoadBalancerRequest) bool {
	rules := func(fs []godo.ForwardingRule) []string {
		var out []string
		for _, f := range fs {
			out = append(out, fmt.Sprintf("%s:%d>%s:%d", f.EntryProtocol, f.EntryPort, f.TargetProtocol, f.TargetPort))
		}
		sort.Strings(out)
		return out
	}
	var allowHave, allowWant []string
	if lb.Firewall != nil {
		allowHave = slices.Sorted(slices.Values(lb.Firewall.Allow))
	}
	if req.Firewall != nil {
		allowWant = req.Firewall.Allow
	}
	hcOK := lb.HealthCheck != nil && lb.HealthCheck.Protocol == req.HealthCheck.Protocol && lb.HealthCheck.Port == req.HealthCheck.Port
	return slices.Equal(rules(lb.ForwardingRules), rules(req.ForwardingRules)) && slices.Equal(allowHave, allowWant) && hcOK
}

// SyncPorts converges the balancer and its firewall to ports.
func (d *Driver) SyncPorts(ctx context.Context, cluster string, ports []drivers.PublishedPort) (drivers.LBStatus, error) {
	cli, err := d.api()
	if err != nil {
		return drivers.LBStatus{}, err
	}
	lb, err := d.findLB(ctx, cli, cluster)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	if len(ports) == 0 {
		if lb == nil {
			fw, err := d.findLBFirewall(ctx, cli, cluster)
			if err != nil || fw == nil {
				return drivers.LBStatus{}, err
			}
		}
		if err := d.RemoveBalancer(ctx, cluster); err != nil {
			return drivers.LBStatus{}, err
		}
		st := drivers.LBStatus{Note: "no port is published: the DigitalOcean load balancer was removed (one needs a forwarding rule); the next published port makes a new one with a new address"}
		if lb != nil {
			st.Changes = []string{"load balancer " + lb.Name + " removed (no published port)"}
		}
		return st, nil
	}
	var changes []string
	ports = slices.Clone(ports)
	sort.Slice(ports, func(i, j int) bool { return ports[i].Port < ports[j].Port })
	vpc := d.cfg.VPCUUID
	if vpc == "" {
		v, err := d.findVPC(ctx, cli, cluster)
		if err != nil {
			return drivers.LBStatus{}, err
		}
		if v == nil {
			return drivers.LBStatus{}, fmt.Errorf("the cluster's vpc %s is missing: run apply", d.baseName(cluster))
		}
		vpc = v.ID
	}
	req := d.lbRequest(cluster, vpc, ports)
	if lb == nil {
		err := d.once(ctx, "load balancer",
			func() (bool, error) {
				l, err := d.findLB(ctx, cli, cluster)
				lb = l
				return l != nil, err
			},
			func() error {
				l, _, err := cli.LoadBalancers.Create(ctx, req)
				lb = l
				return err
			})
		if err != nil {
			return drivers.LBStatus{}, fmt.Errorf("create load balancer %s: %w", req.Name, d.explain(err))
		}
		changes = append(changes, "load balancer "+req.Name+" created")
		for _, p := range ports {
			changes = append(changes, fmt.Sprintf("forwarding rule %d added (%s)", p.Port, strings.Join(p.Services, ", ")))
		}
		d.log.InfoContext(ctx, "created load balancer", "cluster", cluster, "id", lb.ID)
	} else if !sameLB(lb, req) {
		before := lbStatus(lb).Ports
		l, _, err := cli.LoadBalancers.Update(ctx, lb.ID, req)
		if err != nil {
			return drivers.LBStatus{}, fmt.Errorf("update load balancer %s: %w", req.Name, d.explain(err))
		}
		lb = l
		for _, p := range ports {
			if !slices.Contains(before, p.Port) {
				changes = append(changes, fmt.Sprintf("forwarding rule %d added (%s)", p.Port, strings.Join(p.Services, ", ")))
			}
		}
		for _, p := range before {
			if !slices.Contains(drivers.Ports(ports), p) {
				changes = append(changes, fmt.Sprintf("forwarding rule %d removed", p))
			}
		}
		if len(changes) == 0 {
			changes = append(changes, "health check or allowed clients updated")
		}
	}
	c, err := d.syncLBFirewall(ctx, cli, cluster, lb.ID, ports)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	st := lbStatus(lb)
	st.Changes = append(changes, c...)
	return st, nil
}

// syncLBFirewall makes the "<name>-lb" firewall on the cluster tag open
// exactly ports, from the balancer only.
func (d *Driver) syncLBFirewall(ctx context.Context, cli *godo.Client, cluster, lbID string, ports []drivers.PublishedPort) ([]string, error) {
	name := d.lbFWName(cluster)
	req := &godo.FirewallRequest{Name: name, Tags: []string{clusterTag(cluster)}}
	for _, p := range ports {
		req.InboundRules = append(req.InboundRules, godo.InboundRule{Protocol: "tcp", PortRange: strconv.Itoa(p.Port), Sources: &godo.Sources{LoadBalancerUIDs: []string{lbID}}})
	}
	fw, err := d.findLBFirewall(ctx, cli, cluster)
	if err != nil {
		return nil, err
	}
	if fw == nil {
		err := d.once(ctx, "firewall",
			func() (bool, error) {
				f, err := d.findLBFirewall(ctx, cli, cluster)
				fw = f
				return f != nil, err
			},
			func() error {
				f, _, err := cli.Firewalls.Create(ctx, req)
				fw = f
				return err
			})
		if err != nil {
			return nil, fmt.Errorf("create firewall %s: %w", name, d.explain(err))
		}
		return []string{fmt.Sprintf("firewall %s: ports %s open from the load balancer", name, drivers.PortList(drivers.Ports(ports)))}, nil
	}
	have := map[string]bool{}
	for _, r := range fw.InboundRules {
		if r.Sources != nil && slices.Equal(r.Sources.LoadBalancerUIDs, []string{lbID}) && len(r.Sources.Addresses)+len(r.Sources.Tags) == 0 && r.Protocol == "tcp" {
			have[r.PortRange] = true
		}
	}
	same := len(fw.InboundRules) == len(ports) && len(fw.OutboundRules) == 0
	for _, p := range ports {
		same = same && have[strconv.Itoa(p.Port)]
	}
	if same {
		return nil, nil
	}
	req.DropletIDs = fw.DropletIDs
	if _, _, err := cli.Firewalls.Update(ctx, fw.ID, req); err != nil {
		return nil, fmt.Errorf("update firewall %s: %w", name, d.explain(err))
	}
	return []string{fmt.Sprintf("firewall %s: exactly ports %s open from the load balancer", name, drivers.PortList(drivers.Ports(ports)))}, nil
}

// RemoveBalancer deletes the balancer's firewall and the balancer.
func (d *Driver) RemoveBalancer(ctx context.Context, cluster string) error {
	cli, err := d.api()
	if err != nil {
		return err
	}
	fw, err := d.findLBFirewall(ctx, cli, cluster)
	if err != nil {
		return err
	}
	if fw != nil {
		if _, err := cli.Firewalls.Delete(ctx, fw.ID); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete firewall %s: %w", fw.Name, d.explain(err))
		}
	}
	lb, err := d.findLB(ctx, cli, cluster)
	if err != nil {
		return err
	}
	if lb != nil {
		if _, err := cli.LoadBalancers.Delete(ctx, lb.ID); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete load balancer %s: %w", lb.Name, d.explain(err))
		}
		d.log.InfoContext(ctx, "deleted load balancer", "cluster", cluster, "id", lb.ID)
	}
	return nil
}

// balancerResources lists the balancer and its firewall for plan.
func (d *Driver) balancerResources(ctx context.Context, cli *godo.Client, cluster, action string) ([]drivers.Resource, error) {
	lb, err := d.findLB(ctx, cli, cluster)
	if err != nil {
		return nil, err
	}
	fw, err := d.findLBFirewall(ctx, cli, cluster)
	if err != nil {
		return nil, err
	}
	var out []drivers.Resource
	if lb != nil {
		st := lbStatus(lb)
		out = append(out, drivers.Resource{Kind: "load-balancer", Name: lb.Name, ID: lb.ID, Action: action,
			Note: fmt.Sprintf("%s; ports %s; droplets tagged %s", lb.IP, drivers.PortList(st.Ports), clusterTag(cluster))})
	}
	if fw != nil {
		var ports []string
		for _, r := range fw.InboundRules {
			ports = append(ports, r.PortRange)
		}
		out = append(out, drivers.Resource{Kind: "firewall", Name: fw.Name, ID: fw.ID, Action: action, Note: "ports " + strings.Join(ports, ", ") + " from the load balancer only"})
	}
	return out, nil
}
