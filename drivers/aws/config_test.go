package aws

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/provision/provision/drivers"
)

func decode(t *testing.T, src string) (Config, hcl.Diagnostics) {
	t.Helper()
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "aws.hcl")
	if diags.HasErrors() {
		t.Fatalf("parse: %v", diags)
	}
	return decodeConfig(f.Body, nil)
}

const testKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJHZv6U96VThcn+hOTRycucI2ed+gkpLaTEZa5/V43JH"

func TestDecodeConfigDefaults(t *testing.T) {
	c, diags := decode(t, `allowed_cidrs = ["198.51.100.7", "203.0.113.9/24"]`)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if c.InstanceType != "t3.small" || c.VPCCIDR != "10.42.0.0/16" || c.RootVolumeType != "gp3" || !c.CreateVPC ||
		!c.AssociatePublicIP || c.DetectOperatorIP || c.AMI != "" || c.Endpoint != "" || c.Bastion != nil {
		t.Errorf("defaults: %+v", c)
	}
	// A bare address becomes a /32, a block is masked.
	if !slices.Equal(c.AllowedCIDRs, []string{"198.51.100.7/32", "203.0.113.0/24"}) {
		t.Errorf("allowed_cidrs: %v", c.AllowedCIDRs)
	}

	c, diags = decode(t, `
region              = "eu-west-3"
profile             = "ops"
instance_type       = "t4g.small"
ami                 = "ami-0123456789abcdef0"
subnet_ids          = ["subnet-1", "subnet-2"]
allowed_cidrs       = ["2001:db8::1/64"]
associate_public_ip = false
root_volume_type    = "gp2"
endpoint            = "http://127.0.0.1:5000"
bastion {
  address  = "203.0.113.1"
  port     = 2222
  user     = "jump"
  host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJHZv6U96VThcn+hOTRycucI2ed+gkpLaTEZa5/V43JH"
}
`)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if c.Region != "eu-west-3" || c.Profile != "ops" || c.InstanceType != "t4g.small" || c.CreateVPC || c.AssociatePublicIP ||
		c.RootVolumeType != "gp2" || !slices.Equal(c.SubnetIDs, []string{"subnet-1", "subnet-2"}) || c.AllowedCIDRs[0] != "2001:db8::/64" {
		t.Errorf("decoded: %+v", c)
	}
	if c.Bastion == nil || *c.Bastion != (drivers.Bastion{Address: "203.0.113.1", Port: 2222, User: "jump", HostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJHZv6U96VThcn+hOTRycucI2ed+gkpLaTEZa5/V43JH"}) {
		t.Errorf("bastion: %+v", c.Bastion)
	}
	if len(diags) != 0 {
		t.Errorf("unexpected warnings: %v", diags)
	}
}

func TestDecodeConfigDiagnostics(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		summary   string
		subject   string // "line:col" of the diagnostic's start
		severity  hcl.DiagnosticSeverity
	}{
		{"no cidrs", `instance_type = "t3.micro"`, "No allowed CIDRs", "1:1", hcl.DiagError}, // the body's missing-item range
		{"bad cidr", "allowed_cidrs = [\n  \"10.0.0.0/8\",\n  \"not-a-cidr\",\n]", "Invalid CIDR", "1:17", hcl.DiagError},
		{"open to all", `allowed_cidrs = ["0.0.0.0/0"]`, "SSH and the engine port open to everyone", "1:17", hcl.DiagWarning},
		{"bad ami", "allowed_cidrs = [\"10.0.0.0/8\"]\nami = \"debian\"", "Invalid AMI ID", "2:7", hcl.DiagError},
		{"bad vpc id", "allowed_cidrs = [\"10.0.0.0/8\"]\nvpc_id = \"v-1\"", "Invalid VPC ID", "2:10", hcl.DiagError},
		{"bad subnet", "allowed_cidrs = [\"10.0.0.0/8\"]\nsubnet_ids = [\"sn-1\"]", "Invalid subnet ID", "2:14", hcl.DiagError},
		{"conflict", "allowed_cidrs = [\"10.0.0.0/8\"]\ncreate_vpc = true\nsubnet_ids = [\"subnet-1\"]", "Conflicting network settings", "2:14", hcl.DiagError},
		{"vpc cidr too small", "allowed_cidrs = [\"10.0.0.0/8\"]\nvpc_cidr = \"10.0.0.0/26\"", "Invalid VPC CIDR", "2:12", hcl.DiagError},
		{"vpc cidr v6", "allowed_cidrs = [\"10.0.0.0/8\"]\nvpc_cidr = \"2001:db8::/56\"", "Invalid VPC CIDR", "2:12", hcl.DiagError},
		{"volume type", "allowed_cidrs = [\"10.0.0.0/8\"]\nroot_volume_type = \"sc1\"", "Unsupported root volume type", "2:20", hcl.DiagError},
		{"endpoint", "allowed_cidrs = [\"10.0.0.0/8\"]\nendpoint = \"localhost:5000\"", "Invalid endpoint", "2:12", hcl.DiagError},
		{"ip url", "detect_operator_ip = true\noperator_ip_url = \"ftp://x\"", "Invalid URL", "2:19", hcl.DiagError},
		{"private only", "allowed_cidrs = [\"10.0.0.0/8\"]\nassociate_public_ip = false", "Private addresses only", "2:23", hcl.DiagWarning},
		{"bastion port", "allowed_cidrs = [\"10.0.0.0/8\"]\nbastion {\n  address = \"a\"\n  user = \"u\"\n  port = 0\n  host_key = \"" + testKey + "\"\n}", "Invalid bastion port", "2:1", hcl.DiagError},
		// Issue 12: a bastion that every apply would fail on is refused by validate.
		{"bastion empty address", "allowed_cidrs = [\"10.0.0.0/8\"]\nbastion {\n  address = \"\"\n  user = \"u\"\n  host_key = \"" + testKey + "\"\n}", "Invalid bastion address", "3:13", hcl.DiagError},
		{"bastion address with spaces", "allowed_cidrs = [\"10.0.0.0/8\"]\nbastion {\n  address = \"a b\"\n  user = \"u\"\n  host_key = \"" + testKey + "\"\n}", "Invalid bastion address", "3:13", hcl.DiagError},
		{"bastion empty user", "allowed_cidrs = [\"10.0.0.0/8\"]\nbastion {\n  address = \"a\"\n  user = \"\"\n  host_key = \"" + testKey + "\"\n}", "Invalid bastion user", "4:10", hcl.DiagError},
		{"bastion no host key", "allowed_cidrs = [\"10.0.0.0/8\"]\nbastion {\n  address = \"a\"\n  user = \"u\"\n}", "Missing bastion host key", "2:1", hcl.DiagError},
		{"bastion empty host key", "allowed_cidrs = [\"10.0.0.0/8\"]\nbastion {\n  address = \"a\"\n  user = \"u\"\n  host_key = \"\"\n}", "Missing bastion host key", "5:14", hcl.DiagError},
		{"bastion malformed host key", "allowed_cidrs = [\"10.0.0.0/8\"]\nbastion {\n  address = \"a\"\n  user = \"u\"\n  host_key = \"ssh-ed25519 AAAA\"\n}", "Invalid bastion host key", "5:14", hcl.DiagError},
		{"bastion two host keys", "allowed_cidrs = [\"10.0.0.0/8\"]\nbastion {\n  address = \"a\"\n  user = \"u\"\n  host_key = \"" + testKey + "\\n" + testKey + "\"\n}", "Invalid bastion host key", "5:14", hcl.DiagError},
		{"bastion empty key file", "allowed_cidrs = [\"10.0.0.0/8\"]\nbastion {\n  address = \"a\"\n  user = \"u\"\n  host_key = \"" + testKey + "\"\n  key_file = \"\"\n}", "Invalid bastion key file", "6:14", hcl.DiagError},
		{"unknown attribute", "allowed_cidrs = [\"10.0.0.0/8\"]\nsize = \"big\"", "Unsupported argument", "2:1", hcl.DiagError},
		{"wrong type", "allowed_cidrs = \"10.0.0.0/8\"", "Unsuitable value type", "1:18", hcl.DiagError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, diags := decode(t, tc.src)
			var found bool
			for _, d := range diags {
				if d.Summary != tc.summary {
					continue
				}
				found = true
				if d.Severity != tc.severity {
					t.Errorf("severity %v, want %v", d.Severity, tc.severity)
				}
				if d.Subject == nil {
					t.Fatalf("%q has no subject", d.Summary)
				}
				if got := fmt.Sprintf("%d:%d", d.Subject.Start.Line, d.Subject.Start.Column); got != tc.subject || d.Subject.Filename != "aws.hcl" {
					t.Errorf("%q at %s:%s, want %s", d.Summary, d.Subject.Filename, got, tc.subject)
				}
			}
			if !found {
				t.Errorf("no %q diagnostic in %v", tc.summary, diags)
			}
		})
	}
}

