package spec

import (
	"net/netip"
	"net/url"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// LoadBalancer is the `load_balancer { }` block: the cloud load balancer in
// front of the swarm's routing mesh, whose listeners follow the TCP ports
// services publish (see provision/lb).
type LoadBalancer struct {
	// Enabled is on by default: drivers that have a load balancer
	// (drivers.Balancer) make one when the first port is published.
	Enabled bool
	// PublishedCIDRs are the clients allowed to reach published ports;
	// default anywhere (0.0.0.0/0).
	PublishedCIDRs []string
	// Resync is the period of the full reconciliation `lb sync --watch` and
	// the in-cluster reconciler run besides following service events;
	// default 5m.
	Resync time.Duration
	// Webhook, when set, is told the published ports and the swarm's nodes
	// on every change: the way to drive a load balancer provision does not
	// make (local, generic and libvirt clusters, appliances on premises).
	Webhook *Webhook
}

// Webhook is the `webhook { }` block inside load_balancer.
type Webhook struct {
	URL   string // https://..., or http:// (a warning unless loopback or a private address)
	Token string // sent as "Authorization: Bearer <token>"; use a sensitive variable
}

// DefaultResync is the load balancer's full-reconciliation period.
const DefaultResync = 5 * time.Minute

var (
	lbSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "enabled"}, {Name: "published_cidrs"}, {Name: "resync"}},
		Blocks:     []hcl.BlockHeaderSchema{{Type: "webhook"}},
	}
	webhookSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "url", Required: true}, {Name: "token"}}}
)

func defaultLoadBalancer() LoadBalancer {
	return LoadBalancer{Enabled: true, PublishedCIDRs: []string{"0.0.0.0/0"}, Resync: DefaultResync}
}

func decodeLoadBalancer(dc *dec, c *Cluster, b *hcl.Block) {
	content, d := b.Body.Content(lbSchema)
	dc.diags = append(dc.diags, d...)
	lb := &c.LoadBalancer
	dc.boolean(content.Attributes, "enabled", "load_balancer.enabled", &lb.Enabled)
	var cidrs []string
	if r, ok := dc.strList(content.Attributes, "published_cidrs", "load_balancer.published_cidrs", &cidrs); ok {
		lb.PublishedCIDRs = nil
		for _, s := range cidrs {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				dc.errf(r, "Invalid CIDR", "load_balancer.published_cidrs: %q is not a CIDR block like \"203.0.113.0/24\" or \"0.0.0.0/0\".", s)
				continue
			}
			lb.PublishedCIDRs = append(lb.PublishedCIDRs, p.Masked().String())
		}
		if len(cidrs) == 0 {
			dc.errf(r, "No published CIDRs", "load_balancer.published_cidrs is empty: no client could reach a published port. Leave it out for anywhere, list the clients' blocks, or set enabled = false.")
		}
	}
	var resync string
	if r, ok := dc.str(content.Attributes, "resync", "load_balancer.resync", &resync); ok {
		d, err := time.ParseDuration(resync)
		switch {
		case err != nil:
			dc.errf(r, "Invalid resync period", "load_balancer.resync %q is not a duration like \"5m\".", resync)
		case d < 10*time.Second || d > 24*time.Hour:
			dc.errf(r, "Resync period out of range", "load_balancer.resync must be between 10s and 24h.")
		default:
			lb.Resync = d
		}
	}
	for i, wb := range content.Blocks {
		if i > 0 {
			dc.errf(wb.DefRange, "Duplicate webhook block", "load_balancer takes one webhook block.")
			continue
		}
		wc, d := wb.Body.Content(webhookSchema)
		dc.diags = append(dc.diags, d...)
		w := &Webhook{}
		if r, ok := dc.requiredStr(wc.Attributes, "url", "load_balancer.webhook.url", &w.URL); ok {
			u, err := url.Parse(w.URL)
			switch {
			case err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http"):
				dc.errf(r, "Invalid webhook URL", "load_balancer.webhook.url %q must be an http(s) URL.", w.URL)
			case u.User != nil:
				dc.errf(r, "Credentials in the webhook URL", "Put the webhook's secret in token (a sensitive variable), not in the URL: URLs end up in logs.")
			case u.Scheme == "http" && !privateHost(u.Hostname()):
				dc.warnf(r, "Webhook over plain HTTP", "load_balancer.webhook.url %q sends the token unencrypted to a public address: use https.", w.URL)
			}
		}
		dc.str(wc.Attributes, "token", "load_balancer.webhook.token", &w.Token)
		lb.Webhook = w
	}
}

// privateHost reports whether h is a loopback or private address literal.
func privateHost(h string) bool {
	a, err := netip.ParseAddr(h)
	return err == nil && (a.IsLoopback() || a.IsPrivate())
}
