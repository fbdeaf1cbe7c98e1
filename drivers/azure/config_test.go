package azure

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/provision/provision/drivers"
)

func decode(t *testing.T, src string) (Config, hcl.Diagnostics) {
	t.Helper()
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "azure.hcl")
	if diags.HasErrors() {
		t.Fatalf("parse: %v", diags)
	}
	return decodeConfig(f.Body, nil)
}

func TestDecodeConfigDefaults(t *testing.T) {
	c, diags := decode(t, `location = "westeurope"
allowed_cidrs = ["198.51.100.7", "203.0.113.9/24"]`)
	if diags.HasErrors() || len(diags) != 0 {
		t.Fatal(diags)
	}
	if c.Cloud != CloudPublic || c.VMSize != "Standard_B2s" || c.Image.String() != DefaultImage || c.OSDiskType != "StandardSSD_LRS" ||
		c.VNetCIDR != "10.42.0.0/16" || c.SubnetCIDR != "10.42.0.0/24" || c.Zones != nil || !c.PublicIP || c.ResourceGroup != "" ||
		c.SubscriptionID != "" || c.DetectOperatorIP || c.Bastion != nil {
		t.Errorf("defaults: %+v", c)
	}
	if !slices.Equal(c.AllowedCIDRs, []string{"198.51.100.7/32", "203.0.113.0/24"}) {
		t.Errorf("allowed_cidrs: %v", c.AllowedCIDRs)
	}

	c, diags = decode(t, `
location        = "usgovvirginia"
subscription_id = "11111111-2222-3333-4444-555555555555"
tenant_id       = "contoso.onmicrosoft.com"
cloud           = "government"
resource_group  = "ops-swarm"
vm_size         = "Standard_D2s_v5"
image           = "Canonical:ubuntu-24_04-lts:server:24.04.202501010"
os_disk_type    = "Premium_LRS"
pool_os_disk_type = { worker = "StandardSSD_ZRS" }
vnet_cidr       = "172.20.0.0/20"
subnet_cidr     = "172.20.4.0/22"
zones           = []
allowed_cidrs   = ["2001:db8::1/64"]
public_ip       = false
bastion {
  address = "203.0.113.1"
  user    = "jump"
}
`)
	if diags.HasErrors() || len(diags) != 0 {
		t.Fatal(diags)
	}
	if c.Cloud != CloudGovernment || c.ResourceGroup != "ops-swarm" || c.Image != (ImageRef{"Canonical", "ubuntu-24_04-lts", "server", "24.04.202501010"}) ||
		c.osDiskType("manager") != "Premium_LRS" || c.osDiskType("worker") != "StandardSSD_ZRS" || c.SubnetCIDR != "172.20.4.0/22" ||
		c.Zones == nil || len(c.Zones) != 0 || c.PublicIP || c.AllowedCIDRs[0] != "2001:db8::/64" || c.Bastion.Port != 22 {
		t.Errorf("decoded: %+v", c)
	}
	d := newDriver(c, drivers.Options{})
	if d.cloudConfig().ActiveDirectoryAuthorityHost != cloud.AzureGovernment.ActiveDirectoryAuthorityHost || d.resourceGroup("x") != "ops-swarm" || d.ownsGroup() {
		t.Errorf("government cloud / named group: %+v", d.cloudConfig())
	}

	// Azure China: its authority host and Resource Manager endpoint.
	c, diags = decode(t, "location = \"chinanorth3\"\ncloud = \"china\"\nallowed_cidrs = [\"198.51.100.7/32\"]")
	if diags.HasErrors() || c.Cloud != CloudChina {
		t.Fatalf("china: %v %+v", diags, c)
	}
	if cc := newDriver(c, drivers.Options{}).cloudConfig(); cc.ActiveDirectoryAuthorityHost != cloud.AzureChina.ActiveDirectoryAuthorityHost ||
		cc.Services[cloud.ResourceManager].Endpoint != cloud.AzureChina.Services[cloud.ResourceManager].Endpoint {
		t.Errorf("china cloud: %+v", cc)
	}

	// A custom cloud (Azure Stack Hub): endpoint, authority, audience.
	c, diags = decode(t, `
location = "local"
cloud = "custom"
resource_manager_endpoint = "https://management.local.azurestack.external/"
authority_host = "https://adfs.local.azurestack.external/adfs"
tenant_id = "adfs"
detect_operator_ip = true
`)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	cc := newDriver(c, drivers.Options{}).cloudConfig()
	rm := cc.Services[cloud.ResourceManager]
	if rm.Endpoint != "https://management.local.azurestack.external" || rm.Audience != rm.Endpoint || cc.ActiveDirectoryAuthorityHost != "https://adfs.local.azurestack.external/adfs/" {
		t.Errorf("custom cloud: %+v", cc)
	}
}