func TestDetectOperatorIP(t *testing.T) {
	answer := "203.0.113.9\n"
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		fmt.Fprint(w, answer)
	}))
	defer srv.Close()
	c, diags := decode(t, fmt.Sprintf("detect_operator_ip = true\noperator_ip_url = %q", srv.URL))
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	d := newDriver(c, drivers.Options{})
	got, err := d.allowedCIDRs(context.Background())
	if err != nil || !slices.Equal(got, []string{"203.0.113.9/32"}) {
		t.Fatalf("allowedCIDRs = %v, %v", got, err)
	}
	answer = "2001:db8::5"
	if got, err := d.allowedCIDRs(context.Background()); err != nil || got[0] != "2001:db8::5/128" {
		t.Errorf("v6: %v %v", got, err)
	}
	answer = "<html>captive portal</html>"
	if _, err := d.allowedCIDRs(context.Background()); err == nil || !strings.Contains(err.Error(), "set allowed_cidrs instead") {
		t.Errorf("bad answer: %v", err)
	}
	answer, status = "203.0.113.9", http.StatusServiceUnavailable
	if _, err := d.allowedCIDRs(context.Background()); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("bad status: %v", err)
	}
	// allowed_cidrs, when given, wins and nothing is asked.
	srv.Close()
	c.AllowedCIDRs = []string{"198.51.100.0/24"}
	if got, err := newDriver(c, drivers.Options{}).allowedCIDRs(context.Background()); err != nil || got[0] != "198.51.100.0/24" {
		t.Errorf("explicit: %v %v", got, err)
	}
}

