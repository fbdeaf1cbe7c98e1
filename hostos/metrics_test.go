package hostos_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/spec"
)

// TestMetricsEndpoint: the engine serves its metrics where the config says
// (daemon.json metrics-addr), and the firewall opens that port to the
// members and to engine.metrics_cidrs only; off, neither appears.
func TestMetricsEndpoint(t *testing.T) {
	cfg := baseConfig()
	cfg.Engine.MetricsAddr = ":9400"
	cfg.Engine.MetricsCIDRs = []string{"192.0.2.0/24", "2001:db8::/32"}
	cfg.MetricsAddr = cfg.Engine.MetricsListen("10.0.0.2")
	files, err := hostos.DaemonFiles(cfg, mustFamily(t))
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(files[0].Content, &d); err != nil {
		t.Fatalf("daemon.json is not JSON: %v\n%s", err, files[0].Content)
	}
	if d["metrics-addr"] != "10.0.0.2:9400" {
		t.Errorf("metrics-addr %v, want 10.0.0.2:9400", d["metrics-addr"])
	}
	fw, err := hostos.FirewallFiles(cfg, mustFamily(t), debianFacts())
	if err != nil {
		t.Fatal(err)
	}
	rs := string(fw[0].Content)
	for _, want := range []string{
		`ip saddr @peers4 tcp dport 9400 accept comment "engine metrics"`,
		`ip6 saddr @peers6 tcp dport 9400 accept comment "engine metrics"`,
		`ip saddr { 192.0.2.0/24 } tcp dport 9400 accept comment "engine metrics (metrics_cidrs)"`,
		`ip6 saddr { 2001:db8::/32 } tcp dport 9400 accept comment "engine metrics (metrics_cidrs)"`,
	} {
		if !strings.Contains(rs, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, rs)
		}
	}
	if strings.Count(rs, "9400") != 4 {
		t.Errorf("port 9400 opened elsewhere too:\n%s", rs)
	}

	cfg.Engine.MetricsAddr, cfg.MetricsAddr = "", ""
	files, _ = hostos.DaemonFiles(cfg, mustFamily(t))
	fw, _ = hostos.FirewallFiles(cfg, mustFamily(t), debianFacts())
	if strings.Contains(string(files[0].Content), "metrics-addr") || strings.Contains(string(fw[0].Content), "metrics") {
		t.Errorf("metrics off, yet:\n%s\n%s", files[0].Content, fw[0].Content)
	}
}

// TestRegistryFiles: mirrors go into daemon.json, each private registry's
// CA into certs.d beside it (same step), and facts hash those paths.
func TestRegistryFiles(t *testing.T) {
	cfg := baseConfig()
	cfg.Engine.RegistryMirrors = []string{"https://mirror.internal:5000"}
	cfg.Engine.Registries = []spec.Registry{{Host: "registry.internal:5000", CA: "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"}}
	files, err := hostos.DaemonFiles(cfg, mustFamily(t))
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(files[0].Content, &d); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(d["registry-mirrors"]) != "[https://mirror.internal:5000]" {
		t.Errorf("registry-mirrors %v", d["registry-mirrors"])
	}
	if len(files) != 3 || files[2].Path != "/etc/docker/certs.d/registry.internal:5000/ca.crt" || files[2].Mode != 0o644 || string(files[2].Content) != cfg.Engine.Registries[0].CA {
		t.Errorf("files %+v", files)
	}
	if !slices.Contains(hostos.ManagedPaths(cfg), "/etc/docker/certs.d/registry.internal:5000/ca.crt") {
		t.Error("the CA's path is not among the managed paths: facts would not hash it")
	}
	cfg.Engine.Registries[0].Host = "../../etc"
	if _, err := hostos.DaemonFiles(cfg, mustFamily(t)); err == nil {
		t.Error("a registry host with a slash was accepted")
	}
}

// TestMetricsBindable: the endpoint is only bound where the host has the
// address (facts `addrs`), so a NAT'd or named address never keeps the
// engine from starting.
func TestMetricsBindable(t *testing.T) {
	f, err := hostos.ParseFacts([]byte("addrs\t10.0.0.5 172.17.0.1 fd00::5 \nend\n"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(f.Addrs, ",") != "10.0.0.5,172.17.0.1,fd00::5" {
		t.Fatalf("addrs %q", f.Addrs)
	}
	for addr, want := range map[string]bool{
		"10.0.0.5:9323": true, "[fd00::5]:9323": true, "0.0.0.0:9323": true, "127.0.0.1:9323": true,
		"203.0.113.9:9323": false, "host.example:9323": false, "10.0.0.5": false,
	} {
		if got := f.MetricsBindable(addr); got != want {
			t.Errorf("%s: %v, want %v", addr, got, want)
		}
	}
}
