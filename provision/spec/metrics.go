package spec

import (
	"net"
	"net/netip"
	"strconv"

	"github.com/hashicorp/hcl/v2"

	"github.com/provision/provision/drivers"
)

// DefaultMetricsAddr serves the engine's metrics on the host's private
// address, port 9323 (the port Docker documents for it).
const DefaultMetricsAddr = ":9323"

// decodeMetrics reads engine.metrics_addr and engine.metrics_cidrs.
func decodeMetrics(dc *dec, c *Cluster, attrs hcl.Attributes) {
	var addr string
	if r, ok := dc.str(attrs, "metrics_addr", "engine.metrics_addr", &addr); ok {
		if addr == "off" || addr == "" {
			c.Engine.MetricsAddr = ""
		} else if err := checkMetricsAddr(addr); err != "" {
			dc.errf(r, "Invalid metrics address", "engine.metrics_addr %q %s. Write \":9323\" (the host's private address), \"10.0.0.5:9323\", or \"off\".", addr, err)
		} else {
			c.Engine.MetricsAddr = addr
		}
	}
	var cidrs []string
	if r, ok := dc.strList(attrs, "metrics_cidrs", "engine.metrics_cidrs", &cidrs); ok {
		for _, s := range cidrs {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				a, aerr := netip.ParseAddr(s)
				if aerr != nil {
					dc.errf(r, "Invalid CIDR", "engine.metrics_cidrs: %q is not an address or a CIDR block like \"10.1.0.0/16\".", s)
					continue
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			c.Engine.MetricsCIDRs = append(c.Engine.MetricsCIDRs, p.Masked().String())
		}
		if len(cidrs) > 0 && c.Engine.MetricsAddr == "" {
			dc.warnf(r, "Metrics are off", "engine.metrics_cidrs has no effect while engine.metrics_addr is \"off\".")
		}
	}
}

// checkMetricsAddr says what is wrong with a metrics address, "" when
// nothing is.
func checkMetricsAddr(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "is not host:port"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "has no valid port"
	}
	if n, _ := strconv.Atoi(port); n == 2376 || n == 2377 || n == 7946 || n == 22 {
		return "uses a port the engine, swarm or SSH already listen on"
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return "names a host: give an IP address (or none, for the host's private address)"
		}
	}
	return ""
}

// MetricsListen is the engine's metrics-addr on a host whose private
// (advertise) address is private: the spec's address with that host filled
// in when the spec gives only a port. "" when metrics are off.
func (e Engine) MetricsListen(private string) string {
	if e.MetricsAddr == "" {
		return ""
	}
	host, port, err := net.SplitHostPort(e.MetricsAddr)
	if err != nil {
		return ""
	}
	if host == "" {
		host = private
	}
	if host == "" {
		return ""
	}
	return net.JoinHostPort(host, port)
}

// Metrics is who the cloud firewalls let reach the metrics endpoint, nil
// when metrics are off.
func (e Engine) Metrics() *drivers.MetricsAccess {
	port := e.MetricsPort()
	if port == 0 {
		return nil
	}
	return &drivers.MetricsAccess{Port: port, CIDRs: append([]string(nil), e.MetricsCIDRs...)}
}

// MetricsPort is the metrics address's port, 0 when metrics are off.
func (e Engine) MetricsPort() int {
	_, port, err := net.SplitHostPort(e.MetricsAddr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(port)
	return n
}
