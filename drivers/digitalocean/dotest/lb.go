package dotest

import (
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/digitalocean/godo"
)

// Load balancers: created "new", "active" from the next read on, with an
// address from 203.0.113.0/24; targets by droplet tag (droplet_ids filled
// from the droplets carrying it on every read). The checks are the real
// API's where the driver relies on them: at least one forwarding rule, ports
// 1-65535, a known region, tag and VPC, firewall entries as "cidr:..." or
// "ip:...", a unique name.

// LoadBalancers returns copies of the balancers the server holds.
func (s *Server) LoadBalancers() []godo.LoadBalancer {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []godo.LoadBalancer
	for _, id := range sortedKeysOf(s.lbs) {
		out = append(out, s.lbView(s.lbs[id]))
	}
	return out
}

func sortedKeysOf[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// lbView fills what the API computes: targets by tag, the state.
func (s *Server) lbView(lb *godo.LoadBalancer) godo.LoadBalancer {
	out := *lb
	out.DropletIDs = nil
	if lb.Tag != "" {
		for _, d := range sortedValues(s.droplets, func(d *droplet) string { return fmt.Sprintf("%012d", d.ID) }) {
			if slices.Contains(d.Tags, lb.Tag) {
				out.DropletIDs = append(out.DropletIDs, d.ID)
			}
		}
	}
	out.ForwardingRules = slices.Clone(lb.ForwardingRules)
	return out
}

func (s *Server) checkLB(req *godo.LoadBalancerRequest, self string) *apiErr {
	if req.Name == "" {
		return errf(422, "unprocessable_entity", "name is required")
	}
	for id, lb := range s.lbs {
		if id != self && lb.Name == req.Name {
			return errf(422, "unprocessable_entity", "a load balancer named %s already exists", req.Name)
		}
	}
	if !s.regionOK(req.Region) {
		return errf(422, "unprocessable_entity", "region %q is not available", req.Region)
	}
	if len(req.ForwardingRules) == 0 {
		return errf(422, "unprocessable_entity", "at least one forwarding rule is required")
	}
	for _, f := range req.ForwardingRules {
		if f.EntryPort < 1 || f.EntryPort > 65535 || f.TargetPort < 1 || f.TargetPort > 65535 {
			return errf(422, "unprocessable_entity", "forwarding rule ports must be 1-65535")
		}
		switch f.EntryProtocol {
		case "tcp", "udp", "http", "https", "http2", "http3":
		default:
			return errf(422, "unprocessable_entity", "entry protocol %q", f.EntryProtocol)
		}
	}
	if req.Tag != "" && !s.tags[req.Tag] {
		return errf(422, "unprocessable_entity", "tag %q not found", req.Tag)
	}
	if req.Tag != "" && len(req.DropletIDs) > 0 {
		return errf(422, "unprocessable_entity", "droplet_ids and tag are mutually exclusive")
	}
	if req.VPCUUID != "" {
		if _, ok := s.vpcs[req.VPCUUID]; !ok {
			return errf(422, "unprocessable_entity", "vpc %s not found", req.VPCUUID)
		}
	}
	if req.Firewall != nil {
		for _, a := range append(slices.Clone(req.Firewall.Allow), req.Firewall.Deny...) {
			if !strings.HasPrefix(a, "cidr:") && !strings.HasPrefix(a, "ip:") {
				return errf(422, "unprocessable_entity", "firewall rule %q: use cidr:... or ip:...", a)
			}
		}
	}
	return nil
}

func (s *Server) routeLBs(m string, rest []string, r *http.Request, decode func(any) *apiErr) (int, any, *apiErr) {
	switch {
	case len(rest) == 0 && m == "GET":
		var out []godo.LoadBalancer
		for _, id := range sortedKeysOf(s.lbs) {
			out = append(out, s.lbView(s.lbs[id]))
		}
		return page(r, "load_balancers", out)
	case len(rest) == 0 && m == "POST":
		var req godo.LoadBalancerRequest
		if e := decode(&req); e != nil {
			return 0, nil, e
		}
		if e := s.checkLB(&req, ""); e != nil {
			return 0, nil, e
		}
		n := s.id()
		lb := &godo.LoadBalancer{ID: s.uuid(), Name: req.Name, IP: fmt.Sprintf("203.0.113.%d", 100+n%150), SizeUnit: req.SizeUnit, Status: "new",
			Created: time.Now().UTC().Format(time.RFC3339), ForwardingRules: req.ForwardingRules, HealthCheck: req.HealthCheck,
			Region: &godo.Region{Slug: req.Region}, Tag: req.Tag, Tags: req.Tags, DropletIDs: req.DropletIDs, VPCUUID: req.VPCUUID,
			Firewall: req.Firewall, Type: "REGIONAL", Network: "EXTERNAL"}
		s.lbs[lb.ID] = lb
		out := s.lbView(lb)
		return 202, map[string]any{"load_balancer": out}, nil
	}
	if len(rest) != 1 {
		return 0, nil, errf(404, "not_found", "no route")
	}
	lb, ok := s.lbs[rest[0]]
	if !ok {
		return 0, nil, errf(404, "not_found", "The resource you were accessing could not be found.")
	}
	switch m {
	case "GET":
		out := s.lbView(lb)
		lb.Status = "active"
		return 200, map[string]any{"load_balancer": out}, nil
	case "PUT":
		var req godo.LoadBalancerRequest
		if e := decode(&req); e != nil {
			return 0, nil, e
		}
		if e := s.checkLB(&req, lb.ID); e != nil {
			return 0, nil, e
		}
		if req.Region != lb.Region.Slug {
			return 0, nil, errf(422, "unprocessable_entity", "the region of a load balancer cannot change")
		}
		lb.Name, lb.ForwardingRules, lb.HealthCheck, lb.Tag, lb.Tags, lb.DropletIDs, lb.Firewall = req.Name, req.ForwardingRules, req.HealthCheck, req.Tag, req.Tags, req.DropletIDs, req.Firewall
		return 200, map[string]any{"load_balancer": s.lbView(lb)}, nil
	case "DELETE":
		delete(s.lbs, lb.ID)
		return 204, nil, nil
	}
	return 0, nil, errf(404, "not_found", "no route")
}
