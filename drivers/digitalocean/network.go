package digitalocean

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/digitalocean/godo"

	"github.com/provision/provision/drivers"
)

// Ports the cloud firewall opens.
const (
	portSSH       = 22
	portEngineTLS = 2376
)

// clusterShared is what all of a cluster's droplets share: the VPC, the SSH
// key and the cloud firewall. It is made once per cluster and process (under
// mu) and found again by name in the next process.
type clusterShared struct {
	mu          sync.Mutex
	ready       bool
	vpcID       string
	fingerprint string
	firewallID  string
}

// vpcDescription marks a VPC as made by this driver for the cluster; Teardown
// removes only a VPC with this name and description.
func vpcDescription(cluster string) string {
	return "provision cluster " + cluster + ": made by provision, removed by provision destroy"
}

// ensureShared makes (or finds) the cluster's tag, VPC, SSH key and
// firewall. Nothing is created before the allowed CIDRs are known.
func (d *Driver) ensureShared(ctx context.Context, cli *godo.Client, cluster, publicKey string, metrics *drivers.MetricsAccess) (*clusterShared, error) {
	d.sharedMu.Lock()
	s, ok := d.shared[cluster]
	if !ok {
		s = &clusterShared{}
		d.shared[cluster] = s
	}
	d.sharedMu.Unlock()

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ready {
		return s, nil
	}
	var allowed []string
	if d.cfg.CloudFirewall {
		var err error
		if allowed, err = d.allowedCIDRs(ctx); err != nil {
			return nil, err
		}
	}
	// The cluster tag first: the firewall names it as target and source.
	err := d.once(ctx, "tag",
		func() (bool, error) {
			_, _, err := cli.Tags.Get(ctx, clusterTag(cluster))
			if isNotFound(err) {
				return false, nil
			}
			return err == nil, err
		},
		func() error {
			_, _, err := cli.Tags.Create(ctx, &godo.TagCreateRequest{Name: clusterTag(cluster)})
			return err
		})
	if err != nil {
		return nil, fmt.Errorf("create tag %s: %w", clusterTag(cluster), d.explain(err))
	}
	if s.vpcID, err = d.ensureVPC(ctx, cli, cluster); err != nil {
		return nil, err
	}
	if s.fingerprint, err = d.ensureKey(ctx, cli, cluster, publicKey); err != nil {
		return nil, err
	}
	if d.cfg.CloudFirewall {
		if s.firewallID, err = d.ensureFirewall(ctx, cli, cluster, allowed, metrics); err != nil {
			return nil, err
		}
	}
	s.ready = true
	return s, nil
}

// once creates something through a POST that may take effect even when its
// answer is lost. find looks for it; create makes it. After an ambiguous
// failure (a server error, a dropped connection) find runs again before the
// next create, so nothing is made twice; a failure that says the request
// was refused (4xx) or never sent is returned at once.
func (d *Driver) once(ctx context.Context, what string, find func() (bool, error), create func() error) error {
	delay := d.retryMin
	for attempt := 1; ; attempt++ {
		if found, err := find(); err != nil || found {
			return err
		}
		err := create()
		if err == nil || !ambiguous(err) || attempt >= 4 {
			return err
		}
		d.log.WarnContext(ctx, "create failed without a clear answer; looking for it before trying again", "what", what, "attempt", attempt, "err", err)
		// DigitalOcean lists a new resource at once; give it a moment anyway.
		if err := sleep(ctx, delay); err != nil {
			return err
		}
		delay = min(delay*2, d.retryMax)
	}
}

// findVPC returns the VPC this driver made for the cluster (by name and
// description), or nil.
func (d *Driver) findVPC(ctx context.Context, cli *godo.Client, cluster string) (*godo.VPC, error) {
	vpcs, err := listAll(ctx, func(o *godo.ListOptions) ([]*godo.VPC, *godo.Response, error) { return cli.VPCs.List(ctx, o) })
	if err != nil {
		return nil, fmt.Errorf("list vpcs: %w", d.explain(err))
	}
	name := d.baseName(cluster)
	for _, v := range vpcs {
		if v.Name != name {
			continue
		}
		if v.Description != vpcDescription(cluster) {
			return nil, fmt.Errorf("a vpc named %s (%s) exists that provision did not make (its description differs): rename or remove it", name, v.ID)
		}
		return v, nil
	}
	return nil, nil
}

