//go:build acceptance

package acceptance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2/hclparse"
	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
	_ "github.com/provision/provision/drivers/digitalocean" // doLoadBalancer builds the driver
	"github.com/provision/provision/drivers/digitalocean/dotest"
)

const (
	doNetnsEnv  = "PROVISION_ACC_DO_NETNS"  // "1": this process is the namespaced child
	doBinaryEnv = "PROVISION_ACC_DO_BIN"    // the provision binary built outside the namespace
	doParentNS  = "PROVISION_ACC_DO_PARENT" // the parent's /proc/self/ns/net
)

// TestDigitalOceanFakeEndToEnd drives the real provision binary (plan,
// apply, re-apply, adoption of an interrupted create, destroy) with the
// digitalocean driver against dotest, a stateful in-process DigitalOcean
// API, reached through the driver's api_url. The addresses it hands out
// (203.0.113.x) are not hosts, so the whole run happens in a fresh network
// namespace with only loopback up: the test binary re-executes itself under
// `unshare -n` and starts the API there. SSH to the droplets must then fail
// per host after every droplet was created and recorded.
//
// Needs PROVISION_ACC=1 and permission to unshare the network namespace
// (root here); it skips otherwise.
func TestDigitalOceanFakeEndToEnd(t *testing.T) {
	if os.Getenv(doNetnsEnv) == "1" {
		doInNamespace(t)
		return
	}
	requireAcc(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare (util-linux) not in PATH: this test runs only in its own network namespace")
	}
	if out, err := exec.Command("unshare", "-n", "--", "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Skipf("cannot make a network namespace with loopback up (unshare -n needs CAP_SYS_ADMIN): %v: %s", err, strings.TrimSpace(string(out)))
	}
	bin := binary(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	parentNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "-n", "--", exe,
		"-test.run=^TestDigitalOceanFakeEndToEnd$", "-test.v", "-test.count=1", "-test.timeout=7m")
	cmd.Env = append(os.Environ(), doNetnsEnv+"=1", doParentNS+"="+parentNS, doBinaryEnv+"="+bin)
	out, err := cmd.CombinedOutput()
	t.Logf("namespaced run:\n%s", out)
	if err != nil {
		t.Fatalf("namespaced run failed: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: TestDigitalOceanFakeEndToEnd") || strings.Contains(string(out), "--- SKIP") {
		t.Fatal("the namespaced run did not pass the test")
	}
}

func doInNamespace(t *testing.T) {
	os.Setenv(motoParentNS, os.Getenv(doParentNS))
	motoIsolated(t)
	os.Unsetenv("DIGITALOCEAN_TOKEN")
	bin := os.Getenv(doBinaryEnv)
	if bin == "" {
		t.Fatal(doBinaryEnv + " not set by the parent")
	}
	buildOnce.Do(func() { binPath = bin })

	b := make([]byte, 16)
	rand.Read(b)
	token := "dop_v1_" + hex.EncodeToString(b)
	api := dotest.Start(token)
	t.Cleanup(api.Close)
	before := api.Inventory()

	dir := t.TempDir()
	rand.Read(b[:4])
	name := "do" + hex.EncodeToString(b[:4])
	stateDir := filepath.Join(dir, "state")
	specFile := filepath.Join(dir, name+".hcl")
	logFile := filepath.Join(dir, "provision.log")
	spec := fmt.Sprintf(`
variable "do_token" {
  type      = string
  default   = ""
  sensitive = true
}

name = %q

driver "digitalocean" {
  token         = var.do_token
  api_url       = %q
  region        = "ams3"
  size          = "s-2vcpu-2gb"
  allowed_cidrs = ["198.51.100.7/32"]
}

managers {
  count = 1
}

workers {
  count = 2
  disk  = 100 # the size has 60 GiB: a volume each
}

# The fake's addresses are not hosts: give up on SSH after a few seconds.
ssh {
  connect_timeout = "3s"
}
`, name, api.URL)
	if err := os.WriteFile(specFile, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	withToken := []string{"PROVISION_VAR_do_token=" + token}
	run := func(env []string, args ...string) result {
		t.Helper()
		return provision(t, ctx, env, append(args[:1:1], append([]string{specFile, "--state-dir", stateDir, "--log-file", logFile}, args[1:]...)...)...)
	}
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer ccancel()
			provision(t, cctx, withToken, "destroy", specFile, "--state-dir", stateDir, "--auto-approve")
		}
	})
	noToken := func(r result) {
		t.Helper()
		for _, s := range []string{r.stdout, r.stderr} {
			if strings.Contains(s, token) {
				t.Fatalf("the token appears in the output:\n%s", s)
			}
		}
		if b, err := os.ReadFile(logFile); err == nil && strings.Contains(string(b), token) {
			t.Fatalf("the token appears in the log file")
		}
	}

	// With api_url set, the token must come from the block: an empty
	// variable is refused before anything is asked (DIGITALOCEAN_TOKEN would
	// never be sent to another host).
	r := run([]string{"DIGITALOCEAN_TOKEN=" + token}, "plan")
	if r.code != 2 || !strings.Contains(r.stderr, "api_url needs the token in the block") {
		t.Fatalf("plan without the token in the block: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if n := api.Calls("", "/"); n != 0 {
		t.Fatalf("the API was asked %d times without a token in the block", n)
	}

	// plan: machines and shared resources, nothing made.
	r = run(withToken, "plan")
	all := r.stdout + r.stderr
	noToken(r)
	if r.code != 0 || !strings.Contains(all, "Plan: 3 to create, 0 to adopt") {
		t.Fatalf("plan: exit %d\n%s", r.code, all)
	}
	for _, want := range []string{"+ vpc provision-", "+ firewall provision-", "+ ssh-key provision-", "+ volume " + name + "-worker-1-", "+ volume " + name + "-worker-2-"} {
		if !strings.Contains(all, want) {
			t.Errorf("plan lacks %q:\n%s", want, all)
		}
	}
	if api.Calls("POST", "/") != 0 {
		t.Fatal("plan created something")
	}

	// apply: every droplet is created and recorded, then SSH fails per host.
	r = run(withToken, "apply", "--auto-approve")
	all = r.stdout + r.stderr
	noToken(r)
	if r.code != 1 {
		t.Fatalf("apply against the fake API should fail at ssh.connect with exit 1, got %d\n%s", r.code, all)
	}
	st := readState(t, stateDir)
	if len(st.Machines) != 3 || st.ClusterID == "" {
		t.Fatalf("state after apply: %+v", st)
	}
	ids := map[string]string{}
	for _, m := range st.Machines {
		if _, err := strconv.Atoi(m.ID); err != nil || !strings.HasPrefix(m.Address, "203.0.113.") || m.Status != "created" {
			t.Errorf("state of %s: %+v", m.Name, m)
		}
		ids[m.Name] = m.ID
		line := motoLine(all, m.Name+": ssh.connect: ")
		if !strings.Contains(line, m.Address+":22") || !strings.Contains(line, "network is unreachable") && !strings.Contains(line, "i/o timeout") {
			t.Errorf("ssh.connect error of %s: %q", m.Name, line)
		}
	}
	t.Logf("apply: %s (ssh.connect_timeout 3s)", r.took.Round(100*time.Millisecond))
	doCheckDroplets(t, api, stateDir, st.ClusterID, ids)

	// Re-apply: the same droplets, nothing created.
	r = run(withToken, "apply", "--auto-approve")
	if all := r.stdout + r.stderr; r.code != 1 || !strings.Contains(all, "(0 created, 0 removed)") || strings.Contains(all, "machine.create") {
		t.Fatalf("re-apply: exit %d\n%s", r.code, all)
	}
	doCheckDroplets(t, api, stateDir, st.ClusterID, ids)

	// An interrupted create: state holds only the intent for worker-2, the
	// droplet exists. plan adopts it, apply takes it over.
	interrupted := name + "-worker-2"
	motoForget(t, stateDir, interrupted)
	r = run(withToken, "plan")
	if line := motoLine(r.stdout+r.stderr, interrupted); r.code != 0 || !strings.Contains(line, "adopt") || !strings.Contains(line, ids[interrupted]) {
		t.Fatalf("plan after an interrupted create: exit %d, line %q\n%s", r.code, line, r.stdout+r.stderr)
	}
	posts := api.Calls("POST", "/v2/droplets")
	r = run(withToken, "apply", "--auto-approve")
	if all := r.stdout + r.stderr; r.code != 1 || !strings.Contains(all, "(0 created, 0 removed)") || api.Calls("POST", "/v2/droplets") != posts {
		t.Fatalf("apply after an interrupted create: exit %d\n%s", r.code, all)
	}
	doCheckDroplets(t, api, stateDir, st.ClusterID, ids)

	// The load balancer, as apply's phase makes it once a port is published
	// (the fake's droplets have no swarm to publish one): plan lists it,
	// destroy removes it before the droplets.
	doLoadBalancer(t, ctx, api, token, st.ClusterID)
	r = run(withToken, "plan")
	if all := r.stdout + r.stderr; r.code != 0 || !strings.Contains(all, "load-balancer provision-"+st.ClusterID) || !strings.Contains(all, "ports 80, 443") ||
		!strings.Contains(all, "firewall provision-"+st.ClusterID+"-lb") {
		t.Errorf("plan does not list the load balancer: exit %d\n%s", r.code, all)
	}

	// destroy: the load balancer first, then the droplets, volumes,
	// firewall, VPC, key and the cluster's tags go; the account is as it
	// was but for generic tags.
	r = run(withToken, "destroy", "--auto-approve")
	if all := r.stdout + r.stderr; !strings.Contains(all, "lb.remove") || strings.Index(all, "lb.remove") > strings.Index(all, "machine.destroy") {
		t.Errorf("destroy did not remove the load balancer before the droplets:\n%s", all)
	}
	noToken(r)
	if all := r.stdout + r.stderr; r.code != 0 || !strings.Contains(all, fmt.Sprintf("Destroyed cluster %q", name)) {
		t.Fatalf("destroy: exit %d\n%s", r.code, all)
	}
	destroyed = true
	for _, line := range api.Inventory() {
		if slices.Contains(before, line) {
			continue
		}
		if strings.Contains(line, st.ClusterID) || !strings.HasPrefix(line, "tag provision-role:") && !strings.HasPrefix(line, "tag provision-pool:") &&
			!strings.HasPrefix(line, "tag provision-user:") && !strings.HasPrefix(line, "tag provision-machine:") {
			t.Errorf("left after destroy: %s", line)
		}
	}
	if r := run(withToken, "destroy", "--auto-approve"); r.code != 0 {
		t.Errorf("second destroy: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// doCheckDroplets asserts through the fake that the cluster has exactly the
// recorded droplets, each with the host key pinned in state being the one
// in its user data and its tag, the workers with their volume mounted at
// /var/lib/docker, all behind the cluster's firewall and in its VPC.
func doCheckDroplets(t *testing.T, api *dotest.Server, stateDir, cluster string, ids map[string]string) {
	t.Helper()
	pinned := motoPinned(t, stateDir)
	got := map[string]string{}
	var vpc string
	for _, d := range api.Droplets() {
		if !slices.Contains(d.Tags, drivers.TagCluster+":"+cluster) {
			continue
		}
		got[d.Name] = strconv.Itoa(d.ID)
		if vpc == "" {
			vpc = d.VPCUUID
		}
		if d.VPCUUID == "" || d.VPCUUID != vpc {
			t.Errorf("%s: vpc %q", d.Name, d.VPCUUID)
		}
		begin := strings.Index(d.UserData, "-----BEGIN OPENSSH PRIVATE KEY-----")
		end := strings.Index(d.UserData, "-----END OPENSSH PRIVATE KEY-----")
		if begin < 0 || end < begin {
			t.Fatalf("%s: no host key in the user data", d.Name)
		}
		var pem strings.Builder
		for _, l := range strings.Split(d.UserData[begin:end+len("-----END OPENSSH PRIVATE KEY-----")], "\n") {
			pem.WriteString(strings.TrimSpace(l) + "\n")
		}
		signer, err := ssh.ParsePrivateKey([]byte(pem.String()))
		if err != nil {
			t.Fatalf("%s: host key in the user data: %v", d.Name, err)
		}
		fromUserData := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
		if pinned[d.Name] != fromUserData {
			t.Errorf("%s: pinned host key %q is not the one handed to cloud-init %q", d.Name, pinned[d.Name], fromUserData)
		}
		wire := signer.PublicKey().Marshal()
		if tag := "provision-hostkey:" + hex.EncodeToString(wire[len(wire)-32:]); !slices.Contains(d.Tags, tag) {
			t.Errorf("%s: no tag %s in %v", d.Name, tag, d.Tags)
		}
		worker := strings.Contains(d.Name, "-worker-")
		if mounted := strings.Contains(d.UserData, `"/var/lib/docker"`); mounted != worker || (len(d.VolumeIDs) == 1) != worker {
			t.Errorf("%s: volume mount %v, volumes %v", d.Name, mounted, d.VolumeIDs)
		}
	}
	if len(got) != len(ids) {
		t.Fatalf("droplets of the cluster: %v, want %v", got, ids)
	}
	for n, id := range ids {
		if got[n] != id {
			t.Errorf("%s: droplet %s, state has %s", n, got[n], id)
		}
	}
	fws := api.Firewalls()
	if len(fws) != 1 || !slices.Contains(fws[0].Tags, drivers.TagCluster+":"+cluster) {
		t.Errorf("firewalls: %+v", fws)
	}
	if vs := api.VPCs(); len(vs) != 1 || vs[0].ID != vpc {
		t.Errorf("vpcs: %+v", vs)
	}
}

// doLoadBalancer makes the cluster's load balancer through the driver's own
// SyncPorts, in this process, against the fake: what apply's load-balancer
// phase does when services publish 80 and 443.
func doLoadBalancer(t *testing.T, ctx context.Context, api *dotest.Server, token, clusterID string) {
	t.Helper()
	src := fmt.Sprintf("token = %q\napi_url = %q\nregion = \"ams3\"\nallowed_cidrs = [\"198.51.100.7/32\"]\n", token, api.URL)
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "do.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	info, _ := drivers.Lookup("digitalocean")
	d, diags := info.New(f.Body, drivers.Options{Name: "digitalocean", Log: slog.New(slog.DiscardHandler)})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	st, err := d.(drivers.Balancer).SyncPorts(ctx, clusterID, []drivers.PublishedPort{{Port: 80, Protocol: "tcp", Sources: []string{"0.0.0.0/0"}}, {Port: 443, Protocol: "tcp", Sources: []string{"0.0.0.0/0"}}})
	if err != nil || !st.Exists || st.Targets != 3 {
		t.Fatalf("load balancer: %+v %v", st, err)
	}
	if len(api.LoadBalancers()) != 1 {
		t.Fatalf("%d load balancers", len(api.LoadBalancers()))
	}
}
