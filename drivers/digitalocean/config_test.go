package digitalocean

import (
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/provision/provision/drivers"
)

func decode(t *testing.T, src, token string) (Config, hcl.Diagnostics) {
	t.Helper()
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "do.hcl")
	if diags.HasErrors() {
		t.Fatalf("parse: %v", diags)
	}
	return decodeConfig(f.Body, evalCtx(token))
}

func TestDecodeConfig(t *testing.T) {
	c, diags := decode(t, `region = "ams3"
allowed_cidrs = ["198.51.100.7", "2001:db8::1/64"]`, "")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if c.Size != DefaultSize || c.Image != DefaultImage || !c.CloudFirewall || c.APIURL.String() != DefaultAPIURL || c.CustomAPI || len(c.Token) != 0 {
		t.Errorf("defaults: %+v", c)
	}
	if c.AllowedCIDRs[0] != "198.51.100.7/32" || c.AllowedCIDRs[1] != "2001:db8::/64" {
		t.Errorf("cidrs: %v", c.AllowedCIDRs)
	}
	c, diags = decode(t, `region = "ams3"
token = var.do_token
allowed_cidrs = ["198.51.100.7/32"]
api_url = "http://127.0.0.1:8080"`, "sekret-token")
	if diags.HasErrors() || string(c.Token) != "sekret-token" || c.APIURL.String() != "http://127.0.0.1:8080/" || !c.CustomAPI {
		t.Errorf("token and api_url: %v %+v", diags, c)
	}
	if len(diags) != 0 {
		t.Errorf("a token from a variable draws no warning: %v", diags)
	}

	for _, tc := range []struct {
		name, src, want string
		line            int
	}{
		{"no region", `allowed_cidrs = ["198.51.100.7/32"]`, "Missing region", 0},
		{"bad region", "region = \"Amsterdam\"\nallowed_cidrs = [\"198.51.100.7/32\"]", "Invalid region", 1},
		{"bad size", "region = \"ams3\"\nsize = \"S 2\"\nallowed_cidrs = [\"198.51.100.7/32\"]", "Invalid size", 2},
		{"bad image", "region = \"ams3\"\nimage = \"Debian 12\"\nallowed_cidrs = [\"198.51.100.7/32\"]", "Invalid image", 2},
		{"no cidrs", "region = \"ams3\"", "No allowed CIDRs", 0},
		{"bad cidr", "region = \"ams3\"\nallowed_cidrs = [\"here\"]", "Invalid CIDR", 2},
		{"bad vpc", "region = \"ams3\"\nvpc_uuid = \"vpc-1\"\nallowed_cidrs = [\"198.51.100.7/32\"]", "Invalid VPC ID", 2},
		{"public range", "region = \"ams3\"\nvpc_ip_range = \"8.8.0.0/16\"\nallowed_cidrs = [\"198.51.100.7/32\"]", "Invalid VPC range", 2},
		{"range with uuid", "region = \"ams3\"\nvpc_uuid = \"5a4c0000-0000-4000-8000-000000000001\"\nvpc_ip_range = \"10.1.0.0/20\"\nallowed_cidrs = [\"198.51.100.7/32\"]", "Conflicting network settings", 3},
		{"http elsewhere", "region = \"ams3\"\ntoken = var.do_token\nallowed_cidrs = [\"198.51.100.7/32\"]\napi_url = \"http://192.0.2.1:8080\"", "plain http is allowed only to this machine's loopback", 4},
		{"path", "region = \"ams3\"\ntoken = var.do_token\nallowed_cidrs = [\"198.51.100.7/32\"]\napi_url = \"https://api.example.org/v2\"", "scheme and host only", 4},
		{"credentials in url", "region = \"ams3\"\ntoken = var.do_token\nallowed_cidrs = [\"198.51.100.7/32\"]\napi_url = \"https://u:p@api.example.org\"", "scheme and host only", 4},
		{"api_url without token", "region = \"ams3\"\nallowed_cidrs = [\"198.51.100.7/32\"]\napi_url = \"https://api.example.org\"", "api_url needs the token in the block", 3},
		{"token not a string", "region = \"ams3\"\ntoken = [1]\nallowed_cidrs = [\"198.51.100.7/32\"]", "Invalid token", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, diags := decode(t, tc.src, "sekret-token")
			var found *hcl.Diagnostic
			for _, d := range diags {
				if d.Severity == hcl.DiagError && strings.Contains(d.Summary+" "+d.Detail, tc.want) {
					found = d
				}
			}
			if found == nil {
				t.Fatalf("want an error %q, got %v", tc.want, diags)
			}
			if tc.line > 0 && (found.Subject == nil || found.Subject.Start.Line != tc.line) {
				t.Errorf("diagnostic at %v, want line %d", found.Subject, tc.line)
			}
			for _, d := range diags {
				if strings.Contains(d.Summary+d.Detail, "sekret-token") {
					t.Errorf("a diagnostic shows the token: %v", d)
				}
			}
		})
	}

	// An empty api_url is the default one.
	if c, diags := decode(t, "region = \"ams3\"\nallowed_cidrs = [\"198.51.100.7/32\"]\napi_url = \"\"", ""); diags.HasErrors() || c.CustomAPI || c.APIURL.String() != DefaultAPIURL {
		t.Errorf("empty api_url: %v %+v", diags, c)
	}
	// A literal token: a warning without a location (the snippet would show it).
	_, diags = decode(t, "region = \"ams3\"\ntoken = \"dop_v1_literal\"\nallowed_cidrs = [\"198.51.100.7/32\"]", "")
	if len(diags) != 1 || diags[0].Severity != hcl.DiagWarning || diags[0].Subject != nil || strings.Contains(diags[0].Detail, "dop_v1_literal") {
		t.Errorf("literal token: %v", diags)
	}
	// No cloud firewall: allowed_cidrs is not needed, and warned about when given.
	if _, diags = decode(t, "region = \"ams3\"\ncloud_firewall = false", ""); diags.HasErrors() || len(diags) != 0 {
		t.Errorf("cloud_firewall = false: %v", diags)
	}
	if _, diags = decode(t, "region = \"ams3\"\ncloud_firewall = false\nallowed_cidrs = [\"198.51.100.7/32\"]", ""); len(diags) != 1 || diags[0].Severity != hcl.DiagWarning {
		t.Errorf("cloud_firewall = false with cidrs: %v", diags)
	}
}

func TestRegistered(t *testing.T) {
	info, ok := drivers.Lookup("digitalocean")
	if !ok || info.New == nil {
		t.Fatal("digitalocean is not registered")
	}
}

// TestNoESP: with the cloud firewall (the default) the driver says ESP is
// dropped between droplets, so apply leaves the overlay unencrypted; without
// it, nothing.
func TestNoESP(t *testing.T) {
	var dp drivers.DataPath = &Driver{}
	c, _ := decode(t, "region = \"ams3\"\nallowed_cidrs = [\"198.51.100.7/32\"]", "")
	if why := (&Driver{cfg: c}).NoESP(); !strings.Contains(why, "TCP, UDP and ICMP") {
		t.Errorf("with the cloud firewall: %q", why)
	}
	c, _ = decode(t, "region = \"ams3\"\ncloud_firewall = false", "")
	if why := (&Driver{cfg: c}).NoESP(); why != "" {
		t.Errorf("without the cloud firewall: %q", why)
	}
	_ = dp
}
