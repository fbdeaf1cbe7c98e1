package digitalocean

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/digitalocean/godo"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/zclconf/go-cty/cty"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/drivers/digitalocean/dotest"
	"github.com/provision/provision/drivers/drivertest"
)

const testToken = "dop_v1_0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab"

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func startServer(t *testing.T) *dotest.Server {
	s := dotest.Start(testToken)
	t.Cleanup(s.Close)
	return s
}

// evalCtx gives the block var.do_token, as a spec with a sensitive variable does.
func evalCtx(token string) *hcl.EvalContext {
	return &hcl.EvalContext{Variables: map[string]cty.Value{"var": cty.ObjectVal(map[string]cty.Value{"do_token": cty.StringVal(token)})}}
}

// driverFor runs the real factory on an HCL body pointed at the server, with
// short waits. log may be nil.
func driverFor(t *testing.T, s *dotest.Server, body string, log *slog.Logger) *Driver {
	t.Helper()
	src := fmt.Sprintf("api_url = %q\ntoken = var.do_token\n%s\n", s.URL, body)
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "do.hcl")
	if diags.HasErrors() {
		t.Fatalf("parse: %v", diags)
	}
	d, diags := New(f.Body, drivers.Options{Name: "digitalocean", Log: log, Eval: evalCtx(testToken)})
	if diags.HasErrors() {
		t.Fatalf("New: %v", diags)
	}
	drv := d.(*Driver)
	fast(drv)
	return drv
}

func fast(d *Driver) {
	d.waitMin = 5 * time.Millisecond
	d.retryMin = 5 * time.Millisecond
	d.retryMax = 50 * time.Millisecond
	d.depTimeout = 2 * time.Second
	d.getenv = func(string) string { return "" }
}

const block = `region = "ams3"
allowed_cidrs = ["198.51.100.7/32", "2001:db8::/64"]`

func spec(t *testing.T, cluster, pool string, i int, adminLine string) drivers.MachineSpec {
	role := "worker"
	if pool == "manager" {
		role = "manager"
	}
	s := drivertest.Spec(t, cluster, fmt.Sprintf("c%s-%s-%d", cluster[len(cluster)-6:], pool, i), role, adminLine)
	s.Pool = pool
	s.Tags[drivers.TagPool] = pool
	return s
}

// clusterTraces lists what the server still holds that names the cluster.
func clusterTraces(s *dotest.Server, cluster string) []string {
	var out []string
	for _, line := range s.Inventory() {
		if strings.Contains(line, cluster) {
			out = append(out, line)
		}
	}
	for _, d := range s.Droplets() {
		if slices.Contains(d.Tags, clusterTag(cluster)) {
			out = append(out, fmt.Sprintf("droplet %d", d.ID))
		}
	}
	for _, v := range s.Volumes() {
		if slices.Contains(v.Tags, clusterTag(cluster)) {
			out = append(out, "volume "+v.ID)
		}
	}
	return out
}

// TestConformance is the shared driver contract against the stateful API:
// droplets appear, become active, are listed by tag and disappear. One
// machine asks for more disk than its size has and gets a volume. Then
// Teardown leaves nothing of the cluster.
func TestConformance(t *testing.T) {
	s := startServer(t)
	before := s.Inventory()
	d := driverFor(t, s, block, nil)
	cluster := drivertest.ClusterID(t)
	_, adminLine := drivertest.AdminKey(t)
	ms := []drivers.MachineSpec{
		spec(t, cluster, "manager", 1, adminLine),
		spec(t, cluster, "worker", 1, adminLine),
		spec(t, cluster, "worker", 2, adminLine),
	}
	ms[2].DiskGiB = 100 // s-2vcpu-2gb has 60
	drivertest.Run(t, d, drivertest.Config{Cluster: cluster, Machines: ms, SkipSSH: true, Timeout: time.Minute})
	if t.Failed() {
		return
	}
	if err := d.Teardown(testCtx(t), cluster); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if left := clusterTraces(s, cluster); len(left) > 0 {
		t.Errorf("left of the cluster: %v", left)
	}
	for _, line := range s.Inventory() {
		if slices.Contains(before, line) {
			continue
		}
		// Generic tags (role, pool, user, machine names) are free and may
		// be shared with other clusters: they stay.
		if !strings.HasPrefix(line, "tag provision-role:") && !strings.HasPrefix(line, "tag provision-pool:") &&
			!strings.HasPrefix(line, "tag provision-user:") && !strings.HasPrefix(line, "tag provision-machine:") {
			t.Errorf("left in the account: %s", line)
		}
	}
}

