package lb

import (
	"sort"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/redact"
	"github.com/provision/provision/provision/spec"
)

// Targets returns the load balancers the spec asks for: every driver block a
// pool uses whose driver has a load balancer (drivers.Balancer), by block
// name, then the webhook when the spec has one. None when the spec turns the
// load balancer off. en, when set, lets the webhook list the swarm's nodes.
func Targets(c *spec.Cluster, ds map[string]drivers.Driver, en Engine) []Target {
	if !c.LoadBalancer.Enabled {
		return nil
	}
	var out []Target
	for _, name := range usedDrivers(c) {
		if b, ok := ds[name].(drivers.Balancer); ok {
			out = append(out, Target{Name: name, Balancer: b})
		}
	}
	if w := c.LoadBalancer.Webhook; w != nil {
		out = append(out, Target{Name: "webhook", Balancer: &Webhook{URL: w.URL, Token: redact.Secret(w.Token), Engine: en}})
	}
	return out
}

// Unbalanced names the driver blocks pools use that have no load balancer
// (local, generic, libvirt): published ports there are reachable on every
// node directly. Empty when a webhook stands in for them or the spec turns
// the load balancer off.
func Unbalanced(c *spec.Cluster, ds map[string]drivers.Driver) []string {
	if !c.LoadBalancer.Enabled || c.LoadBalancer.Webhook != nil {
		return nil
	}
	var out []string
	for _, name := range usedDrivers(c) {
		if _, ok := ds[name].(drivers.Balancer); !ok {
			out = append(out, name)
		}
	}
	return out
}

func usedDrivers(c *spec.Cluster) []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range c.Pools() {
		if p.Count > 0 && !seen[p.Driver] {
			seen[p.Driver] = true
			out = append(out, p.Driver)
		}
	}
	sort.Strings(out)
	return out
}
