package drivers

import (
	"context"
	"slices"
	"strconv"
	"strings"
)

// Balancer is implemented by drivers whose platform has a load balancer that
// can sit in front of the swarm's routing mesh (AWS, Azure, DigitalOcean).
// The reconciler (provision/lb) reads the TCP ports services publish in
// ingress mode and hands them to SyncPorts; it knows nothing of clouds.
//
// The load balancer's targets are the cluster's machines on this driver,
// found by the cluster tag: every node answers on every published port, so
// any of them can serve. SyncPorts therefore also converges the targets
// (machines added or removed since the last call).
type Balancer interface {
	// SyncPorts makes the cluster's load balancer serve exactly ports: one
	// listener (forwarding rule) and health check per port to the same port
	// on every machine, and the firewall opening exactly those ports from the
	// load balancer (and, where the platform filters clients only at the
	// machines, from each port's Sources). With no ports, nothing is created;
	// an existing balancer keeps its address (or is removed on platforms
	// that cannot keep one without a rule: LBStatus.Note says so).
	SyncPorts(ctx context.Context, cluster string, ports []PublishedPort) (LBStatus, error)
	// Balancer reports what exists for the cluster; it changes nothing.
	// No balancer is LBStatus{Exists: false}, not an error.
	Balancer(ctx context.Context, cluster string) (LBStatus, error)
	// RemoveBalancer deletes the load balancer and everything SyncPorts made
	// for it (listeners, target groups, health checks, firewall openings).
	// Already gone counts as success.
	RemoveBalancer(ctx context.Context, cluster string) error
}

// PublishedPort is one TCP port published through the swarm's routing mesh.
type PublishedPort struct {
	Port     int      `json:"port"`
	Protocol string   `json:"protocol"`           // "tcp"
	Sources  []string `json:"sources"`            // client CIDRs allowed (the spec's published_cidrs)
	Services []string `json:"services,omitempty"` // services publishing it, for messages
}

// LBStatus is what exists of a cluster's load balancer.
type LBStatus struct {
	Exists  bool     `json:"exists"`
	Name    string   `json:"name,omitempty"`
	ID      string   `json:"id,omitempty"`
	Address string   `json:"address,omitempty"` // DNS name (AWS) or public IP (Azure, DigitalOcean)
	Ports   []int    `json:"ports,omitempty"`   // ports it serves, sorted
	Targets int      `json:"targets"`           // machines it forwards to
	State   string   `json:"state,omitempty"`   // the platform's word ("active", "provisioning", ...)
	Changes []string `json:"changes,omitempty"` // what SyncPorts changed ("listener 80 added", ...)
	Note    string   `json:"note,omitempty"`
}

// PortList renders ports as "80, 443" ("none" when empty).
func PortList(ports []int) string {
	if len(ports) == 0 {
		return "none"
	}
	s := slices.Clone(ports)
	slices.Sort(s)
	out := make([]string, len(s))
	for i, p := range s {
		out[i] = strconv.Itoa(p)
	}
	return strings.Join(out, ", ")
}

// Ports returns the port numbers of ps, sorted.
func Ports(ps []PublishedPort) []int {
	out := make([]int, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Port)
	}
	slices.Sort(out)
	return out
}

// Anywhere is the default published_cidrs: every IPv4 address.
const Anywhere = "0.0.0.0/0"