func TestDecodeConfigDiagnostics(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		summary   string
		subject   string // "line:col" of the diagnostic's start
	}{
		{"no location", `allowed_cidrs = ["10.0.0.0/8"]`, "No location", "1:1"},
		{"display name", "location = \"West Europe\"\nallowed_cidrs = [\"10.0.0.0/8\"]", "Invalid location", "1:12"},
		{"no cidrs", `location = "westeurope"`, "No allowed CIDRs", "1:1"},
		{"bad cidr", "location = \"westeurope\"\nallowed_cidrs = [\"nope\"]", "Invalid CIDR", "2:17"},
		{"bad subscription", "location = \"westeurope\"\nallowed_cidrs = [\"10.0.0.0/8\"]\nsubscription_id = \"my-sub\"", "Invalid subscription ID", "3:19"},
		{"bad cloud", "location = \"westeurope\"\nallowed_cidrs = [\"10.0.0.0/8\"]\ncloud = \"azure\"", "Unknown cloud", "3:9"},
		{"custom without endpoint", "location = \"westeurope\"\nallowed_cidrs = [\"10.0.0.0/8\"]\ncloud = \"custom\"\nauthority_host = \"https://login.example/\"", "No Resource Manager endpoint", "1:1"},
		{"custom over http", "location = \"westeurope\"\nallowed_cidrs = [\"10.0.0.0/8\"]\ncloud = \"custom\"\nresource_manager_endpoint = \"http://127.0.0.1:8080\"\nauthority_host = \"https://login.example/\"", "Invalid endpoint", "4:29"},
		{"custom without authority", "location = \"westeurope\"\nallowed_cidrs = [\"10.0.0.0/8\"]\ncloud = \"custom\"\nresource_manager_endpoint = \"https://rm.example\"", "No authority host", "1:1"},
		{"custom with the public audience", "location = \"westeurope\"\nallowed_cidrs = [\"10.0.0.0/8\"]\ncloud = \"custom\"\nresource_manager_endpoint = \"https://rm.example\"\nauthority_host = \"https://login.microsoftonline.com/\"\nresource_manager_audience = \"https://management.azure.com/\"", "Audience of a public Azure cloud", "6:29"},
		{"endpoint on public", "location = \"westeurope\"\nallowed_cidrs = [\"10.0.0.0/8\"]\nresource_manager_endpoint = \"https://rm.example\"", "Setting needs cloud = \"custom\"", "3:29"},
		{"bad image", "location = \"westeurope\"\nallowed_cidrs = [\"10.0.0.0/8\"]\nimage = \"debian-12\"", "Invalid image", "3:9"},
		{"bad disk type", "location = \"westeurope\"\nallowed_cidrs = [\"10.0.0.0/8\"]\nos_disk_type = \"UltraSSD_LRS\"", "Unsupported OS disk type", "3:16"},
		{"bad pool disk type", "location = \"westeurope\"\nallowed_cidrs = [\"10.0.0.0/8\"]\npool_os_disk_type = { worker = \"gp3\" }", "Unsupported OS disk type", "3:21"},
		{"subnet outside", "location = \"westeurope\"\nallowed_cidrs = [\"10.0.0.0/8\"]\nsubnet_cidr = \"192.168.0.0/24\"", "Invalid subnet CIDR", "3:15"},
		{"bad zone", "location = \"westeurope\"\nallowed_cidrs = [\"10.0.0.0/8\"]\nzones = [\"a\"]", "Invalid availability zone", "3:9"},
		{"bad group", "location = \"westeurope\"\nallowed_cidrs = [\"10.0.0.0/8\"]\nresource_group = \"ends.\"", "Invalid resource group name", "3:18"},
		{"bad size", "location = \"westeurope\"\nallowed_cidrs = [\"10.0.0.0/8\"]\nvm_size = \"2cpu-2g\"", "Invalid VM size", "3:11"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, diags := decode(t, tc.src)
			var found *hcl.Diagnostic
			for _, d := range diags {
				if d.Summary == tc.summary {
					found = d
				}
			}
			if found == nil || found.Severity != hcl.DiagError {
				t.Fatalf("no %q error in %v", tc.summary, diags)
			}
			if got := fmt.Sprintf("%d:%d", found.Subject.Start.Line, found.Subject.Start.Column); got != tc.subject {
				t.Errorf("subject at %s, want %s (%s)", got, tc.subject, found.Detail)
			}
		})
	}
	// Warnings: everyone allowed; private addresses without a bastion.
	_, diags := decode(t, "location = \"westeurope\"\nallowed_cidrs = [\"0.0.0.0/0\"]\npublic_ip = false")
	if diags.HasErrors() || len(diags) != 2 {
		t.Errorf("warnings: %v", diags)
	}
}