func TestNewRegisteredAndLazy(t *testing.T) {
	info, ok := drivers.Lookup("aws")
	if !ok || info.New == nil {
		t.Fatal("aws is not registered")
	}
	// The factory does no I/O: an endpoint that cannot answer is fine here.
	f, _ := hclparse.NewParser().ParseHCL([]byte(`
allowed_cidrs = ["10.0.0.0/8"]
endpoint      = "http://127.0.0.1:1"
region        = "xx-nowhere-1" # well formed, unknown: the factory does not check further
`), "aws.hcl")
	d, diags := info.New(f.Body, drivers.Options{Name: "cloud"})
	if diags.HasErrors() || d == nil {
		t.Fatalf("New: %v", diags)
	}
	if d.(*Driver).client != nil {
		t.Error("New loaded the SDK configuration")
	}
}

func TestSubnetCIDR(t *testing.T) {
	for _, tc := range []struct {
		vpc  string
		i    int
		want string
	}{
		{"10.42.0.0/16", 0, "10.42.0.0/20"},
		{"10.42.0.0/16", 1, "10.42.16.0/20"},
		{"10.42.0.0/16", 2, "10.42.32.0/20"},
		{"10.42.0.0/16", 15, "10.42.240.0/20"},
		{"192.168.4.0/24", 3, "192.168.4.48/28"},
		{"172.16.0.0/20", 1, "172.16.1.0/24"},
	} {
		if got, err := subnetCIDR(tc.vpc, tc.i); err != nil || got != tc.want {
			t.Errorf("subnetCIDR(%s, %d) = %s, %v; want %s", tc.vpc, tc.i, got, err, tc.want)
		}
	}
	if _, err := subnetCIDR("10.42.0.0/16", 16); err == nil {
		t.Error("subnet 16 of a /16 split in /20s should not fit")
	}
}

// TestNoCredentialsOrRegion: the SDK's chain finds nothing (the test process
// has no credential files and IMDS is disabled in TestMain), and the driver
// says what to set instead of failing on the first API call.
func TestNoCredentialsOrRegion(t *testing.T) {
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} {
		t.Setenv(k, "")
	}
	f, _ := hclparse.NewParser().ParseHCL([]byte(`
allowed_cidrs = ["10.0.0.0/8"]
endpoint      = "http://127.0.0.1:1"
`), "aws.hcl")
	d, diags := New(f.Body, drivers.Options{})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	_, err := d.Machines(context.Background(), "c")
	if err == nil || !strings.Contains(err.Error(), "no usable AWS credentials") || !strings.Contains(err.Error(), "AWS_PROFILE") {
		t.Errorf("no credentials: %v", err)
	}
	// plan shows this error: it says what it could not check.
	for _, s := range []string{"not checked: credentials and the default region", "instances the cluster already has",
		"instance types offered in the default region (default t3.small)", "Debian 12", "account quotas"} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("no credentials: error lacks %q: %v", s, err)
		}
	}
	f2, _ := hclparse.NewParser().ParseHCL([]byte(`
region             = "eu-west-3"
ami                = "ami-0123456789abcdef0"
subnet_ids         = ["subnet-0aa"]
detect_operator_ip = true
endpoint           = "http://127.0.0.1:1"
`), "aws.hcl")
	d2, diags := New(f2.Body, drivers.Options{})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	err = d2.(*Driver).Preflight(context.Background(), []drivers.MachineSpec{spec("c", "manager", 1)})
	for _, s := range []string{"aws preflight", "no usable AWS credentials", "credentials and eu-west-3", "AMI ami-0123456789abcdef0 exists there",
		"subnets subnet-0aa exist", "the operator's public address"} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("preflight without credentials: error lacks %q: %v", s, err)
		}
	}

	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	d, _ = New(f.Body, drivers.Options{})
	_, err = d.Create(context.Background(), "c", spec("c", "manager", 1))
	if err == nil || !strings.Contains(err.Error(), "no AWS region") {
		t.Errorf("no region: %v", err)
	}
}
