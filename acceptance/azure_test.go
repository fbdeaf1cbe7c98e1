//go:build acceptance

package acceptance

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/resources/armresources"
	dswarm "github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
)

// TestAzureEndToEnd runs the real binary against real Azure: a 1-manager,
// 1-worker cluster (Standard_B2s, Debian 12) in a resource group of its own,
// checked from outside (both nodes Ready over mutual TLS, an overlay service
// answering across hosts), then destroyed, with the resource group gone.
//
// It costs money (two B2s VMs, two Standard public IPs and 30 GiB disks for
// about 15 minutes) and needs:
//
//	PROVISION_ACC=1
//	AZURE_SUBSCRIPTION_ID
//	credentials for azidentity's default chain: AZURE_TENANT_ID and
//	    AZURE_CLIENT_ID (with AZURE_CLIENT_SECRET, a certificate or a
//	    federated token), or PROVISION_ACC_AZURE_CLI=1 to use `az login`
//	PROVISION_ACC_AZURE_ALLOWED_CIDRS: comma-separated CIDRs that may reach
//	    SSH and 2376 (this machine's public address as a /32); the test never
//	    asks an outside service for it
//
// Optional: PROVISION_ACC_AZURE_LOCATION (default westeurope),
// PROVISION_ACC_AZURE_VM_SIZE (default Standard_B2s).
func TestAzureEndToEnd(t *testing.T) {
	var missing []string
	if os.Getenv("PROVISION_ACC") != "1" {
		missing = append(missing, "PROVISION_ACC=1")
	}
	sub := os.Getenv("AZURE_SUBSCRIPTION_ID")
	if sub == "" {
		missing = append(missing, "AZURE_SUBSCRIPTION_ID")
	}
	if (os.Getenv("AZURE_TENANT_ID") == "" || os.Getenv("AZURE_CLIENT_ID") == "") && os.Getenv("PROVISION_ACC_AZURE_CLI") != "1" {
		missing = append(missing, "Azure credentials (AZURE_TENANT_ID and AZURE_CLIENT_ID with a secret, certificate or federated token; or PROVISION_ACC_AZURE_CLI=1 after `az login`)")
	}
	cidrs := strings.TrimSpace(os.Getenv("PROVISION_ACC_AZURE_ALLOWED_CIDRS"))
	if cidrs == "" {
		missing = append(missing, "PROVISION_ACC_AZURE_ALLOWED_CIDRS (this machine's public address as a /32)")
	}
	if len(missing) > 0 {
		t.Skipf("real-Azure acceptance test (creates billable VMs) skipped; missing: %s", strings.Join(missing, "; "))
	}
	location := os.Getenv("PROVISION_ACC_AZURE_LOCATION")
	if location == "" {
		location = "westeurope"
	}
	size := os.Getenv("PROVISION_ACC_AZURE_VM_SIZE")
	if size == "" {
		size = "Standard_B2s"
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	dir := t.TempDir()
	name := fmt.Sprintf("acc%d", time.Now().UnixNano()%1000000)
	var quoted []string
	for _, c := range strings.Split(cidrs, ",") {
		quoted = append(quoted, fmt.Sprintf("%q", strings.TrimSpace(c)))
	}
	specFile := filepath.Join(dir, name+".hcl")
	spec := fmt.Sprintf(`
name = %q
driver "azure" {
  location      = %q
  vm_size       = %q
  allowed_cidrs = [%s]
}
managers { count = 1 }
workers  { count = 1 }
ssh { connect_timeout = "10m" }
`, name, location, size, strings.Join(quoted, ", "))
	if err := os.WriteFile(specFile, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Minute)
			defer ccancel()
			awsRun(t, cctx, dir, "destroy", specFile, "--auto-approve")
		}
	})

	awsMustRun(t, ctx, dir, "plan", specFile)
	awsMustRun(t, ctx, dir, "apply", specFile, "--auto-approve")
	status := parseStatus(t, awsMustRun(t, ctx, dir, "status", specFile, "--json").stdout)
	if len(status.Nodes) != 2 || status.ClusterID == "" {
		t.Fatalf("status: %+v", status)
	}
	var mgr *client.Client
	var hostnames []string
	for _, n := range status.Nodes {
		env := awsParseEnv(awsMustRun(t, ctx, dir, "env", specFile, n.Name).stdout)
		tlsDir := env["DOCKER_CERT_PATH"]
		c, err := client.NewClientWithOpts(client.WithHost(env["DOCKER_HOST"]),
			client.WithTLSClientConfig(filepath.Join(tlsDir, "ca.pem"), filepath.Join(tlsDir, "cert.pem"), filepath.Join(tlsDir, "key.pem")),
			client.WithAPIVersionNegotiation())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.ServerVersion(ctx); err != nil {
			t.Fatalf("%s: engine over TLS: %v", n.Name, err)
		}
		if n.Role == "manager" {
			mgr = c
		}
	}
	if mgr == nil {
		t.Fatalf("no manager in %+v", status.Nodes)
	}
	nodes, err := mgr.NodeList(ctx, dswarm.NodeListOptions{})
	if err != nil || len(nodes) != 2 {
		t.Fatalf("swarm nodes: %v (%d)", err, len(nodes))
	}
	for _, n := range nodes {
		if n.Status.State != dswarm.NodeStateReady {
			t.Errorf("node %s is %s", n.Description.Hostname, n.Status.State)
		}
		hostnames = append(hostnames, n.Description.Hostname)
	}
	awsOverlay(t, ctx, mgr, hostnames)
	cloudPublished(t, ctx, dir, specFile, mgr)

	awsMustRun(t, ctx, dir, "destroy", specFile, "--auto-approve")
	destroyed = true

	// The resource group the driver made is gone, with everything in it.
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		t.Fatal(err)
	}
	groups, err := armresources.NewResourceGroupsClient(sub, cred, nil)
	if err != nil {
		t.Fatal(err)
	}
	rg := "provision-" + status.ClusterID
	if _, err := groups.Get(ctx, rg, nil); err == nil || !strings.Contains(err.Error(), "ResourceGroupNotFound") {
		t.Errorf("resource group %s after destroy: %v", rg, err)
	}
}