// TestCreate checks what the account holds after Create: the droplet's
// request (region, size, image, key, VPC, tags, user data with the host key),
// the firewall's rules, the VPC and key, and the volume.
func TestCreate(t *testing.T) {
	s := startServer(t)
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d := driverFor(t, s, block, log)
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	_, adminLine := drivertest.AdminKey(t)
	wants := []drivers.MachineSpec{spec(t, cluster, "manager", 1, adminLine), spec(t, cluster, "worker", 1, adminLine)}
	wants[1].Size = "s-4vcpu-8gb"
	metrics := &drivers.MetricsAccess{Port: 9323, CIDRs: []string{"192.0.2.0/24"}}
	for i := range wants {
		wants[i].Metrics = metrics
	}
	wants[1].DiskGiB = 200
	if err := d.Preflight(ctx, wants); err != nil {
		t.Fatalf("Preflight: %v", err)
	}
	got := make([]drivers.Machine, len(wants))
	errs := make([]error, len(wants))
	var wg sync.WaitGroup
	for i := range wants {
		wg.Go(func() { got[i], errs[i] = d.Create(ctx, cluster, wants[i]) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("Create: %v", err)
	}

	vpcs := s.VPCs()
	if len(vpcs) != 1 || vpcs[0].Name != "provision-"+cluster || vpcs[0].Description != vpcDescription(cluster) || vpcs[0].RegionSlug != "ams3" {
		t.Fatalf("vpcs: %+v", vpcs)
	}
	keys := s.Keys()
	if len(keys) != 1 || keys[0].Name != keyName(cluster) {
		t.Fatalf("keys: %+v", keys)
	}
	fws := s.Firewalls()
	if len(fws) != 1 || fws[0].Name != "provision-"+cluster || !slices.Equal(fws[0].Tags, []string{clusterTag(cluster)}) {
		t.Fatalf("firewalls: %+v", fws)
	}
	if !slices.Contains(haveFirewall(&fws[0]), fwRule{in: true, proto: "tcp", ports: "9323", tags: clusterTag(cluster), addrs: "192.0.2.0/24"}) {
		t.Errorf("firewall does not open the metrics port to the cluster and metrics_cidrs: %v", haveFirewall(&fws[0]))
	}
	if want := wantFirewall(cluster, []string{"198.51.100.7/32", "2001:db8::/64"}, metrics); !sameRules(haveFirewall(&fws[0]), want) {
		t.Errorf("firewall rules:\n have %v\n want %v", haveFirewall(&fws[0]), want)
	}
	// No swarm port is open to an address, and SSH/2376 only to the allowed ones.
	for _, r := range fws[0].InboundRules {
		switch r.PortRange {
		case "9323": // metrics: the cluster and metrics_cidrs (checked above)
		case "22", "2376":
			if !slices.Equal(r.Sources.Addresses, []string{"198.51.100.7/32", "2001:db8::/64"}) || len(r.Sources.Tags) > 0 {
				t.Errorf("port %s open to %+v", r.PortRange, r.Sources)
			}
		default:
			if len(r.Sources.Addresses) > 0 || !slices.Equal(r.Sources.Tags, []string{clusterTag(cluster)}) {
				t.Errorf("swarm port %s/%s open to %+v", r.PortRange, r.Protocol, r.Sources)
			}
		}
	}
	vols := s.Volumes()
	if len(vols) != 1 || vols[0].SizeGigaBytes != 200 || vols[0].FilesystemType != "ext4" || vols[0].Name != volumeName(cluster, wants[1].Name, 1) {
		t.Fatalf("volumes: %+v", vols)
	}

	byName := map[string]dotest.Droplet{}
	for _, dr := range s.Droplets() {
		byName[dr.Name] = dr
	}
	for i, m := range got {
		dr, ok := byName[wants[i].Name]
		if !ok {
			t.Fatalf("no droplet %s", wants[i].Name)
		}
		if m.ID != strconv.Itoa(dr.ID) || m.State != "running" || m.Driver != "digitalocean" {
			t.Errorf("machine %+v", m)
		}
		pub, _ := dr.PublicIPv4()
		priv, _ := dr.PrivateIPv4()
		if m.Address != pub || m.PrivateAddress != priv || !strings.HasPrefix(priv, "10.") || !strings.HasPrefix(pub, "203.0.113.") {
			t.Errorf("%s: address %q private %q", m.Name, m.Address, m.PrivateAddress)
		}
		if m.SSH.HostKey != wants[i].HostKey.Public || m.SSH.User != "provision" || m.SSH.Port != 22 {
			t.Errorf("%s: ssh %+v", m.Name, m.SSH)
		}
		if dr.Region.Slug != "ams3" || dr.Image.Slug != "debian-12-x64" || dr.VPCUUID != vpcs[0].ID {
			t.Errorf("%s: region %s image %s vpc %s", m.Name, dr.Region.Slug, dr.Image.Slug, dr.VPCUUID)
		}
		if want := []string{"s-2vcpu-2gb", "s-4vcpu-8gb"}[i]; dr.SizeSlug != want {
			t.Errorf("%s: size %s, want %s", m.Name, dr.SizeSlug, want)
		}
		for _, tg := range []string{clusterTag(cluster), "provision-machine:" + wants[i].Name, "provision-role:" + wants[i].Role,
			"provision-pool:" + wants[i].Pool, "provision-user:provision"} {
			if !slices.Contains(dr.Tags, tg) {
				t.Errorf("%s: tag %s missing from %v", m.Name, tg, dr.Tags)
			}
		}
		for _, want := range []string{"#cloud-config", "ssh_deletekeys: true", `ed25519_public: "` + wants[i].HostKey.Public + `"`,
			"BEGIN OPENSSH PRIVATE KEY", `- name: "provision"`, adminLine} {
			if !strings.Contains(dr.UserData, want) {
				t.Errorf("%s: user data lacks %q", m.Name, want)
			}
		}
		mount := strings.Contains(dr.UserData, "scsi-0DO_Volume_"+volumeName(cluster, wants[1].Name, 1)+`", "/var/lib/docker"`)
		if mount != (i == 1) {
			t.Errorf("%s: volume mount in user data = %v", m.Name, mount)
		}
		if (i == 1) != slices.Contains(dr.VolumeIDs, vols[0].ID) {
			t.Errorf("%s: volumes %v", m.Name, dr.VolumeIDs)
		}
	}
	if strings.Contains(logs.String(), testToken) || strings.Contains(logs.String(), "PRIVATE KEY") {
		t.Error("the token or a private key reached the log")
	}
	if !strings.Contains(logs.String(), "created droplet") {
		t.Errorf("log lacks the create: %s", logs.String())
	}

	// A fresh driver (a new process) with other allowed CIDRs reuses the
	// VPC, key and firewall, and converges the firewall's rules.
	d2 := driverFor(t, s, `region = "ams3"
allowed_cidrs = ["203.0.113.0/24"]`, nil)
	third, err := d2.Create(ctx, cluster, spec(t, cluster, "worker", 2, adminLine))
	if err != nil {
		t.Fatalf("Create through a second driver: %v", err)
	}
	if n := len(s.VPCs()); n != 1 {
		t.Errorf("vpcs: %d", n)
	}
	if n := len(s.Keys()); n != 1 {
		t.Errorf("keys: %d", n)
	}
	fws = s.Firewalls()
	if len(fws) != 1 || !sameRules(haveFirewall(&fws[0]), wantFirewall(cluster, []string{"203.0.113.0/24"}, nil)) {
		t.Errorf("firewall after the CIDR change: %+v", fws)
	}

	// Teardown refuses while droplets live.
	if err := d.Teardown(ctx, cluster); err == nil || !strings.Contains(err.Error(), "droplets still exist") {
		t.Errorf("Teardown with live droplets: %v", err)
	}
	for _, m := range append(got, third) {
		if err := d.Destroy(ctx, m); err != nil {
			t.Fatalf("Destroy %s: %v", m.Name, err)
		}
	}
	if len(s.Volumes()) != 0 {
		t.Errorf("volumes after Destroy: %+v", s.Volumes())
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Errorf("Teardown again: %v", err)
	}
	if left := clusterTraces(s, cluster); len(left) > 0 {
		t.Errorf("left: %v", left)
	}
}

// TestLostAnswerIsAdopted: the create goes through but its answer never
// comes (connection dropped, or a 500 after the droplet was made). The
// driver does not send it again blindly: it finds the droplet by its tags
// and returns it; a fresh driver (a new process) lists and adopts it with
// the host key cloud-init got, never a second droplet.
func TestLostAnswerIsAdopted(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
	}{{"connection dropped", 0}, {"server error after the change", 500}} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t)
			d := driverFor(t, s, block, nil)
			ctx := testCtx(t)
			cluster := drivertest.ClusterID(t)
			_, adminLine := drivertest.AdminKey(t)
			want := spec(t, cluster, "worker", 1, adminLine)
			s.Inject(dotest.Fault{Method: "POST", Path: "/v2/droplets", Status: tc.status, After: true})
			m, err := d.Create(ctx, cluster, want)
			if err != nil {
				t.Fatalf("Create with the answer lost: %v", err)
			}
			if n := s.Calls("POST", "/v2/droplets"); n != 1 {
				t.Fatalf("POST /v2/droplets sent %d times, want 1", n)
			}
			if ds := s.Droplets(); len(ds) != 1 || strconv.Itoa(ds[0].ID) != m.ID || m.SSH.HostKey != want.HostKey.Public {
				t.Fatalf("droplets %+v, machine %+v", ds, m)
			}

			d2 := driverFor(t, s, block, nil)
			ms, err := d2.Machines(ctx, cluster)
			if err != nil || len(ms) != 1 || ms[0].ID != m.ID || ms[0].SSH.HostKey != want.HostKey.Public || ms[0].Tags[drivers.TagRole] != "worker" {
				t.Fatalf("Machines: %v %+v", err, ms)
			}
			retry := want
			retry.HostKey, _ = drivertest.HostKey(t) // the engine makes a fresh key for its retry
			again, err := d2.Create(ctx, cluster, retry)
			if err != nil || again.ID != m.ID || again.SSH.HostKey != want.HostKey.Public {
				t.Fatalf("Create again: %v %+v, want %s with the first host key", err, again, m.ID)
			}
			if n := len(s.Droplets()); n != 1 || s.Calls("POST", "/v2/droplets") != 1 {
				t.Errorf("droplets %d, creates sent %d", n, s.Calls("POST", "/v2/droplets"))
			}
			if err := d2.Destroy(ctx, drivers.Machine{Name: want.Name, Tags: map[string]string{drivers.TagCluster: cluster}}); err != nil {
				t.Fatalf("Destroy by tags: %v", err)
			}
			if err := d2.Teardown(ctx, cluster); err != nil {
				t.Fatalf("Teardown: %v", err)
			}
			if left := clusterTraces(s, cluster); len(left) > 0 {
				t.Errorf("left: %v", left)
			}
		})
	}
}

