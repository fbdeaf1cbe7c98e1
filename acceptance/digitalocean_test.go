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

	"github.com/digitalocean/godo"
	dswarm "github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
)

// TestDigitalOceanEndToEnd runs the real binary against real DigitalOcean: a
// 1-manager, 1-worker cluster (the worker with a volume for
// /var/lib/docker), checked from outside (both nodes Ready over mutual TLS,
// a certless client refused on 2376, an overlay service answering across
// hosts), then destroyed, with nothing of the cluster left in the account.
//
// It costs money (two small droplets and a volume for a few minutes) and
// needs:
//
//	PROVISION_ACC=1
//	DIGITALOCEAN_TOKEN: a token with write scope
//	PROVISION_ACC_DO_ALLOWED_CIDRS: comma-separated CIDRs that may reach SSH
//	    and 2376 (this machine's public address as a /32); the test never
//	    asks an outside service for it
//
// Optional: PROVISION_ACC_DO_REGION (default ams3), PROVISION_ACC_DO_SIZE
// (default s-2vcpu-2gb).
func TestDigitalOceanEndToEnd(t *testing.T) {
	var missing []string
	if os.Getenv("PROVISION_ACC") != "1" {
		missing = append(missing, "PROVISION_ACC=1")
	}
	token := strings.TrimSpace(os.Getenv("DIGITALOCEAN_TOKEN"))
	if token == "" {
		missing = append(missing, "DIGITALOCEAN_TOKEN")
	}
	cidrs := strings.TrimSpace(os.Getenv("PROVISION_ACC_DO_ALLOWED_CIDRS"))
	if cidrs == "" {
		missing = append(missing, "PROVISION_ACC_DO_ALLOWED_CIDRS (this machine's public address as a /32)")
	}
	if len(missing) > 0 {
		t.Skipf("real-DigitalOcean acceptance test (creates billable droplets) skipped; missing: %s", strings.Join(missing, "; "))
	}
	region := envOr("PROVISION_ACC_DO_REGION", "ams3")
	size := envOr("PROVISION_ACC_DO_SIZE", "s-2vcpu-2gb")

	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
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
driver "digitalocean" {
  region        = %q
  size          = %q
  allowed_cidrs = [%s]
}
managers { count = 1 }
workers {
  count = 1
  disk  = 100
}
ssh { connect_timeout = "5m" }
`, name, region, size, strings.Join(quoted, ", "))
	if err := os.WriteFile(specFile, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Minute)
			defer ccancel()
			awsRun(t, cctx, dir, "destroy", specFile, "--auto-approve")
		}
	})

	awsMustRun(t, ctx, dir, "apply", specFile, "--auto-approve")
	status := parseStatus(t, awsMustRun(t, ctx, dir, "status", specFile, "--json").stdout)
	if len(status.Nodes) != 2 || status.ClusterID == "" {
		t.Fatalf("status: %+v", status)
	}
	var mgr *client.Client
	var hostnames []string
	for _, n := range status.Nodes {
		env := awsParseEnv(awsMustRun(t, ctx, dir, "env", specFile, n.Name).stdout)
		certs := env["DOCKER_CERT_PATH"]
		c, err := client.NewClientWithOpts(client.WithHost(env["DOCKER_HOST"]),
			client.WithTLSClientConfig(filepath.Join(certs, "ca.pem"), filepath.Join(certs, "cert.pem"), filepath.Join(certs, "key.pem")),
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
		t.Fatalf("swarm nodes: %v %d", err, len(nodes))
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
	doNothingLeft(t, ctx, token, status.ClusterID)
}

func envOr(k, def string) string {
	if v := strings.TrimSpace(os.Getenv(k)); v != "" {
		return v
	}
	return def
}

// doNothingLeft checks with the operator's token that no droplet or volume
// carries the cluster tag and no firewall, VPC or key of the cluster is left.
func doNothingLeft(t *testing.T, ctx context.Context, token, cluster string) {
	t.Helper()
	cli := godo.NewFromToken(token)
	tag := "provision-cluster:" + cluster
	if ds, _, err := cli.Droplets.ListByTag(ctx, tag, &godo.ListOptions{PerPage: 200}); err != nil || len(ds) > 0 {
		t.Errorf("droplets left: %d %v", len(ds), err)
	}
	vols, _, err := cli.Storage.ListVolumes(ctx, &godo.ListVolumeParams{ListOptions: &godo.ListOptions{PerPage: 200}})
	if err != nil {
		t.Error(err)
	}
	for _, v := range vols {
		for _, vt := range v.Tags {
			if vt == tag {
				t.Errorf("volume %s (%s) left", v.Name, v.ID)
			}
		}
	}
	name := "provision-" + cluster
	if fws, _, err := cli.Firewalls.List(ctx, &godo.ListOptions{PerPage: 200}); err == nil {
		for _, f := range fws {
			if strings.HasPrefix(f.Name, name) { // the cluster's and the load balancer's ("-lb")
				t.Errorf("firewall %s left", f.ID)
			}
		}
	} else {
		t.Error(err)
	}
	if lbs, _, err := cli.LoadBalancers.List(ctx, &godo.ListOptions{PerPage: 200}); err == nil {
		for _, l := range lbs {
			if strings.HasPrefix(l.Name, name) {
				t.Errorf("load balancer %s (%s) left", l.Name, l.ID)
			}
		}
	} else {
		t.Error(err)
	}
	if vpcs, _, err := cli.VPCs.List(ctx, &godo.ListOptions{PerPage: 200}); err == nil {
		for _, v := range vpcs {
			if v.Name == name {
				t.Errorf("vpc %s left", v.ID)
			}
		}
	} else {
		t.Error(err)
	}
	if keys, _, err := cli.Keys.List(ctx, &godo.ListOptions{PerPage: 200}); err == nil {
		for _, k := range keys {
			if k.Name == name {
				t.Errorf("ssh key %d left", k.ID)
			}
		}
	} else {
		t.Error(err)
	}
}