// ensureVPC returns the block's vpc_uuid, or makes (or finds) the cluster's
// own VPC in the region.
func (d *Driver) ensureVPC(ctx context.Context, cli *godo.Client, cluster string) (string, error) {
	if d.cfg.VPCUUID != "" {
		return d.cfg.VPCUUID, nil
	}
	var vpc *godo.VPC
	err := d.once(ctx, "vpc",
		func() (bool, error) {
			v, err := d.findVPC(ctx, cli, cluster)
			vpc = v
			return v != nil, err
		},
		func() error {
			v, _, err := cli.VPCs.Create(ctx, &godo.VPCCreateRequest{
				Name: d.baseName(cluster), RegionSlug: d.cfg.Region, Description: vpcDescription(cluster), IPRange: d.cfg.VPCIPRange,
			})
			if err != nil {
				return err
			}
			vpc = v
			d.log.InfoContext(ctx, "created vpc", "cluster", cluster, "vpc", v.ID, "ip_range", v.IPRange)
			return nil
		})
	if err != nil {
		return "", fmt.Errorf("create vpc %s in %s: %w", d.baseName(cluster), d.cfg.Region, d.explain(err))
	}
	if vpc.RegionSlug != "" && vpc.RegionSlug != d.cfg.Region {
		return "", fmt.Errorf("vpc %s (%s) is in region %s, the driver's region is %s (a second driver block needs its own alias)", vpc.Name, vpc.ID, vpc.RegionSlug, d.cfg.Region)
	}
	return vpc.ID, nil
}

// ensureKey finds the admin key in the account by fingerprint, or imports it
// as "provision-<cluster>". Teardown removes only a key of that name.
func (d *Driver) ensureKey(ctx context.Context, cli *godo.Client, cluster, publicKey string) (string, error) {
	if strings.TrimSpace(publicKey) == "" {
		return "", errors.New("import ssh key: the machine spec has no SSH public key")
	}
	fp, err := fingerprint(publicKey)
	if err != nil {
		return "", err
	}
	err = d.once(ctx, "ssh key",
		func() (bool, error) {
			k, _, err := cli.Keys.GetByFingerprint(ctx, fp)
			if isNotFound(err) {
				return false, nil
			}
			if err == nil && k.Name != keyName(cluster) {
				d.log.InfoContext(ctx, "using the account's ssh key with the admin key's fingerprint", "cluster", cluster, "key", k.Name)
			}
			return err == nil, err
		},
		func() error {
			_, _, err := cli.Keys.Create(ctx, &godo.KeyCreateRequest{Name: keyName(cluster), PublicKey: strings.TrimSpace(publicKey)})
			if err == nil {
				d.log.InfoContext(ctx, "imported ssh key", "cluster", cluster, "key", keyName(cluster), "fingerprint", fp)
			}
			return err
		})
	if err != nil {
		return "", fmt.Errorf("ssh key %s: %w", keyName(cluster), d.explain(err))
	}
	return fp, nil
}

// fwRule is one firewall rule in a comparable form: inbound from, or
// outbound to, addresses and tags.
type fwRule struct {
	in    bool
	proto string // tcp, udp, icmp
	ports string // "22", "all", "" for icmp
	addrs string // sorted, comma-separated
	tags  string // sorted, comma-separated
}

func joinSorted(s []string) string {
	c := slices.Clone(s)
	sort.Strings(c)
	return strings.Join(c, ",")
}

func splitNonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// wantFirewall is the cluster firewall's rule set, the same as the AWS
// security group's: SSH and the engine's TLS port from the allowed CIDRs,
// the swarm ports (2377/tcp, 7946/tcp+udp, 4789/udp) only between droplets
// carrying the cluster tag, and all outbound traffic (a cloud firewall with
// no outbound rule blocks every outbound packet, apt and DNS included).
// DigitalOcean firewalls carry only TCP, UDP and ICMP: ESP, which encrypted
// overlays need, cannot be allowed (see cloud_firewall).
//
// The firewall holds these rules only; another concern (a load balancer's
// listeners) gets its own firewall on the same tag: DigitalOcean applies the
// union of every firewall a droplet is in.
func wantFirewall(cluster string, allowed []string, metrics *drivers.MetricsAccess) []fwRule {
	members := clusterTag(cluster)
	all := []string{"0.0.0.0/0", "::/0"}
	var rs []fwRule
	if metrics != nil && metrics.Port > 0 {
		// The engines' metrics port from the cluster's droplets and
		// metrics_cidrs.
		rs = append(rs, fwRule{in: true, proto: "tcp", ports: fmt.Sprint(metrics.Port), tags: members, addrs: joinSorted(metrics.CIDRs)})
	}
	return append(rs, []fwRule{
		{in: true, proto: "tcp", ports: fmt.Sprint(portSSH), addrs: joinSorted(allowed)},
		{in: true, proto: "tcp", ports: fmt.Sprint(portEngineTLS), addrs: joinSorted(allowed)},
		{in: true, proto: "tcp", ports: "2377", tags: members},
		{in: true, proto: "tcp", ports: "7946", tags: members},
		{in: true, proto: "udp", ports: "7946", tags: members},
		{in: true, proto: "udp", ports: "4789", tags: members},
		{in: false, proto: "tcp", ports: "all", addrs: joinSorted(all)},
		{in: false, proto: "udp", ports: "all", addrs: joinSorted(all)},
		{in: false, proto: "icmp", addrs: joinSorted(all)},
	}...)
}

// haveFirewall flattens a firewall's rules into fwRules. "0" and "all" are
// the same port range to the API.
func haveFirewall(fw *godo.Firewall) []fwRule {
	var out []fwRule
	ports := func(p string) string {
		if p == "0" {
			return "all"
		}
		return p
	}
	for _, r := range fw.InboundRules {
		fr := fwRule{in: true, proto: r.Protocol, ports: ports(r.PortRange)}
		if r.Sources != nil {
			fr.addrs, fr.tags = joinSorted(r.Sources.Addresses), joinSorted(r.Sources.Tags)
		}
		out = append(out, fr)
	}
	for _, r := range fw.OutboundRules {
		fr := fwRule{proto: r.Protocol, ports: ports(r.PortRange)}
		if r.Destinations != nil {
			fr.addrs, fr.tags = joinSorted(r.Destinations.Addresses), joinSorted(r.Destinations.Tags)
		}
		out = append(out, fr)
	}
	return out
}

func sameRules(a, b []fwRule) bool {
	key := func(r fwRule) string { return fmt.Sprint(r) }
	ka, kb := make([]string, len(a)), make([]string, len(b))
	for i, r := range a {
		ka[i] = key(r)
	}
	for i, r := range b {
		kb[i] = key(r)
	}
	sort.Strings(ka)
	sort.Strings(kb)
	return slices.Equal(ka, kb)
}

func firewallRequest(name string, cluster string, rules []fwRule) *godo.FirewallRequest {
	req := &godo.FirewallRequest{Name: name, Tags: []string{clusterTag(cluster)}}
	for _, r := range rules {
		if r.in {
			req.InboundRules = append(req.InboundRules, godo.InboundRule{Protocol: r.proto, PortRange: r.ports,
				Sources: &godo.Sources{Addresses: splitNonEmpty(r.addrs), Tags: splitNonEmpty(r.tags)}})
		} else {
			req.OutboundRules = append(req.OutboundRules, godo.OutboundRule{Protocol: r.proto, PortRange: r.ports,
				Destinations: &godo.Destinations{Addresses: splitNonEmpty(r.addrs), Tags: splitNonEmpty(r.tags)}})
		}
	}
	return req
}