// TestThrottled: 429 answers with the rate-limit headers are retried (reads
// and creates alike: a 429 was not carried out), and the work completes.
func TestThrottled(t *testing.T) {
	s := startServer(t)
	d := driverFor(t, s, block, nil)
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	_, adminLine := drivertest.AdminKey(t)
	h := http.Header{}
	h.Set("RateLimit-Remaining", "0")
	h.Set("RateLimit-Reset", strconv.FormatInt(time.Now().Unix(), 10))
	s.Inject(dotest.Fault{Method: "GET", Path: "/v2/droplets", Status: 429, Header: h, Times: 2})
	s.Inject(dotest.Fault{Method: "POST", Path: "/v2/droplets", Status: 429, Header: h, Times: 2})
	m, err := d.Create(ctx, cluster, spec(t, cluster, "manager", 1, adminLine))
	if err != nil {
		t.Fatalf("Create while throttled: %v", err)
	}
	if n := s.Calls("POST", "/v2/droplets"); n != 3 {
		t.Errorf("POST /v2/droplets sent %d times, want 3 (two throttled)", n)
	}
	if n := len(s.Droplets()); n != 1 {
		t.Errorf("droplets: %d", n)
	}

	// Throttled past the retries: a clear error naming the limit's reset.
	d.retries = 2
	d.client = nil
	s.Inject(dotest.Fault{Method: "GET", Path: "/v2/droplets", Status: 429, Header: h, Times: 3}) // the first try and two retries
	_, err = d.Machines(ctx, cluster)
	if err == nil || status(err) != 429 || !strings.Contains(err.Error(), "rate limit") || !strings.Contains(err.Error(), "resets at") {
		t.Errorf("Machines throttled past the retries: %v", err)
	}
	d.retries = 6
	d.client = nil
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
}