func TestNewRegisteredAndLazy(t *testing.T) {
	info, ok := drivers.Lookup("azure")
	if !ok || info.New == nil {
		t.Fatal("azure driver not registered")
	}
	f, _ := hclparse.NewParser().ParseHCL([]byte("location = \"westeurope\"\nallowed_cidrs = [\"10.0.0.0/8\"]"), "azure.hcl")
	d, diags := info.New(f.Body, drivers.Options{Name: "az"})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if d.(*Driver).cli != nil {
		t.Error("the factory made clients (it must do no I/O)")
	}
}

func TestExplain(t *testing.T) {
	d := newDriver(Config{Location: "westeurope", Image: ImageRef{"Debian", "debian-12", "12-gen2", "latest"}}, drivers.Options{})
	for code, want := range map[string]string{
		"AuthorizationFailed":                 "lacks a permission",
		"InvalidAuthenticationToken":          "refused the credentials",
		"SubscriptionNotFound":                "cannot be used",
		"MissingSubscriptionRegistration":     "az provider register",
		"QuotaExceeded":                       "quota reached in westeurope",
		"SkuNotAvailable":                     "VM size not available in westeurope",
		"AllocationFailed":                    "no capacity",
		"ZonalAllocationFailed":               "no capacity",
		"PlatformImageNotFound":               "image Debian:debian-12:12-gen2:latest is not usable",
		"LocationNotAvailableForResourceType": "location \"westeurope\" is not available",
		"TooManyRequests":                     "kept throttling",
	} {
		err := d.explain(&azcore.ResponseError{ErrorCode: code, StatusCode: http.StatusBadRequest})
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", code, err)
		}
		var re *azcore.ResponseError
		if !errors.As(err, &re) || re.ErrorCode != code {
			t.Errorf("%s: the response error is not wrapped", code)
		}
	}
	if !isNotFound(&azcore.ResponseError{ErrorCode: "ResourceGroupNotFound", StatusCode: 404}) || isNotFound(errors.New("x")) {
		t.Error("isNotFound")
	}
}

func TestPickZone(t *testing.T) {
	zones := []string{"1", "2", "3"}
	for name, want := range map[string]string{"c-manager-1": "1", "c-manager-2": "2", "c-manager-3": "3", "c-manager-4": "1", "odd": "1"} {
		if got := pickZone(zones, name); got != want {
			t.Errorf("%s: zone %q, want %q", name, got, want)
		}
	}
	if pickZone(nil, "c-manager-2") != "" {
		t.Error("no zones")
	}
}

// TestCustomAuthorityConfirmed: with cloud = "custom", a client secret (or
// certificate, federated token, password) in the environment goes to the
// spec's authority_host only when AZURE_AUTHORITY_HOST names the same host.
func TestCustomAuthorityConfirmed(t *testing.T) {
	cfg, diags := decode(t, "location = \"westeurope\"\nallowed_cidrs = [\"10.0.0.0/8\"]\ncloud = \"custom\"\nresource_manager_endpoint = \"https://rm.example\"\nauthority_host = \"https://login.attacker.example\"")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	d := newDriver(cfg, drivers.Options{})
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	if err := d.checkCustomAuthority(env(map[string]string{"AZURE_CLIENT_ID": "x"})); err != nil {
		t.Errorf("no secret in the environment: %v", err)
	}
	err := d.checkCustomAuthority(env(map[string]string{"AZURE_CLIENT_SECRET": "s3cret"}))
	if err == nil || !strings.Contains(err.Error(), "AZURE_CLIENT_SECRET") || !strings.Contains(err.Error(), "AZURE_AUTHORITY_HOST") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("secret, authority not confirmed: %v", err)
	}
	if err := d.checkCustomAuthority(env(map[string]string{"AZURE_FEDERATED_TOKEN_FILE": "/var/run/token", "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/"})); err == nil {
		t.Error("federated token, another authority confirmed: no error")
	}
	if err := d.checkCustomAuthority(env(map[string]string{"AZURE_CLIENT_SECRET": "s3cret", "AZURE_AUTHORITY_HOST": "https://LOGIN.attacker.example"})); err != nil {
		t.Errorf("confirmed: %v", err)
	}
	pub, _ := decode(t, "location = \"westeurope\"\nallowed_cidrs = [\"10.0.0.0/8\"]\n")
	if err := newDriver(pub, drivers.Options{}).checkCustomAuthority(env(map[string]string{"AZURE_CLIENT_SECRET": "s3cret"})); err != nil {
		t.Errorf("public cloud: %v", err)
	}
}