// findFirewall returns the cluster's firewall (by name, applied to the
// cluster tag), or nil.
func (d *Driver) findFirewall(ctx context.Context, cli *godo.Client, cluster string) (*godo.Firewall, error) {
	fws, err := listAll(ctx, func(o *godo.ListOptions) ([]godo.Firewall, *godo.Response, error) { return cli.Firewalls.List(ctx, o) })
	if err != nil {
		return nil, fmt.Errorf("list firewalls: %w", d.explain(err))
	}
	for i := range fws {
		if fws[i].Name == d.baseName(cluster) && slices.Contains(fws[i].Tags, clusterTag(cluster)) {
			return &fws[i], nil
		}
	}
	return nil, nil
}

// ensureFirewall makes the cluster's firewall, or converges its rules when
// the allowed CIDRs changed.
func (d *Driver) ensureFirewall(ctx context.Context, cli *godo.Client, cluster string, allowed []string, metrics *drivers.MetricsAccess) (string, error) {
	name := d.baseName(cluster)
	want := wantFirewall(cluster, allowed, metrics)
	var fw *godo.Firewall
	err := d.once(ctx, "firewall",
		func() (bool, error) {
			f, err := d.findFirewall(ctx, cli, cluster)
			fw = f
			return f != nil, err
		},
		func() error {
			f, _, err := cli.Firewalls.Create(ctx, firewallRequest(name, cluster, want))
			if err == nil {
				fw = f
				d.log.InfoContext(ctx, "created firewall", "cluster", cluster, "firewall", f.ID)
			}
			return err
		})
	if err != nil {
		return "", fmt.Errorf("create firewall %s: %w", name, d.explain(err))
	}
	if !sameRules(haveFirewall(fw), want) {
		req := firewallRequest(name, cluster, want)
		req.DropletIDs = fw.DropletIDs
		if _, _, err := cli.Firewalls.Update(ctx, fw.ID, req); err != nil {
			return "", fmt.Errorf("update firewall %s (%s): %w", name, fw.ID, d.explain(err))
		}
		d.log.InfoContext(ctx, "updated firewall rules", "cluster", cluster, "firewall", fw.ID, "allowed", strings.Join(allowed, ","))
	}
	return fw.ID, nil
}

// allowedCIDRs returns the block's allowed_cidrs or, only when
// detect_operator_ip is set, the operator's public address as a /32 (/128).
func (d *Driver) allowedCIDRs(ctx context.Context) ([]string, error) {
	if len(d.cfg.AllowedCIDRs) > 0 {
		return d.cfg.AllowedCIDRs, nil
	}
	if !d.cfg.DetectOperatorIP {
		return nil, errors.New("no allowed_cidrs in the digitalocean driver block: set allowed_cidrs to the addresses that may reach SSH and the Docker TLS port, or detect_operator_ip = true")
	}
	p, err := d.lookupOperatorIP(ctx)
	if err != nil {
		return nil, fmt.Errorf("find the operator's public address (set allowed_cidrs instead): %w", err)
	}
	d.log.InfoContext(ctx, "allowing the operator's public address", "cidr", p)
	return []string{p}, nil
}

func (d *Driver) lookupOperatorIP(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.cfg.OperatorIPURL, nil)
	if err != nil {
		return "", err
	}
	resp, err := d.httpClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", d.cfg.OperatorIPURL, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 128))
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", d.cfg.OperatorIPURL, err)
	}
	a, err := netip.ParseAddr(strings.TrimSpace(string(b)))
	if err != nil {
		return "", fmt.Errorf("GET %s: answer is not an IP address: %w", d.cfg.OperatorIPURL, err)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()).String(), nil
}

// NoESP implements drivers.DataPath: a cloud firewall drops ESP, so an
// encrypted overlay network would lose the traffic between droplets.
func (d *Driver) NoESP() string {
	if !d.cfg.CloudFirewall {
		return ""
	}
	return "DigitalOcean cloud firewalls carry only TCP, UDP and ICMP, inside the VPC too; cloud_firewall = false lets it through"
}