// TestServerErrorsRetried: 5xx answers to reads and deletes are retried by
// the client; a 5xx to a create is not sent again blindly: the driver looks
// for the droplet first, finds none, and creates it once more.
func TestServerErrorsRetried(t *testing.T) {
	s := startServer(t)
	d := driverFor(t, s, block, nil)
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	_, adminLine := drivertest.AdminKey(t)
	s.Inject(dotest.Fault{Method: "GET", Path: "/v2/droplets/", Status: 503, Times: 2})
	s.Inject(dotest.Fault{Method: "POST", Path: "/v2/droplets", Status: 500})
	s.Inject(dotest.Fault{Method: "GET", Path: "/v2/vpcs", Status: 502})
	m, err := d.Create(ctx, cluster, spec(t, cluster, "manager", 1, adminLine))
	if err != nil {
		t.Fatalf("Create through server errors: %v", err)
	}
	if n := s.Calls("POST", "/v2/droplets"); n != 2 {
		t.Errorf("POST /v2/droplets sent %d times, want 2 (the first refused with a 500 before anything was made)", n)
	}
	if n := len(s.Droplets()); n != 1 {
		t.Fatalf("droplets: %d", n)
	}
	s.Inject(dotest.Fault{Method: "DELETE", Path: "/v2/droplets/", Status: 500})
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatalf("Destroy through a 500: %v", err)
	}
	if n := len(s.Droplets()); n != 0 {
		t.Errorf("droplets after Destroy: %d", n)
	}
	// A create that keeps failing ends with a clear error, after a bounded
	// number of tries, and leaves no droplet.
	s.Inject(dotest.Fault{Method: "POST", Path: "/v2/droplets", Status: 500, Times: 10})
	_, err = d.Create(ctx, cluster, spec(t, cluster, "worker", 1, adminLine))
	if err == nil || !strings.Contains(err.Error(), "kept failing") {
		t.Errorf("Create against a failing API: %v", err)
	}
	if n := len(s.Droplets()); n != 0 {
		t.Errorf("droplets: %d", n)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
}

