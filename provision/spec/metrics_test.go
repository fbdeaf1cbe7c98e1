package spec

import (
	"strings"
	"testing"
)

func TestMetricsSettings(t *testing.T) {
	base := "name = \"m\"\nmanagers { count = 1 }\n"
	c, diags := LoadBytes("m.hcl", []byte(base), Vars{})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if c.Engine.MetricsAddr != ":9323" || c.Engine.MetricsListen("10.0.0.5") != "10.0.0.5:9323" || c.Engine.MetricsPort() != 9323 {
		t.Errorf("default: %q %q", c.Engine.MetricsAddr, c.Engine.MetricsListen("10.0.0.5"))
	}
	if got := c.Engine.MetricsListen("fd00::5"); got != "[fd00::5]:9323" {
		t.Errorf("ipv6: %q", got)
	}
	c, diags = LoadBytes("m.hcl", []byte(base+`engine {
  metrics_addr  = "off"
}`), Vars{})
	if diags.HasErrors() || c.Engine.MetricsAddr != "" || c.Engine.MetricsListen("10.0.0.5") != "" || c.Engine.MetricsPort() != 0 {
		t.Errorf("off: %v %q", diags, c.Engine.MetricsAddr)
	}
	c, diags = LoadBytes("m.hcl", []byte(base+`engine {
  metrics_addr  = "0.0.0.0:9100"
  metrics_cidrs = ["192.0.2.7", "198.51.100.9/24"]
}`), Vars{})
	if diags.HasErrors() || c.Engine.MetricsListen("10.0.0.5") != "0.0.0.0:9100" || strings.Join(c.Engine.MetricsCIDRs, ",") != "192.0.2.7/32,198.51.100.0/24" {
		t.Errorf("explicit: %v %q %v", diags, c.Engine.MetricsAddr, c.Engine.MetricsCIDRs)
	}
	for _, bad := range []struct{ src, want string }{
		{`metrics_addr = "9323"`, "m.hcl:4,18-24"},
		{`metrics_addr = "prometheus.example:9323"`, "names a host"},
		{`metrics_addr = ":2376"`, "already listen"},
		{`metrics_addr = ":99999"`, "no valid port"},
		{`metrics_cidrs = ["10.0.0.0/33"]`, "Invalid CIDR"},
	} {
		_, diags := LoadBytes("m.hcl", []byte(base+"engine {\n  "+bad.src+"\n}\n"), Vars{})
		if !diags.HasErrors() || !strings.Contains(diags.Error(), bad.want) {
			t.Errorf("%s: want %q in %v", bad.src, bad.want, diags)
		}
	}
}