// TestPreflight reports every problem at once and creates nothing.
func TestPreflight(t *testing.T) {
	s := startServer(t)
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	_, adminLine := drivertest.AdminKey(t)
	before := s.Inventory()

	t.Run("no token", func(t *testing.T) {
		d := newDriver(Config{Region: "ams3", Size: DefaultSize, Image: DefaultImage, AllowedCIDRs: []string{"198.51.100.7/32"}, CloudFirewall: true,
			APIURL: mustURL(DefaultAPIURL)}, drivers.Options{})
		fast(d)
		err := d.Preflight(ctx, nil)
		if err == nil || !strings.Contains(err.Error(), "no DigitalOcean token") || !strings.Contains(err.Error(), "not checked") {
			t.Errorf("Preflight: %v", err)
		}
		if _, err := d.Machines(ctx, cluster); err == nil || !strings.Contains(err.Error(), TokenEnv) {
			t.Errorf("Machines: %v", err)
		}
		// The environment's token is used with the default API URL ...
		d.getenv = func(k string) string {
			if k == TokenEnv {
				return "from-env"
			}
			return ""
		}
		if tok, err := d.token(); err != nil || tok != "from-env" {
			t.Errorf("token from the environment: %q %v", tok, err)
		}
		// ... never with another.
		d.cfg.CustomAPI, d.cfg.APIURL = true, mustURL(s.URL)
		if _, err := d.token(); err == nil || !strings.Contains(err.Error(), "api_url") {
			t.Errorf("environment token with api_url: %v", err)
		}
	})

	t.Run("token refused", func(t *testing.T) {
		d := driverFor(t, s, block, nil)
		d.cfg.Token = []byte("dop_v1_wrong")
		err := d.Preflight(ctx, []drivers.MachineSpec{spec(t, cluster, "manager", 1, adminLine)})
		if err == nil || status(err) != 401 || !strings.Contains(err.Error(), "refused the token") || strings.Contains(err.Error(), "dop_v1_wrong") {
			t.Errorf("Preflight: %v", err)
		}
	})

	t.Run("region", func(t *testing.T) {
		for region, want := range map[string]string{"xyz9": `region "xyz9" does not exist (available: ams3, fra1, nyc3)`, "sfo1": "takes no new droplets"} {
			d := driverFor(t, s, fmt.Sprintf("region = %q\nallowed_cidrs = [\"198.51.100.7/32\"]", region), nil)
			if err := d.Preflight(ctx, []drivers.MachineSpec{spec(t, cluster, "manager", 1, adminLine)}); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("region %s: %v", region, err)
			}
		}
	})

	t.Run("everything else at once", func(t *testing.T) {
		s.SetDropletLimit(1)
		defer s.SetDropletLimit(25)
		d := driverFor(t, s, `region = "fra1"
image = "777"
allowed_cidrs = ["198.51.100.7/32"]`, nil)
		a := spec(t, cluster, "manager", 1, adminLine)
		b := spec(t, cluster, "worker", 1, adminLine)
		b.Size = "s-4vcpu-8gb" // not in fra1
		c := spec(t, cluster, "worker", 2, adminLine)
		c.Size = "s-9vcpu-99gb"
		e := spec(t, cluster, "worker", 3, adminLine)
		e.SSH.User = "Not A User"
		err := d.Preflight(ctx, []drivers.MachineSpec{a, b, c, e})
		for _, want := range []string{`droplet size "s-4vcpu-8gb" is not offered in region fra1`, `droplet size "s-9vcpu-99gb" does not exist`,
			"Not A User", "droplet limit: the account has 0 droplets and may have 1; this apply creates 4 more"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("Preflight lacks %q: %v", want, err)
			}
		}
		d2 := driverFor(t, s, block+"\nimage = \"777\"", nil)
		if err := d2.Preflight(ctx, []drivers.MachineSpec{a}); err == nil || !strings.Contains(err.Error(), `image "777" is not available in region ams3`) {
			t.Errorf("custom image elsewhere: %v", err)
		}
		d3 := driverFor(t, s, block+"\nimage = \"debian-99-x64\"", nil)
		if err := d3.Preflight(ctx, []drivers.MachineSpec{a}); err == nil || !strings.Contains(err.Error(), `image "debian-99-x64" not found`) {
			t.Errorf("unknown image: %v", err)
		}
		d4 := driverFor(t, s, block+"\nvpc_uuid = \"00000000-0000-4000-8000-000000000000\"", nil)
		if err := d4.Preflight(ctx, []drivers.MachineSpec{a}); err == nil || !strings.Contains(err.Error(), "not found") {
			t.Errorf("unknown vpc: %v", err)
		}
	})

	t.Run("create refuses what preflight would", func(t *testing.T) {
		d := driverFor(t, s, block, nil)
		bad := spec(t, cluster, "manager", 1, adminLine)
		bad.HostKey = drivers.HostKey{}
		if _, err := d.Create(ctx, cluster, bad); err == nil || !strings.Contains(err.Error(), "no SSH host key") {
			t.Errorf("missing host key: %v", err)
		}
		bad = spec(t, cluster, "manager", 1, adminLine)
		bad.Size = "c-2"
		if _, err := d.Create(ctx, cluster, bad); err == nil || !strings.Contains(err.Error(), `"c-2" is not offered`) {
			t.Errorf("unavailable size: %v", err)
		}
	})

	if after := s.Inventory(); !slices.Equal(before, after) || s.Calls("POST", "") != 0 {
		t.Errorf("preflight changed the account:\n before %v\n after  %v\n posts %d", before, after, s.Calls("POST", ""))
	}
}

// TestOperatorKeyAndVPC: the account already has the admin key (by
// fingerprint) and the spec names an existing VPC: both are used, and
// Teardown removes neither.
func TestOperatorKeyAndVPC(t *testing.T) {
	s := startServer(t)
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	_, adminLine := drivertest.AdminKey(t)
	key, err := s.AddKey("laptop", adminLine)
	if err != nil {
		t.Fatal(err)
	}
	vpc := s.AddVPC("ops-net", "ams3", "10.77.0.0/20")
	s.MemberLinger = 3
	d := driverFor(t, s, block+fmt.Sprintf("\nvpc_uuid = %q", vpc.ID), nil)
	if err := d.Preflight(ctx, []drivers.MachineSpec{spec(t, cluster, "manager", 1, adminLine)}); err != nil {
		t.Fatalf("Preflight: %v", err)
	}
	m, err := d.Create(ctx, cluster, spec(t, cluster, "manager", 1, adminLine))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(m.PrivateAddress, "10.77.") {
		t.Errorf("private address %q not in the operator's vpc", m.PrivateAddress)
	}
	if ks := s.Keys(); len(ks) != 1 || ks[0].ID != key.ID {
		t.Errorf("keys: %+v", ks)
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if ks := s.Keys(); len(ks) != 1 || ks[0].ID != key.ID {
		t.Errorf("Teardown removed the operator's key: %+v", ks)
	}
	if vs := s.VPCs(); len(vs) != 1 || vs[0].ID != vpc.ID {
		t.Errorf("Teardown removed the operator's vpc: %+v", vs)
	}
}

// TestTeardownWaitsForVPCMembers: a deleted droplet stays a member of its
// VPC for a while; Teardown waits for it, and gives up clearly when the VPC
// holds something else.
func TestTeardownWaitsForVPCMembers(t *testing.T) {
	s := startServer(t)
	s.MemberLinger = 3
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	_, adminLine := drivertest.AdminKey(t)
	d := driverFor(t, s, block, nil)
	m, err := d.Create(ctx, cluster, spec(t, cluster, "manager", 1, adminLine))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if len(s.VPCs()) != 0 {
		t.Errorf("vpc left: %+v", s.VPCs())
	}

	// Someone else's droplet in the cluster's VPC: reported, the rest goes.
	cluster2 := drivertest.ClusterID(t)
	m, err = d.Create(ctx, cluster2, spec(t, cluster2, "manager", 1, adminLine))
	if err != nil {
		t.Fatal(err)
	}
	vpcID := s.VPCs()[0].ID
	cli, _ := d.api()
	other, _, err := cli.Droplets.Create(ctx, &godo.DropletCreateRequest{Name: "foreign", Region: "ams3", Size: "s-1vcpu-1gb",
		Image: godo.DropletCreateImage{Slug: "debian-12-x64"}, VPCUUID: vpcID})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	err = d.Teardown(ctx, cluster2)
	if err == nil || !strings.Contains(err.Error(), "delete vpc provision-"+cluster2) || !strings.Contains(err.Error(), "foreign") {
		t.Errorf("Teardown with a foreign member: %v", err)
	}
	if len(s.Firewalls()) != 0 || len(s.Keys()) != 0 {
		t.Errorf("what could go did not: firewalls %v keys %v", s.Firewalls(), s.Keys())
	}
	cli.Droplets.Delete(ctx, other.ID)
	if err := d.Teardown(ctx, cluster2); err != nil {
		t.Fatalf("second Teardown: %v", err)
	}
	if left := clusterTraces(s, cluster2); len(left) > 0 {
		t.Errorf("left: %v", left)
	}
}

// TestForeignVPCName: a VPC with the cluster's name that provision did not
// make stops the create before any droplet exists.
func TestForeignVPCName(t *testing.T) {
	s := startServer(t)
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	_, adminLine := drivertest.AdminKey(t)
	s.AddVPC("provision-"+cluster, "ams3", "")
	d := driverFor(t, s, block, nil)
	if _, err := d.Create(ctx, cluster, spec(t, cluster, "manager", 1, adminLine)); err == nil || !strings.Contains(err.Error(), "did not make") {
		t.Fatalf("Create: %v", err)
	}
	if len(s.Droplets()) != 0 {
		t.Error("a droplet was made")
	}
}

// TestPowerOn: a droplet found off is powered on by Create and reported
// stopped by Machines before that.
func TestPowerOn(t *testing.T) {
	s := startServer(t)
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	_, adminLine := drivertest.AdminKey(t)
	d := driverFor(t, s, block, nil)
	want := spec(t, cluster, "manager", 1, adminLine)
	m, err := d.Create(ctx, cluster, want)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := strconv.Atoi(m.ID)
	s.SetStatus(id, "off")
	ms, err := d.Machines(ctx, cluster)
	if err != nil || len(ms) != 1 || ms[0].State != "stopped" {
		t.Fatalf("Machines: %v %+v", err, ms)
	}
	again, err := d.Create(ctx, cluster, want)
	if err != nil || again.ID != m.ID || again.State != "running" || s.Calls("POST", "/v2/droplets/"+m.ID+"/actions") != 1 {
		t.Fatalf("Create of an off droplet: %v %+v", err, again)
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Errorf("second Destroy: %v", err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
}

// TestTokenStaysHome: the client sends the token to api_url's host only: a
// redirect elsewhere is refused, and a request built for another host never
// leaves.
func TestTokenStaysHome(t *testing.T) {
	var mu sync.Mutex
	var leaked []string
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		leaked = append(leaked, r.Method+" "+r.URL.Path+" auth="+r.Header.Get("Authorization"))
		mu.Unlock()
		w.Write([]byte(`{"account":{}}`))
	}))
	defer elsewhere.Close()
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer api.Close()
	other := strings.Replace(elsewhere.URL, "127.0.0.1", "localhost", 1)

	src := fmt.Sprintf("api_url = %q\ntoken = var.do_token\nregion = \"ams3\"\nallowed_cidrs = [\"198.51.100.7/32\"]\n", api.URL)
	f, _ := hclparse.NewParser().ParseHCL([]byte(src), "do.hcl")
	dd, diags := New(f.Body, drivers.Options{Eval: evalCtx(testToken)})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	d := dd.(*Driver)
	fast(d)
	ctx := testCtx(t)
	if err := d.Preflight(ctx, nil); err == nil || !strings.Contains(err.Error(), "refusing a redirect") {
		t.Errorf("Preflight through a redirect: %v", err)
	}
	cli, err := d.api()
	if err != nil {
		t.Fatal(err)
	}
	req, err := cli.NewRequest(ctx, http.MethodGet, other+"/v2/account", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Do(ctx, req, nil); err == nil || !strings.Contains(err.Error(), "refusing to send the DigitalOcean token") {
		t.Errorf("request to another host: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(leaked) > 0 {
		t.Errorf("requests reached another host: %v", leaked)
	}
}

func mustURL(s string) *url.URL {
	u, err := checkAPIURL(s)
	if err != nil {
		panic(err)
	}
	return u
}

// TestGenerationsCoexist: a replaced machine's next generation is a second
// droplet of the same machine name (droplet and volume named "<name>-g2",
// host name and machine tag the machine name), found, adopted and destroyed
// by name and generation without touching the first. The first generation
// is made as before generations existed: no generation tag.
func TestGenerationsCoexist(t *testing.T) {
	s := startServer(t)
	d := driverFor(t, s, block, nil)
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	_, adminLine := drivertest.AdminKey(t)
	g1 := spec(t, cluster, "manager", 1, adminLine)
	g1.DiskGiB = 100 // s-2vcpu-2gb has 60: each generation gets a volume
	m1, err := d.Create(ctx, cluster, g1)
	if err != nil {
		t.Fatal(err)
	}
	g2 := g1
	g2.Generation = 2
	g2.Tags = maps.Clone(g1.Tags)
	g2.Tags[drivers.TagGeneration] = "2"
	g2.HostKey, _ = drivertest.HostKey(t)
	vol1, vol2 := volumeName(cluster, g1.Name, 1), volumeName(cluster, g1.Name, 2)
	if vol2 != g1.Name+"-g2-"+cluster[:7] || vol1 == vol2 {
		t.Fatalf("volume names %s, %s", vol1, vol2)
	}

	// Plan and preflight count generation 2 as a droplet and volume more.
	rs, err := d.Resources(ctx, cluster, []drivers.MachineSpec{g2})
	if err != nil || !slices.Contains(resourceLines(rs), "create volume "+vol2) || !slices.Contains(resourceLines(rs), "keep volume "+vol1+" id") {
		t.Fatalf("Resources: %v %v", err, resourceLines(rs))
	}
	s.SetDropletLimit(1)
	if err := d.Preflight(ctx, []drivers.MachineSpec{g2}); err == nil || !strings.Contains(err.Error(), "droplet limit") {
		t.Fatalf("Preflight of generation 2 at a limit of 1 droplet: %v", err)
	}
	s.SetDropletLimit(25)

	m2, err := d.Create(ctx, cluster, g2)
	if err != nil {
		t.Fatal(err)
	}
	if m1.ID == m2.ID || m2.Name != g1.Name || drivers.GenerationOf(m2.Tags) != 2 || m2.SSH.HostKey != g2.HostKey.Public {
		t.Fatalf("generation 2 %+v, generation 1 %s", m2, m1.ID)
	}
	if m1.Name != g1.Name || drivers.GenerationOf(m1.Tags) != 1 {
		t.Fatalf("generation 1 %+v", m1)
	}
	vols := map[string]godo.Volume{}
	for _, v := range s.Volumes() {
		vols[v.Name] = v
	}
	if len(vols) != 2 || !slices.Contains(vols[vol2].Tags, "provision-generation:2") || slices.ContainsFunc(vols[vol1].Tags, func(t string) bool { return strings.HasPrefix(t, drivers.TagGeneration) }) {
		t.Fatalf("volumes: %+v", vols)
	}
	for _, dr := range s.Droplets() {
		gen1 := strconv.Itoa(dr.ID) == m1.ID
		name, vol := g1.Name+"-g2", vol2
		if gen1 {
			name, vol = g1.Name, vol1
		}
		if dr.Name != name {
			t.Errorf("droplet %d is named %s, want %s", dr.ID, dr.Name, name)
		}
		if !slices.Contains(dr.Tags, "provision-machine:"+g1.Name) || slices.Contains(dr.Tags, "provision-generation:2") == gen1 ||
			slices.Contains(dr.Tags, "provision-generation:1") {
			t.Errorf("droplet %s: tags %v", dr.Name, dr.Tags)
		}
		if !strings.Contains(dr.UserData, `hostname: "`+g1.Name+`"`) {
			t.Errorf("droplet %s: the host name is not the machine name %s", dr.Name, g1.Name)
		}
		if !strings.Contains(dr.UserData, "scsi-0DO_Volume_"+vol+`"`) || !slices.Equal(dr.VolumeIDs, []string{vols[vol].ID}) {
			t.Errorf("droplet %s: volumes %v, user data mounts %s: %v", dr.Name, dr.VolumeIDs, vol, strings.Contains(dr.UserData, vol))
		}
	}

	// Create of generation 2 again, in this process or a new one, adopts it.
	again, err := d.Create(ctx, cluster, g2)
	if err != nil || again.ID != m2.ID {
		t.Fatalf("Create of generation 2 again: %v %s", err, again.ID)
	}
	again, err = driverFor(t, s, block, nil).Create(ctx, cluster, g2)
	if err != nil || again.ID != m2.ID {
		t.Fatalf("Create of generation 2 through a new driver: %v %s", err, again.ID)
	}
	if n := s.Calls("POST", "/v2/droplets"); n != 2 {
		t.Fatalf("POST /v2/droplets sent %d times, want 2", n)
	}
	ms, err := d.Machines(ctx, cluster)
	if err != nil || len(ms) != 2 || ms[0].Name != g1.Name || ms[1].Name != g1.Name ||
		drivers.GenerationOf(ms[0].Tags)+drivers.GenerationOf(ms[1].Tags) != 3 {
		t.Fatalf("Machines: %v %+v", err, ms)
	}

	// Destroy generation 1 by tags alone (no ID): generation 2 and its
	// volume stay.
	if err := d.Destroy(ctx, drivers.Machine{Name: g1.Name, Tags: map[string]string{drivers.TagCluster: cluster, drivers.TagGeneration: "1"}}); err != nil {
		t.Fatal(err)
	}
	if ds := s.Droplets(); len(ds) != 1 || strconv.Itoa(ds[0].ID) != m2.ID {
		t.Fatalf("droplets after destroying generation 1: %+v (generation 2 is %s)", ds, m2.ID)
	}
	if vs := s.Volumes(); len(vs) != 1 || vs[0].Name != vol2 {
		t.Fatalf("volumes after destroying generation 1: %+v", vs)
	}
	ms, err = d.Machines(ctx, cluster)
	if err != nil || len(ms) != 1 || ms[0].ID != m2.ID || ms[0].Name != g1.Name {
		t.Fatalf("Machines after destroying generation 1: %v %+v", err, ms)
	}
	// Destroying generation 1 again finds nothing and touches nothing.
	if err := d.Destroy(ctx, drivers.Machine{Name: g1.Name, Tags: map[string]string{drivers.TagCluster: cluster}}); err != nil {
		t.Fatal(err)
	}
	if len(s.Droplets()) != 1 || len(s.Volumes()) != 1 {
		t.Fatalf("a second Destroy of generation 1 removed generation 2: %v", s.Inventory())
	}

	// Generation 2 by tags alone too, then nothing of the cluster is left.
	if err := d.Destroy(ctx, drivers.Machine{Name: g1.Name, Tags: map[string]string{drivers.TagCluster: cluster, drivers.TagGeneration: "2"}}); err != nil {
		t.Fatal(err)
	}
	if len(s.Droplets()) != 0 || len(s.Volumes()) != 0 {
		t.Fatalf("after destroying generation 2: %v", s.Inventory())
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if left := clusterTraces(s, cluster); len(left) > 0 {
		t.Errorf("left: %v", left)
	}
}

// TestDockerDisk: a pool's docker_disk is a blank volume of that size
// attached at create (no file system, no cloud-init mount: engine.disk
// formats and mounts it); the machine names its stable by-id path, also
// when adopted. A disk beyond the size's own with docker_disk is refused
// before anything is made. Destroy leaves no volume.
func TestDockerDisk(t *testing.T) {
	s := startServer(t)
	d := driverFor(t, s, block, nil)
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	_, adminLine := drivertest.AdminKey(t)
	want := spec(t, cluster, "worker", 1, adminLine)
	want.DockerDiskGiB = 40
	bad := want
	bad.DiskGiB = 500
	if err := d.Preflight(ctx, []drivers.MachineSpec{bad}); err == nil || !strings.Contains(err.Error(), "docker_disk already gives") {
		t.Fatalf("preflight of disk beyond the size with docker_disk: %v", err)
	}
	if _, err := d.Create(ctx, cluster, bad); err == nil || len(s.Droplets()) != 0 || len(s.Volumes()) != 0 {
		t.Fatalf("create of disk beyond the size with docker_disk: %v, %d droplets", err, len(s.Droplets()))
	}
	m, err := d.Create(ctx, cluster, want)
	if err != nil {
		t.Fatal(err)
	}
	vols := s.Volumes()
	name := volumeName(cluster, want.Name, 1)
	if len(vols) != 1 || vols[0].SizeGigaBytes != 40 || vols[0].FilesystemType != "" || vols[0].Name != name {
		t.Fatalf("volumes: %+v", vols)
	}
	drs := s.Droplets()
	if len(drs) != 1 || !slices.Contains(drs[0].VolumeIDs, vols[0].ID) || strings.Contains(drs[0].UserData, "/var/lib/docker") {
		t.Fatalf("droplet: %+v", drs)
	}
	if m.DockerDisk != "/dev/disk/by-id/scsi-0DO_Volume_"+name {
		t.Fatalf("docker disk path %q", m.DockerDisk)
	}
	again, err := driverFor(t, s, block, nil).Create(ctx, cluster, want)
	if err != nil || again.ID != m.ID || again.DockerDisk != m.DockerDisk {
		t.Fatalf("adopted: %v %s %q", err, again.ID, again.DockerDisk)
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if left := clusterTraces(s, cluster); len(left) > 0 || len(s.Volumes()) != 0 {
		t.Fatalf("left: %v, volumes %+v", left, s.Volumes())
	}
}

// TestDestroyByIDChecksOwnership: Destroy given a droplet ID (from state)
// deletes the droplet only when it carries the cluster's tag: another
// cluster's droplet under that ID, and its volumes, stay.
func TestDestroyByIDChecksOwnership(t *testing.T) {
	s := startServer(t)
	ctx := testCtx(t)
	d := driverFor(t, s, block, nil)
	owner := drivertest.ClusterID(t)
	_, adminLine := drivertest.AdminKey(t)
	m, err := d.Create(ctx, owner, spec(t, owner, "manager", 1, adminLine))
	if err != nil {
		t.Fatal(err)
	}
	other := drivertest.ClusterID(t)
	err = d.Destroy(ctx, drivers.Machine{Name: "x-manager-1", ID: m.ID, Tags: map[string]string{drivers.TagCluster: other}})
	if err == nil || !strings.Contains(err.Error(), "not deleting it") {
		t.Fatalf("Destroy of another cluster's droplet: %v", err)
	}
	if len(s.Droplets()) != 1 {
		t.Fatalf("droplets: %+v", s.Droplets())
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := d.Teardown(ctx, owner); err != nil {
		t.Fatal(err)
	}
}
